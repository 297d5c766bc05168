"""A multilayer perceptron with readable state-dict keys.

The hidden layers live in ``layers`` (``layers.0.weight``, ``layers.1.weight``, ...), their
optional batch norms in ``norms`` and the classifier in ``head``, so the flat parameter
vector of a zoo checkpoint can be read back by name.

Examples:
    >>> import torch
    >>> net = MLP(64, [32, 16], 10)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> [k for k in net.state_dict()][:4]
    ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected classifier: ``[Linear -> (BatchNorm) -> ReLU -> (Dropout)] * k -> Linear``.

    Inputs of any shape ``(B, ...)`` are flattened to ``(B, in_features)``, so the same
    network takes ``(B, 64)`` vectors or ``(B, 1, 8, 8)`` images.

    Args:
        in_features: Number of input features after flattening.
        hidden: Widths of the hidden layers, in order; empty gives a linear classifier.
        num_classes: Output width of ``head``.
        batchnorm: Add ``BatchNorm1d`` after each hidden linear layer (stored in ``norms``).
        dropout: Dropout probability after each hidden activation; 0 disables it.

    Examples:
        >>> net = MLP(40, [16], 10, batchnorm=True)
        >>> sorted(net.state_dict())[:3]
        ['head.bias', 'head.weight', 'layers.0.bias']
        >>> sum(p.numel() for p in net.parameters())  # 40*16+16 + 2*16 + 16*10+10
        858
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        *,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if in_features < 1:
            raise ValueError(f"MLP: expected in_features >= 1, got {in_features}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"MLP: expected positive hidden widths, got {list(hidden)}")
        if num_classes < 1:
            raise ValueError(f"MLP: expected num_classes >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: expected dropout in [0, 1), got {dropout}")
        self.in_features = int(in_features)
        self.hidden = hidden
        self.num_classes = int(num_classes)

        widths = (self.in_features, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        # BatchNorm1d modules sit in their own list so that ``layers.i`` is always the
        # i-th Linear layer, whatever the options.
        self.norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden) if batchnorm else None
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(widths[-1], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch.

        Args:
            x: ``(B, ...)`` input whose trailing dimensions hold ``in_features`` values.

        Returns:
            ``(B, num_classes)`` logits.
        """
        if x.dim() < 2:
            raise ValueError(f"MLP: expected input of shape (B, ...), got {tuple(x.shape)}")
        x = x.flatten(1)  # (B, in_features)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"MLP: expected {self.in_features} features per sample after flattening, "
                f"got {x.shape[1]}"
            )
        for i, layer in enumerate(self.layers):
            x = layer(x)  # (B, hidden[i])
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.dropout(self.act(x))
        return self.head(x)  # (B, num_classes)
