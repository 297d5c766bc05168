"""Writing sampled weights: safetensors files, PyTorch state-dict files or PEFT adapter folders.

Examples:
    >>> slug("digits/0-2-4-6-7")
    'digits_0-2-4-6-7'
    >>> output_paths(["a", "b"], 2, "out", "safetensors")
    ['out/a-0.safetensors', 'out/a-1.safetensors', 'out/b-0.safetensors', 'out/b-1.safetensors']
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from paramgen.io import atomic_path, save_safetensors, write_json
from paramgen.spec import ParamSpec

__all__ = ["FORMATS", "SAMPLER_ONLY", "slug", "output_paths", "write_state_dict", "lora_setup", "sampler_options", "SampleError"]

Format = Literal["safetensors", "pt", "peft"]
FORMATS: tuple[Format, ...] = ("safetensors", "pt", "peft")
_SUFFIX: dict[str, Format] = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".bin": "pt"}
_LORA = re.compile(r"^base_model\.model\.bert\.encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.lora_A\.weight$")


class SampleError(ValueError):
    """Sampling options or an output path that do not fit the generator."""


def slug(cond: Any, limit: int = 60) -> str:
    """A file-name-safe form of a condition (characters outside ``[A-Za-z0-9._-]`` become ``_``)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(cond)).strip("._") or "sample"
    return text[:limit]


def format_of(out: str | os.PathLike, fmt: str | None, *, lora: bool) -> tuple[Format, bool]:
    """The output format and whether ``out`` names a single file.

    A path ending in ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` is one file of that
    format; anything else is a folder. Without ``fmt``, a LoRA generator writes PEFT
    adapter folders and any other writes safetensors files.

    Raises:
        SampleError: ``fmt`` contradicts the file suffix, or asks for PEFT from a
            generator that does not make LoRA adapters.
    """
    suffix = _SUFFIX.get(Path(out).suffix.lower())
    if fmt is not None and fmt not in FORMATS:
        raise SampleError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if suffix is not None:
        if fmt is not None and fmt != suffix:
            raise SampleError(f"--out {out} is a .{Path(out).suffix.lstrip('.')} file but --format is {fmt!r}")
        return suffix, True
    chosen = fmt or ("peft" if lora else "safetensors")
    if chosen == "peft" and not lora:
        raise SampleError("--format peft needs a generator of LoRA adapters (its tensors named as in adapter_model.safetensors)")
    return chosen, False


def output_paths(conds: Sequence[Any], n: int, out: str | os.PathLike, fmt: Format) -> list[str]:
    """Where each of ``len(conds) * n`` samples goes inside the folder ``out``: ``<cond>-<i>``
    (with the format's suffix; a PEFT adapter is a folder).

    Raises:
        SampleError: two conditions give the same file name.
    """
    names = [slug(c) for c in conds] if conds else ["sample"]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SampleError(f"conditions {twice} give the same file name; pass distinct conditions")
    ext = {"safetensors": ".safetensors", "pt": ".pt", "peft": ""}[fmt]
    return [str(Path(out) / f"{name}-{i}{ext}") for name in names for i in range(n)]


def write_state_dict(path: str | os.PathLike, state: Mapping[str, torch.Tensor], fmt: Format, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write one state dict atomically as safetensors or as a ``torch.save`` file (read it
    back with ``torch.load(path, weights_only=True)``)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        save_safetensors(path, tensors, metadata=metadata)
    elif fmt == "pt":
        with atomic_path(path) as tmp:
            torch.save({k: v.clone() for k, v in tensors.items()}, tmp)
    else:
        raise SampleError(f"write_state_dict writes safetensors or pt, not {fmt!r}")
    return path


def lora_setup(spec: ParamSpec, *, alpha: float | None = None) -> Any:
    """The `paramgen.lora.LoRASetup` whose layout ``spec`` is, or ``None`` when ``spec`` is
    not a MiniLM LoRA adapter (rank, layers, projections and head width are read from the
    tensor names and shapes; ``alpha``, which the weights do not show, defaults to the
    setup's)."""
    found = [(_LORA.match(t.name), t) for t in spec.tensors]
    hits = [(int(m.group(1)), m.group(2), t) for m, t in found if m]
    if not hits:
        return None
    from paramgen.lora import LoRASetup

    head = next((t for t in spec.tensors if t.name == "base_model.model.classifier.weight"), None)
    if head is None:
        return None
    rank, hidden = hits[0][2].shape
    setup = LoRASetup(
        rank=rank, layers=sorted({h[0] for h in hits}), target_modules=tuple(m for m in ("query", "key", "value") if any(h[1] == m for h in hits)),
        max_labels=head.shape[0], hidden_size=hidden,
    )  # fmt: skip
    if alpha is not None:
        setup = attrs.evolve(setup, alpha=alpha)
    # The same tensors in any order (a generator fitted on a zoo imported before layouts were canonical).
    return setup if setup.spec().canonical().fingerprint == spec.canonical().fingerprint else None


def write_adapter(folder: str | os.PathLike, state: Mapping[str, torch.Tensor], setup: Any, num_labels: int | None, *, base_model: str | None = None) -> Path:
    """Write one PEFT adapter folder (`paramgen.lora.save_adapter`); ``base_model`` is
    recorded as its base (default: the setup's, MiniLM's name)."""
    from paramgen.lora import save_adapter

    labels = setup.max_labels if num_labels is None else num_labels
    if not 2 <= labels <= setup.max_labels:
        raise SampleError(f"--num-labels must lie in 2..{setup.max_labels} (the generated head's rows), got {labels}")
    return Path(save_adapter(folder, state, setup, num_labels=labels, base_model_path=base_model))


#: Sampling options that act with one sampler of a diffusion prior only: with the other
#: they would change nothing, so they are refused rather than ignored.
SAMPLER_ONLY = {"steps": "ddim", "eta": "ddim"}


def sampler_options(prior: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the options that were given and check that the prior takes them (its
    ``SAMPLE_OPTIONS``, or else the keywords of its ``sample``) and that they act.

    The sampler an option needs (`SAMPLER_ONLY`) is the one given, else the prior's own
    default (its ``sampler`` attribute), so the check follows the library's defaults.

    Raises:
        SampleError: an option the prior's ``sample`` does not take (naming the ones it
            does), or one the chosen sampler would ignore (``--steps`` with DDPM).

    Examples:
        >>> from paramgen.priors import DiffusionPrior
        >>> prior = DiffusionPrior(shape=(1, 4), timesteps=10, base_channels=8, sampler="ddpm")
        >>> sampler_options(prior, {"sampler": "ddim", "steps": 5, "eta": None})
        {'sampler': 'ddim', 'steps': 5}
        >>> sampler_options(prior, {"steps": 5})
        Traceback (most recent call last):
        ...
        paramgen.cli.sample.SampleError: --steps acts with the ddim sampler only, but DiffusionPrior samples with ddpm by default; add --sampler ddim, or drop --steps
    """
    given = {k: v for k, v in options.items() if v is not None}
    valid = getattr(prior, "SAMPLE_OPTIONS", None)
    if valid is None:  # a prior without the declaration: read its signature
        params = inspect.signature(prior.sample).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return given
        valid = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "generator"]
    bad = sorted(set(given) - set(valid))
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in valid) or "none"
        raise SampleError(f"{type(prior).__name__} does not take --{bad[0].replace('_', '-')}; its sampling options: {flags}")
    sampler = given.get("sampler", getattr(prior, "sampler", None))
    for option, needs in SAMPLER_ONLY.items():
        if option in given and sampler is not None and sampler != needs:
            chosen = f"--sampler is {sampler}" if "sampler" in given else f"{type(prior).__name__} samples with {sampler} by default"
            raise SampleError(f"--{option} acts with the {needs} sampler only, but {chosen}; add --sampler {needs}, or drop --{option}")
    return given


def write_manifest(folder: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """``samples.json`` beside the samples of a folder: file, condition and sample index of each."""
    write_json(Path(folder) / "samples.json", list(rows))
