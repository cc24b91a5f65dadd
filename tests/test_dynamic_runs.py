"""The dynamic-heads runs end to end on a model that really copies: one retriever head that reads the
answer token by token, so every per-step number has a known value."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from copying_model import Script, copying_model

import babelheads.execution as execution_module
from babelheads.analysis.head_probes import ProbeSettings
from babelheads.execution import Execution
from babelheads.experiments.dynamic import DynamicAnalysis, DynamicConfig, dynamic
from babelheads.experiments.dynamic_ablate import DynamicAblateConfig, dynamic_ablate
from babelheads.tasks.niah import NiahSettings, NiahTask

# Key needles: short answers keep the (slow, one-hot) copier fast; magic needles are tested in test_data.
TASK = NiahSettings(
    languages=("en", "de"),
    needle_kind="key",
    lengths=(1200,),
    depths=(0.2, 0.4, 0.6, 0.8),
    needles_per_cell=2,
)
HELD_OUT = replace(TASK, depths=(0.3, 0.7), needles_per_cell=1, seed=1)
ANALYSIS = DynamicAnalysis(
    static_k=1, replicates=100, probe=ProbeSettings(hidden=(16,), epochs=3, cca_lags=(0, 1), shuffles=1)
)


@pytest.fixture(scope="module")
def copier(tiny_tokenizer_session):
    loaded = copying_model(tiny_tokenizer_session, {})
    for settings in (TASK, HELD_OUT):
        for sample in NiahTask(settings).build(loaded):
            loaded.model.script[sample.input_ids] = Script(sample.spans["answer"], sample.spans["needle"])
    patch = pytest.MonkeyPatch()
    patch.setattr(execution_module, "load_model", lambda *args, **kwargs: loaded)
    yield loaded
    patch.undo()


@pytest.fixture(scope="module")
def run(copier, tmp_path_factory):
    config = DynamicConfig(model="copying-stub", niah=TASK, max_new_tokens=16, analysis=ANALYSIS)
    return dynamic(config, tmp_path_factory.mktemp("dynamic") / "run", Execution(progress=False))


def test_the_retriever_is_the_one_dynamic_head_at_every_answer_step(run):
    events = run.table("events")
    samples = run.table("samples")
    assert samples["contains"].all()
    dynamic = events[events["needle_copy"]]
    assert set(zip(dynamic["layer"], dynamic["head"], strict=True)) == {(1, 0)}
    # Every step but the last (EOS, read at position 0) copies.
    assert len(dynamic) == int((samples["steps"] - 1).sum())


def test_a_fixed_head_gives_jaccard_one_and_zero_entropy(run):
    stats = run.derived("dynamic_stats").set_index(["language", "statistic"])
    for language in ("en", "de"):
        assert stats.loc[(language, "jaccard_static"), "value"] == 1.0
        assert stats.loc[(language, "jaccard_adjacent"), "value"] == 1.0
        assert stats.loc[(language, "entropy"), "value"] == 0.0
        assert stats.loc[(language, "entropy"), "reference"] == 0.0  # ln K, K = 1
    static = run.derived("static_heads")
    assert set(static["head"]) == {"1-0"}


def test_one_fixed_retriever_is_the_control_on_which_no_dynamic_claim_holds(run):
    """The copier reads every answer token with one head: its steps' heads are the static top-1, and
    one head takes every turn, so neither "not static" nor "turn taking" may hold."""
    from babelheads.analysis.claims import COLUMNS, HOLDS

    claims = run.derived("claims").set_index("claim")
    assert list(run.derived("claims").columns) == list(COLUMNS)
    assert {"dynamic.not_static", "dynamic.turn_taking", "dynamic.cca", "dynamic.predictable"} <= set(
        claims.index
    )
    for claim in ("dynamic.not_static", "dynamic.turn_taking"):
        assert claims.loc[claim, "verdict"] != HOLDS and claims.loc[claim, "estimate"] == 0.0, claim
    parts = run.derived("claim_parts")
    assert set(parts.loc[parts["claim"] == "dynamic.not_static", "part"]) == {"de (K=1)", "en (K=1)"}


def test_hidden_states_are_stored_per_step_and_the_probes_write_their_baselines(run):
    hidden = run.table("hidden")
    assert len(hidden) == int(run.table("samples")["steps"].sum())
    state = np.frombuffer(hidden["state"].iloc[0], dtype=np.float32)
    assert state.shape == (2 * 2048,)
    cca = run.derived("cca")
    assert {"train", "held_out", "shuffled_train", "shuffled_held_out"} <= set(cca.columns)
    assert set(cca["language"]) == {"en", "de", "all"}
    probe = run.derived("probe")
    assert set(probe["predictor"]) >= {"probe", "static prior", "shuffled labels"}
    # The fitted probe is kept: it maps any final hidden state to one probability per head.
    from babelheads.analysis.head_probes import hidden_states
    from babelheads.sources import load_probe

    _, states = hidden_states(hidden)
    assert load_probe(run.root, "all").probabilities(states).shape == (len(states), 4)


def test_reanalysis_changes_the_tables_without_decoding(run, copier, monkeypatch):
    monkeypatch.setattr(execution_module, "load_model", lambda *a, **k: pytest.fail("decoded again"))
    config = DynamicConfig(
        model="copying-stub",
        niah=TASK,
        max_new_tokens=16,
        analysis=replace(ANALYSIS, static_k=2, probes=False),
    )
    dynamic(config, run.root, Execution(progress=False))
    stats = run.derived("dynamic_stats").set_index(["language", "statistic"])
    assert stats.loc[("en", "jaccard_static"), "value"] == 0.5  # {1-0} against two static heads


def test_masking_the_dynamic_head_breaks_each_step_and_random_heads_mostly_do_not(run, tmp_path):
    config = DynamicAblateConfig(
        heads=str(run.root),
        niah=HELD_OUT,
        max_new_tokens=16,
        random_seeds=2,
        progressive=(1, 2),
        static_k=1,
        replicates=100,
    )
    store = dynamic_ablate(config, tmp_path / "ablate", Execution(progress=False))
    summary = store.derived("dynamic_ablation").set_index(["language", "condition", "k"])
    for language in ("en", "de"):
        assert summary.loc[(language, "clean", 0), "exact"] == 1.0
        assert summary.loc[(language, "clean", 0), "token_kept"] == 1.0
        # Masked, the copier repeats the current token: right only where the UUID repeats a token.
        assert summary.loc[(language, "dynamic", 0), "token_kept"] < 0.15
        assert summary.loc[(language, "dynamic", 0), "exact"] == 0.0
        assert (
            summary.loc[(language, "static", 0), "token_kept"] == 0.0
        )  # the static top head is the retriever
        assert 0.5 < summary.loc[(language, "random", 0), "token_kept"] < 1.0  # 1 head of 4: 3/4 kept
        # The retriever ranks first at every answer step; the EOS step (no head copies) keeps its token.
        assert summary.loc[(language, "progressive", 1), "token_kept"] < 0.2
        assert summary.loc[(language, "progressive", 1), "compensating"] == 0.0
    steps = store.table("steps")
    dynamic_rows = steps[steps["condition"] == "dynamic"]
    assert (dynamic_rows["heads"] == "1-0").all()
    contrasts = store.derived("dynamic_ablation_contrasts")
    assert set(contrasts["contrast"]) == {"dynamic - static", "dynamic - random"}


def test_the_ablation_command_and_the_report_end_to_end(run, tmp_path, monkeypatch, capsys):
    from test_cli_and_runs import run_cli

    from babelheads.runs import RunStore

    ablate = tmp_path / "ablate"
    args = ["--languages", "en,de", "--needle-kind", "key", "--lengths", "1200", "--depths", "0.3,0.7"]
    code, text, err = run_cli(
        monkeypatch,
        capsys,
        "dynamic-ablate",
        "--heads",
        str(run.root),
        "--model",
        "copying-stub",
        "--needles",
        "builtin",
        *args,
        "--needles-per-cell",
        "1",
        "--max-new-tokens",
        "16",
        "--progressive",
        "1,2",
        "--random-seeds",
        "2",
        "--static-k",
        "1",
        "--replicates",
        "50",
        "--seed",
        "1",
        "--out",
        str(ablate),
        "--quiet",
    )
    assert code == 0, err
    assert "samples answered right without masks" in text and "dynamic - static" in text
    steps = RunStore(ablate).table("steps")
    clean = steps[steps["condition"] == "clean"]
    assert clean["kept"].all()  # teacher-forced without a mask reproduces every token
    # Replaying the run's settings (its haystack seed too, not the heads run's) finds it finished.
    code, _, err = run_cli(
        monkeypatch, capsys, "dynamic-ablate", "--from", str(ablate), "--out", str(ablate), "--quiet"
    )
    assert code == 0, err
    report = tmp_path / "report.html"
    code, _, err = run_cli(monkeypatch, capsys, "report", str(run.root), str(ablate), "--output", str(report))
    assert code == 0, err
    html = report.read_text()
    assert "Dynamic retrieval heads run" in html and "Dynamic ablation run" in html
    assert "Predicting heads from hidden states" in html


def test_rag_takes_the_probes_heads_per_step_and_the_runs_static_ranking(run, copier, tmp_path):
    from babelheads.experiments.rag import RagConfig, _load_heads, rag
    from babelheads.rag.loop import SELECTIONS, LoopSettings
    from babelheads.sources import load_probe, open_source

    # The copier has 4 heads: a query from 3 of them leaves a head out of every choice.
    config = RagConfig(
        heads=str(run.root), languages=("en", "de"), count=2, replicates=50, loop=LoopSettings(head_count=3)
    )
    heads = _load_heads(open_source(run.root, ("dynamic",), "--heads"), config)
    ranking = open_source(run.root, ("dynamic",), "--heads").rankings()
    assert heads.choose("static", "de", None)[0] == ranking["de"][:3].tolist()
    state = np.random.default_rng(0).normal(size=copier.model.config.hidden_size).astype(np.float32)
    probabilities = load_probe(run.root).probabilities(state[None])[0]
    chosen, scores = heads.choose("dynamic", "en", state)
    assert chosen == np.argsort(-probabilities, kind="stable")[:3].tolist()
    assert scores == sorted(scores, reverse=True)
    store = rag(config, tmp_path / "rag", Execution(progress=False))
    samples = store.table("samples")
    assert set(samples["selection"]) == set(SELECTIONS) and len(samples) == 4 * len(SELECTIONS)
    assert store.derived("rag_scores")["language"].tolist().count("all") == len(SELECTIONS)


def test_compress_takes_a_runs_retrieval_scores_as_head_scores(run, copier, tmp_path):
    from babelheads.analysis.dynamic_heads import retrieval_rankings
    from babelheads.errors import BabelheadsError
    from babelheads.experiments.compress import CompressConfig, compress, head_scores

    # The heads run's own haystacks (its seed) are refused: heads are tested on other samples.
    with pytest.raises(BabelheadsError, match="is the seed of"):
        compress(CompressConfig(heads=str(run.root), niah=replace(TASK, seed=0)), tmp_path / "compress")

    scores = head_scores(str(run.root), copier.layout)
    ranking = retrieval_rankings(run.table("samples"), run.table("head_scores"), copier.layout.num_heads)
    assert set(scores) == set(ranking)
    for language, ranked in ranking.items():
        flat = scores[language].reshape(-1)
        np.testing.assert_allclose(flat[ranked.index.to_numpy()], ranked.to_numpy(float))
        # The copier's retriever (1-0) is the best head in every language.
        assert np.unravel_index(flat.argmax(), scores[language].shape) == (1, 0)
