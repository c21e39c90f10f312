"""Rollout workers: each epoch collected in several processes, each acting for its own envs.

A worker-process vector env (:class:`~cmdp.core.subproc.SubprocVectorCMDP`) sends every step's
actions to the workers and their observations back. Where an env step costs about as much as
that round trip (pickling, the pipe, waking two processes), the training process and the env
workers spend much of their time waiting on each other. A rollout worker instead holds a copy
of the policy and its share of the envs, and runs the engine's own rollout
(:meth:`~cmdp.algorithms.engine.OnPolicyAlgorithm.collect_here`) for a whole epoch: per epoch,
the weights and the observation statistics go out and the epoch's data comes back.

Each worker is a solver of the training solver's class, built with the same options over
``num_envs / rollout_workers`` envs; worker ``k`` steps envs ``k * share ... (k + 1) * share - 1``
of the whole run, seeded as they would be in one process. Actions are sampled from each
worker's own random stream (seeded from the run's seed and ``k``), so a run with workers is
reproducible but does not repeat a run without them. Every worker normalises observations with
the statistics of the epoch's start and updates them with its own observations; after the
epoch the training process merges what each worker saw (:meth:`RunningMeanStd.moments_since`).

The workers start when the solver is built, so a worker that cannot build its env or policy
fails the construction. A worker that dies ends training with
:class:`~cmdp.errors.EnvWorkerError`; unlike env workers, rollout workers are not restarted. A
checkpoint keeps no worker state: a resumed run starts new episodes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import traceback
import weakref
from typing import TYPE_CHECKING, Any, Mapping

import cloudpickle
import numpy as np
import torch

from cmdp.core.subproc import default_start_method
from cmdp.core.vector import VectorCMDP
from cmdp.errors import CMDPError, ConfigError, EnvWorkerError

if TYPE_CHECKING:
    from cmdp.algorithms.engine import OnPolicyAlgorithm

_POLL_SECONDS = 1.0  # how often a waiting trainer checks that its workers are still alive


class RolloutWorkers:
    """``algo.config.rollout_workers`` processes collecting ``algo``'s epochs; see the module."""

    def __init__(self, algo: "OnPolicyAlgorithm") -> None:
        check_rollout_workers(algo)
        c = algo.config
        source = algo._env_source
        count = c.rollout_workers
        share = c.num_envs // count
        env_kwargs = without_vectorization(c.env_kwargs or {})
        options = c.to_dict() | {
            "num_envs": share,
            "steps_per_epoch": c.steps_per_epoch // count,
            "rollout_workers": 0,
            "progress_bar": False,
            "tensorboard": False,
            "checkpoint_every": 0,
            "env_kwargs": env_kwargs,
        }
        cost_limit = None if algo.cost_limit is None else algo.cost_limit.tolist()
        ctx = multiprocessing.get_context(default_start_method())
        self._processes: list[Any] = []
        self._conns: list[Any] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns)
        # what worker k builds: build_worker_solver(*specs[k])
        self.specs = [
            (type(algo), source, cost_limit, worker_seed(algo.seed, k), algo.seed + k * share, options, algo.policy)
            for k in range(count)
        ]
        try:
            for k, spec in enumerate(self.specs):
                parent, child = ctx.Pipe(duplex=True)
                process = ctx.Process(
                    target=_worker_main, args=(child, cloudpickle.dumps(spec)), name=f"cmdp-rollout-{k}", daemon=True
                )
                process.start()
                child.close()
                self._processes.append(process)
                self._conns.append(parent)
            for k in range(count):
                self._receive(k)  # built, or raise why not
        except BaseException:
            self.close()
            raise

    def collect(self, algo: "OnPolicyAlgorithm") -> tuple[dict[str, Any], dict[str, list], float]:
        """One epoch from every worker, merged as if one process had stepped all envs."""
        from cmdp.algorithms.engine import _find_normalizer

        normalizer = _find_normalizer(algo.env)
        rms_start = None if normalizer is None else normalizer.obs_rms_state_dict()
        # copies: a tensor sent to another process is moved into shared memory, and the
        # policy's own parameters should stay where they are
        weights = {k: v.detach().clone() for k, v in algo.policy.state_dict().items()}
        for conn in self._conns:
            conn.send(("collect", (weights, rms_start)))
        parts = [self._receive(k) for k in range(len(self._conns))]
        if normalizer is not None:
            current = normalizer.obs_rms
            ours = dict(current) if isinstance(current, dict) else {} if current is None else {"": current}
            for part in parts:
                for name, rms in ours.items():
                    rms.update_from_moments(*part["rms"][name].moments_since(rms_start[name]))
        episodes: dict[str, list] = {"returns": [], "costs": [], "lengths": [], "successes": []}
        for part in parts:
            for key in episodes:
                episodes[key] += part["episodes"][key]
        algo._ep_return = np.concatenate([p["running"]["ep_return"] for p in parts])
        algo._ep_cost = np.concatenate([p["running"]["ep_cost"] for p in parts])
        algo._ep_len = np.concatenate([p["running"]["ep_len"] for p in parts])
        algo.remember_episode_lengths([n for p in parts for n in p["running"]["recent_lengths"]])
        algo.global_step += algo.config.steps_per_epoch
        data = _merge([p["data"] for p in parts])
        return data, episodes, max(p["time_env"] for p in parts)

    def _receive(self, k: int) -> Any:
        conn, process = self._conns[k], self._processes[k]
        try:
            while not conn.poll(_POLL_SECONDS):
                if not process.is_alive():
                    raise EOFError
            status, payload = conn.recv()
        except (EOFError, OSError):
            process.join(timeout=1.0)
            self.close()
            raise EnvWorkerError(f"rollout worker {k} died (exit code {process.exitcode})") from None
        if status == "ok":
            return payload
        self.close()
        if status == "fatal":
            raise payload
        raise EnvWorkerError(f"rollout worker {k} failed:\n{payload}")

    def close(self) -> None:
        self._finalizer()


def check_rollout_workers(algo: "OnPolicyAlgorithm") -> None:
    """Raise ConfigError if ``algo`` cannot collect in rollout workers."""
    if algo.policy.is_sequence:
        raise ConfigError(
            "rollout_workers supports feed-forward policies only; a sequence policy's state "
            f"would have to follow its envs between processes (network={algo.config.network!r})"
        )
    source = algo._env_source
    if isinstance(source, VectorCMDP) or not (isinstance(source, str) or callable(source)):
        raise ConfigError(
            "rollout_workers needs the env as an id or a callable that builds one, so that each "
            f"worker can build its own; got a {type(source).__name__}"
        )


def without_vectorization(env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` without ``vectorization``: with rollout workers each worker steps its envs in
    its own process, and the training process never steps its env."""
    return {k: v for k, v in env_kwargs.items() if k != "vectorization"}


def worker_seed(seed: int, k: int) -> int:
    """The seed of rollout worker ``k``'s own random streams (its action sampling)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0] % 2**31)


def build_worker_solver(
    cls: type, source: Any, cost_limit: Any, seed: int, env_seed: int, options: dict, policy: Any
) -> "OnPolicyAlgorithm":
    """The solver a rollout worker runs ``collect_here`` on."""
    algo = cls(source, cost_limit=cost_limit, seed=seed, run_dir=False, policy=policy, **options)
    # env i of the whole run gets seed + i, as in one process; the worker's own seed drives only
    # its action sampling
    algo.seed = env_seed
    return algo


def _merge(parts: list[Any]) -> Any:
    """Join the workers' rollouts along the env axis (dim 1 of every ``[steps, envs, ...]`` tensor)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=1)
    if isinstance(first, Mapping):
        return {key: _merge([p[key] for p in parts]) for key in first}
    raise TypeError(f"cannot merge rollout parts of type {type(first).__name__}")


def _worker_main(conn: Any, spec: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process handles Ctrl-C and closes us
    algo = None
    try:
        algo = build_worker_solver(*cloudpickle.loads(spec))
        conn.send(("ok", None))
        from cmdp.algorithms.engine import _find_normalizer
        from cmdp.core.running_stats import RunningMeanStd

        normalizer = _find_normalizer(algo.env)
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            weights, rms_state = payload
            algo.policy.load_state_dict(weights)
            if normalizer is not None:
                normalizer.load_obs_rms_state(rms_state)
            data, episodes, t_env = algo.collect_here()
            rms = {}
            if normalizer is not None:
                for key, state in normalizer.obs_rms_state_dict().items():
                    rms[key] = RunningMeanStd(np.shape(state["mean"]))
                    rms[key].load_state_dict(state)
            running = {
                "ep_return": algo._ep_return.copy(),
                "ep_cost": algo._ep_cost.copy(),
                "ep_len": algo._ep_len.copy(),
                "recent_lengths": list(algo._recent_lengths),
            }
            algo._recent_lengths = []  # each epoch reports only its own
            conn.send(("ok", {"data": data, "episodes": episodes, "time_env": t_env, "rms": rms, "running": running}))
    except CMDPError as e:
        with contextlib.suppress(Exception):
            conn.send(("fatal", e))
    except (EOFError, OSError):
        pass  # the training process is gone
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        if algo is not None:
            with contextlib.suppress(Exception):
                algo.close()
        conn.close()


def _shutdown(processes: list[Any], conns: list[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.send(("close", None))
    for process in processes:
        process.join(timeout=5.0)
        if process.exitcode is None:
            process.terminate()
            process.join(timeout=1.0)
    for conn in conns:
        conn.close()
    processes.clear()
    conns.clear()
