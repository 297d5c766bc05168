"""Choosing which tensors of a large model to generate, and refining them layer by layer.

- `SpectrumSelector` (``spectrum.py``): rank weight matrices of each layer type by the
  signal-to-noise ratio of their singular values against a Marchenko-Pastur bound and keep
  the top fraction (Spectrum, Hartford et al. 2024; D2NWG sec. 3.5).
- `GreedyRefiner` (``greedy.py``): D2NWG's Algorithm 1, swapping generated candidates
  into the selected layers one at a time and keeping one only if the validation score improves.

Examples:
    >>> import torch
    >>> from paramgen.interfaces import Selector
    >>> isinstance(SpectrumSelector(), Selector)
    True
"""

from paramgen.selectors.greedy import CandidateFn, GreedyRefiner, LayerDecision, RefineResult, ScoreFn
from paramgen.selectors.spectrum import LayerSNR, SNRMode, SpectrumSelector, layer_snr, layer_type, rank_by_type

__all__ = [
    "SpectrumSelector",
    "LayerSNR",
    "SNRMode",
    "layer_snr",
    "layer_type",
    "rank_by_type",
    "GreedyRefiner",
    "LayerDecision",
    "RefineResult",
    "CandidateFn",
    "ScoreFn",
]
