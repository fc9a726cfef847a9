"""Data loaders on tiny generated files: IDX (MNIST format), FER-2013 CSV, class folders."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fw_agents.tasks.datasets import (
    FER_CLASSES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataError,
    load_dataset,
    load_faces,
    load_fer2013_csv,
    load_image_folder,
    load_mnist,
    read_idx,
)

os.environ["WANDB_MODE"] = "disabled"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Serialise a uint8 array in the IDX format."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, size: int = 28) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (rng.integers(0, 256, (n_train, size, size)), rng.integers(0, 10, n_train)),
        "t10k": (rng.integers(0, 256, (n_test, size, size)), rng.integers(0, 10, n_test)),
    }
    for prefix, (images, labels) in data.items():
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = idx_bytes(array)
            name = f"{prefix}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_roundtrip(tmp_path: Path, gz: bool) -> None:
    data = write_mnist(tmp_path, gz=gz)
    dataset = load_mnist(tmp_path, val_size=5)
    train_x, train_y = dataset.splits["train"]
    val_x, val_y = dataset.splits["val"]
    test_x, test_y = dataset.splits["test"]
    assert train_x.shape == (25, 28, 28) and val_x.shape == (5, 28, 28) and test_x.shape == (10, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([train_x, val_x]), data["train"][0])
    np.testing.assert_array_equal(np.concatenate([train_y, val_y]), data["train"][1])
    np.testing.assert_array_equal(test_x, data["t10k"][0])
    assert dataset.image_size == 28 and dataset.num_classes == 10


@pytest.mark.parametrize("n_train", [30, 1, 0])
def test_val_size_must_leave_training_images(tmp_path: Path, n_train: int) -> None:
    write_mnist(tmp_path, n_train=n_train)
    with pytest.raises(DataError, match=rf"^val-size must leave at least one of the {n_train} training images .* got 30$"):
        load_mnist(tmp_path, val_size=30)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"^val-size must be an integer >= 1, got"):
            load_mnist(tmp_path, val_size=bad)


def test_dotted_file_names(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert load_mnist(tmp_path, val_size=5).splits["test"][0].shape == (10, 28, 28)


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_bad_magic_truncation_and_mismatch(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(images, magic=IDX_LABELS_MAGIC))
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(idx_bytes(images)[:-5])
    with pytest.raises(DataError, match="data bytes"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path, IDX_IMAGES_MAGIC)
    write_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, dtype=np.uint8)))
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_mnist(tmp_path / "m")


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)


def _fer_csv(path: Path, n: int = 12, usage: bool = True, pixels: str | None = None, emotion: str | None = None) -> np.ndarray:
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (n, 48 * 48))
    names = ["Training", "PublicTest", "PrivateTest"]
    lines = ["emotion,pixels,Usage" if usage else "emotion,pixels"]
    for i in range(n):
        row_pixels = pixels if (pixels is not None and i == 1) else " ".join(map(str, faces[i]))
        row_emotion = emotion if (emotion is not None and i == 2) else str(i % 7)
        lines.append(f"{row_emotion},{row_pixels}" + (f",{names[i % 3]}" if usage else ""))
    path.write_text("\n".join(lines) + "\n")
    return faces.reshape(n, 48, 48)


def test_fer_csv(tmp_path: Path) -> None:
    faces = _fer_csv(tmp_path / "fer2013.csv")
    dataset = load_fer2013_csv(tmp_path / "fer2013.csv")
    assert dataset.class_names == FER_CLASSES and dataset.image_size == 48
    train_x, train_y = dataset.splits["train"]
    assert train_x.shape == (4, 48, 48)
    np.testing.assert_array_equal(train_x, faces[0::3])
    np.testing.assert_array_equal(train_y, np.arange(12)[0::3] % 7)
    assert len(dataset.splits["val"][1]) == 4 and len(dataset.splits["test"][1]) == 4
    # dispatch: the folder holding the CSV, and the file itself
    assert load_faces(tmp_path).splits["test"][0].shape == (4, 48, 48)
    assert load_dataset("faces", tmp_path / "fer2013.csv").num_classes == 7


def test_fer_csv_without_usage_is_split(tmp_path: Path) -> None:
    _fer_csv(tmp_path / "f.csv", n=20, usage=False)
    dataset = load_fer2013_csv(tmp_path / "f.csv", seed=0)
    sizes = {name: len(split[1]) for name, split in dataset.splits.items()}
    assert sizes == {"train": 16, "val": 2, "test": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pixels": "1 2 3"}, "row 3 has 3 pixels"),
        ({"pixels": " ".join(["7"] * 2303 + ["x"])}, "row 3 has unparsable pixels"),
        ({"pixels": " ".join(["300"] * 2304)}, "outside 0-255"),
        ({"emotion": "9"}, "emotion 9 outside 0-6"),
        ({"emotion": "happy"}, "integer emotion"),
    ],
)
def test_fer_csv_malformed(tmp_path: Path, kwargs: dict, message: str) -> None:
    _fer_csv(tmp_path / "bad.csv", **kwargs)
    with pytest.raises(DataError, match=message):
        load_fer2013_csv(tmp_path / "bad.csv")


def test_fer_csv_bad_header_and_missing(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("label,image\n1,2\n")
    with pytest.raises(DataError, match="header must contain emotion,pixels"):
        load_fer2013_csv(tmp_path / "h.csv")
    with pytest.raises(DataError, match="missing FER-2013 CSV"):
        load_fer2013_csv(tmp_path / "absent.csv")


def _write_png(path: Path, value: int, size: int = 48) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_flat_and_split(tmp_path: Path) -> None:
    for label, name in enumerate(("happy", "sad")):
        for i in range(10):
            _write_png(tmp_path / "flat" / name / f"{i}.png", 20 * label + i, size=48 if i else 96)
    dataset = load_image_folder(tmp_path / "flat")
    assert dataset.class_names == ("happy", "sad")
    assert sum(len(split[1]) for split in dataset.splits.values()) == 20
    images, labels = dataset.splits["train"]
    assert images.shape[1:] == (48, 48) and images.dtype == np.uint8
    # greyscale of a uniform image keeps its value; label matches its folder
    assert all((img == img[0, 0]).all() and (img[0, 0] >= 20) == bool(lab) for img, lab in zip(images, labels))

    for split in ("train", "test"):
        for name in ("a", "b"):
            for i in range(5):
                _write_png(tmp_path / "tree" / split / name / f"{i}.png", 100)
    tree = load_faces(tmp_path / "tree")
    assert {name: len(s[1]) for name, s in tree.splits.items()} == {"train": 9, "val": 1, "test": 10}


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "noimg")
    _write_png(tmp_path / "bad" / "cls" / "ok.png", 1)
    (tmp_path / "bad" / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(ValueError, match="choose mnist or faces"):
        load_dataset("cifar", tmp_path)
