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

__all__ = ["AnchorKind", "PrototypeAnchor"]

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
