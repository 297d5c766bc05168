"""The `Layout`: how a generator's architectures become normalized rows, and back.

A generator writes one architecture or a family of them (IGPG). The layout treats one
architecture as a family of one, keyed ``"model"`` (as `paramgen.Generator.specs`
does), so that checking the architecture keys, normalizing, packing into rows and
unpacking are one code path for both:

    flat vectors (M, D_arch) --normalize--> --pack--> rows (M, N, C) + mask
    rows (M, N, C) --unpack--> --inverse normalize--> flat vectors --unflatten--> state dicts

Models are processed in groups of one architecture each (a single architecture is one
group), in order of first appearance. When every model is of one architecture the mask
is shared, ``(N, C)``; otherwise it is ``(M, N, C)``.

`ZooRows` holds a zoo's rows as a map-style dataset (what the engine trains the
tokenizer on and what `paramgen.Generator.encode_zoo` encodes), and `collate` batches
its items or those of a user's dataset.

Examples:
    >>> import torch
    >>> from paramgen.spec import ParamSpec
    >>> from paramgen.vectorize import ChunkVectorizer
    >>> layout = Layout(ChunkVectorizer(ParamSpec.from_module(torch.nn.Linear(3, 2)), chunk_size=4))
    >>> archs = layout.check_archs(None, 5)
    >>> archs[:2], list(layout.specs)
    (['model', 'model'], ['model'])
    >>> x, mask = layout.to_rows(torch.randn(5, 8), None, archs)
    >>> x.shape, mask.shape
    (torch.Size([5, 2, 4]), torch.Size([2, 4]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from paramgen.interfaces import Vectorizer, require
from paramgen.normalize import GlobalScale, Normalizer
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.vectorize import FamilyVectorizer

__all__ = ["SINGLE", "Layout", "ZooRows", "collate", "by_arch"]

#: The architecture key of a generator over a single architecture.
SINGLE = "model"

Flat = torch.Tensor | Sequence[torch.Tensor]


def by_arch(archs: Sequence[str]) -> dict[str, list[int]]:
    """Model indices of each architecture, in order of first appearance.

    Examples:
        >>> by_arch(["a", "b", "a"])
        {'a': [0, 2], 'b': [1]}
    """
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(archs):
        groups.setdefault(a, []).append(i)
    return groups


def _whole(idx: list[int], m: int) -> bool:
    return len(idx) == m and idx == list(range(m))


def _pick(x: Any, idx: list[int]) -> Any:
    """``x[idx]`` of a tensor, or ``x`` itself when ``idx`` is all of it in order (no copy)."""
    return x if _whole(idx, len(x)) else x[idx]


def _sub(seq: Sequence[str] | None, idx: list[int]) -> list[str] | None:
    return None if seq is None else [seq[i] for i in idx]


class Layout:
    """Checking, normalizing and laying out the weights of a generator's architectures.

    Args:
        vectorizer: A `paramgen.interfaces.Vectorizer` (one architecture, a family of one
            keyed ``"model"``) or a `paramgen.vectorize.FamilyVectorizer`.
        normalizer: Applied to flat vectors before packing (``None``: raw weights). A
            family takes only `paramgen.normalize.GlobalScale`, whose statistics do not
            depend on the architecture (so that unseen members can be de-normalized too).

    Attributes:
        vectorizer: The vectorizer as given.
        members: The family: architecture key -> layout (one ``"model"`` entry for a
            single architecture).
        single: Whether the generator was built over one architecture (then ``archs=``
            is refused and flat vectors come as one ``(M, D)`` tensor).
        normalizer: The normalizer (fitted by `fit_normalizer`).

    Raises:
        TypeError: The vectorizer is neither; a family with another normalizer.
    """

    def __init__(self, vectorizer: Vectorizer | FamilyVectorizer, normalizer: Normalizer | None = None) -> None:
        self.single = not isinstance(vectorizer, FamilyVectorizer)
        if self.single:
            require(vectorizer, Vectorizer, "vectorizer")
        elif normalizer is not None and not isinstance(normalizer, GlobalScale):
            raise TypeError(
                f"a FamilyVectorizer generator takes normalizer=None or GlobalScale (architecture-independent statistics), got {type(normalizer).__name__}"
            )
        if normalizer is not None:
            require(normalizer, Normalizer, "normalizer")
        self.vectorizer: Any = vectorizer
        self.members = vectorizer if isinstance(vectorizer, FamilyVectorizer) else FamilyVectorizer({SINGLE: cast(Any, vectorizer)})
        self.normalizer = normalizer

    # ------------------------------------------------------------------ shape
    @property
    def rows(self) -> int:
        """``N``: rows of every model."""
        return self.members.rows

    @property
    def width(self) -> int:
        """``C``: entries per row."""
        return self.members.width

    @property
    def specs(self) -> dict[str, ParamSpec]:
        """Architecture key -> spec."""
        return self.members.specs

    def config(self) -> dict[str, Any]:
        """The vectorizer's config, as saved with a generator."""
        return dict(self.vectorizer.config())

    # ------------------------------------------------------------------ checking
    def check_archs(self, archs: Sequence[str] | None, m: int) -> list[str]:
        """The architecture key of each of ``m`` models.

        A single architecture takes ``archs=None`` (every model is ``"model"``); a family
        needs one known key per model.

        Raises:
            ValueError: ``archs`` given to a single architecture, or not one per model.
            KeyError: An unknown key (the message names the known ones).
        """
        if self.single:
            if archs is not None:
                raise ValueError("archs= is for a generator over a FamilyVectorizer; this one has a single architecture")
            return [SINGLE] * m
        if archs is None or isinstance(archs, str) or len(archs) != m:
            got = archs if archs is None or isinstance(archs, str) else len(archs)
            raise ValueError(f"a family generator needs one architecture key per model ({m}), got {got}"[:300])
        for a in set(archs):
            self.members.member(a)  # KeyError naming the known keys
        return list(archs)

    def check_flat(self, flat: Flat, archs: Sequence[str]) -> None:
        """Check that each flat vector has its architecture's size.

        Raises:
            paramgen.spec.SpecMismatchError: A tensor that is not ``(M, D)``, or a vector of
                another size than its architecture's (the first one is named).
        """
        if isinstance(flat, torch.Tensor):
            for a in set(archs):
                d = self.specs[a].numel
                if flat.ndim != 2 or flat.shape[1] != d:
                    raise SpecMismatchError(f"expected flat weight vectors of shape (M, {d}), got {tuple(flat.shape)}")
            return
        for a, idx in by_arch(archs).items():
            d = self.specs[a].numel
            bad = next((i for i in idx if flat[i].numel() != d), None)
            if bad is not None:
                raise SpecMismatchError(f"model {bad} is labelled {a!r} ({d} weights) but has {flat[bad].numel()} values")

    def member_of(self, spec: ParamSpec, what: str) -> str:
        """The key of the member whose spec has ``spec``'s fingerprint.

        Raises:
            ValueError: No member has it (``what`` names the models in the message).
        """
        for key, member in self.specs.items():
            if member.fingerprint == spec.fingerprint:
                return key
        raise ValueError(f"{what} has an architecture (spec {spec.fingerprint}) that is not a member of this family ({sorted(self.specs)})")

    def flatten(self, state_dicts: Sequence[Mapping[str, torch.Tensor]], archs: Sequence[str] | None) -> tuple[Flat, list[str] | None]:
        """State dicts as flat vectors, each checked against its spec (the first mismatching
        tensor is named), and the ``archs=`` to pass on with them (``None`` for a single
        architecture, as `check_archs` takes it).

        For a family, ``archs=None`` infers each model's architecture (the first member it
        fits). One architecture gives an ``(M, D)`` tensor, several a list of vectors.

        Raises:
            ValueError: A state dict fits no member; ``archs`` do not match the models.
            paramgen.spec.SpecMismatchError: A state dict does not fit its architecture.
        """
        if archs is None and not self.single:
            archs = [self._fitting(i, sd) for i, sd in enumerate(state_dicts)]
        keys = self.check_archs(archs, len(state_dicts))
        groups = by_arch(keys)
        passed = None if self.single else keys
        if len(groups) == 1:
            return self.specs[keys[0]].flatten(state_dicts)[0], passed
        where: dict[int, torch.Tensor] = {}
        for a, idx in groups.items():
            where.update(zip(idx, self.specs[a].flatten([state_dicts[i] for i in idx])[0], strict=True))
        return [where[i] for i in range(len(keys))], passed

    def _fitting(self, i: int, sd: Mapping[str, torch.Tensor]) -> str:
        for key, spec in self.specs.items():
            try:
                spec.check_state_dict(sd)
            except SpecMismatchError:
                continue
            return key
        raise ValueError(f"state dict {i} matches no member of this family ({sorted(self.specs)}); pass archs=")

    # ------------------------------------------------------------------ normalization
    def normalize(self, flat: torch.Tensor, arch: str, tasks: Sequence[str] | None, *, inverse: bool = False) -> torch.Tensor:
        """The normalizer's transform (or inverse) of ``(M, D)`` vectors of one architecture.

        A `paramgen.normalize.GlobalScale` gets the spec (its log and fan-in options need
        it), the other normalizers the tasks.
        """
        norm = self.normalizer
        if norm is None:
            return flat
        if isinstance(norm, GlobalScale):
            spec = self.specs[arch]
            return norm.inverse(flat, spec=spec) if inverse else norm.transform(flat, spec=spec)
        return norm.inverse(flat, tasks=tasks) if inverse else norm.transform(flat, tasks=tasks)

    def fit_normalizer(self, flat: Flat, tasks: Sequence[str] | None, archs: Sequence[str]) -> None:
        """Fit the normalizer's statistics on a zoo (nothing without a normalizer).

        A `paramgen.normalize.GlobalScale` fits over the architectures' groups (one for a
        single architecture), with their specs; the others (single architectures only)
        on all vectors with their tasks.
        """
        norm = self.normalizer
        if norm is None:
            return
        groups = by_arch(archs)
        if isinstance(norm, GlobalScale):
            norm.fit_groups([(self._take(flat, idx), self.specs[a]) for a, idx in groups.items()])
        else:
            norm.fit(self._take(flat, list(range(len(archs)))), tasks=tasks)

    # ------------------------------------------------------------------ rows
    @staticmethod
    def _take(flat: Flat, idx: list[int]) -> torch.Tensor:
        """``(len(idx), D)`` float32 vectors of the models ``idx``."""
        if isinstance(flat, torch.Tensor):
            return _pick(flat, idx).float()
        return torch.stack([flat[i].reshape(-1).float() for i in idx])

    def to_rows(self, flat: Flat, tasks: Sequence[str] | None, archs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized rows ``(M, N, C)`` (float32) and their mask: ``(N, C)`` when every
        model is of one architecture, else ``(M, N, C)``.

        Raises:
            paramgen.spec.SpecMismatchError: A vector of another size than its architecture's.
        """
        self.check_flat(flat, archs)
        groups = by_arch(archs)
        if len(groups) == 1:
            (a,) = groups
            return self.members.pack(self.normalize(self._take(flat, groups[a]), a, tasks), a), self.members.mask_of(a)
        x = torch.zeros(len(archs), self.rows, self.width)
        mask = torch.zeros(len(archs), self.rows, self.width, dtype=torch.bool)
        for a, idx in groups.items():
            x[idx] = self.members.pack(self.normalize(self._take(flat, idx), a, _sub(tasks, idx)), a)
            mask[idx] = self.members.mask_of(a)
        return x, mask

    def from_rows(self, rows: torch.Tensor, tasks: Sequence[str] | None, archs: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        """Decoded rows to flat vectors in weight scale, in the vector dtype of the specs
        (float32, or float64 when a spec holds float64 tensors: a tokenizer in bfloat16
        must not round the de-normalized weights to bfloat16).

        Returns:
            ``(M, D)`` for a single architecture; for a family a list of ``M`` vectors,
            each of its architecture.
        """
        rows = rows.to(torch.float64 if any(s.vector_dtype == torch.float64 for s in self.specs.values()) else torch.float32)
        groups = by_arch(archs)
        parts = {a: self.normalize(self.members.unpack(_pick(rows, idx), a), a, _sub(tasks, idx), inverse=True) for a, idx in groups.items()}
        if self.single:
            return parts[SINGLE]
        out: dict[int, torch.Tensor] = {}
        for a, idx in groups.items():
            out.update(zip(idx, parts[a], strict=True))
        return [out[i] for i in range(len(archs))]

    def unflatten(self, flat: Flat, archs: Sequence[str], base: Mapping[str, torch.Tensor] | None = None) -> list[dict[str, torch.Tensor]]:
        """Flat vectors (as `from_rows` gives them) to state dicts of their architectures."""
        out: dict[int, dict[str, torch.Tensor]] = {}
        for a, idx in by_arch(archs).items():
            group = _pick(flat, idx) if isinstance(flat, torch.Tensor) else torch.stack([flat[i] for i in idx])
            out.update(zip(idx, self.specs[a].unflatten(group, base=base), strict=True))
        return [out[i] for i in range(len(archs))]


class ZooRows(torch.utils.data.Dataset):
    """A zoo's normalized rows as a map-style dataset; kept where they are (the CPU).

    Items are dicts with ``"x"`` (``(N, C)`` rows), ``"mask"`` (``None`` when the mask is
    shared: it is then `shared`), ``"cond"`` and ``"task"``; `__getitems__` gives a whole
    batch at once (``collate`` passes it through).

    Args:
        x: ``(M, N, C)`` rows.
        mask: ``(N, C)`` shared or ``(M, N, C)``.
        conds: One raw condition per model, or ``None``.
        tasks: One task per model, or ``None``.
    """

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, conds: Sequence[Any] | None = None, tasks: Sequence[str] | None = None) -> None:
        self.x, self.mask = x, mask
        self.shared = mask if mask.ndim == 2 else None
        self.conds, self.tasks = conds, tasks

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {
            "x": self.x[index],
            "mask": None if self.shared is not None else self.mask[index],  # a shared mask stays out
            "cond": None if self.conds is None else [self.conds[i] for i in idx],
            "task": None if self.tasks is None else [self.tasks[i] for i in idx],
        }


def collate(items: Any) -> dict[str, Any]:
    """A batch from `ZooRows.__getitems__` as is, or a list of a user dataset's items
    (dicts with ``"x"`` and optionally ``"mask"``, ``"cond"``, ``"task"``).

    Raises:
        TypeError: Items that are not dicts with an ``"x"`` entry.
    """
    if isinstance(items, dict):
        return items
    if not items or not all(isinstance(it, dict) and "x" in it for it in items):
        raise TypeError("a fit dataset's items must be dicts with an 'x' entry: the rows (N, C) of one model, normalized")

    def column(key: str) -> list[Any] | None:
        values = [it.get(key) for it in items]
        return None if all(v is None for v in values) else values

    masks = column("mask")
    return {
        "x": torch.stack([it["x"] for it in items]),  # (B, N, C)
        "mask": None if masks is None else torch.stack(masks),  # (B, N, C)
        "cond": column("cond"),
        "task": column("task"),
    }
