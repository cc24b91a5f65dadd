"""A rag run's answers into scores per selection and paired contrasts between selections.

samples : one row per question and selection (the rag run's samples table): sample_id, language,
selection, exact, f1, contains, retrievals, documents, gold_found.
"""

from __future__ import annotations

import warnings

import pandas as pd

from babelheads.analysis.stats import COLUMNS, MIN_UNITS, bootstrap_mean, columns, paired_contrast
from babelheads.analysis.stats import row as interval_row
from babelheads.errors import ThinDataWarning
from babelheads.rag.selections import HEAD_GUIDED, SELECTIONS
from babelheads.sources import ALL

METRICS = ("exact", "f1", "contains")
CONTRASTS = (
    *((selection, baseline) for selection in HEAD_GUIDED for baseline in ("none", "question")),
    ("dynamic", "static"),
    ("dynamic", "dragin"),
)


def _with_pooled(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples once per language and once more under 'all' (languages pooled), when several."""
    if samples["language"].nunique() < 2:
        return samples
    return pd.concat([samples, samples.assign(language=ALL)], ignore_index=True)


def rag_scores(samples: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Per language and selection: EM, token F1 and containment over questions with bootstrap
    intervals (<metric>_lo, <metric>_hi over n questions; NaN for one question); mean retrievals,
    documents in the final context and the share of supporting facts among them."""
    rows = []
    for (language, selection), group in _with_pooled(samples).groupby(["language", "selection"], sort=False):
        row = {"language": language, "selection": selection, "n": len(group)}
        for metric in METRICS:
            # rag_contrasts warns once for the run; a warning per cell would only repeat it
            measured = bootstrap_mean(group[metric].to_numpy(float), replicates, seed, warn=False)
            row.update(columns(metric, measured))
        for column in ("retrievals", "documents", "gold_found"):
            row[column] = float(group[column].mean())
        row["retrieved"] = float((group["retrievals"] > 0).mean())
        rows.append(row)
    return (
        pd.DataFrame(rows).sort_values(["language", "selection"], key=_selection_order).reset_index(drop=True)
    )


def _selection_order(column: pd.Series) -> pd.Series:
    """Selections in SELECTIONS order; languages alphabetical with the pooled 'all' last."""
    if column.name == "selection":
        return column.map({selection: rank for rank, selection in enumerate(SELECTIONS)})
    return column.map(lambda code: (code == ALL, code))


def rag_contrasts(samples: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Paired per question: each head-guided selection minus no retrieval and minus the question-only
    query, and dynamic minus static and minus DRAGIN's heads, for EM and F1, with intervals (value, lo,
    hi over n questions)."""
    rows = []
    for language, group in _with_pooled(samples).groupby("language", sort=True):
        for metric in ("exact", "f1"):
            wide = group.pivot_table(index="sample_id", columns="selection", values=metric, aggfunc="mean")
            for first, second in CONTRASTS:
                if {first, second} <= set(wide.columns):
                    contrast = paired_contrast(wide[first], wide[second], replicates, seed, warn=False)
                    rows.append(
                        {
                            "language": language,
                            "metric": metric,
                            "contrast": f"{first} - {second}",
                            **interval_row(contrast),
                        }
                    )
    if samples["sample_id"].nunique() < MIN_UNITS:
        warnings.warn("Fewer than 2 questions: no intervals (NaN).", ThinDataWarning, stacklevel=2)
    return pd.DataFrame(rows, columns=["language", "metric", "contrast", *COLUMNS])
