"""Policies: the actor-critic interface, MLP actor-critics and action distributions."""

from cmdp.policies.base import ActorCritic, PolicyOutput
from cmdp.policies.distributions import ActionDistribution, Categorical, DiagGaussian
from cmdp.policies.mlp import MLPActorCritic

__all__ = ["ActorCritic", "PolicyOutput", "MLPActorCritic", "ActionDistribution", "Categorical", "DiagGaussian"]
