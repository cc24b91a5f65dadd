"""The retrieval loop in the style of DRAGIN, with the heads that form the query chosen per selection.

Each question is answered once per selection, in rounds. A round greedily generates the rest of the
answer (up to the token budget) from the documents retrieved so far, the question and the answer kept
so far, recording each step's next-token entropy, final hidden state and every head's attention on the
query-able positions (the question and the answer; exact weights, from the instrument's region masses).
Then RIND (entropy x the most attention a later answer token pays the token x not a stop word) is
checked token by token. At the first token over the threshold, while retrievals are left:

- the heads of the selection are chosen for that step: ``dynamic``, the probe's top heads from the
  step's hidden state; ``static``, the heads run's top retrieval heads; ``dragin``, every head of the
  last layer (DRAGIN's own choice);
- their attention at that step is averaged, the top positions among the content tokens before the
  trigger are clustered and widened into windows, and the windows' text is the BM25 query;
- new documents join the context, the answer is cut before the trigger token and the next round
  regenerates from there. A query that matches no document spends the retrieval and the round's answer
  stands up to the next trigger.

Baselines: ``none`` (the first round with no retrieval) and ``question`` (one retrieval with the
question as query before answering). Rounds batch every unfinished (question, selection); identical
prompts (every selection's first round) are decoded once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from babelheads.data.languages import Language
from babelheads.data.multihop import TwoHop
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress
from babelheads.models import LoadedModel
from babelheads.probe import Instrument, StepRecords
from babelheads.rag.collection import Bm25Index, Document
from babelheads.rag.selections import HEAD_GUIDED
from babelheads.rag.selections import SELECTIONS as SELECTIONS  # re-exported: the experiment imports it here
from babelheads.rag.trigger import content_flags, query_windows, rind, token_importance, whole_words
from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Decoded, Row, decode_rows
from babelheads.runner.prefix import SharedPrefill, branch_points
from babelheads.runner.stops import StopRule
from babelheads.tasks.niah import token_span

HeadChooser = Callable[[str, str, np.ndarray], tuple[list[int], list[float]]]
"""(selection, language, final hidden state of the step) -> (flat heads, a score per head)."""


@dataclass(frozen=True)
class LoopSettings:
    """threshold : RIND above which a token triggers retrieval. retrievals : at most this many per
    answer, each adding up to ``documents`` documents. head_count : heads whose attention forms the query
    (dynamic, static). query_tokens : top positions taken; gap : positions at most this far apart form
    one cluster; widen : positions added on both sides of a cluster."""

    threshold: float = 0.15
    max_new_tokens: int = 24
    retrievals: int = 3
    documents: int = 3
    head_count: int = 5
    query_tokens: int = 6
    gap: int = 1
    widen: int = 1

    def __post_init__(self) -> None:
        # NaN passes `< 0` and then no RIND ever exceeds it: the loop would silently never retrieve.
        if not math.isfinite(self.threshold):
            raise BabelheadsError(
                f"--threshold must be a finite RIND >= 0 (default 0.15). Got {self.threshold}."
            )
        if self.threshold < 0 or self.max_new_tokens < 1 or self.retrievals < 1 or self.documents < 1:
            raise BabelheadsError(
                "threshold must be >= 0; max_new_tokens, retrievals and documents >= 1. Got "
                f"{self.threshold}, {self.max_new_tokens}, {self.retrievals}, {self.documents}."
            )
        if self.head_count < 1 or self.query_tokens < 1 or self.gap < 0 or self.widen < 0:
            raise BabelheadsError(
                f"head_count and query_tokens must be >= 1, gap and widen >= 0. Got {self.head_count}, "
                f"{self.query_tokens}, {self.gap}, {self.widen}."
            )


@dataclass(frozen=True)
class Question:
    sample_id: str
    language: str
    item: TwoHop


@dataclass
class Branch:
    """One question answered under one selection: its context and answer so far, and its trace."""

    question: Question
    selection: str
    documents: list[Document] = field(default_factory=list)
    prefix: list[int] = field(default_factory=list)
    retrievals: int = 0
    rounds: int = 0
    trace: list[dict] = field(default_factory=list)
    answer: list[int] | None = None


@dataclass(frozen=True)
class _Prompt:
    ids: tuple[int, ...]
    question: tuple[int, int]


class RetrievalLoop:
    def __init__(
        self,
        loaded: LoadedModel,
        instrument: Instrument,
        languages: dict[str, Language],
        indexes: dict[str, Bm25Index],
        stop_words: dict[str, frozenset[str]],
        choose_heads: HeadChooser,
        settings: LoopSettings,
        chat: bool,
        batch_size: int,
    ):
        self.loaded, self.instrument = loaded, instrument
        self.languages, self.indexes, self.stop_words = languages, indexes, stop_words
        self.choose_heads = choose_heads
        self.settings = settings
        self.chat = chat
        self.batch_size = batch_size
        self.stops = StopRule.for_model(loaded)
        self.special = set(loaded.tokenizer.all_special_ids) | set(self.stops.stop_ids)

    def answer(
        self, questions: Sequence[Question], selections: Sequence[str], progress: bool = False
    ) -> list[Branch]:
        branches = [Branch(question, selection) for question in questions for selection in selections]
        for branch in branches:
            if branch.selection == "question":
                self._retrieve(branch, branch.question.item.question, {"step": -1, "trigger": "question"})
        pending = list(branches)
        bar = tqdm(total=len(branches), desc="rag", unit="answer", disable=not progress, leave=False)
        while pending:
            prompts = [self._prompt(branch) for branch in pending]
            for branch, prompt, decoded in zip(pending, prompts, self._decode(pending, prompts), strict=True):
                self._after_round(branch, prompt, decoded)
            bar.update(sum(branch.answer is not None for branch in pending))
            pending = [branch for branch in pending if branch.answer is None]
        bar.close()
        return branches

    def _prompt(self, branch: Branch) -> _Prompt:
        language = self.languages[branch.question.language]
        template = language.chat_prompt if self.chat else language.plain_prompt
        context = "\n".join(document.text for document in branch.documents)
        body = template.format(context=context, question=branch.question.item.question).lstrip()
        text = body
        if self.chat:
            text = self.loaded.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
        encoded = self.loaded.tokenizer(text, add_special_tokens=not self.chat, return_offsets_mapping=True)
        start = text.rindex(branch.question.item.question)
        span = token_span(encoded["offset_mapping"], (start, start + len(branch.question.item.question)))
        if span is None:
            raise BabelheadsError(
                f"Question {branch.question.item.id!r} has no tokens of its own in the prompt."
            )
        return _Prompt(tuple(encoded["input_ids"]), span)

    def _decode(self, branches: list[Branch], prompts: list[_Prompt]) -> list[Decoded]:
        """One round for every branch; identical prompts are decoded once, in sorted order so shared
        prefixes are prefilled once. A branch that may still retrieve also gets the attention of its
        last token's query (fed once more, teacher-forced), so that every generated token but the last
        has a later query, as in DRAGIN's pass over the generated text."""
        keys = [prompt.ids + tuple(branch.prefix) for branch, prompt in zip(branches, prompts, strict=True)]
        unique: dict[tuple[int, ...], Row] = {}
        checked: set[tuple[int, ...]] = set()
        for key, branch, prompt in zip(keys, branches, prompts, strict=True):
            if key not in unique:
                unique[key] = self._row(branch, prompt)
            if branch.selection in HEAD_GUIDED and branch.retrievals < self.settings.retrievals:
                checked.add(key)
        ordered = sorted(unique)
        regions = max(max(row.regions) for row in unique.values()) + 1
        decoded = self._batches([unique[key] for key in ordered], True, regions)
        results = dict(zip(ordered, decoded, strict=True))
        tails = sorted((key + tuple(results[key].tokens), key) for key in checked)
        tail_rows = [Row(list(final), 1, None, unique[key].regions) for final, key in tails]
        for (_, key), extra in zip(tails, self._batches(tail_rows, False, regions), strict=True):
            records = results[key].records
            mass = np.concatenate([records.mass, extra.records.mass[:1]], axis=0)
            results[key].records = StepRecords(records.positions, records.weights, mass)
        for branch in branches:
            branch.rounds += 1
        return [results[key] for key in keys]

    def _batches(self, rows: list[Row], full: bool, regions: int) -> list[Decoded]:
        """``rows`` (sorted by prompt) decoded in batches, with the attention on ``regions`` query-able
        positions; ``full`` also keeps each step's hidden state and entropy."""
        if not rows:
            return []
        prefill = SharedPrefill(self.loaded.model, DEFAULT_PREFILL_CHUNK, share=True)
        keep = branch_points([list(row.input_ids[:-1]) for row in rows])
        decoded: list[Decoded] = []
        for start in range(0, len(rows), self.batch_size):
            end = start + self.batch_size
            decoded += decode_rows(
                self.instrument,
                prefill,
                rows[start:end],
                self.stops if full else StopRule(),
                True,
                keep[start:end],
                regions=regions,
                hidden=full,
                entropy=full,
            )
        return decoded

    def _row(self, branch: Branch, prompt: _Prompt) -> Row:
        """Region r labels the r-th query-able position: question tokens, answer kept, answer to come."""
        first, last = prompt.question
        ids = list(prompt.ids) + branch.prefix
        budget = self.settings.max_new_tokens - len(branch.prefix)
        labels = [-1] * (len(ids) + budget)
        queryable = [*range(first, last), *range(len(prompt.ids), len(ids) + budget)]
        for region, position in enumerate(queryable):
            labels[position] = region
        return Row(ids, budget, None, labels)

    def _after_round(self, branch: Branch, prompt: _Prompt, decoded: Decoded) -> None:
        tokens = decoded.tokens
        if branch.selection not in HEAD_GUIDED or branch.retrievals >= self.settings.retrievals:
            branch.answer = branch.prefix + tokens
            return
        question_ids = list(prompt.ids[prompt.question[0] : prompt.question[1]])
        queryable = question_ids + branch.prefix + tokens
        offset = len(question_ids) + len(branch.prefix)  # region of the round's first token
        texts = [self.loaded.tokenizer.decode([token]) for token in queryable]
        content = content_flags(
            texts, self.stop_words[branch.question.language], [token in self.special for token in queryable]
        )
        mass = decoded.records.mass[:, 0]  # (steps, layers, heads, regions)
        last_layer = mass[:, -1].mean(axis=1)  # DRAGIN: the last layer, averaged over heads
        steps = len(tokens)
        importance = token_importance(last_layer[:, offset : offset + steps])
        scores = rind(decoded.entropy, importance, content[offset : offset + steps])
        for step in np.flatnonzero(scores > self.settings.threshold):
            if branch.retrievals >= self.settings.retrievals:
                break
            heads, head_scores = self._heads(branch, decoded, step)
            layers, within = np.divmod(np.asarray(heads), mass.shape[2])
            weights = mass[step, layers, within].mean(axis=0)
            cut = offset + step  # the query reads the question and the answer before the trigger
            chosen, windows = query_windows(
                weights[:cut],
                content[:cut],
                self.settings.query_tokens,
                self.settings.gap,
                self.settings.widen,
            )
            language = self.languages[branch.question.language]
            if language.joiner:
                windows = whole_words(windows, texts[:cut])
            query = (language.joiner or "").join(
                self.loaded.tokenizer.decode(queryable[start:end]).strip() for start, end in windows
            )
            found = self._retrieve(
                branch,
                query,
                {
                    "step": len(branch.prefix) + int(step),
                    "trigger": texts[offset + step],
                    "rind": float(scores[step]),
                    "entropy": float(decoded.entropy[step]),
                    "importance": float(importance[step]),
                    "heads": heads,
                    "head_scores": head_scores,
                    "positions": chosen,
                    "position_tokens": [texts[position] for position in chosen],
                    "windows": [queryable[start:end] for start, end in windows],
                },
            )
            if found:
                branch.prefix = branch.prefix + tokens[:step]
                return
        branch.answer = branch.prefix + tokens

    def _heads(self, branch: Branch, decoded: Decoded, step: int) -> tuple[list[int], list[float]]:
        if branch.selection == "dragin":
            layout = self.loaded.layout
            last = layout.num_layers - 1
            heads = [layout.flat(HeadAddress(last, head)) for head in range(layout.num_heads)]
            return heads, [1.0] * layout.num_heads
        return self.choose_heads(branch.selection, branch.question.language, decoded.hidden[step])

    def _retrieve(self, branch: Branch, query: str, trace: dict) -> list[Document]:
        index = self.indexes[branch.question.language]
        held = {document.id for document in branch.documents}
        found = index.search(query, self.settings.documents, held)
        branch.documents = branch.documents + [document for document, _ in found]
        branch.retrievals += 1
        facts = {f"{branch.question.item.id}/fact{k}" for k in range(len(branch.question.item.facts))}
        branch.trace.append(
            {
                **trace,
                "retrieval": branch.retrievals,
                "query": query,
                "documents": [document.id for document, _ in found],
                "document_scores": [score for _, score in found],
                "gold": [document.id in facts for document, _ in found],
            }
        )
        return [document for document, _ in found]
