"""The LAHIS experiments on the heads an importance run selected, each a resumable run:

- ppl: per language, perplexity with no mask, its n specific heads masked, n random heads masked;
- ppl-cross: every language's exclusive specific heads masked (a head specific to two of the tested
  languages is left out of both), perplexity measured in every language;
- general: the general heads masked against as many random heads: perplexity and held-out QA
  (offline protocol), or XL-Sum summaries scored with BERTScore (``protocol='paper'``);
- off-target: summaries asked for in each language, with English-specific or random heads masked;
  the share of outputs in the asked language (offline: corpus paragraphs and py3langid; paper:
  XL-Sum articles, and fastText's lid.176 when ``lid_model`` is given);
- attn-transfer: two conflicting statements in two languages; language-1 heads amplified or
  language-2 heads zeroed, against random heads: which statement the answer follows;
- retrieval: how a detection run's retrieval heads meet the language heads, against chance (no model).

Perplexity is measured on the corpus's evaluation half, never on the texts that chose the heads.
Random heads are drawn (per seed) from the heads that are no language head of any language; their
intervals resample both the seeds and the texts. ``control`` replaces the language heads by random
heads of the same counts (the claims' negative control). Finalize writes the LAHIS claims
(:mod:`analysis.lahis_claims`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from babelheads.analysis import lahis_claims as lahis
from babelheads.analysis import language_effects as effects
from babelheads.analysis.claims import Context, claims_tables
from babelheads.analysis.language_heads import exclusive_heads, heads_of, random_head_sets, retrieval_overlap
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, source_model
from babelheads.head_masks import check_mask_for_run, mask_digest, read_head_mask
from babelheads.heads import HeadLayout, head_label
from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument
from babelheads.runner import Job, run_jobs
from babelheads.runner.losses import Scored, row_losses, rows_per_pass
from babelheads.runner.parts import Part, execute_parts, in_batches_of
from babelheads.runs import RunStore
from babelheads.sources import open_source
from babelheads.tasks.lm_texts import TextSettings, TextWindow, TextWindows
from babelheads.tasks.off_target import OffTargetSettings, OffTargetTask
from babelheads.tasks.qa import QA_TOKENS, QaSettings, QaTask
from babelheads.tasks.summaries import (
    BERTSCORE_MODEL,
    XLSUM,
    SummarySettings,
    SummaryTask,
    require_bert_score,
    require_fasttext,
)
from babelheads.tasks.transfer import TransferSettings, TransferTask

EXPERIMENTS = ("ppl", "ppl-cross", "general", "off-target", "attn-transfer", "retrieval")
PROTOCOLS = ("offline", "paper")
PAPER_EXPERIMENTS = ("general", "off-target")
RANDOM_POOL = "outside every language head, distinct draws"
TRANSFER_TOKENS = 5


@dataclass(frozen=True)
class LanguageTestConfig:
    """heads : an importance run. languages : a subset of its languages (default: all). texts, window :
    perplexity windows per language. questions : held-out QA per language (general; 0 = all).
    prompts : summaries per language (off-target). per_pair : prompts per language pair (attn-transfer).
    amplify : the factor language-1 heads get in attn-transfer (LAHIS: 3). head_mask : a mask file
    applied under every condition. detect, threshold (retrieval) : a detection run of the same model,
    and the score above which its heads are retrieval heads. control : the negative control, the
    language heads replaced by random heads of the same counts (no claim may hold). protocol (general,
    off-target) : 'offline' (perplexity, built-in QA, corpus paragraphs, py3langid) or 'paper'
    (XL-Sum articles from ``summaries``, cut to ``article_tokens``; general: BERTScore F1 x 100 against
    the reference summary with ``bertscore_model``; off-target: fastText ``lid_model`` when given,
    else py3langid)."""

    heads: str
    experiment: str = "ppl"
    languages: tuple[str, ...] = ()
    texts: int = 12
    window: int = 128
    random_seeds: int = 3
    questions: int = 8
    prompts: int = 8
    summary_tokens: int = 32
    per_pair: int = 4
    amplify: float = 3.0
    head_mask: str | None = None
    detect: str | None = None
    threshold: float = 0.1
    replicates: int = 1000
    seed: int = 0
    control: bool = False
    protocol: str = "offline"
    summaries: str = XLSUM
    article_tokens: int = 1024
    bertscore_model: str = BERTSCORE_MODEL
    lid_model: str | None = None

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise BabelheadsError(
                f"Unknown experiment {self.experiment!r}. Use one of: {', '.join(EXPERIMENTS)}."
            )
        if self.protocol not in PROTOCOLS:
            raise BabelheadsError(
                f"Unknown --protocol {self.protocol!r}. Use one of: {', '.join(PROTOCOLS)}."
            )
        if self.protocol == "paper" and self.experiment not in PAPER_EXPERIMENTS:
            raise BabelheadsError(
                f"--protocol paper (XL-Sum summaries) applies to --exp general and off-target, not "
                f"{self.experiment}."
            )
        if self.protocol == "paper" and self.article_tokens < 16:
            raise BabelheadsError(f"--article-tokens must be at least 16. Got {self.article_tokens}.")
        if self.lid_model is not None and not (self.protocol == "paper" and self.experiment == "off-target"):
            raise BabelheadsError("--lid-model (fastText) goes with --exp off-target --protocol paper.")
        if self.control and self.experiment == "retrieval":
            raise BabelheadsError("--control applies to the masking experiments, not --exp retrieval.")
        if self.random_seeds < 1:
            raise BabelheadsError(f"--random-seeds must be at least 1. Got {self.random_seeds}.")
        if (self.experiment == "retrieval") != (self.detect is not None):
            raise BabelheadsError("--detect RUN goes with --exp retrieval, and --exp retrieval needs it.")
        if self.replicates < 1:
            raise BabelheadsError(f"--replicates must be at least 1 (bootstrap). Got {self.replicates}.")
        # NaN must fail explicitly: a NaN factor turns every gated output into NaN, read as empty answers.
        if not (math.isfinite(self.amplify) and self.amplify > 0):
            raise BabelheadsError(f"--amplify must be a finite factor > 0 (LAHIS: 3). Got {self.amplify}.")
        if not math.isfinite(self.threshold):
            raise BabelheadsError(f"--threshold must be a finite score, e.g. 0.1. Got {self.threshold}.")
        counts = {
            "--questions": (self.questions, 0),
            "--prompts": (self.prompts, 1),
            "--summary-tokens": (self.summary_tokens, 1),
            "--per-pair": (self.per_pair, 1),
        }
        for flag, (value, least) in counts.items():
            if value < least:
                raise BabelheadsError(f"{flag} must be at least {least}. Got {value}.")
        if self.head_mask is not None:
            check_mask_for_run(self.head_mask, self.heads)
        # Refused now, before any model loads: the scorers are optional packages.
        if self.protocol == "paper" and self.experiment == "general":
            require_bert_score()
        if self.lid_model is not None:
            require_fasttext(self.lid_model)


@dataclass(frozen=True)
class Condition:
    """A gate setting: ``heads`` get ``factor`` (0 removes them), every other head 1."""

    name: str
    heads: tuple[tuple[int, int], ...] = ()
    factor: float = 0.0

    def gates(self, layout: HeadLayout, base: torch.Tensor | None) -> HeadGates | None:
        values = (
            torch.ones(layout.num_layers, layout.num_heads, dtype=torch.float64)
            if base is None
            else base.clone()
        )
        for layer, head in self.heads:
            values[layer, head] = values[layer, head] * self.factor
        if base is None and not self.heads:
            return None
        return HeadGates(values)


def _selected(table: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(table["layer"].astype(int), table["head"].astype(int), strict=True))


def language_head_sets(
    config: LanguageTestConfig, table: pd.DataFrame, layout: HeadLayout
) -> Callable[[str | None], tuple[tuple[int, int], ...]]:
    """The heads a condition masks: a language's specific heads (best first), or the general heads
    (None). Under ``config.control``, random heads of the same count from outside every language head,
    one draw per set, other than the random baselines' (they are seeded by another label)."""

    def heads(code: str | None) -> tuple[tuple[int, int], ...]:
        found = tuple(heads_of(table, code, "general" if code is None else "specific"))
        if not config.control or not found:
            return found
        label = f"{config.seed}-control-{code or 'general'}"
        return random_head_sets(layout, len(found), _selected(table), 1, label)[0]

    return heads


def cross_sets(
    config: LanguageTestConfig, table: pd.DataFrame, layout: HeadLayout, languages: list[str]
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, list[tuple[int, int]]]]:
    """ppl-cross: each tested language's exclusive specific heads, and the heads left out as shared."""
    heads = language_head_sets(config, table, layout)
    for code in languages:
        if not heads(code):
            raise BabelheadsError(_no_specific(code))
    return exclusive_heads({code: list(heads(code)) for code in languages})


def _no_specific(code: str) -> str:
    return (
        f"{code} has no language-specific heads in this importance run (all its candidates are "
        "general). Re-select with a higher --min-languages or a lower --percentile "
        "(babelheads importance --from RUN --out RUN ...)."
    )


def conditions_for(
    config: LanguageTestConfig, table: pd.DataFrame, layout: HeadLayout, languages: list[str]
) -> dict[str, list[Condition]]:
    """Per test language (or '*' for all), the conditions to run."""
    seeds = range(config.random_seeds)
    # Random heads come from outside every selected language head (as ablate draws outside the
    # retrieval heads): the contrast is "heads LAHIS flags" against "heads it does not".
    selected = _selected(table)
    heads = language_head_sets(config, table, layout)

    def specific(code: str, factor: float = 0.0, label: str = "specific") -> Condition:
        found = heads(code)
        if not found:
            raise BabelheadsError(_no_specific(code))
        return Condition(f"{label}:{code}", found, factor)

    def randoms(label: str, like: Condition, key: str) -> list[Condition]:
        sets = random_head_sets(layout, len(like.heads), selected, len(seeds), f"{config.seed}-{key}")
        return [
            Condition(f"random-{label}:{key}:{seed}", heads, like.factor)
            for seed, heads in zip(seeds, sets, strict=True)
        ]

    none = Condition("none")
    if config.experiment == "ppl":
        return {
            code: [none, specific(code), *randoms("specific", specific(code), code)] for code in languages
        }
    if config.experiment == "ppl-cross":
        exclusive, _ = cross_sets(config, table, layout, languages)
        if not any(exclusive.values()):
            raise BabelheadsError(
                f"Every specific head of {', '.join(languages)} is specific to two of them, so no cell of "
                "the cross matrix can mask one language's heads alone. Re-select with a lower --share or "
                "test other --languages."
            )
        masks = [
            Condition(f"exclusive:{code}", tuple(exclusive[code])) for code in languages if exclusive[code]
        ]
        return {"*": [none, *masks]}
    if config.experiment == "general":
        general = Condition("general", heads(None))
        if not general.heads:
            raise BabelheadsError(
                "The importance run found no language-general heads. Re-select with a lower --percentile "
                "or --min-languages (babelheads importance ... again)."
            )
        return {"*": [none, general, *randoms("general", general, "general")]}
    if config.experiment == "off-target":
        english = specific("en") if "en" in set(table["language"]) else None
        if english is None:
            raise BabelheadsError("off-target masks English-specific heads: the importance run needs 'en'.")
        return {"*": [none, english, *randoms("specific", english, "en")]}
    out = {}
    for first in languages:
        for second in languages:
            if first != second:
                amplified, zeroed = specific(first, config.amplify, "amplify"), specific(second, 0.0, "zero")
                out[f"{first}>{second}"] = [
                    none,
                    amplified,
                    zeroed,
                    *randoms("amplify", amplified, first),
                    *randoms("zero", zeroed, second),
                ]
    return out


class LanguageTest(Experiment):
    """One LAHIS experiment on an importance run's heads; one part per (condition, text or prompt)."""

    kind = "language-test"
    analysis_fields = ("replicates",)

    def __init__(self, config: LanguageTestConfig):
        self.config = config
        self.source = open_source(config.heads, ("importance",), "RUN")
        scored = self.source.manifest["spec"]["config"]["texts"]
        self.languages = list(config.languages or scored["languages"])
        unknown = [code for code in self.languages if code not in scored["languages"]]
        if unknown:
            raise BabelheadsError(
                f"The importance run has no heads for {', '.join(unknown)}; "
                f"it scored {', '.join(scored['languages'])}."
            )
        table = self.source.store.derived("language_heads")
        self.plan = conditions_for(config, table, self.source.layout, self.languages)
        self.left_out: dict[str, list[str]] = {}
        if config.experiment == "ppl-cross":
            _, shared = cross_sets(config, table, self.source.layout, self.languages)
            self.left_out = {code: [head_label(*head) for head in heads] for code, heads in shared.items()}
        self.tasks = _tasks(config, scored, self.languages)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        config = self.config
        identity = {
            "config": _config_identity(config, self.analysis_fields),
            "data": {name: task.identity() for name, task in self.tasks.items()},
            "precision": self.source.manifest["spec"]["precision"],
            "importance": self.source.digest,
            "selection": self.source.store.read_json("selection.json"),
            "head_mask": mask_digest(Path(config.head_mask)) if config.head_mask else None,
            "random_heads": RANDOM_POOL,
        }
        if config.experiment == "ppl-cross":  # its masks changed: a run made before is another run
            identity["cross_masks"] = "exclusive specific heads"
        return identity

    def model(self) -> ModelChoice:
        return source_model(self.source)

    def prepare(self, loaded: LoadedModel) -> Prepared:
        base = read_head_mask(Path(self.config.head_mask), loaded.layout) if self.config.head_mask else None
        text_parts = _text_parts(loaded, self.tasks["texts"], self.plan) if "texts" in self.tasks else []
        generation = {
            name: _generation_jobs(loaded, task, self.plan, base)
            for name, task in self.tasks.items()
            if name != "texts"
        }
        parts = [part.part_id for part in text_parts] + [
            job.part_id for jobs in generation.values() for job in jobs
        ]
        conditions = {c.name: asdict(c) for group in self.plan.values() for c in group}
        facts = {"layout": self.source.manifest["layout"], "conditions": conditions}
        if self.left_out:
            facts["left_out_as_shared"] = self.left_out
        return Prepared(sorted(parts), facts, (base, text_parts, generation))

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        base, text_parts, generation = prepared.state
        _perplexity(store, loaded, text_parts, base, execution)
        for name, jobs in generation.items():
            settings = execution.run_settings(_new_tokens(name, self.config))
            run_jobs(store, loaded, jobs, self.tasks[name].score, settings, execution.progress, name)

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config, Context(self.source.model_name, str(store.root)))


class RetrievalMeetsLanguage(Experiment):
    """How a detection run's retrieval heads meet an importance run's language heads: tables only."""

    kind = "language-test"
    analysis_fields = ("replicates",)

    def __init__(self, config: LanguageTestConfig):
        self.config = config
        self.source = open_source(config.heads, ("importance",), "RUN")
        self.detection = open_source(config.detect, ("detect",), "--detect")
        self.detection.require_model(self.source.model)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        return {
            "config": _config_identity(self.config, self.analysis_fields),
            "model": self.source.model,
            "importance": self.source.digest,
            "detection": self.detection.digest,
            "selection": self.source.store.read_json("selection.json"),
        }

    def model(self) -> None:
        return None

    def part_ids(self) -> list[str]:
        return []

    def prepare(self, loaded: None) -> Prepared:
        return Prepared([], {"layout": self.source.manifest["layout"]})

    def execute(self, store: RunStore, loaded: None, prepared: Prepared, execution: Execution) -> None:
        """Nothing to run: the table is an analysis of the two runs' tables."""

    def finalize(self, store: RunStore) -> None:
        layout = self.source.layout
        table = retrieval_overlap(
            self.detection.store.derived("scores"),
            self.source.store.derived("language_heads"),
            self.source.store.derived("importance"),
            layout.total_heads,
            self.source.store.read_json("selection.json")["formula"],
            self.config.threshold,
        )
        store.write_table("retrieval_overlap", table)


def language_test(
    config: LanguageTestConfig, out: Path, execution: Execution = DEFAULT_EXECUTION
) -> RunStore:
    """Run (or resume) one experiment into ``out``; one part per (condition, text or prompt)."""
    experiment = RetrievalMeetsLanguage(config) if config.experiment == "retrieval" else LanguageTest(config)
    return run_experiment(experiment, out, execution)


def _without(config: dict, fields: tuple[str, ...]) -> dict:
    return {key: value for key, value in config.items() if key not in fields}


NEWER_SETTINGS = {
    "control": False,
    "protocol": "offline",
    "summaries": XLSUM,
    "article_tokens": 1024,
    "bertscore_model": BERTSCORE_MODEL,
    "lid_model": None,
}
"""Settings added after runs existed: left out of the identity at their defaults, so those runs keep
theirs (and so do the paper protocol's fields in an offline run, which reads none of them)."""


def _config_identity(config: LanguageTestConfig, analysis: tuple[str, ...]) -> dict:
    identity = _without(asdict(config), analysis)
    for name, default in NEWER_SETTINGS.items():
        unused = config.protocol == "offline" and name in ("summaries", "article_tokens", "bertscore_model")
        if identity[name] == default or unused:
            identity.pop(name)
    return identity


def _new_tokens(task: str, config: LanguageTestConfig) -> int:
    return {
        "qa": QA_TOKENS,
        "off_target": config.summary_tokens,
        "summaries": config.summary_tokens,
        "attn_transfer": TRANSFER_TOKENS,
    }[task]


def _tasks(config: LanguageTestConfig, scored: dict, languages: list[str]) -> dict:
    data_dir, seed = scored["data_dir"], scored["seed"]
    experiment = config.experiment
    tasks: dict[str, object] = {}
    if config.protocol == "paper":  # the paper's general / off-target: XL-Sum articles only
        asked = tuple(languages) if experiment == "general" else tuple(c for c in languages if c != "en")
        measure = "bertscore" if experiment == "general" else "language"
        settings = SummarySettings(
            asked,
            config.summaries,
            data_dir,
            config.prompts,
            config.article_tokens,
            measure,
            config.bertscore_model,
            config.lid_model,
            seed=seed,
        )
        tasks["summaries"] = SummaryTask(settings)
        return tasks
    if experiment in ("ppl", "ppl-cross", "general"):
        settings = TextSettings(
            tuple(languages), scored["corpus"], data_dir, config.texts, config.window, "evaluation", seed
        )
        tasks["texts"] = TextWindows(settings)
    if experiment == "general":
        settings = QaSettings(tuple(languages), data_dir=data_dir, questions=config.questions, seed=seed)
        tasks["qa"] = QaTask(settings)
    if experiment == "off-target":
        targets = tuple(code for code in languages if code != "en")
        settings = OffTargetSettings(targets, scored["corpus"], data_dir, config.prompts, seed=seed)
        tasks["off_target"] = OffTargetTask(settings)
    if experiment == "attn-transfer":
        settings = TransferSettings(tuple(languages), data_dir, config.per_pair, config.seed)
        tasks["attn_transfer"] = TransferTask(settings)
    return tasks


def _conditions_of(plan: dict[str, list[Condition]], condition: str) -> list[Condition]:
    return plan.get(condition, plan.get("*", []))


def _text_parts(loaded: LoadedModel, task: TextWindows, plan) -> list[Part]:
    return [
        Part(f"{condition.name}--{window.window_id}", (condition, window))
        for window in task.build(loaded)
        for condition in _conditions_of(plan, window.language)
    ]


def _perplexity(store: RunStore, loaded: LoadedModel, parts: list[Part], base, execution: Execution) -> None:
    """Teacher-forced perplexity of every (condition, window), batched with one gate set per row."""

    def compute(batch: list[Part]) -> Iterator[tuple[Part, dict[str, pd.DataFrame]]]:
        values = torch.stack(
            [_values(condition, loaded.layout, base) for condition, _ in (p.work for p in batch)]
        )
        rows = [Scored(window.input_ids) for _, window in (part.work for part in batch)]
        with torch.no_grad():
            nll, count = row_losses(loaded, instrument, rows, HeadGates(values))
        for part, total, tokens in zip(batch, nll.tolist(), count.tolist(), strict=True):
            condition, window = part.work
            yield part, {"samples": pd.DataFrame([_ppl_row(part.part_id, condition, window, total, tokens)])}

    with Instrument(loaded.model, loaded.layout) as instrument:
        execute_parts(
            store,
            parts,
            compute,
            shard=execution.shard,
            batches=in_batches_of(rows_per_pass(execution.batch_size, loaded.device)),
            progress=execution.progress,
            description="perplexity",
            unit="text",
        )


def _values(condition: Condition, layout: HeadLayout, base) -> torch.Tensor:
    gates = condition.gates(layout, base)
    return torch.ones(layout.num_layers, layout.num_heads) if gates is None else gates.values.float()


def _ppl_row(part: str, condition: Condition, window: TextWindow, total: float, tokens: int) -> dict:
    return {
        "sample_id": part,
        "unit": window.window_id,
        "language": window.language,
        "condition": condition.name,
        "document": window.document,
        "tokens": tokens,
        "log_ppl": total / tokens,
        "perplexity": math.exp(total / tokens),
        "task": "texts",
        "status": "ok",
        "success": True,
    }


def _generation_jobs(loaded: LoadedModel, task, plan, base) -> list[Job]:
    return [
        Job(
            f"{condition.name}--{sample.sample_id}",
            sample,
            condition.gates(loaded.layout, base),
            (("condition", condition.name), ("unit", sample.sample_id), ("task", task.name)),
        )
        for sample in task.build(loaded)
        for condition in _conditions_of(plan, sample.language)
    ]


def finalize(store: RunStore, config: LanguageTestConfig, context: Context) -> None:
    samples = store.table("samples")
    r, s = config.replicates, config.seed
    texts = samples[samples["task"] == "texts"]
    tables: dict[str, pd.DataFrame] = {}
    if config.experiment == "ppl":
        tables["ppl"] = effects.contrasts(texts, "log_ppl", {"specific": "specific:{language}"}, r, s)
    elif config.experiment == "ppl-cross":
        cross = effects.cross_matrix(texts, r, s)
        shared = store.manifest().get("left_out_as_shared", {})
        # which heads of the column's language were left out of its mask as specific to another too
        cross["left_out_as_shared"] = cross["heads_of"].map(lambda code: " ".join(shared.get(code, [])))
        tables["ppl_cross"] = cross
        tables["diagonality"] = effects.diagonality(texts, r, s)
    elif config.experiment == "general":
        if config.protocol == "paper":
            summaries = samples[samples["task"] == "summaries"]
            tables["general"] = effects.contrasts(summaries, "bertscore_f1", {"general": "general"}, r, s)
        else:
            tables["general"] = pd.concat(
                [
                    effects.contrasts(texts, "log_ppl", {"general": "general"}, r, s),
                    effects.contrasts(_qa(samples), "correct", {"general": "general"}, r, s),
                ],
                ignore_index=True,
            )
    elif config.experiment == "off-target":
        tables["off_target"] = effects.contrasts(
            _shares(samples), "on_target", {"specific": "specific:en"}, r, s
        )
    else:
        follows = _follows(samples)
        by_language = pd.concat([follows.assign(language="all"), follows.assign(language=follows["first"])])
        tables["attn_transfer"] = pd.concat(
            [
                effects.contrasts(by_language, value, {"amplify": "amplify", "zero": "zero"}, r, s)
                for value in ("follows_first", "follows_second")
            ],
            ignore_index=True,
        )
    tables.update(claims_tables(language_test_claims(samples, config, context)))
    for name, frame in tables.items():
        store.write_table(name, frame)


def _qa(samples: pd.DataFrame) -> pd.DataFrame:
    return samples[samples["task"] == "qa"].assign(correct=lambda f: f["success"].astype(float))


def _shares(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.assign(on_target=lambda f: f["success"].astype(float))


def _follows(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.assign(
        follows_first=(samples["followed"] == "first").astype(float),
        follows_second=(samples["followed"] == "second").astype(float),
        # One amplified and one zeroed set per prompt (and their random draws): name them by role and
        # seed, not by language, so prompts of every pair line up.
        condition=samples["condition"]
        .str.replace(r"^(amplify|zero):.*$", r"\1", regex=True)
        .str.replace(r"^random-(amplify|zero):[^:]+:(\d+)$", r"random-\1:\2", regex=True),
    )


def language_test_claims(
    samples: pd.DataFrame, config: LanguageTestConfig, context: Context
) -> list[tuple[dict, list[dict]]]:
    """The LAHIS claims of this run's mode, measured, and one 'mode not run' row for each other one.
    Each row's test names the protocol used and how it departs from the paper's."""
    r, s = config.replicates, config.seed
    texts = samples[samples["task"] == "texts"]
    experiment, paper = config.experiment, config.protocol == "paper"
    if experiment == "ppl":
        sets = min(lahis.random_sets(g, f"random-specific:{c}:") for c, g in texts.groupby("language"))
        parts = lahis.ppl_specific(texts, r, s)
        test = (
            "mean log-perplexity (nats per token) with the language's specific heads zeroed minus with as "
            f"many random heads zeroed (drawn outside every language head), on {config.texts} held-out "
            f"windows of {config.window} tokens of the corpus's evaluation half per language (LAHIS: "
            "1000 Wikipedia articles of 2048 tokens, and 9 fixed random heads against n specific ones)"
        )
        unit = lahis.against_random_unit("held-out texts", sets)
    elif experiment == "ppl-cross":
        parts = lahis.ppl_cross(texts, r, s)
        test = (
            "per test language: mean log-perplexity with its own exclusive specific heads zeroed minus the "
            "mean over the other tested languages' exclusive specific heads zeroed (a head specific to "
            f"two of them masks neither), on {config.texts} held-out windows of {config.window} tokens "
            "per language (LAHIS: all specific heads, 1000 Wikipedia articles)"
        )
        unit = "held-out texts of the test language, paired across masks"
    elif experiment == "general":
        sets = lahis.random_sets(samples, "random-general:")
        if paper:
            frame = samples[samples["task"] == "summaries"]
            measures = {"BERTScore": (frame, "bertscore_f1", -1.0)}
            test = (
                "per language: BERTScore F1 drop with the general heads zeroed minus with as many random "
                f"heads zeroed, on {config.prompts} XL-Sum articles per language ({config.summaries}, cut to "
                f"{config.article_tokens} tokens) summarised in {config.summary_tokens} greedy tokens, "
                f"scored with {config.bertscore_model} rescaled with its baseline (LAHIS: 500 articles, 80 "
                "sampled tokens, bert-base-uncased for every language, 9 fixed random heads)"
            )
        else:
            measures = {"log-ppl": (texts, "log_ppl", 1.0), "QA": (_qa(samples), "correct", -1.0)}
            test = (
                "per language: the rise of log-perplexity on held-out corpus windows and the drop of "
                f"accuracy on {config.questions or 'all'} built-in held-out QA questions with the general "
                "heads zeroed minus with as many random heads zeroed; OFFLINE PROTOCOL, not the paper's "
                "XL-Sum summaries scored with BERTScore (--protocol paper)"
            )
        parts = lahis.general_all(measures, r, s)
        unit = lahis.against_random_unit("texts, questions or articles", sets)
    elif experiment == "off-target":
        sets = lahis.random_sets(samples, "random-specific:en:")
        parts = lahis.off_target(_shares(samples), r, s)
        if paper:
            identifier = (
                f"fastText ({config.lid_model})"
                if config.lid_model
                else "py3langid (LAHIS: fastText lid.176)"
            )
            source = f"{config.prompts} XL-Sum articles per language ({config.summaries})"
        else:
            identifier = "py3langid"
            source = (
                f"{config.prompts} corpus paragraphs per language; OFFLINE PROTOCOL, not the paper's XL-Sum "
                "articles and fastText language ID (--protocol paper)"
            )
        test = (
            "share of summaries in the requested language with the English-specific heads zeroed minus "
            f"with as many random heads zeroed, identified with {identifier}; {source}; "
            f"{config.summary_tokens} greedy tokens (LAHIS: 80 sampled tokens; its off-target mode "
            "compares specific heads with the unmasked model and the top heads, not random ones)"
        )
        unit = lahis.against_random_unit("prompts", sets)
    elif experiment == "attn-transfer":
        follows = _follows(samples)
        sets = lahis.random_sets(follows, "random-amplify:")
        parts = lahis.attn_transfer(follows, r, s)
        test = (
            "share of answers that follow the language-1 statement with language-1 specific heads scaled "
            f"x{config.amplify:g} minus with as many random heads scaled alike, every ordered language pair "
            f"pooled, {config.per_pair} prompts per pair, {TRANSFER_TOKENS} greedy tokens (LAHIS: 90 "
            "prompts per pair and no random baseline)"
        )
        unit = lahis.against_random_unit("prompts", sets)
    else:
        return []
    return lahis.language_test_claims(experiment, parts, test, unit, context, config.control)
