"""Reproduce Table 2 (multi-level glimpses) of Ba et al. (2016).

Runs IRNN, LSTM, the ConvNet baseline and the multi-level fast-weights model
with 50, 100 and 200 units/features for ``--steps`` updates each on MNIST-format
IDX files (MNIST cannot be fetched here; Debian's ``dataset-fashion-mnist``
installs Fashion-MNIST, a harder data set, in ``/usr/share/datasets/fashion-mnist``,
the default), then writes ``table2.md`` and ``summary.json`` into ``--out-dir``.
Cells already present are reused (``--force`` re-runs them).

    python benchmarks/table2_glimpses.py --steps 5000 --out-dir runs/table2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fw_agents.tasks import glimpses
from fw_agents.cli import HelpFormatter, OneLineArgumentParser, run_cli
from fw_agents.runs.files import write_text_atomically
from fw_agents.tasks.sweep import Cell, add_cell_arguments, cell_argv, markdown_table, run_grid

MODELS = ("irnn", "lstm", "convnet", "fastweights")
SIZES = (50, 100, 200)
LABELS = {"irnn": "IRNN", "lstm": "LSTM", "convnet": "ConvNet", "fastweights": "Fast weights (multi-level)"}
#: Table 2 of the paper (MNIST), test error with 50 / 100 / 200 features.
PAPER = {
    "irnn": ("12.95%", "1.95%", "1.42%"),
    "lstm": ("12%", "1.55%", "1.10%"),
    "convnet": ("1.81%", "1.00%", "0.9%"),
    "fastweights": ("7.21%", "1.30%", "0.85%"),
}
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="benchmarks/table2_glimpses.py", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help="folder of MNIST-format IDX files")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="units / features")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    parser.add_argument("--out-dir", default=None, help="default: runs/table2-<time>")
    parser.add_argument("--force", action="store_true", help="re-run cells that already have results")
    add_cell_arguments(parser, steps=5_000, eval_every=500)  # --steps: the budget of each cell
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = cell_argv(args, args.sizes)
    glimpses.load_dataset("mnist", args.data_dir)  # fail early, in one line, on missing data
    out_dir = Path(args.out_dir or f"runs/table2-{time.strftime('%Y%m%d-%H%M%S')}")
    common += ["--dataset", "mnist", "--data-dir", args.data_dir]
    if args.train_limit:
        common += ["--train-limit", str(args.train_limit)]
    cells = [
        Cell(model, size, ("--memory", model, "--hidden", str(size), *common))
        for model in args.models
        for size in args.sizes
    ]
    results = run_grid(glimpses.main, cells, out_dir, force=args.force)

    table = markdown_table(results, args.models, args.sizes, PAPER, LABELS, size_label="features")
    note = (
        f"Multi-level glimpses (24 glimpses of 7x7), data: `{args.data_dir}`; test error at the best "
        f"validation checkpoint, budget {args.steps} updates per cell (batch {args.batch_size}, Adam lr {args.lr}). "
        f"The paper's numbers (in parentheses) are on MNIST; Fashion-MNIST errors are several times higher.\n\n"
    )
    write_text_atomically(out_dir / "table2.md", "# Table 2: multi-level glimpses\n\n" + note + table)
    summary = {f"{m}-{s}": r for (m, s), r in results.items()}
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(note + table)
    print(f"written: {out_dir / 'table2.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
