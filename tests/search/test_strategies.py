"""`v2t_jax.search.strategies`: the search as a value — its checks, what it records and says, and that every way of
running it (`Vec2Text.invert`, the reference's keyword call, the compiled program) gives the same texts."""

import dataclasses

import jax
import numpy as np
import pytest

from v2t_jax import api
from v2t_jax.search import strategies
from v2t_jax.search.strategies import Search, StrategyError


def test_constructors_are_the_searches_they_name():
    assert strategies.inverter_only() == Search(0, 1)
    assert strategies.greedy(5) == Search(5, 1) and strategies.greedy().steps == strategies.DEFAULT_STEPS
    assert strategies.sequence_beam(20, 4) == Search(20, 4)
    assert strategies.sequence_beam(20, 4).replace(prior=0.1) == Search(20, 4, prior=0.1)
    # a value: hashable (one compile per search) and frozen
    assert len({Search(3, 2), Search(3, 2), Search(3, 4)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        Search(3).steps = 4


def test_fields_are_stored_in_their_checked_form():
    s = Search(np.int64(3), np.int32(2), "0.25", np.int64(1), 0.9, 1)
    assert (s.steps, s.beam, s.prior, s.polish, s.stop_cosine, s.skip_repeated) == (3, 2, 0.25, 1, 0.9, True)
    assert type(s.steps) is int and type(s.beam) is int and type(s.polish) is int
    assert Search(3, 2) == Search(np.int64(3), np.int64(2))  # the same search, the same compiled program
    assert Search(2).stop == strategies.NO_STOP and Search(2, stop_cosine=0.5).stop == 0.5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": -1}, "steps must be in [0, 10000] (the paper runs 50), got -1"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"steps": 2, "beam": 0}, "the sequence beam width must be in [1, 64]"),
        ({"steps": 2, "beam": 65}, "the paper uses 8), got 65"),
        ({"steps": 2, "prior": -0.1}, "prior must be in [0, 100]"),
        ({"steps": 2, "prior": float("nan")}, "prior must be in [0, 100]"),
        ({"steps": 2, "prior": "x"}, "prior must be a number"),
        ({"polish": 101}, "polish (rounds of token swaps) must be in [0, 100]"),
        ({"polish": -1}, "polish (rounds of token swaps) must be in [0, 100]"),
        ({"stop_cosine": "high"}, "stop_cosine must be a number"),
        ({"stop_cosine": float("nan")}, "stop_cosine must be a number"),
        ({"steps": 2, "beam": 4, "token_beam": 2}, "the token beam width must be in [4, 64] (at least the sequence"),
        ({"steps": 2, "token_beam": 65}, "the token beam width must be in [1, 64]"),
        ({"steps": 2, "token_beam": 2.0}, "the token beam width must be a whole number"),
    ],
)
def test_a_search_that_cannot_run_is_one_line_error(kwargs, message):
    with pytest.raises(StrategyError) as info:
        Search(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, api.ModelError)  # what the API's callers already catch


def test_from_flags_names_the_flag_and_picks_the_default_steps():
    # no --patience: the commands' default with correction steps, 0 without them or with --no-skip-repeated
    greedy = Search(strategies.DEFAULT_STEPS, 1, patience=strategies.DEFAULT_PATIENCE)
    assert strategies.from_flags(None, 1) == greedy  # --sbeam B alone: B hypotheses of B candidates (vec2text's)
    assert strategies.from_flags(None, 4).token_beam is None
    # no --sbeam: DEFAULT_SBEAM hypotheses of DEFAULT_TOKEN_BEAM candidates (or of --token-beam's)
    default = greedy.replace(beam=strategies.DEFAULT_SBEAM, token_beam=strategies.DEFAULT_TOKEN_BEAM)
    assert strategies.from_flags(None) == default == strategies.default() and default.token_beam is not None
    assert strategies.from_flags(None, token_beam=16) == default.replace(token_beam=16)
    # without steps, no sequence beam; a token beam is the inverter's, and without one it decodes greedily
    assert strategies.from_flags(0, token_beam=16) == strategies.inverter_only(token_beam=16)
    assert strategies.from_flags(0) == strategies.inverter_only() and strategies.inverter_only().token_beam is None
    # ... whatever --sbeam says (it has no part at 0 steps): a token beam equal to it, or narrower, is still the
    # inverter's beam, not the coupled search's None (greedy); width 1 is the greedy decode
    assert strategies.from_flags(0, 4, token_beam=4).token_beam == 4 and Search(0, 4, token_beam=4).token_beam == 4
    assert strategies.from_flags(0, 8, token_beam=2).token_beam == 2 and Search(0, 4, token_beam=1).token_beam is None
    with pytest.raises(StrategyError, match=r"--token-beam must be in \[1, 64\], got 65"):
        strategies.from_flags(0, 4, token_beam=65)
    assert strategies.from_flags(None, 1, skip_repeated=False).patience == 0
    assert strategies.from_flags(0, 1) == strategies.default(has_corrector=False) == strategies.inverter_only()
    assert strategies.from_flags(None, 1, patience=0) == Search(strategies.DEFAULT_STEPS, 1)
    assert strategies.from_flags(5, 1, skip_repeated=False, patience=2).patience == 2
    assert strategies.from_flags(None, 1, has_corrector=False) == Search(0, 1)
    assert strategies.from_flags(3, 4, 0.1, 2, 0.99, False) == Search(3, 4, 0.1, 2, 0.99, False)
    bad = [
        ((-1, 1), "--steps must be in [0, 10000]"),
        ((2, 100), "--sbeam must be in [1, 64]"),
        ((2, 1, 1e3), "--prior must be in [0, 100]"),
        ((2, 1, 0, 500), "--polish must be in [0, 100]"),
        ((2, 4, 0, 0, None, True, None, 3), "--token-beam must be in [4, 64]"),
    ]
    for args, flag in bad:
        with pytest.raises(StrategyError, match=flag.replace("[", r"\[")):
            strategies.from_flags(*args)


def test_describe_and_record():
    assert strategies.inverter_only().describe() == "inverter only"
    assert Search(20, 4, 0.1, 2, 0.99).describe() == (
        "20 correction steps, sequence beam 4, language prior 0.1, 2 rounds of token swaps, stop at cosine 0.99"
    )
    assert Search(0, 1, prior=0.5).describe() == "inverter only"  # (a prior ranks nothing without a step or swap)
    assert Search(0, 1, prior=0.5, token_beam=8).describe() == "inverter only, token beam 8, language prior 0.5"
    # the keys a command's rows have always recorded, so runs written before resume alike
    assert Search(5, 2, 0.1, 1, None, False).record() == {
        "steps": 5, "sbeam": 2, "prior": 0.1, "polish": 1, "stop_cosine": None, "skip_repeated": False
    }  # fmt: skip
    # patience is recorded (and described) only when set: earlier runs resume as they were
    assert Search(5, patience=3).record()["patience"] == 3 and "patience" not in Search(5).record()
    assert Search(5, patience=3).describe() == (
        "5 correction steps, sequence beam 1, stop after 3 steps without a better hypothesis"
    )
    with pytest.raises(StrategyError, match=r"--patience must be in \[0, 10000\] \(0: off\), got -1"):
        strategies.from_flags(5, 1, patience=-1)
    # a token beam apart from the sequence beam likewise; equal to it, it is vec2text's search (one program)
    assert Search(5, 2, token_beam=8).record()["token_beam"] == 8 and "token_beam" not in Search(5, 2).record()
    assert Search(5, 2, token_beam=2) == Search(5, 2) and Search(5, 2, token_beam=2).token_beam is None
    assert Search(5, 2, token_beam=8).describe() == "5 correction steps, sequence beam 2, token beam 8"
    assert strategies.from_flags(5, 2, token_beam=8) == Search(5, 2, token_beam=8, patience=3)


def test_check_model_refuses_what_the_model_cannot_do():
    Search(3).check_model(has_corrector=True, in_graph=True)
    with pytest.raises(StrategyError, match="inverter only"):
        Search(3).check_model(has_corrector=False, in_graph=True)
    with pytest.raises(StrategyError, match="own vocabulary"):
        Search(0, polish=1).check_model(has_corrector=False, in_graph=False)
    with pytest.raises(StrategyError, match="black-box"):
        Search(0, polish=1).check_model(has_corrector=True, in_graph=True, black_box=True)


@pytest.fixture(scope="module")
def vectors(minilm, sentences):
    return minilm.embed_texts(sentences[:3], max_length=12)


def test_every_way_of_running_a_search_gives_the_same_texts(small_bundle, vectors):
    """`invert(vectors, search)` == the reference's keyword call == the compiled program of `compiled`; an
    inverter-only model refuses steps, and a non-Search is refused."""
    _, model = small_bundle
    search = strategies.sequence_beam(2, 2)
    texts, trace = model.invert(vectors, search, batch_size=3, return_trace=True, readable=False)
    assert model.invert_embeddings(vectors, num_steps=2, sequence_beam_width=2, batch_size=3, readable=False) == texts
    # (the batch of 3 again: the same compiled stream; the trace above ran the batch loop, these two the stream)
    assert (
        api.invert_embeddings(vectors, model, num_steps=2, sequence_beam_width=2, batch_size=3, readable=False) == texts
    )
    out = jax.device_get(model.compiled(3, search, score=True)(model.params, model.check_embeddings(vectors)))
    assert [model.decode(row) for row in out["ids"]] == texts
    np.testing.assert_allclose(out["cosine"], trace["cosine"], atol=1e-6)
    assert model.invert(vectors) == model.invert(vectors, strategies.inverter_only())
    # a token beam wider than the sequence beam: the batch loop (traced) and the stream give the same texts
    wide = search.replace(token_beam=3)
    texts3, _ = model.invert(vectors, wide, batch_size=3, return_trace=True, readable=False)
    assert model.invert(vectors, wide, batch_size=3, readable=False) == texts3
    with pytest.raises(api.ModelError, match="must be a v2t_jax.search.strategies.Search"):
        model.invert(vectors, 20)
    inverter_only = api.build(model.program.inverter, model.params["inverter"], None, None, model.embedder, 12)
    with pytest.raises(StrategyError, match="inverter only"):
        inverter_only.invert(vectors, search)


def test_results_table_rows_name_the_search_they_run():
    """experiments/results_table.py's row syntax: BxB is vec2text's B; at 0 steps only a token beam enters (the
    inverter's); each row's run key, label and table name."""
    from conftest import experiment

    mod = experiment("results_table")
    rows = mod.parse_rows("0:1,0:1x8,0:4x4,20:4x4,20:1x8:0:0:3,20:2x8,20:4:0.1")
    # (0:4x4 is the inverter's token beam of 4, as `v2t invert --steps 0 --sbeam 4 --token-beam 4` runs it)
    assert [r.label for r in rows] == ["0:1", "0:1x8", "0:1x4", "20:4", "20:1x8:0:0:3", "20:2x8", "20:4:0.1"]
    assert [r.name for r in rows] == [
        "step 0 (inverter)", "step 0 (inverter, token beam 8)", "step 0 (inverter, token beam 4)", "20 steps + sbeam 4",
        "20 steps + sbeam 1 x token beam 8 + patience 3", "20 steps + sbeam 2 x token beam 8",
        "20 steps + sbeam 4 + prior 0.1",
    ]  # fmt: skip
    assert [mod.run_name(r.run()) for r in rows] == ["1", "1x8", "1x4", "4", "1x8k3", "2x8", "4p0.1"]
    # (beam, prior, polish, patience, own steps, token beam): 20:4x4 is vec2text's 20:4
    assert rows[1].run() == (1, 0.0, 0, 0, None, 8) and rows[3].run() == (4, 0.0, 0, 0, None, 0)


def test_consensus_picks_the_text_the_weighted_candidates_agree_with():
    """Known answers of experiments/search_consensus.py's selection: with a small tau the closest by cosine; with
    near-equal weights the text the others agree with."""
    from conftest import experiment

    mod = experiment("search_consensus")
    utility = np.array([[100, 0, 0], [0, 100, 90], [0, 90, 100]], float)  # texts 1 and 2 agree, 0 stands alone
    cos = np.array([0.80, 0.79, 0.78])
    assert mod.consensus(cos, 1e-4, utility) == 0
    assert mod.consensus(cos, 1e3, utility) == 1  # the two that agree, of which 1 weighs a little more


def test_one_spelling_of_a_searchs_widths():
    """`strategies.parse_widths` reads what `widths_label` writes; bench's --beam and the results table's rows go
    through them."""
    for text, widths in [("4", (4, None)), ("2x8", (2, 8)), (" 1x32 ", (1, 32))]:
        assert strategies.parse_widths(text) == widths
        assert strategies.parse_widths(strategies.widths_label(*widths)) == widths
    assert [strategies.widths_label(*w) for w in [(4, None), (4, 4), (2, 8), (1, 0)]] == ["4", "4", "2x8", "1"]
    for bad in ("", "x8", "2x", "2x8x1", "-1", "2×8", "b"):
        with pytest.raises(strategies.StrategyError, match="a search's widths are B or BxW"):
            strategies.parse_widths(bad)


def test_a_rerun_takes_the_search_its_interrupted_run_recorded_where_no_flag_says():
    """`strategies.resumed_flags`: flags left out come from the interrupted run's record (a record from before the
    token beam: its sbeam; before patience: 0); given flags, no record or a 0-step record change nothing."""
    none = {"sbeam": None, "token_beam": None, "patience": None, "prior": 0.0}
    old_greedy = {"steps": 20, "sbeam": 1, "skip_repeated": True}
    flags, taken = strategies.resumed_flags(old_greedy, none)
    assert flags == {"sbeam": 1, "token_beam": 1, "patience": 0, "prior": 0.0}
    assert taken == ["--sbeam 1", "--patience 0"]
    default = strategies.Search(20, strategies.DEFAULT_SBEAM, patience=strategies.DEFAULT_PATIENCE,
                                token_beam=strategies.DEFAULT_TOKEN_BEAM).record()  # fmt: skip
    flags, taken = strategies.resumed_flags(default, none)
    assert taken == [] and strategies.from_flags(20, **flags) == strategies.from_flags(20)
    given = {**none, "sbeam": 4, "patience": 2}
    assert strategies.resumed_flags(old_greedy, given) == (given, [])
    assert strategies.resumed_flags(None, none) == (none, [])
    assert strategies.resumed_flags({"steps": 0, "sbeam": 1}, none) == (none, [])
    no_skip = {"steps": 20, "sbeam": 4, "token_beam": 4, "skip_repeated": False, "patience": 0}
    assert strategies.resumed_flags(no_skip, none)[0]["patience"] is None  # (from_flags' 0 without skipping)
