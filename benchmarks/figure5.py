"""Reproduce the paper's Figure 5: memories on the partially observable Catch variants.

Two modes, both training through ``fw_agents.agent.train`` and writing into ``--out``:

* **seeds** (default): every memory with the same hyper-parameters (or, with ``--best-of
  DIR``, each memory's best trial of an earlier search in ``DIR``) and each of ``--seeds``;
  the plot shows mean ± std over seeds.
* **search** (``--trials N``): the paper's protocol (notes §5: "learning rate, number of
  inner steps, η and λ found by random search; curves average the top 5 runs"). Each
  memory gets ``N`` trials with hyper-parameters drawn from :func:`sample_hyperparameters`
  (trial ``i`` uses env seed ``i``); trials are ranked by the mean of their evaluation
  curve (area under it) and the plot shows mean ± std of the top ``--top`` trials.
  ``trials.md`` lists every trial.

Outputs: ``figure5_<env>.png`` (one line per memory) and ``figure5.md`` (env steps to first
reach a mean evaluation return of 0.9, and the final return). Finished runs are skipped,
so an interrupted command resumes where it stopped::

    python benchmarks/figure5.py --timesteps 500000 --seeds 0 1 2
    python benchmarks/figure5.py --trials 8 --top 5 --timesteps 400000 --envs CatchBlind16-v0 --threads 1
    python benchmarks/figure5.py --best-of runs/figure5 --envs CatchBlind24-v0 --seeds 100 101 --out runs/figure5-24
    python benchmarks/figure5.py --best-of benchmarks/figure5_best16.json --envs CatchBlind24-v0 --seeds 100 101
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fw_agents.agent import TrainConfig, train  # noqa: E402
from fw_agents.memory import MEMORY_NAMES  # noqa: E402

TARGET = 0.9
#: Before ``TrainConfig.memory_kwargs``, the fast-weights options were fields of their own:
#: old field -> core option (runs of an old search, old JSON tables).
LEGACY_FAST_FIELDS = dict(fast_lr="fast_lr", decay="decay", inner_steps="inner_steps", fast_normalize="normalize")
Curve = tuple[np.ndarray, np.ndarray]


def load_curve(run_dir: Path) -> Curve:
    """(env steps, mean evaluation return) from a run's ``evaluations.npz``."""
    data = np.load(run_dir / "evaluations.npz")
    return data["timesteps"], data["results"].mean(axis=1)


def steps_to_target(steps: np.ndarray, returns: np.ndarray, target: float = TARGET) -> float:
    hit = np.nonzero(returns >= target)[0]
    return float(steps[hit[0]]) if hit.size else float("nan")


def sample_hyperparameters(memory: str, rng: np.random.Generator) -> dict[str, Any]:
    """One random-search draw (``TrainConfig`` keyword arguments): the learning rate for every
    memory; η, λ and S for fast weights, as ``memory_kwargs``.

    Ranges: learning rate log-uniform in [1e-4, 3e-3]; η log-uniform in [1e-4, 0.1] (on
    Catch-v0, η >= 0.01 already stalled learning, see README); λ uniform in [0.5, 0.99];
    S in {1, 2}. η is the paper's absolute one (``normalize=False``), as the paper searched it.
    """
    params: dict[str, Any] = dict(learning_rate=float(math.exp(rng.uniform(math.log(1e-4), math.log(3e-3)))))
    if memory == "fastweights":
        params["memory_kwargs"] = dict(
            fast_lr=float(math.exp(rng.uniform(math.log(1e-4), math.log(0.1)))),
            decay=float(rng.uniform(0.5, 0.99)),
            inner_steps=int(rng.choice([1, 2])),
            normalize=False,
        )
    return params


def trial_params(entry: dict[str, Any], memory: str) -> dict[str, Any]:
    """The ``TrainConfig`` keyword arguments of a trial (``learning_rate``, ``memory_kwargs``) from
    its ``config.json`` or a best-of JSON entry, also in the old form with the fast-weights
    options as fields of their own (:data:`LEGACY_FAST_FIELDS`)."""
    params: dict[str, Any] = dict(learning_rate=entry["learning_rate"])
    if "memory_kwargs" in entry:
        memory_kwargs = dict(entry["memory_kwargs"])
    elif memory == "fastweights":
        memory_kwargs = {key: entry[old] for old, key in LEGACY_FAST_FIELDS.items() if old in entry}
    else:
        memory_kwargs = {}
    if memory_kwargs:
        params["memory_kwargs"] = memory_kwargs
    return params


def best_trial(search_dir: Path, memory: str) -> dict[str, Any]:
    """Hyper-parameters of ``memory``'s trial with the highest mean evaluation return in a search
    directory, or ``memory``'s entry of a JSON file ``{memory: {"learning_rate": .., "memory_kwargs":
    {..}}}`` (such as ``benchmarks/figure5_best16.json``, the search's winners on CatchBlind16-v0)."""
    if search_dir.suffix == ".json":
        table = json.loads(search_dir.read_text())
        if memory not in table:
            raise SystemExit(f"{search_dir} has no entry for {memory!r}; it has {', '.join(table)}")
        return trial_params(table[memory], memory)
    best: tuple[float, dict[str, Any]] | None = None
    for run_dir in sorted(search_dir.glob(f"*-{memory}-t*")):
        if not (run_dir / "evaluations.npz").exists():
            continue
        score = float(load_curve(run_dir)[1].mean())
        config = json.loads((run_dir / "config.json").read_text())
        if "memory_kwargs" not in config:
            config.setdefault("fast_normalize", False)  # runs from before it existed used the paper's η
        params = trial_params(config, memory)
        if best is None or score > best[0]:
            best = (score, params)
    if best is None:
        raise SystemExit(f"no finished {memory} trials in {search_dir}")
    return best[1]


def run(run_dir: Path, args: argparse.Namespace, env_id: str, memory: str, seed: int, **params: Any) -> Curve:
    """Train one run unless ``run_dir`` already holds a finished one; return its curve."""
    if not (run_dir / "evaluations.npz").exists() or not (run_dir / "model.zip").exists():
        config = TrainConfig(
            env=env_id, memory=memory, seed=seed, timesteps=args.timesteps, eval_freq=args.eval_freq,
            eval_episodes=args.eval_episodes, run_dir=str(run_dir), wandb="disabled", gif_episodes=0,
            progress_bar=False, threads=args.threads, **params,
        )  # fmt: skip
        train(config)
    return load_curve(run_dir)


def _steps_text(steps: float) -> str:
    return "not reached" if np.isnan(steps) else f"{steps:,.0f}"


def _params_text(params: dict[str, Any]) -> str:
    flat = {k: v for k, v in params.items() if k != "memory_kwargs"} | params.get("memory_kwargs", {})
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CatchBlind16-v0", "CatchBlind24-v0"])
    parser.add_argument("--memories", nargs="+", default=["fastweights", "lstm", "irnn"], choices=MEMORY_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds mode: env seeds")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate, help="seeds mode")
    parser.add_argument("--best-of", default=None,
                        help="seeds mode: each memory's best trial in this search dir, or a JSON of them")  # fmt: skip
    parser.add_argument("--trials", type=int, default=0, help="search mode: random-search trials per memory")
    parser.add_argument("--top", type=int, default=5, help="search mode: trials averaged in the plot")
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (TrainConfig.threads; default: torch's; 1 lets two commands "
                             "share 2 cores)")  # fmt: skip
    parser.add_argument("--out", default="runs/figure5")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    search = args.trials > 0

    spread = f"top {args.top} of {args.trials} trials" if search else "per seed"
    table = [f"| env | memory | steps to mean return ≥ 0.9 ({spread}) | final return (mean ± std) | best run |",
             "|---|---|---|---|---|"]  # fmt: skip
    trials_table = ["| env | memory | trial | hyper-parameters | mean eval return | final |", "|---|---|---|---|---|---|"]
    for env_id in args.envs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for memory in args.memories:
            runs: list[tuple[str, dict[str, Any], Curve]] = []
            if search:
                for trial in range(args.trials):
                    rng = np.random.default_rng([trial, MEMORY_NAMES.index(memory)])
                    params = sample_hyperparameters(memory, rng)
                    curve = run(out / f"{env_id}-{memory}-t{trial}", args, env_id, memory, trial, **params)
                    runs.append((f"t{trial}", params, curve))
                    trials_table.append(
                        f"| {env_id} | {memory} | {trial} | {_params_text(params)} | "
                        f"{curve[1].mean():.3f} | {curve[1][-1]:.3f} |"
                    )
                runs.sort(key=lambda r: -r[2][1].mean())  # area under the evaluation curve
                runs = runs[: args.top]
            else:
                params = best_trial(Path(args.best_of), memory) if args.best_of else dict(learning_rate=args.learning_rate)
                for seed in args.seeds:
                    runs.append((f"s{seed}", params, run(out / f"{env_id}-{memory}-s{seed}", args, env_id, memory, seed, **params)))
            n = min(len(c[0]) for _, _, c in runs)
            steps = runs[0][2][0][:n]
            returns = np.stack([c[1][:n] for _, _, c in runs])
            mean, std = returns.mean(axis=0), returns.std(axis=0)
            ax.plot(steps, mean, label=memory)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            reach = ", ".join(_steps_text(steps_to_target(*c)) for _, _, c in runs)
            final = returns[:, -1]
            best_name, best_params, _ = runs[0] if search else max(runs, key=lambda r: r[2][1].mean())
            table.append(
                f"| {env_id} | {memory} | {reach} | {final.mean():.3f} ± {final.std():.3f} | "
                f"{best_name}: {_params_text(best_params)} |"
            )
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        what = f"top {args.top} of {args.trials} trials" if search else f"{len(args.seeds)} seed(s)"
        ax.set(xlabel="env steps", ylabel="evaluation return", title=f"{env_id} ({what})", ylim=(-1.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"figure5_{env_id}.png", dpi=100)
        plt.close(fig)
    (out / "figure5.md").write_text("\n".join(table) + "\n")
    if search:
        (out / "trials.md").write_text("\n".join(trials_table) + "\n")
        print("\n".join(trials_table) + "\n")
    print("\n".join(table))
    (out / "command.json").write_text(json.dumps(vars(args), indent=2) + "\n")


if __name__ == "__main__":
    main()
