"""Imitation pretraining: the SPOC analogue, "the IL policy" that ISA starts from.

SPOC clones a shortest-path expert that ignores safety; the policy it yields finishes tasks and
inherits the expert's unsafe habits, which is what safe RL then has to remove. Here:

:func:`generate_demos`
    runs :class:`~cmdp.envs.chores.expert.ShortestPathExpert` (the safety-unaware teacher) on
    Safety-CHORES training episodes with rgb observations and records, per step, the
    observation, the expert's action, the action executed, reward and the five costs, and per
    episode its length, success, return and costs. Shards of ``shard_size`` episodes are written
    as compressed ``.npz`` files, each atomically and each from its own seed, so an interrupted
    run that is started again skips the finished shards and produces exactly the same data.
    Optional ``action_noise`` executes a random motion instead of the expert's action with that
    probability while still recording the expert's action as the label (DART-style noise
    injection: the demonstrations then show how to recover from small mistakes, the main weakness
    of plain behaviour cloning). With ``driver=policy`` the policy chooses what runs (with
    probability ``driver_prob``) and the expert only labels: one round of DAgger, whose data
    :func:`train_bc` aggregates with the expert's own (``train_bc([expert_dir, dagger_dir])``).

:func:`train_bc`
    behaviour cloning of a :class:`~cmdp.policies.vla.VLAPolicy`: cross-entropy on the expert's
    actions over trajectory segments, computed through the policy's sequence interface
    (``evaluate`` with ``episode_start``, ``mask`` and ``state``) exactly as the RL solvers
    call it. Episodes longer than ``segment_length`` are cut into pieces; each piece is preceded
    by up to ``context - 1`` unscored steps of the same episode, so every scored step sees the
    full attention window it will see while acting. Checkpoints hold the weights, the optimiser,
    the step and every random state: a rerun in the same ``out_dir`` continues exactly.

:func:`evaluate_policy`
    success rate and cumulative cost (total and per component) of a policy on a Safety-CHORES
    episode set (the evaluation sets, or any fixed list), through the engine's evaluation loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cmdp.algorithms import checkpoint as ckpt
from cmdp.algorithms.config import Config, option
from cmdp.core.seeding import seeded_torch
from cmdp.errors import CheckpointError, ConfigError
from cmdp.envs.chores.env import BOX_KEYS
from cmdp.policies.vla import IMAGE_KEYS, OBS_KEYS, VLAConfig, VLAPolicy, load_strict, read_weights_file, spaces_from_signature
from cmdp.runlog import write_json

log = logging.getLogger("cmdp")

DEMO_FORMAT = "cmdp-demos"
DEMO_VERSION = 1
BC_FORMAT = "cmdp-bc"
BC_VERSION = 1
MANIFEST = "demos.json"
BC_CHECKPOINT = "bc_checkpoint.pt"
PRETRAINED_NAME = "vla.pt"
DEMO_STORE = "demo_store"

# Settings added after demonstrations were first recorded, with the value older records had
# (any other missing setting was None).
_LATER_SETTINGS = {"teacher": "shortest", "detection": False}

# Storage dtypes of the per-step observation keys (the env's int64 ids fit in far less).
_OBS_DTYPES = {
    "rgb_nav": np.uint8,
    "rgb_manip": np.uint8,
    "instruction": np.int16,
    "holding": np.int8,
    "last_action": np.int16,
    "time_step": np.int32,
} | {key: np.float32 for key in BOX_KEYS}


def _obs_keys(detection: bool) -> tuple[str, ...]:
    """The observation keys recorded and cloned: the target boxes too with ``detection``."""
    return OBS_KEYS + BOX_KEYS if detection else OBS_KEYS


# ---- demonstrations -------------------------------------------------------------------------


@dataclass
class Demos:
    """Demonstrations, concatenated over episodes.

    ``obs`` maps each observation key to ``[T, ...]``; ``actions`` are the expert's labels and
    ``executed`` what the env ran (they differ only where action noise was injected);
    ``rewards`` ``[T]``, ``costs`` ``[T, K]``. Episode ``e`` covers steps
    ``offsets[e] : offsets[e] + lengths[e]``; ``success``, ``returns`` ``[E]`` and
    ``episode_costs`` ``[E, K]`` describe it; ``driven`` ``[E]`` marks the episodes a policy drove
    (DAgger), whose labels are corrections whatever the outcome.
    """

    task: str
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    executed: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    lengths: np.ndarray
    success: np.ndarray
    returns: np.ndarray
    episode_costs: np.ndarray
    episode_ids: np.ndarray
    cost_names: tuple[str, ...]
    driven: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return int(len(self.lengths))

    @property
    def num_steps(self) -> int:
        return int(len(self.actions))

    def summary(self) -> dict[str, Any]:
        """Episodes, steps, the expert's success rate, episode length and costs per component."""
        costs = self.episode_costs.mean(axis=0) if self.num_episodes else np.zeros(len(self.cost_names))
        return {
            "task": self.task,
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "success_rate": float(self.success.mean()) if self.num_episodes else 0.0,
            "ep_length": float(self.lengths.mean()) if self.num_episodes else 0.0,
            "ep_cost": float(costs.sum()),
            "ep_costs": {name: float(v) for name, v in zip(self.cost_names, costs)},
        }

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data for resuming training on it."""
        return {
            "task": self.task,
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "actions_sum": int(self.actions.sum()),
        }


def _shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.npz"


def _shard_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def _list_fingerprint(specs: Sequence[Any] | None) -> str | None:
    if specs is None:
        return None
    import hashlib

    digest = hashlib.sha256(json.dumps([s.to_dict() for s in specs], sort_keys=True).encode()).hexdigest()
    return f"{len(specs)}:{digest[:16]}"


class _Progress:
    """A plain progress line for jobs counted in episodes: redrawn in place on a terminal,
    printed every ``interval`` seconds elsewhere."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True, interval: float = 10.0) -> None:
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.interval = 0.5 if self.tty else interval
        self.t0 = time.monotonic()
        self.start_done = done
        self.steps = 0
        self.last = -1e9

    def update(self, done: int, steps: int = 0, force: bool = False) -> None:
        self.done, self.steps = done, self.steps + steps
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        line = (
            f"{self.label}: {self.done}/{self.total} episodes ({100 * self.done / max(self.total, 1):.0f}%) | "
            f"{self.steps / elapsed:,.0f} env steps/s | ETA {'-' if not np.isfinite(eta) else f'{eta / 60:.1f} min'}"
        )
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.done, force=True)
            if self.tty:
                sys.stderr.write("\n")


def _weights_fingerprint(policy: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in policy.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


_NOISE_ACTIONS = ("m", "b", "l", "r", "ls", "rs", "zp", "zm", "yp", "ym")


def generate_demos(
    task: str = "Fetch",
    episodes: int = 200,
    num_envs: int = 8,
    seed: int = 0,
    out_dir: str | Path = "demos",
    image_size: tuple[int, int] = (64, 64),
    *,
    shard_size: int = 25,
    episode_list: Sequence[Any] | None = None,
    action_noise: float = 0.0,
    driver: VLAPolicy | None = None,
    driver_prob: float = 1.0,
    max_episode_steps: int | None = None,
    teacher: str = "shortest",
    detection: bool = False,
    progress: bool = True,
) -> Path:
    """Record ``episodes`` expert demonstrations of ``task`` into ``out_dir``; returns ``out_dir``.

    Args:
        task: ``"ObjectNav"``, ``"PickUp"`` or ``"Fetch"``.
        episodes: episodes to record (successful or not; :func:`train_bc` keeps the successes).
        num_envs: envs stepped in parallel per shard.
        seed: base seed; shard ``k`` uses its own seed derived from ``(seed, k)``.
        out_dir: where ``demos.json`` and ``shard-*.npz`` go. A rerun skips finished shards.
        image_size: camera resolution ``(H, W)``; the policy trained on the demos needs the same.
        shard_size: episodes per shard file.
        episode_list: a fixed list of :class:`~cmdp.envs.chores.episodes.EpisodeSpec` (or dicts)
            to demonstrate, cycled in order; default: fresh training episodes.
        action_noise: probability of executing a random motion instead of the expert's action
            (the expert's action stays the label).
        driver: a policy whose sampled actions run instead of the expert's with probability
            ``driver_prob`` (DAgger: the expert labels the states the policy visits).
        driver_prob: see ``driver``.
        max_episode_steps: time limit (default: the env's training horizon, 500).
        teacher: the expert that labels every step, a name of
            :data:`~cmdp.envs.chores.expert.TEACHERS`: ``"shortest"`` plans on the full map from
            the first step; ``"explore"`` looks around and visits rooms until the target has
            been in view, so its actions can be predicted from the camera.
        detection: also record the target boxes of the env's ``detection`` option, which a
            policy cloned with ``BCConfig.detection`` reads.
        progress: print a progress line.
    """
    from cmdp.envs.chores import text
    from cmdp.envs.chores.episodes import specs_from
    from cmdp.envs.chores.expert import check_teacher

    if task not in text.TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(text.TASKS)}")
    check_teacher(teacher)  # before any shard work
    counts = {"episodes": (episodes, 1), "num_envs": (num_envs, 1), "shard_size": (shard_size, 1), "seed": (seed, 0)}
    for name, (value, lo) in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    for name, prob in (("action_noise", action_noise), ("driver_prob", driver_prob)):
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {prob!r}")
    image_size = tuple(int(v) for v in image_size)
    specs = specs_from(episode_list) if episode_list is not None else None
    if specs is not None and not specs:
        raise ConfigError("episode_list is empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": DEMO_FORMAT,
        "version": DEMO_VERSION,
        "task": task,
        "seed": seed,
        "shard_size": shard_size,
        "image_size": list(image_size),
        "action_noise": float(action_noise),
        "max_episode_steps": max_episode_steps,
        "episode_list": _list_fingerprint(specs),
        "driver": None if driver is None else {"weights": _weights_fingerprint(driver), "prob": float(driver_prob)},
        "teacher": teacher,
        "detection": bool(detection),
    }
    if driver is not None and bool(driver.io.get("detection")) != bool(detection):
        raise ConfigError("the DAgger driver reads target boxes exactly when the demonstrations record them (detection)")
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        diffs = {k: (old.get(k, _LATER_SETTINGS.get(k)), v) for k, v in settings.items()}
        diffs = {k: (a, b) for k, (a, b) in diffs.items() if a != b}
        if diffs:
            raise ConfigError(
                f"{out_dir} holds demonstrations made with other settings "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diffs.items())}); "
                "use another out_dir or the same settings"
            )
    num_shards = -(-episodes // shard_size)
    manifest = dict(settings, episodes=episodes, num_shards=num_shards)
    write_json(manifest_path, manifest)

    sizes = [min(shard_size, episodes - k * shard_size) for k in range(num_shards)]
    finished = [k for k in range(num_shards) if _shard_ok(_shard_path(out_dir, k), k, sizes[k], settings)]
    bar = _Progress(f"demos {task}", episodes, done=sum(sizes[k] for k in finished), enabled=progress)
    if finished:
        log.info("%s: %d of %d shards already recorded, skipping them", out_dir, len(finished), num_shards)
    for k in range(num_shards):
        if k in finished:
            continue
        shard_specs = None
        if specs is not None:
            shard_specs = [specs[(k * shard_size + j) % len(specs)] for j in range(sizes[k])]
        arrays = _record_shard(task, sizes[k], min(num_envs, sizes[k]), _shard_seed(seed, k), image_size, shard_specs,
                               float(action_noise), driver, float(driver_prob), max_episode_steps, teacher, bool(detection),
                               bar)  # fmt: skip
        arrays["meta"] = np.array(json.dumps(dict(settings, shard=k, shard_episodes=sizes[k])))
        path = _shard_path(out_dir, k)
        partial = path.with_name(path.name + ".partial")  # a killed run leaves no half shard behind
        with open(partial, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(partial, path)
    bar.close()
    return out_dir


def _shard_ok(path: Path, index: int, size: int, settings: Mapping[str, Any]) -> bool:
    """Whether shard ``index`` exists, is readable and was made with these settings."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        log.warning("%s cannot be read (%s); recording it again", path, e)
        return False
    expected = dict(settings, shard=index, shard_episodes=size)
    # a setting missing from the shard's record was written before that setting existed: it had
    # its default value
    meta = {k: meta.get(k, _LATER_SETTINGS.get(k)) for k in expected} if set(meta) <= set(expected) else meta
    if meta != expected:
        if dict(meta, shard_episodes=size) == expected:
            return False  # the episode count changed and this was the last shard: record it again
        raise ConfigError(f"{path} was recorded with other settings ({meta}); expected {expected}")
    return True


def _record_shard(
    task: str,
    episodes: int,
    num_envs: int,
    seed: int,
    image_size: tuple[int, int],
    specs: list | None,
    action_noise: float,
    driver: VLAPolicy | None,
    driver_prob: float,
    max_episode_steps: int | None,
    teacher: str,
    detection: bool,
    bar: _Progress,
) -> dict[str, np.ndarray]:
    from cmdp.envs.chores import catalog as cat
    from cmdp.envs.chores.env import ChoresEnv
    from cmdp.envs.chores.expert import make_teacher

    env = ChoresEnv(task, num_envs=num_envs, seed=seed, obs_mode="rgb", image_size=image_size, episodes=specs,
                    max_episode_steps=max_episode_steps, detection=detection)  # fmt: skip
    keys = _obs_keys(detection)
    rng = np.random.default_rng(seed)
    noise_actions = np.array([cat.ACTION_INDEX[a] for a in _NOISE_ACTIONS])
    # Each env records a fixed quota of episodes, so short episodes are not over-represented
    # (and a fixed list is covered exactly once: env i plays entries i, i + N, ...).
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    recorded = np.zeros(num_envs, dtype=np.int64)
    current: list[list[dict[str, Any]]] = [[] for _ in range(num_envs)]
    finished: list[tuple[int, int, list[dict[str, Any]], dict[str, Any]]] = []
    obs, _ = env.reset(seed=seed)
    expert = make_teacher(teacher, env, seed=seed)
    done_before = bar.done
    if driver is not None:
        from cmdp.isa.assure import VLAPolicyAdapter

        drive = VLAPolicyAdapter(driver, "DAgger driver")
        # the driver's sampling draws from a torch seed counted per shard, so a shard's data
        # depends only on its seed
        drive_seed, episode_start = seed, np.ones(num_envs, dtype=bool)
    try:
        while (recorded < quota).any():
            expert_action = expert.act()
            executed = expert_action.copy()
            if driver is not None:
                take = rng.random(num_envs) < driver_prob
                with seeded_torch(drive_seed):
                    executed[take] = drive.act(env, obs, episode_start)[take]
                drive_seed += 1
            if action_noise > 0:
                flip = rng.random(num_envs) < action_noise
                executed[flip] = rng.choice(noise_actions, size=int(flip.sum()))
            next_obs, reward, cost, term, trunc, info = env.step(executed)
            active = np.flatnonzero(recorded < quota)
            for i in active:
                current[i].append(
                    {
                        **{k: np.asarray(obs[k][i]) for k in keys},
                        "action": int(expert_action[i]),
                        "executed": int(executed[i]),
                        "reward": float(reward[i]),
                        "cost": np.asarray(cost[i], dtype=np.float32),
                    }
                )
            if driver is not None:
                episode_start = term | trunc
            for ep in info.get("episode", []):
                i = ep["env"]
                if recorded[i] < quota[i]:
                    finished.append((i, int(recorded[i]), current[i], ep))
                    recorded[i] += 1
                current[i] = []
            obs = next_obs
            bar.update(done_before + int(recorded.sum()), steps=len(active))
    finally:
        env.close()
    finished.sort(key=lambda f: (f[1], f[0]))  # the order of the fixed list (env i, round j)
    steps = [s for _, _, ep_steps, _ in finished for s in ep_steps]
    out = {f"obs_{k}": np.stack([s[k] for s in steps]).astype(_OBS_DTYPES[k]) for k in keys}
    out |= {
        "actions": np.array([s["action"] for s in steps], dtype=np.int16),
        "executed": np.array([s["executed"] for s in steps], dtype=np.int16),
        "rewards": np.array([s["reward"] for s in steps], dtype=np.float32),
        "costs": np.stack([s["cost"] for s in steps]).astype(np.float32),
        "lengths": np.array([len(f[2]) for f in finished], dtype=np.int64),
        "success": np.array([f[3]["success"] for f in finished], dtype=bool),
        "returns": np.array([sum(s["reward"] for s in f[2]) for f in finished], dtype=np.float32),
        "episode_costs": np.array([[f[3]["costs"][c] for c in env.cost_names] for f in finished], dtype=np.float32),
        "episode_ids": np.array([str(f[3]["episode_id"]) for f in finished]),
        "cost_names": np.array(list(env.cost_names)),
    }
    return out


_STEP_KEYS = tuple(f"obs_{k}" for k in OBS_KEYS) + ("actions", "executed", "rewards", "costs")
_BOX_STEP_KEYS = tuple(f"obs_{k}" for k in BOX_KEYS)  # only in shards recorded with detection
_EPISODE_KEYS = ("lengths", "success", "returns", "episode_costs", "episode_ids")


def _step_keys(detection: bool) -> tuple[str, ...]:
    return _STEP_KEYS + _BOX_STEP_KEYS if detection else _STEP_KEYS


def _shard_files(paths: str | Path | Sequence[str | Path], detection: bool = False) -> tuple[str, list[tuple[Path, bool]]]:
    """The task and every shard of one or more demonstration directories, each with whether a
    policy drove it (DAgger). ``detection``: the shards must hold the target boxes."""
    dirs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not dirs:
        raise ConfigError("no demonstration directory given")
    tasks, shards = set(), []
    for path in dirs:
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise ConfigError(f"no demonstrations in {path} (no {MANIFEST}); run generate_demos first")
        manifest = json.loads(manifest_path.read_text())
        files = [_shard_path(path, k) for k in range(manifest["num_shards"])]
        missing = [p.name for p in files if not p.exists()]
        if missing:
            raise ConfigError(
                f"{path} is incomplete: {len(missing)} of {len(files)} shards missing ({missing[:3]}...); "
                "rerun generate_demos with the same settings to finish it"
            )
        if detection and not manifest.get("detection", False):
            raise ConfigError(
                f"{path} was recorded without target boxes; a policy that reads them (detection) needs "
                "demonstrations recorded with detection=True (--detection)"
            )
        tasks.add(manifest["task"])
        shards += [(f, manifest.get("driver") is not None) for f in files]
    if len(tasks) > 1:
        raise ConfigError(f"the demonstration directories hold different tasks {sorted(tasks)}")
    return tasks.pop(), shards


def _cloned(success: np.ndarray, driven: np.ndarray | bool) -> np.ndarray:
    """Which episodes behaviour cloning with ``only_success`` uses: the successes, and every
    episode a policy drove (DAgger), whose labels are corrections whatever the outcome."""
    return success | driven


def _read_shard(path: Path, keys: Sequence[str], only_success: bool, driven: bool) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one shard (npz members are read lazily, so episode-level keys
    alone cost no image decoding); with ``only_success`` the rows of the episodes behaviour
    cloning does not use (:func:`_cloned`) are dropped."""
    try:
        with np.load(path, allow_pickle=False) as z:
            wanted = set(keys) | {"lengths", "success", "cost_names"}
            arrays = {k: z[k] for k in wanted}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(
            f"demonstration shard {path} is corrupted ({e}); delete it and rerun generate_demos"
        ) from e
    if only_success:
        keep = _cloned(arrays["success"], driven)
        step_keep = np.repeat(keep, arrays["lengths"])
        arrays = {
            k: v[keep] if k in _EPISODE_KEYS else v[step_keep] if k in _step_keys(True) else v for k, v in arrays.items()
        }
    return arrays


def load_demos(
    paths: str | Path | Sequence[str | Path],
    only_success: bool = False,
    store: str | Path | None = None,
    detection: bool = False,
) -> Demos:
    """Load every shard recorded by :func:`generate_demos` in one directory or several (e.g. the
    expert's and DAgger rounds'). ``only_success`` drops the expert's failed episodes (what
    :func:`train_bc` does by default, which also saves their memory: they are the longest);
    episodes a policy drove are kept whatever their outcome, since their labels are exactly the
    corrections that policy needs.

    ``store``: a directory where the per-step arrays are written once as ``.npy`` files and
    memory-mapped, so the images (about 25 kB per step at 64 x 64) live in the page cache, which
    the OS can evict, instead of the process's memory: demonstrations larger than RAM can be
    cloned. A later call with the same shards reuses the files; other shards rewrite them.

    ``detection``: load the target boxes too (the shards must have been recorded with them).
    """
    task, shards = _shard_files(paths, detection)
    if store is None:
        arrays, cost_names = _concatenate_shards(shards, only_success, detection=detection)
    else:
        arrays, cost_names = _stored_shards(shards, only_success, Path(store), detection)
    return Demos(
        task=task,
        obs={k: arrays[f"obs_{k}"] for k in _obs_keys(detection)},
        actions=arrays["actions"].astype(np.int64),
        executed=arrays["executed"].astype(np.int64),
        rewards=arrays["rewards"],
        costs=arrays["costs"],
        lengths=arrays["lengths"],
        success=arrays["success"],
        returns=arrays["returns"],
        episode_costs=arrays["episode_costs"],
        episode_ids=arrays["episode_ids"],
        cost_names=cost_names,
        driven=arrays["driven"],
    )


def _concatenate_shards(
    shards: list[tuple[Path, bool]], only_success: bool, store: Path | None = None, detection: bool = False
) -> tuple[dict[str, np.ndarray], tuple]:
    """Every step and episode array of ``shards``, concatenated, plus the cost names. The
    output is allocated once from the shards' episode lengths (read without their images) and
    filled one shard at a time, so the peak memory is the demonstrations plus one shard, not
    twice the demonstrations. With ``store`` the per-step arrays are instead appended to
    ``.npy`` files there (the peak is one shard) and left out of the returned dict."""
    sizes = [_read_shard(p, ("lengths",), only_success, driven)["lengths"] for p, driven in shards]
    totals = {"steps": int(sum(s.sum() for s in sizes)), "episodes": int(sum(len(s) for s in sizes))}
    out: dict[str, np.ndarray] = {}
    at = {"steps": 0, "episodes": 0}
    cost_names: tuple = ()
    with contextlib.ExitStack() as files:
        appended: dict[str, Any] = {}
        for (path, driven), lengths in zip(shards, sizes):
            part = _read_shard(path, _step_keys(detection) + _EPISODE_KEYS, only_success, driven)
            part["driven"] = np.full(len(lengths), driven)
            cost_names = tuple(str(c) for c in part.pop("cost_names"))
            rows = {"steps": int(lengths.sum()), "episodes": len(lengths)}
            for key, value in part.items():
                unit = "steps" if key in _step_keys(detection) else "episodes"
                shape = (totals[unit], *value.shape[1:])
                if store is not None and unit == "steps":
                    if key not in appended:
                        appended[key] = files.enter_context(open(store / f"{key}.npy", "wb"))
                        header = np.lib.format.header_data_from_array_1_0(value[:0])
                        np.lib.format.write_array_header_1_0(appended[key], header | {"shape": shape})
                    appended[key].write(np.ascontiguousarray(value).tobytes())
                    continue
                if key not in out:
                    out[key] = np.empty(shape, dtype=value.dtype)
                out[key][at[unit] : at[unit] + rows[unit]] = value
            at = {unit: at[unit] + rows[unit] for unit in at}
    return out, cost_names


_STORE_INDEX = "store.json"


def _store_source(shards: list[tuple[Path, bool]], only_success: bool, detection: bool) -> dict[str, Any]:
    """What a demonstration store was written from: any change to a shard file rewrites it."""
    files = []
    for path, driven in shards:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns, driven])
    source = {"format": DEMO_FORMAT, "version": DEMO_VERSION, "only_success": only_success, "shards": files}
    return source | {"detection": True} if detection else source


def _stored_shards(
    shards: list[tuple[Path, bool]], only_success: bool, store: Path, detection: bool = False
) -> tuple[dict[str, np.ndarray], tuple]:
    """:func:`_concatenate_shards` through the memory-mapped files of ``store``, written on the
    first call and reused while the shards stay the same. The index is written last, so a store
    whose writing was interrupted is written again."""
    source = _store_source(shards, only_success, detection)
    index = store / _STORE_INDEX
    saved = json.loads(index.read_text()) if index.exists() else {}
    if saved.get("source") != source:
        store.mkdir(parents=True, exist_ok=True)
        index.unlink(missing_ok=True)
        episode_arrays, cost_names = _concatenate_shards(shards, only_success, store, detection)
        for key, value in episode_arrays.items():
            np.save(store / f"{key}.npy", value, allow_pickle=False)
        saved = {"source": source, "cost_names": list(cost_names)}
        write_json(index, saved)
    arrays = {}
    for key in _step_keys(detection) + _EPISODE_KEYS + ("driven",):
        mode = "r" if key in _step_keys(detection) else None
        arrays[key] = np.load(store / f"{key}.npy", mmap_mode=mode, allow_pickle=False)
    return arrays, tuple(saved["cost_names"])


def demo_statistics(path: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The record of whoever acted in the demonstrations at ``path`` (all episodes, failed ones too):
    episodes, steps, success rate, episode length, cumulative cost per component. Reads no
    images."""
    task, shards = _shard_files(path)
    parts = [_read_shard(p, _EPISODE_KEYS, only_success=False, driven=driven) for p, driven in shards]
    lengths = np.concatenate([p["lengths"] for p in parts])
    costs = np.concatenate([p["episode_costs"] for p in parts])
    names = [str(c) for c in parts[0]["cost_names"]]
    return {
        "task": task,
        "episodes": int(len(lengths)),
        "steps": int(lengths.sum()),
        "success_rate": float(np.concatenate([p["success"] for p in parts]).mean()),
        "ep_length": float(lengths.mean()),
        "ep_cost": float(costs.mean(axis=0).sum()),
        "ep_costs": dict(zip(names, costs.mean(axis=0).astype(float).tolist())),
    }


def training_episodes(task: str, count: int, seed: int = 0) -> list:
    """A fixed list of ``count`` fresh training episodes of ``task`` (reproducible from ``seed``)."""
    from cmdp.envs.chores.episodes import EpisodeSampler
    from cmdp.envs.chores.house import HouseParams

    sampler = EpisodeSampler(task, 1, HouseParams())
    rng = np.random.default_rng(seed)
    return [sampler.next(0, rng) for _ in range(count)]


# ---- behaviour cloning ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BCConfig(Config):
    """Behaviour-cloning settings. A *step* is one gradient step on one batch of segments."""

    steps: int = option(2000, "Gradient steps to train for (counted from the start of the run).", ge=1)
    batch_segments: int = option(16, "Trajectory segments per batch.", ge=1)
    segment_length: int = option(
        128, "Scored steps per segment: longer episodes are cut into pieces of this length.", ge=1
    )
    lr: float = option(3e-4, "Adam learning rate (after warm-up).", gt=0.0)
    warmup_steps: int = option(100, "Steps of linear learning-rate warm-up from 0.", ge=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0.0)
    max_grad_norm: float | None = option(1.0, "Clip the gradient norm (None: no clipping).", gt=0.0)
    only_success: bool = option(True, "Clone successful episodes only (as SPOC trains on expert successes).")
    seed: int = option(0, "Seed of the network initialisation and of the batch sampling.", ge=0)
    validation_episodes: int = option(
        0,
        "Cloned episodes held out of training (drawn by seed); their loss and accuracy are logged "
        "every log_every steps, which shows when more steps only memorise (0: none).",
        ge=0,
    )
    image_shift: int = option(
        0,
        "Random-shift augmentation: each camera image of a training batch is padded by this many "
        "pixels (edge pixels repeated) and cropped back at a random offset, independently per frame, "
        "so the network cannot key on exact pixel positions of the houses it has seen (0: off).",
        ge=0,
    )
    bf16: bool = option(
        False,
        "Run the network under bfloat16 autocast (weights, optimiser and log-probabilities stay "
        "float32): about a third faster per step on CPUs with AVX512-BF16 or AMX, slower elsewhere.",
    )
    detection: bool = option(
        False,
        "Clone a policy that reads the target boxes (SPOC's ground-truth detection sensors, the "
        "env's detection option); the demonstrations must have been recorded with them.",
    )
    demo_store: bool = option(
        False,
        "Memory-map the demonstrations from out_dir/demo_store (written once, deleted when training "
        "completes) instead of loading them into RAM: 3,600 Fetch demonstrations take about 13 GB as "
        "arrays. Needs out_dir and demonstrations given as directories.",
    )
    checkpoint_every: int = option(200, "Write out_dir/bc_checkpoint.pt every this many steps.", ge=1)
    log_every: int = option(20, "Write a progress.csv row every this many steps (mean over them).", ge=1)
    torch_threads: int | None = option(
        1, "torch.set_num_threads for the run (None leaves it); small nets on a shared CPU run fastest on one.", ge=1
    )

    # fields that may differ between the run that wrote a checkpoint and the one resuming it
    RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "torch_threads", "bf16", "demo_store")


@dataclass(frozen=True)
class _Segment:
    start: int  # first step (global index) fed to the network
    scored_from: int  # first scored step
    end: int  # one past the last step


def _cloned_episodes(demos: Demos, only_success: bool) -> np.ndarray:
    """Indices of the episodes behaviour cloning learns from."""
    used = _cloned(demos.success, demos.driven) if only_success else np.ones(demos.num_episodes, dtype=bool)
    return np.flatnonzero(used)


def _segments(demos: Demos, episodes: np.ndarray, length: int, context: int) -> list[_Segment]:
    """The training segments of ``episodes``: pieces of ``length`` scored steps."""
    out = []
    for e in episodes:
        off, n = demos.offsets[e], demos.lengths[e]
        for s in range(0, int(n), length):
            out.append(_Segment(int(off) + max(0, s - (context - 1)), int(off) + s, int(off) + min(s + length, int(n))))
    return out


def _segment_batch(demos: Demos, segs: Sequence[_Segment]) -> dict[str, Any]:
    """Padded ``[B, L]`` batch in the layout the engine gives sequence policies."""
    length = max(s.end - s.start for s in segs)
    offs = np.arange(length)
    starts = np.array([s.start for s in segs])
    ends = np.array([s.end for s in segs])
    idx = np.minimum(starts[:, None] + offs[None, :], ends[:, None] - 1)
    valid = starts[:, None] + offs[None, :] < ends[:, None]
    scored = valid & (starts[:, None] + offs[None, :] >= np.array([s.scored_from for s in segs])[:, None])
    obs = {k: torch.from_numpy(v[idx]) for k, v in demos.obs.items()}
    # images stay uint8 and boxes float; the integer ids of smaller storage types become int64
    obs = {k: v if v.dtype in (torch.uint8, torch.float32) else v.long() for k, v in obs.items()}
    episode_start = np.zeros((len(segs), length), dtype=bool)
    episode_start[:, 0] = True
    return {
        "obs": obs,
        "actions": torch.from_numpy(demos.actions[idx]),
        "episode_start": torch.from_numpy(episode_start),
        "mask": torch.from_numpy(scored),
        "state": None,
    }


def random_shift(images: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """``images`` (``[..., H, W, C]``) each moved by its own offset of up to ``pad`` pixels in
    each direction; the border is filled by repeating the edge pixels."""
    *lead, h, w, c = images.shape
    n = math.prod(lead)
    dy, dx = (torch.from_numpy(rng.integers(0, 2 * pad + 1, size=n)) for _ in range(2))
    # cropping the edge-padded image at (dy, dx) reads the original at clamped coordinates: one
    # gather of whole pixels, without materialising the padded (or a float) copy of the batch
    rows = (dy[:, None] + torch.arange(h) - pad).clamp_(0, h - 1)
    cols = (dx[:, None] + torch.arange(w) - pad).clamp_(0, w - 1)
    pixels = torch.arange(n)[:, None, None] * (h * w) + rows[:, :, None] * w + cols[:, None, :]
    return images.reshape(n * h * w, c).index_select(0, pixels.reshape(-1)).reshape(*lead, h, w, c)


def _policy_for(demos: Demos, config: VLAConfig) -> VLAPolicy:
    from cmdp.envs.chores import catalog as cat
    from cmdp.envs.chores import text

    shape = demos.obs["rgb_nav"].shape[1:]
    signature = {
        "image_shape": list(shape),
        "vocab_size": text.VOCAB_SIZE,
        "max_tokens": int(demos.obs["instruction"].shape[1]),
        "last_actions": cat.NUM_ACTIONS + 1,
        "num_actions": cat.NUM_ACTIONS,
        "num_costs": len(demos.cost_names),
        "detection": all(k in demos.obs for k in BOX_KEYS),
    }
    obs_space, act_space = spaces_from_signature(signature)
    return VLAPolicy(obs_space, act_space, len(demos.cost_names), config)


def train_bc(
    demos: Demos | str | Path | Sequence[str | Path],
    policy_config: VLAConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    policy: VLAPolicy | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[VLAPolicy, list[dict[str, float]]]:
    """Behaviour cloning of a VLA policy on expert demonstrations.

    Args:
        demos: :class:`Demos`, or one or more directories written by :func:`generate_demos`.
        policy_config: sizes of a new policy (default :class:`VLAConfig()`); ignored with ``policy``.
        out_dir: run directory for ``progress.csv``, ``bc_checkpoint.pt`` and the final
            ``vla.pt``; a rerun with the same settings continues from its checkpoint exactly
            (``steps`` may grow). ``None``: no files, no resume.
        policy: start from this policy (fine-tune) instead of a new one.
        progress: show a progress line.
        **options: :class:`BCConfig` fields (``steps``, ``batch_segments``, ``segment_length``,
            ``lr``, ``seed``, ...).

    Returns the trained policy and the log: one dict per ``log_every`` steps with ``step``,
    ``loss`` (mean cross-entropy of the expert's actions, nats), ``accuracy`` (argmax agrees
    with the expert) and ``lr``.
    """
    cfg = BCConfig.from_kwargs(**options)
    store = None
    if cfg.demo_store:
        if out_dir is None or isinstance(demos, Demos):
            raise ConfigError("BCConfig.demo_store needs an out_dir and demonstrations given as directories")
        store = Path(out_dir) / DEMO_STORE
    if policy is not None and bool(policy.io.get("detection")) != cfg.detection:
        raise ConfigError(
            f"BCConfig.detection={cfg.detection} but the policy to train "
            f"{'reads' if policy.io.get('detection') else 'does not read'} target boxes"
        )
    if not isinstance(demos, Demos):
        demos = load_demos(demos, only_success=cfg.only_success, store=store, detection=cfg.detection)
    elif cfg.detection and not all(k in demos.obs for k in BOX_KEYS):
        raise ConfigError("BCConfig.detection needs demonstrations loaded with their target boxes (load_demos(detection=True))")
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    if policy is None:
        policy = _policy_for(demos, policy_config or VLAConfig())
    context = policy.config.context
    train_eps, val_eps = _split_episodes(demos, cfg)
    segments = _segments(demos, train_eps, cfg.segment_length, context)
    val_segments = _segments(demos, val_eps, cfg.segment_length, context)
    if not segments:
        why = "no episode"
        if cfg.only_success:
            why = "no episode succeeded (pass only_success=False to clone failures too)"
        raise ConfigError(f"no demonstration to clone: {why}")
    params = list(policy.actor_parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    history: list[dict[str, float]] = []
    out = Path(out_dir) if out_dir is not None else None
    fingerprint = demos.fingerprint()
    if out is not None and (out / BC_CHECKPOINT).exists():
        step, history = _load_bc_checkpoint(out / BC_CHECKPOINT, cfg, policy, optimizer, rng, fingerprint)
        log.info("%s: resuming behaviour cloning at step %d of %d", out, step, cfg.steps)
    logger = None
    if out is not None:
        from cmdp.runlog import RunLogger

        logger = RunLogger(
            out,
            {"bc": cfg.to_dict(), "policy": policy.config.to_dict(), "demos": fingerprint},
            tensorboard=False,
            progress_bar=progress,
            total_steps=cfg.steps,
            resume_step=step if step > 0 else None,
        )
    policy.train()
    sums = {"loss": 0.0, "accuracy": 0.0}
    count = 0
    try:
        while step < cfg.steps:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            pick = rng.choice(len(segments), size=min(cfg.batch_segments, len(segments)), replace=False)
            batch = _segment_batch(demos, [segments[i] for i in pick])
            if cfg.image_shift:
                for key in IMAGE_KEYS:
                    batch["obs"][key] = random_shift(batch["obs"][key], cfg.image_shift, rng)
            nll, correct, scored = _cloning_terms(policy, batch, cfg.bf16)
            loss = nll / scored
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            step += 1
            sums["loss"] += loss.item()
            sums["accuracy"] += float(correct / scored)
            count += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "loss": sums["loss"] / count, "accuracy": sums["accuracy"] / count, "lr": lr}
                if val_segments:
                    row["val_loss"], row["val_accuracy"] = _validate(
                        policy, demos, val_segments, cfg.batch_segments, cfg.bf16
                    )
                history.append(row)
                if logger is not None:
                    logger.log(step, {f"BC/{k}": v for k, v in row.items() if k != "step"})
                sums = {"loss": 0.0, "accuracy": 0.0}
                count = 0
            if out is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                _save_bc_checkpoint(out / BC_CHECKPOINT, cfg, policy, optimizer, rng, step, history, fingerprint)
    finally:
        if logger is not None:
            logger.close()
    policy.eval()
    if out is not None:
        policy.save_pretrained(out / PRETRAINED_NAME)
    if store is not None:
        shutil.rmtree(store)  # the maps stay readable until they close: the files are only unlinked
    return policy, history


def _split_episodes(demos: Demos, cfg: BCConfig) -> tuple[np.ndarray, np.ndarray]:
    """The cloned episodes split into training and held-out ones (``cfg.validation_episodes``,
    drawn with their own generator so the split does not move the batch sampling)."""
    cloned = _cloned_episodes(demos, cfg.only_success)
    if cfg.validation_episodes == 0:
        return cloned, cloned[:0]
    if cfg.validation_episodes >= len(cloned):
        raise ConfigError(
            f"validation_episodes={cfg.validation_episodes} leaves nothing to train on: "
            f"{len(cloned)} episodes are cloned"
        )
    held = np.random.default_rng([cfg.seed, 1]).choice(len(cloned), size=cfg.validation_episodes, replace=False)
    keep = np.ones(len(cloned), dtype=bool)
    keep[held] = False
    return cloned[keep], np.sort(cloned[held])


def _validate(
    policy: VLAPolicy, demos: Demos, segments: list[_Segment], batch: int, bf16: bool = False
) -> tuple[float, float]:
    """Mean loss and accuracy over every scored step of the held-out segments."""
    totals = np.zeros(3)
    policy.eval()
    with torch.no_grad():
        for i in range(0, len(segments), batch):
            totals += [float(x) for x in _cloning_terms(policy, _segment_batch(demos, segments[i : i + batch]), bf16)]
    policy.train()
    nll, correct, scored = totals
    return nll / scored, correct / scored


def _cloning_terms(
    policy: VLAPolicy, batch: dict[str, Any], bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed over the scored steps of ``batch``: the negative log-likelihood of the expert's
    actions, the steps where the policy's argmax agrees with them, and the steps."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = policy.evaluate(batch)
    mask = batch["mask"]
    nll = -(out.dist.log_prob(batch["actions"]) * mask).sum()
    with torch.no_grad():
        correct = ((out.dist.mode() == batch["actions"]) & mask).sum()
    return nll, correct, mask.sum()


def _save_bc_checkpoint(
    path: Path, cfg: BCConfig, policy: VLAPolicy, optimizer, rng, step: int, history: list, fingerprint: dict
) -> None:
    ckpt.atomic_save(
        {
            "format": BC_FORMAT,
            "version": BC_VERSION,
            "bc": cfg.to_dict(),
            "policy_config": policy.config.to_dict(),
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "rng": ckpt.to_storable(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "demos": fingerprint,
        },
        path,
    )


def _load_bc_checkpoint(path: Path, cfg: BCConfig, policy: VLAPolicy, optimizer, rng, fingerprint):
    data = read_weights_file(path, BC_FORMAT, BC_VERSION, "behaviour-cloning checkpoint")
    saved, now = data["bc"], cfg.to_dict()
    diffs = [k for k in now if k not in BCConfig.RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diffs:
        raise ConfigError(
            f"{path} was written with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diffs)}); "
            "use the same settings to resume, or another out_dir"
        )
    if data["policy_config"] != policy.config.to_dict():
        raise ConfigError(
            f"{path} holds a policy of another VLAConfig ({data['policy_config']}); use the same one to resume"
        )
    if data["demos"] != fingerprint:
        raise ConfigError(f"{path} was trained on other demonstrations ({data['demos']}, now {fingerprint})")
    if data["step"] > cfg.steps:
        raise ConfigError(f"{path} is already at step {data['step']}, beyond steps={cfg.steps}")
    load_strict(policy, data["policy"], path)
    optimizer.load_state_dict(data["optimizer"])
    rng.bit_generator.state = ckpt.from_storable(data["rng"])
    torch.set_rng_state(data["torch_rng"])
    return int(data["step"]), list(data["history"])


# ---- evaluation -----------------------------------------------------------------------------


def evaluate_policy(
    policy: VLAPolicy,
    task: str = "Fetch",
    *,
    split: str = "eval",
    episodes: int | None = None,
    episode_list: Sequence[Any] | None = None,
    num_envs: int = 8,
    seed: int = 0,
    deterministic: bool = False,
    max_episode_steps: int | None = None,
) -> dict[str, Any]:
    """Success rate, episode length and cumulative cost (total ``ep_cost`` and per component
    ``ep_costs``) of ``policy`` on ``task``.

    Episodes: ``episode_list`` if given, else the evaluation set of ``task`` (``split="eval"``,
    all of it unless ``episodes`` is smaller) or fresh training episodes (``split="train"``,
    ``episodes`` required). Actions are sampled unless ``deterministic``.
    """
    from cmdp.algorithms import PPO
    from cmdp.envs.chores.episodes import specs_from

    env_kwargs: dict[str, Any] = dict(policy.env_kwargs)
    if episode_list is not None:
        specs = specs_from(episode_list)
        env_kwargs["episodes"] = specs
        episodes = len(specs) if episodes is None else episodes
    elif split == "eval":
        from cmdp.envs.chores.eval_sets import load_eval_set

        env_kwargs["split"] = "eval"
        episodes = len(load_eval_set(task)) if episodes is None else episodes
    elif split != "train":
        raise ConfigError(f"split must be 'train' or 'eval', got {split!r}")
    elif episodes is None:
        raise ConfigError("episodes is required with split='train'")
    if max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = max_episode_steps
    n = max(1, min(num_envs, episodes, 16))
    algo = PPO(
        f"SafetyChores-{task}-v0",
        seed=seed,
        run_dir=False,
        policy=policy,
        num_envs=n,
        steps_per_epoch=n,
        normalize_obs=False,
        progress_bar=False,
        tensorboard=False,
        env_kwargs=env_kwargs,
        torch_threads=None,
    )
    try:
        was_training = policy.training
        policy.eval()
        result = algo.evaluate(episodes=episodes, seed=seed, deterministic=deterministic)
        policy.train(was_training)
    finally:
        algo.close()
    return result


# ---- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m cmdp.isa.imitation --out DIR``: expert demonstrations (``DIR/demos``),
    behaviour cloning (``DIR/bc``), optional DAgger rounds (``DIR/dagger<r>``, ``DIR/bc_dagger<r>``)
    and the IL policy's evaluation (``DIR/il_eval.json``); the final policy is the ``vla.pt`` of
    the last training stage. Rerunning the same command continues where it stopped."""
    import argparse

    from cmdp.envs.chores.expert import TEACHERS

    p = argparse.ArgumentParser(prog="python -m cmdp.isa.imitation", description=main.__doc__)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--task", default="Fetch")
    p.add_argument("--episodes", type=int, default=1200, help="expert episodes to record")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, nargs=2, default=(64, 64))
    p.add_argument("--action-noise", type=float, default=0.1)
    p.add_argument("--teacher", default="shortest", choices=tuple(TEACHERS),
                   help="expert that labels the demonstrations (explore: looks for the target before planning)")
    p.add_argument("--detection", action="store_true",
                   help="record the target boxes and clone a policy that reads them (SPOC's detection sensors)")  # fmt: skip
    p.add_argument("--steps", type=int, default=3000, help="behaviour-cloning gradient steps")
    p.add_argument("--batch-segments", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--image-shift", type=int, default=0,
                   help="random-shift augmentation of the camera images, in pixels (0: off)")  # fmt: skip
    p.add_argument("--bf16", action="store_true",
                   help="behaviour cloning under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX)")  # fmt: skip
    p.add_argument("--demo-store", action="store_true",
                   help="memory-map the demonstrations from disk during behaviour cloning instead of holding them in RAM")  # fmt: skip
    p.add_argument("--validation-episodes", type=int, default=0,
                   help="demonstrations held out of behaviour cloning; their loss and accuracy are logged")  # fmt: skip
    p.add_argument("--dagger-rounds", type=int, default=0, help="DAgger rounds after behaviour cloning")
    p.add_argument("--dagger-episodes", type=int, default=400, help="episodes the policy drives per round")
    p.add_argument(
        "--dagger-prob", type=float, nargs="+", default=[0.7],
        help="probability that the policy's action runs: one value for every round, or one per round "
        "(rising values let later rounds visit the states the policy reaches on its own)",
    )  # fmt: skip
    p.add_argument("--dagger-max-steps", type=int, default=300, help="time limit of the DAgger episodes")
    p.add_argument("--dagger-steps", type=int, default=1500, help="gradient steps per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-episodes", type=int, default=None, help="default: the whole evaluation set")
    p.add_argument("--eval-split", default="eval", choices=("eval", "train"))
    args = p.parse_args(argv)
    if len(args.dagger_prob) not in (1, max(args.dagger_rounds, 1)):
        p.error(f"--dagger-prob takes one value or one per round ({args.dagger_rounds}), got {len(args.dagger_prob)}")
    if not all(0.0 <= x <= 1.0 for x in args.dagger_prob):
        p.error(f"--dagger-prob values must lie in [0, 1], got {args.dagger_prob}")
    round_probs = args.dagger_prob * args.dagger_rounds if len(args.dagger_prob) == 1 else args.dagger_prob
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    image_size = tuple(args.image_size)
    demo_dir = generate_demos(
        args.task, args.episodes, args.num_envs, args.seed, out / "demos", image_size, action_noise=args.action_noise,
        teacher=args.teacher, detection=args.detection,
    )
    stats = demo_statistics(demo_dir)
    print(f"expert demonstrations: {json.dumps(stats)}", flush=True)
    train = dict(batch_segments=args.batch_segments, lr=args.lr, image_shift=args.image_shift, bf16=args.bf16,
                 demo_store=args.demo_store, torch_threads=args.threads, detection=args.detection)  # fmt: skip
    # held-out episodes in the BC stage only: the DAgger rounds train on everything
    policy, history = train_bc(demo_dir, VLAConfig(), out / "bc", steps=args.steps, seed=args.seed,
                               validation_episodes=args.validation_episodes, **train)  # fmt: skip
    stages = [{"stage": "bc", **history[-1]}]
    dirs = [demo_dir]
    for r in range(1, args.dagger_rounds + 1):
        dirs.append(
            generate_demos(
                args.task, args.dagger_episodes, args.num_envs, args.seed + r, out / f"dagger{r}", image_size,
                driver=policy, driver_prob=round_probs[r - 1],
                max_episode_steps=args.dagger_max_steps, teacher=args.teacher, detection=args.detection,
            )  # fmt: skip
        )
        policy, history = train_bc(
            dirs, out_dir=out / f"bc_dagger{r}", policy=policy, steps=args.dagger_steps, seed=args.seed + r, **train
        )
        stages.append({"stage": f"dagger{r}", "driven": demo_statistics(dirs[-1]), **history[-1]})
    for stage in stages:
        held_out = f", held out: loss {stage['val_loss']:.3f}, accuracy {stage['val_accuracy']:.3f}" if "val_loss" in stage else ""
        print(f"{stage['stage']}: final loss {stage['loss']:.3f}, accuracy {stage['accuracy']:.3f}{held_out}", flush=True)
    result = evaluate_policy(policy, args.task, split=args.eval_split, episodes=args.eval_episodes, seed=args.seed + 1)
    report = {"expert": stats, "stages": stages, "il_policy": result, "split": args.eval_split, "detection": args.detection}
    write_json(out / "il_eval.json", report)
    print(f"IL policy on {args.task} ({args.eval_split}): {json.dumps(result)}", flush=True)
    return report


if __name__ == "__main__":
    main()
