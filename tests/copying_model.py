"""A model that really copies, for fast tests whose scores must come out non-zero.

It is a stub in its weights only: it attends through the registered attention function (so the real
instrument records it and the real gates mask it), with keys that are one-hot positions and values
that are one-hot tokens. Given a script {prompt ids: (answer span, needle span)}, while decoding:

- head 1-0 (the retriever) puts its query on the answer's t-th position at step t, and the model emits
  the token found there; after the answer it looks at position 0 and the model emits EOS;
- head 1-1 looks at the current position (the model repeats the current token when 1-0 is masked);
- heads 0-0 and 0-1 look at position 0 (attention sinks).

A prompt marked ``misread`` has its retriever read from the needle's start instead of the answer, so
the answer is wrong and no head copies: the test of ``score_on``. Layer 1's two query heads share one
KV head, so KV-head scores are the max over a group of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from transformers import LlamaConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from babelheads.models import LoadedModel, describe_heads

DIM = 2048
SHARP = 40.0
BOS, EOS = 0, 1


@dataclass(frozen=True)
class Script:
    answer: tuple[int, int]
    needle: tuple[int, int]
    misread: bool = False


class _Attention(torch.nn.Module):
    def __init__(self, model: CopyingModel, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_causal = True
        self._model = [model]  # not a submodule: no cycle in named_modules

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache, padding) -> torch.Tensor:
        model = self._model[0]
        batch, length = ids.shape
        keys = torch.nn.functional.one_hot(positions, DIM).float().view(batch, 1, length, DIM)
        values = torch.nn.functional.one_hot(ids, DIM).float().view(batch, 1, length, DIM)
        keys, values = cache.update(keys, values, self.layer_idx)
        queries = torch.zeros(batch, 2, length, DIM)
        mask = None
        if length == 1:  # decoding: the scripted queries, each row's from its own history in the cache
            mask = None if padding is None else padding[:, -keys.shape[2] :].bool().view(batch, 1, 1, -1)
            for row in range(batch):
                real = keys[row, 0].sum(-1) > 0  # left padding holds zero keys
                order = keys[row, 0][real].argmax(-1).argsort()
                history = values[row, 0][real].argmax(-1)[order].tolist()
                targets = model.targets(self.layer_idx, history, int(positions[row, -1]))
                for head, target in enumerate(targets):
                    queries[row, head, 0, target] = SHARP
        attend = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
        output, _ = attend(self, queries, keys, values, mask, scaling=1.0, position_ids=positions)
        return output  # (batch, q_len, heads, DIM)


class CopyingModel(torch.nn.Module):
    def __init__(self, vocab_size: int, script: dict[tuple[int, ...], Script]):
        super().__init__()
        self.config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=2 * DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=DIM,
            max_position_embeddings=DIM,
        )
        self.config._attn_implementation = "babelheads"
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.script = script
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.layers = torch.nn.ModuleList([_decoder_layer(_Attention(self, layer)) for layer in range(2)])
        self.lm_head = _Head(vocab_size)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def set_attn_implementation(self, name: str) -> None:
        self.config._attn_implementation = name

    def targets(self, layer: int, history: list[int], position: int) -> tuple[int, int]:
        prompt = next((p for p in self.script if tuple(history[: len(p)]) == p), None)
        if layer == 0 or prompt is None:
            return 0, 0
        script = self.script[prompt]
        step = position - (len(prompt) - 1)
        start = (script.needle if script.misread else script.answer)[0]
        length = script.answer[1] - script.answer[0]
        retriever = start + step if step < length else 0
        return retriever, position

    def forward(self, input_ids, past_key_values=None, position_ids=None, attention_mask=None, **_):
        for layer in self.layers:
            output = layer.self_attn(input_ids, position_ids, past_key_values, attention_mask)
        last = output[:, -1:].flatten(2)  # layer 1's heads at the last position: (batch, 1, heads x DIM)
        return SimpleNamespace(logits=self.lm_head(last))


class _Head(torch.nn.Module):
    """The LM head: the retriever's token weighs 10, the current token 1 (its input is the final hidden
    state, as in a transformers model)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        heads = hidden.view(*hidden.shape[:-1], 2, DIM)
        logits = 10.0 * heads[..., 0, : self.vocab_size] + 1.0 * heads[..., 1, : self.vocab_size]
        logits[..., EOS] = logits[..., BOS]
        logits[..., BOS] = -1e9
        return logits


def _decoder_layer(attention: _Attention) -> torch.nn.Module:
    """A decoder layer holding its attention as ``self_attn``, as transformers' layers do."""
    layer = torch.nn.Module()
    layer.self_attn = attention
    return layer


def copying_model(tokenizer, script: dict[tuple[int, ...], Script]) -> LoadedModel:
    import babelheads.probe  # noqa: F401  registers the attention function

    model = CopyingModel(len(tokenizer), script).eval()
    layout = describe_heads(model)
    return LoadedModel(model, tokenizer, layout, {"model": "copying-stub"}, is_chat=False)
