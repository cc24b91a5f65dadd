"""Extractive QA sets: the project's own (parallel, over the built-in corpus) or XQuAD-style datasets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.corpora import HF_PREFIX, hf_dataset
from babelheads.data.roots import language_file
from babelheads.errors import TaskError


@dataclass(frozen=True)
class Question:
    """document : where the context comes from (QA is split into halves by document, never by question,
    so no held-out question shares its paragraph with a training one)."""

    id: str
    document: str
    context: str
    question: str
    answer: str


def load_questions(source: str, language: str, extra_root: Path | None = None) -> list[Question]:
    """source : 'builtin' | a JSON file or a directory of <language>.json (lists of objects with id,
    document, context, question, answer) | 'hf:NAME[:CONFIG[:SPLIT]]' with SQuAD-style columns
    (context, question, answers.text), '{lang}' replaced, e.g. hf:google/xquad:xquad.{lang}:validation."""
    if source.startswith(HF_PREFIX):
        return _hf_questions(source[len(HF_PREFIX) :], language)
    path = _question_file(source, language, extra_root)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        questions = [Question(**row) for row in rows]
    except (json.JSONDecodeError, TypeError) as error:
        raise TaskError(
            f"{path} is not a QA file (a JSON list of id, document, context, question, answer): {error}."
        ) from error
    if not questions:
        raise TaskError(f"{path} holds no questions.")
    return questions


def _question_file(source: str, language: str, extra_root: Path | None) -> Path:
    path = language_file("qa", source, language, extra_root)
    if path is None and source == "builtin":
        raise TaskError(f"No built-in QA set for language {language!r}. Pass --qa FILE_OR_DIR or hf:DATASET.")
    if path is None:
        raise TaskError(f"QA set not found: {source}. Use 'builtin', a JSON file, a directory or hf:DATASET.")
    return path


def _hf_questions(spec: str, language: str) -> list[Question]:
    dataset, (name, _, _) = hf_dataset(spec, language, [None, "validation"], "QA sets")
    questions = []
    for index, row in enumerate(dataset):
        if not {"context", "question", "answers"} <= set(row):
            raise TaskError(
                f"Dataset {name!r} lacks SQuAD columns context, question, answers; has {', '.join(row)}."
            )
        answers = row["answers"]["text"] if isinstance(row["answers"], dict) else row["answers"]
        if not answers:
            continue
        # A stable name per paragraph (Python's hash() changes between processes).
        document = "context-" + hashlib.sha256(row["context"].encode()).hexdigest()[:12]
        questions.append(
            Question(str(row.get("id", index)), document, row["context"], row["question"], answers[0])
        )
    return questions
