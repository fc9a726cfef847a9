"""Reproduce Table 1 (associative retrieval) and Figure 2 of Ba et al. (2016).

Runs fast weights, LSTM, A-LSTM and IRNN with R in {20, 50, 100} recurrent units
for ``--steps`` updates each, then writes into ``--out-dir``:

* ``table1.md``: test error at the best validation checkpoint beside the
  paper's number, with the updates it took and each cell's wall-clock;
* ``figure2_test_nll_R50.png``: test NLL against updates at R = 50;
* ``summary.json``: every cell's results.

Cells already present in ``--out-dir`` are reused (``--force`` re-runs them).
The paper trained for up to ~700k updates; a CPU budget is far smaller, so
state the budget next to the numbers.

    python benchmarks/table1_retrieval.py --steps 20000 --out-dir runs/table1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fw_agents.tasks import retrieval
from fw_agents.cli import HelpFormatter, OneLineArgumentParser, run_cli
from fw_agents.runs.files import atomic_path, write_text_atomically
from fw_agents.tasks.sweep import Cell, add_cell_arguments, cell_argv, markdown_table, run_grid

MODELS = ("fastweights", "lstm", "alstm", "irnn")
SIZES = (20, 50, 100)
LABELS = {"fastweights": "Fast weights", "lstm": "LSTM", "alstm": "A-LSTM", "irnn": "IRNN"}
#: Table 1 of the paper, test error, R = 20 / 50 / 100.
PAPER = {
    "irnn": ("62.11%", "60.23%", "0.34%"),
    "lstm": ("60.81%", "1.85%", "0%"),
    "alstm": ("60.13%", "1.62%", "0%"),
    "fastweights": ("1.81%", "0%", "0%"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="benchmarks/table1_retrieval.py", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="values of R")
    parser.add_argument("--out-dir", default=None, help="default: runs/table1-<time>")
    parser.add_argument("--force", action="store_true", help="re-run cells that already have results")
    add_cell_arguments(parser, steps=20_000, eval_every=1_000)  # --steps: the budget of each cell
    return parser


def plot_figure2(results: dict, models: Sequence[str], path: Path, size: int = 50) -> bool:
    """Test NLL against updates at R = ``size`` for each model; False when no such run."""
    from matplotlib.figure import Figure  # drawn off-screen: no pyplot, the user's backend untouched

    curves = {m: results[(m, size)]["curve"] for m in models if "curve" in results.get((m, size), {})}
    if not curves:
        return False
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for model, curve in curves.items():
        ax.plot([e["updates"] for e in curve], [e["test_nll"] for e in curve], label=LABELS[model])
    ax.set(xlabel="updates", ylabel="test negative log-likelihood", title=f"Associative retrieval, R = {size}")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = cell_argv(args, args.sizes)
    out_dir = Path(args.out_dir or f"runs/table1-{time.strftime('%Y%m%d-%H%M%S')}")
    cells = [
        Cell(model, size, ("--memory", model, "--hidden", str(size), *common))
        for model in args.models
        for size in args.sizes
    ]
    results = run_grid(retrieval.main, cells, out_dir, force=args.force)

    table = markdown_table(results, args.models, args.sizes, PAPER, LABELS, size_label="R")
    note = (
        f"Associative retrieval (K=4), test error at the best validation checkpoint; "
        f"budget {args.steps} updates per cell (batch {args.batch_size}, Adam lr {args.lr}; the paper trained up to ~700k); "
        f"paper's Table 1 in parentheses.\n\n"
    )
    write_text_atomically(out_dir / "table1.md", "# Table 1: associative retrieval\n\n" + note + table)
    if 50 in args.sizes:
        plot_figure2(results, args.models, out_dir / "figure2_test_nll_R50.png")
    summary = {f"{m}-{s}": r for (m, s), r in results.items()}
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(note + table)
    print(f"written: {out_dir / 'table1.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
