"""`ParamSpec`: every tensor of a state dict, and how the weights map to a flat vector."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from paramgen._convert import str_tuple
from paramgen.spec.tensor import (
    Kind,
    NonFiniteWeightsError,
    Role,
    SpecMismatchError,
    TensorSpec,
    _canonical_key,
    _dtype_name,
    _selected,
    _storage_key,
    _tensor_tuple,
)

__all__ = ["ParamSpec"]


def _laid_out(entries: Sequence[TensorSpec]) -> ParamSpec:
    """A spec of ``entries`` in this order: layer indices and vector offsets recomputed
    (a tied entry takes its target's role and offset)."""
    layers: dict[str, int] = {}
    out: list[TensorSpec] = []
    offset = 0
    for t in entries:
        layer = layers.setdefault(t.module, len(layers))
        if t.tied_to is not None:
            target = next(e for e in out if e.name == t.tied_to)
            out.append(attrs.evolve(t, layer=layer, role=target.role, offset=target.offset))
            continue
        out.append(attrs.evolve(t, layer=layer, offset=offset if t.role == "vector" else -1))
        if t.role == "vector":
            offset += t.numel
    return ParamSpec(tensors=tuple(out), layers=tuple(layers))


@attrs.frozen
class ParamSpec:
    """A model's tensors and how they map to a flat weight vector.

    Build one with `from_module` or `from_state_dict`; it is immutable,
    hashable and JSON-serializable (`to_dict` / `from_dict`).

    Attributes:
        tensors: Every state-dict entry, in state-dict order.
        layers: Module names in order of first appearance; ``TensorSpec.layer`` indexes it.
    """

    tensors: tuple[TensorSpec, ...] = attrs.field(converter=_tensor_tuple)
    layers: tuple[str, ...] = attrs.field(converter=str_tuple)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> ParamSpec:
        """Describe ``module.state_dict()``; parameters and buffers are told apart.

        Args:
            module: Any ``nn.Module``.
            include: Glob patterns (``fnmatch``, ``*`` crosses dots) of tensors to put
                in the vector, e.g. ``["*lora_*"]`` or ``["layer4.*.bn*"]``. ``None``
                selects everything. A tied tensor (e.g. GPT-2's ``lm_head.weight``, which
                is ``transformer.wte.weight``) is selected by either of its names.
            exclude: Glob patterns removed from the selection (a tied tensor is
                excluded by either of its names).
        """
        params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        state = module.state_dict(keep_vars=True)
        kinds: dict[str, Kind] = {name: ("parameter" if name in params else "buffer") for name in state}
        return cls.from_state_dict(state, include=include, exclude=exclude, kinds=kinds)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        kinds: Mapping[str, Kind] | None = None,
    ) -> ParamSpec:
        """Describe a state dict. Tensors sharing storage are recorded as tied.

        Without ``kinds``, floating tensors are called parameters and the rest buffers.
        """
        if not state_dict:
            raise ValueError("expected a non-empty state dict, got an empty one")
        include = None if include is None else list(include)
        exclude = list(exclude)
        for name, t in state_dict.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, expected a tensor")
        # Names of each storage: a tied tensor is one tensor, selected by any of its names.
        aliases: dict[tuple, list[str]] = {}
        for name, t in state_dict.items():
            if (k := _storage_key(t)) is not None:
                aliases.setdefault(k, []).append(name)
        seen: dict[tuple, str] = {}
        layer_of: dict[str, int] = {}
        entries: list[TensorSpec] = []
        offset = 0
        for name, t in state_dict.items():
            dtype = _dtype_name(t.dtype)
            module_name = name.rpartition(".")[0]
            layer = layer_of.setdefault(module_name, len(layer_of))
            kind = kinds[name] if kinds is not None else ("parameter" if t.is_floating_point() else "buffer")
            key = _storage_key(t)
            if key is not None and key in seen:
                target = next(e for e in entries if e.name == seen[key])
                entries.append(attrs.evolve(target, name=name, kind=kind, layer=layer, tied_to=target.name, default=None))
                continue
            if key is not None:
                seen[key] = name
            selected = _selected(aliases[key] if key is not None else [name], include, exclude)
            if not selected:
                role: Role = "frozen"
            elif t.is_floating_point():
                role = "vector"
            else:
                role = "extra"
            default = tuple(t.detach().reshape(-1).tolist()) if role == "extra" else None
            entries.append(
                TensorSpec(
                    name=name,
                    shape=tuple(t.shape),
                    dtype=dtype,
                    kind=kind,
                    role=role,
                    layer=layer,
                    offset=offset if role == "vector" else -1,
                    default=default,
                )
            )
            if role == "vector":
                offset += t.numel()
        if offset == 0:
            raise ValueError(
                f"no floating tensor matches include={include} exclude={exclude}; "
                f"state dict keys start with {list(state_dict)[:5]}"
            )
        return cls(tensors=tuple(entries), layers=tuple(layer_of))

    # ----------------------------------------------------------------- views
    @property
    def vector_tensors(self) -> tuple[TensorSpec, ...]:
        """Tensors stored in the flat vector (tied copies excluded), in vector order."""
        return tuple(t for t in self.tensors if t.role == "vector" and t.tied_to is None)

    @property
    def extra_tensors(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role == "extra" and t.tied_to is None)

    @property
    def numel(self) -> int:
        """Length ``D`` of the flat weight vector."""
        return sum(t.numel for t in self.vector_tensors)

    @property
    def vector_dtype(self) -> torch.dtype:
        """Dtype of flat vectors: float32 holds fp32/fp16/bf16 exactly; float64 if any tensor is."""
        if any(t.dtype == "float64" for t in self.vector_tensors):
            return torch.float64
        return torch.float32

    def __getitem__(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{name!r} is not in this spec; it has {len(self.tensors)} tensors, e.g. {self.names[:5]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def segment_ids(self) -> torch.Tensor:
        """``(D,)`` index into `vector_tensors` of each vector entry."""
        sizes = torch.tensor([t.numel for t in self.vector_tensors])
        return torch.repeat_interleave(torch.arange(len(sizes)), sizes)

    def layer_ids(self) -> torch.Tensor:
        """``(D,)`` layer index of each vector entry."""
        layers = torch.tensor([t.layer for t in self.vector_tensors])
        return layers[self.segment_ids()]

    def select(self, *, include: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> ParamSpec:
        """A spec of the same model with a narrower vector (other tensors become frozen).

        A tied tensor is selected when any of its names is included and none is excluded.
        """
        entries: list[TensorSpec] = []
        offset = 0
        roles: dict[str, Role] = {}
        aliases: dict[str, list[str]] = {t.name: [t.name] for t in self.tensors if t.tied_to is None}
        for t in self.tensors:
            if t.tied_to is not None:
                aliases[t.tied_to].append(t.name)
        for t in self.tensors:
            if t.tied_to is not None:
                entries.append(attrs.evolve(t, role=roles[t.tied_to], offset=next(e.offset for e in entries if e.name == t.tied_to)))
                continue
            keep = t.role != "frozen" and _selected(aliases[t.name], include, exclude)
            role: Role = t.role if keep else "frozen"
            roles[t.name] = role
            default = t.default if role == "extra" else None
            entries.append(attrs.evolve(t, role=role, offset=offset if role == "vector" else -1, default=default))
            if role == "vector":
                offset += t.numel
        if offset == 0:
            raise ValueError(f"no vector tensor matches include={include} exclude={exclude}")
        return ParamSpec(tensors=tuple(entries), layers=self.layers)

    def canonical(self) -> ParamSpec:
        """The same tensors in canonical order, for sources whose order means nothing.

        A safetensors or PEFT adapter file stores tensors sorted by name
        (``classifier.bias`` before ``classifier.weight``), a module registers them in its
        own order; the same architecture read from both must lay out the same vector. The
        canonical order sorts modules by name, numbers as numbers (``layer.2`` before
        ``layer.10``), and puts each module's own tensors in PyTorch's order (``weight``,
        ``bias``, BatchNorm's ``running_mean``, ``running_var``, ``num_batches_tracked``,
        then any other by name). Tied copies follow the tensor they share. Two specs hold
        the same tensors exactly when their canonical forms have the same `fingerprint`.

        Examples:
            >>> import torch
            >>> a = ParamSpec.from_state_dict({"fc.bias": torch.zeros(2), "fc.weight": torch.zeros(2, 3)})
            >>> b = ParamSpec.from_state_dict({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)})
            >>> a.fingerprint == b.fingerprint, a.canonical().fingerprint == b.canonical().fingerprint
            (False, True)
            >>> a.canonical().names
            ('fc.weight', 'fc.bias')
        """
        stored = sorted((t for t in self.tensors if t.tied_to is None), key=lambda t: _canonical_key(t.name))
        ties: dict[str, list[TensorSpec]] = {}
        for t in self.tensors:
            if t.tied_to is not None:
                ties.setdefault(t.tied_to, []).append(t)
        ordered = [e for t in stored for e in (t, *sorted(ties.get(t.name, ()), key=lambda x: _canonical_key(x.name)))]
        return _laid_out(ordered)

    def with_shapes(self, shapes: Mapping[str, Sequence[int]]) -> ParamSpec:
        """The same layout with some tensors resized (offsets recomputed), e.g. a
        classification head padded to more rows.

        Raises:
            KeyError: A name that is not in this spec.

        Examples:
            >>> import torch
            >>> spec = ParamSpec.from_state_dict({"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)})
            >>> spec.with_shapes({"head.weight": (3, 4), "head.bias": (3,)}).numel
            15
        """
        unknown = sorted(set(shapes) - set(self.names))
        if unknown:
            raise KeyError(f"with_shapes: {unknown[:5]} are not in this spec; it has {list(self.names[:5])}...")
        return _laid_out([attrs.evolve(t, shape=shapes[t.name]) if t.name in shapes else t for t in self.tensors])

    # ----------------------------------------------------------------- checks
    @property
    def fingerprint(self) -> str:
        """Short hash of names, shapes, dtypes and roles, in order: equal layouts, equal fingerprints.

        The order is part of it, since it fixes where each tensor sits in the flat vector.
        Where order means nothing (tensors read from a file), compare
        ``canonical().fingerprint`` instead, or lay out the spec canonically (`canonical`).
        """
        payload = json.dumps([[t.name, list(t.shape), t.dtype, t.role, t.tied_to] for t in self.tensors])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def check_compatible(self, other: ParamSpec) -> None:
        """Raise `SpecMismatchError` naming the first difference from ``other``."""
        if self.fingerprint == other.fingerprint:
            return
        mine, theirs = {t.name: t for t in self.tensors}, {t.name: t for t in other.tensors}
        missing = [n for n in mine if n not in theirs]
        extra = [n for n in theirs if n not in mine]
        if missing or extra:
            raise SpecMismatchError(
                f"spec is for another architecture: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, a in mine.items():
            b = theirs[name]
            if (a.shape, a.dtype, a.role, a.tied_to) != (b.shape, b.dtype, b.role, b.tied_to):
                raise SpecMismatchError(
                    f"spec is for another architecture: {name!r} expected shape {a.shape} {a.dtype} "
                    f"({a.role}), got shape {b.shape} {b.dtype} ({b.role})"
                )
        at = next(i for i, (a, b) in enumerate(zip(self.tensors, other.tensors, strict=True)) if a.name != b.name)
        raise SpecMismatchError(
            f"spec holds the same tensors in another order (position {at}: {self.tensors[at].name!r} here, "
            f"{other.tensors[at].name!r} there), so their flat vectors differ; lay both out with ParamSpec.canonical()"
        )

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, which: int | None = None) -> None:
        """Raise `SpecMismatchError` naming the first key or tensor of ``state_dict`` that
        does not fit this spec (missing or unexpected names, shapes, non-float weights).

        Args:
            state_dict: One model's tensors (frozen and tied entries may be absent).
            which: Index of the model in its zoo, named in the message.

        Examples:
            >>> import torch
            >>> spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
            >>> spec.check_state_dict({"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, which=7)
            Traceback (most recent call last):
            ...
            paramgen.spec.SpecMismatchError: tensor 'weight' (model 7): expected shape (2, 3), got (2, 4) (is it from another architecture?)
        """
        where = "" if which is None else f" (model {which})"
        needed = {t.name for t in self.tensors if t.role != "frozen" and t.tied_to is None}
        missing = needed.difference(state_dict)
        known = set(self.names)
        unexpected = [k for k in state_dict if k not in known]
        if missing or unexpected:
            raise SpecMismatchError(
                f"state dict does not match the spec{where}: missing {sorted(missing)[:5]}, "
                f"unexpected {unexpected[:5]} (is it from another architecture?)"
            )
        for t in self.tensors:
            if t.role == "frozen" or t.tied_to is not None:
                continue
            x = state_dict[t.name]
            if not isinstance(x, torch.Tensor):
                raise SpecMismatchError(f"state dict entry {t.name!r}{where} is a {type(x).__name__}, expected a tensor of shape {t.shape}")
            if tuple(x.shape) != t.shape:
                raise SpecMismatchError(f"tensor {t.name!r}{where}: expected shape {t.shape}, got {tuple(x.shape)} (is it from another architecture?)")
            if t.role == "vector" and not x.is_floating_point():
                raise SpecMismatchError(f"tensor {t.name!r}{where}: expected a floating tensor, got {x.dtype}")

    # ----------------------------------------------------------------- flatten
    def flatten(
        self, state_dicts: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor], *, check_finite: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Turn state dicts into flat vectors.

        Args:
            state_dicts: One state dict or a sequence of them (a zoo of one architecture).
            check_finite: Raise `NonFiniteWeightsError` on NaN/Inf.

        Returns:
            ``(values, extras)``: ``values`` is ``(B, D)`` in `vector_dtype`;
            ``extras`` maps each extra tensor's name to a ``(B, *shape)`` tensor.
        """
        if isinstance(state_dicts, Mapping):
            state_dicts = [state_dicts]
        if len(state_dicts) == 0:
            raise ValueError("expected at least one state dict, got none")
        for i, sd in enumerate(state_dicts):
            self.check_state_dict(sd, which=i if len(state_dicts) > 1 else None)
        stacked = {
            t.name: torch.stack([sd[t.name].detach() for sd in state_dicts])
            for t in self.tensors
            if t.role in ("vector", "extra") and t.tied_to is None
        }
        return self.flatten_stacked(stacked, check_finite=check_finite)

    def flatten_stacked(
        self, stacked: Mapping[str, torch.Tensor], *, check_finite: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like `flatten` for tensors already stacked over models: ``name -> (B, *shape)``.

        This is the fast path for whole zoos: one copy per tensor, no loop over models.
        """
        vec = self.vector_tensors
        if vec[0].name not in stacked:
            raise SpecMismatchError(f"stacked tensors lack {vec[0].name!r}")
        batch = stacked[vec[0].name].shape[0]
        dtype = self.vector_dtype
        out = torch.empty(batch, self.numel, dtype=dtype)  # (B, D)
        for t in vec:
            if t.name not in stacked:
                raise SpecMismatchError(f"missing tensor {t.name!r} (is the checkpoint from another architecture?)")
            x = stacked[t.name]
            if tuple(x.shape) != (batch, *t.shape):
                raise SpecMismatchError(
                    f"tensor {t.name!r}: expected shape {(batch, *t.shape)} (models first), got {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise SpecMismatchError(f"tensor {t.name!r}: expected a floating tensor, got {x.dtype}")
            out[:, t.offset : t.offset + t.numel] = x.reshape(batch, t.numel)
        if check_finite and not torch.isfinite(out).all():
            bad = [t.name for t in vec if not torch.isfinite(out[:, t.offset : t.offset + t.numel]).all()]
            raise NonFiniteWeightsError(f"weights contain NaN or Inf in {bad[:5]}")
        extras = {}
        for t in self.extra_tensors:
            if t.name not in stacked:
                raise SpecMismatchError(f"missing tensor {t.name!r}")
            extras[t.name] = stacked[t.name].detach().clone()
        return out, extras

    # ----------------------------------------------------------------- unflatten
    def unflatten_stacked(
        self,
        values: torch.Tensor,
        *,
        extras: Mapping[str, torch.Tensor] | None = None,
        check_finite: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Inverse of `flatten_stacked`: ``(B, D)`` to ``name -> (B, *shape)``.

        Only stored tensors are returned (no tied copies, no frozen tensors).
        """
        values = self._check_values(values, check_finite=check_finite)
        batch = values.shape[0]
        out: dict[str, torch.Tensor] = {}
        for t in self.vector_tensors:
            x = values[:, t.offset : t.offset + t.numel].to(t.torch_dtype, copy=True)
            out[t.name] = x.reshape(batch, *t.shape)
        out.update(self._extras(extras, batch))
        return out

    def _check_values(self, values: torch.Tensor, *, check_finite: bool) -> torch.Tensor:
        """``(B, D)`` floating (finite) vectors; a ``(D,)`` vector becomes ``(1, D)``."""
        if values.ndim == 1:
            values = values.unsqueeze(0)
        if values.ndim != 2 or values.shape[1] != self.numel:
            raise SpecMismatchError(
                f"expected weight vectors of shape (B, {self.numel}), got {tuple(values.shape)}"
            )
        if not values.is_floating_point():
            raise TypeError(f"expected floating weight vectors, got {values.dtype}")
        if check_finite and not torch.isfinite(values).all():
            raise NonFiniteWeightsError("weight vectors contain NaN or Inf")
        return values

    def _extras(self, extras: Mapping[str, torch.Tensor] | None, batch: int) -> dict[str, torch.Tensor]:
        """Extra tensors ``name -> (B, *shape)``: given ones checked, the rest from the defaults."""
        out: dict[str, torch.Tensor] = {}
        for t in self.extra_tensors:
            if extras is not None and t.name in extras:
                x = extras[t.name]
                if tuple(x.shape) != (batch, *t.shape):
                    raise SpecMismatchError(
                        f"extra {t.name!r}: expected shape {(batch, *t.shape)}, got {tuple(x.shape)}"
                    )
                out[t.name] = x.to(t.torch_dtype, copy=True)
            else:
                default = torch.tensor(t.default, dtype=t.torch_dtype).reshape(t.shape)
                out[t.name] = default.expand(batch, *t.shape).clone()
        return out

    def unflatten(
        self,
        values: torch.Tensor,
        *,
        extras: Mapping[str, torch.Tensor] | None = None,
        base: Mapping[str, torch.Tensor] | None = None,
        check_finite: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """Turn ``(B, D)`` (or ``(D,)``) vectors back into state dicts, one per row.

        Tied tensors come back as one tensor under all their names. Frozen tensors
        (outside the name filter) are taken from ``base`` when it is given; otherwise
        the state dicts hold only the selected tensors (load them with
        ``strict=False``). Extras come from ``extras`` or, if absent, the spec's
        recorded values. Each returned tensor owns compact storage of its own size (no
        view into the batch), so saving one state dict writes only that model.
        """
        values = self._check_values(values, check_finite=check_finite)
        batch = values.shape[0]
        stored = self._extras(extras, batch)
        if base is not None:
            missing = [t.name for t in self.tensors if t.role == "frozen" and t.tied_to is None and t.name not in base]
            if missing:
                raise SpecMismatchError(f"base state dict lacks frozen tensors {missing[:5]}")
        result: list[dict[str, torch.Tensor]] = []
        for b in range(batch):
            # Each tensor is its own copy of its slice, so a state dict owns compact storage
            # (a view into the whole batch would make saving one model write the batch).
            own: dict[str, torch.Tensor] = {}
            for t in self.vector_tensors:
                own[t.name] = values[b, t.offset : t.offset + t.numel].to(t.torch_dtype, copy=True).reshape(t.shape)
            for t in self.extra_tensors:
                own[t.name] = stored[t.name][b].clone()
            sd: dict[str, torch.Tensor] = {}
            for t in self.tensors:
                source = t.tied_to or t.name
                if source in own:
                    sd[t.name] = own[source]
                elif base is not None:
                    sd[t.name] = sd[source] if t.tied_to is not None else base[t.name]
            result.append(sd)
        return result

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form."""
        return {"layers": list(self.layers), "tensors": [attrs.asdict(t) for t in self.tensors]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        try:
            tensors = tuple(TensorSpec(**t) for t in data["tensors"])
            return cls(tensors=tensors, layers=tuple(data["layers"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a serialized ParamSpec (expected keys 'layers' and 'tensors'): {e}") from e
