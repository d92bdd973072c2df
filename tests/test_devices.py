"""Every device of a host: 8 virtual CPU devices give the outputs of one (embed, invert as a batch and as a
stream, audit, hypothesis generation), and `v2t bench` says how many devices it ran on and what XLA counts.

Virtual CPU devices share the machine's cores: these tests show correctness, not speed (docs/pods.md has the
figures measured on GPUs)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import CORPUS, ROOT, cache_env

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from v2t_jax import api, cli, parallel
    from v2t_jax.training import hypotheses

    bundle, corpus, out, part = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    assert jax.local_device_count() == 8
    texts = [t for t in Path(corpus).read_text().splitlines() if t.strip()][:11]
    (out / "texts.txt").write_text("\\n".join(texts) + "\\n")
    common = ["--checkpoint", bundle, "--quiet"]
    for d in ("1", "8"):
        assert cli.main(["embed", "--input", str(out / "texts.txt"), "--output", str(out / f"e{d}.npy"),
                         "--batch-size", "4", "--devices", d, "--quiet"]) == 0
        if part == "batch":
            assert cli.main(["invert", "--embeddings", str(out / "e1.npy"), "--output", str(out / f"batch{d}.jsonl"),
                             "--batch-size", "5", "--devices", d, "--steps", "2", "--sbeam", "2",
                             "--no-skip-repeated", "--trace", *common]) == 0
            model = api.load_model(bundle).use_devices(int(d))
            ids, emb = hypotheses.make_step(model)(model.params, np.load(out / "e1.npy")[:7])
            np.savez(out / f"hyp{d}.npz", ids=np.asarray(ids)[:7], emb=np.asarray(emb)[:7])
        else:  # the stream, and audit (which runs the stream)
            assert cli.main(["invert", "--embeddings", str(out / "e1.npy"), "--output", str(out / f"stream{d}.jsonl"),
                             "--batch-size", "5", "--devices", d, "--steps", "2", "--sbeam", "2", *common]) == 0
            assert cli.main(["audit", str(out / "e1.npy"), "--documents", str(out / "texts.txt"), "--output",
                             str(out / f"audit{d}"), "--steps", "2", "--sbeam", "2", "--batch-size", "5", "--devices",
                             d, *common]) == 0
    if part == "batch":
        assert cli.main(["bench", "--checkpoint", bundle, "--batch", "6", "--steps", "2", "--beam", "1",
                         "--repeats", "1", "--output", str(out / "bench"), "--quiet"]) == 0
    print("ok")
    """
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _on_eight_devices(tmp_path, small_bundle, part: str) -> None:
    script = tmp_path / "devices.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(cache_env(), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=8")  # fmt: skip
    proc = subprocess.run([sys.executable, str(script), str(small_bundle[0]), str(CORPUS), str(tmp_path), part],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    np.testing.assert_allclose(np.load(tmp_path / "e8.npy"), np.load(tmp_path / "e1.npy"), rtol=0, atol=2e-6)
    one, eight = _rows(tmp_path / f"{part}1.jsonl"), _rows(tmp_path / f"{part}8.jsonl")
    assert len(one) == len(eight) == 11
    assert [r["text"] for r in eight] == [r["text"] for r in one]
    np.testing.assert_allclose([r["cosine"] for r in eight], [r["cosine"] for r in one], atol=1e-5)


def test_eight_devices_embed_invert_and_bench_as_one_does(tmp_path, small_bundle):
    """embed, the batch program (every step's hypotheses traced), hypothesis generation and `v2t bench`."""
    _on_eight_devices(tmp_path, small_bundle, "batch")
    assert [r["steps"]["hypotheses"] for r in _rows(tmp_path / "batch8.jsonl")] == [
        r["steps"]["hypotheses"] for r in _rows(tmp_path / "batch1.jsonl")
    ]
    h1, h8 = np.load(tmp_path / "hyp1.npz"), np.load(tmp_path / "hyp8.npz")
    np.testing.assert_array_equal(h8["ids"], h1["ids"])
    np.testing.assert_allclose(h8["emb"], h1["emb"], atol=2e-6)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["devices"] == 8 and bench["platform"] == "cpu" and bench["peak_flops_per_device"] is None
    for row in bench["rows"]:
        assert row["devices"] == 8 and row["xla_flops_per_device"] > 0 and row["mfu_at_least"] is None
        assert row["inversions_per_s_per_device"] == pytest.approx(row["inversions_per_s"] / 8)
    md = (tmp_path / "bench.md").read_text()
    assert "8 × " in md and "Command: `v2t bench --checkpoint " in md  # the command as given to cli.main


@pytest.mark.slow
def test_eight_devices_stream_and_audit_as_one_does(tmp_path, small_bundle):
    """The stream program (`v2t invert`'s default) and `v2t audit`, on 8 devices and on 1."""
    _on_eight_devices(tmp_path, small_bundle, "stream")
    audit1, audit8 = _rows(tmp_path / "audit1" / "records.jsonl"), _rows(tmp_path / "audit8" / "records.jsonl")
    assert [r["text"] for r in audit8] == [r["text"] for r in audit1] and len(audit1) == 11


def test_more_devices_than_the_host_has_is_one_line(capsys, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a line\n")
    import jax

    have = jax.local_device_count()
    code = __import__("v2t_jax.cli").cli.main(
        ["embed", "--input", str(texts), "--output", str(tmp_path / "e.npy"), "--devices", str(have + 1), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"--devices {have + 1}: this process has {have} CPU device(s); give 1 to {have}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e.npy").exists()


def test_distributed_auto_outside_a_cluster_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "OMPI", "TPU", "KUBERNETES"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "v2t_jax.cli", "train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny",
         "--workdir", str(tmp_path / "w"), "--distributed", "auto"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("v2t train: error: --distributed auto: ") and "HOST:PORT,NUM_PROCESSES,PROCESS_ID" in line
    assert not (tmp_path / "w").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env1() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(cache_env(), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return env


def _pair(argv: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen([sys.executable, "-m", "v2t_jax.cli", *argv, "--distributed", f"localhost:{port},2,{i}"],
                         env=_env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip


def _finish(procs) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_processes_write_what_one_writes_and_resume(tmp_path, small_bundle):
    """`--distributed` over 2 processes: embed, invert and audit write one output, byte for byte as one process does;
    a pair stopped mid-run (one process killed) resumes from the rows each had written."""
    import signal
    import time

    texts = tmp_path / "texts.txt"
    texts.write_text("".join(line + "\n" for line in CORPUS.read_text().splitlines()[:40] if line.strip()))
    embed = ["embed", "--input", str(texts), "--batch-size", "8", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "v2t_jax.cli", *embed, "--output", str(tmp_path / "one.npy")],
                         env=_env1(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    _finish(_pair([*embed, "--output", str(tmp_path / "two.npy")]))
    assert (tmp_path / "two.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []

    invert = ["invert", "--embeddings", str(tmp_path / "one.npy"), "--checkpoint", str(small_bundle[0]),
              "--steps", "2", "--batch-size", "3", "--references", str(texts), "--quiet"]  # fmt: skip
    single = subprocess.run([sys.executable, "-m", "v2t_jax.cli", *invert, "--output", str(tmp_path / "one.jsonl")],
                            env=_env1(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    out = tmp_path / "two.jsonl"
    _finish(_pair([*invert, "--output", str(out)]))
    assert out.read_bytes() == (tmp_path / "one.jsonl").read_bytes()

    audit = ["audit", str(tmp_path / "one.npy"), "--documents", str(texts), "--checkpoint", str(small_bundle[0]),
             "--steps", "1", "--batch-size", "4", "--quiet"]  # fmt: skip
    single = subprocess.run([sys.executable, "-m", "v2t_jax.cli", *audit, "--output", str(tmp_path / "audit1")],
                            env=_env1(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    _finish(_pair([*audit, "--output", str(tmp_path / "audit2")]))
    assert (tmp_path / "audit2" / "records.jsonl").read_bytes() == (tmp_path / "audit1" / "records.jsonl").read_bytes()
    summaries = [json.loads((tmp_path / f"audit{i}" / "summary.json").read_text()) for i in (1, 2)]
    assert "--distributed" in summaries[1].pop("command") and "--distributed" not in summaries[0].pop("command")
    assert summaries[1] == summaries[0]
    assert (tmp_path / "audit2" / "report.md").exists()
    assert sorted(p.name for p in (tmp_path / "audit2").iterdir()) == sorted(
        p.name for p in (tmp_path / "audit1").iterdir()
    )

    # stopped mid-run: process 1 killed once its part has rows, then process 0; the pair rerun resumes
    out.unlink()
    procs = _pair([*invert, "--batch-size", "1", "--output", str(out)])
    part1 = tmp_path / "two.jsonl.part-1-of-2.partial"
    deadline = time.time() + 300
    while time.time() < deadline and not (part1.exists() and part1.read_text().count("\n") >= 2):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not out.exists() and part1.read_text().count("\n") < 40
    procs = _pair([*invert, "--batch-size", "1", "--output", str(out)])
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert "resuming after the" in errs[1]
    again = subprocess.run(
        [sys.executable, "-m", "v2t_jax.cli", *invert, "--batch-size", "1", "--output", str(tmp_path / "one1.jsonl")],
        env=_env1(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == (tmp_path / "one1.jsonl").read_bytes()
    assert not list(tmp_path.glob("two.jsonl.part-*"))


@pytest.mark.parametrize("argv", [
    ["train", "--config", str(ROOT / "configs" / "inverter.py") + ":tiny", "--workdir", "ftp://host/run"],
    ["export", "--workdir", "run", "--output", "s3://bucket/bundle"],
    ["invert", "--embeddings", "e.npy", "--output", "gs://bucket/rows.jsonl"],
])  # fmt: skip
def test_an_object_store_path_not_served_is_one_line_and_no_local_folder(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    assert __import__("v2t_jax.cli").cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("are not read or written yet" in err or "is not served" in err)
    assert list(tmp_path.iterdir()) == []


_SMALL_PIECES = (
    "import sys; from v2t_jax.data import targets; targets.CHUNK = 64; from v2t_jax import cli; sys.exit(cli.main())"
)


@pytest.mark.slow
def test_two_processes_prepare_the_targets_one_process_prepares(tmp_path):
    """`v2t data prepare --distributed`: process 0 builds the dataset, each process embeds its pieces of the
    targets (64-row pieces here: 300 sentences make several), and the target files are those of one process."""
    argv = ["data", "prepare", "--corpus", str(CORPUS), "--quiet"]
    one = subprocess.run([sys.executable, "-c", _SMALL_PIECES, *argv, "--data-dir", str(tmp_path / "one")],
                         env=_env1(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", _SMALL_PIECES, *argv, "--data-dir", str(tmp_path / "two"),
                          "--distributed", f"localhost:{port},2,{i}"],
                         env=_env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    _finish(procs)
    made = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy") if "targets" in str(p))
    assert len(made) >= 6  # embeddings and ids of three splits
    for rel in made:
        assert (tmp_path / "two" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes(), rel
    assert not list((tmp_path / "two").rglob("*.parts"))


def _with_generation(handler):
    """An emulator route that also sends the object's generation in `x-goog-generation`, as GCS does with every
    object it serves (the emulator leaves it out; TensorStore's conditional writes read it)."""

    def route(request, response, storage, *args, **kwargs):
        handler(request, response, storage, *args, **kwargs)
        params = getattr(request, "params", {}) or {}
        if request.method == "GET" and "object_id" in params:
            try:
                response["x-goog-generation"] = storage.get_file_obj(params["bucket_name"], params["object_id"])[
                    "generation"
                ]
            except Exception:  # noqa: BLE001 - no such object: the route already answered 404
                pass

    return route


@pytest.fixture
def gcs(monkeypatch):
    """A GCS emulator (gcp-storage-emulator, in memory) on a free port with the bucket `bucket`; the
    environment that points gcsfs (files) and TensorStore (checkpoint arrays) at it."""
    pytest.importorskip("gcsfs")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    monkeypatch.setattr(emulator, "HANDLERS", tuple((regex, {m: _with_generation(f) for m, f in handlers.items()})
                                                     for regex, handlers in emulator.HANDLERS))  # fmt: skip
    port = _free_port()
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket="bucket")
    server.start()
    url = f"http://localhost:{port}"
    yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
    server.stop()


@pytest.mark.slow
def test_a_gs_workdir_trains_is_killed_resumes_bit_identically_and_exports(tmp_path, tiny_data, gcs):
    """A run whose --workdir is gs://bucket/run (a GCS emulator): killed with kill -9 after a checkpoint, rerun,
    it ends where a local run ends (the exported weights are the same bytes); export reads it from the bucket."""
    import signal
    import time

    def train(workdir) -> list[str]:
        config = str(ROOT / "configs" / "inverter.py") + ":tiny"
        return [
            sys.executable, "-m", "v2t_jax.cli", "train", "--config", config, "--workdir", str(workdir),
            f"--config.data.corpus={CORPUS}", f"--config.data.data_dir={tiny_data}", "--config.progress=false",
            "--config.num_steps=16", "--config.eval_every=0", "--config.checkpoint_every=4",
        ]  # fmt: skip

    env = {**_env1(), **gcs}
    ref = subprocess.run(train(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(train("gs://bucket/run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    probe = [sys.executable, "-c", "import sys; from etils import epath; "
             "print(sorted(p.name for p in epath.Path('gs://bucket/run/checkpoints').iterdir()))"]  # fmt: skip
    deadline, seen = time.time() + 300, ""
    while time.time() < deadline and "'8'" not in seen and proc.poll() is None:
        seen = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120).stdout
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "'8'" in seen and "'16'" not in seen, seen
    assert not (tmp_path / "gs:").exists() and not (ROOT / "gs:").exists()
    rerun = subprocess.run(train("gs://bucket/run"), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming at step" in rerun.stderr
    for src, name in (("gs://bucket/run", "from_gs"), (str(tmp_path / "ref"), "from_local")):
        out = subprocess.run([sys.executable, "-m", "v2t_jax.cli", "export", "--workdir", src, "--output",
                              str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    gs_bundle, local_bundle = tmp_path / "from_gs", tmp_path / "from_local"
    assert (gs_bundle / "inverter.safetensors").read_bytes() == (local_bundle / "inverter.safetensors").read_bytes()
    meta = json.loads((gs_bundle / "v2t_model.json").read_text())
    assert "gs://bucket/run" in json.dumps(meta)
    rows = subprocess.run([sys.executable, "-c", "from etils import epath; "
                           "print(epath.Path('gs://bucket/run/metrics.jsonl').read_text())"],
                          env=env, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    steps = [json.loads(line)["step"] for line in rows.splitlines() if line.strip()]
    local = [json.loads(line)["step"] for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert steps == local  # (the steps repeated after the checkpoint logged once)
