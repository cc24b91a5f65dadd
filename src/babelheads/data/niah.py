"""Needle-in-a-haystack samples: a haystack cut to a token length, a needle at a sentence boundary
at a given depth, a prompt, and the token spans of needle and answer found from character offsets."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from babelheads.data.languages import Language
from babelheads.data.needles import Needle
from babelheads.errors import TaskError


@dataclass(frozen=True)
class NiahCell:
    """One point of the grid: a prompt length in tokens, a depth in [0, 1], a needle.

    For retrieval + translation, the haystack, needle and question are in ``language`` and the answer
    is asked for in ``answer_language``: ``instruction`` (in that language) follows the question and
    ``expected`` is the needle's answer in that language.
    """

    language: str
    length: int
    depth: float
    needle: Needle
    answer_language: str | None = None
    expected: str | None = None
    instruction: str = ""

    @property
    def condition(self) -> str:
        """'en' for plain retrieval, 'en>zh' for retrieval in English answered in Chinese."""
        return self.language if self.answer_language is None else f"{self.language}>{self.answer_language}"

    @property
    def expected_answer(self) -> str:
        return self.needle.answer if self.expected is None else self.expected

    @property
    def sample_id(self) -> str:
        return f"{self.condition}-L{self.length}-D{self.depth:.3f}-{self.needle.id}"


@dataclass(frozen=True)
class NiahSample:
    """A built prompt. Token spans are half-open [start, end) into ``input_ids``."""

    cell: NiahCell
    prompt: str
    input_ids: tuple[int, ...]
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
    depth_actual: float

    @property
    def sample_id(self) -> str:
        return self.cell.sample_id


def grid_cells(
    language: str, lengths: list[int], depths: list[float], needles: list[Needle], per_cell: int, seed: int
) -> list[NiahCell]:
    """Lengths x depths, each with ``per_cell`` needles, rotated so every needle is used evenly.
    The rotation depends on the cell and the seed only, so all languages get the same needles."""
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise TaskError(f"Depth must lie in [0, 1]. Got {depth} instead. Use e.g. --depths 0,0.5,1.")
    for length in lengths:
        if length < 64:
            raise TaskError(f"Length must be at least 64 tokens. Got {length} instead.")
    if not 1 <= per_cell <= len(needles):
        raise TaskError(f"needles per cell must lie in [1, {len(needles)}]. Got {per_cell} instead.")
    cells = []
    index = 0
    for length in lengths:
        for depth in depths:
            for slot in range(per_cell):
                needle = needles[(index * per_cell + slot + seed) % len(needles)]
                cells.append(NiahCell(language, length, depth, needle))
            index += 1
    return cells


class NiahBuilder:
    """Builds samples for one language from one haystack with one tokenizer.

    The haystack is tokenized once, with offsets, so cutting it to any length is a lookup.
    """

    def __init__(self, language: Language, haystack: str, tokenizer, chat: bool, max_positions: int | None):
        self.language = language
        self.haystack = haystack
        self.tokenizer = tokenizer
        self.chat = chat
        self.max_positions = max_positions
        encoded = tokenizer(haystack, add_special_tokens=False, return_offsets_mapping=True)
        self._token_ends = [end for _, end in encoded["offset_mapping"]]

    def build(self, cell: NiahCell) -> NiahSample:
        if self.max_positions is not None and cell.length > self.max_positions:
            raise TaskError(
                f"Length {cell.length} exceeds the model's context of {self.max_positions} tokens. "
                f"Use --lengths up to {self.max_positions}."
            )
        overhead = len(self._encode(self._prompt(cell.needle.statement, cell.needle, cell.instruction))[0])
        budget = cell.length - overhead
        if budget <= 0:
            raise TaskError(f"Length {cell.length} leaves no room for a haystack. Use longer --lengths.")
        if budget > len(self._token_ends):
            raise TaskError(
                f"The {self.language.name} corpus has {len(self._token_ends)} tokens, fewer than the "
                f"{budget} that length {cell.length} needs. Use shorter --lengths or a longer --corpus."
            )
        text = self._cut(budget)
        insert_at, depth_actual = self._insertion_point(text, cell.depth)
        joiner = self.language.joiner
        before, after = text[:insert_at], text[insert_at:]
        glue_before = joiner if before and not before[-1].isspace() else ""
        glue_after = joiner if after and not after[0].isspace() else ""
        context = before + glue_before + cell.needle.statement + glue_after + after
        needle_start = len(before) + len(glue_before)
        prompt = self._prompt(context, cell.needle, cell.instruction)
        needle_start += prompt.index(context)
        ids, offsets = self._encode(prompt)
        needle_chars = (needle_start, needle_start + len(cell.needle.statement))
        answer_start = needle_start + cell.needle.answer_offset
        answer_chars = (answer_start, answer_start + len(cell.needle.answer))
        answer_span = _token_span(offsets, answer_chars)
        needle_span = _token_span(offsets, needle_chars)
        if (
            answer_span is None
            or needle_span is None
            or not _exact(prompt, offsets, answer_span, answer_chars)
            or not _exact(prompt, offsets, needle_span, needle_chars)
        ):
            raise TaskError(
                f"Needle {cell.needle.id!r} is lost in tokenization in {cell.sample_id}: the tokens of its "
                "answer or statement also hold neighbouring characters, so its span cannot be found "
                "exactly. Put spaces or punctuation around the answer, or rephrase the needle."
            )
        return NiahSample(cell, prompt, tuple(ids), needle_span, answer_span, depth_actual)

    def _cut(self, budget: int) -> str:
        """The longest prefix of the haystack within ``budget`` tokens that ends at a sentence boundary."""
        end_char = self._token_ends[budget - 1]
        text = self.haystack[:end_char]
        boundaries = self.language.sentence_boundaries(text)
        last = boundaries[-2] if len(boundaries) > 1 and boundaries[-1] == len(text) else boundaries[-1]
        cut = text if end_char == len(self.haystack) else text[: max(last, 1)]
        return cut.rstrip()

    def _insertion_point(self, text: str, depth: float) -> tuple[int, float]:
        boundaries = self.language.sentence_boundaries(text)
        target = depth * len(text)
        index = bisect.bisect_left(boundaries, target)
        candidates = boundaries[max(index - 1, 0) : index + 1]
        best = min(candidates, key=lambda boundary: abs(boundary - target))
        return best, best / max(len(text), 1)

    def _prompt(self, context: str, needle: Needle, instruction: str = "") -> str:
        template = self.language.chat_prompt if self.chat else self.language.plain_prompt
        question = needle.question + (self.language.joiner + instruction if instruction else "")
        body = template.format(context=context, question=question)
        if not self.chat:
            return body
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )

    def _encode(self, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
        # A chat template already writes the BOS token; a plain prompt gets the tokenizer's specials.
        encoded = self.tokenizer(prompt, add_special_tokens=not self.chat, return_offsets_mapping=True)
        return encoded["input_ids"], [tuple(pair) for pair in encoded["offset_mapping"]]


def _token_span(offsets: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int] | None:
    """Tokens whose characters overlap ``chars`` (special tokens have empty offsets and never do)."""
    inside = [
        index
        for index, (start, end) in enumerate(offsets)
        if end > start and start < chars[1] and end > chars[0]
    ]
    if not inside:
        return None
    return inside[0], inside[-1] + 1


def _exact(
    prompt: str, offsets: list[tuple[int, int]], span: tuple[int, int], chars: tuple[int, int]
) -> bool:
    """The span's tokens cover the characters and nothing but whitespace beyond them."""
    first, last = offsets[span[0]][0], offsets[span[1] - 1][1]
    return not prompt[first : chars[0]].strip() and not prompt[chars[1] : last].strip()
