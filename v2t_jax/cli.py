"""The `v2t` command.

    v2t embed --embedder all-MiniLM-L6-v2 --input texts.txt --output vectors.npy [--max-length 32]

Every user error is one line on stderr, `v2t <command>: error: ...`, with exit status 2;
nothing is written unless the whole job succeeds.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


# `v2t invert` / `v2t demo` defaults with a corrector: 20 greedy correction steps (~0.6 s a passage on 2 CPU
# cores); experiments/results/table1_minilm.md shows what a sequence beam adds, at what cost.
DEFAULT_STEPS = 20
DEFAULT_SBEAM = 1
WEIGHT_FORMATS = ("float32", "int8")  # v2t_jax.bundle.WEIGHT_FORMATS, without importing jax for --help


class UsageError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- input / output helpers


def read_texts(path: str | os.PathLike) -> list[str]:
    """One text per line (blank lines skipped), or `.jsonl` objects with a `text` field."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"input {path} is a directory; pass a .txt or .jsonl file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"input {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        from v2t_jax.data.sources import SourceError, jsonl_objects

        try:
            texts = [obj["text"] for _, obj in jsonl_objects(path)]
        except SourceError as e:
            raise UsageError(str(e)) from e
    else:
        # only "\n" (or "\r\n") ends a line: str.splitlines would also split at U+2028, U+0085, form feeds ...
        # inside a line, and one text would silently become several vectors
        texts = [line.removesuffix("\r") for line in raw.split("\n") if line.strip()]
    if not texts:
        raise UsageError(f"input file {path} holds no texts")
    return texts


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Fails early (before any work) if the output cannot or must not be written (or is one of `inputs`)."""
    path = Path(path)
    for inp in inputs:
        if path.exists() and Path(inp).exists() and os.path.samefile(path, inp):
            raise UsageError(f"output {path} is the input {inp}; write the output to another path")
    if path.is_dir():
        raise UsageError(f"output {path} is a directory; pass a file path such as vectors.npy")
    if path.exists() and not overwrite:
        raise UsageError(f"output {path} already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".v2t-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def _output_mode(path: Path) -> int:
    """The mode an output should get: the replaced file's, or for a new file what the umask allows of 0666
    (mkstemp creates its temporary file 0600 whatever the umask)."""
    from v2t_jax import assets

    return path.stat().st_mode & 0o7777 if path.exists() else assets.new_file_mode()


def write_atomic(path: Path, write, binary: bool) -> None:
    """write(file) into a temporary file beside `path`, then renamed into place with `_output_mode`'s mode;
    nothing is left behind on failure."""
    from v2t_jax import assets

    mode = _output_mode(path)
    parent = path.parent if str(path.parent) else Path(".")
    assets.sweep_stale(parent, f".{path.name}.", ".")  # what a killed run left beside this output
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npy_atomic(path: Path, array) -> None:
    """Writes to a temporary file beside `path`, then renames it into place."""
    import numpy as np

    write_atomic(path, lambda f: np.save(f, array), binary=True)


# ----------------------------------------------------------------------------- commands


def cmd_embed(args: argparse.Namespace) -> int:
    if args.max_length < 2:
        raise UsageError(f"--max-length must be at least 2 tokens, got {args.max_length}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    texts = read_texts(args.input)
    output = check_output(args.output, args.overwrite, [args.input])

    from v2t_jax import assets
    from v2t_jax.models import embedders

    try:
        embedder = embedders.load_embedder(args.embedder, cache_dir=args.cache_dir, head=args.head)
    except assets.AssetError as e:
        raise UsageError(str(e)) from e
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"cannot load embedder {args.embedder!r}: {e}") from e
    if embedder.config.max_positions is not None and args.max_length > embedder.config.max_positions:
        raise UsageError(
            f"--max-length {args.max_length} exceeds the embedder's {embedder.config.max_positions} positions"
        )
    t0 = time.perf_counter()
    vectors = embedder.embed_texts(
        texts, max_length=args.max_length, batch_size=args.batch_size, progress=not args.quiet
    )
    elapsed = time.perf_counter() - t0
    try:
        save_npy_atomic(output, vectors.astype("float32"))
    except OSError as e:
        raise UsageError(f"cannot write {output} ({e.strerror or e}); nothing was written") from None
    if not args.quiet:
        print(
            f"v2t embed: wrote {output} [{vectors.shape[0]}, {vectors.shape[1]}] float32 "
            f"({len(texts) / elapsed:.1f} texts/s incl. compile)",
            file=sys.stderr,
        )
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from v2t_jax import assets
    from v2t_jax.data import sources

    if args.corpus and not Path(args.corpus).is_file():
        raise UsageError(f"corpus file {args.corpus} does not exist")
    try:
        names = sources.expand(args.sources)
    except sources.SourceError as e:
        raise UsageError(str(e)) from e
    if args.max_tokens < 4:
        raise UsageError(f"--max-tokens must be at least 4, got {args.max_tokens}")
    if (args.workers is not None and args.workers < 1) or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--workers and --batch-size must be >= 1")

    import time

    from v2t_jax.data import dataset, targets
    from v2t_jax.models import embedders

    spec = dataset.DatasetSpec(
        sources=names,
        corpus=args.corpus,
        embedder=args.embedder,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    start = time.perf_counter()
    try:
        b, counts = dataset.prepare(
            spec, data_dir=args.data_dir, cache_dir=args.cache_dir, workers=args.workers, progress=not args.quiet
        )
    except (sources.SourceError, assets.AssetError) as e:
        raise UsageError(str(e)) from e
    n, took = sum(counts[s]["passages"] for s in dataset.splits(counts)), time.perf_counter() - start
    built = f" built in {took:.1f} s ({n / took:,.0f} passages/s)"
    print(f"dataset {spec.config_name} in {b.data_dir}" + (built if b.built is not None else ""))
    print(dataset.format_counts(counts))
    if args.no_targets:
        return 0
    out = targets.targets_dir(b.data_dir, args.embedder, args.max_tokens)
    missing = [split for split in dataset.splits(counts) if not targets.exists(out, split)]
    if missing:
        t0 = time.perf_counter()
        emb = embedders.load_embedder(args.embedder, cache_dir=args.cache_dir)
        batch = args.batch_size or targets.default_batch_size()
        todo = 0
        for split in missing:
            texts = dataset.texts(b, split)
            todo += len(texts)
            targets.precompute(texts, emb, out, split, args.max_tokens, batch_size=batch, progress=not args.quiet)
        rate = todo / (time.perf_counter() - t0)
        print(f"target embeddings and ids in {out} ({todo:,} passages at batch {batch}, {rate:,.0f} passages/s)")
    else:
        print(f"target embeddings and ids in {out}")
    return 0


def _load_model(args: argparse.Namespace):
    """The bundle named by --checkpoint, or the shipped model; checks --steps/--sbeam against it (no --steps:
    DEFAULT_STEPS with a corrector, 0 for an inverter-only bundle)."""
    if (args.steps is not None and args.steps < 0) or args.sbeam < 1:
        raise UsageError("--steps must be >= 0 and --sbeam >= 1")
    from v2t_jax import api, assets

    try:
        model = api.load_model(args.checkpoint, cache_dir=args.cache_dir)
    except (api.ModelError, assets.AssetError) as e:
        raise UsageError(str(e)) from e
    if args.steps is None:
        args.steps = DEFAULT_STEPS if model.program.corrector is not None else 0
    if args.steps > 0 and model.program.corrector is None:
        raise UsageError(f"{args.checkpoint} is an inverter-only bundle (no corrector): use --steps 0")
    return model


def cmd_demo(args: argparse.Namespace) -> int:
    """Embeds passages, inverts the vectors and prints original vs recovered text with BLEU and cosine."""
    from importlib import resources

    from v2t_jax import api, metrics
    from v2t_jax.data import passages

    path = args.input or str(resources.files("v2t_jax") / "resources" / "sample_passages.txt")
    texts = read_texts(path)
    model = _load_model(args)
    norm = metrics.normalize
    # each text cut where the embedder stops reading (max_length tokens); recovery is scored against that
    # cut as the uncased embedder sees it (model.embedder_view)
    refs = [passages.truncate(t, model.embedder.tokenizer, model.max_length)[0] for t in texts]
    views = [norm(v) for v in model.embedder_view(refs)]
    vectors = model.embedder.embed_texts(refs, max_length=model.max_length)
    try:
        out, trace = model.invert_embeddings(
            vectors, num_steps=args.steps, sequence_beam_width=args.sbeam, return_trace=True, progress=not args.quiet
        )
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    first = [row["hypotheses"][0] for row in trace["steps"]]
    first_cos = [row["cosines"][0] for row in trace["steps"]]
    how = "inverter only" if args.steps == 0 else f"{args.steps} correction steps, sequence beam {args.sbeam}"
    print(f"{len(refs)} passages from {path}, embedded with {model.embedder.name} at {model.max_length} tokens")
    print(f"inverted by {'the shipped model' if args.checkpoint is None else args.checkpoint} ({how})")
    print(
        "BLEU: against each passage as the uncased embedder sees it (lower case, accents stripped, WordPiece "
        "spacing), case-folded and whitespace-normalised\n"
    )
    for i, (ref, text) in enumerate(zip(refs, out)):
        bleu = metrics.sentence_bleu(norm(text), views[i])
        print(f"[{i + 1}] original : {ref}")
        if args.steps > 0:
            b0 = metrics.sentence_bleu(norm(first[i]), views[i])
            print(f"    step 0   : {first[i]}")
            print(f"               BLEU {b0:5.1f}  cosine {first_cos[i]:.3f}")
        print(f"    recovered: {text}")
        print(f"               BLEU {bleu:5.1f}  cosine {trace['cosine'][i]:.3f}\n")
    final = metrics.text_metrics([norm(t) for t in out], views, trace["cosine"])
    summary = f"mean over {len(refs)}: BLEU {final['bleu']:.1f}, cosine {final['cosine']:.3f}"
    if args.steps > 0:
        start = metrics.text_metrics([norm(t) for t in first], views, first_cos)
        summary += f" (step 0: BLEU {start['bleu']:.1f}, cosine {start['cosine']:.3f})"
    print(summary)
    return 0


def _npy_problem(path: Path, error: Exception) -> str:
    """What is wrong with a .npy that numpy refused, in words that do not suggest loading pickles."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head != b"\x93NUMPY":
        return "not a .npy file (no NumPy header); save the [N, D] vectors with numpy.save"
    if "pickle" in str(error).lower():
        return "it holds Python objects, which v2t never loads; save a float array"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def cmd_invert(args: argparse.Namespace) -> int:
    """Inverts in batches and streams the rows, in order, to OUTPUT.partial (flushed and synced per batch);
    renamed to OUTPUT at the end. An interrupted run (kill, SIGTERM, disk full) keeps its finished rows, and the
    same command resumes after them (OUTPUT.partial.json records what the rows were made from)."""
    import numpy as np

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    path = Path(args.embeddings)
    if not path.is_file():
        raise UsageError(f"embeddings file {path} does not exist")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot read {path} as a .npy array ({_npy_problem(path, e)})") from None
    if not isinstance(vectors, np.ndarray):
        raise UsageError(f"{path} holds several arrays (.npz); save the [N, D] vectors with numpy.save as .npy")
    output = check_output(args.output, args.overwrite, [args.embeddings])
    model = _load_model(args)

    from v2t_jax import api, assets, bundle

    try:  # the vectors (dimension, NaN/inf, zero rows, dtype) before any work
        n = len(model.check_embeddings(vectors))
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    bs = model.batch_rows(n, args.batch_size)
    folder = Path(args.checkpoint) if args.checkpoint else api.shipped_bundle()
    run = {
        "embeddings": assets.sha256_file(path),
        "model": assets.sha256_file(folder / bundle.FILE),
        "steps": args.steps,
        "sbeam": args.sbeam,
        "stop_cosine": args.stop_cosine,
        "batch_size": bs,
        "skip_repeated": args.skip_repeated,
        "trace": bool(args.trace),
    }
    stream = RowStream(output, run, bs)
    try:
        for _, texts, cosines, steps in model.iter_batches(
            vectors,
            num_steps=args.steps,
            sequence_beam_width=args.sbeam,
            stop_cosine=args.stop_cosine,
            batch_size=bs,
            trace=bool(args.trace),
            progress=not args.quiet,
            skip_repeated=args.skip_repeated,
            start=stream.done,
        ):
            rows = [{"text": t, "cosine": c} for t, c in zip(texts, cosines)]
            for row, trace in zip(rows, steps or []):
                row["steps"] = trace
            stream.append([json.dumps(r, ensure_ascii=False) for r in rows])
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    stream.finish()
    if not args.quiet:
        print(f"v2t invert: wrote {n} rows to {output}", file=sys.stderr)
    return 0


class RowStream:
    """JSON lines written in order to OUTPUT.partial as batches finish, with OUTPUT.partial.json naming the run
    (inputs and settings); `done` rows are on disk (whole batches: a torn last batch is cut off) and a rerun of
    the same run continues after them. `finish` renames the rows into place with the output's mode."""

    def __init__(self, output: Path, run: dict, batch: int):
        self.output, self.run = output, run
        self.partial = output.with_name(output.name + ".partial")
        self.state = output.with_name(output.name + ".partial.json")
        self.done = 0
        if self.state.exists() or self.partial.exists():
            try:
                saved = json.loads(self.state.read_text())
            except (OSError, ValueError):
                saved = None
            if saved != run:
                raise UsageError(
                    f"{self.partial} holds an interrupted run of other inputs or settings; rerun that command to "
                    f"finish it, or delete {self.partial} and {self.state}"
                )
            lines = self.partial.read_bytes().split(b"\n") if self.partial.exists() else [b""]
            whole = len(lines) - 1  # the last piece has no newline: empty, or a torn row
            self.done = whole - whole % batch
            if self.partial.exists():
                with open(self.partial, "r+b") as f:
                    f.truncate(sum(len(x) + 1 for x in lines[: self.done]))
            print(f"v2t invert: resuming after the {self.done} rows in {self.partial}", file=sys.stderr)

    def append(self, rows: list[str]) -> None:
        try:
            if not self.state.exists():
                write_atomic(self.state, lambda f: f.write(json.dumps(self.run) + "\n"), binary=False)
            with open(self.partial, "a", encoding="utf-8") as f:
                f.write("".join(r + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UsageError(
                f"cannot write {self.partial} ({e.strerror or e}); the {self.done} rows done are kept: free space "
                "and rerun the same command to continue"
            ) from None
        self.done += len(rows)

    def finish(self) -> None:
        if not self.partial.exists():  # no rows at all
            self.partial.write_text("")
        os.chmod(self.partial, _output_mode(self.output))
        os.replace(self.partial, self.output)
        self.state.unlink(missing_ok=True)


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace its files")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; pass a folder for the bundle")
    from v2t_jax import api, bundle, export

    try:
        meta = json.loads((export.export(args.workdir, out, args.step, args.weights) / bundle.FILE).read_text())
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    kind = "an inverter-only" if meta["corrector"] is None else "an inverter + corrector"
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"v2t export: wrote {kind} bundle to {out} ({args.weights} weights, {size:.1f} MB)", file=sys.stderr)
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    batches = _int_list(args.batch, "--batch")
    steps = _int_list(args.steps, "--steps")
    beams = _int_list(args.beam, "--beam")
    if min(batches) < 1 or min(steps) < 0 or min(beams) < 1 or args.repeats < 1:
        raise UsageError("--batch, --beam and --repeats must be >= 1 and --steps >= 0")
    from v2t_jax import api, bench

    if (args.checkpoint is None) == (args.config is None):
        raise UsageError("pass one of --checkpoint BUNDLE or --config configs/corrector.py:VARIANT")
    if args.config is not None:
        from v2t_jax import config_loading

        try:
            config = config_loading.apply_overrides(config_loading.load(args.config), args.overrides)
            model = bench.random_model(config)
        except (config_loading.ConfigError, ValueError) as e:
            raise UsageError(str(e)) from e
        import jax

        n_inv, n_cor = (
            sum(x.size for x in jax.tree_util.tree_leaves(model.params[k])) / 1e6 for k in ("inverter", "corrector")
        )
        desc = f"random weights of {args.config} (inverter {n_inv:.1f}M + corrector {n_cor:.1f}M params)"
    else:
        if args.overrides:
            raise UsageError(
                f"unrecognized arguments: {' '.join(args.overrides)} (--config.KEY=VALUE goes with --config)"
            )
        try:
            model = api.load_model(args.checkpoint, cache_dir=args.cache_dir)
        except api.ModelError as e:
            raise UsageError(str(e)) from e
        desc = f"bundle {args.checkpoint}"
    if model.program.corrector is None and max(steps) > 0:
        raise UsageError(f"{args.checkpoint} is an inverter-only bundle: use --steps 0")
    rows = bench.run(
        model, batches, steps, beams, args.repeats, progress=not args.quiet, skip_repeated=args.skip_repeated
    )
    command = "v2t bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "v2t bench"
    print(bench.write(rows, Path(args.output), command, desc))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from v2t_jax import config_loading

    try:
        config = config_loading.apply_overrides(config_loading.load(args.config), args.overrides)
    except config_loading.ConfigError as e:
        raise UsageError(str(e)) from e
    from v2t_jax import sharding, train

    try:
        train.check_numbers(config)
    except train.TrainingError as e:
        raise UsageError(str(e)) from e
    if args.distributed:
        import jax

        parts = args.distributed.split(",")
        ok = len(parts) == 3 and ":" in parts[0] and parts[1].isdigit() and parts[2].isdigit()
        if not ok or not int(parts[2]) < int(parts[1]):
            raise UsageError(
                f"--distributed {args.distributed!r}: expected HOST:PORT,NUM_PROCESSES,PROCESS_ID "
                "with 0 <= PROCESS_ID < NUM_PROCESSES, e.g. localhost:1234,2,0"
            )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(parts[0], num_processes=int(parts[1]), process_id=int(parts[2]))

    try:
        train.train(config, args.workdir)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UsageError(
            f"cannot write in {args.workdir} ({e.strerror}); the checkpoints saved so far stay: free space and "
            "rerun the command to resume"
        ) from None
    except (train.TrainingError, sharding.MeshError) as e:
        raise UsageError(str(e)) from e
    return 0


def cmd_data_hypotheses(args: argparse.Namespace) -> int:
    import numpy as np

    from v2t_jax import api

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    try:
        model = api.load_model(args.inverter, cache_dir=args.cache_dir)
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    from v2t_jax.data import dataset, hypotheses, sources, targets

    try:
        names = sources.expand(args.sources)
    except sources.SourceError as e:
        raise UsageError(str(e)) from e
    spec = dataset.DatasetSpec(
        sources=names,
        corpus=args.corpus,
        embedder=model.embedder.name,
        max_tokens=model.max_length,
        seed=args.seed,
    )
    b = dataset.builder(spec, args.data_dir)
    tdir = targets.targets_dir(b.data_dir, model.embedder.name, model.max_length)
    splits = ("train", "validation", "test")
    try:
        out = hypotheses.ensure(model, tdir, Path(args.inverter), splits, args.batch_size, progress=not args.quiet)
    except FileNotFoundError as e:
        raise UsageError(f"dataset {spec.config_name}: {e}") from e
    for split in splits:
        exact = np.asarray(hypotheses.load(out, split)["exact"])
        print(f"{split}: {len(exact)} hypotheses, {int(exact.sum())} already exact")
    print(f"hypotheses in {out}")
    return 0


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="v2t", description="vec2text in JAX: invert text embeddings back to text.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("embed", help="embed texts with a sentence embedder (JAX)")
    e.add_argument(
        "--embedder", default="all-MiniLM-L6-v2", help="packaged name, local folder or hub id (default: %(default)s)"
    )
    e.add_argument(
        "--input",
        required=True,
        help="text file (one text per line; blank lines skipped) or .jsonl with a 'text' field",
    )
    e.add_argument("--output", required=True, help="where to write float32 [N, D] vectors (.npy)")
    e.add_argument(
        "--max-length",
        type=int,
        default=32,
        help="truncate to this many embedder tokens (default: %(default)s, as in the paper)",
    )
    e.add_argument("--batch-size", type=int, default=128, help="texts per jitted batch (default: %(default)s)")
    e.add_argument(
        "--head",
        choices=["auto", "none", "normalize"],
        default="auto",
        help="pooling head: auto follows the folder's modules.json; none = mean pooling only (vec2text's GTR)",
    )
    e.add_argument(
        "--cache-dir", default=None, help="where fetched weights live (default: $V2T_CACHE_DIR or ~/.cache/v2t_jax)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    e.set_defaults(func=cmd_embed)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dp = d.add_parser("prepare", help="build the passage dataset (TFDS) and its target embeddings")
    dp.add_argument("--data-dir", default=None, help="default: $V2T_DATA_DIR or ~/.cache/v2t_jax/datasets")
    dp.add_argument(
        "--sources",
        nargs="+",
        default=["wiki", "bbc", "sotu", "moby"],
        help="built-in sources (default: wiki bbc sotu moby; `all` for every one; `python -m v2t_jax.data.sources` "
        "lists them)",
    )
    dp.add_argument("--corpus", default=None, help="your own .txt (a document per line) or .jsonl (text, doc_id)")
    dp.add_argument("--embedder", default="all-MiniLM-L6-v2")
    dp.add_argument("--max-tokens", type=int, default=32, help="passage length in embedder tokens incl. [CLS]/[SEP]")
    dp.add_argument("--seed", type=int, default=0, help="seed of the split by document")
    dp.add_argument("--cache-dir", default=None)
    dp.add_argument("--no-targets", action="store_true", help="skip precomputing target embeddings")
    dp.add_argument("--workers", type=int, default=None, help="processes that read and tokenise (default: every core)")
    dp.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="passages per embedding batch (default: 128 on CPU, 2048 on GPU/TPU)",
    )
    dp.add_argument("--quiet", action="store_true")
    dp.set_defaults(func=cmd_data_prepare, command="data prepare")

    dh = d.add_parser("hypotheses", help="the inverter's greedy hypotheses for every passage (corrector data)")
    dh.add_argument("--inverter", required=True, help="model bundle holding the trained inverter (v2t export)")
    dh.add_argument("--data-dir", default=None)
    dh.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby"])
    dh.add_argument("--corpus", default=None)
    dh.add_argument("--seed", type=int, default=0)
    dh.add_argument("--batch-size", type=int, default=64)
    dh.add_argument("--cache-dir", default=None)
    dh.add_argument("--quiet", action="store_true")
    dh.set_defaults(func=cmd_data_hypotheses, command="data hypotheses")

    dm = sub.add_parser("demo", help="embed sample passages, invert them, print original vs recovered")
    dm.add_argument("--input", default=None, help="texts to use (default: the shipped sample passages)")
    dm.add_argument("--checkpoint", default=None, help="model bundle folder (default: the shipped model)")
    dm.add_argument(
        "--steps", type=int, default=None, help=f"correction steps (default {DEFAULT_STEPS}; 0 without a corrector)"
    )
    dm.add_argument("--sbeam", type=int, default=DEFAULT_SBEAM, help="sequence beam width (default %(default)s)")
    dm.add_argument("--cache-dir", default=None)
    dm.add_argument("--quiet", action="store_true", help="no progress bar")
    dm.set_defaults(func=cmd_demo)

    iv = sub.add_parser("invert", help="recover text from embedding vectors")
    iv.add_argument("--embeddings", required=True, help="float [N, D] .npy of vectors to invert")
    iv.add_argument(
        "--checkpoint", default=None, help="model bundle folder (default: the shipped all-MiniLM-L6-v2 model)"
    )
    iv.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"correction steps (0: inverter only; default {DEFAULT_STEPS}, or 0 for an inverter-only bundle)",
    )
    iv.add_argument(
        "--sbeam", type=int, default=DEFAULT_SBEAM, help="sequence beam width (1: greedy; default %(default)s)"
    )
    iv.add_argument("--stop-cosine", type=float, default=None, help="stop an example once its cosine reaches this")
    iv.add_argument("--batch-size", type=int, default=32)
    iv.add_argument(
        "--no-skip-repeated",
        dest="skip_repeated",
        action="store_false",
        help="run every step for every vector (default: a vector stops at a fixed point, repeats are embedded once)",
    )
    iv.add_argument("--output", required=True, help="JSON lines: text, cosine[, steps with --trace]")
    iv.add_argument("--trace", action="store_true", help="also write every step's hypothesis and cosine")
    iv.add_argument("--cache-dir", default=None)
    iv.add_argument("--overwrite", action="store_true")
    iv.add_argument("--quiet", action="store_true")
    iv.set_defaults(func=cmd_invert)

    bn = sub.add_parser("bench", help="inversions/s and peak memory over a (batch, steps, beam) grid")
    bn.add_argument("--checkpoint", default=None, help="model bundle folder")
    bn.add_argument(
        "--config",
        default=None,
        help="instead of a bundle: random weights of the shapes a config trains (e.g. configs/corrector.py:cpu_small)",
    )
    bn.add_argument("--batch", default="32", help="comma-separated batch sizes (default %(default)s)")
    bn.add_argument("--steps", default="0,5,20", help="comma-separated correction steps (default %(default)s)")
    bn.add_argument("--beam", default="1,4,8", help="comma-separated sequence beam widths (default %(default)s)")
    bn.add_argument("--repeats", type=int, default=3, help="timed runs per point after compile")
    bn.add_argument(
        "--skip-repeated",
        action="store_true",
        help="time the loop that skips fixed points and repeated candidates (default: the full loop)",
    )
    bn.add_argument("--output", default="bench", help="writes OUTPUT.md and OUTPUT.json (default %(default)s)")
    bn.add_argument("--cache-dir", default=None)
    bn.add_argument("--quiet", action="store_true")
    bn.set_defaults(func=cmd_bench)

    ex = sub.add_parser("export", help="a model bundle from a training run (inverter, or inverter + corrector)")
    ex.add_argument("--workdir", required=True, help="a v2t train run directory")
    ex.add_argument("--output", required=True, help="bundle folder to write")
    ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ex.add_argument(
        "--weights",
        choices=WEIGHT_FORMATS,
        default="float32",
        help="int8: weight-only int8 with per-row float32 scales, ~1/4 the size (default %(default)s)",
    )
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    t = sub.add_parser("train", help="train a model from an ml_collections config; rerun to resume")
    t.add_argument("--config", required=True, help="configs/inverter.py[:variant]")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tb/ (rerunning resumes)")
    t.add_argument(
        "--distributed",
        default=None,
        metavar="HOST:PORT,NUM_PROCESSES,PROCESS_ID",
        help="multi-process run: jax.distributed.initialize with these arguments (CPU: gloo collectives)",
    )
    t.set_defaults(func=cmd_train)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "bench"):
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except UsageError as e:
        print(f"v2t {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            msg = f"interrupted; the checkpoints saved so far stay in {args.workdir}: rerun the command to resume"
        elif args.command == "invert":
            msg = f"interrupted; the finished rows stay in {args.output}.partial: rerun the command to resume"
        else:
            msg = "interrupted; nothing was written"
        print(f"v2t {args.command}: {msg}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
