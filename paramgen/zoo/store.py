"""Model zoos on disk: safetensors checkpoints with a JSON manifest, read lazily.

Layout of a zoo folder:

    runs/<run_id>.safetensors   every kept epoch of one training run, stacked:
                                tensor name -> (epochs, *shape); stored tensors only
                                (tied copies and frozen tensors are rebuilt from the spec)
    runs/<run_id>.json          the run's manifest: task, architecture (name, kwargs,
                                text description), seed, hyperparameters, spec id, and
                                per kept epoch its row and train/val/test metrics
    specs/<spec_id>.json        the ParamSpec of each architecture in the zoo

A run's JSON is written after its tensors, both atomically, so a run is in the zoo
exactly when its JSON exists; an interrupted build resumes from there.

Examples:
    >>> zoo = Zoo.open("zoos/cnn")  # doctest: +SKIP
    >>> flat, extras = zoo.flatten()  # (N, D): the whole zoo in one call  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from paramgen.io import read_json
from paramgen.normalize import Normalizer
from paramgen.spec import ParamSpec
from paramgen.vectorize import ChunkVectorizer, LayerVectorizer, ModelVectorizer

__all__ = ["Checkpoint", "Zoo", "WeightDataset"]


@attrs.frozen
class Checkpoint:
    """One checkpoint of a zoo and its metadata.

    Attributes:
        run_id: Training run it comes from (the file stem under ``runs/``).
        epoch: Epochs trained.
        index: Row of this checkpoint in the run's stacked tensors.
        task: Task name, e.g. ``"digits/0-3-5-7-9"``.
        dataset: Dataset of the task.
        task_description: Natural-language description of the task.
        arch: Model name for `paramgen.models.build_model`.
        arch_kwargs: Its keyword arguments.
        arch_description: Text description derived from the model.
        seed: Training seed.
        hyperparameters: Training configuration.
        metrics: ``{train,val,test}_{acc,loss}``.
        spec_id: Fingerprint of the architecture's `ParamSpec`.
    """

    run_id: str
    epoch: int
    index: int
    task: str
    dataset: str
    task_description: str
    arch: str
    arch_kwargs: Mapping[str, Any] = attrs.field(hash=False)
    arch_description: str
    seed: int
    hyperparameters: Mapping[str, Any] = attrs.field(hash=False)
    metrics: Mapping[str, float] = attrs.field(hash=False)
    spec_id: str

    @property
    def id(self) -> str:
        return f"{self.run_id}@{self.epoch}"


def _checkpoints_of_run(record: Mapping[str, Any]) -> list[Checkpoint]:
    common = {k: record[k] for k in ("run_id", "task", "dataset", "task_description", "arch", "arch_kwargs", "arch_description", "seed", "hyperparameters", "spec_id")}
    return [Checkpoint(epoch=c["epoch"], index=c["index"], metrics=c["metrics"], **common) for c in record["checkpoints"]]


class Zoo:
    """A read-only view of checkpoints in a zoo folder.

    Args:
        root: The zoo folder.
        checkpoints: The checkpoints in this view (all of the folder's by `open`).
        specs: ``spec_id -> ParamSpec``.
    """

    def __init__(self, root: str | os.PathLike, checkpoints: Sequence[Checkpoint], specs: Mapping[str, ParamSpec]) -> None:
        self.root = Path(root)
        self.checkpoints = tuple(checkpoints)
        self.specs = dict(specs)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Zoo:
        """Read a zoo's manifests (no tensors are loaded)."""
        root = Path(root)
        runs = root / "runs"
        if not runs.is_dir():
            raise FileNotFoundError(f"{root} is not a zoo folder: it has no runs/ (build one with `python -m paramgen.zoo build`)")
        checkpoints: list[Checkpoint] = []
        for path in sorted(runs.glob("*.json")):
            record = read_json(path)
            if not (runs / f"{record['run_id']}.safetensors").exists():
                raise FileNotFoundError(f"{path} has no tensors file beside it")
            checkpoints.extend(_checkpoints_of_run(record))
        specs = {p.stem: ParamSpec.from_dict(read_json(p)) for p in sorted((root / "specs").glob("*.json"))}
        return cls(root, checkpoints, specs)

    # --------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.checkpoints)

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __getitem__(self, i: int) -> Checkpoint:
        return self.checkpoints[i]

    def __repr__(self) -> str:
        return f"Zoo({str(self.root)!r}, {len(self)} checkpoints, {len(self.tasks)} tasks, {len(self.spec_ids)} architectures)"

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted({c.task for c in self.checkpoints}))

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({c.dataset for c in self.checkpoints}))

    @property
    def spec_ids(self) -> tuple[str, ...]:
        return tuple(sorted({c.spec_id for c in self.checkpoints}))

    def filter(
        self,
        *,
        tasks: Iterable[str] | None = None,
        datasets: Iterable[str] | None = None,
        epochs: Iterable[int] | None = None,
        spec_id: str | None = None,
        where: Callable[[Checkpoint], bool] | None = None,
    ) -> Zoo:
        """A sub-zoo; every given criterion must hold."""
        tasks = None if tasks is None else set(tasks)
        datasets = None if datasets is None else set(datasets)
        epochs = None if epochs is None else set(epochs)
        if tasks is not None and (unknown := tasks - set(self.tasks)):
            raise KeyError(f"tasks {sorted(unknown)[:5]} are not in this zoo; it has {list(self.tasks)[:5]}...")
        kept = [
            c
            for c in self.checkpoints
            if (tasks is None or c.task in tasks)
            and (datasets is None or c.dataset in datasets)
            and (epochs is None or c.epoch in epochs)
            and (spec_id is None or c.spec_id == spec_id)
            and (where is None or where(c))
        ]
        return Zoo(self.root, kept, self.specs)

    def spec(self, spec_id: str | None = None) -> ParamSpec:
        """The architecture of this (single-architecture) view, or of ``spec_id``."""
        if spec_id is None:
            ids = self.spec_ids
            if len(ids) != 1:
                raise ValueError(f"this zoo view holds {len(ids)} architectures {list(ids)}; pass spec_id or filter(spec_id=...)")
            spec_id = ids[0]
        if spec_id not in self.specs:
            raise KeyError(f"unknown spec id {spec_id!r}; known: {sorted(self.specs)}")
        return self.specs[spec_id]

    def summary(self) -> dict[str, Any]:
        """Counts and mean metrics, for printing."""
        accs = [c.metrics["test_acc"] for c in self.checkpoints]
        return {
            "checkpoints": len(self),
            "runs": len({c.run_id for c in self.checkpoints}),
            "tasks": len(self.tasks),
            "datasets": dict(Counter(c.dataset for c in self.checkpoints)),
            "architectures": {sid: self.spec(sid).numel for sid in self.spec_ids},
            "epochs": sorted({c.epoch for c in self.checkpoints}),
            "test_acc_mean": sum(accs) / len(accs) if accs else float("nan"),
            "test_acc_min": min(accs, default=float("nan")),
        }

    # --------------------------------------------------------------- tensors
    def _path(self, c: Checkpoint) -> Path:
        return self.root / "runs" / f"{c.run_id}.safetensors"

    def state_dict(self, i: int | Checkpoint) -> dict[str, torch.Tensor]:
        """The full state dict of one checkpoint (ties and extras restored)."""
        c = self.checkpoints[i] if isinstance(i, int) else i
        spec = self.spec(c.spec_id)
        with safe_open(self._path(c), framework="pt") as f:
            stored = {name: f.get_slice(name)[c.index : c.index + 1] for name in f.keys()}
        flat, extras = spec.flatten_stacked(stored)
        return spec.unflatten(flat, extras=extras)[0]

    def model(self, i: int | Checkpoint) -> nn.Module:
        """Rebuild the checkpoint's model with its weights (eval mode)."""
        from paramgen.models import build_model

        c = self.checkpoints[i] if isinstance(i, int) else i
        model = build_model(c.arch, **c.arch_kwargs)
        model.load_state_dict(self.state_dict(c), strict=True)
        return model.eval()

    def stacked(self) -> dict[str, torch.Tensor]:
        """Stored tensors of every checkpoint, ``name -> (N, *shape)`` in view order."""
        spec = self.spec()
        by_run: dict[str, list[int]] = {}
        for c in self.checkpoints:
            by_run.setdefault(c.run_id, []).append(c.index)
        names = [t.name for t in spec.tensors if t.role != "frozen" and t.tied_to is None]
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        run_order: list[tuple[str, int]] = []
        for run_id, rows in by_run.items():
            with safe_open(self.root / "runs" / f"{run_id}.safetensors", framework="pt") as f:
                for n in names:
                    parts[n].append(f.get_tensor(n)[rows])
            run_order.extend((run_id, r) for r in rows)
        out = {n: torch.cat(p) for n, p in parts.items()}
        # Put rows back into the view's order.
        position = {key: i for i, key in enumerate(run_order)}
        order = torch.tensor([position[(c.run_id, c.index)] for c in self.checkpoints])
        if not torch.equal(order, torch.arange(len(order))):
            out = {n: t[order] for n, t in out.items()}
        return out

    def flatten(self, *, check_finite: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All checkpoints of this single-architecture view as ``(N, D)`` vectors + extras."""
        return self.spec().flatten_stacked(self.stacked(), check_finite=check_finite)


class WeightDataset(Dataset):
    """Serves a zoo's checkpoints as vectorized weights with their metadata, lazily.

    Each item is a dict with ``values`` and ``mask`` ``(N, C)``, ``layer`` and ``chunk``
    ``(N,)``, and the checkpoint's metadata: ``task``, ``dataset``, ``task_description``,
    ``arch_description``, ``epoch``, ``seed``, ``index`` (position in the zoo view) and
    its metrics. Tensors are read from disk on access, one checkpoint at a time.

    Args:
        zoo: A single-architecture zoo view.
        vectorizer: Layout; its spec must be the zoo's.
        normalizer: Fitted normalizer applied to each flat vector (per-task normalizers
            get the checkpoint's task).
    """

    def __init__(
        self,
        zoo: Zoo,
        vectorizer: ModelVectorizer | LayerVectorizer | ChunkVectorizer,
        *,
        normalizer: Normalizer | None = None,
    ) -> None:
        vectorizer.spec.check_compatible(zoo.spec())
        self.zoo = zoo
        self.vectorizer = vectorizer
        self.normalizer = normalizer

    def __len__(self) -> int:
        return len(self.zoo)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.zoo):
            raise IndexError(f"index {i} out of range for a zoo of {len(self.zoo)} checkpoints")
        c = self.zoo[i]
        spec = self.vectorizer.spec
        with safe_open(self.zoo._path(c), framework="pt") as f:
            stored = {t.name: f.get_slice(t.name)[c.index : c.index + 1] for t in spec.vector_tensors}
        flat, _ = spec.flatten_stacked({**stored, **self._extras(c)})
        if self.normalizer is not None:
            flat = self.normalizer.transform(flat, tasks=[c.task])
        return {
            "values": self.vectorizer.pack(flat)[0],
            "mask": self.vectorizer.mask,
            "layer": self.vectorizer.layer,
            "chunk": self.vectorizer.chunk,
            "index": i,
            "task": c.task,
            "dataset": c.dataset,
            "task_description": c.task_description,
            "arch_description": c.arch_description,
            "epoch": c.epoch,
            "seed": c.seed,
            **{k: float(v) for k, v in c.metrics.items()},
        }

    def _extras(self, c: Checkpoint) -> dict[str, torch.Tensor]:
        if not self.vectorizer.spec.extra_tensors:
            return {}
        with safe_open(self.zoo._path(c), framework="pt") as f:
            return {t.name: f.get_slice(t.name)[c.index : c.index + 1] for t in self.vectorizer.spec.extra_tensors}

    def all(self) -> torch.Tensor:
        """Every item's ``values`` at once, ``(N_ckpt, N, C)``, via the zoo's fast path."""
        flat, _ = self.zoo.flatten()
        if self.normalizer is not None:
            flat = self.normalizer.transform(flat, tasks=[c.task for c in self.zoo])
        return self.vectorizer.pack(flat)
