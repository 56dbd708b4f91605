"""The MNIST family by name: where its files are found, and loading them as uint8 tensors."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, MnistCnnError
from .idx import load_idx

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "test")
KINDS = ("images", "labels")
IMAGE_SIZE = 28  # every dataset of the family: 28 x 28 grayscale


@dataclass(frozen=True)
class DataFile:
    """One of a dataset's four files, with the checksums it is verified against."""

    name: str  # decompressed file name, e.g. "train-images-idx3-ubyte"
    sha256: str | None  # of the decompressed payload; None where no one has published it
    md5_gz: str  # of the .gz file as the mirrors serve it
    count: int = 60_000  # images or labels in the published file: the most a file may hold

    @property
    def gz_name(self) -> str:
        return self.name + ".gz"

    @property
    def is_labels(self) -> bool:
        return "labels" in self.name

    @property
    def size(self) -> int:
        """Bytes of the decompressed file as published: header + one byte per label or pixel."""
        return 8 + self.count if self.is_labels else 16 + self.count * IMAGE_SIZE * IMAGE_SIZE

    @property
    def max_gz_size(self) -> int:
        """The most its .gz can take: deflate never grows data by more than 5 bytes per 16 KB
        block; a header with a file name and some slack on top. Downloads stop past it."""
        return self.size + 5 * (self.size // 16_384 + 1) + 4096


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its files, classes and the normalization used to train on it."""

    name: str
    title: str
    classes: tuple[str, ...]
    mean: float  # of the training images' pixels scaled to 0..1
    std: float
    mirrors: tuple[str, ...]  # base URLs, tried in order
    files: dict[str, DataFile]  # keyed by "train-images", "train-labels", "test-images", ...
    torchvision_dir: str  # the folder torchvision keeps it in (<root>/<dir>/raw), also searched
    preprocessing: str = "mnist"  # how its images were made: the style people's images get

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _files(sha256: dict[str, str | None], md5: dict[str, str]) -> dict[str, DataFile]:
    names = {
        "train-images": "train-images-idx3-ubyte",
        "train-labels": "train-labels-idx1-ubyte",
        "test-images": "t10k-images-idx3-ubyte",
        "test-labels": "t10k-labels-idx1-ubyte",
    }
    counts = {"train": 60_000, "test": 10_000}
    return {
        key: DataFile(name, sha256.get(key), md5[key], counts[key.split("-")[0]])
        for key, name in names.items()
    }


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST handwritten digits",
        classes=tuple(str(d) for d in range(10)),
        mean=0.1307,
        std=0.3081,
        # yann.lecun.com refuses automated downloads, so it is not listed.
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        files=_files(
            sha256={
                "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
            md5={
                "train-images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels": "d53e105ee54ea40749a09fcbcd1e9432",
                "test-images": "9fb629c4189551a2d022fa330f9573f3",
                "test-labels": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
        torchvision_dir="MNIST",
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando article images)",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=_files(
            # Decompressed payloads of Debian's dataset-fashion-mnist (recompressed .gz files).
            sha256={
                "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
            md5={
                "train-images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels": "25c81989df183df01b3e8a0aad5dffbe",
                "test-images": "bef4ecab320f06d8554ea6380940ec79",
                "test-labels": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        torchvision_dir="FashionMNIST",
        preprocessing="fashion",  # longest edge to 28, centred by its box, intensities kept
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        title="Kuzushiji-MNIST (cursive Japanese hiragana)",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mean=0.1918,
        std=0.3483,
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        files=_files(
            sha256={},
            md5={
                "train-images": "bdb82020997e1d708af4cf47b453dcf7",
                "train-labels": "e144d726b3acfaa3e44228e80efcd344",
                "test-images": "5c965bf0a639b31b8f53240b1b52f4d7",
                "test-labels": "7320c461ea6c1c855c0b718fb2a4b134",
            },
        ),
        torchvision_dir="KMNIST",
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise MnistCnnError(f"unknown dataset {name!r} (known: {known})") from None


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in memory: images (N, 28, 28) uint8, labels (N,) int64."""

    info: DatasetInfo
    source: Path
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in SPLITS:
            raise MnistCnnError(f"unknown split {name!r} (use 'train' or 'test')")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


# ---------------------------------------------------------------------------- finding files


def cache_dir(name: str) -> Path:
    """Where downloads of dataset ``name`` go: $XDG_CACHE_HOME/mnist-cnn/<name>."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-cnn" / name


DEBIAN_DIR = Path("/usr/share/datasets")


def candidate_dirs(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched for ``info``'s files, in the order they are tried.

    ``data_dir`` (else $MNIST_CNN_DATA) may be a root holding ``<dataset>/`` folders or
    the folder holding the four files itself; then the user cache, then Debian's location.
    """
    places: list[Path] = []
    root = data_dir if data_dir is not None else os.environ.get("MNIST_CNN_DATA") or None
    if root is not None:
        root = Path(root).expanduser()
        places += [root / info.name, root, root / info.torchvision_dir / "raw"]
    places += [cache_dir(info.name), DEBIAN_DIR / info.name]
    return places


def preprocessing_style(dataset: str) -> str:
    """The preprocessing style of ``dataset``'s images ("mnist" for unknown names)."""
    info = DATASETS.get(dataset)
    return info.preprocessing if info else "mnist"


def file_in(folder: Path, f: DataFile) -> Path | None:
    """The file ``f`` in ``folder``, raw or gzip-compressed, if it is there."""
    for name in (f.name, f.gz_name):
        if (folder / name).is_file():
            return folder / name
    return None


def find_files(info: DatasetInfo, folder: Path) -> dict[str, Path] | None:
    """All four files of ``info`` in ``folder``, or None unless every one is there."""
    found = {key: file_in(folder, f) for key, f in info.files.items()}
    if any(p is None for p in found.values()):
        return None
    return found  # type: ignore[return-value]


def locate(info: DatasetInfo, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder that holds all of the dataset's files, or None.

    The family shares file names, so a folder whose labels are recognizably another dataset's
    (say, MNIST's files when Fashion-MNIST is asked for) does not count.
    """
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError("data_dir", f"{data_dir}: no such directory")
    for folder in candidate_dirs(info, data_dir):
        if find_files(info, folder) is not None and identify(folder) in (None, info.name):
            return folder
    return None


def identify(folder: Path) -> str | None:
    """Which known dataset the training labels in ``folder`` are (by checksum), if any."""
    for info in DATASETS.values():
        f = info.files["train-labels"]
        path = file_in(folder, f)
        if path is None:
            continue
        try:
            if checksum_matches(f, path):
                return info.name
        except (OSError, EOFError, ValueError, zlib.error):
            return None  # unreadable: loading will say what is wrong with it
    return None


def checksum_matches(f: DataFile, path: Path, *, gz: bool | None = None) -> bool | None:
    """Whether ``path`` is ``f`` by its published checksum; None where none is published.

    The SHA-256 of the decompressed payload where it is known, else the MD5 of the .gz as
    published (``gz``: whether ``path`` is that .gz; default, judged by its name). Raises
    what reading raises (OSError, EOFError, zlib.error, files.TooLarge).
    """
    from .files import file_digest

    gz = path.name.endswith(".gz") if gz is None else gz
    if f.sha256 is not None:
        return file_digest(path, "sha256", decompress=True, limit=f.size) == f.sha256
    if gz:
        return file_digest(path, "md5", limit=f.max_gz_size) == f.md5_gz
    return None


def not_found_message(info: DatasetInfo, data_dir, reason: str) -> str:
    searched = "; ".join(str(p) for p in candidate_dirs(info, data_dir))
    names = ", ".join(f.gz_name for f in info.files.values())
    return (
        f"{info.name} not found (searched {searched}) and {reason}. "
        f"Put {names} (or the uncompressed files) in a folder and pass --data-dir FOLDER "
        f"or set MNIST_CNN_DATA"
    )


# ---------------------------------------------------------------------------- loading


def load_folder(info: DatasetInfo, folder: str | os.PathLike) -> Dataset:
    """Load and cross-check the four files of ``info`` from ``folder``."""
    folder = Path(folder)
    paths = find_files(info, folder)
    if paths is None:
        raise MnistCnnError(f"{folder}: does not hold all four {info.name} files")
    arrays = {}
    for key, path in paths.items():
        is_labels = key.endswith("labels")
        arrays[key] = load_idx(
            path,
            num_classes=info.num_classes if is_labels else None,
            max_count=info.files[key].count,
            image_shape=(IMAGE_SIZE, IMAGE_SIZE),
        )
        if arrays[key].ndim != (1 if is_labels else 3):
            found, wanted = ("images", "labels") if is_labels else ("labels", "images")
            raise MnistCnnError(f"{path}: holds {found}, expected {wanted}")
    for split in SPLITS:
        images, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        if len(images) == 0:
            raise MnistCnnError(f"{paths[f'{split}-images']}: holds no images")
        if len(images) != len(labels):
            raise MnistCnnError(
                f"{folder}: {split} split has {len(images)} images but {len(labels)} labels"
            )
        if images.shape[1:] != (28, 28):
            raise MnistCnnError(
                f"{paths[f'{split}-images']}: images are {images.shape[1]}x{images.shape[2]}, "
                "expected 28x28"
            )
    import torch

    tensors = {k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}
    return Dataset(
        info=info,
        source=folder,
        train_images=tensors["train-images"],
        train_labels=tensors["train-labels"].long(),
        test_images=tensors["test-images"],
        test_labels=tensors["test-labels"].long(),
    )
