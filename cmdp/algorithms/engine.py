"""The on-policy engine every solver inherits.

Glossary. A *step* is one transition of one env (``global_step`` counts them over all envs). An
*epoch* collects ``steps_per_epoch`` steps (``steps_per_epoch // num_envs`` vector steps), then
updates: first the solver's multipliers (from the episodes that finished in this epoch), then
the actor, then the critics. An *update pass* is one sweep over the epoch's data in minibatches.

The engine owns everything shared: stepping, time-limit bootstrapping for the reward and every
cost channel, one GAE function for both, observation normalisation, minibatching (flat, or
trajectory segments for sequence policies), gradient clipping, KL early stop, evaluation,
logging and checkpoints. A solver overrides a few hooks:

``update_multipliers(stats)``
    before the update, with the epoch's :class:`EpochStats`; Lagrangian solvers step their
    multipliers here.
``advantage_weights()``
    the weights ``(w_r, w_c)`` with which reward and cost advantages combine into the one
    advantage the actor maximises, ``w_r A_R - w_c . A_C``.
``actor_loss(out, mb)``
    the actor's loss on a minibatch, returning named terms; the default is PPO's clipped
    surrogate.
``update_policy(data)``
    the whole update of actor and critics; second-order solvers (CPO) replace it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from cmdp.algorithms import checkpoint as ckpt
from cmdp.algorithms.config import Config, option
from cmdp.algorithms.functional import gae
from cmdp.core.seeding import seeded_torch
from cmdp.core.vector import VectorCMDP, obs_where
from cmdp.errors import CheckpointError, ConfigError, NonFiniteError
from cmdp.policies.base import ActorCritic, policy_from_architecture, state_map
from cmdp.policies.distributions import ActionDistribution, shield_mask, shielded
from cmdp.policies.encoders import obs_to_tensor
from cmdp.policies.mlp import MLPActorCritic
from cmdp.policies.numpy_acting import ActingStep, NumpyActing, numpy_obs

log = logging.getLogger("cmdp")
Tensor = torch.Tensor


@dataclass(frozen=True, kw_only=True)
class OnPolicyConfig(Config):
    """Settings shared by every on-policy solver. Units: steps are env steps summed over envs."""

    num_envs: int = option(16, "Envs stepped in parallel (one numpy batch for built-in envs).", ge=1)
    steps_per_epoch: int = option(
        4096, "Env steps collected per epoch, summed over envs; must be a multiple of num_envs.", ge=1
    )
    update_epochs: int = option(10, "Update passes over each epoch's data.", ge=1)
    minibatch_size: int = option(
        1024, "Steps per minibatch (for sequence policies: steps per minibatch of segments).", ge=1
    )
    gamma: float = option(0.99, "Reward discount.", ge=0.0, le=1.0)
    gae_lambda: float = option(0.95, "GAE lambda for the reward advantage.", ge=0.0, le=1.0)
    cost_gamma: float = option(0.99, "Cost discount, used for every cost channel's critic and GAE.", ge=0.0, le=1.0)
    cost_gae_lambda: float = option(0.95, "GAE lambda for the cost advantages.", ge=0.0, le=1.0)
    actor_lr: float = option(3e-4, "Adam learning rate of the actor.", gt=0.0)
    critic_lr: float = option(1e-3, "Adam learning rate of the reward and cost critics.", gt=0.0)
    lr_schedule: str = option("constant", "Actor learning rate schedule over total_steps.", choices=("constant", "linear"))
    critic_warmup_steps: int = option(
        0,
        "For the first this many env steps only the critics learn; the actor and the multipliers "
        "stay put. Fine-tuning a pretrained actor against freshly initialised critics otherwise "
        "follows advantage noise before the critics know anything (0: no warm-up).",
        ge=0,
    )
    average_last: float = option(
        0.0,
        "Average the actor's weights over the epochs in the last this fraction of total_steps and "
        "put the average in the actor when learn() reaches total_steps (0: keep the last iterate). "
        "A Lagrangian iterate keeps circling a mixed optimum, its last one up to 20% over a limit, "
        "while the multiplier's integral holds the time-average cost at the limit: the average of "
        "the tail is that time-average. Meant for a decaying lr_schedule, where the tail moves little, "
        "and a schedule long enough for the multipliers to settle before the tail (PPOLag on "
        "TwoChannelGrid, 0.2: both limits met on 10 of 10 seeds after 300 epochs, 7 after 150).",
        ge=0.0,
        lt=1.0,
    )
    anchor_kl: float = option(
        0.0,
        "Weight of KL(pi_start || pi) in the actor loss, where pi_start is a frozen copy of the "
        "policy taken when the solver is built (the pretrained policy a fine-tune starts from). "
        "It keeps a fine-tune near what pretraining learnt while the rewards and costs reshape "
        "it, as a behaviour-cloning term would (0: no anchor). The anchor's action "
        "distributions are computed once per epoch; sequence policies see the rollout's starting "
        "context of the current policy, as their evaluation does.",
        ge=0.0,
    )
    step_cost_coef: float = option(
        0.0,
        "Weight of the one-step cost term in the actor loss: the expected cost of this step's "
        "action, sum_a pi(a|s) c_hat_k(s, a), weighted by the same w_c (and scale) as the cost "
        "advantages, with c_hat the policy's one-step cost model (VLAConfig(step_cost_model=True)), "
        "clipped at 0. "
        "Its gradient moves probability away from the actions predicted to cost in each state "
        "without waiting for the sampled advantages to single them out: on Fetch the riskiest "
        "tenth of the IL policy's moves carries half of its move cost. Solvers whose actor "
        "follows the minibatch loss (PPO, PPOLag, PIDLag, FOCOPS); PPO's w_c is 0. 0: off.",
        ge=0.0,
    )
    shield_threshold: float = option(
        0.0,
        "A cost shield: when acting, in training and after it (predict, evaluate, assurance), "
        "the policy samples only among the actions whose predicted cost on this step, summed over "
        "the channels of its one-step cost model (VLAConfig(step_cost_model=True)), is at most "
        "this (where none is, the cheapest). The allowed actions are stored with the rollout and "
        "the update's probability ratios are those of the shielded policy, as with invalid-action "
        "masking. The model predicts only what it has seen taken: an action it wrongly predicts "
        "costly is not tried again in similar states, which is why on Fetch the shield did better "
        "switched on after training, by loading the trained solver with this option, than in "
        "training (BENCHMARKS.md). Discrete actions. 0: off.",
        ge=0.0,
    )
    clip_ratio: float = option(0.2, "PPO clip range epsilon: the ratio is clipped to [1-eps, 1+eps].", gt=0.0)
    target_kl: float | None = option(
        0.02,
        "Bounded policy change: within an epoch the actor stops updating as soon as the mean "
        "KL(old || new) on a minibatch exceeds target_kl (None: never stop early).",
        gt=0.0,
    )
    max_grad_norm: float | None = option(0.5, "Clip the global gradient norm of each network (None: no clip).", gt=0.0)
    entropy_coef: float = option(0.0, "Weight of the entropy bonus in the actor loss.", ge=0.0)
    normalize_advantages: bool = option(
        True,
        "Centre the advantage the actor maximises, w_r A_R - w_c . A_C, and divide it by "
        "w_r std(A_R) + w_c . std(A_C): reward and cost advantages share one scale, and the "
        "multipliers keep their meaning (reward per unit of cost).",
    )
    advantage_scaling: str = option(
        "shared",
        "How normalize_advantages scales the two advantages before they combine. 'shared': one "
        "scale for both, as above. 'reward': divide A_R by its own std and only centre A_C, as "
        "OmniSafe and SafePO do. The cost term then weighs in cost units against a unit-std reward "
        "term, so a multiplier penalises less where rewards per step are small, and the multiplier "
        "that balances a limit is no longer bounded by the reward's scale. On SafetyPointGoal1-v0, "
        "after 1M steps, PPOLag with 'reward' matched OmniSafe's return (16.4 against 15.0) at a "
        "cost over the limit (30.9 against 25); with 'shared' it stayed near the limit at a return "
        "of 2 (BENCHMARKS.md). For solvers without a cost term in the actor's advantage (PPO, CPO) "
        "both settings are the same.",
        choices=("shared", "reward"),
    )
    normalize_obs: bool = option(True, "Normalise observations with running mean and std (final observations too).")
    network: str = option(
        "mlp",
        "Policy network: 'mlp' (feed-forward), 'gru' (a sequence policy with memory) or 'vla' (the "
        "vision-language-action transformer of cmdp.policies.vla with its default VLAConfig, plus "
        "the one-step cost model when step_cost_coef or shield_threshold is > 0; rgb Safety-CHORES "
        "observations).",
        choices=("mlp", "gru", "vla"),
    )
    hidden_sizes: tuple[int, ...] = option((64, 64), "Hidden layer widths of actor and critics.", ge=1)
    gru_memory: int = option(64, "Width of the GRU state when network='gru'.", ge=1)
    activation: str = option("tanh", "Hidden activation.", choices=("tanh", "relu", "elu", "gelu"))
    log_std_init: float = option(
        -0.5, "Initial log std of continuous actions, in units of half the action range.", ge=-5.0, le=1.0
    )
    torch_threads: int | None = option(
        1, "torch.set_num_threads for this process (small nets run fastest on one thread); None leaves it.", ge=1
    )
    on_nonfinite: str = option(
        "raise",
        "What to do when an env returns NaN or inf in an observation, reward or cost: 'raise' an "
        "error naming env, step and field, or 'skip': replace the values by 0, treat that "
        "transition as truncated for learning (bootstrapped, advantages cut), and log a warning.",
        choices=("raise", "skip"),
    )
    checkpoint_every: int = option(
        0, "Write run_dir/checkpoint.pt every this many epochs (0: only when learn() returns).", ge=0
    )
    rollout_workers: int = option(
        0,
        "Collect each epoch in this many worker processes, each stepping num_envs / rollout_workers "
        "envs with a copy of the policy, instead of in this process (0). A worker acts for its "
        "own envs, so nothing crosses a process boundary per step: use it when the envs are cheap "
        "enough that the per-step round trip to env workers costs as much as the simulation "
        "(SafetyPointGoal1-v0 on 2 cores: BENCHMARKS.md, omnisafe). Feed-forward policies only; "
        "the env must be an id or a callable; each worker steps its envs in its own process, "
        "one after another (a vectorization given in env_kwargs applies to the training "
        "process's env only); the observation statistics are merged after every epoch.",
        ge=0,
    )
    numpy_acting: bool = option(
        True,
        "During rollouts, act with a NumPy copy of the policy (cmdp.policies.numpy_acting) where "
        "the policy is the feed-forward MLP on the CPU with a tanh, relu or elu activation: acting "
        "for 1 to 64 envs is then 3-6x cheaper (BENCHMARKS.md, acting-step). Sampling uses "
        "torch's generator either way, so seeds give the same actions; values and "
        "log-probabilities differ from torch's in float32 rounding only. False acts in torch.",
    )
    tensorboard: bool = option(True, "Write TensorBoard event files to the run directory.")
    progress_bar: bool = option(True, "Show a live progress line in the terminal.")
    env_kwargs: dict | None = option(
        None,
        "Keyword arguments passed to cmdp.make when env is an id. Objects with a to_dict() method "
        "(episode specs) are passed as their dict, as a resumed run gets them; other Python objects "
        "(a cost function) cannot be stored in checkpoints and must be passed to load() again.",
    )

    def validate(self) -> None:
        if self.advantage_scaling != "shared" and not self.normalize_advantages:
            raise ConfigError(
                f"advantage_scaling={self.advantage_scaling!r} scales the advantages that "
                "normalize_advantages normalises; set normalize_advantages=True or leave advantage_scaling='shared'"
            )
        if self.rollout_workers and self.num_envs % self.rollout_workers:
            raise ConfigError(
                f"num_envs ({self.num_envs}) must be a multiple of rollout_workers ({self.rollout_workers}): "
                "every worker steps the same number of envs"
            )
        if self.steps_per_epoch % self.num_envs:
            raise ConfigError(
                f"steps_per_epoch ({self.steps_per_epoch}) must be a multiple of num_envs "
                f"({self.num_envs}), e.g. {max(1, self.steps_per_epoch // self.num_envs) * self.num_envs}"
            )
        # the run sees its env kwargs exactly as a run resumed from its checkpoint will
        object.__setattr__(self, "env_kwargs", ckpt.as_plain_data(self.env_kwargs or {}))


@dataclass
class EpochStats:
    """What the engine hands to ``update_multipliers``: the cost signal of this epoch.

    ``episode_cost`` is the mean per-episode cost of each channel ``[K]`` over the episodes that
    finished in this epoch, or an estimate from the unfinished ones (``estimated=True``), or
    ``None`` when neither is available (the multipliers then keep their values).
    """

    episode_cost: np.ndarray | None
    episode_return: float | None
    episodes: int
    episode_length: float | None = None
    estimated: bool = False


class OnPolicyAlgorithm:
    """Shared on-policy engine. Subclasses set ``Config`` and override the hooks."""

    Config: ClassVar[type[OnPolicyConfig]] = OnPolicyConfig
    name: ClassVar[str] = "OnPolicy"
    constrained: ClassVar[bool] = True

    def __init__(
        self,
        env: str | VectorCMDP | Callable[[], gym.Env],
        cost_limit: float | Sequence[float] | None = None,
        seed: int = 0,
        run_dir: str | Path | None | bool = None,
        policy: ActorCritic | None = None,
        **config: Any,
    ) -> None:
        self.config = self.Config.from_kwargs(**config)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        self._seed_everything(seed)
        self.env_id = env if isinstance(env, str) else None
        self._env_source = env
        self.env = self._build_env(env, self.config.num_envs, seed)
        self.cost_names = tuple(self.env.cost_names)
        self.cost_limit = self._check_cost_limit(cost_limit)
        self.policy = policy if policy is not None else self.build_policy()
        if self.policy.num_costs != self.env.num_costs:
            raise ConfigError(
                f"the policy has {self.policy.num_costs} cost critics but the env has "
                f"{self.env.num_costs} cost channels {list(self.cost_names)}"
            )
        # the frozen start of a fine-tune; a loaded checkpoint puts back the anchor it saved
        self.anchor = _frozen_copy(self.policy) if self.config.anchor_kl > 0 else None
        self.actor_optimizer = torch.optim.Adam(self.policy.actor_parameters(), lr=self.config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.policy.critic_parameters(), lr=self.config.critic_lr)
        self.global_step = 0
        self.epoch = 0
        self._total_steps: int | None = None
        self._run_dir_arg = run_dir
        self.run_dir: Path | None = None
        self._logger = None
        self._obs: Any = None
        self._policy_state: Any = None
        n, k = self.env.num_envs, self.env.num_costs
        self._episode_start = np.ones(n, dtype=bool)
        self._ep_return = np.zeros(n)
        self._ep_cost = np.zeros((n, k))
        self._ep_len = np.zeros(n, dtype=np.int64)
        self._recent_lengths: list[int] = []
        self._nonfinite_skipped = 0
        self._estimate_warned = False
        # the actor's weights summed over the averaged tail of a learn() to _tail_total steps
        self._tail: WeightAverage | None = None
        self._tail_total: int | None = None
        self._rollout_workers: Any = None
        for name in ("step_cost_coef", "shield_threshold"):
            if getattr(self.config, name) > 0 and not self.policy.has_step_cost_model:
                raise ConfigError(
                    f"{name}={getattr(self.config, name)} needs a policy with a one-step cost model "
                    f"(e.g. VLAConfig(step_cost_model=True)); {type(self.policy).__name__} has none"
                )
        self.setup()
        if self.config.rollout_workers:
            # started here rather than by the first epoch: settings that rule workers out (checked
            # first) and a worker that cannot build its env or policy fail the construction, and
            # learn() times training, not start-up
            try:
                self._start_rollout_workers()
            except BaseException:
                self.env.close()
                raise

    # ---- construction ---------------------------------------------------------------------

    def setup(self) -> None:
        """Solver-specific state (multipliers); called at the end of ``__init__``."""

    def build_policy(self) -> ActorCritic:
        c = self.config
        spaces = (self.env.observation_space, self.env.action_space, self.env.num_costs)
        common = dict(hidden_sizes=c.hidden_sizes, activation=c.activation, log_std_init=c.log_std_init)
        if c.network == "gru":
            from cmdp.policies.recurrent import GRUActorCritic

            return GRUActorCritic(*spaces, memory=c.gru_memory, **common)
        if c.network == "vla":
            from cmdp.policies.vla import VLAConfig, VLAPolicy

            return VLAPolicy(*spaces, VLAConfig(step_cost_model=c.step_cost_coef > 0 or c.shield_threshold > 0))
        return MLPActorCritic(*spaces, **common)

    def _build_env(self, env: Any, num_envs: int, seed: int, obs_rms: Any = None) -> VectorCMDP:
        from cmdp.core.registry import make
        from cmdp.core.wrappers import NormalizeObservation

        env_kwargs = self.config.env_kwargs
        if self.config.rollout_workers:
            from cmdp.algorithms.rollout_workers import without_vectorization

            env_kwargs = without_vectorization(env_kwargs)
        if isinstance(env, str):
            venv = make(env, num_envs=num_envs, seed=seed, **env_kwargs)
        elif isinstance(env, VectorCMDP):
            venv = env
            if venv.num_envs != num_envs and obs_rms is None:
                object.__setattr__(self.config, "num_envs", venv.num_envs)
                if self.config.steps_per_epoch % venv.num_envs:
                    raise ConfigError(
                        f"the given env has {venv.num_envs} envs; steps_per_epoch "
                        f"({self.config.steps_per_epoch}) must be a multiple of it"
                    )
        elif callable(env):
            from cmdp.core.gym_adapter import from_env_fns

            venv = from_env_fns([env] * num_envs, seed=seed, **env_kwargs)
        else:
            raise ConfigError(
                f"env must be an env id, a VectorCMDP, or a callable returning a gymnasium env; "
                f"got {type(env).__name__}"
            )
        if self.config.normalize_obs:
            if obs_rms is None:
                venv = NormalizeObservation(venv)
            else:
                venv = NormalizeObservation(venv, obs_rms=obs_rms, update=False)
        return venv

    def _check_cost_limit(self, cost_limit: Any) -> np.ndarray | None:
        k = self.env.num_costs
        if cost_limit is None:
            if self.constrained:
                raise ConfigError(
                    f"{self.name} needs cost_limit: one per-episode limit for all {k} cost channel(s) "
                    f"{list(self.cost_names)}, or a list of {k} limits"
                )
            return None
        arr = np.atleast_1d(np.asarray(cost_limit, dtype=np.float64))
        if arr.ndim != 1:
            raise ConfigError(f"cost_limit must be a float or a flat list, got shape {arr.shape}")
        if arr.size == 1 and k > 1:
            arr = np.repeat(arr, k)
        if arr.size != k:
            raise ConfigError(
                f"cost_limit has {arr.size} values but the env has {k} cost channels "
                f"{list(self.cost_names)}: give one limit for all or exactly {k}"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ConfigError(f"cost_limit must be finite and >= 0 (per-episode cost), got {arr.tolist()}")
        return arr

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)

    # ---- hooks ----------------------------------------------------------------------------

    def update_multipliers(self, stats: EpochStats) -> dict[str, float]:
        """Step the Lagrange multipliers; return values to log. PPO has none."""
        return {}

    def advantage_weights(self) -> tuple[float, np.ndarray]:
        """Weights ``(w_r, w_c[K])`` of the advantage the actor maximises, ``w_r A_R - w_c . A_C``.

        PPO maximises the reward advantage alone; Lagrangian solvers weigh in their multipliers.
        """
        return 1.0, np.zeros(self.env.num_costs)

    def actor_loss(self, out, mb: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """PPO's clipped surrogate (Schulman et al., 2017) with an optional entropy bonus."""
        logp = taken_log_prob(out.dist, mb)
        ratio = torch.exp(logp - mb["logp"])
        adv = mb["adv"]
        eps = self.config.clip_ratio
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        entropy = out.dist.entropy()
        loss = -masked_mean(surrogate, mb["mask"]) - self.config.entropy_coef * masked_mean(entropy, mb["mask"])
        with torch.no_grad():
            clipped = ((ratio - 1).abs() > eps).float()
        return loss, {
            "ratio": masked_mean(ratio.detach(), mb["mask"]),
            "clip_fraction": masked_mean(clipped, mb["mask"]),
            "entropy": masked_mean(entropy.detach(), mb["mask"]),
        }

    def update_policy(self, data: dict[str, Any]) -> dict[str, float]:
        """Update actor and critics on the epoch's data. Second-order solvers (CPO) replace it,
        updating the actor their own way and calling ``minibatch_updates(data, train_actor=False)``
        for the critics."""
        return self.minibatch_updates(data, train_actor=True)

    def minibatch_updates(self, data: dict[str, Any], train_actor: bool) -> dict[str, float]:
        """Minibatch passes: one forward pass per minibatch feeds the actor loss and the critic
        losses. The actor stops for the rest of the epoch once a minibatch's KL(old || new)
        exceeds ``target_kl`` (measured before that minibatch's step, which saves a second
        forward pass); the critics keep regressing for all ``update_epochs`` passes."""
        c = self.config
        critic_sums: dict[str, float] = {}
        actor_sums: dict[str, float] = {}
        actor_steps = critic_steps = 0
        stopped_at = c.update_epochs if train_actor else 0
        for pass_ in range(c.update_epochs):
            for mb in self._minibatches(data):
                if train_actor or self.policy.is_sequence:
                    out = self.policy.evaluate(mb)
                    value, cost_value = out.value, out.cost_value
                else:  # the critics alone: no actor forward pass
                    out = None
                    value, cost_value = self.policy.values(mb["obs"])
                loss_v = masked_mean((value - mb["ret"]).pow(2), mb["mask"])
                loss_c = masked_mean((cost_value - mb["cost_ret"]).pow(2).mean(-1), mb["mask"])
                loss = loss_v + loss_c
                _accumulate(critic_sums, {"Loss/value": loss_v, "Loss/cost_value": loss_c})
                step_cost = None if out is None else out.step_cost
                if step_cost is not None:
                    taken = mb["actions"].long()[..., None, None].expand(*step_cost.shape[:-2], 1, step_cost.shape[-1])
                    loss_s = masked_mean((step_cost.gather(-2, taken).squeeze(-2) - mb["costs"]).pow(2).mean(-1), mb["mask"])
                    loss = loss + loss_s
                    _accumulate(critic_sums, {"Loss/step_cost": loss_s})
                self.critic_optimizer.zero_grad(set_to_none=True)
                if train_actor:
                    loss_pi, terms = self.actor_loss(out, mb)
                    if self.anchor is not None:
                        anchor_kl = masked_mean(out.dist.kl_from(mb["anchor_dist"]), mb["mask"])
                        loss_pi = loss_pi + c.anchor_kl * anchor_kl
                        terms = terms | {"AnchorKL": anchor_kl.detach()}
                    if c.step_cost_coef > 0:
                        # costs are non-negative: a prediction below zero is regression noise, and
                        # would draw the policy towards that action
                        expected = (out.dist.logits.exp()[..., None] * step_cost.detach().clamp(min=0)).sum(-2)
                        step_term = masked_mean(expected @ data["step_cost_weights"].to(expected.dtype), mb["mask"])
                        loss_pi = loss_pi + c.step_cost_coef * step_term
                        terms = terms | {"StepCostTerm": step_term.detach()}
                    loss = loss + loss_pi
                    _accumulate(actor_sums, {"Loss/pi": loss_pi} | {f"Train/{k}": t for k, t in terms.items()})
                    with torch.no_grad():
                        kl = masked_mean(out.dist.kl_from(mb["old_dist"]), mb["mask"]).item()
                    self.actor_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._clip(self.policy.critic_parameters())
                self.critic_optimizer.step()
                critic_steps += 1
                if train_actor:
                    self._clip(self.policy.actor_parameters())
                    self.actor_optimizer.step()
                    actor_steps += 1
                    if c.target_kl is not None and kl > c.target_kl:
                        train_actor = False
                        stopped_at = pass_ + 1
        stats = {k: v / critic_steps for k, v in critic_sums.items()}
        stats |= {k: v / actor_steps for k, v in actor_sums.items()}
        stats["Train/StopPass"] = stopped_at
        return stats

    # ---- rollout --------------------------------------------------------------------------

    def _to_tensor(self, obs: Any) -> Any:
        return obs_to_tensor(obs, self.env.observation_space)

    def _reset_envs(self) -> None:
        seed = self.seed if self.global_step == 0 else int(self.np_rng.integers(2**31))
        self._obs, _ = self.env.reset(seed=seed)
        n = self.env.num_envs
        self._policy_state = self.policy.initial_state(n)
        self._episode_start[:] = True
        self._ep_return[:] = 0
        self._ep_cost[:] = 0
        self._ep_len[:] = 0

    def _check_finite(self, obs: Any, reward: np.ndarray, cost: np.ndarray, final_obs: Any, done: np.ndarray):
        """Raise (or repair, with on_nonfinite='skip') NaN/inf coming from the env."""
        finals = () if final_obs is None or not done.any() else _float_leaves(final_obs)
        leaves = itertools.chain(_float_leaves(obs), finals)
        if np.isfinite(reward).all() and np.isfinite(cost).all() and all(np.isfinite(a).all() for _, a in leaves):
            return obs, reward, cost, final_obs, None  # the usual step, with fewer array passes
        bad = ~np.isfinite(reward) | ~np.isfinite(cost).all(axis=1)
        fields = {"reward": ~np.isfinite(reward), "cost": ~np.isfinite(cost).all(axis=1)}
        for name, arr in _float_leaves(obs):
            rows = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
            fields[f"observation{name}"] = rows
            bad |= rows
        if final_obs is not None:
            for name, arr in _float_leaves(final_obs):
                rows = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) & done
                fields[f"final observation{name}"] = rows
                bad |= rows
        if not bad.any():
            return obs, reward, cost, final_obs, None
        if self.config.on_nonfinite == "raise":
            for name, rows in fields.items():
                if rows.any():
                    i = int(np.flatnonzero(rows)[0])
                    raise NonFiniteError(
                        f"env {i} returned a non-finite {name} at step {self.global_step} "
                        f"(epoch {self.epoch}); set on_nonfinite='skip' to zero such values and "
                        "truncate the transition instead"
                    )
        self._nonfinite_skipped += int(bad.sum())
        log.warning("replaced non-finite values from env(s) %s at step %d", np.flatnonzero(bad).tolist(), self.global_step)
        clean = lambda x: np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if np.issubdtype(x.dtype, np.floating) else x  # noqa: E731
        from cmdp.core.vector import obs_map

        obs = obs_map(clean, obs)
        final_obs = obs_map(clean, final_obs) if final_obs is not None else None
        return obs, clean(reward), clean(cost), final_obs, bad

    def _start_rollout_workers(self) -> None:
        from cmdp.algorithms.rollout_workers import RolloutWorkers

        self._rollout_workers = RolloutWorkers(self)

    def _collect(self) -> tuple[dict[str, Any], EpochStats, dict[str, float]]:
        if self.config.rollout_workers:
            if self._rollout_workers is None:  # closed since construction
                self._start_rollout_workers()
            data, episodes, t_env = self._rollout_workers.collect(self)
        else:
            data, episodes, t_env = self.collect_here()
        ep_returns, ep_costs, ep_lengths = episodes["returns"], episodes["costs"], episodes["lengths"]
        stats = self._epoch_stats(ep_returns, ep_costs, ep_lengths)
        info: dict[str, Any] = {"time_env": t_env}
        if ep_returns:
            info.update(
                {
                    "Metrics/EpRet": float(np.mean(ep_returns)),
                    "Metrics/EpLen": float(np.mean(ep_lengths)),
                    "Metrics/EpCost": float(np.sum(np.mean(ep_costs, axis=0))),
                    "Metrics/Episodes": len(ep_returns),
                }
            )
            for name, v in zip(self.cost_names, np.mean(ep_costs, axis=0)):
                info[f"Metrics/EpCost/{name}"] = float(v)
            if episodes["successes"]:
                info["Metrics/SuccessRate"] = float(np.mean(episodes["successes"]))
        return data, stats, info

    def collect_here(self) -> tuple[dict[str, Any], dict[str, list], float]:
        """One epoch's rollout in this process: the data, the episodes that finished (returns,
        costs, lengths, successes) and the seconds spent in ``env.step``."""
        c = self.config
        env = self.env
        n, k = env.num_envs, env.num_costs
        horizon = c.steps_per_epoch // n
        if self._obs is None:
            self._reset_envs()
        # numpy buffers: a per-step write into a torch tensor costs several times a numpy one
        obs_buf: list[Any] = []
        logps = np.zeros((horizon, n), np.float32)
        values = np.zeros((horizon, n), np.float32)
        cost_values = np.zeros((horizon, n, k), np.float32)
        next_values = np.zeros((horizon, n), np.float32)
        next_cost_values = np.zeros((horizon, n, k), np.float32)
        rewards = np.zeros((horizon, n), np.float32)
        costs = np.zeros((horizon, n, k), np.float32)
        terminated = np.zeros((horizon, n), bool)
        dones = np.zeros((horizon, n), bool)
        episode_start = np.zeros((horizon, n), bool)
        dist_params: dict[str, list[np.ndarray]] = {}
        action_list: list[np.ndarray] = []
        mask_list: list[np.ndarray] = []
        start_state = self._policy_state
        numpy_acting = NumpyActing.from_policy(self.policy) if c.numpy_acting else None
        ep_returns, ep_costs, ep_lengths, successes = [], [], [], []
        t_env = 0.0
        for t in range(horizon):
            obs_t = self._to_tensor(self._obs)
            episode_start[t] = self._episode_start
            if numpy_acting is not None:
                step = numpy_acting.act(numpy_obs(obs_t))
            else:
                step = self._act_in_torch(obs_t, episode_start[t])
            logps[t] = step.logp
            values[t] = step.value
            cost_values[t] = step.cost_value
            for key, v in step.dist_params.items():
                dist_params.setdefault(key, []).append(v)
            obs_buf.append(_copy_obs(obs_t))  # envs may reuse their observation arrays
            action_list.append(step.action)
            if step.action_mask is not None:
                mask_list.append(step.action_mask)
            t0 = time.perf_counter()
            next_obs, reward, cost, term, trunc, info = env.step(step.env_action)
            t_env += time.perf_counter() - t0
            done = term | trunc
            final_obs = info.get("final_obs") if done.any() else None
            next_obs, reward, cost, final_obs, repaired = self._check_finite(next_obs, reward, cost, final_obs, done)
            if repaired is not None:
                trunc = trunc | (repaired & ~term)
            rewards[t] = reward
            costs[t] = np.reshape(cost, (n, k))
            terminated[t] = term
            # a repaired transition cuts the advantage recursion like a truncation; the env itself
            # continues its episode, so the episode statistics do too
            dones[t] = done if repaired is None else done | repaired
            self.global_step += n
            self._ep_return += reward
            self._ep_cost += cost
            self._ep_len += 1
            if trunc.any():
                # Time-limit (or crash) truncation is not a terminal state: bootstrap from the
                # true final observation, normalised by the same wrapper as every observation.
                boot_obs = obs_where(trunc, final_obs, next_obs) if final_obs is not None else next_obs
                v_f, vc_f = self._values_of(numpy_acting, boot_obs)
                next_values[t] = np.where(trunc, v_f, next_values[t])
                next_cost_values[t] = np.where(trunc[:, None], vc_f, next_cost_values[t])
            if done.any():
                idx = np.flatnonzero(done)
                success = info.get("success")
                for i in idx:
                    ep_returns.append(float(self._ep_return[i]))
                    ep_costs.append(self._ep_cost[i].copy())
                    ep_lengths.append(int(self._ep_len[i]))
                    if success is not None:
                        successes.append(bool(success[i]))
                self.remember_episode_lengths([int(self._ep_len[i]) for i in idx])
                self._ep_return[idx] = 0
                self._ep_cost[idx] = 0
                self._ep_len[idx] = 0
            self._episode_start = done.copy()
            self._obs = next_obs
        # values of the state after each step: the next step's value unless the episode ended
        v_last, vc_last = self._values_of(numpy_acting, self._obs)
        cont = ~dones
        next_values[:-1] = np.where(cont[:-1], values[1:], next_values[:-1])
        next_cost_values[:-1] = np.where(cont[:-1, :, None], cost_values[1:], next_cost_values[:-1])
        next_values[-1] = np.where(cont[-1], v_last, next_values[-1])
        next_cost_values[-1] = np.where(cont[-1][:, None], vc_last, next_cost_values[-1])

        data = {
            "obs": _stack_obs(obs_buf),
            "actions": torch.from_numpy(np.stack(action_list)),
            "logp": torch.from_numpy(logps),
            "old_dist": {key: torch.from_numpy(np.stack(v)) for key, v in dist_params.items()},
            "values": torch.from_numpy(values),
            "cost_values": torch.from_numpy(cost_values),
            "next_values": torch.from_numpy(next_values),
            "next_cost_values": torch.from_numpy(next_cost_values),
            "rewards": torch.from_numpy(rewards),
            "costs": torch.from_numpy(costs),
            "terminated": torch.from_numpy(terminated),
            "dones": torch.from_numpy(dones),
            "episode_start": torch.from_numpy(episode_start),
            "start_state": start_state,
        }
        if mask_list:
            data["action_mask"] = torch.from_numpy(np.stack(mask_list))
        episodes = {"returns": ep_returns, "costs": ep_costs, "lengths": ep_lengths, "successes": successes}
        return data, episodes, t_env

    def _act_in_torch(self, obs: Any, episode_start: np.ndarray) -> ActingStep:
        """One step of acting with the policy's torch modules (sequence policies, or
        numpy_acting off); moves the policy state on."""
        policy = self.policy
        with torch.no_grad():
            out = policy.act(obs, self._policy_state, torch.from_numpy(episode_start.copy()))
            mask = self._shield_mask(out)
            dist = shielded(out.dist, mask)
            action = dist.sample()
            logp = dist.log_prob(action)
        self._policy_state = out.state
        return ActingStep(
            policy.to_env_action(action),
            action.numpy(),
            logp.float().numpy(),
            out.value.float().numpy(),
            out.cost_value.float().numpy(),
            # the policy's own distribution: the KL terms (target_kl, FOCOPS, the anchor) measure
            # how the policy moves, the shield being a fixed function of its cost model
            {key: v.numpy() for key, v in out.dist.params().items()},
            None if mask is None else mask.numpy(),
        )

    def _shield_mask(self, out: Any) -> Tensor | None:
        """The actions the cost shield allows at an acting step (None: no shield)."""
        if self.config.shield_threshold <= 0:
            return None
        return shield_mask(out.step_cost, self.config.shield_threshold)

    def _acting_distribution(self, out: Any) -> ActionDistribution:
        """The distribution actions are drawn from when acting: the policy's, shielded."""
        return shielded(out.dist, self._shield_mask(out))

    def _values_of(self, numpy_acting: NumpyActing | None, obs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Reward and cost values of env observations, in the state the policy is in now."""
        if numpy_acting is not None:
            return numpy_acting.values(numpy_obs(self._to_tensor(obs)))
        with torch.no_grad():
            value, cost_value = self.policy.values(self._to_tensor(obs), self._policy_state)
        return value.float().numpy(), cost_value.float().numpy()

    def remember_episode_lengths(self, lengths: list[int]) -> None:
        """Keep the last 100 finished episodes' lengths, for epochs in which none finishes."""
        self._recent_lengths = (self._recent_lengths + lengths)[-100:]

    def _epoch_stats(self, ep_returns: list[float], ep_costs: list[np.ndarray], ep_lengths: list[int]) -> EpochStats:
        if ep_returns:
            ep_length = float(np.mean(ep_lengths))
            return EpochStats(np.mean(ep_costs, axis=0), float(np.mean(ep_returns)), len(ep_returns), ep_length)
        # No episode finished this epoch (long episodes, short epochs). Estimate the episode cost
        # from the unfinished episodes' cost rate times the typical episode length, rather than
        # averaging an empty window (NaN) or skipping the multiplier update silently.
        length = np.mean(self._recent_lengths) if self._recent_lengths else self.env.max_episode_steps
        # PPO steers nothing by the episode cost, so the estimate is not worth a warning there
        warn = log.warning if type(self).update_multipliers is not OnPolicyAlgorithm.update_multipliers else log.debug
        if length is None or self._ep_len.sum() == 0:
            warn(
                "epoch %d: no episode finished and no episode length is known; the multipliers keep their values",
                self.epoch,
            )
            return EpochStats(None, None, 0)
        rate = self._ep_cost.sum(axis=0) / self._ep_len.sum()
        # said once per run: with long episodes and short epochs this is the normal case
        (log.debug if self._estimate_warned else warn)(
            "epoch %d: no episode finished; multipliers are driven by the cost rate of the running "
            "episodes times the episode length %.0f",
            self.epoch,
            length,
        )
        self._estimate_warned = True
        return EpochStats(rate * length, None, 0, float(length), estimated=True)

    # ---- update ---------------------------------------------------------------------------

    def _advantages(self, data: dict[str, Any]) -> None:
        c = self.config
        adv_r, ret = gae(
            data["rewards"], data["values"], data["next_values"], data["terminated"], data["dones"], c.gamma, c.gae_lambda
        )
        adv_c, cost_ret = gae(
            data["costs"],
            data["cost_values"],
            data["next_cost_values"],
            data["terminated"],
            data["dones"],
            c.cost_gamma,
            c.cost_gae_lambda,
        )
        data["adv_r"], data["ret"], data["adv_c"], data["cost_ret"] = adv_r, ret, adv_c, cost_ret
        w_r, w_c = self.advantage_weights()
        w_c = torch.as_tensor(w_c, dtype=adv_r.dtype)
        flat_c = adv_c.reshape(-1, adv_c.shape[-1])
        data["step_cost_weights"] = w_c  # the step-cost term's weights, in the advantage's units
        if c.advantage_scaling == "reward":  # validate() ensures normalize_advantages
            adv = w_r * (adv_r - adv_r.mean()) / (adv_r.std() + 1e-8) - (adv_c - flat_c.mean(0)) @ w_c
        else:
            adv = w_r * adv_r - adv_c @ w_c
            if c.normalize_advantages:
                # Divide by the same weighting of the separate standard deviations, not by the std
                # of the combination: where reward and cost advantages cancel (near the constrained
                # optimum) the step then shrinks instead of being blown up to unit size, so the
                # policy settles on the stochastic optimum rather than jumping between the corners.
                scale = w_r * adv_r.std() + (flat_c.std(0) * w_c).sum()
                adv = (adv - adv.mean()) / (scale + 1e-8)
                data["step_cost_weights"] = w_c / (scale + 1e-8)
        data["adv"] = adv

    def _sample_keys(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        """The per-step entries a minibatch carries: the anchor's distributions when there is an
        anchor, the cost shield's allowed actions when it acted, the step's costs when the policy
        has a one-step cost model to fit."""
        optional = tuple(key for key in ("anchor_dist", "action_mask") if key in data)
        return _SAMPLE_KEYS + optional + (("costs",) if self.policy.has_step_cost_model else ())

    def _minibatches(self, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Shuffled minibatches: flat samples, or padded episode segments for sequence policies."""
        if self.policy.is_sequence:
            yield from self._segment_minibatches(data)
            return
        horizon, n = data["rewards"].shape
        total = horizon * n
        perm = torch.from_numpy(self.np_rng.permutation(total))
        size = min(self.config.minibatch_size, total)
        for start in range(0, total - size + 1, size):
            idx = perm[start : start + size]
            yield {key: _flat_take(data[key], idx) for key in self._sample_keys(data)} | {"mask": None}

    def full_batch(self, data: dict[str, Any]) -> dict[str, Any]:
        """The whole epoch as one batch (flat, or every segment), for second-order solvers."""
        if self.policy.is_sequence:
            return self._gather_segments(data, _segments(data))
        return {key: _flat_take(data[key], None) for key in self._sample_keys(data)} | {"mask": None}

    def _segment_minibatches(self, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        segments = _segments(data)
        order = self.np_rng.permutation(len(segments))
        for group in _segment_groups([segments[j] for j in order], self.config.minibatch_size):
            yield self._gather_segments(data, group)

    def _gather_segments(
        self, data: dict[str, Any], group: list[tuple[int, int, int]], keys: Sequence[str] | None = None
    ) -> dict[str, Any]:
        length = max(g[2] for g in group)
        env_idx = torch.tensor([g[0] for g in group])
        t0 = torch.tensor([g[1] for g in group])
        lens = torch.tensor([g[2] for g in group])
        offs = torch.arange(length)
        mask = offs[None, :] < lens[:, None]
        t_idx = torch.minimum(t0[:, None] + offs[None, :], t0[:, None] + lens[:, None] - 1)
        e_idx = env_idx[:, None].expand_as(t_idx)
        mb = {key: _seq_take(data[key], t_idx, e_idx) for key in (keys or self._sample_keys(data))}
        mb["episode_start"] = data["episode_start"][t_idx, e_idx]
        mb["t_idx"], mb["e_idx"] = t_idx, e_idx
        # Every segment gets its env's state at the rollout start: the first segment of an env
        # continues from it, and the others begin with episode_start set, where the policy resets.
        mb["state"] = state_map(lambda s: s[env_idx], data["start_state"])
        mb["mask"] = mask
        return mb

    def _anchor_distributions(self, data: dict[str, Any]) -> dict[str, Tensor]:
        """The anchor's action-distribution parameters at every rollout step, ``[T, N, ...]``,
        computed in minibatch-sized pieces (one forward pass of the frozen network per epoch)."""
        horizon, n = data["rewards"].shape
        size = self.config.minibatch_size
        with torch.no_grad():
            if not self.policy.is_sequence:
                pieces = []
                for i in range(0, horizon * n, size):
                    rows = torch.arange(i, min(i + size, horizon * n))
                    pieces.append(self.anchor.action_distribution({"obs": _flat_take(data["obs"], rows), "mask": None}).params())
                return {
                    key: torch.cat([piece[key] for piece in pieces]).reshape(horizon, n, *pieces[0][key].shape[1:])
                    for key in pieces[0]
                }
            result: dict[str, Tensor] = {}
            for group in _segment_groups(_segments(data), size):
                mb = self._gather_segments(data, group, keys=("obs",))
                params = self.anchor.action_distribution(mb).params()
                t_idx, e_idx, mask = mb["t_idx"], mb["e_idx"], mb["mask"]
                for key, value in params.items():
                    if key not in result:
                        result[key] = torch.zeros(horizon, n, *value.shape[2:], dtype=value.dtype)
                    result[key][t_idx[mask], e_idx[mask]] = value[mask]
            return result

    def _clip(self, params: Iterator[nn.Parameter]) -> None:
        if self.config.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(list(params), self.config.max_grad_norm)

    def _update(self, data: dict[str, Any], stats: EpochStats) -> dict[str, float]:
        if self.global_step <= self.config.critic_warmup_steps:
            self._advantages(data)  # the critics' regression targets
            return self.minibatch_updates(data, train_actor=False) | {"Train/CriticWarmup": 1.0}
        info = self.update_multipliers(stats)
        self._advantages(data)
        if self.config.lr_schedule == "linear" and self._total_steps:
            frac = max(0.0, 1.0 - self.global_step / self._total_steps)
            for g in self.actor_optimizer.param_groups:
                g["lr"] = self.config.actor_lr * frac
        if self.anchor is not None:
            data["anchor_dist"] = self._anchor_distributions(data)
        info |= self.update_policy(data)
        with torch.no_grad():
            flat = {key: _flat_take(data[key], None) for key in ("obs", "actions", "old_dist")} | {"mask": None}
            if not self.policy.is_sequence:
                dist = self.policy.action_distribution(flat)
                info["Train/KL"] = float(dist.kl_from(flat["old_dist"]).mean())
                info["Train/PolicyEntropy"] = float(dist.entropy().mean())
        return info

    # ---- public API -----------------------------------------------------------------------

    def learn(
        self, total_steps: int, callback: Callable[["OnPolicyAlgorithm", dict[str, Any]], Any] | None = None
    ) -> "OnPolicyAlgorithm":
        """Train until ``global_step`` reaches ``total_steps`` (a count since the run began, so a
        loaded checkpoint finishes the interrupted run to the same total). Returns self.

        ``callback(algo, info)`` runs after every epoch with the values just logged; returning
        ``False`` stops training there (the checkpoint is still written)."""
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        self._total_steps = total_steps
        logger = self._open_logger(total_steps)
        try:
            while self.global_step < total_steps:
                t0 = time.perf_counter()
                data, stats, info = self._collect()
                t1 = time.perf_counter()
                info |= self._update(data, stats)
                t2 = time.perf_counter()
                self.epoch += 1
                self._accumulate_tail(total_steps, info)
                info.update(
                    {
                        "Time/Rollout": t1 - t0,
                        "Time/Update": t2 - t1,
                        "Time/SPS": self.config.steps_per_epoch / max(t2 - t0, 1e-9),
                        "Train/Epoch": self.epoch,
                    }
                )
                info.pop("time_env", None)
                self.last_info = info
                if logger is not None:
                    logger.log(self.global_step, info)
                    every = self.config.checkpoint_every
                    if every and self.epoch % every == 0:
                        self.save(self.run_dir / "checkpoint.pt")
                if callback is not None and callback(self, info) is False:
                    break
            if self.global_step >= total_steps:
                self._apply_tail()
            if self.run_dir is not None:
                self.save(self.run_dir / "checkpoint.pt")
        finally:
            if logger is not None:
                logger.close()
                self._logger = None
        return self

    def _accumulate_tail(self, total_steps: int, info: dict[str, Any]) -> None:
        fraction = self.config.average_last
        if fraction <= 0.0 or not in_averaged_tail(self.global_step, total_steps, fraction):
            return
        if self._tail is None or self._tail_total != total_steps:
            self._tail, self._tail_total = WeightAverage(self.policy.actor_parameters()), total_steps
        self._tail.add(self.policy.actor_parameters())
        info["Train/AveragedIterates"] = self._tail.count

    def _apply_tail(self) -> None:
        if self._tail is None:
            return
        self._tail.put_into(self.policy.actor_parameters())
        log.info("the actor is the average of its last %d iterates (average_last)", self._tail.count)
        self._tail = self._tail_total = None

    def _open_logger(self, total_steps: int):
        if self._run_dir_arg is False:
            return None
        from cmdp.runlog import RunLogger, default_run_dir

        if self.run_dir is None:
            if self._run_dir_arg in (None, True):
                self.run_dir = default_run_dir(self.name, self.env_id or "custom", self.seed)
            else:
                self.run_dir = Path(self._run_dir_arg)
        self._logger = RunLogger(
            self.run_dir,
            self.describe(),
            tensorboard=self.config.tensorboard,
            progress_bar=self.config.progress_bar,
            total_steps=total_steps,
            resume_step=self.global_step if self.global_step > 0 else None,
        )
        return self._logger

    def describe(self) -> dict[str, Any]:
        """The run's configuration as written to config.json and into checkpoints."""
        return {
            "algo": self.name,
            "env_id": self.env_id,
            "seed": self.seed,
            "cost_limit": None if self.cost_limit is None else self.cost_limit.tolist(),
            "cost_names": list(self.cost_names),
            "config": self.config.to_dict(),
        }

    def normalize_observation(self, obs: Any) -> Any:
        """Apply the training env's observation normalisation (frozen) to raw observations."""
        normalizer = _find_normalizer(self.env)
        return obs if normalizer is None else normalizer.normalize(obs)

    def predict(
        self, obs: Any, state: Any = None, episode_start: np.ndarray | None = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of raw (unnormalised) observations; returns (actions, new state)."""
        obs = self.normalize_observation(obs)
        start = None if episode_start is None else torch.as_tensor(np.asarray(episode_start, dtype=bool))
        with torch.no_grad():
            out = self.policy.act(self._to_tensor(obs), state, start)
            dist = self._acting_distribution(out)
            action = dist.mode() if deterministic else dist.sample()
        return self.policy.to_env_action(action), out.state

    def evaluate(self, episodes: int = 10, seed: int | None = None, deterministic: bool = False) -> dict[str, Any]:
        """Run ``episodes`` full episodes and report their means.

        Samples from the policy unless ``deterministic``: the optimum of a CMDP is in general
        stochastic. Episodes are split evenly across the eval envs in advance so that short
        episodes are not over-represented. Returns ``ep_return``, ``ep_length``, ``ep_cost``
        (summed over channels), ``ep_costs`` (per channel), ``cost_limit``, ``episodes`` and,
        where the env reports ``info["success"]``, ``success_rate``.
        """
        if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
            raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
        seed = self.seed + 10_000 if seed is None else seed
        num = min(episodes, self.config.num_envs, 16)
        env = None
        if self.env_id is not None or (callable(self._env_source) and not isinstance(self._env_source, VectorCMDP)):
            normalizer = _find_normalizer(self.env)
            env = self._build_env(self._env_source, num, seed, obs_rms=normalizer.obs_rms if normalizer else None)
            own_env = True
        else:
            env, own_env = self.env, False
            num = env.num_envs
            self._obs = None  # training restarts its episodes after evaluating on its own env
        try:
            return self._run_episodes(env, episodes, seed, deterministic)
        finally:
            if own_env:
                env.close()

    def _run_episodes(self, env: VectorCMDP, episodes: int, seed: int, deterministic: bool) -> dict[str, Any]:
        n, k = env.num_envs, env.num_costs
        quota = np.full(n, episodes // n)
        quota[: episodes % n] += 1
        normalizer = _find_normalizer(env)
        frozen = normalizer.update if normalizer is not None else None
        if normalizer is not None:
            normalizer.update = False
        with seeded_torch(seed):
            try:
                obs, _ = env.reset(seed=seed)
                state = self.policy.initial_state(n)
                start = np.ones(n, dtype=bool)
                ret, cost, length = np.zeros(n), np.zeros((n, k)), np.zeros(n, dtype=np.int64)
                rets, costs, lengths, successes = [], [], [], []
                done_count = np.zeros(n, dtype=np.int64)
                while (done_count < quota).any():
                    with torch.no_grad():
                        out = self.policy.act(self._to_tensor(obs), state, torch.from_numpy(start))
                        dist = self._acting_distribution(out)
                        action = dist.mode() if deterministic else dist.sample()
                    obs, r, c, term, trunc, info = env.step(self.policy.to_env_action(action))
                    state = out.state
                    ret += r
                    cost += np.asarray(c).reshape(n, k)
                    length += 1
                    done = term | trunc
                    for i in np.flatnonzero(done):
                        if done_count[i] < quota[i]:
                            rets.append(ret[i])
                            costs.append(cost[i].copy())
                            lengths.append(length[i])
                            if "success" in info:
                                successes.append(bool(info["success"][i]))
                        done_count[i] += 1
                        ret[i], cost[i], length[i] = 0.0, 0.0, 0
                    start = done
            finally:
                if normalizer is not None:
                    normalizer.update = frozen
        mean_costs = np.mean(costs, axis=0)
        result: dict[str, Any] = {
            "ep_return": float(np.mean(rets)),
            "ep_return_std": float(np.std(rets)),
            "ep_length": float(np.mean(lengths)),
            "ep_cost": float(mean_costs.sum()),
            "ep_costs": {name: float(v) for name, v in zip(self.cost_names, mean_costs)},
            "cost_limit": None if self.cost_limit is None else self.cost_limit.tolist(),
            "episodes": len(rets),
        }
        if successes:
            result["success_rate"] = float(np.mean(successes))
        return result

    # ---- checkpoints ----------------------------------------------------------------------

    def solver_state(self) -> dict[str, Any]:
        """Solver-specific state to checkpoint (multipliers)."""
        return {}

    def load_solver_state(self, state: Mapping[str, Any]) -> None:
        pass

    def save(self, path: str | Path) -> Path:
        """Write everything needed to resume exactly, atomically, to ``path``."""
        try:
            env_state = self.env.state_dict()
        except NotImplementedError:
            env_state = None
        normalizer = _find_normalizer(self.env)
        run = self.describe()
        # objects a weights_only load refuses are left out, marked, for load() to ask for again
        env_kwargs = ckpt.without_unstorable(self.config.env_kwargs)
        run["config"] = dict(run["config"], env_kwargs=ckpt.to_storable(env_kwargs))
        run["unstorable_env_kwargs"] = ckpt.find_unstorable(env_kwargs)
        data = {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "run": run,
            "spaces": _space_signature(self.env),
            "policy": self.policy.state_dict(),
            # a network given to the run (a VLA): load() rebuilds it from this without being given it
            "architecture": self.policy.architecture(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "solver": ckpt.to_storable(self.solver_state()),
            "env_state": ckpt.to_storable(env_state),
            # kept apart from the env state so envs that cannot save themselves keep their scale
            "obs_rms": ckpt.to_storable(normalizer.obs_rms_state_dict()) if normalizer is not None else None,
            "rollout": ckpt.to_storable(
                {
                    "obs": self._obs if env_state is not None else None,
                    "policy_state": self._policy_state if env_state is not None else None,
                    "episode_start": self._episode_start,
                    "ep_return": self._ep_return,
                    "ep_cost": self._ep_cost,
                    "ep_len": self._ep_len,
                    "recent_lengths": list(self._recent_lengths),
                }
            ),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": ckpt.to_storable(self.np_rng.bit_generator.state),
                "python": _python_rng_state(),
            },
            "counters": {"global_step": self.global_step, "epoch": self.epoch},
            "anchor": None if self.anchor is None else self.anchor.state_dict(),
            "iterate_average": None if self._tail is None else {"total_steps": self._tail_total, **self._tail.state_dict()},
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
        }
        return ckpt.atomic_save(data, path)

    @classmethod
    def load(
        cls, path: str | Path, env: Any = None, policy: ActorCritic | None = None, **overrides: Any
    ) -> "OnPolicyAlgorithm":
        """Rebuild a solver from a checkpoint. ``env`` replaces the saved env id (it must have the
        same spaces and cost channels); ``policy`` is an untrained instance of the network the run
        was given with ``policy=``, its weights are replaced by the saved ones. It is needed only
        for a custom network: the config rebuilds the built-in ones, and a network that records
        its :meth:`~cmdp.policies.base.ActorCritic.architecture` (the VLA policy) is rebuilt from
        the file. ``overrides`` change config values (e.g. progress_bar, shield_threshold).

        ``env_kwargs=`` updates the saved env kwargs key by key. It must give again every env
        kwarg that held a Python object a checkpoint cannot store (a cost function; the file
        lists them under ``run["unstorable_env_kwargs"]``), unless ``env`` is a built env."""
        data = ckpt.load(path)
        run = data["run"]
        algo_cls = cls
        if cls.name != run["algo"]:
            from cmdp.algorithms import get_algorithm

            algo_cls = get_algorithm(run["algo"])
            if not issubclass(algo_cls, cls):
                raise CheckpointError(f"{path} holds a {run['algo']} run, not {cls.name}")
        source = env if env is not None else run["env_id"]
        if source is None:
            raise CheckpointError(
                f"{path} was trained on a custom env that cannot be rebuilt from its id: pass env="
            )
        env_kwargs = _resumed_env_kwargs(path, run, env, overrides.pop("env_kwargs", None))
        config = dict(run["config"]) | overrides
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        config["env_kwargs"] = env_kwargs
        run_dir = data.get("run_dir")
        if policy is None and data.get("architecture") is not None:  # absent before it was recorded
            policy = policy_from_architecture(data["architecture"])
        rebuilt_from_config = policy is None
        algo = algo_cls(
            source, cost_limit=run["cost_limit"], seed=run["seed"], run_dir=run_dir or False, policy=policy, **config
        )
        _check_signature(path, data["spaces"], _space_signature(algo.env))
        try:
            algo.policy.load_state_dict(data["policy"])
            algo.actor_optimizer.load_state_dict(data["actor_optimizer"])
            algo.critic_optimizer.load_state_dict(data["critic_optimizer"])
            if algo.anchor is not None:
                if data.get("anchor") is None:
                    raise CheckpointError(f"{path} was trained without anchor_kl: it holds no anchor policy to resume against")
                algo.anchor.load_state_dict(data["anchor"])
        except (RuntimeError, ValueError, KeyError) as e:
            hint = (
                " (the run may have been given its network as an object, and this checkpoint predates the "
                "recorded architecture: pass an untrained instance with load(path, policy=...))"
                if rebuilt_from_config
                else ""
            )
            raise CheckpointError(f"{path}: the saved networks do not fit this policy{hint}: {e}") from e
        algo.load_solver_state(ckpt.from_storable(data["solver"]))
        algo.global_step = int(data["counters"]["global_step"])
        algo.epoch = int(data["counters"]["epoch"])
        tail = data.get("iterate_average")  # absent from checkpoints written before it existed
        if tail is not None:
            algo._tail, algo._tail_total = WeightAverage.from_state_dict(tail), int(tail["total_steps"])
        normalizer = _find_normalizer(algo.env)
        if (normalizer is None) != (data.get("obs_rms") is None):
            raise CheckpointError(f"{path}: normalize_obs differs between the checkpoint and this config")
        if normalizer is not None:
            normalizer.load_obs_rms_state(ckpt.from_storable(data["obs_rms"]))
        roll = ckpt.from_storable(data["rollout"])
        env_state = ckpt.from_storable(data["env_state"])
        if env_state is not None:
            try:
                algo.env.load_state_dict(env_state)
            except NotImplementedError:
                env_state = None
        if env_state is not None:
            algo._obs = roll["obs"]
            algo._policy_state = roll["policy_state"]
            algo._episode_start = roll["episode_start"]
            algo._ep_return, algo._ep_cost, algo._ep_len = roll["ep_return"], roll["ep_cost"], roll["ep_len"]
        else:
            log.warning("%s: the env state could not be saved or restored; training restarts its episodes", path)
            algo._obs = None
        algo._recent_lengths = list(roll["recent_lengths"])
        torch.set_rng_state(data["rng"]["torch"])
        algo.np_rng.bit_generator.state = ckpt.from_storable(data["rng"]["numpy"])
        random.setstate(_python_rng_from(data["rng"]["python"]))
        return algo

    def close(self) -> None:
        if self._rollout_workers is not None:
            self._rollout_workers.close()
            self._rollout_workers = None
        self.env.close()


# ---- helpers ------------------------------------------------------------------------------


def in_averaged_tail(step: int, total_steps: int, fraction: float) -> bool:
    """Whether the epoch that ended at ``step`` is one ``average_last=fraction`` averages."""
    return step > (1.0 - fraction) * total_steps


class WeightAverage:
    """Running mean of a network's weights (float64 sums), to average its iterates."""

    def __init__(self, params: Iterable[Tensor]):
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        self.count = 0

    @torch.no_grad()
    def add(self, params: Iterable[Tensor]) -> None:
        for total, param in zip(self.sums, params):
            total += param
        self.count += 1

    @torch.no_grad()
    def put_into(self, params: Iterable[Tensor]) -> None:
        """Overwrite ``params`` with the mean of the weights added so far."""
        for total, param in zip(self.sums, params):
            param.copy_(total / self.count)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "WeightAverage":
        average = cls([])
        average.sums, average.count = list(state["sums"]), int(state["count"])
        return average

_SAMPLE_KEYS = ("obs", "actions", "logp", "old_dist", "adv", "adv_r", "adv_c", "ret", "cost_ret")


def taken_log_prob(dist: ActionDistribution, batch: Mapping[str, Any]) -> Tensor:
    """Log-probabilities of the batch's actions under ``dist`` as the rollout drew them: shielded
    by the actions the cost shield allowed, where it acted. The probability ratios of every
    solver compare these with the rollout's ``logp``."""
    return shielded(dist, batch.get("action_mask")).log_prob(batch["actions"])


def _frozen_copy(module: ActorCritic) -> ActorCritic:
    frozen = copy.deepcopy(module)
    frozen.requires_grad_(False)
    return frozen


def _accumulate(sums: dict[str, float], terms: Mapping[str, Tensor]) -> None:
    for key, value in terms.items():
        sums[key] = sums.get(key, 0.0) + float(value.detach())


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of per-step values ``x``, over the valid (unpadded) steps when ``mask`` is given."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def _segments(data: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """Split each env's column of the rollout at episode starts: (env, first step, length)."""
    horizon, n = data["rewards"].shape
    starts = data["episode_start"].numpy().copy()
    starts[0] = True
    segments = []
    for env_i in range(n):
        ts = np.flatnonzero(starts[:, env_i])
        ends = np.append(ts[1:], horizon)
        segments += [(env_i, int(s), int(e - s)) for s, e in zip(ts, ends)]
    return segments


def _segment_groups(segments: Sequence[tuple[int, int, int]], steps: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive groups of ``segments`` holding at least ``steps`` steps each (the last: the rest)."""
    group: list[tuple[int, int, int]] = []
    count = 0
    for segment in segments:
        group.append(segment)
        count += segment[2]
        if count >= steps:
            yield group
            group, count = [], 0
    if group:
        yield group


def _flat_take(x: Any, idx: Tensor | None) -> Any:
    """Flatten the [T, N] leading dims and take rows ``idx`` (all rows if None)."""
    if isinstance(x, Mapping):
        return {k: _flat_take(v, idx) for k, v in x.items()}
    flat = x.reshape(-1, *x.shape[2:])
    return flat if idx is None else flat[idx]


def _seq_take(x: Any, t_idx: Tensor, e_idx: Tensor) -> Any:
    if isinstance(x, Mapping):
        return {k: _seq_take(v, t_idx, e_idx) for k, v in x.items()}
    return x[t_idx, e_idx]


def _copy_obs(obs: Any) -> Any:
    if isinstance(obs, Mapping):
        return {k: v.clone() for k, v in obs.items()}
    return obs.clone()


def _stack_obs(obs_list: list[Any]) -> Any:
    first = obs_list[0]
    if isinstance(first, Mapping):
        return {k: torch.stack([o[k] for o in obs_list]) for k in first}
    return torch.stack(obs_list)


def _float_leaves(obs: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    if isinstance(obs, Mapping):
        for k, v in obs.items():
            yield from _float_leaves(v, f"{prefix}[{k!r}]")
    else:
        arr = np.asarray(obs)
        if np.issubdtype(arr.dtype, np.floating):
            yield prefix, arr


def _find_normalizer(env: Any):
    from cmdp.core.wrappers import NormalizeObservation

    while env is not None:
        if isinstance(env, NormalizeObservation):
            return env
        env = getattr(env, "env", None)
    return None


def _space_signature(env: VectorCMDP) -> dict[str, Any]:
    return {
        "observation_space": repr(env.observation_space),
        "action_space": repr(env.action_space),
        "cost_names": list(env.cost_names),
    }


def _check_signature(path: Any, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    problems = [
        f"{key}: checkpoint has {saved[key]}, env has {current[key]}"
        for key in ("observation_space", "action_space", "cost_names")
        if saved.get(key) != current.get(key)
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit this env; " + "; ".join(problems))


def _resumed_env_kwargs(path: Any, run: Mapping[str, Any], env: Any, given: Mapping[str, Any] | None) -> dict:
    """The saved env kwargs updated by the ``env_kwargs`` given to load(); raises when the env
    would be built without an object the checkpoint could not store."""
    saved = ckpt.from_storable(run["config"].get("env_kwargs") or {})
    env_kwargs = saved | dict(given or {})
    missing = ckpt.find_unstorable(env_kwargs)
    # a built env is used as it is: the env kwargs are not passed to anything
    if missing and not isinstance(env, VectorCMDP):
        held = ", ".join(f"{where} ({what})" for where, what in missing.items())
        keys = sorted({where.split("[", 1)[0] for where in missing})
        example = ", ".join(f"{k!r}: <the same object>" for k in keys)
        raise CheckpointError(
            f"{path}: the run's env_kwargs held Python objects that a checkpoint cannot store: {held}; "
            f"pass the same objects to load(): load(path, env_kwargs={{{example}}}), or pass the built env as env="
        )
    return env_kwargs


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _python_rng_from(state: Sequence) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
