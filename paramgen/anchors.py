"""Residual targets over a data-driven anchor: a generator of ``w - s * a(cond)``.

A head generator that makes whole heads must learn, from a few images, what a
nearest-centroid head already gets right. With an anchor, the generator learns the
difference between each zoo head and the head computed from the condition's own data (the
*anchor* ``a(cond)``, scaled by one factor ``s``), and adds ``s * a(cond)`` back after
sampling (`paramgen.Generator` with ``anchor=``; the anchor is saved with the generator).

Two anchors, both the nearest class mean as a linear head (``W = 2 mu``, ``b = -|mu|^2``,
`paramgen.heads.prototype_head`):

- ``"prototype_head"``: the condition is a support set ``(K, S, F)`` with its classes in
  order (`paramgen.conditioners.ordered.OrderedSetConditioner`'s input); the anchor is the
  nearest-centroid head of the whole support set, for a spec ``weight (K, F)``,
  ``bias (K,)``.
- ``"prototype_row"``: the condition is one class's images ``(1, S, C)`` whose first
  ``feature_dim`` channels are the image features (`paramgen.heads.class_condition` makes
  ``[f, f - m]``, so ``feature_dim = F``); the anchor is that class's prototype row, for a
  spec ``weight (1, F)``, ``bias (1,)`` (a head generated row by row).

The scale is fixed, or fitted by least squares on the zoo (`PrototypeAnchor.fit_scale`):
``s = <w, a> / <a, a>`` over every coordinate of every zoo model.

For generators of whole networks (whose last layer reads features the network computes
itself, so no prototype head can be written from the condition), `NearestTaskAnchor`
anchors on the zoo instead: ``a(cond)`` is the stored weights of the zoo task whose
conditioning data looks most like ``cond`` (cosine similarity of the class means, in
class order), e.g. that task's best checkpoint by validation. The generator then learns
how a task's checkpoints differ from its anchor, and a new condition starts from the
nearest task's weights. Its keys and weights are saved with the generator
(``anchor.safetensors``).

Examples:
    >>> import torch
    >>> from paramgen.heads import head_spec
    >>> spec = head_spec(4, 3)
    >>> support = torch.randn(3, 2, 4)                     # 3 classes x 2 images x 4 features
    >>> anchor = PrototypeAnchor(kind="prototype_head", scale=0.5)
    >>> anchor.vectors([support], spec).shape              # (B, D): one flat head per condition
    torch.Size([1, 15])
    >>> PrototypeAnchor.from_config(anchor.config()) == anchor
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import torch

from paramgen.spec import ParamSpec

__all__ = ["AnchorKind", "PrototypeAnchor", "NearestTaskAnchor", "Anchor", "anchor_from_config"]

AnchorKind = Literal["prototype_head", "prototype_row"]
_KINDS = ("prototype_head", "prototype_row")


def _check_kind(_: Any, __: Any, value: Any) -> None:
    if value not in _KINDS:
        raise ValueError(f"PrototypeAnchor: kind must be one of {_KINDS}, got {value!r}")


def _check_scale(_: Any, __: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"PrototypeAnchor: scale must be a finite number, got {value!r}")


def _check_feature_dim(_: Any, __: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"PrototypeAnchor: feature_dim must be a positive integer or None, got {value!r}")


@attrs.frozen
class PrototypeAnchor:
    """The nearest-class-mean head of a condition's own images, as a residual anchor.

    Attributes:
        kind: ``"prototype_head"`` (a condition is a support set ``(K, S, F)``) or
            ``"prototype_row"`` (a condition is one class's images ``(1, S, C)``).
        scale: ``s``: the generator learns ``w - s * a(cond)`` and adds ``s * a(cond)`` back.
        feature_dim: For ``"prototype_row"``: how many leading channels of the condition
            are image features (``F`` for `paramgen.heads.class_condition`'s ``2F``
            channels); ``None``: every channel. Must be ``None`` for ``"prototype_head"``.

    Raises:
        ValueError: An unknown kind, a scale that is not finite, a bad ``feature_dim``.
    """

    kind: AnchorKind = attrs.field(default="prototype_head", validator=_check_kind)
    scale: float = attrs.field(default=1.0, converter=float, validator=_check_scale)
    feature_dim: int | None = attrs.field(default=None, validator=_check_feature_dim)

    def __attrs_post_init__(self) -> None:
        if self.kind == "prototype_head" and self.feature_dim is not None:
            raise ValueError("PrototypeAnchor: feature_dim is for kind='prototype_row' (conditions whose leading channels are features); drop it")

    # ------------------------------------------------------------------ spec
    def check_spec(self, spec: ParamSpec) -> None:
        """Refuse an architecture the anchor cannot write: it needs exactly a linear head,
        ``weight (K, F)`` and ``bias (K,)`` (``K = 1`` for ``"prototype_row"``).

        Raises:
            ValueError: Other tensors, or other shapes (named).
        """
        shapes = {t.name: tuple(t.shape) for t in spec.vector_tensors}
        ok = set(shapes) == {"weight", "bias"} and len(shapes["weight"]) == 2 and shapes["bias"] == shapes["weight"][:1]
        if ok and self.kind == "prototype_row":
            ok = shapes["weight"][0] == 1
        if not ok:
            want = "weight (1, F) and bias (1,) (one head row)" if self.kind == "prototype_row" else "weight (K, F) and bias (K,) (a linear head)"
            raise ValueError(f"a {self.kind} anchor needs a spec of {want}; this generator's spec has {shapes}")

    # ------------------------------------------------------------------ anchors
    def _prototypes(self, cond: Any, i: int, spec: ParamSpec) -> torch.Tensor:
        """``(K, F)`` class means of condition ``i``, checked against the spec."""
        k, f = next(tuple(t.shape) for t in spec.vector_tensors if t.name == "weight")
        if not isinstance(cond, torch.Tensor) or not cond.is_floating_point():
            raise TypeError(f"a {self.kind} anchor needs each condition as a floating tensor of image features; condition {i} is {type(cond).__name__}")
        if self.kind == "prototype_head":
            if cond.dim() != 3 or cond.shape[0] != k or cond.shape[2] != f or cond.shape[1] < 1:
                raise ValueError(
                    f"a prototype_head anchor needs each condition as a support set (K={k}, S>=1, F={f}) with the classes in the head's order; condition {i} has shape {tuple(cond.shape)}"
                )
            return cond.mean(1)  # (K, F)
        width = f if self.feature_dim is None else self.feature_dim
        if width != f:
            raise ValueError(f"a prototype_row anchor with feature_dim={self.feature_dim} does not match the spec's weight width {f}")
        if cond.dim() != 3 or cond.shape[0] != 1 or cond.shape[2] < f or cond.shape[1] < 1:
            raise ValueError(
                f"a prototype_row anchor needs each condition as one class's images (1, S>=1, C>={f}) whose first {f} channels are features "
                f"(paramgen.heads.class_condition); condition {i} has shape {tuple(cond.shape)}"
            )
        return cond[0, :, :f].mean(0, keepdim=True)  # (1, F)

    def vectors(self, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """The unscaled anchors ``a(cond)`` as flat vectors ``(B, D)`` in ``spec``'s order,
        on the conditions' device and in their dtype.

        Raises:
            TypeError: A condition is not a floating tensor.
            ValueError: A condition without what the anchor needs (its shape is named),
                conditions on several devices or of several dtypes, an empty sequence.
        """
        self.check_spec(spec)
        if isinstance(conds, torch.Tensor) and conds.dim() == 3:
            raise TypeError("conds must be a sequence of conditions (one tensor per model), not one tensor; wrap it in a list")
        if len(conds) == 0:
            raise ValueError("the anchor needs at least one condition")
        mus = [self._prototypes(c, i, spec) for i, c in enumerate(conds)]
        if len({(m.device, m.dtype) for m in mus}) != 1:
            raise ValueError(f"the conditions must share one device and dtype, got {sorted({(str(m.device), str(m.dtype)) for m in mus})}")
        mu = torch.stack(mus)  # (B, K, F)
        parts = {"weight": 2 * mu, "bias": -mu.pow(2).sum(-1)}  # nearest class mean: argmax_k 2 mu_k.x - |mu_k|^2
        ordered = sorted(spec.vector_tensors, key=lambda t: t.offset)
        return torch.cat([parts[t.name].reshape(len(conds), -1) for t in ordered], dim=1)  # (B, D)

    def __call__(self, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """``s * a(cond)``: the scaled anchors ``(B, D)`` the generator adds to its samples."""
        return self.scale * self.vectors(conds, spec)

    def residual(self, flat: torch.Tensor, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """``w - s * a(cond)``: what a generator with this anchor learns, ``(M, D)``
        (computed in float64, cast to ``flat``'s dtype and on its device).

        Raises:
            ValueError: ``flat`` is not ``(len(conds), D)``.
        """
        if flat.dim() != 2 or flat.shape != (len(conds), spec.numel):
            raise ValueError(f"expected weight vectors ({len(conds)}, {spec.numel}) (one per condition), got {tuple(flat.shape)}")
        a = self.vectors(conds, spec).to(device=flat.device, dtype=torch.float64)
        return (flat.to(torch.float64) - self.scale * a).to(flat.dtype)

    def fit_scale(self, flat: torch.Tensor, conds: Sequence[Any], spec: ParamSpec) -> PrototypeAnchor:
        """This anchor with the least-squares scale ``s = <w, a> / <a, a>`` over a zoo.

        Args:
            flat: ``(M, D)`` the zoo's weight vectors.
            conds: One condition per vector.
            spec: The architecture.

        Raises:
            ValueError: Shapes that do not match, or anchors that are all zero.
        """
        if flat.dim() != 2 or flat.shape != (len(conds), spec.numel):
            raise ValueError(f"expected weight vectors ({len(conds)}, {spec.numel}) (one per condition), got {tuple(flat.shape)}")
        a = self.vectors(conds, spec).to(device=flat.device, dtype=torch.float64)
        denom = float(a.pow(2).sum())
        if denom == 0.0:
            raise ValueError("every anchor is zero: a least-squares scale is undefined (are the conditions' features all zero?)")
        return attrs.evolve(self, scale=float((flat.to(torch.float64) * a).sum()) / denom)

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """The JSON record saved in the generator's ``config.json``."""
        return {"type": "PrototypeAnchor", "kind": self.kind, "scale": self.scale, "feature_dim": self.feature_dim}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PrototypeAnchor:
        """Rebuild an anchor from `config`'s record.

        Raises:
            ValueError: Not a ``PrototypeAnchor`` record, or a missing or invalid field.
        """
        if not isinstance(config, Mapping) or config.get("type") != "PrototypeAnchor":
            raise ValueError(f"expected an anchor record with type 'PrototypeAnchor', got {config!r}"[:300])
        missing = [k for k in ("kind", "scale", "feature_dim") if k not in config]
        if missing:
            raise ValueError(f"the anchor record lacks {missing}")
        return cls(kind=config["kind"], scale=config["scale"], feature_dim=config["feature_dim"])


def _condition_key(cond: Any, i: int) -> torch.Tensor:
    """``(K * F,)``: the L2-normalized class means of a condition ``(K, S, F)``, in class order (float64)."""
    if not isinstance(cond, torch.Tensor) or not cond.is_floating_point():
        raise TypeError(f"a nearest_task anchor needs each condition as a floating tensor (K, S, F); condition {i} is {type(cond).__name__}")
    if cond.dim() != 3 or min(cond.shape) < 1:
        raise ValueError(f"a nearest_task anchor needs each condition as a set of examples per class (K, S>=1, F); condition {i} has shape {tuple(cond.shape)}")
    if not bool(torch.isfinite(cond).all()):
        raise ValueError(f"condition {i} has NaN or infinite values")
    return torch.nn.functional.normalize(cond.detach().to(torch.float64).mean(1).reshape(-1), dim=0)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


@attrs.frozen(eq=False)
class NearestTaskAnchor:
    """The stored weights of the nearest zoo task (by its conditioning data) as a residual anchor.

    Build it with `from_zoo`. Each task has a *key* (the mean over its conditions of their
    normalized class means, in class order) and a *value* (weights in the spec's flat
    order); ``a(cond)`` is the value of the key with the highest cosine similarity to the
    condition's own key. Class order matters (a task with its labels swapped is another
    task), as it does for the weights.

    Attributes:
        keys: ``(T, K * F)`` float64 unit vectors, one per task.
        values: ``(T, D)`` float64 weights, one per task.
        tasks: The tasks' names (for logs and `nearest`).
        scale: ``s``: the generator learns ``w - s * a(cond)``.

    Examples:
        >>> import torch
        >>> from paramgen.spec import ParamSpec
        >>> spec = ParamSpec.from_state_dict({"w": torch.zeros(3)})
        >>> a, b = torch.randn(2, 4, 3), torch.randn(2, 4, 3)      # two tasks: 2 classes x 4 examples x 3 features
        >>> anchor = NearestTaskAnchor.from_zoo({"a": [a], "b": [b]}, {"a": torch.zeros(3), "b": torch.ones(3)})
        >>> anchor.nearest([b + 0.01 * torch.randn(2, 4, 3)])
        ['b']
        >>> anchor.vectors([b], spec)
        tensor([[1., 1., 1.]])
    """

    keys: torch.Tensor
    values: torch.Tensor
    tasks: tuple[str, ...] = attrs.field(converter=_names)
    scale: float = attrs.field(default=1.0, converter=float, validator=_check_scale)

    kind = "nearest_task"

    def __attrs_post_init__(self) -> None:
        k, v = self.keys, self.values
        if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or k.dim() != 2 or v.dim() != 2:
            raise ValueError(f"NearestTaskAnchor: keys (T, K*F) and values (T, D) must be 2-D tensors, got {getattr(k, 'shape', k)!r} and {getattr(v, 'shape', v)!r}")
        if not (k.shape[0] == v.shape[0] == len(self.tasks) >= 1):
            raise ValueError(f"NearestTaskAnchor: {len(self.tasks)} tasks need as many keys and values, got {k.shape[0]} and {v.shape[0]}")
        if not (bool(torch.isfinite(k).all()) and bool(torch.isfinite(v).all())):
            raise ValueError("NearestTaskAnchor: keys and values must be finite")

    @classmethod
    def from_zoo(cls, conds_by_task: Mapping[str, Sequence[Any]], values: Mapping[str, torch.Tensor], *, scale: float = 1.0) -> NearestTaskAnchor:
        """An anchor over the zoo's tasks.

        Args:
            conds_by_task: Each task's conditions (one or more draws of ``(K, S, F)``).
            values: Each task's anchor weights, flat ``(D,)`` in the spec's order (e.g.
                its best checkpoint by validation).
            scale: ``s``.

        Raises:
            ValueError: Tasks that differ between the two mappings, a task without
                conditions, conditions of different shapes, values of different sizes.
        """
        if set(conds_by_task) != set(values) or not values:
            raise ValueError(f"conds_by_task and values must name the same tasks, got {sorted(conds_by_task)} and {sorted(values)}")
        names = sorted(values)
        keys = []
        for name in names:
            conds = list(conds_by_task[name])
            if not conds:
                raise ValueError(f"task {name!r} has no conditions")
            keys.append(torch.nn.functional.normalize(torch.stack([_condition_key(c, i) for i, c in enumerate(conds)]).mean(0), dim=0))
        if len({k.shape for k in keys}) != 1:
            raise ValueError(f"every task's conditions must have one shape (K, S, F) with the same K * F, got key sizes {sorted({k.numel() for k in keys})}")
        vals = [values[n].detach().reshape(-1).to(device="cpu", dtype=torch.float64) for n in names]
        if len({v.numel() for v in vals}) != 1:
            raise ValueError(f"every task's value must have the same size D, got {sorted({v.numel() for v in vals})}")
        return cls(keys=torch.stack([k.cpu() for k in keys]), values=torch.stack(vals), tasks=tuple(names), scale=scale)

    def check_spec(self, spec: ParamSpec) -> None:
        """Refuse a spec whose flat size is not the values' ``D``."""
        if spec.numel != self.values.shape[1]:
            raise ValueError(f"this nearest_task anchor stores weights of {self.values.shape[1]} values; the generator's spec has {spec.numel}")

    def _indices(self, conds: Sequence[Any]) -> list[int]:
        if isinstance(conds, torch.Tensor) and conds.dim() == 3:
            raise TypeError("conds must be a sequence of conditions (one tensor per model), not one tensor; wrap it in a list")
        if len(conds) == 0:
            raise ValueError("the anchor needs at least one condition")
        q = torch.stack([_condition_key(c, i) for i, c in enumerate(conds)])
        if q.shape[1] != self.keys.shape[1]:
            raise ValueError(f"conditions give keys of {q.shape[1]} values (K * F), the anchor's tasks have {self.keys.shape[1]}")
        return (q.cpu() @ self.keys.T).argmax(1).tolist()

    def nearest(self, conds: Sequence[Any]) -> list[str]:
        """The nearest task of each condition."""
        return [self.tasks[j] for j in self._indices(conds)]

    def vectors(self, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """The unscaled anchors ``(B, D)``: the nearest task's stored weights, on the conditions' device and in their dtype."""
        self.check_spec(spec)
        idx = self._indices(conds)
        like = conds[0]
        return self.values[idx].to(device=like.device, dtype=like.dtype)

    def __call__(self, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """``s * a(cond)``: the scaled anchors ``(B, D)`` the generator adds to its samples."""
        return self.scale * self.vectors(conds, spec)

    def residual(self, flat: torch.Tensor, conds: Sequence[Any], spec: ParamSpec) -> torch.Tensor:
        """``w - s * a(cond)`` ``(M, D)`` (float64 arithmetic, cast to ``flat``'s dtype and device)."""
        if flat.dim() != 2 or flat.shape != (len(conds), spec.numel):
            raise ValueError(f"expected weight vectors ({len(conds)}, {spec.numel}) (one per condition), got {tuple(flat.shape)}")
        a = self.vectors(conds, spec).to(device=flat.device, dtype=torch.float64)
        return (flat.to(torch.float64) - self.scale * a).to(flat.dtype)

    def config(self) -> dict[str, Any]:
        """The JSON record saved in the generator's ``config.json`` (the tensors go to `tensors`)."""
        return {"type": "NearestTaskAnchor", "kind": self.kind, "scale": self.scale, "tasks": list(self.tasks)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The keys and values, saved as ``anchor.safetensors`` beside the generator."""
        return {"keys": self.keys, "values": self.values}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> NearestTaskAnchor:
        """Rebuild from `config`'s record and `tensors`.

        Raises:
            ValueError: Not a ``NearestTaskAnchor`` record, a missing field or tensor.
        """
        if not isinstance(config, Mapping) or config.get("type") != "NearestTaskAnchor":
            raise ValueError(f"expected an anchor record with type 'NearestTaskAnchor', got {config!r}"[:300])
        missing = [k for k in ("scale", "tasks") if k not in config] + [k for k in ("keys", "values") if k not in tensors]
        if missing:
            raise ValueError(f"the nearest_task anchor record lacks {missing}")
        return cls(keys=tensors["keys"].to(torch.float64), values=tensors["values"].to(torch.float64), tasks=tuple(config["tasks"]), scale=config["scale"])


#: The anchors a generator takes (`paramgen.Generator`'s ``anchor=``).
Anchor = PrototypeAnchor | NearestTaskAnchor


def anchor_from_config(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None) -> Anchor:
    """The anchor of a saved record: one of the two classes of this module, chosen by ``type``
    (nothing else is imported).

    Raises:
        ValueError: An unknown ``type``, or a ``NearestTaskAnchor`` record without its tensors.
    """
    kind = config.get("type") if isinstance(config, Mapping) else None
    if kind == "PrototypeAnchor":
        return PrototypeAnchor.from_config(config)
    if kind == "NearestTaskAnchor":
        if tensors is None:
            raise ValueError("a NearestTaskAnchor record needs its tensors (anchor.safetensors)")
        return NearestTaskAnchor.from_config(config, tensors)
    raise ValueError(f"unknown anchor type {kind!r}; expected 'PrototypeAnchor' or 'NearestTaskAnchor'")
