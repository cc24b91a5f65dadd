"""Needle in a haystack, and retrieval + translation as a variant of it.

A haystack is cut to a token length at a sentence end; a needle goes to the sentence boundary nearest
a depth measured in tokens; the needle and answer spans are found from character offsets, exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.corpora import load_corpus
from babelheads.data.languages import Language, load_language
from babelheads.data.needles import Needle, load_needles
from babelheads.errors import TaskError
from babelheads.scoring import check_answer
from babelheads.tasks.base import Sample, Skipped, content_digest, safe_id

if TYPE_CHECKING:
    from babelheads.models import LoadedModel

PROMPT_FORMATS = ("auto", "chat", "plain")
NEEDLE_KINDS = ("all", "fact", "key", "magic")
MIN_LENGTH_SHARE = 0.9
"""A prompt shorter than this share of the requested length is an error, never a silent short prompt."""
BOUNDARY_TRIES = 8
"""Sentence boundaries tried, nearest the requested depth first, before a sample is skipped."""


def check_prompt_format(prompt: str) -> None:
    if prompt not in PROMPT_FORMATS:
        raise TaskError(f"Unknown prompt format {prompt!r}. Use one of: {', '.join(PROMPT_FORMATS)}.")


@dataclass(frozen=True)
class NiahSettings:
    """What decides the samples of a NIAH run.

    languages : plain retrieval in each; pairs : 'SOURCE:ANSWER' retrieval + translation
    (haystack, needle and question in SOURCE, the answer asked for in ANSWER); pairs replace languages.
    """

    languages: tuple[str, ...] = ("en", "de", "zh")
    pairs: tuple[str, ...] = ()
    corpus: str = "builtin"
    needles: str = "builtin"
    data_dir: str | None = None
    lengths: tuple[int, ...] = (1000, 2000)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    needles_per_cell: int = 1
    needle_kind: str = "all"
    needle_ids: tuple[str, ...] = ()
    """Only these needles (e.g. those a detection run did not use); empty: all of the kind."""
    prompt: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_prompt_format(self.prompt)
        if self.needle_kind not in NEEDLE_KINDS:
            raise TaskError(f"needle_kind must be one of {NEEDLE_KINDS}. Got {self.needle_kind!r}.")
        if not self.languages and not self.pairs:
            raise TaskError("No languages given. Use e.g. --languages en,de,zh.")
        for pair in self.pairs:
            source, _, target = pair.partition(":")
            if not source or not target or source == target:
                raise TaskError(
                    f"A pair reads SOURCE:ANSWER with two different languages, e.g. en:zh. Got {pair!r}."
                )
        if not self.lengths or not self.depths:
            raise TaskError("Give at least one length and one depth, e.g. --lengths 1000 --depths 0.5.")

    @property
    def root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else None

    def language_pairs(self) -> list[tuple[str, str | None]]:
        """(haystack language, answer language or None): pairs when given, else the languages."""
        if self.pairs:
            return [(pair.split(":", 1)[0], pair.split(":", 1)[1]) for pair in self.pairs]
        return [(code, None) for code in self.languages]

    def answer_languages(self) -> list[str]:
        return list(dict.fromkeys(target or source for source, target in self.language_pairs()))


@dataclass(frozen=True)
class NiahCell:
    """One point of the grid: a prompt length in tokens, a depth in [0, 1] (in tokens), a needle.

    For retrieval + translation, ``instruction`` (in the answer language) follows the question and
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
    def label(self) -> str:
        """'en' for plain retrieval, 'en>zh' for retrieval in English answered in Chinese."""
        return self.language if self.answer_language is None else f"{self.language}>{self.answer_language}"

    @property
    def expected_answer(self) -> str:
        return self.needle.answer if self.expected is None else self.expected

    @property
    def sample_id(self) -> str:
        label = self.label.replace(">", "_to_")
        return safe_id(f"{label}-L{self.length}-D{self.depth:.3f}-{self.needle.id}")

    def meta(self) -> dict[str, object]:
        return {
            "length": self.length,
            "depth": self.depth,
            "needle_id": self.needle.id,
            "needle_kind": self.needle.kind,
            "source_language": self.language,
            "answer_language": self.answer_language or self.language,
            "answer": self.expected_answer,
        }


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


class NiahTask:
    """The NIAH grid of ``settings``: planned without a model, built with its tokenizer."""

    name = "niah"

    def __init__(self, settings: NiahSettings, success_threshold: float = 0.5):
        self.settings = settings
        self.success_threshold = success_threshold
        self.cells = self._plan()
        self._haystacks: dict[str, str] = {}
        self._languages = {
            code: load_language(code, settings.root)
            for pair in settings.language_pairs()
            for code in pair
            if code is not None
        }

    def _plan(self) -> list[NiahCell]:
        settings, root = self.settings, self.settings.root
        cells = []
        for source, target in settings.language_pairs():
            load_language(source, root)
            grid = grid_cells(
                source,
                list(settings.lengths),
                list(settings.depths),
                self._needles(source),
                settings.needles_per_cell,
                settings.seed,
            )
            if target is None:
                cells += grid
                continue
            answer_language = load_language(target, root)
            translated = {needle.id: needle for needle in load_needles(settings.needles, target, root)}
            for cell in grid:
                if cell.needle.id not in translated:
                    raise TaskError(
                        f"Needle {cell.needle.id!r} has no {target!r} version, so {source}>{target} cannot "
                        f"check the answer. Add it to the {target} needles."
                    )
                cells.append(
                    replace(
                        cell,
                        answer_language=target,
                        expected=translated[cell.needle.id].answer,
                        instruction=answer_language.answer_in,
                    )
                )
        return cells

    def _needles(self, code: str) -> list[Needle]:
        needles = load_needles(self.settings.needles, code, self.settings.root)
        kind, ids = self.settings.needle_kind, set(self.settings.needle_ids)
        chosen = [
            needle for needle in needles if kind in ("all", needle.kind) and (not ids or needle.id in ids)
        ]
        if not chosen:
            wanted = f"of kind {kind!r}" + (f" among {', '.join(sorted(ids))}" if ids else "")
            raise TaskError(f"No needles {wanted} for {code!r}. Use --needle-kind all or other needles.")
        return chosen

    def sample_ids(self) -> list[str]:
        return [cell.sample_id for cell in self.cells]

    def sample_languages(self) -> dict[str, str]:
        """Each sample id's condition ('en', or 'en>zh' for retrieval + translation)."""
        return {cell.sample_id: cell.label for cell in self.cells}

    def identity(self) -> dict:
        """Hashes of every corpus, needle set and language file the samples are made of."""
        settings, root = self.settings, self.settings.root
        identity = {}
        for code, language in self._languages.items():
            identity[f"language:{code}"] = content_digest(asdict(language))
            needles = load_needles(settings.needles, code, root)
            identity[f"needles:{code}"] = content_digest([asdict(needle) for needle in needles])
        for source, _ in settings.language_pairs():
            identity[f"corpus:{source}"] = content_digest(self._haystack(source))
        return identity

    def _haystack(self, code: str) -> str:
        """The corpus of ``code``, read once (a dataset corpus is not streamed twice)."""
        if code not in self._haystacks:
            self._haystacks[code] = load_corpus(
                self.settings.corpus, code, self.settings.seed, self.settings.root
            )
        return self._haystacks[code]

    def build(self, loaded: LoadedModel) -> list[Sample | Skipped]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        builders: dict[str, NiahBuilder] = {}
        built: list[Sample | Skipped] = []
        for cell in self.cells:
            if cell.language not in builders:
                builders[cell.language] = NiahBuilder(
                    self._languages[cell.language],
                    self._haystack(cell.language),
                    loaded.tokenizer,
                    chat,
                    loaded.layout.max_positions,
                )
            built.append(builders[cell.language].build(cell))
        return built

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        language = self._languages[str(sample.meta["answer_language"])]
        check = check_answer(sample.expected, output, language.answer_tokenizer, self.success_threshold)
        return {
            "rouge1_recall": check.rouge1_recall,
            "rougeL": check.rouge_l,
            "contains": check.contains,
            "success": check.success,
        }


class NiahBuilder:
    """Builds samples for one language from one haystack with one tokenizer.

    The haystack is tokenized once, with offsets, so cutting it to any length and measuring a depth in
    tokens are lookups.
    """

    def __init__(self, language: Language, haystack: str, tokenizer, chat: bool, max_positions: int | None):
        self.language = language
        self.haystack = haystack
        self.tokenizer = tokenizer
        self.chat = chat
        self.max_positions = max_positions
        encoded = tokenizer(haystack, add_special_tokens=False, return_offsets_mapping=True)
        self._token_ends = [end for _, end in encoded["offset_mapping"]]

    def build(self, cell: NiahCell) -> Sample | Skipped:
        """The sample of ``cell``; Skipped when no boundary near the depth keeps the needle's spans exact.
        Raises TaskError for what would spoil every sample (too long, too short, no room)."""
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
        total = self._tokens_before(len(text))
        if overhead + total < MIN_LENGTH_SHARE * cell.length:
            marks = " ".join(self.language.sentence_end)
            raise TaskError(
                f"The {self.language.name} prompt for length {cell.length} would have only "
                f"{overhead + total} tokens: the haystack has no sentence end ({marks}) or paragraph "
                f"break in the last {budget - total} of its first {budget} tokens. Check sentence_end in the "
                f"{self.language.code} language file, use a corpus of running text, or a longer --lengths."
            )
        target = cell.depth * total
        boundaries = sorted(
            self.language.sentence_boundaries(text),
            key=lambda boundary: (abs(self._tokens_before(boundary) - target), boundary),
        )
        for boundary in boundaries[:BOUNDARY_TRIES]:
            sample = self._assemble(cell, text, boundary, self._tokens_before(boundary) / max(total, 1))
            if sample is not None:
                return sample
        return Skipped(
            cell.sample_id,
            cell.label,
            f"needle {cell.needle.id!r} merges with the neighbouring characters at the "
            f"{min(BOUNDARY_TRIES, len(boundaries))} sentence boundaries nearest depth {cell.depth}, so its "
            "answer span cannot be located exactly",
            cell.meta(),
        )

    def _assemble(self, cell: NiahCell, text: str, insert_at: int, depth_actual: float) -> Sample | None:
        joiner = self.language.joiner
        before, after = text[:insert_at], text[insert_at:]
        glue_before = joiner if before and not before[-1].isspace() else ""
        glue_after = joiner if after and not after[0].isspace() else ""
        context = before + glue_before + cell.needle.statement + glue_after + after
        prompt = self._prompt(context, cell.needle, cell.instruction)
        needle_start = prompt.index(context) + len(before) + len(glue_before)
        ids, offsets = self._encode(prompt)
        needle_chars = (needle_start, needle_start + len(cell.needle.statement))
        answer_start = needle_start + cell.needle.answer_offset
        answer_chars = (answer_start, answer_start + len(cell.needle.answer))
        answer_span = token_span(offsets, answer_chars)
        needle_span = token_span(offsets, needle_chars)
        if (
            answer_span is None
            or needle_span is None
            or not exact_span(prompt, offsets, answer_span, answer_chars)
            or not exact_span(prompt, offsets, needle_span, needle_chars)
        ):
            return None
        meta = {**cell.meta(), "depth_actual": depth_actual, "tokens": len(ids)}
        start = prompt.index(context)
        haystack = token_span(offsets, (start, start + len(context)))
        return Sample(
            cell.sample_id,
            cell.label,
            tuple(ids),
            cell.expected_answer,
            {"needle": needle_span, "answer": answer_span, "context": haystack},
            meta,
            text=prompt,
        )

    def _tokens_before(self, char: int) -> int:
        """Haystack tokens that end at or before character ``char``."""
        return bisect.bisect_right(self._token_ends, char)

    def _cut(self, budget: int) -> str:
        """The longest prefix of the haystack within ``budget`` tokens that ends at a sentence boundary."""
        end_char = self._token_ends[budget - 1]
        text = self.haystack[:end_char]
        if end_char == len(self.haystack):
            return text.rstrip()
        boundaries = [
            boundary for boundary in self.language.sentence_boundaries(text) if boundary < len(text)
        ]
        return text[: boundaries[-1]].rstrip()

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


def token_span(offsets: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int] | None:
    """Tokens whose characters overlap ``chars`` (special tokens have empty offsets and never do)."""
    inside = [
        index
        for index, (start, end) in enumerate(offsets)
        if end > start and start < chars[1] and end > chars[0]
    ]
    if not inside:
        return None
    return inside[0], inside[-1] + 1


def exact_span(
    prompt: str, offsets: list[tuple[int, int]], span: tuple[int, int], chars: tuple[int, int]
) -> bool:
    """The span's tokens cover the characters and nothing but whitespace beyond them."""
    first, last = offsets[span[0]][0], offsets[span[1] - 1][1]
    return not prompt[first : chars[0]].strip() and not prompt[chars[1] : last].strip()
