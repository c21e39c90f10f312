"""The ``cmdp`` command line: ``train``, ``eval``, ``envs``, ``algos``, ``benchmark``, ``assure``.

Each subcommand is one function registered with :func:`command`, which also declares its
arguments, so adding a subcommand touches nothing else::

    @command("hello", "Say hello.", arg("--name", default="world", help="whom to greet"))
    def hello_command(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 0

Errors cmdp raises on purpose (:class:`~cmdp.errors.CMDPError`: unknown names, bad config
values, bad checkpoints) are printed as ``error: <message>`` on stderr with exit code 2 and no
traceback; any other exception is a bug and propagates with its traceback. Results go to
stdout; progress and notes go to stderr, so ``cmdp eval RUN > result.txt`` captures only the
table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import shutil
import signal
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from cmdp.config_files import load_config_file, merge_configs, parse_set_overrides
from cmdp.errors import CheckpointError, CMDPError, ConfigError

__all__ = ["COMMANDS", "Command", "arg", "build_parser", "command", "format_result", "main"]

EXIT_USAGE = 2  # argparse's code for a usage error; cmdp uses it for every CMDPError
EXIT_INTERRUPTED = 130  # the shell convention for SIGINT

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_FILE = "eval.json"


# ---- subcommand registry ----------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argparse arguments and the function that runs it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...]
    description: str = ""


COMMANDS: dict[str, Command] = {}


def arg(*flags: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One argument of a subcommand, spelled as for ``ArgumentParser.add_argument``."""
    return flags, kwargs


def command(name: str, help: str, *arguments: tuple[tuple[Any, ...], dict[str, Any]]):
    """Register the decorated ``run(args) -> exit code`` as subcommand ``name``.

    The function's docstring becomes the subcommand's ``--help`` description.
    """

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} is already registered")
        COMMANDS[name] = Command(name, help, run, tuple(arguments), inspect.cleandoc(run.__doc__ or ""))
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    from cmdp import __version__

    parser = argparse.ArgumentParser(
        prog="cmdp",
        description="Constrained reinforcement learning: train, evaluate and inspect CMDP solvers.",
    )
    parser.add_argument("--version", action="version", version=f"cmdp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    0 on success, 2 for a usage error or any :class:`~cmdp.errors.CMDPError` (printed as
    ``error: <message>``), 130 when training is interrupted with Ctrl-C or SIGTERM.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: return instead of exiting
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with _sigterm_as_interrupt():
            return COMMANDS[args.command].run(args)
    except CMDPError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt, so a job killed by a scheduler or ``kill`` takes
    the Ctrl-C path (checkpoint hint, a grid's invocation log, exit 130) instead of vanishing."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- shared helpers ---------------------------------------------------------------------


def _algorithms() -> Any:
    """The solver registry module, imported on first use (it imports torch, which `cmdp envs`
    does not need) and looked up in ``sys.modules`` so tests can substitute it."""
    return importlib.import_module("cmdp.algorithms")


def _count(text: str) -> int:
    """argparse type for step and episode counts: ``100000``, ``100_000`` or ``1e5``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- train --------------------------------------------------------------------------------

# Keys of a config file (or --set) that configure the run rather than the solver. ``env_id`` and
# a nested ``config`` table are what config.json holds, so a run's config.json is a valid
# --config file; ``cost_names`` is informational there and ignored.
_RUN_KEYS = ("algo", "env", "env_id", "cost_limit", "seed", "total_steps", "run_dir", "eval_episodes", "cost_names")


@command(
    "train",
    "Train a solver on an env, save it, evaluate it and print the result.",
    arg("--algo", help="solver name, e.g. PPOLag (case-insensitive; `cmdp algos` lists them)"),
    arg("--env", help="env id: a built-in id (`cmdp envs`), any gymnasium id, or a safety-gymnasium id"),
    arg(
        "--cost-limit",
        type=float,
        nargs="+",
        metavar="LIMIT",
        help="limit on the expected episode cost: one value, or one per cost channel (e.g. --cost-limit 5 3)",
    ),
    arg("--total-steps", type=_count, metavar="N", help="train until this many env steps (summed over envs)"),
    arg("--seed", type=int, help="random seed (default 0)"),
    arg("--config", metavar="FILE", help="TOML, YAML or JSON file of solver options (a run's config.json works)"),
    arg(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a solver option, e.g. --set actor_lr=3e-4 hidden_sizes=[64,64] env_kwargs.obs_mode=state",
    ),
    arg("--run-dir", metavar="DIR", help="run directory (default runs/{algo}-{env}-s{seed}-{time})"),
    arg("--num-envs", type=int, metavar="N", help="envs stepped in parallel (the solver option num_envs)"),
    arg("--eval-episodes", type=_count, metavar="N", help="episodes to evaluate after training (default 10; 0 skips)"),
    arg("--no-progress", action="store_true", help="do not show the live progress line"),
    arg(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from RUN_DIR/checkpoint.pt to --total-steps, with its saved settings",
    ),
)
def train_command(args: argparse.Namespace) -> int:
    """Train a solver, save RUN_DIR/checkpoint.pt, evaluate it and print a result table.

    Solver options come from --config, then --set, then the dedicated flags (--num-envs,
    --no-progress), later sources overriding earlier ones. A config file may also hold the run
    settings algo, env, cost_limit, seed, total_steps, run_dir and eval_episodes; the flags of
    the same names override them. The run directory receives config.json, progress.csv,
    TensorBoard events (tensorboard --logdir runs), checkpoint.pt and eval.json.

    --resume RUN_DIR continues an interrupted run from its last checkpoint to --total-steps with
    the settings saved in it; progress.csv rows after the checkpoint's step are dropped.
    """
    if args.resume is not None:
        return _resume(args)
    settings, options = _train_settings(args)
    algorithms = _algorithms()
    cls = algorithms.get_algorithm(settings["algo"])
    run_dir = Path(settings["run_dir"]) if settings.get("run_dir") else _default_run_dir(cls, settings)
    algo = cls(
        settings["env"],
        cost_limit=settings["cost_limit"],
        seed=settings["seed"],
        run_dir=str(run_dir),
        **options,
    )
    _stderr(
        f"cmdp: training {_algo_name(algo, cls)} on {settings['env']} for {settings['total_steps']:,} steps; "
        f"run dir {run_dir}"
    )
    return _learn_and_report(algo, cls, settings["total_steps"], settings["eval_episodes"], run_dir)


def _train_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split file, --set and flag values into run settings and solver options."""
    file_values = load_config_file(args.config) if args.config else {}
    merged = merge_configs(file_values, parse_set_overrides(args.overrides))
    nested = merged.pop("config", None)
    if nested is not None and not isinstance(nested, Mapping):
        raise ConfigError(f"'config' must be a table of solver options, got {nested!r}")
    options = merge_configs(nested or {}, {k: v for k, v in merged.items() if k not in _RUN_KEYS})
    run = {k: v for k, v in merged.items() if k in _RUN_KEYS}
    if "env_id" in run:
        run.setdefault("env", run.pop("env_id"))

    cost_limit: Any = run.get("cost_limit")
    if args.cost_limit is not None:
        cost_limit = args.cost_limit[0] if len(args.cost_limit) == 1 else list(args.cost_limit)
    settings = {
        "algo": args.algo or run.get("algo"),
        "env": args.env or run.get("env"),
        "cost_limit": cost_limit,
        "seed": args.seed if args.seed is not None else run.get("seed", 0),
        "total_steps": args.total_steps if args.total_steps is not None else run.get("total_steps"),
        "run_dir": args.run_dir or run.get("run_dir"),
        "eval_episodes": args.eval_episodes if args.eval_episodes is not None else run.get("eval_episodes", 10),
    }
    for key, flag in (("algo", "--algo"), ("env", "--env"), ("total_steps", "--total-steps")):
        if settings[key] is None:
            raise ConfigError(f"train needs {flag} (or {key!r} in the --config file)")
    for key in ("algo", "env"):
        if not isinstance(settings[key], str):
            raise ConfigError(f"{key} must be a string, got {settings[key]!r}")
    _check_int("seed", settings["seed"], minimum=0)
    _check_int("total_steps", settings["total_steps"], minimum=1)
    _check_int("eval_episodes", settings["eval_episodes"], minimum=0)
    if args.num_envs is not None:
        options["num_envs"] = args.num_envs
    if args.no_progress:
        options["progress_bar"] = False
    return settings, options


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _default_run_dir(cls: type, settings: Mapping[str, Any]) -> Path:
    from cmdp.runlog import default_run_dir

    return default_run_dir(getattr(cls, "name", cls.__name__), settings["env"], settings["seed"])


def _algo_name(algo: Any, cls: type | None = None) -> str:
    return str(getattr(algo, "name", None) or getattr(cls, "name", None) or type(algo).__name__)


def _resume(args: argparse.Namespace) -> int:
    given = [
        flag
        for flag, value in (
            ("--algo", args.algo),
            ("--env", args.env),
            ("--cost-limit", args.cost_limit),
            ("--seed", args.seed),
            ("--config", args.config),
            ("--set", args.overrides),
            ("--run-dir", args.run_dir),
            ("--num-envs", args.num_envs),
        )
        if value not in (None, [])
    ]
    if given:
        raise ConfigError(
            f"--resume continues a run with the settings saved in its checkpoint; drop {', '.join(given)}"
        )
    if args.total_steps is None:
        raise ConfigError("--resume needs --total-steps (the step count at which the run ends)")
    run_dir, checkpoint = _locate_checkpoint(args.resume)
    overrides = {"progress_bar": False} if args.no_progress else {}
    algo, cls = _load_algorithm(run_dir, checkpoint, **overrides)
    step = getattr(algo, "global_step", None)
    if isinstance(step, int) and step >= args.total_steps:
        raise ConfigError(
            f"{checkpoint} is already at step {step:,}; pass a --total-steps larger than that to continue"
        )
    # log into the directory named on the command line even if the run was moved since
    algo.run_dir = run_dir
    eval_episodes = 10 if args.eval_episodes is None else args.eval_episodes
    where = f" from step {step:,}" if isinstance(step, int) else ""
    _stderr(f"cmdp: resuming {_algo_name(algo, cls)}{where} to {args.total_steps:,} steps; run dir {run_dir}")
    return _learn_and_report(algo, cls, args.total_steps, eval_episodes, run_dir)


def _learn_and_report(algo: Any, cls: type, total_steps: int, eval_episodes: int, run_dir: Path) -> int:
    start_step = getattr(algo, "global_step", 0) or 0
    t0 = time.perf_counter()
    try:
        algo.learn(total_steps)
    except KeyboardInterrupt:
        checkpoint = Path(getattr(algo, "run_dir", None) or run_dir) / CHECKPOINT_FILE
        step = getattr(algo, "global_step", None)
        note = f" at step {step:,}" if isinstance(step, int) else ""
        if checkpoint.exists():
            hint = (
                f"the last checkpoint is {checkpoint}; continue with: "
                f"cmdp train --resume {checkpoint.parent} --total-steps {total_steps}"
            )
        else:
            hint = "no checkpoint was written yet (set checkpoint_every to save periodically)"
        _stderr(f"\ncmdp: interrupted{note}; {hint}")
        return EXIT_INTERRUPTED
    seconds = time.perf_counter() - t0
    run_dir = Path(getattr(algo, "run_dir", None) or run_dir)
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.exists():  # learn() writes it; make sure a result always has one
        algo.save(checkpoint)
    end_step = getattr(algo, "global_step", None)
    steps = (end_step - start_step) if isinstance(end_step, int) else total_steps - start_step
    sps = steps / seconds if seconds > 0 else None

    result: dict[str, Any] | None = None
    if eval_episodes > 0:
        result = algo.evaluate(episodes=eval_episodes)
        _write_eval(run_dir, result, checkpoint=checkpoint, seed=None, deterministic=False)
    print(
        format_result(
            result,
            title=f"{_algo_name(algo, cls)} on {_env_name(algo)}",
            cost_names=_cost_names(algo),
            steps_per_second=sps,
            run_dir=run_dir,
            episodes=eval_episodes,
            deterministic=False,
        )
    )
    _close(algo)
    return 0


# ---- eval ---------------------------------------------------------------------------------


@command(
    "eval",
    "Evaluate a trained run's checkpoint and print the result.",
    arg("run_dir", metavar="RUN_DIR", help="a run directory (holding checkpoint.pt) or a checkpoint file"),
    arg("--episodes", type=_count, default=20, metavar="N", help="episodes to run (default 20)"),
    arg("--seed", type=int, help="seed of the evaluation envs (default: the solver's own evaluation seed)"),
    arg(
        "--deterministic",
        action="store_true",
        help="take the most likely action instead of sampling (the CMDP optimum is in general stochastic)",
    ),
    arg(
        "--shield-threshold", type=float, default=0.0, metavar="T",
        help="act under the cost shield: only actions whose predicted one-step cost is at most T (the policy "
        "needs a one-step cost model; default 0: as the checkpoint was trained, which is no shield unless it "
        "trained under one)",
    ),  # fmt: skip
)
def eval_command(args: argparse.Namespace) -> int:
    """Load RUN_DIR/checkpoint.pt, run episodes, print a result table and write RUN_DIR/eval.json."""
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    if args.shield_threshold < 0:
        raise ConfigError(f"--shield-threshold must be >= 0 (0: no shield), got {args.shield_threshold}")
    run_dir, checkpoint = _locate_checkpoint(args.run_dir)
    # 0 keeps the checkpoint's own setting (a run trained under the shield acts under it)
    shield = {"shield_threshold": args.shield_threshold} if args.shield_threshold > 0 else {}
    algo, cls = _load_algorithm(run_dir, checkpoint, **shield)
    shield_used = getattr(algo.config, "shield_threshold", 0.0)  # what the evaluation acted under
    try:
        result = algo.evaluate(episodes=args.episodes, seed=args.seed, deterministic=args.deterministic)
    finally:
        _close(algo)
    out = _write_eval(
        run_dir, result, checkpoint=checkpoint, seed=args.seed, deterministic=args.deterministic,
        shield_threshold=shield_used,
    )  # fmt: skip
    print(
        format_result(
            result,
            title=f"{_algo_name(algo, cls)} on {_env_name(algo)}"
            + (f", cost shield at {shield_used:g}" if shield_used > 0 else ""),
            cost_names=_cost_names(algo),
            run_dir=run_dir,
            episodes=args.episodes,
            deterministic=args.deterministic,
        )
    )
    _stderr(f"cmdp: wrote {out}")
    return 0


def _locate_checkpoint(path_text: str) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint file path."""
    path = Path(path_text)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (expected a run directory or a checkpoint file)")
    if path.is_file():
        return path.parent, path
    checkpoint = path / CHECKPOINT_FILE
    if not checkpoint.exists():
        raise CheckpointError(f"no checkpoint at {checkpoint}: train the run first (cmdp train ... --run-dir {path})")
    return path, checkpoint


def _load_algorithm(run_dir: Path, checkpoint: Path, **overrides: Any) -> tuple[Any, type | None]:
    """Load a checkpoint with the class named in the run's config.json, or, without one, with
    the registry's generic loader (which reads the class from the checkpoint)."""
    algorithms = _algorithms()
    name = _saved_algo_name(run_dir)
    if name is not None:
        cls = algorithms.get_algorithm(name)
        return cls.load(checkpoint, **overrides), cls
    loader = getattr(algorithms, "load", None)
    if loader is None:
        raise CheckpointError(f"{run_dir / 'config.json'} is missing, so the solver of {checkpoint} is unknown")
    algo = loader(checkpoint, **overrides)
    return algo, type(algo)


def _saved_algo_name(run_dir: Path) -> str | None:
    path = run_dir / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("algo") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _write_eval(
    run_dir: Path,
    result: Mapping[str, Any],
    *,
    checkpoint: Path,
    seed: int | None,
    deterministic: bool,
    shield_threshold: float = 0.0,
) -> Path:
    from cmdp.runlog import write_json

    record = dict(result)
    record["settings"] = {
        "checkpoint": str(checkpoint), "seed": seed, "deterministic": deterministic, "shield_threshold": shield_threshold,
    }  # fmt: skip
    return write_json(run_dir / EVAL_FILE, record)


def _env_name(algo: Any) -> str:
    env_id = getattr(algo, "env_id", None)
    if env_id:
        return str(env_id)
    env = getattr(algo, "env", None)
    return type(env).__name__ if env is not None else "?"


def _cost_names(algo: Any) -> list[str] | None:
    env = getattr(algo, "env", None)
    names = getattr(env, "cost_names", None) or getattr(algo, "cost_names", None)
    return list(names) if names is not None else None


def _close(algo: Any) -> None:
    close = getattr(algo, "close", None)
    if callable(close):
        close()


# ---- result table -------------------------------------------------------------------------


def format_result(
    result: Mapping[str, Any] | None,
    *,
    title: str = "",
    cost_names: Sequence[str] | None = None,
    steps_per_second: float | None = None,
    run_dir: Path | str | None = None,
    episodes: int | None = None,
    deterministic: bool = False,
) -> str:
    """A small aligned table of an evaluation result (``evaluate()``'s dict; None: not evaluated).

    Rows: EpRet (with its std when present), EpLen, SuccessRate (when present), EpCost summed
    over channels, one row per channel with its limit and whether the mean is within it, the
    training throughput, and the run directory.
    """
    rows: list[tuple[str, str]] = []
    if result is None:
        head = f"{title}: not evaluated (--eval-episodes 0)" if title else "not evaluated"
    else:
        mode = "greedy actions" if deterministic else "sampled actions"
        n = result.get("episodes", episodes)
        head = f"{title}, {n} episodes ({mode})" if title else f"{n} episodes ({mode})"
        ret = _fmt(result.get("ep_return"))
        if result.get("ep_return_std") is not None:
            ret += f" ± {_fmt(result['ep_return_std'])}"
        rows.append(("EpRet", ret))
        if result.get("ep_length") is not None:
            rows.append(("EpLen", _fmt(result["ep_length"])))
        if result.get("success_rate") is not None:
            rows.append(("SuccessRate", f"{100 * float(result['success_rate']):.1f}%"))
        rows.extend(_cost_rows(result, cost_names))
    if steps_per_second is not None:
        rows.append(("train steps/s", f"{steps_per_second:,.0f}"))
    if run_dir is not None:
        rows.append(("run dir", str(run_dir)))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([head] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def _cost_rows(result: Mapping[str, Any], cost_names: Sequence[str] | None) -> list[tuple[str, str]]:
    costs = dict(result.get("ep_costs") or {})
    names = list(costs) or list(cost_names or [])
    limits = result.get("cost_limit")
    if isinstance(limits, (int, float)):
        limits = [limits]
    if limits is not None and len(limits) == 1 and len(names) > 1:
        limits = list(limits) * len(names)  # one limit given for every channel
    paired = limits is not None and len(limits) == len(names)

    rows: list[tuple[str, str]] = []
    total = result.get("ep_cost")
    if len(names) == 1 and names[0] in costs:
        value = costs[names[0]]
        label = f"EpCost [{names[0]}]"
        rows.append((label, _with_limit(value, limits[0] if paired else None)))
        return rows
    total_text = _fmt(total) + ("  (sum over channels)" if len(names) > 1 else "")
    if limits is not None and not paired:
        total_text += f"  limits {', '.join(_fmt(x) for x in limits)}"
    rows.append(("EpCost", total_text))
    for i, name in enumerate(names):
        if name in costs:
            rows.append((f"  {name}", _with_limit(costs[name], limits[i] if paired else None)))
    return rows


def _with_limit(value: Any, limit: Any) -> str:
    text = _fmt(value)
    if limit is None:
        return text
    v, d = float(value), float(limit)
    status = "ok" if v <= d else f"over by {_fmt(v - d)}"
    return f"{text}  limit {_fmt(d)}  {status}"


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


# ---- envs, algos --------------------------------------------------------------------------


@command("envs", "List the built-in env ids with their cost channels.")
def envs_command(args: argparse.Namespace) -> int:
    """List the built-in env ids, their cost channels (from building each env once with
    num_envs=1) and descriptions, and say which other ids work."""
    from cmdp.core import registry

    rows = []
    for spec in registry.builtin_specs():
        rows.append((spec.env_id, _describe_costs(spec), _first_line(spec.description)))
    if rows:
        header = ("ID", "COST CHANNELS", "DESCRIPTION")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
        indent = 2 + widths[0] + 2 + widths[1] + 2
        # wrap long descriptions under their column rather than across the id column
        text_width = max(shutil.get_terminal_size(fallback=(100, 24)).columns - indent - 1, 30)
        print("Built-in environments:")
        for r in [header, *rows]:
            lines = textwrap.wrap(r[2], text_width) or [""]
            print(f"  {r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {lines[0]}".rstrip())
            for line in lines[1:]:
                print(" " * indent + line)
    else:
        print("No built-in environments are registered.")
    print()
    print(
        "Any gymnasium id works too (cost from info['cost'], or pass a cost_fn through env_kwargs), "
        "e.g. cmdp train --algo PPO --env CartPole-v1 ..."
    )
    if registry.safety_gymnasium_available():
        print("safety-gymnasium is installed: its ids (e.g. SafetyPointGoal1-v0) work as well.")
    else:
        print("safety-gymnasium is not installed: its ids (e.g. SafetyPointGoal1-v0) are unavailable.")
    return 0


def _describe_costs(spec: Any) -> str:
    try:
        env = spec.factory(num_envs=1, seed=0)
    except Exception as e:  # one broken env must not hide the others from the listing
        return f"(cannot build: {type(e).__name__}: {e})"
    try:
        names = list(getattr(env, "cost_names", []) or [])
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()
    return ", ".join(names) if names else "(none)"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


@command(
    "algos",
    "List the solvers, or show one solver's options.",
    arg("name", nargs="?", metavar="NAME", help="show this solver's description and options (for --set)"),
)
def algos_command(args: argparse.Namespace) -> int:
    """Without NAME, list the registered solvers; with NAME, print its docstring and options."""
    algorithms = _algorithms()
    if args.name is not None:
        cls = algorithms.get_algorithm(args.name)
        print(_algo_name(None, cls))
        doc = (cls.__doc__ or "").strip()
        if doc:
            print()
            print(doc)
        config_cls = getattr(cls, "Config", None)
        describe = getattr(config_cls, "describe", None)
        if callable(describe):
            print()
            print("Options (cmdp train --set NAME=VALUE, or keys of a --config file):")
            for line in describe().splitlines():
                print(f"  {line}")
        return 0
    table = getattr(algorithms, "ALGORITHMS", {})
    if not table:
        print("No solvers are registered.")
        return 0
    width = max(len(n) for n in table)
    print("Solvers (cmdp algos NAME shows one solver's options):")
    for name, cls in table.items():
        constrained = getattr(cls, "constrained", None)
        kind = "" if constrained is None else ("constrained" if constrained else "unconstrained").ljust(15)
        print(f"  {name.ljust(width)}  {kind}{_first_line(cls.__doc__)}".rstrip())
    return 0


# ---- benchmark ----------------------------------------------------------------------------


@command(
    "benchmark",
    "Train solvers x envs x seeds; write results.csv, results.md and learning-curve plots.",
    arg("--solvers", nargs="+", metavar="NAME", help="solvers to compare (default: all of `cmdp algos`)"),
    arg("--envs", nargs="+", metavar="ID", help="env ids (default: the classic CMDPs; with --full every env of the table)"),
    arg("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default 0 1 2; with --full 0 1 2 3 4)"),
    arg("--full", action="store_true", help="the full grid: more steps and seeds, Safety-CHORES and safety-gymnasium envs"),
    arg("--out", metavar="DIR", help="output directory (default runs/benchmark-small or runs/benchmark-full)"),
    arg("--ray", action="store_true", help="run the cells as Ray tasks (a local Ray unless --address is given)"),
    arg("--address", metavar="ADDR", help="address of a running Ray cluster, e.g. 10.0.0.5:6379 (implies --ray)"),
    arg("--workers", type=int, metavar="N", help="cells run at once (default: the number of CPUs)"),
    arg("--steps", type=_count, metavar="N", help="train every cell for N steps instead of the table's"),
    arg("--cost-limit", type=float, metavar="LIMIT", help="limit for env ids the settings table does not know"),
)
def benchmark_command(args: argparse.Namespace) -> int:
    """Run a grid of training runs, one cell per (solver, env, seed), and compare the solvers.

    Each cell trains with the per-env settings of cmdp.benchmark.settings (cost limit, steps,
    solver options), evaluates a few times along the way, and records its config, seed and
    package versions in OUT/cells/<solver>_<env>_<seed>/. The tables (final EpRet and EpCost,
    mean ± std over seeds, the limit, how many seeds end over it, training steps/s) go to
    OUT/results.md, OUT/results.csv and OUT/cells.csv, learning curves to OUT/plots/<env>.png.
    Env ids cmdp.make does not know here (safety-gymnasium without that package) are skipped
    with a note.

    Rerunning the same command resumes: finished cells are skipped and a half-finished cell
    continues from its checkpoint at its last evaluation point.
    """
    from cmdp.benchmark import GridConfig, run_grid

    full = bool(args.full)
    config = GridConfig(
        out=Path(args.out or f"runs/benchmark-{'full' if full else 'small'}"),
        solvers=tuple(args.solvers or ()),
        envs=tuple(args.envs or ()),
        seeds=tuple(args.seeds or ()),
        full=full,
        workers=args.workers,
        ray=args.ray,
        address=args.address,
        steps=args.steps,
        cost_limit=args.cost_limit,
    )
    command_line = "cmdp benchmark " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["benchmark"] else None
    try:
        report = run_grid(config, note=_stderr, command=command_line)
    except KeyboardInterrupt:
        _stderr(f"\ncmdp: interrupted; run the same command again to resume (finished cells are kept in {config.out})")
        return EXIT_INTERRUPTED
    print(report.table)
    return 1 if report.failures else 0


# ---- assure -------------------------------------------------------------------------------


@command(
    "assure",
    "Assurance report of policies on a Safety-CHORES task: SR, CC per component, SEL, OOD and extreme suites.",
    arg("policies", nargs="+", metavar="POLICY", help="expert, safe-expert, random, a run directory or a checkpoint file"),
    arg("--task", default="Fetch", help="ObjectNav, PickUp or Fetch (default Fetch)"),
    arg("--suites", default="all", help="comma-separated suite names, 'all' (default) or 'none'"),
    arg("--episodes", type=_count, metavar="N", help="the first N episodes of the evaluation set (default: all)"),
    arg("--suite-episodes", type=_count, metavar="N", help="episodes per suite (default: as many as the evaluation set run)"),
    arg("--seed", type=int, default=0, help="seed of envs, policies and suites (default 0)"),
    arg("--out", metavar="DIR", help="report directory (default runs/assure-{task}-s{seed}-{time})"),
    arg("--num-envs", type=int, default=16, metavar="N", help="envs stepped as one batch (default 16)"),
    arg("--gifs", type=int, default=3, metavar="K", help="GIFs of each policy's K worst-cost episodes (default 3)"),
    arg("--obs-mode", default="state", help="observations for policies that do not fix their own: state or rgb"),
    arg("--deterministic", action="store_true", help="solver and VLA policies take their most likely action"),
    arg(
        "--shield-threshold", type=float, default=0.0, metavar="T",
        help="solver checkpoints act under their cost shield: only actions whose predicted one-step cost is at "
        "most T (they need a one-step cost model; default 0: as each was trained, which is no shield unless it "
        "trained under one)",
    ),  # fmt: skip
)
def assure_command(args: argparse.Namespace) -> int:
    """Run each POLICY on the task's evaluation set and on the chosen suites (the same episodes
    for every policy), print a summary table and write the report to --out: assurance.json,
    assurance.md, episodes.json, plots/*.png and gifs/*.gif (see cmdp.isa.report).
    Suites: standard (the reference), lighting, colour, camera, dynamics, instruction, layout
    (out of distribution), fragile_on_path, danger_near_target, cramped_start, occluded_target,
    dense_clutter (extreme failures).
    """
    from cmdp.isa.assure import assure
    from cmdp.isa.report import JSON_FILE, MARKDOWN_FILE, summary_table
    from cmdp.runlog import default_run_dir

    out = Path(args.out) if args.out else default_run_dir("assure", args.task, args.seed)
    try:
        report = assure(
            args.policies, task=args.task, suites=args.suites, episodes=args.episodes, seed=args.seed, out_dir=out,
            num_envs=args.num_envs, gifs=args.gifs, obs_mode=args.obs_mode, suite_episodes=args.suite_episodes,
            deterministic=args.deterministic, shield_threshold=args.shield_threshold,
        )  # fmt: skip
    except KeyboardInterrupt:
        _stderr(f"\ncmdp: assurance interrupted; the report in {out} is missing or incomplete")
        return EXIT_INTERRUPTED
    print(summary_table(report))
    _stderr(f"cmdp: wrote {out / MARKDOWN_FILE} and {out / JSON_FILE} in {report.seconds:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
