"""What `paramgen.training.fit` accepts, turned into what the stages take: a `Zoo`, a
`WeightDataset`, state dicts, flat vectors or a dataset of rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import Any, cast

import attrs
import torch

from paramgen.draws import first_draws
from paramgen.generator import Generator
from paramgen.layout import ZooRows
from paramgen.spec import SpecMismatchError
from paramgen.training.config import FitConfig

__all__ = ["adapt_inputs", "check_zoo", "run_fingerprint"]


@attrs.frozen
class _Zoo:
    """The checked zoo: flat vectors (or a lazy dataset of rows) with their conditions,
    tasks and architecture keys."""

    flat: torch.Tensor | Sequence[torch.Tensor] | None
    dataset: torch.utils.data.Dataset | None
    m: int
    conds: Sequence[Any] | None
    tasks: list[str] | None
    archs: list[str]

    @property
    def lazy(self) -> bool:
        return self.dataset is not None

    def rows(self, generator: Generator) -> torch.utils.data.Dataset:
        """The dataset of normalized rows the stages read, after fitting the normalizer on
        the flat vectors (a lazy dataset is its own rows: its normalization is its business).

        This is where checkpoints become rows: with a pinned base, the rows are those of
        the deltas ``w - w_base`` (and the normalizer's statistics are the deltas'); with a
        residual anchor, those of ``w - s * a(cond)`` (`Generator.residual_targets`)."""
        if self.dataset is not None:
            if generator.anchor is not None:
                raise ValueError("an anchored generator fits on in-memory weight vectors with their conditions, not on a lazy dataset")
            return self.dataset
        assert self.flat is not None
        flat = self.flat
        if generator.base is not None:
            assert isinstance(flat, torch.Tensor)  # a single architecture (checked by the generator)
            flat = generator.delta(flat)  # (M, D)
        if generator.anchor is not None:
            if self.conds is None or not isinstance(flat, torch.Tensor):
                raise ValueError("an anchored generator needs one condition per checkpoint (its anchor is computed from the condition's data)")
            flat = generator.residual_targets(flat, first_draws(self.conds))  # (M, D): w - s * a(cond), from a checkpoint's first draw
        generator.layout.fit_normalizer(flat, self.tasks, self.archs)
        x, mask = generator.layout.to_rows(flat, self.tasks, self.archs)  # (M, N, C) on the CPU
        return ZooRows(x, mask, self.conds, self.tasks)


class _WeightItems(torch.utils.data.Dataset):
    """A `paramgen.zoo.WeightDataset` as fit's items: rows ``x``, ``mask``, ``task`` and,
    when given, one raw condition per checkpoint."""

    def __init__(self, dataset: Any, conds: Sequence[Any] | None) -> None:
        self.dataset, self.conds = dataset, conds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        out = {"x": item["values"], "mask": item["mask"], "task": item["task"]}
        return out if self.conds is None else {**out, "cond": self.conds[i]}


def _from_zoo(generator: Generator, zoo: Any, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> tuple[Any, Sequence[str], Sequence[str] | None]:
    """A `paramgen.zoo.Zoo` view as flat vectors, its tasks and (for a family) architectures."""
    if len(zoo) == 0:
        raise ValueError(f"fit needs at least one model; the zoo view {zoo!r} is empty")
    if generator.base is not None and zoo.base is not None:
        # A zoo of fine-tunes of one base: the generator's deltas must be over that base.
        # (A generator without a base may fit the weights themselves, e.g. an ablation.)
        zoo.check_base(generator.base)
    tasks = [c.task for c in zoo] if tasks is None else tasks
    if generator.layout.single:
        if len(zoo.spec_ids) != 1:
            raise ValueError(
                f"this generator has one architecture, the zoo holds {len(zoo.spec_ids)} {list(zoo.spec_ids)}: "
                "fit on zoo.filter(spec_id=...), or build the generator over a FamilyVectorizer"
            )
        try:
            generator.spec.check_compatible(zoo.spec())
        except SpecMismatchError as e:
            raise SpecMismatchError(f"the zoo's checkpoints are not of the generator's architecture: {e}") from e
        return zoo.flatten()[0], tasks, archs
    by_spec = {sid: zoo.filter(spec_id=sid) for sid in zoo.spec_ids}
    if archs is None:
        key_of = {sid: generator.layout.member_of(zoo.spec(sid), f"the zoo's spec {sid}") for sid in by_spec}
        archs = [key_of[c.spec_id] for c in zoo]
    where = {c: i for i, c in enumerate(zoo)}
    rows: dict[int, torch.Tensor] = {}
    for view in by_spec.values():
        rows.update((where[c], row) for c, row in zip(view, view.flatten()[0], strict=True))
    flat = [rows[i] for i in range(len(zoo))]
    return flat, tasks, archs


_Inputs = tuple[Any, Sequence[Any] | None, Sequence[str] | None, Sequence[str] | None]


def _takes_task_names(conditioner: Any) -> bool:
    """Whether raw conditions are task names (an `IndexConditioner`), so a zoo's tasks can serve as them."""
    from paramgen.conditioners.index import IndexConditioner

    return isinstance(conditioner, IndexConditioner)


def adapt_inputs(generator: Generator, data: Any, conds: Sequence[Any] | None, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> _Inputs:
    """A `Zoo`, a `WeightDataset` or state dicts turned into what the stages take."""
    from paramgen.zoo.store import WeightDataset, Zoo

    if isinstance(data, Zoo):
        flat, tasks, archs = _from_zoo(generator, data, tasks, archs)
        if conds is None and _takes_task_names(generator.conditioner):
            conds = list(tasks)  # a task-indexed generator: the checkpoints' tasks are their conditions
        return flat, conds, tasks, archs
    if isinstance(data, WeightDataset):
        if tasks is not None or archs is not None:
            raise ValueError("with a WeightDataset, tasks come from its checkpoints: pass tasks and archs as None")
        if not generator.layout.single:
            raise ValueError("a family generator fits on a Zoo (all architectures) or flat vectors with archs=, not on a WeightDataset")
        try:
            generator.spec.check_compatible(data.vectorizer.spec)
        except SpecMismatchError as e:
            raise SpecMismatchError(f"the WeightDataset is not of the generator's architecture: {e}") from e
        layout = generator.layout
        if (data.vectorizer.rows, data.vectorizer.width) != (layout.rows, layout.width):
            raise ValueError(
                f"the WeightDataset lays models out as ({data.vectorizer.rows}, {data.vectorizer.width}) rows, the generator as "
                f"({layout.rows}, {layout.width}): build it with the generator's vectorizer"
            )
        if data.normalizer is not None:
            raise ValueError("build the WeightDataset with normalizer=None: fit fits the generator's own normalizer")
        if conds is not None and len(conds) != len(data):
            raise ValueError(f"expected one raw condition per checkpoint ({len(data)}), got {len(conds)}")
        if generator.normalizer is not None or generator.base is not None:  # statistics need every model at once, deltas the flat vectors: the zoo's fast path
            flat, tasks, _ = _from_zoo(generator, data.zoo, None, None)
            return flat, conds, tasks, None
        return _WeightItems(data, conds), None, None, None
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 0 and all(isinstance(d, Mapping) for d in data):
        flat, keys = generator.layout.flatten(data, archs)
        return flat, conds, tasks, keys
    return data, conds, tasks, archs


def check_zoo(generator: Generator, flat: Any, conds: Sequence[Any] | None, tasks: Sequence[str] | None, archs: Sequence[str] | None) -> _Zoo:
    """Check the adapted inputs against the generator (sizes, architectures, one condition and
    task per model) and hold them as the stages read them.

    Raises:
        TypeError: An input kind fit does not take.
        ValueError: An empty zoo; conditions, tasks or architectures that do not match it.
        paramgen.spec.SpecMismatchError: Vectors of another size than their architecture's.
    """
    if isinstance(flat, torch.utils.data.Dataset):
        if conds is not None or tasks is not None or archs is not None:
            raise ValueError("with a dataset, conditions and tasks come from its items ('cond', 'task'); pass conds, tasks and archs as None")
        if not generator.layout.single:
            raise ValueError("a family generator fits on flat vectors with archs=, not on a dataset")
        if generator.normalizer is not None:
            raise ValueError(
                "a dataset gives rows as the tokenizer sees them (normalized): build the generator with normalizer=None "
                "and normalize in the dataset"
            )
        if generator.base is not None:
            raise ValueError(
                "a generator with a pinned base learns deltas w - w_base, which it takes itself from a Zoo, a WeightDataset, "
                "state dicts or flat weight vectors; a dataset of rows cannot say whether its rows are weights or deltas"
            )
        try:
            m = len(cast(Sized, flat))  # a map-style dataset need not declare __len__: TypeError then
        except TypeError as e:
            raise TypeError(f"fit needs a map-style dataset with a length, got {type(flat).__name__}") from e
        if m == 0:
            raise ValueError("fit needs at least one model; the dataset is empty")
        return _Zoo(None, flat, m, None, None, generator.layout.check_archs(None, m))
    if isinstance(flat, torch.Tensor):
        m = flat.shape[0] if flat.ndim >= 1 else 0
    elif isinstance(flat, Sequence) and all(isinstance(f, torch.Tensor) for f in flat):
        m = len(flat)
    else:
        raise TypeError(
            "fit expects a paramgen.zoo.Zoo, a WeightDataset, a sequence of state dicts, (M, D) flat weight vectors, "
            f"a sequence of flat vectors (a family) or a map-style dataset; got {type(flat).__name__}"
        )
    if m == 0:
        raise ValueError("fit needs at least one model; the zoo is empty")
    arch_list = generator.layout.check_archs(archs, m)
    generator.layout.check_flat(flat, arch_list)
    if generator.conditioner is not None and (conds is None or len(conds) != m):
        raise ValueError(f"expected one raw condition per weight vector ({m}), got {None if conds is None else len(conds)}")
    if generator.conditioner is None and conds is not None:
        raise ValueError("this generator is unconditional; pass conds=None")
    if tasks is not None and len(tasks) != m:
        raise ValueError(f"expected one task name per weight vector ({m}), got {len(tasks)}")
    return _Zoo(flat, None, m, conds, None if tasks is None else list(tasks), arch_list)


def run_fingerprint(generator: Generator, zoo: _Zoo, config: FitConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one."""
    keep = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every", "checkpoint_dir", "progress", "num_workers", "log_every")}
    if keep.get("align_restarts") == 1:  # the default: checkpoints written before the field existed still resume
        del keep["align_restarts"]
    if zoo.flat is None:
        size = [zoo.m, generator.layout.rows, generator.layout.width]
    elif generator.layout.single and isinstance(zoo.flat, torch.Tensor):
        size = list(zoo.flat.shape)
    else:
        size = [int(f.numel()) for f in zoo.flat][:1]
    out = {"config": keep, "models": zoo.m, "size": size, "components": {r: type(p).__name__ for r, p in generator.components.items()}}
    if generator.base is not None:  # only then: runs without a base keep their fingerprint
        out["base"] = generator.base.sha256
    return out
