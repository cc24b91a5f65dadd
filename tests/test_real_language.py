"""Language heads on the built-in Gemma 3 270M: what held here (2 CPU cores, en/de/zh, small settings).
Slower: marked ``real``. The README reports the full default runs in five languages."""

from __future__ import annotations

import pytest
from scipy.stats import spearmanr

from babelheads.execution import Execution
from babelheads.experiments.importance import ImportanceConfig, Selection, importance
from babelheads.experiments.language_tests import LanguageTestConfig, language_test
from babelheads.tasks.lm_texts import TextSettings

pytestmark = pytest.mark.real
LANGUAGES = ("en", "de", "zh")
QUIET = Execution(device="cpu", progress=False)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    # General = a candidate in all three languages, so each language keeps a specific head.
    config = ImportanceConfig(
        texts=TextSettings(LANGUAGES, texts=8, window=128), selection=Selection(min_languages=3)
    )
    return importance(config, tmp_path_factory.mktemp("importance") / "run", QUIET)


def test_both_formulas_rank_heads_alike_and_importance_is_concentrated(scored):
    table = scored.derived("importance")
    for _, frame in table.groupby("language"):
        assert spearmanr(frame["paper"], frame["code"]).statistic > 0.8
        ranked = frame["paper"].sort_values(ascending=False).to_numpy()
        # Held here: the top head scores several times the median head.
        assert ranked[0] > 4 * ranked[len(ranked) // 2]
    heads = scored.derived("language_heads")
    assert (heads["role"] == "general").any(), "a head important in every language (11-3 here)"


def test_masking_a_languages_own_heads_raises_its_perplexity(scored, tmp_path):
    config = LanguageTestConfig(
        heads=str(scored.root), experiment="ppl", texts=6, random_seeds=2, replicates=400
    )
    table = language_test(config, tmp_path / "ppl", QUIET).derived("ppl").set_index("language")
    for code in LANGUAGES:
        # Held here in every language: the rise is positive with its interval above 0.
        assert table.loc[code, "masked_minus_none_lo"] > 0, table.loc[code].to_dict()
    # Against random heads the data are mixed (README): the intervals must at least exist and be ordered.
    assert (table["masked_minus_random_lo"] <= table["masked_minus_random_hi"]).all()
