"""A fit recipe: which zoo, which pipeline with which options, which `FitConfig`, where to save.

`Recipe` is what ``paramgen fit CONFIG.toml`` reads and what ``python -m paramgen.demo``
builds in code; both fit through `fit_recipe`, so the command line reproduces the demo's
generator exactly. The TOML schema (relative paths resolve against the file's folder)::

    zoo = "runs/demo/zoo"          # a zoo folder (paramgen.zoo.Zoo.open); for chunkwise also
                                   # a folder of .safetensors checkpoints or of model folders
    out = "runs/demo/generator"    # where the fitted generator is saved
    [generator]
    pipeline = "d2nwg"             # d2nwg | cond-pdiff | igpg | chunkwise
    condition = "task"             # task | text | text+arch | none (read from each checkpoint;
                                   # chunkwise: none, its default, or task)
    seed = 0                       # initialization of the components
    latent_length = 16             # any other key: an option of the pipeline
    [fit]                          # starts from the pipeline's fit_config() (the paper's defaults)
    tokenizer_steps = 600          # any paramgen.training.FitConfig field
    [tracking]                     # optional: report params and losses to MLflow
    backend = "mlflow"             # mlflow (the default in this table) | none
    uri = "sqlite:///mlflow.db"    # default: $MLFLOW_TRACKING_URI, else mlflow.db beside the config
    experiment = "paramgen-fit"

Examples:
    >>> recipe = Recipe.from_dict({"zoo": "zoo", "out": "gen", "generator": {"pipeline": "d2nwg", "latent_length": 8},
    ...                            "fit": {"prior_steps": 10}}, base="/data")
    >>> recipe.zoo, recipe.options, recipe.fit.prior_steps
    ('/data/zoo', {'latent_length': 8}, 10)
    >>> Recipe.from_dict({"zoo": "z", "out": "g", "generator": {"pipeline": "d2nwg"}, "fit": {"steps": 1}})
    Traceback (most recent call last):
    ...
    paramgen.cli.recipe.ConfigError: [fit] has no key 'steps'; valid keys: align_lr, align_restarts, align_steps, ...
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from paramgen.tracking import Logger, MLflowLogger, NullLogger
from paramgen.training import FitConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "CONDITIONS",
    "BACKENDS",
    "ConfigError",
    "Recipe",
    "Tracking",
    "chunkwise_checkpoints",
    "fit_chunkwise",
    "fit_recipe",
    "fit_defaults",
    "pipelines",
    "parse_override",
]

_TOP = ("zoo", "out", "generator", "fit", "tracking")
_TRACKING = ("backend", "uri", "experiment", "run_name")
#: The ``[tracking]`` backends: MLflow (the ``tracking`` extra), or nothing.
BACKENDS = ("mlflow", "none")
_GENERATOR = ("pipeline", "condition", "seed", "tasks")
_PATHS = ("zoo", "out")


#: The conditions the command line can read from a zoo: name -> raw condition of a checkpoint.
CONDITIONS: dict[str, Callable[[Any], Any] | None] = {
    "task": lambda c: c.task,  # d2nwg, igpg: an index embedding; cond-pdiff: one-hot
    "text": lambda c: c.task_description,  # cond-pdiff: a MiniLM embedding of the description
    "text+arch": lambda c: (c.task_description, c.arch_description),  # igpg
    "none": None,  # unconditional
}


class ConfigError(ValueError):
    """A fit recipe is malformed: the message names the key and what was expected."""


def pipelines() -> dict[str, Callable[..., Any]]:
    """The pipeline builders by name (``paramgen.pipelines.PIPELINES``)."""
    from paramgen.pipelines import PIPELINES

    return dict(PIPELINES)


def fit_defaults(name: str) -> Callable[..., FitConfig]:
    """The pipeline's ``fit_config`` (its paper's training defaults,
    ``paramgen.pipelines.FIT_CONFIGS``), or `FitConfig` for a pipeline without one."""
    from paramgen.pipelines import FIT_CONFIGS

    return FIT_CONFIGS.get(name, FitConfig)


def _fit_fields() -> list[str]:
    return sorted(f.name for f in attrs.fields(FitConfig))


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table, got {value!r}")
    return dict(value)


def _path(value: Any, key: str, base: Path) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{key!r} must be a path (a non-empty string), got {value!r}")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _sqlite_uri(uri: str, base: Path) -> str:
    """A ``sqlite:///relative.db`` URI made absolute against ``base`` (other URIs as given)."""
    head = "sqlite:///"
    if uri.startswith(head) and uri != head + ":memory:" and not Path(uri[len(head) :]).expanduser().is_absolute():
        return head + str(base.resolve() / uri[len(head) :])
    return uri


@attrs.frozen(kw_only=True)
class Tracking:
    """Where `paramgen fit` reports its configuration and losses (the ``[tracking]`` table).

    Attributes:
        backend: ``"mlflow"`` (a `paramgen.tracking.MLflowLogger`; needs the ``tracking``
            extra) or ``"none"``.
        uri: The MLflow tracking URI (``sqlite:///x.db`` relative paths resolved), or
            ``None``: ``MLFLOW_TRACKING_URI`` if set, else the sqlite store
            ``<root>/mlflow.db``.
        root: Folder of the default store (the config's folder).
        experiment: MLflow experiment name.
        run_name: MLflow run name (``None``: MLflow picks one).

    Examples:
        >>> Tracking.from_table({"uri": "sqlite:///runs/mlflow.db"}, base=Path("/data")).uri
        'sqlite:////data/runs/mlflow.db'
        >>> Tracking.from_table({"backend": "wandb"}, base=Path("."))
        Traceback (most recent call last):
        ...
        paramgen.cli.recipe.ConfigError: [tracking] backend must be one of 'mlflow', 'none', got 'wandb'
    """

    backend: Literal["mlflow", "none"] = "none"
    uri: str | None = None
    root: str = "."
    experiment: str = "paramgen-fit"
    run_name: str | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, base: Path) -> Tracking:
        """The ``[tracking]`` table checked; a table without ``backend`` means MLflow.

        Raises:
            ConfigError: an unknown key (naming the valid ones) or a bad value.
        """
        bad = sorted(set(table) - set(_TRACKING))
        if bad:
            raise ConfigError(f"[tracking] has no key {bad[0]!r}; valid keys: {', '.join(_TRACKING)}")
        backend = table.get("backend", "mlflow")
        if backend not in BACKENDS:
            raise ConfigError(f"[tracking] backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}")
        for key in ("uri", "experiment", "run_name"):
            if key in table and (not isinstance(table[key], str) or not table[key]):
                raise ConfigError(f"[tracking] {key} must be a non-empty string, got {table[key]!r}")
        uri = table.get("uri")
        return cls(
            backend=backend, uri=None if uri is None else _sqlite_uri(uri, base), root=str(base), experiment=table.get("experiment", "paramgen-fit"),
            run_name=table.get("run_name"),
        )  # fmt: skip

    def logger(self, *, tags: Mapping[str, str] | None = None) -> Logger:
        """A new run of the backend (`paramgen.tracking.NullLogger` for ``"none"``).

        Raises:
            ImportError: ``"mlflow"`` without mlflow installed (naming the extra).
        """
        if self.backend == "none":
            return NullLogger()
        return MLflowLogger(self.experiment, run_name=self.run_name, root=self.root, tracking_uri=self.uri, tags=tags)


@attrs.frozen(kw_only=True)
class Recipe:
    """One fit: zoo in, fitted generator out.

    Attributes:
        zoo: The zoo folder.
        out: Where `paramgen.Generator.save_pretrained` writes the fitted generator.
        pipeline: A name of ``paramgen.pipelines.PIPELINES`` (``"d2nwg"``, ...).
        condition: What conditions the generator, read from each checkpoint (see
            `CONDITIONS`): ``"task"`` (its task name), ``"text"`` (its task description),
            ``"text+arch"`` (task and architecture descriptions) or ``"none"`` (the
            default of ``"chunkwise"``, which takes ``"none"`` or ``"task"``).
        seed: Seeds the components' initialization (the pipeline's ``seed``).
        tasks: The task names the conditioner knows (``None``: the zoo's).
        options: Further keyword options of the pipeline.
        fit: The training configuration: the pipeline's ``fit_config()`` defaults with
            the config's ``[fit]`` values over them.
        tracking: Where the fit reports (no ``[tracking]`` table: nowhere).
    """

    zoo: str
    out: str
    pipeline: str
    condition: str = "task"
    seed: int = 0
    tasks: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(tuple))
    options: dict[str, Any] = attrs.field(factory=dict)
    fit: FitConfig = attrs.field(factory=FitConfig)
    tracking: Tracking = attrs.field(factory=Tracking)

    def params(self) -> dict[str, Any]:
        """The recipe as flat ``name -> value`` params for a tracker (``generator.*`` and
        ``fit.*`` for the tables)."""
        head = {"zoo": self.zoo, "out": self.out, "pipeline": self.pipeline, "condition": self.condition, "seed": self.seed, "tasks": self.tasks}
        return head | {f"generator.{k}": v for k, v in self.options.items()} | {f"fit.{k}": v for k, v in self.fit.to_dict().items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: str | os.PathLike = ".") -> Recipe:
        """Check a parsed config and build the recipe (relative paths against ``base``).

        Raises:
            ConfigError: an unknown or missing key, an unknown pipeline or option, or a
                value `FitConfig` refuses.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a fit config must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP))
        if unknown:
            raise ConfigError(f"unknown top-level key {unknown[0]!r}; valid keys: {', '.join(_TOP)}")
        missing = [k for k in ("zoo", "out", "generator") if k not in data]
        if missing:
            raise ConfigError(f"the config lacks {', '.join(repr(k) for k in missing)} (expected zoo = PATH, out = PATH and a [generator] table)")
        root = Path(base)
        gen = _table(data, "generator")
        if "pipeline" not in gen:
            raise ConfigError(f"[generator] lacks 'pipeline'; expected one of {', '.join(sorted(pipelines()))}")
        name = gen.pop("pipeline")
        builders = pipelines()
        if name not in builders:
            raise ConfigError(f"unknown pipeline {name!r}; expected one of {', '.join(sorted(builders))}")
        fixed = {k: gen.pop(k) for k in _GENERATOR[1:] if k in gen}
        _check_options(name, builders[name], gen)
        seed = fixed.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"[generator] seed must be an integer >= 0, got {seed!r}")
        condition = fixed.get("condition", "none" if name == "chunkwise" else "task")
        if condition not in CONDITIONS:
            raise ConfigError(f"[generator] condition must be one of {', '.join(repr(c) for c in CONDITIONS)} (conditions read from the zoo), got {condition!r}")
        tasks = fixed.get("tasks")
        if tasks is not None and (isinstance(tasks, str) or not isinstance(tasks, Sequence) or not all(isinstance(t, str) for t in tasks)):
            raise ConfigError(f"[generator] tasks must be a list of task names, got {tasks!r}")
        fit = _table(data, "fit")
        bad = sorted(set(fit) - set(_fit_fields()))
        if bad:
            raise ConfigError(f"[fit] has no key {bad[0]!r}; valid keys: {', '.join(_fit_fields())}")
        if "checkpoint_dir" in fit:
            fit["checkpoint_dir"] = _path(fit["checkpoint_dir"], "checkpoint_dir", root)
        try:
            config = fit_defaults(name)(**fit)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[fit]: {e}") from e
        tracking = Tracking.from_table(_table(data, "tracking"), base=root) if "tracking" in data else Tracking()
        return cls(
            zoo=_path(data["zoo"], "zoo", root), out=_path(data["out"], "out", root), pipeline=name, condition=condition,
            seed=seed, tasks=tasks, options=gen, fit=config, tracking=tracking,
        )  # fmt: skip

    @classmethod
    def from_toml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
        """Read a TOML config; ``overrides`` (``"key=value"``, dotted keys into tables) win.

        Paths in the file resolve against its folder; paths given in ``overrides``
        resolve against the working directory.

        Raises:
            ConfigError: the file is missing or not TOML, a malformed override, or any
                error of `from_dict`.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"no config file {path}") from e
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path} is not a readable TOML file: {e}") from e
        base = path.resolve().parent
        for item in overrides:
            key, value = parse_override(item)
            if key in _PATHS and isinstance(value, str):
                value = str(Path(value).expanduser().resolve())
            elif key == "fit.checkpoint_dir" and isinstance(value, str):
                value = str(Path(value).expanduser().resolve())
            elif key == "tracking.uri" and isinstance(value, str):
                value = _sqlite_uri(value, Path.cwd())
            _assign(data, key, value)
        return cls.from_dict(data, base=base)


def parse_override(item: str) -> tuple[str, Any]:
    """``"fit.prior_steps=20"`` -> ``("fit.prior_steps", 20)``: the value is read as a TOML
    value when it is one (numbers, booleans, quoted strings, arrays), else as a bare string.

    Examples:
        >>> parse_override("fit.prior_steps=20"), parse_override("zoo=runs/zoo")
        (('fit.prior_steps', 20), ('zoo', 'runs/zoo'))
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE (e.g. fit.prior_steps=20), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    *tables, last = key.split(".")
    node = data
    for i, part in enumerate(tables):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(tables[: i + 1])} is not a table")
    node[last] = value


def _check_options(name: str, builder: Callable[..., Any], options: Mapping[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _GENERATOR]
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ConfigError(f"[generator] pipeline {name!r} has no option {bad[0]!r}; valid options: {', '.join(_GENERATOR[1:] + tuple(valid))}")


def fit_recipe(recipe: Recipe, *, progress: bool | None = None, device: str | None = None, tracker: Logger | None = None) -> Any:
    """Open the zoo, build the recipe's pipeline over it and fit it; nothing is saved.

    Args:
        recipe: What to fit.
        progress: Overrides ``recipe.fit.progress`` when given.
        device: Fit on this device (default: the CPU).
        tracker: Receives the losses (`paramgen.training.fit`); the caller opens and
            closes it (e.g. ``recipe.tracking.logger()``).

    Returns:
        The fitted `paramgen.Generator` (a `paramgen.chunkwise.ChunkwiseGenerator` for
        ``"chunkwise"``, see `fit_chunkwise`).

    Raises:
        FileNotFoundError: ``recipe.zoo`` is not a zoo folder.
        ConfigError: the pipeline refuses an option's value.
    """
    from paramgen.training import fit
    from paramgen.zoo import Zoo

    if recipe.pipeline == "chunkwise":
        return fit_chunkwise(recipe, progress=progress, device=device, tracker=tracker)
    zoo = Zoo.open(recipe.zoo)
    if len(zoo) == 0:
        raise ValueError(f"the zoo {recipe.zoo} holds no checkpoints")
    config = recipe.fit if progress is None else attrs.evolve(recipe.fit, progress=progress)
    tasks = list(recipe.tasks) if recipe.tasks is not None else None
    condition = None if recipe.condition == "none" else recipe.condition
    try:
        generator = pipelines()[recipe.pipeline](zoo, condition=condition, tasks=tasks, seed=recipe.seed, **recipe.options)
    except (TypeError, ValueError) as e:  # an option out of range or of the wrong type: the config's fault
        raise ConfigError(f"[generator]: {e}") from e
    if device is not None:
        generator.to(device)
    return fit(generator, zoo, _conditions(zoo, recipe.condition), config=config, tracker=tracker)


def chunkwise_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints of a folder for a chunk-wise fit: its ``*.safetensors`` files, else
    the ``model.safetensors`` of its Hugging Face model folders, else the
    ``adapter_model.safetensors`` of its PEFT adapter folders (sorted by path).

    Raises:
        FileNotFoundError: ``folder`` holds none of them.
    """
    root = Path(folder)
    for pattern in ("*.safetensors", "*/model.safetensors", "*/adapter_model.safetensors"):
        files = sorted(root.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"{root} is neither a zoo folder (runs/) nor a folder of checkpoints (*.safetensors files, or model folders with model.safetensors or adapter_model.safetensors)")


def fit_chunkwise(recipe: Recipe, *, progress: bool | None = None, device: str | None = None, tracker: Logger | None = None) -> Any:
    """Fit the recipe's chunk-wise generator (`paramgen.pipelines.chunkwise`); nothing is saved.

    ``recipe.zoo`` is a zoo folder (its checkpoints are chunked in memory; ``condition``
    ``"task"`` or ``"none"``) or a folder of safetensors checkpoints (read chunk by chunk
    from disk, never whole; ``condition = "none"``; a ``config.json`` or
    ``adapter_config.json`` beside each ``model.safetensors`` / ``adapter_model.safetensors``
    is recorded, so samples can be written as model or adapter folders).

    Args:
        recipe: What to fit (``pipeline = "chunkwise"``).
        progress: Overrides ``recipe.fit.progress`` when given.
        device: Fit on this device (default: the CPU).
        tracker: Receives the losses.

    Returns:
        The fitted `paramgen.chunkwise.ChunkwiseGenerator`.

    Raises:
        FileNotFoundError: ``recipe.zoo`` is neither a zoo folder nor a folder of checkpoints.
        ConfigError: A condition the source cannot give, or an option the pipeline refuses.
    """
    from paramgen.chunks import ChunkDataset, spec_from_safetensors
    from paramgen.zoo import Zoo

    if recipe.condition not in ("none", "task"):
        raise ConfigError(f"[generator] the chunkwise pipeline takes condition 'none' or 'task', got {recipe.condition!r}")
    files: list[Path] | None = None
    zoo: Any = None
    if (Path(recipe.zoo) / "runs").is_dir():
        zoo = Zoo.open(recipe.zoo)
        source: Any = zoo
    else:
        files = chunkwise_checkpoints(recipe.zoo)
        if recipe.condition != "none":
            raise ConfigError(f'[generator] condition = {recipe.condition!r}: a folder of checkpoints has no task names; use condition = "none" or a zoo folder')
        source = spec_from_safetensors(files[0])
    config = recipe.fit if progress is None else attrs.evolve(recipe.fit, progress=progress)
    tasks = list(recipe.tasks) if recipe.tasks is not None else None
    condition = None if recipe.condition == "none" else recipe.condition
    try:
        generator = pipelines()["chunkwise"](source, condition=condition, tasks=tasks, seed=recipe.seed, **recipe.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[generator]: {e}") from e
    data = ChunkDataset(generator.layout, files) if files is not None else ChunkDataset.from_state_dicts(generator.layout, [zoo.state_dict(c) for c in zoo])
    if device is not None:
        generator.to(device)
    return generator.fit(data, conditions=_conditions(zoo, recipe.condition) if zoo is not None else None, config=config, tracker=tracker)


def _conditions(zoo: Any, condition: str) -> list[Any] | None:
    """One raw condition per checkpoint of the zoo (``None``: unconditional)."""
    read = CONDITIONS[condition]
    return None if read is None else [read(c) for c in zoo]
