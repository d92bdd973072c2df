"""The `v2t` command line: argument parsing only; what each command does is `v2t_jax.commands`.

    v2t embed --embedder all-MiniLM-L6-v2 --input texts.txt --output vectors.npy [--max-length 32]

Every user error is one line on stderr, `v2t <command>: error: ...`, with exit status 2;
nothing is written unless the whole job succeeds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from v2t_jax.commands import (
    DEFAULT_PATIENCE,
    DEFAULT_POLISH,
    DEFAULT_PRIOR,
    DEFAULT_SBEAM,
    DEFAULT_STEPS,
    DEFAULT_TOKEN_BEAM,
    EMBEDDER_HEADS,
    WEIGHT_FORMATS,
    cmd_audit,
    cmd_bench,
    cmd_data_hypotheses,
    cmd_data_prepare,
    cmd_demo,
    cmd_embed,
    cmd_export,
    cmd_import_vec2text,
    cmd_invert,
    cmd_train,
)
from v2t_jax.audit import stores
from v2t_jax.errors import V2TError, add_secret, add_url_secrets, one_line, shown_url
from v2t_jax.audit.remote import DEFAULT_CONCURRENCY, DEFAULT_KEY_ENV, DEFAULT_RATE_WAIT_S, MAX_CONCURRENCY

# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


MAX_ROWS = 1 << 20  # a batch of rows (texts, vectors) a flag may ask for: far past any accelerator's memory
MAX_COUNT = 1 << 40  # records, steps, seeds: past any real count, within every integer type on the way


def _count(low: int, high: int):
    """An argparse type: a whole number in [low, high], checked where it is parsed (a value JAX or numpy would
    overflow on, or that would ask for a million processes, is one line before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high:,}")
        return value

    return parse


def _seconds(low: float, high: float):
    """An argparse type: a number of seconds in [low, high] (NaN and infinities refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:  # (False for NaN)
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g} seconds")
        return value

    return parse


def _search_flags(p: argparse.ArgumentParser, stop_and_skip: bool = False) -> None:
    """The search's flags (`v2t_jax.search.strategies.from_flags`), the same for every command that inverts (--steps,
    --sbeam, --token-beam, --prior, --polish, --patience);
    --stop-cosine and --no-skip-repeated where `stop_and_skip` (elsewhere: no stop cosine, skipping on)."""
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"correction steps (0: inverter only; default {DEFAULT_STEPS}, or 0 for an inverter-only bundle)",
    )
    p.add_argument(
        "--sbeam",
        type=int,
        default=None,
        help=f"sequence beam width: hypotheses kept per step (1: greedy; default {DEFAULT_SBEAM} with --token-beam "
        f"{DEFAULT_TOKEN_BEAM}; a rerun continues an interrupted run with the search it started with)",
    )
    p.add_argument(
        "--token-beam",
        type=int,
        default=None,
        metavar="W",
        help="candidates the corrector proposes from each hypothesis (its token beam search width; at least "
        f"--sbeam; default {DEFAULT_TOKEN_BEAM} without --sbeam, --sbeam's with it, as vec2text's sequence beam); "
        "with --steps 0 the inverter's token beam, the candidate closest to the vector kept (default: greedy)",
    )
    p.add_argument(
        "--prior",
        type=float,
        default=DEFAULT_PRIOR,
        help="language prior: rank hypotheses by cosine + PRIOR x their mean log-probability under the corrector "
        "(default %(default)s: cosine alone)",
    )
    p.add_argument(
        "--polish",
        type=int,
        default=DEFAULT_POLISH,
        help="rounds of gradient-guided token swaps after the last step, each kept only if it raises the score "
        "(default %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        metavar="K",
        help="also stop a vector after K steps in a row without a better hypothesis: about half the time for "
        f"BLEU within 0.1 at K {DEFAULT_PATIENCE} (default {DEFAULT_PATIENCE}; 0: off; --no-skip-repeated: 0; a "
        "rerun continues an interrupted run with the K it started with)",
    )
    if not stop_and_skip:
        p.set_defaults(stop_cosine=None, skip_repeated=True)
        return
    p.add_argument("--stop-cosine", type=float, default=None, help="stop an example once its cosine reaches this")
    p.add_argument(
        "--no-skip-repeated",
        dest="skip_repeated",
        action="store_false",
        help="run every step for every vector (default: a vector stops at a fixed point, repeats are embedded once)",
    )


def _remote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embedder-url",
        default=None,
        help="re-embed hypotheses with an OpenAI-compatible embeddings endpoint (e.g. http://host:8000/v1/embeddings) "
        "instead of the bundle's embedder, on the host between compiled decoding steps",
    )
    p.add_argument("--embedder-model", default=None, help="model name sent to --embedder-url (default: the bundle's)")
    p.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        help="environment variable holding the endpoint's API key, sent as a bearer token (default %(default)s)",
    )
    p.add_argument(
        "--embedder-batch-size", type=_count(1, 4096), default=64, help="texts per request (default %(default)s)"
    )
    p.add_argument(
        "--embedder-timeout",
        type=float,
        default=30.0,
        help="seconds a request may take in all, connecting and reading included (default %(default)s)",
    )
    p.add_argument(
        "--embedder-retries",
        type=_count(0, 20),
        default=4,
        help="retries of a failed request, backing off (default %(default)s; a rate limit spends none)",
    )
    p.add_argument(
        "--embedder-concurrency",
        type=_count(1, MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="requests in flight at once, each on a kept-open connection (default %(default)s)",
    )
    p.add_argument(
        "--embedder-dimensions",
        type=_count(1, 1 << 16),
        default=None,
        metavar="D",
        help="sent as `dimensions` to APIs that shorten their vectors (text-embedding-3); the reply's width is checked",
    )
    p.add_argument(
        "--embedder-rate-wait",
        type=_seconds(0, 86400),
        default=DEFAULT_RATE_WAIT_S,
        metavar="SECONDS",
        help="the longest one request waits out the API's rate limit (429, or 503 with Retry-After), all its waits "
        "together, before the run stops; rows done are kept (default %(default)g)",
    )


def _device_flags(p: argparse.ArgumentParser, profile: bool = False) -> None:
    p.add_argument(
        "--devices",
        type=_count(1, 1 << 16),
        default=None,
        metavar="N",
        help="run on the first N of this host's accelerators (default: all of them, each on its share of a batch)",
    )
    if profile:
        _profile_flag(p)


def _distributed_flag(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument(
        "--distributed",
        default=None,
        metavar="auto|HOST:PORT,NUM_PROCESSES,PROCESS_ID",
        help="multi-process run: `auto` (jax.distributed.initialize() as the cluster sets it up: Cloud TPU, SLURM, "
        "Open MPI, Kubernetes) or HOST:PORT,NUM_PROCESSES,PROCESS_ID (CPU: gloo collectives)" + what,
    )


def _profile_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="write a jax.profiler trace of a few steps after the compile to DIR (tensorboard --logdir DIR, or "
        "Perfetto)",
    )


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
        type=_count(2, 4096),
        default=32,
        help="truncate to this many embedder tokens (default: %(default)s, as in the paper)",
    )
    e.add_argument(
        "--batch-size", type=_count(1, MAX_ROWS), default=128, help="texts per jitted batch (default: %(default)s)"
    )
    e.add_argument(
        "--head",
        choices=["auto", "none", "normalize"],
        default="auto",
        help="pooling head: auto follows the folder's modules.json; none = mean pooling only (vec2text's GTR)",
    )
    e.add_argument(
        "--cache-dir", default=None, help="where fetched weights live (default: $V2T_CACHE_DIR or ~/.cache/v2t_jax)"
    )
    _device_flags(e)
    _distributed_flag(e, "; each process embeds its share of the batches, process 0 writes the output")
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
    dp.add_argument(
        "--max-tokens", type=_count(4, 4096), default=32, help="passage length in embedder tokens incl. [CLS]/[SEP]"
    )
    dp.add_argument("--seed", type=_count(0, 2**32 - 1), default=0, help="seed of the split by document")
    dp.add_argument("--cache-dir", default=None)
    dp.add_argument("--no-targets", action="store_true", help="skip precomputing target embeddings")
    dp.add_argument(
        "--targets-splits",
        default=None,
        help="comma-separated splits to precompute target embeddings for (e.g. test,validation: the held-out "
        "splits in minutes, without the train split's hours on CPU; default: every split)",
    )
    dp.add_argument(
        "--workers", type=_count(1, 1024), default=None, help="processes that read and tokenise (default: every core)"
    )
    dp.add_argument(
        "--batch-size",
        type=_count(1, MAX_ROWS),
        default=None,
        help="passages per embedding batch (default: 128 on CPU, 2048 on GPU/TPU)",
    )
    _device_flags(dp)
    _distributed_flag(dp, "; process 0 builds the dataset, each process embeds its share of the targets' pieces")
    dp.add_argument("--quiet", action="store_true")
    dp.set_defaults(func=cmd_data_prepare, command="data prepare")

    dh = d.add_parser("hypotheses", help="the inverter's greedy hypotheses for every passage (corrector data)")
    dh.add_argument("--inverter", required=True, help="model bundle holding the trained inverter (v2t export)")
    dh.add_argument("--data-dir", default=None)
    dh.add_argument("--sources", nargs="+", default=["wiki", "bbc", "sotu", "moby"])
    dh.add_argument("--corpus", default=None)
    dh.add_argument("--seed", type=_count(0, 2**32 - 1), default=0)
    dh.add_argument("--batch-size", type=_count(1, MAX_ROWS), default=64)
    dh.add_argument("--cache-dir", default=None)
    _device_flags(dh)
    dh.add_argument("--quiet", action="store_true")
    dh.set_defaults(func=cmd_data_hypotheses, command="data hypotheses")

    dm = sub.add_parser("demo", help="embed sample passages, invert them, print original vs recovered")
    dm.add_argument("--input", default=None, help="texts to use (default: the shipped sample passages)")
    dm.add_argument("--checkpoint", default=None, help="model bundle folder (default: the shipped model)")
    _search_flags(dm)
    dm.add_argument("--cache-dir", default=None)
    _device_flags(dm)
    dm.add_argument("--quiet", action="store_true", help="no progress bar")
    dm.set_defaults(func=cmd_demo)

    iv = sub.add_parser("invert", help="recover text from embedding vectors")
    iv.add_argument("--embeddings", required=True, help="float [N, D] .npy of vectors to invert")
    iv.add_argument(
        "--checkpoint", default=None, help="model bundle folder (default: the shipped all-MiniLM-L6-v2 model)"
    )
    _search_flags(iv, stop_and_skip=True)
    iv.add_argument("--batch-size", type=_count(1, MAX_ROWS), default=32)
    iv.add_argument("--output", required=True, help="JSON lines: text, cosine[, steps with --trace]")
    iv.add_argument("--trace", action="store_true", help="also write every step's hypothesis and cosine")
    iv.add_argument(
        "--references",
        default=None,
        help="the original texts, one per vector (as --input of v2t embed): each row gets its BLEU, token F1, "
        "exact and token recall, and a summary line is printed",
    )
    _remote_flags(iv)
    _device_flags(iv, profile=True)
    _distributed_flag(iv, "; each process inverts its share of the batches, process 0 writes the output")
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
    bn.add_argument(
        "--beam",
        default="1,2x8,4,8",
        help="comma-separated searches: B is vec2text's sbeam B, BxW sbeam B with token beams of W "
        "(v2t invert's default is 2x8; default %(default)s)",
    )
    bn.add_argument("--repeats", type=_count(1, 1000), default=3, help="timed runs per point after compile")
    bn.add_argument(
        "--skip-repeated",
        action="store_true",
        help="time the loop that skips fixed points and repeated candidates (default: the full loop)",
    )
    bn.add_argument("--output", default="bench", help="writes OUTPUT.md and OUTPUT.json (default %(default)s)")
    _device_flags(bn, profile=True)
    bn.add_argument("--cache-dir", default=None)
    bn.add_argument("--quiet", action="store_true")
    bn.set_defaults(func=cmd_bench)

    au = sub.add_parser("audit", help="invert every vector of a vector store and report how much text leaks")
    au.add_argument(
        "store",
        help="a Chroma, LanceDB or Qdrant folder, a Milvus Lite PATH.db, a FAISS index file (.faiss/.index), a .npy "
        "or a .parquet; or a database server: postgresql://USER@HOST/DB?table=T, qdrant://HOST:6333/COLLECTION, "
        "milvus://HOST:19530/COLLECTION (docs/audit.md)",
    )
    au.add_argument("--output", required=True, help="report folder: report.md, report.png, records.jsonl")
    au.add_argument(
        "--collection",
        default=None,
        help="Chroma, Qdrant or Milvus collection, LanceDB or PostgreSQL table (needed when the store has several)",
    )
    au.add_argument("--store-kind", default="auto", choices=stores.KINDS)
    au.add_argument("--documents", default=None, help="the records' texts, one per line, for a store without them")
    au.add_argument("--vector-column", default=None,
                    help="parquet, LanceDB, PostgreSQL: the vectors' column (default embedding/vector); Qdrant, "
                    "Milvus: the named vector or vector field")  # fmt: skip
    au.add_argument("--text-column", default=None,
                    help="the texts' column or payload key (default document/text/content/page_content/...; '': "
                    "the vectors alone)")  # fmt: skip
    au.add_argument(
        "--id-column",
        default=None,
        help="parquet: the ids' column (default id); PostgreSQL: a unique key (default the primary key)",
    )
    au.add_argument("--store-timeout", type=_seconds(0.1, 86400), default=60.0, metavar="SECONDS",
                    help="a database server's longest wait for one answer (default %(default)g)")  # fmt: skip
    au.add_argument("--page-rows", type=_count(1, MAX_ROWS), default=1024, metavar="N",
                    help="a database store's records read per request, rounded up to whole batches (default "
                    "%(default)s)")  # fmt: skip
    au.add_argument("--checkpoint", default=None, help="model bundle folder (default: the shipped model)")
    _search_flags(au)
    au.add_argument("--limit", type=_count(1, MAX_COUNT), default=None, help="audit the first N records only")
    au.add_argument("--batch-size", type=_count(1, MAX_ROWS), default=32)
    _remote_flags(au)
    _device_flags(au)
    _distributed_flag(au, "; each process audits its share of the batches, process 0 writes the report")
    au.add_argument("--cache-dir", default=None)
    au.add_argument("--overwrite", action="store_true", help="replace an earlier report in --output")
    au.add_argument("--quiet", action="store_true")
    au.set_defaults(func=cmd_audit)

    ex = sub.add_parser(
        "export",
        help="a model bundle from a training run (inverter, or inverter + corrector); `export vec2text`: a bundle "
        "as vec2text checkpoint folders",
    )
    ex.add_argument("format", nargs="?", choices=["bundle", "vec2text"], default="bundle",
                    help="bundle (default): a v2t bundle from --workdir; vec2text: the bundle --bundle as vec2text "
                         "0.0.13 checkpoints, OUTPUT/inversion and OUTPUT/corrector")  # fmt: skip
    ex.add_argument("--workdir", default=None, help="a v2t train run directory")
    ex.add_argument("--bundle", default=None, help="vec2text: the bundle to write (default: the shipped model)")
    ex.add_argument("--output", required=True, help="folder to write")
    ex.add_argument("--step", type=_count(0, MAX_COUNT), default=None, help="checkpoint step (default: the latest)")
    ex.add_argument(
        "--inverter",
        default=None,
        help="corrector runs: take the inverter from this bundle instead of the one the corrector trained on",
    )
    ex.add_argument(
        "--weights",
        choices=WEIGHT_FORMATS,
        default="float32",
        help="int8: weight-only int8 with per-row float32 scales, ~1/4 the size (default %(default)s)",
    )
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="model bundles from other projects' checkpoints").add_subparsers(
        dest="import_command", required=True, parser_class=_Parser
    )
    iv2t = im.add_parser("vec2text", help="a bundle from vec2text checkpoint folders (e.g. its gtr-base models)")
    iv2t.add_argument("inversion", metavar="INVERSION_DIR", help="the InversionModel folder (config.json + weights)")
    iv2t.add_argument("corrector", metavar="CORRECTOR_DIR", nargs="?", default=None,
                      help="the CorrectorEncoderModel folder (without it: an inverter-only bundle)")  # fmt: skip
    iv2t.add_argument("--embedder", required=True, help="the embedder folder (e.g. sentence-transformers/gtr-t5-base)")
    iv2t.add_argument("--output", required=True, help="bundle folder to write")
    iv2t.add_argument("--tokenizer", default=None,
                      help="folder with the backbone's tokenizer.json (default: the inversion folder's, or the local "
                           "folder its config names as model_name_or_path)")  # fmt: skip
    iv2t.add_argument("--max-length", type=_count(2, 4096), default=None,
                      help="the embedder's token budget (default: the checkpoint's max_seq_length)")  # fmt: skip
    iv2t.add_argument("--embedder-head", choices=EMBEDDER_HEADS, default=None,
                      help="how to read the embedder's sentence-transformers head (default: none for vec2text's "
                           "gtr_base, the encoder's mean pool alone; auto otherwise)")  # fmt: skip
    iv2t.add_argument("--weights", choices=WEIGHT_FORMATS, default="float32",
                      help="int8: weight-only int8 with per-row float32 scales (default %(default)s)")  # fmt: skip
    iv2t.add_argument("--overwrite", action="store_true")
    iv2t.set_defaults(func=cmd_import_vec2text)

    t = sub.add_parser("train", help="train a model from an ml_collections config; rerun to resume")
    t.add_argument("--config", required=True, help="configs/inverter.py[:variant]")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tb/ (rerunning resumes)")
    _distributed_flag(t)
    _profile_flag(t)
    t.set_defaults(func=cmd_train)
    return p


# the flags that name a file or folder on this machine
_PATH_FLAGS = ("workdir", "output", "profile", "data_dir", "cache_dir", "checkpoint", "embeddings", "input", "inverter",
               "bundle", "references", "documents", "corpus", "tokenizer", "embedder")  # fmt: skip


def _object_store_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, value) of each path flag given as an object-store URL (gs://, s3://, …) where it is not served (all
    but --workdir): a pathlib.Path would make it a local folder named after the scheme."""
    served = {"workdir"}  # a training run's folder: gs:// and s3:// through etils.epath (`v2t_jax.paths`)
    return [
        (flag, value) for flag in _PATH_FLAGS
        if isinstance(value := getattr(args, flag, None), str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value)
        and flag not in served
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # a usage error (one line, printed) or --help: the status, as every command returns
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv  # as typed, for reports that name their command
    # secrets known before anything is written or printed: the key's variable and what an endpoint URL may hold
    add_url_secrets(getattr(args, "embedder_url", None))
    if getattr(args, "api_key_env", None):
        add_secret(os.environ.get(args.api_key_env))
    if args.command in ("train", "bench"):
        args.overrides = extra
    elif extra:
        shown = " ".join(shown_url(x) if "://" in x else x for x in extra)  # (a mistyped flag's URL may hold a key)
        print(f"v2t {args.command}: error: unrecognized arguments: {one_line(shown)}", file=sys.stderr)
        return 2
    for flag, value in _object_store_paths(args):
        scheme = value.partition("://")[0]
        print(f"v2t {args.command}: error: --{flag.replace('_', '-')} {one_line(shown_url(value))}: {scheme}:// paths "
              "are not read or written yet here (only a training run's --workdir is); copy the file, or mount the "
              "bucket (e.g. gcsfuse) and give the mounted path", file=sys.stderr)  # fmt: skip
        return 2
    try:
        return args.func(args)
    except V2TError as e:  # UsageError, and any library error that says what to do in one line
        print(f"v2t {args.command}: error: {one_line(str(e), limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train":
            msg = f"interrupted; the checkpoints saved so far stay in {args.workdir}: rerun the command to resume"
        elif args.command == "invert":
            msg = f"interrupted; the finished rows stay in {args.output}.partial: rerun the command to resume"
        elif args.command == "audit":
            msg = f"interrupted; the finished records stay in {args.output}: rerun the command to resume"
        else:
            msg = "interrupted; nothing was written"
        print(f"v2t {args.command}: {msg}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
