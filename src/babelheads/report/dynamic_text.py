"""Text summaries of dynamic-heads runs: the statistics, the probes with their baselines, the ablation."""

from __future__ import annotations

import math

import pandas as pd

from babelheads.runs import RunStore


def _number(value: float, digits: int = 2) -> str:
    return (
        "NaN" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def verdict(low: float, high: float, units: str = "samples") -> str:
    """How a difference's 95 % interval reads: better, worse, inconclusive, or too few units."""
    if pd.isna(low):
        return f"  (too few {units})"
    if low > 0:
        return "  (better)"
    if high < 0:
        return "  (worse)"
    return "  (inconclusive)"


def _interval(row: pd.Series, name: str | None = None) -> str:
    """The row's interval: value, lo, hi, or, for a row of several, <name>, <name>_lo, <name>_hi."""
    value, lo, hi = (name, f"{name}_lo", f"{name}_hi") if name else ("value", "lo", "hi")
    return f"{_number(row[value])} [{_number(row[lo])}, {_number(row[hi])}]"


def statistics_text(stats: pd.DataFrame, static: pd.DataFrame) -> str:
    if stats.empty:
        return (
            "No dynamism statistics: no language has both static heads (a successful sample in the "
            "selection half) and retrieval steps in the test half."
        )
    lines = []
    for language, group in stats.groupby("language", sort=True):
        rows = group.set_index("statistic")
        k = int(group["k"].iloc[0])
        heads = " ".join(static.loc[static["language"] == language, "head"])
        lines.append(
            f"[{language}] {int(group['n'].iloc[0])} test samples, "
            f"{int(group['retrieval_steps'].iloc[0])} retrieval steps; static top-{k} (other half): {heads}"
        )
        lines.append(
            f"  Jaccard with static top-{k}: {_interval(rows.loc['jaccard_static'])}   "
            f"adjacent steps: {_interval(rows.loc['jaccard_adjacent'])}"
        )
        lines.append(
            f"  head-frequency entropy: {_interval(rows.loc['entropy'])} against ln {k} = "
            f"{_number(rows.loc['entropy', 'reference'])}   heads per step: "
            f"{_interval(rows.loc['mean_set_size'])}"
        )
    return "\n".join(lines)


def probes_text(store: RunStore) -> str:
    lines = []
    if not store.has_derived("cca"):
        return "No probes (run with --probes)."
    cca = store.derived("cca")
    for language, group in cca.groupby("language", sort=False):
        first, last = group.iloc[0], group.iloc[-1]
        lines.append(
            f"[{language}] CCA top-1, lag {int(first['lag'])} -> {int(last['lag'])}: held-out "
            f"{_number(first['held_out'])} -> {_number(last['held_out'])} (shuffled pairs "
            f"{_number(first['shuffled_held_out'])}); training {_number(first['train'])} (shuffled "
            f"{_number(first['shuffled_train'])}, {int(first['pairs_train'])} pairs)"
        )
    noisy = cca[cca["shuffled_train"] > 0.8]
    if not noisy.empty:
        lines.append(
            f"WARNING: CCA on shuffled pairs reaches {noisy['shuffled_train'].max():.2f} on training pairs: "
            "the training correlations are noise at this many pairs; only held-out values above their "
            "shuffled baseline count."
        )
    probe = store.derived("probe")
    if probe.empty:
        lines.append("probe: too little data (a split without steps or without dynamic heads): NaN.")
    for language, group in probe.groupby("language", sort=False):
        rows = group.set_index("predictor")
        parts = [
            f"{name} F1 {_interval(rows.loc[name], 'f1')} AUPRC {_interval(rows.loc[name], 'auprc')}"
            for name in ("probe", "static prior", "shuffled labels")
            if name in rows.index
        ]
        lines.append(
            f"[{language}] probe on {int(group['test_steps'].iloc[0])} test steps of "
            f"{int(group['n'].iloc[0])} samples: " + "; ".join(parts)
        )
        if "probe" in rows.index:
            lines.append(f"  probe AUPRC minus static prior: {_interval(rows.loc['probe'], 'auprc_gain')}")
    if store.has_derived("regression"):
        regression = store.derived("regression")
        for language, group in regression.groupby("language", sort=False):
            rows = group.set_index("predictor")
            parts = [f"{name} {_interval(rows.loc[name], 'r2')}" for name in rows.index]
            lines.append(
                f"[{language}] Eq. 2 regressor R^2 on test (variance-weighted over "
                f"{int(group['heads'].iloc[0])} heads): " + "; ".join(parts)
            )
    return "\n".join(lines)


def dynamic_summary(store: RunStore) -> str:
    text = statistics_text(store.derived("dynamic_stats"), store.derived("static_heads"))
    samples = store.table("samples")
    ok = samples[samples["status"] == "ok"]
    head = ", ".join(
        f"{language} EM {group['contains'].mean():.2f} ROUGE-L {group['rougeL'].mean():.2f}"
        for language, group in ok.groupby("language")
    )
    text = f"answers: {head}\n{text}"
    if store.has_derived("cca"):
        text += "\n" + probes_text(store)
    return text


def dynamic_ablation_summary(store: RunStore) -> str:
    summary = store.derived("dynamic_ablation")
    contrasts = store.derived("dynamic_ablation_contrasts")
    lines = []
    for language, group in summary.groupby("language", sort=True):
        lines.append(
            f"[{language}] {int(group['n'].max())} of {int(group['samples_run'].max())} samples "
            "answered right without masks; per-step masks, teacher-forced on the clean continuation:"
        )
        for _, row in group.iterrows():
            label = (
                row["condition"] if row["condition"] != "progressive" else f"progressive k={int(row['k'])}"
            )
            extra = ""
            if row["condition"] == "progressive":
                extra = (
                    f", compensating heads {_number(row['compensating'])} per step "
                    f"({_number(row['compensating_static'])} of them static)"
                )
            lines.append(
                f"  {label:<16} tokens kept "
                f"{_interval(row, 'token_kept')}"
                f"  exact {_interval(row, 'exact')}"
                f"  heads masked {_number(row['masked_heads'], 1)}{extra}"
            )
        for _, row in contrasts[contrasts["language"] == language].iterrows():
            lines.append(f"  {row['contrast']} ({row['metric']}): {_interval(row)}")
    return "\n".join(lines)
