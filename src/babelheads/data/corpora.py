"""Haystack text: the built-in parallel corpus, a file, a directory, or a Hugging Face dataset."""

from __future__ import annotations

import random
from pathlib import Path

from babelheads.data.roots import data_roots
from babelheads.errors import TaskError

HF_PREFIX = "hf:"
HF_MAX_CHARS = 2_000_000


def load_corpus(source: str, language: str, seed: int, extra_root: Path | None = None) -> str:
    """The haystack text for ``language``: documents joined by blank lines, in a seeded order.

    source : 'builtin' | a .txt file | a directory (its ``<language>/`` subdirectory if there is one)
        | 'hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]' where '{lang}' in NAME or CONFIG becomes the language code.
    """
    documents = [text for _, text in load_documents(source, language, extra_root)]
    random.Random(seed).shuffle(documents)
    return "\n\n".join(documents)


def load_documents(source: str, language: str, extra_root: Path | None = None) -> list[tuple[str, str]]:
    """The corpus's non-empty documents as (name, text), in a fixed order: file names for files, row
    numbers for a dataset. The names of a parallel corpus are the same in every language."""
    if source.startswith(HF_PREFIX):
        named = [
            (f"row{index:06d}", text)
            for index, text in enumerate(_hf_documents(source[len(HF_PREFIX) :], language))
        ]
    else:
        named = [
            (path.stem, path.read_text(encoding="utf-8"))
            for path in _corpus_files(source, language, extra_root)
        ]
    documents = [(name, text.strip()) for name, text in named if text.strip()]
    if not documents:
        raise TaskError(
            f"The corpus {source!r} has no text for language {language!r}. Give a non-empty corpus."
        )
    return documents


def _corpus_files(source: str, language: str, extra_root: Path | None) -> list[Path]:
    if source == "builtin":
        for root in data_roots(extra_root):
            directory = root / "corpus" / language
            if directory.is_dir():
                return sorted(directory.glob("*.txt"))
        raise TaskError(f"No built-in corpus for language {language!r}. Pass --corpus FILE_OR_DIR.")
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        subdirectories = sorted(entry.name for entry in path.iterdir() if entry.is_dir())
        if subdirectories and language not in subdirectories:
            raise TaskError(
                f"The corpus directory {path} has subdirectories ({', '.join(subdirectories)}) but none "
                f"named {language!r}. Add {path / language} or pass a directory of one language."
            )
        directory = path / language if subdirectories else path
        found = sorted(
            file for file in directory.rglob("*") if file.is_file() and file.suffix in {".txt", ".md"}
        )
        if not found:
            raise TaskError(f"The corpus directory {directory} holds no .txt or .md files.")
        return found
    raise TaskError(f"Corpus not found: {source}. Use 'builtin', a text file, a directory or hf:DATASET.")


def hf_dataset(spec: str, language: str, defaults: list, what: str, streaming: bool = False):
    """``spec`` NAME[:CONFIG[:SPLIT[:...]]] with '{lang}' replaced, loaded with the datasets package;
    returns (the dataset, the parts filled with ``defaults``: name, config, split, ...)."""
    parts = [part.replace("{lang}", language) for part in spec.split(":")]
    parts = (parts + defaults[len(parts) - 1 :])[: len(defaults) + 1]
    name, config, split = parts[:3]
    try:
        import datasets
    except ImportError as error:
        raise TaskError(
            f"{what} from Hugging Face need the datasets package: pip install datasets"
        ) from error
    try:
        extra = {"streaming": True} if streaming else {}
        dataset = datasets.load_dataset(name, config or None, split=split, **extra)
    except Exception as error:  # datasets raises many unrelated types for a missing dataset
        raise TaskError(
            f"Could not load dataset {name!r} ({config}, {split}): {str(error).splitlines()[0]}"
        ) from error
    return dataset, parts


def _hf_documents(spec: str, language: str) -> list[str]:
    dataset, (name, _, _, column) = hf_dataset(spec, language, [None, "train", "text"], "Corpora", True)
    documents, total = [], 0
    for row in dataset:
        if column not in row:
            raise TaskError(f"Dataset {name!r} has no column {column!r}; columns: {', '.join(row)}.")
        documents.append(str(row[column]))
        total += len(documents[-1])
        if total >= HF_MAX_CHARS:
            break
    return documents
