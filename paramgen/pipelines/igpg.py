"""IGPG (2025): VQ tokens of weights and an autoregressive GPT prior, conditioned on task and architecture.

`igpg` composes a `paramgen.tokenizers.GumbelVQTokenizer` (rows of globally scaled
weights to ``tokens_per_chunk`` discrete codes each) and a `paramgen.priors.GPTPrior` over
the token sequence, conditioned on a text embedding of the task description concatenated
with one of the architecture (IGPG's dataset + architecture condition). It takes one
architecture or a family of them (one generator for all, `paramgen.FamilyVectorizer`).
The codebook size becomes the GPT's vocabulary, the tokenizer's sequence length its length,
the conditioner's ``dim`` its condition size.

Examples:
    >>> import torch
    >>> from paramgen.pipelines import igpg
    >>> sd = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
    >>> gen = igpg([sd], condition=None, codebook_size=16, tokens_per_chunk=4, hidden=32, d_model=16, layers=1)
    >>> gen.prior.vocab_size, gen.prior.length
    (16, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from paramgen.generator import Generator
from paramgen.normalize import GlobalScale, Normalizer
from paramgen.pipelines._common import Source, conditioner_dim, fit_config_for, local_seed, normalizer_of, read_family, strict_options, task_names

__all__ = ["FIT_DEFAULTS", "fit_config", "igpg"]

#: Training defaults of ``benchmarks.cross_arch``'s default size where they differ from
#: `paramgen.training.FitConfig`'s: 4000 VQ steps at learning rate 3e-4, GPT learning rate
#: 1e-3, batches of 32 (FitConfig's 5000 prior steps are the harness's too).
FIT_DEFAULTS: dict[str, Any] = dict(tokenizer_steps=4000, batch_size=32, tokenizer_lr=3e-4, prior_lr=1e-3)


@strict_options
def igpg(
    source: Source,
    *,
    condition: Literal["text+arch", "task"] | Any | None = "text+arch",
    tasks: Sequence[str] | None = None,
    seed: int | None = 0,
    chunk_size: int | None = None,
    codebook_size: int = 512,
    tokens_per_chunk: int = 64,
    code_dim: int = 32,
    hidden: int = 512,
    anneal: Literal["exponential", "cyclical"] = "exponential",
    anneal_steps: int = 2000,
    hard: bool = False,
    cond_dim: int = 64,
    context: int | None = 64,
    d_model: int = 128,
    layers: int = 3,
    heads: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    normalizer: str | Normalizer | None = "fan-in",
) -> Generator:
    """An IGPG generator (VQ tokenizer + GPT prior) for one architecture or a family.

    The defaults are ``benchmarks.cross_arch``'s default size (``--components vq-gpt``):

    ================  =============  ==============================================================
    option            default        source
    ================  =============  ==============================================================
    chunk_size        None           harness: one row per model (``--layout model``; 32 layer-wise)
    codebook_size     512            harness (quick: 256)
    tokens_per_chunk  64             harness
    code_dim          32             harness
    hidden            512            harness
    anneal            "exponential"  harness (Gumbel temperature annealing)
    anneal_steps      2000           harness: half the VQ steps
    cond_dim          64             only for ``condition="task"``
    context           64             harness: the GPT's window (sliding over longer sequences)
    d_model           128            harness (quick: 96)
    layers            3              harness (quick: 2)
    heads             4              harness
    normalizer        "fan-in"       harness: `paramgen.GlobalScale` with log running variances
                                     and fan-in scaling (one scale across a family)
    ================  =============  ==============================================================

    Components are built in the order tokenizer, prior, conditioner, under ``seed``.

    Args:
        source: A `paramgen.ParamSpec`, a mapping of architecture keys to specs (a
            family; fit with ``archs=`` naming each model's key), a `paramgen.zoo.Zoo`
            (several architectures: a family keyed by spec id), or a sequence of state
            dicts (the spec of the first).
        condition: ``"text+arch"``: a MiniLM embedding of the task description
            concatenated with one of the architecture description (raw conditions are
            ``(task_description, arch_description)`` pairs; needs
            ``pip install 'paramgen[text]'``); ``"task"``: an
            `paramgen.conditioners.IndexConditioner` of ``cond_dim`` over ``tasks``;
            ``None``: unconditional; or a ready conditioner.
        tasks: Task names for ``condition="task"`` (default: the zoo's).
        seed: Seeds the components' initialization on a local random state (the global
            one is neither read nor changed); ``None`` draws from the global generator.
        chunk_size: ``None``: one row per model; an int: layer-wise rows of that width.
        codebook_size: VQ codebook size, the GPT's vocabulary.
        tokens_per_chunk: Tokens per row.
        code_dim: Size of a code vector.
        hidden: VQ encoder/decoder width.
        anneal: Gumbel temperature schedule.
        anneal_steps: Steps of the annealing schedule.
        hard: Straight-through hard Gumbel samples while training.
        cond_dim: Condition size of ``condition="task"``.
        context: GPT window in tokens (``None``: the whole sequence).
        d_model: GPT width.
        layers: GPT blocks.
        heads: GPT attention heads.
        temperature: Default sampling temperature.
        top_k: Default top-k filter at sampling (``None``: none).
        normalizer: ``"fan-in"`` (the harness's `paramgen.GlobalScale`), ``"global"``,
            ``"per-layer"`` (one architecture only), ``"per-task"``, a ready normalizer,
            or ``None``.

    Returns:
        An unfitted `paramgen.Generator`.

    Raises:
        TypeError: An unknown option (the message lists the valid ones) or a source of
            the wrong kind.
        ValueError: ``condition="task"`` without task names, or an option out of range.
        ImportError: ``condition="text+arch"`` without sentence-transformers.
    """
    from paramgen.priors import GPTPrior
    from paramgen.tokenizers import GumbelVQTokenizer
    from paramgen.vectorize import FamilyVectorizer, LayerVectorizer, ModelVectorizer

    family, spec, zoo_tasks = read_family(source)
    vectorizer: Any
    if family is not None:
        vectorizer = FamilyVectorizer.modelwise(family) if chunk_size is None else FamilyVectorizer.chunked(family, chunk_size=chunk_size, layerwise=True)
    else:
        assert spec is not None
        vectorizer = ModelVectorizer(spec) if chunk_size is None else LayerVectorizer(spec, chunk_size=chunk_size)
    conditioner: Any = None
    if condition == "text+arch":
        from paramgen.conditioners import ArchitectureConditioner, ConcatConditioner, TextConditioner

        conditioner = ConcatConditioner(TextConditioner(), ArchitectureConditioner())  # no trainable weights: nothing drawn
        prior_cond = conditioner.dim
    elif condition == "task":
        names = task_names(tasks, zoo_tasks, "igpg")
        prior_cond = cond_dim
    elif condition is None:
        prior_cond = 0
    elif isinstance(condition, str):
        raise ValueError(f"igpg: condition must be 'text+arch', 'task', None or a Conditioner, got {condition!r}")
    else:
        conditioner = condition
        prior_cond = conditioner_dim(condition, "igpg")
    with local_seed(seed):
        tok = GumbelVQTokenizer(
            rows=vectorizer.rows, width=vectorizer.width, codebook_size=codebook_size, tokens_per_chunk=tokens_per_chunk,
            code_dim=code_dim, hidden=hidden, anneal=anneal, anneal_steps=anneal_steps, hard=hard,
        )  # fmt: skip
        prior = GPTPrior(
            vocab_size=codebook_size, length=tok.tokens_shape[0], cond_dim=prior_cond, context=context, d_model=d_model,
            layers=layers, heads=heads, temperature=temperature, top_k=top_k,
        )  # fmt: skip
        if condition == "task":
            from paramgen.conditioners import IndexConditioner

            conditioner = IndexConditioner(names, dim=cond_dim)
        if normalizer == "fan-in":
            norm: Normalizer | None = GlobalScale(log=("*running_var",), fan_in=True)
        else:
            norm = normalizer_of(normalizer, spec, "igpg")
    return Generator(vectorizer=vectorizer, tokenizer=tok, prior=prior, conditioner=conditioner, normalizer=norm)


#: ``fit_config(**overrides)``: `FIT_DEFAULTS` as a `paramgen.training.FitConfig`.
fit_config = fit_config_for(FIT_DEFAULTS, "IGPG", __name__)
