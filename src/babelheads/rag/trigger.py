"""When to retrieve and what to ask, from one decoding round's records (DRAGIN's RIND and query
formation, with the heads that read the context chosen by the caller). Pure functions on arrays.

Positions are *query-able* positions: the question's tokens, then the answer's tokens (kept from earlier
rounds, then generated in this one), numbered from 0. Instruction and document tokens are not among them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from babelheads.data.roots import language_file
from babelheads.errors import TaskError


def load_stop_words(language: str, root: Path | None = None) -> frozenset[str]:
    """The language's stop words (``stopwords/<code>.json`` of a data root), lower-cased."""
    path = language_file("stopwords", "builtin", language, root)
    if path is None:
        raise TaskError(
            f"No stop-word list for {language!r} (en, de, zh, fr, es have one). Add "
            f'stopwords/{language}.json ({{"stop_words": [...]}}) under a --data root.'
        )
    words = json.loads(path.read_text(encoding="utf-8"))["stop_words"]
    return frozenset(word.lower() for word in words)


def content_flags(texts: list[str], stop_words: frozenset[str], special: list[bool]) -> np.ndarray:
    """RIND's s_i per token: 1 for a token with a word character that is neither a stop word nor a
    special token (the end-of-turn token, padding), else 0."""
    flags = [
        not is_special and bool(re.search(r"\w", text)) and text.strip().lower() not in stop_words
        for text, is_special in zip(texts, special, strict=True)
    ]
    return np.asarray(flags, dtype=bool)


def token_importance(attention: np.ndarray) -> np.ndarray:
    """a_max(i): the most attention generated token i receives from any later generated token's query.

    attention : (queries, tokens), row s the attention of the query at decode step s (the query at
    generated token s-1, or at the prompt's last token for s = 0) on generated token i in column i.
    Token i is first a key at step i + 1, where it is the query itself; the later queries are steps
    i + 2 onwards. With one row per token plus the last token's own query, only the last token has no
    later query: 0, as in DRAGIN."""
    queries, tokens = attention.shape
    importance = np.zeros(tokens, np.float32)
    for token in range(min(tokens, queries - 2)):
        importance[token] = attention[token + 2 :, token].max()
    return importance


def rind(entropy: np.ndarray, importance: np.ndarray, content: np.ndarray) -> np.ndarray:
    """DRAGIN's Real-time Information Needs Detection score per token: H_i x a_max(i) x s_i."""
    return np.asarray(entropy, np.float32) * importance * content.astype(np.float32)


def query_windows(
    weights: np.ndarray, candidates: np.ndarray, top: int, gap: int, widen: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """The ``top`` candidate positions with the most attention (ties: earlier first), grouped into
    clusters of positions at most ``gap`` apart, each widened by ``widen`` positions on both sides
    (within 0..len(weights)); overlapping windows merge. Returns (chosen positions, half-open windows)."""
    indices = np.flatnonzero(candidates)
    if not len(indices) or top < 1:
        return [], []
    order = np.lexsort((indices, -weights[indices]))
    chosen = sorted(indices[order[:top]].tolist())
    clusters = [[chosen[0], chosen[0]]]
    for position in chosen[1:]:
        if position - clusters[-1][1] <= gap:
            clusters[-1][1] = position
        else:
            clusters.append([position, position])
    windows: list[tuple[int, int]] = []
    for first, last in clusters:
        start, end = max(first - widen, 0), min(last + widen + 1, len(weights))
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        else:
            windows.append((start, end))
    return chosen, windows


def whole_words(windows: list[tuple[int, int]], texts: list[str]) -> list[tuple[int, int]]:
    """Windows grown to word boundaries in a language that separates words with spaces: a window that
    starts or ends inside a word takes the rest of it (a token that continues a word starts with a
    letter or digit, right after one). Overlapping windows merge."""
    grown: list[tuple[int, int]] = []
    for start, end in windows:
        while start > 0 and _joins(texts[start - 1], texts[start]):
            start -= 1
        while end < len(texts) and _joins(texts[end - 1], texts[end]):
            end += 1
        if grown and start <= grown[-1][1]:
            grown[-1] = (grown[-1][0], max(end, grown[-1][1]))
        else:
            grown.append((start, end))
    return grown


def _joins(left: str, right: str) -> bool:
    return bool(left) and bool(right) and left[-1].isalnum() and right[0].isalnum()
