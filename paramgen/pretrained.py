"""How a `paramgen.Generator` is saved and loaded: ``config.json`` + ``weights.safetensors``.

``config.json`` holds the spec, the vectorizer, every component by registered name with
its config, the latent statistics, the pinned base's record when the generator has one
(``base``: its SHA-256 and tensors, `paramgen.base.PinnedBase.record`) and two SHA-256
digests (of the weights file and of the definition); ``weights.safetensors`` holds every component's tensors under its role.
Loading rebuilds components from `paramgen.registry` only: nothing a file names is
imported. Format 2 is written; formats 1 and 2 are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import load_file
from torch import nn

from paramgen.base import BaseMismatchError, PinnedBase
from paramgen.interfaces import LatentStats
from paramgen.io import file_sha256, read_json, save_safetensors, write_json
from paramgen.normalize import normalizer_from_config
from paramgen.registry import UnregisteredComponentError, registry
from paramgen.spec import ParamSpec, SpecMismatchError
from paramgen.vectorize import FamilyVectorizer, vectorizer_from_config

__all__ = ["FORMAT", "FORMAT_VERSION", "save_pretrained", "from_pretrained", "check_recorded_base"]

logger = logging.getLogger(__name__)

FORMAT = "paramgen.Generator"
# 2: components saved by registered name and latent statistics as one record.
# 1: components saved as "module:qualname" (loaded when the path is a registered class).
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_ROLES = ("tokenizer", "prior", "conditioner", "normalizer")


class _WeightsMismatch(Exception):
    """Saved weights that do not fit the rebuilt component (internal, reported as ValueError)."""


def _check_definition(config: Mapping[str, Any], config_path: Path, names: Mapping[str, str], stats: LatentStats) -> None:
    """Refuse a ``config.json`` whose definition no longer matches its ``config_sha256``."""
    digest = config.get("config_sha256")
    if digest is None:
        logger.warning("%s records no config digest (saved by an older paramgen): edits to it cannot be detected", config_path)
        return
    if not isinstance(digest, str) or digest != _definition_sha256(config, names, stats):
        raise ValueError(
            f"{config_path} was edited after saving: its spec, vectorizer, components or latent statistics no longer match "
            "the digest recorded when it was saved (config_sha256). The weights belong to the saved configuration: "
            "restore it, or build the generator you want and fit it"
        )


def _need(config: Mapping[str, Any], key: str, where: str) -> Any:
    """``config[key]``, or a `ValueError` naming the key and the file."""
    if not isinstance(config, Mapping) or key not in config:
        raise ValueError(f"{where} lacks the key {key!r}")
    return config[key]


def _definition_sha256(config: Mapping[str, Any], names: Mapping[str, str], stats: LatentStats) -> str:
    """SHA-256 of the canonical JSON of what defines a saved generator: its spec, spec id,
    vectorizer, components (registered names and configs) and latent statistics.

    It is computed from a parsed ``config.json`` after the component names are resolved and
    the latent statistics read, so it does not depend on the file's layout: a format-1
    folder (class paths, separate latent mean and scale) of the same generator has the
    same digest, and so does a re-indented file.
    """
    definition = {
        "spec": config.get("spec"),
        "spec_id": config.get("spec_id"),
        "vectorizer": config.get("vectorizer"),
        "components": {
            role: ({} if role == "normalizer" else {"name": names[role]}) | {"config": entry["config"]}
            for role, entry in config["components"].items()
        },
        "latent_stats": attrs.asdict(stats),
    }
    if config.get("base") is not None:  # only then: folders saved without a base keep their digest
        definition["base"] = config["base"]
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Tensors a weights-mismatch error lists before it only counts the rest.
_SHOWN_TENSORS = 3


def _weights_mismatch(part: nn.Module, saved: Mapping[str, torch.Tensor]) -> str | None:
    """A short account of how ``saved`` tensors do not fit ``part`` (``None`` if they fit):
    the first differing tensors with their saved and built shapes, and a count, instead of
    ``load_state_dict``'s dump of every one."""
    built = {k: tuple(v.shape) for k, v in part.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in saved.items()}
    names = [*built, *(k for k in have if k not in built)]  # the module's order, then extra saved tensors
    diffs = [f"{k[:100]} saved {have.get(k, 'missing')} vs built {built.get(k, 'absent')}".replace("'", "") for k in names if have.get(k) != built.get(k)]
    if not diffs:
        return None
    more = f"; and {len(diffs) - _SHOWN_TENSORS} more" if len(diffs) > _SHOWN_TENSORS else ""
    return f"{len(diffs)} of {len(names)} tensors differ ({'; '.join(diffs[:_SHOWN_TENSORS])}{more})"


def save_pretrained(gen: Any, path: str | os.PathLike, *, finish: Callable[[dict[str, Any], Path], None] | None = None) -> Path:
    """Write ``gen`` as ``config.json`` + ``weights.safetensors`` (see `paramgen.Generator.save_pretrained`).

    ``finish(config, path)`` may add records (and write their own files) before
    ``config.json`` is written, so the config is written once, last, and complete.
    """
    path = Path(path)
    config: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": None if gen.family else gen.spec.to_dict(),
        "spec_id": None if gen.family else gen.spec.fingerprint,
        "vectorizer": gen.layout.config(),
        "latent_stats": attrs.asdict(gen.latent_stats),
        "components": {},
    }
    if gen.base is not None:
        config["base"] = gen.base.record()
    tensors: dict[str, torch.Tensor] = {}
    for role, part in gen.components.items():
        entry: dict[str, Any] = {"config": part.config()}
        if role != "normalizer":  # normalizers are rebuilt from their own "type" entry
            entry = {"name": registry.name_of(part), **entry}
        config["components"][role] = entry
        for key, value in part.state_dict().items():
            tensors[f"{role}.{key}"] = value.detach().cpu()
    # What loading rebuilds, as the file will hold it (JSON turns tuples into lists): a
    # config edited after saving (timesteps, widths) is refused instead of silently
    # loading into another generator.
    written = json.loads(json.dumps(config, allow_nan=False))
    names = {role: entry["name"] for role, entry in written["components"].items() if role != "normalizer"}
    config["config_sha256"] = _definition_sha256(written, names, gen.latent_stats)
    save_safetensors(path / "weights.safetensors", tensors, metadata={"format": FORMAT})
    # safetensors has no checksum: the digest lets loading refuse corrupted bytes.
    config["weights_sha256"] = file_sha256(path / "weights.safetensors")
    if finish is not None:
        finish(config, path)
    write_json(path / "config.json", config)
    return path


def from_pretrained(cls: Any, path: str | os.PathLike, *, spec: ParamSpec | None = None, device: torch.device | str | None = None, base: Any = None) -> Any:
    """Rebuild a generator of class ``cls`` saved by `save_pretrained` (see `paramgen.Generator.from_pretrained`)."""
    path = Path(path)
    config_path, weights_path = path / "config.json", path / "weights.safetensors"
    if not config_path.exists():
        raise FileNotFoundError(f"{path} holds no saved generator (no config.json)")
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a paramgen generator (format {config.get('format') if isinstance(config, dict) else None!r})")
    version = config.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise ValueError(f"{config_path} has format version {version!r}; this paramgen reads versions {_READABLE_VERSIONS}")
    for key in ("vectorizer", "components", "spec"):
        _need(config, key, str(config_path))
    if not isinstance(config["components"], dict) or not isinstance(config["vectorizer"], dict):
        raise ValueError(f"{config_path}: 'components' and 'vectorizer' must be JSON objects")
    if not weights_path.exists():
        raise FileNotFoundError(f"{path} has a config.json but no weights.safetensors")
    digest = config.get("weights_sha256")
    if digest is None:
        logger.warning("%s records no weights digest (saved by an older paramgen): its weights cannot be checked for corruption", config_path)
    elif not isinstance(digest, str) or file_sha256(weights_path) != digest:
        raise ValueError(
            f"{weights_path} does not match the SHA-256 digest recorded in config.json (weights_sha256): "
            "the file is corrupted or was replaced; save the generator again"
        )
    try:
        return _build(cls, path, config, version, spec, device, base)
    except UnregisteredComponentError:  # a KeyError that already names the file
        raise
    except KeyError as e:
        # Nested configs (spec, vectorizer, components) index their keys directly.
        raise ValueError(f"{config_path} lacks the key {e.args[0]!r} (a malformed or truncated config)") from e


def check_recorded_base(config: Mapping[str, Any], base: Any, where: Path) -> PinnedBase | None:
    """The pinned base a saved generator needs: ``base`` checked against ``config["base"]``.

    Raises:
        paramgen.base.BaseMismatchError: A base is recorded and ``base`` is missing or
            another one; or ``base`` is given and none is recorded.
    """
    record = config.get("base")
    if record is None:
        if base is not None:
            raise BaseMismatchError(f"{where} records no base: the generator was fitted on weights, not on deltas; drop base=")
        return None
    if base is None:
        sha = record.get("sha256") if isinstance(record, Mapping) else None
        raise BaseMismatchError(f"{where} records a pinned base (sha256 {sha}): the generator samples deltas over it; pass base= (that checkpoint)")
    pinned = PinnedBase.of(base)
    pinned.check(record, what=str(where))
    return pinned


def _build(cls: Any, path: Path, config: dict[str, Any], version: int, spec: ParamSpec | None, device: torch.device | str | None, base: Any = None) -> Any:
    config_path = path / "config.json"
    family = config["vectorizer"].get("type") == "family"
    try:
        saved_spec = None if family else ParamSpec.from_dict(config["spec"])
        vectorizer: Any = FamilyVectorizer.from_config(config["vectorizer"]) if saved_spec is None else vectorizer_from_config(config["vectorizer"], saved_spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: invalid 'spec' or 'vectorizer' entry: {e}") from e
    if spec is not None and family:
        if not any(spec.fingerprint == s.fingerprint for s in vectorizer.specs.values()):
            raise SpecMismatchError(f"the family generator in {path} has no member of the expected architecture (it has {sorted(vectorizer.specs)})")
    elif spec is not None and saved_spec is not None:
        try:
            spec.check_compatible(saved_spec)
        except SpecMismatchError as e:
            raise SpecMismatchError(f"the generator in {path} was saved for another architecture: {e}") from e
    # Resolve every component name before reading any weights or building anything.
    names: dict[str, str] = {}
    for role, entry in config["components"].items():
        if role not in _ROLES:
            raise ValueError(f"{config_path}: unknown component role {role!r}; expected some of {_ROLES}")
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"{config_path}: the {role} entry must be an object with a 'config' object")
        if role == "normalizer":
            continue
        try:
            names[role] = entry["name"] if version >= 2 else registry.name_for_path(entry["class"])
        except UnregisteredComponentError as e:  # before KeyError, its base class
            raise UnregisteredComponentError(f"{config_path}, {role}: {e}") from None
        except KeyError as e:
            raise ValueError(f"{config_path}: the {role} entry names no component ({'name' if version >= 2 else 'class'} missing)") from e
        try:
            registry.get(names[role])
        except UnregisteredComponentError as e:
            raise UnregisteredComponentError(f"{config_path}, {role}: {e}") from None
    for role in ("tokenizer", "prior"):
        if role not in config["components"]:
            raise ValueError(f"{config_path}: 'components' lacks the {role!r} entry")
    keys = ("latent_stats",) if version >= 2 else ("latent_mean", "latent_scale")
    if missing := [k for k in keys if k not in config]:
        raise ValueError(f"{config_path}: invalid latent statistics: it lacks the key {missing[0]!r}")
    stats: Any = config["latent_stats"] if version >= 2 else {"mean": config["latent_mean"], "scale": config["latent_scale"]}
    try:
        latent_stats = LatentStats(**stats)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: invalid latent statistics {stats!r} ({e})") from e
    state = load_file(str(path / "weights.safetensors"))
    # Every group of tensors needs its entry: e.g. normalizer statistics without a
    # normalizer entry would load a generator that samples at the wrong scale.
    orphans = sorted({k.partition(".")[0] for k in state} - set(config["components"]))
    if orphans:
        raise ValueError(
            f"{path}/weights.safetensors holds {', '.join(orphans)} tensors but {config_path} has no entry for "
            f"{'it' if len(orphans) == 1 else 'them'} under 'components'"
        )
    _check_definition(config, config_path, names, latent_stats)
    pinned = check_recorded_base(config, base, config_path)  # after the digest: an edited record is named as an edit
    parts: dict[str, Any] = {}
    for role, entry in config["components"].items():
        sub = {k.removeprefix(f"{role}."): v for k, v in state.items() if k.startswith(f"{role}.")}
        try:
            if role == "normalizer":
                if not sub:
                    raise ValueError("its statistics are missing from weights.safetensors")
                parts[role] = normalizer_from_config(entry["config"], sub, spec=saved_spec)
                continue
            part = registry.build(names[role], entry["config"])
            if isinstance(part, nn.Module):
                if (mismatch := _weights_mismatch(part, sub)) is not None:
                    raise _WeightsMismatch(mismatch)
                part.load_state_dict(sub, strict=True)
                part.eval()
            else:
                part.load_state_dict(sub)
        except KeyError as e:
            raise ValueError(f"{config_path}: the {role} config lacks the key {e.args[0]!r}") from e
        except _WeightsMismatch as e:
            raise ValueError(
                f"{path}: the {role}'s saved weights do not fit the {role} its entry in config.json builds: {e}. "
                "The config was edited after saving, or the weights belong to another generator"
            ) from None
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: the {role} cannot be rebuilt from its entry in config.json and its weights: {e}") from e
        parts[role] = part
    gen = cls(vectorizer=vectorizer, **parts) if pinned is None else cls(vectorizer=vectorizer, base=pinned, **parts)
    gen.latent_stats = latent_stats
    gen.fitted = True
    if device is not None:
        gen.to(device)
    return gen
