"""Two-hop questions in a haystack: both supporting facts and the distractors at seeded sentence
boundaries of a corpus text, the question at the end.

Spans: 'support_0', 'support_1' (the facts, in reasoning order), 'needle' (the fact that holds the
answer, so per-step retrieval scores work as on NIAH), 'answer', and 'context' (the whole haystack).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.corpora import load_corpus
from babelheads.data.languages import load_language
from babelheads.data.multihop import TwoHop, load_two_hop
from babelheads.data.needles import Needle
from babelheads.errors import TaskError
from babelheads.scoring import check_answer
from babelheads.tasks.base import Sample, Skipped, content_digest, safe_id
from babelheads.tasks.niah import NiahBuilder, check_prompt_format, exact_span, token_span

if TYPE_CHECKING:
    from babelheads.models import LoadedModel


@dataclass(frozen=True)
class MultihopSettings:
    """questions : how many per language (a seeded choice; 0 takes all). length : prompt tokens."""

    languages: tuple[str, ...] = ("en", "de", "zh")
    source: str = "builtin"
    corpus: str = "builtin"
    data_dir: str | None = None
    length: int = 1000
    questions: int = 24
    prompt: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_prompt_format(self.prompt)
        if not self.languages:
            raise TaskError("No languages given. Use e.g. --languages en,de,zh.")
        if self.questions < 0 or self.length < 1:
            raise TaskError(f"questions must be >= 0 and length >= 1. Got {self.questions}, {self.length}.")

    @property
    def root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else None


class MultihopTask:
    name = "multihop"

    def __init__(self, settings: MultihopSettings, success_threshold: float = 0.5):
        self.settings = settings
        self.success_threshold = success_threshold
        self._languages = {code: load_language(code, settings.root) for code in settings.languages}
        self.items = {code: self._chosen(code) for code in settings.languages}

    def _chosen(self, code: str) -> list[TwoHop]:
        items = load_two_hop(self.settings.source, code, self.settings.root)
        count = self.settings.questions or len(items)
        if count > len(items):
            raise TaskError(
                f"{count} questions asked, {code} has {len(items)}. Use --questions {len(items)}."
            )
        chosen = sorted(random.Random(self.settings.seed).sample(range(len(items)), count))
        return [items[index] for index in chosen]

    def sample_ids(self) -> list[str]:
        return [safe_id(f"{code}-{item.id}") for code, items in self.items.items() for item in items]

    def identity(self) -> dict:
        identity = {}
        for code, items in self.items.items():
            identity[f"language:{code}"] = content_digest(asdict(self._languages[code]))
            identity[f"questions:{code}"] = content_digest([asdict(item) for item in items])
            identity[f"corpus:{code}"] = content_digest(
                load_corpus(self.settings.corpus, code, self.settings.seed, self.settings.root)
            )
        return identity

    def build(self, loaded: LoadedModel) -> list[Sample | Skipped]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        built: list[Sample | Skipped] = []
        for code, items in self.items.items():
            haystack = load_corpus(self.settings.corpus, code, self.settings.seed, self.settings.root)
            builder = MultihopBuilder(
                self._languages[code], haystack, loaded.tokenizer, chat, loaded.layout.max_positions
            )
            for item in items:
                built.append(builder.place(item, code, self.settings.length, self.settings.seed))
        return built

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        language = self._languages[sample.language]
        check = check_answer(sample.expected, output, language.answer_tokenizer, self.success_threshold)
        return {
            "rouge1_recall": check.rouge1_recall,
            "rougeL": check.rouge_l,
            "contains": check.contains,
            "success": check.success,
        }


class MultihopBuilder(NiahBuilder):
    """Places a question's facts and distractors in one haystack cut."""

    def place(self, item: TwoHop, code: str, length: int, seed: int) -> Sample | Skipped:
        sample_id = safe_id(f"{code}-{item.id}")
        meta = {"question_id": item.id, "length": length, "answer": item.answer, "answer_language": code}
        needle = Needle(item.id, item.facts[-1], item.question, item.answer)
        sentences = [*item.facts, *item.distractors]
        overhead = len(self._encode(self._prompt(" ".join(sentences), needle))[0])
        budget = length - overhead
        if budget <= 0 or budget > len(self._token_ends):
            raise TaskError(
                f"Length {length} leaves {budget} tokens for the {self.language.name} haystack "
                f"(it has {len(self._token_ends)}). Use a --length between {overhead + 50} and "
                f"{overhead + len(self._token_ends)}."
            )
        text = self._cut(budget)
        boundaries = self.language.sentence_boundaries(text)
        if len(boundaries) < len(sentences):
            raise TaskError(
                f"The {self.language.name} haystack has too few sentence ends for {len(sentences)} facts."
            )
        rng = random.Random(f"{seed}-{item.id}")
        slots = sorted(rng.sample(boundaries, len(sentences)))
        order = rng.sample(range(len(sentences)), len(sentences))
        pieces, cursor, starts = [], 0, {}
        joiner = self.language.joiner
        for slot, which in zip(slots, order, strict=True):
            pieces.append(text[cursor:slot])
            before = "".join(pieces)
            glue = joiner if before and not before[-1].isspace() else ""
            pieces.append(glue)
            starts[which] = len(before) + len(glue)
            pieces.append(sentences[which])
            cursor = slot
            if cursor < len(text) and not text[cursor].isspace():
                pieces.append(joiner)
        pieces.append(text[cursor:])
        context = "".join(pieces)
        prompt = self._prompt(context, needle)
        offset = prompt.index(context)
        ids, offsets = self._encode(prompt)
        spans = {}
        wanted = {
            f"support_{index}": (starts[index], len(item.facts[index])) for index in range(len(item.facts))
        }
        answer_char = starts[item.answer_fact] + item.facts[-1].index(item.answer)
        wanted["answer"] = (answer_char, len(item.answer))
        wanted["context"] = (0, len(context))
        for name, (start, size) in wanted.items():
            chars = (offset + start, offset + start + size)
            span = token_span(offsets, chars)
            if span is None or (name != "context" and not exact_span(prompt, offsets, span, chars)):
                return Skipped(sample_id, code, f"{name} of {item.id!r} merges with its neighbours", meta)
            spans[name] = span
        spans["needle"] = spans[f"support_{item.answer_fact}"]
        return Sample(
            sample_id, code, tuple(ids), item.answer, spans, {**meta, "tokens": len(ids)}, text=prompt
        )
