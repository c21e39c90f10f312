"""The fixed evaluation sets of Safety-CHORES: 200 ObjectNav, 171 PickUp and 172 Fetch episodes,
each in its own house (house seeds from ``EVAL_SEED_BASE`` up, never used in training).

They ship as gzipped JSON episode lists in ``cmdp/envs/chores/data/`` (full layouts, so they
do not depend on how a future numpy expands seeds). :func:`build_eval_set` regenerates a set
from its seeds; the shipped files were made by ``python -m cmdp.envs.chores.eval_sets``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cmdp.envs.chores.episodes import EVAL_SEED_BASE, EpisodeSpec, add_hazards, load_episodes, sample_episode, save_episodes
from cmdp.envs.chores.house import HouseParams, generate_house
from cmdp.errors import ConfigError

DATA_DIR = Path(__file__).with_name("data")
EVAL_SIZES = {"ObjectNav": 200, "PickUp": 171, "Fetch": 172}
_TASK_OFFSET = {"ObjectNav": 0, "PickUp": 100_000, "Fetch": 200_000}
_CACHE: dict[str, list[EpisodeSpec]] = {}
HAZARD_PROB = 0.5  # as in training: the sets measure the distribution the policies train on


def eval_set_path(task: str) -> Path:
    return DATA_DIR / f"{task.lower()}_eval.json.gz"


def load_eval_set(task: str) -> list[EpisodeSpec]:
    if task not in EVAL_SIZES:
        raise ConfigError(f"no evaluation set for task {task!r}; tasks: {', '.join(EVAL_SIZES)}")
    if task not in _CACHE:
        _CACHE[task] = load_episodes(eval_set_path(task))
    return _CACHE[task]


def build_eval_set(task: str, size: int | None = None, params: HouseParams | None = None) -> list[EpisodeSpec]:
    """Regenerate the evaluation set of ``task``: episode k in the house of seed
    ``EVAL_SEED_BASE + offset(task) + k``, with the shortest-path expert's episode length
    recorded for SEL."""
    from cmdp.envs.chores.expert import expert_episode_length

    size = EVAL_SIZES[task] if size is None else size
    params = params or HouseParams()
    specs = []
    for k in range(size):
        seed = EVAL_SEED_BASE + _TASK_OFFSET[task] + k
        house = generate_house(seed, params)
        rng = np.random.default_rng([seed, 7])
        spec = sample_episode(task, house, rng, episode_id=f"{task.lower()}-eval-{k:03d}")
        if rng.random() < HAZARD_PROB:
            spec = add_hazards(spec, rng, max_objects=params.max_objects)
        spec.expert_length = expert_episode_length(spec)
        specs.append(spec)
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="*", default=list(EVAL_SIZES))
    args = parser.parse_args()
    DATA_DIR.mkdir(exist_ok=True)
    for task in args.tasks:
        specs = build_eval_set(task)
        path = save_episodes(specs, eval_set_path(task))
        print(f"{task}: {len(specs)} episodes -> {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
