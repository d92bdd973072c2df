"""The store registry (`stores.KINDS_READ`) without any store library: a new kind is one entry."""

import numpy as np
import pytest

from v2t_jax import stores


def test_a_store_kind_registered_once_is_detected_read_and_checked(tmp_path, monkeypatch):
    """One `Kind` entry (a reader and its file suffix) makes `stores.read` recognise the file, read it, pass the
    options that apply, and hold it to every common check (documents given, --collection, empty)."""
    calls = []

    def read_vec(path, opts):
        calls.append(opts)
        v = np.loadtxt(path, ndmin=2).astype(np.float32)
        return stores.Records([f"r{i}" for i in range(len(v))], v, None, "vec", str(path))

    monkeypatch.setitem(stores.KINDS_READ, "vec", stores.Kind(read_vec, suffixes=(".vec",)))
    f = tmp_path / "store.vec"
    f.write_text("1 0 0\n0 1 0\n")
    assert stores.detect(f) == "vec"
    records = stores.read(f, documents=["a", "b"], vector_column="ignored")
    assert records.ids == ["r0", "r1"] and records.vectors.shape == (2, 3) and records.documents == ["a", "b"]
    assert calls[0].vector_column == "ignored" and calls[0].collection is None
    assert stores.read(f, kind="vec").kind == "vec"
    with pytest.raises(stores.StoreError, match="--collection names a Chroma collection or LanceDB table"):
        stores.read(f, collection="x")
    with pytest.raises(stores.StoreError, match="--documents holds 1 texts for the 2 records"):
        stores.read(f, documents=["a"])
    (tmp_path / "other.bin").write_text("")
    with pytest.raises(stores.StoreError, match=r"\.parquet/\.vec file"):
        stores.detect(tmp_path / "other.bin")
    with pytest.raises(stores.StoreError, match="unknown store kind 'nope': one of auto, chroma"):
        stores.read(f, kind="nope")
