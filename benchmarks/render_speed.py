"""Speed of the Safety-CHORES cameras, side by side in one run.

    python benchmarks/render_speed.py [--envs 64] [--repeats 15] [--out BENCHMARKS.md]

Renders batches of ``--envs`` houses (each env its own generated house, the robot at a random
free pose with its arm out) with the navigation and the manipulation camera:

* at 64x64, 128x128 and 224x384 pixels, with the generator's default clutter;
* at 64x64 with 10, 25, 50, 100 and 200 small objects per house (houses generated with heavy
  clutter, then cut down to the count or topped up with objects on free floor).

Every configuration is timed once per repeat, right after one untimed call of the same
configuration (as an env renders the same batch size every step; the previous configuration
may have left the allocator's heap in another shape), the configurations interleaved so that
machine noise (the machine is shared) hits all alike; the table gives medians of the
wall-clock and of the process CPU time per batch. With ``--out`` the table is written into that Markdown
file between markers, with the date and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.house import House, HouseGrid, HouseParams, generate_house
from cmdp.envs.chores.render import CameraSpec, render_manip, render_nav
from cmdp.envs.chores.scene import Scene

SIZES = ((64, 64), (128, 128), (224, 384))
OBJECT_COUNTS = (10, 25, 50, 100, 200)


def house_with_objects(seed: int, count: int) -> House:
    """A generated house with exactly ``count`` small objects."""
    params = HouseParams(surface_clutter=6.0, floor_clutter=0.3, max_objects=max(count, 8))
    house = generate_house(seed, params).copy()
    keep = min(count, house.num_objects)
    for name in ("obj_pos", "obj_yaw", "obj_cat", "obj_support"):
        setattr(house, name, getattr(house, name)[:keep])
    missing = count - keep
    if missing:
        rng = np.random.default_rng(seed)
        free = np.argwhere(HouseGrid(house).free)
        cells = free[rng.choice(len(free), size=missing, replace=len(free) < missing)]
        floor_cats = [cat.CATEGORY_INDEX[name] for name in cat.FLOOR_CATEGORIES]
        xy = (cells[:, ::-1] + 0.5) * 0.1
        house.obj_pos = np.concatenate([house.obj_pos, np.column_stack([xy, np.zeros(missing)])])
        house.obj_yaw = np.concatenate([house.obj_yaw, rng.uniform(-np.pi, np.pi, missing)])
        house.obj_cat = np.concatenate([house.obj_cat, rng.choice(floor_cats, missing).astype(np.int16)])
        house.obj_support = np.concatenate([house.obj_support, np.full(missing, -1, np.int16)])
    house.mark_edited()
    return house


def scene_of(num_envs: int, count: int | None, seed: int = 0) -> Scene:
    """``num_envs`` houses, the robots at random free poses with the arm out."""
    rng = np.random.default_rng(seed)
    houses = [generate_house(seed + i) if count is None else house_with_objects(seed + i, count) for i in range(num_envs)]
    scene = Scene(num_envs, max(h.num_boxes for h in houses), max(max(h.num_objects for h in houses), 1))
    for row, house in enumerate(houses):
        free = np.argwhere(HouseGrid(house).free)
        iy, ix = free[rng.integers(len(free))]
        scene.load(row, house, ((ix + 0.5) * 0.1, (iy + 0.5) * 0.1, rng.uniform(-np.pi, np.pi)))
    scene.arm_ext[:] = rng.uniform(*cat.ARM_EXTENSION_RANGE, num_envs)
    scene.arm_lift[:] = rng.uniform(0.5, 1.0, num_envs)
    return scene


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    args = parser.parse_args()

    default_scene = scene_of(args.envs, None)
    clutter = {count: scene_of(args.envs, count) for count in OBJECT_COUNTS}
    configs: dict[tuple, tuple] = {}
    for h, w in SIZES:
        configs[("size", (h, w), "nav")] = (render_nav, default_scene, CameraSpec(height=h, width=w))
        configs[("size", (h, w), "manip")] = (render_manip, default_scene, CameraSpec.manipulation(height=h, width=w))
    for count in OBJECT_COUNTS:
        configs[("objects", count, "nav")] = (render_nav, clutter[count], CameraSpec())
        configs[("objects", count, "manip")] = (render_manip, clutter[count], CameraSpec.manipulation())
    times: dict[tuple, list[tuple[float, float]]] = {key: [] for key in configs}
    for draw, scene, camera in configs.values():
        draw(scene, camera)  # warm-up: caches, first allocations
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for key, (draw, scene, camera) in configs.items():
            draw(scene, camera)
            times[key].append(timed(lambda: draw(scene, camera)))
        print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr)

    def cell(key) -> tuple[float, float]:
        return statistics.median(t[0] for t in times[key]) * 1e3, statistics.median(t[1] for t in times[key]) * 1e3

    n = args.envs
    lines = [
        machine_line(),
        "",
        f"Command: `python benchmarks/render_speed.py --envs {n} --repeats {args.repeats}`. One batch = {n} envs, "
        f"each in its own house, rendered by one call on one core. Medians over {args.repeats} interleaved repeats; "
        "wall-clock and process CPU time, in ms per batch. The machine is shared: the 1-minute load average was "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run (on {os.cpu_count()} cores), so the "
        "CPU time is the figure to compare.",
        "",
        "| image | nav camera ms (CPU ms) | manip camera ms (CPU ms) | both cameras, env-images/s (by CPU) |",
        "|---|---:|---:|---:|",
    ]
    for h, w in SIZES:
        nav, manip = cell(("size", (h, w), "nav")), cell(("size", (h, w), "manip"))
        rate = n / ((nav[1] + manip[1]) / 1e3)
        lines.append(f"| {h}x{w} | {nav[0]:.1f} ({nav[1]:.1f}) | {manip[0]:.1f} ({manip[1]:.1f}) | {rate:,.0f} |")
    lines += [
        "",
        f"Growth with the number of small objects per house (64x64, {n} envs):",
        "",
        "| objects per house | nav camera ms (CPU ms) | manip camera ms (CPU ms) |",
        "|---:|---:|---:|",
    ]
    for count in OBJECT_COUNTS:
        nav, manip = cell(("objects", count, "nav")), cell(("objects", count, "manip"))
        lines.append(f"| {count} | {nav[0]:.1f} ({nav[1]:.1f}) | {manip[0]:.1f} ({manip[1]:.1f}) |")
    publish("\n".join(lines), args.out, "render", "Safety-CHORES rendering speed")


if __name__ == "__main__":
    main()
