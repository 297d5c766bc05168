"""Zoos of checkpoints you already have, written in the zoo format that `Zoo.open` reads.

A checkpoint goes in as a state dict (or a module), a ``.safetensors`` file, a Hugging
Face model folder (``model.safetensors`` or a sharded ``model.safetensors.index.json``,
with ``config.json``) or a PEFT adapter folder (``adapter_model.safetensors`` with
``adapter_config.json``), together with its task and whatever else you know about it.
Nothing is ever unpickled: ``.bin``/``.pt`` weights are refused with a message that says
how to convert them.

Each run is one file of stacked checkpoints (``runs/<run_id>.safetensors``) and its
manifest (``runs/<run_id>.json``), both written atomically, manifest last, exactly as
`paramgen.zoo.build_zoo` writes them: adding an epoch to a run rewrites its tensor file
with one more row and then its manifest, so the zoo is readable after every `add`.

Examples:
    >>> import tempfile, torch
    >>> writer = ZooWriter(tempfile.mkdtemp())
    >>> for seed in range(3):
    ...     net = torch.nn.Linear(4, 2)
    ...     _ = torch.nn.init.normal_(net.weight, generator=torch.Generator().manual_seed(seed))
    ...     _ = writer.add(net.state_dict(), task="toy", run_id=f"toy-{seed}", metrics={"test_acc": 0.5})
    >>> zoo = writer.zoo()
    >>> len(zoo), zoo.flatten()[0].shape
    (3, torch.Size([3, 10]))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from paramgen.io import file_sha256, read_json, save_safetensors, write_json
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError
from paramgen.zoo.store import Checkpoint, Zoo, _checkpoints_of_run

__all__ = ["ZooWriter", "import_checkpoints", "read_checkpoint", "LoadedCheckpoint", "CheckpointSource"]

logger = logging.getLogger(__name__)

CheckpointSource = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike
"""What `ZooWriter.add` takes: a state dict, a module, or a path to a file or folder."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=+-]*$")


@attrs.frozen(eq=False)
class LoadedCheckpoint:
    """A checkpoint read from its source (`read_checkpoint`), with what the source says about it.

    Attributes:
        state_dict: Its tensors by name.
        spec: Their `ParamSpec` (floating tensors form the vector).
        name: The path, or ``"state dict"``/``"<Class> module"``, for messages.
        source: ``"state_dict"``, ``"module"``, ``"safetensors"``, ``"huggingface"`` or ``"peft"``.
        arch: Architecture named by the source (a Hugging Face class), if any.
        arch_description: Text description derived from the source, if any.
        metadata: What the source's config records (see `read_checkpoint`).
    """

    state_dict: dict[str, torch.Tensor]
    spec: ParamSpec
    name: str
    source: str
    arch: str | None = None
    arch_description: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


def _refuse_pickle(path: Path) -> ValueError:
    return ValueError(
        f"{path} holds pickled weights, which paramgen never loads (unpickling runs code); save them as "
        "safetensors first, e.g. `model.save_pretrained(folder, safe_serialization=True)` or "
        "`safetensors.torch.save_file(state_dict, 'model.safetensors')`"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a JSON {type(data).__name__}")
    return data


def _read_huggingface(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} must have a non-empty 'weight_map' object (tensor name -> shard file)")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / str(shard)
            if Path(str(shard)).name != str(shard) or not shard_path.is_file():
                raise FileNotFoundError(f"{index} names shard {shard!r}, which is not a file in {folder}")
            state.update(_load_safetensors(shard_path))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"{index} lists tensors {missing[:5]} that no shard holds")
        state = {name: state[name] for name in weight_map}  # the index's order
    else:
        state = _load_safetensors(folder / "model.safetensors")
    config_path = folder / "config.json"
    config = _read_object(config_path) if config_path.exists() else {}
    metadata: dict[str, Any] = {"model_type": config.get("model_type"), "architectures": config.get("architectures")}
    if config:
        metadata["config"] = config
    return state, metadata


def _read_peft(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    config_path = folder / "adapter_config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{folder} has adapter_model.safetensors but no adapter_config.json beside it")
    config = _read_object(config_path)
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{config_path}: 'r' must be a positive int, got {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"{config_path}: 'lora_alpha' must be a number, got {alpha!r}")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        targets = sorted(str(t) for t in targets)  # PEFT saves a set: its order is arbitrary
    state = _load_safetensors(folder / "adapter_model.safetensors")
    metadata = {
        "peft_type": config.get("peft_type"),
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }
    return state, metadata


def _describe(spec: ParamSpec) -> str:
    shown = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))}" for t in spec.vector_tensors[:4])
    more = ", ..." if len(spec.vector_tensors) > 4 else ""
    return f"{len(spec.tensors)} tensors, {spec.numel} weights: {shown}{more}"


def read_checkpoint(source: CheckpointSource) -> LoadedCheckpoint:
    """Read one checkpoint from any supported source (no pickle, ever).

    Args:
        source: A state dict (``name -> tensor``), an ``nn.Module``, a ``.safetensors``
            file, a Hugging Face model folder or a PEFT adapter folder.

    Returns:
        A `LoadedCheckpoint`: the state dict with its `ParamSpec`, the source kind and the metadata the
        source carries (``model_type``/``architectures`` of a Hugging Face
        ``config.json``; ``r``, ``lora_alpha``, ``target_modules`` and the base model
        of a PEFT ``adapter_config.json``).

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: An empty state dict, pickled weights, a folder with no weights, an
            unreadable file or a malformed config; the message says what was expected.
        TypeError: Anything else.
    """
    if isinstance(source, nn.Module):
        state = dict(source.state_dict())
        if not state:
            raise ValueError(f"the {type(source).__name__} module has no tensors")
        from paramgen.models import describe_architecture

        spec = ParamSpec.from_module(source)
        return LoadedCheckpoint(state, spec, f"{type(source).__name__} module", "module", arch_description=describe_architecture(source))
    if isinstance(source, Mapping):
        if not source:
            raise ValueError("expected a non-empty state dict (tensor name -> tensor), got an empty one")
        bad = [k for k, v in source.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"a state dict maps str names to tensors; entries {bad[:5]!r} do not")
        state = dict(source)
        return LoadedCheckpoint(state, ParamSpec.from_state_dict(state), "state dict", "state_dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "a checkpoint is a state dict, an nn.Module, a .safetensors file or a Hugging Face/PEFT folder; "
            f"got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES:
            raise _refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"expected a .safetensors file, got {path}")
        state = _load_safetensors(path)
        kind, metadata = "safetensors", dict[str, Any]()
    elif (path / "adapter_model.safetensors").exists():
        state, metadata = _read_peft(path)
        kind = "peft"
    elif (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        state, metadata = _read_huggingface(path)
        kind = "huggingface"
    else:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise _refuse_pickle(path / pickled[0])
        raise ValueError(
            f"{path} holds no weights: expected a Hugging Face model folder (model.safetensors or "
            "model.safetensors.index.json, with config.json) or a PEFT adapter folder "
            "(adapter_model.safetensors with adapter_config.json)"
        )
    if not state:
        raise ValueError(f"{path} holds no tensors")
    spec = ParamSpec.from_state_dict(state)
    read = LoadedCheckpoint(state, spec, str(path), kind, metadata={k: v for k, v in metadata.items() if v is not None})
    if kind == "huggingface":
        archs = metadata.get("architectures") or []
        arch = str(archs[0]) if archs else metadata.get("model_type")
        read = attrs.evolve(read, arch=arch, arch_description=f"{arch or 'model'} ({metadata.get('model_type')}), {_describe(spec)}")
    elif kind == "peft":
        read = attrs.evolve(
            read,
            arch_description=(
                f"{metadata.get('peft_type') or 'LORA'} adapter r={metadata['r']} alpha={metadata['lora_alpha']} on "
                f"{metadata.get('target_modules')} of {metadata.get('base_model_name_or_path')}, {_describe(spec)}"
            ),
        )
    return read


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"


def _check_metrics(metrics: Mapping[str, Any] | None, name: str) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{name}: metrics must be a mapping of names to numbers, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name}: metric {key!r} must be a finite number, got {value!r}")
        out[str(key)] = float(value)
    return out


def _check_json(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON values (str, numbers, lists, dicts, None): {err}") from None
    return dict(data)


class ZooWriter:
    """Writes checkpoints you already have into a zoo folder that `Zoo.open` reads.

    Args:
        root: The zoo folder; created if needed. Runs already there are kept, and new
            checkpoints may join them.

    Examples:
        >>> import tempfile, torch
        >>> writer = ZooWriter(tempfile.mkdtemp())
        >>> net = torch.nn.Linear(3, 2)
        >>> c = writer.add(net, task="toy", run_id="run-0", epoch=5, metrics={"test_acc": 0.9})
        >>> c.id, c.arch_description.startswith("linear")
        ('run-0@5', True)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        (self.root / "specs").mkdir(parents=True, exist_ok=True)
        # (arch, arch_kwargs) -> (spec_id, checkpoint id) of the zoo's runs: named
        # architectures must keep one set of tensors across runs.
        self._arch_specs: dict[str, tuple[str, str]] = {}
        for path in sorted((self.root / "runs").glob("*.json")):
            for c in _checkpoints_of_run(read_json(path), path)[:1]:
                if c.arch is not None:
                    self._arch_specs.setdefault(self._arch_key(c.arch, c.arch_kwargs), (c.spec_id, c.id))

    @staticmethod
    def _arch_key(arch: str, arch_kwargs: Mapping[str, Any]) -> str:
        return json.dumps([arch, dict(arch_kwargs)], sort_keys=True)

    def _spec(self, spec_id: str) -> ParamSpec:
        return ParamSpec.from_dict(read_json(self.root / "specs" / f"{spec_id}.json"))

    def add(
        self,
        checkpoint: CheckpointSource,
        *,
        task: str,
        run_id: str | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, float] | None = None,
        arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None,
        arch_description: str | None = None,
        task_description: str | None = None,
        dataset: str | None = None,
        seed: int | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        **metadata: Any,
    ) -> Checkpoint:
        """Add one checkpoint to the zoo (atomically) and return its zoo record.

        Args:
            checkpoint: A state dict, an ``nn.Module``, a ``.safetensors`` file, a Hugging
                Face model folder or a PEFT adapter folder (see `read_checkpoint`).
            task: Task name the checkpoint was trained on, e.g. ``"wine"``.
            run_id: Training run it belongs to: checkpoints of one run (epochs) share
                one tensor file and must share one architecture. ``None`` makes a run
                of this checkpoint alone, named from the task and a hash of the
                weights (adding the same weights again returns the stored record).
            epoch: Epochs trained; default: one more than the run's last (0 first).
            metrics: Finite numbers, e.g. ``{"test_acc": 0.97}``.
            arch: Architecture name; a `paramgen.models` name lets `Zoo.model` rebuild
                it (default: the Hugging Face class, or none). Runs of one ``arch``
                with equal ``arch_kwargs`` must have the same tensors.
            arch_kwargs: Its keyword arguments.
            arch_description: Text description (default: derived from the source).
            task_description: Natural-language description of the task (default:
                the task name).
            dataset: Dataset of the task (default: the task name before ``/``).
            seed: Training seed, if known.
            hyperparameters: Training configuration, if known.
            **metadata: Anything else to record with the run (JSON values).

        Returns:
            The checkpoint as `Zoo.open` will read it.

        Raises:
            ValueError: Bad or empty weights, NaN/Inf weights, a run whose tensors
                differ from this checkpoint's (naming the first differing tensor), an
                epoch already in the run, bad metrics or run id.
            FileNotFoundError: A path that does not exist.
        """
        if not isinstance(task, str) or not task:
            raise ValueError(f"task must be a non-empty str naming what the checkpoint was trained on, got {task!r}")
        read = read_checkpoint(checkpoint)
        spec = read.spec
        stored_names = [t.name for t in spec.tensors if t.role != "frozen" and t.tied_to is None]
        tensors = {name: read.state_dict[name].detach().cpu().unsqueeze(0) for name in stored_names}  # (1, *shape)
        try:
            spec.flatten_stacked(tensors)
        except NonFiniteWeightsError as err:
            raise NonFiniteWeightsError(f"checkpoint {read.name}: {err}") from None
        metrics = _check_metrics(metrics, read.name)
        extra = _check_json({**read.metadata, **metadata, "source": read.source}, "metadata")
        arch = read.arch if arch is None else arch
        arch_kwargs = _check_json(arch_kwargs or {}, "arch_kwargs")
        hyperparameters = _check_json(hyperparameters or {}, "hyperparameters")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
            raise ValueError(f"epoch must be an int >= 0 or None, got {epoch!r}")
        auto_id = run_id is None
        if run_id is None:
            digest = hashlib.sha256()
            for name in stored_names:
                t = tensors[name].contiguous()
                digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            run_id = f"{_slug(task)}__{digest.hexdigest()[:12]}"
        elif not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ValueError(f"run_id must be a file-name-safe str (letters, digits, '._@=+-'), got {run_id!r}")
        if arch is not None:
            key = self._arch_key(arch, arch_kwargs)
            known = self._arch_specs.get(key)
            if known is not None and known[0] != spec.fingerprint:
                try:
                    self._spec(known[0]).check_compatible(spec)
                except SpecMismatchError as err:
                    raise SpecMismatchError(
                        f"checkpoint {read.name} is recorded as architecture {arch!r} {arch_kwargs} like {known[1]}, "
                        f"but its tensors differ: {err}"
                    ) from None

        runs = self.root / "runs"
        manifest = runs / f"{run_id}.json"
        if manifest.exists():
            record = read_json(manifest)
            existing = _checkpoints_of_run(record, manifest)
            if auto_id:
                logger.info("checkpoint %s is already in zoo %s as %s", read.name, self.root, existing[0].id)
                return existing[0]
            if record["spec_id"] != spec.fingerprint:
                try:
                    self._spec(record["spec_id"]).check_compatible(spec)
                except SpecMismatchError as err:
                    raise SpecMismatchError(f"checkpoint {read.name} cannot join run {run_id!r}: {err}") from None
            if record["task"] != task:
                raise ValueError(f"run {run_id!r} is on task {record['task']!r}; checkpoint {read.name} says {task!r}")
            epochs = [c.epoch for c in existing]
            epoch = max(epochs) + 1 if epoch is None else epoch
            if epoch in epochs:
                raise ValueError(f"run {run_id!r} already holds epoch {epoch}; give another epoch or run_id")
            recorded = record.get("tensors_sha256")
            if recorded is not None and file_sha256(runs / f"{run_id}.safetensors") != recorded:
                raise ValueError(f"run {run_id!r} of zoo {self.root}: its tensor bytes changed since they were written; delete its files and add it again")
            try:
                old = load_file(runs / f"{run_id}.safetensors")
            except (SafetensorError, FileNotFoundError) as err:
                raise ValueError(f"run {run_id!r} of zoo {self.root} is damaged ({err}); delete its files and add it again") from None
            index = len(next(iter(old.values())))
            tensors = {name: torch.cat([old[name], tensors[name]]) for name in stored_names}  # (E + 1, *shape)
            record["checkpoints"].append({"epoch": epoch, "index": index, "metrics": metrics, "imported_from": read.name})
            record["metadata"] = {**record.get("metadata", {}), **extra}
        else:
            epoch = 0 if epoch is None else epoch
            record = {
                "run_id": run_id,
                "task": task,
                "dataset": task.partition("/")[0] if dataset is None else dataset,
                "task_description": task if task_description is None else task_description,
                "arch": arch,
                "arch_kwargs": arch_kwargs,
                "arch_description": arch_description or read.arch_description or _describe(spec),
                "seed": seed,
                "hyperparameters": hyperparameters,
                "spec_id": spec.fingerprint,
                "metadata": extra,
                "checkpoints": [{"epoch": epoch, "index": 0, "metrics": metrics, "imported_from": read.name}],
            }
        spec_path = self.root / "specs" / f"{spec.fingerprint}.json"
        if not spec_path.exists():
            write_json(spec_path, spec.to_dict())
        # Tensors first, manifest last: a run holds exactly the rows its JSON names.
        save_safetensors(runs / f"{run_id}.safetensors", tensors, metadata={"spec_id": spec.fingerprint})
        record["tensors_sha256"] = file_sha256(runs / f"{run_id}.safetensors")
        write_json(manifest, record)
        if arch is not None:
            self._arch_specs.setdefault(self._arch_key(arch, arch_kwargs), (spec.fingerprint, f"{run_id}@{epoch}"))
        return next(c for c in _checkpoints_of_run(record, manifest) if c.epoch == epoch)

    def zoo(self) -> Zoo:
        """The zoo folder as written so far (`Zoo.open`)."""
        return Zoo.open(self.root)


def _is_checkpoint_folder(path: Path) -> bool:
    return any((path / name).exists() for name in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"))


def _expand(sources: CheckpointSource | Sequence[CheckpointSource]) -> list[CheckpointSource]:
    if isinstance(sources, (str, os.PathLike)):
        path = Path(sources)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint source {path} does not exist")
        if path.is_file() or _is_checkpoint_folder(path):
            return [path]
        found: list[CheckpointSource] = [
            p for p in sorted(path.iterdir()) if (p.is_file() and p.suffix == ".safetensors") or (p.is_dir() and _is_checkpoint_folder(p))
        ]
        if not found:
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickled:
                raise _refuse_pickle(path / pickled[0])
            raise ValueError(f"{path} holds no checkpoints: expected .safetensors files or Hugging Face/PEFT folders in it")
        return found
    if isinstance(sources, (Mapping, nn.Module)):
        return [sources]
    return list(sources)


def _source_name(source: CheckpointSource, i: int) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else str(i)


def import_checkpoints(
    root: str | os.PathLike,
    sources: CheckpointSource | Sequence[CheckpointSource],
    *,
    tasks: str | Sequence[str] | Mapping[str, str],
    **common: Any,
) -> Zoo:
    """Write many checkpoints into a zoo and return the zoo view of them.

    Args:
        root: Zoo folder (created if needed).
        sources: Checkpoints (anything `ZooWriter.add` takes), or one folder: its
            ``.safetensors`` files and Hugging Face/PEFT subfolders, in name order.
        tasks: One task for all, one per source (in order), or a mapping from a
            source's file or folder name (``"seed0.safetensors"``; a state dict's
            position ``"0"``) to its task.
        **common: Keywords of `ZooWriter.add` for every checkpoint (``run_id=`` puts
            them all in one run, as successive epochs).

    Returns:
        The zoo view of the imported checkpoints.

    Raises:
        ValueError: No sources, a count of tasks that does not match, a source with
            no task, or anything `ZooWriter.add` refuses (naming the checkpoint).

    Examples:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> folder = tempfile.mkdtemp()
        >>> for seed in range(2):
        ...     net = torch.nn.Linear(4, 3)
        ...     save_file(net.state_dict(), f"{folder}/seed{seed}.safetensors")
        >>> zoo = import_checkpoints(tempfile.mkdtemp(), folder, tasks="toy")
        >>> len(zoo), zoo.spec().numel
        (2, 15)
    """
    items = _expand(sources)
    if not items:
        raise ValueError("no checkpoints to import: sources is empty")
    names = [_source_name(s, i) for i, s in enumerate(items)]
    if isinstance(tasks, str):
        task_of = [tasks] * len(items)
    elif isinstance(tasks, Mapping):
        missing = [n for n in names if n not in tasks and Path(n).stem not in tasks]
        if missing:
            raise ValueError(f"tasks has no entry for sources {missing[:5]} (keys are file or folder names, or their stems)")
        task_of = [tasks[n] if n in tasks else tasks[Path(n).stem] for n in names]
    else:
        task_of = list(tasks)
        if len(task_of) != len(items):
            raise ValueError(f"got {len(task_of)} tasks for {len(items)} checkpoints; expected one task per checkpoint, or one str for all")
    writer = ZooWriter(root)
    added = [writer.add(source, task=task, **common) for source, task in zip(items, task_of, strict=True)]
    ids = {c.id for c in added}
    return writer.zoo().filter(where=lambda c: c.id in ids)
