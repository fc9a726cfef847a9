"""The supervised training loop shared by the task heads (retrieval, glimpses).

Adam on mini-batches drawn from tensors already on the device (no DataLoader:
the data sets are small and in memory, and per-update Python overhead matters
more than anything else at R = 20 units). Evaluates validation and test error
and negative log-likelihood every ``eval_every`` updates, keeps the parameters
of the best validation checkpoint and reports the test error there (the
paper's protocol for Tables 1-2), and writes ``results.json``,
``curves.png`` and ``best_model.pt`` into the run directory.

With a ``checkpoint`` path, the whole training state (model, optimizer, batch
order, curve, best checkpoint) is saved there atomically at every evaluation; a
run stopped by Ctrl-C, SIGTERM or a crash continues from the last one with
``resume=True`` and ends exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fw_agents.fields import option
from fw_agents.runs.errors import NonFiniteError
from fw_agents.runs.files import atomic_path, write_text_atomically
from fw_agents.runs.preflight import check_model_memory
from fw_agents.runs.tracking import Tracker
from fw_agents.validation import check_float, check_int

#: Largest seed torch's generators take.
MAX_SEED = 2**64 - 1


@dataclass
class Split:
    """One split of a data set, already on the training device.

    :param x: Inputs ``[N, ...]`` in whatever form the model takes (tokens, uint8 images).
    :param y: Integer class targets ``[N]``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"split has {self.x.shape[0]} inputs but {self.y.shape[0]} targets")
        if self.x.shape[0] == 0:
            raise ValueError("split is empty")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """This split on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class SupervisedConfig:
    """Hyper-parameters of :func:`train_classifier`, and the training flags of every task
    command (generated from these fields by :func:`fw_agents.tasks.cli.add_training_args`,
    each task with its own defaults for the first four)."""

    steps: int = option(10_000, help="number of parameter updates")
    batch_size: int = option(128, help="mini-batch size (paper: 128)")
    lr: float = option(1e-3, help="Adam learning rate")
    eval_every: int = option(500, help="updates between evaluations (also the logging period)")
    eval_batch_size: int = option(2_000, help="evaluation batch size (memory only; results do not depend on it)", cli=False)
    seed: int = option(0, help="seed of the model initialisation and batch order")
    grad_clip: float | None = option(None, help="clip the global gradient norm to this value (None or 0: off)")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            check_int(name.replace("_", "-"), getattr(self, name))
        check_float("lr", self.lr, 0)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.grad_clip is not None:
            check_float("grad-clip", self.grad_clip, 0, low_inclusive=True)


def check_batch_size(config: SupervisedConfig, n_train: int) -> int:
    """:return: ``config.batch_size``. :raises ValueError: It is more than the ``n_train``
    training examples (each update would be the whole set, silently)."""
    if config.batch_size > n_train:
        raise ValueError(f"--batch-size {config.batch_size} is more than the {n_train} training examples; "
                         f"choose 1..{n_train}")  # fmt: skip
    return config.batch_size


def preflight(
    build_model: Callable[[], nn.Module], config: SupervisedConfig, n_train: int, sequence_length: int, sizes: str,
    device: torch.device,
) -> None:  # fmt: skip
    """A task command's checks before it builds the model or writes anything: the batch fits the
    training set and training fits in memory (:func:`fw_agents.runs.preflight.check_model_memory`).

    :param build_model: Builds the model (run on the ``meta`` device: nothing allocated).
    :param config: The training loop's config.
    :param n_train: Training examples.
    :param sequence_length: Steps per example.
    :param sizes: The task's flags that set the model's size (``"--hidden 20"``).
    :param device: Where the run computes.
    :raises ValueError: One line naming the flag and what would fit.
    """
    check_batch_size(config, n_train)
    check_model_memory(build_model, config.batch_size, sequence_length,
                       f"{sizes}, --batch-size {config.batch_size} x {sequence_length} steps", device)  # fmt: skip


def _adam(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam, with the fused kernel where torch has one for ``device`` (fewer launches per update)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 2_000) -> tuple[float, float]:
    """Classification error and mean negative log-likelihood (nats) of ``model`` on ``split``.

    :param model: Maps a batch of inputs to logits ``[B, C]``.
    :param split: The data.
    :param batch_size: Evaluation batch size.
    :return: ``(error, nll)``; error is a fraction in [0, 1].
    """
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), device=split.y.device)
    nll = torch.zeros((), device=split.y.device, dtype=torch.float64)
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)
        nll += F.cross_entropy(logits, y, reduction="sum").double()
        wrong += (logits.argmax(dim=1) != y).sum()
    model.train(was_training)
    return wrong.item() / len(split), nll.item() / len(split)


def train_classifier(
    model: nn.Module,
    train: Split,
    val: Split,
    test: Split,
    config: SupervisedConfig,
    tracker: Tracker | None = None,
    on_eval: Callable[[Mapping[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``model`` with Adam and cross-entropy; select the best validation checkpoint.

    :param model: Maps a batch of inputs (``split.x[idx]``) to logits ``[B, C]``.
    :param train: Training split (on the model's device).
    :param val: Validation split, used for checkpoint selection.
    :param test: Test split, reported at every evaluation and at the best checkpoint.
    :param config: Hyper-parameters.
    :param tracker: Where curves go (progress.csv, TensorBoard, W&B); ``None``: nowhere.
    :param on_eval: Optional callback with each evaluation's record.
    :param checkpoint: Where the training state is saved at every evaluation (update 0
        included); ``None``: never.
    :param resume: Continue from ``checkpoint`` (which must exist, with the same settings but
        ``steps``, which may grow).
    :raises ValueError: ``resume`` without a readable checkpoint, or with other settings; a
        ``batch_size`` over the training set's size (:func:`check_batch_size`).
    :return: Results: best checkpoint's ``val_error``/``test_error``/``test_nll``, the curve
        (one record per evaluation), timings (``sec_per_update`` excludes evaluation).
        ``model`` is left holding the best checkpoint's parameters.
    """
    device = train.y.device
    optimizer = _adam(model, config.lr, device)
    generator = torch.Generator().manual_seed(config.seed)
    n_train = len(train)
    batch_size = check_batch_size(config, n_train)

    curve: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_error": math.inf, "val_nll": math.inf}
    best_state: dict[str, torch.Tensor] | None = None
    loss_sum = torch.zeros((), device=device)
    wrong_sum = torch.zeros((), device=device)
    seen_since_eval = 0
    train_time = 0.0
    start_wall = time.perf_counter()

    def record_eval(updates: int) -> None:
        nonlocal best_state, seen_since_eval  # loss_sum and wrong_sum are zeroed in place
        val_error, val_nll = evaluate(model, val, config.eval_batch_size)
        test_error, test_nll = evaluate(model, test, config.eval_batch_size)
        entry = {
            "updates": updates,
            "val_error": val_error,
            "val_nll": val_nll,
            "test_error": test_error,
            "test_nll": test_nll,
            "elapsed_s": time.perf_counter() - start_wall,
        }
        if seen_since_eval:
            entry["train_loss"] = loss_sum.item() / seen_since_eval
            entry["train_error"] = wrong_sum.item() / seen_since_eval
        if updates:
            entry["sec_per_update"] = train_time / updates
        loss_sum.zero_()
        wrong_sum.zero_()
        seen_since_eval = 0
        curve.append(entry)
        if (val_error, val_nll) < (best["val_error"], best["val_nll"]):
            best.update(entry)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if tracker is not None:
            tracker.log_scalars(
                {
                    "train/updates": updates,
                    **({"train/loss": entry["train_loss"], "train/error": entry["train_error"]} if "train_loss" in entry else {}),
                    "val/error": val_error,
                    "val/nll": val_nll,
                    "test/error": test_error,
                    "test/nll": test_nll,
                    "best/val_error": best["val_error"],
                    "best/test_error": best["test_error"],
                    "time/elapsed_s": entry["elapsed_s"],
                    **({"time/sec_per_update": entry["sec_per_update"]} if updates else {}),
                },
                step=updates,
            )
        if on_eval is not None:
            on_eval(entry)

    def state(update: int) -> dict[str, Any]:
        return dict(
            update=update, config=asdict(config), model=model.state_dict(), optimizer=optimizer.state_dict(),
            generator=generator.get_state(), perm=perm.cpu(), cursor=cursor, curve=curve, best=best,
            best_state=best_state, train_time=train_time, elapsed=time.perf_counter() - start_wall,
            loss_sum=loss_sum.item(), wrong_sum=wrong_sum.item(), seen_since_eval=seen_since_eval,
        )  # fmt: skip

    model.train()
    perm = torch.randperm(n_train, generator=generator).to(device)
    cursor, first = 0, 1
    if resume:
        saved = load_training_state(checkpoint, config)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        perm, cursor, first = saved["perm"].to(device), saved["cursor"], saved["update"] + 1
        curve[:], best_state, train_time = saved["curve"], saved["best_state"], saved["train_time"]
        best.update(saved["best"])
        start_wall -= saved["elapsed"]
        loss_sum.fill_(saved["loss_sum"])
        wrong_sum.fill_(saved["wrong_sum"])
        seen_since_eval = saved["seen_since_eval"]
    else:
        record_eval(0)
        if checkpoint is not None:
            save_training_state(checkpoint, state(0))
    saved_at, update = first - 1, first - 1
    try:
        for update in range(first, config.steps + 1):
            tick = time.perf_counter()
            if cursor + batch_size > n_train:  # new epoch: reshuffle
                perm = torch.randperm(n_train, generator=generator).to(device)
                cursor = 0
            idx = perm[cursor : cursor + batch_size]
            cursor += batch_size
            x, y = train.x[idx], train.y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():  # accumulate on device: no host sync per update
                loss_sum += loss.detach() * y.shape[0]
                wrong_sum += (logits.detach().argmax(dim=1) != y).sum()
            seen_since_eval += y.shape[0]
            if device.type == "cuda" and update % config.eval_every == 0:
                torch.cuda.synchronize(device)
            train_time += time.perf_counter() - tick
            if update % config.eval_every == 0 or update == config.steps:
                # before the evaluation is logged or saved: a NaN model never becomes "best"
                # and the training state on disk stays the last finite one
                _check_finite(model, loss_sum, update, config, checkpoint, saved_at)
                record_eval(update)
                if checkpoint is not None:
                    save_training_state(checkpoint, state(update))
                    saved_at = update
    except KeyboardInterrupt:
        # The state saved at the last evaluation is whole; one taken now could be mid-update.
        if checkpoint is not None:
            print(f"\ninterrupted at update {update}; the training state of update {saved_at} is in {checkpoint}",
                  file=sys.stderr)  # fmt: skip
        raise
    return _results(model, best, best_state, curve, config, train_time, start_wall)


def _check_finite(
    model: nn.Module, loss_sum: torch.Tensor, update: int, config: SupervisedConfig, checkpoint: Path | None,
    saved_at: int,
) -> None:  # fmt: skip
    """Raise :class:`NonFiniteError` if the loss since the last evaluation or a parameter is
    not finite (one host sync, at an evaluation, which syncs anyway)."""
    params_finite = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if params_finite and math.isfinite(loss_sum.item()):
        return
    what = "parameters" if not params_finite else "loss"
    kept = f"; the training state of update {saved_at} is in {checkpoint}" if checkpoint is not None else ""
    raise NonFiniteError(
        f"non-finite {what} by update {update} (lr {config.lr:g}); training stopped: lower --lr or set "
        f"--grad-clip{kept}"
    )


def _results(
    model: nn.Module, best: dict[str, Any], best_state: dict[str, torch.Tensor] | None, curve: list[dict[str, float]],
    config: SupervisedConfig, train_time: float, start_wall: float,
) -> dict[str, Any]:  # fmt: skip
    """The results of a finished run; ``model`` gets the best checkpoint's parameters."""
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "best_updates": best["updates"],
        "val_error": best["val_error"],
        "val_nll": best["val_nll"],
        "test_error": best["test_error"],
        "test_nll": best["test_nll"],
        "final_test_error": curve[-1]["test_error"],
        "final_test_nll": curve[-1]["test_nll"],
        "updates": config.steps,
        "sec_per_update": train_time / config.steps,
        "wall_clock_s": time.perf_counter() - start_wall,
        "train_config": asdict(config),
        "curve": curve,
    }


def save_training_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a :func:`train_classifier` checkpoint atomically (a kill mid-save keeps the last one)."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_training_state(path: Path | None, config: SupervisedConfig) -> dict[str, Any]:
    """A checkpoint of :func:`save_training_state`, read as plain tensors and numbers
    (``weights_only``: no code runs from the file).

    :raises ValueError: None there, unreadable, or made with other settings than ``config``
        (``steps`` aside: a resumed run may train longer).
    """
    if path is None or not path.is_file():
        raise ValueError(f"no training state to resume at {str(path)!r}; the run saves one at every evaluation")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # a CUDA run resumes on CPU too
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file
        raise ValueError(f"cannot read training state {str(path)!r}: {type(error).__name__}: {error}") from None
    now, then = asdict(config), dict(saved["config"])
    for key in now.keys() - {"steps"}:
        if now[key] != then.get(key):
            raise ValueError(
                f"--{key.replace('_', '-')} {now[key]} conflicts with the run being resumed ({key}={then.get(key)!r})"
            )
    if config.steps <= saved["update"]:
        raise ValueError(f"the run has done {saved['update']} updates: --steps {config.steps} leaves nothing to do")
    return saved


def write_outputs(
    run_dir: Path,
    results: Mapping[str, Any],
    model: nn.Module | None = None,
    title: str = "",
    tracker: Tracker | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``curves.png`` (and ``best_model.pt``) into ``run_dir``.

    :param run_dir: The run directory.
    :param results: The dictionary returned by :func:`train_classifier` plus task fields.
    :param model: Saved as ``best_model.pt`` (its ``state_dict``) when given.
    :param title: Title of the curve figure.
    :param tracker: When given, the final numbers go to the W&B summary and the files to W&B.
    :return: Paths of the written files by kind.
    """
    paths = {"results": run_dir / "results.json", "curves": run_dir / "curves.png"}
    write_text_atomically(paths["results"], json.dumps(results, indent=2, default=str) + "\n")
    plot_curves(results["curve"], paths["curves"], title=title)
    if model is not None:
        paths["model"] = run_dir / "best_model.pt"
        with atomic_path(paths["model"]) as tmp:
            torch.save(model.state_dict(), tmp)
    if tracker is not None:
        tracker.log_summary({k: v for k, v in results.items() if isinstance(v, (int, float))})
        tracker.save_file(paths["results"])
        tracker.save_file(paths["curves"])
    return paths


def plot_curves(curve: list[Mapping[str, float]], path: Path, title: str = "") -> None:
    """Learning curves: NLL (train/val/test) and error (train/val/test) against updates.

    :param curve: Evaluation records from :func:`train_classifier`.
    :param path: Output PNG.
    :param title: Figure title.
    """
    from matplotlib.figure import Figure  # drawn off-screen: no pyplot, the user's backend untouched

    updates = [entry["updates"] for entry in curve]
    fig = Figure(figsize=(10, 4))
    ax_nll, ax_err = fig.subplots(1, 2)
    for key, label, style in (("train_loss", "train", ":"), ("val_nll", "validation", "--"), ("test_nll", "test", "-")):
        points = [(u, e[key]) for u, e in zip(updates, curve) if key in e]
        if points:
            ax_nll.plot(*zip(*points), style, label=label)
    for key, label, style in (("train_error", "train", ":"), ("val_error", "validation", "--"), ("test_error", "test", "-")):
        points = [(u, 100 * e[key]) for u, e in zip(updates, curve) if key in e]
        if points:
            ax_err.plot(*zip(*points), style, label=label)
    ax_nll.set(xlabel="updates", ylabel="negative log-likelihood (nats)", title="NLL")
    ax_err.set(xlabel="updates", ylabel="error (%)", title="error")
    for ax in (ax_nll, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
