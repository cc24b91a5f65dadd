"""The dynamic-RAG claims of "Retrieval Heads are Dynamic" (Sec. 6, built on DRAGIN), from a rag run's
answers: retrieval whose queries come from the probe's dynamic heads answers two-hop questions better
than no retrieval, than the static retrieval heads, than DRAGIN's last layer, and than the question as
the query at the same document budget.

Every contrast is token F1 of the dynamic selection minus the other selection, paired by question (a
question answered under both), signed so that positive is the paper's side; one part per language
(intersection-union over them, Holm for a contradiction: :func:`claim_rows`). The negative control puts
the random retriever (documents drawn at random at the dynamic selection's budget) in place of the
dynamic heads: on it no claim may hold, and its verdict fills the claims' control column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from babelheads.analysis.claims import (
    DYNAMIC,
    Claim,
    Context,
    Measured,
    bootstrap_units,
    claim_rows,
    claims_tables,
    nothing,
    register_claim,
    with_controls,
)
from babelheads.analysis.rag_scores import QUESTION_MATCHED, RANDOM_RETRIEVER

FIGURE = "Dynamic RAG: answers per head selection"
PAPER_SIDE = "dynamic"
MEASURE = "token F1"
UNIT = "questions (paired across selections)"
F1_NORMALISATION = (
    "token F1 with SQuAD v1.1's answer normalisation for English and MLQA's per-language normalisation "
    "for the others (articles, punctuation, white space; Chinese by character), on the first line of "
    "the answer against the one gold answer (the paper: HotpotQA F1 with DRAGIN's SQuAD normalisation)"
)

RAG_VS_NONE = register_claim(
    "dynamic.rag_vs_none",
    DYNAMIC,
    "Retrieval with queries from the probe's dynamic heads answers two-hop questions better (token F1) "
    "than no retrieval.",
    figure=FIGURE,
)
RAG_VS_STATIC = register_claim(
    "dynamic.rag_vs_static",
    DYNAMIC,
    "Queries from the dynamic heads answer two-hop questions better (token F1) than queries from the "
    "static top retrieval heads, at the same trigger and budget.",
    figure=FIGURE,
)
RAG_VS_LAST_LAYER = register_claim(
    "dynamic.rag_vs_last_layer",
    DYNAMIC,
    "Queries from the dynamic heads answer two-hop questions better (token F1) than DRAGIN's own "
    "queries from the last layer's heads, at the same trigger and budget.",
    figure=FIGURE,
)
RAG_VS_QUESTION = register_claim(
    "dynamic.rag_vs_question",
    DYNAMIC,
    "Queries from the dynamic heads answer two-hop questions better (token F1) than the question as the "
    "query at the same document budget (as many retrievals and documents on each question).",
    figure=FIGURE,
)
CONTRASTS: tuple[tuple[Claim, str, str], ...] = (
    (RAG_VS_NONE, "none", "no retrieval"),
    (RAG_VS_STATIC, "static", "the static top retrieval heads"),
    (RAG_VS_LAST_LAYER, "dragin", "DRAGIN's last layer (every head of it, averaged)"),
    (
        RAG_VS_QUESTION,
        QUESTION_MATCHED,
        "the question as the query at the dynamic selection's budget on each question",
    ),
)


def rag_claims(
    samples: pd.DataFrame,
    replicates: int,
    seed: int,
    context: Context,
    protocol: str = "",
    side: str = PAPER_SIDE,
) -> list[tuple[dict, list[dict]]]:
    """The four claims' rows from a rag run's samples (sample_id, language, selection, f1; matched_to
    for the policies). ``side`` is the selection on the paper's side: the dynamic heads, or the random
    retriever for the negative control. ``protocol`` describes the run (loop, trigger, collection) and
    how it differs from the paper's; it ends every row's test."""
    languages = sorted(samples["language"].unique()) if not samples.empty else []
    present = set(samples["selection"]) if not samples.empty else set()
    rows = []
    for claim, baseline, described in CONTRASTS:
        what = "the dynamic heads" if side == PAPER_SIDE else f"the {side} (in place of the dynamic heads)"
        test = f"{MEASURE} with {what} minus with {described}, paired by question; {F1_NORMALISATION}" + (
            f"; {protocol}" if protocol else ""
        )
        if not languages:
            parts = [nothing("all", "no answers in the run")]
        elif side not in present or baseline not in present:
            missing = ", ".join(sorted({side, baseline} - present))
            parts = [nothing("all", f"the run has no {missing} answers (add it to --selections)")]
        else:
            unmatched = _budget_mismatch(samples, baseline, side)
            parts = [
                nothing(code, unmatched)
                if unmatched
                else _paired(samples[samples["language"] == code], side, baseline, code, replicates, seed)
                for code in languages
            ]
        rows.append(claim_rows(claim, parts, UNIT, test, context))
    return rows


def _budget_mismatch(samples: pd.DataFrame, baseline: str, side: str) -> str:
    """Why a budget-matched contrast cannot be read ('' when it can): the policy must have copied the
    budget of the dynamic selection, the one on the paper's side of every claim."""
    sides = [name for name in (baseline, side) if name in (QUESTION_MATCHED, RANDOM_RETRIEVER)]
    for name in sides:
        matched = (
            set(samples.loc[samples["selection"] == name, "matched_to"]) if "matched_to" in samples else set()
        )
        if matched != {PAPER_SIDE}:
            return (
                f"{name} copied the budget of {', '.join(sorted(map(str, matched))) or 'nothing'}, "
                f"not of the {PAPER_SIDE} selection"
            )
    return ""


def _paired(
    samples: pd.DataFrame, first: str, second: str, label: str, replicates: int, seed: int
) -> Measured:
    """mean over questions of F1(first) - F1(second), questions answered under both, resampled by
    question."""
    wide = samples.pivot_table(index="sample_id", columns="selection", values="f1", aggfunc="mean")
    if first not in wide or second not in wide:
        return nothing(label, f"no question answered under both {first} and {second}")
    differences = (wide[first] - wide[second]).dropna().to_numpy(float)
    if len(differences) == 0:
        return nothing(label, f"no question answered under both {first} and {second}")

    def statistic(rows: np.ndarray, _rng: np.random.Generator | None) -> dict[str, float]:
        return {"value": float(differences[rows].mean())}

    point, draws = bootstrap_units(len(differences), statistic, replicates, seed)
    return Measured(label, point["value"], draws["value"], len(differences))


def rag_claims_tables(
    samples: pd.DataFrame, replicates: int, seed: int, context: Context, protocol: str = ""
) -> dict[str, pd.DataFrame]:
    """The claims and claim_parts tables; where the run answered with the random retriever, the same
    claims with it on the paper's side (control_claims, control_claim_parts) and their verdicts in the
    claims' control column."""
    tables = claims_tables(rag_claims(samples, replicates, seed, context, protocol))
    if samples.empty or RANDOM_RETRIEVER not in set(samples["selection"]):
        return tables
    control = claims_tables(rag_claims(samples, replicates, seed, context, protocol, RANDOM_RETRIEVER))
    tables["claims"] = with_controls(tables["claims"], control["claims"])
    tables["control_claims"] = control["claims"]
    tables["control_claim_parts"] = control["claim_parts"]
    return tables
