"""CMDP protocol, vector envs, wrappers and the env registry."""

from cmdp.core.registry import builtin_ids, make, register
from cmdp.core.vector import VectorCMDP

__all__ = ["VectorCMDP", "make", "register", "builtin_ids"]
