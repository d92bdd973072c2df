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
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from v2t_jax.data import passages, sources
from v2t_jax.errors import V2TError

VERSION = "1.1.0"  # 1.1.0: duplicates across sources dropped; built on every core
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

        emb = assets.embedder_key(self.embedder)
        if self.corpus:
            digest = assets.sha256_file(self.corpus)[:10]
            origin = f"file-{assets.slug(Path(self.corpus).stem)}-{digest}"
        else:
            origin = "+".join(self.sources)
            if self.sources == sources.ALL_SOURCES:
                origin = "all"
            elif len(origin) > 60:  # TFDS config names stay readable: count + digest of the names
                origin = f"{len(self.sources)}sources-" + hashlib.sha256(origin.encode()).hexdigest()[:10]
        return f"{origin}-{emb}-{self.max_tokens}tok-seed{self.seed}"


class V2tPassages(tfds.core.GeneratorBasedBuilder):
    """Passages of at most 32 embedder tokens from offline English text, split by document."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(
        self,
        *,
        spec: DatasetSpec | None = None,
        cache_dir: str | None = None,
        workers: int | None = None,
        progress: bool = False,
        **kwargs,
    ):
        self.spec = spec or DatasetSpec()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.workers, self.progress = workers, progress
        self.built: passages.Built | None = None  # set by a build: what counts() records
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
            docs = list(sources.user_file_documents(self.spec.corpus))
            jobs = [docs[i : i + 256] for i in range(0, len(docs), 256)]
        else:
            jobs = sources.work_units(self.spec.sources, cache)
        workers = self.workers or min(passages.default_workers(), max(1, len(jobs)))
        self.built = passages.build(
            jobs, tokenizer, self.spec.max_tokens, self.spec.seed, SPLIT_FRACTIONS, workers, self.progress
        )
        if not any(self.built.splits.values()):
            what = self.spec.corpus or ", ".join(self.spec.sources)
            raise sources.SourceError(f"{what} holds no passage of at least 3 words; nothing to build")
        return {name: self._generate_examples(items) for name, items in self.built.splits.items() if items}

    def _generate_examples(self, items):
        for p in items:
            key = f"{p.doc_id}#{p.index}"
            yield (
                key,
                {"text": p.text, "source": p.source, "doc_id": p.doc_id, "index": p.index, "n_tokens": p.n_tokens},
            )


def builder(
    spec: DatasetSpec, data_dir: str | os.PathLike | None = None, cache_dir: str | None = None, **kwargs
) -> V2tPassages:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # tfds logs every custom config as a warning
    return V2tPassages(spec=spec, data_dir=str(data_dir or default_data_dir()), cache_dir=cache_dir, **kwargs)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared dataset as its readers find it: the TFDS builder, the folder of its target embeddings for the
    spec's embedder and length, and the `v2t data prepare` command that makes both."""

    builder: V2tPassages
    targets_dir: Path
    command: str


class NotPrepared(V2TError, FileNotFoundError):
    """The dataset a run reads is not built; the message names the command that builds it."""


def prepared(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, check: bool = True) -> Prepared:
    """The one place that finds a prepared dataset (training, `v2t data hypotheses`, the results table and the
    benchmarks): `spec`'s builder in `data_dir` (default: `default_data_dir()`), its targets folder and the
    command that makes them; with `check`, NotPrepared unless the dataset is built."""
    from v2t_jax.data import targets

    b = builder(spec, data_dir)
    made_of = f" --corpus {spec.corpus}" if spec.corpus else f" --sources {' '.join(spec.sources)}"
    command = "v2t data prepare" + made_of
    if data_dir:
        command += f" --data-dir {data_dir}"
    if check and not Path(b.data_dir, "dataset_info.json").exists():
        raise NotPrepared(f"dataset {spec.config_name} is not prepared; run: {command}")
    return Prepared(b, targets.targets_dir(b.data_dir, spec.embedder, spec.max_tokens), command)


def prepare(
    spec: DatasetSpec, data_dir=None, cache_dir=None, workers: int | None = None, progress: bool = False
) -> tuple[V2tPassages, dict]:
    """Builds the dataset if it is not there yet (re-running does nothing) and returns its counts. Reading,
    sentence splitting and tokenisation run on `workers` processes (default: every core); the counts and
    the per-passage source table are taken from the passages as they are written, not read back."""
    b = builder(spec, data_dir, cache_dir, workers=workers, progress=progress)
    tfds.disable_progress_bar()
    b.download_and_prepare()
    if b.built is not None:
        _write_counts(b, b.built)
    return b, counts(b)


def _write_counts(b: V2tPassages, built: passages.Built) -> None:
    names = sorted({p.source for items in built.splits.values() for p in items})
    code = {n: i for i, n in enumerate(names)}
    out: dict = {"sources": names, "duplicates_dropped": dict(sorted(built.duplicates.items()))}
    for split, items in built.splits.items():
        if not items:
            continue
        out[split] = _split_counts((p.source, p.doc_id) for p in items)
        ids = np.array([code[p.source] for p in items], np.uint8 if len(names) < 256 else np.uint16)
        _atomic_save(Path(b.data_dir) / f"{split}.source_ids.npy", ids)
    _write_json(Path(b.data_dir) / "counts.json", out)


def _split_counts(pairs) -> dict:
    """Passages and documents of one split, in all and per source, from its (source, doc_id) pairs."""
    per_source = collections.Counter()
    docs = collections.defaultdict(set)
    for source, doc_id in pairs:
        per_source[source] += 1
        docs[source].add(doc_id)
    return {
        "passages": sum(per_source.values()),
        "documents": sum(len(v) for v in docs.values()),
        "by_source": {s: {"passages": per_source[s], "documents": len(docs[s])} for s in sorted(per_source)},
    }


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def source_ids(b: V2tPassages, split: str) -> tuple[np.ndarray, list[str]]:
    """(source number of every passage of `split` [N], the source names it indexes)."""
    path = Path(b.data_dir) / f"{split}.source_ids.npy"
    c = counts(b)
    # the sorted source names, as `_write_counts` numbers them
    names = c.get("sources") or sorted({s for k in splits(c) for s in c[k]["by_source"]})
    if not path.exists():  # a dataset built before 1.1.0 kept no table: read it back once
        code = {n: i for i, n in enumerate(names)}
        _atomic_save(path, np.array([code[_str(r["source"])] for r in rows(b, split)], np.uint16))
    return np.load(path), names


def counts(b: V2tPassages) -> dict:
    """Passages and documents per split and source (cached in the dataset folder)."""
    path = Path(b.data_dir) / "counts.json"
    if path.exists():
        return json.loads(path.read_text())
    out = {
        split: _split_counts((_str(r["source"]), _str(r["doc_id"])) for r in rows(b, split))
        for split in b.as_data_source()
    }
    _write_json(path, out)
    return out


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


SPLITS = ("train", "validation", "test")


def splits(c: dict) -> list[str]:
    """The splits a counts dict holds (it also holds `sources` and `duplicates_dropped`)."""
    return [s for s in SPLITS if s in c]


def rows(b: V2tPassages, split: str, chunk: int = 8192):
    """Every example of `split` in order, read in batches (5x faster than one at a time)."""
    ds = b.as_data_source()[split]
    for start in range(0, len(ds), chunk):
        yield from ds.__getitems__(list(range(start, min(start + chunk, len(ds)))))


def texts(b: V2tPassages, split: str) -> list[str]:
    if b.built is not None:  # just built: the passages are still in memory
        return [p.text for p in b.built.splits[split]]
    return [_str(r["text"]) for r in rows(b, split)]


def format_counts(c: dict) -> str:
    """The counts as a table: a row per split, then a row per source with its passages in each split (the
    held-out counts per source) and the duplicates dropped."""
    present = splits(c)
    lines = [f"{'':<12}" + "".join(f"{s:>12}" for s in present) + f"{'documents':>12}" + f"{'duplicates':>12}"]
    lines.append(
        f"{'all':<12}"
        + "".join(f"{c[s]['passages']:>12,}" for s in present)
        + f"{sum(c[s]['documents'] for s in present):>12,}"
        + f"{sum(c.get('duplicates_dropped', {}).values()):>12,}"
    )
    names = sorted({n for s in present for n in c[s]["by_source"]})
    for n in names:
        row = [c[s]["by_source"].get(n, {}).get("passages", 0) for s in present]
        docs = sum(c[s]["by_source"].get(n, {}).get("documents", 0) for s in present)
        lines.append(
            f"{n:<12}"
            + "".join(f"{v:>12,}" for v in row)
            + f"{docs:>12,}"
            + f"{c.get('duplicates_dropped', {}).get(n, 0):>12,}"
        )
    return "\n".join(lines)
