"""The architecture as data: a frozen description of a model's tensors.

A `ParamSpec` lists every tensor of a state dict (name, shape, dtype, kind) and says
which of them form the weight vector that generators learn (``role="vector"``), which are
carried along unchanged (``role="extra"``: integer and boolean buffers such as
``num_batches_tracked``), and which are left out by a name filter (``role="frozen"``).
Tied tensors (one tensor under several names) are stored once and restored tied.

Vectorizers, tokenizers and selectors all share this record, so it is the single place
that knows how a model maps to a flat vector.

Examples:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    >>> spec = ParamSpec.from_module(net)
    >>> spec.numel  # 3*4 + 4 weights/bias, 4+4 BN affine, 4+4 BN running stats
    32
    >>> flat, extras = spec.flatten([net.state_dict()])
    >>> net.load_state_dict(spec.unflatten(flat, extras=extras)[0], strict=True)
    <All keys matched successfully>
"""

from paramgen.spec.params import ParamSpec
from paramgen.spec.tensor import _DTYPES as _DTYPES  # the dtype table (paramgen.formats checks against it)
from paramgen.spec.tensor import NonFiniteWeightsError, Role, SpecMismatchError, TensorSpec
from paramgen.spec.tensor import _matches as _matches  # name patterns (paramgen.normalize)

__all__ = [
    "Role",
    "TensorSpec",
    "ParamSpec",
    "SpecMismatchError",
    "NonFiniteWeightsError",
]
