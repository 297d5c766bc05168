"""Conditioners: raw conditions (keys, image sets, texts) -> vectors ``(B, dim)``.

Every conditioner is an ``nn.Module`` with ``dim``, ``forward(raw) -> (B, dim)``,
``config()`` (JSON-serializable constructor arguments) and ``from_config(config)``, so a
generator saves it as config + safetensors and rebuilds it; the built-ins get both from
`paramgen.registry.Configurable`, which records the arguments they were built with.

- `IndexConditioner`, `OneHotConditioner`: one vector per dataset, (dataset,
  architecture) pair or chunk index.
- `ImageSetConditioner` (`paramgen.conditioners.imageset`): D2NWG's dataset encoder over
  image features grouped by class, built from the Set Transformer blocks of
  `paramgen.conditioners.settransformer`; `set_features`
  (`paramgen.conditioners.setfeatures`) computes the features once with an extractor from
  `paramgen.conditioners.features`.
- `align_to_latents` (`paramgen.conditioners.align`): D2NWG's contrastive pre-training
  of any conditioner against weight latents, with `LatentProjection` and
  `retrieval_accuracy`.
- `OrderedSetConditioner`: image features of classes in a fixed order, for generating
  heads whose output rows must follow the condition's classes.
- `TextConditioner`: a frozen MiniLM embedding of a task description
  (`describe_condition` writes Cond P-Diff's description + examples).
- `TextOrVectorConditioner` (`paramgen.conditioners.text_or_vector`): a text, or a
  condition vector passed through (how Cond P-Diff interpolates two task conditions).

Examples:
    >>> import torch
    >>> from paramgen.interfaces import Conditioner
    >>> cond = IndexConditioner(["mnist", "fashion_mnist"], dim=8)
    >>> isinstance(cond, Conditioner), cond(["mnist"]).shape
    (True, torch.Size([1, 8]))
"""

from paramgen.conditioners.align import LatentProjection, align_to_latents, retrieval_accuracy
from paramgen.conditioners.architecture import ArchitectureConditioner, ConcatConditioner, architecture_text
from paramgen.conditioners.features import (
    CLIPVisionFeatures,
    ModuleFeatures,
    mobilenet_features,
    open_clip_features,
)
from paramgen.conditioners.imageset import ImageSetConditioner
from paramgen.conditioners.index import IndexConditioner, OneHotConditioner
from paramgen.conditioners.ordered import OrderedSetConditioner
from paramgen.conditioners.setfeatures import set_features
from paramgen.conditioners.settransformer import ISAB, MAB, PMA, SAB, SetTransformer
from paramgen.conditioners.text import TextConditioner, describe_condition
from paramgen.conditioners.text_or_vector import TextOrVectorConditioner

__all__ = [
    "ArchitectureConditioner",
    "ConcatConditioner",
    "architecture_text",
    "IndexConditioner",
    "OneHotConditioner",
    "ImageSetConditioner",
    "OrderedSetConditioner",
    "SetTransformer",
    "MAB",
    "SAB",
    "ISAB",
    "PMA",
    "LatentProjection",
    "align_to_latents",
    "retrieval_accuracy",
    "set_features",
    "ModuleFeatures",
    "CLIPVisionFeatures",
    "open_clip_features",
    "mobilenet_features",
    "TextConditioner",
    "describe_condition",
    "TextOrVectorConditioner",
]
