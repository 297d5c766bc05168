"""Model zoos on disk: safetensors checkpoints with a JSON manifest, read lazily.

Layout of a zoo folder:

    runs/<run_id>.safetensors   every kept epoch of one training run, stacked:
                                tensor name -> (epochs, *shape); stored tensors only
                                (tied copies and frozen tensors are rebuilt from the spec)
    runs/<run_id>.json          the run's manifest: task, architecture (name, kwargs,
                                text description), seed, hyperparameters, spec id, and
                                per kept epoch its row and train/val/test metrics
    specs/<spec_id>.json        the ParamSpec of each architecture in the zoo
    base.json                   optional: the pinned base checkpoint the zoo's checkpoints
                                are fine-tunes of (`paramgen.base.PinnedBase.record`:
                                its SHA-256 and tensors), written by
                                ``ZooWriter(root, base=...)``

A run's JSON is written after its tensors, both atomically, so a run is in the zoo
exactly when its JSON exists; an interrupted build resumes from there. `Zoo.open` checks
every run's manifest, spec and tensor header and names the run and file of any damage
(`DamagedZooError`); the manifest also records the tensor file's SHA-256, checked the
first time a run's tensors are read (or all at once by `Zoo.verify`). Zoos come from `paramgen.zoo.build_zoo` (training) or
`paramgen.zoo.ZooWriter` (checkpoints you already have).

Examples:
    >>> zoo = Zoo.open("zoos/cnn")  # doctest: +SKIP
    >>> flat, extras = zoo.flatten()  # (N, D): the whole zoo in one call  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils.data import Dataset

from paramgen.io import file_sha256, read_json
from paramgen.normalize import Normalizer
from paramgen.spec import NonFiniteWeightsError, ParamSpec
from paramgen.vectorize import ChunkVectorizer, LayerVectorizer, ModelVectorizer

__all__ = ["Checkpoint", "Zoo", "WeightDataset", "DamagedZooError", "EmptyZooError", "BASE_FILE"]

#: The file at a zoo's root recording its pinned base (`paramgen.base.PinnedBase.record`).
BASE_FILE = "base.json"


class DamagedZooError(ValueError):
    """A zoo run's files are unreadable or inconsistent; the message names the run and file."""


class EmptyZooError(ValueError):
    """A zoo folder, or a view of one, holds no checkpoints."""


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
        arch: Model name for `paramgen.models.build_model`, or for imported
            checkpoints whatever was recorded (e.g. ``"BertModel"``), or ``None``.
        arch_kwargs: Its keyword arguments.
        arch_description: Text description derived from the model.
        seed: Training seed (``None`` when unknown, e.g. imported checkpoints).
        hyperparameters: Training configuration.
        metrics: ``{train,val,test}_{acc,loss}`` for built zoos; what was given for
            imported checkpoints (possibly none).
        spec_id: Fingerprint of the architecture's `ParamSpec`.
        metadata: Anything else recorded with the run (e.g. a Hugging Face model's
            ``model_type`` or a LoRA adapter's ``r``).
    """

    run_id: str
    epoch: int
    index: int
    task: str
    dataset: str
    task_description: str
    arch: str | None
    arch_kwargs: Mapping[str, Any] = attrs.field(hash=False)
    arch_description: str
    seed: int | None
    hyperparameters: Mapping[str, Any] = attrs.field(hash=False)
    metrics: Mapping[str, float] = attrs.field(hash=False)
    spec_id: str
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def id(self) -> str:
        return f"{self.run_id}@{self.epoch}"


_RUN_KEYS = ("run_id", "task", "dataset", "task_description", "arch", "arch_kwargs", "arch_description", "seed", "hyperparameters", "spec_id")


def _damaged(run_id: str, path: Path, what: str) -> DamagedZooError:
    return DamagedZooError(
        f"zoo run {run_id!r} is damaged ({path}): {what}; delete runs/{run_id}.json and runs/{run_id}.safetensors "
        "and build or import that run again"
    )


def _checkpoints_of_run(record: Any, path: Path) -> list[Checkpoint]:
    """The checkpoints of one run's manifest, checked key by key."""
    run_id = path.stem
    if not isinstance(record, dict):
        raise _damaged(run_id, path, f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in (*_RUN_KEYS, "checkpoints") if k not in record]
    if missing:
        raise _damaged(run_id, path, f"the manifest lacks keys {missing}")
    if record["run_id"] != run_id:
        raise _damaged(run_id, path, f"the manifest names run {record['run_id']!r}, not its file's {run_id!r}")
    entries = record["checkpoints"]
    if not isinstance(entries, list) or not entries:
        raise _damaged(run_id, path, "'checkpoints' must be a non-empty list")
    common = {k: record[k] for k in _RUN_KEYS}
    metadata = record.get("metadata", {})
    out = []
    for j, c in enumerate(entries):
        if not isinstance(c, dict) or not {"epoch", "index", "metrics"} <= set(c):
            raise _damaged(run_id, path, f"checkpoint {j} must be an object with 'epoch', 'index' and 'metrics', got {c!r}"[:300])
        if not isinstance(c["index"], int) or isinstance(c["index"], bool) or c["index"] < 0:
            raise _damaged(run_id, path, f"checkpoint {j} has index {c['index']!r}, expected a row number >= 0")
        out.append(Checkpoint(epoch=c["epoch"], index=c["index"], metrics=c["metrics"], metadata=metadata, **common))
    return out


def _check_tensors(path: Path, run_id: str, spec: ParamSpec, rows: int) -> None:
    """The run's tensor file has the spec's stored tensors with at least ``rows`` rows (header only)."""
    stored = {t.name: t for t in spec.tensors if t.role != "frozen" and t.tied_to is None}
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            if keys != set(stored):
                raise _damaged(run_id, path, f"tensors missing {sorted(set(stored) - keys)[:5]}, unexpected {sorted(keys - set(stored))[:5]}")
            for name, t in stored.items():
                shape = tuple(f.get_slice(name).get_shape())
                if shape[1:] != t.shape or not shape or shape[0] < rows:
                    raise _damaged(run_id, path, f"tensor {name!r} has shape {shape}, expected ({rows} or more, *{t.shape})")
    except SafetensorError as err:
        raise _damaged(run_id, path, f"not a readable safetensors file ({err})") from None


@contextlib.contextmanager
def _open_run(path: Path, run_id: str) -> Iterator[Any]:
    """``safe_open`` that names the run when its file turns out damaged."""
    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except SafetensorError as err:
        raise _damaged(run_id, path, f"not a readable safetensors file ({err})") from None
    except FileNotFoundError:
        raise _damaged(run_id, path, "the tensors file is gone") from None


class Zoo:
    """A read-only view of checkpoints in a zoo folder.

    Args:
        root: The zoo folder.
        checkpoints: The checkpoints in this view (all of the folder's by `open`).
        specs: ``spec_id -> ParamSpec``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        checkpoints: Sequence[Checkpoint],
        specs: Mapping[str, ParamSpec],
        digests: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.checkpoints = tuple(checkpoints)
        self.specs = dict(specs)
        # run_id -> SHA-256 of its tensor file as written (runs written before digests: absent).
        self.digests = dict(digests or {})
        self._verified: set[str] = set()
        self._base: tuple[dict[str, Any] | None] | None = None  # base.json, read once

    @classmethod
    def open(cls, root: str | os.PathLike) -> Zoo:
        """Read a zoo's manifests and check every run (tensor headers only; no tensors are loaded).

        Raises:
            FileNotFoundError: ``root`` is not a zoo folder.
            EmptyZooError: It holds no runs.
            DamagedZooError: A run's manifest, spec or tensors file is missing,
                unreadable or inconsistent; the message names the run and file.
        """
        root = Path(root)
        runs = root / "runs"
        if not runs.is_dir():
            raise FileNotFoundError(
                f"{root} is not a zoo folder: it has no runs/ (build one with `python -m paramgen.zoo build`, "
                "or import checkpoints with `python -m paramgen.zoo import`)"
            )
        paths = sorted(runs.glob("*.json"))
        if not paths:
            raise EmptyZooError(f"zoo folder {root} holds no runs (expected runs/<run_id>.json with runs/<run_id>.safetensors)")
        specs: dict[str, ParamSpec] = {}
        digests: dict[str, str] = {}
        checkpoints: list[Checkpoint] = []
        for path in paths:
            try:
                record = read_json(path)
            except (ValueError, OSError) as err:
                raise _damaged(path.stem, path, str(err)) from None
            found = _checkpoints_of_run(record, path)
            spec_id = found[0].spec_id
            if spec_id not in specs:
                spec_path = root / "specs" / f"{spec_id}.json"
                if not spec_path.exists():
                    raise _damaged(path.stem, path, f"its architecture file {spec_path} is missing")
                try:
                    specs[spec_id] = ParamSpec.from_dict(read_json(spec_path))
                except (ValueError, OSError, TypeError) as err:
                    raise _damaged(path.stem, spec_path, f"unreadable architecture file ({err})") from None
            tensors = runs / f"{path.stem}.safetensors"
            if not tensors.exists():
                raise _damaged(path.stem, path, f"it has no tensors file {tensors.name} beside it")
            _check_tensors(tensors, path.stem, specs[spec_id], 1 + max(c.index for c in found))
            checkpoints.extend(found)
            if isinstance(record.get("tensors_sha256"), str):
                digests[path.stem] = record["tensors_sha256"]
        return cls(root, checkpoints, specs, digests)

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
        return Zoo(self.root, kept, self.specs, self.digests)

    @property
    def base(self) -> dict[str, Any] | None:
        """The record of the zoo's pinned base (``base.json``: its ``sha256`` and
        ``tensors``), or ``None`` when the zoo records none.

        Raises:
            DamagedZooError: ``base.json`` is unreadable.
        """
        if self._base is None:
            path = self.root / BASE_FILE
            if not path.is_file():
                self._base = (None,)
            else:
                try:
                    record = read_json(path)
                except (OSError, ValueError) as err:
                    raise DamagedZooError(f"zoo {self.root}: its base record {path} is unreadable ({err})") from None
                if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or not isinstance(record.get("tensors"), dict):
                    raise DamagedZooError(f"zoo {self.root}: its base record {path} must be an object with 'sha256' and 'tensors'")
                self._base = (record,)
        return self._base[0]

    def check_base(self, base: Any) -> None:
        """Check that ``base`` (a `paramgen.base.PinnedBase`, or what
        `paramgen.base.PinnedBase.of` takes) is the base this zoo records.

        Raises:
            paramgen.base.BaseMismatchError: The zoo records another base (named by
                digest or tensor), or none.
        """
        from paramgen.base import BaseMismatchError, PinnedBase

        record = self.base
        pinned = PinnedBase.of(base)
        if record is None:
            raise BaseMismatchError(f"zoo {self.root} records no base (no {BASE_FILE}); {pinned!r} was given")
        pinned.check(record, what=f"zoo {self.root}")

    def spec(self, spec_id: str | None = None) -> ParamSpec:
        """The architecture of this (single-architecture) view, or of ``spec_id``."""
        if spec_id is None:
            if not self.checkpoints:
                raise EmptyZooError(f"this view of zoo {self.root} holds no checkpoints (did a filter leave none?)")
            ids = self.spec_ids
            if len(ids) != 1:
                raise ValueError(f"this zoo view holds {len(ids)} architectures {list(ids)}; pass spec_id or filter(spec_id=...)")
            spec_id = ids[0]
        if spec_id not in self.specs:
            raise KeyError(f"unknown spec id {spec_id!r}; known: {sorted(self.specs)}")
        return self.specs[spec_id]

    def summary(self) -> dict[str, Any]:
        """Counts and mean metrics, for printing."""
        accs = [c.metrics["test_acc"] for c in self.checkpoints if "test_acc" in c.metrics]
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

    def _open(self, run_id: str) -> contextlib.AbstractContextManager[Any]:
        """Open a run's tensors; the first time, check its bytes against the recorded digest."""
        path = self.root / "runs" / f"{run_id}.safetensors"
        if run_id not in self._verified and run_id in self.digests:
            try:
                digest = file_sha256(path)
            except FileNotFoundError:
                raise _damaged(run_id, path, "the tensors file is gone") from None
            if digest != self.digests[run_id]:
                raise _damaged(run_id, path, f"its bytes changed since it was written (sha256 {digest[:16]}..., recorded {self.digests[run_id][:16]}...)")
            self._verified.add(run_id)
        return _open_run(path, run_id)

    def verify(self) -> None:
        """Check every run of this view against the SHA-256 digest its manifest recorded.

        Reads are checked the same way the first time each run is touched; this does it
        for all at once, e.g. after copying a zoo.

        Raises:
            DamagedZooError: A run's tensor bytes differ from what was written.
        """
        for run_id in dict.fromkeys(c.run_id for c in self.checkpoints):
            with self._open(run_id):
                pass

    def state_dict(self, i: int | Checkpoint) -> dict[str, torch.Tensor]:
        """The full state dict of one checkpoint (ties and extras restored)."""
        c = self.checkpoints[i] if isinstance(i, int) else i
        spec = self.spec(c.spec_id)
        with self._open(c.run_id) as f:
            stored = {name: f.get_slice(name)[c.index : c.index + 1] for name in f.keys()}
        flat, extras = spec.flatten_stacked(stored)
        return spec.unflatten(flat, extras=extras)[0]

    def model(self, i: int | Checkpoint) -> nn.Module:
        """Rebuild the checkpoint's model with its weights (eval mode).

        Raises:
            ValueError: The checkpoint's architecture is not a `paramgen.models` name
                (imported checkpoints): use `state_dict` and build the model yourself.
        """
        from paramgen.models import MODEL_NAMES, build_model

        c = self.checkpoints[i] if isinstance(i, int) else i
        if c.arch not in MODEL_NAMES:
            raise ValueError(
                f"checkpoint {c.id} has architecture {c.arch!r}, which paramgen.models cannot build (it builds "
                f"{list(MODEL_NAMES)}); load zoo.state_dict(i) into a model you build yourself"
            )
        model = build_model(c.arch, **c.arch_kwargs)
        model.load_state_dict(self.state_dict(c), strict=True)
        return model.eval()

    def stacked(self) -> dict[str, torch.Tensor]:
        """Stored tensors of every checkpoint, ``name -> (N, *shape)`` in view order.

        Raises:
            EmptyZooError: The view holds no checkpoints.
            ValueError: It holds several architectures (filter by ``spec_id`` first).
        """
        spec = self.spec()
        by_run: dict[str, list[int]] = {}
        for c in self.checkpoints:
            by_run.setdefault(c.run_id, []).append(c.index)
        names = [t.name for t in spec.tensors if t.role != "frozen" and t.tied_to is None]
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        run_order: list[tuple[str, int]] = []
        for run_id, rows in by_run.items():
            with self._open(run_id) as f:
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
        """All checkpoints of this single-architecture view as ``(N, D)`` vectors + extras.

        Raises:
            EmptyZooError: The view holds no checkpoints.
            NonFiniteWeightsError: NaN or Inf weights (with ``check_finite``); the
                message names the checkpoints.
        """
        flat, extras = self.spec().flatten_stacked(self.stacked(), check_finite=False)
        if check_finite and not torch.isfinite(flat).all():
            bad = [self.checkpoints[i].id for i in (~torch.isfinite(flat).all(1)).nonzero().flatten().tolist()]
            raise NonFiniteWeightsError(f"zoo {self.root}: checkpoints {bad[:5]} hold NaN or Inf weights")
        return flat, extras


class WeightDataset(Dataset):
    """Serves a zoo's checkpoints as vectorized weights with their metadata, lazily.

    Each item is a dict with ``values`` and ``mask`` ``(N, C)``, ``layer`` and ``chunk``
    ``(N,)``, and the checkpoint's metadata: ``task``, ``dataset``, ``task_description``,
    ``arch_description``, ``epoch``, ``seed`` (``-1`` when unknown), ``index`` (position
    in the zoo view) and its metrics. Tensors are read from disk on access, one checkpoint at a time.

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
        with self.zoo._open(c.run_id) as f:
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
            "seed": -1 if c.seed is None else c.seed,
            **{k: float(v) for k, v in c.metrics.items()},
        }

    def _extras(self, c: Checkpoint) -> dict[str, torch.Tensor]:
        if not self.vectorizer.spec.extra_tensors:
            return {}
        with self.zoo._open(c.run_id) as f:
            return {t.name: f.get_slice(t.name)[c.index : c.index + 1] for t in self.vectorizer.spec.extra_tensors}

    def all(self) -> torch.Tensor:
        """Every item's ``values`` at once, ``(N_ckpt, N, C)``, via the zoo's fast path."""
        flat, _ = self.zoo.flatten()
        if self.normalizer is not None:
            flat = self.normalizer.transform(flat, tasks=[c.task for c in self.zoo])
        return self.vectorizer.pack(flat)
