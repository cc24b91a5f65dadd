"""Detection, aggregation, official files and masking on a model that really copies (copying_model.py),
so that every number checked can come out wrong."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from copying_model import Script, copying_model

import babelheads.execution as execution_module
from babelheads.analysis.aggregate import AggregateSettings, aggregate
from babelheads.execution import Execution
from babelheads.experiments.ablate import AblateConfig, ablate
from babelheads.experiments.detect import DetectConfig, detect
from babelheads.tasks.niah import NiahSettings, NiahTask

TASK = NiahSettings(languages=("en", "de"), lengths=(1200,), depths=(0.25, 0.5, 0.75), needle_kind="key")


def _script(loaded, settings: NiahSettings, misread_depth: float | None) -> dict:
    script = {}
    for sample in NiahTask(settings).build(loaded):
        misread = sample.meta["depth"] == misread_depth
        script[sample.input_ids] = Script(sample.spans["answer"], sample.spans["needle"], misread)
    return script


@pytest.fixture(scope="module")
def copier(tiny_tokenizer_session):
    loaded = copying_model(tiny_tokenizer_session, {})
    # Detection samples: the depth-0.5 ones misread (wrong answer, no copy); ablation samples (another
    # seed, held out) all read right.
    loaded.model.script.update(_script(loaded, TASK, misread_depth=0.5))
    loaded.model.script.update(_script(loaded, replace(TASK, seed=1), misread_depth=None))
    return loaded


@pytest.fixture(scope="module")
def run(copier, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(execution_module, "load_model", lambda *args, **kwargs: copier)
    try:
        store = detect(
            DetectConfig(model="copying-stub", task=TASK, max_new_tokens=12),
            tmp_path_factory.mktemp("copier"),
            Execution(progress=False),
        )
    finally:
        patch.undo()
    return store


def test_the_copier_answers_right_except_where_it_misreads(run):
    samples = run.table("samples")
    assert len(samples) == 6
    assert (samples["success"] == (samples["depth"] != 0.5)).all(), samples[["depth", "output", "answer"]]


def test_the_retriever_scores_one_on_successes_and_every_other_head_zero(run):
    scores = run.derived("scores").set_index(["language", "layer", "head"])
    samples = run.table("samples")
    for language in ("en", "de"):
        assert scores.loc[(language, 1, 0), "paper"] == 1.0
        assert scores.loc[(language, 1, 0), "official"] == 1.0
        assert scores.loc[(language, 1, 0), "samples_used"] == 2
        others = scores.loc[language].drop(index=(1, 0))
        assert (others["paper"] == 0).all() and (others["official"] == 0).all()
        # It looks into the needle at every step but the last (EOS, read at position 0), also when it
        # misreads: needle attention averages over every sample.
        steps = samples.loc[samples["language"] == language, "steps"]
        expected = ((steps - 1) / steps).mean()
        assert scores.loc[(language, 1, 0), "needle_attention"] == pytest.approx(expected)
        assert scores.loc[(language, 1, 1), "needle_attention"] == 0.0


def test_a_kv_head_scores_the_max_of_its_query_heads(run):
    kv = run.derived("kv_scores").set_index(["language", "layer", "kv_head"])
    assert kv.loc[("en", 1, 0), "score"] == 1.0
    assert kv.loc[("en", 0, 0), "score"] == 0.0


def test_score_on_all_counts_the_misread_samples_as_zero_copies(run):
    scores, _, _ = aggregate(
        run.table("samples"), run.table("head_scores"), AggregateSettings(score_on="all")
    )
    retriever = scores[(scores["layer"] == 1) & (scores["head"] == 0)]
    np.testing.assert_allclose(retriever["score"], [2 / 3, 2 / 3])
    assert (retriever["samples_used"] == 3).all()


def test_official_json_holds_each_used_samples_score(run):
    data = json.loads((run.root / "retrieval_scores.en.paper.json").read_text())
    assert data["1-0"] == [1.0, 1.0]
    assert data["1-1"] == [0.0, 0.0] and data["0-0"] == [0.0, 0.0]
    assert set(data) == {"0-0", "0-1", "1-0", "1-1"}


def _top_against_random(run, control: bool = False) -> AblateConfig:
    """The top head against 3 random draws on the detection grid's cells (another seed)."""
    return AblateConfig(
        run=str(run.root),
        k=(1,),
        head_sets=("top", "random"),
        random_seeds=3,
        lengths=TASK.lengths,
        depths=TASK.depths,
        needle_kind="key",
        max_new_tokens=12,
        control=control,
    )


def test_masking_the_retriever_breaks_retrieval_and_a_random_head_does_not(
    copier, run, tmp_path, monkeypatch
):
    monkeypatch.setattr(execution_module, "load_model", lambda *args, **kwargs: copier)
    config = _top_against_random(run)
    store = ablate(config, tmp_path / "ablate", Execution(progress=False))
    table = store.derived("ablation")
    claims = store.derived("claims").set_index("claim")
    # every prompt loses its answer to the top head and keeps it under every random head
    for claim in ("wu.mask_top_vs_random", "wu.mask_top_vs_random_each"):
        assert claims.loc[claim, "verdict"] == "holds", claims.loc[claim].to_dict()
    # pooled over en and de by grid cell: 3 cells (depths), each language's prompt of a cell averaged
    assert claims.loc["wu.mask_top_vs_random", ["estimate", "n"]].tolist() == [1.0, 3]
    for language in ("en", "de"):
        rows = table[table["language"] == language]
        assert rows.loc[rows["head_set"] == "none", "accuracy"].item() == 1.0
        top = rows[rows["head_set"] == "top"]
        assert top["heads"].item() == "1-0" and top["accuracy"].item() == 0.0
        assert top["delta_accuracy"].item() == -1.0
        assert (rows.loc[rows["head_set"] == "random", "accuracy"] == 1.0).all()


def test_the_negative_controls_never_hold(copier, run, tmp_path, monkeypatch):
    """English under the code 'de' (same corpus, needles, templates) uses the same heads as English by
    construction, and 'top' heads replaced by random ones are random heads: no claim may hold."""
    from babelheads.analysis.compare import CompareConfig
    from babelheads.data.controls import write_copies
    from babelheads.experiments.compare import run_compare

    monkeypatch.setattr(execution_module, "load_model", lambda *args, **kwargs: copier)
    data = write_copies("en", ["de"], tmp_path / "data")
    copies = replace(TASK, depths=(0.1, 0.3, 0.5, 0.7, 0.9), data_dir=str(data))
    copier.model.script.update(_script(copier, copies, misread_depth=None))
    detected = detect(
        DetectConfig(model="copying-stub", task=copies, max_new_tokens=12),
        tmp_path / "detect",
        Execution(progress=False),
    )
    samples = detected.table("samples")
    assert samples["success"].all() and set(samples["language"]) == {"en", "de"}
    tables, _ = run_compare([detected.root], tmp_path / "compare", CompareConfig(replicates=200))
    claims = tables["claims"].set_index("claim")
    multilingual = claims[claims.index.str.startswith("multilingual.")]
    assert len(multilingual) >= 4 and (multilingual["verdict"] != "holds").all(), multilingual["verdict"]
    # the copier's one retriever serves both "languages": the exchanged shared share is the observed one
    assert claims.loc["multilingual.f1_partial_sharing", "estimate"] == 0

    config = _top_against_random(run, control=True)
    store = ablate(config, tmp_path / "ablate", Execution(progress=False))
    sets = store.derived("head_sets")
    assert "1-0" not in set(sets.loc[sets["name"] == "top", "heads"])  # never the retriever
    verdicts = store.derived("claims").set_index("claim")["verdict"]
    assert verdicts["wu.mask_top_vs_random"] != "holds" and verdicts["wu.mask_top_vs_random_each"] != "holds"
