"""Few-shot classes and episodes from Fashion-MNIST and digits.

`fewshot_pool` turns the 10 Fashion-MNIST and 10 digits classes into a pool of image
classes of one size (digits are resized from 8x8 to 28x28), adds rotated copies as extra
classes, and splits the *source* classes into base, validation and novel classes: every
rotated copy of a source class stays in the source class's split, so no novel class is a
rotation of a base class. Rotations by 90 degrees only (0 and 90 by default): a digit 0,
1 or 8 turned by 180 degrees looks like itself and would make two classes identical.

`sample_episodes` draws N-way K-shot episodes (support and query indices within each
class, disjoint); `gather` collects per-class feature tensors into episode tensors
``(E, way, shot, F)``.

Examples:
    >>> import torch
    >>> counts = [30, 30, 30, 30, 30, 30]
    >>> ep = sample_episodes(counts, 4, way=5, shot=1, query=3, generator=torch.Generator().manual_seed(0))
    >>> ep.classes.shape, ep.support.shape, ep.query.shape
    (torch.Size([4, 5]), torch.Size([4, 5, 1]), torch.Size([4, 5, 3]))
    >>> feats = [torch.full((30, 2), float(c)) for c in range(6)]  # class c's features are all c
    >>> s, q = gather(feats, ep)
    >>> bool((s[..., 0, 0] == ep.classes).all()), tuple(q.shape)
    (True, (4, 5, 3, 2))
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F

__all__ = ["ClassPool", "Episodes", "fewshot_pool", "sample_episodes", "gather"]

SPLITS = ("base", "val", "novel")


@attrs.frozen(eq=False)
class ClassPool:
    """Image classes for few-shot learning.

    Attributes:
        images: One ``(N_c, 1, size, size)`` float tensor in ``[0, 1]`` per class.
        names: One name per class, e.g. ``"fashion_mnist/Sandal@90"``.
        splits: ``"base"``, ``"val"``, ``"novel"`` -> class ids (indices into ``images``).
    """

    images: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    splits: dict[str, tuple[int, ...]]

    def counts(self, split: str) -> list[int]:
        """Number of images of each class of ``split``, in ``splits[split]`` order."""
        return [len(self.images[c]) for c in self.splits[split]]


@attrs.frozen(eq=False)
class Episodes:
    """``E`` episodes as indices.

    Attributes:
        classes: ``(E, way)`` positions into the candidate class list, in episode class order.
        support: ``(E, way, shot)`` image indices within each class.
        query: ``(E, way, query)`` image indices within each class, disjoint from the support.
    """

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    def __len__(self) -> int:
        return self.classes.shape[0]


def fewshot_pool(
    *,
    per_class: int | None = None,
    rotations: Sequence[int] = (0, 90),
    size: int = 28,
    counts: tuple[int, int, int] = (5, 2, 3),
    split_seed: int = 0,
) -> ClassPool:
    """Fashion-MNIST and digits classes, with rotated copies, split into base/val/novel.

    Args:
        per_class: Keep at most this many images per class (the first ones of the
            dataset's train, val and test splits in that order); ``None`` keeps all.
        rotations: Rotations in degrees (multiples of 90), one class copy each.
        size: Side of every image (digits are resized bilinearly).
        counts: Source classes per dataset in base, val and novel (sum 10).
        split_seed: Seed of the fixed permutation of each dataset's source classes.

    Returns:
        The pool; with the defaults 20 base, 8 validation and 12 novel classes.
    """
    from paramgen.data import load_dataset

    if sum(counts) != 10 or min(counts) < 1:
        raise ValueError(f"fewshot_pool: expected counts (base, val, novel) of source classes summing to 10, got {counts}")
    bad = [r for r in rotations if r % 90 != 0]
    if bad or len(set(rotations)) != len(rotations) or not rotations:
        raise ValueError(f"fewshot_pool: expected distinct rotations that are multiples of 90, got {tuple(rotations)}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"fewshot_pool: expected per_class >= 1 or None, got {per_class}")
    images: list[torch.Tensor] = []
    names: list[str] = []
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    for d, dataset in enumerate(("fashion_mnist", "digits")):
        task = load_dataset(dataset)
        x = torch.cat([task.train.x, task.val.x, task.test.x])  # type: ignore[list-item]
        y = torch.cat([task.train.y, task.val.y, task.test.y])
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(split_seed + d)).tolist()
        split_of = {c: SPLITS[0 if i < counts[0] else 1 if i < counts[0] + counts[1] else 2] for i, c in enumerate(perm)}
        for c in range(10):
            xc = x[y == c][:per_class]
            if xc.shape[-1] != size or xc.shape[-2] != size:
                xc = F.interpolate(xc, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
            for r in rotations:
                splits[split_of[c]].append(len(images))
                images.append(torch.rot90(xc, k=(r // 90) % 4, dims=(2, 3)).contiguous())
                names.append(f"{dataset}/{task.class_names[c]}@{r}")
    return ClassPool(images=tuple(images), names=tuple(names), splits={k: tuple(v) for k, v in splits.items()})


def sample_episodes(
    counts: Sequence[int],
    n: int,
    *,
    way: int,
    shot: int,
    query: int,
    generator: torch.Generator,
) -> Episodes:
    """Draw ``n`` episodes: ``way`` distinct classes in random order, disjoint support and query.

    Args:
        counts: Images of each candidate class.
        n: Number of episodes.
        way: Classes per episode.
        shot: Support images per class.
        query: Query images per class.
        generator: All randomness.
    """
    if way > len(counts):
        raise ValueError(f"sample_episodes: expected at most {len(counts)} ways (candidate classes), got way={way}")
    if min(n, way, shot, query) < 1:
        raise ValueError(f"sample_episodes: expected n, way, shot, query >= 1, got {n}, {way}, {shot}, {query}")
    small = [i for i, c in enumerate(counts) if c < shot + query]
    if small:
        raise ValueError(f"sample_episodes: classes {small} have fewer than shot + query = {shot + query} images")
    classes = torch.empty(n, way, dtype=torch.long)
    support = torch.empty(n, way, shot, dtype=torch.long)
    queries = torch.empty(n, way, query, dtype=torch.long)
    for e in range(n):
        classes[e] = torch.randperm(len(counts), generator=generator)[:way]
        for k, c in enumerate(classes[e].tolist()):
            idx = torch.randperm(counts[c], generator=generator)[: shot + query]
            support[e, k], queries[e, k] = idx[:shot], idx[shot:]
    return Episodes(classes=classes, support=support, query=queries)


def gather(features: Sequence[torch.Tensor], episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Support ``(E, way, shot, F)`` and query ``(E, way, query, F)`` features of the episodes.

    Args:
        features: One ``(N_c, F)`` tensor per candidate class (same order as the
            ``counts`` the episodes were drawn from).
        episodes: From `sample_episodes`.
    """
    sup = torch.stack([torch.stack([features[c][i] for c, i in zip(cl.tolist(), s, strict=True)]) for cl, s in zip(episodes.classes, episodes.support, strict=True)])
    qry = torch.stack([torch.stack([features[c][i] for c, i in zip(cl.tolist(), q, strict=True)]) for cl, q in zip(episodes.classes, episodes.query, strict=True)])
    return sup, qry
