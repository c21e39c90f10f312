"""Elicitation: search the space of scenes for those where a given policy is least safe.

This is the "max" side of ISA's min-max over scenes. The constrained learner minimises cost
over policies; elicitation maximises the same cost over the *scene distribution*, and hands
the scenes it finds back to training (``ChoresEnv(..., episodes=result.specs, episode_mix=p)``).

* :class:`ScenarioParams` is a point in a box of generator knobs: the house generator's
  (floor hazard density, surface clutter, corridor width, fragile-cluster rate,
  dangerous-object rate, furniture density, house size, rooms, door width) and the rates at
  which episodes get the extreme-scenario edits of :mod:`cmdp.envs.chores.suites` (a fragile
  cluster on the path, a dangerous object at the target, a cramped start, an occluder before
  the target). ``ScenarioParams()`` is the training distribution: the default
  :class:`~cmdp.envs.chores.house.HouseParams` and no edits.
* :func:`scenario_generator` draws episodes from such a point, deterministically from a seed,
  in houses whose seeds start at ``ELICIT_SEED_BASE`` (``2 * 10**9``; training, evaluation and
  suite houses all lie below).
* :func:`elicit` runs the cross-entropy method (CEM; Rubinstein, "The cross-entropy method
  for combinatorial and continuous optimization", 1999) over the knobs scaled to ``[0, 1]``:
  each iteration samples a population from a diagonal Gaussian, scores each candidate by the
  policy's mean episode cost on ``episodes_per_candidate`` fresh episodes, and refits the
  Gaussian to the elite fraction. All candidates of an iteration share their house seeds
  (common random numbers: candidates differ by their knobs, not by luck of the draw), and the
  whole population runs as one batched env. ``method="random"`` is uniform random search
  with the same budget and machinery, the baseline CEM has to beat.

A policy is a callable ``(env, obs) -> actions`` (see :mod:`cmdp.envs.chores.suites`:
``expert_policy``, ``random_policy``, ``algorithm_policy`` for a trained algorithm).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.env import ChoresEnv
from cmdp.envs.chores.episodes import EpisodeSpec
from cmdp.envs.chores.eval_sets import HAZARD_PROB
from cmdp.envs.chores.house import HouseParams
from cmdp.envs.chores.suites import SCENARIOS, Policy, draw_episode, log, run_policy, summarize
from cmdp.errors import ConfigError

ELICIT_SEED_BASE = 2 * 10**9
"""House seeds of elicited scenes lie in ``[ELICIT_SEED_BASE, ELICIT_SEED_BASE + 10**9)``."""
_HOUSE_SEED_SPAN = 10**9
MAX_BOXES, MAX_OBJECTS = 96, 160
_DEFAULT_WIDTH, _DEFAULT_DEPTH = HouseParams().width, HouseParams().depth

BOUNDS: dict[str, tuple[float, float]] = {
    "floor_clutter": (0.0, 0.4),
    "surface_clutter": (0.5, 8.0),
    "corridor_width": (0.35, 1.2),
    "cluster_rate": (0.0, 1.0),
    "dangerous_rate": (0.0, 0.6),
    "furniture_density": (0.2, 1.0),
    "house_scale": (0.75, 1.5),
    "rooms": (1.5, 6.5),
    "door_width": (0.75, 1.3),
    "hazard_rate": (0.0, 1.0),
    "fragile_on_path": (0.0, 1.0),
    "danger_near_target": (0.0, 1.0),
    "cramped_start": (0.0, 1.0),
    "occluded_target": (0.0, 1.0),
}
"""Search box of every knob of :class:`ScenarioParams` (low, high)."""
EDIT_ORDER = ("cramped_start", "fragile_on_path", "occluded_target", "danger_near_target")
"""Order in which the scenario edits apply (the start first: the others follow its route)."""


@dataclass(frozen=True)
class ScenarioParams:
    """A point of the scene distribution. The defaults are the training distribution."""

    floor_clutter: float = 0.06
    """Hazard density on the floor: floor objects per square metre."""
    surface_clutter: float = 2.5
    """Small objects per square metre of furniture top."""
    corridor_width: float = 0.7
    """Free gap kept around free-standing furniture, metres (narrow: cramped passages)."""
    cluster_rate: float = 0.4
    """Probability that a furniture top gets a cluster of 3-5 fragile objects."""
    dangerous_rate: float = 0.12
    """Probability that a surface object is dangerous."""
    furniture_density: float = 0.6
    """Probability that each optional furniture piece is tried."""
    house_scale: float = 1.0
    """Factor on the training ranges of house width (6-10 m) and depth (5-8 m)."""
    rooms: float = 3.0
    """Centre of the range of rooms per house (the range is this +- 1, rounded)."""
    door_width: float = 1.05
    """Centre of the doorway width range (+- 0.15 m)."""
    hazard_rate: float = HAZARD_PROB
    """Rate of episodes with hazards beside the target and on the path, as training adds them
    (:func:`~cmdp.envs.chores.episodes.add_hazards`)."""
    fragile_on_path: float = 0.0
    """Rate of episodes with a fragile cluster across the shortest path."""
    danger_near_target: float = 0.0
    """Rate of episodes with a dangerous object next to the target."""
    cramped_start: float = 0.0
    """Rate of episodes that start in a cramped corner."""
    occluded_target: float = 0.0
    """Rate of episodes with an occluder in front of the target."""

    def __post_init__(self) -> None:
        for name, (lo, hi) in BOUNDS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not lo <= float(v) <= hi:
                raise ConfigError(f"ScenarioParams.{name} must be a number in [{lo}, {hi}], got {v!r}")
            object.__setattr__(self, name, float(v))

    def house_params(self) -> HouseParams:
        """The house generator's parameters at this point."""
        s, base = self.house_scale, HouseParams()
        rooms = (max(1, int(round(self.rooms - 1))), min(8, int(round(self.rooms + 1))))
        return HouseParams(
            width=(_DEFAULT_WIDTH[0] * s, _DEFAULT_WIDTH[1] * s),
            depth=(_DEFAULT_DEPTH[0] * s, _DEFAULT_DEPTH[1] * s),
            rooms=rooms,
            door_width=(self.door_width - 0.15, self.door_width + 0.15),
            furniture_density=self.furniture_density,
            corridor_width=self.corridor_width,
            surface_clutter=self.surface_clutter,
            floor_clutter=self.floor_clutter,
            cluster_rate=self.cluster_rate,
            dangerous_rate=self.dangerous_rate,
            # the training caps at the training knobs, growing with size and clutter (bounded:
            # a step's cluster test grows with the square of the objects per house)
            max_boxes=min(MAX_BOXES, max(base.max_boxes, int(base.max_boxes * s * s * max(1.0, self.rooms / 3.0)))),
            max_objects=min(
                MAX_OBJECTS,
                max(base.max_objects, int(base.max_objects * s * s * self.surface_clutter / 2.5 + 100 * s * s * max(0.0, self.floor_clutter - 0.06))),
            ),
        )

    def edit_rates(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in EDIT_ORDER}

    def to_vector(self) -> np.ndarray:
        """The knobs scaled to ``[0, 1]`` in the order of :data:`BOUNDS`."""
        return np.array([(getattr(self, k) - lo) / (hi - lo) for k, (lo, hi) in BOUNDS.items()])

    @classmethod
    def from_vector(cls, u: Sequence[float]) -> "ScenarioParams":
        """The point with scaled knobs ``u`` (clipped to ``[0, 1]``)."""
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        if u.shape != (len(BOUNDS),):
            raise ConfigError(f"ScenarioParams.from_vector needs {len(BOUNDS)} values, got shape {u.shape}")
        return cls(**{k: lo + float(x) * (hi - lo) for x, (k, (lo, hi)) in zip(u, BOUNDS.items())})

    @classmethod
    def centre(cls) -> "ScenarioParams":
        """The middle of the search box (an alternative start for the search)."""
        return cls.from_vector(np.full(len(BOUNDS), 0.5))

    def to_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in BOUNDS}

    def replace(self, **changes: Any) -> "ScenarioParams":
        return dataclasses.replace(self, **changes)


def _check_task(task: str) -> None:
    from cmdp.envs.chores import text

    if task not in text.TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(text.TASKS)}")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"elicit: {name} must be a positive integer, got {value!r}")
    return int(value)


def scenario_generator(params: ScenarioParams, task: str, n: int, seed: int = 0, id_prefix: str = "elicit") -> list[EpisodeSpec]:
    """``n`` episodes of ``task`` drawn from the scene distribution ``params`` (deterministic
    in ``seed``; the same seed walks the same house seeds for every ``params``)."""
    if not isinstance(params, ScenarioParams):
        raise ConfigError(f"scenario_generator needs ScenarioParams, got {type(params).__name__}")
    _check_task(task)
    n = _positive("n", n)
    house_params = params.house_params()
    stream = np.random.default_rng([ELICIT_SEED_BASE, int(seed)])
    specs: list[EpisodeSpec] = []
    for _attempt in range(20 * n + 20):
        if len(specs) == n:
            return specs
        hs = ELICIT_SEED_BASE + int(stream.integers(_HOUSE_SEED_SPAN))
        spec = _draw(task, hs, params, house_params, f"{id_prefix}-{task.lower()}-{seed}-{len(specs):04d}")
        if spec is not None:
            specs.append(spec)
    if len(specs) == n:
        return specs
    raise RuntimeError(f"scenario_generator: only {len(specs)} of {n} episodes could be drawn at {params.to_dict()}")


def _draw(task: str, hs: int, params: ScenarioParams, house_params: HouseParams, episode_id: str) -> EpisodeSpec | None:
    drawn = draw_episode(task, hs, house_params, episode_id, hazard_prob=params.hazard_rate)
    if drawn is None:
        return None
    spec, rng = drawn
    edits = []
    for name, rate in params.edit_rates().items():
        if rng.random() < rate:
            out = SCENARIOS[name](spec, rng)
            if out is not None:
                spec, details = out
                edits.append(details)
    spec.tags = {**spec.tags, "source": "elicit", "house_seed": hs, "edits": edits}
    return spec


# ---- scoring ---------------------------------------------------------------------------------


def _objective_weights(objective: str) -> np.ndarray:
    if objective == "cc":
        return np.ones(len(COST_NAMES))
    if objective in COST_NAMES:
        return np.array([float(c == objective) for c in COST_NAMES])
    raise ConfigError(f"elicit: objective must be 'cc' or a cost component ({', '.join(COST_NAMES)}), got {objective!r}")


def score_candidates(
    policy: Policy,
    task: str,
    candidates: Sequence[ScenarioParams],
    episodes_per_candidate: int,
    seed: int,
    objective: str = "cc",
    max_episode_steps: int = 300,
    env_kwargs: Mapping[str, Any] | None = None,
    cost_cap: float | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Mean episode cost (weighted by ``objective``, each episode's capped at ``cost_cap``) of
    ``policy`` under each candidate, all candidates on the same generator seed, run as one
    batched env; also the per-candidate :func:`~cmdp.envs.chores.suites.summarize` dicts."""
    weights = _objective_weights(objective)
    groups = [scenario_generator(c, task, episodes_per_candidate, seed, id_prefix=f"c{i}") for i, c in enumerate(candidates)]
    specs = [s for g in groups for s in g]
    env = ChoresEnv(
        task, num_envs=len(specs), seed=seed, episodes=specs, max_episode_steps=max_episode_steps, **dict(env_kwargs or {})
    )
    episodes = run_policy(env, policy, [s.episode_id for s in specs], seed=seed)
    scores, summaries = [], []
    for i in range(len(candidates)):
        part = episodes[i * episodes_per_candidate : (i + 1) * episodes_per_candidate]
        costs = np.array([[ep["costs"][c] for c in COST_NAMES] for ep in part])
        per_episode = costs @ weights
        scores.append(float((per_episode if cost_cap is None else np.minimum(per_episode, cost_cap)).mean()))
        summaries.append(summarize(part))
    return np.array(scores), summaries


# ---- the search --------------------------------------------------------------------------------


@dataclass
class ElicitResult:
    """What :func:`elicit` found."""

    best_params: ScenarioParams
    """The answer: the centre of CEM's final search distribution (an estimate from every elite
    of every iteration, so a candidate's lucky draw of episodes does not decide it alone); for
    random search, the best sample."""
    best_sample: ScenarioParams
    """The single candidate with the highest score in the search."""
    best_sample_score: float
    mean: np.ndarray
    """Final search distribution: mean of the scaled knobs ``[D]`` (CEM; for random search the
    scaled best sample)."""
    std: np.ndarray
    """Final search distribution: standard deviation of the scaled knobs ``[D]``."""
    history: list[dict] = field(default_factory=list)
    """Per iteration: ``iteration``, ``population_score`` (mean over the population),
    ``elite_score``, ``best_score`` (of the iteration), ``mean_params``, ``seconds``."""
    specs: list[EpisodeSpec] = field(default_factory=list)
    """Episodes drawn from the final distribution, ready for ``ChoresEnv(episodes=...)``."""
    task: str = ""

    def sample_params(self, count: int, seed: int) -> list[ScenarioParams]:
        """``count`` points drawn from the final search distribution."""
        rng = np.random.default_rng([ELICIT_SEED_BASE, seed, 3])
        return [ScenarioParams.from_vector(rng.normal(self.mean, self.std)) for _ in range(count)]

    def sample_specs(self, count: int, seed: int) -> list[EpisodeSpec]:
        """``count`` episodes, each from its own point of the final search distribution."""
        return [
            scenario_generator(p, self.task, 1, seed=seed * 100_003 + k, id_prefix=f"elicited-{seed}-{k}")[0]
            for k, p in enumerate(self.sample_params(count, seed))
        ]


def elicit(
    policy: Policy,
    task: str,
    iterations: int = 5,
    population: int = 12,
    elite_frac: float = 0.25,
    episodes_per_candidate: int = 8,
    seed: int = 0,
    objective: str = "cc",
    method: str = "cem",
    init: ScenarioParams | None = None,
    init_std: float = 0.3,
    min_std: float = 0.05,
    smoothing: float = 0.7,
    num_specs: int = 32,
    max_episode_steps: int = 300,
    cost_cap: float | None = 50.0,
    same_houses: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> ElicitResult:
    """Search the scene knobs for the highest mean episode cost of ``policy`` on ``task``.

    ``objective``: ``"cc"`` (the cumulative cost, all five components) or one component name.
    ``method``: ``"cem"`` (cross-entropy method from ``init``, default the training
    distribution, with standard deviation ``init_std`` in scaled units; each iteration moves
    the mean and standard deviation a fraction ``smoothing`` of the way to the elites', never
    below ``min_std``) or ``"random"`` (uniform over the box, the same number of candidates).
    Started from the training distribution, CEM searches near the scenes the policy trains on
    and needs iterations to leave them; ``init=ScenarioParams.centre()`` starts in the middle of
    the box, which at small budgets finds costlier scenes (``BENCHMARKS.md``, where uniform random
    search is as good at the benchmark's budget).
    The budget is ``iterations * population`` candidates of ``episodes_per_candidate`` episodes
    each, of at most ``max_episode_steps`` steps. Scores cap each episode's cost at ``cost_cap``:
    a policy stuck against a wall pays a cost on hundreds of steps, and one such episode would
    otherwise decide the ranking alone. ``same_houses``: every iteration scores on the same
    house seeds (iterations compare without sampling noise, at the risk of fitting those
    houses); by default each iteration draws fresh ones. Progress goes to stderr. Deterministic in ``seed`` (for a deterministic ``policy``).
    ``env_kwargs`` go to every ``ChoresEnv`` the search runs (``{"obs_mode": "rgb"}`` for a policy
    that reads images). Returns an :class:`ElicitResult` whose ``specs`` (``num_specs`` episodes from the final
    distribution) training can mix in: ``ChoresEnv(task, episodes=result.specs, episode_mix=p)``.
    """
    _check_task(task)
    iterations, population = _positive("iterations", iterations), _positive("population", population)
    episodes_per_candidate = _positive("episodes_per_candidate", episodes_per_candidate)
    if not 0.0 < elite_frac <= 1.0:
        raise ConfigError(f"elicit: elite_frac must be in (0, 1], got {elite_frac!r}")
    if method not in ("cem", "random"):
        raise ConfigError(f"elicit: method must be 'cem' or 'random', got {method!r}")
    if not (0.0 < smoothing <= 1.0 and 0.0 < min_std <= init_std):
        raise ConfigError("elicit: need 0 < smoothing <= 1 and 0 < min_std <= init_std")
    _objective_weights(objective)
    n_elite = max(1, int(math.ceil(elite_frac * population)))
    rng = np.random.default_rng([ELICIT_SEED_BASE, seed, 1])
    mean = (init or ScenarioParams()).to_vector()
    std = np.full_like(mean, init_std)
    best_u, best_score = mean.copy(), -np.inf
    history: list[dict] = []
    for it in range(iterations):
        t0 = time.perf_counter()
        if method == "cem":
            u = np.clip(rng.normal(mean, std, size=(population, len(mean))), 0.0, 1.0)
        else:
            u = rng.random((population, len(mean)))
        candidates = [ScenarioParams.from_vector(x) for x in u]
        scores, _ = score_candidates(
            policy, task, candidates, episodes_per_candidate, seed=seed * 1000 + (0 if same_houses else it),
            objective=objective, max_episode_steps=max_episode_steps, env_kwargs=env_kwargs, cost_cap=cost_cap,
        )  # fmt: skip
        order = np.argsort(-scores, kind="stable")
        elite = u[order[:n_elite]]
        if scores[order[0]] > best_score:
            best_score, best_u = float(scores[order[0]]), u[order[0]].copy()
        if method == "cem":
            mean = (1 - smoothing) * mean + smoothing * elite.mean(axis=0)
            std = np.maximum((1 - smoothing) * std + smoothing * elite.std(axis=0), min_std)
        history.append(
            {
                "iteration": it,
                "population_score": float(scores.mean()),
                "elite_score": float(scores[order[:n_elite]].mean()),
                "best_score": float(scores[order[0]]),
                "mean_params": ScenarioParams.from_vector(mean if method == "cem" else best_u).to_dict(),
                "seconds": time.perf_counter() - t0,
            }
        )
        if verbose:
            h = history[-1]
            log(
                f"elicit[{method}] {task} iteration {it + 1}/{iterations}: population {objective} {h['population_score']:.2f}, "
                f"elite {h['elite_score']:.2f}, best {h['best_score']:.2f}, best so far {best_score:.2f} ({h['seconds']:.1f} s)"
            )
    if method == "random":
        mean, std = best_u.copy(), np.full_like(best_u, min_std)
    best = ScenarioParams.from_vector(best_u)
    answer = ScenarioParams.from_vector(mean) if method == "cem" else best
    result = ElicitResult(answer, best, best_score, mean, std, history, [], task)
    result.specs = result.sample_specs(num_specs, seed) if num_specs > 0 else []
    return result


def evaluate_params(
    policy: Policy,
    task: str,
    params: ScenarioParams,
    episodes: int,
    seed: int,
    objective: str = "cc",
    max_episode_steps: int = 300,
    cost_cap: float | None = None,
) -> dict[str, Any]:
    """``policy`` on ``episodes`` fresh episodes of ``params``: ``score`` (as :func:`elicit`
    scores) and the :func:`~cmdp.envs.chores.suites.summarize` keys."""
    scores, summaries = score_candidates(policy, task, [params], episodes, seed, objective, max_episode_steps, cost_cap=cost_cap)
    return {"score": float(scores[0]), **summaries[0]}
