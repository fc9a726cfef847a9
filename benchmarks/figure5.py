"""Reproduce the paper's Figure 5: memories x seeds on the partially observable Catch variants.

For each variant, trains every memory with every seed through ``fw_agents.agent.train``
(same hyper-parameters for all memories, so the comparison differs only in the core),
then writes into ``--out``:

* ``figure5_<env>.png``: mean ± std (over seeds) of the evaluation return vs env steps,
  one line per memory;
* ``figure5.md``: env steps to first reach a mean evaluation return of 0.9, and the
  final return, per memory and variant.

    python benchmarks/figure5.py --timesteps 500000 --seeds 0 1 2 \
        --memories fastweights lstm irnn --envs CatchBlind16-v0 CatchBlind24-v0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fw_agents.agent import TrainConfig, train  # noqa: E402

TARGET = 0.9


def load_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, mean evaluation return) from a run's ``evaluations.npz``."""
    data = np.load(run_dir / "evaluations.npz")
    return data["timesteps"], data["results"].mean(axis=1)


def steps_to_target(steps: np.ndarray, returns: np.ndarray, target: float = TARGET) -> float:
    hit = np.nonzero(returns >= target)[0]
    return float(steps[hit[0]]) if hit.size else float("nan")


def _steps_text(steps: float) -> str:
    return "not reached" if np.isnan(steps) else f"{steps:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CatchBlind16-v0", "CatchBlind24-v0"])
    parser.add_argument("--memories", nargs="+", default=["fastweights", "lstm", "irnn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--out", default="runs/figure5")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = ["| env | memory | steps to mean return ≥ 0.9 (per seed) | final return (mean ± std) |", "|---|---|---|---|"]
    for env_id in args.envs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for memory in args.memories:
            curves = []
            for seed in args.seeds:
                run_dir = out / f"{env_id}-{memory}-s{seed}"
                if not (run_dir / "evaluations.npz").exists() or not (run_dir / "model.zip").exists():
                    config = TrainConfig(
                        env=env_id, memory=memory, seed=seed, timesteps=args.timesteps, eval_freq=args.eval_freq,
                        eval_episodes=args.eval_episodes, learning_rate=args.learning_rate, run_dir=str(run_dir),
                        wandb="disabled", gif_episodes=0, progress_bar=False,
                    )  # fmt: skip
                    train(config)
                curves.append(load_curve(run_dir))
            n = min(len(c[0]) for c in curves)
            steps = curves[0][0][:n]
            returns = np.stack([c[1][:n] for c in curves])
            mean, std = returns.mean(axis=0), returns.std(axis=0)
            ax.plot(steps, mean, label=memory)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            reach = ", ".join(_steps_text(steps_to_target(*c)) for c in curves)
            final = returns[:, -1]
            table.append(f"| {env_id} | {memory} | {reach} | {final.mean():.3f} ± {final.std():.3f} |")
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="env steps", ylabel="evaluation return", title=f"{env_id} ({len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''})", ylim=(-1.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"figure5_{env_id}.png", dpi=100)
        plt.close(fig)
    (out / "figure5.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
