"""Masking sets of heads with the instrument's gates and measuring NIAH accuracy and ROUGE."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from babelheads.analysis.ablation import HEAD_SETS, HeadSet, effects, select_head_sets
from babelheads.data.languages import load_language
from babelheads.data.niah import NiahCell
from babelheads.decoding import greedy_decode, newline_token_ids
from babelheads.errors import BabelheadsError
from babelheads.experiments.detect import DetectConfig, build_samples, plan
from babelheads.models import load_model
from babelheads.probe import HeadGates, Instrument
from babelheads.runs import RunStore
from babelheads.scoring import check_answer

METHODS = {"gate": "scale", "uniform": "uniform"}
PHASE_CHOICES = {"all": ("prefill", "decode"), "decode": ("decode",)}


@dataclass(frozen=True)
class AblateConfig:
    """run : the detection run whose scores pick the heads. method : 'gate' zeroes the head's output
    (before o_proj); 'uniform' makes it attend uniformly (the official code's masking; decode only).
    phases : 'all' masks prefill and decoding, 'decode' decoding only."""

    run: str
    languages: tuple[str, ...] = ()
    k: tuple[int, ...] = (2, 4, 8)
    head_sets: tuple[str, ...] = HEAD_SETS
    random_seeds: int = 3
    method: str = "gate"
    phases: str = "all"
    threshold: float = 0.1
    lengths: tuple[int, ...] = (1000,)
    depths: tuple[float, ...] = (0.25, 0.5, 0.75)
    needle_kind: str = "all"
    needles_per_cell: int = 1
    max_new_tokens: int = 16
    success_threshold: float = 0.5
    replicates: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BabelheadsError(f"Unknown method {self.method!r}. Use gate or uniform.")
        if self.phases not in PHASE_CHOICES:
            raise BabelheadsError(f"Unknown phases {self.phases!r}. Use all or decode.")
        if self.method == "uniform" and self.phases != "decode":
            raise BabelheadsError("Uniform masking applies while decoding only. Add --phases decode.")
        if self.random_seeds < 1:
            raise BabelheadsError(f"random_seeds must be at least 1. Got {self.random_seeds}.")


def evaluation_config(config: AblateConfig, detection: dict) -> DetectConfig:
    """The NIAH samples to evaluate, in the detection run's model, corpus, prompt and dtype."""
    detected = detection["config"]
    languages = config.languages or tuple(detected["languages"])
    return DetectConfig(
        model=detected["model"],
        languages=languages,
        corpus=detected["corpus"],
        needles=detected["needles"],
        data_dir=detected["data_dir"],
        lengths=config.lengths,
        depths=config.depths,
        needles_per_cell=config.needles_per_cell,
        needle_kind=config.needle_kind,
        max_new_tokens=config.max_new_tokens,
        success_threshold=config.success_threshold,
        prompt=detected["prompt"],
        dtype=detected["dtype"],
        seed=config.seed,
    )


def ablate(config: AblateConfig, out: Path, device: str = "auto", progress: bool = True) -> RunStore:
    detection = RunStore(Path(config.run))
    spec_detect = detection.manifest()["spec"]
    if spec_detect.get("kind") != "detect":
        raise BabelheadsError(f"{config.run} is not a detection run; ablate picks heads from one.")
    tasks = evaluation_config(config, spec_detect)
    sets = select_head_sets(
        detection.derived("scores"),
        list(tasks.languages),
        list(config.k),
        list(config.head_sets),
        config.random_seeds,
        config.threshold,
        config.seed,
    )
    cells = plan(tasks)
    store = RunStore(out)
    spec = {
        "kind": "ablate",
        "config": asdict(config),
        "model": spec_detect["model"],
        "detection": detection.manifest()["spec_digest"],
    }
    store.check_compatible(spec if store.exists() else {})
    unique: dict[str, HeadSet] = {}
    for head_set in sets:  # sets with the same heads (an empty agnostic set and 'none') run once
        unique.setdefault(head_set.mask_id, head_set)
    todo = [
        (mask, cell)
        for mask in unique
        for cell in cells
        if f"{mask}--{cell.sample_id}" not in store.finished()
    ]
    if todo:
        _evaluate(config, tasks, unique, todo, store, spec, device, progress)
    finalize(store, config, sets)
    return store


def _evaluate(
    config: AblateConfig,
    tasks: DetectConfig,
    unique: dict[str, HeadSet],
    todo: list[tuple[str, NiahCell]],
    store: RunStore,
    spec: dict,
    device: str,
    progress: bool,
) -> None:
    """Decode every (head set, sample) not yet in the store, one part per pair."""
    loaded = load_model(tasks.model, device=device, dtype=tasks.dtype)
    if loaded.identity != spec["model"]:
        raise BabelheadsError(f"The model loaded now differs from the detection run's ({loaded.identity}).")
    samples = {sample.sample_id: sample for sample in build_samples(tasks, loaded, plan(tasks))}
    store.create(spec, config.seed)
    instrument = Instrument(loaded.model, loaded.layout)
    stops = [token for token in [loaded.tokenizer.eos_token_id] if token is not None]
    newlines = newline_token_ids(loaded.tokenizer)
    root = Path(tasks.data_dir) if tasks.data_dir else None
    languages = {code: load_language(code, root) for code in tasks.languages}
    bar = tqdm(todo, desc="ablate", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for mask_id, cell in bar:
            head_set = unique[mask_id]
            bar.set_postfix_str(f"{head_set.name} k={head_set.k} {cell.sample_id}")
            gates = None
            if head_set.heads:
                gates = HeadGates.mask(
                    loaded.layout, head_set.heads, PHASE_CHOICES[config.phases], METHODS[config.method]
                )
            sample = samples[cell.sample_id]
            ids = torch.tensor([sample.input_ids], device=loaded.device)
            with instrument.gated(gates):
                decoded = greedy_decode(instrument, ids, tasks.max_new_tokens, stops, newlines, record=False)
            text = loaded.tokenizer.decode(decoded.tokens, skip_special_tokens=True).strip()
            check = check_answer(
                cell.expected_answer, text, languages[cell.language].answer_tokenizer, tasks.success_threshold
            )
            row = {
                "mask_id": mask_id,
                "sample_id": cell.sample_id,
                "language": cell.condition,
                "success": check.success,
                "rouge1_recall": check.rouge1_recall,
                "contains": check.contains,
                "output": text,
            }
            store.append(f"{mask_id}--{cell.sample_id}", {"samples": pd.DataFrame([row])})
    finally:
        instrument.detach()


def finalize(store: RunStore, config: AblateConfig, sets: list[HeadSet]) -> None:
    table = pd.DataFrame(
        [
            {
                "name": s.name,
                "k": s.k,
                "seed": s.seed,
                "count": len(s.heads),
                "heads": " ".join(map(str, s.heads)),
                "mask_id": s.mask_id,
            }
            for s in sets
        ]
    )
    store.write_derived("head_sets", table)
    result = effects(store.table("samples"), table, config.replicates, config.seed)
    result["method"] = config.method
    result["phases"] = config.phases
    store.write_derived("ablation", result)
    store.write_csv("ablation", result)
