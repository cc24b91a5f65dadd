"""Plain-text summaries of runs, for the terminal."""

from __future__ import annotations

import pandas as pd

from babelheads.analysis.distribution import BINS, distribution, retrieval_head_share, top_heads
from babelheads.runs import RunStore


def detection_summary(store: RunStore, top: int = 10) -> str:
    manifest = store.manifest()
    spec = manifest["spec"]
    config = spec["config"]
    samples = store.table("samples")
    scores = store.derived("scores")
    shares = distribution(scores)
    retrieval = retrieval_head_share(scores)
    lines = [
        f"run {store.root}  model {spec['model'].get('model')}  seed {manifest['seed']}",
        f"score variant: {config['score']} (averaged over {config['score_on']} samples; "
        f"success = ROUGE-1 recall > {config['success_threshold']})",
    ]
    labels = [pair.replace(":", ">") for pair in config.get("pairs", [])] or config["languages"]
    for language in labels:
        frame = samples[samples["language"] == language]
        if frame.empty:
            continue
        used = int(scores.loc[scores["language"] == language, "samples_used"].iloc[0])
        lines.append("")
        lines.append(
            f"[{language}] {len(frame)} samples, {frame['success'].mean():.0%} retrieved "
            f"(ROUGE-1 recall {frame['rouge1_recall'].mean():.2f}), {used} used for scores"
        )
        row = shares.loc[language]
        lines.append("  heads  " + "   ".join(f"{name}: {row[name]:.1%}" for name in BINS))
        lines.append(f"  retrieval heads (score >= 0.1): {retrieval[language]:.1%}")
        best = top_heads(scores, language, top)
        best = best[best["score"] > 0]
        cells = [f"{row.layer}-{row.head} {row.score:.2f}" for row in best.itertuples()]
        lines.append(
            "  top heads: " + (", ".join(cells) if cells else "none (no successful retrieval to score)")
        )
    return "\n".join(lines)


def accuracy_grid(samples: pd.DataFrame) -> pd.DataFrame:
    """Mean success by language, length and depth: the familiar haystack table."""
    return samples.pivot_table(
        index=["language", "length"], columns="depth", values="success", aggfunc="mean"
    )


def comparison_summary(tables: dict[str, pd.DataFrame], notes: list[str]) -> str:
    """The findings of a compare run in a few lines, each figure with its 95% interval."""
    lines = list(notes)
    if "overlap" in tables:
        lines.append("retrieval heads by the languages they serve (score >= threshold):")
        for row in tables["overlap"].itertuples():
            if row.count:
                lines.append(
                    f"  {row.languages:<16} {row.count:>3}  mean layer {row.mean_layer:5.1f}  {row.heads}"
                )
    for name in ("overlap_statistics", "model_agreement"):
        if name in tables:
            for row in tables[name].itertuples():
                if "|" in row.statistic:
                    continue
                language = f"[{row.language}] " if hasattr(row, "language") else ""
                lines.append(
                    f"  {language}{row.statistic:<22} {row.value:7.3f}  [{row.lo:.3f}, {row.hi:.3f}]"
                )
    if "rank_agreement" in tables:
        lines.append("rank agreement (95% bootstrap interval over samples):")
        for row in tables["rank_agreement"].itertuples():
            lines.append(
                f"  {row.pair:<8} {row.subset:<7} heads {row.heads:4.0f}  spearman {row.spearman:6.3f} "
                f"[{row.spearman_lo:.2f}, {row.spearman_hi:.2f}]  kendall {row.kendall:6.3f}  "
                f"mean |rank diff| {row.rank_diff:5.1f}"
            )
        alls = tables["rank_agreement"].query("subset == 'all'").dropna(subset=["spearman"])
        alls = alls.sort_values("spearman", ascending=False)
        if len(alls) > 1:
            lines.append("  pairs by agreement: " + " > ".join(alls["pair"]))
    if "translation" in tables:
        lines.append("retrieval + translation vs monolingual (top retrieval heads of the source language):")
        for condition, frame in tables["translation"].groupby("condition", sort=False):
            values = dict(zip(frame["measure"], frame["value"], strict=True))
            lines.append(
                f"  {condition:<7} copy {values['copy_mono']:.3f} -> {values['copy_translation']:.3f}   "
                f"needle attention {values['attention_mono']:.3f} -> {values['attention_translation']:.3f}   "
                f"accuracy {values['accuracy_mono']:.0%} -> {values['accuracy_translation']:.0%}"
            )
    return "\n".join(lines)


def ablation_summary(store: RunStore) -> str:
    """Accuracy per head set, K and language, with the paired change from no masking."""
    table = store.derived("ablation")
    config = store.manifest()["spec"]["config"]
    lines = [
        f"masking: method {config['method']}, phases {config['phases']} "
        f"(change vs no masking, 95% paired bootstrap interval)"
    ]
    grouped = table.groupby(["head_set", "k", "language"], sort=False)
    for (head_set, k, language), frame in grouped:
        seeds = f" over {len(frame)} draws" if head_set == "random" else ""
        lines.append(
            f"  {head_set:<9} K={k:<3} {language:<6} heads {frame['count'].iloc[0]:>3}  accuracy "
            f"{frame['accuracy'].mean():4.0%}  change {frame['delta_accuracy'].mean():+.2f} "
            f"[{frame['delta_accuracy_lo'].min():+.2f}, {frame['delta_accuracy_hi'].max():+.2f}]  "
            f"ROUGE-1 {frame['rouge1_recall'].mean():.2f}{seeds}"
        )
    return "\n".join(lines)
