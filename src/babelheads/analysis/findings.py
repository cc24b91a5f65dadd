"""The multilingual study's five findings, each with a verdict read from an interval.

A finding holds when the 95 % interval of its contrast lies wholly on the side the paper claims, does
not hold when it lies wholly on the other side, and is inconclusive otherwise (or without data). A
finding with several parts (every language, every condition) holds when all parts hold and does not
hold when any part contradicts it. The claims are those of "Do retrieval heads speak the same
language?" as summarised in shared/reference/retrieval-heads.md (Sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from babelheads.analysis.ablation import paired_delta

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Part:
    """One contrast: its name, value and interval; positive means the paper's direction."""

    label: str
    value: float
    lo: float
    hi: float

    @property
    def verdict(self) -> str:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
            return INCONCLUSIVE
        if self.lo > 0:
            return HOLDS
        if self.hi < 0:
            return FAILS
        return INCONCLUSIVE

    def text(self) -> str:
        if not np.isfinite(self.value):
            return f"{self.label}: no data"
        return f"{self.label} {self.value:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


@dataclass
class Finding:
    number: int
    claim: str
    contrast: str
    figure: str
    parts: list[Part] = field(default_factory=list)
    context: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        verdicts = [part.verdict for part in self.parts]
        if not verdicts:
            return INCONCLUSIVE
        if FAILS in verdicts:
            return FAILS
        return HOLDS if all(verdict == HOLDS for verdict in verdicts) else INCONCLUSIVE

    def evidence(self) -> str:
        shown = [part.text() for part in self.parts] or ["not measured in these runs"]
        return "; ".join(shown + self.context)


def study_findings(
    compare: dict[str, pd.DataFrame], ablation: dict[str, pd.DataFrame] | None
) -> list[Finding]:
    """Findings 1-5 from a compare run's tables and, for Finding 5, an ablation run's samples and
    head sets."""
    statistics = _statistics(compare.get("overlap_statistics"))
    return [
        _shared_heads(statistics),
        _strength(statistics),
        _rank_agreement(compare.get("rank_contrasts"), compare.get("settings")),
        _translation(compare.get("translation")),
        _masking(ablation),
    ]


def _statistics(table: pd.DataFrame | None) -> dict[str, tuple[float, float, float]]:
    if table is None or table.empty:
        return {}
    return {row.statistic: (float(row.value), float(row.lo), float(row.hi)) for row in table.itertuples()}


def _part(label: str, triple: tuple[float, float, float] | None) -> Part:
    return Part(label, *(triple or (np.nan, np.nan, np.nan)))


def _shared_heads(statistics: dict) -> Finding:
    finding = Finding(
        1,
        "Only part of the retrieval heads (40-70 %) are shared by all languages; language-specific heads "
        "sit in later layers.",
        "1 - share of retrieval heads shared by all languages; mean layer of specific minus shared heads",
        "Which languages share retrieval heads",
    )
    shared = statistics.get("shared_share")
    if shared is not None:
        value, lo, hi = shared
        finding.parts.append(Part("not shared (1 - shared share)", 1 - value, 1 - hi, 1 - lo))
        finding.context.append(f"shared share {value:.2f} [{lo:.2f}, {hi:.2f}] (paper: 0.40-0.70)")
    finding.parts.append(
        _part("layer gap specific - shared", statistics.get("layer_gap_specific_minus_shared"))
    )
    return finding


def _strength(statistics: dict) -> Finding:
    finding = Finding(
        2,
        "Strong heads (score >= 0.5) tend to be shared by all languages; weak heads are often specific.",
        "share of strong heads that are shared minus the share of all retrieval heads that are",
        "Strength vs generality",
    )
    finding.parts.append(_part("strong minus all, shared share", statistics.get("strong_minus_all_shared")))
    strong = statistics.get("strong_heads")
    if strong is not None:
        finding.context.append(f"{strong[0]:.0f} strong heads")
    return finding


def _rank_agreement(contrasts: pd.DataFrame | None, settings: pd.DataFrame | None) -> Finding:
    finding = Finding(
        3,
        "Head rankings agree more between close languages (English-German) than distant ones "
        "(English-Chinese), and weak heads' ranks differ more than strong heads'.",
        "Spearman(en, de) - Spearman(en, zh); mean rank difference of weak minus strong heads",
        "Do languages rank heads alike?",
    )
    if contrasts is None or contrasts.empty:
        return finding
    gaps = contrasts[contrasts["measure"] == "spearman_gap"].set_index("pair")
    for pair, sign in (("en:de>zh", 1.0), ("en:zh>de", -1.0)):
        if pair in gaps.index:
            row = gaps.loc[pair]
            values = sorted((sign * float(row["lo"]), sign * float(row["hi"])))
            finding.parts.append(Part("Spearman en-de minus en-zh", sign * float(row["value"]), *values))
            break
    weak = contrasts[contrasts["measure"] == "rank_diff_gap"]
    for row in weak.itertuples():
        finding.parts.append(Part(f"rank difference weak - strong, {row.pair}", row.value, row.lo, row.hi))
    return finding


def _translation(table: pd.DataFrame | None) -> Finding:
    finding = Finding(
        4,
        "Retrieval plus translation (context and question in one language, answer asked in another) "
        "fails: the retrieval heads do not activate.",
        "monolingual minus translated: the top heads' needle attention, and accuracy (fact needles)",
        "Retrieval + translation vs monolingual retrieval",
    )
    if table is None or table.empty:
        return finding
    kinds = set(table["needle_kind"])
    chosen = table[table["needle_kind"] == "fact"] if "fact" in kinds else table
    for (condition, kind), group in chosen.groupby(["condition", "needle_kind"], sort=True):
        rows = group.set_index("measure")
        for measure, label in (
            ("attention_drop", "needle-attention drop"),
            ("accuracy_drop", "accuracy drop"),
        ):
            if measure in rows.index:
                row = rows.loc[measure]
                finding.parts.append(
                    Part(f"{condition} ({kind}) {label}", row["value"], row["lo"], row["hi"])
                )
    return finding


def _masking(ablation: dict[str, pd.DataFrame] | None, replicates: int = 1000, seed: int = 0) -> Finding:
    finding = Finding(
        5,
        "Masking the top language-agnostic heads lowers ROUGE more than masking as many language-specific "
        "heads, in every language.",
        "ROUGE-1 recall with the specific heads masked minus with the agnostic ones, paired by prompt",
        "Accuracy when heads are masked",
    )
    if not ablation or "head_sets" not in ablation or "samples" not in ablation:
        return finding
    sets, samples = ablation["head_sets"], ablation["samples"]
    if "rouge1_recall" not in samples:
        return finding
    candidates = []
    for k in sorted(
        set(sets.loc[sets["name"] == "agnostic", "k"]) & set(sets.loc[sets["name"] == "specific", "k"])
    ):
        chosen = {
            name: sets[(sets["name"] == name) & (sets["k"] == k)].iloc[0] for name in ("agnostic", "specific")
        }
        counts = {name: int(row["count"]) for name, row in chosen.items()}
        if min(counts.values()) > 0:
            candidates.append((counts["agnostic"] == counts["specific"], k, chosen, counts))
    if not candidates:
        return finding
    # As many heads on both sides where the sets allow it: the largest such K, else the largest K.
    equal, k, chosen, counts = max(candidates, key=lambda item: (item[0], item[1]))
    masks = {name: row["mask_id"] for name, row in chosen.items()}
    finding.context.append(
        f"K={k}: {counts['agnostic']} agnostic and {counts['specific']} specific heads masked"
        + ("" if equal else " (unequal counts: too few heads of one kind)")
    )
    for language, frame in samples.groupby("language", sort=True):
        by_mask = {
            name: frame[frame["mask_id"] == mask].set_index("sample_id")["rouge1_recall"].sort_index()
            for name, mask in masks.items()
        }
        common = by_mask["agnostic"].index.intersection(by_mask["specific"].index)
        value, lo, hi, _ = paired_delta(
            by_mask["specific"].loc[common].to_numpy(),
            by_mask["agnostic"].loc[common].to_numpy(),
            replicates,
            seed,
        )
        finding.parts.append(Part(f"{language} ({len(common)} prompts)", value, lo, hi))
    return finding
