"""Peak memory of `v2t audit` against the size of the store: a PostgreSQL + pgvector table read a page at a time,
at 10k and 100k rows, beside the same 100k rows as a parquet file (a store read whole).

    python experiments/audit_memory.py [--sizes 10000,100000] [--out experiments/results/audit_memory]

Needs the test extras (pgserver starts PostgreSQL 16 with pgvector in a temporary folder). The rows are random
unit vectors (384-d, MiniLM's) with short texts; the model is a small random bundle around the real MiniLM (a
1-layer T5, d 32, 12 tokens) so that 100k inversions take minutes on a CPU: the memory measured is the audit's
(the store's pages, the rows, the report), not a large model's. Each audit is its own `v2t audit --steps 0`
process; peak = its resident high-water mark (Linux VmHWM, read until it exits).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def small_bundle(folder: Path) -> Path:
    from v2t_jax import assets, bench
    from v2t_jax.models import embedders, t5

    cfg = t5.t5_config("tiny", vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    minilm = embedders.load_embedder(assets.resolve_embedder("all-MiniLM-L6-v2"))
    bench.random_model_of_shape(minilm, cfg, num_repeat_tokens=2, max_length=12).save(folder)
    return folder


def rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = (ROOT / "tests" / "data" / "sentences.txt").read_text().split()
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        v = rng.normal(size=(m, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        at = rng.integers(0, len(words) - 12, size=m)
        yield start, v, [" ".join(words[a : a + 10]) for a in at]


def fill_postgres(admin, table: str, n: int) -> None:
    admin.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector(384), document text)")
    with admin.cursor().copy(f"COPY {table} (id, embedding, document) FROM STDIN") as copy:
        for start, v, texts in rows(n):
            for i, (vec, text) in enumerate(zip(v, texts)):
                copy.write_row((start + i, "[" + ",".join(f"{x:.9g}" for x in vec) + "]", text))


def write_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start, v, texts in rows(n):
        table = pa.table({"id": [str(start + i) for i in range(len(texts))], "embedding": list(v), "document": texts})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def audit(store: str, out: Path, bundle: Path, batch: int) -> dict:
    """One `v2t audit` process: its seconds and peak resident memory."""
    cmd = [sys.executable, "-m", "v2t_jax.cli", "audit", store, "--output", str(out), "--checkpoint", str(bundle),
           "--steps", "0", "--batch-size", str(batch), "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    records = sum(1 for _ in (out / "records.jsonl").open())
    return {"seconds": time.perf_counter() - t0, "peak_mib": peak / 1024, "records": records}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "audit_memory")
    a = p.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]

    import pgserver
    import psycopg

    results = []
    with tempfile.TemporaryDirectory(prefix="v2t-audit-memory-") as tmp:
        tmp = Path(tmp)
        bundle = small_bundle(tmp / "bundle")
        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        try:
            admin = psycopg.connect(server.get_uri(), autocommit=True)
            admin.execute("CREATE EXTENSION IF NOT EXISTS vector")
            for n in sizes:
                table = f"rows_{n}"
                fill_postgres(admin, table, n)
                url = f"postgresql://postgres@/postgres?host={tmp / 'pg'}&table={table}"
                r = audit(url, tmp / f"pg_{n}", bundle, a.batch)
                results.append({"store": "postgresql (pages of 1024)", "rows": n, **r})
                print(results[-1], file=sys.stderr, flush=True)
            n = max(sizes)
            write_parquet(tmp / "rows.parquet", n)
            r = audit(str(tmp / "rows.parquet"), tmp / "parquet", bundle, a.batch)
            results.append({"store": "parquet (read whole)", "rows": n, **r})
            print(results[-1], file=sys.stderr, flush=True)
        finally:
            server.cleanup()
    command = "python experiments/audit_memory.py " + " ".join(sys.argv[1:])
    lines = [
        "# Peak memory of `v2t audit` by store size",
        "",
        f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}). Random unit vectors "
        "(384-d) with 10-word texts; a small random bundle around the real MiniLM (1-layer T5, d 32, 12 tokens), "
        f"`--steps 0 --batch-size {a.batch}`; one `v2t audit` process per row; peak = its VmHWM.",
        "",
        "| store | rows | records written | seconds | peak MiB |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['store']} | {r['rows']:,} | {r['records']:,} | {r['seconds']:.0f} | {r['peak_mib']:.0f} |"
              for r in results]  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": results}, indent=1) + "\n")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
