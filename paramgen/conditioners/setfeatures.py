"""Features of image sets grouped by class, computed once by a frozen extractor.

`set_features` turns ``(K, S, *image_shape)`` images into the ``(K, S, F)`` features that
`paramgen.conditioners.ImageSetConditioner` and `paramgen.conditioners.OrderedSetConditioner`
read; the extractors themselves live in `paramgen.conditioners.features`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["set_features"]


@torch.no_grad()
def set_features(
    extractor: nn.Module, images_by_class: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """Features of images grouped by class, computed once: ``(K, S, *image_shape) -> (K, S, F)``.

    The extractor runs in eval mode without gradients (its mode is restored afterwards),
    on the device of its parameters (the images are moved there); the features come
    back on the images' device.

    Args:
        extractor: Maps ``(N, *image_shape)`` to ``(N, F)`` (see `paramgen.conditioners.features`).
        images_by_class: ``K`` classes of ``S`` images each.
        batch_size: Images per extractor call.

    Returns:
        ``(K, S, F)`` features.

    Examples:
        >>> import torch
        >>> flat = torch.nn.Flatten()
        >>> set_features(flat, torch.zeros(3, 2, 1, 4, 4)).shape
        torch.Size([3, 2, 16])
    """
    if not isinstance(images_by_class, torch.Tensor) or images_by_class.dim() < 3:
        shape = tuple(images_by_class.shape) if isinstance(images_by_class, torch.Tensor) else type(images_by_class).__name__
        raise ValueError(f"set_features: expected images (K, S, *image_shape), got {shape}")
    if batch_size < 1:
        raise ValueError(f"set_features: expected batch_size >= 1, got {batch_size}")
    k, s = images_by_class.shape[:2]
    if k == 0 or s == 0:
        raise ValueError(f"set_features: expected at least one class and one image, got K={k}, S={s}")
    param = next(extractor.parameters(), None)
    device = images_by_class.device if param is None else param.device
    flat = images_by_class.reshape(k * s, *images_by_class.shape[2:])  # (K * S, *image_shape)
    was_training = extractor.training
    extractor.eval()
    try:
        feats = torch.cat([extractor(flat[i : i + batch_size].to(device)) for i in range(0, k * s, batch_size)])
    finally:
        extractor.train(was_training)
    if feats.dim() != 2 or feats.shape[0] != k * s:
        raise ValueError(f"set_features: expected the extractor to return ({k * s}, F), got {tuple(feats.shape)}")
    return feats.reshape(k, s, -1).to(images_by_class.device)  # (K, S, F)
