"""Train the unconstrained baseline (PPO) and PPO-Lagrangian on a built-in CMDP and compare.

    python examples/quickstart.py [--env PointGoal-v0] [--steps 200000] [--cost-limit 25]

Prints one row per solver: evaluation return, cost, the limit, and training speed. PPO ignores
the cost and overshoots the limit; PPOLag trades a little return to stay within it.
"""

from __future__ import annotations

import argparse
import time

from cmdp.algorithms import get_algorithm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="PointGoal-v0")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--algos", nargs="+", default=["PPO", "PPOLag"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()

    rows = []
    for name in args.algos:
        algo_cls = get_algorithm(name)
        algo = algo_cls(args.env, cost_limit=args.cost_limit, seed=args.seed)
        t0 = time.perf_counter()
        algo.learn(args.steps)
        seconds = time.perf_counter() - t0
        result = algo.evaluate(episodes=args.episodes)
        rows.append((name, result, args.steps / seconds, algo.run_dir))
        algo.close()

    print(f"\n{args.env}: {args.steps} training steps, cost limit {args.cost_limit} per episode, "
          f"{args.episodes} evaluation episodes (policy sampled)")
    print(f"{'solver':<8} {'EpRet':>9} {'EpCost':>9} {'limit':>7} {'within':>7} {'steps/s':>9}  run dir")
    for name, r, sps, run_dir in rows:
        within = "yes" if r["ep_cost"] <= args.cost_limit else "no"
        print(f"{name:<8} {r['ep_return']:>9.2f} {r['ep_cost']:>9.2f} {args.cost_limit:>7.1f} {within:>7} {sps:>9.0f}  {run_dir}")


if __name__ == "__main__":
    main()
