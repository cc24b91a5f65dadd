"""Retrieval scores (Wu et al. 2024, both variants) and per-language answer checks."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer

from babelheads.heads import HeadLayout
from babelheads.probe import StepRecords

if TYPE_CHECKING:
    from babelheads.tasks.base import Sample

SCORE_VARIANTS = ("paper", "official")
"""paper: distinct copied answer tokens / |span| (at most 1). official: every copy event / |span|, as the
authors' code adds it (can exceed 1)."""


@dataclass
class CopyEvents:
    """Per step and query head: the top-1 peak and whether it is a copy.

    peak : int64 (steps, layers, heads); in_needle, in_answer, copy : bool, same shape.
    """

    peak: np.ndarray
    in_needle: np.ndarray
    in_answer: np.ndarray
    copy: np.ndarray
    peak_token: np.ndarray
    """The context token at the peak (-1 where the peak is not in the prompt)."""
    needle_copy: np.ndarray
    """S(x_t, h) of "Retrieval Heads are Dynamic": the peak lies in the needle (not only the answer)
    and its token is the emitted one."""
    needle_match_weight: np.ndarray
    """float (steps, layers, heads): the weight of the recorded top-k positions in the needle whose
    token is the emitted one, a graded S."""


def copy_events(
    records: StepRecords,
    output_tokens: list[int],
    input_ids: tuple[int, ...] | list[int],
    needle_span: tuple[int, int],
    answer_span: tuple[int, int],
) -> CopyEvents:
    """Head h copies at step t when its top-1 position j lies in the answer span and the context token
    at j equals the token emitted at t (Wu et al. 2024, Sec. 2)."""
    positions, weights = records.positions[:, 0], records.weights[:, 0]
    peak = positions[..., 0]
    steps = peak.shape[0]
    if steps != len(output_tokens):
        raise ValueError(f"{steps} recorded steps but {len(output_tokens)} output tokens.")
    context = np.asarray(input_ids)
    tokens = np.where(
        (positions >= 0) & (positions < len(context)), context[np.clip(positions, 0, len(context) - 1)], -1
    )
    emitted = np.asarray(output_tokens).reshape(steps, 1, 1)
    in_needle = (peak >= needle_span[0]) & (peak < needle_span[1])
    in_answer = (peak >= answer_span[0]) & (peak < answer_span[1])
    copy = in_answer & (tokens[..., 0] == emitted)
    matches = (positions >= needle_span[0]) & (positions < needle_span[1]) & (tokens == emitted[..., None])
    return CopyEvents(
        peak,
        in_needle,
        in_answer,
        copy,
        tokens[..., 0],
        in_needle & (tokens[..., 0] == emitted),
        (weights * matches).sum(axis=-1),
    )


def retrieval_scores(events: CopyEvents, answer_span: tuple[int, int]) -> dict[str, np.ndarray]:
    """Scores per query head, arrays of shape (layers, heads), for both variants."""
    span = answer_span[1] - answer_span[0]
    official = events.copy.sum(axis=0) / span
    _, layers, heads = events.copy.shape
    paper = np.zeros((layers, heads))
    for layer, head in zip(*np.nonzero(events.copy.any(axis=0)), strict=True):
        copied = events.peak[events.copy[:, layer, head], layer, head]
        paper[layer, head] = len(np.unique(copied)) / span
    return {"paper": paper, "official": official}


def retrieval_tables(
    base: dict,
    sample: Sample,
    tokens: list[int],
    records: StepRecords,
    layout: HeadLayout,
    regions: tuple[str, ...] = (),
) -> dict[str, pd.DataFrame]:
    """A sample's raw events (every step x layer x head: peaks, weights, copy, per-step S, and the
    attention mass on each of ``regions`` when recorded) and its per-head scores (both variants and the
    needle-attention share), from the sample's 'needle' and 'answer' spans."""
    if "answer" not in sample.spans or "needle" not in sample.spans:
        raise ValueError(
            f"Recording retrieval needs 'needle' and 'answer' spans; {sample.sample_id} has none."
        )
    answer_span, needle_span = sample.spans["answer"], sample.spans["needle"]
    events = copy_events(records, tokens, sample.input_ids, needle_span, answer_span)
    scores = {**retrieval_scores(events, answer_span), "needle_attention": events.in_needle.mean(axis=0)}
    steps = len(tokens)
    step, layer, head = np.meshgrid(
        np.arange(steps), np.arange(layout.num_layers), np.arange(layout.num_heads), indexing="ij"
    )
    positions, weights = records.positions[:, 0], records.weights[:, 0]
    count = steps * layout.total_heads
    event_frame = pd.DataFrame(
        {
            "sample_id": base["sample_id"],
            "step": step.ravel().astype(np.int32),
            "token": np.repeat(np.asarray(tokens, dtype=np.int64), layout.total_heads),
            "layer": layer.ravel().astype(np.int16),
            "head": head.ravel().astype(np.int16),
            "kv_head": layout.kv_head_of(head.ravel()).astype(np.int16),
            "peak": events.peak.ravel(),
            "weight": weights[..., 0].ravel(),
            "positions": list(positions.reshape(count, -1)),
            "weights": list(weights.reshape(count, -1)),
            "in_needle": events.in_needle.ravel(),
            "in_answer": events.in_answer.ravel(),
            "copy": events.copy.ravel(),
            "peak_token": events.peak_token.ravel(),
            "needle_copy": events.needle_copy.ravel(),
            "needle_match_weight": events.needle_match_weight.ravel().astype(np.float32),
            **{
                f"mass_{region}": records.mass[:, 0, ..., index].ravel()
                for index, region in enumerate(regions)
            },
        }
    )
    grid_layer, grid_head = np.meshgrid(
        np.arange(layout.num_layers), np.arange(layout.num_heads), indexing="ij"
    )
    head_frame = pd.DataFrame(
        {
            **base,
            "layer": grid_layer.ravel().astype(np.int16),
            "head": grid_head.ravel().astype(np.int16),
            "kv_head": layout.kv_head_of(grid_head.ravel()).astype(np.int16),
            **{name: values.ravel() for name, values in scores.items()},
        }
    )
    return {"events": event_frame, "head_scores": head_frame}


class _Tokenizer:
    """The interface rouge-score expects from a custom tokenizer."""

    def __init__(self, kind: str):
        self.kind = kind

    def tokenize(self, text: str) -> list[str]:
        return answer_tokens(text, self.kind)


def answer_tokens(text: str, kind: str) -> list[str]:
    """words: ``\\w+`` (Latin, Cyrillic, ...); chars: one token per CJK character, ``\\w+`` otherwise;
    jieba: Chinese word segmentation, punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).lower()
    if kind == "words":
        return re.findall(r"\w+", text)
    if kind == "chars":
        return re.findall(
            r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]+", text
        )
    if kind == "jieba":
        import jieba

        jieba.setLogLevel(60)
        return [token for token in jieba.lcut(text) if re.search(r"\w", token)]
    raise ValueError(f"Unknown answer tokenizer {kind!r}.")


@cache
def _scorer(kind: str) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=_Tokenizer(kind))


@dataclass(frozen=True)
class AnswerCheck:
    rouge1_recall: float
    contains: bool
    success: bool
    rouge_l: float = float("nan")
    """ROUGE-L F-measure, the second metric of "Retrieval Heads are Dynamic"."""


def check_answer(expected: str, generated: str, tokenizer_kind: str, threshold: float = 0.5) -> AnswerCheck:
    """ROUGE-1 recall of the expected answer in the generated text, and exact containment.
    ``success`` is recall > threshold (the paper's gate, 0.5 by default)."""
    scores = _scorer(tokenizer_kind).score(expected, generated)
    recall = scores["rouge1"].recall
    normalize = lambda text: re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()  # noqa: E731
    contains = normalize(expected) in normalize(generated)
    return AnswerCheck(float(recall), contains, bool(recall > threshold), float(scores["rougeL"].fmeasure))


def first_line(text: str) -> str:
    """The prediction of a short-answer question: the first non-empty line of the generated text."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# Answer normalisation of the official short-answer scripts, written from their behaviour: SQuAD v1.1's
# ``normalize_answer`` for English, MLQA's per language for the rest. Both lower-case, drop punctuation,
# then articles, then split on white space; EM compares the normalised strings, F1 their tokens.
SQUAD_PUNCTUATION = frozenset(string.punctuation)
MLQA_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    # MLQA's pattern is '\sال^|ال': the first branch can never match ('^' after a character), so every
    # 'ال' is replaced, inside words too.
    "ar": "ال",
    "hi": None,
    "zh": None,
}
"""MLQA's article patterns (mlqa_evaluation_v1.py); a language outside them has none removed."""
MLQA_WHITESPACE = frozenset({"en", "es", "hi", "vi", "de", "ar"})
"""Languages MLQA splits on white space only; every other language is split by MLQA's Chinese rule,
which is the same on text without CJK ideographs."""
_MLQA_IDEOGRAPH = re.compile(r"[\u4e00-\u9fa5]")


def _mlqa_punctuation(character: str) -> bool:
    """MLQA's punctuation: string.punctuation and every character of a Unicode category P*."""
    return character in SQUAD_PUNCTUATION or unicodedata.category(character).startswith("P")


def _by_character(text: str) -> list[str]:
    """MLQA's mixed segmentation: each CJK ideograph (U+4E00..U+9FA5, MLQA's range) or punctuation mark
    is a token of its own; the text between them is split on white space."""
    tokens: list[str] = []
    pending = ""
    for character in text:
        if _MLQA_IDEOGRAPH.match(character) or _mlqa_punctuation(character):
            tokens += pending.split()
            pending = ""
            tokens.append(character)
        else:
            pending += character
    return tokens + pending.split()


def normalize_answer(text: str, language: str) -> str:
    """An answer as the official scripts compare it: SQuAD v1.1 for ``en`` (lower case; ASCII
    punctuation dropped; a, an, the dropped; white space collapsed), MLQA for every other language code
    (lower case; ASCII and Unicode P* punctuation dropped; MLQA's articles of the language dropped;
    Chinese split into single characters). Languages MLQA does not cover (fr, ...) lose no article
    (MLQA has no list for them) and are split like Chinese, which splits nothing without ideographs."""
    text = text.lower()
    if language == "en":
        text = "".join(character for character in text if character not in SQUAD_PUNCTUATION)
        return " ".join(re.sub(MLQA_ARTICLES["en"], " ", text).split())
    text = "".join(character for character in text if not _mlqa_punctuation(character))
    articles = MLQA_ARTICLES.get(language)
    if articles:
        text = re.sub(articles, " ", text)
    tokens = text.split() if language in MLQA_WHITESPACE else _by_character(text)
    return " ".join(token for token in tokens if token.strip())


def exact_match(expected: str, predicted: str, language: str) -> bool:
    """SQuAD's / MLQA's exact match: the normalised answers are equal (:func:`normalize_answer`;
    ``language`` is the question's language code)."""
    return normalize_answer(expected, language) == normalize_answer(predicted, language)


def token_f1(expected: str, predicted: str, language: str) -> float:
    """SQuAD's / MLQA's token F1: the harmonic mean of precision and recall of the normalised answers'
    tokens as multisets (Chinese: characters); 0 when they share no token (also when both are empty, as
    the official scripts give)."""
    truth = normalize_answer(expected, language).split()
    guess = normalize_answer(predicted, language).split()
    common = sum((Counter(truth) & Counter(guess)).values())
    if not common:
        return 0.0
    precision, recall = common / len(guess), common / len(truth)
    return 2 * precision * recall / (precision + recall)
