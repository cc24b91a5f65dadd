"""Copy events and retrieval scores on hand-made records, and the per-language answer checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from rouge_score import rouge_scorer

from babelheads.probe import StepRecords
from babelheads.scoring import SCORE_VARIANTS, answer_tokens, check_answer, copy_events, retrieval_scores

# Context: the needle is tokens [2, 8), the answer tokens [4, 7) = 60 61 62. Tokens 60, 62 and 61
# also occur outside the answer (positions 1, 3 and 8), so a head looking there sees the right token
# in the wrong place.
INPUT_IDS = (50, 60, 52, 62, 60, 61, 62, 54, 61, 56, 57, 58)
NEEDLE = (2, 8)
ANSWER = (4, 7)


def _records(top1: list[list[list[int]]]) -> StepRecords:
    """Records with the given top-1 peaks, shape (steps, layers, heads). The second-best position of
    every head is always a perfect copy, so only a scorer that reads top-2 would count it."""
    peaks = np.asarray(top1, dtype=np.int64)
    steps, layers, heads = peaks.shape
    perfect = np.broadcast_to((ANSWER[0] + np.arange(steps) % 3).reshape(steps, 1, 1), peaks.shape)
    second = np.where(peaks == perfect, 0, perfect)
    positions = np.stack([peaks, second], axis=-1).reshape(steps, 1, layers, heads, 2)
    weights = np.broadcast_to(np.array([0.6, 0.3], dtype=np.float32), positions.shape).copy()
    return StepRecords(positions=positions, weights=weights)


def _by_head(*heads: list[int]) -> list[list[list[int]]]:
    """Per-head peak sequences (one list per head, all on layer 0) into (steps, 1, heads)."""
    return [[[head[step] for head in heads]] for step in range(len(heads[0]))]


def test_a_head_peaking_on_each_answer_token_as_it_is_emitted_scores_one():
    output = [60, 61, 62, 2]
    events = copy_events(_records(_by_head([4, 5, 6, 0])), output, INPUT_IDS, NEEDLE, ANSWER)
    assert events.copy[:, 0, 0].tolist() == [True, True, True, False]
    assert events.in_answer[:, 0, 0].tolist() == [True, True, True, False]
    assert events.peak[:, 0, 0].tolist() == [4, 5, 6, 0]
    scores = retrieval_scores(events, ANSWER)
    assert set(scores) == set(SCORE_VARIANTS)
    assert scores["paper"].shape == scores["official"].shape == (1, 1)
    assert scores["paper"][0, 0] == pytest.approx(1.0)
    assert scores["official"][0, 0] == pytest.approx(1.0)


def test_partial_copying_scores_copied_over_span():
    output = [60, 61, 62, 2]
    events = copy_events(_records(_by_head([4, 0, 6, 9], [9, 9, 6, 9])), output, INPUT_IDS, NEEDLE, ANSWER)
    scores = retrieval_scores(events, ANSWER)
    assert scores["paper"][0].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert scores["official"][0].tolist() == pytest.approx([2 / 3, 1 / 3])


def test_repeated_copies_raise_official_above_paper():
    # The model emits 60 three times and 61 once; the head copies position 4 three times.
    output = [60, 60, 60, 61]
    events = copy_events(_records(_by_head([4, 4, 4, 5])), output, INPUT_IDS, NEEDLE, ANSWER)
    assert events.copy[:, 0, 0].all()
    scores = retrieval_scores(events, ANSWER)
    assert scores["paper"][0, 0] == pytest.approx(2 / 3)  # positions 4 and 5
    assert scores["official"][0, 0] == pytest.approx(4 / 3)  # four copy events


def test_official_can_exceed_one_but_paper_cannot():
    answer = (4, 5)  # one answer token, 60
    output = [60, 60, 60]
    events = copy_events(_records(_by_head([4, 4, 4])), output, INPUT_IDS, NEEDLE, answer)
    scores = retrieval_scores(events, answer)
    assert scores["official"][0, 0] == pytest.approx(3.0)
    assert scores["paper"][0, 0] == pytest.approx(1.0)


def test_a_peak_in_the_span_with_another_emitted_token_is_not_a_copy():
    output = [60, 61, 62]
    events = copy_events(_records(_by_head([5, 6, 4])), output, INPUT_IDS, NEEDLE, ANSWER)
    assert events.in_answer[:, 0, 0].all()
    assert events.in_needle[:, 0, 0].all()
    assert not events.copy.any()
    scores = retrieval_scores(events, ANSWER)
    assert scores["paper"][0, 0] == 0 and scores["official"][0, 0] == 0


def test_a_peak_outside_the_answer_span_on_the_same_token_is_not_a_copy():
    # Positions 1, 8 and 3 hold 60, 61 and 62, the emitted tokens; 3 is in the needle, not the answer.
    output = [60, 61, 62]
    events = copy_events(_records(_by_head([1, 8, 3])), output, INPUT_IDS, NEEDLE, ANSWER)
    assert [INPUT_IDS[peak] for peak in events.peak[:, 0, 0]] == output
    assert events.in_needle[:, 0, 0].tolist() == [False, False, True]
    assert not events.in_answer.any()
    assert not events.copy.any()
    scores = retrieval_scores(events, ANSWER)
    assert scores["paper"][0, 0] == 0 and scores["official"][0, 0] == 0


def test_a_head_that_saw_no_keys_never_copies():
    # -1 marks a missing peak; it must not wrap around to the last token or count in a span from 0.
    ids = (60, 61, 62, 60)
    output = [60, 60]
    events = copy_events(_records(_by_head([-1, -1])), output, ids, (0, 4), (0, 4))
    assert not events.in_needle.any() and not events.in_answer.any() and not events.copy.any()


def test_scores_are_kept_per_layer_and_head():
    output = [60, 61, 62, 2]
    # Layer 0: a perfect copier and a mismatch; layer 1: an outside looker and a single copy.
    top1 = [
        [[4, 5], [1, 4]],
        [[5, 6], [8, 0]],
        [[6, 4], [3, 0]],
        [[0, 5], [0, 0]],
    ]
    events = copy_events(_records(top1), output, INPUT_IDS, NEEDLE, ANSWER)
    scores = retrieval_scores(events, ANSWER)
    np.testing.assert_allclose(scores["paper"], [[1.0, 0.0], [0.0, 1 / 3]])
    np.testing.assert_allclose(scores["official"], [[1.0, 0.0], [0.0, 1 / 3]])


def test_random_records_keep_paper_within_official_and_one():
    rng = np.random.default_rng(0)
    steps, layers, heads = 30, 3, 4
    # Mostly near the answer, so that some heads copy often; -1 and far positions too.
    top1 = rng.choice([-1, 0, 1, 3, 4, 4, 5, 5, 6, 6, 8], size=(steps, layers, heads)).tolist()
    output = rng.choice([60, 61, 62], size=steps).tolist()
    events = copy_events(_records(top1), output, INPUT_IDS, NEEDLE, ANSWER)
    scores = retrieval_scores(events, ANSWER)
    assert events.copy.any()
    assert (scores["paper"] <= 1.0).all()
    assert (scores["paper"] <= scores["official"] + 1e-12).all()
    assert ((scores["paper"] > 0) == (scores["official"] > 0)).all()
    assert scores["official"].max() > 1.0


def test_steps_and_output_tokens_must_agree():
    with pytest.raises(ValueError, match="3 recorded steps but 2 output tokens"):
        copy_events(_records(_by_head([4, 5, 6])), [60, 61], INPUT_IDS, NEEDLE, ANSWER)


# --- answer checks ---------------------------------------------------------------------------------


def test_german_answer_is_found_in_a_sentence():
    found = check_answer("Silberkelle", "Die Siegercrew bekommt eine Silberkelle.", "words")
    assert found.rouge1_recall == 1.0 and found.contains and found.success
    missed = check_answer("Silberkelle", "Die Siegercrew bekommt eine Goldkelle.", "words")
    assert missed.rouge1_recall == 0.0 and not missed.contains and not missed.success
    umlaut = check_answer("senfgelb", "Die Türen müssen SENFGELB sein.", "words")
    assert umlaut.success and umlaut.contains


def test_chinese_answer_is_segmented_with_jieba():
    assert answer_tokens("陶瓷青蛙", "jieba") == ["陶瓷", "青蛙"]
    found = check_answer("陶瓷青蛙", "她总是把备用钥匙藏在陶瓷青蛙里。", "jieba")
    assert found.rouge1_recall == 1.0 and found.contains and found.success
    half = check_answer("陶瓷青蛙", "她把钥匙藏在陶瓷花盆里。", "jieba")
    assert half.rouge1_recall == pytest.approx(0.5)
    assert not half.contains and not half.success
    assert "。" not in answer_tokens("她把钥匙藏在陶瓷花盆里。", "jieba")


class _WordsTokenizer:
    """An independent ``\\w+`` tokenizer, lower-cased, for rouge-score's own computation."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


ENGLISH_CASES = [
    # expected, generated, hand-counted recall
    ("silver ladle", "The crew won a silver spoon.", 1 / 2),
    ("mustard yellow", "Mustard-yellow, of course.", 1.0),
    ("the red locker", "A locker that is red", 2 / 3),
    ("the the cat", "the cat sat", 2 / 3),  # counts are clipped: one 'the' matches once
    ("46-19-83", "The combination is 46-19-38.", 2 / 3),
    ("ceramic frog", "Under a flower pot.", 0.0),
]


@pytest.mark.parametrize(("expected", "generated", "hand"), ENGLISH_CASES)
def test_words_recall_matches_rouge_score_and_a_hand_count(expected, generated, hand):
    reference = rouge_scorer.RougeScorer(["rouge1"], tokenizer=_WordsTokenizer())
    rouge = reference.score(expected, generated)["rouge1"].recall
    recall = check_answer(expected, generated, "words").rouge1_recall
    assert recall == pytest.approx(rouge)
    assert recall == pytest.approx(hand)


def test_success_needs_recall_strictly_above_the_threshold():
    half = check_answer("silver ladle", "a silver spoon", "words")
    assert half.rouge1_recall == 0.5
    assert not half.success
    assert not check_answer("silver ladle", "a silver spoon", "words", threshold=0.5).success
    assert check_answer("silver ladle", "a silver spoon", "words", threshold=0.49).success
    assert check_answer("the red locker", "the red door", "words").success  # 2/3 > 0.5
    assert not check_answer("silver ladle", "a silver ladle", "words", threshold=1.0).success


def test_contains_ignores_case_and_spacing():
    assert check_answer("Mustard  Yellow", "paint it mustard yellow", "words").contains
    assert not check_answer("mustard yellow", "mustard-yellow paint", "words").contains


def test_chars_tokenizer_splits_cjk_and_keeps_latin_words_whole():
    assert answer_tokens("在Velmora的榅桲 Pie, 42!", "chars") == [
        "在",
        "velmora",
        "的",
        "榅",
        "桲",
        "pie",
        "42",
    ]
    assert answer_tokens("カタカナとひらがな", "chars") == list("カタカナとひらがな")
    partial = check_answer("陶瓷青蛙", "青蛙", "chars")
    assert partial.rouge1_recall == pytest.approx(0.5)
    assert check_answer("Quillomere号", "答案是Quillomere号", "chars").rouge1_recall == 1.0


def test_chars_tokenizer_splits_compatibility_ideographs_after_latin():
    assert answer_tokens("a\ufa0e", "chars") == ["a", "\ufa0e"]


def test_unknown_answer_tokenizer_is_refused():
    with pytest.raises(ValueError, match="Unknown answer tokenizer"):
        answer_tokens("x", "bytes")


def test_the_per_step_s_counts_needle_tokens_outside_the_answer_and_the_graded_s_reads_top_k():
    # Step 0 emits 60: head 0 peaks on position 1 (60, outside the needle), head 1 on 4 (60, in the
    # answer), head 2 on 3 (62). Step 1 emits 62: head 2's peak, position 3, is a needle token outside
    # the answer: S = 1 but no copy in Wu et al.'s sense.
    output = [60, 62]
    events = copy_events(_records(_by_head([1, 1], [4, 4], [3, 3])), output, INPUT_IDS, NEEDLE, ANSWER)
    assert events.needle_copy[:, 0].tolist() == [[False, True, False], [False, False, True]]
    assert events.copy[:, 0].tolist() == [[False, True, False], [False, False, False]]
    assert events.peak_token[:, 0].tolist() == [[60, 60, 62], [60, 60, 62]]
    # Graded S: the weights (0.6 top-1, 0.3 second) of top-k needle positions holding the emitted token.
    # Second positions are 4 (60) at step 0 (0 for head 1, whose peak is 4) and 5 (61) at step 1.
    np.testing.assert_allclose(
        events.needle_match_weight[:, 0], [[0.3, 0.6, 0.3], [0.0, 0.0, 0.6]], rtol=1e-6
    )
