"""compare and ablate end to end on tiny local models: tables, CSV, refusals."""

from __future__ import annotations

import pandas as pd
import pytest
from test_cli_and_runs import assert_one_line_error, run_cli
from test_report import fabricate
from tiny_models import save_tiny_model

from babelheads.runs import RunStore

FAST = ["--lengths", "800", "--depths", "0,0.5,1", "--max-new-tokens", "4", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer_session):
    """Detection runs: two of the tiny Llama (plain and translation), one of a same-shape sibling,
    one of a tiny Gemma 3 (another shape)."""
    import sys

    from babelheads import cli

    root = tmp_path_factory.mktemp("runs")
    sibling = save_tiny_model(root / "model-sibling", "llama", tiny_tokenizer_session, seed=1)
    gemma = save_tiny_model(root / "model-gemma", "gemma3", tiny_tokenizer_session)
    made = {}
    for name, model, extra in [
        ("plain", tiny_model_dir, []),
        ("translation", tiny_model_dir, ["--pairs", "en:zh,en:de"]),
        ("sibling", sibling, []),
        ("gemma", gemma, []),
    ]:
        sys.argv = ["babelheads", "detect", "--model", str(model), "--out", str(root / name), *FAST, *extra]
        try:
            cli.main()
        except SystemExit as exit_:
            assert exit_.code in (0, None)
        # The random tiny models retrieve nothing; fabricated successes and scores give the analyses
        # something to compare (test_report.fabricate).
        languages = ["en>zh", "en>de"] if name == "translation" else ["en", "de", "zh"]
        fabricate(root / name, root / f"{name}-scored", dict.fromkeys(languages, 3))
        made[name] = root / f"{name}-scored"
    return made


def test_compare_writes_tables_and_csv_with_intervals(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "compare",
        str(runs["plain"]),
        str(runs["translation"]),
        "--out",
        str(out),
        "--replicates",
        "20",
    )
    assert code == 0, stdout
    assert "rank agreement" in stdout and "en>zh" in stdout
    store = RunStore(out)
    ranks = store.derived("rank_agreement")
    assert set(ranks["pair"]) == {"de-en", "de-zh", "en-zh"}
    assert {"spearman", "spearman_lo", "spearman_hi", "kendall", "rank_diff"} <= set(ranks.columns)
    translation = store.derived("translation")
    assert set(translation["condition"]) == {"en>zh", "en>de"}
    # Split by needle kind (a translated fact answer cannot be copied), accuracy with its interval.
    kinds = RunStore(runs["translation"]).table("samples")["needle_kind"]
    assert set(translation["needle_kind"]) == set(kinds) and "needle_kind" in translation
    accuracy = translation[translation["measure"].str.startswith("accuracy")]
    assert accuracy[["lo", "hi"]].notna().all().all()
    assert "fact needles: copy is 0 by construction" in stdout
    # The settings compare used are written beside its tables (the report reads them from there).
    assert store.derived("settings")["threshold"].item() == 0.1
    for name in ("heads", "overlap", "generality", "accuracy", "rank_agreement", "translation"):
        csv = pd.read_csv(out / "csv" / f"{name}.csv")
        assert len(csv) == len(store.derived(name))
    # --from replays it: the same runs and settings give the same tables.
    again = tmp_path / "again"
    assert run_cli(monkeypatch, capsys, "compare", "--from", str(out), "--out", str(again))[0] == 0
    for name in ("rank_agreement", "rank_contrasts", "translation", "overlap_statistics"):
        pd.testing.assert_frame_equal(store.derived(name), RunStore(again).derived(name))


def test_comparing_runs_of_different_models_needs_models(runs, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "compare", str(runs["plain"]), str(runs["sibling"]), "--out", str(tmp_path / "c")
    )
    assert_one_line_error(code, err, r"different models .*pass --models")
    assert not (tmp_path / "c").exists()


def compare_models(monkeypatch, capsys, first, second, out) -> tuple[int, str]:
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "compare",
        str(first),
        str(second),
        "--models",
        "--out",
        str(out),
        "--replicates",
        "20",
    )
    return code, stdout


def test_model_comparison_matches_heads_by_address(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "models"
    code, _ = compare_models(monkeypatch, capsys, runs["plain"], runs["sibling"], out)
    assert code == 0
    agreement = RunStore(out).derived("model_agreement")
    assert set(agreement["language"]) == {"en", "de", "zh"}
    assert agreement["statistic"].str.startswith("spearman|").any()


def test_model_comparison_says_when_head_shapes_differ(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shapes"
    code, stdout = compare_models(monkeypatch, capsys, runs["plain"], runs["gemma"], out)
    assert code == 0
    assert "Head shapes differ" in stdout and "3 layers x 4 heads" in stdout and "4 x 4" in stdout
    store = RunStore(out)
    assert len(store.derived("model_distribution")) == 2 * 3
    with pytest.raises(Exception, match="no model_agreement"):
        store.derived("model_agreement")


def test_ablate_masks_every_head_set_and_resumes(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ablate"
    args = [
        "ablate",
        str(runs["plain"]),
        "--out",
        str(out),
        "--lengths",
        "800",
        "--depths",
        "0.5",
        "--k",
        "1,3",
        "--random-seeds",
        "2",
        "--max-new-tokens",
        "4",
        "--quiet",
    ]
    code, _stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    table = RunStore(out).derived("ablation")
    expected = {
        "none",
        "top",
        "random",
        "agnostic",
        "specific",
        "agnostic-equal",
        "agnostic-matched",
        "specific-matched",
    }
    assert set(table["head_set"]) <= expected and {"none", "top", "random"} <= set(table["head_set"])
    sets = RunStore(out).derived("head_sets")
    # a language's own specific heads are masked on its prompts only: one row per language and K
    own = sets[sets["language"] != ""]
    assert set(own["name"]) == {"specific", "agnostic-equal", "agnostic-matched", "specific-matched"}
    for (name, k), group in own.groupby(["name", "k"]):
        rows = table[(table["head_set"] == name) & (table["k"] == k)]
        assert sorted(rows["language"]) == sorted(group["language"]), (name, k)
    assert set(table.loc[table["head_set"] == "random", "seed"]) == {0, 1}
    assert set(table.loc[table["head_set"] == "top", "count"]) == {1, 3}
    assert (table["method"] == "gate").all() and (table["phases"] == "all").all()
    # Held out by default: the evaluation haystacks come from another seed, and the manifest says so.
    overlap = RunStore(out).manifest()["overlap_with_detection"]
    assert overlap["holdout"] == "seed" and overlap["evaluation_seed"] == 1
    assert overlap["samples_identical_to_detection"] == 0
    parts = sorted((out / "tables" / "samples").glob("*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in parts]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    assert [path.stat().st_mtime_ns for path in parts] == stamps


def test_ablate_refuses_k_beyond_the_heads(runs, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "ablate", str(runs["plain"]), "--out", str(tmp_path / "a"), "--k", "2,13"
    )
    assert_one_line_error(code, err, r"K=13 is outside \[1, 12\], the number of heads")


def test_uniform_masking_needs_decode_only(runs, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        monkeypatch, capsys, "ablate", str(runs["plain"]), "--out", str(tmp_path / "a"), "--method", "uniform"
    )
    assert_one_line_error(code, err, r"Uniform masking applies while decoding only. Add --phases decode")
