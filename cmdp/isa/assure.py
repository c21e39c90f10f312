"""Assure, the fourth stage of the Integrated Safety Approach: targeted evaluation of policies.

:func:`assure` runs one or more policies on a Safety-CHORES task and writes an assurance
report (:mod:`cmdp.isa.report`): the task's standard evaluation set, and the out-of-distribution
and extreme-failure suites of :mod:`cmdp.envs.chores.suites`, each run once per policy on the
*same* episodes, so policies compare episode for episode.

Policies
--------
Anything that chooses actions for a batch of :class:`~cmdp.envs.chores.env.ChoresEnv` envs
satisfies the small :class:`Policy` protocol: a ``name``, the observation settings it needs
(``env_kwargs``: ``obs_mode``, ``image_size``, ``detection``), ``reset(num_envs, seed)`` before a run and
``act(env, obs, episode_start) -> actions`` before every step. Built in: :class:`ExpertPolicy`
(the shortest-path expert, unsafe as SPOC's or clearance-keeping), :class:`RandomPolicy`,
:class:`AlgorithmPolicy` (any solver checkpoint: ``predict`` with the sequence state carried
and episode starts passed) and :class:`VLAPolicyAdapter` (a pretrained
:class:`~cmdp.policies.vla.VLAPolicy`). :func:`make_policy` turns ``"expert"``,
``"safe-expert"``, ``"random"``, a run directory or a checkpoint file into one of them.

Evaluation
----------
A run over ``E`` episodes with ``N`` envs gives env row ``r`` the episodes ``r, r + N, ...``
(the env's fixed-list order) and counts each episode exactly once; rows that finished their
share keep stepping unrecorded episodes until every row is done. Everything random is seeded
from ``seed``: the env (jostled objects, dynamics noise), the expert's sidesteps, the random
policy, and torch's generator for sampled actions (restored afterwards). A run is therefore
an exact function of (policy, episodes, seed, number of envs).

Metrics per set of episodes (:func:`episode_metrics`): success rate (SR); cumulative cost
(CC, ``ep_cost``: the mean over episodes of the five components summed) and its components
(``ep_costs``); the mean episode length; CC over successful and over failed episodes; and
SEL, success weighted by expert episode length, ``success * L_expert / max(L_expert, L)``
averaged over episodes (SPOC's ``sel_metric``). An episode without an expert length (the
expert failed it) counts as SEL 0, as SafeVLA's evaluation does; ``sel_missing`` says how
many there were. The evaluation sets ship the expert's lengths (the unsafe expert alone in each
episode, 600 steps at most); suite episodes get them here the same way
(:func:`with_expert_lengths`, in the unperturbed house), so SEL always compares with the
shortest-path expert alone in the unperturbed house. The expert evaluated in a batch need not
repeat those lengths exactly (its sidesteps and the objects it jostles draw from generators
the batch shares), so its own SEL can fall a little below 1.

GIFs of the worst-cost episodes are made by *replaying the whole batched run* from the same
seed and rendering only the wanted rows (:func:`replay_frames`), not by recording frames for
every episode (a top-down frame costs about as much as a step of 16 envs, and which episodes
are worst is known only at the end) and not by replaying the lone episode: jostled objects,
dynamics noise and the expert's sidesteps draw from generators shared by the whole batch, so
an episode run alone would not be the one measured. The replay checks that it reproduced the
recorded length, costs and path, and the report says so for each GIF.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from cmdp.algorithms.config import Config, option
from cmdp.core.seeding import seeded_torch
from cmdp.envs.chores import text
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.env import EVAL_HORIZON, ChoresEnv
from cmdp.envs.chores.episodes import EpisodeSpec, specs_from
from cmdp.envs.chores.suites import MAX_SUITE_SEED, SUITES
from cmdp.errors import CheckpointError, ConfigError, UnknownNameError

BUILTIN_POLICIES = ("expert", "safe-expert", "random")
EVAL_SET = "eval"
"""Name of the task's standard evaluation set in results and reports (suites use their own names)."""


def all_suites() -> tuple[str, ...]:
    """Names of every suite of :mod:`cmdp.envs.chores.suites`, reference first."""
    return tuple(SUITES)


# ---- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AssureConfig(Config):
    """Settings of one assurance run (see :func:`assure`)."""

    task: str = option("Fetch", "Safety-CHORES task.", choices=text.TASKS)
    suites: tuple[str, ...] = option((), "Suites to run besides the evaluation set (names of cmdp.envs.chores.suites.SUITES).")
    episodes: int | None = option(
        None, "Episodes of the evaluation set: its first this many (None: all of it).", ge=1
    )
    suite_episodes: int | None = option(
        None, "Episodes per suite (None: as many as the evaluation set run gives).", ge=1
    )
    seed: int = option(0, "Seed of envs, policies and suite instances.", ge=0, lt=MAX_SUITE_SEED)
    num_envs: int = option(16, "Envs stepped as one batch (at most one per episode of a set).", ge=1)
    gifs: int = option(3, "GIFs of each policy's worst-cost episodes (0: none).", ge=0)
    obs_mode: str = option(
        "state", "Observations for policies that do not fix their own (experts, random).", choices=("state", "rgb")
    )
    deterministic: bool = option(
        False, "Solver and VLA policies take their most likely action instead of sampling one."
    )
    shield_threshold: float = option(
        0.0,
        "Solver checkpoints named by path act under the engine's cost shield at this threshold: they "
        "sample only among the actions their one-step cost model predicts to cost at most this on the "
        "step (0: as each was trained, which is no shield unless it trained under one).",
        ge=0.0,
    )
    gif_size: int = option(256, "Side of the top-down GIF frames in pixels.", ge=64, le=1024)
    gif_max_frames: int = option(240, "At most this many frames per GIF (longer episodes skip frames evenly).", ge=2)
    progress: bool = option(True, "Print progress lines to stderr.")

    def validate(self) -> None:
        known = all_suites()
        unknown = [s for s in self.suites if s not in known]
        if unknown:
            raise ConfigError(f"unknown suite {unknown[0]!r}; allowed: {', '.join(known)} (or 'all', 'none')")
        if len(set(self.suites)) != len(self.suites):
            raise ConfigError(f"suites are listed twice: {list(self.suites)}")


def parse_suites(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Suite names from ``"all"``, ``"none"``, ``"a,b"`` or a sequence of names (None: all);
    :class:`AssureConfig` checks them."""
    if value is None:
        return all_suites()
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "all":
            return all_suites()
        if word in ("none", ""):
            return ()
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


# ---- policies -----------------------------------------------------------------------------------


@runtime_checkable
class Policy(Protocol):
    """What :func:`assure` evaluates.

    ``env_kwargs``: the observation settings the policy needs (``obs_mode``, ``image_size``, ``detection``);
    empty when it reads the env directly and any observation will do."""

    name: str
    env_kwargs: Mapping[str, Any]

    def reset(self, num_envs: int, seed: int = 0) -> None:
        """Forget everything before a run over ``num_envs`` envs; reseed."""

    def act(self, env: ChoresEnv, obs: Any, episode_start: np.ndarray) -> np.ndarray:
        """Actions ``[num_envs]`` for the current observations; ``episode_start[i]`` is true
        when env ``i`` has just begun an episode."""


class ExpertPolicy:
    """The shortest-path expert (``safe=False``: SPOC's, unsafe) or the clearance-keeping one."""

    env_kwargs: Mapping[str, Any] = {}

    def __init__(self, safe: bool = False, name: str | None = None) -> None:
        self.safe = bool(safe)
        self.name = name or ("safe-expert" if self.safe else "expert")
        self.source = "clearance-keeping shortest-path expert" if self.safe else "shortest-path expert (unsafe)"
        self._expert = None
        self._seed = 0

    def reset(self, num_envs: int, seed: int = 0) -> None:
        self._expert, self._seed = None, int(seed)

    def act(self, env: ChoresEnv, obs: Any, episode_start: np.ndarray) -> np.ndarray:
        from cmdp.envs.chores.expert import ShortestPathExpert

        if self._expert is None or self._expert.env is not env:
            self._expert = ShortestPathExpert(env, safe=self.safe, seed=self._seed)
        return self._expert.act()


class RandomPolicy:
    """Uniformly random actions."""

    env_kwargs: Mapping[str, Any] = {}

    def __init__(self, name: str = "random") -> None:
        self.name = name
        self.source = "uniformly random actions"
        self._rng = np.random.default_rng(0)

    def reset(self, num_envs: int, seed: int = 0) -> None:
        self._rng = np.random.default_rng([int(seed), 31])

    def act(self, env: ChoresEnv, obs: Any, episode_start: np.ndarray) -> np.ndarray:
        return self._rng.integers(env.action_space.n, size=env.num_envs)


class AlgorithmPolicy:
    """A trained solver (:class:`~cmdp.algorithms.engine.OnPolicyAlgorithm`): ``predict`` on raw
    observations (the solver applies its frozen normalisation), carrying a sequence policy's
    state and passing where episodes start."""

    def __init__(self, algo: Any, name: str, deterministic: bool = False) -> None:
        self.algo = algo
        self.name = name
        self.source = f"{getattr(algo, 'name', type(algo).__name__)} solver"
        self.deterministic = bool(deterministic)
        env_kwargs = dict(getattr(algo.config, "env_kwargs", None) or {})
        # the options that shape the observations; the rest (episodes, dynamics) belong to training
        self.env_kwargs = {"obs_mode": env_kwargs.get("obs_mode", "state")}
        if "image_size" in env_kwargs:
            self.env_kwargs["image_size"] = tuple(env_kwargs["image_size"])
        if env_kwargs.get("detection"):
            self.env_kwargs["detection"] = True
        self.task = _task_of(getattr(algo, "env_id", None))
        self._space = algo.env.observation_space
        self._state: Any = None
        self._checked_env: ChoresEnv | None = None

    def reset(self, num_envs: int, seed: int = 0) -> None:
        self._state = None

    def act(self, env: ChoresEnv, obs: Any, episode_start: np.ndarray) -> np.ndarray:
        if self._checked_env is not env:
            if not _same_layout(env.observation_space, self._space):
                raise ConfigError(
                    f"policy {self.name!r} was trained on observations {self._space}, the assurance env gives "
                    f"{env.observation_space}"
                )
            self._checked_env = env
        actions, self._state = self.algo.predict(
            obs, self._state, episode_start=episode_start, deterministic=self.deterministic
        )
        return np.asarray(actions)

    def close(self) -> None:
        close = getattr(self.algo, "close", None)
        if callable(close):
            close()


def _same_layout(a: Any, b: Any) -> bool:
    """Whether two observation spaces carry the same keys, shapes, dtypes and categories.

    Box bounds are not compared: the evaluation horizon (600 steps) is longer than the training
    one (500), which changes only the upper bound of ``time_step``."""
    import gymnasium as gym

    if isinstance(a, gym.spaces.Dict) and isinstance(b, gym.spaces.Dict):
        return a.spaces.keys() == b.spaces.keys() and all(_same_layout(a[k], b[k]) for k in a.spaces)
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape and a.dtype == b.dtype
    return a == b


class VLAPolicyAdapter:
    """A :class:`~cmdp.policies.vla.VLAPolicy` acting on the rgb observation dict, with its KV
    cache carried between steps."""

    def __init__(self, vla: Any, name: str, deterministic: bool = False) -> None:
        self.vla = vla.eval()
        self.name = name
        self.source = "VLA policy"
        self.deterministic = bool(deterministic)
        self.env_kwargs = dict(vla.env_kwargs)
        self._state: Any = None

    def reset(self, num_envs: int, seed: int = 0) -> None:
        self._state = None

    def act(self, env: ChoresEnv, obs: Any, episode_start: np.ndarray) -> np.ndarray:
        import torch

        from cmdp.policies.encoders import obs_to_tensor

        with torch.no_grad():
            out = self.vla.act(
                obs_to_tensor(obs, env.observation_space), self._state, torch.as_tensor(np.asarray(episode_start, dtype=bool))
            )
            action = out.dist.mode() if self.deterministic else out.dist.sample()
        self._state = out.state
        return self.vla.to_env_action(action)


def _task_of(env_id: Any) -> str | None:
    if isinstance(env_id, str) and env_id.startswith("SafetyChores-"):
        return env_id[len("SafetyChores-") :].rsplit("-v", 1)[0]
    return None


def make_policy(
    spec: str | Policy, *, deterministic: bool = False, task: str | None = None, shield_threshold: float = 0.0
) -> Policy:
    """A :class:`Policy` from ``"expert"``, ``"safe-expert"``, ``"random"``, a run directory
    (holding ``checkpoint.pt`` or ``vla.pt``), a solver checkpoint file or a pretrained VLA file.

    ``task``: when given, a solver checkpoint must have been trained on that Safety-CHORES task.
    ``shield_threshold`` > 0 loads a solver checkpoint with the engine's cost shield on (its
    policy needs a one-step cost model); any other policy is refused, not run unshielded.
    A policy object is returned as it is."""
    if not isinstance(spec, str):
        if not isinstance(spec, Policy):
            raise ConfigError(f"a policy needs name, env_kwargs, reset() and act(); got {type(spec).__name__}")
        if shield_threshold > 0:
            raise ConfigError(
                "shield_threshold applies to solver checkpoints named by path; a solver object gets it with "
                "load(path, shield_threshold=...)"
            )
        return spec
    if shield_threshold > 0 and spec in BUILTIN_POLICIES:
        raise ConfigError(f"shield_threshold applies to solver checkpoints; {spec!r} has no cost model to shield with")
    if spec == "expert":
        return ExpertPolicy(safe=False)
    if spec == "safe-expert":
        return ExpertPolicy(safe=True)
    if spec == "random":
        return RandomPolicy()
    path = Path(spec)
    if not path.exists():
        if path.suffix or "/" in spec or "\\" in spec:
            raise CheckpointError(f"no checkpoint at {path}")
        raise UnknownNameError(
            f"unknown policy {spec!r}: use one of {', '.join(BUILTIN_POLICIES)}, a run directory or a checkpoint file"
        )
    checkpoint = _checkpoint_file(path)
    name = path.name if path.is_dir() else (path.parent.name if path.stem == "checkpoint" else path.stem)
    if _file_format(checkpoint) == "cmdp-vla":
        from cmdp.policies.vla import VLAPolicy

        if shield_threshold > 0:
            raise ConfigError(
                f"shield_threshold applies to solver checkpoints; {checkpoint} is a pretrained VLA file "
                "(fine-tune it, or assure its solver run)"
            )
        vla = VLAPolicyAdapter(VLAPolicy.from_pretrained(checkpoint), name or "vla", deterministic)
        vla.source = f"VLA {checkpoint}"
        return vla
    from cmdp.algorithms import load

    shield = {"shield_threshold": shield_threshold} if shield_threshold > 0 else {}  # 0: the checkpoint's own
    algo = load(checkpoint, progress_bar=False, tensorboard=False, **shield)
    policy = AlgorithmPolicy(algo, name or algo.name, deterministic)
    shield_used = algo.config.shield_threshold
    policy.source = f"{algo.name} checkpoint {checkpoint}" + (f", cost shield at {shield_used:g}" if shield_used > 0 else "")
    if policy.task is None:
        policy.close()
        raise ConfigError(f"{checkpoint} was trained on {algo.env_id!r}, not a Safety-CHORES task")
    if task is not None and policy.task != task:
        policy.close()
        raise ConfigError(f"{checkpoint} was trained on {policy.task}; this assurance runs {task}")
    return policy


def _checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    for candidate in ("checkpoint.pt", "vla.pt"):
        if (path / candidate).is_file():
            return path / candidate
    raise CheckpointError(f"{path} holds neither checkpoint.pt (a solver run) nor vla.pt (a pretrained VLA)")


def _file_format(path: Path) -> str | None:
    """The ``format`` header of a cmdp checkpoint or pretrained file (None when unreadable:
    the solver loader then reports what is wrong)."""
    import pickle
    import zipfile

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError):
        return None
    return data.get("format") if isinstance(data, dict) else None


# ---- results ------------------------------------------------------------------------------------


@dataclass
class EpisodeResult:
    """One finished episode of one policy."""

    episode_id: str
    success: bool
    length: int
    costs: dict[str, float]
    """Episode cost per component (steps on which the component fired)."""
    expert_length: int | None
    row: int
    """The env row that ran it, and which of that row's episodes it was (for replays)."""
    ordinal: int

    @property
    def cost(self) -> float:
        return float(sum(self.costs.values()))

    @property
    def sel(self) -> float:
        return sel_score(self.success, self.expert_length, self.length)

    def to_dict(self) -> dict[str, Any]:
        return {
            "episode_id": self.episode_id,
            "success": self.success,
            "length": self.length,
            "cost": self.cost,
            "costs": dict(self.costs),
            "expert_length": self.expert_length,
            "sel": self.sel,
        }


def sel_score(success: bool, expert_length: int | None, length: int) -> float:
    """Success weighted by expert episode length for one episode: 0 for a failure or an episode
    without an expert length (SafeVLA's convention), else ``L_expert / max(L_expert, L)``."""
    if not success or expert_length is None:
        return 0.0
    if expert_length <= 0:
        return 1.0 if length <= 0 else 0.0
    return float(expert_length) / float(max(expert_length, length))


def episode_metrics(episodes: Sequence[EpisodeResult]) -> dict[str, Any]:
    """SR, CC, per-component CC, length, SEL and CC over successful / failed episodes.

    Means over no episodes (``ep_cost_success`` when nothing succeeded) are ``None``."""
    n = len(episodes)
    costs = np.array([[ep.costs[c] for c in COST_NAMES] for ep in episodes], dtype=np.float64).reshape(n, len(COST_NAMES))
    success = np.array([ep.success for ep in episodes], dtype=bool)
    cc = costs.sum(axis=1)

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    return {
        "episodes": n,
        "success_rate": mean(success.astype(np.float64)),
        "ep_cost": mean(cc),
        "ep_cost_std": float(cc.std()) if n else None,
        "ep_costs": {c: mean(costs[:, i]) for i, c in enumerate(COST_NAMES)},
        "ep_length": mean(np.array([ep.length for ep in episodes], dtype=np.float64)),
        "sel": mean(np.array([ep.sel for ep in episodes], dtype=np.float64)),
        "sel_missing": int(sum(ep.expert_length is None for ep in episodes)),
        "successes": int(success.sum()),
        "ep_cost_success": mean(cc[success]),
        "ep_cost_failure": mean(cc[~success]),
        "costly_episodes": int((cc > 0).sum()),
    }


@dataclass
class WorstEpisode:
    """A worst-cost episode kept for a GIF: where it ran and what it recorded."""

    set_name: str
    result: EpisodeResult
    path: np.ndarray
    """Robot positions ``[length + 1, 2]`` and cost events ``[length + 1, 5]`` per step."""
    events: np.ndarray
    spec: EpisodeSpec
    gif: Path | None = None
    replay_exact: bool | None = None
    """Whether the replay reproduced the recorded length, costs and path (None: not replayed)."""


@dataclass
class SetResult:
    """One policy on one set of episodes (the evaluation set or a suite)."""

    name: str
    kind: str
    """``"eval"`` or the suite kind (``"reference"``, ``"ood"``, ``"extreme"``)."""
    description: str
    episodes: list[EpisodeResult]
    seconds: float
    knobs: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return episode_metrics(self.episodes)


@dataclass
class PolicyResult:
    name: str
    source: str
    sets: dict[str, SetResult]
    """The evaluation set under :data:`EVAL_SET`, then each suite by name."""
    worst: list[WorstEpisode]
    """The policy's ``gifs`` highest-cost episodes over all sets, worst first."""


@dataclass
class AssuranceReport:
    """Everything :func:`assure` measured; :meth:`to_dict` is ``assurance.json``."""

    config: AssureConfig
    policies: dict[str, PolicyResult]
    seconds: float
    out_dir: Path | None = None
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config.task

    def summary(self, policy: str) -> dict[str, Any]:
        """The JSON object of one policy: evaluation-set metrics at the top, ``suites`` by name."""
        result = self.policies[policy]
        sets = dict(result.sets)
        out: dict[str, Any] = {"source": result.source, **sets.pop(EVAL_SET).metrics(), "suites": {}}
        for name, set_result in sets.items():
            out["suites"][name] = {
                "kind": set_result.kind,
                "description": set_result.description,
                "knobs": dict(set_result.knobs),
                **set_result.metrics(),
            }
        out["worst_episodes"] = [
            {
                "set": w.set_name,
                **w.result.to_dict(),
                "gif": None if w.gif is None else relative_path(w.gif, self.out_dir),
                "replay_exact": w.replay_exact,
            }
            for w in result.worst
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """``{"task", "cost_names", "settings", "seconds", "policies": {name: summary}}``; with
        exactly one policy, also ``"policy"`` (its name) and its summary's fields at the top."""
        policies = {name: self.summary(name) for name in self.policies}
        out: dict[str, Any] = {
            "task": self.task,
            "cost_names": list(COST_NAMES),
            "settings": self.config.to_dict(),
            "seconds": round(self.seconds, 2),
            "policies": policies,
        }
        if len(policies) == 1:
            (name, summary), = policies.items()
            out["policy"] = name
            out.update({k: v for k, v in summary.items() if k not in out})
        if self.files:
            out["files"] = {k: relative_path(v, self.out_dir) for k, v in self.files.items()}
        return out


def relative_path(path: Any, root: Path | None) -> Any:
    """``path`` (or a list or dict of paths) as POSIX text relative to ``root`` where it lies below it."""
    if isinstance(path, (list, tuple)):
        return [relative_path(p, root) for p in path]
    if isinstance(path, Mapping):
        return {k: relative_path(v, root) for k, v in path.items()}
    path = Path(path)
    if root is not None:
        with contextlib.suppress(ValueError):
            return path.relative_to(root).as_posix()
    return str(path)


# ---- episode sets -------------------------------------------------------------------------------


@dataclass
class EpisodeSet:
    """Episodes to run and how to build their env (perturbations included)."""

    name: str
    kind: str
    description: str
    specs: list[EpisodeSpec]
    make_env: Callable[..., ChoresEnv]
    """``make_env(num_envs, seed, **observation_kwargs)``."""
    knobs: dict[str, float] = field(default_factory=dict)


def evaluation_set(task: str, episodes: int | None = None, specs: Sequence[Any] | None = None) -> EpisodeSet:
    """The standard evaluation set of ``task`` (its first ``episodes``), or ``specs`` instead."""
    if specs is None:
        from cmdp.envs.chores.eval_sets import load_eval_set

        chosen = list(load_eval_set(task))
        description = f"the {task} evaluation set"
    else:
        chosen = specs_from(specs)
        description = f"{len(chosen)} given {task} episodes"
        bad = [s.episode_id for s in chosen if s.task != task]
        if bad:
            raise ConfigError(f"the evaluation episodes must be {task} episodes; {bad[0]!r} is not")
    if episodes is not None:
        if episodes > len(chosen):
            raise ConfigError(f"episodes={episodes} but {description} holds {len(chosen)}")
        chosen = chosen[:episodes]
    _check_unique(chosen, EVAL_SET)

    def make_env(num_envs: int, seed: int, **kwargs: Any) -> ChoresEnv:
        return ChoresEnv(task, num_envs=num_envs, seed=seed, episodes=chosen, max_episode_steps=EVAL_HORIZON, **kwargs)

    return EpisodeSet(EVAL_SET, "eval", description, chosen, make_env)


def suite_set(name: str, task: str, size: int, seed: int, note: Callable[[str], None] | None = None) -> EpisodeSet:
    """``size`` episodes of suite ``name``, with the expert's episode lengths filled in."""
    from cmdp.envs.chores.suites import build_suite, make_suite_env

    instance = build_suite(name, task, size, seed)
    specs = with_expert_lengths(instance.episodes, note=note)
    instance.episodes = specs
    _check_unique(specs, name)

    def make_env(num_envs: int, seed: int, **kwargs: Any) -> ChoresEnv:
        obs_mode = kwargs.pop("obs_mode", "state")
        return make_suite_env(instance, num_envs, obs_mode, seed=seed, **kwargs)

    return EpisodeSet(name, instance.suite.kind, instance.suite.description, specs, make_env, dict(instance.knob_values))


def _check_unique(specs: Sequence[EpisodeSpec], where: str) -> None:
    ids = [s.episode_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: episode ids must be unique to count each episode once")


_EXPERT_LENGTHS: dict[tuple, int | None] = {}


def with_expert_lengths(specs: Sequence[EpisodeSpec], note: Callable[[str], None] | None = None) -> list[EpisodeSpec]:
    """Copies of ``specs`` with ``expert_length`` set where it is missing, as the evaluation
    sets were made (:func:`~cmdp.envs.chores.expert.expert_episode_length`: the unsafe expert
    alone in the unperturbed episode, seed 0; None where it fails within 600 steps).

    One episode at a time on purpose: in a batch, the expert's sidesteps and the objects it
    jostles draw from generators the envs share, and the lengths change with the batch.
    Lengths are remembered by house, start and target (the instruction and the rendering do
    not change what the expert does), so the OOD suites that share the standard suite's
    episodes cost nothing more."""
    from cmdp.envs.chores.expert import expert_episode_length

    out = []
    t0 = last = time.monotonic()
    for k, spec in enumerate(specs):
        if spec.expert_length is None:
            key = (spec.task, spec.house.key, tuple(spec.start), spec.target_category, spec.target_index, spec.arm)
            if key not in _EXPERT_LENGTHS:
                if len(_EXPERT_LENGTHS) >= 20_000:
                    _EXPERT_LENGTHS.pop(next(iter(_EXPERT_LENGTHS)))
                _EXPERT_LENGTHS[key] = expert_episode_length(spec, max_steps=EVAL_HORIZON)
            spec = dataclasses.replace(spec, expert_length=_EXPERT_LENGTHS[key])
        out.append(spec)
        now = time.monotonic()
        if note is not None and (k + 1 == len(specs) or now - last > 10.0):
            note(f"assure: expert lengths: {k + 1}/{len(specs)} episodes, {now - t0:.0f} s")
            last = now
    return out


# ---- running --------------------------------------------------------------------------------------


class Progress:
    """Progress lines on stderr: which policy and set, episodes done of total, elapsed, ETA.

    A line at the start of a set, then at most every ``interval`` seconds, and at its end."""

    def __init__(self, enabled: bool = True, interval: float = 10.0, stream: Any = None) -> None:
        self.enabled = enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.label = ""
        self.total = 0
        self._t0 = self._last = 0.0

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def start(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self._t0 = self._last = time.monotonic()
        self.note(f"assure: {label}: {total} episodes")

    def update(self, done: int) -> None:
        now = time.monotonic()
        finished = done >= self.total
        if not finished and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._t0
        if finished:
            tail = f"done in {elapsed:.1f} s"
        elif done > 0:
            tail = f"{elapsed:.0f} s, ETA {elapsed * (self.total - done) / done:.0f} s"
        else:
            tail = f"{elapsed:.0f} s"
        self.note(f"assure: {self.label}: {done}/{self.total} episodes, {tail}")


def _observation_kwargs(policy: Policy, obs_mode: str) -> dict[str, Any]:
    kwargs = dict(policy.env_kwargs or {})
    kwargs.setdefault("obs_mode", obs_mode)
    return kwargs


def _drive(
    policy: Policy,
    episode_set: EpisodeSet,
    num_envs: int,
    seed: int,
    obs_mode: str,
    on_episode: Callable[[ChoresEnv, dict, int, int], None],
    before_step: Callable[[ChoresEnv, np.ndarray], None] | None = None,
    stop: Callable[[], bool] | None = None,
    render: bool = False,
) -> None:
    """The evaluation loop shared by measuring and replaying: run ``policy`` over the set until
    every episode finished once (or ``stop()``), calling ``on_episode(env, info, row, ordinal)``
    for each counted episode and ``before_step(env, episode_counts)`` before each step."""
    specs = episode_set.specs
    n = max(1, min(num_envs, len(specs)))
    kwargs = _observation_kwargs(policy, obs_mode)
    if render:
        kwargs["render_mode"] = "rgb_array"
    env = episode_set.make_env(n, seed, **kwargs)
    quota = np.array([len(range(r, len(specs), n)) for r in range(n)])
    counts = np.zeros(n, dtype=np.int64)
    limit = env.max_episode_steps * (int(quota.max()) + 1) + 10
    with seeded_torch(seed):
        obs, _ = env.reset(seed=seed)
        policy.reset(n, seed)
        start = np.ones(n, dtype=bool)
        for _ in range(limit):
            if (counts >= quota).all() or (stop is not None and stop()):
                return
            if before_step is not None:
                before_step(env, counts)
            obs, _, _, terminated, truncated, info = env.step(policy.act(env, obs, start))
            for ep in info.get("episode", []):
                row = ep["env"]
                if counts[row] < quota[row]:
                    expected = specs[row + counts[row] * n].episode_id
                    if ep["episode_id"] != expected:  # the env must follow its list's order
                        raise RuntimeError(f"env row {row} ran {ep['episode_id']!r}, expected {expected!r}")
                    on_episode(env, ep, row, int(counts[row]))
                counts[row] += 1
            start = terminated | truncated
    raise RuntimeError(f"{episode_set.name}: episodes did not finish within {limit} steps")


def run_set(
    policy: Policy,
    episode_set: EpisodeSet,
    *,
    num_envs: int = 16,
    seed: int = 0,
    obs_mode: str = "state",
    keep_worst: int = 0,
    progress: Progress | None = None,
    label: str | None = None,
) -> tuple[SetResult, list[WorstEpisode]]:
    """Run ``policy`` once over every episode of ``episode_set``; the results in the set's
    order and the ``keep_worst`` highest-cost episodes that cost anything (worst first, ties:
    the earlier one). ``label`` names the policy in progress lines."""
    specs = episode_set.specs
    results: dict[str, EpisodeResult] = {}
    heap: list[tuple[float, int, WorstEpisode]] = []
    progress = progress or Progress(enabled=False)
    progress.start(f"{label or policy.name} on {episode_set.name}", len(specs))
    t0 = time.perf_counter()

    def on_episode(env: ChoresEnv, ep: dict, row: int, ordinal: int) -> None:
        result = EpisodeResult(
            ep["episode_id"], bool(ep["success"]), int(ep["length"]),
            {c: float(ep["costs"][c]) for c in COST_NAMES}, ep["expert_length"], row, ordinal,
        )  # fmt: skip
        order = len(results)
        results[result.episode_id] = result
        if keep_worst > 0 and result.cost > 0:  # a costless episode shows nothing unsafe
            path, events, spec = env._last_episode[row]
            item = (result.cost, -order, WorstEpisode(episode_set.name, result, path, events, spec))
            if len(heap) < keep_worst:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        progress.update(len(results))

    _drive(policy, episode_set, num_envs, seed, obs_mode, on_episode)
    ordered = [results[s.episode_id] for s in specs]
    worst = [w for _, _, w in sorted(heap, key=lambda item: item[:2], reverse=True)]
    seconds = time.perf_counter() - t0
    return SetResult(episode_set.name, episode_set.kind, episode_set.description, ordered, seconds, dict(episode_set.knobs)), worst


def replay_frames(
    policy: Policy,
    episode_set: EpisodeSet,
    targets: Sequence[WorstEpisode],
    *,
    num_envs: int,
    seed: int,
    obs_mode: str,
    size: int = 192,
    max_frames: int = 240,
) -> list[list[np.ndarray]]:
    """Top-down frames of each target episode, by replaying the whole run that measured it (see
    the module docstring). Sets each target's ``replay_exact``. Frames show the state before
    each action; the last one adds the episode's full recorded path and cost events."""
    from cmdp.envs.chores import render

    wanted = {(w.result.row, w.result.ordinal): i for i, w in enumerate(targets)}
    frames: list[list[np.ndarray]] = [[] for _ in targets]
    steps = np.zeros(len(targets), dtype=np.int64)
    finished: set[int] = set()

    def before_step(env: ChoresEnv, counts: np.ndarray) -> None:
        for (row, ordinal), i in wanted.items():
            if counts[row] != ordinal or i in finished:
                continue
            w = targets[i]
            stride = max(1, math.ceil(w.result.length / (max_frames - 1)))
            t = int(steps[i])
            if t % stride == 0:
                frames[i].append(env.render(row, size))
            if t == w.result.length - 1:  # the episode's last action comes next
                marks = [(float(w.path[k, 0]), float(w.path[k, 1]), int(c)) for k, c in zip(*np.nonzero(w.events))]
                frames[i].append(
                    render.render_topdown(env.scene, row, size=size, path=[tuple(p) for p in w.path], events=marks)
                )
            steps[i] += 1

    def on_episode(env: ChoresEnv, ep: dict, row: int, ordinal: int) -> None:
        i = wanted.get((row, ordinal))
        if i is None:
            return
        w = targets[i]
        path, events, _ = env._last_episode[row]
        w.replay_exact = bool(
            ep["length"] == w.result.length
            and all(float(ep["costs"][c]) == w.result.costs[c] for c in COST_NAMES)
            and path.shape == w.path.shape
            and np.array_equal(path, w.path)
        )
        finished.add(i)

    _drive(
        policy, episode_set, num_envs, seed, obs_mode, on_episode,
        before_step=before_step, stop=lambda: len(finished) == len(targets), render=True,
    )  # fmt: skip
    return frames


# ---- the stage -------------------------------------------------------------------------------------


def assure(
    policies: Mapping[str, Policy | str] | Sequence[Policy | str],
    task: str = "Fetch",
    suites: str | Sequence[str] | None = "all",
    episodes: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    num_envs: int = 16,
    gifs: int = 3,
    obs_mode: str = "state",
    *,
    suite_episodes: int | None = None,
    deterministic: bool = False,
    eval_episodes: Sequence[Any] | None = None,
    progress: bool = True,
    **report_options: Any,
) -> AssuranceReport:
    """Evaluate ``policies`` on ``task`` and write the assurance report to ``out_dir``.

    Args:
        policies: ``{name: policy}`` or a sequence; each a :class:`Policy` or a string for
            :func:`make_policy` (``"expert"``, ``"safe-expert"``, ``"random"``, a checkpoint).
        task: ``"ObjectNav"``, ``"PickUp"`` or ``"Fetch"``.
        suites: ``"all"`` (default), ``"none"``, ``"a,b"`` or a sequence of suite names.
        episodes: run the first this many episodes of the evaluation set (None: all).
        seed: seeds envs, policies and the suite instances.
        out_dir: where ``assurance.json``, ``assurance.md``, ``episodes.json``, plots and GIFs
            go (None: measure only, write nothing, make no GIFs).
        num_envs: envs stepped as one batch.
        gifs: GIFs of each policy's worst-cost episodes.
        obs_mode: observations for policies that do not fix their own.
        suite_episodes: episodes per suite (None: as many as the evaluation set run).
        deterministic: solver and VLA policies take their most likely action.
        eval_episodes: episode specs to use instead of the task's evaluation set.
        progress: print progress lines to stderr.
        report_options: other :class:`AssureConfig` fields (``shield_threshold``, ``gif_size``,
            ``gif_max_frames``).
    """
    config = AssureConfig(
        task=task, suites=parse_suites(suites), episodes=episodes, suite_episodes=suite_episodes, seed=seed,
        num_envs=num_envs, gifs=gifs, obs_mode=obs_mode, deterministic=deterministic, progress=progress,
        **report_options,
    )  # fmt: skip
    named = _named_policies(policies, config)
    notes = Progress(enabled=config.progress)
    try:
        report, sets = measure(named, config, eval_episodes=eval_episodes, progress=notes)
        if out_dir is not None:
            from cmdp.isa.report import write_report

            write_report(report, out_dir, policies=named, sets=sets, note=notes.note)
    finally:
        for policy in named.values():
            close = getattr(policy, "close", None)
            if callable(close):
                close()
    return report


def _named_policies(policies: Mapping[str, Policy | str] | Sequence[Policy | str], config: AssureConfig) -> dict[str, Policy]:
    items = list(policies.items()) if isinstance(policies, Mapping) else [(None, p) for p in policies]
    if not items:
        raise ConfigError("assure needs at least one policy")
    named: dict[str, Policy] = {}
    try:
        for key, spec in items:
            policy = make_policy(
                spec, deterministic=config.deterministic, task=config.task, shield_threshold=config.shield_threshold
            )
            name = str(key) if key is not None else policy.name
            base, k = name, 2
            while name in named:
                name, k = f"{base}-{k}", k + 1
            policy.name = name
            named[name] = policy
    except BaseException:
        for policy in named.values():
            close = getattr(policy, "close", None)
            if callable(close):
                close()
        raise
    return named


def measure(
    policies: Mapping[str, Policy],
    config: AssureConfig,
    eval_episodes: Sequence[Any] | None = None,
    progress: Progress | None = None,
) -> tuple[AssuranceReport, dict[str, EpisodeSet]]:
    """Run every policy on the evaluation set and each suite of ``config``; no files written."""
    progress = progress or Progress(enabled=config.progress)
    t0 = time.perf_counter()
    sets = {EVAL_SET: evaluation_set(config.task, config.episodes, eval_episodes)}
    size = config.suite_episodes or len(sets[EVAL_SET].specs)
    for name in config.suites:
        progress.note(f"assure: building suite {name} ({size} {config.task} episodes, seed {config.seed})")
        sets[name] = suite_set(name, config.task, size, config.seed, note=progress.note)
    results: dict[str, PolicyResult] = {}
    total = len(policies) * len(sets)
    k = 0
    for name, policy in policies.items():
        measured: dict[str, SetResult] = {}
        worst: list[WorstEpisode] = []
        for set_name, episode_set in sets.items():
            k += 1
            measured[set_name], set_worst = run_set(
                policy, episode_set, num_envs=config.num_envs, seed=config.seed, obs_mode=config.obs_mode,
                keep_worst=config.gifs, progress=progress, label=f"[{k}/{total}] {name}",
            )  # fmt: skip
            worst.extend(set_worst)
        # worst over all sets: highest cost first, the earlier set and episode on ties
        order = {s: i for i, s in enumerate(sets)}
        worst.sort(key=lambda w: (-w.result.cost, order[w.set_name], _position(sets[w.set_name], w)))
        source = str(getattr(policy, "source", None) or type(policy).__name__)
        results[name] = PolicyResult(name, source, measured, worst[: config.gifs])
    return AssuranceReport(config, results, time.perf_counter() - t0), sets


def _position(episode_set: EpisodeSet, worst: WorstEpisode) -> int:
    return next(i for i, s in enumerate(episode_set.specs) if s.episode_id == worst.result.episode_id)
