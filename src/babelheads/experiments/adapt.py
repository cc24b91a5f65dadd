"""LAHIS soft head-mask adaptation: a trainable gate on each of a language's top n heads (every other
gate fixed at 1), trained on QA in that language with cross-entropy on the answer tokens only, then
evaluated on held-out QA against the original model and against the same training on random heads.

Questions are split by paragraph (document), so no held-out question shares its context with a
training one. Weight decay is 0: the released code's AdamW default (0.01) is a no-op on its bf16 gates
but would pull every trained gate toward 0 in float32.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from babelheads.analysis import lahis_claims as lahis
from babelheads.analysis import language_effects as effects
from babelheads.analysis.claims import Context, claim_rows, claims_tables
from babelheads.analysis.language_heads import heads_of, random_head_sets
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, source_model
from babelheads.head_masks import read_head_mask, write_head_mask
from babelheads.heads import head_label
from babelheads.models import LoadedModel
from babelheads.probe import HeadGates, Instrument
from babelheads.runner import Job, Shard, run_jobs
from babelheads.runner.losses import check_differentiable, frozen_weights, row_losses
from babelheads.runner.parts import Part, execute_parts, in_batches_of
from babelheads.runs import RunStore
from babelheads.sources import open_source
from babelheads.tasks.qa import QA_TOKENS, QaSettings, QaTask

HEAD_CHOICES = ("top", "specific")
MASK_FILE = "head_mask.json"


@dataclass(frozen=True)
class AdaptConfig:
    """heads : an importance run. head_choice : 'top' (the language's top n by importance, general heads
    included, as the released code) or 'specific' (its n language-specific heads). train_questions,
    eval_questions : at most this many per half (0: all). random_seeds : random head sets of the same
    count trained the same way."""

    heads: str
    language: str = "en"
    head_choice: str = "top"
    epochs: int = 2
    lr: float = 1e-2
    weight_decay: float = 0.0
    qa: str = "builtin"
    train_questions: int = 0
    eval_questions: int = 0
    random_seeds: int = 3
    replicates: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_choice not in HEAD_CHOICES:
            raise BabelheadsError(f"Unknown --head-choice {self.head_choice!r}. Use top or specific.")
        if self.epochs < 1:
            raise BabelheadsError(f"--epochs must be at least 1. Got {self.epochs}.")
        # isfinite first: NaN passes every comparison and AdamW would only refuse it with a traceback.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BabelheadsError(f"--lr must be a finite learning rate > 0, e.g. 1e-2. Got {self.lr}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BabelheadsError(
                f"--weight-decay must be a finite number >= 0 (default 0). Got {self.weight_decay}."
            )
        if self.train_questions < 0 or self.eval_questions < 0:
            raise BabelheadsError(
                "--train-questions and --eval-questions must be >= 0 (0: the whole half). Got "
                f"{self.train_questions} and {self.eval_questions}."
            )
        if self.random_seeds < 1:
            raise BabelheadsError(f"--random-seeds must be at least 1. Got {self.random_seeds}.")
        if self.replicates < 1:
            raise BabelheadsError(f"--replicates must be at least 1 (bootstrap). Got {self.replicates}.")


def chosen_heads(config: AdaptConfig, source: RunStore) -> list[tuple[int, int]]:
    selection = source.read_json("selection.json")
    table = source.derived("language_heads")
    if config.language not in set(table["language"]):
        known = ", ".join(sorted(table["language"].unique()))
        raise BabelheadsError(f"The importance run has no language {config.language!r}; it has {known}.")
    if config.head_choice == "specific":
        return heads_of(table, config.language, "specific")
    scores = source.derived("importance")
    scores = scores[scores["language"] == config.language].sort_values(selection["formula"], ascending=False)
    top = scores.head(selection["n"])
    return [(int(layer), int(head)) for layer, head in zip(top["layer"], top["head"], strict=True)]


def train_gates(
    loaded: LoadedModel,
    task: QaTask,
    language: str,
    heads: list[tuple[int, int]],
    config: AdaptConfig,
    label: str,
    progress: bool,
) -> tuple[torch.Tensor, list[float]]:
    """The learned (layers, heads) values and the mean loss of each epoch. Only the values of ``heads``
    exist as parameters; every other gate is the constant 1."""
    layout = loaded.layout
    rows = task.training_rows(loaded, language)
    trained = torch.nn.Parameter(torch.ones(len(heads)))
    optimiser = torch.optim.AdamW([trained], lr=config.lr, weight_decay=config.weight_decay)
    index = (torch.tensor([h[0] for h in heads]), torch.tensor([h[1] for h in heads]))
    instrument = Instrument(loaded.model, layout)
    order = random.Random(f"{config.seed}-{label}")
    losses = []
    bar = tqdm(total=config.epochs * len(rows), desc=f"train {label}", unit="q", disable=not progress)
    try:
        with torch.enable_grad(), frozen_weights(loaded.model):
            for _ in range(config.epochs):
                shuffled = rows[:]
                order.shuffle(shuffled)
                total = 0.0
                for row in shuffled:
                    values = torch.ones(layout.num_layers, layout.num_heads).index_put(index, trained)
                    nll, count = row_losses(loaded, instrument, [row], HeadGates(values))
                    loss = (nll / count).sum()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach())
                    bar.update()
                losses.append(total / len(rows))
    finally:
        bar.close()
        instrument.detach()
    values = torch.ones(layout.num_layers, layout.num_heads).index_put(index, trained.detach())
    return values.double(), losses


class Adaptation(Experiment):
    """Soft masks trained on a language's heads and on random heads (one part each), then every mask
    and the original model on held-out QA (one part per mask and question)."""

    kind = "adapt"
    analysis_fields = ("replicates",)

    def __init__(self, config: AdaptConfig):
        self.config = config
        self.source = open_source(config.heads, ("importance",), "RUN")
        store = self.source.store
        heads = chosen_heads(config, store)
        texts = self.source.manifest["spec"]["config"]["texts"]
        settings = {
            "languages": (config.language,),
            "source": config.qa,
            "data_dir": texts["data_dir"],
            "seed": texts["seed"],
        }
        self.train = QaTask(QaSettings(**settings, half="scoring", questions=config.train_questions))
        self.held_out = QaTask(QaSettings(**settings, half="evaluation", questions=config.eval_questions))
        table = store.derived("language_heads")
        selected = set(zip(table["layer"].astype(int), table["head"].astype(int), strict=True))
        self.head_sets = {"adapted": heads}
        draws = random_head_sets(
            self.source.layout,
            len(heads),
            set(heads) | selected,
            config.random_seeds,
            f"adapt-{config.language}",
        )
        for seed, drawn in enumerate(draws):
            self.head_sets[f"random-adapted:{seed}"] = list(drawn)

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        config = {k: v for k, v in asdict(self.config).items() if k not in self.analysis_fields}
        return {
            "config": config,
            "data": {
                **self.train.identity(),
                **{f"held_out:{k}": v for k, v in self.held_out.identity().items()},
            },
            "precision": self.source.manifest["spec"]["precision"],
            "importance": self.source.digest,
            "heads": {
                name: [head_label(*head) for head in chosen] for name, chosen in self.head_sets.items()
            },
        }

    def model(self) -> ModelChoice:
        return source_model(self.source)

    def part_ids(self) -> list[str]:
        return [f"train--{name}" for name in self.head_sets] + [
            f"{name}--{sample_id}"
            for name in ("original", *self.head_sets)
            for sample_id in self.held_out.sample_ids()
        ]

    def prepare(self, loaded: LoadedModel) -> Prepared:
        check_differentiable(loaded)
        return Prepared(self.part_ids(), {"layout": self.source.manifest["layout"]})

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        learned = _train_all(store, loaded, self.train, self.head_sets, self.config, execution)
        samples = self.held_out.build(loaded)
        gates = {"original": None, **{name: HeadGates(values) for name, values in learned.items()}}
        jobs = [
            Job(
                f"{name}--{sample.sample_id}",
                sample,
                gate,
                (("condition", name), ("unit", sample.sample_id), ("task", "qa")),
            )
            for name, gate in gates.items()
            for sample in samples
        ]
        settings = execution.run_settings(QA_TOKENS)
        run_jobs(store, loaded, jobs, self.held_out.score, settings, execution.progress, "evaluate")

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config, Context(self.source.model_name, str(store.root)))


def adapt(config: AdaptConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Train (or resume) the masks and evaluate them into ``out``. The language's learned mask is
    RUN/head_mask.json, for ``--head-mask`` in every other command."""
    return run_experiment(Adaptation(config), out, execution)


def _train_all(
    store: RunStore, loaded, task: QaTask, head_sets: dict, config: AdaptConfig, execution: Execution
) -> dict:
    """Each head set's learned values: trained now, or read back from the run (masks/<name>.json).
    Every worker of a sharded run trains the masks not yet written (the evaluation of its block needs
    them all); the training is deterministic, so two workers write the same mask."""
    learned = {}

    def compute(batch: list[Part]) -> Iterator[tuple[Part, dict[str, pd.DataFrame]]]:
        for part in batch:
            name = part.work
            heads = head_sets[name]
            values, losses = train_gates(
                loaded, task, config.language, heads, config, name, execution.progress
            )
            about = {
                "language": config.language,
                "head_set": name,
                "heads": [head_label(*head) for head in heads],
                "model": loaded.identity,
                "epoch_losses": losses,
            }
            write_head_mask(_mask_path(store, name), values, about)
            if name == "adapted":
                write_head_mask(store.root / MASK_FILE, values, about)
            row = {
                "sample_id": f"train--{name}",
                "condition": name,
                "task": "train",
                "status": "ok",
                "success": True,
                **{f"loss_epoch{epoch + 1}": loss for epoch, loss in enumerate(losses)},
            }
            learned[name] = values
            yield part, {"samples": pd.DataFrame([row])}

    execute_parts(
        store,
        [Part(f"train--{name}", name) for name in head_sets],
        compute,
        shard=Shard(),
        batches=in_batches_of(1),
        progress=False,
        description="train",
    )
    for name in head_sets:
        if name not in learned:
            learned[name] = read_head_mask(_mask_path(store, name), loaded.layout)
    return {name: learned[name] for name in head_sets}


def _mask_path(store: RunStore, name: str) -> Path:
    return store.root / "masks" / f"{name.replace(':', '-')}.json"


def finalize(store: RunStore, config: AdaptConfig, context: Context) -> None:
    samples = store.table("samples")
    answers = samples[samples["sample_id"].ne(samples["condition"].radd("train--"))]
    answers = answers.assign(correct=answers["success"].astype(float), language=config.language)
    answers["condition"] = answers["condition"].replace({"original": "none"})
    table = effects.contrasts(answers, "correct", {"adapted": "adapted"}, config.replicates, config.seed)
    store.write_table("adaptation", table)
    for name, frame in claims_tables([adaptation_claim(answers, config, context)]).items():
        store.write_table(name, frame)


def adaptation_claim(answers: pd.DataFrame, config: AdaptConfig, context: Context) -> tuple[dict, list[dict]]:
    """lahis.adapt_gain: the adapted mask against masks trained the same way on random heads."""
    sets = lahis.random_sets(answers, "random-adapted:")
    heads = "top n heads by importance (general heads included, as the released code)"
    if config.head_choice == "specific":
        heads = "n specific heads"
    test = (
        f"held-out QA accuracy (greedy, {QA_TOKENS} tokens, the answer a substring of the output) with a "
        f"soft mask trained on the language's {heads} minus with masks trained the same way on as many "
        f"random heads, {config.language}, QA from {config.qa!r} split by paragraph, {config.epochs} "
        f"epoch(s), AdamW lr {config.lr:g}, weight decay {config.weight_decay:g} (LAHIS: XQuAD, 200 "
        "training and 800 held-out questions, 2 epochs; its bf16 gates make AdamW's default decay 0.01 "
        "a no-op; random heads it reports once, for Aya)"
    )
    unit = lahis.against_random_unit("held-out questions", sets)
    parts = lahis.adapt_gain(answers, config.language, config.replicates, config.seed)
    return claim_rows(lahis.ADAPT_GAIN, parts, unit, test, context)
