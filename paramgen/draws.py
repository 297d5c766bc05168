"""Several draws of one checkpoint's condition: fitting sees a fresh one at every step.

A task's data can be drawn many ways (5 random images per class out of hundreds). A
generator fitted with one image set per checkpoint learns that set, not the task: a new
draw of the same task's images then gives a worse model. Pass ``Draws(d0, d1, ...)`` as a
checkpoint's raw condition to `paramgen.fit` and every step that reads the condition
picks one of the draws at random, from the stage's own random stream:

- the contrastive alignment (`paramgen.conditioners.align.align_to_latents`), per row and
  step;
- the prior: with a frozen conditioner every draw is encoded once and each step picks one
  vector per row; with a trainable conditioner the raw draw is picked per row and step.

A residual anchor (`paramgen.anchors`) reads a checkpoint's **first** draw, so that its
fitting targets stay fixed. Sampling takes one condition per model, never a `Draws`.

Examples:
    >>> import torch
    >>> d = Draws(torch.zeros(2, 3), torch.ones(2, 3))
    >>> len(d), d.first.sum().item()
    (2, 0.0)
    >>> picked = pick_draws([d, "plain"], torch.Generator().manual_seed(0))
    >>> picked[1], picked[0].shape
    ('plain', torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch

__all__ = ["Draws", "pick_draws", "first_draws", "has_draws", "draw_table"]


def _check_items(_: Any, __: Any, value: tuple[Any, ...]) -> None:
    if len(value) < 1:
        raise ValueError("Draws needs at least one draw")
    if any(isinstance(v, Draws) for v in value):
        raise ValueError("Draws cannot hold Draws (pass the draws themselves)")


@attrs.frozen(eq=False, init=False)
class Draws:
    """Alternative raw conditions of one checkpoint (e.g. random image sets of its task).

    Attributes:
        items: The draws, each a raw condition the conditioner takes.

    Raises:
        ValueError: No draws, or a `Draws` inside a `Draws`.
    """

    items: tuple[Any, ...] = attrs.field(validator=_check_items)

    def __init__(self, *items: Any) -> None:
        self.__attrs_init__(tuple(items))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]

    @property
    def first(self) -> Any:
        """The first draw (what a residual anchor reads)."""
        return self.items[0]


def has_draws(conds: Sequence[Any] | None) -> bool:
    """Whether any condition is a `Draws`."""
    return conds is not None and any(isinstance(c, Draws) for c in conds)


def pick_draws(conds: Sequence[Any], generator: torch.Generator | None) -> list[Any]:
    """Each `Draws` replaced by one of its draws (uniformly, from ``generator`` on the CPU);
    other conditions as they are. Draws nothing from ``generator`` when there is no `Draws`."""
    out = list(conds)
    slots = [i for i, c in enumerate(out) if isinstance(c, Draws)]
    if slots:
        picks = torch.randint(2**62, (len(slots),), generator=generator, device="cpu").tolist()
        for i, p in zip(slots, picks, strict=True):
            out[i] = out[i][p % len(out[i])]
    return out


def first_draws(conds: Sequence[Any]) -> list[Any]:
    """Each `Draws` replaced by its first draw."""
    return [c.first if isinstance(c, Draws) else c for c in conds]


def draw_table(conds: Sequence[Any]) -> tuple[list[Any], torch.Tensor]:
    """All draws as one flat list, and ``(M, P)`` indices into it (``P``: the most draws of
    any condition; a condition with fewer draws cycles through its own).

    Examples:
        >>> flat, table = draw_table([Draws("a", "b"), "c"])
        >>> flat, table.tolist()
        (['a', 'b', 'c'], [[0, 1], [2, 2]])
    """
    flat: list[Any] = []
    starts: list[tuple[int, int]] = []
    for c in conds:
        items = list(c) if isinstance(c, Draws) else [c]
        starts.append((len(flat), len(items)))
        flat.extend(items)
    p = max(n for _, n in starts) if starts else 1
    table = torch.tensor([[s + j % n for j in range(p)] for s, n in starts], dtype=torch.long).reshape(len(starts), p)
    return flat, table
