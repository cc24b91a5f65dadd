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
