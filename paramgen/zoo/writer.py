"""Zoos of checkpoints you already have, written in the zoo format that `Zoo.open` reads.

A checkpoint goes in as anything `paramgen.zoo.read_checkpoint` reads (a state
dict or a module, a ``.safetensors`` file, a Hugging Face model folder or a PEFT adapter
folder; never pickled weights), together with its task and whatever else you know about it.

Each run is one file of stacked checkpoints (``runs/<run_id>.safetensors``) and its
manifest (``runs/<run_id>.json``), as `paramgen.zoo.build_zoo` writes them: adding an
epoch to a run rewrites its tensor file with one more row and then its manifest. A write
is all or nothing: every checkpoint is read and checked first, every file is then staged
in a hidden folder of the zoo and renamed into place, manifests last; a failure leaves the
zoo as it was.

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

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from paramgen.base import BaseMismatchError, PinnedBase
from paramgen.formats import peft
from paramgen.io import file_sha256, read_json, save_safetensors, write_json
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.zoo._plan import Planned, differs, fit_rows, head_group, pad_head, plan_checkpoint, stored_tensors, tensor_digest
from paramgen.zoo._staging import Transaction
from paramgen.zoo.sources import CheckpointSource, _expand, read_checkpoint
from paramgen.zoo.sources import LoadedCheckpoint as LoadedCheckpoint  # importable from here, as before the split
from paramgen.zoo.store import BASE_FILE, Checkpoint, Zoo, _checkpoints_of_run

__all__ = ["ZooWriter", "import_checkpoints"]

logger = logging.getLogger(__name__)


class ZooWriter:
    """Writes checkpoints you already have into a zoo folder that `Zoo.open` reads.

    Every write is all or nothing: `add_all` reads and checks every checkpoint before it
    writes any, and a failure leaves the folder exactly as it was (no runs, and no folder
    when it did not exist before).

    Checkpoints whose tensor order means nothing (files) are laid out canonically
    (`paramgen.ParamSpec.canonical`), and a checkpoint with the tensors of a run already in
    the zoo shares that run's architecture (spec id), whatever its order. PEFT adapters
    that differ only in the rows of their classification head (tasks with 2 and 3 labels)
    are one architecture: their heads are zero-padded to the widest (as
    `paramgen.lora.LoRAZoo` pads them), runs already in the zoo included, and each
    checkpoint records its ``num_labels``.

    Args:
        root: The zoo folder; created by the first write. Runs already there are kept,
            and new checkpoints may join them.
        mixed_architectures: Accept checkpoints of several architectures in one zoo (a
            family, selected with ``zoo.filter(spec_id=...)``). By default every
            checkpoint must have the architecture of the zoo's runs, or of the first one
            written, and another one is refused naming the differing tensor: a zoo of one
            architecture is what a generator fits.
        base: A pinned base checkpoint (a `paramgen.base.PinnedBase`, or a safetensors
            path, state dict or module) the checkpoints are fine-tunes of. Its record
            (SHA-256, tensor shapes and dtypes) is written to ``base.json`` at the zoo's
            root with the first write, and every checkpoint's floating tensors must be in
            the base with the same shape. A zoo that records a base refuses a writer
            with another base, or with none; a zoo with runs but no base record takes a
            base only if it covers those runs.

    Examples:
        >>> import tempfile, torch
        >>> writer = ZooWriter(tempfile.mkdtemp())
        >>> net = torch.nn.Linear(3, 2)
        >>> c = writer.add(net, task="toy", run_id="run-0", epoch=5, metrics={"test_acc": 0.9})
        >>> c.id, c.arch_description.startswith("linear")
        ('run-0@5', True)
    """

    def __init__(self, root: str | os.PathLike, *, mixed_architectures: bool = False, base: Any = None) -> None:
        self.root = Path(root)
        self.mixed_architectures = bool(mixed_architectures)
        self._runs: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, ParamSpec] = {}
        runs = self.root / "runs"
        for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
            record = read_json(path)
            _checkpoints_of_run(record, path)  # a damaged manifest is named now, before anything is added
            self._runs[path.stem] = record
        self.base = None if base is None else PinnedBase.of(base)
        recorded = Zoo(self.root, [], {}).base
        if recorded is not None:
            if self.base is None:
                raise BaseMismatchError(f"zoo {self.root} records a base (sha256 {recorded['sha256']}): pass base= (the base checkpoint) to write into it")
            self.base.check(recorded, what=f"zoo {self.root}")
        elif self.base is not None:
            for run_id, record in self._runs.items():  # runs written before the base was pinned must be fine-tunes of it
                self.base.check_covers(_floating(self._spec(record["spec_id"])), what=f"the zoo's run {run_id!r}")
        self._base_recorded = recorded is not None

    @staticmethod
    def _arch_key(arch: str, arch_kwargs: Mapping[str, Any]) -> str:
        return json.dumps([arch, dict(arch_kwargs)], sort_keys=True)

    def _spec(self, spec_id: str) -> ParamSpec:
        if spec_id not in self._specs:
            path = self.root / "specs" / f"{spec_id}.json"
            try:
                self._specs[spec_id] = ParamSpec.from_dict(read_json(path))
            except (OSError, ValueError) as err:
                raise ValueError(f"zoo {self.root}: the architecture file {path} is unreadable ({err}); delete the runs that use it and import them again") from None
        return self._specs[spec_id]

    def add(self, checkpoint: CheckpointSource, *, task: str, **options: Any) -> Checkpoint:
        """Add one checkpoint to the zoo (atomically) and return its zoo record.

        Args:
            checkpoint: A state dict, an ``nn.Module``, a ``.safetensors`` file, a Hugging
                Face model folder or a PEFT adapter folder (see `read_checkpoint`).
            task: Task name the checkpoint was trained on, e.g. ``"wine"``.
            **options: ``run_id``, ``epoch``, ``metrics``, ``arch``, ``arch_kwargs``,
                ``arch_description``, ``task_description``, ``dataset``, ``seed``,
                ``hyperparameters`` and any other metadata, as `add_all` takes them.

        Returns:
            The checkpoint as `Zoo.open` will read it.

        Raises:
            ValueError: See `add_all`.
            FileNotFoundError: A path that does not exist.
        """
        return self.add_all([(checkpoint, {"task": task, **options})])[0]

    def add_all(self, entries: Sequence[tuple[CheckpointSource, Mapping[str, Any]]], *, progress: bool = False) -> list[Checkpoint]:
        """Add several checkpoints, all or nothing, and return their zoo records in order.

        Every checkpoint is read and checked first (readable, finite, its options valid,
        its architecture the zoo's unless ``mixed_architectures``, its run joinable); then
        every file is written and renamed into place. A failure leaves the zoo exactly as
        it was, and the error names the checkpoint and what was expected.

        Args:
            entries: ``(checkpoint, options)`` pairs; ``options`` holds the keywords of
                one checkpoint:

                - ``task`` (required): the task name it was trained on, e.g. ``"wine"``.
                - ``run_id``: the training run it belongs to; checkpoints of one run
                  (epochs) share one tensor file and one architecture. Without it, a
                  checkpoint is a run of its own named from its task and a hash of its
                  weights (the same weights again give the stored record).
                - ``epoch``: epochs trained; default one more than the run's last (0 first).
                - ``metrics``: finite numbers, e.g. ``{"test_acc": 0.97}``.
                - ``arch``, ``arch_kwargs``: the architecture's name (a `paramgen.models`
                  name lets `Zoo.model` rebuild it; default the Hugging Face class) and
                  keyword arguments; runs of one ``arch`` with equal ``arch_kwargs`` must
                  have the same tensors.
                - ``arch_description``, ``task_description``, ``dataset`` (default: the
                  task name before ``/``), ``seed``, ``hyperparameters``.
                - anything else: metadata recorded with the run (JSON values).
            progress: Show progress bars (reading, then writing).

        Returns:
            One `Checkpoint` per entry, as `Zoo.open` will read it.

        Raises:
            ValueError: An unreadable, empty or non-finite checkpoint, bad options, another
                architecture than the zoo's (`paramgen.spec.SpecMismatchError`, naming the
                first differing tensor and both shapes), a run it cannot join, an epoch
                already in its run.
            FileNotFoundError: A path that does not exist.
        """
        from tqdm.auto import tqdm

        entries = list(entries)
        if not entries:
            raise ValueError("no checkpoints to add: entries is empty")
        plans = [plan_checkpoint(source, dict(options)) for source, options in tqdm(entries, desc="read", disable=not progress)]
        if self.base is not None:
            for plan in plans:
                self.base.check_covers(_floating(plan.spec), what=f"checkpoint {plan.name}")
        specs, repad = self._resolve(plans)
        written = self._write(plans, specs, repad, progress)
        out = []
        for plan in plans:
            record = written.get(plan.run_id) or self._runs[plan.run_id]
            found = _checkpoints_of_run(record, self.root / "runs" / f"{plan.run_id}.json")
            out.append(next(c for c in found if c.epoch == plan.epoch))
        return out

    # ------------------------------------------------------------------ validation
    def _resolve(self, plans: list[Planned]) -> tuple[dict[str, ParamSpec], dict[str, str]]:
        """Pad heads, give every checkpoint its spec id and epoch, and check that they fit
        the zoo and each other. Returns the specs by id, and the zoo's runs whose heads must
        be padded further (run id -> their new spec id)."""
        # 1. PEFT heads: one width per group of adapters that differ only in their head's rows.
        widths: dict[str, int] = {}
        heads: dict[str, tuple[str, tuple[str, str | None]]] = {}  # the zoo's adapter runs: run id -> (group, head)
        for run_id, record in self._runs.items():
            spec = self._spec(record["spec_id"])
            head = peft.find_head({t.name: t.shape for t in spec.tensors}) if record.get("metadata", {}).get("source") == "peft" else None
            if head is not None:
                heads[run_id] = (head_group(spec, head), head)
                widths[heads[run_id][0]] = max(widths.get(heads[run_id][0], 0), spec[head[0]].shape[0])
        for plan in plans:
            if plan.head is not None:
                group = head_group(plan.spec, plan.head)
                widths[group] = max(widths.get(group, 0), plan.spec[plan.head[0]].shape[0])
        for plan in plans:
            plan.padded = plan.spec if plan.head is None else pad_head(plan.spec, plan.head, widths[head_group(plan.spec, plan.head)])
        narrow = {run_id: (group, head) for run_id, (group, head) in heads.items() if self._spec(self._runs[run_id]["spec_id"])[head[0]].shape[0] < widths[group]}

        # 2. Spec ids: the tensors of a spec in the zoo, in any order, take its id.
        specs: dict[str, ParamSpec] = {}
        by_tensors: dict[str, str] = {}  # canonical fingerprint -> spec id

        def spec_id(spec: ParamSpec, sid: str) -> str:
            sid = by_tensors.setdefault(spec.canonical().fingerprint, sid)
            specs.setdefault(sid, spec)
            return sid

        run_ids = {run_id: spec_id(self._spec(r["spec_id"]), r["spec_id"]) for run_id, r in self._runs.items() if run_id not in narrow}
        repad = {}
        for run_id, (group, head) in narrow.items():
            wide = pad_head(self._spec(self._runs[run_id]["spec_id"]), head, widths[group])
            run_ids[run_id] = repad[run_id] = spec_id(wide, wide.fingerprint)
        for plan in plans:
            assert plan.padded is not None
            plan.spec_id = spec_id(plan.padded, plan.padded.fingerprint)

        # 3. Runs: joinable (undamaged, one task, one architecture) and new epochs.
        epochs: dict[str, list[int]] = {}
        first: dict[str, Planned] = {}
        for plan in plans:
            found = self._runs.get(plan.run_id)
            manifest = self.root / "runs" / f"{plan.run_id}.json"
            if plan.auto_id and (found is not None or plan.run_id in first):  # the same weights are in the zoo, or twice here
                plan.epoch = _checkpoints_of_run(found, manifest)[0].epoch if found is not None else first[plan.run_id].epoch
                logger.info("checkpoint %s is already in zoo %s as %s@%s", plan.name, self.root, plan.run_id, plan.epoch)
                continue
            run_task, run_spec = (found["task"], run_ids[plan.run_id]) if found is not None else (None, None)
            if found is None and plan.run_id in first:
                run_task, run_spec = first[plan.run_id].task, first[plan.run_id].spec_id
            if run_spec is not None and run_spec != plan.spec_id:
                raise SpecMismatchError(f"checkpoint {plan.name} cannot join run {plan.run_id!r}: {differs(specs[run_spec], specs[plan.spec_id])}")
            if run_task is not None and run_task != plan.task:
                raise ValueError(f"run {plan.run_id!r} is on task {run_task!r}; checkpoint {plan.name} says {plan.task!r}")
            if plan.run_id not in epochs:
                epochs[plan.run_id] = [] if found is None else [c.epoch for c in _checkpoints_of_run(found, manifest)]
            taken = epochs[plan.run_id]
            plan.epoch = (max(taken) + 1 if taken else 0) if plan.epoch is None else plan.epoch
            if plan.epoch in taken:
                raise ValueError(f"run {plan.run_id!r} already holds epoch {plan.epoch}; give checkpoint {plan.name} another epoch or run_id")
            taken.append(plan.epoch)
            first.setdefault(plan.run_id, plan)
        for run_id in dict.fromkeys([*(r for r in epochs if r in self._runs), *repad]):  # runs to rewrite: damaged ones are refused now
            self._check_digest(run_id)

        # 4. Named architectures keep one set of tensors across runs.
        named: dict[str, tuple[str, str]] = {}  # arch key -> (spec id, where it was seen)
        for run_id, record in self._runs.items():
            if record["arch"] is not None:
                named.setdefault(self._arch_key(record["arch"], record["arch_kwargs"]), (run_ids[run_id], f"run {run_id}"))
        for plan in plans:
            arch, kwargs = plan.fields["arch"], plan.fields["arch_kwargs"]
            if arch is not None:
                sid, where = named.setdefault(self._arch_key(arch, kwargs), (plan.spec_id, f"checkpoint {plan.name}"))
                if sid != plan.spec_id:
                    raise SpecMismatchError(f"checkpoint {plan.name} is recorded as architecture {arch!r} {kwargs} like {where}, but its tensors differ: {differs(specs[sid], specs[plan.spec_id])}")

        # 5. One architecture per zoo, unless asked for several.
        if not self.mixed_architectures:
            zoo_specs = dict(zip(run_ids.values(), run_ids.keys(), strict=True))  # spec id -> a run of it
            where, expected = (f"the zoo's run {next(iter(zoo_specs.values()))}", next(iter(zoo_specs))) if zoo_specs else (f"checkpoint {plans[0].name}", plans[0].spec_id)
            for plan in plans:
                if plan.spec_id != expected and plan.spec_id not in zoo_specs:
                    raise SpecMismatchError(
                        f"checkpoint {plan.name} is another architecture than {where}: {differs(specs[expected], specs[plan.spec_id])}; "
                        "a zoo holds one architecture unless it is written with mixed_architectures=True (--mixed-architectures)"
                    )
            # LoRA adapters compute alpha / r * B @ A: the same tensors with another alpha are another function.
            alphas = [(r["metadata"]["lora_alpha"], f"the zoo's run {run_id}") for run_id, r in self._runs.items() if "lora_alpha" in r.get("metadata", {})]
            alphas += [(p.extra["lora_alpha"], f"checkpoint {p.name}") for p in plans if "lora_alpha" in p.extra]
            for alpha, where in alphas:
                if alpha != alphas[0][0]:
                    raise ValueError(
                        f"{where} is a LoRA adapter with lora_alpha={alpha}, {alphas[0][1]} has lora_alpha={alphas[0][0]}: the same tensors "
                        "compute another update; a zoo holds one architecture unless it is written with mixed_architectures=True (--mixed-architectures)"
                    )
        return specs, repad

    def _check_digest(self, run_id: str) -> None:
        """Refuse to rewrite a run whose tensor file changed since its manifest was written."""
        path = self.root / "runs" / f"{run_id}.safetensors"
        recorded = self._runs[run_id].get("tensors_sha256")
        try:
            changed = recorded is not None and file_sha256(path) != recorded
        except FileNotFoundError:
            raise ValueError(f"run {run_id!r} of zoo {self.root} is damaged (its tensor file is gone); delete runs/{run_id}.json and add it again") from None
        if changed:
            raise ValueError(f"run {run_id!r} of zoo {self.root}: its tensor bytes changed since they were written; delete its files and add it again")

    # ------------------------------------------------------------------ writing
    def _tensors(self, plan: Planned) -> dict[str, torch.Tensor]:
        """The checkpoint's stored tensors, read again (as checked) and its head padded: ``(1, *shape)``."""
        tensors = stored_tensors(read_checkpoint(plan.source))
        if tensor_digest(tensors) != plan.digest:
            raise ValueError(f"checkpoint {plan.name} changed while it was being imported; import it again")
        return fit_rows(tensors, plan.padded)  # type: ignore[arg-type]

    def _write(self, plans: list[Planned], specs: Mapping[str, ParamSpec], repad: Mapping[str, str], progress: bool) -> dict[str, dict[str, Any]]:
        """Stage every file, then rename them into place together; returns the new manifests by run id."""
        from tqdm.auto import tqdm

        rows: dict[str, list[Planned]] = {}
        for plan in plans:
            if not (plan.auto_id and (plan.run_id in self._runs or plan.run_id in rows)):  # stored already
                rows.setdefault(plan.run_id, []).append(plan)
        touched = list(dict.fromkeys([*rows, *repad]))
        if not touched:
            return {}
        records: dict[str, dict[str, Any]] = {}
        new_specs: set[str] = set()
        with Transaction(self.root) as tx:
            for run_id in tqdm(touched, desc="write", disable=not progress):
                old = self._runs.get(run_id)
                sid = repad.get(run_id) or (old["spec_id"] if old is not None else rows[run_id][0].spec_id)
                spec = specs.get(sid) or self._spec(sid)
                parts: list[dict[str, torch.Tensor]] = []
                if old is not None:
                    try:
                        parts.append(fit_rows(load_file(self.root / "runs" / f"{run_id}.safetensors"), spec))
                    except SafetensorError as err:
                        raise ValueError(f"run {run_id!r} of zoo {self.root} is damaged ({err}); delete its files and add it again") from None
                    record = json.loads(json.dumps(old))  # a copy: the writer's view changes only once committed
                else:
                    first = rows[run_id][0]
                    record = {"run_id": run_id, "task": first.task, **first.fields, "spec_id": sid, "metadata": {}, "checkpoints": []}
                index = len(next(iter(parts[0].values()))) if parts else 0
                for plan in rows.get(run_id, []):
                    parts.append(self._tensors(plan))
                    record["checkpoints"].append({"epoch": plan.epoch, "index": index, "metrics": plan.metrics, "imported_from": plan.name})
                    record["metadata"] = {**record["metadata"], **plan.extra}
                    index += 1
                if run_id in repad:
                    record["spec_id"] = sid
                    if "num_labels" not in record["metadata"]:  # imported before heads were padded: its rows were its labels
                        old_spec = self._spec(self._runs[run_id]["spec_id"])
                        record["metadata"]["num_labels"] = next(old_spec[t.name].shape[0] for t in spec.tensors if t.shape != old_spec[t.name].shape)
                names = [t.name for t in spec.tensors if t.role != "frozen" and t.tied_to is None]
                staged = tx.path(self.root / "runs" / f"{run_id}.safetensors")
                save_safetensors(staged, {n: torch.cat([p[n] for p in parts]) for n in names}, metadata={"spec_id": sid})  # (E, *shape)
                record["tensors_sha256"] = file_sha256(staged)
                records[run_id] = record
                new_specs.add(sid)
            for sid in sorted(new_specs):
                path = self.root / "specs" / f"{sid}.json"
                if not path.exists():
                    write_json(tx.path(path), specs[sid].to_dict())
            if self.base is not None and not self._base_recorded:
                write_json(tx.path(self.root / BASE_FILE), self.base.record())
            for run_id, record in records.items():  # manifests last: a run is in the zoo exactly when its JSON is
                write_json(tx.path(self.root / "runs" / f"{run_id}.json"), record)
            tx.commit()
        self._base_recorded = self._base_recorded or self.base is not None
        self._runs.update(records)
        self._specs.update({sid: specs[sid] for sid in new_specs if sid in specs})
        return records

    def zoo(self) -> Zoo:
        """The zoo folder as written so far (`Zoo.open`)."""
        return Zoo.open(self.root)


def _floating(spec: ParamSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the floating tensors a checkpoint stores (tied copies and frozen tensors excluded)."""
    return {t.name: tuple(t.shape) for t in spec.tensors if t.role != "frozen" and t.tied_to is None and t.torch_dtype.is_floating_point}


def _source_name(source: CheckpointSource, i: int) -> str:
    return Path(source).name if isinstance(source, (str, os.PathLike)) else str(i)


def import_checkpoints(
    root: str | os.PathLike,
    sources: CheckpointSource | Sequence[CheckpointSource],
    *,
    tasks: str | Sequence[str] | Mapping[str, str],
    mixed_architectures: bool = False,
    progress: bool = False,
    base: Any = None,
    **common: Any,
) -> Zoo:
    """Write many checkpoints into a zoo, all or nothing, and return the zoo view of them.

    Every source is read and checked before anything is written (`ZooWriter.add_all`): a
    bad one leaves the zoo exactly as it was, and the error names it.

    Args:
        root: Zoo folder (created if needed).
        sources: Checkpoints (anything `ZooWriter.add` takes), or one folder: its
            ``.safetensors`` files and Hugging Face/PEFT subfolders, in name order.
        tasks: One task for all, one per source (in order), or a mapping from a
            source's file or folder name (``"seed0.safetensors"``; a state dict's
            position ``"0"``) to its task.
        mixed_architectures: Accept several architectures in the zoo (see `ZooWriter`);
            by default a checkpoint of another architecture than the others, or than the
            zoo's runs, is refused naming the differing tensor and both shapes.
        progress: Show progress bars.
        base: The pinned base the checkpoints are fine-tunes of (see `ZooWriter`).
        **common: Keywords of `ZooWriter.add` for every checkpoint (``run_id=`` puts
            them all in one run, as successive epochs).

    Returns:
        The zoo view of the imported checkpoints.

    Raises:
        ValueError: No sources, a count of tasks that does not match, a source with
            no task, or anything `ZooWriter.add_all` refuses (naming the checkpoint).

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
    writer = ZooWriter(root, mixed_architectures=mixed_architectures, base=base)
    added = writer.add_all([(source, {**common, "task": task}) for source, task in zip(items, task_of, strict=True)], progress=progress)
    ids = {c.id for c in added}
    return writer.zoo().filter(where=lambda c: c.id in ids)
