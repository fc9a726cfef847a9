"""Glimpse geometry, the multi-level model, training smoke tests and the command line."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fw_agents.runs import preflight
from fw_agents.tasks import glimpses
from fw_agents.cli import run_cli
from fw_agents.tasks.glimpse_geometry import (
    extract_glimpses,
    glimpse_index,
    glimpse_plan,
    level_segments,
    store_flags,
)
from fw_agents.memory import make_memory
from fw_agents.tasks.glimpses import GlimpseConvNet, GlimpseRNN, build_glimpse_model, supports_multi_level

os.environ["WANDB_MODE"] = "disabled"


pytestmark = pytest.mark.usefixtures("one_thread")

RECURRENT = ("fastweights", "lstm", "irnn")

# (scale, row, col) of the documented order for 28x28: per quadrant, coarse down, 4 fine, coarse up
EXPECTED_28 = [
    step
    for qr, qc in ((0, 0), (0, 14), (14, 0), (14, 14))
    for step in (
        ("coarse", qr, qc),
        ("fine", qr, qc),
        ("fine", qr, qc + 7),
        ("fine", qr + 7, qc),
        ("fine", qr + 7, qc + 7),
        ("coarse", qr, qc),
    )
]


def test_plan_has_24_glimpses_in_documented_order() -> None:
    plan = glimpse_plan(28)
    assert len(plan) == 24
    assert [(g.scale, g.row, g.col) for g in plan] == EXPECTED_28
    assert all(g.size == (14 if g.scale == "coarse" else 7) for g in plan)
    assert [g.step for g in plan if g.store] == [0, 4, 6, 10, 12, 16, 18, 22]
    assert level_segments(28) == ((0, 1), (1, 5), (5, 7), (7, 11), (11, 13), (13, 17), (17, 19), (19, 23), (23, 24))
    assert store_flags(28).tolist() == [float(g.store) for g in plan]
    for t0, t1 in level_segments(28):
        assert len({plan[t].level for t in range(t0, t1)}) == 1, "a segment must stay on one level"


@pytest.mark.parametrize(("size", "patch"), [(28, 7), (48, 12)])
def test_every_pixel_covered_at_full_resolution(size: int, patch: int) -> None:
    index = glimpse_index(size)
    assert index.shape == (24, patch * patch)
    fine = [g.step for g in glimpse_plan(size) if g.scale == "fine"]
    coarse = [g.step for g in glimpse_plan(size) if g.scale == "coarse"]
    assert len(fine) == 16 and len(coarse) == 8
    fine_pixels = index[fine].flatten()
    assert sorted(fine_pixels.tolist()) == list(range(size * size)), "fine glimpses: each pixel exactly once"
    coarse_pixels = index[coarse].flatten()
    assert (coarse_pixels >= size * size).all(), "coarse glimpses read the down-sampled image"
    assert set(coarse_pixels.tolist()) == set(range(size * size, size * size + (size // 2) ** 2))


@pytest.mark.parametrize("size", [28, 48])
def test_glimpse_contents(size: int) -> None:
    patch = size // 4
    images = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    out = extract_glimpses(images)
    assert out.shape == (3, 24, patch * patch)
    x = images.float() / 255
    for g in glimpse_plan(size):
        region = x[:, g.row : g.row + g.size, g.col : g.col + g.size]
        if g.scale == "coarse":
            region = F.avg_pool2d(region.unsqueeze(1), 2).squeeze(1)
        torch.testing.assert_close(out[:, g.step], region.reshape(3, -1))


def test_bad_image_size() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        glimpse_plan(30)


def test_multi_level_writes_and_wipes_between_levels() -> None:
    """The model's one core call equals running the levels one by one: each level's last
    step writes into A, then h is wiped and A kept (Figure 3)."""
    torch.manual_seed(0)
    model = GlimpseRNN("fastweights", 16, 10, 28).double()
    assert model.multi_level
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (5, 10)
    glimpses = extract_glimpses(images, model.glimpse_index).double()
    control = store_flags(28).double()
    x = torch.cat([glimpses, control.view(1, -1, 1).expand(5, -1, 1)], dim=2).transpose(0, 1)
    state, stored = None, 0
    for i, (t0, t1) in enumerate(level_segments(28)):
        write = torch.zeros(t1 - t0, 5, dtype=torch.float64)
        if i < len(level_segments(28)) - 1:
            write[-1] = 1.0  # the level's final h goes into A, only there
        y, (h, A) = model.core(x[t0:t1], state, write_mask=write)
        state = (torch.zeros_like(h), A)
        stored += int(write[:, 0].sum())
    assert stored == int(control.sum()) == 8
    torch.testing.assert_close(logits, model.head(y[-1]), rtol=1e-12, atol=1e-12)


def test_multi_level_output_depends_on_earlier_levels_only_through_fast_weights() -> None:
    """Changing a glimpse of quadrant 0 changes the output; with η tiny it barely does."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    changed = images.clone()
    changed[:, :7, :7] = 255 - changed[:, :7, :7]  # a fine glimpse of quadrant 0 only
    gaps = {}
    for fast_lr in (0.5, 1e-6):
        torch.manual_seed(0)
        model = GlimpseRNN("fastweights", 16, 10, 28, memory_kwargs={"fast_lr": fast_lr})
        with torch.no_grad():
            gaps[fast_lr] = (model(images) - model(changed)).abs().max().item()
    assert gaps[0.5] > 1e-4
    assert gaps[1e-6] < 1e-3 * gaps[0.5]


def test_multi_level_requires_fast_weights() -> None:
    with pytest.raises(ValueError, match="multi-level"):
        GlimpseRNN("lstm", 8, 10, 28, multi_level=True)
    assert not GlimpseRNN("lstm", 8, 10, 28).multi_level
    assert GlimpseRNN("fastweights", 8, 10, 28).multi_level


def test_multi_level_capability_is_explicit() -> None:
    fast, lstm = make_memory("fastweights", 4, 4), make_memory("lstm", 4, 4)
    assert supports_multi_level(fast) and not supports_multi_level(lstm)
    lstm.supports_write_mask = True  # a core opts in with the attribute (and out with False)
    fast.supports_write_mask = False
    assert supports_multi_level(lstm) and not supports_multi_level(fast)


def test_val_size_too_large_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_idx_dir(tmp_path, n_train=1)
    argv = ["--data-dir", str(tmp_path), "--memory", "convnet", "--val-size", "5", "--wandb", "disabled"]
    assert run_cli(glimpses.main, [*argv, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "val-size must leave at least one of the 1 training images" in err and "between 1 and" not in err
    assert not (tmp_path / "r").exists()


def _toy_images(n: int, size: int, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: quadrant k is bright, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    images = torch.randint(0, 60, (n, size, size), generator=gen, dtype=torch.uint8)
    half = size // 2
    for i, k in enumerate(labels.tolist()):
        r, c = divmod(k, 2)
        images[i, r * half : (r + 1) * half, c * half : (c + 1) * half] += 150
    return images, labels


@pytest.mark.parametrize("model_name", [*RECURRENT, "convnet"])
@pytest.mark.parametrize("size", [28, 48])
def test_few_steps_reduce_loss(model_name: str, size: int) -> None:
    torch.manual_seed(0)
    images, labels = _toy_images(64, size)
    model = build_glimpse_model(model_name, 16, 4, size, conv_layers=3 if size == 28 else 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], f"{model_name}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_convnet_layers() -> None:
    net = GlimpseConvNet(10, 7, 48, num_layers=2)
    assert net.conv.in_features == 144  # 12x12 receptive fields
    assert sum(isinstance(m, torch.nn.Linear) for m in net.classifier) == 1
    assert sum(isinstance(m, torch.nn.Linear) for m in GlimpseConvNet(10, 10, 28, 3).classifier) == 2
    with pytest.raises(ValueError, match="conv-layers"):
        GlimpseConvNet(10, 10, 28, 1)


def _write_idx_dir(folder: Path, n_train: int = 40, n_test: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _toy_images(n, 28, seed=n)
        for kind, array in (("images-idx3-ubyte", images.numpy()), ("labels-idx1-ubyte", labels.numpy())):
            header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_cli_mnist_end_to_end(tmp_path: Path) -> None:
    _write_idx_dir(tmp_path / "data")
    run_dir = tmp_path / "run"
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--memory", "convnet", "--hidden", "8"]
    argv += ["--val-size", "10", "--steps", "6", "--eval-every", "3", "--batch-size", "16", "--wandb", "disabled", "--run-dir", str(run_dir)]
    assert run_cli(glimpses.main, argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["sizes"] == {"train": 30, "val": 10, "test": 16}
    assert results["memory"] == "convnet" and results["conv_layers"] == 3
    for name in ("curves.png", "progress.csv", "best_model.pt"):
        assert (run_dir / name).is_file()


@pytest.mark.skipif(not RECURRENT, reason="no recurrent core implemented yet")
def test_cli_faces_csv_end_to_end(tmp_path: Path) -> None:
    images, labels = _toy_images(18, 48)
    usage = ["Training", "PublicTest", "PrivateTest"]
    rows = [f"{int(y)},{' '.join(map(str, x.flatten().tolist()))},{usage[i % 3]}" for i, (x, y) in enumerate(zip(images, labels))]
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    argv = ["--dataset", "faces", "--data-dir", str(tmp_path), "--memory", RECURRENT[0], "--hidden", "8"]
    argv += ["--steps", "2", "--eval-every", "1", "--batch-size", "6", "--wandb", "disabled", "--run-dir", str(run_dir)]
    assert run_cli(glimpses.main, argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["class_names"]) == 7 and results["sizes"]["test"] == 6


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data-dir", "/nonexistent/fw-agents-data"], "/nonexistent/fw-agents-data"),
        (["--data-dir", "X", "--memory", "transformer"], "transformer"),
        (["--data-dir", "X", "--dataset", "cifar"], "cifar"),
        (["--memory", "lstm"], "--data-dir"),
        (["--data-dir", "X", "--hidden", "-3"], "hidden"),
        (["--data-dir", "X", "--val-size", "0"], "val-size must be an integer >= 1, got 0"),
        (["--data-dir", "X", "--train-limit", "0"], "train-limit must be an integer >= 1, got 0"),
        (["--data-dir", "X", "--conv-layers", "1"], "conv-layers must be an integer >= 2, got 1"),
        (["--data-dir", "X", "--device", "meta"], "unknown device 'meta'; choose auto, cpu, cuda or cuda:<index>"),
        (["--data-dir", "X", "--threads", "-2"], "threads must be an integer >= 1, got -2"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a if a != "X" else str(tmp_path / "missing") for a in argv]
    try:
        status = run_cli(glimpses.main, [*argv, "--wandb", "disabled", "--run-dir", str(tmp_path / "r")])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_cli_malformed_idx_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_idx_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 12))
    status = run_cli(glimpses.main, ["--data-dir", str(tmp_path), "--memory", "convnet", "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and "magic number" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--memory", "lstm", "--fast-lr", "0.3"], "--fast-lr applies to --memory fastweights only, got --memory lstm"),
        (["--memory", "convnet", "--decay", "0.5"], "--decay applies to --memory fastweights only"),
        (["--memory", "irnn", "--inner-steps", "2"], "--inner-steps applies to --memory fastweights only"),
        (["--memory", "convnet", "--multi-level", "on"], "--multi-level on needs a core with fast weights"),
        # flags that fit no model the data allows: refused by the preflight, before anything is allocated or written
        (["--memory", "fastweights", "--hidden", "100000"], "GiB (--hidden 100000, --batch-size 16 x 24 steps"),
        (["--memory", "convnet", "--hidden", "100000"], "GiB (--hidden 100000, --batch-size 16 x 24 steps"),
        (["--memory", "convnet", "--batch-size", "31"], "--batch-size 31 is more than the 30 training examples; choose 1..30"),
    ],
)
def test_cli_refused_settings_are_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "_physical_memory", lambda: 64 * 2**30)  # the same on every machine
    _write_idx_dir(tmp_path / "data")
    status = run_cli(glimpses.main, ["--data-dir", str(tmp_path / "data"), "--val-size", "10", "--batch-size", "16",
                                     *argv, "--wandb", "disabled", "--run-dir", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_cli_resume_alone_continues_with_the_runs_settings(tmp_path: Path) -> None:
    """``--resume DIR`` with no other setting: the run's own data set, model and sizes (read back
    from its config.json, lists and paths included), trained on to the new ``--steps``."""
    _write_idx_dir(tmp_path / "data")
    run_dir = tmp_path / "run"
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--memory", "convnet", "--hidden", "8",
            "--val-size", "10", "--steps", "4", "--eval-every", "2", "--batch-size", "16", "--wandb", "disabled"]  # fmt: skip
    assert run_cli(glimpses.main, [*argv, "--run-dir", str(run_dir)]) == 0
    assert run_cli(glimpses.main, ["--steps", "6", "--wandb", "disabled", "--resume", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["memory"] == "convnet" and results["hidden"] == 8 and results["curve"][-1]["updates"] == 6


def test_cli_resume_of_a_folder_without_a_run_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_cli(glimpses.main, ["--steps", "6", "--wandb", "disabled", "--resume", str(tmp_path / "typo")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no readable run to resume in {tmp_path / 'typo'} (its config.json); give --data-dir" in err
    assert not (tmp_path / "typo").exists()
