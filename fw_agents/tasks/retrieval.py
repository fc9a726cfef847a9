"""Associative retrieval (paper §4.1, Table 1) as a supervised head on a memory core.

Task: K key/value pairs, keys letters ``a``-``z`` drawn without replacement,
values digits ``0``-``9``, then the separator ``??`` and one of the K keys;
the target is that key's digit. With K = 4: ``c9k8j3f1??c -> 9`` (2K + 3 = 11
tokens; vocabulary 26 letters + 10 digits + ``?`` = 37).

Model (paper §4.1): token -> learned 50-d embedding expanded linearly to
100-d -> one memory core of R units -> its output at the last step -> 100 ReLUs
-> softmax over the 10 digits; Adam, batch 128, checkpoint chosen on
validation, test error reported there.

Command::

    python -m fw_agents.tasks.retrieval --memory fastweights --hidden 20 --steps 20000 --wandb disabled
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fw_agents.cli import run_interruptible
from fw_agents.fields import option
from fw_agents.memory import MEMORY_NAMES, make_memory
from fw_agents.tasks.cli import TRAINING_STATE, FastWeightsOptions, check_resume, parse_task_args, setup_task, task_parser
from fw_agents.tasks.training import Split, preflight, train_classifier, write_outputs
from fw_agents.validation import check_choice, check_int

NUM_LETTERS = 26
NUM_DIGITS = 10
#: Token ids: letters a-z -> 0..25, digits 0-9 -> 26..35, "?" -> 36.
DIGIT_OFFSET = NUM_LETTERS
SEPARATOR = NUM_LETTERS + NUM_DIGITS
VOCAB_SIZE = NUM_LETTERS + NUM_DIGITS + 1  # 37
#: Paper's split sizes (train, validation, test).
SPLIT_SIZES: tuple[int, int, int] = (100_000, 10_000, 20_000)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def sequence_length(num_pairs: int) -> int:
    """Tokens per example: ``2K`` key/value tokens, ``??`` and the query key."""
    return 2 * num_pairs + 3


def generate_examples(n: int, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` retrieval examples (vectorised; ~0.1 s for 100,000).

    :param n: Number of examples.
    :param num_pairs: K, number of key/value pairs (1..26).
    :param rng: Source of randomness.
    :return: Tokens ``int64 [n, 2K+3]`` and targets ``int64 [n]`` (digits 0-9).
    """
    # K distinct letters per row: the first K columns of a random permutation of 26
    keys = np.argsort(rng.random((n, NUM_LETTERS)), axis=1)[:, :num_pairs]
    values = rng.integers(0, NUM_DIGITS, size=(n, num_pairs))
    which = rng.integers(0, num_pairs, size=n)
    tokens = np.empty((n, sequence_length(num_pairs)), dtype=np.int64)
    tokens[:, 0 : 2 * num_pairs : 2] = keys
    tokens[:, 1 : 2 * num_pairs : 2] = values + DIGIT_OFFSET
    tokens[:, 2 * num_pairs : 2 * num_pairs + 2] = SEPARATOR
    rows = np.arange(n)
    tokens[:, -1] = keys[rows, which]
    return tokens, values[rows, which].astype(np.int64)


def _encode(tokens: np.ndarray) -> np.ndarray:
    """One int64 per sequence (base-37 digits), for duplicate detection (37**11 < 2**63)."""
    code = np.zeros(tokens.shape[0], dtype=np.int64)
    for column in range(tokens.shape[1]):
        code = code * VOCAB_SIZE + tokens[:, column]
    return code


def make_splits(
    num_pairs: int = 4,
    sizes: Sequence[int] = SPLIT_SIZES,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed train/validation/test sets: deterministic in ``seed``, pairwise disjoint.

    Each split has its own random stream (``default_rng([seed, i])``); examples that
    already occur in an earlier split (or earlier in the same split) are dropped and
    replaced, so no sequence appears twice anywhere.

    :param num_pairs: K.
    :param sizes: Number of examples of train, validation and test.
    :param seed: Data seed (independent of the model's seed).
    :return: ``{"train": (tokens, targets), "val": ..., "test": ...}``.
    """
    check_int("num-pairs", num_pairs, 1, NUM_LETTERS)
    if len(sizes) != 3:
        raise ValueError(f"split sizes must be three integers >= 1, got {tuple(sizes)!r}")
    sizes = [check_int(f"{name} size", size) for name, size in zip(SPLIT_NAMES, sizes)]
    check_int("data-seed", seed, 0)
    seen = np.empty(0, dtype=np.int64)
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for index, (name, size) in enumerate(zip(SPLIT_NAMES, sizes)):
        rng = np.random.default_rng([seed, index])
        tokens_parts: list[np.ndarray] = []
        targets_parts: list[np.ndarray] = []
        have = 0
        for _ in range(100):
            tokens, targets = generate_examples(size - have + size // 100 + 16, num_pairs, rng)
            codes = _encode(tokens)
            _, first = np.unique(codes, return_index=True)
            first.sort()  # keep the first occurrence, in generation order
            first = first[~np.isin(codes[first], seen)]
            take = first[: size - have]
            tokens_parts.append(tokens[take])
            targets_parts.append(targets[take])
            seen = np.concatenate([seen, codes[take]])
            have += take.size
            if have == size:
                break
        else:  # only reachable when the task has fewer distinct sequences than requested
            raise ValueError(f"cannot draw {size} distinct {name} examples with num-pairs={num_pairs}")
        splits[name] = (np.concatenate(tokens_parts), np.concatenate(targets_parts))
    return splits


def decode(tokens: Sequence[int]) -> str:
    """Readable form of one example, e.g. ``"c9k8j3f1??c"``."""
    chars = []
    for token in tokens:
        token = int(token)
        if token < NUM_LETTERS:
            chars.append(chr(ord("a") + token))
        elif token < SEPARATOR:
            chars.append(str(token - DIGIT_OFFSET))
        elif token == SEPARATOR:
            chars.append("?")
        else:
            raise ValueError(f"token {token} outside the vocabulary of {VOCAB_SIZE}")
    return "".join(chars)


class RetrievalModel(nn.Module):
    """Embedding -> memory core -> 100 ReLUs -> 10 logits (paper §4.1).

    :param memory: Name of the memory core (see :data:`fw_agents.memory.MEMORY_NAMES`).
    :param hidden_size: R, the core's number of units.
    :param embed_size: Size of the learned token embedding (paper: 50).
    :param input_size: Size it is linearly expanded to, the core's input (paper: 100).
    :param head_size: ReLU units between the core and the softmax (paper: 100).
    :param memory_kwargs: Extra arguments of the core (e.g. ``decay=0.9`` for fast weights).
    """

    def __init__(
        self,
        memory: str,
        hidden_size: int,
        embed_size: int = 50,
        input_size: int = 100,
        head_size: int = 100,
        memory_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, embed_size)
        self.expand = nn.Linear(embed_size, input_size)
        self.core = make_memory(memory, input_size, hidden_size, **(memory_kwargs or {}))
        self.head = nn.Sequential(nn.Linear(hidden_size, head_size), nn.ReLU(), nn.Linear(head_size, NUM_DIGITS))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """:param tokens: ``int64 [B, T]``. :return: logits ``[B, 10]``."""
        # expand(embed(token)) for the 37 tokens only, then look up: same values and
        # gradients as expanding every position, ~T*B/37 times fewer multiply-adds
        table = self.expand(self.embed.weight)  # [37, 100]
        x = nn.functional.embedding(tokens.t(), table)  # [T, B, 100], time-major for the core
        y = self.core.outputs(x)  # the final state is y[-1]'s h; A is not needed
        return self.head(y[-1])


@dataclass(kw_only=True)
class RetrievalConfig(FastWeightsOptions):
    """Everything one retrieval run depends on besides the training loop (the command's own
    flags; the fast-weights options from :class:`FastWeightsOptions`)."""

    memory: str = option("fastweights", choices=MEMORY_NAMES, help="memory core")
    hidden: int = option(20, help="R, number of recurrent units")
    num_pairs: int = option(4, help="K, key/value pairs per example")
    data_seed: int = option(0, help="seed of the fixed data sets")
    decay: float | None = option(0.9, help="fast weights: lambda (paper: 0.9 here)")

    def __post_init__(self) -> None:
        check_choice("memory", self.memory, MEMORY_NAMES)
        self.check_fast_weights_flags()
        check_int("hidden", self.hidden)
        check_int("num-pairs", self.num_pairs, 1, NUM_LETTERS)
        check_int("data-seed", self.data_seed, 0)


def load_splits(config: RetrievalConfig, device: torch.device) -> dict[str, Split]:
    """The fixed data sets as tensors on ``device``."""
    return {
        name: Split(torch.from_numpy(tokens), torch.from_numpy(targets)).to(device)
        for name, (tokens, targets) in make_splits(config.num_pairs, seed=config.data_seed).items()
    }


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    return task_parser(
        "python -m fw_agents.tasks.retrieval",
        "Associative retrieval (Ba et al. 2016, Table 1) with one memory core.",
        RetrievalConfig,
        steps=20_000,
        eval_every=1_000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train and evaluate one model; write the run directory. Bad input is one line (exit 2), a
    non-finite loss one line (exit 1); Ctrl-C or SIGTERM saves the training state (``--resume``
    continues it). :return: exit status."""
    return run_interruptible(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    setup = setup_task(RetrievalConfig, parse_task_args(build_parser, argv))
    task, train_config, device = setup.task, setup.training, setup.device

    tick = time.perf_counter()
    splits = load_splits(task, device)
    data_seconds = time.perf_counter() - tick

    def build_model() -> RetrievalModel:
        return RetrievalModel(task.memory, task.hidden, memory_kwargs=task.memory_kwargs())

    preflight(build_model, train_config, len(splits["train"]), sequence_length(task.num_pairs),
              f"--hidden {task.hidden}", device)  # fmt: skip
    torch.manual_seed(train_config.seed)
    model = build_model().to(device)

    config = {"task": "retrieval", **asdict(task), **asdict(train_config), "device": str(device)}
    tags = ("retrieval", task.memory)
    resume_step = check_resume(setup.tracking, config)  # before the folder's config.json is rewritten
    with setup.tracking.start(f"retrieval-{task.memory}-R{task.hidden}", config, tags, continue_at=resume_step,
                              sb3_logger=False, step_column="train/updates") as run:  # fmt: skip
        results = train_classifier(model, splits["train"], splits["val"], splits["test"], train_config, run.tracker,
                                   checkpoint=run.path / TRAINING_STATE,
                                   resume=setup.tracking.resume is not None)  # fmt: skip
        results = {"task": "retrieval", **asdict(task), "data_seconds": data_seconds, **results}
        paths = write_outputs(run.path, results, model, f"retrieval: {task.memory}, R={task.hidden}", run.tracker)
    print(
        f"{task.memory} R={task.hidden}: test error {100 * results['test_error']:.2f}% "
        f"(NLL {results['test_nll']:.4f}) at update {results['best_updates']} of {train_config.steps}, "
        f"{1000 * results['sec_per_update']:.2f} ms/update -> {paths['results']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
