"""A rag run's answers into scores per selection, paired contrasts between selections, and a sweep of
the retrieval trigger's threshold over the recorded per-step RIND.

samples : one row per question and selection (the rag run's samples table): sample_id, language,
selection, exact, f1, contains, retrievals, documents, gold_found (and matched_to: the head-guided
selection whose budget a budget-matched policy copied).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from babelheads.analysis.stats import COLUMNS, MIN_UNITS, bootstrap_mean, columns, paired_contrast
from babelheads.analysis.stats import row as interval_row
from babelheads.errors import ThinDataWarning
from babelheads.rag.selections import HEAD_GUIDED, POLICIES, SELECTIONS
from babelheads.sources import ALL

METRICS = ("exact", "f1", "contains")
QUESTION_MATCHED, RANDOM_RETRIEVER = POLICIES
ORDER = tuple(dict.fromkeys((*SELECTIONS, *POLICIES)))
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
    """Selections in SELECTIONS order, the policies after them; languages alphabetical with the pooled
    'all' last."""
    if column.name == "selection":
        return column.map({selection: rank for rank, selection in enumerate(ORDER)})
    if column.name == "language":
        return column.map(lambda code: (code == ALL, code))
    return column


def rag_contrasts(samples: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Paired per question: each head-guided selection minus no retrieval and minus the question-only
    query, and dynamic minus static and minus DRAGIN's heads; the head-guided selection a policy was
    matched to minus the policy (the same budget); for EM and F1, with intervals (value, lo, hi over n
    questions)."""
    rows = []
    pairs = [*CONTRASTS, *_matched_pairs(samples)]
    for language, group in _with_pooled(samples).groupby("language", sort=True):
        for metric in ("exact", "f1"):
            wide = group.pivot_table(index="sample_id", columns="selection", values=metric, aggfunc="mean")
            for first, second in pairs:
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


def _matched_pairs(samples: pd.DataFrame) -> list[tuple[str, str]]:
    """(head-guided selection, policy) for each policy of the run and the selection whose budget it
    copied: only that pair is budget-matched."""
    if "matched_to" not in samples:
        return []
    policies = samples[samples["selection"].isin(POLICIES)]
    pairs = policies[["matched_to", "selection"]].drop_duplicates().itertuples(index=False)
    return [(str(first), str(second)) for first, second in pairs if first]


SWEEP_QUANTILES = (0.5, 0.75, 0.9)
SWEEP_COLUMNS = [
    "language",
    "selection",
    "threshold",
    "run_threshold",
    "triggered",
    "triggered_lo",
    "triggered_hi",
    "retrieving",
    "retrieving_lo",
    "retrieving_hi",
    "f1",
    "f1_lo",
    "f1_hi",
    "determined",
    "n",
]


def sweep_thresholds(steps: pd.DataFrame, threshold: float) -> list[float]:
    """The thresholds swept: 0, the run's, the median, 75th and 90th percentiles of the positive RIND of
    the first round's steps (pooled over languages and selections, so every language has the same
    rows) and its maximum (at which nothing triggers: RIND must exceed the threshold)."""
    values = {0.0, float(threshold)}
    first = steps.loc[steps["round"] == 1, "rind"].to_numpy(float)
    positive = first[np.isfinite(first) & (first > 0)]
    if len(positive):
        values.update(float(np.quantile(positive, q)) for q in SWEEP_QUANTILES)
        values.add(float(positive.max()))
    return sorted(values)


def threshold_sweep(
    samples: pd.DataFrame,
    steps: pd.DataFrame,
    trace: pd.DataFrame,
    threshold: float,
    retrievals: int,
    replicates: int,
    seed: int,
    thresholds: list[float] | None = None,
) -> pd.DataFrame:
    """How the head-guided selections' result depends on the RIND threshold, from the run's recorded
    per-step RIND alone (no new decoding), per language (and pooled) and selection, at each threshold:

    - triggered : the share of the first round's answer steps whose RIND exceeds the threshold (the
      first round is the answer without documents, the same for every selection), mean over questions;
    - retrieving : the share of questions with at least one such step (those that would retrieve);
    - f1 : token F1 over the questions whose answer at that threshold the run determines: a question
      whose first round has no step over it answers without retrieval (the ``none`` answer's F1), and
      one whose every round would try the same steps in the same order as at the run's threshold keeps
      its recorded answer; any other question would need decoding again (``--threshold``) and is left
      out, so ``determined`` (questions) says how many the F1 stands on (all at the run's threshold).

    Intervals over questions (<name>_lo, <name>_hi; n: questions). steps : one row per scanned step
    (sample_id, language, selection, round, retrievals before the round, step, rind); trace : the
    run's retrieval trace (a try's step and whether it found documents)."""
    if steps.empty or samples.empty:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    thresholds = thresholds if thresholds is not None else sweep_thresholds(steps, threshold)
    f1 = samples.set_index(["sample_id", "selection"])["f1"]
    none = f1.xs("none", level="selection") if "none" in set(samples["selection"]) else pd.Series(dtype=float)
    # a head-guided try has its answer step; the question and the policies retrieve before answering (-1)
    tries = trace[trace["step"] >= 0] if "step" in trace else pd.DataFrame()
    tried = dict(list(tries.groupby(["sample_id", "selection"], sort=False))) if not tries.empty else {}
    records = []
    for (sample_id, selection), own in steps.groupby(["sample_id", "selection"], sort=True):
        if selection not in HEAD_GUIDED:
            continue
        rounds = [
            (int(group["retrievals"].iloc[0]), group["step"].to_numpy(int), group["rind"].to_numpy(float))
            for _, group in own.sort_values(["round", "step"]).groupby("round", sort=True)
        ]
        attempts = tried.get((sample_id, selection))
        attempts = (
            []
            if attempts is None
            else [
                (int(entry.retrieval), int(entry.step), bool(str(entry.documents).strip()))
                for entry in attempts.sort_values("retrieval").itertuples()
            ]
        )
        first_scores = rounds[0][2] if rounds else np.empty(0)
        for value in thresholds:
            outcome = _outcome(rounds, attempts, value, retrievals)
            answer = {"recorded": f1.get((sample_id, selection), np.nan), "none": none.get(sample_id, np.nan)}
            records.append(
                {
                    "sample_id": sample_id,
                    "language": own["language"].iloc[0],
                    "selection": selection,
                    "threshold": value,
                    "triggered": float(np.mean(first_scores > value)) if len(first_scores) else np.nan,
                    "retrieving": float(np.any(first_scores > value)),
                    "f1": answer.get(outcome, np.nan),
                }
            )
    if not records:
        return pd.DataFrame(columns=SWEEP_COLUMNS)
    rows = []
    frame = _with_pooled(pd.DataFrame(records))
    for (language, selection, value), group in frame.groupby(["language", "selection", "threshold"]):
        row = {
            "language": language,
            "selection": selection,
            "threshold": value,
            "run_threshold": bool(np.isclose(value, threshold)),
        }
        for name in ("triggered", "retrieving", "f1"):
            values = group[name].to_numpy(float)
            measured = bootstrap_mean(values[np.isfinite(values)], replicates, seed, warn=False)
            row.update(columns(name, measured))
        row["determined"] = int(np.isfinite(group["f1"].to_numpy(float)).sum())
        row["n"] = len(group)
        rows.append(row)
    return (
        pd.DataFrame(rows, columns=SWEEP_COLUMNS)
        .sort_values(["language", "selection", "threshold"], key=_selection_order)
        .reset_index(drop=True)
    )


def _outcome(
    rounds: list[tuple[int, np.ndarray, np.ndarray]],
    attempts: list[tuple[int, int, bool]],
    threshold: float,
    budget: int,
) -> str:
    """What the run says about one answer at ``threshold``: 'none' (no first-round step is over it: the
    answer without retrieval), 'recorded' (every round tries the same steps as in the run, so the
    answer is the recorded one) or 'unknown'.

    rounds : per scanned round, (retrievals before it, its steps, their RIND); attempts : the run's
    retrievals (number, step, whether documents were found). The loop tries the round's steps over the
    threshold in order while retrievals are left; the first try that finds documents cuts the answer."""
    for index, (before, positions, scores) in enumerate(rounds):
        end = rounds[index + 1][0] if index + 1 < len(rounds) else budget
        mine = [(step, found) for number, step, found in attempts if before < number <= end]
        over = positions[scores > threshold].tolist()
        if index == 0 and not over:
            return "none" if mine else "recorded"
        if over[: len(mine)] != [step for step, _ in mine]:
            return "unknown"
        if (mine and mine[-1][1]) or before + len(mine) >= budget:
            continue  # cut at the same try, or the budget spent at the same try: the next round is the same
        if len(over) != len(mine):
            return "unknown"  # the run found no more steps over its threshold; this one would try more
    return "recorded"
