"""The training loop: sharded == single-device, two processes agree, kill -9 + rerun == uninterrupted,
every config runs, config errors are one line."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from v2t_jax import cli
from v2t_jax.search import strategies

from conftest import CORPUS, ROOT, tiny_config as _tiny_config


def _env(devices: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def _train_cmd(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "v2t_jax.cli",
        "train",
        "--config",
        str(ROOT / "configs" / "inverter.py") + ":tiny",
        "--workdir",
        str(workdir),
        f"--config.data.corpus={CORPUS}",
        f"--config.data.data_dir={data_dir}",
        "--config.progress=false",
        *overrides,
    ]


def _final_params(workdir: Path, step: int) -> dict:
    from v2t_jax.training import checkpoint

    return checkpoint.read_state_as_numpy(workdir, step)


def _last(workdir: Path, kind: str) -> dict:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind][-1]


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, flax.linen as nn
    sys.path.insert(0, sys.argv[1])
    from v2t_jax.training import config_loading, sharding, train
    config = config_loading.load(sys.argv[1] + "/configs/inverter.py:tiny")
    config.batch_size = 16
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        emb = rng.normal(size=(16, 384)).astype(np.float32)
        labels = rng.integers(1000, 2000, size=(16, 31)).astype(np.int32)
        mask = np.ones_like(labels); mask[:, 20:] = 0
        batches.append({"embeddings": emb, "labels": labels * mask, "mask": mask})
    out = {}
    for name, (data, fsdp) in {"one": (1, 1), "eight": (2, 4)}.items():
        devices = jax.devices()[: data * fsdp]
        mesh = sharding.make_mesh(data, fsdp, devices=devices)
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            s = train.build_from_config(config, mesh, 384, 30522)
            state = s.init_fn(jax.random.PRNGKey(0))
            losses = []
            for b in batches:
                state, aux = s.train_step(state, {k: jax.device_put(v, s.batch_sh[k]) for k, v in b.items()}, 1.0)
                losses.append(float(aux["loss"]))
            if name == "eight":
                emb_sh = state.params["t5"]["shared"].sharding
                out["sharded_spec"] = str(emb_sh.spec)
                out["n_shards"] = len(state.params["t5"]["shared"].addressable_shards)
            out[name] = {"losses": losses}
            flat = jax.tree_util.tree_leaves(jax.device_get(state.params))
            np.savez(sys.argv[2] + f"/{name}.npz", *[np.asarray(x) for x in flat])
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_step_matches_single_device(tmp_path):
    """data=2 x fsdp=4 over 8 host CPU devices vs 1 device: loss and params agree within 1e-5 after 3 steps."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(8),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fsdp" in out["sharded_spec"] and out["n_shards"] == 8  # parameters really are sharded
    np.testing.assert_allclose(out["one"]["losses"], out["eight"]["losses"], rtol=0, atol=1e-5)
    one, eight = np.load(tmp_path / "one.npz"), np.load(tmp_path / "eight.npz")
    assert len(one.files) == len(eight.files) > 10
    for k in one.files:
        np.testing.assert_allclose(one[k], eight[k], rtol=0, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_agree_with_one(tmp_path, tiny_data):
    """Two processes (1 CPU device each, gloo collectives) train 6 steps; the result equals one process
    with 2 devices."""
    port = _free_port()
    steps = ["--config.num_steps=6", "--config.eval_every=0", "--config.checkpoint_every=3"]
    procs = [
        subprocess.Popen(
            _train_cmd(tmp_path / "multi", tiny_data, *steps) + ["--distributed", f"localhost:{port},2,{i}"],
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run(
        _train_cmd(tmp_path / "single", tiny_data, *steps, "--config.mesh.data=2"),
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _final_params(tmp_path / "multi", 6), _final_params(tmp_path / "single", 6)
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    assert _last(tmp_path / "multi", "train")["loss"] == pytest.approx(
        _last(tmp_path / "single", "train")["loss"], abs=1e-6
    )


@pytest.mark.slow
def test_kill_and_rerun_is_bit_identical(tmp_path, tiny_data):
    steps = ["--config.num_steps=24", "--config.eval_every=0", "--config.checkpoint_every=4"]
    ref = subprocess.run(
        _train_cmd(tmp_path / "ref", tiny_data, *steps), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    work = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(work, tiny_data, *steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (work / "checkpoints" / "8").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert done and max(done) < 24, f"the run was not interrupted between checkpoints: {done}"

    rerun = subprocess.run(_train_cmd(work, tiny_data, *steps), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming at step" in rerun.stderr
    import jax

    a, b = _final_params(tmp_path / "ref", 24), _final_params(work, 24)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _last(work, "train")["loss"] == _last(tmp_path / "ref", "train")["loss"]
    # the steps repeated after the checkpoint are logged once: the same (step, kind) rows as the uninterrupted run
    rows = lambda d: [(r["step"], r["kind"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert rows(work) == rows(tmp_path / "ref")

    again = subprocess.run(_train_cmd(work, tiny_data, *steps), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stderr


@pytest.mark.slow
def test_sigterm_saves_the_step_it_is_at_and_the_rerun_is_bit_identical(tmp_path, tiny_data):
    """A preemption (SIGTERM) between checkpoints: the run saves the step it is in, says it can resume, exits 75;
    rerun, it ends with the parameters, loss and metrics rows of a run never interrupted."""
    steps = ["--config.num_steps=40", "--config.eval_every=0", "--config.checkpoint_every=1000",
             "--config.log_every=1"]  # fmt: skip
    ref = subprocess.run(
        _train_cmd(tmp_path / "ref", tiny_data, *steps), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    work = tmp_path / "preempted"
    proc = subprocess.Popen(
        _train_cmd(work, tiny_data, *steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    metrics = work / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 40, saved  # (checkpoint_every 1000: only the preemption saved)
    assert f"stopped by SIGTERM; step {saved[0]} is saved in {work}: rerun the same command to resume" in err

    rerun = subprocess.run(_train_cmd(work, tiny_data, *steps), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming at step {saved[0]}" in rerun.stderr
    import jax

    a, b = _final_params(tmp_path / "ref", 40), _final_params(work, 40)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def rows(d):
        return [
            (r["step"], r["kind"], r.get("loss"))
            for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        ]

    assert rows(work) == rows(tmp_path / "ref")


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(tmp_path, tiny_data):
    """A preemption notice reaching one host: through orbax's preemption sync both processes save the same step
    and exit 75; the pair rerun ends bit-identical to a pair never interrupted."""
    steps = ["--config.num_steps=40", "--config.eval_every=0", "--config.checkpoint_every=1000",
             "--config.log_every=1"]  # fmt: skip

    def pair(workdir):
        port = _free_port()
        return [
            subprocess.Popen(_train_cmd(workdir, tiny_data, *steps) + ["--distributed", f"localhost:{port},2,{i}"],
                             env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]  # fmt: skip

    def finish(procs) -> list[tuple[int, str]]:
        return [(p.wait(timeout=600), p.communicate()[1]) for p in procs]

    assert [code for code, _ in finish(pair(tmp_path / "ref"))] == [0, 0]
    work = tmp_path / "preempted"
    procs = pair(work)
    metrics, deadline = work / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    (code0, err0), (code1, _) = finish(procs)
    assert (code0, code1) == (75, 75), err0[-3000:]
    saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 40 and f"stopped by SIGTERM; step {saved[0]} is saved" in err0
    assert [code for code, _ in finish(pair(work))] == [0, 0]
    import jax

    a, b = _final_params(tmp_path / "ref", 40), _final_params(work, 40)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_profile_and_rates(tmp_path, tiny_data):
    """--profile writes a trace TensorBoard's profile plugin reads (an .xplane.pb); the log gives examples/s
    in all and per device, and TFLOP/s from XLA's cost analysis (no MFU on a CPU: its peak is not known)."""
    work, prof = tmp_path / "run", tmp_path / "profile"
    argv = _train_cmd(work, tiny_data, "--config.num_steps=6", "--config.eval_every=0", "--config.log_every=3")[3:]
    assert cli.main(argv + ["--profile", str(prof)]) == 0
    assert list(prof.glob("plugins/profile/*/*.xplane.pb"))
    row = _last(work, "train")
    assert row["examples_per_second"] == pytest.approx(row["examples_per_second_per_device"])  # one device
    assert row["tflops_per_second"] > 0 and "mfu" not in row


@pytest.mark.slow
@pytest.mark.parametrize("config_file", sorted(p.name for p in (ROOT / "configs").glob("*.py")))
def test_every_config_runs_two_tiny_steps(request, tmp_path, tiny_data, config_file):
    from v2t_jax.training import train

    extra = []
    if config_file == "corrector.py":  # trains on the hypotheses of an inverter bundle
        extra = [f"--config.inverter={request.getfixturevalue('tiny_models')['inverter']}"]
    config = _tiny_config(tiny_data, "--config.num_steps=2", "--config.eval_every=2", *extra, config_file=config_file)
    out = train.train(config, tmp_path / "run")
    assert np.isfinite(out["train_loss"]) and "eval_bleu" in out and 0 <= out["eval_cosine"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval"} and rows[0]["step"] == 0  # step-0 eval
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard events


@pytest.mark.parametrize("config_file", ["inverter.py", "corrector.py"])
@pytest.mark.parametrize("variant", ["cpu_small", "gpu", "gpu_warm", "base"])
def test_full_size_configs_build_abstractly(variant, config_file):
    import flax.linen as nn
    import jax

    from v2t_jax.training import config_loading, sharding, train

    config = config_loading.load(str(ROOT / "configs" / config_file) + f":{variant}")
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        s = train.build_from_config(config, mesh, 384, 30522)
    assert s.n_params > (200e6 if variant == "base" else 20e6)
    if variant in ("gpu", "gpu_warm"):  # both int8 bundles must come back from the device (<= 64 MiB) and ship
        assert s.n_params < (34e6 if config_file == "corrector.py" else 29e6), s.n_params


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.no_such_key=1", "unknown config key 'no_such_key'"),
        ("--config.t5.nope=1", "unknown config key 't5.nope'"),
        ("--config.batch_size=abc", "expected a int"),
        ("--config.t5=3", "is a group"),
        ("--batch_size=3", "unrecognised argument"),
    ],
)
def test_bad_config_is_one_line_error(capsys, tmp_path, override, message):
    code = cli.main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "inverter.py") + ":tiny",
            "--workdir",
            str(tmp_path / "w"),
            override,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w").exists()


def test_unprepared_dataset_says_what_to_run(capsys, tmp_path):
    code = cli.main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "inverter.py") + ":tiny",
            "--workdir",
            str(tmp_path / "w"),
            f"--config.data.data_dir={tmp_path / 'empty'}",
            "--config.progress=false",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "v2t data prepare" in err[-1]


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_checkpoint(capsys, tmp_path, tiny_data):
    from v2t_jax.training import train

    config = _tiny_config(
        tiny_data,
        "--config.num_steps=12",
        "--config.eval_every=0",
        "--config.checkpoint_every=4",
        "--config.learning_rate=1e30",
        "--config.warmup_steps=1",
        "--config.grad_clip=1e30",
    )
    with pytest.raises(train.TrainingError, match="non-finite"):
        train.train(config, tmp_path / "run")
    kept = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    for step in kept:  # every checkpoint that was written holds finite parameters
        import jax

        assert all(
            np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(_final_params(tmp_path / "run", step))
        )


@pytest.mark.slow
def test_external_tokenizer_vocabulary(tmp_path, tiny_data, sentences, minilm, capsys):
    """A T5-style SentencePiece-like vocabulary (here a small Unigram model with <pad>=0, </s>=1) instead of
    the embedder's: labels come from text, hypotheses are re-embedded through text. The run exports as a
    bundle holding its tokenizer (format 3), which `v2t invert` runs through text and scores with
    --references; a changed tokenizer.json is refused."""
    import tokenizers

    from v2t_jax.training import train

    tok = tokenizers.Tokenizer(tokenizers.models.Unigram())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    trainer = tokenizers.trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(sentences, trainer)
    folder = tmp_path / "spm"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    config = _tiny_config(tiny_data, "--config.num_steps=2", "--config.eval_every=2", f"--config.vocab={folder}")
    out = train.train(config, tmp_path / "run")
    assert out["params"]["t5"]["shared"].shape[0] == tok.get_vocab_size()
    assert np.isfinite(out["train_loss"]) and np.isfinite(out["eval_cosine"]) and "eval_bleu" in out

    from v2t_jax import api

    bundle = tmp_path / "bundle"
    assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(bundle), "--weights", "int8"]) == 0
    meta = json.loads((bundle / "v2t_model.json").read_text())
    assert meta["format"] == 3 and meta["vocabulary"] == "tokenizer.json" and meta["cls_id"] is None
    stored = tokenizers.Tokenizer.from_file(str(bundle / "tokenizer.json"))  # the run's vocabulary, whole
    assert stored.get_vocab() == tok.get_vocab() and stored.encode(sentences[0]).ids == tok.encode(sentences[0]).ids
    model = api.load_model(bundle)
    assert not model.program.in_graph and model.vocab.size == tok.get_vocab_size()
    vectors = minilm.embed_texts(sentences[:3])
    texts, trace = model.invert_embeddings(vectors, return_trace=True)
    again = np.asarray(model.embed_texts(texts))  # the cosine is the embedder's, of the text
    cos = (again * vectors).sum(1) / np.linalg.norm(again, axis=1) / np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(trace["cosine"], cos, atol=1e-5)
    with pytest.raises(api.ModelError, match="no single compiled program"):
        model.compiled(2, strategies.inverter_only())

    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "refs.txt").write_text("\n".join(sentences[:3]) + "\n")
    args = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(bundle), "--quiet"]
    args += ["--references", str(tmp_path / "refs.txt"), "--output", str(tmp_path / "o.jsonl")]
    capsys.readouterr()
    assert cli.main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["reference"] for r in rows] == model.embedder_view(sentences[:3])
    assert all({"bleu", "token_f1", "exact", "token_recall"} <= set(r) for r in rows)
    assert "BLEU" in capsys.readouterr().out

    with open(bundle / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(api.ModelError, match="tokenizer.json does not match the digest"):
        api.load_model(bundle)


@pytest.mark.slow
def test_init_from_a_bundle_starts_from_its_inverter(tmp_path, tiny_data):
    """`--config.init_from=BUNDLE` fine-tunes the bundle's inverter (e.g. with noise: a noise-aware attacker):
    the first step (learning rate 0 in warmup) leaves exactly its weights; another shape is one line."""
    import jax

    from v2t_jax import bundle
    from v2t_jax.training import train

    train.train(_tiny_config(tiny_data, "--config.num_steps=2", "--config.eval_every=0"), tmp_path / "run")
    assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "b")]) == 0
    init = f"--config.init_from={tmp_path / 'b'}"
    tuned = _tiny_config(tiny_data, "--config.num_steps=1", "--config.eval_every=0", init, "--config.noise_level=0.05")
    out = train.train(tuned, tmp_path / "tuned")
    want = bundle.read(tmp_path / "b")[1]
    for a, b in zip(jax.tree_util.tree_leaves(out["params"]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), b)
    wider = _tiny_config(tiny_data, "--config.num_steps=1", "--config.t5.d_model=32", init)
    with pytest.raises(train.TrainingError, match="init_from: the inverter in .* has another shape"):
        train.train(wider, tmp_path / "wider")


WARM = ("--config.t5.variant=bert", "--config.t5.d_model=384", "--config.t5.d_kv=32", "--config.t5.d_ff=1536",
        "--config.t5.num_heads=12", "--config.t5.num_layers=1", "--config.init_layers=embedder")  # fmt: skip


@pytest.mark.slow
def test_init_layers_from_the_embedder_trains_exports_and_inverts(capsys, tmp_path, tiny_data, sentences, minilm):
    """`--config.init_layers=embedder` (BERT2BERT): after a first step at learning rate 0 both stacks' layer 0 and
    the token and position embeddings are MiniLM's own; the run exports a bundle that `v2t invert` runs; a
    T5-layout config is refused in one line before training."""
    from v2t_jax import api
    from v2t_jax.training import train

    cfg = _tiny_config(tiny_data, "--config.num_steps=1", "--config.eval_every=0", *WARM)
    t5 = train.train(cfg, tmp_path / "run")["params"]["t5"]
    bert = minilm.params["backbone"]
    q = np.asarray(bert["layers_0"]["query"]["kernel"]).reshape(384, 12, 32)
    np.testing.assert_array_equal(np.asarray(t5["encoder"]["layers_0"]["attn"]["q"]), q)
    np.testing.assert_array_equal(np.asarray(t5["decoder"]["layers_0"]["self_attn"]["q"]), q)
    np.testing.assert_array_equal(np.asarray(t5["shared"]), np.asarray(bert["word_embeddings"]))
    pos = np.asarray(bert["position_embeddings"]) + np.asarray(bert["token_type_embeddings"])[0]
    np.testing.assert_allclose(np.asarray(t5["decoder"]["positions"]["embedding"]), pos, rtol=0, atol=1e-7)
    assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "b")]) == 0
    model = api.load_model(tmp_path / "b")
    assert model.program.inverter.t5.layout == "bert"
    texts = model.invert_embeddings(minilm.embed_texts(sentences[:2]))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    capsys.readouterr()
    t5_layout = _tiny_config(tiny_data, "--config.num_steps=1", *WARM[1:-1], "--config.init_layers=embedder")
    with pytest.raises(train.TrainingError, match="init_layers=embedder: .*layout = bert"):
        train.train(t5_layout, tmp_path / "t5")
    with pytest.raises(train.TrainingError, match="init_layers must be random or embedder, got 'bert'"):
        train.train(_tiny_config(tiny_data, "--config.init_layers=bert"), tmp_path / "bad")


@pytest.mark.slow
def test_export_inverter_bundle_and_invert(capsys, tmp_path, tiny_data, sentences, minilm):
    """A training run -> `v2t export` -> an inverter-only bundle that `v2t invert` runs with 0 steps."""
    from v2t_jax import api
    from v2t_jax.training import train

    train.train(_tiny_config(tiny_data, "--config.num_steps=2", "--config.eval_every=0"), tmp_path / "run")
    assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "bundle")]) == 0
    model = api.load_model(tmp_path / "bundle")
    vectors = minilm.embed_texts(sentences[:3])
    texts = model.invert_embeddings(vectors)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(api.ModelError, match="inverter only"):
        model.invert_embeddings(vectors, num_steps=1)
    np.save(tmp_path / "v.npy", vectors)
    invert = ["invert", "--embeddings", str(tmp_path / "v.npy"), "--checkpoint", str(tmp_path / "bundle")]
    code = cli.main(invert + ["--output", str(tmp_path / "o.jsonl"), "--quiet"])
    assert code == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    code = cli.main(invert + ["--output", str(tmp_path / "o2.jsonl"), "--steps", "2"])
    assert code == 2 and "inverter-only" in capsys.readouterr().err
    code = cli.main(["export", "--workdir", str(tmp_path / "run"), "--output", str(tmp_path / "bundle")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    code = cli.main(["export", "--workdir", str(tmp_path / "nothing"), "--output", str(tmp_path / "b2")])
    assert code == 2 and "not a v2t train run" in capsys.readouterr().err

    # corrector data: the exported inverter's greedy hypotheses for every passage, re-embedded
    from v2t_jax.data import dataset, targets
    from v2t_jax.training import hypotheses

    args = [
        "data",
        "hypotheses",
        "--inverter",
        str(tmp_path / "bundle"),
        "--corpus",
        str(CORPUS),
        "--data-dir",
        str(tiny_data),
        "--quiet",
    ]
    assert cli.main(args) == 0
    assert "already exact" in capsys.readouterr().out
    b = dataset.builder(dataset.DatasetSpec(corpus=str(CORPUS)), tiny_data)
    tdir = targets.targets_dir(b.data_dir, "all-MiniLM-L6-v2", 32)
    hdir = hypotheses.hypotheses_dir(tdir, tmp_path / "bundle")
    emb, _ = targets.load(tdir, "validation")
    hyp_ids = np.load(hdir / "validation.hyp_ids.npy")
    hyp_emb = np.load(hdir / "validation.hyp_embeddings.npy")
    assert hyp_ids.shape == (len(emb), 31) and hyp_emb.shape == (len(emb), 384)
    assert np.load(hdir / "validation.exact.npy").dtype == bool
    # the cached hypotheses are the bundle's own step-0 inversions, embedded as [CLS] + ids (no detour
    # through text, which would re-tokenise untrained output differently)
    texts = model.invert_embeddings(np.asarray(emb))
    assert [model.decode(r) for r in hyp_ids] == texts
    full = np.concatenate([np.full((len(hyp_ids), 1), 101, np.int32), hyp_ids], axis=1)
    np.testing.assert_allclose(hyp_emb, np.asarray(minilm.embed_ids(full, (full != 0).astype(np.int32))), atol=1e-5)
    stamp = (hdir / "train.hyp_ids.npy").stat().st_mtime_ns
    assert cli.main(args) == 0 and (hdir / "train.hyp_ids.npy").stat().st_mtime_ns == stamp  # no repeated work


def test_rerun_with_a_different_model_config_is_refused(capsys, tmp_path):
    work = tmp_path / "run"
    (work / "checkpoints" / "5").mkdir(parents=True)
    (work / "config.json").write_text(json.dumps({"t5": {"size": "base"}, "num_steps": 5}))
    code = cli.main(["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny", "--workdir", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "different config" in err[-1] and "t5" in err[-1]


def test_resuming_cannot_reshape_the_learning_rate_schedule(capsys, tmp_path):
    """num_steps ends a step-based run's linear decay: a resume with another value is refused (the shipped
    CPU inverter's decay restarted from ~0.8e-3 that way). A time-boxed run decays to 0 at its deadline and uses
    num_steps as a cap only, so it may change it (not below the warmup)."""
    from v2t_jax.training import config_loading

    base = ["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny"]

    def saved(work, **changes):
        config = config_loading.load(str(ROOT / "configs" / "inverter.py") + ":tiny")
        config.update(changes)
        (work / "checkpoints" / "5").mkdir(parents=True)
        (work / "config.json").write_text(config.to_json())

    saved(tmp_path / "steps", num_steps=3000)
    code = cli.main(base + ["--workdir", str(tmp_path / "steps"), "--config.num_steps=12000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "num_steps=3000" in err[0] and "learning-rate" in err[0]

    from v2t_jax.training import train

    boxed = {"train_minutes": 2.0, "warmup_steps": 10}
    assert not train._schedule_keys_changed({"num_steps": 500, **boxed}, {"num_steps": 10**8, **boxed})
    assert train._schedule_keys_changed({"num_steps": 500, **boxed}, {"num_steps": 5, **boxed})  # cuts the warmup
    assert train._schedule_keys_changed({"num_steps": 500}, {"num_steps": 600, "train_minutes": 0.0})


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused(capsys, tmp_path, tiny_data):
    from v2t_jax.training import train

    work = tmp_path / "run"
    args = _train_cmd(work, tiny_data, "--config.num_steps=1", "--config.eval_every=0")[3:]
    with train.workdir_lock(work):  # another run holds it
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another v2t train (pid {os.getpid()})" in err[0]
        assert sorted(p.name for p in work.iterdir()) == [train.LOCK_FILE]  # nothing written
    assert cli.main(args) == 0  # released: the run goes ahead


@pytest.mark.slow
def test_a_full_disk_in_train_is_one_line_that_keeps_the_checkpoints(capsys, monkeypatch, tmp_path, tiny_data):
    import errno

    from v2t_jax.training import checkpoint

    work = tmp_path / "run"
    args = _train_cmd(work, tiny_data, "--config.num_steps=4", "--config.eval_every=0", "--config.checkpoint_every=2")
    real_save, calls = checkpoint.save, []

    def save(mngr, step, *a):
        calls.append(step)
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(mngr, step, *a)

    monkeypatch.setattr(checkpoint, "save", save)
    assert cli.main(args[3:]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "rerun the command to resume" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert cli.main(args[3:]) == 0 and "resuming at step 2" in capsys.readouterr().err


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(capsys, tmp_path, tiny_data):
    """Export and resume skip a checkpoint that does not read back (warning once each), the damaged step is
    moved aside, not deleted, and the resumed run reaches the same weights again."""
    from v2t_jax import api, export
    from v2t_jax.training import checkpoint, train

    work = tmp_path / "run"
    cfg = _tiny_config(tiny_data, "--config.num_steps=4", "--config.eval_every=0", "--config.checkpoint_every=2")
    train.train(cfg, work)
    want = checkpoint.read_state_as_numpy(work, 4)
    for f in (work / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    capsys.readouterr()

    out = export.export(work, tmp_path / "bundle")
    err = capsys.readouterr().err
    assert "checkpoint at step 4 is damaged" in err
    assert json.loads((out / api.BUNDLE_FILE).read_text())["source"]["step"] == 2
    with pytest.raises(api.ModelError, match="step 4 .* is damaged"):
        export.export(work, tmp_path / "bundle4", step=4)

    train.train(cfg, work)
    err = capsys.readouterr().err
    assert "checkpoint at step 4 is damaged" in err and "resuming at step 2" in err
    assert (work / "damaged_checkpoints" / "4" / "state").is_dir()
    got = checkpoint.read_state_as_numpy(work, 4)
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    for step in (2, 4):  # nothing readable left: one line, no traceback
        for f in (work / "checkpoints" / str(step) / "state").rglob("*"):
            if f.is_file() and f.stat().st_size > 0:
                f.write_bytes(b"\0" * 7)
    assert (
        cli.main(
            _train_cmd(work, tiny_data, "--config.num_steps=4", "--config.eval_every=0", "--config.checkpoint_every=2")[
                3:
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert "no checkpoint in" in err[-1] and "move that folder aside" in err[-1]


@pytest.mark.slow
def test_a_run_that_never_saved_may_change_its_config(capsys, tmp_path, tiny_data):
    """A first attempt that failed before its first checkpoint (here: dataset not prepared) does not pin the
    workdir's config."""
    args = ["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny", "--workdir", str(tmp_path / "w")]
    assert cli.main(args + [f"--config.data.data_dir={tmp_path / 'missing'}", "--config.progress=false"]) == 2
    assert "v2t data prepare" in capsys.readouterr().err
    ok = args + [
        f"--config.data.corpus={CORPUS}",
        f"--config.data.data_dir={tiny_data}",
        "--config.num_steps=1",
        "--config.eval_every=0",
        "--config.progress=false",
    ]
    assert cli.main(ok) == 0


# ----------------------------------------------------------------------------- mixture, time box, bfloat16


def test_weighted_sampler_follows_the_mixture_and_resumes():
    from v2t_jax.data import sampling

    src = np.repeat([0, 1, 2], [6000, 3000, 1000])  # three sources of unequal size
    names = ["a", "b", "tech"]
    w = sampling.mixture_weights("tech=0.5,b=2", names)
    assert w == {"a": 1.0, "b": 2.0, "tech": 0.5}
    row_w = np.asarray([w[n] for n in names])[src]
    s = sampling.WeightedSampler(row_w, 256, seed=3)
    draws = np.concatenate([s.next_indices() for _ in range(200)])
    share = np.bincount(src[draws], minlength=3) / len(draws)
    expected = np.array([6000 * 1, 3000 * 2, 1000 * 0.5]) / 12500
    np.testing.assert_allclose(share, expected, atol=0.01)
    state = s.state()
    after = [s.next_indices() for _ in range(3)]
    resumed = sampling.WeightedSampler(row_w, 256, seed=3)
    resumed.restore(state)
    assert all((a == b).all() for a, b in zip(after, [resumed.next_indices() for _ in range(3)]))
    assert sampling.mixture_weights("uniform", names) == {"a": 1.0, "b": 1.0, "tech": 1.0}
    for bad, msg in [("b=x", "expected default"), ("zzz=1", "not in this dataset"), ("a=0,b=0,tech=0", "weight 0")]:
        with pytest.raises(sampling.TrainingError, match=msg):
            sampling.mixture_weights(bad, names)


def test_lr_scale_decays_to_zero_at_the_deadline():
    from v2t_jax.training.train import lr_scale_at

    assert lr_scale_at(0, 100) == 1.0 and lr_scale_at(50, 100) == pytest.approx(0.5)
    assert lr_scale_at(100, 100) == 0.0 and lr_scale_at(250, 100) == 0.0
    assert lr_scale_at(30, 100, decay_start=0.5) == 1.0 and lr_scale_at(75, 100, decay_start=0.5) == pytest.approx(0.5)


@pytest.mark.slow
def test_time_boxed_bfloat16_run_stops_at_its_deadline_and_exports_float32(capsys, tmp_path, tiny_data,
                                                                           monkeypatch):  # fmt: skip
    """train_minutes stops the run at the deadline (not at num_steps), with a checkpoint and an eval there;
    the learning-rate factor falls over the run; rerunning finds the budget spent; t5.dtype=bfloat16 trains
    and the exported bundle computes in float32. The run reads an injected clock that advances 0.5 s per
    reading, so the outcome does not depend on the machine's speed (it once logged 1 step on a busy machine,
    its 15 s budget spent compiling)."""
    from v2t_jax import export
    from v2t_jax.training import train

    ticks = iter(range(10**6))
    monkeypatch.setattr(train, "clock", lambda: 0.5 * next(ticks))
    run = tmp_path / "run"
    cfg = _tiny_config(
        tiny_data,
        "--config.num_steps=100000",
        "--config.train_minutes=0.25",
        "--config.log_every=5",
        "--config.eval_every=0",
        "--config.checkpoint_every=100000",
        "--config.t5.dtype=bfloat16",
    )
    train.train(cfg, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scales = [r["lr_scale"] for r in rows if r["kind"] == "train"]
    assert len(scales) >= 3 and scales == sorted(scales, reverse=True) and scales[-1] < 0.2
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and 5 < steps[-1] <= 16  # 15 s of clock at two readings per step (0.5 s each)
    assert f"budget is spent at step {steps[-1]}" in capsys.readouterr().err
    train.train(cfg, run)  # the same command again: nothing left to do
    assert f"budget is spent at step {steps[-1]}" in capsys.readouterr().err
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == steps[-1]
    export.export(run, tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "v2t_model.json").read_text())
    assert json.dumps(meta).count('"bfloat16"') == 0 and '"float32"' in json.dumps(meta)


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Rows the interrupted run wrote after its last checkpoint (and a torn last line) are dropped when the run
    resumes from that checkpoint; a run starting afresh keeps none."""
    from v2t_jax.training import train

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "kind": k, "loss": 1.0} for s, k in [(0, "eval"), (5, "train"), (8, "eval"), (10, "train")]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 1')
    logger = train.Logger(tmp_path, True, resume_step=8)
    logger.write(10, "train", {"loss": 0.5})
    logger.close()
    got = [(r["step"], r["kind"]) for r in map(json.loads, path.read_text().splitlines())]
    assert got == [(0, "eval"), (5, "train"), (8, "eval"), (10, "train")]
    train.Logger(tmp_path, True, resume_step=0).close()
    assert path.read_text() == ""
