"""Model zoos: train many small models on many tasks, store and serve their checkpoints.

Zoos come from training (`build_zoo`, on built-in datasets or tasks of your own) or from
checkpoints you already have (`ZooWriter`, `import_checkpoints`); `Zoo` reads both.

Examples:
    >>> import tempfile
    >>> from paramgen.zoo import build_zoo, preset
    >>> zoo = build_zoo(tempfile.mkdtemp(), preset("tiny")[:1], workers=1, progress=False)
    >>> flat, extras = zoo.flatten()
    >>> flat.shape[0]
    2
"""

from paramgen.zoo.build import PRESETS, RunConfig, build_zoo, load_run_task, preset, run_one, task_fingerprint, user_tasks
from paramgen.zoo.sources import CheckpointSource, LoadedCheckpoint, read_checkpoint
from paramgen.zoo.store import Checkpoint, DamagedZooError, EmptyZooError, WeightDataset, Zoo
from paramgen.zoo.train import Snapshot, TrainConfig, evaluate, train_classifier
from paramgen.zoo.writer import ZooWriter, import_checkpoints

__all__ = [
    "PRESETS",
    "RunConfig",
    "build_zoo",
    "load_run_task",
    "preset",
    "run_one",
    "task_fingerprint",
    "user_tasks",
    "Checkpoint",
    "CheckpointSource",
    "DamagedZooError",
    "EmptyZooError",
    "LoadedCheckpoint",
    "ZooWriter",
    "import_checkpoints",
    "read_checkpoint",
    "WeightDataset",
    "Zoo",
    "Snapshot",
    "TrainConfig",
    "evaluate",
    "train_classifier",
]
