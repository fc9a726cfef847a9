"""Image data set loaders for the glimpse tasks (nothing is ever downloaded).

* MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not:
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (``.gz`` optional; the
  ``train-images.idx3-ubyte`` spelling is accepted too). Debian's
  ``dataset-fashion-mnist`` package installs Fashion-MNIST in
  ``/usr/share/datasets/fashion-mnist``.
* Faces, 48x48 greyscale: FER-2013's CSV (``emotion,pixels,Usage``) or a
  folder-per-class image layout (``root/<class>/*.png`` or
  ``root/{train,val,test}/<class>/*``), read with Pillow (a matplotlib dependency).

Every problem with the files (missing, truncated, wrong magic number, bad
header, label out of range, unreadable image) raises :class:`DataError`, a
``ValueError`` whose message names the file and what is wrong, so the commands
turn it into one line and exit status 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fw_agents.validation import check_int

#: IDX magic numbers: 0x0000 then type 0x08 (unsigned byte) then the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: FER-2013's emotion codes 0..6.
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FACE_SIZE = 48
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data set is missing or malformed (message: which file, what is wrong)."""


@dataclass
class ImageDataset:
    """Greyscale images split three ways.

    :param name: Human-readable source (e.g. the directory).
    :param splits: ``{"train"|"val"|"test": (images uint8 [N, S, S], labels int64 [N])}``.
    :param class_names: Name of each class index.
    """

    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]

    @property
    def image_size(self) -> int:
        """Side ``S`` of the square images."""
        return int(self.splits["train"][0].shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


# ------------------------------------------------------------------------ IDX
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read one IDX file (gzipped or not) of unsigned bytes.

    :param path: The file.
    :param magic: Expected magic number (:data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`).
    :return: ``uint8`` array shaped as the header says.
    :raises DataError: Unreadable file, wrong magic number, or size not matching the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from None
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} has magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path} has {len(raw) - header} data bytes, header {shape} says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(data_dir: Path, stem: str) -> Path:
    candidates = [stem, f"{stem}.gz"]
    dotted = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte"
    candidates += [dotted, f"{dotted}.gz"]
    for name in candidates:
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"missing {stem}[.gz] in {data_dir} (MNIST IDX files expected; nothing is downloaded)")


def load_mnist(data_dir: str | Path, val_size: int = 10_000) -> ImageDataset:
    """MNIST-format IDX files; validation = the last ``val_size`` training images.

    :param data_dir: Folder with the four IDX files (e.g. ``/usr/share/datasets/fashion-mnist``).
    :param val_size: Training images held out for validation (the standard 50,000/10,000 split).
    :return: The data set, 28x28 images and 10 classes for MNIST.
    :raises DataError: Folder or files missing, malformed, or inconsistent.
    """
    check_int("val-size", val_size)
    data_dir = _existing_dir(data_dir)
    arrays = {}
    for split, (images_stem, labels_stem) in MNIST_FILES.items():
        images_path, labels_path = _find_idx(data_dir, images_stem), _find_idx(data_dir, labels_stem)
        images = read_idx(images_path, IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels")
        if images.shape[1] != images.shape[2]:
            raise DataError(f"{images_path} images are {images.shape[1]}x{images.shape[2]}, square images expected")
        if labels.size and labels.max() > 9:
            raise DataError(f"{labels_path} has label {labels.max()}, expected digits 0-9")
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    if val_size >= len(train_labels):
        raise DataError(
            f"val-size must leave at least one of the {len(train_labels)} training images in {data_dir} "
            f"for training, got {val_size}"
        )
    cut = len(train_labels) - val_size
    splits = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": arrays["test"],
    }
    return ImageDataset(str(data_dir), splits, tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------- faces
def load_fer2013_csv(path: str | Path, seed: int = 0) -> ImageDataset:
    """FER-2013's CSV: ``emotion,pixels,Usage`` with 48*48 space-separated pixels per row.

    ``Usage`` Training/PublicTest/PrivateTest -> train/val/test. Without a
    ``Usage`` column the rows are split 80/10/10 with ``seed``.

    :param path: The CSV file.
    :param seed: Seed of the split when there is no ``Usage`` column.
    :raises DataError: Missing file, missing columns, wrong pixel count, bad label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing FER-2013 CSV file {path}")
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if "emotion" not in header or "pixels" not in header:
        raise DataError(f"{path}: header must contain emotion,pixels[,Usage], found {','.join(header) or 'nothing'}")
    rows = [row for row in rows if row]
    if not rows:
        raise DataError(f"{path} has no data rows")
    col_emotion, col_pixels = header.index("emotion"), header.index("pixels")
    col_usage = header.index("Usage") if "Usage" in header else None
    try:
        labels = np.array([int(row[col_emotion]) for row in rows], dtype=np.int64)
    except (ValueError, IndexError):
        raise DataError(f"{path}: every row needs an integer emotion 0-{len(FER_CLASSES) - 1}") from None
    out_of_range = labels[(labels < 0) | (labels >= len(FER_CLASSES))]
    if out_of_range.size:
        raise DataError(f"{path}: emotion {out_of_range[0]} outside 0-{len(FER_CLASSES) - 1}")
    pixel_count = FACE_SIZE * FACE_SIZE
    images = np.empty((len(rows), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for i, row in enumerate(rows):
        values = _parse_pixels(row[col_pixels] if len(row) > col_pixels else "")
        if values is None or values.size != pixel_count:
            found = "unparsable" if values is None else f"{values.size}"
            raise DataError(f"{path}: row {i + 2} has {found} pixels, expected {pixel_count} integers (48x48)")
        if values.min() < 0 or values.max() > 255:
            raise DataError(f"{path}: row {i + 2} has pixels outside 0-255")
        images[i] = values.reshape(FACE_SIZE, FACE_SIZE)
    if col_usage is None:
        assignment = _random_assignment(len(labels), seed)
    else:
        usage = [row[col_usage].strip() if len(row) > col_usage else "" for row in rows]
        unknown = sorted(set(usage) - set(FER_USAGE))
        if unknown:
            raise DataError(f"{path}: unknown Usage {unknown[0]!r}; expected one of {', '.join(FER_USAGE)}")
        assignment = np.array([FER_USAGE[u] for u in usage])
    return _dataset_from_assignment(str(path), images, labels, assignment, FER_CLASSES)


def load_image_folder(root: str | Path, image_size: int = FACE_SIZE, seed: int = 0) -> ImageDataset:
    """Folder-per-class images: ``root/<class>/*`` (split 80/10/10 with ``seed``) or
    ``root/{train,val,test}/<class>/*`` (``validation`` also accepted; without a
    validation folder 10% of train is held out). Images are converted to greyscale
    and resized to ``image_size`` x ``image_size`` when needed.

    :param root: The top folder.
    :param image_size: Side of the returned square images.
    :param seed: Seed of the split(s) drawn here.
    :raises DataError: No class folders/images, or an unreadable image.
    """
    root = _existing_dir(root)
    split_dirs = {name: root / name for name in ("train", "val", "validation", "test") if (root / name).is_dir()}
    if "train" in split_dirs and "test" in split_dirs:
        class_names = _class_names(split_dirs["train"])
        train_images, train_labels = _read_class_folders(split_dirs["train"], class_names, image_size)
        test_images, test_labels = _read_class_folders(split_dirs["test"], class_names, image_size)
        val_dir = split_dirs.get("val") or split_dirs.get("validation")
        if val_dir is not None:
            val_images, val_labels = _read_class_folders(val_dir, class_names, image_size)
            splits = {"train": (train_images, train_labels), "val": (val_images, val_labels)}
        else:
            assignment = np.where(_random_assignment(len(train_labels), seed, (0.9, 0.1, 0.0)) == "train", "train", "val")
            splits = _split_by(train_images, train_labels, assignment)
        splits["test"] = (test_images, test_labels)
        _check_nonempty(splits, str(root))
        return ImageDataset(str(root), splits, class_names)
    class_names = _class_names(root)
    images, labels = _read_class_folders(root, class_names, image_size)
    return _dataset_from_assignment(str(root), images, labels, _random_assignment(len(labels), seed), class_names)


def load_faces(data_path: str | Path, seed: int = 0) -> ImageDataset:
    """48x48 faces from a FER-2013 CSV file, a folder holding one ``*.csv``, or a class-folder tree.

    :param data_path: File or folder.
    :param seed: Seed of any random split.
    """
    path = Path(data_path)
    if path.is_file():
        return load_fer2013_csv(path, seed)
    path = _existing_dir(path)
    csv_files = sorted(path.glob("*.csv"))
    if len(csv_files) == 1:
        return load_fer2013_csv(csv_files[0], seed)
    if len(csv_files) > 1:
        preferred = [p for p in csv_files if p.name.lower().startswith("fer2013")]
        if len(preferred) == 1:
            return load_fer2013_csv(preferred[0], seed)
        raise DataError(f"{path} holds several CSV files ({', '.join(p.name for p in csv_files)}); pass one")
    return load_image_folder(path, FACE_SIZE, seed)


def load_dataset(kind: str, data_dir: str | Path, seed: int = 0, val_size: int = 10_000) -> ImageDataset:
    """``kind``: ``"mnist"`` (IDX files, also Fashion-MNIST; ``val_size`` held out) or ``"faces"`` (48x48)."""
    if kind == "mnist":
        return load_mnist(data_dir, val_size)
    if kind == "faces":
        return load_faces(data_dir, seed)
    raise ValueError(f"unknown dataset {kind!r}; choose mnist or faces")


# -------------------------------------------------------------------- helpers
def _parse_pixels(text: str) -> np.ndarray | None:
    """Space-separated integers -> int64 array (None if anything is not an integer); ~50 us per face."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy warns (not raises) on trailing junk
        try:
            values = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    return values


def _existing_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data directory {path} does not exist (nothing is downloaded; pass --data-dir)")
    if not path.is_dir():
        raise DataError(f"{path} is not a directory")
    return path


def _class_names(root: Path) -> tuple[str, ...]:
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not names:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image> or a FER-2013 CSV)")
    return names


def _read_class_folders(root: Path, class_names: Sequence[str], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(io.BytesIO(file.read_bytes())) as image:
                    grey = image.convert("L")
                    if grey.size != (image_size, image_size):
                        grey = grey.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(grey, dtype=np.uint8))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise DataError(f"cannot read image {file}: {error}") from None
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}/<class>/")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _random_assignment(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Assign ``n`` items to train/val/test in the given fractions (at least one each when possible)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fractions[1] * n))) if fractions[1] and n >= 3 else 0
    n_test = max(1, int(round(fractions[2] * n))) if fractions[2] and n >= 3 else 0
    assignment = np.full(n, "train", dtype=object)
    assignment[order[:n_val]] = "val"
    assignment[order[n_val : n_val + n_test]] = "test"
    return assignment


def _split_by(images: np.ndarray, labels: np.ndarray, assignment: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: (images[assignment == name], labels[assignment == name]) for name in np.unique(assignment)}


def _check_nonempty(splits: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    for name in SPLITS:
        if name not in splits or len(splits[name][1]) == 0:
            raise DataError(f"{source}: the {name} split is empty")


def _dataset_from_assignment(
    source: str, images: np.ndarray, labels: np.ndarray, assignment: np.ndarray, class_names: Sequence[str]
) -> ImageDataset:
    splits = _split_by(images, labels, assignment)
    _check_nonempty(splits, source)
    return ImageDataset(source, {name: splits[name] for name in SPLITS}, tuple(class_names))
