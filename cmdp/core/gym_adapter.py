"""Gymnasium and safety-gymnasium envs as vector CMDPs.

Entry points: :func:`make_gymnasium` (a gymnasium id), :func:`from_env_fns` (callables that
return gymnasium envs) and :func:`make_safety_gymnasium` (a safety-gymnasium id).

How the pieces fit: a :class:`SingleEnvRunner` wraps one gymnasium env and owns everything
done per env per step (cost, time limit, auto-reset, observation dtype). Both vector envs drive
runners: :class:`SyncVectorCMDP` in this process, and
:class:`~cmdp.core.subproc.SubprocVectorCMDP` one per worker process. Auto-reset is done
here rather than with gymnasium's vector envs because their auto-reset semantics differ
between gymnasium 0.29 and 1.x.

Cost, per env and step, from the first source present:

1. ``cost_fn(obs, action, next_obs, info)`` if given (``obs``/``next_obs`` as the env returned
   them, before dtype conversion; ``next_obs`` is the true last observation on the final step);
2. the third element of a safety-gymnasium 6-tuple ``(obs, reward, cost, terminated,
   truncated, info)``;
3. ``info["cost"]``: a float, a sequence of K floats, or a mapping ``{channel name: float}``.

The number of channels K is fixed when the vector env is built, because the training engine
reads ``cost_names`` before the first step and no step may be spent to probe it. It comes from
the ``cost_names`` argument, else from the env's own declaration (an attribute
``cost_names`` on ``env.unwrapped``, or ``env.metadata["cost_names"]``), else it is one channel
named ``"cost"``. A step whose cost has another length raises :class:`~cmdp.errors.ConfigError`
telling you to pass ``cost_names=``; a step with no cost at all (no ``cost_fn``, no 6-tuple, no
``info["cost"]``) raises too: a missing cost is never silently read as zero.

Time limits: ``max_episode_steps`` of :func:`make_gymnasium` replaces the id's registered
limit (gymnasium's own ``TimeLimit``); for :func:`from_env_fns` the runner counts steps and
truncates. The vector protocol cannot reset a single env, so there is no time-limit vector
wrapper: limits live here.

Observations: float Box observations become float32 (and so does the reported space); integer
Box observations (images) keep their dtype; a Discrete observation is an int64 scalar, a batch
``[n]``; Dict spaces apply this per key. ``info["final_obs"]`` (present when some env finished)
holds the true last observations; ``info["success"]`` (present when some env reported
``success`` or ``is_success`` in its step info) is a bool array, False for envs that did not.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import gymnasium as gym
import numpy as np

from cmdp.core.vector import Obs, VectorCMDP, obs_stack
from cmdp.errors import ConfigError

EnvFn = Callable[[], gym.Env]
CostFn = Callable[[Any, Any, Any, dict], Any]
"""``cost_fn(obs, action, next_obs, info) -> float | sequence of K floats``, per env per step."""

__all__ = [
    "make_gymnasium",
    "make_safety_gymnasium",
    "from_env_fns",
    "SyncVectorCMDP",
    "SingleEnvRunner",
    "EnvStep",
    "CostFn",
    "EnvFn",
]

VECTORIZATIONS = ("sync", "subproc", "ray")
DEFAULT_COST_NAMES = ("cost",)


# ---- one env -------------------------------------------------------------------------------


class EnvStep(NamedTuple):
    """What one env did in one step, as a runner reports it (picklable, sent between processes)."""

    obs: Obs  # observation after the step: the next episode's first one if the episode ended
    reward: float
    cost: Any  # raw cost (float, sequence, mapping) or None if the env reported none
    terminated: bool
    truncated: bool
    final_obs: Obs | None  # the true last observation if the episode ended, else None
    success: bool | None  # info["success"] / info["is_success"] if the env reported it


class EnvDescription(NamedTuple):
    """The static facts of one env a vector env needs before the first reset."""

    observation_space: gym.Space  # after dtype conversion
    action_space: gym.Space
    cost_names: tuple[str, ...] | None  # declared by the env itself, if it does
    max_episode_steps: int | None
    metadata: dict


class SingleEnvRunner:
    """Steps one gymnasium env: cost, time limit, auto-reset and observation dtypes.

    ``max_episode_steps`` truncates an episode after that many steps (counted by the runner, on
    top of any limit inside the env). Used in-process by :class:`SyncVectorCMDP` and inside each
    worker of :class:`~cmdp.core.subproc.SubprocVectorCMDP`.
    """

    def __init__(self, env: gym.Env, cost_fn: CostFn | None = None, max_episode_steps: int | None = None) -> None:
        self.env = env
        self.cost_fn = cost_fn
        self.max_episode_steps = max_episode_steps
        self.observation_space, self._convert = obs_converter(env.observation_space)
        self._raw_obs: Any = None  # last observation as the env returned it (for cost_fn)
        self._elapsed = 0

    def describe(self) -> EnvDescription:
        limits = [self.max_episode_steps, getattr(getattr(self.env, "spec", None), "max_episode_steps", None)]
        limit = min((x for x in limits if x), default=None)  # whichever truncates first
        # plain values only: the description crosses process boundaries
        metadata = {k: v for k, v in dict(getattr(self.env, "metadata", None) or {}).items() if _is_plain(v)}
        return EnvDescription(
            self.observation_space, self.env.action_space, declared_cost_names(self.env), limit, metadata
        )

    def reset(self, seed: int | None) -> Obs:
        out = self.env.reset(seed=seed)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ConfigError(
                f"{type(self.env).__name__}.reset must return (obs, info) as in gymnasium; got "
                f"{type(out).__name__}. Old gym envs need a compatibility wrapper (shimmy)"
            )
        self._raw_obs = out[0]
        self._elapsed = 0
        return self._convert(out[0])

    def step(self, action: Any) -> EnvStep:
        out = self.env.step(action)
        if isinstance(out, tuple) and len(out) == 5:
            raw, reward, terminated, truncated, info = out
            cost = info.get("cost")
        elif isinstance(out, tuple) and len(out) == 6:  # safety-gymnasium
            raw, reward, cost, terminated, truncated, info = out
        else:
            got = f"a {len(out)}-tuple" if isinstance(out, tuple) else type(out).__name__
            raise ConfigError(
                f"{type(self.env).__name__}.step returned {got}; expected gymnasium's "
                "(obs, reward, terminated, truncated, info) or safety-gymnasium's "
                "(obs, reward, cost, terminated, truncated, info)"
            )
        if self.cost_fn is not None:
            cost = self.cost_fn(self._raw_obs, action, raw, info)
        self._elapsed += 1
        truncated = bool(truncated) or (self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps)
        terminated = bool(terminated)
        obs = self._convert(raw)
        final_obs = None
        if terminated or truncated:
            final_obs, obs = obs, self.reset(None)
        else:
            self._raw_obs = raw
        return EnvStep(obs, _as_float(reward, "reward"), cost, terminated, truncated, final_obs, _success(info))

    def close(self) -> None:
        self.env.close()


def call_env_fn(env_fn: EnvFn, index: int) -> gym.Env:
    """Call ``env_fn`` and check that it returned something that looks like a gymnasium env."""
    env = env_fn()
    missing = [a for a in ("reset", "step", "observation_space", "action_space") if not hasattr(env, a)]
    if missing:
        raise ConfigError(
            f"env_fns[{index}] returned a {type(env).__name__}, which lacks {', '.join(missing)}; "
            "it must return a gymnasium.Env"
        )
    return env


def declared_cost_names(env: gym.Env) -> tuple[str, ...] | None:
    """Cost channel names an env declares about itself, or None."""
    # gymnasium 1.x wrappers no longer forward attributes, so ask the unwrapped env
    names = getattr(getattr(env, "unwrapped", env), "cost_names", None)
    if names is None:
        names = (getattr(env, "metadata", None) or {}).get("cost_names")
    return None if names is None else check_cost_names(names)


def check_cost_names(names: Any) -> tuple[str, ...]:
    """Validate ``cost_names``: a name, or a non-empty sequence of distinct non-empty strings."""
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(names)
    except TypeError:
        raise ConfigError(f"cost_names must be a sequence of strings, got {names!r}") from None
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"cost_names must be distinct non-empty strings, at least one; got {names!r}")
    return names


def obs_converter(space: gym.Space) -> tuple[gym.Space, Callable[[Any], Obs]]:
    """The batched-observation space for ``space`` and a function converting one observation."""
    if isinstance(space, gym.spaces.Box):
        if np.issubdtype(space.dtype, np.floating):
            with np.errstate(over="ignore"):  # float64 bounds beyond float32 become +-inf
                space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
        dtype = space.dtype
        return space, lambda x: np.array(x, dtype=dtype)  # a copy: envs may reuse their buffers
    if isinstance(space, gym.spaces.Discrete):
        return space, np.int64
    if isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        dtype = space.dtype
        return space, lambda x: np.array(x, dtype=dtype)
    if isinstance(space, gym.spaces.Text):
        return space, str
    if isinstance(space, gym.spaces.Dict):
        parts = {k: obs_converter(s) for k, s in space.spaces.items()}
        fns = {k: fn for k, (_, fn) in parts.items()}
        return gym.spaces.Dict({k: s for k, (s, _) in parts.items()}), lambda x: {k: f(x[k]) for k, f in fns.items()}
    raise ConfigError(
        f"observation space {space} is not supported; allowed: Box, Discrete, MultiDiscrete, "
        "MultiBinary, Text, and Dict of those"
    )


def cost_vector(cost: Any, cost_names: tuple[str, ...], index: int) -> np.ndarray:
    """Turn the raw cost env ``index`` reported into a float64 array of ``len(cost_names)``."""
    if cost is None:
        raise ConfigError(
            f"env {index} reported no cost: its step info has no 'cost' key and no cost_fn was "
            "given (or cost_fn returned None). Report info['cost'] (a float, or one value per "
            "channel) or pass cost_fn=(obs, action, next_obs, info) -> float | array"
        )
    if isinstance(cost, Mapping):
        if set(cost) != set(cost_names):
            raise ConfigError(
                f"env {index} reported costs for channels {sorted(cost)} but the env was built with "
                f"cost_names={list(cost_names)}; pass cost_names= naming every channel, in order"
            )
        cost = [cost[name] for name in cost_names]
    vec = np.asarray(cost, dtype=np.float64).reshape(-1)
    if vec.size != len(cost_names):
        raise ConfigError(
            f"env {index} reported {vec.size} cost value(s) but the env was built with "
            f"{len(cost_names)} cost channel(s) {list(cost_names)}. K is fixed at construction "
            f"(default one channel 'cost'): pass cost_names= with one name per channel"
        )
    return vec


def collate_steps(
    steps: Sequence[EnvStep], cost_names: tuple[str, ...], restarted: np.ndarray | None = None
) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Batch per-env steps into the return value of :meth:`VectorCMDP.step`."""
    n = len(steps)
    cost = np.empty((n, len(cost_names)), dtype=np.float64)
    for i, s in enumerate(steps):
        cost[i] = cost_vector(s.cost, cost_names, i)
    reward = np.fromiter((s.reward for s in steps), np.float64, n)
    terminated = np.fromiter((s.terminated for s in steps), bool, n)
    truncated = np.fromiter((s.truncated for s in steps), bool, n)
    obs = obs_stack([s.obs for s in steps])
    info: dict[str, Any] = {}
    if (terminated | truncated).any():
        info["final_obs"] = obs_stack([s.obs if s.final_obs is None else s.final_obs for s in steps])
    if any(s.success is not None for s in steps):
        info["success"] = np.fromiter((bool(s.success) for s in steps), bool, n)
    if restarted is not None and restarted.any():
        info["restarted"] = restarted
    return obs, reward, cost, terminated, truncated, info


def _as_float(x: Any, what: str) -> float:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size != 1:
        raise ConfigError(f"the env returned a {what} of shape {arr.shape}; expected one number")
    return float(arr.reshape(()))


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool, type(None)))


def _success(info: Mapping[str, Any]) -> bool | None:
    for key in ("success", "is_success"):
        if key in info:
            return bool(info[key])
    return None


# ---- vector envs over runners --------------------------------------------------------------


class RunnerVectorCMDP(VectorCMDP):
    """What the sync and subprocess vector envs share: seeds, action checks and batching.

    Subclasses provide ``_reset_envs`` and ``_step_envs`` over their runners.
    """

    def _setup(self, descriptions: Sequence[EnvDescription], cost_names: Any, seed: int | None) -> None:
        first = descriptions[0]
        for i, d in enumerate(descriptions[1:], start=1):
            for what in ("observation_space", "action_space"):
                if getattr(d, what) != getattr(first, what):
                    raise ConfigError(
                        f"env {i} has {what} {getattr(d, what)} but env 0 has {getattr(first, what)}; "
                        "all envs of a vector env must share their spaces"
                    )
        self.num_envs = len(descriptions)
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        if cost_names is not None:
            self.cost_names = check_cost_names(cost_names)
        else:
            self.cost_names = first.cost_names or DEFAULT_COST_NAMES
        self.max_episode_steps = first.max_episode_steps
        self.metadata = first.metadata
        self._next_seed = check_seed(seed)  # used by the first reset() without a seed
        self._seed_base: int | None = None  # seed of the last seeded reset
        self._ready = False
        self._closed = False

    @abc.abstractmethod
    def _reset_envs(self, seeds: list[int | None]) -> tuple[list[Obs], np.ndarray | None]:
        """Reset env i with ``seeds[i]``; return the observations and which envs were restarted."""

    @abc.abstractmethod
    def _step_envs(self, actions: list[Any]) -> tuple[list[EnvStep], np.ndarray | None]:
        """Step env i with ``actions[i]``; return the steps and which envs were restarted."""

    def reset(self, *, seed: int | None = None) -> tuple[Obs, dict]:
        """Start a new episode in every env; env i is seeded with ``seed + i``.

        Without ``seed``, the first reset uses the seed given at construction (if any) and later
        resets continue each env's random stream.
        """
        self._check_open()
        base = check_seed(seed) if seed is not None else self._next_seed
        self._next_seed = None
        if base is not None:
            self._seed_base = base
        seeds = [None if base is None else base + i for i in range(self.num_envs)]
        obs, restarted = self._reset_envs(seeds)
        self._ready = True
        info = {"restarted": restarted} if restarted is not None and restarted.any() else {}
        return obs_stack(obs), info

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._check_open()
        if not self._ready:
            raise RuntimeError(f"call reset() on this {type(self).__name__} before the first step()")
        batch = self.check_actions(actions)
        if isinstance(self.action_space, gym.spaces.Discrete):
            per_env = [int(a) for a in batch]
        else:  # copies, so an env that keeps its action is not changed by the caller's next batch
            per_env = [np.array(a) for a in batch]
        steps, restarted = self._step_envs(per_env)
        return collate_steps(steps, self.cost_names, restarted)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")


class SyncVectorCMDP(RunnerVectorCMDP):
    """Runs ``len(env_fns)`` gymnasium envs one after another in this process.

    An exception raised by an env propagates unchanged (use ``vectorization="subproc"`` for
    envs that may crash). See the module docstring for cost, time limits and observations.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        *,
        cost_fn: CostFn | None = None,
        cost_names: Sequence[str] | None = None,
        seed: int | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        env_fns = check_env_fns(env_fns)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        self._runners: list[SingleEnvRunner] = []
        try:
            for i, fn in enumerate(env_fns):
                self._runners.append(SingleEnvRunner(call_env_fn(fn, i), cost_fn, max_episode_steps))
            self._setup([r.describe() for r in self._runners], cost_names, seed)
        except BaseException:
            for r in self._runners:
                r.close()
            raise

    def _reset_envs(self, seeds: list[int | None]) -> tuple[list[Obs], None]:
        return [r.reset(s) for r, s in zip(self._runners, seeds)], None

    def _step_envs(self, actions: list[Any]) -> tuple[list[EnvStep], None]:
        return [r.step(a) for r, a in zip(self._runners, actions)], None

    @property
    def envs(self) -> list[gym.Env]:
        """The gymnasium envs, in order (for inspection; stepping them directly breaks auto-reset)."""
        return [r.env for r in self._runners]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for r in self._runners:
            r.close()


# ---- argument checks shared with the subprocess env ----------------------------------------


def check_env_fns(env_fns: Any) -> list[EnvFn]:
    if callable(env_fns) or isinstance(env_fns, (str, bytes)):
        raise ConfigError("env_fns must be a list of callables, one per env, e.g. [make_env] * 4")
    env_fns = list(env_fns)
    if not env_fns:
        raise ConfigError("env_fns is empty: give at least one callable returning a gymnasium env")
    for i, fn in enumerate(env_fns):
        if not callable(fn):
            raise ConfigError(f"env_fns[{i}] must be a callable returning a gymnasium env, got {fn!r}")
    return env_fns


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be None or an integer >= 0, got {seed!r}")
    return int(seed)


def check_worker_settings(step_timeout: Any, start_timeout: Any, max_restarts: Any) -> None:
    """Check the crash-restart settings of the vector envs whose envs live in workers."""
    for name, value in (("step_timeout", step_timeout), ("start_timeout", start_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")


def restart_seed(seed_base: int | None, index: int, restarts: int) -> int | None:
    """A fresh, reproducible seed for the env at ``index`` after its ``restarts``-th restart, or
    None if the run is unseeded."""
    if seed_base is None:
        return None
    return int(np.random.SeedSequence([seed_base, index, restarts]).generate_state(1)[0])


def check_max_episode_steps(steps: Any) -> int | None:
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"max_episode_steps must be None or an integer >= 1, got {steps!r}")
    return int(steps)


# ---- public factories ----------------------------------------------------------------------


def from_env_fns(
    env_fns: Sequence[EnvFn],
    *,
    cost_fn: CostFn | None = None,
    cost_names: Sequence[str] | None = None,
    vectorization: str = "sync",
    seed: int | None = None,
    max_episode_steps: int | None = None,
    step_timeout: float = 60.0,
    max_restarts: int = 3,
) -> VectorCMDP:
    """A vector CMDP over ``len(env_fns)`` envs, env i built by calling ``env_fns[i]()``.

    Args:
        env_fns: callables returning gymnasium envs (5-tuple steps) or safety-gymnasium envs
            (6-tuple steps). With ``vectorization="subproc"`` they must be picklable by
            cloudpickle (module-level functions, classes and ``functools.partial`` are).
        cost_fn: ``cost_fn(obs, action, next_obs, info) -> float | sequence``, called per env per
            step; overrides any cost the env reports.
        cost_names: names of the K cost channels; fixes K (see the module docstring).
        vectorization: ``"sync"`` (one process), ``"subproc"`` (one worker process per env,
            restarted when it crashes) or ``"ray"`` (one Ray actor per env, replaced when it
            dies; see :class:`~cmdp.core.ray_vector.RayVectorCMDP`).
        seed: the first :meth:`reset` without a seed seeds env i with ``seed + i``.
        max_episode_steps: truncate every episode after this many steps (None: only the envs'
            own limits).
        step_timeout: subproc and ray only: seconds to wait for a worker's step or reset before
            it is considered hung and restarted.
        max_restarts: subproc and ray only: restarts of one worker in a row, without a
            successful step between them, before :class:`~cmdp.errors.EnvWorkerError` is raised.
    """
    if vectorization == "sync":
        return SyncVectorCMDP(
            env_fns, cost_fn=cost_fn, cost_names=cost_names, seed=seed, max_episode_steps=max_episode_steps
        )
    if vectorization in ("subproc", "ray"):
        if vectorization == "subproc":
            from cmdp.core.subproc import SubprocVectorCMDP as WorkerVectorCMDP
        else:
            from cmdp.core.ray_vector import RayVectorCMDP as WorkerVectorCMDP

        return WorkerVectorCMDP(
            env_fns,
            cost_fn=cost_fn,
            cost_names=cost_names,
            seed=seed,
            max_episode_steps=max_episode_steps,
            step_timeout=step_timeout,
            max_restarts=max_restarts,
        )
    raise ConfigError(f"vectorization must be one of {', '.join(map(repr, VECTORIZATIONS))}; got {vectorization!r}")


def make_gymnasium(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    *,
    cost_fn: CostFn | None = None,
    cost_names: Sequence[str] | None = None,
    vectorization: str = "sync",
    max_episode_steps: int | None = None,
    step_timeout: float = 60.0,
    max_restarts: int = 3,
    **env_kwargs: Any,
) -> VectorCMDP:
    """``num_envs`` copies of ``gymnasium.make(env_id, **env_kwargs)`` as one vector CMDP.

    ``max_episode_steps`` replaces the id's registered time limit. The id is resolved to its
    gymnasium ``EnvSpec`` here, so ids registered at run time in this process also work in
    worker processes. Other arguments as in :func:`from_env_fns`.
    """
    _check_num_envs(num_envs)
    spec = gym.spec(env_id)
    steps = check_max_episode_steps(max_episode_steps)
    kwargs = dict(env_kwargs) if steps is None else dict(env_kwargs, max_episode_steps=steps)
    env_fn = functools.partial(gym.make, spec, **kwargs)
    return from_env_fns(
        [env_fn] * num_envs,
        cost_fn=cost_fn,
        cost_names=cost_names,
        vectorization=vectorization,
        seed=seed,
        step_timeout=step_timeout,
        max_restarts=max_restarts,
    )


def make_safety_gymnasium(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    *,
    cost_fn: CostFn | None = None,
    cost_names: Sequence[str] | None = None,
    vectorization: str = "sync",
    max_episode_steps: int | None = None,
    step_timeout: float = 60.0,
    max_restarts: int = 3,
    recompile_world: bool = False,
    vectorised_task: bool = True,
    **env_kwargs: Any,
) -> VectorCMDP:
    """``num_envs`` copies of ``safety_gymnasium.make(env_id, **env_kwargs)`` as one vector CMDP.

    Their 6-tuple steps ``(obs, reward, cost, terminated, truncated, info)`` give one cost
    channel named ``"cost"``. Raises ImportError if safety-gymnasium is not installed.

    Envs that cannot render keep their compiled MuJoCo model across resets instead of
    recompiling it from XML at each (:mod:`cmdp.core.safety_gymnasium_worlds`: the same
    episodes, bit for bit, at about 0.01 s of CPU per reset instead of 0.4 s); ``recompile_world=True``
    keeps safety-gymnasium's own reset. Their pseudo-lidar observation and hazard cost are computed
    with array operations and MuJoCo's forward pass runs once a step instead of three times
    (:mod:`cmdp.core.safety_gymnasium_vectorised`: the same values, bit for bit, at about 0.43 of
    the CPU time per step on SafetyPointGoal1-v0); ``vectorised_task=False`` keeps
    safety-gymnasium's own. Other arguments as in :func:`from_env_fns`.
    """
    _check_num_envs(num_envs)
    _import_safety_gymnasium()
    if not isinstance(recompile_world, bool):
        raise ConfigError(f"recompile_world must be True or False, got {recompile_world!r}")
    if not isinstance(vectorised_task, bool):
        raise ConfigError(f"vectorised_task must be True or False, got {vectorised_task!r}")
    steps = check_max_episode_steps(max_episode_steps)
    kwargs = dict(env_kwargs) if steps is None else dict(env_kwargs, max_episode_steps=steps)
    env_fn = functools.partial(_make_safety_env, env_id, kwargs, not recompile_world, vectorised_task)
    return from_env_fns(
        [env_fn] * num_envs,
        cost_fn=cost_fn,
        cost_names=cost_names,
        vectorization=vectorization,
        seed=seed,
        step_timeout=step_timeout,
        max_restarts=max_restarts,
    )


def _import_safety_gymnasium() -> Any:
    try:
        import safety_gymnasium
    except ImportError as e:
        raise ImportError(
            f"safety-gymnasium ids need the safety-gymnasium package: pip install safety-gymnasium ({e})"
        ) from e
    return safety_gymnasium


def _make_safety_env(
    env_id: str, kwargs: Mapping[str, Any], reuse_world: bool, vectorised_task: bool
) -> gym.Env:
    # module level (not a lambda) so that worker processes can unpickle it
    env = _import_safety_gymnasium().make(env_id, **kwargs)
    if reuse_world:
        from cmdp.core.safety_gymnasium_worlds import reuse_compiled_world

        reuse_compiled_world(env)
    if vectorised_task:
        from cmdp.core.safety_gymnasium_vectorised import vectorise_task

        vectorise_task(env)
    return env


def _check_num_envs(num_envs: Any) -> None:
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
