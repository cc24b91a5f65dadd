"""The claims of "Retrieval Heads are Dynamic" that a dynamic run tests: a step's heads are not the
static top-K, more heads take turns than K, and the hidden state predicts which heads retrieve.

The static top-K is chosen on one half of each language's samples and the statistics are measured on
the other half (:func:`babelheads.experiments.dynamic.split_halves`); intervals resample the tested
samples, a sample's steps together. The probes are fitted on train samples and scored on test samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from babelheads.analysis.claims import (
    DYNAMIC,
    Context,
    Measured,
    bootstrap_units,
    claim_rows,
    nothing,
    register_claim,
)
from babelheads.analysis.dynamic_heads import SampleParts, StepHeads, sample_parts, weighted_statistics
from babelheads.analysis.head_probes import ProbeGain

NOT_STATIC = register_claim(
    "dynamic.not_static",
    DYNAMIC,
    "A decoding step's retrieval heads differ from the static top-K heads (Jaccard below 1; "
    "0.18-0.46 in the paper).",
    figure="How dynamic are the retrieval heads?",
)
TURN_TAKING = register_claim(
    "dynamic.turn_taking",
    DYNAMIC,
    "More heads take turns than K: the entropy of how often each head retrieves exceeds ln K "
    "(3.0-4.9 against ln 20 in the paper).",
    figure="How dynamic are the retrieval heads?",
)
CCA = register_claim(
    "dynamic.cca",
    DYNAMIC,
    "The hidden state predicts the heads' scores on held-out samples: canonical correlation above that "
    "of a CCA fitted on shuffled pairs (lag 0).",
    figure="Predicting heads from hidden states",
)
PREDICTABLE = register_claim(
    "dynamic.predictable",
    DYNAMIC,
    "The hidden state predicts which heads retrieve at a step: the probe beats the static prior within "
    "retrieval steps, and beats the prior times the predicted chance that a step retrieves.",
    figure="Predicting each step's retrieval heads",
)
MIN_TEST_SAMPLES = 5
"""Test samples a probe's gain needs for a verdict: a bootstrap over two or three samples has a handful
of distinct draws and no 95 % coverage."""
STEPS = "tested samples (the other half chose the static heads; a sample's steps together)"
TEST = "test samples of the probe split, languages pooled (a sample's steps together)"


def statistic_claims(
    tested: dict[str, StepHeads], static: dict[str, np.ndarray], replicates: int, seed: int, context: Context
) -> list[tuple[dict, list[dict]]]:
    """dynamic.not_static and dynamic.turn_taking, one part per language. tested : each language's
    tested steps; static : its static heads (flat indices) chosen on the other half."""
    parts: dict[str, list[Measured]] = {"not_static": [], "turn_taking": []}
    for language in sorted(tested):
        heads = static.get(language, np.empty(0, dtype=int))
        if len(heads) == 0:
            for name in parts:
                parts[name].append(nothing(language, "no static heads (no successful sample to rank by)"))
            continue
        order, sums = sample_parts(tested[language], heads)

        if sums.retrieval_steps.sum() == 0:
            for name in parts:
                parts[name].append(nothing(language, "no retrieval step in the tested samples"))
            continue
        point, draws = bootstrap_units(len(order), _dynamism(sums, len(heads)), replicates, seed)
        label = f"{language} (K={len(heads)})"
        for name in parts:
            parts[name].append(Measured(label, point[name], draws[name], len(order)))
    missing = [nothing("all", "no language with tested samples")]
    return [
        claim_rows(
            NOT_STATIC,
            parts["not_static"] or missing,
            STEPS,
            "1 minus the mean Jaccard of each retrieval step's heads (S(x_t, h) = 1) with the static top-K",
            context,
        ),
        claim_rows(
            TURN_TAKING,
            parts["turn_taking"] or missing,
            STEPS,
            "entropy of how often each head is a retrieval step's head, minus ln K",
            context,
        ),
    ]


def probe_claims(
    cca: dict[str, ProbeGain | None], probe: dict[str, dict[str, ProbeGain]], context: Context
) -> list[tuple[dict, list[dict]]]:
    """dynamic.cca and dynamic.predictable from the probes fitted on every language pooled (one probe
    per model, as the paper fits it), one part per comparison."""
    cca_parts = [
        _measured(language, gain, "too few held-out pairs, or nothing varies")
        for language, gain in cca.items()
    ]
    probe_parts = []
    for language, gains in probe.items():
        if not gains:
            probe_parts.append(nothing(language, "too few samples or positives to fit the probe"))
        for baseline, gain in gains.items():
            probe_parts.append(_measured(f"{language}: probe - {baseline}", gain, "no test steps"))
    missing = [nothing("all", "no probes (dynamic --probes)")]
    return [
        claim_rows(
            CCA,
            cca_parts or missing,
            TEST,
            "held-out top-1 canonical correlation (state at t, every head's graded needle-match score at t) "
            "minus the mean over CCAs fitted on shuffled training pairs, at lag 0; the paper's PCA (95 % / "
            "99 % variance) and min-max scaling",
            context,
        ),
        claim_rows(
            PREDICTABLE,
            probe_parts or missing,
            TEST,
            "test AUPRC of the MLP probe (asymmetric loss) minus the static prior's on the test steps that "
            "retrieve, and minus prior x P(step retrieves) (a logistic regression on the state) on every "
            "test step; the paper compares with the static prior on every step",
            context,
        ),
    ]


def _dynamism(sums: SampleParts, k: int) -> Callable[[np.ndarray, np.random.Generator | None], dict]:
    """The two contrasts on a draw of samples (a draw is a weighting of the per-sample sums)."""

    def statistic(rows: np.ndarray, _rng: np.random.Generator | None) -> dict[str, float]:
        weights = np.bincount(rows, minlength=len(sums.retrieval_steps)).astype(float)[None, :]
        values = weighted_statistics(sums, weights)
        return {
            "not_static": float(1 - values["jaccard_static"][0]),
            "turn_taking": float(values["entropy"][0] - np.log(k)),
        }

    return statistic


def _measured(label: str, gain: ProbeGain | None, reason: str) -> Measured:
    if gain is None or not np.isfinite(gain.estimate):
        return nothing(label, reason)
    if gain.samples < MIN_TEST_SAMPLES:
        return nothing(
            label,
            f"{gain.samples} test sample(s): too few to resample for a verdict (at least "
            f"{MIN_TEST_SAMPLES}; the probe split tests 10 % of the samples: run more)",
        )
    return Measured(label, gain.estimate, gain.draws, gain.samples)
