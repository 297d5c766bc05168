"""Greedy sequential refinement of selected layers (D2NWG, Algorithm 1).

For each selected layer in order: draw ``K`` candidates from that layer's generator, swap
each into the model, score it, and keep the best candidate only if it beats the current
score; otherwise keep what the layer had. Accepted layers stay in place for the next ones.

The refiner sees the model only through two caller-supplied callables: ``candidates``
(where weights come from, any paramgen generator) and ``score`` (a *validation* score,
higher is better). It never receives data, so it cannot see a test split unless the
caller's ``score`` reads one; the guard test in ``tests/selectors/test_greedy.py`` checks
that changing the test split leaves every choice unchanged.

Examples:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> target = torch.tensor([[1.0, -1.0]])
    >>> score = lambda m: 0.0 - float((m.weight - target).abs().sum())
    >>> draw = lambda layer, k, g: [torch.randn(1, 2, generator=g) for _ in range(k - 1)] + [target]
    >>> out = GreedyRefiner(candidates=draw, score=score, k=4).refine(net, ["weight"], generator=torch.Generator().manual_seed(0))
    >>> out.decisions[0].accepted, out.final_score
    (True, 0.0)
    >>> torch.equal(net.weight, target)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch
from torch import nn

__all__ = ["CandidateFn", "ScoreFn", "LayerDecision", "RefineResult", "GreedyRefiner"]

Candidate = torch.Tensor | Mapping[str, torch.Tensor]
#: ``(layer_name, k, generator) -> k candidates``: a tensor for the layer's tensor, or a
#: partial state dict (e.g. a layer's weight and bias, as `paramgen.Generator.sample` returns).
CandidateFn = Callable[[str, int, torch.Generator], Sequence[Candidate]]
#: ``model -> float``, higher is better; computed on validation data only.
ScoreFn = Callable[[nn.Module], float]


@attrs.frozen
class LayerDecision:
    """What the refiner did with one layer.

    Attributes:
        layer: The layer's name (as passed to `GreedyRefiner.refine`).
        base_score: Score of the model before this layer was tried.
        best_score: Best candidate's score (``-inf`` if every candidate scored NaN).
        best_index: Index of that candidate among the ``k`` drawn (``-1`` if none).
        accepted: Whether it beat ``base_score`` and was kept.
    """

    layer: str
    base_score: float
    best_score: float
    best_index: int
    accepted: bool


@attrs.frozen(eq=False)
class RefineResult:
    """What `GreedyRefiner.refine` returns.

    Attributes:
        state: The refined tensors of every tried layer (accepted or original), cloned:
            ``model.load_state_dict(state, strict=False)`` reproduces the result.
        decisions: One `LayerDecision` per layer, in order.
        initial_score: Score of the model before refinement.
        final_score: Score after (the last accepted candidate's, else ``initial_score``).
    """

    state: dict[str, torch.Tensor]
    decisions: tuple[LayerDecision, ...]
    initial_score: float
    final_score: float

    @property
    def accepted(self) -> tuple[str, ...]:
        """Names of the layers whose candidate was kept."""
        return tuple(d.layer for d in self.decisions if d.accepted)


def _check_k(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"k must be a positive integer, got {value!r}")


@attrs.frozen(kw_only=True)
class GreedyRefiner:
    """D2NWG's Algorithm 1 over caller-supplied candidates and validation score.

    Attributes:
        candidates: ``(layer_name, k, generator) -> list`` of ``k`` candidates, each a
            tensor shaped like the state-dict entry ``layer_name`` or a partial state
            dict (several tensors of the layer, e.g. weight and bias).
        score: ``model -> float`` on validation data, higher is better. A candidate
            scoring NaN is never kept.
        k: Candidates drawn per layer.

    Examples:
        >>> import torch
        >>> refiner = GreedyRefiner(candidates=lambda layer, k, g: [], score=lambda m: 0.0, k=2)
        >>> refiner.k
        2
    """

    candidates: CandidateFn
    score: ScoreFn
    k: int = attrs.field(default=8, validator=_check_k)

    def _score(self, model: nn.Module) -> float:
        value = float(self.score(model))
        return -math.inf if math.isnan(value) else value

    @torch.no_grad()
    def refine(self, model: nn.Module, layers: Sequence[str], *, generator: torch.Generator) -> RefineResult:
        """Refine ``layers`` of ``model`` in place, in the given order.

        Args:
            model: The model to refine; its state-dict tensors are overwritten in place.
            layers: State-dict names of the layers to try, in order (e.g. the names a
                `SpectrumSelector` selected, ranked).
            generator: Randomness for the candidate draws.

        Raises:
            KeyError: A layer or candidate tensor is not in the model's state dict.
            ValueError: A candidate has another shape, or ``candidates`` did not return
                ``k`` of them, or the initial score is NaN.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"expected a torch.Generator, got {type(generator).__name__}")
        state = model.state_dict(keep_vars=True)  # live tensors: copy_ writes into the model
        for layer in layers:
            if layer not in state:
                raise KeyError(f"layer {layer!r} is not in the model's state dict (e.g. {list(state)[:3]})")
        current = float(self.score(model))
        if math.isnan(current):
            raise ValueError("the initial model scores NaN; a score must be comparable")
        initial = current
        decisions = []
        touched: dict[str, None] = {}
        for layer in layers:
            drawn = list(self.candidates(layer, self.k, generator))
            if len(drawn) != self.k:
                raise ValueError(f"candidates({layer!r}, k={self.k}) returned {len(drawn)} candidates, expected {self.k}")
            patches = [self._patch(layer, c, state) for c in drawn]
            names = list(dict.fromkeys(n for p in patches for n in p))
            original = {n: state[n].detach().clone() for n in names}
            best, best_index = -math.inf, -1
            for i, patch in enumerate(patches):
                self._apply(state, patch)
                value = self._score(model)
                self._apply(state, original)
                if value > best:  # strict: the first of equal candidates wins
                    best, best_index = value, i
            accepted = best > current
            decisions.append(LayerDecision(layer, current, best, best_index, accepted))
            if accepted:
                self._apply(state, patches[best_index])
                current = best
            touched.update(dict.fromkeys(names))
        refined = {n: state[n].detach().clone() for n in touched}
        return RefineResult(state=refined, decisions=tuple(decisions), initial_score=initial, final_score=current)

    @staticmethod
    def _patch(layer: str, candidate: Candidate, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        patch = dict(candidate) if isinstance(candidate, Mapping) else {layer: candidate}
        for name, t in patch.items():
            if name not in state:
                raise KeyError(f"candidate tensor {name!r} (for layer {layer!r}) is not in the model's state dict")
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(state[name].shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"candidate for {name!r}: expected shape {tuple(state[name].shape)}, got {got}")
        return patch

    @staticmethod
    def _apply(state: Mapping[str, torch.Tensor], patch: Mapping[str, torch.Tensor]) -> None:
        for name, t in patch.items():
            state[name].data.copy_(t)
