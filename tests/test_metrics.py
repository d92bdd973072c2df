"""Known-answer tests of the inversion metrics."""

import pytest

from v2t_jax import metrics


def test_identical_texts_score_perfectly():
    refs = ["the cat sat on the mat .", "a quick brown fox jumps over the lazy dog"]
    m = metrics.text_metrics(refs, refs)
    assert m["bleu"] == pytest.approx(100.0) and m["corpus_bleu"] == pytest.approx(100.0)
    assert m["token_f1"] == 1.0 and m["exact"] == 1.0


def test_disjoint_texts_score_zero():
    m = metrics.text_metrics(["alpha beta gamma delta"], ["one two three four"])
    assert m["bleu"] == 0.0 and m["token_f1"] == 0.0 and m["exact"] == 0.0


def test_token_f1_hand_worked():
    # pred set {the, cat, sat, down} ; ref set {the, cat, is, on, mat} ; overlap {the, cat} = 2
    # precision 2/4, recall 2/5 -> F1 = 2 * 0.5 * 0.4 / 0.9 = 4/9
    assert metrics.token_f1("the cat sat down the", "the cat is on the mat") == pytest.approx(4 / 9)


def test_partial_match_is_between():
    m = metrics.text_metrics(["the cat sat on the hat"], ["the cat sat on the mat"])
    assert 0 < m["bleu"] < 100 and m["exact"] == 0.0


def test_normalize_case_and_whitespace():
    assert metrics.normalize("  The  Cat\nSat ") == "the cat sat"


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError):
        metrics.text_metrics(["a"], ["a", "b"])


def test_evaluate_scores_after_normalising_both_sides():
    """`v2t_jax.evaluate`, which training, the demo, `v2t invert --references`, the audit and the results table
    share: case and spacing do not count; token recall is over the reference's distinct word tokens; a record
    counts as half recovered at recall >= 0.5; an empty reference recovers nothing."""
    from v2t_jax import evaluate

    preds = ["The  Cat sat", "a dog", "x"]
    refs = ["the cat sat", "the cat sat on the mat", ""]
    rows = evaluate.per_record(preds, refs)
    assert rows[0]["exact"] is True and rows[0]["token_recall"] == 1.0 and rows[0]["bleu"] > 99
    assert rows[1]["token_recall"] == 0.0 and not rows[1]["exact"]  # {the, cat, sat, on, mat}: none of them
    assert evaluate.token_recall("the mat", "the cat sat on the mat") == 2 / 5
    assert rows[2]["token_recall"] == 0.0
    scores = evaluate.score(preds, refs, [1.0, 0.5, 0.0])
    assert scores["half_recovered"] == 1 / 3 and scores["exact"] == 1 / 3 and scores["cosine"] == 0.5
    assert "half the tokens recovered in 33.3% of 3" in evaluate.summary_line(scores)
