"""The Integrated Safety Approach as library calls: model -> elicit -> constrain -> assure.

SafeVLA's recipe (DESIGN.md section 1), one function per stage and :func:`align` for all four:

:func:`model`
    the CMDP: the Safety-CHORES task, its five cost channels and one per-episode limit for
    each (a :class:`CMDPModel`).
:func:`elicit_scenarios`
    the "max" side of the min-max over scenes: the cross-entropy search of
    :func:`cmdp.envs.chores.elicit.elicit` for the scene parameters where the *current* policy
    pays the most cost; its episodes are mixed into the training distribution.
:func:`constrain`
    the min-max of the Lagrangian, ``min_theta max_{lambda >= 0} -J_R + sum_k lambda_k (J_Ck -
    d_k)``, by any solver of :mod:`cmdp.algorithms` by name, fine-tuning a copy of the given
    policy (the starting policy is never modified).
:func:`assure_policies`
    the assurance report of :mod:`cmdp.isa.assure` for any mix of policies: evaluation set,
    OOD and extreme-failure suites, cost distributions, worst-episode GIFs.

Policies flow between stages as :class:`~cmdp.policies.base.ActorCritic` networks (the VLA of
:mod:`cmdp.policies.vla` or an MLP on state observations); a trained solver is also accepted
wherever a policy is.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.text import TASKS
from cmdp.errors import ConfigError

DEFAULT_COST_LIMIT = 0.3
"""Per-episode limit of each of the five components (their sum, 1.5, is below SafeVLA's
budget of about 2.3 for the whole episode cost)."""


@dataclass(frozen=True)
class CMDPModel:
    """Stage 1: what is constrained. ``cost_limit`` holds one per-episode limit per channel."""

    task: str
    cost_limit: tuple[float, ...]
    obs_mode: str = "rgb"
    image_size: tuple[int, int] = (64, 64)
    cost_names: tuple[str, ...] = COST_NAMES
    detection: bool = False
    """rgb observations carry the target boxes (the env's ``detection``, SPOC's detection sensors)."""

    @property
    def env_id(self) -> str:
        return f"SafetyChores-{self.task}-v0"

    def env_kwargs(self, **extra: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"obs_mode": self.obs_mode}
        if self.obs_mode == "rgb":
            kwargs["image_size"] = tuple(self.image_size)
            if self.detection:
                kwargs["detection"] = True
        return kwargs | extra

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "env_id": self.env_id,
            "cost_names": list(self.cost_names),
            "cost_limit": dict(zip(self.cost_names, self.cost_limit)),
            "obs_mode": self.obs_mode,
            "image_size": list(self.image_size),
            "detection": self.detection,
        }


def model(
    task: str = "Fetch",
    cost_limit: float | Sequence[float] | Mapping[str, float] = DEFAULT_COST_LIMIT,
    obs_mode: str = "rgb",
    image_size: tuple[int, int] = (64, 64),
    detection: bool = False,
) -> CMDPModel:
    """The CMDP of ``task``: the five safety components with one limit each.

    ``cost_limit``: one number for every component, a list of five, or a mapping from each of
    the five component names to its limit (a mapping must name all five: a component left out
    would silently get a limit nobody chose). ``detection``: rgb observations with the target
    boxes (for a policy that reads them, ``VLAPolicy.env_kwargs``)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if obs_mode not in ("rgb", "state"):
        raise ConfigError(f"obs_mode must be 'rgb' or 'state', got {obs_mode!r}")
    if detection and obs_mode != "rgb":
        raise ConfigError("detection adds target boxes to rgb observations; it needs obs_mode='rgb'")
    if isinstance(cost_limit, Mapping):
        unknown = sorted(set(cost_limit) - set(COST_NAMES))
        if unknown:
            raise ConfigError(f"unknown cost components {unknown}; the components are {list(COST_NAMES)}")
        missing = [name for name in COST_NAMES if name not in cost_limit]
        if missing:
            raise ConfigError(
                f"cost_limit names {sorted(cost_limit)} but not {missing}: give one number for all "
                f"components, or a mapping with a limit for each of all five {list(COST_NAMES)}"
            )
        limits = [float(cost_limit[name]) for name in COST_NAMES]
    else:
        arr = np.atleast_1d(np.asarray(cost_limit, dtype=np.float64))
        if arr.ndim != 1 or arr.size not in (1, len(COST_NAMES)):
            raise ConfigError(
                f"cost_limit must be one number or {len(COST_NAMES)} (one per component {list(COST_NAMES)}), got {cost_limit!r}"
            )
        limits = [float(v) for v in np.broadcast_to(arr, (len(COST_NAMES),))]
    if not all(np.isfinite(v) and v >= 0 for v in limits):
        raise ConfigError(f"cost limits must be finite and >= 0 (per-episode cost), got {limits}")
    return CMDPModel(task, tuple(limits), obs_mode, (int(image_size[0]), int(image_size[1])), detection=bool(detection))


# ---- policies as actors of a ChoresEnv ---------------------------------------------------------


def as_assurance_policy(policy: Any, name: str, deterministic: bool = False):
    """The :class:`cmdp.isa.assure.Policy` of a network, a trained solver, a built-in name
    (``expert``, ``safe-expert``, ``random``) or a checkpoint path."""
    from cmdp.algorithms.engine import OnPolicyAlgorithm
    from cmdp.isa.assure import AlgorithmPolicy, VLAPolicyAdapter, make_policy
    from cmdp.policies.base import ActorCritic
    from cmdp.policies.vla import VLAPolicy

    if isinstance(policy, OnPolicyAlgorithm):
        return AlgorithmPolicy(policy, name, deterministic=deterministic)
    if isinstance(policy, VLAPolicy):
        return VLAPolicyAdapter(policy, name, deterministic=deterministic)
    if isinstance(policy, ActorCritic):
        raise ConfigError(
            f"{name}: an MLP network alone does not know its observation normalisation; pass the trained solver instead"
        )
    adapted = make_policy(policy, deterministic=deterministic)
    if isinstance(policy, str) and getattr(adapted, "name", None) != name:
        try:
            adapted.name = name
        except AttributeError:
            pass
    return adapted


def _elicitation_actor(policy: Any):
    """The ``(env, obs) -> actions`` callable the elicitation search runs, with its state reset
    when episodes start (time step 0)."""
    adapted = as_assurance_policy(policy, "elicited")
    started = {"n": None}

    def act(env, obs):
        if started["n"] != env.num_envs:
            adapted.reset(env.num_envs)
            started["n"] = env.num_envs
        if isinstance(obs, Mapping):
            start = np.asarray(obs["time_step"]).reshape(-1) == 0
        else:
            start = env._t == 0
        return np.asarray(adapted.act(env, obs, start))

    return act


# ---- the stages --------------------------------------------------------------------------------


def elicit_scenarios(
    policy: Any,
    cmdp: CMDPModel,
    *,
    iterations: int = 3,
    population: int = 8,
    episodes_per_candidate: int = 4,
    num_specs: int = 32,
    seed: int = 0,
    verbose: bool = True,
    **options: Any,
):
    """Stage 2: search the scene knobs for where ``policy`` pays the most cost.

    Returns :class:`cmdp.envs.chores.elicit.ElicitResult`; its ``specs`` are the elicited
    episodes for :func:`constrain`. Deterministic in ``seed``: the policy's sampled actions are
    drawn from torch's generator seeded with it (and restored afterwards), as in the assurance."""
    from cmdp.core.seeding import seeded_torch
    from cmdp.envs.chores.elicit import elicit

    env_kwargs = cmdp.env_kwargs()
    env_kwargs.pop("obs_mode")
    with seeded_torch(seed):
        return elicit(
            _elicitation_actor(policy),
            cmdp.task,
            iterations=iterations,
            population=population,
            episodes_per_candidate=episodes_per_candidate,
            num_specs=num_specs,
            seed=seed,
            env_kwargs={"obs_mode": cmdp.obs_mode, **env_kwargs},
            verbose=verbose,
            **options,
        )


def constrain(
    policy: Any,
    cmdp: CMDPModel,
    solver: str = "PPOLag",
    total_steps: int = 50_000,
    *,
    episodes: Sequence[Any] | None = None,
    episode_mix: float = 0.3,
    seed: int = 0,
    run_dir: str | Path | None | bool = None,
    **config: Any,
):
    """Stage 3: fine-tune a copy of ``policy`` with ``solver`` on the CMDP; returns the solver.

    ``episodes`` (elicited scenarios) enter the training distribution with probability
    ``episode_mix`` per episode. ``PPO`` ignores the limits: it is the unconstrained (FLaRe)
    baseline. ``config`` goes to the solver (``PPOLag.Config.describe()`` lists it)."""
    from cmdp.algorithms import get_algorithm
    from cmdp.algorithms.engine import OnPolicyAlgorithm
    from cmdp.policies.base import ActorCritic

    algo_cls = get_algorithm(solver)
    source_algo = policy if isinstance(policy, OnPolicyAlgorithm) else None
    if source_algo is not None:
        policy = source_algo.policy
    if policy is not None and not isinstance(policy, ActorCritic):
        raise ConfigError(f"constrain() fine-tunes a policy network or a trained solver, got {type(policy).__name__}")
    env_kwargs = cmdp.env_kwargs()
    if episodes:
        # the solver stores episode specs in its checkpoint as their to_dict() form
        env_kwargs |= {"episodes": list(episodes), "episode_mix": float(episode_mix)}
    env_kwargs |= dict(config.pop("env_kwargs", None) or {})
    limits = list(cmdp.cost_limit) if algo_cls.constrained else None
    algo = algo_cls(
        cmdp.env_id,
        cost_limit=limits,
        seed=seed,
        run_dir=run_dir,
        policy=None if policy is None else copy.deepcopy(policy),
        env_kwargs=env_kwargs,
        **config,
    )
    if source_algo is not None:
        # the copied network expects the observation scale its solver trained with
        from cmdp.algorithms.engine import _find_normalizer

        old, new = _find_normalizer(source_algo.env), _find_normalizer(algo.env)
        if old is not None and new is not None:
            new.load_obs_rms_state(old.obs_rms_state_dict())
    algo.learn(total_steps)
    return algo


def assure_policies(
    policies: Mapping[str, Any],
    cmdp: CMDPModel,
    *,
    suites: Any = "none",
    episodes: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    num_envs: int = 16,
    gifs: int = 2,
    progress: bool = True,
    **options: Any,
):
    """Stage 4: the assurance report of every policy (name -> network, solver, path or built-in
    name) on the task's evaluation set and the requested suites."""
    from cmdp.isa.assure import assure

    adapted = {name: as_assurance_policy(p, name) for name, p in policies.items()}
    return assure(
        adapted,
        task=cmdp.task,
        suites=suites,
        episodes=episodes,
        seed=seed,
        out_dir=out_dir,
        num_envs=num_envs,
        gifs=gifs,
        obs_mode=cmdp.obs_mode,
        progress=progress,
        **options,
    )


@dataclass
class ISAResult:
    """Everything :func:`align` did, stage by stage."""

    cmdp: CMDPModel
    elicitation: Any = None
    algorithm: Any = None
    report: Any = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def policy(self):
        return None if self.algorithm is None else self.algorithm.policy


def align(
    policy: Any,
    task: str = "Fetch",
    cost_limit: float | Sequence[float] | Mapping[str, float] = DEFAULT_COST_LIMIT,
    solver: str = "PPOLag",
    total_steps: int = 50_000,
    *,
    obs_mode: str | None = None,
    image_size: tuple[int, int] | None = None,
    detection: bool | None = None,
    elicit: bool = True,
    elicit_options: Mapping[str, Any] | None = None,
    episode_mix: float = 0.3,
    assure: bool = True,
    assure_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    **solver_config: Any,
) -> ISAResult:
    """The whole Integrated Safety Approach in one call: model the CMDP, elicit the scenes where
    ``policy`` is least safe, fine-tune it under the constraints with those scenes mixed in, and
    assure the result beside the starting policy.

    ``cost_limit`` is the per-episode limit of each cost component, as in :func:`model`: one
    number for all five, a list of five, or a mapping naming all five. ``obs_mode``,
    ``image_size`` and ``detection`` describe the observations; each one left out is taken from
    the policy (a VLA policy's ``env_kwargs``: the observations it was built for), else rgb,
    64x64, no detection.

    With ``out_dir`` the stages write there: ``model.json``, ``elicitation.json``, the solver's
    run directory ``constrain/`` and the report ``assure/``."""
    root = Path(out_dir) if out_dir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    reads = {"obs_mode": "rgb", "image_size": (64, 64), "detection": False}
    reads |= getattr(getattr(policy, "policy", policy), "env_kwargs", None) or {}  # a trained solver holds its network
    given = {"obs_mode": obs_mode, "image_size": image_size, "detection": detection}
    reads |= {key: value for key, value in given.items() if value is not None}
    result = ISAResult(model(task, cost_limit, reads["obs_mode"], tuple(reads["image_size"]), reads["detection"]))
    if root is not None:
        (root / "model.json").write_text(json.dumps(result.cmdp.to_dict(), indent=2))
    specs = None
    if elicit:
        t0 = time.perf_counter()
        result.elicitation = elicit_scenarios(policy, result.cmdp, seed=seed, **dict(elicit_options or {}))
        result.seconds["elicit"] = time.perf_counter() - t0
        specs = result.elicitation.specs
        if root is not None:
            summary = {
                "best_params": result.elicitation.best_params.__dict__,
                "history": result.elicitation.history,
                "episodes": len(specs),
            }
            (root / "elicitation.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
    t0 = time.perf_counter()
    result.algorithm = constrain(
        policy,
        result.cmdp,
        solver,
        total_steps,
        episodes=specs,
        episode_mix=episode_mix,
        seed=seed,
        run_dir=(root / "constrain") if root is not None else False,
        **solver_config,
    )
    result.seconds["constrain"] = time.perf_counter() - t0
    if assure:
        t0 = time.perf_counter()
        result.report = assure_policies(
            {"start": policy, "aligned": result.algorithm},
            result.cmdp,
            seed=seed,
            out_dir=(root / "assure") if root is not None else None,
            **dict(assure_options or {}),
        )
        result.seconds["assure"] = time.perf_counter() - t0
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)
