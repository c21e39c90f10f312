"""Where a VLA policy's cost comes from, and whether its own features foresee it.

    python benchmarks/vla_cost_probe.py [--policy examples/assets/il_fetch/vla.pt] [--steps 32000] [--out BENCHMARKS.md]
    python benchmarks/vla_cost_probe.py --policy runs/vla_shield/seed0/ppo [--start examples/assets/il_fetch/vla.pt]

The policy acts (sampled actions, one torch thread) on ``SafetyChores-Fetch-v0`` training
episodes for ``--steps`` env steps in 8 envs. Every step records the transformer's output (the
features its action head and critics read), the action and the five costs. Then:

1. **Cost by action**: each action's share of all cost, of the steps, and its cost per step.
2. **Bursts**: of the steps that cost on a channel, the share whose previous step in the same
   episode cost on it too.
3. **Foresight**: on the steps that moved ahead (the action carrying most of the cost), a
   logistic probe of the *frozen* features is fitted to whether the step cost (per channel and
   any channel) on the first 70% of those steps, in rollout order, and scored on the remaining
   30%: the ROC AUC, and the share of held-out move cost that the probe's riskiest 5/10/20/30%
   of moves carry.

A high AUC says the features already tell risky moves from safe ones, so a fine-tune that
struggles to avoid them struggles with credit assignment, not perception: the motivation of
the engine's ``step_cost_coef`` term. With ``--out`` the tables go into that Markdown file
under the ``vla_cost_probe`` markers.

``--policy`` may also be a solver's run directory (or its ``checkpoint.pt``). When that policy
has a one-step cost model (``VLAConfig(step_cost_model=True)``, as ``benchmarks/vla_shield.py``
fine-tunes), the foresight table gains the AUC of the model's own prediction for a move on the
same held-out moves: whether the model, fitted online by squared error to the taken actions'
costs, ranks risky moves as well as a logistic probe fitted offline to its features. A checkpoint
written before checkpoints recorded their architecture needs ``--start``, the VLA it was
fine-tuned from (given a one-step cost model, as ``benchmarks/vla_shield.py`` does).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import cmdp
from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.algorithms import load
from cmdp.envs.chores.catalog import ACTION_INDEX, ACTIONS
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.policies.encoders import obs_to_tensor
from cmdp.policies.vla import VLAPolicy

ROOT = Path(__file__).resolve().parents[1]
NUM_ENVS = 8


def collect(policy: VLAPolicy, steps: int, seed: int) -> tuple[np.ndarray, ...]:
    """Features ``[T, N, d]``, actions ``[T, N]``, costs ``[T, N, K]``, episode starts ``[T, N]``
    and the one-step cost model's prediction for the taken action ``[T, N, K]`` (``None``
    without one)."""
    env = cmdp.make("SafetyChores-Fetch-v0", num_envs=NUM_ENVS, seed=seed, **policy.env_kwargs)
    captured: dict[str, torch.Tensor] = {}
    hook = policy.trunk.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o.detach()))
    obs, _ = env.reset(seed=seed)
    state, start = None, np.ones(NUM_ENVS, dtype=bool)
    feats, actions, costs, starts, predicted = [], [], [], [], []
    try:
        for _ in range(steps // NUM_ENVS):
            with torch.no_grad():
                out = policy.act(obs_to_tensor(obs, env.observation_space), state, torch.from_numpy(start))
                action = out.dist.sample()
            state = out.state
            feats.append(captured["features"][:, 0].numpy().copy())
            if out.step_cost is not None:  # [N, 1, A, K] or [N, A, K]: the taken action's row
                per_action = out.step_cost.reshape(NUM_ENVS, -1, policy.num_costs)
                predicted.append(per_action[torch.arange(NUM_ENVS), action.reshape(-1)].numpy().copy())
            starts.append(start)
            obs, _, cost, term, trunc, _ = env.step(policy.to_env_action(action))
            actions.append(action.numpy().reshape(-1))
            costs.append(np.asarray(cost, dtype=np.float64).reshape(NUM_ENVS, -1))
            start = np.asarray(term) | np.asarray(trunc)
    finally:
        hook.remove()
        env.close()
    return np.stack(feats), np.stack(actions), np.stack(costs), np.stack(starts), (np.stack(predicted) if predicted else None)


def read_policy(path: Path, start: Path | None) -> VLAPolicy:
    """A pretrained VLA file, or the policy of a solver's run directory / checkpoint."""
    if path.is_dir() or path.name == "checkpoint.pt":
        if start is None:
            return load(path).policy
        # a checkpoint from before the architecture record: fill the network it started from
        return load(path, policy=VLAPolicy.from_pretrained(start, step_cost_model=True)).policy
    if start is not None:
        raise SystemExit("--start is for a solver's checkpoint; a VLA file holds its own architecture")
    return VLAPolicy.from_pretrained(path)


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for f, c in zip(first, counts):
        ranks[order[f : f + c]] = f + (c + 1) / 2
    pos = label.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_probe(x: np.ndarray, y: np.ndarray, iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by L-BFGS on standardised features. Returns the
    standardisation ([mean, std]) and the weights (bias last)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).float()
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1] + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = xt @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt) + 1e-3 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return np.stack([mean, std]), w.detach().numpy()


def probe_scores(train_x, train_y, test_x) -> np.ndarray:
    (mean, std), w = fit_probe(train_x, train_y)
    return ((test_x - mean) / std) @ w[:-1] + w[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--policy", type=Path, default=ROOT / "examples" / "assets" / "il_fetch" / "vla.pt",
        help="a pretrained VLA file, or a solver's run directory / checkpoint.pt",
    )
    parser.add_argument(
        "--start", type=Path, default=None,
        help="for a checkpoint without an architecture record: the VLA file it was fine-tuned from",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=32_000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--section", default="vla_cost_probe", help="the BENCHMARKS.md section --out writes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    policy = read_policy(args.policy, args.start).eval()
    t0 = time.perf_counter()
    feats, actions, costs, starts, predicted = collect(policy, args.steps, args.seed)
    seconds = time.perf_counter() - t0
    total = costs.sum()

    def shown(path: Path) -> Path:
        path = path.absolute()  # not resolve(): a run directory may be a link, show the name given
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    command = " ".join(
        ([f"--policy {shown(args.policy)}"] if args.policy.absolute() != parser.get_default("policy") else [])
        + ([f"--start {shown(args.start)}"] if args.start is not None else [])
        + [f"--steps {args.steps}"]
        + ([f"--seed {args.seed}"] if args.seed != parser.get_default("seed") else [])
        + ([f"--section {args.section}"] if args.section != "vla_cost_probe" else [])
    )

    rows = ["| action | share of cost | share of steps | cost per step |", "|---|---:|---:|---:|"]
    per_action = np.array([costs[actions == a].sum() for a in range(len(ACTIONS))])
    taken = np.array([(actions == a).sum() for a in range(len(ACTIONS))])
    for a in np.argsort(-per_action)[:6]:
        rows.append(
            f"| {ACTIONS[a]} | {per_action[a] / total:.0%} | {taken[a] / taken.sum():.1%} | "
            f"{per_action[a] / max(taken[a], 1):.3f} |"
        )

    hit = costs > 0
    previous = np.zeros_like(hit)
    previous[1:] = hit[:-1] & ~starts[1:, :, None]  # a new episode has no previous step
    bursts = ["| channel | steps with cost | previous step cost on it too |", "|---|---:|---:|"]
    for k, name in enumerate(COST_NAMES):
        n = int(hit[..., k].sum())
        bursts.append(f"| {name} | {n} | {(hit[..., k] & previous[..., k]).sum() / max(n, 1):.0%} |")

    # rollout order, env by env within a step: the held-out 30% comes after the fitted 70%
    move = actions.reshape(-1) == ACTION_INDEX["m"]
    x = feats.reshape(-1, feats.shape[-1])[move].astype(np.float64)
    c = costs.reshape(-1, costs.shape[-1])[move]
    cut = int(0.7 * len(x))
    # the fine-tune's own one-step cost model, scored on the same held-out moves
    own = None if predicted is None else predicted.reshape(-1, predicted.shape[-1])[move][cut:].clip(min=0)
    probe = [
        "| cost on a move | held-out moves with it | ROC AUC | riskiest 5% | 10% | 20% | 30% |"
        + ("" if own is None else " cost model's ROC AUC |"),
        "|---|---:|---:|---:|---:|---:|---:|" + ("" if own is None else "---:|"),
    ]
    for k, name in [*enumerate(COST_NAMES), (None, "any channel")]:
        y = (c.sum(1) if k is None else c[:, k]) > 0
        amount = c.sum(1) if k is None else c[:, k]
        if y[:cut].sum() < 10 or y[cut:].sum() < 5:
            probe.append(f"| {name} | {int(y[cut:].sum())} | too few | | | | |" + ("" if own is None else " |"))
            continue
        score = probe_scores(x[:cut], y[:cut], x[cut:])
        order = np.argsort(-score)
        held = amount[cut:]
        shares = [held[order[: int(f * len(order))]].sum() / held.sum() for f in (0.05, 0.10, 0.20, 0.30)]
        probe.append(
            f"| {name} | {int(y[cut:].sum())} ({y[cut:].mean():.1%}) | {roc_auc(score, y[cut:]):.3f} | "
            + " | ".join(f"{s:.0%}" for s in shares)
            + " |"
            + ("" if own is None else f" {roc_auc(own.sum(1) if k is None else own[:, k], y[cut:]):.3f} |")
        )

    text = "\n".join([
        machine_line(1),
        "",
        f"Command: `python benchmarks/vla_cost_probe.py {command}`. Policy `{shown(args.policy)}`, "
        f"sampled actions on SafetyChores-Fetch-v0 training episodes, {NUM_ENVS} envs, {actions.size:,} steps "
        f"({seconds:.0f} s); moves ahead: {int(move.sum()):,}, carrying {c.sum() / total:.0%} of all cost. The probe is "
        f"a logistic regression of the frozen transformer output ({feats.shape[-1]} features), fitted on the first 70% "
        "of the moves and scored on the rest; 'riskiest x%': the share of the held-out moves' cost on that channel "
        "carried by the x% of moves the probe ranks riskiest."
        + (
            "" if own is None else " 'cost model's ROC AUC': the policy's own one-step cost model, its prediction "
            "for the move (summed over the channels for 'any channel') scored on the same held-out moves."
        ),
        "",
        *rows,
        "",
        *bursts,
        "",
        *probe,
    ])  # fmt: skip
    title = "Where the VLA's cost comes from, and whether its features foresee it"
    publish(text, args.out, args.section, title if args.section == "vla_cost_probe" else f"{title} ({args.section})")


if __name__ == "__main__":
    main()
