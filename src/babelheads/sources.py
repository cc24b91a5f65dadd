"""Another run opened as a source: the one place that checks a run read by another one (its kind,
that it finished, its model, its seed) and reads its heads in one encoding.

Heads travel as layer-major indices into ``layout`` (see :meth:`HeadLayout.flat`), score arrays as
(layers, query heads); :class:`HeadLayout` converts and writes ``L-H``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import AggregateSettings
from babelheads.analysis.dynamic_heads import retrieval_rankings
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadLayout
from babelheads.kinds import REGISTRY
from babelheads.runs import RunStore

ANALYSIS_FILE = "analysis.json"
"""A detect run's analysis settings its score tables were last written with, and their notes."""
ALL = "all"
"""The language code of what pools every language (a dynamic run's pooled probe, pooled scores)."""
PROBES_DIRECTORY = "probes"


def probe_path(run: Path, language: str) -> Path:
    """Where a dynamic run keeps the probe it fitted for ``language``."""
    return Path(run) / PROBES_DIRECTORY / f"{language}.pt"


def load_probe(run: Path, language: str = ALL):
    """The probe a dynamic run fitted for ``language`` ('all': every language pooled)."""
    from babelheads.analysis.head_probes import TrainedProbe

    path = probe_path(run, language)
    if not path.is_file():
        raise BabelheadsError(
            f"{run} has no probe for {language!r} (too little data, or run without --probes). "
            f"Probes it has: {', '.join(sorted(p.stem for p in path.parent.glob('*.pt'))) or 'none'}."
        )
    return TrainedProbe.load(path)


@dataclass(frozen=True)
class Source:
    """A run read by another run, opened and checked by :func:`open_source`."""

    store: RunStore
    manifest: dict
    option: str
    """How the user named it (``--heads``, ``RUN``), for messages."""

    @property
    def path(self) -> Path:
        return self.store.root

    @property
    def kind(self) -> str:
        return self.manifest["spec"]["kind"]

    @property
    def digest(self) -> str:
        return self.manifest["spec_digest"]

    @property
    def model(self) -> dict:
        return self.manifest["spec"]["model"]

    @property
    def model_name(self) -> str:
        return self.model["model"]

    @property
    def seed(self) -> int | None:
        return self.manifest.get("seed")

    @property
    def layout(self) -> HeadLayout:
        return HeadLayout.from_manifest(self.manifest["layout"])

    def require_model(self, identity: dict) -> None:
        """Refuse a run of another model: heads are addressed by layer and head, which mean nothing on
        another model (and a model whose files changed is another model)."""
        if self.model != identity:
            raise BabelheadsError(
                f"{self.option} {self.path} was run on another model ({self.model_name}) than the one "
                f"loaded now ({identity.get('model')}); its heads do not apply. Use runs of one model."
            )

    def require_other_seed(self, seed: int) -> None:
        """Heads are tested on other haystacks than the ones that chose them."""
        if seed == self.seed:
            raise BabelheadsError(
                f"--seed {seed} is the seed of {self.option} {self.path}: the heads would be tested on the "
                "haystacks that chose them. Use another --seed."
            )

    def rankings(self) -> dict[str, np.ndarray]:
        """Per language, every head with a score, best first (layer-major indices), from a detect or
        dynamic run's retrieval scores (the paper's variant, successful samples)."""
        return {language: scores.index.to_numpy() for language, scores in self._retrieval().items()}

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Per language, a (layers, query heads) score array: retrieval scores of a detect or dynamic
        run (heads without a score 0), LAHIS importance of an importance run."""
        layout = self.layout
        if self.kind == "importance":
            table = self.store.derived("importance")
            return {
                language: scores_array(group.rename(columns={"paper": "score"}), layout)
                for language, group in table.groupby("language")
            }
        arrays = {}
        for language, scores in self._retrieval().items():
            array = np.zeros(layout.total_heads)
            array[scores.index.to_numpy()] = scores.to_numpy(float)
            arrays[language] = array.reshape(layout.num_layers, layout.num_heads)
        return arrays

    def _retrieval(self) -> dict[str, pd.Series]:
        samples, head_scores = self.store.table("samples"), self.store.table("head_scores")
        return retrieval_rankings(samples, head_scores, self.layout.num_heads)


def open_source(
    path: str | Path,
    accepts: tuple[str, ...],
    option: str,
    finished: bool = True,
    other_seed: int | None = None,
) -> Source:
    """Open ``path`` as a run of one of the kinds ``accepts``; with ``other_seed``, refuse a run of that
    seed (heads are tested on other haystacks than the ones that chose them); with ``finished``, refuse
    a run whose tables are not all written. One line for each refusal, before anything loads."""
    store = RunStore(Path(path))
    manifest = store.manifest()
    kind = manifest["spec"]["kind"]
    if kind not in accepts:
        wanted = " or ".join(accepts)
        raise BabelheadsError(f"{option} {path} is a {kind} run; it takes a {wanted} run.")
    if "model" not in manifest["spec"]:
        raise BabelheadsError(
            f"{option} {path} has not started (no model recorded). Run its command to finish it."
        )
    source = Source(store, manifest, option)
    if other_seed is not None:
        source.require_other_seed(other_seed)
    if finished and not is_finished(store, kind):
        raise BabelheadsError(
            f"{option} {path} is not finished, so what it found would come from part of its samples. "
            "Run its command again to finish it."
        )
    return source


def is_finished(store: RunStore, kind: str) -> bool:
    return kind in REGISTRY and REGISTRY[kind].is_finished(store.root)


def scores_array(frame: pd.DataFrame, layout: HeadLayout) -> np.ndarray:
    """A (layers, query heads) array from rows of layer, head and score of a run of this layout; heads
    it lacks are 0."""
    array = np.zeros((layout.num_layers, layout.num_heads))
    array[frame["layer"].to_numpy(int), frame["head"].to_numpy(int)] = frame["score"].to_numpy(float)
    return array


def recorded_analysis(store: RunStore) -> tuple[AggregateSettings, list[str]]:
    """The analysis settings a detect run's score tables were last written with, and their notes."""
    path = store.root / ANALYSIS_FILE
    recorded = json.loads(path.read_text()) if path.exists() else store.manifest().get("analysis", {})
    notes = list(recorded.pop("notes", []))
    return AggregateSettings(**recorded), notes
