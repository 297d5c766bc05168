"""Standard text descriptions of architectures, for conditioning generators on them.

IGPG conditions its prior on a language model's embedding of a textual description of
the architecture (``resnet: layers [3, 3, 3]``). `describe_architecture` derives
such a description from the module tree alone, so that it is deterministic, identical for
identical architectures and different when depth or width differ.

Examples:
    >>> from paramgen.models import MLP
    >>> describe_architecture(MLP(64, [32, 32], 10))
    'mlp: in 64; linear 32 x2, linear 10; params 3466'
"""

from __future__ import annotations

from torch import nn

__all__ = ["describe_architecture"]

_NORMS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "batchnorm"),
    (nn.LayerNorm, "layernorm"),
    (nn.GroupNorm, "groupnorm"),
    (nn.modules.instancenorm._InstanceNorm, "instancenorm"),
)


def _layer_token(m: nn.Module) -> str | None:
    """``conv3x3/2 32``, ``conv3x3dw 96``, ``conv3 8`` (1D), ``linear 10``; None for other modules."""
    if isinstance(m, nn.modules.conv._ConvNd):
        kernel = "x".join(str(k) for k in m.kernel_size)
        if m.groups > 1:
            kernel += "dw" if m.groups == m.in_channels else f"g{m.groups}"
        stride = max(m.stride)
        if stride > 1:
            kernel += f"/{stride}"
        return f"conv{kernel} {m.out_channels}"
    if isinstance(m, nn.Linear):
        return f"linear {m.out_features}"
    return None


def _run_length(tokens: list[str]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for t in tokens:
        if runs and runs[-1][0] == t:
            runs[-1] = (t, runs[-1][1] + 1)
        else:
            runs.append((t, 1))
    return runs


def _block_counts(model: nn.Module) -> list[int]:
    """Lengths of the top-level containers that hold repeated composite blocks (ResNet stages)."""
    counts = []
    for child in model.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 0:
            first = child[0]
            same_class = all(type(m) is type(first) for m in child)
            if same_class and next(first.children(), None) is not None:
                counts.append(len(child))
    return counts


def describe_architecture(model: nn.Module, *, max_layers: int = 16) -> str:
    """A short, deterministic text description of ``model``'s architecture.

    Fields, separated by ``"; "``:

    - the class name in lower case;
    - ``in N``: input channels or features of the first conv/linear layer;
    - ``blocks [n1, n2, ...]``: sizes of top-level containers of repeated blocks, if any
      (``blocks [3, 3, 3]`` for ResNet-20);
    - the conv/linear layers in registration order, e.g. ``conv3x3/2 32`` (kernel, ``dw``
      for depthwise, ``/stride``, output width) or ``linear 10``, with runs of identical
      layers written once as ``x7``. When more than ``max_layers`` runs remain (e.g.
      MobileNetV2), this becomes a summary: layer counts per kind and the distinct
      widths in order of first use;
    - the normalization kinds present (``batchnorm``), and ``dropout p`` if any;
    - ``params N``: the number of parameters.

    Activations and pooling done with functional calls are invisible to the module tree
    and are not described.

    Args:
        model: Any module.
        max_layers: Most layer runs listed one by one before summarizing.

    Returns:
        The description, e.g. ``'convnet: in 1; blocks [2]; conv3x3 8, conv3x3 16,
        linear 10; batchnorm; params 1442'``.

    Examples:
        >>> from paramgen.models import ResNet
        >>> describe_architecture(ResNet(depth=20)) != describe_architecture(ResNet(depth=32))
        True
    """
    if max_layers < 1:
        raise ValueError(f"describe_architecture: expected max_layers >= 1, got {max_layers}")
    parts = [type(model).__name__.lower() + ":"]
    modules = list(model.modules())

    layers = [m for m in modules if _layer_token(m) is not None]
    if layers:
        first = layers[0]
        n_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
        parts.append(f"in {n_in}")

    counts = _block_counts(model)
    if counts:
        parts.append(f"blocks [{', '.join(map(str, counts))}]")

    tokens = [t for m in layers if (t := _layer_token(m)) is not None]  # every layer has a token
    runs = _run_length(tokens)
    if len(runs) <= max_layers:
        if runs:
            parts.append(", ".join(t if k == 1 else f"{t} x{k}" for t, k in runs))
    else:
        kinds: dict[str, int] = {}
        widths: list[str] = []
        for t in tokens:
            kind, width = t.split(" ")
            kind = kind.split("/")[0]  # strides are summarized away
            kinds[kind] = kinds.get(kind, 0) + 1
            if width not in widths:
                widths.append(width)
        parts.append(
            f"{len(tokens)} layers: "
            + ", ".join(f"{kind} x{k}" for kind, k in kinds.items())
            + f"; widths [{', '.join(widths)}]"
        )

    norms = []
    for m in modules:
        for cls, name in _NORMS:
            if isinstance(m, cls) and name not in norms:
                norms.append(name)
    parts += norms
    drops = sorted({m.p for m in modules if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0})
    if drops:
        parts.append("dropout " + ", ".join(f"{p:g}" for p in drops))

    parts.append(f"params {sum(p.numel() for p in model.parameters())}")
    return parts[0] + " " + "; ".join(parts[1:])
