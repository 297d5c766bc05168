"""`paramgen.fit`: fit a generator with `FitConfig` fields as keywords, seeded by a ``torch.Generator``.

A shortcut above the engine, `paramgen.training.fit`, for scripts and notebooks: the
keywords are `paramgen.training.FitConfig` fields, passed to it as they are (the defaults
are FitConfig's own), and ``FitConfig.seed`` is drawn from ``generator`` (torch's global
generator when it is ``None``), so the caller owns the randomness the usual PyTorch way.

Examples:
    >>> import torch, paramgen
    >>> from paramgen.tokenizers import IdentityTokenizer
    >>> from paramgen.priors import KDEPrior
    >>> vec = paramgen.ModelVectorizer(paramgen.ParamSpec.from_module(torch.nn.Linear(4, 2)))
    >>> gen = paramgen.Generator(vectorizer=vec, tokenizer=IdentityTokenizer(rows=1, width=10), prior=KDEPrior())
    >>> gen = paramgen.fit(gen, torch.randn(32, 10), progress=False, generator=torch.Generator().manual_seed(0))
    >>> gen.fitted
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import nn

from paramgen.generator import Generator
from paramgen.tracking import Logger
from paramgen.training import Behaviour, FitConfig
from paramgen.training import fit as fit_with_config

__all__ = ["fit"]


def fit(
    gen: Generator,
    data: Any,
    /,
    conds: Sequence[Any] | None = None,
    *,
    generator: torch.Generator | None = None,
    tasks: Sequence[str] | None = None,
    archs: Sequence[str] | None = None,
    predictor: nn.Module | None = None,
    behaviour: Behaviour | None = None,
    tracker: Logger | None = None,
    **config: Any,
) -> Generator:
    """Fit ``gen`` on ``data``: `paramgen.training.fit` with ``FitConfig(seed=..., **config)``.

    Args:
        gen: The generator to fit.
        data: The zoo, in any form `paramgen.training.fit` takes.
        conds: One raw condition per model, for the conditioner.
        generator: Seeds all randomness of fitting: ``FitConfig.seed`` is
            ``int(torch.randint(0, 2**62, (1,), generator=generator))``.
        tasks: Task name per model (a per-task normalizer; contrastive groups).
        archs: For a family: the architecture key of each model.
        predictor: Frozen accuracy predictor for the predictor-guided VAE loss.
        behaviour: A behavioural loss for the tokenizer, ``behaviour(decoded, batch)``,
            weighted by ``behaviour_weight`` (see `paramgen.training.fit`).
        tracker: Receives losses every ``log_every`` steps.
        **config: `paramgen.training.FitConfig` fields other than ``seed``.

    Returns:
        The fitted ``gen``.

    Raises:
        TypeError: A keyword that is not a FitConfig field, or ``seed`` (it comes from
            ``generator``).
    """
    fields = {f.name for f in attrs.fields(FitConfig)} - {"seed"}
    if unknown := sorted(set(config) - fields):
        hint = " (the seed is drawn from generator=: pass a seeded torch.Generator)" if "seed" in unknown else ""
        raise TypeError(f"paramgen.fit got {', '.join(map(repr, unknown))}, which {'is' if len(unknown) == 1 else 'are'} not a FitConfig field it takes{hint}; fields: {sorted(fields)}")
    gen.check_fittable()  # before the seed is drawn: a refused fit leaves the generator's stream as it was
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return fit_with_config(gen, data, conds, config=FitConfig(seed=seed, **config), tasks=tasks, archs=archs, predictor=predictor, behaviour=behaviour, tracker=tracker)
