"""Languages, needles, corpora and NIAH samples, with a tiny byte-level BPE tokenizer (no real model)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from babelheads.data.corpora import load_corpus
from babelheads.data.languages import available_languages, load_language
from babelheads.data.needles import Needle, load_needles, parse_needles
from babelheads.errors import TaskError
from babelheads.tasks.base import Sample, Skipped
from babelheads.tasks.niah import NiahBuilder, NiahCell, grid_cells

BUILDER_LANGUAGES = ("en", "de", "zh")
NEEDLE_LANGUAGES = ("en", "de", "zh", "fr", "es")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A ~600-token byte-level BPE trained on the built-in en, de and zh corpora."""
    texts = [load_corpus("builtin", code, 0) for code in BUILDER_LANGUAGES]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def builders(tokenizer) -> dict[str, NiahBuilder]:
    return {
        code: NiahBuilder(
            load_language(code), load_corpus("builtin", code, 0), tokenizer, chat=False, max_positions=None
        )
        for code in BUILDER_LANGUAGES
    }


# --- Language.sentence_boundaries ------------------------------------------------------------------


def test_english_boundaries_follow_each_end_mark():
    text = "A b. C d! E f?"
    assert load_language("en").sentence_boundaries(text) == [0, 4, 9, len(text)]


def test_english_boundaries_skip_decimal_points():
    english = load_language("en")
    text = "Pi is about 3.14 here. Water boils at 99.5 degrees! Done"
    boundaries = english.sentence_boundaries(text)
    assert boundaries == [0, text.index("here.") + 5, text.index("degrees!") + 8, len(text)]
    assert text.index("3.14") + 2 not in boundaries
    assert text.index("99.5") + 3 not in boundaries


def test_chinese_boundaries_need_no_spaces():
    text = "甲乙。丙丁！戊己？"
    assert load_language("zh").sentence_boundaries(text) == [0, 3, 6, 9]


def test_paragraph_breaks_are_boundaries():
    text = "A title\n\nBody text here. More"
    boundaries = load_language("en").sentence_boundaries(text)
    # At the start of the next paragraph: a needle must not glue onto a heading with no end mark.
    assert boundaries == [0, len("A title\n\n"), text.index("here.") + 5, len(text)]
    chinese = "标题\n\n正文。"
    assert load_language("zh").sentence_boundaries(chinese) == [0, 4, len(chinese)]


@pytest.mark.parametrize("code", ["en", "zh"])
def test_boundaries_always_include_both_ends(code):
    text = "no end mark here at all"
    assert load_language(code).sentence_boundaries(text) == [0, len(text)]
    assert load_language(code).sentence_boundaries("") == [0]


# --- load_language ---------------------------------------------------------------------------------


def test_builtin_languages_are_available():
    assert set(NEEDLE_LANGUAGES) <= set(available_languages())


def test_unknown_language_lists_the_available_ones():
    with pytest.raises(TaskError, match=r"Unknown language 'zn'\. Available: de, en, es, fr, zh\."):
        load_language("zn")


def test_unknown_language_with_an_extra_letter_suggests_the_close_one():
    with pytest.raises(TaskError, match=r"Did you mean: zh\?"):
        load_language("zhh")


def test_unknown_language_with_a_substituted_letter_suggests_the_close_one():
    with pytest.raises(TaskError, match=r"Did you mean: zh\?"):
        load_language("zn")


def test_unknown_language_without_a_close_one_has_no_hint():
    with pytest.raises(TaskError) as caught:
        load_language("klingon")
    assert "Did you mean" not in str(caught.value)


# --- needles ---------------------------------------------------------------------------------------


def test_builtin_needles_are_parallel_across_languages():
    by_language = {code: load_needles("builtin", code) for code in NEEDLE_LANGUAGES}
    ids = [needle.id for needle in by_language["en"]]
    assert len(ids) >= 5
    assert len(set(ids)) == len(ids)
    for code, needles in by_language.items():
        assert [needle.id for needle in needles] == ids, code
        assert [needle.kind for needle in needles] == [needle.kind for needle in by_language["en"]], code
        kinds = {needle.kind for needle in needles}
        assert {"fact", "key"} <= kinds, code
        for needle in needles:
            assert needle.answer in needle.statement, (code, needle.id)
            offset = needle.answer_offset
            assert needle.statement[offset : offset + len(needle.answer)] == needle.answer
            assert needle.question and needle.question != needle.statement


def _write(path, items) -> None:
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")


GOOD_NEEDLE = {
    "id": "n1",
    "statement": "The code is Tarvel.",
    "question": "What is the code?",
    "answer": "Tarvel",
}


def test_needle_file_and_directory_load(tmp_path):
    _write(tmp_path / "en.json", [GOOD_NEEDLE, {**GOOD_NEEDLE, "id": "n2", "kind": "key"}])
    from_file = load_needles(str(tmp_path / "en.json"), "en")
    from_dir = load_needles(str(tmp_path), "en")
    assert from_file == from_dir
    assert from_file == [
        Needle("n1", "The code is Tarvel.", "What is the code?", "Tarvel", "fact"),
        Needle("n2", "The code is Tarvel.", "What is the code?", "Tarvel", "key"),
    ]
    assert from_file[0].answer_offset == len("The code is ")


def test_needle_whose_answer_is_not_in_its_statement_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    _write(path, [GOOD_NEEDLE, {**GOOD_NEEDLE, "id": "n2", "answer": "Marvel"}])
    with pytest.raises(TaskError, match=r"Needle 'n2' .* answer 'Marvel' does not occur in its statement"):
        parse_needles(path)


@pytest.mark.parametrize("content", [GOOD_NEEDLE, [], "just text"])
def test_needle_file_that_is_not_a_non_empty_list_is_refused(tmp_path, content):
    path = tmp_path / "bad.json"
    _write(path, content)
    with pytest.raises(TaskError, match="must hold a non-empty JSON list"):
        parse_needles(path)


def test_needle_missing_a_field_or_invalid_json_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    _write(path, [{key: value for key, value in GOOD_NEEDLE.items() if key != "question"}])
    with pytest.raises(TaskError, match=r"Needle 0 .* lacks question"):
        parse_needles(path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(TaskError, match="is not valid JSON"):
        parse_needles(path)


def test_missing_needle_sources_are_refused(tmp_path):
    with pytest.raises(TaskError, match="No built-in needles for language 'xx'"):
        load_needles("builtin", "xx")
    with pytest.raises(TaskError, match="Needle file not found"):
        load_needles(str(tmp_path), "en")


# --- corpora ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", NEEDLE_LANGUAGES)
def test_builtin_corpus_is_non_empty_without_repeated_paragraphs(code):
    text = load_corpus("builtin", code, 0)
    paragraphs = [paragraph.strip() for paragraph in text.split("\n\n") if paragraph.strip()]
    assert len(text) > 15_000
    assert len(paragraphs) > 24
    assert len(set(paragraphs)) == len(paragraphs)


def test_builtin_corpus_order_is_seeded():
    texts = {seed: load_corpus("builtin", "en", seed) for seed in range(6)}
    assert load_corpus("builtin", "en", 3) == texts[3]
    assert len(set(texts.values())) > 1
    # Only the order of documents changes, never their text.
    paragraph_sets = {frozenset(text.split("\n\n")) for text in texts.values()}
    assert len(paragraph_sets) == 1


def test_corpus_directory_uses_the_language_subdirectory(tmp_path):
    for code, words in {"en": ["Alpha one.", "Beta two."], "de": ["Gamma drei.", "Delta vier."]}.items():
        (tmp_path / code).mkdir()
        for index, word in enumerate(words):
            (tmp_path / code / f"{index}.txt").write_text(word + "\n", encoding="utf-8")
    german = load_corpus(str(tmp_path), "de", 0)
    assert sorted(german.split("\n\n")) == ["Delta vier.", "Gamma drei."]
    english = load_corpus(str(tmp_path), "en", 0)
    assert sorted(english.split("\n\n")) == ["Alpha one.", "Beta two."]


def test_corpus_directory_without_subdirectories_reads_text_and_markdown(tmp_path):
    (tmp_path / "a.txt").write_text("First document.", encoding="utf-8")
    (tmp_path / "b.md").write_text("Second document.", encoding="utf-8")
    (tmp_path / "c.json").write_text("not a document", encoding="utf-8")
    assert sorted(load_corpus(str(tmp_path), "en", 0).split("\n\n")) == [
        "First document.",
        "Second document.",
    ]


def test_corpus_plain_text_file(tmp_path):
    path = tmp_path / "haystack.txt"
    path.write_text("  One sentence here.\nAnother one.\n\n", encoding="utf-8")
    assert load_corpus(str(path), "en", 7) == "One sentence here.\nAnother one."


def test_empty_corpora_are_refused(tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(TaskError, match=r"holds no \.txt or \.md files"):
        load_corpus(str(empty_dir), "en", 0)
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(TaskError, match="has no text for language 'en'"):
        load_corpus(str(empty_file), "en", 0)
    with pytest.raises(TaskError, match="Corpus not found"):
        load_corpus(str(tmp_path / "missing"), "en", 0)
    with pytest.raises(TaskError, match="No built-in corpus for language 'xx'"):
        load_corpus("builtin", "xx", 0)


def test_hf_corpus_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TaskError, match="pip install datasets"):
        load_corpus("hf:wikimedia/wikipedia:20231101.{lang}", "en", 0)


# --- grid_cells ------------------------------------------------------------------------------------


def test_grid_size_and_needles_per_cell():
    needles = load_needles("builtin", "en")
    cells = grid_cells("en", [128, 256, 1200], [0.0, 0.5, 1.0, 0.25], needles, per_cell=3, seed=0)
    assert len(cells) == 3 * 4 * 3
    keys = [(cell.length, cell.depth) for cell in cells]
    assert all(keys.count(key) == 3 for key in set(keys))
    for key in set(keys):
        ids = [cell.needle.id for cell in cells if (cell.length, cell.depth) == key]
        assert len(set(ids)) == 3
    assert len({cell.sample_id for cell in cells}) == len(cells)
    # Rotation spreads the needles evenly over the grid.
    counts = [sum(cell.needle.id == needle.id for cell in cells) for needle in needles]
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("depth", [-0.1, 1.5])
def test_depth_outside_unit_interval_is_refused(depth):
    needles = load_needles("builtin", "en")
    with pytest.raises(TaskError, match=r"Depth must lie in \[0, 1\]"):
        grid_cells("en", [128], [0.5, depth], needles, per_cell=1, seed=0)


def test_grid_refuses_short_lengths_and_bad_per_cell():
    needles = load_needles("builtin", "en")
    with pytest.raises(TaskError, match="at least 64 tokens"):
        grid_cells("en", [32], [0.5], needles, per_cell=1, seed=0)
    with pytest.raises(TaskError, match="needles per cell"):
        grid_cells("en", [128], [0.5], needles, per_cell=len(needles) + 1, seed=0)


def test_grid_picks_the_same_needles_in_every_language():
    grids = {
        code: grid_cells(code, [128, 1200], [0.0, 0.5, 1.0], load_needles("builtin", code), 2, seed=5)
        for code in NEEDLE_LANGUAGES
    }
    reference = [(cell.length, cell.depth, cell.needle.id) for cell in grids["en"]]
    assert len({needle_id for *_, needle_id in reference}) > 2
    for code, cells in grids.items():
        assert [(cell.length, cell.depth, cell.needle.id) for cell in cells] == reference, code
        assert all(cell.language == code for cell in cells)
    other_seed = grid_cells("en", [128, 1200], [0.0, 0.5, 1.0], load_needles("builtin", "en"), 2, seed=6)
    assert [cell.needle.id for cell in other_seed] != [needle_id for *_, needle_id in reference]


# --- NiahBuilder -----------------------------------------------------------------------------------

DEPTHS = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]


def needle_of(sample) -> Needle:
    return next(
        needle
        for needle in load_needles("builtin", sample.meta["source_language"])
        if needle.id == sample.meta["needle_id"]
    )


def _check_sample(sample, builder: NiahBuilder, tokenizer) -> None:
    language, needle = builder.language, needle_of(sample)
    prompt = sample.text
    # The answer tokens decode to the answer, inside the needle tokens.
    answer_text = tokenizer.decode(list(sample.input_ids[slice(*sample.spans["answer"])]))
    assert answer_text.strip() == needle.answer
    needle_text = tokenizer.decode(list(sample.input_ids[slice(*sample.spans["needle"])]))
    assert needle.statement.replace(" ", "") in needle_text.replace(" ", "")
    assert (
        sample.spans["needle"][0]
        <= sample.spans["answer"][0]
        < sample.spans["answer"][1]
        <= sample.spans["needle"][1]
    )
    assert list(sample.input_ids) == tokenizer(prompt)["input_ids"]
    # The statement is there once, at a sentence boundary.
    assert prompt.count(needle.statement) == 1
    start = prompt.index(needle.statement)
    # Taking the needle (and its glue) out gives back a prefix of the haystack, cut at the boundary.
    suffix = language.plain_prompt.format(context="", question=needle.question)
    assert prompt.endswith(suffix)
    context = prompt[: len(prompt) - len(suffix)]
    assert _haystack_insertions(context, start, needle.statement, language, builder.haystack)


def _haystack_insertions(context, start, statement, language, haystack) -> list[int]:
    """Ways the context can be a haystack prefix with the statement glued in at a sentence boundary,
    under the builder's rule: a joiner goes between the statement and non-space text."""
    found = []
    raw_before, raw_after = context[:start], context[start + len(statement) :]
    for glue_before in {"", language.joiner}:
        for glue_after in {"", language.joiner}:
            if not (raw_before.endswith(glue_before) and raw_after.startswith(glue_after)):
                continue
            before = raw_before[: len(raw_before) - len(glue_before)]
            after = raw_after[len(glue_after) :]
            wants_before = language.joiner if before and not before[-1].isspace() else ""
            wants_after = language.joiner if after and not after[0].isspace() else ""
            if (glue_before, glue_after) != (wants_before, wants_after):
                continue
            text = before + after
            if haystack.startswith(text) and len(before) in language.sentence_boundaries(text):
                found.append(len(before))
    return found


@pytest.mark.parametrize("code", BUILDER_LANGUAGES)
@pytest.mark.parametrize("length", [1200, 2000])
def test_samples_hold_the_needle_and_answer_where_expected(builders, tokenizer, code, length):
    builder = builders[code]
    needles = load_needles("builtin", code)
    for needle in needles:
        previous = -1.0
        for depth in DEPTHS:
            sample = builder.build(NiahCell(code, length, depth, needle))
            _check_sample(sample, builder, tokenizer)
            assert 0.8 * length <= len(sample.input_ids) <= length
            assert sample.meta["depth_actual"] >= previous
            previous = sample.meta["depth_actual"]
            if depth in (0.0, 1.0):
                assert sample.meta["depth_actual"] == depth
            if length >= 2000:
                assert abs(sample.meta["depth_actual"] - depth) < 0.1


@pytest.mark.parametrize(
    "code",
    ["en", "de", "zh"],
)
def test_the_character_before_a_needle_ends_a_sentence(builders, code):
    """Right before the statement: a sentence end mark, whitespace, or the start of the context."""
    builder, language = builders[code], builders[code].language
    misplaced = []
    for needle in load_needles("builtin", code):
        for length in (1200, 2000):
            for depth in DEPTHS:
                prompt = builder.build(NiahCell(code, length, depth, needle)).text
                start = prompt.index(needle.statement)
                if not (
                    start == 0 or prompt[start - 1] in language.sentence_end or prompt[start - 1].isspace()
                ):
                    misplaced.append((needle.id, length, depth, prompt[max(start - 10, 0) : start + 5]))
    assert not misplaced


def test_needle_at_depth_zero_opens_the_context_and_at_one_closes_it(builders):
    builder = builders["en"]
    needle = load_needles("builtin", "en")[0]
    first = builder.build(NiahCell("en", 1200, 0.0, needle))
    assert first.text.startswith(needle.statement + " ")
    last = builder.build(NiahCell("en", 1200, 1.0, needle))
    assert needle.statement + "\n\nQuestion: " + needle.question in last.text
    assert last.spans["needle"][0] > first.spans["needle"][0]


def test_chinese_needle_is_glued_without_spaces(builders):
    builder = builders["zh"]
    needle = load_needles("builtin", "zh")[2]
    sample = builder.build(NiahCell("zh", 1200, 0.5, needle))
    start = sample.text.index(needle.statement)
    window = sample.text[start - 1 : start + len(needle.statement) + 1]
    assert window[0] in "。！？\n"
    assert " " not in window


def test_length_beyond_the_model_context_is_refused(tokenizer):
    builder = NiahBuilder(
        load_language("en"), load_corpus("builtin", "en", 0), tokenizer, chat=False, max_positions=1024
    )
    needle = load_needles("builtin", "en")[0]
    assert len(builder.build(NiahCell("en", 1024, 0.5, needle)).input_ids) <= 1024
    with pytest.raises(TaskError, match="exceeds the model's context"):
        builder.build(NiahCell("en", 1025, 0.5, needle))


@pytest.mark.parametrize("code", BUILDER_LANGUAGES)
def test_length_beyond_the_corpus_is_refused(builders, code):
    needle = load_needles("builtin", code)[0]
    with pytest.raises(TaskError, match="corpus has"):
        builders[code].build(NiahCell(code, 200_000, 0.5, needle))


def _exact_length(tokenizer, language, haystack: str, needle: Needle) -> int:
    """The length at which the whole haystack is used, uncut, so the needle can go at its very end."""
    prompt = language.plain_prompt.format(context=needle.statement, question=needle.question)
    return len(tokenizer(prompt)["input_ids"]) + len(
        tokenizer(haystack, add_special_tokens=False)["input_ids"]
    )


def test_answer_merged_into_the_previous_word_is_lost_in_tokenization(tokenizer):
    """With no joiner, a haystack ending in 'th' and an answer starting with 'e' merge into one ' the'
    token that holds haystack characters, so the answer span cannot be found exactly."""
    assert tokenizer.tokenize(" the") == ["Ġthe"]
    english = load_language("en")
    haystack = "The tide turns at dawn. The boats wait by the shore for th"
    needle = Needle("ferry", "e ferry leaves at noon.", "What leaves at noon?", "e ferry")
    cell = NiahCell("en", _exact_length(tokenizer, english, haystack, needle), 1.0, needle)

    # With the usual joiner the statement stays apart and its answer is found exactly.
    spaced = NiahBuilder(english, haystack, tokenizer, chat=False, max_positions=None).build(cell)
    assert spaced.text.startswith(haystack + " " + needle.statement)
    assert tokenizer.decode(list(spaced.input_ids[slice(*spaced.spans["answer"])])).strip() == "e ferry"

    glued = NiahBuilder(
        dataclasses.replace(english, joiner=""), haystack, tokenizer, chat=False, max_positions=None
    )
    moved = glued.build(cell)
    # The boundary asked for merges; the builder moves the needle to the nearest boundary that works
    # and records where it went.
    assert isinstance(moved, Sample) and moved.meta["depth_actual"] < 1.0
    assert tokenizer.decode(list(moved.input_ids[slice(*moved.spans["answer"])])).strip() == "e ferry"


def test_answer_that_ends_inside_a_token_is_lost_in_tokenization(builders, tokenizer):
    word = "Brindlemoss"
    pieces = [piece.lstrip("Ġ") for piece in tokenizer.tokenize(" " + word)]
    ends = {sum(len(piece) for piece in pieces[: index + 1]) for index in range(len(pieces))}
    cut = next(index for index in range(2, len(word)) if index not in ends)
    statement = f"The password for the archive room is {word}."
    whole = Needle("whole", statement, "What is the password?", word)
    part = Needle("part", statement, "What is the password?", word[:cut])
    builder = builders["en"]
    sample = builder.build(NiahCell("en", 1200, 0.5, whole))
    assert tokenizer.decode(list(sample.input_ids[slice(*sample.spans["answer"])])).strip() == word
    skipped = builder.build(NiahCell("en", 1200, 0.5, part))
    assert isinstance(skipped, Skipped) and "merges with the neighbouring characters" in skipped.reason


def test_a_language_whose_sentence_marks_miss_the_script_is_refused_not_cut_short(tokenizer):
    """Chinese text with English sentence marks has no boundary to cut at: the prompt would be a few
    tokens long. It must be refused with the cause, never built silently short."""
    chinese = load_corpus("builtin", "zh", 0).replace("\n\n", "")
    wrong_marks = dataclasses.replace(load_language("zh"), sentence_end=".!?")
    builder = NiahBuilder(wrong_marks, chinese, tokenizer, chat=False, max_positions=None)
    needle = load_needles("builtin", "zh")[0]
    with pytest.raises(TaskError, match=r"would have only \d+ tokens: the haystack has no sentence end"):
        builder.build(NiahCell("zh", 1200, 0.5, needle))
    right = NiahBuilder(load_language("zh"), chinese, tokenizer, chat=False, max_positions=None)
    assert len(right.build(NiahCell("zh", 1200, 0.5, needle)).input_ids) >= 0.9 * 1200
