"""An accuracy predictor on vectorized weights (D2NWG eq. 9 and App. C.7).

Trained on a zoo (weights -> recorded accuracy) and then frozen, it serves two purposes:
the predictor-guided VAE loss (``VAETokenizer(predictor_weight=...)`` adds
``||g(x) - g(x_hat)||^2``, so reconstructions keep what matters for accuracy), and ranking
generated samples without touching any test data.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> rows = torch.randn(64, 2, 8, generator=g)
    >>> acc = torch.sigmoid(rows[:, 0, 0])  # accuracy that depends on one weight
    >>> pred = AccuracyPredictor(rows=2, width=8, hidden=32)
    >>> losses = fit_predictor(pred, rows, acc, steps=300, generator=g)
    >>> losses[-1] < losses[0], pred.training
    (True, False)
"""

from __future__ import annotations

import torch
from torch import nn

from paramgen._random import randint
from paramgen.registry import Configurable

__all__ = ["AccuracyPredictor", "fit_predictor"]


class AccuracyPredictor(nn.Module, Configurable):
    """MLP from rows ``(B, N, C)`` to a predicted accuracy ``(B,)`` in [0, 1].

    Args:
        rows: Rows per model.
        width: Row width.
        hidden: Hidden width of the two hidden layers.
    """

    def __init__(self, *, rows: int, width: int, hidden: int = 256) -> None:
        super().__init__()
        self.rows, self.width, self.hidden = rows, width, hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(rows * width, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.rows, self.width):
            raise ValueError(f"expected rows of shape (B, {self.rows}, {self.width}), got {tuple(x.shape)}")
        return torch.sigmoid(self.net(x)).squeeze(1)  # (B,)


def fit_predictor(
    predictor: AccuracyPredictor,
    rows: torch.Tensor,
    accuracy: torch.Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Regress ``accuracy (M,)`` on ``rows (M, N, C)`` with MSE; then freeze the predictor.

    The predictor's device is used; ``rows`` and ``accuracy`` are moved there.

    Returns:
        The loss of every step.
    """
    if rows.shape[0] != accuracy.shape[0] or accuracy.ndim != 1:
        raise ValueError(f"expected one accuracy per model: rows {tuple(rows.shape)}, accuracy {tuple(accuracy.shape)}")
    if not ((accuracy >= 0) & (accuracy <= 1)).all():
        raise ValueError("accuracies must lie in [0, 1]")
    device = next(predictor.parameters()).device
    rows, accuracy = rows.to(device), accuracy.to(device)
    predictor.train()
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = randint(rows.shape[0], (min(batch_size, rows.shape[0]),), generator=generator, device=device)
        loss = (predictor(rows[idx]) - accuracy[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())  # one device-to-host copy at the end, not one per step
    predictor.eval().requires_grad_(False)
    return torch.stack(losses).tolist() if losses else []
