"""Two-hop questions with marked supporting sentences: the project's own (en, de, zh) or HotpotQA.

A question needs two facts: the first links its subject to a bridge entity, the second links the bridge
to the answer, which is a verbatim span of the second fact. Distractors are sentences that look alike.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.corpora import HF_PREFIX, hf_dataset
from babelheads.data.roots import language_file
from babelheads.errors import TaskError, ThinDataWarning


@dataclass(frozen=True)
class TwoHop:
    """facts : the supporting sentences in reasoning order; the answer occurs exactly once in the last."""

    id: str
    facts: tuple[str, ...]
    distractors: tuple[str, ...]
    question: str
    answer: str

    @property
    def answer_fact(self) -> int:
        return len(self.facts) - 1


def load_two_hop(source: str, language: str, extra_root: Path | None = None) -> list[TwoHop]:
    """source : 'builtin' | a JSON file or directory of <language>.json (objects with id, facts,
    distractors, question, answer) | 'hf:NAME[:CONFIG[:SPLIT]]' in HotpotQA's format, e.g.
    hf:hotpotqa/hotpot_qa:distractor:validation."""
    if source.startswith(HF_PREFIX):
        return _hotpot(source[len(HF_PREFIX) :], language)
    path = _file(source, language, extra_root)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        items = [
            TwoHop(
                str(row["id"]),
                tuple(row["facts"]),
                tuple(row.get("distractors", ())),
                row["question"],
                row["answer"],
            )
            for row in rows
        ]
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise TaskError(
            f"{path} is not a two-hop file (a JSON list of id, facts, distractors, question, answer): "
            f"{error}."
        ) from error
    for item in items:
        _check(item, path)
    if not items:
        raise TaskError(f"{path} holds no questions.")
    return items


def _check(item: TwoHop, where: object) -> None:
    if len(item.facts) < 2:
        raise TaskError(
            f"Question {item.id!r} in {where} has {len(item.facts)} facts; a two-hop question needs 2."
        )
    if item.facts[-1].count(item.answer) != 1:
        raise TaskError(
            f"Question {item.id!r} in {where}: its answer {item.answer!r} must occur exactly once in its "
            "last fact, so the answer span is unambiguous."
        )


def _file(source: str, language: str, extra_root: Path | None) -> Path:
    path = language_file("multihop", source, language, extra_root)
    if path is None and source == "builtin":
        raise TaskError(
            f"No built-in two-hop questions for language {language!r} (en, de, zh have them). Pass "
            "--questions FILE_OR_DIR or hf:DATASET."
        )
    if path is None:
        raise TaskError(
            f"Two-hop set not found: {source}. Use 'builtin', a JSON file, a directory or hf:DATASET."
        )
    return path


def _hotpot(spec: str, language: str) -> list[TwoHop]:
    """HotpotQA rows: the supporting sentences (in the order marked) are the facts; the answer must be a
    span of exactly one of them, which goes last; the other sentences of the context are distractors.
    Yes/no questions and answers not found verbatim are left out, with a warning that counts them."""
    dataset, (name, _, _) = hf_dataset(spec, language, [None, "validation"], "Two-hop sets")
    items, left_out = [], 0
    for index, row in enumerate(dataset):
        if not {"question", "answer", "supporting_facts", "context"} <= set(row):
            raise TaskError(
                f"Dataset {name!r} lacks HotpotQA columns question, answer, supporting_facts, context; "
                f"has {', '.join(row)}."
            )
        sentences = dict(zip(row["context"]["title"], row["context"]["sentences"], strict=True))
        marked = list(zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"], strict=True))
        facts = [
            sentences[title][sent].strip()
            for title, sent in marked
            if title in sentences and sent < len(sentences[title])
        ]
        holding = [fact for fact in facts if fact.count(row["answer"]) == 1]
        if (
            len(facts) < 2
            or len(holding) != 1
            or any(row["answer"] in fact for fact in facts if fact not in holding)
        ):
            left_out += 1
            continue
        facts = [fact for fact in facts if fact not in holding] + holding
        chosen = set(marked)
        distractors = [
            sentence.strip()
            for title, group in sentences.items()
            for sent, sentence in enumerate(group)
            if (title, sent) not in chosen and row["answer"] not in sentence
        ]
        items.append(
            TwoHop(
                str(row.get("id", index)),
                tuple(facts),
                tuple(distractors[:4]),
                row["question"],
                row["answer"],
            )
        )
    if left_out:
        warnings.warn(
            f"{name}: {left_out} questions left out (yes/no, or the answer is not one span of one fact).",
            ThinDataWarning,
            stacklevel=2,
        )
    if not items:
        raise TaskError(f"Dataset {name!r} gave no usable two-hop question.")
    return items
