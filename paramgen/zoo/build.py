"""Building zoos: many training runs, both cores, resumable, atomic.

A zoo is planned as a list of `RunConfig` (task x architecture x seed x training
hyperparameters) and built by `build_zoo`, which trains the runs missing from the
folder in worker processes and writes each run's checkpoints (the kept epochs) and its
manifest atomically. Interrupt it at any point and run it again: finished runs are
skipped, half-written files never count.

Your own data goes in as `paramgen.data.Task` objects (`Task.from_arrays`) passed with
``tasks=``: a run's ``task`` then names one of them (``"wine"``) or a class subset of
one (``"wine/0-1"``).

Examples:
    >>> import tempfile
    >>> runs = preset("tiny")[:2]
    >>> zoo = build_zoo(tempfile.mkdtemp(), runs, workers=1, progress=False)
    >>> len(zoo), zoo.summary()["test_acc_mean"] > 0.5
    (4, True)

    Your own data (here scikit-learn's iris):

    >>> from sklearn.datasets import load_iris
    >>> from paramgen.data import Task
    >>> iris = Task.from_arrays("iris", load_iris().data, load_iris().target)
    >>> plan = [RunConfig(task=t, arch="mlp", arch_kwargs={"in_features": 4, "hidden": [8]}) for t in ("iris", "iris/0-1")]
    >>> zoo = build_zoo(tempfile.mkdtemp(), plan, tasks=[iris], workers=1, progress=False)
    >>> zoo.tasks
    ('iris', 'iris/0-1')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import attrs
import torch

from paramgen._convert import int_tuple
from paramgen.data import DATASETS, Task, UnknownDatasetError, class_subset_names, get_task, load_dataset
from paramgen.io import TMP_SUFFIX, file_sha256, read_json, save_safetensors, write_json
from paramgen.models import build_model, describe_architecture
from paramgen.spec import ParamSpec
from paramgen.tracking import Logger, NullLogger
from paramgen.zoo.store import Zoo
from paramgen.zoo.train import TrainConfig, train_classifier

__all__ = ["RunConfig", "build_zoo", "run_one", "load_run_task", "user_tasks", "task_fingerprint", "subset_runs", "preset", "PRESETS"]

logger = logging.getLogger(__name__)


@attrs.frozen
class RunConfig:
    """One training run of a zoo.

    Attributes:
        task: Task name: for `paramgen.data.get_task` (``"digits/0-3-5"``), or the name
            of a task of your own given to `build_zoo` with ``tasks=`` (``"wine"``), or a
            class subset of one (``"wine/0-1"``).
        arch: Model name for `paramgen.models.build_model`.
        arch_kwargs: Its keyword arguments (``num_classes`` is taken from the task).
        seed: Initialization and batch-order seed.
        train: Training hyperparameters.
        keep_epochs: Epochs whose checkpoints are kept.
        max_train_per_class: Training examples per class (``None``: all).
        max_eval_per_class: Validation/test examples per class (``None``: all).
    """

    task: str
    arch: str
    arch_kwargs: Mapping[str, Any] = attrs.field(factory=dict, hash=False, converter=dict)
    seed: int = 0
    train: TrainConfig = TrainConfig()
    keep_epochs: tuple[int, ...] = attrs.field(default=(10,), converter=int_tuple)
    max_train_per_class: int | None = None
    max_eval_per_class: int | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise TypeError(
                f"task must be a task name (str), got {type(self.task).__name__}; pass Task objects of "
                "your own to build_zoo(..., tasks=[...]) and name them here"
            )
        if "num_classes" in self.arch_kwargs:
            raise ValueError("arch_kwargs must not set num_classes: it comes from the task")
        if not self.keep_epochs or min(self.keep_epochs) < 1 or max(self.keep_epochs) > self.train.epochs:
            raise ValueError(f"keep_epochs must lie in 1..{self.train.epochs}, got {self.keep_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "seed": self.seed,
            "train": attrs.asdict(self.train),
            "keep_epochs": list(self.keep_epochs),
            "max_train_per_class": self.max_train_per_class,
            "max_eval_per_class": self.max_eval_per_class,
        }

    @property
    def run_id(self) -> str:
        """Readable and unique: task, architecture, seed, and a hash of everything."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.task.replace('/', '_')}__{self.arch}__s{self.seed}__{digest}"


def user_tasks(tasks: Sequence[Task] | Mapping[str, Task] | None) -> dict[str, Task]:
    """Tasks of your own by name, checked: `Task` objects, unique names, no built-in dataset's name."""
    if tasks is None:
        return {}
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    out: dict[str, Task] = {}
    for task in items:
        if not isinstance(task, Task):
            raise TypeError(f"tasks must be paramgen.data.Task objects (see Task.from_arrays), got {type(task).__name__}")
        if task.name.partition("/")[0] in DATASETS:
            raise ValueError(f"task {task.name!r} takes the name of a built-in dataset {list(DATASETS)}; give it another name")
        if task.name in out:
            raise ValueError(f"two tasks are named {task.name!r}; task names must be unique")
        out[task.name] = task
    return out


def task_fingerprint(task: Task) -> str:
    """Short hash of a task's examples, labels and class names (recorded for tasks of your own)."""
    h = hashlib.sha256(json.dumps([task.name, list(task.class_names), task.subject]).encode())
    for split in (task.train, task.val, task.test):
        x = split.x
        h.update(json.dumps(list(x)).encode() if isinstance(x, tuple) else x.contiguous().numpy().tobytes())
        h.update(split.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_run_task(
    cfg: RunConfig,
    datasets: dict[str, Task] | None = None,
    data_root: str | None = None,
    tasks: Mapping[str, Task] | None = None,
) -> Task:
    """The task of a run with its caps; ``datasets`` caches loaded datasets between calls.

    ``tasks`` holds tasks of your own by name (see `user_tasks`); a run's task names one
    of them or a class subset of one (``"wine/0-1"``).
    """
    datasets = {} if datasets is None else datasets
    dataset, _, classes = cfg.task.partition("/")
    caps: dict[str, Any] = {"max_train_per_class": cfg.max_train_per_class, "max_eval_per_class": cfg.max_eval_per_class}
    own = dict(tasks or {})
    if cfg.task in own:
        task = own[cfg.task]
        return task if cfg.max_train_per_class is None and cfg.max_eval_per_class is None else task._restrict(task.classes, name=task.name, seed=0, **caps)
    if dataset in own and classes:
        if not all(part.isdigit() for part in classes.split("-")):
            raise UnknownDatasetError(f"cannot read task name {cfg.task!r}: expected '{dataset}/<c1>-<c2>-...' with class ids from {list(own[dataset].classes)}")
        subset = own[dataset].subset([int(c) for c in classes.split("-")], **caps)
        return subset if subset.name == cfg.task else attrs.evolve(subset, name=cfg.task)  # a Task whose dataset differs from its name
    if dataset not in DATASETS:
        raise UnknownDatasetError(
            f"run {cfg.run_id}: task {cfg.task!r} is neither a built-in dataset {list(DATASETS)} nor one of the tasks "
            f"given to build_zoo(tasks=...) {sorted(own)}; make one with paramgen.data.Task.from_arrays and pass it there"
        )
    root = data_root if dataset == "fashion_mnist" else None
    if not classes:
        return get_task(cfg.task, root=root, **caps)
    if dataset not in datasets:
        datasets[dataset] = load_dataset(dataset, root=root)
    return datasets[dataset].subset([int(c) for c in classes.split("-")], **caps)


def run_one(
    cfg: RunConfig,
    *,
    datasets: dict[str, Task] | None = None,
    data_root: str | None = None,
    tasks: Mapping[str, Task] | None = None,
) -> dict[str, Any]:
    """Train one run; return its stacked tensors, spec and manifest record (nothing written).

    ``datasets`` is a cache of loaded datasets the caller may keep between calls;
    ``tasks`` holds tasks of your own by name (see `load_run_task`).
    """
    task = load_run_task(cfg, datasets, data_root, tasks)
    model = build_model(cfg.arch, num_classes=task.num_classes, **cfg.arch_kwargs)
    snapshots = train_classifier(model, task, cfg.train, seed=cfg.seed, keep_epochs=cfg.keep_epochs)
    spec = ParamSpec.from_module(model)
    stored = [t.name for t in spec.tensors if t.role != "frozen" and t.tied_to is None]
    tensors = {name: torch.stack([s.state_dict[name] for s in snapshots]) for name in stored}  # (E, *shape)
    spec.flatten_stacked(tensors)  # refuses NaN/Inf weights before anything is written
    record = {
        "run_id": cfg.run_id,
        "task": task.name,
        "dataset": task.dataset,
        "task_description": task.description,
        "class_names": list(task.class_names),
        "arch": cfg.arch,
        "arch_kwargs": {"num_classes": task.num_classes, **dict(cfg.arch_kwargs)},
        "arch_description": describe_architecture(model),
        "seed": cfg.seed,
        "hyperparameters": attrs.asdict(cfg.train),
        "max_train_per_class": cfg.max_train_per_class,
        "max_eval_per_class": cfg.max_eval_per_class,
        "spec_id": spec.fingerprint,
        "config": cfg.to_dict(),
        "checkpoints": [{"epoch": s.epoch, "index": i, "metrics": s.metrics} for i, s in enumerate(snapshots)],
    }
    base = cfg.task.partition("/")[0] if cfg.task not in (tasks or {}) else cfg.task
    if tasks and base in tasks:
        # A name alone does not say which data a task of your own held: record a hash of it.
        record["task_source"] = "user"
        record["data_fingerprint"] = task_fingerprint(tasks[base])
    return {"tensors": tensors, "spec": spec, "record": record}


def _write_run(root: Path, result: Mapping[str, Any]) -> None:
    record, spec = result["record"], result["spec"]
    spec_path = root / "specs" / f"{spec.fingerprint}.json"
    if not spec_path.exists():
        write_json(spec_path, spec.to_dict())
    runs = root / "runs"
    # Tensors first, manifest last: a run exists exactly when its JSON does.
    tensors = runs / f"{record['run_id']}.safetensors"
    save_safetensors(tensors, result["tensors"], metadata={"spec_id": spec.fingerprint})
    write_json(runs / f"{record['run_id']}.json", {**record, "tensors_sha256": file_sha256(tensors)})


_WORKER_DATASETS: dict[str, Task] = {}  # per worker process only; never set in the caller's process
_WORKER_TASKS: dict[str, Task] = {}  # the caller's own tasks, sent once per worker process


def _init_worker(threads: int, tasks: Mapping[str, Task]) -> None:
    torch.set_num_threads(threads)
    _WORKER_TASKS.update(tasks)


def _worker(cfg: RunConfig, data_root: str | None) -> dict[str, Any]:
    return run_one(cfg, datasets=_WORKER_DATASETS, data_root=data_root, tasks=_WORKER_TASKS)


def _check_resumed(root: Path, runs: Sequence[RunConfig], own: Mapping[str, Task]) -> None:
    """Refuse to skip a finished run of a task of your own whose data has changed since."""
    prints: dict[str, str] = {}
    for cfg in runs:
        base = cfg.task if cfg.task in own else cfg.task.partition("/")[0]
        path = root / "runs" / f"{cfg.run_id}.json"
        if base not in own or not path.exists():
            continue
        if base not in prints:
            prints[base] = task_fingerprint(own[base])
        recorded = read_json(path).get("data_fingerprint")
        if recorded != prints[base]:
            raise ValueError(
                f"run {cfg.run_id} ({path}) was trained on other data named {base!r} (fingerprint {recorded}, now "
                f"{prints[base]}); give the changed task a new name, or delete that run's files to retrain it"
            )


def build_zoo(
    root: str | os.PathLike,
    runs: Sequence[RunConfig],
    *,
    workers: int = 2,
    progress: bool = True,
    tracker: Logger | None = None,
    data_root: str | None = None,
    tasks: Sequence[Task] | Mapping[str, Task] | None = None,
) -> Zoo:
    """Train every run of ``runs`` missing from ``root`` and return the zoo of ``runs``.

    Args:
        root: Zoo folder (created if needed). Runs already there are skipped.
        runs: The plan; run ids must be unique.
        workers: Worker processes (one torch thread each); ``1`` trains in this process.
            Workers are spawned, so a script calling this with ``workers > 1`` needs the
            usual ``if __name__ == "__main__":`` guard.
        progress: Show a tqdm progress bar.
        tracker: Receives per-run metrics (``step`` = runs finished).
        data_root: Folder of Fashion-MNIST's IDX files if not the Debian default.
        tasks: Tasks of your own (`paramgen.data.Task.from_arrays`), by name: a run's
            ``task`` may name one (``"wine"``) or a class subset of one (``"wine/0-1"``).
            They are sent to the worker processes once each; the manifest of each of
            their runs records a fingerprint of the data, and resuming over changed
            data under the same name is refused.

    Returns:
        The zoo of the planned runs (other runs in the folder stay out of this view).

    Raises:
        ValueError: An empty plan, repeated runs, a task of your own named like a
            built-in dataset, or changed data under a finished run's task name.
        paramgen.data.UnknownDatasetError: A run's task is neither built in nor given.
    """
    root = Path(root)
    if len(runs) == 0:
        raise ValueError("the plan is empty: expected at least one RunConfig")
    if not all(isinstance(r, RunConfig) for r in runs):
        raise TypeError(f"runs must be RunConfig objects, got {sorted({type(r).__name__ for r in runs})}")
    own = user_tasks(tasks)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"the plan repeats runs {dup[:3]}")
    # Every run is checked before anything is created or trained: unknown tasks, classes of
    # your own tasks, architectures that cannot be built, changed data under a finished run.
    _check_plan(runs, own)
    _check_resumed(root, runs, own)
    created = [p for p in (root, *root.parents) if not p.exists()]
    (root / "runs").mkdir(parents=True, exist_ok=True)
    for stale in root.rglob(f"*{TMP_SUFFIX}"):  # left by an interrupted build
        stale.unlink()
    write_json(root / "plan.json", [r.to_dict() for r in runs])
    todo = [r for r in runs if not (root / "runs" / f"{r.run_id}.json").exists()]
    log = tracker or NullLogger()
    logger.info("zoo %s: %d runs planned, %d to train", root, len(runs), len(todo))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="zoo runs", disable=not progress)
    done = 0

    def finish(result: Mapping[str, Any]) -> None:
        nonlocal done
        _write_run(root, result)
        done += 1
        last = result["record"]["checkpoints"][-1]["metrics"]
        log.log_metrics({"test_acc": last["test_acc"], "val_acc": last["val_acc"]}, step=done)
        bar.update(1)

    try:
        _train(todo, finish, workers=workers, data_root=data_root, own=own)
    except BaseException:
        if done == 0 and created:  # a new zoo that got no run: leave no skeleton behind
            shutil.rmtree(created[-1], ignore_errors=True)
        elif todo:
            logger.error(
                "zoo %s: the build stopped after %d of %d runs to train; the finished runs are kept, and building again "
                "trains only the missing ones", root, done, len(todo),
            )  # fmt: skip
        raise
    finally:
        bar.close()
    planned = set(ids)
    return Zoo.open(root).filter(where=lambda c: c.run_id in planned)  # other runs in the folder stay out


def _check_plan(runs: Sequence[RunConfig], own: Mapping[str, Task]) -> None:
    """Refuse a plan with a task that does not exist or an architecture that cannot be built,
    naming the run, before anything is written."""
    built: set[str] = set()
    for cfg in runs:
        dataset, _, classes = cfg.task.partition("/")
        task = load_run_task(cfg, tasks=own) if dataset not in DATASETS else None  # built-in datasets load in the workers
        num_classes = task.num_classes if task is not None else len(classes.split("-")) if classes else 2
        key = json.dumps([cfg.arch, dict(cfg.arch_kwargs), num_classes], sort_keys=True)
        if key in built:
            continue
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no weights, no draw from the caller's generator
                build_model(cfg.arch, num_classes=num_classes, **cfg.arch_kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"run {cfg.run_id}: cannot build architecture {cfg.arch!r} with {dict(cfg.arch_kwargs)}: {err}") from None
        built.add(key)


def _train(todo: Sequence[RunConfig], finish: Any, *, workers: int, data_root: str | None, own: Mapping[str, Task]) -> None:
    """Train the runs, in this process or in ``workers`` spawned ones, handing each result to ``finish``."""
    if workers <= 1 or len(todo) <= 1:
        datasets: dict[str, Task] = {}
        for cfg in todo:
            finish(run_one(cfg, datasets=datasets, data_root=data_root, tasks=own))
        return
    ctx = get_context("spawn")  # fork after torch has started threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(1, own)) as pool:
        pending = {pool.submit(_worker, cfg, data_root) for cfg in todo}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    finish(fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


# ----------------------------------------------------------------------------- presets
def subset_runs(
    dataset: str,
    n_tasks: int,
    *,
    k: int,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    seeds: Sequence[int],
    train: TrainConfig,
    keep_epochs: Sequence[int],
    max_train_per_class: int | None,
    max_eval_per_class: int | None,
    task_seed: int = 0,
) -> list[RunConfig]:
    """Runs for ``n_tasks`` ``k``-class subsets of ``dataset`` (chosen with ``task_seed``), one per seed."""
    return [
        RunConfig(
            task=name,
            arch=arch,
            arch_kwargs=arch_kwargs,
            seed=seed,
            train=train,
            keep_epochs=tuple(keep_epochs),
            max_train_per_class=max_train_per_class,
            max_eval_per_class=max_eval_per_class,
        )
        for name in class_subset_names(dataset, k, limit=n_tasks, seed=task_seed)
        for seed in seeds
    ]


def _cnn_fashion_digits() -> list[RunConfig]:
    """64 five-class tasks (32 digits, 32 Fashion-MNIST), 2 seeds, epochs 8-12 kept: 640 checkpoints."""
    train = TrainConfig(epochs=12, lr=5e-3, batch_size=64)
    common: dict[str, Any] = dict(
        k=5, arch="convnet", arch_kwargs={"channels": [8, 16]}, seeds=(0, 1), train=train, keep_epochs=range(8, 13)
    )
    return subset_runs("digits", 32, max_train_per_class=None, max_eval_per_class=None, **common) + subset_runs(
        "fashion_mnist", 32, max_train_per_class=1000, max_eval_per_class=None, **common
    )


def _mlp_mnist1d() -> list[RunConfig]:
    """50 five-class MNIST-1D tasks, an MLP, 2 seeds, last 5 of 20 epochs: 500 checkpoints."""
    train = TrainConfig(epochs=20, lr=3e-3, batch_size=64)
    return subset_runs(
        "mnist1d", 50, k=5, arch="mlp", arch_kwargs={"in_features": 40, "hidden": [32, 32]}, seeds=(0, 1),
        train=train, keep_epochs=range(16, 21), max_train_per_class=None, max_eval_per_class=None,
    )


def _tiny() -> list[RunConfig]:
    """4 digits tasks, 1 seed, epochs 2-3 of 3: 8 checkpoints in seconds (tests, demo)."""
    train = TrainConfig(epochs=3, lr=1e-2, batch_size=32)
    return subset_runs(
        "digits", 4, k=5, arch="convnet", arch_kwargs={"channels": [8, 16]}, seeds=(0,), train=train,
        keep_epochs=(2, 3), max_train_per_class=60, max_eval_per_class=None,
    )


PRESETS = {
    "cnn-fashion-digits": _cnn_fashion_digits,
    "mlp-mnist1d": _mlp_mnist1d,
    "tiny": _tiny,
}


def preset(name: str) -> list[RunConfig]:
    """The run plan of a named zoo preset (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown zoo preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
