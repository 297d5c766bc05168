"""Real datasets as classification tasks, for training model zoos and conditioning generators.

Examples:
    >>> from paramgen.data import get_task, class_subset_names
    >>> names = class_subset_names("digits", 5, limit=3, seed=0)
    >>> task = get_task(names[0], max_train_per_class=20)
    >>> task.num_classes, len(task.train)
    (5, 100)
"""

from paramgen.data.episodes import ClassPool, Episodes, fewshot_pool, sample_episodes
from paramgen.data.sources import (
    DATASETS,
    DatasetNotInstalledError,
    class_subset_names,
    get_task,
    load_dataset,
)
from paramgen.data.task import Split, Task, UnknownDatasetError

__all__ = [
    "ClassPool",
    "DATASETS",
    "Episodes",
    "DatasetNotInstalledError",
    "Split",
    "Task",
    "UnknownDatasetError",
    "class_subset_names",
    "fewshot_pool",
    "sample_episodes",
    "get_task",
    "load_dataset",
]
