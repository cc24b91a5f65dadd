"""Plain-text summaries of runs, for the terminal."""

from __future__ import annotations

import math

import pandas as pd

from babelheads.analysis.aggregate import AggregateSettings, aggregate, with_success
from babelheads.analysis.distribution import (
    BINS,
    RETRIEVAL_THRESHOLD,
    distribution,
    retrieval_head_share,
    top_heads,
)
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress
from babelheads.runs import RunStore
from babelheads.sources import recorded_analysis


def check_summary_options(top: int, retrieval_threshold: float) -> None:
    """``summary``'s own options, refused before anything is read or rewritten."""
    if top < 1:
        raise BabelheadsError(f"--top must be at least 1 (heads listed per language). Got {top}.")
    if not math.isfinite(retrieval_threshold) or retrieval_threshold < 0:
        raise BabelheadsError(
            f"--threshold must be a finite score >= 0 (e.g. 0.1). Got {retrieval_threshold}."
        )


def detection_summary(
    store: RunStore,
    top: int = 10,
    settings: AggregateSettings | None = None,
    retrieval_threshold: float = RETRIEVAL_THRESHOLD,
) -> str:
    """Per language: samples, retrieval, the Wu et al. distribution and the top heads. With ``settings``
    the stored per-sample scores are re-aggregated under them (nothing is re-run); without, the run's
    own aggregation is read."""
    check_summary_options(top, retrieval_threshold)
    manifest = store.manifest()
    spec = manifest["spec"]
    raw = store.table("samples")
    if settings is None:
        settings, notes = recorded_analysis(store)
        scores = store.derived("scores")
    else:
        scores, _, notes = aggregate(raw, store.table("head_scores"), settings)
    samples = with_success(raw, settings.success_threshold)
    skipped = raw[raw["status"] == "skipped"] if "status" in raw else raw.iloc[:0]
    shares = distribution(scores.dropna(subset=["score"]))
    retrieval = retrieval_head_share(scores.dropna(subset=["score"]), retrieval_threshold)
    lines = [
        f"run {store.root}  model {spec['model'].get('model')}  seed {manifest['seed']}",
        f"score variant: {settings.score} (averaged over {settings.score_on} samples; "
        f"success = ROUGE-1 recall > {settings.success_threshold})",
    ]
    task = spec["config"].get("task", {})
    planned = [pair.replace(":", ">") for pair in task.get("pairs", [])] or list(task.get("languages", []))
    for language in dict.fromkeys([*planned, *raw["language"]]):
        frame = samples[samples["language"] == language]
        lost = skipped[skipped["language"] == language]
        lines.append("")
        if frame.empty:
            lines.append(f"[{language}] no sample ran ({len(lost)} skipped)")
            continue
        used = int(scores.loc[scores["language"] == language, "samples_used"].iloc[0])
        lines.append(
            f"[{language}] {len(frame)} samples, {frame['success'].mean():.0%} retrieved "
            f"(ROUGE-1 recall {frame['rouge1_recall'].mean():.2f}), {used} used for scores"
            + (f", {len(lost)} skipped" if len(lost) else "")
        )
        if language not in shares.index:
            lines.append("  scores: NaN (too few samples to score; not zero)")
            continue
        row = shares.loc[language]
        lines.append("  heads  " + "   ".join(f"{name}: {row[name]:.1%}" for name in BINS))
        lines.append(f"  retrieval heads (score >= {retrieval_threshold}): {retrieval[language]:.1%}")
        best = top_heads(scores, language, top)
        best = best[best["score"] > 0]
        cells = [f"{HeadAddress(int(row.layer), int(row.head))} {row.score:.2f}" for row in best.itertuples()]
        lines.append("  top heads: " + (", ".join(cells) if cells else "none (no head copied)"))
    if len(skipped):
        lines.append("")
        lines.append(f"skipped samples ({len(skipped)}):")
        lines += [f"  {row.sample_id}: {row.reason}" for row in skipped.itertuples()]
    if notes:
        lines.append("")
        lines += [f"warning: {note}" for note in notes]
    return "\n".join(lines)


def comparison_summary(tables: dict[str, pd.DataFrame], notes: list[str]) -> str:
    """The findings of a compare run in a few lines, each figure with its 95% interval."""
    lines = [f"warning: {note}" for note in notes]
    if "settings" in tables:
        settings = tables["settings"].iloc[0]
        lines.append(
            f"retrieval heads: score >= {settings['threshold']}; strong: >= {settings['strong']}; "
            f"languages compared: {settings['languages'] or 'none'}"
        )
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
        lines.append("  (fact needles: copy is 0 by construction when translating; read needle attention)")
        grouped = tables["translation"].groupby(["condition", "needle_kind"], sort=False)
        for (condition, kind), frame in grouped:
            values = dict(zip(frame["measure"], frame["value"], strict=True))
            lines.append(
                f"  {condition:<7} {kind:<5} needle attention {values['attention_mono']:.3f} -> "
                f"{values['attention_translation']:.3f}   copy {values['copy_mono']:.3f} -> "
                f"{values['copy_translation']:.3f}   accuracy {values['accuracy_mono']:.0%} -> "
                f"{values['accuracy_translation']:.0%}"
            )
    return "\n".join(lines)


def ablation_summary(store: RunStore) -> str:
    """Accuracy per head set, K and language, with the paired change from no masking."""
    table = store.derived("ablation")
    config = store.manifest()["spec"]["config"]
    overlap = store.manifest().get("overlap_with_detection", {})
    lines = [
        f"task {config.get('task', 'niah')}; masking: method {config['method']}, phases {config['phases']} "
        f"(change vs no masking, 95% paired bootstrap interval)"
    ]
    if overlap:
        lines.append(
            f"held out from detection: {overlap.get('holdout')}; needles shared with detection: "
            f"{len(overlap.get('needles_shared', []))}; identical samples: "
            f"{overlap.get('samples_identical_to_detection', 0)}"
        )
    grouped = table.groupby(["head_set", "k", "language"], sort=False)
    for (head_set, k, language), frame in grouped:
        seeds = f" over {len(frame)} draws" if head_set == "random" else ""
        rouge = frame["rouge1_recall"].mean()  # NaN for tasks without ROUGE (word problems)
        lines.append(
            f"  {head_set:<9} K={k:<3} {language:<9} heads {frame['count'].iloc[0]:>3}  accuracy "
            f"{frame['accuracy'].mean():4.0%}  change {frame['delta_accuracy'].mean():+.2f} "
            f"[{frame['delta_accuracy_lo'].min():+.2f}, {frame['delta_accuracy_hi'].max():+.2f}]"
            + (f"  ROUGE-1 {rouge:.2f}" if rouge == rouge else "")
            + seeds
        )
    return "\n".join(lines)


def claims_text(claims: pd.DataFrame, parts: pd.DataFrame | None = None) -> str:
    """The claims table in a terminal: claim, verdict, estimate [95% interval] (n), why; with
    ``parts`` (claim_parts), each claim's parts under it."""
    lines = []
    for claim in claims.to_dict("records"):
        estimate = (
            f"{claim['estimate']:+.3f} [{claim['lo']:+.3f}, {claim['hi']:+.3f}] n={int(claim['n'])}"
            if pd.notna(claim["estimate"])
            else "-"
        )
        control = f"  control: {claim['control']}" if claim["control"] else ""
        lines.append(f"{claim['claim']:<38} {claim['verdict']:<14} {estimate}{control}")
        if claim["reason"]:
            lines.append(f"{'':<38} {claim['reason']}")
        if parts is not None:
            for part in parts[parts["claim"] == claim["claim"]].to_dict("records"):
                value = f"{part['estimate']:+.3f} [{part['lo']:+.3f}, {part['hi']:+.3f}]"
                lines.append(f"{'':<4}{part['part']:<34} {part['verdict']:<14} {value} n={int(part['n'])}")
    return "\n".join(lines)


def claims_markdown(claims: pd.DataFrame) -> str:
    """The claims table as Markdown (for a README or a docs page generated from runs, not retyped)."""
    lines = [
        "| claim | verdict | estimate [95% interval], n | control | why |",
        "|---|---|---|---|---|",
    ]
    for claim in claims.to_dict("records"):
        estimate = (
            f"{claim['estimate']:+.3f} [{claim['lo']:+.3f}, {claim['hi']:+.3f}], {int(claim['n'])}"
            if pd.notna(claim["estimate"])
            else "-"
        )
        why = str(claim["reason"]).replace("|", "/")
        lines.append(
            f"| `{claim['claim']}` | {claim['verdict']} | {estimate} | {claim['control'] or '-'} | {why} |"
        )
    return "\n".join(lines)
