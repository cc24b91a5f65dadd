"""Detection runs as a parallel grid: one row per cell (length x depth x needle) in every language.

The study's NIAH grid asks the same cells in every language and translation condition, so a cell,
not a sample, is what was drawn independently: a bootstrap draws cells once and uses the draw for
every language (shared/reference/claims.md, "Unit").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import with_success
from babelheads.errors import BabelheadsError

CELL_KEYS = ("length", "depth", "needle_id")


@dataclass(frozen=True)
class CellGrid:
    """layers, heads : shape (heads,). cells : the cell labels, shape (cells,).
    scores : language -> (cells, heads) retrieval score of the cell's sample, NaN where it failed (the
        score averages successful samples, as the official code) or is missing.
    attention : language -> (cells, heads) needle attention of every finished sample (NaN if missing).
    success : language -> (cells,) 1.0 / 0.0, NaN where the cell did not run in that language.
    """

    layers: np.ndarray
    heads: np.ndarray
    cells: np.ndarray
    scores: dict[str, np.ndarray]
    attention: dict[str, np.ndarray]
    success: dict[str, np.ndarray]

    @property
    def languages(self) -> list[str]:
        """The monolingual conditions (translation conditions read 'en>de')."""
        return [code for code in self.scores if ">" not in code]

    def mean_scores(self, rows: np.ndarray, languages: list[str] | None = None) -> dict[str, np.ndarray]:
        """Per language, the mean score per head over the successful samples among ``rows`` (cell
        indices, repeats counted); NaN for a language without one."""
        return {code: _nanmean_rows(self.scores[code][rows]) for code in languages or self.languages}

    def exchanged_means(
        self, rows: np.ndarray, languages: list[str], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """mean_scores after handing each cell's samples to ``languages`` in a random order: what the
        languages would give if they used the same heads (same cells, same sample counts)."""
        stacked = np.stack([self.scores[code][rows] for code in languages])  # (languages, rows, heads)
        order = rng.permuted(np.tile(np.arange(len(languages)), (len(rows), 1)), axis=1)  # (rows, languages)
        exchanged = stacked[order.T, np.arange(len(rows))[None, :]]
        return {code: _nanmean_rows(exchanged[index]) for index, code in enumerate(languages)}

    def successes(self, code: str) -> int:
        return int(np.nansum(self.success[code]))


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    present = ~np.isnan(values[:, 0]) if values.shape[1] else np.zeros(len(values), dtype=bool)
    if not present.any():
        return np.full(values.shape[1], np.nan)
    return values[present].mean(axis=0)


def cell_grid(samples: pd.DataFrame, head_scores: pd.DataFrame, variant: str, threshold: float) -> CellGrid:
    """The grid from detection runs' samples and head_scores tables (several runs concatenated).

    variant : the score variant ('paper' or 'official'); threshold : ROUGE-1 recall above it is a success.
    """
    samples = with_success(samples, threshold)
    if samples.empty:
        raise BabelheadsError("The runs have no finished samples. Run detect first.")
    samples = samples.assign(cell=_labels(samples))
    if samples.duplicated(["language", "cell"]).any():
        raise BabelheadsError(
            "Two samples of one language share a grid cell (length, depth, needle): the runs overlap. "
            "Compare runs of different languages or translation pairs."
        )
    cells = np.array(sorted(samples["cell"].unique()))
    order = head_scores[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    columns = pd.MultiIndex.from_frame(order)
    joined = head_scores.merge(samples[["sample_id", "cell", "success"]], on="sample_id")
    scores, attention, success = {}, {}, {}
    for code, frame in joined.groupby("language", sort=False):
        wide = frame.pivot_table(
            index="cell", columns=["layer", "head"], values=[variant, "needle_attention"]
        )
        present = wide[variant].reindex(index=cells, columns=columns)
        succeeded = frame.drop_duplicates("cell").set_index("cell")["success"].reindex(cells)
        kept = present.to_numpy(float).copy()
        kept[~succeeded.fillna(False).astype(bool).to_numpy()] = np.nan
        scores[code] = kept
        attention[code] = wide["needle_attention"].reindex(index=cells, columns=columns).to_numpy(float)
        success[code] = succeeded.astype(float).to_numpy()
    return CellGrid(order["layer"].to_numpy(), order["head"].to_numpy(), cells, scores, attention, success)


def _labels(samples: pd.DataFrame) -> pd.Series:
    missing = [key for key in CELL_KEYS if key not in samples]
    if missing:
        raise BabelheadsError(
            f"The samples table lacks {', '.join(missing)}: it is not a NIAH detection run."
        )
    return (
        "L"
        + samples["length"].astype(str)
        + "-D"
        + samples["depth"].map("{:.3f}".format)
        + "-"
        + samples["needle_id"]
    )
