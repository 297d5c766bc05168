"""Generative priors over latents ``(B, C, T)`` or tokens: latent diffusion, a GPT over
VQ tokens and a KDE baseline.

- `DiffusionPrior`: D2NWG's latent DDPM, a `UNet1D` denoiser composed with a
  `LinearSchedule`; DDIM (default, `DEFAULT_DDIM_STEPS` = 50 steps) or DDPM sampling,
  EMA weights, classifier-free guidance.
- `GPTPrior`: IGPG's causal transformer over token sequences, conditioned by a prefix.
- `KDEPrior`: Schürholt et al.'s S_KDE baseline, a Gaussian KDE per condition.

All three implement `paramgen.interfaces.Prior` and save as ``config()`` (JSON, the constructor's
arguments as `paramgen.registry.Configurable` recorded them) plus ``state_dict()``
(safetensors).

Examples:
    >>> import torch
    >>> from paramgen.interfaces import Prior
    >>> isinstance(KDEPrior(), Prior), isinstance(DiffusionPrior(shape=(1, 4), timesteps=10, base_channels=8), Prior)
    (True, True)
"""

from paramgen.priors.ddpm import DEFAULT_DDIM_STEPS, DiffusionPrior
from paramgen.priors.gpt import GPTPrior
from paramgen.priors.kde import KDEPrior
from paramgen.priors.schedule import LinearSchedule, ddim_sample, ddpm_sample
from paramgen.priors.unet1d import UNet1D

__all__ = ["DEFAULT_DDIM_STEPS", "DiffusionPrior", "GPTPrior", "KDEPrior", "LinearSchedule", "UNet1D", "ddim_sample", "ddpm_sample"]
