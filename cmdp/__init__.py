"""cmdp: constrained reinforcement learning, from tiny CMDPs to safety alignment of VLA policies."""

from cmdp.core import VectorCMDP, make, register

__version__ = "0.1.0"

__all__ = ["VectorCMDP", "make", "register", "__version__"]
