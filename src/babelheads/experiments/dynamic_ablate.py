"""Dynamic ablation ("Retrieval Heads are Dynamic", Sec. 4): at each step, mask that step's dynamic
heads and regenerate the token, teacher-forced on the clean continuation.

Per held-out sample: one clean greedy pass records every step's dynamic heads D_t (S = 1) and a ranking
of all heads (graded S, then attention on the needle). Then every step t is decoded again from the
clean prefix with one head set masked in that step only:

- dynamic: D_t; static: the |D_t| best static heads (from another run); random: |D_t| heads drawn
  uniformly, several seeds (steps with no dynamic head mask nothing);
- progressive: the k best heads of the step's ranking, for each k; the heads that then copy the clean
  token in their place are the compensating heads, counted with how many are static top-K heads.

A condition's answer is the clean prefix's masked predictions read as a sequence: exact match (the
answer in it) and ROUGE-L, per sample, with intervals over samples.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from babelheads.analysis.aggregate import ThinDataWarning, completed
from babelheads.analysis.scores import mean_interval
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.ablate import METHODS
from babelheads.experiments.dynamic import ranked_heads
from babelheads.heads import HeadAddress, HeadLayout
from babelheads.models import LoadedModel, resolved_precision
from babelheads.probe import HeadGates, Instrument, ProbeSettings
from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Row, decode_rows
from babelheads.runner.jobs import DEFAULT_BATCH_SIZE, region_labels
from babelheads.runner.prefix import SharedPrefill, branch_points
from babelheads.runner.stops import StopRule
from babelheads.runs import RunStore
from babelheads.scoring import copy_events
from babelheads.tasks.base import Sample, Skipped
from babelheads.tasks.niah import NiahSettings, NiahTask

CONDITIONS = ("clean", "dynamic", "static", "random", "progressive")
FINISHED_TABLE = {"detect": "scores", "dynamic": "dynamic_stats"}
"""The derived table a run writes once every sample is done."""


@dataclass(frozen=True)
class DynamicAblateConfig:
    """heads : a detect or dynamic run of the same model; its retrieval scores rank the static heads
    (per language). The samples here use another seed than that run's (``niah.seed``), so no head is
    tested on the samples that chose it."""

    heads: str
    model: str | None = None
    niah: NiahSettings = field(
        default_factory=lambda: NiahSettings(
            needles="magic", lengths=(1000,), depths=(0.25, 0.5, 0.75), needles_per_cell=2, seed=1
        )
    )
    max_new_tokens: int = 40
    random_seeds: int = 3
    progressive: tuple[int, ...] = (1, 2, 4, 8)
    static_k: int = 0
    static_share: float = 0.05
    method: str = "gate"
    dtype: str = "auto"
    replicates: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BabelheadsError(f"method must be one of {', '.join(METHODS)}. Got {self.method!r}.")
        if self.random_seeds < 1 or not self.progressive or min(self.progressive) < 1:
            raise BabelheadsError("random_seeds must be >= 1 and every progressive k >= 1.")

    def identity(self, model: str) -> dict:
        config = asdict(self)
        config.pop("replicates")
        return {**config, "model": model}


def dynamic_ablate(
    config: DynamicAblateConfig, out: Path, execution: Execution = DEFAULT_EXECUTION
) -> RunStore:
    heads_run = RunStore(Path(config.heads))
    manifest = heads_run.manifest()
    if manifest["spec"]["kind"] not in ("detect", "dynamic"):
        raise BabelheadsError(
            f"{config.heads} is a {manifest['spec']['kind']} run; --heads needs a detect or dynamic run."
        )
    if config.niah.seed == manifest.get("seed"):
        raise BabelheadsError(
            f"--seed {config.niah.seed} is the seed of {config.heads}, so the heads would be tested on the "
            "haystacks that chose them. Use another --seed."
        )
    if not heads_run.has_derived(FINISHED_TABLE[manifest["spec"]["kind"]]):
        raise BabelheadsError(
            f"{config.heads} is not finished, so its head ranking would come from part of its samples. "
            "Run its command again to finish it."
        )
    model = config.model or manifest["spec"]["model"]["model"]
    ranking = {language: ranked.index.to_numpy() for language, ranked in ranked_heads(heads_run).items()}
    missing = [code for code in config.niah.languages if code not in ranking]
    if missing:
        raise BabelheadsError(
            f"{config.heads} has no head ranking for {', '.join(missing)} (not run there, or no sample "
            "answered right). Use a run whose model retrieves in those languages."
        )
    task = NiahTask(config.niah)
    store = RunStore(out)
    spec = {
        "kind": "dynamic-ablate",
        "config": config.identity(model),
        "data": task.identity(),
        "heads": manifest["spec_digest"],
        "precision": resolved_precision(config.dtype, execution.device),
    }
    store.check_compatible(spec, ignore=("model",))
    if store.exists():
        store.validate()
    todo = [sample_id for sample_id in task.sample_ids() if sample_id not in store.finished()]
    if todo:
        loaded = execution.load(model, config.dtype)
        spec = {**spec, "model": loaded.identity}
        store.check_compatible(spec)
        store.create(spec, config.seed, {"layout": asdict(loaded.layout)})
        samples = [sample for sample in task.build(loaded) if sample.sample_id in set(todo)]
        instrument = Instrument(
            loaded.model, loaded.layout, ProbeSettings(top_k=4, mass_sink=0, mass_window=0)
        )
        size = execution.batch_size or DEFAULT_BATCH_SIZE.get(loaded.device.type, 8)
        try:
            for sample in tqdm(samples, desc="dynamic-ablate", unit="sample", disable=not execution.progress):
                if isinstance(sample, Skipped):
                    store.append(sample.sample_id, {"samples": pd.DataFrame([sample.row()])})
                    continue
                store.append(
                    sample.sample_id,
                    _ablate_sample(instrument, loaded, sample, task, ranking[sample.condition], config, size),
                )
        finally:
            instrument.detach()
    if set(task.sample_ids()) <= store.finished():
        finalize(store, config)
    return store


def _masks(flat: list[int], layout: HeadLayout, method: str) -> HeadGates | None:
    if not flat:
        return None
    heads = [HeadAddress(head // layout.num_heads, head % layout.num_heads) for head in flat]
    return HeadGates.mask(layout, heads, ("decode",), METHODS[method])


def _ablate_sample(
    instrument: Instrument,
    loaded: LoadedModel,
    sample: Sample,
    task: NiahTask,
    static: np.ndarray,
    config: DynamicAblateConfig,
    size: int,
) -> dict[str, pd.DataFrame]:
    """The clean pass and every (step, condition) of one sample, ``size`` one-step rows per batch."""
    layout = loaded.layout
    stops = StopRule.for_model(loaded)
    prefill = SharedPrefill(loaded.model, DEFAULT_PREFILL_CHUNK, share=True)
    clean = decode_rows(
        instrument,
        prefill,
        [Row(sample.input_ids, config.max_new_tokens, None, region_labels(sample, ("needle",)))],
        stops,
        True,
        regions=1,
    )[0]
    tokens = clean.tokens
    events = copy_events(
        clean.records, tokens, sample.input_ids, sample.spans["needle"], sample.spans["answer"]
    )
    steps = len(tokens)
    dynamic = events.needle_copy.reshape(steps, -1)
    graded = events.needle_match_weight.reshape(steps, -1)
    on_needle = clean.records.mass[:, 0, ..., 0].reshape(steps, -1)
    k_static = config.static_k or max(1, round(config.static_share * layout.total_heads))
    static_top = set(static[:k_static].tolist())
    rng = np.random.default_rng([config.seed, *sample.sample_id.encode()])
    plans: list[dict] = []
    for step in range(steps):
        heads = np.flatnonzero(dynamic[step]).tolist()
        order = np.lexsort((np.arange(layout.total_heads), -on_needle[step], -graded[step]))
        base = {"step": step, "dynamic_heads": len(heads)}
        plans.append({**base, "condition": "clean", "k": 0, "seed": -1, "heads": []})
        if heads:
            plans.append({**base, "condition": "dynamic", "k": len(heads), "seed": -1, "heads": heads})
            plans.append(
                {
                    **base,
                    "condition": "static",
                    "k": len(heads),
                    "seed": -1,
                    "heads": static[: len(heads)].tolist(),
                }
            )
            for seed in range(config.random_seeds):
                drawn = rng.choice(layout.total_heads, len(heads), replace=False)
                plans.append(
                    {
                        **base,
                        "condition": "random",
                        "k": len(heads),
                        "seed": seed,
                        "heads": sorted(drawn.tolist()),
                    }
                )
        for k in config.progressive:
            plans.append(
                {**base, "condition": "progressive", "k": k, "seed": -1, "heads": order[:k].tolist()}
            )
    prompts = [list(sample.input_ids) + tokens[: plan["step"]] for plan in plans]
    keep = branch_points([prompt[:-1] for prompt in prompts])
    context = np.asarray(sample.input_ids)
    needle = sample.spans["needle"]
    for start in range(0, len(plans), size):
        rows = [
            Row(prompts[index], 1, _masks(plans[index]["heads"], layout, config.method))
            for index in range(start, min(start + size, len(plans)))
        ]
        results = decode_rows(instrument, prefill, rows, StopRule(), True, keep[start : start + size])
        for offset, result in enumerate(results):
            plan = plans[start + offset]
            target = tokens[plan["step"]]
            peak = result.records.positions[0, 0, :, :, 0].reshape(-1)
            inside = (peak >= needle[0]) & (peak < needle[1])
            copies = inside & (context[np.clip(peak, 0, len(context) - 1)] == target)
            compensating = (
                set(np.flatnonzero(copies).tolist())
                - set(plan["heads"])
                - set(np.flatnonzero(dynamic[plan["step"]]).tolist())
            )
            plan.update(
                token=result.tokens[0],
                target=target,
                kept=result.tokens[0] == target,
                compensating=len(compensating),
                compensating_static=len(compensating & static_top),
            )
    table = pd.DataFrame(plans)
    table["heads"] = [
        " ".join(f"{h // layout.num_heads}-{h % layout.num_heads}" for h in heads) for heads in table["heads"]
    ]
    table.insert(0, "sample_id", sample.sample_id)
    table.insert(1, "language", sample.condition)
    outcome = []
    for (condition, k, seed), group in _sequences(table, steps).items():
        text = loaded.tokenizer.decode(group, skip_special_tokens=True).strip()
        check = task.score(sample, text)
        outcome.append(
            {
                "sample_id": sample.sample_id,
                "language": sample.condition,
                "status": "ok",
                "condition": condition,
                "k": k,
                "seed": seed,
                "output": text,
                "exact": check["contains"],
                "rougeL": check["rougeL"],
                **{
                    key: value
                    for key, value in sample.meta.items()
                    if key in ("length", "depth", "needle_id")
                },
            }
        )
    return {"steps": table, "samples": pd.DataFrame(outcome)}


def _sequences(table: pd.DataFrame, steps: int) -> dict[tuple[str, int, int], list[int]]:
    """Each condition's masked predictions read in step order; a step where a condition masked
    nothing (no dynamic head) keeps the clean token. Progressive conditions are keyed by k; the others
    by k = 0, since their size follows the step."""
    clean = table[table["condition"] == "clean"].set_index("step")["token"]
    sequences: dict[tuple[str, int, int], list[int]] = {("clean", 0, -1): clean.tolist()}
    masked = table[table["condition"] != "clean"]
    for (condition, seed, k), group in masked.groupby(
        ["condition", "seed", masked["k"].where(masked["condition"] == "progressive", 0)]
    ):
        predicted = clean.copy()
        predicted.loc[group["step"].to_numpy()] = group["token"].to_numpy()
        sequences[(condition, int(k), int(seed))] = predicted.tolist()
    return sequences


def per_sample(samples: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, condition, k): the answer's exact match and ROUGE-L, and over the sample's
    retrieval steps (steps with a dynamic head) the share of tokens kept, the heads masked and the
    compensating heads. Random draws are averaged per sample."""
    keys = ["sample_id", "language", "condition", "k"]
    answers = samples.groupby(keys)[["exact", "rougeL"]].mean()
    retrieval = steps[(steps["dynamic_heads"] > 0) | (steps["condition"] == "clean")].copy()
    retrieval["k"] = retrieval["k"].where(retrieval["condition"] == "progressive", 0)
    retrieval["masked_heads"] = retrieval["heads"].str.split().str.len()
    columns = ["kept", "masked_heads", "compensating", "compensating_static"]
    per_step = retrieval.groupby(keys)[columns].mean().rename(columns={"kept": "token_kept"})
    return answers.join(per_step, how="left").reset_index()


def finalize(store: RunStore, config: DynamicAblateConfig) -> None:
    """Summaries over the samples whose clean answer is right (a masked step cannot break an answer
    that was already wrong); how many that are is in ``samples`` beside ``samples_run``."""
    table = per_sample(completed(store.table("samples")), store.table("steps"))
    right = set(table.loc[(table["condition"] == "clean") & table["exact"].astype(bool), "sample_id"])
    used = table[table["sample_id"].isin(right)]
    rows = []
    for (language, condition, k), group in table.groupby(["language", "condition", "k"]):
        chosen = used[(used["language"] == language) & (used["condition"] == condition) & (used["k"] == k)]
        row = {
            "language": language,
            "condition": condition,
            "k": k,
            "samples": len(chosen),
            "samples_run": len(group),
        }
        for metric in ("exact", "rougeL", "token_kept"):
            row.update(
                _mean_interval(
                    chosen[metric].dropna().to_numpy(float), metric, config.replicates, config.seed
                )
            )
        for metric in ("masked_heads", "compensating", "compensating_static"):
            row[metric] = float(chosen[metric].mean()) if len(chosen) else np.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    if (summary["samples"] < 2).any():
        thin = sorted(set(summary.loc[summary["samples"] < 2, "language"]))
        warnings.warn(
            f"{', '.join(thin)}: fewer than 2 samples answered right without masks: no intervals (NaN).",
            ThinDataWarning,
            stacklevel=2,
        )
    store.write_derived("dynamic_ablation", summary)
    store.write_csv("dynamic_ablation", summary)
    store.write_derived("dynamic_ablation_contrasts", contrasts(used, config.replicates, config.seed))


def _mean_interval(values: np.ndarray, name: str, replicates: int, seed: int) -> dict[str, float]:
    """The mean over samples with its bootstrap interval; one sample has no interval (NaN)."""
    point, low, high = mean_interval(values, replicates, seed)
    if len(values) < 2:
        low = high = np.nan
    return {name: point, f"{name}_low": low, f"{name}_high": high}


def contrasts(table: pd.DataFrame, replicates: int, seed: int) -> pd.DataFrame:
    """Paired per sample: each metric with the dynamic heads masked minus with as many static heads,
    and minus as many random heads (mean over draws); negative means masking dynamic heads hurts more."""
    rows = []
    for language, group in table.groupby("language"):
        for metric in ("token_kept", "exact"):
            wide = group[group["condition"].isin(["dynamic", "static", "random"])].pivot_table(
                index="sample_id", columns="condition", values=metric, aggfunc="mean"
            )
            for baseline in ("static", "random"):
                if {"dynamic", baseline} <= set(wide.columns):
                    difference = (wide["dynamic"] - wide[baseline]).dropna().to_numpy(float)
                    rows.append(
                        {
                            "language": language,
                            "metric": metric,
                            "contrast": f"dynamic - {baseline}",
                            **_mean_interval(difference, "difference", replicates, seed),
                            "samples": len(difference),
                        }
                    )
    columns = ["language", "metric", "contrast", "difference", "difference_low", "difference_high", "samples"]
    return pd.DataFrame(rows, columns=columns)
