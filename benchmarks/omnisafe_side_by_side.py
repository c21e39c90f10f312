"""cmdp and OmniSafe side by side on safety-gymnasium's SafetyPointGoal1-v0.

    bash benchmarks/peers/setup_omnisafe.sh               # once: builds .peers/omnisafe
    .peers/omnisafe/bin/python benchmarks/omnisafe_side_by_side.py [--steps 200000] [--out BENCHMARKS.md]

Trains OmniSafe 0.5.0's PPOLag, CPO, FOCOPS and CPPOPID and cmdp's PPOLag, CPO, FOCOPS and
PIDLag (the PID-Lagrangian counterpart of CPPOPID) for the same number of env steps, then
evaluates every final policy on the same episodes.

Matched settings: steps per epoch (OmniSafe's default for this task, 20,000), actor and critic
networks (64x64 tanh, OmniSafe's default, which is also cmdp's), cost limit (25 per episode),
one torch thread per run, the same number of envs (2 by default; OmniSafe steps them in
safety-gymnasium's subprocess vector env, cmdp in its ``SubprocVectorCMDP``), observation
normalisation on, and the same seed. Everything else is each library's own default: how much
work an update does per sample is part of what a library is, so it is part of the throughput
being compared (OmniSafe's PPO-family updates make up to 40 passes in minibatches of 64, cmdp's
up to 10 passes in minibatches of 1,024; both stop the actor early on a KL limit).

Two differences in the envs are cmdp's and are counted as such. safety-gymnasium compiles its
MuJoCo world from XML at every reset (about 0.4 s, as much CPU as the 1,000 steps of an episode)
and computes its pseudo-lidar one object at a time in Python (about half of a step's CPU), and
OmniSafe's runs do both; cmdp's envs keep the compiled model and write each new layout into it
(cmdp.core.safety_gymnasium_worlds), and compute the observation and hazard cost with array
operations (cmdp.core.safety_gymnasium_vectorised). Both play the same episodes bit for bit
(tested in the peer env). ``--cmdp-recompile-world`` runs cmdp's envs as shipped instead, to
measure the libraries on the same env cost; those results are kept beside the default ones.

Throughput counts the training call alone (no set-up, no evaluation), rollout and update
included, two ways: env steps per second of wall time, and env steps per CPU-second summed over
the run's process tree (trainer and env workers, read from /proc). On a machine shared with
other jobs the wall figure depends on their load; the CPU figure hardly does. Each run is its
own process. Runs alternate between the two libraries, and the order within each pair of
solvers flips from pair to pair, so that the load falls on both alike; the load average at the
start and end of each run is recorded in the JSON results.

Default schedule: 200,000 steps per solver (10 epochs). On this 2-core machine, unloaded,
OmniSafe trains at about 370 env steps/s, so its four runs take about 40 minutes and cmdp's
well under that: the whole benchmark, evaluation included, stays near an hour. ``--steps``
sets a longer (or, on a busy machine, shorter) schedule.

Evaluation: each final policy plays ``--eval-episodes`` full episodes (1,000 steps each) in one
``safety_gymnasium.make`` env reset with seeds 10000, 10001, ...; the observation normaliser is
frozen; torch is seeded identically before the episodes. Actions are sampled from the policy
(the optimum of a CMDP is in general stochastic, and cmdp evaluates that way) and, as a second
figure, taken deterministically at the mean (OmniSafe's evaluator does that).

``--seeds 0 1 2`` repeats every run with each seed (the env's and torch's); the table then gives
the median throughput over seeds and EpRet / EpCost as mean ± std over seeds (each seed's value
being the mean over its evaluation episodes), and the targets are judged on those means.

``--cmdp-options '{"minibatch_size": 64}'`` trains cmdp's solvers with those options in place of
their defaults (checked before anything trains) against the same OmniSafe runs: a variant's
results are named ``cmdp-<solver>-<option>=<value>-seed<seed>.json`` beside the default ones, and
the table names the options.

Each finished run writes ``<results-dir>/<library>-<solver>-seed<seed>.json``; a killed benchmark
run again skips the runs whose JSON matches the current settings. A cmdp run also checkpoints
after every epoch (``.ckpt.pt`` and ``.partial.json`` beside its JSON), so the run that was
killed continues from its last epoch, and its JSON lists the steps it resumed at; its throughput
then sums the training time of each part. OmniSafe has no resume: its run starts again.
``--libraries cmdp`` trains only cmdp's runs and tabulates those without an OmniSafe counterpart
beside OmniSafe's published results. ``--out`` writes the table into that Markdown file (section
key ``omnisafe``) with date, machine, command and versions.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

ENV_ID = "SafetyPointGoal1-v0"
PAIRS = (("PPOLag", "PPOLag"), ("CPO", "CPO"), ("FOCOPS", "FOCOPS"), ("CPPOPID", "PIDLag"))
"""(OmniSafe solver, cmdp solver) pairs that are compared."""

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_STEPS = 10_000_000
PUBLISHED = {  # OmniSafe's published results: 1e7 steps, 5 seeds, cost limit 25 (EpRet, EpCost)
    "PPOLag": (12.96, 25.80),
    "CPO": (20.46, 28.84),
    "FOCOPS": (14.97, 33.72),
    "CPPOPID": (8.43, 25.74),
}
EVAL_SEED = 10_000
TAIL_FRACTION = 0.1  # the training curve's tail that the table averages, beside the evaluation


@dataclass(frozen=True)
class Settings:
    """What every run shares; a saved result is reused only when its settings are equal."""

    steps: int
    steps_per_epoch: int
    num_envs: int
    cost_limit: float
    seed: int
    eval_episodes: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    env_id: str = ENV_ID
    cmdp_options: str = ""
    """cmdp solver options that replace its defaults, as canonical JSON ("": none); OmniSafe's runs
    do not depend on it, so theirs are shared by every cmdp variant."""

    recompile_world: bool = False
    """Whether the run's envs are safety-gymnasium's as shipped, compiling their MuJoCo world at
    every reset and computing the observation object by object (always so for OmniSafe's runs), or
    cmdp's default: they keep the compiled model and vectorise the observation and hazard cost, the
    same episodes bit for bit (cmdp.core.safety_gymnasium_worlds, cmdp.core.safety_gymnasium_vectorised)."""

    def cmdp_kwargs(self) -> dict[str, Any]:
        return json.loads(self.cmdp_options) if self.cmdp_options else {}


# ---- CPU time of a process tree --------------------------------------------------------------


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of process ``root`` and all its live descendants, plus what they
    collected from children they reaped (Linux /proc).

    The machine is shared, so wall-clock throughput depends on what else runs; CPU time spent per
    env step does not, and it counts the env worker processes of both libraries too.
    """
    root = os.getpid() if root is None else root
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        stats[int(entry)] = (int(fields[1]), (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK"))
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += stats.get(pid, (0, 0.0))[1]
        frontier += [child for child, (parent, _) in stats.items() if parent == pid]
    return total


# ---- evaluation shared by both libraries ---------------------------------------------------


def evaluate_policy(act: Callable[[np.ndarray, bool], np.ndarray], settings: Settings, deterministic: bool) -> dict:
    """Play ``settings.eval_episodes`` seeded episodes with ``act(raw_obs[1, d], deterministic)``."""
    import safety_gymnasium
    import torch

    env = safety_gymnasium.make(settings.env_id)
    torch.manual_seed(EVAL_SEED)
    returns, costs = [], []
    try:
        for episode in range(settings.eval_episodes):
            obs, _ = env.reset(seed=EVAL_SEED + episode)
            ep_ret = ep_cost = 0.0
            done = False
            while not done:
                action = act(np.asarray(obs, dtype=np.float32)[None], deterministic)[0]
                obs, reward, cost, terminated, truncated, _ = env.step(action)
                ep_ret += float(reward)
                ep_cost += float(cost)
                done = terminated or truncated
            returns.append(ep_ret)
            costs.append(ep_cost)
    finally:
        env.close()
    return {
        "ep_return": float(np.mean(returns)),
        "ep_return_std": float(np.std(returns)),
        "ep_cost": float(np.mean(costs)),
        "ep_cost_std": float(np.std(costs)),
    }


def evaluate_both_ways(act: Callable[[np.ndarray, bool], np.ndarray], settings: Settings) -> dict:
    return {
        "eval_sampled": evaluate_policy(act, settings, deterministic=False),
        "eval_deterministic": evaluate_policy(act, settings, deterministic=True),
    }


# ---- one run per process ------------------------------------------------------------------


def resume_paths(result: Path) -> tuple[Path, Path]:
    """Where a cmdp run keeps its last epoch while it trains: the solver's checkpoint and the
    script's own records (epoch curve, training time) beside the result it will write."""
    return result.with_suffix(".ckpt.pt"), result.with_suffix(".partial.json")


def run_cmdp(solver: str, settings: Settings, workdir: Path, result: Path | None = None) -> dict:
    """Train and evaluate one cmdp run. With ``result`` (the JSON it will become), the run
    checkpoints after every epoch and a killed run continues from its last finished epoch: a
    1e7-step run outlasts a working session here."""
    import torch

    from cmdp.algorithms import ALGORITHMS, load
    from cmdp.runlog import write_json

    ckpt_path, partial_path = resume_paths(result) if result is not None else (None, None)
    partial = load_result(partial_path, settings) if ckpt_path is not None and ckpt_path.exists() else None
    if partial is not None:
        algo = load(ckpt_path, progress_bar=False)
        # the records are written after the checkpoint, so they never run ahead of it
        epochs = [e for e in partial["epochs"] if e["step"] <= algo.global_step]
        train_seconds, cpu_seconds = partial["train_seconds"], partial["cpu_seconds"]
        resumed_at = [*partial["resumed_at"], algo.global_step]
        print(f"cmdp {solver}: resuming at step {algo.global_step} from {ckpt_path}", flush=True)
    else:
        from cmdp.core.registry import builtin_ids

        # a built-in CMDP steps all its envs at once in one process; safety-gymnasium's get workers
        vectorization = "subproc" if settings.num_envs > 1 else "sync"
        env_kwargs = (
            {}
            if settings.env_id in builtin_ids()
            else {
                "vectorization": vectorization,
                "recompile_world": settings.recompile_world,
                "vectorised_task": not settings.recompile_world,
            }
        )
        algo = ALGORITHMS[solver](
            settings.env_id,
            cost_limit=settings.cost_limit,
            seed=settings.seed,
            run_dir=False,
            progress_bar=False,
            num_envs=settings.num_envs,
            steps_per_epoch=settings.steps_per_epoch,
            hidden_sizes=settings.hidden_sizes,
            activation=settings.activation,
            torch_threads=1,
            env_kwargs=env_kwargs,
            **settings.cmdp_kwargs(),
        )
        epochs, train_seconds, cpu_seconds, resumed_at = [], 0.0, 0.0, []
    try:
        # one learn() call per epoch, to print progress; learn() continues where it stopped
        while algo.global_step < settings.steps:
            t0, cpu0 = time.perf_counter(), tree_cpu_seconds()
            algo.learn(min(settings.steps, algo.global_step + settings.steps_per_epoch))
            train_seconds += time.perf_counter() - t0
            cpu_seconds += tree_cpu_seconds() - cpu0
            info = algo.last_info
            epochs.append(
                {
                    "step": algo.global_step,
                    "ep_return": info.get("Metrics/EpRet"),
                    "ep_cost": info.get("Metrics/EpCost"),
                    "multipliers": {k.split("/", 1)[1]: v for k, v in info.items() if k.startswith("Multiplier/")},
                    "rollout_s": info["Time/Rollout"],
                    "update_s": info["Time/Update"],
                }
            )
            print(f"cmdp {solver} step {algo.global_step}: {epochs[-1]}", flush=True)
            if ckpt_path is not None:
                algo.save(ckpt_path)
                record = {"epochs": epochs, "train_seconds": train_seconds, "cpu_seconds": cpu_seconds}
                write_json(partial_path, {"settings": asdict(settings), "resumed_at": resumed_at, **record})

        def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
            return algo.predict(obs, deterministic=deterministic)[0]

        out = {"train_seconds": train_seconds, "cpu_seconds": cpu_seconds, "steps": algo.global_step}
        out["epochs"] = epochs
        out["resumed_at"] = resumed_at
        out |= evaluate_both_ways(act, settings)
        out["torch_threads"] = torch.get_num_threads()
    finally:
        algo.close()
    if ckpt_path is not None:  # the result JSON now stands for the run
        ckpt_path.unlink(missing_ok=True)
        partial_path.unlink(missing_ok=True)
    return out


def omnisafe_configs(solver: str, settings: Settings, log_dir: Path) -> dict:
    """OmniSafe ``custom_cfgs`` matching ``settings``; the cost limit goes where the solver keeps it."""
    from omnisafe.utils.config import get_default_kwargs_yaml

    defaults = get_default_kwargs_yaml(solver, settings.env_id, "on-policy").todict()
    network = {"hidden_sizes": list(settings.hidden_sizes), "activation": settings.activation}
    cfgs: dict[str, Any] = {
        "seed": settings.seed,
        "train_cfgs": {
            "total_steps": settings.steps,
            "torch_threads": 1,
            "vector_env_nums": settings.num_envs,
            "device": "cpu",
        },
        "algo_cfgs": {"steps_per_epoch": settings.steps_per_epoch},
        "logger_cfgs": {"log_dir": str(log_dir), "use_tensorboard": False, "use_wandb": False},
        "model_cfgs": {"actor": dict(network), "critic": dict(network)},
    }
    placed = False
    for section in ("lagrange_cfgs", "algo_cfgs"):
        if "cost_limit" in (defaults.get(section) or {}):
            cfgs.setdefault(section, {})["cost_limit"] = settings.cost_limit
            placed = True
    if not placed:
        raise RuntimeError(f"OmniSafe's {solver} config has no cost_limit where expected")
    return cfgs


def run_omnisafe(solver: str, settings: Settings, workdir: Path) -> dict:
    import omnisafe
    import torch

    cfgs = omnisafe_configs(solver, settings, workdir / "omnisafe-runs")
    agent = omnisafe.Agent(solver, settings.env_id, custom_cfgs=cfgs)
    t0, cpu0 = time.perf_counter(), tree_cpu_seconds()
    agent.learn()
    train_seconds = time.perf_counter() - t0
    cpu_seconds = tree_cpu_seconds() - cpu0
    algo = agent.agent
    # OmniSafe 0.5.0 keeps the trained actor and the observation normaliser here; its own
    # Evaluator reloads the same two objects from the saved checkpoint.
    actor = algo._actor_critic.actor
    normalizer = copy.deepcopy(algo._env.save()["obs_normalizer"])
    space = algo._env._env.action_space  # the env's own bounds, before OmniSafe's ActionScale
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)

    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs)
            # frozen: OmniSafe's Normalizer.normalize would also update its statistics
            x = torch.clamp((x - normalizer.mean) / normalizer.std, -normalizer._clip, normalizer._clip)
            a = actor.predict(x, deterministic=deterministic)
            a = low + (high - low) * (a + 1.0) / 2.0  # OmniSafe's ActionScale from [-1, 1]
        return a.numpy()

    result = {
        "train_seconds": train_seconds,
        "cpu_seconds": cpu_seconds,
        "steps": int(settings.steps),
        "log_dir": str(algo.logger.log_dir),
    }
    result |= evaluate_both_ways(act, settings)
    result["torch_threads"] = torch.get_num_threads()
    agent.agent._env.close()
    return result


def worker_main(args: argparse.Namespace) -> None:
    settings = Settings(**json.loads(args.settings))
    settings = Settings(**(asdict(settings) | {"hidden_sizes": tuple(settings.hidden_sizes)}))
    library, solver = args.worker.split(":")
    workdir = Path(args.result).parent
    load = os.getloadavg()[0]
    if library == "cmdp":
        result = run_cmdp(solver, settings, workdir, Path(args.result))
    else:
        result = run_omnisafe(solver, settings, workdir)
    result |= {"library": library, "solver": solver, "settings": asdict(settings), "load_at_start": load}
    result["load_at_end"] = os.getloadavg()[0]
    result["env_steps_per_s"] = result["steps"] / result["train_seconds"]
    result["env_steps_per_cpu_s"] = result["steps"] / result["cpu_seconds"]
    Path(args.result).write_text(json.dumps(result, indent=1))


# ---- the driver ----------------------------------------------------------------------------


def run_order(pairs: tuple[tuple[str, str], ...], seeds: tuple[int, ...] = (0,)) -> list[tuple[str, str, int]]:
    """Seed by seed, alternate libraries, flipping which goes first from one pair to the next."""
    order = []
    for i, (seed, (theirs, ours)) in enumerate(itertools.product(seeds, pairs)):
        pair = [("omnisafe", theirs, seed), ("cmdp", ours, seed)]
        order += pair if i % 2 == 0 else pair[::-1]
    return order


def run_settings(settings: Settings, library: str, seed: int) -> Settings:
    """The settings of one run. OmniSafe's runs carry no cmdp options, so every cmdp variant
    shares them, and their envs compile the world at every reset."""
    if library != "cmdp":
        return replace(settings, seed=seed, cmdp_options="", recompile_world=True)
    return replace(settings, seed=seed)


def result_path(results_dir: Path, library: str, solver: str, settings: Settings) -> Path:
    """``<library>-<solver>[-<cmdp options>][-recompile_world]-seed<N>.json``: a cmdp variant never
    overwrites the default run."""
    tag = "-".join(f"{k}={v}" for k, v in settings.cmdp_kwargs().items()).replace("/", "_")
    if library == "cmdp" and settings.recompile_world:
        tag = "-".join(filter(None, (tag, "recompile_world")))
    return results_dir / f"{library}-{solver}{'-' + tag if tag else ''}-seed{settings.seed}.json"


def load_result(path: Path, settings: Settings) -> dict | None:
    """A run's JSON (a finished result, or the records of an interrupted cmdp run) if it was
    written with these settings; None when it is missing, unreadable or another run's."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    saved = dict(result.get("settings", {}))
    saved["hidden_sizes"] = tuple(saved.get("hidden_sizes", ()))
    saved.setdefault("cmdp_options", "")  # results written before cmdp variants existed
    saved.setdefault("recompile_world", True)  # and before cmdp kept the compiled world
    return result if saved == asdict(settings) else None


def parse_cmdp_options(text: str | None, solvers: list[str]) -> str:
    """``--cmdp-options`` as canonical JSON, checked against every cmdp solver that will run."""
    if not text:
        return ""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--cmdp-options is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise SystemExit(f"--cmdp-options must be a JSON object of solver options, got {text!r}")
    from cmdp.algorithms import ALGORITHMS

    for solver in solvers:
        ALGORITHMS[solver].Config.from_kwargs(**options)  # a bad name or value: its ConfigError
    return json.dumps(options, sort_keys=True) if options else ""


def versions() -> str:
    from importlib.metadata import version

    names = ("cmdp", "omnisafe", "safety-gymnasium", "gymnasium", "torch", "mujoco")
    return ", ".join(f"{n} {version(n)}" for n in names)


def _world_phrase(settings: Settings) -> str:
    if settings.recompile_world:
        return (
            "Both libraries' envs are safety-gymnasium's as shipped: they compile their MuJoCo world from XML at every "
            "reset and compute the observation object by object."
        )
    return (
        "OmniSafe's envs are safety-gymnasium's as shipped: they compile their MuJoCo world from XML at every reset "
        "(about 0.4 s) and compute the pseudo-lidar object by object in Python. cmdp's keep the compiled model and "
        "write the new layout into it (cmdp.core.safety_gymnasium_worlds), and compute the observation and the "
        "hazard cost with array operations (cmdp.core.safety_gymnasium_vectorised): the same episodes bit for bit "
        "(`--cmdp-recompile-world` turns both off)."
    )


def envs_phrase(settings: Settings) -> str:
    num_envs, workers = settings.num_envs, settings.cmdp_kwargs().get("rollout_workers", 0)
    if workers:
        return (
            f"{num_envs} envs, OmniSafe's in worker processes (safety-gymnasium's async vector env), cmdp's in "
            f"{workers} rollout workers, each stepping {num_envs // workers} and acting for "
            f"{'it' if num_envs == workers else 'them'} with a copy of the policy (`rollout_workers`)"
        )
    if num_envs == 1:
        return "1 env in the training process (OmniSafe's single-env wrappers, cmdp's sync vector env)"
    return f"{num_envs} envs in worker processes (safety-gymnasium's async vector env, cmdp's SubprocVectorCMDP)"


Results = dict[tuple[str, str, int], dict]
"""Finished runs keyed by (library, solver, seed)."""


class Spread(NamedTuple):
    """One library's evaluation of one solver over seeds: mean and std of the seeds' means."""

    ret: float
    ret_std: float
    cost: float
    cost_std: float


@dataclass(frozen=True)
class PairSummary:
    """One OmniSafe / cmdp solver pair over the seeds both libraries finished."""

    theirs: str
    ours: str
    seeds: tuple[int, ...]
    steps_per_s: tuple[float, float]  # median over seeds, (OmniSafe, cmdp)
    steps_per_cpu_s: tuple[float, float]
    sampled: tuple[Spread, Spread]  # (OmniSafe, cmdp)
    deterministic: tuple[Spread, Spread]
    training_tail: tuple[Spread | None, Spread | None]  # None: a run without its training curve

    @property
    def wall_ratio(self) -> float:
        return self.steps_per_s[1] / self.steps_per_s[0]

    @property
    def cpu_ratio(self) -> float:
        return self.steps_per_cpu_s[1] / self.steps_per_cpu_s[0]


def summarize_pairs(results: Results, seeds: tuple[int, ...]) -> list[PairSummary]:
    """Aggregate each pair over the seeds at which both of its runs finished (no pair: no row)."""
    summaries = []
    for theirs, ours in PAIRS:
        done = tuple(s for s in seeds if ("omnisafe", theirs, s) in results and ("cmdp", ours, s) in results)
        if not done:
            continue
        runs = [[results[(lib, name, s)] for s in done] for lib, name in (("omnisafe", theirs), ("cmdp", ours))]

        def median(key: str) -> tuple[float, float]:
            return tuple(statistics.median(r[key] for r in lib_runs) for lib_runs in runs)

        def spread(kind: str) -> tuple[Spread, Spread]:
            return tuple(
                _over_seeds([(r[kind]["ep_return"], r[kind]["ep_cost"]) for r in lib_runs]) for lib_runs in runs
            )

        def tail() -> tuple[Spread | None, Spread | None]:
            means = [[training_tail(r) for r in lib_runs] for lib_runs in runs]
            return tuple(None if None in lib_means else _over_seeds(lib_means) for lib_means in means)

        summaries.append(
            PairSummary(
                theirs=theirs,
                ours=ours,
                seeds=done,
                steps_per_s=median("env_steps_per_s"),
                steps_per_cpu_s=median("env_steps_per_cpu_s"),
                sampled=spread("eval_sampled"),
                deterministic=spread("eval_deterministic"),
                training_tail=tail(),
            )
        )
    return summaries


def _over_seeds(ret_cost: list[tuple[float, float]]) -> Spread:
    ret, cost = np.array(ret_cost, dtype=np.float64).T
    return Spread(float(ret.mean()), float(ret.std()), float(cost.mean()), float(cost.std()))


def training_curve(result: dict) -> list[tuple[float, float]]:
    """A run's per-epoch training (EpRet, EpCost): cmdp's from its result, OmniSafe's from its own
    progress.csv; epochs in which no episode finished are left out."""
    from cmdp.runlog import read_progress  # OmniSafe's progress.csv is a headed CSV of numbers, as cmdp's is

    if "epochs" in result:
        rows = [(e["ep_return"], e["ep_cost"]) for e in result["epochs"]]
    else:
        progress = Path(result.get("log_dir", "")) / "progress.csv"
        if not progress.is_file():
            return []
        rows = [(r.get("Metrics/EpRet"), r.get("Metrics/EpCost")) for r in read_progress(progress)]
    return [(r, c) for r, c in rows if r is not None and c is not None and np.isfinite(r) and np.isfinite(c)]


def training_tail(result: dict) -> tuple[float, float] | None:
    """Mean training (EpRet, EpCost) over the last TAIL_FRACTION of a run's epochs (at least one)."""
    curve = training_curve(result)
    if not curve:
        return None
    tail = curve[-max(1, round(TAIL_FRACTION * len(curve))) :]
    return float(np.mean([r for r, _ in tail])), float(np.mean([c for _, c in tail]))


def _one_ret_cost(ret_cost: tuple[float, float] | None) -> str:
    return "n/a" if ret_cost is None else f"{ret_cost[0]:.2f} / {ret_cost[1]:.1f}"


def _ret_cost(values: Spread | None, seeds: int) -> str:
    if values is None or seeds == 1:
        return _one_ret_cost(None if values is None else (values.ret, values.cost))
    return f"{values.ret:.2f} ± {values.ret_std:.2f} / {values.cost:.1f} ± {values.cost_std:.1f}"


def _resumed_phrase(results: Results) -> str:
    resumed = [
        f"cmdp {solver} seed {seed} at step{'s' if len(r['resumed_at']) > 1 else ''} "
        + ", ".join(f"{step:,}" for step in r["resumed_at"])
        for (library, solver, seed), r in sorted(results.items())
        if r.get("resumed_at")
    ]
    if not resumed:
        return ""
    return (
        " Resumed after an interruption: " + "; ".join(resumed)
        + " (their throughput sums the training time of each part, under whatever load each part met)."
    )


def build_table(results: Results, settings: Settings, command: str, seeds: tuple[int, ...] = (0,)) -> str:
    from report import machine_line  # benchmarks/report.py, beside this script

    loads = [r[k] for r in results.values() for k in ("load_at_start", "load_at_end")]
    seed_phrase = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))
    lines = [
        machine_line(torch_threads=max((r.get("torch_threads", 1) for r in results.values()), default=1)),
        "",
        f"Command: `{command}` (with the peer env's python, built by `bash benchmarks/peers/setup_omnisafe.sh`). "
        f"Versions: {versions()}.",
        "",
        f"`{settings.env_id}`, {settings.steps:,} env steps per solver, {seed_phrase}, "
        f"{settings.steps_per_epoch:,} steps per epoch, {envs_phrase(settings)}, "
        f"networks {list(settings.hidden_sizes)} {settings.activation}, cost limit {settings.cost_limit:g}, one torch "
        f"thread per run; other settings are each library's defaults"
        + (f", except cmdp's {_options_phrase(settings)}" if settings.cmdp_options else "")
        + ". "
        + _world_phrase(settings)
        + " Runs alternated between the libraries.",
        "",
        f"Throughput counts the training call only (rollout and update). *Wall*: env steps per second of wall time; "
        f"the machine is shared, and the 1-minute load average ranged from {min(loads):.1f} to {max(loads):.1f} "
        f"at the starts and ends of the runs (2 cores), so these depend on what else ran. *CPU*: env steps per "
        f"CPU-second summed over the run's processes (the trainer and every worker process it started), which does not."
        + _resumed_phrase(results),
        "",
        f"Evaluation: the final policy plays {settings.eval_episodes} episodes on seeds {EVAL_SEED}.."
        f"{EVAL_SEED + settings.eval_episodes - 1}, the same for every run, with a frozen observation normaliser; "
        f"EpRet / EpCost with actions sampled from the policy, and taken at its mean (deterministic) in the "
        f"column 'deterministic'. 'Training tail': the mean of the training epochs' EpRet / EpCost over "
        f"the last {TAIL_FRACTION:.0%} of the epochs (cmdp's recorded by this script, OmniSafe's read from its progress.csv), "
        f"many more episodes than the evaluation's, with the policy still moving."
        + (
            ""
            if len(seeds) == 1
            else " Throughput: median over seeds. EpRet / EpCost: mean ± std over seeds of each seed's "
            "mean over its evaluation episodes."
        ),
    ]
    summaries = summarize_pairs(results, seeds)
    if summaries:
        lines += [
            "",
            "| OmniSafe / cmdp solver | wall env-steps/s OmniSafe / cmdp | ratio | CPU env-steps/s OmniSafe / cmdp "
            "| ratio | EpRet / EpCost OmniSafe | EpRet / EpCost cmdp | deterministic OmniSafe; cmdp "
            "| training tail OmniSafe; cmdp |",
            "|---|---:|---:|---:|---:|---|---|---|---|",
        ]
    for p in summaries:
        n = len(p.seeds)
        seeds_note = "" if n == len(seeds) else f" ({n} of {len(seeds)} seeds)"
        lines.append(
            f"| {p.theirs} / {p.ours}{seeds_note} | {p.steps_per_s[0]:,.0f} / {p.steps_per_s[1]:,.0f} "
            f"| **{p.wall_ratio:.2f}x** | {p.steps_per_cpu_s[0]:,.0f} / {p.steps_per_cpu_s[1]:,.0f} "
            f"| **{p.cpu_ratio:.2f}x** | {_ret_cost(p.sampled[0], n)} | {_ret_cost(p.sampled[1], n)} "
            f"| {_ret_cost(p.deterministic[0], n)}; {_ret_cost(p.deterministic[1], n)} "
            f"| {_ret_cost(p.training_tail[0], n)}; {_ret_cost(p.training_tail[1], n)} |"
        )
    if summaries:
        lines += ["", *verdict(summaries, settings, seeds)]
    lines += unpaired_rows(results, settings)
    published = ", ".join(f"{k} {r:g} / {c:g}" for k, (r, c) in PUBLISHED.items())
    lines += [
        "",
        f"For scale, OmniSafe's published results after 1e7 steps (5 seeds, EpRet / EpCost): {published}.",
    ]
    return "\n".join(lines)


def unpaired_rows(results: Results, settings: Settings) -> list[str]:
    """cmdp runs with no OmniSafe run at the same settings (``--libraries cmdp``), each beside
    OmniSafe's published result, which is judged against only at its own length, 1e7 steps."""
    ours_to_theirs = {ours: theirs for theirs, ours in PAIRS}
    alone = [
        (solver, seed, r)
        for (library, solver, seed), r in sorted(results.items())
        if library == "cmdp" and ("omnisafe", ours_to_theirs[solver], seed) not in results
    ]
    if not alone:
        return []
    lines = [
        "",
        "cmdp runs without an OmniSafe run at these settings, beside OmniSafe's published result (1e7 steps, 5 seeds):",
        "",
        "| cmdp solver | seed | wall env-steps/s | CPU env-steps/s | EpRet / EpCost | deterministic | training tail | OmniSafe published |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]
    judgements = []
    for solver, seed, r in alone:
        (ret, cost), det = ((r[k]["ep_return"], r[k]["ep_cost"]) for k in ("eval_sampled", "eval_deterministic"))
        pub_ret, pub_cost = PUBLISHED[ours_to_theirs[solver]]
        lines.append(
            f"| {solver} | {seed} | {r['env_steps_per_s']:,.0f} | {r['env_steps_per_cpu_s']:,.0f} "
            f"| {_one_ret_cost((ret, cost))} | {_one_ret_cost(det)} | {_one_ret_cost(training_tail(r))} "
            f"| {pub_ret:g} / {pub_cost:g} |"
        )
        if settings.steps == PUBLISHED_STEPS:
            judgements += [
                "",
                f"At OmniSafe's published length ({PUBLISHED_STEPS:,} steps), cmdp {solver} seed {seed}: EpCost "
                f"{cost:.1f} {'within' if cost <= settings.cost_limit else '**over**'} the limit of "
                f"{settings.cost_limit:g}, EpRet {ret:.2f} {'no worse than' if ret >= pub_ret else '**below**'} OmniSafe's "
                f"published {pub_ret:g} (OmniSafe's mean over 5 seeds from its own benchmark, against one seed here).",
            ]
    return lines + judgements


def _options_phrase(settings: Settings) -> str:
    return ", ".join(f"`{k}={v!r}`" for k, v in settings.cmdp_kwargs().items())


def verdict(pairs: list[PairSummary], settings: Settings, seeds: tuple[int, ...] = (0,)) -> list[str]:
    """The issue's targets, each said plainly as met or not, from the measured numbers (seed means)."""
    wall = statistics.median(p.wall_ratio for p in pairs)
    cpu = statistics.median(p.cpu_ratio for p in pairs)
    seed_words = "one seed" if len(seeds) == 1 else f"{len(seeds)} seeds"

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    def judged(spreads: list[tuple[Spread, Spread]]) -> str:
        within = sum(ours.cost <= settings.cost_limit for _, ours in spreads)
        theirs_within = sum(theirs.cost <= settings.cost_limit for theirs, _ in spreads)
        no_worse = sum(ours.ret >= theirs.ret for theirs, ours in spreads)
        n = len(spreads)
        return (
            f"EpCost within the limit of {settings.cost_limit:g}: cmdp {within} of {n} solvers, OmniSafe "
            f"{theirs_within} of {n} ({met(within == n)}). EpRet no worse than OmniSafe's counterpart: "
            f"{no_worse} of {n} ({met(no_worse == n)})."
        )

    lines = [
        f"Targets (issue 5), from these numbers: throughput at least 3x OmniSafe's: median ratio {wall:.2f}x "
        f"wall ({met(wall >= 3)}), {cpu:.2f}x CPU ({met(cpu >= 3)}). {judged([p.sampled for p in pairs])} "
        f"Sampled-action evaluation; {settings.eval_episodes} episodes per policy, "
        f"{seed_words}, so differences in EpRet and EpCost of a few units are within the noise."
    ]
    tails = [p.training_tail for p in pairs if None not in p.training_tail]
    if tails:
        lines += ["", f"On the training tail instead ({len(tails)} of {len(pairs)} pairs have both curves): {judged(tails)}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=200_000, help="env steps per solver (a multiple of --steps-per-epoch)"
    )
    parser.add_argument("--steps-per-epoch", type=int, default=20_000)
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per library, solver and seed")
    parser.add_argument("--eval-episodes", type=int, default=10)
    names = sorted({name for pair in PAIRS for name in pair})
    parser.add_argument(
        "--solvers", nargs="+", choices=names, default=None, help="only the pairs with these solvers (default: all)"
    )
    parser.add_argument(
        "--cmdp-options",
        default=None,
        help='JSON object of cmdp solver options replacing its defaults, e.g. \'{"minibatch_size": 64}\'; '
        "the results of such a variant are kept beside the default ones, OmniSafe's are reused",
    )
    parser.add_argument(
        "--cmdp-recompile-world",
        action="store_true",
        help="run cmdp's envs as safety-gymnasium ships them, as OmniSafe's are: compiling their MuJoCo world at "
        "every reset and computing the observation object by object, instead of keeping the compiled model and "
        "vectorising the observation (its results are kept beside the default ones)",
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        choices=("omnisafe", "cmdp"),
        default=["omnisafe", "cmdp"],
        help="train only these libraries' runs (finished runs of the other are still tabulated): "
        "'cmdp' alone for a length OmniSafe cannot reach here, compared with its published result",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results" / "omnisafe")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    parser.add_argument("--section", default="omnisafe", help="key of the section of --out to write")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # library:solver, run in a child process
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.steps % args.steps_per_epoch or args.steps_per_epoch % args.num_envs:
        parser.error("--steps must be a multiple of --steps-per-epoch, and that a multiple of --num-envs")
    seeds = tuple(dict.fromkeys(args.seeds))
    pairs = tuple(p for p in PAIRS if args.solvers is None or set(p) & set(args.solvers))
    settings = Settings(
        steps=args.steps,
        steps_per_epoch=args.steps_per_epoch,
        num_envs=args.num_envs,
        cost_limit=args.cost_limit,
        seed=seeds[0],
        eval_episodes=args.eval_episodes,
        cmdp_options=parse_cmdp_options(args.cmdp_options, [ours for _, ours in pairs]),
        recompile_world=args.cmdp_recompile_world,
    )
    args.results_dir = args.results_dir.resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results: Results = {}
    for library, solver, seed in run_order(pairs, seeds):
        one_run = run_settings(settings, library, seed)
        path = result_path(args.results_dir, library, solver, one_run)
        result = load_result(path, one_run)
        if result is None and library not in args.libraries:
            continue
        if result is None:
            log = path.with_suffix(".log")
            print(f"[{time.strftime('%H:%M:%S')}] training {library} {solver} seed {seed} (log: {log})", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{library}:{solver}"]
            cmd += ["--result", str(path), "--settings", json.dumps(asdict(one_run))]
            # appended to: a cmdp run that continues after a kill keeps the log of its first part
            with log.open("a") as out:
                out.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] worker started\n")
                out.flush()
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=args.results_dir)
            if proc.returncode != 0:
                raise SystemExit(f"{library} {solver} failed (exit {proc.returncode}); see {log}")
            result = json.loads(path.read_text())
        else:
            print(f"{library} {solver} seed {seed}: reusing {path}", flush=True)
        results[(library, solver, seed)] = result
        s = result["eval_sampled"]
        print(
            f"  {library} {solver} seed {seed}: {result['env_steps_per_s']:,.0f} env-steps/s, "
            f"eval EpRet {s['ep_return']:.2f} EpCost {s['ep_cost']:.1f}",
            flush=True,
        )
        if args.out is not None:  # after every run, so that a long benchmark shows its rows as they come
            write_table(args.out, args.section, results, settings, seeds)
    print(write_table(args.out, args.section, results, settings, seeds))


def write_table(
    out: Path | None, section: str, results: Results, settings: Settings, seeds: tuple[int, ...] = (0,)
) -> str:
    from report import update_section  # benchmarks/report.py, beside this script

    command = "python benchmarks/omnisafe_side_by_side.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if not a.startswith(str(REPO))
    )
    table = build_table(results, settings, command.strip(), seeds)
    if out is not None:
        title = "Side by side with OmniSafe" + ("" if section == "omnisafe" else f" ({section})")
        update_section(out, section, title, table)
    return table


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/report.py
    main()
