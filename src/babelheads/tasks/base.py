"""What a task is: samples (token ids, named spans, the expected output) and a scorer for an output.

The runner knows nothing else about a task. Adding a task adds a module here, never a branch in the
runner.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Scored:
    """A sequence and the first position whose token is scored (1 scores every token after the first;
    a QA prompt's length scores only the answer)."""

    input_ids: tuple[int, ...]
    scored_from: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.scored_from < len(self.input_ids):
            raise ValueError(
                f"scored_from must lie in [1, {len(self.input_ids)}) for a sequence of "
                f"{len(self.input_ids)} tokens. Got {self.scored_from}."
            )


@dataclass(frozen=True)
class Stop:
    """multiline : line breaks do not end the answer (EOS and end-of-turn tokens always do).
    texts : the answer ends once its text contains one of these (e.g. the next few-shot 'Question:')."""

    multiline: bool = False
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One prompt to decode.

    sample_id : a file name that is safe on every OS (see :func:`safe_id`).
    language : the label results are grouped by (the samples table's 'language'): a language ('en')
        or a variant of one ('en>zh' retrieval + translation, 'en/cot' a prompt style).
    spans : named half-open token spans [start, end) into ``input_ids``, e.g. 'needle' and 'answer'.
    meta : further columns for the run's samples table (length, depth, needle id, ...).
    """

    sample_id: str
    language: str
    input_ids: tuple[int, ...]
    expected: str
    spans: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    meta: Mapping[str, object] = field(default_factory=dict)
    text: str = ""
    """The prompt as text, for inspection (not stored in the tables)."""
    max_new_tokens: int | None = None
    """A limit of the sample's own (a reasoning chain needs more steps than a short answer)."""
    stop: Stop = field(default_factory=Stop)
    """When its answer ends: a short answer at its line break, a reasoning chain at end of turn or
    at a text that opens the next example (the task knows which)."""


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be built; the run records it with its reason and goes on."""

    sample_id: str
    language: str
    reason: str
    meta: Mapping[str, object] = field(default_factory=dict)

    def row(self) -> dict[str, object]:
        """Its row of a run's samples table: recorded with the reason, counted nowhere."""
        return {
            "sample_id": self.sample_id,
            "language": self.language,
            "status": "skipped",
            "reason": self.reason,
        }


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """The token ids of ``text`` as the user's turn of the model's chat template (its own special
    tokens, so none added again), or as plain text with the tokenizer's usual special tokens."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def safe_id(text: str) -> str:
    """``text`` as a portable file name: characters outside [A-Za-z0-9._-] become '_' and, since that
    could make two ids equal, a short hash of the original is appended."""
    cleaned = _UNSAFE.sub("_", text)
    if cleaned == text:
        return text
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def content_digest(data: object) -> str:
    """A short hash of JSON-able content (texts, parsed needles, language settings)."""
    encoded = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
