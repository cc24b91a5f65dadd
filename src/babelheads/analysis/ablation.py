"""Which heads to mask (top, random, language-agnostic, language-specific) and the effects of masking."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from babelheads.analysis.stats import LEVEL, Interval, bootstrap_mean, columns
from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress

HEAD_SETS = ("top", "random", "agnostic", "specific")
CONTROL_DRAW = 10**6
"""The control's 'top' draw, apart from the random sets' draws 0, 1, ..."""
MATCH_CALIPER = 0.1
"""Largest score difference (in the language's own scores) between a matched agnostic and specific head."""


@dataclass(frozen=True)
class HeadSet:
    """A set of heads to mask. ``k`` is the size asked for, ``len(heads)`` the size there was.
    ``language`` : the one language whose prompts it is masked on ('' for every language)."""

    name: str
    k: int
    seed: int
    heads: tuple[HeadAddress, ...]
    language: str = ""

    @property
    def mask_id(self) -> str:
        if not self.heads:
            return "baseline"
        text = ",".join(str(head) for head in sorted(self.heads))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def select_head_sets(
    scores: pd.DataFrame,
    languages: list[str],
    k_values: list[int],
    names: list[str],
    seeds: int,
    threshold: float,
    seed: int = 0,
    control: bool = False,
) -> list[HeadSet]:
    """Head sets from a detection run's ``scores`` table (language, layer, head, score).

    top: highest mean score over ``languages``. random: drawn from heads that are retrieval heads in no
    language (the official code draws outside its top 100). agnostic: retrieval heads in every language,
    by mean score. specific: per language, its own specific heads (retrieval heads in that language and
    not in every language), by that language's score, cut to the agnostic set's size when both are
    asked for; masked on that language's prompts only. With both, per language 'agnostic-equal': that
    language's strongest agnostic heads, as many as its specific heads (Finding 5 compares kinds of
    heads at the same count), and a strength-matched pair of sets ('agnostic-matched',
    'specific-matched'): agnostic and specific heads paired greedily by the closest score in that
    language, within MATCH_CALIPER, so that being shared is not confounded with being strong.

    control : the negative control of the masking claims: 'top' is K random heads drawn like the
    random sets (never a retrieval head), so top against random compares random with random.
    """
    unknown = set(names) - set(HEAD_SETS)
    if unknown:
        raise BabelheadsError(f"Unknown head set {sorted(unknown)[0]!r}. Use any of: {', '.join(HEAD_SETS)}.")
    wide = scores[scores["language"].isin(languages)].pivot_table(
        index=["layer", "head"], columns="language", values="score"
    )
    missing = [language for language in languages if language not in wide.columns]
    if missing:
        raise BabelheadsError(f"The detection run has no scores for {', '.join(missing)}.")
    wide = wide[languages]
    thin = [language for language in languages if wide[language].isna().all()]
    if thin:
        raise BabelheadsError(
            f"The detection run has too few successful samples in {', '.join(thin)} to choose heads by "
            "(its scores are NaN). Leave it out with --languages, or detect on more samples."
        )
    total = len(wide)
    for k in k_values:
        if not 1 <= k <= total:
            raise BabelheadsError(
                f"K={k} is outside [1, {total}], the number of heads. Use --k up to {total}."
            )
    addresses = [HeadAddress(int(layer), int(head)) for layer, head in wide.index]
    member = (wide >= threshold).to_numpy()
    mean = wide.mean(axis=1).to_numpy()

    def ranked(mask: np.ndarray, key: np.ndarray) -> list[HeadAddress]:
        order = sorted(np.flatnonzero(mask), key=lambda index: (-key[index], addresses[index]))
        return [addresses[index] for index in order]

    top = ranked(np.ones(total, dtype=bool), mean)
    if "top" in names:
        strong = int((mean >= threshold).sum())
        too_many = [k for k in k_values if k > strong]
        if too_many:
            raise BabelheadsError(
                f"Only {strong} heads have a mean retrieval score >= {threshold}, so a "
                f"top-{max(too_many)} set would mask heads that are not retrieval heads. "
                f"Use --k up to {strong}, or a lower --threshold."
            )
    agnostic = ranked(member.all(axis=1), mean)
    pool = [addresses[index] for index in np.flatnonzero(~member.any(axis=1))]
    sets = [HeadSet("none", 0, -1, ())]
    for k in k_values:
        if "top" in names and control:
            rng = np.random.default_rng([seed, k, CONTROL_DRAW])
            chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
            sets.append(HeadSet("top", k, -1, tuple(sorted(pool[index] for index in chosen))))
        elif "top" in names:
            sets.append(HeadSet("top", k, -1, tuple(top[:k])))
        if "random" in names:
            if k > len(pool):
                raise BabelheadsError(
                    f"K={k} exceeds the {len(pool)} non-retrieval heads that random heads are drawn from. "
                    "Use a smaller --k."
                )
            for draw in range(seeds):
                rng = np.random.default_rng([seed, k, draw])
                chosen = rng.choice(len(pool), size=k, replace=False)
                sets.append(HeadSet("random", k, draw, tuple(sorted(pool[index] for index in chosen))))
        count = min(k, len(agnostic)) if "agnostic" in names else k
        if "agnostic" in names:
            sets.append(HeadSet("agnostic", k, -1, tuple(agnostic[:count])))
        if "specific" not in names:
            continue
        for column, language in enumerate(languages):
            own = member[:, column] & ~member.all(axis=1)
            score = wide[language].to_numpy()
            specific = ranked(own, score)[:count]
            sets.append(HeadSet("specific", k, -1, tuple(specific), language))
            if "agnostic" in names:
                # the language's strongest agnostic heads, as many as its specific heads: Finding 5
                # compares kinds of heads, so both sides have the same count in every language
                equal = ranked(member.all(axis=1), score)[: len(specific)]
                sets.append(HeadSet("agnostic-equal", k, -1, tuple(equal), language))
                pairs = _matched(np.flatnonzero(member.all(axis=1)), np.flatnonzero(own), score, count)
                for name, side in (("agnostic-matched", 0), ("specific-matched", 1)):
                    chosen = tuple(sorted(addresses[pair[side]] for pair in pairs))
                    sets.append(HeadSet(name, k, -1, chosen, language))
    return sets


def _matched(
    agnostic: np.ndarray, specific: np.ndarray, score: np.ndarray, count: int
) -> list[tuple[int, int]]:
    """Up to ``count`` (agnostic, specific) head pairs, closest scores first, each head used once,
    every pair within MATCH_CALIPER (ties: by index)."""
    candidates = sorted(
        (abs(score[a] - score[b]), a, b)
        for a in agnostic
        for b in specific
        if abs(score[a] - score[b]) <= MATCH_CALIPER
    )
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for _, a, b in candidates:
        if len(pairs) == count:
            break
        if a not in used and b not in used:
            pairs.append((a, b))
            used.update((a, b))
    return pairs


def paired_delta(
    masked: np.ndarray, baseline: np.ndarray, replicates: int, seed: int, level: float = LEVEL
) -> Interval:
    """Mean of masked - baseline over paired samples (arrays of shape (samples,), already aligned),
    with a percentile bootstrap interval. A NaN difference is kept (it makes the mean NaN); under
    MIN_UNITS samples the interval is NaN, with a ThinDataWarning."""
    differences = np.asarray(masked, dtype=float) - np.asarray(baseline, dtype=float)
    return bootstrap_mean(differences, replicates, seed, level)


def effects(evaluations: pd.DataFrame, sets: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Accuracy and ROUGE per head set and language, and their change from no masking, paired by sample.

    evaluations : mask_id, sample_id, language, success, and rouge1_recall where the task has it (word
    problems have none: their ROUGE columns are NaN).
    sets : name, k, seed, count, heads, mask_id.
    """
    if "rouge1_recall" not in evaluations:
        evaluations = evaluations.assign(rouge1_recall=np.nan)
    baseline = evaluations[evaluations["mask_id"] == "baseline"].set_index("sample_id")
    rows = []
    for head_set in sets.to_dict("records"):
        chosen = evaluations[evaluations["mask_id"] == head_set["mask_id"]]
        if head_set.get("language"):  # masked on its language's prompts (another set may share the mask)
            # a word problem's condition is 'en/cot': its language is the source language
            key = "source_language" if "source_language" in chosen else "language"
            chosen = chosen[chosen[key] == head_set["language"]]
        for language, frame in chosen.groupby("language", sort=True):
            frame = frame.set_index("sample_id").sort_index()
            base = baseline.loc[frame.index]
            accuracy = paired_delta(frame["success"], base["success"], replicates, seed)
            # no ROUGE (word problems): every difference is NaN, and so is the delta
            rouge = paired_delta(frame["rouge1_recall"], base["rouge1_recall"], replicates, seed)
            rows.append(
                {
                    "head_set": head_set["name"],
                    "k": head_set["k"],
                    "seed": head_set["seed"],
                    "count": head_set["count"],
                    "heads": head_set["heads"],
                    "language": language,
                    "accuracy": float(frame["success"].mean()),
                    "rouge1_recall": float(frame["rouge1_recall"].mean()),
                    "n": len(frame),
                    **columns("delta_accuracy", accuracy),
                    **columns("delta_rouge", rouge),
                }
            )
    return pd.DataFrame(rows)
