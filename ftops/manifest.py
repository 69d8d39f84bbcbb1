"""sha256 manifests for artifact folders: ftops writes and loads only safetensors and JSON (plus tokenizer text
files and the chat template), and a loader refuses a folder whose files do not match their manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftops.errors import FtopsError

MANIFEST = "manifest.json"
#: File kinds an artifact folder may hold. No pickle, no ``.bin``/``.pt``, no code.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape in a safetensors file, read from its header (the tensors are not loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError) as e:
        raise FtopsError(f"{path}: not a readable safetensors file ({e})") from e


def _check_allowed(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files:
        if p.is_symlink():
            raise FtopsError(f"{p}: symbolic links are not allowed in an artifact folder")
        if not p.name.endswith(ALLOWED_SUFFIXES):
            raise FtopsError(
                f"{p}: refusing file type {p.suffix or p.name!r}; artifacts must be safetensors or JSON "
                f"(allowed: {', '.join(ALLOWED_SUFFIXES)})"
            )
    return files


def write_manifest(folder: Path, extra: dict | None = None) -> dict:
    """Hash every file of ``folder`` into ``folder/manifest.json``; returns the manifest.

    ``digest`` is the sha256 of the sorted ``name:sha256`` lines, one hash naming the whole folder."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _check_allowed(folder)}
    manifest = {"files": files, "digest": folder_digest(files), **(extra or {})}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def folder_digest(files: dict[str, str]) -> str:
    lines = "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_manifest(folder: Path) -> dict:
    """Check ``folder`` against its manifest: every listed file present with its sha256, no unlisted file,
    only allowed file types. Returns the manifest; raises :class:`FtopsError` naming the first mismatch."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FtopsError(f"{folder}: no {MANIFEST}; refusing to load an artifact folder without sha256 checks")
    try:
        manifest = json.loads(path.read_text())
        listed: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise FtopsError(f"{path}: not a valid manifest ({e})") from e
    present = {p.relative_to(folder).as_posix() for p in _check_allowed(folder)}
    if extra := sorted(present - set(listed)):
        raise FtopsError(f"{folder}: files not in the manifest: {', '.join(extra)}")
    for name, digest in sorted(listed.items()):
        p = folder / name
        if ".." in Path(name).parts or not p.is_file():
            raise FtopsError(f"{folder}: {name} is listed in the manifest but missing")
        if sha256_file(p) != digest:
            raise FtopsError(f"{p}: sha256 does not match the manifest; the artifact was changed or corrupted")
    return manifest
