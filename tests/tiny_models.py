"""Tiny random-weight decoder models, one per supported architecture, built from configs."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

VOCAB = 512
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def tiny_config(kind: str, vocab_size: int = VOCAB):
    common = {**COMMON, "vocab_size": vocab_size}
    if kind == "llama":
        return LlamaConfig(**common, num_key_value_heads=2)
    if kind == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2)
    if kind == "mistral":
        return MistralConfig(**common, num_key_value_heads=1, sliding_window=16)
    if kind == "phi3":
        return Phi3Config(**common, num_key_value_heads=4, pad_token_id=0)
    if kind == "gemma3":
        return Gemma3TextConfig(
            **{**common, "num_hidden_layers": 4},
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16,
        )
    if kind == "gemma2":
        # Logit soft-capping: a term sdpa refuses, so the instrument computes this attention exactly.
        return Gemma2Config(
            **common,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            attn_logit_softcapping=5.0,
            query_pre_attn_scalar=16,
        )
    raise ValueError(kind)


ARCHITECTURES = ["llama", "qwen2", "mistral", "phi3", "gemma3", "gemma2"]
REFERENCE_ATTENTION = {"gemma2": "eager"}
"""The attention a plain model uses for reference: sdpa, except where sdpa cannot compute the model."""


def reference_attention(kind: str) -> str:
    return REFERENCE_ATTENTION.get(kind, "sdpa")


def tiny_model(kind: str, attn_implementation: str = "babelheads", seed: int = 0, vocab_size: int = VOCAB):
    import babelheads.probe  # noqa: F401  registers the attention function

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(kind, vocab_size), attn_implementation=attn_implementation, dtype=torch.float32
    )
    # Random init gives near-uniform attention; sharper weights give clear, tie-free peaks.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                parameter.mul_(6.0)
    return model.eval()


def tiny_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE trained on the built-in corpora: real offsets, real multilingual text, fast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from babelheads.data.corpora import load_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([load_corpus("builtin", code, 0) for code in ("en", "de", "zh")], trainer)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)]),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_model(directory, kind: str = "llama", tokenizer=None, seed: int = 0):
    """Write a tiny random model and its tokenizer as a local model directory (the hub code path)."""
    tokenizer = tokenizer or tiny_tokenizer()
    model = tiny_model(kind, vocab_size=len(tokenizer), seed=seed)
    model.config.bos_token_id, model.config.eos_token_id = 0, 1
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
