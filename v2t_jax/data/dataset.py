"""The passage dataset as a TFDS builder (array_record files: no TensorFlow needed).

    v2t data prepare [--data-dir DIR] [--sources wiki bbc sotu moby] [--corpus FILE] [--embedder NAME]

One builder, `v2t_passages`; each (sources or corpus file, embedder tokenizer, max tokens, seed) is a
builder config of its own, named e.g. `wiki+bbc+sotu+moby-all-minilm-l6-v2-32tok-seed0`. Examples:
`text` (the passage, original characters), `source`, `doc_id`, `index` (passage number in its
document), `n_tokens`. Splits are by document (`passages.split_of`). Reading back:
`builder.as_data_source()["test"][i]`.

Users with a hub can train on any TFDS or HF dataset instead: write its texts to a `.jsonl` file with
`text` (and `doc_id`) fields — e.g. `datasets.load_dataset("nq_open")` or `tfds.load("natural_questions")`
passages — and pass it as `--corpus`; it is truncated and split exactly like the built-in sources.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from v2t_jax.data import passages, sources

VERSION = "1.0.0"
SPLIT_FRACTIONS = {"validation": 0.02, "test": 0.04}  # the rest is train; by document


def default_data_dir() -> Path:
    from v2t_jax.assets import default_cache_dir

    return Path(os.environ.get("V2T_DATA_DIR") or default_cache_dir() / "datasets")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    sources: tuple[str, ...] = sources.DEFAULT_SOURCES
    corpus: str | None = None  # a user's .txt/.jsonl instead of the built-in sources
    embedder: str = "all-MiniLM-L6-v2"
    max_tokens: int = 32
    seed: int = 0

    @property
    def config_name(self) -> str:
        from v2t_jax import assets

        emb = assets.packaged_key(self.embedder) or _slug(Path(self.embedder).name or self.embedder)
        if self.corpus:
            digest = assets.sha256_file(self.corpus)[:10]
            origin = f"file-{_slug(Path(self.corpus).stem)}-{digest}"
        else:
            origin = "+".join(self.sources)
        return f"{origin}-{emb}-{self.max_tokens}tok-seed{self.seed}"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:40] or "x"


class V2tPassages(tfds.core.GeneratorBasedBuilder):
    """Passages of at most 32 embedder tokens from offline English text, split by document."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, spec: DatasetSpec | None = None, cache_dir: str | None = None, **kwargs):
        self.spec = spec or DatasetSpec()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        kwargs.setdefault("config", tfds.core.BuilderConfig(name=self.spec.config_name, version=VERSION))
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "source": tfds.features.Text(),
                    "doc_id": tfds.features.Text(),
                    "index": np.int32,
                    "n_tokens": np.int32,
                }
            ),
            metadata=tfds.core.MetadataDict(spec=dataclasses.asdict(self.spec)),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        from v2t_jax import assets
        from v2t_jax.models.embedders import _tokenizer_folder, load_tokenizer

        cache = self.cache_dir or assets.default_cache_dir()
        tokenizer = load_tokenizer(_tokenizer_folder(str(assets.resolve_embedder(self.spec.embedder, cache))))
        if self.spec.corpus:
            docs = sources.user_file_documents(self.spec.corpus)
        else:
            docs = sources.documents(self.spec.sources, cache)
        by_split = passages.passages_by_split(docs, tokenizer, self.spec.max_tokens, self.spec.seed, SPLIT_FRACTIONS)
        return {name: self._generate_examples(items) for name, items in by_split.items() if items}

    def _generate_examples(self, items):
        for p in items:
            key = f"{p.doc_id}#{p.index}"
            yield (
                key,
                {"text": p.text, "source": p.source, "doc_id": p.doc_id, "index": p.index, "n_tokens": p.n_tokens},
            )


def builder(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, cache_dir: str | None = None) -> V2tPassages:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds logs every custom config as a warning
    return V2tPassages(spec=spec, data_dir=str(data_dir or default_data_dir()), cache_dir=cache_dir)


def prepare(spec: DatasetSpec, data_dir=None, cache_dir=None) -> tuple[V2tPassages, dict]:
    """Builds the dataset if it is not there yet (re-running does nothing) and returns its counts."""
    b = builder(spec, data_dir, cache_dir)
    tfds.disable_progress_bar()
    b.download_and_prepare()
    return b, counts(b)


def counts(b: V2tPassages) -> dict:
    """Passages and documents per split and source (cached in the dataset folder)."""
    path = Path(b.data_dir) / "counts.json"
    if path.exists():
        return json.loads(path.read_text())
    out: dict = {}
    for split, ds in b.as_data_source().items():
        per_source = collections.Counter()
        docs = collections.defaultdict(set)
        for i in range(len(ds)):
            ex = ds[i]
            src = _str(ex["source"])
            per_source[src] += 1
            docs[src].add(_str(ex["doc_id"]))
        out[split] = {
            "passages": len(ds),
            "documents": sum(len(v) for v in docs.values()),
            "by_source": {s: {"passages": per_source[s], "documents": len(docs[s])} for s in sorted(per_source)},
        }
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def texts(b: V2tPassages, split: str) -> list[str]:
    ds = b.as_data_source()[split]
    return [_str(ds[i]["text"]) for i in range(len(ds))]


def format_counts(c: dict) -> str:
    lines = ["split        passages  documents  by source (passages/documents)"]
    for split in ("train", "validation", "test"):
        if split not in c:
            continue
        s = c[split]
        srcs = ", ".join(f"{k} {v['passages']}/{v['documents']}" for k, v in s["by_source"].items())
        lines.append(f"{split:<12} {s['passages']:>8}  {s['documents']:>9}  {srcs}")
    return "\n".join(lines)
