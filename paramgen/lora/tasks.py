"""Text classification tasks from the tweet corpus, each described in words.

`text_tasks` builds 3-way sentiment, each binary pair and each one-vs-rest task from one
pool of tweets; `TextTask.condition` writes Cond P-Diff's condition text (the task's
description plus two examples).

Examples:
    >>> sorted(TASK_DESCRIPTIONS)[:2]
    ['negative-or-not', 'negative-vs-neutral']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

__all__ = ["TASK_DESCRIPTIONS", "TextTask", "text_tasks"]

_LABELS = ("negative", "neutral", "positive")

#: One natural-language description per task name (the text of the condition).
TASK_DESCRIPTIONS: dict[str, str] = {
    "sentiment": "Classify the sentiment of a tweet as negative, neutral or positive.",
    "negative-vs-positive": "Decide whether a tweet expresses a negative or a positive opinion.",
    "negative-vs-neutral": "Decide whether a tweet is negative or just neutral.",
    "neutral-vs-positive": "Decide whether a tweet is neutral or positive.",
    "negative-or-not": "Detect negative tweets: is the tweet negative, or not (neutral or positive)?",
    "neutral-or-not": "Detect neutral tweets: is the tweet neutral, or does it carry an opinion (negative or positive)?",
    "positive-or-not": "Detect positive tweets: is the tweet positive, or not (negative or neutral)?",
}
# Task -> (label names, mapping from the 3-way label to the task's label or -1 to drop).
_TASK_LABELS: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "sentiment": (_LABELS, (0, 1, 2)),
    "negative-vs-positive": (("negative", "positive"), (0, -1, 1)),
    "negative-vs-neutral": (("negative", "neutral"), (0, 1, -1)),
    "neutral-vs-positive": (("neutral", "positive"), (-1, 0, 1)),
    "negative-or-not": (("not negative", "negative"), (1, 0, 0)),
    "neutral-or-not": (("not neutral", "neutral"), (0, 1, 0)),
    "positive-or-not": (("not positive", "positive"), (0, 0, 1)),
}


@attrs.frozen(eq=False)
class TextTask:
    """A text classification task with a description.

    Attributes:
        name: Task name (a key of `TASK_DESCRIPTIONS` for the tweet tasks).
        description: What the task is, in words.
        label_names: Name of each label.
        train, val, test: `paramgen.data.Split` s with tuples of strings as ``x``.
    """

    name: str
    description: str
    label_names: tuple[str, ...]
    train: Any
    val: Any
    test: Any

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def examples(self, k: int = 2, *, pair: int = 0) -> list[str]:
        """``k`` training examples ``"text -> label"`` of different labels (pair ``pair`` of a fixed list)."""
        picks = []
        for j in range(k):
            label = (pair + j) % self.num_labels
            idx = torch.nonzero(self.train.y == label).squeeze(1)
            picks.append(f"{self.train.x[int(idx[(pair * 7 + j) % len(idx)])]} -> {self.label_names[label]}")
        return picks

    def condition(self, *, examples: int = 2, pair: int = 0) -> str:
        """Cond P-Diff's condition text: the description plus ``examples`` examples."""
        from paramgen.conditioners import describe_condition

        return describe_condition(self.description, self.examples(examples, pair=pair) if examples else [])


def _pool(split: Any, per_label: int, generator: torch.Generator) -> Any:
    keep = []
    for c in range(3):
        idx = torch.nonzero(split.y == c).squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_label]])
    return split.take(torch.cat(keep).sort().values)


def text_tasks(
    names: Sequence[str] | None = None, *, train_per_label: int = 400, eval_per_label: int = 200, seed: int = 0, root: str | None = None
) -> dict[str, TextTask]:
    """Tasks built from the tweet corpus (``paramgen.data.load_dataset("tweets")``).

    A fixed pool of tweets per split (at most ``train_per_label`` training tweets and
    ``eval_per_label`` validation and test tweets of each sentiment, drawn with ``seed``)
    is relabelled per task, so all tasks share the same texts (their features are computed
    once). Val has half as many tweets as test.

    Args:
        names: Task names (keys of `TASK_DESCRIPTIONS`); all when ``None``.
        train_per_label: Training pool size per sentiment.
        eval_per_label: Validation and test pool size per sentiment.
        seed: Which tweets the pools keep.
        root: Passed to ``load_dataset``.
    """
    from paramgen.data import Split, load_dataset

    names = list(TASK_DESCRIPTIONS) if names is None else list(names)
    unknown = [n for n in names if n not in TASK_DESCRIPTIONS]
    if unknown:
        raise KeyError(f"unknown tweet tasks {unknown}; known: {list(TASK_DESCRIPTIONS)}")
    data = load_dataset("tweets", root=root)
    g = torch.Generator().manual_seed(seed)
    pools = {"train": _pool(data.train, train_per_label, g), "val": _pool(data.val, eval_per_label // 2, g), "test": _pool(data.test, eval_per_label, g)}
    tasks = {}
    for name in names:
        label_names, mapping = _TASK_LABELS[name]
        lut = torch.tensor(mapping)
        splits = {}
        for split_name, pool in pools.items():
            y = lut[pool.y]
            keep = torch.nonzero(y >= 0).squeeze(1)
            splits[split_name] = Split(tuple(pool.x[i] for i in keep.tolist()), y[keep])
        tasks[name] = TextTask(name, TASK_DESCRIPTIONS[name], label_names, splits["train"], splits["val"], splits["test"])
    return tasks
