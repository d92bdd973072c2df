"""`v2t invert`'s run as a library call, beside `audit.run`: vectors in, a JSON-lines file of texts out.

    from v2t_jax import api, runs
    from v2t_jax.search import strategies

    model = api.load_model()
    result = runs.invert(vectors, model, "texts.jsonl", strategies.default())

The rows are streamed, in input order, to OUTPUT.partial (flushed and synced per batch) and renamed to OUTPUT at
the end (`outputs.RowStream`). An interrupted run keeps its finished rows, and the same call continues after them:
OUTPUT.partial.json records what the rows were made from (`identity`, the search, the batch size), and a call
that differs in any of these is refused rather than mixed in. Across processes (`parallel.initialize`) each
process writes the rows of its share of the batches to a part of its own, and process 0 puts the parts
together in input order once every process has finished its own.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import numpy as np

from v2t_jax import evaluate, outputs, parallel, profiling
from v2t_jax.audit.remote import RemoteError
from v2t_jax.errors import ModelError
from v2t_jax.search import sharded


def rows_path(output: str | Path) -> Path:
    """The file this process writes: `output` itself, or under several processes its part of it."""
    output = Path(output)
    return parallel.part_path(output) if jax.process_count() > 1 else output


def invert(
    vectors,
    model,
    output: str | Path,
    search,
    *,
    batch_size: int = 32,
    references: list[str] | None = None,
    trace: bool = False,
    embed_fn=None,
    identity: dict | None = None,
    progress: bool = False,
    profile: str | Path | None = None,
) -> dict:
    """Inverts [N, D] `vectors` with `model` (`api.Vec2Text`) by `search` (`strategies.Search`) into `output`, a
    row per vector: {"text", "cosine"}, with `trace` each correction step's hypotheses and cosines, and with
    `references` (one text per vector) the scores of `v2t_jax.evaluate` against each. `embed_fn`: a black-box
    embedder for the hypotheses (`audit.remote.RemoteEmbedder`). `identity`: what the rows are made from, beyond
    the search and batch size (the command records the digests of its files and the model's); a resumed call must
    give the same. `profile`: a folder for a trace of three compiled calls (`profiling.Window`).

    Returns {"rows": N, "summary": the mean scores against the references or None, "profiled": batches traced}
    (on process 0; the other processes' results have no summary). Raises `api.ModelError` for vectors or a
    search the model cannot take, and a `RemoteError` whose message says how many rows are kept for the rerun."""
    output = Path(output)
    path = rows_path(output)
    multi, main = jax.process_count() > 1, jax.process_index() == 0
    n = len(model.check_embeddings(vectors))  # (dimension, NaN/inf, zero rows, dtype) before any work
    if references is not None and len(references) != n:
        raise ModelError(f"{len(references)} reference texts for the {n} vectors; give one per vector")
    scorer = evaluate.Evaluator(model.embedder_view(references)) if references is not None else None
    bs = model.batch_rows(n, batch_size)
    run = {**(identity or {}), **search.record(), "batch_size": bs, "trace": bool(trace)}
    mine = parallel.share_rows(n, bs)  # across processes: the input rows of this process's batches
    if multi:
        run["part"] = [jax.process_index(), jax.process_count()]
    stream = outputs.RowStream(path, run, bs, "invert")
    todo = vectors if mine is None else np.asarray(vectors)[mine]
    n_todo = 0 if stream.complete else len(todo) - stream.done
    # a profile: 3 compiled calls after the first (the compile), or from the first when the run has no second
    per_call = sharded.STREAM_BATCHES if model.streams(search, bool(trace), embed_fn) else 1
    more = -(-n_todo // bs) > per_call
    window = profiling.Window(profiling.check_folder(profile), per_call if more else 0, 3 * per_call)
    batches = iter(()) if n_todo <= 0 else model.iter_batches(
        todo, search, bs, trace=bool(trace), progress=progress, start=stream.done, embed_fn=embed_fn
    )  # fmt: skip
    try:
        for i in itertools.count():
            window.step(i)  # (before batch i is computed)
            try:
                first, texts, cosines, steps = next(batches)
            except StopIteration:
                break
            # scored as decoded (against the embedder's view), written as people write (model.readable)
            rows = [{"text": t, "cosine": c} for t, c in zip(model.readable(texts), cosines)]
            for row, step in zip(rows, steps or []):
                row["steps"] = {**step, "hypotheses": model.readable(step["hypotheses"])}
            if scorer is not None:  # (a batch is whole in one process: its rows follow on from its first)
                at = first if mine is None else int(mine[first])
                for row, scores in zip(rows, scorer.rows(texts, at, model.readable)):
                    row.update(scores)
            stream.append(rows)
    except RemoteError as e:
        raise (stream.kept(e) if stream.done else e) from None
    finally:
        window.close()
    stream.finish(keep_state=multi)  # (a part's state stays until the parts are put together: it is then done)
    if multi:
        parallel.barrier("v2t invert: every part written")
        if main:
            parallel.join_parts(output, n, bs)
        parallel.barrier("v2t invert: parts joined")
    summary = None
    if main and scorer is not None:  # over every row, those of an interrupted run included
        summary = evaluate.summary_of_rows(outputs.RowStream(output, run, bs, "invert").rows())
    return {"rows": n, "summary": summary, "profiled": window.count if window.done else 0}
