"""Plain-text summaries of language-head runs (importance, experiments, adaptation), for the terminal."""

from __future__ import annotations

import pandas as pd
from scipy.stats import spearmanr

from babelheads.heads import head_label
from babelheads.runs import RunStore


def _interval(value: float, lo: float, hi: float, signed: bool = True) -> str:
    if pd.isna(value):
        return "n/a"
    form = "+.3f" if signed else ".3f"
    return f"{value:{form}} [{lo:{form}}, {hi:{form}}]"


def _named(row: pd.Series, name: str, signed: bool = True) -> str:
    return _interval(row[name], row[f"{name}_lo"], row[f"{name}_hi"], signed)


def _heads(frame: pd.DataFrame) -> str:
    return (
        " ".join(head_label(layer, head) for layer, head in zip(frame["layer"], frame["head"], strict=True))
        or "none"
    )


def importance_summary(store: RunStore, top: int = 5) -> str:
    selection = store.read_json("selection.json")
    scores, heads = store.derived("importance"), store.derived("language_heads")
    samples = store.table("samples")
    formula = selection["formula"]
    lines = [
        f"LAHIS importance ({formula} formula; the other is in importance.csv). Candidates above the "
        f"{selection['percentile']:g}th percentile; general = candidate in >= {selection['min_languages']} "
        f"languages; n = {selection['n']} specific heads per language.",
        "",
        "language  texts  mean ppl  top heads by importance            paper~code (Spearman)",
    ]
    for code, group in scores.groupby("language", sort=True):
        ranked = group.sort_values(formula, ascending=False).head(top)
        rho = spearmanr(group["paper"], group["code"]).statistic
        texts = samples[samples["language"] == code]
        lines.append(
            f"{code:8s}  {len(texts):5d}  {texts['perplexity'].mean():8.2f}  {_heads(ranked):34s} {rho:.2f}"
        )
    general = heads[heads["role"] == "general"].drop_duplicates(["layer", "head"])
    lines += ["", f"language-general heads: {_heads(general)}"]
    specific = heads[heads["role"] == "specific"]
    for code in sorted(scores["language"].unique()):
        group = specific[specific["language"] == code].sort_values("rank")
        short = (
            f" (only {len(group)} of n = {selection['n']}: lower --percentile for more candidates)"
            if len(group) < selection["n"]
            else ""
        )
        lines.append(f"{code} specific heads: {_heads(group)}{short}")
    return "\n".join(lines)


def contrasts_text(table: pd.DataFrame) -> list[str]:
    lines = []
    for _, row in table.iterrows():
        lines.append(
            f"{row['language']:5s} {row['heads']:9s} {row['measure']:14s} none {row['none']:.3f} | "
            f"masked-none {_named(row, 'masked_minus_none')}"
            f" | random-none {_named(row, 'random_minus_none')}"
            f" | masked-random {_named(row, 'masked_minus_random')}"
            f" (n={int(row['n'])})"
        )
    return lines


def language_test_summary(store: RunStore) -> str:
    experiment = store.manifest()["spec"]["config"]["experiment"]
    lines = [f"experiment {experiment}: differences paired per text or prompt, 95% bootstrap intervals"]
    if experiment == "ppl-cross":
        matrix = store.derived("ppl_cross").pivot(index="test_language", columns="heads_of", values="value")
        lines += ["rise of log-perplexity (rows: test language, columns: whose specific heads are masked)"]
        lines += matrix.round(3).to_string().splitlines()
        for _, row in store.derived("diagonality").iterrows():
            lines.append(
                f"{row['test_language']:4s} {row['measure']:20s} "
                + _interval(row["value"], row["lo"], row["hi"])
            )
        return "\n".join(lines)
    if experiment == "retrieval":
        table = store.derived("retrieval_overlap")
        lines = ["retrieval heads meet language heads (overlap; expected by chance; P(overlap >= observed))"]
        for _, row in table.iterrows():
            lines.append(
                f"{row['language']:4s} {row['language_heads']:9s} "
                f"retrieval {_count(row['retrieval_heads'])} x "
                f"{_count(row['heads'])} heads: overlap {_count(row['overlap'])} "
                f"(chance {row['expected_by_chance']:.2f}, "
                f"p={row['p_at_least']:.3f}) {row['shared']}"
            )
        return "\n".join(lines)
    name = {"ppl": "ppl", "general": "general", "off-target": "off_target", "attn-transfer": "attn_transfer"}[
        experiment
    ]
    return "\n".join(lines + contrasts_text(store.derived(name)))


def adaptation_summary(store: RunStore) -> str:
    row = store.derived("adaptation").iloc[0]
    return "\n".join(
        [
            f"held-out QA accuracy, {row['language']} ({int(row['n'])} questions):",
            f"  original {row['none']:.3f} -> adapted {_named(row, 'masked', False)}",
            f"  random heads adapted the same way: {_named(row, 'random', False)}",
            f"  adapted - original {_named(row, 'masked_minus_none')}",
            f"  adapted - random   {_named(row, 'masked_minus_random')}",
        ]
    )


def _count(value: float) -> str:
    """A count, or 'NaN' where it is undefined (a language without a successful sample has no
    retrieval heads to count, which is not 0 of them)."""
    return "NaN" if pd.isna(value) else f"{int(value):3d}"
