"""cmdp: constrained reinforcement learning, from tiny CMDPs to safety alignment of VLA policies."""

from cmdp.core import VectorCMDP, make, register

__version__ = "0.1.0"


def _register_gymnasium_ids() -> None:
    # cheap: gymnasium stores an entry-point string; the simulator is imported on first make
    from cmdp.envs.chores.gym_env import register_gymnasium_ids

    register_gymnasium_ids()


_register_gymnasium_ids()

__all__ = ["VectorCMDP", "make", "register", "__version__"]
