"""The actor-critic interface the on-policy engine trains.

Two kinds of policy plug in:

* **Feed-forward** (``is_sequence = False``): each step is independent. The engine hands
  :meth:`ActorCritic.evaluate` flat minibatches: ``batch["obs"]`` has shape ``[M, ...]``.
* **Sequence** (``is_sequence = True``): recurrent nets or causal transformers that carry state
  (a hidden vector, a KV cache) from step to step within an episode. :meth:`act` receives and
  returns that state; ``episode_start[i]`` tells the policy to forget env i's history first.
  The engine hands :meth:`evaluate` trajectory segments: ``batch["obs"]`` has shape
  ``[B, L, ...]``, ``batch["episode_start"]`` and ``batch["mask"]`` (padding) ``[B, L]``, and
  ``batch["state"]`` the state each segment started from (a tensor, or a tuple/dict of tensors,
  batch dimension first), so the log-probabilities it recomputes equal the ones seen while acting.

Every policy has a reward critic and one cost critic output per cost channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from cmdp.policies.distributions import ActionDistribution

Tensor = torch.Tensor
State = Any  # None, a Tensor, or a tuple/dict of Tensors with the batch dimension first


@dataclass
class PolicyOutput:
    dist: ActionDistribution
    value: Tensor  # [N] reward value
    cost_value: Tensor  # [N, K] one value per cost channel
    state: State = None
    step_cost: Tensor | None = None
    """``[N, A, K]``: the cost each channel charges on this step for each of ``A`` discrete
    actions, from policies with a one-step cost model (e.g. ``VLAConfig(step_cost_model=True)``)."""


class ActorCritic(nn.Module):
    """Base class of the policies the engine trains. See the module docstring."""

    is_sequence: bool = False
    num_costs: int

    @property
    def has_step_cost_model(self) -> bool:
        """Whether :meth:`evaluate` fills ``PolicyOutput.step_cost``."""
        return False

    def architecture(self) -> dict[str, Any] | None:
        """What a checkpoint needs to rebuild this network without being given it again
        (:func:`policy_from_architecture`), or None: the solver's config rebuilds the built-in
        networks, and a custom network is passed to ``load(..., policy=...)``."""
        return None

    def initial_state(self, batch_size: int) -> State:
        return None

    def act(self, obs: Any, state: State = None, episode_start: Tensor | None = None) -> PolicyOutput:
        """One step for a batch of envs: the action distribution, both critics, the new state."""
        raise NotImplementedError

    def values(self, obs: Any, state: State = None) -> tuple[Tensor, Tensor]:
        """Reward and cost values of ``obs`` (used to bootstrap from final observations)."""
        out = self.act(obs, state, None)
        return out.value, out.cost_value

    def evaluate(self, batch: Mapping[str, Any]) -> PolicyOutput:
        """Recompute distribution and values for a stored minibatch (flat or segments)."""
        raise NotImplementedError

    def action_distribution(self, batch: Mapping[str, Any]) -> ActionDistribution:
        """The action distributions :meth:`evaluate` gives for a stored minibatch, for updates that
        need no values. Policies whose critics are networks of their own override it to skip them."""
        return self.evaluate(batch).dist

    def actor_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def to_env_action(self, actions: Tensor) -> np.ndarray:
        raise NotImplementedError


def state_map(fn, state: State) -> State:
    """Apply ``fn`` to every tensor of a policy state."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, Mapping):
        return {k: state_map(fn, v) for k, v in state.items()}
    return type(state)(state_map(fn, s) for s in state)


def policy_from_architecture(architecture: Mapping[str, Any]) -> ActorCritic:
    """An untrained network as :meth:`ActorCritic.architecture` described it (the weights are
    loaded afterwards)."""
    from cmdp.errors import CheckpointError

    kind = architecture.get("kind") if isinstance(architecture, Mapping) else None
    if kind == "vla":
        from cmdp.policies.vla import VLAPolicy

        return VLAPolicy.from_architecture(architecture)
    raise CheckpointError(f"the checkpoint describes a policy network of unknown kind {kind!r}")
