"""The HTML report: figure builders, one self-contained page, and a headless-browser check of it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from babelheads.analysis.aggregate import AggregateSettings
from babelheads.errors import BabelheadsError
from babelheads.execution import Execution
from babelheads.experiments.compare import CompareConfig, run_compare
from babelheads.experiments.detect import DetectConfig, detect, finalize
from babelheads.report import figures
from babelheads.report.html import build_report, read_runs, report_sections
from babelheads.runs import RunStore
from babelheads.tasks.niah import NiahSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = dict(lengths=(800,), depths=(0.0, 0.5, 1.0))
# Chosen head scores ('L-H' -> score) of the fabricated runs; every other head scores 0.
SCORES = {
    "en": {"2-1": 0.9, "1-3": 0.6, "2-0": 0.3, "0-2": 0.05},
    "de": {"2-1": 0.8, "1-3": 0.5, "1-0": 0.2},
    "zh": {"2-1": 0.85, "2-0": 0.4, "0-1": 0.15},
    "en>zh": {"2-1": 0.5, "1-3": 0.2},
}


def fabricate(source: Path, target: Path, successes: dict[str, int]) -> RunStore:
    """A copy of a real run whose first ``successes[language]`` samples retrieved the answer and whose
    heads score about SCORES (times noise in [0.6, 1.4] per sample and head, so intervals have width)."""
    shutil.copytree(source, target)
    store = RunStore(target)
    order: dict[str, list[str]] = {}
    for path in sorted((target / "tables" / "samples").glob("*.parquet")):
        frame = pd.read_parquet(path)
        language = frame["language"].iloc[0]
        order.setdefault(language, []).append(path.stem)
        success = len(order[language]) <= successes.get(language, 0)
        frame["success"] = success
        frame["rouge1_recall"] = 1.0 if success else 0.0
        frame.to_parquet(path, index=False)
    for language, sample_ids in order.items():
        for position, sample_id in enumerate(sample_ids):
            path = target / "tables" / "head_scores" / f"{sample_id}.parquet"
            heads = pd.read_parquet(path)
            labels = heads["layer"].astype(str) + "-" + heads["head"].astype(str)
            noise = np.random.default_rng(position).uniform(0.6, 1.4, len(heads))
            chosen = (labels.map(SCORES.get(language, SCORES["en>zh"])).fillna(0.0) * noise).clip(upper=1.0)
            heads["paper"] = heads["official"] = chosen
            heads["needle_attention"] = 0.05 + 0.5 * chosen
            heads.to_parquet(path, index=False)
    finalize(store, AggregateSettings())
    return store


def ablation_frame(languages=("en", "de"), baseline: float = 0.8, samples: int = 10) -> pd.DataFrame:
    """A tiny synthetic ablate-run table: accuracy falls with K, fastest for the top heads."""
    rows = []

    def row(head_set, k, seed, language, accuracy):
        return {
            "head_set": head_set,
            "k": k,
            "seed": seed,
            "count": k,
            "heads": " ".join(f"2-{i}" for i in range(k)),
            "language": language,
            "accuracy": accuracy,
            "rouge1_recall": accuracy,
            "n": samples,
            "delta_accuracy": accuracy - baseline,
            "delta_accuracy_lo": accuracy - baseline - 0.1,
            "delta_accuracy_hi": accuracy - baseline + 0.1,
            "delta_rouge": accuracy - baseline,
            "delta_rouge_lo": accuracy - baseline - 0.1,
            "delta_rouge_hi": accuracy - baseline + 0.1,
            "method": "gate",
            "phases": "all",
        }

    for language in languages:
        rows.append(row("none", 0, -1, language, baseline))
        for k in (2, 4, 8):
            rows.append(row("top", k, -1, language, baseline - 0.08 * k))
            rows.append(row("agnostic", k, -1, language, baseline - 0.06 * k))
            rows.append(row("specific", k, -1, language, baseline - 0.02 * k))
            for seed in range(3):
                rows.append(row("random", k, seed, language, baseline - 0.01 * k - 0.03 * seed))
    return pd.DataFrame(rows)


def make_ablate_run(root: Path, detection: RunStore, table: pd.DataFrame) -> Path:
    store = RunStore(root)
    spec = {
        "kind": "ablate",
        "config": {"run": str(detection.root), "languages": [], "method": "gate", "phases": "all"},
        "model": detection.manifest()["spec"]["model"],
    }
    store.create(spec, 0)
    store.write_derived("ablation", table)
    return root


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Real tiny runs (which retrieve nothing), fabricated ones with successes, and an ablate run."""
    root = tmp_path_factory.mktemp("report-runs")
    model = str(tiny_model_dir)
    mono = NiahSettings(languages=("en", "de", "zh"), **FAST)
    detect(DetectConfig(model=model, task=mono, max_new_tokens=4), root / "mono", Execution(progress=False))
    pairs = NiahSettings(pairs=("en:zh",), **FAST)
    detect(DetectConfig(model=model, task=pairs, max_new_tokens=4), root / "pairs", Execution(progress=False))
    good = fabricate(root / "mono", root / "good", {"en": 3, "de": 3, "zh": 3})
    fabricate(root / "pairs", root / "good-pairs", {"en>zh": 3})
    fabricate(root / "mono", root / "thin", {"en": 1, "de": 3, "zh": 3})
    make_ablate_run(root / "ablate", good, ablation_frame())
    quick = CompareConfig(replicates=20)
    run_compare([root / "good", root / "good-pairs"], root / "good-compare", quick)
    run_compare([root / "mono", root / "pairs"], root / "mono-compare", quick)
    run_compare([root / "thin"], root / "thin-compare", quick)
    names = (
        "mono",
        "pairs",
        "good",
        "good-pairs",
        "thin",
        "ablate",
        "good-compare",
        "mono-compare",
        "thin-compare",
    )
    return {name: root / name for name in names}


def assert_png(figure: figures.Figure) -> None:
    assert figure.png is not None and figure.png.startswith(PNG_SIGNATURE), figure.note
    assert len(figure.png) > 2000
    assert not figure.data.empty


class Figures(HTMLParser):
    """Collects each <figure>: its <img> sources, its CSV link and the text of its notes."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.in_note = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append({"images": [], "csv": None, "download": None, "note": ""})
        elif tag == "img" and self.figures:
            self.figures[-1]["images"].append(attrs)
        elif tag == "a" and self.figures and "download" in attrs:
            self.figures[-1]["csv"], self.figures[-1]["download"] = attrs["href"], attrs["download"]
        elif tag == "p" and attrs.get("class") == "note":
            self.in_note = True

    def handle_endtag(self, tag):
        self.in_note = self.in_note and tag != "p"

    def handle_data(self, data):
        if self.in_note:
            self.figures[-1]["note"] += data


def parse(page: str) -> list[dict]:
    parser = Figures()
    parser.feed(page)
    return parser.figures


def decode_csv(href: str) -> pd.DataFrame:
    prefix = "data:text/csv;base64,"
    assert href.startswith(prefix)
    return pd.read_csv(io.BytesIO(base64.b64decode(href[len(prefix) :])))


def all_figures(paths: list[Path]) -> list[figures.Figure]:
    return [figure for section in report_sections(read_runs(paths)) for figure in section.figures]


# --- figure builders on tables ---------------------------------------------------------------------


def scores_frame(successes: dict[str, int]) -> pd.DataFrame:
    rows = []
    for language, used in successes.items():
        for layer in range(4):
            for head in range(3):
                score = SCORES[language].get(f"{layer}-{head}", 0.0)
                rows.append(
                    {
                        "language": language,
                        "layer": layer,
                        "head": head,
                        "kv_head": head,
                        "paper": score,
                        "official": score,
                        "needle_attention": 0.1,
                        "samples_used": used,
                        "score": score,
                        "variant": "paper",
                    }
                )
    return pd.DataFrame(rows)


def test_score_heatmap_and_distribution_draw_scored_languages_and_note_thin_ones():
    scores = scores_frame({"en": 1, "de": 3, "zh": 5})
    for builder in (figures.score_heatmap, figures.distribution_chart):
        figure = builder(scores)
        assert_png(figure)
        assert figure.note == "en: 1 successful sample, too few to score heads."
        assert set(figure.data["language"]) == {"de", "zh"}
        alone = builder(scores_frame({"en": 0}))
        assert alone.png is None and alone.note == "en: 0 successful samples, too few to score heads."
    marked = figures.score_heatmap(scores, full_layers=[1, 3])
    assert_png(marked)
    assert "full attention" in marked.caption


def test_cross_language_figures_draw_or_explain():
    means = {language: np.array([0.9, 0.3, 0.0, 0.2, 0.05, 0.6]) for language in ("en", "de")}
    means["de"] = np.array([0.8, 0.0, 0.4, 0.2, 0.0, 0.5])
    layers, heads = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0, 1])
    from babelheads.analysis import crosslingual

    overlap = crosslingual.overlap_table(
        means, layers, [f"{a}-{b}" for a, b in zip(layers, heads, strict=True)]
    )
    overlap["heads"] = overlap["heads"].map(" ".join)
    assert_png(figures.overlap_chart(overlap))
    assert_png(figures.generality_scatter(crosslingual.generality_table(means, layers, heads), 2))
    empty = overlap.assign(count=0, heads="")
    assert figures.overlap_chart(empty).png is None
    flat = crosslingual.generality_table({"en": np.zeros(6), "de": np.zeros(6)}, layers, heads)
    assert figures.generality_scatter(flat, 2).png is None

    rank = pd.DataFrame(
        {
            "pair": ["de-en", "de-zh", "en-zh"],
            "subset": "all",
            "spearman": [0.8, np.nan, -0.2],
            "spearman_lo": [0.6, np.nan, -0.5],
            "spearman_hi": [0.9, np.nan, 0.1],
            "kendall": [0.6, np.nan, -0.1],
            "heads": 12.0,
        }
    )
    assert_png(figures.rank_matrix(rank, ["de", "en", "zh"]))
    assert figures.rank_matrix(rank.assign(spearman=np.nan), ["de", "en", "zh"]).png is None
    assert figures.rank_matrix(rank, ["en"]).png is None


def test_accuracy_translation_and_ablation_figures():
    accuracy = pd.DataFrame(
        [
            {"language": c, "length": n, "depth": d, "accuracy": a, "rouge1_recall": a, "samples": 2}
            for c, a in (("en", 1.0), ("en>zh", 0.5))
            for n in (1000, 2000)
            for d in (0.0, 0.5, 1.0)
        ]
    )
    assert_png(figures.accuracy_heatmap(accuracy))
    assert figures.accuracy_heatmap(accuracy.iloc[:0]).png is None

    measures = ["copy", "attention", "accuracy"]
    translation = pd.DataFrame(
        [
            {
                "condition": "en>zh",
                "monolingual": "en",
                "measure": f"{m}_{kind}",
                "value": v,
                "lo": v - 0.1,
                "hi": v + 0.1,
                "top_heads": 3,
            }
            for m in measures
            for kind, v in (("mono", 0.6), ("translation", 0.3))
        ]
    )
    assert_png(figures.translation_chart(translation, {"en": 3}))
    thin = figures.translation_chart(translation, {"en": 1})
    assert thin.png is None and "en>zh: source en: 1 successful sample" in thin.note
    assert figures.translation_chart(translation.assign(value=np.nan, lo=np.nan, hi=np.nan)).png is None

    table = ablation_frame()
    figure = figures.ablation_curves(table)
    assert_png(figure)
    assert "method gate, phases all" in figure.title
    random = figure.data.query("language == 'en' and head_set == 'random' and k == 4").iloc[0]
    assert random["accuracy"] == pytest.approx(0.8 - 0.04 - 0.03)
    assert (random["accuracy_min"], random["accuracy_max"]) == pytest.approx((0.8 - 0.04 - 0.06, 0.76))
    weak = figures.ablation_curves(pd.concat([table, ablation_frame(("zh",), baseline=0.1)]))
    assert_png(weak)
    assert weak.note == "zh: unmasked model retrieves 1 sample, too few to measure a drop."
    assert figures.ablation_curves(ablation_frame(baseline=0.0)).png is None


def test_png_bytes_are_stable():
    scores = scores_frame({"en": 3, "de": 3})
    assert figures.score_heatmap(scores).png == figures.score_heatmap(scores).png


# --- the report on runs ---------------------------------------------------------------------------


def test_report_has_one_figure_and_one_matching_csv_per_figure(runs, tmp_path):
    paths = [runs["good"], runs["good-pairs"], runs["good-compare"], runs["ablate"]]
    output = build_report(paths, tmp_path / "out" / "report.html")
    page = output.read_text()
    expected = all_figures(paths)
    # accuracy; per detection run a heat map and a distribution; overlap, generality, rank, translation;
    # the ablation curves.
    assert len(expected) == 1 + 2 * 2 + 4 + 1
    found = parse(page)
    assert len(found) == page.count("<figure") == len(expected)
    for figure, html_figure in zip(expected, found, strict=True):
        assert figure.png is not None, f"{figure.title}: {figure.note}"
        assert len(html_figure["images"]) == 1 and html_figure["images"][0]["alt"].startswith(figure.title)
        source = html_figure["images"][0]["src"]
        assert base64.b64decode(source.split(",", 1)[1]) == figure.png
        assert html_figure["download"].endswith(".csv")
        expected_csv = pd.read_csv(io.StringIO(figure.data.to_csv(index=False)))
        pd.testing.assert_frame_equal(decode_csv(html_figure["csv"]), expected_csv)
    assert "Download the numbers (CSV)" in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page), "the page must load nothing from elsewhere"
    assert "[en]" in page and "masking: method gate" in page  # the text summaries
    assert not list(output.parent.glob("*.tmp"))
    assert build_report(paths, tmp_path / "again.html").read_bytes() == output.read_bytes()


def test_runs_of_two_models_are_reported_per_model(runs, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(runs["good"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["spec"]["model"] = {"model": "other-model", "revision": "abc"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    sections = report_sections(read_runs([runs["good"], other]))
    models = [section.heading for section in sections if section.level == 2]
    assert models == [f"Model {Path(read_runs([runs['good']])[0].model).name}", "Model other-model"]
    # Each model gets its own run figures (no compare run was given: no cross-language figures).
    assert sum(len(section.figures) for section in sections) == 2 * 2


def test_a_run_without_successes_yields_notes_not_charts(runs, tmp_path):
    paths = [runs["mono"], runs["pairs"], runs["mono-compare"]]
    page = build_report(paths, tmp_path / "report.html").read_text()
    found = parse(page)
    # Only the accuracy heat map is drawn: 0% everywhere is a true and useful chart.
    drawn = [figure for figure in found if figure["images"]]
    assert len(drawn) == 1 and "haystack" in drawn[0]["images"][0]["alt"]
    notes = [figure["note"] for figure in found if not figure["images"]]
    assert len(notes) == len(found) - 1 >= 6
    assert all(note.startswith("Not drawn: ") for note in notes)
    assert "en: 0 successful samples, too few to score heads" in page
    for figure in found:
        decode_csv(figure["csv"])


def test_a_thin_language_is_left_out_of_cross_language_figures(runs):
    figures_ = all_figures([runs["thin"], runs["thin-compare"]])
    overlap = next(figure for figure in figures_ if figure.title == figures.OVERLAP_TITLE)
    assert overlap.png is not None
    assert overlap.note.startswith("en: 1 successful samples (at least 3 needed): left out")
    assert "en" not in "+".join(overlap.data["languages"]).split("+")


def test_unknown_run_kinds_and_missing_runs_are_refused(runs, tmp_path):
    other = RunStore(tmp_path / "other")
    other.create({"kind": "sweep", "config": {}}, 0)
    with pytest.raises(BabelheadsError, match=r"is a 'sweep' run; the report reads detect, compare, ablate"):
        build_report([runs["good"], other.root], tmp_path / "report.html")
    with pytest.raises(BabelheadsError, match="not a babelheads run"):
        build_report([tmp_path / "nothing"], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


# --- in a real browser ----------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


@pytest.mark.browser
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_the_report_renders_in_headless_chromium(runs, tmp_path):
    paths = [runs["good"], runs["good-pairs"], runs["good-compare"], runs["ablate"]]
    output = build_report(paths, tmp_path / "report.html")
    expected = sum(figure.png is not None for figure in all_figures(paths))

    def chromium(*args: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        command = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, output.as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    dumped = chromium("--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    errors = [
        line
        for line in dumped.stderr.splitlines()
        if ("Uncaught" in line or "CONSOLE" in line) and (output.name in line or "file://" in line)
    ]
    assert not errors, errors
    match = re.search(r'data-figures-ok="(\d+)/(\d+)"', dumped.stdout)
    assert match, "the page's load script did not run"
    assert int(match.group(1)) == int(match.group(2)) == expected

    screenshot = tmp_path / "report.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,4000")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
    assert screenshot.stat().st_size > 50_000
    shutil.copy(screenshot, "/tmp/babelheads-report.png")


def test_the_report_opens_with_every_claim_its_runs_tested_each_linked_to_its_figure(runs, tmp_path):
    paths = [runs["good"], runs["good-pairs"], runs["good-compare"], runs["ablate"]]
    page = build_report(paths, tmp_path / "report.html").read_text()
    # the compare run's claims (the fabricated ablate run wrote none)
    expected = RunStore(runs["good-compare"]).derived("claims")
    rows = re.findall(r"<tr class='claim' data-verdict='([^']+)'><td><code>([^<]+)</code>(.*?)</tr>", page)
    found = [(claim, verdict) for verdict, claim, _ in rows]
    assert found == list(zip(expected["claim"], expected["verdict"], strict=True))
    assert {"wu.sparse", "multilingual.f1_partial_sharing", "multilingual.f4_translation_fails"} <= set(
        expected["claim"]
    )
    # before any figure, right under the model's heading; a claim with a figure links to it
    assert page.index("class='claim'") < page.index("<figure")
    linked = dict((claim, rest) for _, claim, rest in rows)
    assert re.search(r"href='#figure-\d+'", linked["multilingual.f1_partial_sharing"])
    assert re.search(r"href='#figure-\d+'", linked["multilingual.f4_translation_fails"])


def test_babelheads_claims_prints_each_claim_and_refuses_a_run_without_any(runs):
    import sys

    command = str(Path(sys.executable).parent / "babelheads")
    compare = RunStore(runs["good-compare"]).derived("claims")
    text = subprocess.run(
        [command, "claims", str(runs["good-compare"]), "--parts"], capture_output=True, text=True
    )
    assert text.returncode == 0, text.stderr
    for claim in compare.to_dict("records"):
        line = next(line for line in text.stdout.splitlines() if line.startswith(claim["claim"]))
        assert claim["verdict"] in line
    markdown = subprocess.run(
        [command, "claims", str(runs["good-compare"]), "--markdown"], capture_output=True, text=True
    )
    assert markdown.stdout.count("\n| `") == len(compare)
    refused = subprocess.run([command, "claims", str(runs["good"])], capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "has no claims table" in refused.stderr.strip().splitlines()[-1]
    missing = subprocess.run([command, "claims", str(runs["good"]) + "-typo"], capture_output=True, text=True)
    assert missing.returncode == 2 and "is not a babelheads run" in missing.stderr.strip().splitlines()[-1]
