"""The documents a retrieval loop searches, and their BM25 index (bm25s), both cached on disk.

A collection for two-hop questions holds every question's supporting facts and look-alike distractors
(all questions of the set, not only the ones asked) and the paragraphs of a corpus, one document each.
BM25 sees the language's answer tokens (words, CJK characters or jieba words), so Chinese is searched
by words, not by runs of characters.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from babelheads.data.corpora import load_documents
from babelheads.data.multihop import TwoHop
from babelheads.errors import BabelheadsError
from babelheads.models import cache_root
from babelheads.scoring import answer_tokens
from babelheads.tasks.base import content_digest

KINDS = ("fact", "distractor", "corpus")
BM25_PARAMETERS = {"k1": 1.5, "b": 0.75, "method": "lucene"}


@dataclass(frozen=True)
class Document:
    """id : stable across runs ('<question id>/fact<k>', '<question id>/distractor<k>',
    'corpus/<name>/<paragraph>'); item : the question it supports or imitates ('' for corpus text)."""

    id: str
    text: str
    kind: str
    item: str = ""


def build_collection(items: list[TwoHop], corpus: str, language: str, root: Path | None) -> list[Document]:
    """Every fact and distractor of ``items`` and every paragraph of ``corpus`` ('' for none), in a
    fixed order; a text that occurs twice is kept once (its first id)."""
    documents: list[Document] = []
    for item in items:
        documents += [
            Document(f"{item.id}/fact{k}", text, "fact", item.id) for k, text in enumerate(item.facts)
        ]
        documents += [
            Document(f"{item.id}/distractor{k}", text, "distractor", item.id)
            for k, text in enumerate(item.distractors)
        ]
    if corpus:
        for name, text in load_documents(corpus, language, root):
            paragraphs = [part.strip() for part in text.split("\n\n") if part.strip()]
            documents += [
                Document(f"corpus/{name}/{k}", paragraph, "corpus") for k, paragraph in enumerate(paragraphs)
            ]
    seen: set[str] = set()
    unique = []
    for document in documents:
        if document.text not in seen:
            seen.add(document.text)
            unique.append(document)
    return unique


class Bm25Index:
    """BM25 (bm25s, Lucene's variant) over a collection's answer tokens."""

    def __init__(self, documents: list[Document], tokenizer_kind: str, retriever) -> None:
        self.documents = documents
        self.tokenizer_kind = tokenizer_kind
        self.retriever = retriever

    @classmethod
    def build(cls, documents: list[Document], tokenizer_kind: str) -> Bm25Index:
        import bm25s

        if not documents:
            raise BabelheadsError("The document collection is empty. Give questions or a --corpus.")
        retriever = bm25s.BM25(**BM25_PARAMETERS)
        retriever.index(
            [answer_tokens(document.text, tokenizer_kind) for document in documents], show_progress=False
        )
        return cls(documents, tokenizer_kind, retriever)

    def scores(self, query: str) -> np.ndarray:
        """One BM25 score per document (0 where no query token occurs)."""
        vocabulary = self.retriever.vocab_dict
        tokens = [token for token in answer_tokens(query, self.tokenizer_kind) if token in vocabulary]
        if not tokens:
            return np.zeros(len(self.documents), np.float32)
        return np.asarray(self.retriever.get_scores(tokens), np.float32)

    def search(self, query: str, count: int, exclude: set[str] = frozenset()) -> list[tuple[Document, float]]:
        """The ``count`` best documents outside ``exclude`` (ids), best first, ties by collection order.
        Documents that share no token with the query are never returned: their order would be arbitrary."""
        scores = self.scores(query)
        order = np.lexsort((np.arange(len(scores)), -scores))
        found = []
        for index in order:
            if scores[index] <= 0 or len(found) == count:
                break
            if self.documents[index].id not in exclude:
                found.append((self.documents[index], float(scores[index])))
        return found


def cached_index(documents: list[Document], tokenizer_kind: str, cache: Path | None = None) -> Bm25Index:
    """The index of ``documents``, loaded from ``cache`` (default: $BABELHEADS_CACHE/bm25) when an
    identical collection was indexed before, else built and saved there. A damaged entry is rebuilt."""
    import bm25s

    digest = content_digest(
        {
            "documents": [asdict(document) for document in documents],
            "tokenizer": tokenizer_kind,
            "bm25": BM25_PARAMETERS,
            "bm25s": bm25s.__version__,
        }
    )
    directory = (cache or cache_root() / "bm25") / digest
    listing = directory / "documents.json"
    if listing.is_file():
        try:
            stored = [Document(**row) for row in json.loads(listing.read_text(encoding="utf-8"))]
            retriever = bm25s.BM25.load(str(directory), show_progress=False)
            if stored == documents:
                return Bm25Index(stored, tokenizer_kind, retriever)
        except (OSError, ValueError, TypeError, KeyError) as error:
            warnings.warn(f"Rebuilding the damaged BM25 cache {directory}: {error}.", stacklevel=2)
    index = Bm25Index.build(documents, tokenizer_kind)
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    index.retriever.save(str(temporary), show_progress=False)
    (temporary / "documents.json").write_text(
        json.dumps([asdict(document) for document in documents], ensure_ascii=False), encoding="utf-8"
    )
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)
    return index
