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


def test_one_evaluator_scores_a_run_a_slice_and_rows_alike():
    """`evaluate.Evaluator`: `run` scores what predict_fn gives for every record (plus the first text as the
    example), `score`/`per_record`/`rows` a batch of records from `first`, all equal to the module's functions on
    the same references; mismatched counts are errors."""
    from v2t_jax import evaluate

    refs = ["the cat sat", "the cat sat on the mat", "a dog ran"]
    preds = ["The  Cat sat", "a dog", "a dog ran"]
    seen = []

    def predict(params):
        seen.append(params)
        return preds, [0.9, 0.5, 0.7]

    ev = evaluate.Evaluator(refs, predict)
    out = ev.run("p")
    assert seen == ["p"] and out.pop("example") == "the cat sat"
    assert out == evaluate.score(preds, refs, [0.9, 0.5, 0.7]) and len(ev) == 3
    assert ev.score(preds[1:], [0.5, 0.7], first=1) == evaluate.score(preds[1:], refs[1:], [0.5, 0.7])
    assert ev.per_record(preds[2:], first=2) == evaluate.per_record(preds[2:], refs[2:])
    rows = ev.rows(preds[:2], 0, readable=lambda xs: [x.upper() for x in xs])
    assert [r["reference"] for r in rows] == ["THE CAT SAT", "THE CAT SAT ON THE MAT"]  # shown as people write
    assert rows[0]["exact"] is True and rows[1] == {
        "reference": "THE CAT SAT ON THE MAT",
        **ev.per_record(preds[1:2], 1)[0],
    }
    with pytest.raises(ValueError, match="2 recoveries from record 2 for 3 references"):
        ev.score(preds[:2], first=2)
    with pytest.raises(ValueError, match="no predict_fn"):
        evaluate.Evaluator(refs).run()
    with pytest.raises(ValueError, match="predict_fn gave 2 texts for 3 records"):
        evaluate.Evaluator(refs, lambda p: (preds[:2], None)).run()


def test_the_evaluator_of_ids_is_the_embedders_view(minilm, sentences):
    """References made from stored embedder ids equal those made from the texts (in the embedder's vocabulary)."""
    from v2t_jax import evaluate
    from v2t_jax.vocabulary import Vocabulary

    vocab = Vocabulary.of_embedder(minilm, 16)
    ids = minilm.tokenize(sentences[:3], 16)
    by_ids = evaluate.Evaluator.of_ids(vocab, minilm, ids)
    by_text = evaluate.Evaluator.of_texts(vocab, minilm, sentences[:3], 16)
    assert by_ids.references == by_text.references and all(by_ids.references)


def test_a_metric_registered_once_reaches_rows_means_and_summaries(monkeypatch):
    """A new metric is one entry in `evaluate.METRICS`: each record's row, `score`'s means and
    `summary_of_rows` carry it, computed on the normalised texts."""
    from v2t_jax import evaluate

    seen = []

    def length_ratio(p, r):
        seen.append((p, r))
        return len(p) / max(1, len(r))

    monkeypatch.setitem(evaluate.METRICS, "length_ratio", length_ratio)
    preds, refs = ["The  Cat", "a dog ran far"], ["the cat sat", "a dog ran"]
    rows = evaluate.per_record(preds, refs)
    assert [r["length_ratio"] for r in rows] == [7 / 11, 13 / 9] and seen[0] == ("the cat", "the cat sat")
    assert evaluate.score(preds, refs)["length_ratio"] == (7 / 11 + 13 / 9) / 2
    assert evaluate.summary_of_rows(rows)["length_ratio"] == (7 / 11 + 13 / 9) / 2
