"""Model zoos: train many small models on many tasks, store and serve their checkpoints.

Examples:
    >>> import tempfile
    >>> from paramgen.zoo import build_zoo, preset
    >>> zoo = build_zoo(tempfile.mkdtemp(), preset("tiny")[:1], workers=1, progress=False)
    >>> flat, extras = zoo.flatten()
    >>> flat.shape[0]
    2
"""

from paramgen.zoo.build import PRESETS, RunConfig, build_zoo, load_run_task, preset, run_one
from paramgen.zoo.store import Checkpoint, WeightDataset, Zoo
from paramgen.zoo.train import Snapshot, TrainConfig, evaluate, train_classifier

__all__ = [
    "PRESETS",
    "RunConfig",
    "build_zoo",
    "load_run_task",
    "preset",
    "run_one",
    "Checkpoint",
    "WeightDataset",
    "Zoo",
    "Snapshot",
    "TrainConfig",
    "evaluate",
    "train_classifier",
]
