"""End to end: a tiny inverter + corrector trained in a fixture (tests/conftest.py `tiny_models`) invert
embeddings through the compiled N-step program and through host-side re-embedding."""

import json

import jax
import numpy as np
import pytest

from conftest import CORPUS, ROOT, experiment, tiny_config
from v2t_jax.training import warm_start
from v2t_jax import api, bundle, cli
from v2t_jax.search import drivers
from v2t_jax.search.strategies import Search
from v2t_jax.models import embedders

# the marked tier: end to end on models trained here (the session's tiny inverter + corrector)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tiny_models):
    return api.load_model(tiny_models["corrector"])


@pytest.fixture(scope="module")
def targets(model, sentences):
    return model.embedder.embed_texts(sentences[:6])


def test_training_runs_logged_what_a_user_reads(tiny_models):
    rows = [json.loads(x) for x in (tiny_models["corrector_run"] / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in rows if r["kind"] == "eval"][-1]
    # one greedy correction of the cached hypotheses, next to those hypotheses on the same rows
    for key in ("bleu", "cosine", "hypothesis_bleu", "hypothesis_cosine"):
        assert np.isfinite(last_eval[key])
    meta = json.loads((tiny_models["corrector"] / api.BUNDLE_FILE).read_text())
    assert meta["corrector"] is not None and meta["source"]["inverter"].endswith("inverter")
    # the bundle's inverter is the inverter bundle's, bit for bit
    inv = api.load_model(tiny_models["inverter"])
    for a, b in zip(
        jax.tree_util.tree_leaves(inv.params["inverter"]),
        jax.tree_util.tree_leaves(api.load_model(tiny_models["corrector"]).params["inverter"]),
    ):
        np.testing.assert_array_equal(a, b)


def test_inversion_outputs_strings_and_best_cosine_never_decreases(model, targets):
    texts, trace = model.invert_embeddings(targets, num_steps=4, sequence_beam_width=3, return_trace=True)
    assert len(texts) == len(targets) and all(isinstance(t, str) for t in texts)
    for i, row in enumerate(trace["steps"]):
        cos = np.asarray(row["cosines"])
        assert len(row["hypotheses"]) == len(cos) == 5
        assert np.all(np.diff(cos) >= 0), cos
        assert row["hypotheses"][-1] == texts[i] and cos[-1] == pytest.approx(trace["cosine"][i])
    # the search can only add: after 4 steps at beam 3 the best cosine is at least step 0's
    assert np.mean([r["cosines"][-1] - r["cosines"][0] for r in trace["steps"]]) >= 0


def test_same_model_same_outputs(model, targets, tiny_models):
    a = model.invert_embeddings(targets, num_steps=3, sequence_beam_width=2)
    b = model.invert_embeddings(targets, num_steps=3, sequence_beam_width=2)
    c = api.load_model(tiny_models["corrector"]).invert_embeddings(targets, num_steps=3, sequence_beam_width=2)
    assert a == b == c


def test_same_seed_same_model(tmp_path, tiny_data, tiny_models):
    """Retraining the corrector with the same config and seed gives the same parameters bit for bit."""
    from v2t_jax.training import checkpoint, train

    overrides = ["--config.num_steps=200", "--config.eval_every=200", "--config.checkpoint_every=100"]
    overrides += ["--config.learning_rate=3e-3", f"--config.inverter={tiny_models['inverter']}"]
    train.train(tiny_config(tiny_data, *overrides, config_file="corrector.py"), tmp_path / "again")
    a = checkpoint.read_state_as_numpy(tmp_path / "again", 200)["params"]
    b = checkpoint.read_state_as_numpy(tiny_models["corrector_run"], 200)["params"]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "steps,beam,prior,width",
    [(0, 1, 0.0, None), (0, 1, 0.5, 3), (3, 1, 0.0, None), (3, 3, 0.0, None), (3, 3, 0.5, None), (3, 2, 0.0, 4)],
)
def test_host_side_re_embedding_matches_the_compiled_program(model, targets, steps, beam, prior, width):
    """The black-box path runs the same algorithm: with an injective decode (ids written out as numbers) and
    a black box that embeds those ids exactly as the program does, ids and cosines agree with `invert`."""
    p = model.program

    def decode(ids):
        return " ".join(str(int(t)) for t in ids)

    def black_box(texts):
        ids = np.array([[int(x) for x in t.split()] for t in texts], np.int32)
        return np.asarray(embedders.embed_decoder_ids(p.embedder, model.params["embedder"], ids, p.cls_id, p.pad_id))

    compiled = jax.device_get(
        model._run(targets, Search(steps, beam, prior=prior, token_beam=width, skip_repeated=False))
    )
    host = drivers.invert_host(
        p,
        model.params,
        targets,
        Search(steps, beam, prior=prior, token_beam=width, skip_repeated=False),
        decode,
        black_box,
    )
    np.testing.assert_array_equal(host["step_ids"], compiled["step_ids"])
    np.testing.assert_allclose(host["step_cosine"], compiled["step_cosine"], atol=1e-5)
    if steps:
        np.testing.assert_allclose(host["step_score"], compiled["step_score"], atol=1e-5)


def test_host_side_with_a_text_black_box(model, targets):
    """A black box that sees only strings: outputs are strings, best cosine never decreases, and the reported
    cosine is the black box's embedding of the reported text against the target; each distinct string is
    embedded once."""
    seen: list[str] = []

    def black_box(texts):
        seen.extend(texts)
        return model.embedder.embed_texts(texts)

    texts, trace = model.invert_embeddings(
        targets, num_steps=3, sequence_beam_width=2, embed_fn=black_box, return_trace=True
    )
    assert all(isinstance(t, str) for t in texts) and len(seen) == len(set(seen))
    for row in trace["steps"]:
        assert np.all(np.diff(row["cosines"]) >= 0)
    again = np.asarray(embedders.cosine(model.embedder.embed_texts(texts), targets))
    np.testing.assert_allclose(trace["cosine"], again, atol=1e-5)

    with pytest.raises(ValueError, match="embed_fn returned shape"):
        model.invert_embeddings(targets, embed_fn=lambda t: np.zeros((len(t), 7), np.float32))


def test_cli_invert_with_correction_steps(tmp_path, model, targets, tiny_models):
    np.save(tmp_path / "v.npy", targets)
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(tiny_models["corrector"])]
    args += ["--steps", "2", "--sbeam", "2", "--trace", "--output", str(tmp_path / "o.jsonl"), "--quiet"]
    assert cli.main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == len(targets)
    assert rows[0]["text"] == model.invert_embeddings(targets[:1], num_steps=2, sequence_beam_width=2)[0]
    assert all(len(r["steps"]["hypotheses"]) == 3 for r in rows)
    # the full loop (every step for every vector) writes the same texts
    args[args.index(str(tmp_path / "o.jsonl"))] = str(tmp_path / "full.jsonl")
    assert cli.main(args + ["--no-skip-repeated"]) == 0
    full = [json.loads(x) for x in (tmp_path / "full.jsonl").read_text().splitlines()]
    assert [r["text"] for r in full] == [r["text"] for r in rows]


def test_skip_repeated_on_a_trained_model_skips_work_and_keeps_the_texts(model, targets):
    """On a trained model hypotheses reach fixed points: the skipping loop stops those examples (and reports
    which examples worked at each step) and returns the full loop's ids."""
    fast = jax.device_get(model._run(targets, Search(6, 2, skip_repeated=True)))
    full = jax.device_get(model._run(targets, Search(6, 2, skip_repeated=False)))
    np.testing.assert_array_equal(fast["step_ids"], full["step_ids"])
    assert full["step_active"].all() and not fast["step_active"].all()


def test_corrector_config_errors_are_one_line(capsys, tmp_path, tiny_data, tiny_models):
    base = ["train", "--config", str(ROOT / "configs" / "corrector.py") + ":tiny", "--workdir", str(tmp_path / "w")]
    base += [f"--config.data.corpus={CORPUS}", f"--config.data.data_dir={tiny_data}", "--config.progress=false"]
    for extra, message in [
        ([], "--config.inverter=BUNDLE"),
        ([f"--config.inverter={tiny_models['inverter_run']}"], "export a bundle first"),
        ([f"--config.inverter={tmp_path}"], "not a v2t model bundle"),
        ([f"--config.inverter={tiny_models['inverter']}", "--config.max_length=16"], "at 32 tokens"),
    ]:
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err


def test_results_table_script(tmp_path, tiny_data, tiny_models):
    """experiments/results_table.py on the tiny models: rows from one run per beam width (a shorter row is a
    prefix of the trace), markdown + JSON + PNG written."""
    mod = experiment("results_table")
    out = tmp_path / "table"
    rows = "0:1,1:1,2:1,2:2,2:2:0.5,2:1:0:2"
    args = ["--checkpoint", str(tiny_models["corrector"]), "--n", "6", "--rows", rows]
    args += ["--corpus", str(CORPUS), "--data-dir", str(tiny_data), "--out", str(out)]
    assert mod.main(args) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    got = [(r["steps"], r["beam"], r["prior"], r["polish"]) for r in result["rows"]]
    assert got == [(0, 1, 0, 0), (1, 1, 0, 0), (2, 1, 0, 0), (2, 2, 0, 0), (2, 2, 0.5, 0), (2, 1, 0, 2)]
    assert result["n"] == 6 and len(result["curves"]["1"]) == 3
    assert set(result["seconds"]) == {"1", "2", "2p0.5", "1s2@2"}
    # seconds per vector on each run's longest row only
    assert [r["s_per_vector"] is not None for r in result["rows"]] == [False, False, True, True, True, True]
    md = out.with_suffix(".md").read_text()
    assert "| 2 steps + sbeam 2 + prior 0.5 |" in md and "| 2 steps + 2 swap rounds |" in md
    # swaps are kept only when they raise the cosine: the polished row is at least the unpolished one
    assert result["rows"][5]["cosine"] >= result["rows"][2]["cosine"] - 1e-6
    assert result["rows"][1]["cosine"] == pytest.approx(result["curves"]["1"][1]["cosine"])
    # best-so-far: the mean cosine never falls with more steps, and beam 2 starts where beam 1 does
    cos = [c["cosine"] for c in result["curves"]["1"]]
    assert cos == sorted(cos) and result["curves"]["2"][0] == result["curves"]["1"][0]
    assert (
        out.with_suffix(".png").stat().st_size > 1000 and "| 2 steps + sbeam 2 |" in out.with_suffix(".md").read_text()
    )
    assert not (tmp_path / "table.runs").exists()  # the finished runs' store goes once the table is written


@pytest.mark.slow
def test_search_consensus_script(tmp_path, tiny_data, tiny_models):
    """experiments/search_consensus.py on the tiny models: the search's text, the pool's best by cosine and the
    consensus rows, scored; the pool holds the search's text and the proposals."""
    mod = experiment("search_consensus")
    out = tmp_path / "cons"
    args = ["--checkpoint", str(tiny_models["corrector"]), "--n", "4", "--corpus", str(CORPUS), "--data-dir",
            str(tiny_data), "--width", "2", "--taus", "0.01,1", "--tops", "2", "--lambdas", "0,100", "--out",
            str(out)]  # fmt: skip
    assert mod.main(args) == 0
    got = json.loads(out.with_suffix(".json").read_text())
    assert [r["selection"].split(" (")[0] for r in got["rows"]][:2] == ["the search's text", "best cosine of the pool"]
    assert len(got["rows"]) == 6 and got["n"] == 4 and 1 <= got["pool_mean"] <= 2 + 21
    # the pool's best by cosine is at least the search's own text (which is in the pool); lambda 0 is that best
    assert got["rows"][1]["cosine"] >= got["rows"][0]["cosine"] - 1e-5
    assert {k: v for k, v in got["rows"][4].items() if k != "selection"} == {
        k: v for k, v in got["rows"][1].items() if k != "selection"
    }
    assert got["rows"][5]["selection"] == "cosine + 100 x the inverter's log-probability"
    assert "| consensus of the best 2, tau 0.01 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_results_table_resumes_a_stopped_sweep_and_scores_a_text_file(tmp_path, tiny_data, tiny_models, monkeypatch,
                                                                      capsys, sentences):  # fmt: skip
    """A sweep stopped in its second run keeps the first (OUT.runs/); the same command then runs only the second
    and writes the table a straight run writes; --time-each times every row by itself. --texts scores the lines
    of a file."""
    from v2t_jax import api

    mod = experiment("results_table")
    args = ["--checkpoint", str(tiny_models["corrector"]), "--n", "6", "--rows", "0:1,2:1,2:2", "--corpus", str(CORPUS),
            "--data-dir", str(tiny_data)]  # fmt: skip
    assert mod.main(args + ["--out", str(tmp_path / "straight")]) == 0
    original, calls = api.Vec2Text.invert, []

    def stopped_in_beam_2(self, vectors, search, **kw):
        calls.append(search.beam)
        if search.beam == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt
        return original(self, vectors, search, **kw)

    monkeypatch.setattr(api.Vec2Text, "invert", stopped_in_beam_2)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        mod.main(args + ["--out", str(out)])
    assert [p.name for p in (tmp_path / "resumed.runs").iterdir()] == ["1.json"] and not out.with_suffix(".md").exists()
    capsys.readouterr()
    assert mod.main(args + ["--out", str(out)]) == 0
    assert calls == [1, 2, 2] and "run 1 read back" in capsys.readouterr().err
    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("straight", "resumed"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "s_per_vector"} for r in rows]  # noqa: E731
    assert strip(resumed["rows"]) == strip(straight["rows"]) and resumed["examples"] == straight["examples"]
    assert not (tmp_path / "resumed.runs").exists()

    monkeypatch.setattr(api.Vec2Text, "invert", original)
    # --time-each: one run per row, so every row has its own time, and the same scores
    assert mod.main(args + ["--time-each", "--out", str(tmp_path / "each")]) == 0
    each = json.loads((tmp_path / "each.json").read_text())
    assert strip(each["rows"]) == strip(straight["rows"]) and set(each["seconds"]) == {"1@0", "1@2", "2@2"}
    assert all(r["s_per_vector"] is not None for r in each["rows"])
    # --untraced: each row as `v2t invert` runs it (the stream), scored on its final texts: the traced rows'
    # scores; a patience row is its own run, recorded with its patience
    untraced = args[:] + ["--untraced", "--out", str(tmp_path / "untraced")]
    untraced[untraced.index("0:1,2:1,2:2")] = "0:1,2:1,2:2,2:2:0:0:1"
    assert mod.main(untraced) == 0
    got = json.loads((tmp_path / "untraced.json").read_text())
    assert [r["patience"] for r in got["rows"]] == [0, 0, 0, 1] and got["curves"] == {}
    for a, b in zip(got["rows"], straight["rows"]):
        assert a["bleu"] == b["bleu"] and a["cosine"] == pytest.approx(b["cosine"], abs=1e-5)
    assert [{k: v for k, v in e.items() if k != "2:2:0:0:1"} for e in got["examples"]] == straight["examples"]
    assert (
        all(r["s_per_vector"] for r in got["rows"])
        and "| 2 steps + sbeam 2 + patience 1 |" in (tmp_path / "untraced.md").read_text()
    )
    (tmp_path / "ood.txt").write_text("\n".join(sentences[:3]) + "\n\n")
    assert mod.main(["--checkpoint", str(tiny_models["corrector"]), "--texts", str(tmp_path / "ood.txt"),
                     "--rows", "0:1", "--out", str(tmp_path / "ood")]) == 0  # fmt: skip
    ood = json.loads((tmp_path / "ood.json").read_text())
    assert (
        ood["n"] == 3 and ood["split"] == "ood.txt" and "on ood.txt (3 passages)" in (tmp_path / "ood.md").read_text()
    )


def test_export_takes_another_inverter_for_a_corrector_run(capsys, tmp_path, tiny_models):
    """`v2t export --inverter B`: the corrector run's corrector with B's inverter (a newer one trained alongside
    it), provenance naming both; refused for an inverter run and for a folder that is no bundle."""
    other = api.load_model(tiny_models["inverter"])
    other.params["inverter"] = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.01, other.params["inverter"])
    other.save(tmp_path / "other")
    base = ["export", "--output", str(tmp_path / "out"), "--inverter"]
    assert cli.main(base + [str(tmp_path / "other"), "--workdir", str(tiny_models["inverter_run"])]) == 2
    assert "corrector run only" in capsys.readouterr().err
    assert cli.main(base + [str(tmp_path / "nothing"), "--workdir", str(tiny_models["corrector_run"])]) == 2
    assert "nothing" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli.main(base + [str(tmp_path / "other"), "--workdir", str(tiny_models["corrector_run"])]) == 0
    got = api.load_model(tmp_path / "out")
    trained = api.load_model(tiny_models["corrector"])
    for kind, want in (("inverter", other), ("corrector", trained)):
        for x, y in zip(jax.tree_util.tree_leaves(got.params[kind]), jax.tree_util.tree_leaves(want.params[kind])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    source = json.loads((tmp_path / "out" / bundle.FILE).read_text())["source"]
    assert source["inverter"].endswith("other") and source["hypotheses_of"].endswith("inverter")


def test_a_corrector_run_refuses_another_inverters_weights(capsys, tmp_path, tiny_data, tiny_models):
    """Re-exporting different inverter weights to the same bundle path would silently change the corrector's
    training data; the rerun is refused instead."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_models["corrector_run"], run)
    (run / "inverter_hypotheses.txt").write_text("hypotheses-000000000000\n")
    args = ["train", "--config", str(ROOT / "configs" / "corrector.py") + ":tiny", "--workdir", str(run)]
    args += [f"--config.data.corpus={CORPUS}", f"--config.data.data_dir={tiny_data}", "--config.progress=false"]
    args += ["--config.num_steps=200", "--config.eval_every=200", "--config.checkpoint_every=100"]
    args += ["--config.learning_rate=3e-3", f"--config.inverter={tiny_models['inverter']}"]
    assert cli.main(args) == 2
    assert "other inverter weights" in capsys.readouterr().err


def test_int8_bundle_is_a_quarter_of_the_size_and_inverts_alike(tmp_path, model, targets, tiny_models):
    """`v2t export --weights int8`: every large tensor within half a quantization step of the float32 one,
    the files ≤ 0.3× the float32 bundle's, and the inversions nearly the same (cosine within 0.05 on average)."""
    out = tmp_path / "int8"
    args = ["export", "--workdir", str(tiny_models["corrector_run"]), "--output", str(out), "--weights", "int8"]
    assert cli.main(args) == 0
    q = api.load_model(out)
    assert json.loads((out / api.BUNDLE_FILE).read_text())["weights"] == "int8"
    flat_f = bundle.encode_params(model.params["corrector"])
    flat_q = bundle.encode_params(model.params["corrector"], "int8")
    loaded = bundle.read_params(out / "corrector.safetensors")
    for key, w in flat_f.items():
        got = loaded
        for part in key.split("/"):
            got = got[part]
        if key + bundle.SCALE_SUFFIX in flat_q:
            assert flat_q[key].dtype == np.int8
            assert np.all(np.abs(got - w) <= flat_q[key + bundle.SCALE_SUFFIX] / 2 + 1e-7), key
        else:
            np.testing.assert_array_equal(got, w)

    def size(folder):
        return sum(p.stat().st_size for p in folder.glob("*.safetensors"))

    assert size(out) <= 0.3 * size(tiny_models["corrector"])
    _, a = model.invert_embeddings(targets, num_steps=2, return_trace=True)
    _, b = q.invert_embeddings(targets, num_steps=2, return_trace=True)
    assert abs(np.mean(a["cosine"]) - np.mean(b["cosine"])) < 0.05
    assert cli.main(args) == 2  # an existing bundle is not replaced without --overwrite


def test_corrector_warm_start_takes_the_inverters_weights(tiny_models):
    """config.init_from_inverter: the corrector's T5 and e/ê projections start as the inverter's; the rest
    keeps its initialisation; a corrector of another shape is a one-line error."""
    import flax.linen as nn

    from v2t_jax.training import tasks, train

    inv = api.load_model(tiny_models["inverter"]).params["inverter"]
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def fresh(**t5):
        config = tiny_config("unused", config_file="corrector.py")
        config.t5.update(t5)
        m = tasks.build_abstract(config, 384, 30522).model
        e, ids = np.zeros((1, 384), np.float32), np.zeros((1, 31), np.int32)
        boxed = m.init(jax.random.PRNGKey(0), e, e, ids, ids != 0, ids)["params"]
        return jax.tree_util.tree_map(np.asarray, nn.unbox(boxed))

    params = fresh()
    warm = warm_start.warm_start(params, tiny_models["inverter"], jax.tree_util.tree_map(lambda _: dev, params))
    for a, b in zip(jax.tree_util.tree_leaves(warm["t5"]), jax.tree_util.tree_leaves(inv["t5"])):
        np.testing.assert_array_equal(a, b)
    for name in ("transform_target", "transform_hypothesis"):
        np.testing.assert_array_equal(warm[name]["out_proj"]["kernel"], inv["transform"]["out_proj"]["kernel"])
    np.testing.assert_array_equal(
        warm["transform_diff"]["in_proj"]["kernel"], params["transform_diff"]["in_proj"]["kernel"]
    )
    other = fresh(d_ff=96)
    with pytest.raises(train.TrainingError, match="init_from_inverter=false"):
        warm_start.warm_start(other, tiny_models["inverter"], jax.tree_util.tree_map(lambda _: dev, other))


def test_eval_curve_script_on_a_corrector_run(tmp_path, tiny_models):
    """experiments/eval_curve.py: one row per eval step; a corrector run also shows x⁰'s own scores."""
    mod = experiment("eval_curve")
    rows = [json.loads(x) for x in (tiny_models["corrector_run"] / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in rows if r["kind"] == "eval"}
    out = tmp_path / "curve.md"
    assert mod.main([str(tiny_models["corrector_run"]), "--out", str(out)]) == 0
    table = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(evals) and "x⁰ BLEU" in out.read_text()
    last = table[-1].split("|")
    assert float(last[8]) == pytest.approx(evals[max(evals)]["hypothesis_bleu"], abs=0.005)
