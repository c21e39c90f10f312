"""A vector CMDP whose envs run in Ray actors, on this machine or across a Ray cluster.

For simulators too heavy to share a process (AI2-THOR starts a Unity player per env, and may
want a GPU or a machine of its own). ``env_fns[i]()`` is called inside actor ``i`` and may
return either

* a gymnasium (or safety-gymnasium) env: the actor drives it with the same
  :class:`~cmdp.core.gym_adapter.SingleEnvRunner` as the in-process and subprocess vector envs,
  so cost, time limits, auto-reset and observation dtypes behave identically; or
* a cmdp :class:`~cmdp.core.vector.VectorCMDP` of ``m`` envs (e.g. ``cmdp.make(id,
  num_envs=m)``): the actor hosts the whole batch, which is how a fast built-in simulator is
  spread over several machines. Its envs take ``m`` consecutive places of this vector env.

All actors must agree on spaces; ``cost_fn`` and ``max_episode_steps`` apply to gymnasium envs
only. Seeds follow the vector protocol: env ``i`` of this vector env is reset with ``seed + i``
(an actor hosting a vector env gets the seed of its first place).

Placement: ``actor_options`` go to Ray's ``.options()`` (``num_cpus``, ``num_gpus``,
``resources``, ``scheduling_strategy``, ...). Without them Ray's defaults apply: an actor needs
a CPU to be placed but holds none while it runs. Connect to a cluster with
``ray.init(address=...)`` before building the env; otherwise Ray starts a local instance.

Failures, as in :class:`~cmdp.core.subproc.SubprocVectorCMDP`: when an actor dies (killed with
``ray.kill``, its process crashed, its node was lost), its env raises, or it does not answer
within ``step_timeout`` seconds, the actor is killed and replaced, its env reset, and the
episode it was in ends as truncated: its rows of the step have reward 0, cost 0,
``truncated=True``, ``info["restarted"]=True`` and, as ``info["final_obs"]``, the last
observation the actor returned. Each restart is logged on the ``"cmdp"`` logger at WARNING.
After ``max_restarts`` restarts of one actor in a row with no successful step in between,
:class:`~cmdp.errors.EnvWorkerError` is raised and the env is closed. Errors cmdp raises on
purpose inside an actor (a :class:`~cmdp.errors.CMDPError`) are configuration errors and are
re-raised here unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cloudpickle
import numpy as np

from cmdp.core.gym_adapter import (
    CostFn,
    EnvDescription,
    EnvFn,
    EnvStep,
    RunnerVectorCMDP,
    SingleEnvRunner,
    _is_plain,
    call_env_fn,
    check_env_fns,
    check_max_episode_steps,
    check_worker_settings,
    restart_seed,
)
from cmdp.core.subproc import _pickle
from cmdp.core.vector import Obs, VectorCMDP, obs_rows
from cmdp.errors import CMDPError, ConfigError, EnvWorkerError

log = logging.getLogger("cmdp")

__all__ = ["RayVectorCMDP"]

_CLOSE_GRACE = 2.0  # seconds actors get to close their envs before they are killed


# ---- inside an actor -------------------------------------------------------------------------


class _VectorShard:
    """A cmdp vector env seen through the runner interface of the actor: lists of per-env steps."""

    def __init__(self, env: VectorCMDP) -> None:
        self.env = env

    def describe(self) -> tuple[int, EnvDescription]:
        metadata = {k: v for k, v in dict(getattr(self.env, "metadata", None) or {}).items() if _is_plain(v)}
        description = EnvDescription(
            self.env.observation_space,
            self.env.action_space,
            tuple(self.env.cost_names),
            self.env.max_episode_steps,
            metadata,
        )
        return self.env.num_envs, description

    def reset(self, seed: int | None) -> tuple[list[Obs], list[bool]]:
        obs, info = self.env.reset(seed=seed)
        restarted = info.get("restarted", np.zeros(self.env.num_envs, dtype=bool))
        return [obs_rows(obs, j) for j in range(self.env.num_envs)], [bool(x) for x in restarted]

    def step(self, actions: list[Any]) -> tuple[list[EnvStep], list[bool]]:
        obs, reward, cost, terminated, truncated, info = self.env.step(np.stack([np.asarray(a) for a in actions]))
        final = info.get("final_obs")
        success = info.get("success")
        restarted = info.get("restarted", np.zeros(self.env.num_envs, dtype=bool))
        steps = []
        for j in range(self.env.num_envs):
            done = bool(terminated[j] or truncated[j])
            steps.append(
                EnvStep(
                    obs_rows(obs, j),
                    float(reward[j]),
                    np.asarray(cost[j]),
                    bool(terminated[j]),
                    bool(truncated[j]),
                    obs_rows(final, j) if done and final is not None else None,
                    None if success is None else bool(success[j]),
                )
            )
        return steps, [bool(x) for x in restarted]

    def close(self) -> None:
        self.env.close()


class _SingleShard:
    """One gymnasium env in its :class:`SingleEnvRunner`, as a batch of one."""

    def __init__(self, runner: SingleEnvRunner) -> None:
        self.runner = runner

    def describe(self) -> tuple[int, EnvDescription]:
        return 1, self.runner.describe()

    def reset(self, seed: int | None) -> tuple[list[Obs], list[bool]]:
        return [self.runner.reset(seed)], [False]

    def step(self, actions: list[Any]) -> tuple[list[EnvStep], list[bool]]:
        return [self.runner.step(actions[0])], [False]

    def close(self) -> None:
        self.runner.close()


class EnvHost:
    """The body of every env actor. The env is built by :meth:`start`, not in the constructor, so
    that an error building it reaches the caller as that call's exception."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self._shard: _SingleShard | _VectorShard | None = None

    def start(self) -> tuple[int, EnvDescription]:
        env_fn, index, cost_fn, max_episode_steps = cloudpickle.loads(self._payload)
        built = env_fn()
        if isinstance(built, VectorCMDP):
            if cost_fn is not None or max_episode_steps is not None:
                built.close()
                raise ConfigError(
                    f"env_fns[{index}] returned a cmdp vector env; cost_fn and max_episode_steps apply to "
                    "gymnasium envs only (give them to the vector env's own factory)"
                )
            self._shard = _VectorShard(built)
        else:
            self._shard = _SingleShard(SingleEnvRunner(call_env_fn(lambda: built, index), cost_fn, max_episode_steps))
        return self._shard.describe()

    def reset(self, seed: int | None) -> tuple[list[Obs], list[bool]]:
        return self._open_shard().reset(seed)

    def step(self, actions: list[Any]) -> tuple[list[EnvStep], list[bool]]:
        return self._open_shard().step(actions)

    def _open_shard(self) -> _SingleShard | _VectorShard:
        if self._shard is None:
            raise EnvWorkerError("this env actor's env is not started or already closed")
        return self._shard

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None


# ---- the driver side -------------------------------------------------------------------------


@dataclass
class _Actor:
    handle: Any  # a Ray ActorHandle
    offset: int  # index of its first env in this vector env
    size: int  # envs it hosts
    failures: int = 0  # failures in a row, without a successful step in between
    restarts: int = 0  # restarts over its lifetime (varies the reseeding)


class RayVectorCMDP(RunnerVectorCMDP):
    """Runs ``env_fns[i]()`` in Ray actor ``i``. See the module docstring.

    Args:
        env_fns: callables, serialisable by cloudpickle, returning a gymnasium env or a cmdp
            vector env.
        cost_fn, cost_names, seed, max_episode_steps: as in
            :func:`~cmdp.core.gym_adapter.from_env_fns`.
        step_timeout: seconds an actor may take for one step or reset before it is considered
            hung, killed and replaced.
        start_timeout: seconds an actor may take to be placed, start and build its env.
        max_restarts: restarts of one actor in a row without a successful step before
            :class:`~cmdp.errors.EnvWorkerError`.
        actor_options: keyword arguments of Ray's ``.options()`` for every actor.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        *,
        cost_fn: CostFn | None = None,
        cost_names: Sequence[str] | None = None,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        step_timeout: float = 60.0,
        start_timeout: float = 300.0,
        max_restarts: int = 3,
        actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        env_fns = check_env_fns(env_fns)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        check_worker_settings(step_timeout, start_timeout, max_restarts)
        options = dict(actor_options or {})
        if "max_restarts" in options or "max_task_retries" in options:
            raise ConfigError(
                "actor_options may not set Ray's max_restarts or max_task_retries: RayVectorCMDP replaces "
                "dead actors itself (use its max_restarts argument)"
            )
        try:
            import ray
        except ImportError as e:
            raise ImportError(f"RayVectorCMDP needs the ray package: pip install 'cmdp[ray]' ({e})") from e
        self._ray = ray
        self.step_timeout = float(step_timeout)
        self.start_timeout = float(start_timeout)
        self.max_restarts = max_restarts
        self._actor_class = ray.remote(EnvHost).options(max_restarts=0, **options)
        self._payloads = [_pickle((fn, i, cost_fn, max_episode_steps), i) for i, fn in enumerate(env_fns)]
        self._actors: list[_Actor] = []
        self._finalizer = weakref.finalize(self, _shutdown, ray, self._actors)
        self._closed = False
        self._last_obs: list[Obs] = []
        try:
            handles = [self._actor_class.remote(p) for p in self._payloads]
            self._actors.extend(_Actor(h, 0, 0) for h in handles)
            started, failures = self._call([(a.handle.start, ()) for a in self._actors], self.start_timeout)
            if failures:
                i, reason = next(iter(failures.items()))
                raise EnvWorkerError(f"env actor {i} failed to start: {reason}")
            offset = 0
            for actor, (size, _) in zip(self._actors, started):
                actor.offset, actor.size = offset, size
                offset += size
            descriptions = [d for size, d in started for _ in range(size)]
            self._setup(descriptions, cost_names, seed)
        except BaseException:
            self.close()
            raise

    @property
    def actor_handles(self) -> list[Any]:
        """The Ray actor handles, one per ``env_fns`` entry (for inspection and fault tests)."""
        return [a.handle for a in self._actors]

    # ---- the two operations ------------------------------------------------------------

    def _reset_envs(self, seeds: list[int | None]) -> tuple[list[Obs], np.ndarray]:
        calls = [(a.handle.reset, (seeds[a.offset],)) for a in self._actors]
        answers, failures = self._call(calls, self.step_timeout)
        restarted = np.zeros(self.num_envs, dtype=bool)
        for k, reason in failures.items():
            answers[k] = (self._restart(k, reason, seeds[self._actors[k].offset]), [True] * self._actors[k].size)
        obs: list[Obs] = []
        for actor, (rows, flags) in zip(self._actors, answers):
            obs.extend(rows)
            restarted[actor.offset : actor.offset + actor.size] |= flags
        self._last_obs = list(obs)
        return obs, restarted

    def _step_envs(self, actions: list[Any]) -> tuple[list[EnvStep], np.ndarray]:
        calls = [(a.handle.step, (actions[a.offset : a.offset + a.size],)) for a in self._actors]
        answers, failures = self._call(calls, self.step_timeout)
        for k, actor in enumerate(self._actors):
            if k not in failures:
                actor.failures = 0
        restarted = np.zeros(self.num_envs, dtype=bool)
        zero_cost = np.zeros(len(self.cost_names))
        for k, reason in failures.items():
            actor = self._actors[k]
            first_obs = self._restart(k, reason, self._restart_seed(k))
            last = self._last_obs[actor.offset : actor.offset + actor.size]
            truncated = [EnvStep(o, 0.0, zero_cost, False, True, f, None) for o, f in zip(first_obs, last)]
            answers[k] = (truncated, [True] * actor.size)
        steps: list[EnvStep] = []
        for actor, (rows, flags) in zip(self._actors, answers):
            steps.extend(rows)
            restarted[actor.offset : actor.offset + actor.size] |= flags
        self._last_obs = [s.obs for s in steps]
        return steps, restarted

    def _call(self, calls: list[tuple[Any, tuple]], timeout: float) -> tuple[list[Any], dict[int, str]]:
        """Call every actor's method at once; collect the answers within ``timeout`` seconds.

        Returns the answers (None where an actor failed) and ``{actor index: why it failed}``;
        re-raises a CMDPError raised inside an actor.
        """
        refs = [method.remote(*args) for method, args in calls]
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ready_set = set(ready)
        answers: list[Any] = [None] * len(refs)
        failures: dict[int, str] = {}
        for k, ref in enumerate(refs):
            if ref not in ready_set:
                failures[k] = f"it did not answer within {timeout:g} s"
                continue
            try:
                answers[k] = self._ray.get(ref)
            except self._ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, CMDPError):
                    self.close()
                    raise cause from None
                failures[k] = f"its env raised:\n{e}"
            except self._ray.exceptions.RayError as e:  # the actor or its node died
                failures[k] = f"its actor died ({type(e).__name__}: {_first_line(str(e))})"
        return answers, failures

    def _restart(self, k: int, reason: str, seed: int | None) -> list[Obs]:
        """Replace actor ``k`` and reset its env(s); return the first observations."""
        while True:
            old = self._actors[k]
            old.failures += 1
            if old.failures > self.max_restarts:
                self.close()
                raise EnvWorkerError(
                    f"env actor {k} failed {old.failures} times in a row without a successful step "
                    f"(max_restarts={self.max_restarts}); last failure: {reason}"
                )
            log.warning(
                "env actor %d (envs %d-%d) failed: %s\nreplacing it (%d of at most %d restarts in a row); "
                "its episode ends as truncated",
                *(k, old.offset, old.offset + old.size - 1, reason, old.failures, self.max_restarts),
            )
            with contextlib.suppress(Exception):  # it may be gone already
                self._ray.kill(old.handle, no_restart=True)
            handle = self._actor_class.remote(self._payloads[k])
            self._actors[k] = _Actor(handle, old.offset, old.size, old.failures, old.restarts + 1)
            answers, failures = self._call([(handle.start, ())], self.start_timeout)
            if not failures and answers[0][0] != old.size:
                self.close()
                raise EnvWorkerError(f"env actor {k} came back with {answers[0][0]} envs instead of {old.size}")
            if not failures:
                answers, failures = self._call([(handle.reset, (seed,))], self.step_timeout)
                if not failures:
                    return answers[0][0]
            reason = failures[0]

    def _restart_seed(self, k: int) -> int | None:
        """A fresh, reproducible seed for a replaced actor, or None if the run is unseeded."""
        return restart_seed(self._seed_base, self._actors[k].offset, self._actors[k].restarts + 1)

    def close(self) -> None:
        """Ask every actor to close its env, then end the actors. Safe to call twice."""
        self._closed = True
        self._finalizer()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _shutdown(ray: Any, actors: list[_Actor]) -> None:
    if not actors:
        return
    try:
        if not ray.is_initialized():
            return  # the session is gone, and its actors with it
        closing = [a.handle.close.remote() for a in actors]
        ray.wait(closing, num_returns=len(closing), timeout=_CLOSE_GRACE)
        for a in actors:
            ray.kill(a.handle, no_restart=True)
    except Exception:  # interpreter shutdown, lost cluster: nothing left to release
        log.debug("closing env actors failed:\n%s", traceback.format_exc())
    finally:
        actors.clear()
