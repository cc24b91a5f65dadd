"""The seed papers' claims as rows of one table: an estimate, its interval, the test, a verdict.

Every contrast is signed so that positive is the paper's side. A part (one language, one pair) holds
when its 95 % interval lies above 0, does not hold when it lies below, and is inconclusive otherwise;
it has no data when nothing could be measured, with the reason. The rules of
shared/reference/claims.md:

- a replicate where the statistic is undefined is counted, never dropped silently: above
  ``UNDEFINED_LIMIT`` of the replicates the part is inconclusive, with that share as the reason;
- an interval must contain its estimate; one that does not marks a badly behaved statistic, and the
  part is inconclusive with that reason (never a verdict read from it);
- a claim over several parts ("in every language") holds when every part holds (intersection-union)
  and does not hold when some part contradicts it after Holm's correction over the parts (one-sided
  bootstrap p-values at ``ALPHA`` / 2, the tail of the 95 % interval).

A claim's row shows its weakest part (the smallest lower bound); every part is in the parts table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from babelheads.analysis.stats import MIN_UNITS, percentile_interval

HOLDS, FAILS, INCONCLUSIVE, NO_DATA = "holds", "does not hold", "inconclusive", "no data"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NO_DATA)
UNDEFINED_LIMIT = 0.05
MIN_RANDOM_SETS = 2
"""Random head sets needed to compare a chosen set with their spread (:func:`against_random`)."""
ALPHA = 0.05
COLUMNS = (
    "claim",
    "paper",
    "statement",
    "estimate",
    "lo",
    "hi",
    "n",
    "unit",
    "test",
    "verdict",
    "reason",
    "control",
    "model",
    "run",
)
PART_COLUMNS = (
    "claim",
    "part",
    "estimate",
    "lo",
    "hi",
    "n",
    "undefined",
    "p_against",
    "p_holm",
    "verdict",
    "reason",
)

WU = "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality"
MULTILINGUAL = "Do Retrieval Heads Speak the Same Language? (multilingual retrieval heads)"
DYNAMIC = "Retrieval Heads are Dynamic (dynamic retrieval heads)"


@dataclass(frozen=True)
class Claim:
    """A claim of a seed paper: a stable id (never renamed), the paper, the claim in one sentence, and
    the start of the title of the report's figure that shows it."""

    id: str
    paper: str
    statement: str
    figure: str = ""


CLAIMS: dict[str, Claim] = {}


def register_claim(id: str, paper: str, statement: str, figure: str = "") -> Claim:
    """Add a claim to the registry (an id is registered once)."""
    if id in CLAIMS:
        raise ValueError(f"claim {id!r} is registered twice")
    CLAIMS[id] = Claim(id, paper, statement, figure)
    return CLAIMS[id]


@dataclass(frozen=True)
class Measured:
    """One part's contrast: its estimate on the data and its bootstrap draws (NaN where the statistic
    was undefined in a replicate), over ``n`` units; ``reason`` says why there is no estimate."""

    label: str
    estimate: float
    draws: np.ndarray
    n: int
    reason: str = ""

    @property
    def finite(self) -> np.ndarray:
        return self.draws[np.isfinite(self.draws)]

    @property
    def interval(self) -> tuple[float, float]:
        return percentile_interval(self.finite) if self.n >= MIN_UNITS else (np.nan, np.nan)

    @property
    def undefined(self) -> float:
        """The share of replicates where the statistic was undefined."""
        return float(np.mean(~np.isfinite(self.draws))) if len(self.draws) else np.nan

    @property
    def p_against(self) -> float:
        """One-sided bootstrap p-value of "the effect is on the paper's side (>= 0)": the share of
        defined draws at or above 0, with the usual +1 so that it is never 0 from finitely many draws.
        Small means the data contradict the paper."""
        finite = self.finite
        if not np.isfinite(self.estimate) or len(finite) == 0:
            return np.nan
        return float((1 + np.sum(finite >= 0)) / (1 + len(finite)))

    def verdict(self) -> tuple[str, str]:
        """(verdict, reason) of this part alone."""
        if not np.isfinite(self.estimate):
            return NO_DATA, self.reason or "nothing to measure"
        if self.n < MIN_UNITS:
            return NO_DATA, f"{self.n} unit(s): no interval"
        if self.undefined > UNDEFINED_LIMIT:
            return INCONCLUSIVE, f"undefined in {self.undefined:.0%} of replicates"
        lo, hi = self.interval
        if not lo <= self.estimate <= hi:
            return INCONCLUSIVE, "the interval excludes its estimate (a badly behaved statistic)"
        if lo > 0:
            return HOLDS, ""
        if hi < 0:
            return FAILS, ""
        return INCONCLUSIVE, "the interval contains 0"


def nothing(label: str, reason: str) -> Measured:
    """A part that could not be measured, with the reason."""
    return Measured(label, np.nan, np.empty(0), 0, reason)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and takes no part)."""
    values = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(values), np.nan)
    present = np.flatnonzero(np.isfinite(values))
    order = present[np.argsort(values[present], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * values[index]))
        adjusted[index] = running
    return adjusted


@dataclass
class Judged:
    """A claim's verdict over its parts, the part shown in its row, and each part's line."""

    verdict: str
    reason: str
    shown: Measured | None
    parts: list[dict] = field(default_factory=list)


def judge(parts: Sequence[Measured]) -> Judged:
    """The intersection-union verdict over ``parts`` (one part: its own verdict).

    holds: every part holds. does not hold: some part's Holm-adjusted one-sided p-value is below
    ALPHA / 2 (and its interval lies below 0). no data: no part was measured. Otherwise inconclusive,
    with the reason of the part that stood in the way.
    """
    if not parts:
        return Judged(NO_DATA, "nothing to measure", None)
    single = [part.verdict() for part in parts]
    adjusted = holm([part.p_against for part in parts])
    lines = []
    for part, (verdict, reason), p_holm in zip(parts, single, adjusted, strict=True):
        lo, hi = part.interval
        lines.append(
            {
                "part": part.label,
                "estimate": part.estimate,
                "lo": lo,
                "hi": hi,
                "n": part.n,
                "undefined": part.undefined,
                "p_against": part.p_against,
                "p_holm": p_holm,
                "verdict": verdict,
                "reason": reason,
            }
        )
    measured = [index for index, (verdict, _) in enumerate(single) if verdict != NO_DATA]
    if not measured:
        return Judged(NO_DATA, single[0][1], parts[0], lines)
    weakest = min(measured, key=lambda index: _lower(parts[index]))
    contradicting = [index for index in measured if single[index][0] == FAILS and adjusted[index] < ALPHA / 2]
    if contradicting:
        index = min(contradicting, key=lambda index: adjusted[index])
        labels = ", ".join(parts[index].label for index in contradicting)
        return Judged(FAILS, f"contradicted by {labels} (Holm)", parts[index], lines)
    if all(verdict == HOLDS for verdict, _ in single):
        return Judged(HOLDS, "", parts[weakest], lines)
    blocking = [index for index, (verdict, _) in enumerate(single) if verdict != HOLDS]
    reasons = "; ".join(f"{parts[index].label}: {single[index][1] or single[index][0]}" for index in blocking)
    below = [index for index in measured if single[index][0] == FAILS]
    if below:
        draws = min(len(parts[index].finite) for index in below)
        reasons += (
            f" (no part below 0 survives Holm's correction over {len(parts)} parts at {draws} replicates)"
        )
    return Judged(INCONCLUSIVE, reasons, parts[weakest], lines)


def _lower(part: Measured) -> float:
    lo = part.interval[0]
    return lo if np.isfinite(lo) else -np.inf


@dataclass(frozen=True)
class Context:
    """Where a claim was measured: the model's name and the run directory."""

    model: str
    run: str


def claim_rows(
    claim: Claim, parts: Sequence[Measured], unit: str, test: str, context: Context
) -> tuple[dict, list[dict]]:
    """The claim's row and its parts' rows."""
    judged = judge(parts)
    shown = judged.shown
    lo, hi = shown.interval if shown is not None else (np.nan, np.nan)
    family = (
        f"; intersection-union over {len(parts)} parts, Holm for a contradiction" if len(parts) > 1 else ""
    )
    row = {
        "claim": claim.id,
        "paper": claim.paper,
        "statement": claim.statement,
        "estimate": shown.estimate if shown is not None else np.nan,
        "lo": lo,
        "hi": hi,
        "n": shown.n if shown is not None else 0,
        "unit": unit,
        "test": test + family + (f" (row: {shown.label})" if shown is not None and len(parts) > 1 else ""),
        "verdict": judged.verdict,
        "reason": judged.reason,
        "control": "",
        "model": context.model,
        "run": context.run,
    }
    return row, [{"claim": claim.id, **line} for line in judged.parts]


def claims_tables(rows: list[tuple[dict, list[dict]]]) -> dict[str, pd.DataFrame]:
    """The claims and claim_parts tables from claim_rows' results."""
    return {
        "claims": pd.DataFrame([row for row, _ in rows], columns=list(COLUMNS)),
        "claim_parts": pd.DataFrame(
            [line for _, lines in rows for line in lines], columns=list(PART_COLUMNS)
        ),
    }


def with_controls(claims: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """``claims`` with the control column filled from a negative control's claims (same claim ids)."""
    verdicts = dict(zip(control["claim"], control["verdict"], strict=True))
    return claims.assign(control=claims["claim"].map(verdicts).fillna(""))


def bootstrap_units(
    units: int,
    statistic: Callable[[np.ndarray, np.random.Generator | None], dict[str, float]],
    replicates: int,
    seed: int,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A cluster bootstrap: ``statistic(indices, rng)`` on all ``units`` (indices 0..units-1, rng None)
    and on ``replicates`` draws of units with replacement. The same draw of units serves every
    language of a parallel grid (the statistic indexes each language's rows with it); a statistic
    that splits units or chooses heads does it again inside each draw, with the rng it is handed.

    Returns (estimates, draws), draws[name] of shape (replicates,), NaN where a draw left it undefined.
    """
    point = statistic(np.arange(units), None)
    rng = np.random.default_rng(seed)
    draws = {name: np.full(replicates, np.nan) for name in point}
    for replicate in range(replicates):
        values = statistic(rng.integers(0, units, units), rng)
        for name in point:
            draws[name][replicate] = values.get(name, np.nan)
    return point, draws


def against_random(
    label: str, chosen: np.ndarray, random: np.ndarray, replicates: int, seed: int
) -> Measured:
    """mean over units of chosen - (row mean of random): a chosen head set against k random ones,
    paired by unit. chosen : (units,); random : (units, k).

    The chosen set is one set, so under the null "the heads were chosen no better than chance" it is
    one more random draw: each replicate resamples the units and subtracts a prediction shock for a new
    random set, t(k - 1) x sd(random sets' means) x sqrt(1 + 1/k), the textbook prediction interval
    for one more draw. (Resampling the k draws only, a two-level bootstrap of their mean, makes a random
    set taken for the chosen one "hold" in about 1 run of 4 at k = 2-5: it tests "differs from the mean
    of these draws", which any fixed set does.) Under MIN_RANDOM_SETS random sets the spread is unknown:
    no data."""
    units, sets = random.shape
    if units == 0:
        return nothing(label, "no unit ran under both the chosen and the random heads")
    if sets < MIN_RANDOM_SETS:
        return nothing(
            label,
            f"{sets} random head set: the spread of random sets is unknown (run {MIN_RANDOM_SETS} or "
            "more with --random-seeds)",
        )
    scale = np.sqrt(1 + 1 / sets)

    def statistic(rows: np.ndarray, rng: np.random.Generator | None) -> dict[str, float]:
        effects = random[rows].mean(axis=0)
        value = float(chosen[rows].mean() - effects.mean())
        if rng is not None:  # one more random set: the chosen one under the null
            value -= float(rng.standard_t(sets - 1) * effects.std(ddof=1) * scale)
        return {"value": value}

    point, draws = bootstrap_units(units, statistic, replicates, seed)
    return Measured(label, point["value"], draws["value"], units)


def nested_difference(
    label: str, first: np.ndarray, second: np.ndarray, replicates: int, seed: int
) -> Measured:
    """mean over units of (row mean of ``first``) - (row mean of ``second``), arrays of shape (units,
    columns); each replicate draws units and, on a side with several columns (random head sets, random
    draws), those columns too (a two-level bootstrap)."""
    if len(first) == 0:
        return nothing(label, "no unit ran under both conditions")

    def statistic(rows: np.ndarray, rng: np.random.Generator | None) -> dict[str, float]:
        columns = [np.arange(side.shape[1]) for side in (first, second)]
        if rng is not None:
            columns = [rng.integers(0, len(c), len(c)) if len(c) > 1 else c for c in columns]
        left = first[np.ix_(rows, columns[0])].mean(axis=1)
        right = second[np.ix_(rows, columns[1])].mean(axis=1)
        return {"value": float(np.mean(left - right))}

    point, draws = bootstrap_units(len(first), statistic, replicates, seed)
    return Measured(label, point["value"], draws["value"], len(first))


def measured(
    label: str, point: dict[str, float], draws: dict[str, np.ndarray], name: str, n: int
) -> Measured:
    """The part ``name`` of a bootstrap_units result."""
    return Measured(label, float(point.get(name, np.nan)), draws.get(name, np.empty(0)), n)


def split_units(
    units: int,
    parts: int,
    statistic: Callable[[list[np.ndarray]], float],
    replicates: int,
    seed: int,
    partitions: int = 20,
) -> tuple[float, np.ndarray]:
    """A statistic of ``parts`` disjoint groups of units (a split-half null, a cross-fitted choice).

    The estimate is the mean over ``partitions`` random partitions of all units into ``parts`` groups
    of (nearly) equal size: one partition alone would make the estimate depend on the draw. Each
    bootstrap replicate draws a fresh partition and then resamples every group within itself, so a
    unit never lands in two groups (a repeat across groups would read as agreement).

    Returns (estimate, draws of shape (replicates,)); NaN where a group is empty or the statistic is
    undefined.
    """
    if units < parts:
        return np.nan, np.full(replicates, np.nan)
    rng = np.random.default_rng(seed)
    values = [statistic(_partition(units, parts, rng)) for _ in range(partitions)]
    estimate = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
    draws = np.full(replicates, np.nan)
    for replicate in range(replicates):
        groups = _partition(units, parts, rng)
        draws[replicate] = statistic([group[rng.integers(0, len(group), len(group))] for group in groups])
    return estimate, draws


def _partition(units: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(units), parts)
