"""Dynamic ablation ("Retrieval Heads are Dynamic", Sec. 4): at each step, mask that step's dynamic
heads and regenerate the token, teacher-forced on the clean continuation.

Per held-out sample: one clean greedy pass records every step's dynamic heads D_t (S = 1) and a ranking
of all heads (graded S, then attention on the needle). Then every step t is decoded again from the
clean prefix with one head set masked in that step only:

- dynamic: D_t; static: the |D_t| best static heads (from another run); random: |D_t| heads drawn
  uniformly, several seeds (steps with no dynamic head mask nothing);
- progressive: the k best heads of the step's ranking, for each k; the heads that then copy the clean
  token in their place are the compensating heads, counted with how many are static top-K heads.

With ``control`` (the claims' negative control), the dynamic and progressive conditions mask as many
uniformly random heads instead (the static and random conditions are unchanged), so no claim about
the dynamic heads may hold.

A condition's answer is the clean prefix's masked predictions read as a sequence: exact match (the
answer in it) and ROUGE-L, per sample, with intervals over samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis.aggregate import completed
from babelheads.analysis.claims import Context, claims_tables
from babelheads.analysis.dynamic_ablation import contrasts, per_sample, summary
from babelheads.analysis.dynamic_ablation_claims import dynamic_ablation_claims
from babelheads.analysis.dynamic_heads import check_static_k
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.head_masks import MASK_METHODS as METHODS
from babelheads.heads import HeadLayout
from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument, ProbeSettings
from babelheads.runner.decode import DEFAULT_PREFILL_CHUNK, Row, decode_rows
from babelheads.runner.jobs import region_labels, rows_under_cap
from babelheads.runner.parts import Part, execute_samples
from babelheads.runner.prefix import SharedPrefill, branch_points
from babelheads.runner.stops import StopRule
from babelheads.runs import RunStore
from babelheads.scoring import copy_events
from babelheads.sources import Source, open_source
from babelheads.tasks.base import Sample
from babelheads.tasks.niah import NiahSettings, NiahTask

CONDITIONS = ("clean", "dynamic", "static", "random", "progressive")


@dataclass(frozen=True)
class DynamicAblateConfig:
    """heads : a detect or dynamic run of the same model; its retrieval scores rank the static heads
    (per language). The samples here use another seed than that run's (``niah.seed``), so no head is
    tested on the samples that chose it. control : the claims' negative control: each step's dynamic
    heads, and the k best heads of its progressive ranking, replaced by as many random heads."""

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
    control: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BabelheadsError(f"method must be one of {', '.join(METHODS)}. Got {self.method!r}.")
        if self.random_seeds < 1 or not self.progressive or min(self.progressive) < 1:
            raise BabelheadsError("random_seeds must be >= 1 and every progressive k >= 1.")
        if self.static_k < 0 or not (math.isfinite(self.static_share) and 0 < self.static_share <= 1):
            raise BabelheadsError(
                f"--static-k must be >= 0 and --static-share in (0, 1]. Got {self.static_k}, "
                f"{self.static_share}."
            )
        if self.replicates < 1 or self.max_new_tokens < 1:
            raise BabelheadsError(
                f"--replicates and --max-new-tokens must be at least 1. Got {self.replicates}, "
                f"{self.max_new_tokens}."
            )
        heads_run = RunStore(Path(self.heads))
        layout = heads_run.manifest().get("layout") if heads_run.exists() else None
        if self.static_k and isinstance(layout, dict):  # the heads run's manifest knows the model
            check_static_k(self.static_k, layout, self.heads)

    def identity(self, model: str) -> dict:
        config = asdict(self)
        config.pop("replicates")
        if not self.control:
            config.pop("control")  # runs from before the control keep their identity
        return {**config, "model": model}


class DynamicAblation(Experiment):
    """Per held-out sample, one clean pass and every (step, condition) of one-step masked decodes."""

    kind = "dynamic-ablate"

    def __init__(self, config: DynamicAblateConfig):
        self.config = config
        self.heads = open_source(config.heads, ("detect", "dynamic"), "--heads", other_seed=config.niah.seed)
        self.ranking = self.heads.rankings()
        missing = [code for code in config.niah.languages if code not in self.ranking]
        if missing:
            raise BabelheadsError(
                f"{config.heads} has no head ranking for {', '.join(missing)} (not run there, or no sample "
                "answered right). Use a run whose model retrieves in those languages."
            )
        self.model_name = config.model or self.heads.model_name
        self.task = NiahTask(config.niah)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        return run_identity(
            self.config.identity(self.model_name),
            self.task.identity(),
            self.config.dtype,
            execution,
            heads=self.heads.digest,
        )

    def model(self) -> ModelChoice:
        return ModelChoice(self.model_name, self.config.dtype)

    def sources(self) -> list[Source]:
        return [self.heads]

    def part_ids(self) -> list[str]:
        return self.task.sample_ids()

    def prepare(self, loaded: LoadedModel) -> Prepared:
        return Prepared(self.task.sample_ids(), {"layout": asdict(loaded.layout)})

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        settings = ProbeSettings(top_k=4, mass_sink=0, mass_window=0)

        def size(sample: Sample) -> int:  # one-step rows of this sample, under the device's cap
            longest = len(sample.input_ids) + self.config.max_new_tokens
            return rows_under_cap(execution.batch_size, loaded, longest)

        with Instrument(loaded.model, loaded.layout, settings) as instrument:

            def compute(batch: list[Part]):
                for part in batch:
                    sample = part.work
                    ranking = self.ranking[sample.language]
                    yield (
                        part,
                        _ablate_sample(
                            instrument, loaded, sample, self.task, ranking, self.config, size(sample)
                        ),
                    )

            execute_samples(
                store,
                prepared.parts,
                lambda: self.task.build(loaded),
                compute,
                shard=execution.shard,
                progress=execution.progress,
                description="dynamic-ablate",
            )

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config, self.model_name)


def dynamic_ablate(
    config: DynamicAblateConfig, out: Path, execution: Execution = DEFAULT_EXECUTION
) -> RunStore:
    return run_experiment(DynamicAblation(config), out, execution)


def _masks(flat: list[int], layout: HeadLayout, method: str) -> HeadGates | None:
    if not flat:
        return None
    heads = [layout.address(head) for head in flat]
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
    static_top = set(static[: static_count(config, layout.total_heads)].tolist())
    rng = np.random.default_rng([config.seed, *sample.sample_id.encode()])
    # The control's draws come from a stream of their own, so its random condition draws the same heads
    # as the run without the control (the two runs' baselines are the same masks).
    control = np.random.default_rng([config.seed, *b"control", *sample.sample_id.encode()])

    def replaced(chosen: list[int]) -> list[int]:
        """``chosen``, or under the control as many uniformly random heads."""
        if not config.control:
            return chosen
        return sorted(control.choice(layout.total_heads, len(chosen), replace=False).tolist())

    plans: list[dict] = []
    for step in range(steps):
        heads = np.flatnonzero(dynamic[step]).tolist()
        order = np.lexsort((np.arange(layout.total_heads), -on_needle[step], -graded[step]))
        base = {"step": step, "dynamic_heads": len(heads)}
        plans.append({**base, "condition": "clean", "k": 0, "seed": -1, "heads": []})
        if heads:
            plans.append(
                {**base, "condition": "dynamic", "k": len(heads), "seed": -1, "heads": replaced(heads)}
            )
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
                {
                    **base,
                    "condition": "progressive",
                    "k": k,
                    "seed": -1,
                    "heads": replaced(order[:k].tolist()),
                }
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
    table["heads"] = [" ".join(layout.label(h) for h in heads) for heads in table["heads"]]
    table.insert(0, "sample_id", sample.sample_id)
    table.insert(1, "language", sample.language)
    outcome = []
    for (condition, k, seed), group in _sequences(table, steps).items():
        text = loaded.tokenizer.decode(group, skip_special_tokens=True).strip()
        check = task.score(sample, text)
        outcome.append(
            {
                "sample_id": sample.sample_id,
                "language": sample.language,
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


def static_count(config: DynamicAblateConfig, total_heads: int) -> int:
    """K of the static top-K that compensating heads are counted against."""
    return config.static_k or max(1, round(config.static_share * total_heads))


def finalize(store: RunStore, config: DynamicAblateConfig, model: str) -> None:
    """Summaries over the samples whose clean answer is right; how many that are is in ``samples``
    beside ``samples_run``. The claims tables (claims, claim_parts) from the same rows."""
    samples = completed(store.table("samples"))
    steps = store.table("steps")
    table = per_sample(samples, steps)
    summary_table = summary(table, config.replicates, config.seed)
    store.write_table("dynamic_ablation", summary_table)
    store.write_derived("dynamic_ablation_contrasts", contrasts(table, config.replicates, config.seed))
    layout = store.manifest().get("layout")
    total = layout["num_layers"] * layout["num_heads"] if isinstance(layout, dict) else None
    claims = claims_tables(
        dynamic_ablation_claims(
            samples,
            steps,
            config.replicates,
            config.seed,
            Context(model, str(store.root)),
            control=config.control,
            method=config.method,
            static_k=static_count(config, total) if total else None,
        )
    )
    for name, frame in claims.items():
        store.write_table(name, frame)
