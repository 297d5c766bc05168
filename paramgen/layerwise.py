"""Channel-aligned rows with a layer descriptor: one layout for any member of a family.

Model-wise layouts pad every member into one vector, so position ``i`` is a different
weight in each architecture. `LayerRowLayout` instead cuts every tensor of a model
(conv / linear weights, biases, BatchNorm weights, shifts and running statistics) into
rows of a fixed ``width`` *in output-channel order*:

- a tensor is viewed as ``(out_channels, r)`` (``r = in * k * k`` for a convolution,
  ``in`` for a linear layer, 1 for a vector);
- when ``r <= width`` a row holds ``width // r`` whole output channels;
- when ``r > width`` each output channel is split into ``ceil(r / width)`` pieces.

Each row gets a `LayerDescriptor` (layer kind, in / out channels, kernel size, relative
depth, the row's channels and piece within the layer, and the architecture text), so a
generator conditioned on descriptors can write a layer of an architecture it never saw
from what similar layers of seen members look like. The number of rows of a layer grows
with its size, so tokens (or latents) per layer do too.

The round trip ``unflatten(flatten(state_dict))`` is bit-exact in any floating dtype;
non-floating tensors (``num_batches_tracked``) travel as ``extras``.

Examples:
    >>> import torch
    >>> from paramgen.models import ConvNet
    >>> net = ConvNet(channels=[4, 8], num_classes=3)
    >>> layout = LayerRowLayout(net, width=16)
    >>> rows = layout.flatten(net.state_dict())
    >>> rows.values.shape  # (rows, width)
    torch.Size([39, 16])
    >>> d = layout.descriptors[0]
    >>> (d.kind, d.in_channels, d.out_channels, d.kernel, d.channel, d.channels)
    ('conv', 1, 4, 3, 0, 1)
    >>> back = layout.unflatten(rows.values, extras=rows.extras)
    >>> all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import torch
from torch import nn

__all__ = [
    "KINDS",
    "LayerDescriptor",
    "LayerRows",
    "LayerRowLayout",
    "descriptor_features",
    "normalize_rows",
    "denormalize_rows",
]

Kind = Literal["conv", "linear", "bias", "bn_weight", "bn_bias", "bn_mean", "bn_var"]
#: Every layer kind, in the order of `descriptor_features`' one-hot block.
KINDS: tuple[str, ...] = ("conv", "linear", "bias", "bn_weight", "bn_bias", "bn_mean", "bn_var")
_BN_KIND = {"weight": "bn_weight", "bias": "bn_bias", "running_mean": "bn_mean", "running_var": "bn_var"}


@attrs.frozen
class LayerDescriptor:
    """What one row of a `LayerRowLayout` is: the condition of a layer-wise generator.

    Attributes:
        name: The state-dict key of the tensor the row comes from.
        kind: One of `KINDS`.
        in_channels: Input channels (features) of the layer; 1 for a BatchNorm vector.
        out_channels: Output channels (features) of the layer.
        kernel: Kernel size (its largest side; 1 for linear layers and vectors).
        depth: Relative depth in ``[0, 1]``: the index of the layer's conv / linear among
            the model's, over their count minus one (a BatchNorm or bias takes its layer's).
        channel: First output channel of the row.
        channels: Output channels in the row.
        piece: Piece of the channel (0 unless a channel is longer than a row).
        pieces: Pieces per channel.
        index: Row index within the tensor.
        rows: Rows of the tensor.
        arch: The architecture's text (e.g. `paramgen.models.describe_architecture`).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    depth: float
    channel: int
    channels: int
    piece: int
    pieces: int
    index: int
    rows: int
    arch: str

    @property
    def fan_in(self) -> int:
        """Inputs per output unit of the layer (``in * k * k`` for a 2D convolution)."""
        return self.in_channels * self.kernel**2 if self.kind == "conv" else self.in_channels if self.kind == "linear" else 1


@attrs.frozen(eq=False)
class LayerRows:
    """A model as rows: ``values (N, C)`` in the state dict's dtype, zero on padding, and extras."""

    values: torch.Tensor
    extras: dict[str, torch.Tensor]


def _layer_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str, float]]:
    """State-dict prefix -> (module, kind family, relative depth) for conv / linear / BN."""
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    last = max(1, len(weighted) - 1)
    out: dict[str, tuple[nn.Module, str, float]] = {}
    depth = 0.0
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            depth = weighted.index(name) / last
            out[name] = (m, "conv", depth)
        elif isinstance(m, nn.Linear):
            depth = weighted.index(name) / last
            out[name] = (m, "linear", depth)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = (m, "bn", depth)  # the depth of the layer it normalizes (registered before it)
    return out


class LayerRowLayout:
    """Rows of ``width`` in output-channel order, with a `LayerDescriptor` per row.

    Args:
        model: A module made of convolutions, linear layers and BatchNorms (any other
            module holding state raises); only its structure is read.
        width: Entries per row (``C``).
        arch: The architecture text of every descriptor (default:
            `paramgen.models.describe_architecture` of ``model``).
        pack: Put ``width // r`` whole output channels in a row when a channel's ``r``
            entries fit (the default). ``False``: one channel per row (split into pieces
            when longer) except for vectors (``r == 1``, biases and BatchNorm tensors),
            so that entry ``j`` of a row is the same input position in every member of a
            family even where ``r`` grows with the width (a linear head, a 1x1 shortcut):
            rows of members of different widths line up.

    Raises:
        ValueError: ``width`` is not a positive integer, or a state-dict entry belongs
            to a module kind the layout does not know.
    """

    def __init__(self, model: nn.Module, *, width: int, arch: str | None = None, pack: bool = True) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if arch is None:
            from paramgen.models import describe_architecture

            arch = describe_architecture(model)
        self.width = width
        self.arch = arch
        self.pack = pack
        layers = _layer_modules(model)
        state = model.state_dict()
        self.keys: tuple[str, ...] = tuple(state)  # every state-dict key, in order
        self.names: list[str] = []  # floating tensors, in state-dict order
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.extra_specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        descriptors: list[LayerDescriptor] = []
        src: list[torch.Tensor] = []
        offset = 0
        for key, t in state.items():
            if not t.is_floating_point():
                self.extra_specs[key] = (tuple(t.shape), t.dtype)
                continue
            prefix, _, leaf = key.rpartition(".")
            if prefix not in layers:
                raise ValueError(f"LayerRowLayout: {key!r} belongs to a {type(model.get_submodule(prefix)).__name__ if prefix else 'model'}; expected conv, linear or BatchNorm tensors only")
            m, family, depth = layers[prefix]
            if family == "bn":
                kind, n_in, n_out, kernel = _BN_KIND[leaf], 1, int(t.shape[0]), 1
            elif leaf == "bias":
                kind = "bias"
                n_out = int(t.shape[0])
                n_in = int(getattr(m, "in_channels", getattr(m, "in_features", 1)))
                kernel = max(getattr(m, "kernel_size", (1,)))
            else:
                kind = family
                n_out, n_in = int(t.shape[0]), int(t.shape[1]) if t.ndim > 1 else 1
                kernel = max(t.shape[2:]) if t.ndim > 2 else 1
            n = t.numel()
            r = n // n_out  # entries per output channel
            rows: list[tuple[int, int, int, int, int]] = []  # (start, stop, channel, channels, piece)
            if r <= width:
                per = width // r if pack or r == 1 else 1
                for c in range(0, n_out, per):
                    k = min(per, n_out - c)
                    rows.append((c * r, (c + k) * r, c, k, 0))
                pieces = 1
            else:
                pieces = -(-r // width)
                for c in range(n_out):
                    for p in range(pieces):
                        rows.append((c * r + p * width, c * r + min(r, (p + 1) * width), c, 1, p))
            for i, (a, b, c, k, p) in enumerate(rows):
                idx = torch.arange(offset + a, offset + b)
                src.append(torch.cat([idx, torch.full((width - len(idx),), -1)]))
                descriptors.append(LayerDescriptor(name=key, kind=kind, in_channels=n_in, out_channels=n_out, kernel=int(kernel), depth=float(depth),
                                                   channel=c, channels=k, piece=p, pieces=pieces, index=i, rows=len(rows), arch=arch))  # fmt: skip
            self.names.append(key)
            self.shapes[key] = tuple(t.shape)
            offset += n
        self.numel = offset
        self.descriptors: tuple[LayerDescriptor, ...] = tuple(descriptors)
        self.rows = len(descriptors)
        self._src = torch.stack(src).reshape(-1)  # (N*C,) flat index or -1
        self._gather = torch.where(self._src >= 0, self._src, self.numel)  # padding reads an appended zero
        real = torch.nonzero(self._src >= 0).squeeze(1)
        self._inv = torch.empty(self.numel, dtype=torch.long)
        self._inv[self._src[real]] = real
        self.mask = (self._src >= 0).reshape(self.rows, width)  # (N, C)

    def flatten(self, state_dict: Mapping[str, torch.Tensor]) -> LayerRows:
        """One state dict to rows ``(N, C)`` in its floating dtype, and its extras.

        Raises:
            ValueError: A missing or misshapen tensor, mixed floating dtypes, or NaN / Inf.
        """
        missing = [k for k in (*self.names, *self.extra_specs) if k not in state_dict]
        if missing:
            raise ValueError(f"state dict lacks {missing[:5]} (is it from another architecture?)")
        dtypes = {state_dict[k].dtype for k in self.names}
        if len(dtypes) != 1:
            raise ValueError(f"expected one floating dtype for every tensor, got {sorted(map(str, dtypes))}")
        for k in self.names:
            if tuple(state_dict[k].shape) != self.shapes[k]:
                raise ValueError(f"tensor {k!r}: expected shape {self.shapes[k]}, got {tuple(state_dict[k].shape)}")
        flat = torch.cat([state_dict[k].detach().reshape(-1) for k in self.names])  # (D,)
        if not torch.isfinite(flat).all():
            raise ValueError("weights contain NaN or Inf")
        padded = torch.cat([flat, flat.new_zeros(1)])
        values = padded[self._gather.to(flat.device)].reshape(self.rows, self.width)  # (N, C)
        return LayerRows(values=values, extras={k: state_dict[k].detach().clone() for k in self.extra_specs})

    def unflatten(self, values: torch.Tensor, *, extras: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Rows ``(N, C)`` back to a state dict (padding dropped), in the rows' dtype and device.

        Args:
            values: Rows of this layout.
            extras: Non-floating tensors (``num_batches_tracked``); those not given are zeros.

        Raises:
            ValueError: Rows of another shape, or NaN / Inf in them.
        """
        if tuple(values.shape) != (self.rows, self.width):
            raise ValueError(f"expected rows of shape ({self.rows}, {self.width}), got {tuple(values.shape)}")
        if not torch.isfinite(values[self.mask.to(values.device)]).all():
            raise ValueError("rows contain NaN or Inf")
        flat = values.reshape(-1)[self._inv.to(values.device)]  # (D,)
        out: dict[str, torch.Tensor] = {}
        extras = dict(extras or {})
        offset = 0
        for key in self.names:
            n = math.prod(self.shapes[key])
            out[key] = flat[offset : offset + n].reshape(self.shapes[key]).clone()
            offset += n
        for key, (shape, dtype) in self.extra_specs.items():
            out[key] = extras[key].clone() if key in extras else torch.zeros(shape, dtype=dtype, device=values.device)
        return {k: out[k] for k in self.keys}  # the state dict's own order


def _fourier(x: torch.Tensor, bands: int) -> torch.Tensor:
    freqs = 2.0 ** torch.arange(bands, dtype=x.dtype) * math.pi  # (F,)
    ang = x[:, None] * freqs  # (N, F)
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


def descriptor_features(descriptors: Sequence[LayerDescriptor], *, bands: int = 4, aligned: bool = False) -> torch.Tensor:
    """Numbers of each descriptor, ``(N, F)`` float32 (the architecture text excluded).

    One-hot kind (`KINDS`), ``log2`` of in / out channels, kernel size, fan-in, rows and
    pieces; relative depth, relative channel position (over the layer's channels) and
    absolute channel position (over 64) with ``bands`` Fourier bands each; the piece.

    ``aligned=True``: features for channel-aligned rows of a ``LayerRowLayout(pack=False)``:
    one-hot kind, ``log2`` of in / out channels, kernel size, relative depth (``bands``
    Fourier bands), the row's first channel and its piece index as absolute numbers (7
    Fourier bands over 64 and 5 over 16: every channel below 64 distinct), and nothing
    else that changes with a member's width (no fan-in, rows, pieces or relative
    position). Rows that hold the same entries of the same channel in members of
    different widths then differ only in the two channel counts, so a generator can write
    an unseen width from the channels seen members have (docs/cross_arch.md).

    Examples:
        >>> import torch
        >>> from paramgen.models import ConvNet
        >>> descriptor_features(LayerRowLayout(ConvNet(), width=32).descriptors).shape
        torch.Size([65, 38])
    """
    if not descriptors:
        raise ValueError("expected at least one descriptor, got none")
    kind = torch.zeros(len(descriptors), len(KINDS))
    for i, d in enumerate(descriptors):
        if d.kind not in KINDS:
            raise ValueError(f"descriptor kind must be one of {KINDS}, got {d.kind!r}")
        kind[i, KINDS.index(d.kind)] = 1.0
    num = torch.tensor(
        [[math.log2(d.in_channels) / 6, math.log2(d.out_channels) / 6, d.kernel / 3, math.log2(d.fan_in) / 8,
          math.log2(d.rows) / 8, d.pieces / 4] for d in descriptors], dtype=torch.float32,
    )  # fmt: skip
    depth = torch.tensor([d.depth for d in descriptors])
    if aligned:
        sizes = num[:, :3]  # log2 in / out channels, kernel
        first = torch.tensor([d.channel / 64 for d in descriptors])
        piece_index = torch.tensor([d.piece / 16 for d in descriptors])
        return torch.cat([kind, sizes, _fourier(depth, bands), _fourier(first, 7), _fourier(piece_index, 5)], dim=1)
    pos = torch.tensor([(d.channel + d.channels / 2) / d.out_channels for d in descriptors])
    absolute = torch.tensor([(d.channel + d.channels / 2) / 64 for d in descriptors])  # channel c of aligned members of any width
    piece = torch.tensor([(d.piece + 0.5) / d.pieces for d in descriptors])
    return torch.cat([kind, num, _fourier(depth, bands), _fourier(pos, bands), _fourier(absolute, bands), piece[:, None]], dim=1)


def _row_scale(descriptors: Sequence[LayerDescriptor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: a multiplier (``sqrt(fan_in)`` for conv / linear weights, else 1) and a log flag (running variances)."""
    scale = torch.tensor([math.sqrt(d.fan_in) if d.kind in ("conv", "linear") else 1.0 for d in descriptors], dtype=torch.float64)
    log = torch.tensor([d.kind == "bn_var" for d in descriptors])
    return scale, log


def normalize_rows(values: torch.Tensor, descriptors: Sequence[LayerDescriptor], mask: torch.Tensor) -> torch.Tensor:
    """Rows on one scale across widths: weights times ``sqrt(fan_in)``, running variances logged.

    Deterministic from the descriptors (nothing fitted), so rows of an unseen width are
    scaled as those of seen widths are. Padding stays zero. Inverse: `denormalize_rows`.

    Args:
        values: ``(N, C)`` rows (or ``(B, N, C)``).
        descriptors: One per row.
        mask: ``(N, C)`` real entries.
    """
    scale, log = _row_scale(descriptors)
    x = values.to(torch.float64)
    x = torch.where(log.to(x.device)[:, None] & mask.to(x.device), torch.log(x.clamp_min(1e-12)), x)
    return (x * scale.to(x.device)[:, None] * mask.to(x.device)).to(values.dtype)


def denormalize_rows(values: torch.Tensor, descriptors: Sequence[LayerDescriptor], mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_rows` (up to rounding); padding set to zero."""
    scale, log = _row_scale(descriptors)
    x = values.to(torch.float64) / scale.to(values.device)[:, None]
    x = torch.where(log.to(x.device)[:, None] & mask.to(x.device), torch.exp(x.clamp(max=30.0)), x)
    return (x * mask.to(x.device)).to(values.dtype)
