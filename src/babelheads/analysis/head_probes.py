"""Can a step's retrieval heads be read off the hidden state? CCA, an MLP probe and a regressor.

Every number here comes with the baseline that tells noise from signal: CCA on shuffled pairs and on
held-out samples (CCA with few samples and many dimensions reports near 1 on noise), the probe against
each head's base rate and against a probe trained on shuffled labels, the regressor against the same.
Samples are split 70/20/10 into train, validation and test by a seeded draw; steps of one sample are
never split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, precision_recall_curve, r2_score
from sklearn.preprocessing import MinMaxScaler

from babelheads.analysis.aggregate import ThinDataWarning
from babelheads.analysis.stats import MIN_UNITS, percentile_interval
from babelheads.errors import BabelheadsError

PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class ProbeSettings:
    """hidden : layer sizes of the MLP; empty picks (2d, d, d) for hidden size d, the shape of the
    paper's 8192-4096-4096 for 8B models. The rest are the paper's settings (Adam 3e-4, 100 epochs,
    dropout 0.1) and asymmetric-loss focusing (Ridnik et al. 2021: gamma- 4, gamma+ 0, clip 0.05)."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.1
    learning_rate: float = 3e-4
    epochs: int = 100
    batch_size: int = 256
    gamma_negative: float = 4.0
    gamma_positive: float = 0.0
    clip: float = 0.05
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    cca_lags: tuple[int, ...] = tuple(range(11))
    cca_components: int = 50
    cca_variance: tuple[float, float] = (0.95, 0.99)
    shuffles: int = 3
    replicates: int = 200
    """Bootstrap draws of the test samples for the probe's and regressor's intervals (each draw
    recomputes AUPRC over every test step and head, so fewer than the statistics' 1000)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if abs(sum(self.split) - 1) > 1e-9 or min(self.split) <= 0:
            raise BabelheadsError(f"split must be three positive shares summing to 1. Got {self.split}.")
        if (
            min(self.epochs, self.batch_size, self.shuffles, self.replicates) < 1
            or min(self.hidden, default=1) < 1
        ):
            raise BabelheadsError(
                "--epochs, --shuffles, the batch size, the replicates and every --probe-hidden size must be "
                f"at least 1. Got {self.epochs}, {self.shuffles}, {self.batch_size}, {self.replicates}, "
                f"{self.hidden}."
            )
        if any(lag < 0 for lag in self.cca_lags):
            raise BabelheadsError(f"--lags must be >= 0. Got {self.cca_lags}.")


@dataclass(frozen=True)
class StepData:
    """Aligned rows of one language (or all pooled): index (sample_id, step), states (rows, d), targets
    (rows, heads), and each sample's part (train, validation, test)."""

    index: pd.DataFrame
    states: np.ndarray
    targets: np.ndarray
    parts: dict[str, str] = field(default_factory=dict)

    def part(self, name: str) -> np.ndarray:
        return self.index["sample_id"].map(self.parts).eq(name).to_numpy()


def split_samples(sample_ids: list[str], shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Each sample to train, validation or test: a seeded permutation cut at the shares (each part gets
    at least one sample when there are three or more)."""
    ids = sorted(set(sample_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)
    test = max(1, round(shares[2] * n)) if n >= 3 else 0
    validation = max(1, round(shares[1] * n)) if n >= 3 else 0
    names = ["test"] * test + ["validation"] * validation + ["train"] * (n - test - validation)
    return {ids[position]: names[rank] for rank, position in enumerate(order)}


def hidden_states(hidden: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The stored states as (index sample_id/step, float32 matrix)."""
    ordered = hidden.sort_values(["sample_id", "step"]).reset_index(drop=True)
    states = np.stack([np.frombuffer(blob, dtype=np.float32) for blob in ordered["state"]])
    return ordered[["sample_id", "step"]], states


def lagged(data: StepData, lag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (state at step n, targets at step n + lag) within each sample; returns their row indices
    into data (sources, targets) and the source rows' sample ids."""
    keys = {key: row for row, key in enumerate(zip(data.index["sample_id"], data.index["step"], strict=True))}
    sources, targets = [], []
    for row, (sample_id, step) in enumerate(zip(data.index["sample_id"], data.index["step"], strict=True)):
        later = keys.get((sample_id, step + lag))
        if later is not None:
            sources.append(row)
            targets.append(later)
    sources, targets = np.asarray(sources, dtype=int), np.asarray(targets, dtype=int)
    return sources, targets, data.index["sample_id"].to_numpy()[sources]


def _first_correlation(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return np.nan
    return float(np.corrcoef(x, y)[0, 1])


def canonical_correlation(
    x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray, y_held: np.ndarray, settings: ProbeSettings
) -> tuple[float, float, int]:
    """Top-1 canonical correlation on the training pairs and on held-out pairs, with the paper's
    preprocessing fitted on the training pairs only; and the number of components the paper's setting
    allows here (min of its 50, the PCA dimensions and the pairs)."""
    projected = cca_projections(x_train, y_train, x_held, y_held, settings)
    if projected is None:
        return np.nan, np.nan, 0
    (u, v), held, components = projected
    train = _first_correlation(u, v)
    return train, _first_correlation(*held) if held is not None else np.nan, components


def cca_projections(
    x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray, y_held: np.ndarray, settings: ProbeSettings
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None, int] | None:
    """The first canonical variates of the training pairs and of the held-out pairs (None under three
    held-out pairs), and the components allowed; None when nothing varies or under four pairs."""
    varying = y_train.std(axis=0) > 0
    if varying.sum() == 0 or len(x_train) < 4:
        return None
    scaler = MinMaxScaler().fit(y_train[:, varying])
    x_pca = PCA(settings.cca_variance[0], svd_solver="full").fit(x_train)
    y_pca = PCA(settings.cca_variance[1], svd_solver="full").fit(scaler.transform(y_train[:, varying]))
    x_fit, y_fit = x_pca.transform(x_train), y_pca.transform(scaler.transform(y_train[:, varying]))
    components = min(settings.cca_components, x_fit.shape[1], y_fit.shape[1], len(x_train) - 1)
    # scikit-learn's CCA finds components one after another (NIPALS with deflation): the first is the
    # same whatever n_components is, so only it is fitted (8x faster at 30 components).
    cca = CCA(n_components=1, max_iter=1000).fit(x_fit, y_fit)
    u, v = cca.transform(x_fit, y_fit)
    held = None
    if len(x_held) >= 3:
        u_held, v_held = cca.transform(
            x_pca.transform(x_held), y_pca.transform(scaler.transform(y_held[:, varying]))
        )
        held = (u_held[:, 0], v_held[:, 0])
    return (u[:, 0], v[:, 0]), held, components


def cca_gain(data: StepData, settings: ProbeSettings, lag: int = 0) -> ProbeGain | None:
    """Held-out canonical correlation at ``lag`` minus the mean of CCAs fitted on shuffled training
    pairs, both on the same held-out pairs; draws resample held-out samples (a sample's pairs together).
    None where either side has no held-out correlation."""
    sources, targets, ids = lagged(data, lag)
    fit = np.isin(ids, [key for key, part in data.parts.items() if part != "test"])
    x, y = data.states[sources], data.targets[targets]
    rng = np.random.default_rng([settings.seed, lag])
    real = cca_projections(x[fit], y[fit], x[~fit], y[~fit], settings)
    shuffled = [
        cca_projections(x[fit], y[fit][rng.permutation(fit.sum())], x[~fit], y[~fit], settings)
        for _ in range(settings.shuffles)
    ]
    if real is None or real[1] is None or any(one is None or one[1] is None for one in shuffled):
        return None
    held_ids = ids[~fit]

    def gain(rows: np.ndarray) -> float:
        null = [_first_correlation(u[rows], v[rows]) for (u, v) in (one[1] for one in shuffled)]
        return _first_correlation(real[1][0][rows], real[1][1][rows]) - _mean(null)

    draws = np.array([gain(rows) for rows in _sample_draws(held_ids, settings)], dtype=float)
    return ProbeGain(gain(np.arange(len(held_ids))), draws, len(set(held_ids)))


def _mean(values: list[float]) -> float:
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else np.nan


def cca_sweep(data: StepData, settings: ProbeSettings) -> pd.DataFrame:
    """Per lag k: the top-1 canonical correlation between the state at step n and every head's score
    at step n + k, on training pairs (train + validation samples) and held-out pairs (test samples),
    and the same with the training pairs shuffled (``shuffles`` draws, their mean)."""
    rows = []
    rng = np.random.default_rng(settings.seed)
    for lag in settings.cca_lags:
        sources, targets, ids = lagged(data, lag)
        fit = np.isin(ids, [key for key, part in data.parts.items() if part != "test"])
        x, y = data.states[sources], data.targets[targets]
        train, held, components = canonical_correlation(x[fit], y[fit], x[~fit], y[~fit], settings)
        shuffled = [
            canonical_correlation(x[fit], y[fit][rng.permutation(fit.sum())], x[~fit], y[~fit], settings)[:2]
            for _ in range(settings.shuffles)
        ]
        rows.append(
            {
                "lag": lag,
                "train": train,
                "held_out": held,
                "shuffled_train": _mean([value[0] for value in shuffled]),
                "shuffled_held_out": _mean([value[1] for value in shuffled]),
                "pairs_train": int(fit.sum()),
                "pairs_held_out": int((~fit).sum()),
                "components": components,
            }
        )
    table = pd.DataFrame(rows)
    noisy = table[table["shuffled_train"] > 0.8]
    if not noisy.empty:
        warnings.warn(
            f"CCA on shuffled pairs reaches {noisy['shuffled_train'].max():.2f} on the training pairs: with "
            f"{int(table['pairs_train'].min())} pairs the training correlation says nothing; read held_out.",
            ThinDataWarning,
            stacklevel=2,
        )
    return table


class _Probe(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        layers: list[torch.nn.Module] = []
        for size in hidden:
            layers += [torch.nn.Linear(inputs, size), torch.nn.GELU(), torch.nn.Dropout(dropout)]
            inputs = size
        layers.append(torch.nn.Linear(inputs, outputs))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def asymmetric_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma_positive: float, gamma_negative: float, clip: float
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021) for multi-label targets: easy negatives are down-weighted
    by (p_m)^gamma- with the probability shifted by ``clip``, positives by (1 - p)^gamma+."""
    p = torch.sigmoid(logits)
    shifted = (p - clip).clamp(min=0) if clip > 0 else p
    positive = targets * (1 - p).pow(gamma_positive) * torch.log(p.clamp(min=1e-8))
    negative = (1 - targets) * shifted.pow(gamma_negative) * torch.log((1 - shifted).clamp(min=1e-8))
    return -(positive + negative).sum(dim=1).mean()


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [(array - mean) / std for array in (train, *others)]


def _fit(x: np.ndarray, y: np.ndarray, settings: ProbeSettings, loss: str, seed: int) -> _Probe:
    torch.manual_seed(seed)
    hidden = settings.hidden or (2 * x.shape[1], x.shape[1], x.shape[1])
    model = _Probe(x.shape[1], y.shape[1], hidden, settings.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(settings.epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(settings.batch_size):
            output = model(inputs[batch])
            if loss == "asymmetric":
                value = asymmetric_loss(
                    output, targets[batch], settings.gamma_positive, settings.gamma_negative, settings.clip
                )
            else:
                value = torch.nn.functional.mse_loss(output, targets[batch])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    model.eval()
    return model


def _predict(model: _Probe, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).float()).numpy()


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises micro F1 on (labels, scores); NaN without positives."""
    if labels.sum() == 0:
        return np.nan
    precision, recall, thresholds = precision_recall_curve(labels.ravel(), scores.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    true_positive = float((labels & predicted).sum())
    denominator = float(labels.sum() + predicted.sum())
    return 2 * true_positive / denominator if denominator else np.nan


def _sample_draws(sample_ids: np.ndarray, settings: ProbeSettings) -> list[np.ndarray]:
    """Row indices of ``replicates`` draws of whole test samples with replacement (none for fewer than
    MIN_UNITS samples: no interval)."""
    unique = sorted(set(sample_ids))
    if len(unique) < MIN_UNITS:
        return []
    members = {sample_id: np.flatnonzero(sample_ids == sample_id) for sample_id in unique}
    rng = np.random.default_rng(settings.seed)
    return [
        np.concatenate([members[unique[index]] for index in rng.integers(0, len(unique), len(unique))])
        for _ in range(settings.replicates)
    ]


def _bounds(name: str, draws: np.ndarray) -> dict[str, float]:
    # a draw without a positive, or without variation, has no F1, AUPRC or R^2: it does not count
    lo, hi = percentile_interval(draws[np.isfinite(draws)])
    return {f"{name}_lo": lo, f"{name}_hi": hi}


def _auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(average_precision_score(labels.ravel(), scores.ravel())) if labels.any() else np.nan


def _thin(data: StepData, what: str) -> bool:
    counts = {name: int(data.part(name).sum()) for name in PARTS}
    positives = {name: float(data.targets[data.part(name)].sum()) for name in PARTS}
    if min(counts.values()) == 0 or min(positives.values()) == 0:
        warnings.warn(
            f"{what}: too little data ({counts} steps, {positives} positives per part): NaN.",
            ThinDataWarning,
            stacklevel=3,
        )
        return True
    return False


@dataclass
class TrainedProbe:
    """A fitted probe: standardize a final hidden state, then one probability per head (layer-major)
    that the head is a dynamic retrieval head at that step; ``threshold`` is the validation F1 cut."""

    model: torch.nn.Module
    mean: np.ndarray
    std: np.ndarray
    threshold: float

    def probabilities(self, states: np.ndarray) -> np.ndarray:
        """float (rows, heads) for states of shape (rows, hidden size)."""
        return expit(_predict(self.model, (np.asarray(states, np.float32) - self.mean) / self.std))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        layers = [module for module in self.model.net if isinstance(module, torch.nn.Linear)]
        torch.save(
            {
                "state_dict": self.model.state_dict(),
                "sizes": [layers[0].in_features, *(layer.out_features for layer in layers)],
                "mean": self.mean,
                "std": self.std,
                "threshold": self.threshold,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> TrainedProbe:
        saved = torch.load(path, weights_only=False)
        sizes = saved["sizes"]
        model = _Probe(sizes[0], sizes[-1], tuple(sizes[1:-1]), 0.0)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return cls(model, saved["mean"], saved["std"], saved["threshold"])


WITHIN = " | retrieval steps"
"""Suffix of the predictors scored on the test steps where some head retrieves (and nowhere else)."""


@dataclass(frozen=True)
class ProbeGain:
    """The probe's test AUPRC minus a baseline's: on the test data and on each draw of test samples."""

    estimate: float
    draws: np.ndarray
    samples: int


def probe_heads(
    data: StepData, settings: ProbeSettings
) -> tuple[pd.DataFrame, pd.DataFrame, TrainedProbe | None, dict[str, ProbeGain]]:
    """The MLP probe from the state at step t to that step's dynamic heads, against the static prior
    (each head's base rate on train), a probe trained on shuffled labels, and the prior times the
    chance that the step retrieves at all (a logistic regression on the state: a probe that only
    knows *when* the model retrieves gets this far). Thresholds maximise F1 on validation; F1 and AUPRC
    are on test, and on the test steps that retrieve (predictor names ending in WITHIN), where knowing
    when is no help and only knowing *which* heads counts.

    Returns (scores, precision-recall curves, the fitted probe, the probe's AUPRC gains over the
    prior within retrieval steps and over prior x P(retrieve), with their draws)."""
    empty = pd.DataFrame(columns=["predictor", "f1", "auprc", "threshold", "test_steps", "test_positives"])
    if _thin(data, "probe"):
        return empty, pd.DataFrame(columns=["predictor", "precision", "recall"]), None, {}
    train, validation, test = (data.part(name) for name in PARTS)
    x_train, x_val, x_test = _standardize(data.states[train], data.states[validation], data.states[test])
    labels = data.targets.astype(bool)
    y_train = labels[train].astype(np.float32)
    rng = np.random.default_rng(settings.seed)
    fitted = _fit(x_train, y_train, settings, "asymmetric", settings.seed)
    predictors = {
        "probe": _predict(fitted, np.concatenate([x_val, x_test])),
        "shuffled labels": _predict(
            _fit(x_train, y_train[rng.permutation(len(y_train))], settings, "asymmetric", settings.seed),
            np.concatenate([x_val, x_test]),
        ),
        "static prior": np.broadcast_to(
            y_train.mean(axis=0), (validation.sum() + test.sum(), labels.shape[1])
        ),
        "prior x P(retrieve)": _prior_times_retrieving(x_train, y_train, np.concatenate([x_val, x_test])),
    }
    test_ids = data.index["sample_id"].to_numpy()[test]
    draws = _sample_draws(test_ids, settings)
    rows, curves, auprc_draws = [], [], {}
    for name, scores in predictors.items():
        val_scores, test_scores = scores[: validation.sum()], scores[validation.sum() :]
        threshold = f1_threshold(labels[validation], val_scores)
        truth = labels[test]
        found = np.isfinite(threshold)
        f1 = _f1(truth, test_scores >= threshold) if found else np.nan
        f1_draws = np.array([_f1(truth[drawn], test_scores[drawn] >= threshold) for drawn in draws if found])
        auprc_draws[name] = np.array([_auprc(truth[drawn], test_scores[drawn]) for drawn in draws])
        rows.append(
            {
                "predictor": name,
                "f1": f1,
                **_bounds("f1", f1_draws),
                "auprc": _auprc(truth, test_scores),
                **_bounds("auprc", auprc_draws[name]),
                "threshold": threshold,
                "test_steps": int(test.sum()),
                "test_positives": int(truth.sum()),
                "n": len(set(test_ids)),
            }
        )
        precision, recall, _ = precision_recall_curve(truth.ravel(), test_scores.ravel())
        curves.append(pd.DataFrame({"predictor": name, "precision": precision, "recall": recall}))
    table = pd.DataFrame(rows)
    # Paired on the same draws: how much each predictor's AUPRC exceeds the static prior's.
    table["auprc_gain"] = table["auprc"] - table.loc[table["predictor"] == "static prior", "auprc"].iloc[0]
    gains = [
        _bounds("auprc_gain", auprc_draws[name] - auprc_draws["static prior"]) for name in table["predictor"]
    ]
    table = pd.concat([table, pd.DataFrame(gains)], axis=1)
    truth, retrieving = labels[test], labels[test].any(axis=1)
    within_draws = [drawn[retrieving[drawn]] for drawn in draws]
    within, extra = {}, []
    for name in ("probe", "static prior"):
        scores = predictors[name][validation.sum() :]
        within[name] = np.array([_auprc(truth[drawn], scores[drawn]) for drawn in within_draws])
        extra.append(
            {
                "predictor": name + WITHIN,
                "auprc": _auprc(truth[retrieving], scores[retrieving]),
                **_bounds("auprc", within[name]),
                "test_steps": int(retrieving.sum()),
                "test_positives": int(truth[retrieving].sum()),
                "n": len(set(test_ids[retrieving])),
            }
        )
    extra = pd.DataFrame(extra)
    extra["auprc_gain"] = extra["auprc"] - extra["auprc"].iloc[1]
    gains = [_bounds("auprc_gain", within[name] - within["static prior"]) for name in within]
    table = pd.concat([table, pd.concat([extra, pd.DataFrame(gains)], axis=1)], ignore_index=True)
    point = table.set_index("predictor")["auprc"]
    result = {
        "static prior" + WITHIN: ProbeGain(
            float(point["probe" + WITHIN] - point["static prior" + WITHIN]),
            within["probe"] - within["static prior"],
            len(set(test_ids[retrieving])),
        ),
        "prior x P(retrieve)": ProbeGain(
            float(point["probe"] - point["prior x P(retrieve)"]),
            auprc_draws["probe"] - auprc_draws["prior x P(retrieve)"],
            len(set(test_ids)),
        ),
    }
    mean, std = data.states[train].mean(axis=0), data.states[train].std(axis=0) + 1e-6
    trained = TrainedProbe(
        fitted, mean.astype(np.float32), std.astype(np.float32), float(table["threshold"].iloc[0])
    )
    return table, pd.concat(curves, ignore_index=True), trained, result


def _prior_times_retrieving(x_train: np.ndarray, y_train: np.ndarray, x_scored: np.ndarray) -> np.ndarray:
    """Each head's rate among the training steps that retrieve, times the predicted chance that a step
    retrieves (a logistic regression on the state; the base rate where train has one kind of step)."""
    from sklearn.linear_model import LogisticRegression

    retrieves = y_train.any(axis=1)
    conditional = y_train[retrieves].mean(axis=0)
    if retrieves.all() or not retrieves.any():
        chance = np.full(len(x_scored), retrieves.mean())
    else:
        chance = LogisticRegression(max_iter=1000).fit(x_train, retrieves).predict_proba(x_scored)[:, 1]
    return chance[:, None] * conditional[None, :]


def regress_heads(data: StepData, settings: ProbeSettings) -> pd.DataFrame:
    """An MLP regressor from the state at step t to each head's Eq. 2 score at t (heads whose score is
    defined at every step), R^2 on test against the training mean and a regressor on shuffled
    targets. R^2 averages over heads whose test targets vary."""
    finite = np.isfinite(data.targets).all(axis=0)
    columns = ["predictor", "r2", "heads", "test_steps"]
    counts = {name: int(data.part(name).sum()) for name in PARTS}
    if finite.sum() == 0 or min(counts.values()) == 0:
        warnings.warn(
            f"regressor: too little data ({counts} steps, {int(finite.sum())} heads): NaN.",
            ThinDataWarning,
            stacklevel=2,
        )
        return pd.DataFrame(columns=columns)
    train, validation, test = (data.part(name) for name in PARTS)
    fit = train | validation
    targets = data.targets[:, finite]
    x_fit, x_test = _standardize(data.states[fit], data.states[test])
    rng = np.random.default_rng(settings.seed)
    varying = targets[test].std(axis=0) > 0
    predictions = {
        "regressor": _predict(_fit(x_fit, targets[fit], settings, "mse", settings.seed), x_test),
        "shuffled targets": _predict(
            _fit(x_fit, targets[fit][rng.permutation(fit.sum())], settings, "mse", settings.seed), x_test
        ),
        "training mean": np.broadcast_to(targets[fit].mean(axis=0), (test.sum(), targets.shape[1])),
    }
    truth = targets[test][:, varying]
    test_ids = data.index["sample_id"].to_numpy()[test]
    draws = _sample_draws(test_ids, settings)

    def r2(rows: np.ndarray, predicted: np.ndarray) -> float:
        if not varying.any() or (truth[rows].std(axis=0) == 0).any():
            return np.nan
        return float(r2_score(truth[rows], predicted[rows][:, varying], multioutput="variance_weighted"))

    everything = np.arange(int(test.sum()))
    return pd.DataFrame(
        [
            {
                "predictor": name,
                "r2": r2(everything, predicted),
                **_bounds("r2", np.array([r2(drawn, predicted) for drawn in draws])),
                "heads": int(varying.sum()),
                "test_steps": int(test.sum()),
                "n": len(set(test_ids)),
            }
            for name, predicted in predictions.items()
        ]
    )
