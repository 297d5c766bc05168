"""Pipeline builders: each paper's generator, wired from a spec or a zoo, with its defaults.

- `d2nwg`: D2NWG's weight VAE + conditional latent DDPM (task, dataset or your own condition).
- `cond_pdiff`: Cond P-Diff's layer-wise VAE + text-conditioned latent DDPM (LoRA weights).
- `igpg`: IGPG's VQ tokens + GPT prior, conditioned on task text and architecture; one
  architecture or a family.
- `chunkwise`: D2NWG chunk by chunk for large models (a `paramgen.chunkwise.ChunkwiseGenerator`:
  a chunk VAE + a latent DDPM conditioned on chunk positions), sampled straight into a
  safetensors file.

Each builder takes a source (a `paramgen.ParamSpec`, a `paramgen.zoo.Zoo` or a sequence of
state dicts), a ``condition``, a ``seed`` for the components' initialization (the global
random state is neither read nor changed) and keyword options with the paper's defaults;
the wiring between components (rows and widths, latent shapes, condition sizes, vocabulary
and sequence lengths) is inferred. An unknown option is a `TypeError` that lists the valid
ones. Each module states its paper's training defaults once, as ``FIT_DEFAULTS`` (the
`paramgen.training.FitConfig` fields that differ from FitConfig's own), and has
``fit_config(**overrides)``, those defaults as a FitConfig.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import PIPELINES, d2nwg
    >>> sorted(PIPELINES)
    ['chunkwise', 'cond-pdiff', 'd2nwg', 'igpg']
    >>> zoo = [{"w": torch.randn(4, 3), "b": torch.randn(4)} for _ in range(6)]
    >>> gen = d2nwg(zoo, tasks=["a", "b"], seed=0, latent_length=8, hidden_channels=16, base_channels=16, timesteps=50)
    >>> from paramgen import fit
    >>> _ = fit(gen, zoo, ["a", "b"] * 3, tokenizer_steps=2, prior_steps=2, batch_size=3, progress=False)
    >>> len(gen.sample(["a"], 2, generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5))
    2
"""

from collections.abc import Callable
from typing import Any

from paramgen.pipelines import chunkwise as _chunkwise_module
from paramgen.pipelines import cond_pdiff as _cond_pdiff_module
from paramgen.pipelines import d2nwg as _d2nwg_module
from paramgen.pipelines import igpg as _igpg_module
from paramgen.pipelines.chunkwise import chunkwise
from paramgen.pipelines.cond_pdiff import cond_pdiff
from paramgen.pipelines.d2nwg import d2nwg
from paramgen.pipelines.igpg import igpg

__all__ = ["FIT_CONFIGS", "PIPELINES", "chunkwise", "cond_pdiff", "d2nwg", "igpg"]

#: The builders by name (the command line's ``pipeline = "..."``).
PIPELINES: dict[str, Callable[..., Any]] = {"d2nwg": d2nwg, "cond-pdiff": cond_pdiff, "igpg": igpg, "chunkwise": chunkwise}

#: Each builder's ``fit_config`` by the same names.
FIT_CONFIGS: dict[str, Callable[..., Any]] = {
    "d2nwg": _d2nwg_module.fit_config,
    "cond-pdiff": _cond_pdiff_module.fit_config,
    "igpg": _igpg_module.fit_config,
    "chunkwise": _chunkwise_module.fit_config,
}
