"""A vector CMDP running each env in its own worker process, restarting workers that crash.

Workers are started with multiprocessing's ``"forkserver"`` method where the platform has it,
else ``"spawn"``: forking a process that has loaded torch can deadlock in its thread pools.
Each worker builds its env from a cloudpickled callable and drives it with the same
:class:`~cmdp.core.gym_adapter.SingleEnvRunner` as the in-process vector env, so cost, time
limits, auto-reset and observation dtypes behave identically.

Crashes: when a worker's process dies, its env raises, or it does not answer within
``step_timeout`` seconds, the worker is killed and started again, its env is reset, and the
episode it was in ends as truncated: that row of the step has reward 0, cost 0,
``truncated=True``, ``info["restarted"]=True`` and, as ``info["final_obs"]``, the last
observation the worker returned. The transition of the failed step itself is lost. Each
restart is logged on the ``"cmdp"`` logger at WARNING. After ``max_restarts`` restarts of one
worker in a row with no successful step in between, :class:`~cmdp.errors.EnvWorkerError` is
raised and the env is closed. Errors cmdp raises on purpose inside a worker (a
:class:`~cmdp.errors.CMDPError`, e.g. a malformed step tuple) are configuration errors, not
crashes: they are re-raised in this process unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Sequence

import cloudpickle
import numpy as np

from cmdp.core.gym_adapter import (
    CostFn,
    EnvDescription,
    EnvFn,
    EnvStep,
    RunnerVectorCMDP,
    SingleEnvRunner,
    call_env_fn,
    check_env_fns,
    check_max_episode_steps,
    check_worker_settings,
    restart_seed,
)
from cmdp.core.vector import Obs
from cmdp.errors import CMDPError, ConfigError, EnvWorkerError

log = logging.getLogger("cmdp")

_CLOSE_GRACE = 2.0  # seconds a worker gets to close its env before it is terminated


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process
    conn: Connection
    failures: int = 0  # failures in a row, without a successful step in between
    restarts: int = 0  # restarts over the worker's lifetime (varies the reseeding)


class SubprocVectorCMDP(RunnerVectorCMDP):
    """Runs env i, built by ``env_fns[i]()``, in worker process i. See the module docstring.

    Args:
        env_fns: picklable (by cloudpickle) callables returning gymnasium or safety-gymnasium
            envs.
        cost_fn, cost_names, seed, max_episode_steps: as in
            :func:`~cmdp.core.gym_adapter.from_env_fns`.
        step_timeout: seconds a worker may take for one step or reset before it is considered
            hung, killed and restarted.
        start_timeout: seconds a worker may take to start and build its env.
        max_restarts: restarts of one worker in a row without a successful step before
            :class:`~cmdp.errors.EnvWorkerError`.
        start_method: a multiprocessing start method; default ``"forkserver"`` where available,
            else ``"spawn"``. ``"fork"`` is unsafe once torch has started threads.
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
        start_method: str | None = None,
    ) -> None:
        env_fns = check_env_fns(env_fns)
        max_episode_steps = check_max_episode_steps(max_episode_steps)
        check_worker_settings(step_timeout, start_timeout, max_restarts)
        methods = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = default_start_method()
        if start_method not in methods:
            raise ConfigError(f"start_method must be one of {methods}, got {start_method!r}")
        self.step_timeout = float(step_timeout)
        self.start_timeout = float(start_timeout)
        self.max_restarts = max_restarts
        self._ctx = multiprocessing.get_context(start_method)
        self._payloads = [_pickle((fn, i, cost_fn, max_episode_steps), i) for i, fn in enumerate(env_fns)]
        self._workers: list[_Worker] = []
        # shuts the workers down when this object is collected or the interpreter exits; holds
        # the worker list, not self, so that it does not keep self alive
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._closed = False
        self._last_obs: list[Obs] = []
        try:
            self._workers.extend(self._launch(i) for i in range(len(env_fns)))
            descriptions: list[EnvDescription] = []
            for i, w in enumerate(self._workers):
                ok, payload = self._receive(w, time.monotonic() + self.start_timeout, self.start_timeout)
                if not ok:
                    raise EnvWorkerError(f"env worker {i} failed to start: {payload}")
                descriptions.append(payload)
            self._setup(descriptions, cost_names, seed)
        except BaseException:
            self.close()
            raise

    # ---- the two operations ------------------------------------------------------------

    def _reset_envs(self, seeds: list[int | None]) -> tuple[list[Obs], np.ndarray]:
        results, failures = self._broadcast("reset", seeds)
        restarted = np.zeros(self.num_envs, dtype=bool)
        for i, reason in failures.items():
            results[i] = self._restart(i, reason, seeds[i])
            restarted[i] = True
        self._last_obs = list(results)
        return results, restarted

    def _step_envs(self, actions: list[Any]) -> tuple[list[EnvStep], np.ndarray]:
        results, failures = self._broadcast("step", actions)
        for i in range(self.num_envs):
            if i not in failures:
                self._workers[i].failures = 0
        restarted = np.zeros(self.num_envs, dtype=bool)
        zero_cost = np.zeros(len(self.cost_names))
        for i, reason in failures.items():
            obs = self._restart(i, reason, self._restart_seed(i))
            results[i] = EnvStep(obs, 0.0, zero_cost, False, True, self._last_obs[i], None)
            restarted[i] = True
        self._last_obs = [s.obs for s in results]
        return results, restarted

    def _broadcast(self, command: str, args: list[Any]) -> tuple[list[Any], dict[int, str]]:
        """Send ``(command, args[i])`` to every worker, then collect the answers.

        All requests go out before any answer is read so that the envs work in parallel, and
        failed workers are restarted only after every answer is in, so that a slow restart
        does not eat into the other workers' timeout.
        """
        sent = [_send(w.conn, (command, a)) for w, a in zip(self._workers, args)]
        deadline = time.monotonic() + self.step_timeout
        results: list[Any] = [None] * self.num_envs
        failures: dict[int, str] = {}
        for i, w in enumerate(self._workers):
            ok, payload = self._receive(w, deadline, self.step_timeout) if sent[i] else (False, "its pipe is closed")
            if ok:
                results[i] = payload
            else:
                failures[i] = payload
        return results, failures

    # ---- workers -----------------------------------------------------------------------

    def _launch(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._payloads[index]), name=f"cmdp-env-{index}", daemon=True
        )
        process.start()
        child.close()  # so that the worker's death shows up here as EOF
        return _Worker(process, parent)

    def _receive(self, w: _Worker, deadline: float, timeout: float) -> tuple[bool, Any]:
        """``(True, payload)``, or ``(False, why the worker failed)``; re-raises a worker's CMDPError."""
        try:
            if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                return False, f"it did not answer within {timeout:g} s"
            status, payload = w.conn.recv()
        except (EOFError, OSError):
            w.process.join(timeout=1.0)
            return False, f"its process died (exit code {w.process.exitcode})"
        if status == "ok":
            return True, payload
        if status == "fatal":
            self.close()
            raise payload
        return False, f"its env raised:\n{payload}"

    def _restart(self, index: int, reason: str, seed: int | None) -> Obs:
        """Replace worker ``index`` and reset its env; return the first observation."""
        while True:
            old = self._workers[index]
            old.failures += 1
            if old.failures > self.max_restarts:
                self.close()
                raise EnvWorkerError(
                    f"env worker {index} failed {old.failures} times in a row without a successful "
                    f"step (max_restarts={self.max_restarts}); last failure: {reason}"
                )
            log.warning(
                "env worker %d (pid %s) failed: %s\nrestarting it (%d of at most %d restarts in a row); "
                "its episode ends as truncated",
                *(index, old.process.pid, reason, old.failures, self.max_restarts),
            )
            _stop(old, grace=0.0)
            new = self._launch(index)
            new.failures, new.restarts = old.failures, old.restarts + 1
            self._workers[index] = new
            ok, payload = self._receive(new, time.monotonic() + self.start_timeout, self.start_timeout)
            if ok:
                ok, payload = (
                    self._receive(new, time.monotonic() + self.step_timeout, self.step_timeout)
                    if _send(new.conn, ("reset", seed))
                    else (False, "its pipe is closed")
                )
                if ok:
                    return payload
            reason = payload

    def _restart_seed(self, index: int) -> int | None:
        """A fresh, reproducible seed for a restarted env, or None if the run is unseeded."""
        return restart_seed(self._seed_base, index, self._workers[index].restarts + 1)

    def close(self) -> None:
        """Ask every worker to close its env, then end the processes. Safe to call twice."""
        self._closed = True
        self._finalizer()


# ---- worker side ---------------------------------------------------------------------------


def _worker_main(conn: Connection, payload: bytes) -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and closes workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = None
    try:
        env_fn, index, cost_fn, max_episode_steps = cloudpickle.loads(payload)
        runner = SingleEnvRunner(call_env_fn(env_fn, index), cost_fn, max_episode_steps)
        conn.send(("ok", runner.describe()))
        while True:
            command, arg = conn.recv()
            if command == "step":
                conn.send(("ok", runner.step(arg)))
            elif command == "reset":
                conn.send(("ok", runner.reset(arg)))
            elif command == "close":
                break
    except CMDPError as e:
        _send_fatal(conn, e)
    except (EOFError, OSError):
        pass  # the main process is gone
    except Exception:
        _send(conn, ("error", traceback.format_exc()))
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):  # the env is going away either way
                runner.close()
        conn.close()


def _send_fatal(conn: Connection, error: CMDPError) -> None:
    try:
        conn.send(("fatal", error))
    except Exception:  # an error whose arguments do not pickle
        _send(conn, ("fatal", EnvWorkerError(f"{type(error).__name__}: {error}")))


# ---- helpers -------------------------------------------------------------------------------


def default_start_method() -> str:
    """``"forkserver"`` where the platform has it, else ``"spawn"``: never ``"fork"``, which can
    deadlock a process that has started torch's thread pools."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _pickle(obj: Any, index: int) -> bytes:
    try:
        return cloudpickle.dumps(obj)
    except Exception as e:
        raise ConfigError(
            f"env_fns[{index}] or cost_fn cannot be pickled for a worker process ({type(e).__name__}: {e}); "
            "pass picklable callables or use vectorization='sync'"
        ) from e


def _send(conn: Connection, message: Any) -> bool:
    try:
        conn.send(message)
        return True
    except (OSError, ValueError):  # broken pipe, or a closed connection
        return False


def _stop(w: _Worker, grace: float) -> None:
    """End a worker's process: wait ``grace`` seconds for it to exit, then terminate, then kill."""
    w.process.join(timeout=grace)
    for end in (w.process.terminate, w.process.kill):
        if w.process.exitcode is not None:
            break
        end()
        w.process.join(timeout=1.0)
    w.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        _send(w.conn, ("close", None))
    deadline = time.monotonic() + _CLOSE_GRACE
    for w in workers:
        _stop(w, grace=max(0.0, deadline - time.monotonic()))
    workers.clear()
