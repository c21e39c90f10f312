"""Exceptions raised by cmdp. Each says what was wrong and, where it can, what is allowed."""

from __future__ import annotations


class CMDPError(Exception):
    """Base class of every error cmdp raises on purpose."""


class ConfigError(CMDPError, ValueError):
    """A configuration key or value is not allowed."""


class UnknownNameError(CMDPError, KeyError):
    """An env id or algorithm name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ActionShapeError(CMDPError, ValueError):
    """Actions passed to a vector env do not fit its action space."""


class NonFiniteError(CMDPError, FloatingPointError):
    """An env returned NaN or inf in an observation, reward or cost."""


class CheckpointError(CMDPError, ValueError):
    """A checkpoint is corrupted, truncated, or does not fit the env it is loaded with."""


class EnvWorkerError(CMDPError, RuntimeError):
    """An env worker process failed in a way that cannot be recovered."""
