"""For people who have the weights: training from a pretrained Hugging Face T5 folder (`config.t5.init`), the
paper's configs, a GTR-shaped embedder saved by sentence-transformers, and vec2text checkpoints as bundles
(`v2t import vec2text`). Every folder here is written by the real libraries (transformers, tokenizers,
sentence-transformers; vec2text 0.0.13 for the golden checkpoints), with small random weights."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS, ROOT


def _word_tokenizer(words: list[str]):
    """A T5-like tokenizer (`tokenizers`): <pad> 0, </s> 1, <unk> 2, then whole words; encodings end in </s>."""
    import tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


def _save_tokenizer(tok, folder: Path) -> None:
    """tokenizer.json plus the config transformers' AutoTokenizer reads (sentence-transformers loads it so)."""
    import transformers

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")  # fmt: skip
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    """A random T5 v1.1-shaped model saved by transformers, with a word-level tokenizer over the test corpus."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("t5")
    words = sorted({w for line in CORPUS.read_text(encoding="utf-8").split("\n") for w in line.lower().split()})
    tok = _word_tokenizer(words[:1500])
    _save_tokenizer(tok, folder)
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=tok.get_vocab_size() + 5,  # (T5's table is larger than its tokenizer, too)
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gtr_folder(tmp_path_factory, t5_folder) -> Path:
    """A GTR-shaped sentence embedder saved by sentence-transformers: T5 encoder, mean pooling, Dense, Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    folder = tmp_path_factory.mktemp("gtr")
    torch.manual_seed(1)
    encoder = models.Transformer(str(t5_folder), max_seq_length=32)
    dense = models.Dense(32, 24, bias=False, activation_function=torch.nn.Identity())
    st = SentenceTransformer(modules=[encoder, models.Pooling(32, "mean"), dense, models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder


def test_gtr_saved_by_sentence_transformers_embeds_with_parity(gtr_folder, sentences):
    from sentence_transformers import SentenceTransformer

    from v2t_jax.models import embedders

    st = SentenceTransformer(str(gtr_folder), device="cpu")
    texts = [s.lower() for s in sentences[:12]]
    want = st.encode(texts, convert_to_numpy=True)
    emb = embedders.load_embedder(gtr_folder)
    assert emb.config.dense is not None and emb.config.normalize and emb.dim == 24
    got = emb.embed_texts(texts, max_length=32)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # vec2text's gtr_base reads the same folder as the encoder's mean pool alone
    bare = embedders.load_embedder(gtr_folder, head="none")
    assert bare.dim == 32 and not bare.config.normalize and bare.head == "none"


def _paper_config(config_file: str, data_dir: Path, t5: Path, gtr: Path, *overrides):
    """configs/<file>:paper at tiny scale: the user's three folders, a small batch, two steps."""
    from v2t_jax.training import config_loading

    config = config_loading.load(str(ROOT / "configs" / config_file) + ":paper")
    tiny = [f"--config.t5.init={t5}", f"--config.embedder={gtr}", f"--config.data.corpus={CORPUS}",
            f"--config.data.data_dir={data_dir}", "--config.progress=false", "--config.t5.dtype=float32",
            "--config.batch_size=8", "--config.num_steps=2", "--config.eval_every=2", "--config.eval_batches=1",
            "--config.eval_samples=8", "--config.checkpoint_every=2", "--config.warmup_steps=1",
            "--config.learning_rate=1e-3"]  # fmt: skip
    return config_loading.apply_overrides(config, tiny + list(overrides))


@pytest.fixture(scope="module")
def gtr_data(tmp_path_factory, gtr_folder) -> Path:
    from v2t_jax import cli

    data_dir = tmp_path_factory.mktemp("gtr_data")
    args = ["data", "prepare", "--corpus", str(CORPUS), "--data-dir", str(data_dir), "--embedder", str(gtr_folder),
            "--quiet"]  # fmt: skip
    assert cli.main(args) == 0
    return data_dir


def test_first_loss_from_a_pretrained_t5_equals_pytorch(t5_folder, gtr_folder, gtr_data):
    """A task from configs/inverter.py:paper with --config.t5.init: its shape is the folder's, its vocabulary the
    folder's tokenizer, its T5 weights the folder's, and its loss on a batch equals transformers' forward of the
    same folder fed the same encoder inputs (the embedding projections are ours and start fresh)."""
    import flax.linen as nn
    import jax
    import torch
    import transformers

    from v2t_jax.models import hf_import
    from v2t_jax.training import tasks

    config = _paper_config("inverter.py", gtr_data, t5_folder, gtr_folder)
    task = tasks.load(config)
    cfg, size = task.model_config.t5, json.loads((t5_folder / "config.json").read_text())["vocab_size"]
    want_cfg, want_t5 = hf_import.load_hf_t5(t5_folder)
    assert (cfg.d_model, cfg.num_layers, cfg.vocab_size, cfg.is_gated) == (32, 2, size, True)
    assert (cfg.tie_word_embeddings, cfg.scale_decoder_outputs) == (want_cfg.tie_word_embeddings,
                                                                    want_cfg.scale_decoder_outputs)  # fmt: skip
    assert not task.vocab.in_graph and task.vocab.size == size - 5 and (task.vocab.pad_id, task.vocab.eos_id) == (0, 1)
    fresh = jax.tree_util.tree_map(np.asarray, nn.unbox(jax.jit(task.init_variables)(jax.random.PRNGKey(0))["params"]))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = task.initial_params(fresh, jax.tree_util.tree_map(lambda _: device, fresh))
    for a, b in zip(jax.tree_util.tree_leaves(params["t5"]), jax.tree_util.tree_leaves(want_t5)):
        np.testing.assert_array_equal(np.asarray(a), b)

    texts = [s.lower() for s in CORPUS.read_text(encoding="utf-8").splitlines()[:4]]
    split = type("Split", (), {"texts": texts})()
    labels = task.vocab.labels(split)
    mask = (labels != 0).astype(np.int32)
    e = np.random.default_rng(0).normal(size=(4, task.model_config.embed_dim)).astype(np.float32)
    batch = {"embeddings": e, "labels": labels, "mask": mask}
    ours = float(jax.jit(task.eval_metrics)(params, batch)["loss"])

    x = jax.jit(lambda p, e: task.model.apply({"params": p}, e, method=lambda m, e: m.transform(e, True)))(params, e)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(t5_folder).eval()
    with torch.no_grad():
        out = hf(inputs_embeds=torch.tensor(np.asarray(x)), attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                 labels=torch.tensor(np.where(mask > 0, labels, -100), dtype=torch.long))  # fmt: skip
    assert abs(ours - float(out.loss)) < 1e-4, (ours, float(out.loss))


@pytest.mark.slow
def test_paper_configs_train_two_steps_at_tiny_scale_and_export_a_bundle(tmp_path, t5_folder, gtr_folder, gtr_data,
                                                                         sentences):  # fmt: skip
    """configs/inverter.py:paper and configs/corrector.py:paper with the `tiny` overrides: both start from the
    pretrained T5, decode in its tokenizer, and train two steps; the corrector learns on the inverter's
    hypotheses re-embedded through their text, and the exported bundle inverts through the host-side loop."""
    from v2t_jax import api, export
    from v2t_jax.training import tasks, train, warm_start

    out = train.train(_paper_config("inverter.py", gtr_data, t5_folder, gtr_folder), tmp_path / "inv")
    assert np.isfinite(out["train_loss"]) and -1 <= out["eval_cosine"] <= 1  # (random weights)
    inverter = export.export(tmp_path / "inv", tmp_path / "inv_bundle")
    meta = json.loads((inverter / "v2t_model.json").read_text())
    assert meta["vocabulary"] == "tokenizer.json" and meta["inverter"]["t5"]["d_model"] == 32

    config = _paper_config("corrector.py", gtr_data, t5_folder, gtr_folder, f"--config.inverter={inverter}")
    out = train.train(config, tmp_path / "cor")
    assert np.isfinite(out["train_loss"]) and "eval_hypothesis_bleu" in out
    model = api.load_model(export.export(tmp_path / "cor", tmp_path / "bundle"))
    assert model.program.corrector is not None and not model.program.in_graph
    texts = model.invert_embeddings(model.embedder.embed_texts([s.lower() for s in sentences[:2]]), num_steps=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # a corrector decoding in the embedder's vocabulary refuses this inverter (and the other way round)
    with pytest.raises(tasks.TrainingError, match="decodes in its own vocabulary"):
        warm_start.inverter_bundle(str(inverter), str(gtr_folder), 32)


def test_pretrained_t5_errors_are_one_line(tmp_path, t5_folder, gtr_folder, gtr_data):
    from v2t_jax.training import tasks

    with pytest.raises(tasks.TrainingError, match="is not a Hugging Face T5 folder"):
        tasks.load(_paper_config("inverter.py", gtr_data, tmp_path, gtr_folder))
    (tmp_path / "config.json").write_text((t5_folder / "config.json").read_text())
    with pytest.raises(tasks.TrainingError, match="holds no weights"):
        tasks.load(_paper_config("inverter.py", gtr_data, tmp_path, gtr_folder))
    with pytest.raises(tasks.TrainingError, match=r"leave t5.d_model at 0"):
        tasks.load(_paper_config("inverter.py", gtr_data, t5_folder, gtr_folder, "--config.t5.d_model=64"))
    other = tmp_path / "bigger_tokenizer"
    other.mkdir()
    _save_tokenizer(_word_tokenizer([f"w{i}" for i in range(2000)]), other)
    with pytest.raises(tasks.TrainingError, match="the decoder vocabulary has 2003 tokens"):
        tasks.load(_paper_config("inverter.py", gtr_data, t5_folder, gtr_folder, f"--config.vocab={other}"))


# ----------------------------------------------------------------------------- vec2text checkpoints as bundles

GTR_GOLDEN = Path(__file__).parent / "golden" / "vec2text_gtr"  # written by make_vec2text_gtr_golden.py


def _invert(tmp_path, bundle_dir: Path, *flags: str) -> list[str]:
    from v2t_jax import cli

    rows = tmp_path / f"rows{'_'.join(flags)}.jsonl"
    args = ["invert", "--checkpoint", str(bundle_dir), "--embeddings", str(GTR_GOLDEN / "embeddings.npy"),
            "--output", str(rows), "--quiet", *flags]  # fmt: skip
    assert cli.main(args) == 0
    return [json.loads(line)["text"] for line in rows.read_text().splitlines()]


def test_vec2text_checkpoints_import_and_invert_as_vec2text_does(tmp_path):
    """Checkpoints written by vec2text 0.0.13's own save_pretrained (gtr_base layout: T5 vocabulary, GTR-shaped
    embedder read as its mean pool), imported by `v2t import vec2text`: `v2t invert --steps 0` gives what
    vec2text's `invert_embeddings(num_steps=None)` gives, and after a correction step our text is the better by
    cosine of the first hypothesis and the reference corrector's own proposal (vec2text returns the last step's
    text, we the best one seen)."""
    from v2t_jax import api, bundle, cli
    from v2t_jax.models import embedders

    golden = json.loads((GTR_GOLDEN / "outputs.json").read_text())["outputs"]
    out = tmp_path / "bundle"
    args = ["import", "vec2text", str(GTR_GOLDEN / "inversion"), str(GTR_GOLDEN / "corrector"), "--embedder",
            str(GTR_GOLDEN / "gtr"), "--tokenizer", str(GTR_GOLDEN / "tokenizer"), "--output", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    meta = bundle.read_meta(out)
    assert (meta.vocabulary, meta.embedder_head, meta.max_length) == ("tokenizer.json", "none", 16)  # from config.json
    assert meta.extra["source"]["vec2text"]["corrector"] == str((GTR_GOLDEN / "corrector").resolve())
    model = api.load_model(out)
    assert model.embedder.head == "none" and not model.embedder.config.normalize and model.dim == 24

    assert _invert(tmp_path, out, "--steps", "0") == golden["step0"]
    e = np.load(GTR_GOLDEN / "embeddings.npy")

    def best(*names):  # per vector, the golden text of these outputs closest to its target by cosine
        texts = [golden[n] for n in names]
        cos = [np.asarray(embedders.cosine(model.embedder.embed_texts(t, max_length=16), e)) for t in texts]
        return [texts[int(np.argmax([c[i] for c in cos]))][i] for i in range(len(e))]

    # one greedy correction: the corrector's proposal is the reference corrector's own forward-pass decode
    # (vec2text's `generate` departs from that forward pass on 2 of these 4, as tests/test_vec2text_import.py
    # shows on padded hypotheses), and we keep the better of it and the first hypothesis
    assert golden["greedy1"] != golden["greedy1_forward"]
    assert _invert(tmp_path, out, "--steps", "1", "--sbeam", "1") == best("step0", "greedy1_forward")
    assert len(_invert(tmp_path, out, "--steps", "2", "--sbeam", "2")) == len(e)  # the sequence beam runs too
    # v2t audit and v2t bench run it as any bundle (bench times the host-side loop)
    np.save(tmp_path / "store.npy", e)
    (tmp_path / "docs.txt").write_text("\n".join(json.loads((GTR_GOLDEN / "outputs.json").read_text())["texts"]))
    audit = ["audit", str(tmp_path / "store.npy"), "--documents", str(tmp_path / "docs.txt"), "--checkpoint", str(out),
             "--steps", "1", "--sbeam", "1", "--output", str(tmp_path / "audit"), "--quiet"]  # fmt: skip
    assert cli.main(audit) == 0
    records = [json.loads(x) for x in (tmp_path / "audit" / "records.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == best("step0", "greedy1_forward")
    assert cli.main(["bench", "--checkpoint", str(out), "--batch", "2", "--steps", "0,1", "--beam", "1",
                     "--repeats", "1", "--output", str(tmp_path / "bench"), "--quiet"]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["steps"], r["batch"]) for r in rows] == [(0, 2), (1, 2)] and all(r["inversions_per_s"] > 0 for r in rows)

    assert cli.main(args) == 2  # the folder is not empty now
    int8 = tmp_path / "int8"
    assert cli.main(args[:-1] + [str(int8), "--weights", "int8"]) == 0
    assert bundle.read_meta(int8).weights == "int8"


def test_the_command_line_mirrors_the_bundle_formats():
    """commands.py copies the bundle's choices so that `v2t --help` does not import jax: the copies agree."""
    from v2t_jax import bundle, commands

    assert commands.EMBEDDER_HEADS == bundle.EMBEDDER_HEADS and commands.WEIGHT_FORMATS == bundle.WEIGHT_FORMATS


@pytest.mark.parametrize(
    "args,message",
    [
        (["corrector", "--tokenizer", "tokenizer"], "a CorrectorEncoderModel checkpoint; give the InversionModel"),
        (["inversion", "--tokenizer", "gtr/nothing"], "neither 'embedder' nor a tokenizer folder"),
        (["inversion"], "holds no tokenizer.json"),  # no --tokenizer, and the inversion folder has none
        (
            ["inversion", "--tokenizer", "tokenizer", "--max-length", "1"],
            "argument --max-length: 1 is outside 2..4,096",
        ),
        (
            ["inversion", "--tokenizer", "tokenizer", "--embedder-head", "auto", "--embedder", "tokenizer"],
            "no config.json",
        ),
        (["nowhere", "--tokenizer", "tokenizer"], "INVERSION_DIR"),
    ],
)
def test_v2t_import_vec2text_errors_are_one_line(tmp_path, capsys, args, message):
    from v2t_jax import cli

    f = GTR_GOLDEN
    folder, *flags = args
    flags = [str(f / x) if i and flags[i - 1] in ("--tokenizer", "--embedder") else x for i, x in enumerate(flags)]
    base = ["import", "vec2text", str(f / folder), "--embedder", str(f / "gtr"), "--output", str(tmp_path / "b")]
    assert cli.main(base + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "b").exists()
