"""What each `v2t` command does, apart from parsing its arguments (`v2t_jax.cli`): every function takes the
parsed `argparse.Namespace` and returns an exit status, and raises `UsageError` (one line, exit status 2) for a
problem with the user's input. Nothing is written unless the whole job succeeds, except `v2t invert`'s streamed
rows, which a rerun resumes. Heavy modules (jax, the models) are imported inside the commands, so `v2t --help`
stays fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import sys
import time
from pathlib import Path

from v2t_jax.errors import V2TError, redact, shown_url  # stdlib only: `v2t --help` stays fast
from v2t_jax.outputs import RowStream, check_file, save_npy_atomic
from v2t_jax.audit.remote import RemoteError


from v2t_jax.search.strategies import (  # noqa: F401  (the flags' defaults, for cli)
    DEFAULT_PATIENCE,
    DEFAULT_POLISH,
    DEFAULT_PRIOR,
    DEFAULT_SBEAM,
    DEFAULT_STEPS,
    DEFAULT_TOKEN_BEAM,
)

WEIGHT_FORMATS = ("float32", "int8")  # v2t_jax.bundle.WEIGHT_FORMATS, without importing jax for --help
EMBEDDER_HEADS = ("auto", "none", "normalize")  # v2t_jax.bundle.EMBEDDER_HEADS, likewise


class UsageError(V2TError):
    """A problem with the user's input; printed as one line, exit status 2 (as every `V2TError`)."""


# ----------------------------------------------------------------------------- input / output helpers


def read_texts(path: str | os.PathLike) -> list[str]:
    """One text per line (blank lines skipped), or `.jsonl` objects with a `text` field."""
    from v2t_jax.outputs import InputError, input_file

    try:
        path = input_file(path, "input file")
    except InputError as e:
        raise UsageError(str(e).replace("pass a file", "pass a .txt or .jsonl file")) from None
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


# ----------------------------------------------------------------------------- commands


def cmd_embed(args: argparse.Namespace) -> int:
    if args.max_length < 2:
        raise UsageError(f"--max-length must be at least 2 tokens, got {args.max_length}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    texts = read_texts(args.input)
    output = check_file(args.output, args.overwrite, [args.input])

    from v2t_jax import assets, parallel
    from v2t_jax.models import embedders

    if args.distributed:  # (before anything starts JAX's backend)
        parallel.initialize(args.distributed)
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
    from v2t_jax import outputs

    parallel.local_mesh(args.devices)  # (a count this host lacks: one line)
    embedder.devices = args.devices
    import jax
    import numpy as np

    count, index = jax.process_count(), jax.process_index()
    t0 = time.perf_counter()
    rows, vectors = embedder.embed_share(
        texts, max_length=args.max_length, batch_size=args.batch_size, progress=not args.quiet, share=(index, count)
    )
    elapsed = time.perf_counter() - t0
    try:
        if count > 1:  # each process its part; process 0 puts them together in input order
            part = parallel.part_path(output.with_name(output.name + ".npz"))
            outputs.write_atomic(part, lambda f: np.savez(f, rows=rows, vectors=vectors), binary=True)
            parallel.barrier("v2t embed: every part written")
            if index == 0:
                vectors = np.zeros((len(texts), embedder.dim), np.float32)
                for i in range(count):
                    with np.load(parallel.part_path(part.with_name(output.name + ".npz"), i, count)) as got:
                        vectors[got["rows"]] = got["vectors"]
                save_npy_atomic(output, vectors)
            parallel.barrier("v2t embed: parts joined")
            part.unlink(missing_ok=True)
            if index:
                return 0
        else:
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

    if args.corpus:
        from v2t_jax.outputs import InputError, input_file

        try:
            input_file(args.corpus, "corpus file")
        except InputError as e:
            raise UsageError(str(e)) from None
    try:
        names = sources.expand(args.sources)
    except sources.SourceError as e:
        raise UsageError(str(e)) from e
    if args.max_tokens < 4:
        raise UsageError(f"--max-tokens must be at least 4, got {args.max_tokens}")
    from v2t_jax import parallel

    if args.distributed:  # (before anything starts JAX's backend)
        parallel.initialize(args.distributed)
    if args.devices is not None and not args.no_targets:
        parallel.local_mesh(args.devices)  # (a count this host lacks: one line, before the dataset is built)
    if (args.workers is not None and args.workers < 1) or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--workers and --batch-size must be >= 1")
    if args.data_dir is not None and Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is a file; pass a folder for the datasets")
    wanted = None
    if args.targets_splits is not None:
        if args.no_targets:
            raise UsageError("--no-targets and --targets-splits contradict each other; give one")
        wanted = [s.strip() for s in args.targets_splits.split(",") if s.strip()]
        if not wanted:
            raise UsageError("--targets-splits needs split names, e.g. --targets-splits test,validation")

    import time

    from v2t_jax.data import dataset, targets
    from v2t_jax.models import embedders

    try:  # the passage length against the embedder's positions, before hours of work
        positions = embedders.max_positions_of(assets.resolve_embedder(args.embedder, args.cache_dir))
    except (assets.AssetError, OSError, ValueError) as e:
        raise UsageError(f"cannot use embedder {args.embedder!r} ({e})") from None
    if positions is not None and args.max_tokens > positions:
        raise UsageError(f"--max-tokens {args.max_tokens} is past the {positions} positions of {args.embedder}; "
                         f"give {positions} or less")  # fmt: skip
    if wanted is not None and any(s not in dataset.SPLITS for s in wanted):
        bad = ", ".join(repr(s) for s in wanted if s not in dataset.SPLITS)
        raise UsageError(f"--targets-splits: {bad} is not a split; the splits are {', '.join(dataset.SPLITS)}")
    spec = dataset.DatasetSpec(
        sources=names,
        corpus=args.corpus,
        embedder=args.embedder,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    start = time.perf_counter()
    import jax

    main = jax.process_index() == 0
    try:
        if not main:  # several processes: the first builds the dataset, the others then read it
            parallel.barrier("v2t data prepare: dataset built")
        b, counts = dataset.prepare(
            spec, data_dir=args.data_dir, cache_dir=args.cache_dir, workers=args.workers,
            progress=not args.quiet and main,
        )  # fmt: skip
    except (sources.SourceError, assets.AssetError) as e:
        raise UsageError(str(e)) from e
    finally:
        if main:
            parallel.barrier("v2t data prepare: dataset built")
    n, took = sum(counts[s]["passages"] for s in dataset.splits(counts)), time.perf_counter() - start
    built = f" built in {took:.1f} s ({n / took:,.0f} passages/s)"
    print(f"dataset {spec.config_name} in {b.data_dir}" + (built if b.built is not None else ""))
    print(dataset.format_counts(counts))
    if args.no_targets:
        return 0
    out = targets.targets_dir(b.data_dir, args.embedder, args.max_tokens)
    splits = dataset.splits(counts)
    if wanted is not None:
        unknown = [s for s in wanted if s not in splits]
        if unknown:
            raise UsageError(f"--targets-splits: no split {', '.join(map(repr, unknown))} in this dataset; it has "
                             f"{', '.join(splits)}")  # fmt: skip
        splits = [s for s in splits if s in wanted]
    missing = [split for split in splits if not targets.exists(out, split)]
    if missing:
        t0 = time.perf_counter()
        emb = embedders.load_embedder(args.embedder, cache_dir=args.cache_dir)
        emb.devices = args.devices
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


MAX_CACHE_ENTRY_BYTES = 1 << 30  # a compiled program larger than this is no program of v2t's


def compile_cache(cache_dir: str | None) -> Path | None:
    """JAX's persistent compilation cache in CACHE/xla (CACHE: --cache-dir, else $V2T_CACHE_DIR or
    ~/.cache/v2t_jax) for the commands that invert: a rerun with the same model, search and batch shape (the next
    audit, a resumed run, the next file of vectors) reads its compiled programs instead of compiling them again
    (15-30 s at 20 steps on 2 CPU cores). An environment that names its own cache (JAX_COMPILATION_CACHE_DIR) keeps
    it; V2T_COMPILE_CACHE=0 turns it off. Entries are native code that runs as the user: a cache is used only when
    `untrusted_cache` finds nothing wrong with it (else one warning line, and the programs are compiled without
    it). Call before anything compiles. Returns the folder used (None: none)."""
    if os.environ.get("V2T_COMPILE_CACHE", "1") == "0":
        return None
    own = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if own:
        folder = Path(own)
    else:
        from v2t_jax import assets

        folder = (Path(cache_dir).expanduser() if cache_dir else assets.default_cache_dir()) / "xla"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return None  # (a read-only home: compile as before)
    import jax

    why = untrusted_cache(folder) if folder.exists() else None
    if why is not None:
        print(f"v2t: warning: not using the compilation cache {folder}: {why}; compiling without it",
              file=sys.stderr)  # fmt: skip
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if own:
        return folder
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # (else JAX reads that)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # (programs worth reading back)
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)  # least recently used entries go past 2 GiB
    return folder


def untrusted_cache(folder: Path) -> str | None:
    """Why the compilation cache `folder` may hold programs that are not the user's own, or make a run wait or
    read without bound (None: nothing). The folder and every folder above it must be the user's (or root's) and
    writable by nobody else (a shared folder with the sticky bit, as /tmp, above it is fine; writable by the
    user's own group is fine where that group has no other member, as with umask 002 and a group per user);
    every entry a regular file (no link, FIFO or device), the user's, writable by nobody else, readable, at most
    MAX_CACHE_ENTRY_BYTES."""
    import stat

    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is None:
        return None  # (no owners to check where there are no uids)
    try:
        real = folder.resolve(strict=True)
        st = os.stat(real)
        if not stat.S_ISDIR(st.st_mode):
            return "it is not a folder"
        if st.st_uid != uid:
            return f"it belongs to another user (uid {st.st_uid})"
        if _others_may_write(st):
            return "others may write to it (chmod go-w it)"
        for above in real.parents:
            up = os.stat(above)
            if up.st_uid not in (0, uid):
                return f"{above} above it belongs to another user (uid {up.st_uid})"
            if _others_may_write(up) and not up.st_mode & stat.S_ISVTX:
                return f"others may replace it: {above} above it is writable by others"
        with os.scandir(real) as entries:
            for entry in entries:
                est = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(est.st_mode):
                    from v2t_jax.outputs import file_kind

                    return f"its entry {entry.name} is {file_kind(est.st_mode)}, not a file"
                if est.st_uid != uid:
                    return f"its entry {entry.name} belongs to another user (uid {est.st_uid})"
                if _others_may_write(est):
                    return f"others may write to its entry {entry.name}"
                if est.st_size > MAX_CACHE_ENTRY_BYTES:
                    return f"its entry {entry.name} holds {est.st_size:,} bytes, more than any program of v2t's"
                if not os.access(entry.path, os.R_OK, follow_symlinks=False):
                    return f"its entry {entry.name} cannot be read"
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    return None


def _others_may_write(st: os.stat_result) -> bool:
    """Whether a user other than the owner may write what `st` describes: others may, or its group may and that
    group is not the user's own group alone (a group per user, with no other member)."""
    import stat

    if st.st_mode & stat.S_IWOTH:
        return True
    if not st.st_mode & stat.S_IWGRP:
        return False
    try:
        import grp

        return not (st.st_gid == os.getgid() and not grp.getgrgid(st.st_gid).gr_mem)
    except (ImportError, KeyError):
        return True


def _load_model(args: argparse.Namespace, resuming: dict | None = None, command: str = ""):
    """(model, search): the bundle named by --checkpoint (or the shipped model) and the search of the command's
    flags (`strategies.from_flags`; no --steps: DEFAULT_STEPS with a corrector, 0 for an inverter-only bundle;
    no --sbeam / --token-beam / --patience: their defaults, or with `resuming`, the state of an interrupted run
    this command continues, what that run started with: `strategies.resumed_flags`), checked against each other
    before any work."""
    from v2t_jax import api, assets
    from v2t_jax.search import strategies

    flags = dict(
        sbeam=args.sbeam, prior=args.prior, polish=args.polish, stop_cosine=args.stop_cosine,
        skip_repeated=args.skip_repeated, patience=args.patience, token_beam=args.token_beam,
    )  # fmt: skip
    flags, taken = strategies.resumed_flags(resuming, flags)
    if taken:
        print(f"v2t {command}: the interrupted run continues with {' '.join(taken)}, as it started (the defaults "
              f"are --sbeam {DEFAULT_SBEAM} --token-beam {DEFAULT_TOKEN_BEAM} --patience {DEFAULT_PATIENCE})",
              file=sys.stderr)  # fmt: skip
    try:
        strategies.from_flags(args.steps, **flags)  # the flags alone, before the model loads
    except strategies.StrategyError as e:
        raise UsageError(str(e)) from None
    if args.polish and getattr(args, "embedder_url", None):
        raise UsageError("--polish needs the embedder's gradients: not with --embedder-url")
    compile_cache(args.cache_dir)
    try:
        model = api.load_model(args.checkpoint, cache_dir=args.cache_dir)
    except (api.ModelError, assets.AssetError) as e:
        raise UsageError(str(e)) from e
    model.use_devices(getattr(args, "devices", None))
    has_corrector = model.program.corrector is not None
    search = strategies.from_flags(args.steps, **flags, has_corrector=has_corrector)
    if search.steps and not has_corrector:
        raise UsageError(f"{args.checkpoint} is an inverter-only bundle (no corrector): use --steps 0")
    try:
        model.check_search(search)
    except strategies.StrategyError as e:
        raise UsageError(f"{args.checkpoint or 'the shipped model'}: {e}") from None
    return model, search


def cmd_demo(args: argparse.Namespace) -> int:
    """Embeds passages, inverts the vectors and prints original vs recovered text with BLEU and cosine."""
    from importlib import resources

    from v2t_jax import api, evaluate
    from v2t_jax.data import passages

    path = args.input or str(resources.files("v2t_jax") / "resources" / "sample_passages.txt")
    texts = read_texts(path)
    model, search = _load_model(args)
    # each text cut where the embedder stops reading (max_length tokens); recovery is scored against that
    # cut as the model can write it (model.embedder_view: for the uncased embedder, as it sees the text)
    refs = [passages.truncate(t, model.embedder.tokenizer, model.max_length)[0] for t in texts]
    scorer = evaluate.Evaluator(model.embedder_view(refs))
    vectors = model.embed_texts(refs)
    try:
        out, trace = model.invert(  # scored as decoded, shown as people write (model.readable)
            vectors, search, return_trace=True, progress=not args.quiet, readable=False
        )
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    first = [row["hypotheses"][0] for row in trace["steps"]]
    first_cos = [row["cosines"][0] for row in trace["steps"]]
    how = search.describe()
    print(f"{len(refs)} passages from {path}, embedded with {model.embedder.name} at {model.max_length} tokens")
    print(f"inverted by {'the shipped model' if args.checkpoint is None else args.checkpoint} ({how})")
    print(
        "BLEU: against each passage "
        + (
            "as the uncased embedder sees it (lower case, accents stripped, WordPiece spacing)"
            if model.vocab.in_graph
            else "as far as the embedder reads it"
        )
        + ", case-folded and whitespace-normalised\n"
    )
    bleu, bleu0 = scorer.per_record(out), scorer.per_record(first)
    shown, shown0 = model.readable(out), model.readable(first)
    for i, (ref, text) in enumerate(zip(refs, shown)):
        print(f"[{i + 1}] original : {ref}")
        if search.steps > 0:
            print(f"    step 0   : {shown0[i]}")
            print(f"               BLEU {bleu0[i]['bleu']:5.1f}  cosine {first_cos[i]:.3f}")
        print(f"    recovered: {text}")
        print(f"               BLEU {bleu[i]['bleu']:5.1f}  cosine {trace['cosine'][i]:.3f}\n")
    final = scorer.score(out, trace["cosine"])
    summary = f"mean over {len(refs)}: BLEU {final['bleu']:.1f}, cosine {final['cosine']:.3f}"
    if search.steps > 0:
        start = scorer.score(first, first_cos)
        summary += f" (step 0: BLEU {start['bleu']:.1f}, cosine {start['cosine']:.3f})"
    print(summary)
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    """Inverts in batches and streams the rows, in order, to OUTPUT.partial (flushed and synced per batch);
    renamed to OUTPUT at the end. An interrupted run (kill, SIGTERM, disk full) keeps its finished rows, and the
    same command resumes after them (OUTPUT.partial.json records what the rows were made from). One run per
    output (`outputs.lock`)."""
    from v2t_jax import outputs
    from v2t_jax.audit import stores

    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    try:
        path = outputs.input_file(args.embeddings, "embeddings file")
        vectors = stores.read_npy(path)
    except stores.StoreError as e:
        raise UsageError(str(e)) from None
    references = read_texts(args.references) if args.references else None
    output = check_file(args.output, args.overwrite, [args.embeddings] + ([args.references] if references else []))
    from v2t_jax import parallel, profiling, runs

    profiling.check_folder(args.profile)
    if args.distributed:
        parallel.initialize(args.distributed)
    rows = runs.rows_path(output)  # (this process's rows)
    RowStream.check(rows)
    with outputs.lock(rows, "invert"):
        return _invert(args, path, vectors, references, output, rows)


def _interrupted_run(rows: Path) -> dict | None:
    """The state an interrupted run of these rows left (`RowStream`'s OUTPUT.partial.json), None if none (or one
    that cannot be read: RowStream refuses it when the run starts)."""
    state = RowStream.paths(rows)[1]
    if state.is_symlink() or not state.is_file():
        return None
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _invert(
    args: argparse.Namespace, path: Path, vectors, references: list[str] | None, output: Path, rows_path: Path
) -> int:
    """`runs.invert` of the command's inputs into `output` (under --distributed each process writes its share to
    `rows_path`, and process 0 joins the parts), with the search of its flags (or of the run it resumes)."""
    import jax

    from v2t_jax import api, assets, runs

    model, search = _load_model(args, resuming=_interrupted_run(rows_path), command="invert")
    try:  # the vectors (dimension, NaN/inf, zero rows, dtype) before any work
        n = len(model.check_embeddings(vectors))
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    if references is not None and len(references) != n:
        raise UsageError(f"{args.references} holds {len(references)} texts for the {n} vectors; give one per vector")
    remote = _remote_embedder(args, model)
    identity = {  # what the rows are made from: a rerun continues only the same run
        "embeddings": assets.sha256_file(path),
        "model": _bundle_digest(args.checkpoint),
        "references": assets.sha256_file(Path(args.references)) if references is not None else None,
        "embedder_url": remote.identity if remote is not None else None,
    }
    try:
        result = runs.invert(
            vectors, model, output, search, batch_size=args.batch_size, references=references,
            trace=bool(args.trace), embed_fn=remote, identity=identity, progress=not args.quiet, profile=args.profile,
        )  # fmt: skip
    except (api.ModelError, RemoteError) as e:
        raise UsageError(str(e)) from None
    if jax.process_index() != 0:
        return 0
    if not args.quiet:
        print(f"v2t invert: wrote {n} rows to {output}", file=sys.stderr)
        if result["profiled"]:
            print(f"v2t invert: a trace of {result['profiled']} batches is in {args.profile}", file=sys.stderr)
    if result["summary"] is not None:
        from v2t_jax import evaluate

        print(f"v2t invert: against {args.references}: {evaluate.summary_line(result['summary'])}")
    return 0


def _remote_embedder(args: argparse.Namespace, model):
    """`--embedder-url`: the OpenAI-compatible endpoint that re-embeds hypotheses (the host-side search), its
    dimension checked against the bundle's with one request before any work; None without the flag."""
    if not getattr(args, "embedder_url", None):
        return None
    from v2t_jax.audit.remote import RemoteEmbedder

    try:
        remote = RemoteEmbedder(
            args.embedder_url,
            args.embedder_model or model.embedder.name,
            api_key_env=args.api_key_env,
            batch_size=args.embedder_batch_size,
            timeout_s=args.embedder_timeout,
            retries=args.embedder_retries,
            concurrency=args.embedder_concurrency,
            dimensions=args.embedder_dimensions,
            rate_wait_s=args.embedder_rate_wait,
        )
        remote.check_dim(model.dim)
    except RemoteError as e:
        raise UsageError(str(e)) from None
    return remote


def cmd_audit(args: argparse.Namespace) -> int:
    """Inverts every vector of a store and writes OUTPUT/report.md, report.png, records.jsonl (streamed and
    resumable as `v2t invert`'s rows) and summary.json (`audit.run`); the store is only read (`v2t_jax.audit.stores`).
    One run per output folder; report.md is written last, and a run stopped after its records and before it
    finishes the report on the next run of the same command."""
    from v2t_jax import audit, outputs
    from v2t_jax.audit import stores

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--batch-size and --limit must be >= 1")
    audit.check_no_report(outputs.check_folder(args.output, "report folder"), args.overwrite)  # before any work
    if args.distributed:  # (before anything starts JAX's backend)
        from v2t_jax import parallel

        parallel.initialize(args.distributed)
    documents = read_texts(args.documents) if args.documents else None
    try:
        records = stores.read(
            args.store, args.store_kind, args.collection, documents, args.vector_column, args.text_column,
            args.id_column, limit=args.limit, timeout_s=args.store_timeout,
        )  # fmt: skip
    except stores.StoreError as e:
        raise UsageError(str(e)) from None
    try:
        return _audit_records(args, records)
    finally:
        if isinstance(records, stores.Paged):
            records.close()


def _audit_records(args: argparse.Namespace, records) -> int:
    from v2t_jax import audit
    from v2t_jax.audit import stores

    model, search = _load_model(args, resuming=_interrupted_run(Path(args.output) / audit.RECORDS), command="audit")
    try:  # the store's fit to the model before the endpoint is asked anything
        audit.check_fit(records, model)
        if not isinstance(records, stores.Paged):  # (a database store's pages are checked as they come)
            model.check_embeddings(records.vectors)
    except V2TError as e:
        raise UsageError(str(e)) from None
    about = {
        "model": args.checkpoint or f"the shipped model ({model.embedder.name})",
        # (--embedder-url as scheme://host:port: its path or query may hold a key; and whatever else is secret)
        "command": redact("v2t " + shlex.join(_shown_argv(getattr(args, "argv", None) or ["audit", args.store]))),
    }

    def say(message: str, resumed: bool) -> None:  # (a resume is said even with --quiet)
        if resumed or not args.quiet:
            print(f"v2t audit: {message}", file=sys.stderr)

    summary = audit.run(
        records, model, args.output, search, batch_size=args.batch_size, embed_fn=_remote_embedder(args, model),
        overwrite=args.overwrite, progress=not args.quiet, about=about, model_key=_bundle_digest(args.checkpoint),
        say=say, page_rows=args.page_rows,
    )  # fmt: skip
    if not summary:  # (another process than the first: it wrote its share, the first the report)
        return 0
    line = f"v2t audit: wrote {Path(args.output) / audit.REPORT}: {summary['records']} records, "
    line += f"mean cosine {summary['mean_cosine']:.3f}"
    if "bleu" in summary:
        line += f"; {100 * summary['half_recovered']:.1f}% give back at least half of their words"
    print(line)
    return 0


def _shown_argv(argv: list[str]) -> list[str]:
    """`argv` with --embedder-url's value as `errors.shown_url` shows it (scheme://host:port)."""
    out, after_flag = [], False
    for arg in argv:
        if after_flag:
            arg = shown_url(arg)
        elif arg.startswith("--embedder-url="):
            arg = "--embedder-url=" + shown_url(arg.partition("=")[2])
        after_flag = arg == "--embedder-url"
        out.append(arg)
    return out


def _bundle_digest(checkpoint: str | None) -> str:
    from v2t_jax import api, assets, bundle

    folder = Path(checkpoint) if checkpoint else api.shipped_bundle()
    return assets.sha256_file(folder / bundle.FILE)


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "vec2text":
        return _export_vec2text(args)
    if args.workdir is None:
        raise UsageError("v2t export needs --workdir (a training run); `v2t export vec2text --bundle B` writes a "
                         "bundle as vec2text checkpoints")  # fmt: skip
    if args.bundle is not None:
        raise UsageError("--bundle is for `v2t export vec2text`; a bundle from a training run takes --workdir")
    out = Path(args.output)
    _new_bundle_folder(out, args.overwrite, "export")
    from v2t_jax import api, bundle, export

    try:
        written = export.export(args.workdir, out, args.step, args.weights, args.inverter, overwrite=args.overwrite)
        meta = json.loads((written / bundle.FILE).read_text())
    except api.ModelError as e:
        raise UsageError(str(e)) from e
    kind = "an inverter-only" if meta["corrector"] is None else "an inverter + corrector"
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"v2t export: wrote {kind} bundle to {out} ({args.weights} weights, {size:.1f} MB)", file=sys.stderr)
    return 0


def _export_vec2text(args: argparse.Namespace) -> int:
    """`v2t export vec2text`: `vec2text_export.from_bundle` of --bundle (default the shipped model) into a new
    --output folder."""
    given = [flag for flag, on in (("--workdir", args.workdir is not None), ("--step", args.step is not None),
                                   ("--inverter", args.inverter is not None), ("--weights", args.weights != "float32"),
                                   ("--overwrite", args.overwrite)) if on]  # fmt: skip
    if given:
        raise UsageError(f"{given[0]} is not for `v2t export vec2text` (it writes --bundle's weights in float32 "
                         "state dicts, into a new --output folder)")  # fmt: skip
    out = Path(args.output)
    from v2t_jax import outputs

    outputs.check_name(out, "output folder")
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} exists; give --output a new folder (vec2text's two checkpoints go in it)")
    from v2t_jax import api
    from v2t_jax.weights import vec2text_export

    try:
        written = vec2text_export.from_bundle(args.bundle, out)
    except (api.ModelError, ValueError, OSError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    parts = " and ".join(f"{written / p.name}" for p in sorted(written.iterdir(), key=lambda p: p.name != "inversion"))
    size = sum(f.stat().st_size for f in written.rglob("*") if f.is_file()) / 1e6
    print(f"v2t export: wrote {parts}, vec2text checkpoints ({size:.1f} MB); run them under vec2text with "
          f"experiments/vec2text_reference.py --load {out}, read them back with v2t import vec2text",
          file=sys.stderr)  # fmt: skip
    return 0


def _new_bundle_folder(out: Path, overwrite: bool, command: str) -> None:
    """Before any work: the rules a bundle folder is written by (`outputs.new_folder`, which checks them again)."""
    from v2t_jax import bundle, outputs

    outputs.check_new_folder(out, command, overwrite, bundle.BUNDLE_FILES)


def cmd_import_vec2text(args: argparse.Namespace) -> int:
    out = Path(args.output)
    _new_bundle_folder(out, args.overwrite, "import")
    for flag, folder in (("INVERSION_DIR", args.inversion), ("CORRECTOR_DIR", args.corrector)):
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"{flag} {folder} is not a folder")
    if args.max_length is not None and not 2 <= args.max_length <= 4096:
        raise UsageError(f"--max-length must be a token count in 2..4096, got {args.max_length}")
    from v2t_jax import api, assets
    from v2t_jax.weights import vec2text_import

    try:
        written = vec2text_import.to_bundle(args.inversion, args.corrector, args.embedder, out, args.weights,
                                            args.tokenizer, args.max_length, args.embedder_head,
                                            overwrite=args.overwrite)  # fmt: skip
    except assets.AssetError:
        raise
    except (api.ModelError, ValueError, KeyError, OSError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    kind = "an inverter-only" if args.corrector is None else "an inverter + corrector"
    size = sum(p.stat().st_size for p in written.iterdir()) / 1e6
    print(f"v2t import: wrote {kind} bundle to {out} ({args.weights} weights, {size:.1f} MB)", file=sys.stderr)
    return 0


def _int_list(text: str, flag: str, low: int, high: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    bad = next((v for v in values if not low <= v <= high), None)
    if bad is not None:
        raise UsageError(f"{flag}: {bad} is outside {low}..{high:,}")
    return values


def _beam_list(text: str) -> list[tuple[int, int | None]]:
    """--beam's items: B (vec2text's search: sbeam B, token beams of B) or BxW (sbeam B, token beams of W), as
    (B, W or None); W as given, since at step 0 BxW is the inverter's token beam of W even where W = B."""
    from v2t_jax.search import strategies

    beams = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            b, w = strategies.parse_widths(item)
            search = strategies.Search(1, b, token_beam=w)
        except strategies.StrategyError as e:
            raise UsageError(f"--beam {item}: {e}") from None
        if (search.beam, w) not in beams:
            beams.append((search.beam, w))  # ("2x2" is "2" with steps: `bench.run` folds them)
    if not beams:
        raise UsageError("--beam is empty")
    return beams


def cmd_bench(args: argparse.Namespace) -> int:
    from v2t_jax.search.strategies import MAX_STEPS

    batches = _int_list(args.batch, "--batch", 1, 1 << 20)
    steps = _int_list(args.steps, "--steps", 0, MAX_STEPS)
    beams = _beam_list(args.beam)
    from v2t_jax import outputs

    out = Path(args.output)
    outputs.check_folder(out.parent, "output folder")  # before any work: the results are written at the end
    for path in (out.with_suffix(".md"), out.with_suffix(".json")):
        outputs.check_regular(path)
    from v2t_jax import api, bench

    if (args.checkpoint is None) == (args.config is None):
        raise UsageError("pass one of --checkpoint BUNDLE or --config configs/corrector.py:VARIANT")
    if args.config is not None:
        from v2t_jax.training import config_loading, tasks

        try:
            config = config_loading.apply_overrides(config_loading.load(args.config), args.overrides)
            model = bench.random_model(tasks.benchmark_pair(config))
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
    from v2t_jax import profiling

    model.use_devices(args.devices)
    profile = profiling.check_folder(args.profile)
    rows = bench.run(
        model, batches, steps, beams, args.repeats, progress=not args.quiet, skip_repeated=args.skip_repeated,
        profile=profile,
    )  # fmt: skip
    command = "v2t " + shlex.join(getattr(args, "argv", None) or ["bench"])  # as typed, through cli.main too
    print(bench.write(rows, Path(args.output), command, desc, model.mesh))
    if profile is not None and not args.quiet:
        print(f"v2t bench: a trace of the first point's timed runs is in {profile}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from v2t_jax.training import config_loading

    try:
        config = config_loading.apply_overrides(config_loading.load(args.config), args.overrides)
    except config_loading.ConfigError as e:
        raise UsageError(str(e)) from e
    from v2t_jax.training import sharding, train

    try:
        train.check_numbers(config)
    except train.TrainingError as e:
        raise UsageError(str(e)) from e
    from v2t_jax import parallel, profiling

    profile = profiling.check_folder(args.profile)
    if args.distributed:
        parallel.initialize(args.distributed)

    try:
        train.train(config, args.workdir, profile=profile)
    except train.Preempted as e:
        import jax

        if jax.process_index() == 0:
            print(f"v2t train: {e}", file=sys.stderr)
        return e.EXIT_STATUS
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
    model.use_devices(args.devices)
    if not model.vocab.in_graph:
        raise UsageError(f"{args.inverter} decodes in its own vocabulary; a corrector reads the embedder's")
    from v2t_jax.data import dataset, sources
    from v2t_jax.training import hypotheses

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
    tdir = dataset.prepared(spec, args.data_dir, check=False).targets_dir
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
