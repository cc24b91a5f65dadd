"""Figures of dynamic-RAG runs: EM and F1 per selection and language with intervals, and the
retrieval trace of one question."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from babelheads.analysis.rag_scores import ORDER as SELECTIONS
from babelheads.report.figures import WIDTH, Figure, _png, _styled

SELECTION_COLOURS = {
    "dynamic": "#d62728",
    "static": "#1f77b4",
    "dragin": "#9467bd",
    "question": "#2ca02c",
    "question-matched": "#98df8a",
    "random-retriever": "#c7c7c7",
    "none": "#7f7f7f",
}


@_styled
def scores_chart(scores: pd.DataFrame) -> Figure:
    languages = list(dict.fromkeys(scores["language"]))
    present = [selection for selection in SELECTIONS if selection in set(scores["selection"])]
    figure = MplFigure(figsize=(WIDTH, 3.2), layout="constrained")
    panels = figure.subplots(1, 3)
    width = 0.8 / len(present)
    top = np.nanmax(scores[["exact_hi", "f1_hi"]].to_numpy(float), initial=0.0)
    for ax, metric, label in zip(panels[:2], ("exact", "f1"), ("exact match", "token F1"), strict=True):
        for index, selection in enumerate(present):
            rows = scores[scores["selection"] == selection].set_index("language").reindex(languages)
            values = rows[metric].to_numpy(float)
            low, high = rows[f"{metric}_lo"].to_numpy(float), rows[f"{metric}_hi"].to_numpy(float)
            ax.bar(
                np.arange(len(languages)) + (index - (len(present) - 1) / 2) * width,
                values,
                width,
                color=SELECTION_COLOURS[selection],
                label=selection,
                yerr=np.nan_to_num([values - low, high - values]),
                capsize=2,
            )
        ax.set_xticks(np.arange(len(languages)), languages)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, min(1.05, max(0.3, 1.15 * top)))
    for index, selection in enumerate(present):
        rows = scores[scores["selection"] == selection].set_index("language").reindex(languages)
        panels[2].bar(
            np.arange(len(languages)) + (index - (len(present) - 1) / 2) * width,
            rows["gold_found"].to_numpy(float),
            width,
            color=SELECTION_COLOURS[selection],
        )
    panels[2].set_xticks(np.arange(len(languages)), languages)
    panels[2].set_title("supporting facts in the final context", fontsize=9)
    panels[2].set_ylim(0, 1.05)
    panels[0].legend(fontsize=7)
    caption = (
        "Two-hop questions answered with retrieval: queries formed from the attention of the probe's "
        "predicted heads at the triggering step (dynamic), of the static top retrieval heads (static) "
        "or of the last layer (dragin), under the same trigger (RIND) and budget; beside one retrieval "
        "with the question (question) and none. Bars: mean over questions with 95% bootstrap intervals; "
        "'all' pools the languages. Right: the share of each question's two supporting facts among the "
        "documents it ended with. The paired differences are in the text summary and the run's "
        "rag_contrasts table."
    )
    return Figure(
        "Dynamic RAG: answers per head selection", caption, scores.reset_index(drop=True), png=_png(figure)
    )


@_styled
def trace_chart(samples: pd.DataFrame, trace: pd.DataFrame, sample_id: str) -> Figure:
    """Each selection's retrievals while answering one question: at which answer token each was
    triggered and how many supporting facts it brought."""
    answers = samples[samples["sample_id"] == sample_id]
    steps = trace[trace["sample_id"] == sample_id]
    selections = [selection for selection in SELECTIONS if selection in set(answers["selection"])]
    figure = MplFigure(figsize=(WIDTH, 0.45 * len(selections) + 1.3), layout="constrained")
    ax = figure.subplots()
    most = max([1, *steps["retrieval"].astype(int)])
    for row, selection in enumerate(selections):
        f1 = float(answers.loc[answers["selection"] == selection, "f1"].iloc[0])
        ax.text(most + 0.6, row, f"answer F1 {f1:.2f}", ha="left", va="center", fontsize=7)
        for _, entry in steps[steps["selection"] == selection].iterrows():
            gold = entry["gold"].split()
            found = sum(flag == "1" for flag in gold)
            colour = "#2ca02c" if found else ("#d62728" if gold else "#7f7f7f")
            retrieval = int(entry["retrieval"])
            ax.scatter(retrieval, row, s=60, color=colour, zorder=3)
            when = "before answering" if entry["step"] < 0 else f"at token {int(entry['step'])}"
            ax.annotate(
                f"{when}: {found}/{len(gold)} supporting",
                (retrieval, row),
                textcoords="offset points",
                xytext=(6, 5),
                fontsize=6,
            )
    ax.set_yticks(range(len(selections)), selections)
    ax.set_xticks(range(1, most + 1))
    ax.set_xlim(0.5, most + 1.6)
    ax.set_ylim(-0.6, len(selections) - 0.3)
    ax.set_xlabel("retrieval")
    ax.set_title(f"Retrieval trace of {sample_id}", fontsize=9)
    caption = (
        "Each dot is one retrieval, labelled with the answer token that triggered it: green when it "
        "brought a supporting fact of the question, red when it brought only other documents, grey when "
        "the query matched no document. The text summary and the CSV give each retrieval's triggering "
        "token, heads, query windows and documents."
    )
    return Figure("Retrieval trace of one question", caption, steps.reset_index(drop=True), png=_png(figure))


@_styled
def threshold_sweep_chart(sweep: pd.DataFrame) -> Figure:
    """The share of answer steps that trigger retrieval and the token F1 against the RIND threshold,
    per head-guided selection, languages pooled (from the run's recorded per-step RIND)."""
    pooled = sweep[sweep["language"] == "all"] if "all" in set(sweep["language"]) else sweep
    figure = MplFigure(figsize=(WIDTH, 3.0), layout="constrained")
    left, right = figure.subplots(1, 2)
    for selection, rows in pooled.groupby("selection", sort=False):
        rows = rows.sort_values("threshold")
        colour = SELECTION_COLOURS.get(str(selection))
        left.plot(rows["threshold"], rows["triggered"], marker="o", color=colour, label=str(selection))
        right.errorbar(
            rows["threshold"],
            rows["f1"],
            yerr=np.nan_to_num([rows["f1"] - rows["f1_lo"], rows["f1_hi"] - rows["f1"]]),
            marker="o",
            color=colour,
            capsize=2,
        )
    for ax in (left, right):
        ax.axvline(float(pooled["run_threshold"].iloc[0]), color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("RIND threshold")
    left.set_ylabel("answer steps that trigger")
    right.set_ylabel("token F1 (questions it determines)")
    left.legend(fontsize=7)
    caption = (
        "How the result depends on the RIND threshold, from the per-step RIND the run recorded (no new "
        "decoding); the dashed line is the run's threshold. RIND here uses the last layer's full-context "
        "softmax token by token, not DRAGIN's pass over the generated text, so its scale is not DRAGIN's "
        "0.6-1.4. F1 counts only the questions whose answer the run determines at that threshold."
    )
    return Figure("Dynamic RAG: the RIND threshold", caption, pooled.reset_index(drop=True), png=_png(figure))
