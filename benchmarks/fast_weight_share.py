#!/usr/bin/env python
"""How much of the fast-weights core's drive comes from the fast memory, across widths,
decays and episode lengths: the paper's absolute η (``fast_lr``) against η as a share (``fast_share``).

At step ``t`` of Eq. 5 the layer norm sees ``z + A(t-1) h_s`` with ``z = W h(t-1) + C x(t)``;
this measures the ratio ``|A(t-1) h_0| / |z|`` (median over 256 sequences) for a freshly
initialised core fed ReLU features of an untrained 128-unit encoder (``relu`` of a unit
normal, as the policy's input layer gives), after ``t`` steps of the same episode. A
setting "transfers" when the ratio stays in one band as ``H``, λ and ``t`` change::

    python benchmarks/fast_weight_share.py            # writes docs/fast_weight_share.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fw_agents.cli import OneLineArgumentParser, run_cli
from fw_agents.runs.files import write_text_atomically
from fw_agents.memory import FastWeightsRNN

WIDTHS = (32, 64, 128, 256, 512)
DECAYS = (0.8, 0.95, 0.99)
LENGTHS = (4, 16, 64, 256)


@torch.no_grad()
def drive_ratio(core: FastWeightsRNN, steps: int, batch: int = 256, features: int = 128) -> float:
    """Median over ``batch`` sequences of ``|A(t-1) h_0(t)| / |z(t)|`` at ``t = steps``."""
    x = torch.relu(torch.randn(steps, batch, features))
    _, (h, A) = core(x[:-1])
    z = h @ core.slow_weights.T + core.C(x[-1])
    h0 = torch.relu(z)
    fast = torch.einsum("bij,bj->bi", A, h0)
    return float((fast.norm(dim=1) / z.norm(dim=1)).median())


def table(eta: str, value: float, seed: int = 0) -> list[str]:
    """Markdown rows: one per (decay, length), one column per width."""
    rows = ["| λ | t | " + " | ".join(f"H={h}" for h in WIDTHS) + " |", "|---|---|" + "---|" * len(WIDTHS)]
    for decay in DECAYS:
        for steps in LENGTHS:
            cells = []
            for width in WIDTHS:
                torch.manual_seed(seed)
                core = FastWeightsRNN(128, width, **{eta: value}, decay=decay)
                cells.append(f"{drive_ratio(core, steps):.3g}")
            rows.append(f"| {decay} | {steps} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/fast_weight_share.md", help="the markdown file to write")
    args = parser.parse_args(argv)
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; give the markdown file to write")
    torch.set_num_threads(1)
    lines = [
        "# Fast memory's share of the drive, `|A(t-1) h_0| / |z|`, at initialisation",
        "",
        "`python benchmarks/fast_weight_share.py` (median over 256 sequences; see the script's docstring).",
        "",
        "## The paper's η = 0.5 (`fast_lr=0.5`)",
        "",
        *table("fast_lr", 0.5),
        "",
        "## `fast_share=1`",
        "",
        *table("fast_share", 1.0),
        "",
    ]
    write_text_atomically(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
