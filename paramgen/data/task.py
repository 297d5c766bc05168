"""Classification tasks: fixed train/val/test splits and class subsets of them.

A `Task` is what a model zoo trains on and what a dataset-conditioned
generator reads: three `Split` s, the original class ids the labels stand
for, and a one-line natural-language description. `Task.subset` carves a
k-class task out of a bigger one (labels renumbered ``0..k-1``), which is how
zoos get many related tasks out of one dataset. `Task.from_arrays` and
`Task.from_splits` make a task of your own data (hand it to
`paramgen.zoo.build_zoo` with ``tasks=``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import torch

from paramgen._convert import int_tuple, str_tuple

__all__ = ["Split", "Task", "UnknownDatasetError", "SplitName", "Modality"]

SplitName = Literal["train", "val", "test"]
Modality = Literal["image", "signal", "tabular", "text"]

_SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
_MODALITY_NDIM = {"image": 4, "signal": 3, "tabular": 2}  # (N, C, H, W), (N, C, L) and (N, F)
_MODALITY_OF_NDIM: dict[int, Modality] = {4: "image", 3: "signal", 2: "tabular"}


class UnknownDatasetError(ValueError):
    """A dataset name, or a class id of a dataset, that does not exist.

    The message lists the valid options.

    Examples:
        >>> from paramgen.data import get_task, UnknownDatasetError
        >>> try:
        ...     get_task("cifar10")
        ... except UnknownDatasetError as err:
        ...     print("fashion_mnist" in str(err))
        True
    """


@attrs.frozen(eq=False)
class Split:
    """Inputs and integer labels of one split (train, val or test).

    Attributes:
        x: Images ``(N, 1, H, W)`` float32 in ``[0, 1]``, signals ``(N, 1, L)``
            float32, tabular features ``(N, F)`` float32, or a tuple of ``N``
            strings for text.
        y: ``(N,)`` int64 labels in ``0..num_classes-1``.

    Examples:
        >>> import torch
        >>> split = Split(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 1, 0]))
        >>> len(split)
        4
    """

    x: torch.Tensor | tuple[str, ...]
    y: torch.Tensor

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.y, torch.Tensor) or self.y.ndim != 1 or self.y.dtype != torch.int64:
            got = (
                f"{type(self.y).__name__} of shape {tuple(self.y.shape)} and dtype {self.y.dtype}"
                if isinstance(self.y, torch.Tensor)
                else type(self.y).__name__
            )
            raise TypeError(f"Split.y must be a 1-D int64 tensor, got {got}")
        if isinstance(self.x, tuple):
            if not all(isinstance(text, str) for text in self.x):
                raise TypeError("Split.x as a tuple must hold only str")
        elif not isinstance(self.x, torch.Tensor):
            raise TypeError(f"Split.x must be a tensor or a tuple of str, got {type(self.x).__name__}")
        if len(self.x) != len(self.y):
            raise ValueError(f"Split.x has {len(self.x)} examples but Split.y has {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: torch.Tensor) -> Split:
        """The examples at ``index`` (a 1-D int64 tensor), in that order.

        Examples:
            >>> import torch
            >>> split = Split(torch.arange(3.0).view(3, 1, 1), torch.tensor([0, 1, 2]))
            >>> split.take(torch.tensor([2, 0])).y.tolist()
            [2, 0]
        """
        if isinstance(self.x, tuple):
            x: torch.Tensor | tuple[str, ...] = tuple(self.x[i] for i in index.tolist())
        else:
            x = self.x[index]
        return Split(x, self.y[index])


@attrs.frozen(eq=False)
class Task:
    """A classification task: fixed splits plus what the labels mean.

    Attributes:
        name: ``"digits"`` for a whole dataset, ``"digits/0-3-5-7-9"`` for a
            class subset (original class ids, sorted).
        dataset: The source dataset: one of ``paramgen.data.DATASETS``, or the
            name of a task of your own (`from_arrays`, `from_splits`).
        classes: Original class ids, sorted; label ``i`` stands for ``classes[i]``.
        class_names: Human-readable name of each label.
        subject: What is classified, e.g. ``"8x8 grayscale images of handwritten
            digits"``; `description` is built from it.
        train, val, test: The fixed, non-overlapping splits.
        modality: ``"image"``, ``"signal"``, ``"tabular"`` or ``"text"``.

    Examples:
        >>> from paramgen.data import get_task
        >>> task = get_task("digits/0-3-5-7-9")
        >>> task.num_classes, task.input_shape
        (5, (1, 8, 8))
        >>> task.description
        'Classify 8x8 grayscale images of handwritten digits into 5 classes: 0, 3, 5, 7, 9.'
    """

    name: str
    dataset: str
    classes: tuple[int, ...] = attrs.field(converter=int_tuple)
    class_names: tuple[str, ...] = attrs.field(converter=str_tuple)
    subject: str
    train: Split
    val: Split
    test: Split
    modality: Modality

    def __attrs_post_init__(self) -> None:
        if self.modality not in ("image", "signal", "tabular", "text"):
            raise ValueError(f"modality must be 'image', 'signal', 'tabular' or 'text', got {self.modality!r}")
        if list(self.classes) != sorted(set(self.classes)):
            raise ValueError(f"classes must be sorted and distinct, got {self.classes}")
        if len(self.classes) < 2:
            raise ValueError(f"a task needs at least 2 classes, got {self.classes}")
        if len(self.class_names) != len(self.classes):
            raise ValueError(
                f"got {len(self.class_names)} class names for {len(self.classes)} classes"
            )
        for split_name in _SPLITS:
            split: Split = getattr(self, split_name)
            if len(split) and (split.y.min() < 0 or split.y.max() >= len(self.classes)):
                raise ValueError(
                    f"{split_name} labels must lie in 0..{len(self.classes) - 1}, "
                    f"got {split.y.min().item()}..{split.y.max().item()}"
                )
            if self.modality == "text":
                if not isinstance(split.x, tuple):
                    raise TypeError(f"a text task needs {split_name}.x as a tuple of str")
            elif not isinstance(split.x, torch.Tensor) or split.x.ndim != _MODALITY_NDIM[self.modality]:
                raise TypeError(
                    f"an {self.modality} task needs {split_name}.x as a "
                    f"{_MODALITY_NDIM[self.modality]}-D tensor, got "
                    f"{tuple(split.x.shape) if isinstance(split.x, torch.Tensor) else type(split.x).__name__}"
                )

    # ----------------------------------------------------------------- your own data
    @classmethod
    def from_arrays(
        cls,
        name: str,
        x: Any,
        y: Any,
        *,
        class_names: Sequence[str] | None = None,
        subject: str | None = None,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        standardize: bool = False,
    ) -> Task:
        """A task of your own from one labelled array, split train/val/test by class.

        Args:
            name: Task (and dataset) name, e.g. ``"wine"``; no ``/`` (that marks
                class subsets: ``"wine/0-1"`` is made by `subset`).
            x: Inputs, a tensor or NumPy array: ``(N, F)`` tabular features,
                ``(N, C, L)`` signals or ``(N, C, H, W)`` images (kept as float32).
            y: ``(N,)`` integer labels ``0..K-1``.
            class_names: Name of each label (default ``"0"``, ``"1"``, ...).
            subject: What is classified, for `description`, e.g. ``"chemical
                measurements of wines"`` (default ``"<name> examples"``).
            fractions: Train, val and test shares within each class.
            seed: Seeds the ``torch.Generator`` of the split (the same split on
                every machine).
            standardize: Z-score each input feature with the training split's mean
                and standard deviation (features that never vary are only centred).

        Returns:
            A `Task` named ``name`` whose ``dataset`` is ``name`` and whose
            ``classes`` are ``0..K-1``.

        Raises:
            ValueError: Bad shapes, labels, names or fractions; the message says
                what was expected.

        Examples:
            >>> from sklearn.datasets import load_iris
            >>> data = load_iris()
            >>> task = Task.from_arrays("iris", data.data, data.target, class_names=data.target_names)
            >>> task.modality, task.num_classes, (len(task.train), len(task.val), len(task.test))
            ('tabular', 3, (90, 30, 30))
            >>> task.subset([0, 2]).name
            'iris/0-2'
        """
        xs = _as_inputs(x, "x")
        ys = _as_labels(y, "y", len(xs))
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three non-negative shares (train, val, test) summing to 1, got {fractions}")
        train, val, test = _stratified_split(ys, fractions, seed=seed)
        if standardize:
            mean, std = xs[train].mean(0), xs[train].std(0)
            xs = (xs - mean) / torch.where(std > 0, std, torch.ones_like(std))
        splits = {"train": (xs[train], ys[train]), "val": (xs[val], ys[val]), "test": (xs[test], ys[test])}
        return cls._of_arrays(name, splits, class_names=class_names, subject=subject)

    @classmethod
    def from_splits(
        cls,
        name: str,
        *,
        train: tuple[Any, Any],
        val: tuple[Any, Any],
        test: tuple[Any, Any],
        class_names: Sequence[str] | None = None,
        subject: str | None = None,
    ) -> Task:
        """A task of your own from splits you already have, each an ``(x, y)`` pair.

        Args:
            name: Task (and dataset) name; no ``/``.
            train: ``(x, y)`` of the training split (arrays as in `from_arrays`).
            val: ``(x, y)`` of the validation split.
            test: ``(x, y)`` of the test split.
            class_names: Name of each label (default ``"0"``, ``"1"``, ...).
            subject: What is classified (default ``"<name> examples"``).

        Raises:
            ValueError: Splits of different input shapes, bad labels or names.

        Examples:
            >>> import torch
            >>> xy = (torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 2))
            >>> Task.from_splits("toy", train=xy, val=xy, test=xy).description
            'Classify toy examples into 3 classes: 0, 1, 2.'
        """
        splits = {}
        for split_name, pair in (("train", train), ("val", val), ("test", test)):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"{split_name} must be an (x, y) pair, got {type(pair).__name__}")
            xs = _as_inputs(pair[0], f"{split_name} x")
            splits[split_name] = (xs, _as_labels(pair[1], f"{split_name} y", len(xs)))
        shapes = {tuple(x.shape[1:]) for x, _ in splits.values()}
        if len(shapes) > 1:
            raise ValueError(f"the splits' examples must share one shape, got {sorted(shapes)}")
        return cls._of_arrays(name, splits, class_names=class_names, subject=subject)

    @classmethod
    def _of_arrays(
        cls,
        name: str,
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
        *,
        class_names: Sequence[str] | None,
        subject: str | None,
    ) -> Task:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty str without '/' (class subsets get 'name/0-1'), got {name!r}")
        num_labels = 1 + max(int(y.max()) for _, y in splits.values() if len(y))
        if class_names is None:
            class_names = [str(i) for i in range(num_labels)]
        class_names = [str(c) for c in class_names]
        if len(class_names) < num_labels:
            raise ValueError(f"labels run up to {num_labels - 1} but only {len(class_names)} class names were given")
        if len(splits["train"][1]) == 0:
            raise ValueError(f"task {name!r} has no training examples")
        ndim = splits["train"][0].ndim
        return cls(
            name=name,
            dataset=name,
            classes=range(len(class_names)),
            class_names=class_names,
            subject=subject if subject is not None else f"{name} examples",
            modality=_MODALITY_OF_NDIM[ndim],
            **{k: Split(x, y) for k, (x, y) in splits.items()},
        )

    @property
    def num_classes(self) -> int:
        """Number of labels, ``len(classes)``."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(1, H, W)``, ``(1, L)``, or ``()`` for text."""
        if isinstance(self.train.x, tuple):
            return ()
        return tuple(self.train.x.shape[1:])

    @property
    def description(self) -> str:
        """One sentence saying what the task is, e.g. for a text conditioner."""
        names = ", ".join(self.class_names)
        return f"Classify {self.subject} into {self.num_classes} classes: {names}."

    def split(self, name: SplitName) -> Split:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``).

        Examples:
            >>> from paramgen.data import get_task
            >>> len(get_task("digits").split("val"))
            359
        """
        if name not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {name!r}")
        return getattr(self, name)

    def subset(
        self,
        classes: Sequence[int],
        *,
        max_train_per_class: int | None = None,
        max_eval_per_class: int | None = None,
        seed: int = 0,
    ) -> Task:
        """A task on some of this task's classes, labels renumbered ``0..k-1``.

        Args:
            classes: Original class ids to keep (any order; at least two, no
                repeats). Label ``i`` of the new task is the ``i``-th smallest.
            max_train_per_class: Keep at most this many training examples of
                each class (all when ``None``).
            max_eval_per_class: The same cap for the val and test splits.
            seed: Chooses which examples a cap keeps. The choice for a class
                depends only on ``seed``, the split and the class, so class 3
                keeps the same examples in ``"digits/0-3"`` and ``"digits/3-5"``.

        Returns:
            A task named ``"<dataset>/<c1>-<c2>-..."``.

        Raises:
            UnknownDatasetError: A class id this task does not have.
            ValueError: Repeated classes, fewer than two, or a bad cap.

        Examples:
            >>> from paramgen.data import load_dataset
            >>> task = load_dataset("digits").subset([7, 1], max_train_per_class=20)
            >>> task.name, task.class_names, len(task.train)
            ('digits/1-7', ('1', '7'), 40)
        """
        kept = _check_classes(classes, valid=self.classes, dataset=self.dataset)
        name = f"{self.dataset}/" + "-".join(str(c) for c in kept)
        return self._restrict(
            kept,
            name=name,
            max_train_per_class=max_train_per_class,
            max_eval_per_class=max_eval_per_class,
            seed=seed,
        )

    def _restrict(
        self,
        kept: tuple[int, ...],
        *,
        name: str,
        max_train_per_class: int | None,
        max_eval_per_class: int | None,
        seed: int,
    ) -> Task:
        # Shared by `subset` and by `get_task` on a whole dataset, which caps
        # examples per class but keeps the dataset's name.
        for option, value in (
            ("max_train_per_class", max_train_per_class),
            ("max_eval_per_class", max_eval_per_class),
        ):
            if value is not None and (isinstance(value, bool) or operator.index(value) < 1):
                raise ValueError(f"{option} must be a positive int or None, got {value!r}")
        if isinstance(seed, bool) or operator.index(seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        old_label = {c: i for i, c in enumerate(self.classes)}
        # new label of each old label; -1 for dropped classes.
        relabel = torch.full((self.num_classes,), -1, dtype=torch.int64)
        for new, c in enumerate(kept):
            relabel[old_label[c]] = new
        splits = {}
        for split_index, split_name in enumerate(_SPLITS):
            cap = max_train_per_class if split_name == "train" else max_eval_per_class
            split: Split = getattr(self, split_name)
            chosen = []
            for c in kept:
                (members,) = torch.nonzero(split.y == old_label[c], as_tuple=True)
                if cap is not None and len(members) > cap:
                    generator = torch.Generator().manual_seed(_mix_seed(seed, split_index, c))
                    pick = torch.randperm(len(members), generator=generator)[:cap]
                    members = members[pick.sort().values]
                chosen.append(members)
            index = torch.cat(chosen).sort().values  # keep the split's own order
            taken = split.take(index)
            splits[split_name] = Split(taken.x, relabel[taken.y])
        return Task(
            name=name,
            dataset=self.dataset,
            classes=kept,
            class_names=tuple(self.class_names[old_label[c]] for c in kept),
            subject=self.subject,
            modality=self.modality,
            **splits,
        )

    def support_set(
        self,
        n_per_class: int,
        *,
        split: SplitName = "train",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor | tuple[str, ...], torch.Tensor]:
        """``n_per_class`` examples of every class, grouped by label.

        Args:
            n_per_class: Examples to draw from each class.
            split: Which split to draw from.
            generator: Draws the examples at random; with ``None`` the first
                ``n_per_class`` examples of each class (in split order) are taken.

        Returns:
            ``(x, y)`` with ``num_classes * n_per_class`` examples: the first
            ``n_per_class`` have label 0, the next label 1, and so on. ``x`` is a
            tensor ``(num_classes * n_per_class, *input_shape)`` or a tuple of str.

        Raises:
            ValueError: A class with fewer than ``n_per_class`` examples in ``split``.

        Examples:
            >>> import torch
            >>> from paramgen.data import get_task
            >>> x, y = get_task("digits/0-1-2").support_set(4, generator=torch.Generator().manual_seed(0))
            >>> tuple(x.shape), y.tolist()
            ((12, 1, 8, 8), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
        """
        if isinstance(n_per_class, bool) or operator.index(n_per_class) < 1:
            raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
        data = self.split(split)
        chosen = []
        for label in range(self.num_classes):
            (members,) = torch.nonzero(data.y == label, as_tuple=True)
            if len(members) < n_per_class:
                raise ValueError(
                    f"class {self.class_names[label]!r} has {len(members)} examples in the "
                    f"{split} split of {self.name!r}, fewer than n_per_class={n_per_class}"
                )
            if generator is not None:
                members = members[torch.randperm(len(members), generator=generator)]
            chosen.append(members[:n_per_class])
        taken = data.take(torch.cat(chosen))
        return taken.x, taken.y


def _tensor(values: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what} must be a numeric tensor or array, got {type(values).__name__} ({err})") from None


def _as_inputs(x: Any, what: str) -> torch.Tensor:
    """Inputs as a float32 tensor of 2 to 4 dimensions (tabular, signal, image)."""
    t = _tensor(x, what)
    if t.ndim not in _MODALITY_OF_NDIM:
        raise ValueError(
            f"{what} must be (N, F) features, (N, C, L) signals or (N, C, H, W) images, got shape {tuple(t.shape)}"
        )
    if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        raise ValueError(f"{what} must hold numbers, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return t


def _as_labels(y: Any, what: str, n: int) -> torch.Tensor:
    """Labels as a 1-D int64 tensor of non-negative integers, ``n`` of them."""
    t = _tensor(y, what)
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"{what} must be {n} labels of shape ({n},), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{what} must be integer labels 0..K-1, got non-integer values")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{what} must be integer labels 0..K-1, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if n and t.min() < 0:
        raise ValueError(f"{what} must be integer labels 0..K-1, got {int(t.min())}")
    return t


def _stratified_split(
    y: torch.Tensor, fractions: Sequence[float], *, seed: int = 0
) -> list[torch.Tensor]:
    """Split indices of ``y`` into parts with the given fractions within each class.

    Each class is shuffled by one ``torch.Generator`` (classes in increasing
    order) and cut at ``round(fraction * count)``; the last part takes the rest.
    Each part's indices come back sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for label in torch.unique(y).tolist():
        (members,) = torch.nonzero(y == label, as_tuple=True)
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for i, fraction in enumerate(fractions):
            stop = len(members) if i == len(fractions) - 1 else start + round(fraction * len(members))
            parts[i].append(members[start:stop])
            start = stop
    return [torch.cat(part).sort().values for part in parts]



def _check_classes(classes: Sequence[int], *, valid: Sequence[int], dataset: str) -> tuple[int, ...]:
    """Validate class ids against ``valid``; return them sorted."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a sequence of int, got {type(classes).__name__}")
    try:
        ids = [operator.index(c) for c in classes]
    except TypeError:
        raise TypeError(f"classes must be a sequence of int, got {list(classes)!r}") from None
    unknown = [c for c in ids if c not in valid]
    if unknown:
        raise UnknownDatasetError(
            f"{dataset} has no class {unknown[0]}; valid classes are {list(valid)}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"classes must be distinct, got {ids}")
    if len(ids) < 2:
        raise ValueError(f"a task needs at least 2 classes, got {ids}")
    return tuple(sorted(ids))


def _mix_seed(seed: int, split_index: int, cls: int) -> int:
    """A seed for one (seed, split, class) triple, fixed across Python runs."""
    # Python's hash() of str is salted per process, so mix integers by hand.
    return ((seed * 1_000_003 + split_index) * 1_000_003 + cls) % (2**63)
