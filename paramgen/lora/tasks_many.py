"""Every labelled view of the tweet corpus, in every label order, with the order in words.

`text_tasks` builds seven tasks whose label conventions disagree (``negative`` is label 0
in some and label 1 in others) without saying so. `many_tweet_tasks` builds all 18
classification tasks that the three sentiments allow, each *in every label order*, and
its description names every label's number:

- 6 binary pairs (``negative-vs-neutral``: label 0 negative, label 1 neutral; and the
  reversed ``neutral-vs-negative``; the same for the two other pairs);
- 6 one-vs-rest tasks (``negative-vs-rest``: label 0 negative, label 1 not negative; and
  ``rest-vs-negative``);
- 6 three-way tasks, one per order of the labels (``3way-negative-neutral-positive``, ...).

`label_twins` names the tasks that are the same task with the labels reordered (a
held-out task's twins must be held out too, or its adapter is a seen adapter with
swapped head rows). `label_slot_condition` embeds a condition so that the label order is
part of the vector, not only of the wording.

Examples:
    >>> len(TWEET_TASKS)
    18
    >>> TWEET_TASKS["neutral-vs-negative"].description
    'Decide whether a tweet is neutral or negative. Label 0 is neutral, label 1 is negative.'
    >>> label_twins("neutral-vs-negative")
    ['negative-vs-neutral']
    >>> len(label_twins("3way-negative-neutral-positive"))
    5
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import attrs
import torch

from paramgen.lora.tasks import TextTask, _pool

__all__ = ["SENTIMENTS", "TaskSpec", "TWEET_TASKS", "label_twins", "many_tweet_tasks", "label_slot_condition"]

#: The tweet corpus's labels, in the corpus's order (0, 1, 2).
SENTIMENTS = ("negative", "neutral", "positive")


@attrs.frozen
class TaskSpec:
    """One task over the tweet corpus.

    Attributes:
        description: The task in words, naming each label's number.
        label_names: The task's label names, label 0 first.
        mapping: For each corpus label (negative, neutral, positive), the task's label,
            or -1 where the tweet is not part of the task.
        family: Tasks of one family are the same task with the labels reordered.
    """

    description: str
    label_names: tuple[str, ...]
    mapping: tuple[int, int, int]
    family: str


def _numbered(names: Sequence[str]) -> str:
    parts = [f"label {i} is {n}" for i, n in enumerate(names)]
    return (", ".join(parts[:-1]) + (", and " if len(parts) > 2 else ", ") + parts[-1]).capitalize() + "."


def _specs() -> dict[str, TaskSpec]:
    out: dict[str, TaskSpec] = {}
    for a, b in itertools.permutations(SENTIMENTS, 2):
        mapping = tuple(0 if s == a else 1 if s == b else -1 for s in SENTIMENTS)
        out[f"{a}-vs-{b}"] = TaskSpec(f"Decide whether a tweet is {a} or {b}. {_numbered((a, b))}", (a, b), mapping, f"pair:{'+'.join(sorted((a, b)))}")  # type: ignore[arg-type]
    for s in SENTIMENTS:
        rest = " or ".join(x for x in SENTIMENTS if x != s)
        one = tuple(0 if x == s else 1 for x in SENTIMENTS)
        for name, labels, mapping in ((f"{s}-vs-rest", (s, f"not {s}"), one), (f"rest-vs-{s}", (f"not {s}", s), tuple(1 - v for v in one))):
            desc = f"Detect {s} tweets: is the tweet {s}, or not ({rest})? {_numbered(labels)}"
            out[name] = TaskSpec(desc, labels, mapping, f"one-vs-rest:{s}")  # type: ignore[arg-type]
    for order in itertools.permutations(SENTIMENTS):
        mapping = tuple(order.index(s) for s in SENTIMENTS)
        desc = f"Classify the sentiment of a tweet as negative, neutral or positive. {_numbered(order)}"
        out["3way-" + "-".join(order)] = TaskSpec(desc, tuple(order), mapping, "3way")  # type: ignore[arg-type]
    return out


#: Task name -> `TaskSpec`, the 18 tasks of the tweet corpus in every label order.
TWEET_TASKS: dict[str, TaskSpec] = _specs()


def label_twins(name: str) -> list[str]:
    """The other tasks of ``name``'s family: the same task with its labels reordered.

    Raises:
        KeyError: ``name`` is not a key of `TWEET_TASKS`.
    """
    if name not in TWEET_TASKS:
        raise KeyError(f"unknown tweet task {name!r}; known: {sorted(TWEET_TASKS)}")
    family = TWEET_TASKS[name].family
    return [n for n, s in TWEET_TASKS.items() if s.family == family and n != name]


def many_tweet_tasks(names: Sequence[str] | None = None, *, train_per_label: int = 400, eval_per_label: int = 200, seed: int = 0, root: str | None = None) -> dict[str, TextTask]:
    """`TWEET_TASKS` as `paramgen.lora.TextTask` s over one pool of tweets per split.

    As `paramgen.lora.text_tasks`: at most ``train_per_label`` training tweets and
    ``eval_per_label`` test tweets (half as many validation tweets) of each sentiment,
    drawn with ``seed``, relabelled per task (all tasks share the texts).

    Args:
        names: Keys of `TWEET_TASKS`; all when ``None``.
        train_per_label: Training pool size per sentiment.
        eval_per_label: Test pool size per sentiment (validation: half).
        seed: Which tweets the pools keep.
        root: Passed to ``paramgen.data.load_dataset``.

    Raises:
        KeyError: An unknown task name.
    """
    from paramgen.data import Split, load_dataset

    names = list(TWEET_TASKS) if names is None else list(names)
    unknown = [n for n in names if n not in TWEET_TASKS]
    if unknown:
        raise KeyError(f"unknown tweet tasks {unknown}; known: {sorted(TWEET_TASKS)}")
    data = load_dataset("tweets", root=root)
    g = torch.Generator().manual_seed(seed)
    pools = {"train": _pool(data.train, train_per_label, g), "val": _pool(data.val, eval_per_label // 2, g), "test": _pool(data.test, eval_per_label, g)}
    tasks = {}
    for name in names:
        spec = TWEET_TASKS[name]
        lut = torch.tensor(spec.mapping)
        splits = {}
        for split_name, pool in pools.items():
            y = lut[pool.y]
            keep = torch.nonzero(y >= 0).squeeze(1)
            splits[split_name] = Split(tuple(pool.x[i] for i in keep.tolist()), y[keep])
        tasks[name] = TextTask(name, spec.description, spec.label_names, splits["train"], splits["val"], splits["test"])
    return tasks


def label_slot_condition(embed: Callable[[list[str]], torch.Tensor], texts: Sequence[str], label_names: Sequence[Sequence[str]], *, max_labels: int = 3, seed: int = 0) -> torch.Tensor:
    """Condition vectors in which the label order is explicit: text, then one slot per label.

    A sentence embedding of "label 0 is negative, label 1 is neutral" hardly differs from
    that of the reversed sentence. Here each condition is the concatenation of the text's
    embedding and, per label slot ``i < max_labels``, the embedding of ``"label i:
    <name>"`` (zeros for a missing label), mapped back to the embedding width by a fixed
    random matrix with orthonormal rows (drawn from ``seed``) and scaled to unit norm. A
    swapped label order moves the vector as much as another label would.

    Args:
        embed: Texts -> ``(B, dim)`` embeddings, e.g. ``conditioner.text.embed`` of a
            `paramgen.conditioners.TextOrVectorConditioner`.
        texts: One condition text per task (description and examples).
        label_names: The label names of each task, label 0 first.
        max_labels: Label slots.
        seed: Draws the fixed projection (the same seed gives the same vectors).

    Returns:
        ``(B, dim)`` float32 on the device of ``embed``'s output.

    Raises:
        ValueError: Lengths differ, or a task has no labels or more than ``max_labels``.
    """
    if len(texts) != len(label_names):
        raise ValueError(f"label_slot_condition: {len(texts)} texts but {len(label_names)} label lists")
    if any(not 1 <= len(ls) <= max_labels for ls in label_names):
        raise ValueError(f"label_slot_condition: expected 1 to {max_labels} labels per task, got {[len(ls) for ls in label_names]}")
    text_emb = embed(list(texts)).float()  # (B, dim)
    b, dim = text_emb.shape
    slots = sorted({f"label {i}: {n}" for ls in label_names for i, n in enumerate(ls)})
    slot_emb = dict(zip(slots, embed(slots).float().to(text_emb.device), strict=True))
    parts = [text_emb]
    for i in range(max_labels):
        parts.append(torch.stack([slot_emb[f"label {i}: {ls[i]}"] if i < len(ls) else torch.zeros(dim, device=text_emb.device) for ls in label_names]))
    x = torch.cat(parts, dim=1)  # (B, (1 + max_labels) dim)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], dim, generator=g, dtype=torch.float64))  # orthonormal columns
    out = x @ q.float().to(x.device)  # (B, dim)
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
