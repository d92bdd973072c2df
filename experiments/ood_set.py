"""An out-of-domain evaluation set: quotations and aphorisms from BSD fortune's `literature`, `wisdom` and
`people` files (Debian `fortunes-min` and `fortunes`), a genre none of the training sources holds.

    python experiments/ood_set.py [--n 300] [--out experiments/data/ood_fortunes.txt]
    python experiments/results_table.py --checkpoint v2t_jax/resources/v2t_minilm_l6_v2 \\
        --texts experiments/data/ood_fortunes.txt --n 300 --rows 0:1,20:1,20:4 --out experiments/results/ood_fortunes

Each fortune loses its attribution (the `-- Author` lines and what follows) and its line breaks; kept are those
of 8 to 40 words that read as prose (letters, no dialogue or verse layout). The set is a fixed sample: the
kept fortunes ordered by the SHA-256 of their text, the first N, so it is the same on every machine. One line
per passage; the embedder reads the first 32 tokens of each.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {"fortunes-min": ("literature",), "fortunes": ("wisdom", "people")}  # Debian package -> its files
_ATTRIBUTION = re.compile(r"^\s*(--|- [A-Z]|\u2014)")
_LAYOUT = re.compile(r"^\s*[A-Z][\w .']{0,20}:\s|^\s{2,}\S")  # "Q: ...", "BOB: ...", indented verse


def fortunes(text: str) -> list[str]:
    """The prose fortunes of a fortune file, attribution removed, whitespace collapsed."""
    out = []
    for entry in text.replace("\b", "").split("\n%\n"):
        lines = entry.strip("\n").splitlines()
        cut = next((i for i, line in enumerate(lines) if _ATTRIBUTION.match(line)), len(lines))
        body = lines[:cut]
        if not body or any(_LAYOUT.match(line) for line in body[1:]):
            continue
        passage = " ".join(" ".join(body).split())
        words = passage.split()
        letters = sum(c.isalpha() for c in passage) / max(1, len(passage))
        if 8 <= len(words) <= 40 and letters > 0.7 and passage[-1] in ".!?\"'" and "(tm)" not in passage:
            out.append(passage)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--out", default=str(ROOT / "experiments/data/ood_fortunes.txt"))
    p.add_argument("--cache-dir", default=None, help="where the package is fetched to (default: v2t's cache)")
    args = p.parse_args(argv)
    from v2t_jax import assets
    from v2t_jax.data import sources

    cache = Path(args.cache_dir) if args.cache_dir else assets.default_cache_dir()
    texts = [
        (sources.debian_package(package, cache) / "usr/share/games/fortunes" / name).read_text(encoding="utf-8")
        for package, names in FILES.items()
        for name in names
    ]
    kept = sorted({f for text in texts for f in fortunes(text)}, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    if len(kept) < args.n:
        print(f"only {len(kept)} fortunes qualify; asked for {args.n}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.write_text("\n".join(kept[: args.n]) + "\n", encoding="utf-8")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {args.n} of {len(kept)} qualifying fortunes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
