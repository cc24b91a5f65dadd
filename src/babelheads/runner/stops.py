"""When greedy decoding ends: EOS and end-of-turn tokens, and line breaks once the answer has begun."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from babelheads.models import LoadedModel
from babelheads.tasks.base import Stop

SHORT_ANSWER = Stop()
TEXT_WINDOW = 16
"""Tokens decoded to look for a stop text: longer than any stop text's tokens."""

END_OF_TURN = (
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<eos>",
    "</s>",
)
"""Special tokens that end a turn in the common chat formats; a model stops on those it has."""


@dataclass(frozen=True)
class StopRule:
    """When greedy decoding ends.

    stop_ids : end at once (EOS ids of the generation config and tokenizer, end-of-turn tokens).
    blank_newlines : tokens of whitespace with a line break; they end the answer once it has begun, and
        are skipped before it (base models often open with a blank line).
    text_newlines : tokens with text and a line break ('42\\n'); the answer ends with them.
    """

    stop_ids: frozenset[int] = frozenset()
    blank_newlines: frozenset[int] = frozenset()
    text_newlines: frozenset[int] = frozenset()
    decode: Callable[[Sequence[int]], str] | None = field(default=None, compare=False)
    """The tokenizer's decode, for samples that stop at a text."""

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> StopRule:
        tokenizer = loaded.tokenizer
        stops: set[int] = set()
        eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        stops.update(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        stops.update(vocab[name] for name in END_OF_TURN if name in vocab)
        blank, text = set(), set()
        for token, index in vocab.items():
            if "\n" in token or "Ċ" in token or token == "<0x0A>":
                decoded = tokenizer.decode([index])
                if "\n" not in decoded:
                    continue
                (blank if not decoded.strip() else text).add(index)
        return cls(frozenset(stops), frozenset(blank - stops), frozenset(text - stops), tokenizer.decode)

    def ends(
        self, token: int, started: bool, stop: Stop | None = None, generated: Sequence[int] = ()
    ) -> tuple[bool, bool]:
        """(stop now, answer started) after emitting ``token`` (the last of ``generated``); ``stop`` :
        the sample's own (default: a short answer, ended by its line break)."""
        stop = stop or SHORT_ANSWER
        if token in self.stop_ids:
            return True, True
        if stop.texts and self.decode is not None and generated:
            tail = self.decode(list(generated[-TEXT_WINDOW:]))
            if any(text in tail for text in stop.texts):
                return True, True
        if stop.multiline:
            return False, True
        if token in self.text_newlines:
            return True, True
        if token in self.blank_newlines:
            return started, started
        return False, True
