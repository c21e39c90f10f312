"""The solver-comparison grid behind ``cmdp benchmark``: solvers x envs x seeds.

Each cell trains one solver on one env with one seed (``get_algorithm(name)(env_id,
cost_limit=..., seed=..., **config)``), evaluates it at a few points during training and at
the end, and records its config, seed and package versions (:mod:`cmdp.benchmark.cells`).
The per-env defaults (cost limit, steps of the small and the full grid, solver options) are
one typed table (:mod:`cmdp.benchmark.settings`). :func:`run_grid` runs the unfinished cells
in this process, in worker processes or as Ray tasks, resumes killed runs, and writes
``results.csv``, ``cells.csv``, ``results.md`` and ``plots/<env>.png``
(:mod:`cmdp.benchmark.runner`, :mod:`cmdp.benchmark.summary`)::

    from cmdp.benchmark import GridConfig, run_grid
    report = run_grid(GridConfig(out="runs/benchmark-small", workers=2))
    print(report.table)
"""

from cmdp.benchmark.cells import CellSpec, environment_info, run_cell
from cmdp.benchmark.runner import GridConfig, GridPlan, GridReport, plan_grid, run_grid
from cmdp.benchmark.settings import ENV_SETTINGS, FULL_SEEDS, SMALL_SEEDS, EnvSettings

__all__ = [
    "CellSpec",
    "ENV_SETTINGS",
    "EnvSettings",
    "FULL_SEEDS",
    "GridConfig",
    "GridPlan",
    "GridReport",
    "SMALL_SEEDS",
    "environment_info",
    "plan_grid",
    "run_cell",
    "run_grid",
]
