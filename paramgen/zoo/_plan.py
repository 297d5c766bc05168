"""One checkpoint of `paramgen.zoo.ZooWriter.add_all` as its validation pass finds it.

`plan_checkpoint` reads a checkpoint and checks its options without writing or keeping anything;
the helpers pad PEFT heads and compare architectures for the writer's resolution pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from paramgen.formats import peft
from paramgen.spec import NonFiniteWeightsError, ParamSpec, SpecMismatchError
from paramgen.zoo.sources import CheckpointSource, LoadedCheckpoint, _describe, read_checkpoint

__all__ = ["Planned", "plan_checkpoint", "stored_tensors", "tensor_digest", "head_group", "pad_head", "fit_rows", "differs"]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@=+-]*$")


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


@attrs.define(eq=False)
class Planned:
    """One checkpoint of `ZooWriter.add_all` as the validation pass found it (no tensors kept)."""

    source: CheckpointSource
    name: str
    task: str
    run_id: str
    auto_id: bool
    epoch: int | None
    digest: str
    spec: ParamSpec  # as read: a file's canonically, a state dict's or module's in its order
    head: tuple[str, str | None] | None  # a PEFT adapter's classification head, padded to the widest
    metrics: dict[str, float]
    extra: dict[str, Any]
    fields: dict[str, Any]  # the run's record entries: dataset, task_description, arch, ...
    padded: ParamSpec | None = None  # spec with the head padded (set once every source is read)
    spec_id: str = ""


def stored_tensors(read: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """The tensors a zoo stores (no frozen or tied copies), ``(1, *shape)``, in the source's order."""
    keep = {t.name for t in read.spec.tensors if t.role != "frozen" and t.tied_to is None}
    return {name: t.detach().cpu().unsqueeze(0) for name, t in read.state_dict.items() if name in keep}


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, t in tensors.items():
        t = t.contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def head_group(spec: ParamSpec, head: tuple[str, str | None]) -> str:
    """What adapters share when they differ only in their head's rows (labels)."""
    rest = sorted([t.name, list(t.shape), t.dtype, t.role, t.tied_to] for t in spec.tensors if t.name not in head)
    return json.dumps([rest, list(head), list(spec[head[0]].shape[1:])])


def pad_head(spec: ParamSpec, head: tuple[str, str | None], rows: int) -> ParamSpec:
    return spec.with_shapes({name: (rows, *spec[name].shape[1:]) for name in head if name is not None})


def fit_rows(stacked: Mapping[str, torch.Tensor], spec: ParamSpec) -> dict[str, torch.Tensor]:
    """Stacked tensors ``(E, *shape)`` with any head zero-padded to ``spec``'s rows."""
    out = dict(stacked)
    for t in spec.tensors:
        x = out.get(t.name)
        if x is not None and tuple(x.shape[1:]) != t.shape:
            out[t.name] = torch.cat([x, x.new_zeros(x.shape[0], t.shape[0] - x.shape[1], *x.shape[2:])], dim=1)
    return out


def differs(expected: ParamSpec, got: ParamSpec) -> str:
    """The first difference between two architectures (in ``expected``'s order; called only
    when their tensors differ, not just their order)."""
    try:
        expected.check_compatible(got)
    except SpecMismatchError as err:
        return str(err).removeprefix("spec is for another architecture: ")
    return "the same tensors"


def plan_checkpoint(source: CheckpointSource, options: dict[str, Any]) -> Planned:
    """Read one checkpoint and check its options; nothing is written and no tensors are kept.

    Args:
        source: Anything `paramgen.zoo.read_checkpoint` reads.
        options: The keywords of one checkpoint (`paramgen.zoo.ZooWriter.add_all`);
            the known ones are popped, the rest is recorded as metadata.

    Returns:
        The checkpoint's `Planned` record; its spec id and padded spec are set later,
        once every checkpoint of the write is read.

    Raises:
        ValueError: No task, bad metrics, epoch or run id, non-finite weights.
        TypeError: A seed that is not an int, or metadata that is not JSON.
    """
    read = read_checkpoint(source)
    task = options.pop("task", None)
    if not isinstance(task, str) or not task:
        raise ValueError(f"checkpoint {read.name}: task must be a non-empty str naming what it was trained on, got {task!r}")
    run_id, epoch = options.pop("run_id", None), options.pop("epoch", None)
    metrics = _check_metrics(options.pop("metrics", None), read.name)
    arch = options.pop("arch", None)
    arch = read.arch if arch is None else arch
    arch_kwargs = _check_json(options.pop("arch_kwargs", None) or {}, "arch_kwargs")
    hyperparameters = _check_json(options.pop("hyperparameters", None) or {}, "hyperparameters")
    seed = options.pop("seed", None)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"checkpoint {read.name}: seed must be an int or None, got {seed!r}")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
        raise ValueError(f"checkpoint {read.name}: epoch must be an int >= 0 or None, got {epoch!r}")
    dataset, task_description, arch_description = options.pop("dataset", None), options.pop("task_description", None), options.pop("arch_description", None)
    extra = _check_json({**read.metadata, **options, "source": read.source}, "metadata")
    tensors = stored_tensors(read)
    try:
        read.spec.flatten_stacked(tensors)
    except NonFiniteWeightsError as err:
        raise NonFiniteWeightsError(f"checkpoint {read.name}: {err}") from None
    digest = tensor_digest(tensors)
    auto_id = run_id is None
    if run_id is None:
        run_id = f"{_slug(task)}__{digest[:12]}"
    elif not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"checkpoint {read.name}: run_id must be a file-name-safe str (letters, digits, '._@=+-'), got {run_id!r}")
    head = None
    if read.source == "peft":
        head = peft.find_head({t.name: t.shape for t in read.spec.tensors})
    fields = {
        "dataset": task.partition("/")[0] if dataset is None else dataset,
        "task_description": task if task_description is None else task_description,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "arch_description": arch_description or read.arch_description or _describe(read.spec),
        "seed": seed,
        "hyperparameters": hyperparameters,
    }
    return Planned(source, read.name, task, run_id, auto_id, epoch, digest, read.spec, head, metrics, extra, fields)
