"""The black box at API scale: `v2t invert --embedder-url` against a local OpenAI-compatible endpoint that answers
each request after a fixed latency (as a remote API does) and, in one scenario, enforces a rate limit with 429 +
Retry-After. Requests in flight together (`--embedder-concurrency`) against one at a time, same texts.

    python experiments/black_box_bench.py [--n 32] [--steps 3] [--latency 0.1] [--rate 40] [--repeats 3]
        [--concurrency 1,8] [--out experiments/results/black_box_bench]

The endpoint's vectors are a hashed bag of words (384 numbers per text, the same for the same text): an API's
compute runs on its own machines, so the stand-in spends none of this machine's cores, and what is measured is
how `v2t invert` overlaps the API's latency. (The recovered texts mean nothing against such an embedder; the
check is that every concurrency writes the same rows, byte for byte.) `v2t invert` runs as a user runs it (a new
process each time: start-up, model load and compilation from the cache included) on the shipped model with the
default search; "search s" is the endpoint's view: from the first request to the last reply.
"""

from __future__ import annotations

import argparse
import http.server
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


class Endpoint:
    """`/v1/embeddings` on 127.0.0.1 (HTTP/1.1, keep-alive): each reply after `latency` s; at most `rate` requests
    a second when `rate` is set (others: 429 with Retry-After: 1)."""

    def __init__(self, latency: float, rate: float | None = None):
        self.latency, self.rate, self.lock = latency, rate, threading.Lock()
        self.words: dict[str, np.ndarray] = {}
        self.reset()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.monotonic()
                with outer.lock:
                    outer.first = outer.first or now
                    limited = outer.rate is not None and not outer._take(now)
                    outer.requests += 1
                    outer.limited += limited
                    outer.in_flight += 1
                    if outer.in_flight == 1:
                        outer.busy_since = now
                try:
                    time.sleep(outer.latency)
                    if limited:
                        return self._send(429, b'{"error": "rate limit"}', {"Retry-After": "1"})
                    vectors = [outer.embed(t) for t in body["input"]]
                    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                finally:
                    with outer.lock:
                        outer.last = time.monotonic()
                        outer.in_flight -= 1
                        if outer.in_flight == 0:
                            outer.busy += outer.last - outer.busy_since

            def _send(self, code, payload, headers=None):
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(payload)),
                             **(headers or {})}.items():  # fmt: skip
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self):
        self.requests, self.limited, self.first, self.last = 0, 0, 0.0, 0.0
        self.in_flight, self.busy, self.busy_since = 0, 0.0, 0.0  # busy: seconds with a request in flight
        self.bucket, self.filled = float(self.rate or 0), time.monotonic()

    def _take(self, now: float) -> bool:
        """A token of the bucket (`rate` a second, `rate` at most), if one is left."""
        self.bucket = min(float(self.rate), self.bucket + (now - self.filled) * self.rate)
        self.filled = now
        if self.bucket >= 1:
            self.bucket -= 1
            return True
        return False

    def embed(self, text: str) -> list[float]:
        v = np.zeros(DIM)
        for word in text.lower().split():
            if word not in self.words:
                self.words[word] = np.random.default_rng(zlib.crc32(word.encode())).normal(size=DIM)
            v += self.words[word]
        n = np.linalg.norm(v)
        return (v / n if n else v).tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32, help="vectors inverted (default %(default)s)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--embedder-batch-size", type=int, default=8, help="texts a request (default %(default)s)")
    p.add_argument("--latency", type=float, default=0.1, help="seconds before each reply (default %(default)s)")
    p.add_argument("--rate", type=float, default=40.0, help="requests a second in the rate-limited scenario")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "black_box_bench")
    args = p.parse_args()

    texts = [t for t in (ROOT / "tests" / "data" / "sentences.txt").read_text().splitlines() if t.strip()][: args.n]
    work = Path(tempfile.mkdtemp(prefix="v2t-black-box-"))
    scenarios = [("latency", Endpoint(args.latency)), ("latency + rate limit", Endpoint(args.latency, args.rate))]
    np.save(work / "v.npy", np.asarray([scenarios[0][1].embed(t) for t in texts], np.float32))
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, outputs = [], {}
    warm = [sys.executable, "-m", "v2t_jax.cli", "invert", "--embeddings", str(work / "v.npy"), "--output",
            str(work / "warm.jsonl"), "--embedder-url", scenarios[0][1].url, "--steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--quiet"]  # fmt: skip
    subprocess.run(warm, check=True, capture_output=True, cwd=ROOT)  # (the programs compiled once, then cached)
    for scenario, endpoint in scenarios:
        for c in levels if scenario == "latency" else levels[-1:]:
            seconds, spans, busy, requests, limited, failed = [], [], [], [], [], 0
            for r in range(args.repeats):
                out = work / f"{scenario.replace(' ', '_')}_{c}_{r}.jsonl"
                endpoint.reset()
                cmd = [sys.executable, "-m", "v2t_jax.cli", "invert", "--embeddings", str(work / "v.npy"),
                       "--output", str(out), "--embedder-url", endpoint.url, "--embedder-concurrency", str(c),
                       "--embedder-batch-size", str(args.embedder_batch_size), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--quiet"]  # fmt: skip
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                seconds.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    failed += 1
                    print(proc.stderr[-2000:], file=sys.stderr)
                    continue
                spans.append(endpoint.last - endpoint.first)
                busy.append(endpoint.busy)
                requests.append(endpoint.requests)
                limited.append(endpoint.limited)
                outputs.setdefault(out.read_text(), []).append(out.name)
                print(f"{scenario}, concurrency {c}, run {r}: {seconds[-1]:.1f} s, {endpoint.requests} requests "
                      f"({endpoint.limited} answered 429)", file=sys.stderr, flush=True)  # fmt: skip
            rows.append({
                "scenario": scenario, "concurrency": c, "runs": args.repeats, "failed": failed,
                "median_s": statistics.median(seconds), "median_search_s": statistics.median(spans) if spans else None,
                "vectors_per_s": args.n / statistics.median(seconds),
                "search_vectors_per_s": args.n / statistics.median(spans) if spans else None,
                "median_api_wait_s": statistics.median(busy) if busy else None,
                "requests": statistics.median(requests) if requests else None,
                "answered_429": statistics.median(limited) if limited else None,
            })  # fmt: skip
    base = next(r for r in rows if r["scenario"] == "latency" and r["concurrency"] == levels[0])
    for r in rows:
        r["factor"] = base["median_s"] / r["median_s"]
        r["search_factor"] = (base["median_search_s"] / r["median_search_s"]) if r["median_search_s"] else None
        r["api_wait_factor"] = (base["median_api_wait_s"] / r["median_api_wait_s"]) if r["median_api_wait_s"] else None
    same = len(outputs) == 1
    command = "python experiments/black_box_bench.py " + " ".join(sys.argv[1:])
    head = (
        f"# `v2t invert --embedder-url` at API scale\n\nCommand: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, the shipped model, default search, {args.n} vectors, "
        f"--steps {args.steps}, --batch-size {args.batch_size}, --embedder-batch-size {args.embedder_batch_size}; "
        f"the endpoint answers after {args.latency:g} s, and in the second scenario takes at most {args.rate:g} "
        f"requests a second, answering the others 429 + Retry-After: 1). Medians of {args.repeats} runs; whole "
        "command = a new `v2t invert` process (start-up, load, compilation from the cache); search = the "
        "endpoint's view, first request to last reply; API wait = the part of it with a request in flight (the "
        "client waits on the API), the rest is the client's own compute. Every run wrote "
        + ("the same rows, byte for byte." if same else f"one of {len(outputs)} different outputs (see the json).")
        + "\n\n| scenario | concurrency | whole command s | vectors/s | × | search s | search vectors/s | × | "
        "API wait s | × | requests | answered 429 | failed runs |\n" + "|---" * 13 + "|\n"
    )
    body = "".join(
        f"| {r['scenario']} | {r['concurrency']} | {r['median_s']:.1f} | {r['vectors_per_s']:.2f} | "
        f"{r['factor']:.2f} | {r['median_search_s'] or float('nan'):.1f} | {r['search_vectors_per_s'] or 0:.2f} | "
        f"{r['search_factor'] or 0:.2f} | {r['median_api_wait_s'] or float('nan'):.1f} | "
        f"{r['api_wait_factor'] or 0:.2f} | {r['requests']} | {r['answered_429']} | {r['failed']}/{r['runs']} |\n"
        for r in rows
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(head + body)
    record = {"command": command, "rows": rows, "same_rows": same, "outputs": list(outputs.values())}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(head + body)
    return 0 if same and not any(r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
