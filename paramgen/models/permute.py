"""Channel alignment of ConvNets of different widths and depths (weight matching).

Hidden channels of a network can be permuted without changing its function, so channel
``c`` of one trained member means nothing in particular in another. `align_convnets`
permutes each member so that its channels line up with those of the members aligned
before it (Ainsworth et al. 2023's weight matching, block by block): the output channels
of block ``i`` are matched to the reference's block ``i`` (the first aligned member that
has one) by the cosine similarity of their incoming weights over the input channels both
share, with `scipy.optimize.linear_sum_assignment`. Matched channels take the reference's
order; channels beyond the reference's width follow, by decreasing weight norm. The first
member (and a block no earlier member has) is ordered by decreasing norm alone.

Examples:
    >>> import torch
    >>> from paramgen.models import ConvNet
    >>> torch.manual_seed(0) and None
    >>> a, b = ConvNet(channels=[4, 8]).eval(), ConvNet(channels=[6, 12]).eval()
    >>> a2, b2 = align_convnets([a, b])
    >>> x = torch.randn(3, 1, 8, 8)
    >>> torch.allclose(b(x), b2(x), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from paramgen.models.convnet import ConvNet

__all__ = ["permute_convnet", "align_convnets"]


@torch.no_grad()
def permute_convnet(model: ConvNet, perms: Sequence[torch.Tensor]) -> ConvNet:
    """A copy of ``model`` whose block ``i`` has output channels ``perms[i]`` (same function).

    Raises:
        ValueError: Not one permutation per block, or one that is not a permutation.
    """
    if len(perms) != len(model.blocks):
        raise ValueError(f"permute_convnet: expected {len(model.blocks)} permutations (one per block), got {len(perms)}")
    for i, (p, c) in enumerate(zip(perms, model.channels, strict=True)):
        if not torch.equal(torch.sort(p).values, torch.arange(c)):
            raise ValueError(f"permute_convnet: block {i} needs a permutation of range({c}), got {p.tolist()}")
    first: Any = model.blocks[0]  # module attributes, typed loosely by nn.Module
    out = ConvNet(
        in_channels=model.in_channels, channels=model.channels, num_classes=model.num_classes, kernel_size=int(first.conv.kernel_size[0]),
        batchnorm=isinstance(first.bn, nn.modules.batchnorm._BatchNorm), dims=model.dims,  # type: ignore[arg-type]
    )  # fmt: skip
    state = model.state_dict()
    new = {}
    prev: torch.Tensor | None = None
    for i, p in enumerate(perms):
        for key, value in state.items():
            if not key.startswith(f"blocks.{i}."):
                continue
            if key.endswith("conv.weight"):
                value = value[p] if prev is None else value[p][:, prev]
            elif value.ndim == 1:
                value = value[p]
            new[key] = value.clone()
        prev = perms[i]
    new["head.weight"] = state["head.weight"][:, prev].clone()
    new["head.bias"] = state["head.bias"].clone()
    out.load_state_dict(new)
    return out.train(model.training)


def _norm_order(w: torch.Tensor) -> torch.Tensor:
    return torch.argsort(w.flatten(1).norm(dim=1), descending=True, stable=True)


@torch.no_grad()
def align_convnets(models: Sequence[ConvNet]) -> list[ConvNet]:
    """Permuted copies of ``models`` whose channels line up block by block (see the module docstring).

    Args:
        models: ConvNets of any widths and depths with the same input channels and kernel;
            the order matters (each is matched to those before it), e.g. narrowest first.

    Returns:
        The aligned copies, each computing what its original computes.

    Raises:
        ImportError: scipy is missing (``pip install 'paramgen[data]'``).
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover - scipy is a dependency of the data extra
        raise ImportError("align_convnets needs scipy: pip install 'paramgen[data]'") from e
    refs: dict[int, torch.Tensor] = {}  # block -> the reference's aligned incoming weights (out, in, k, k)
    aligned = []
    for model in models:
        perms: list[torch.Tensor] = []
        prev: torch.Tensor | None = None
        block: Any
        for i, block in enumerate(model.blocks):
            w = block.conv.weight.detach().to(torch.float64)
            if prev is not None:
                w = w[:, prev]  # inputs already in aligned order
            ref = refs.get(i)
            if ref is None:
                perm = _norm_order(w)
            else:
                c_in = min(w.shape[1], ref.shape[1])
                a = torch.nn.functional.normalize(w[:, :c_in].flatten(1), dim=1)
                b = torch.nn.functional.normalize(ref[:, :c_in].flatten(1), dim=1)
                rows, cols = linear_sum_assignment((-(a @ b.T)).numpy())  # maximize the total cosine similarity
                matched = torch.as_tensor(rows)[torch.argsort(torch.as_tensor(cols))]  # in the reference's order
                rest = torch.tensor([o for o in _norm_order(w).tolist() if o not in set(matched.tolist())], dtype=torch.long)
                perm = torch.cat([matched, rest]).long()
            perms.append(perm)
            if i not in refs:
                refs[i] = w[perm]
            prev = perm
        aligned.append(permute_convnet(model, perms))
    return aligned
