"""Where caches and datasets live, and how files are written without ever leaving half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """`$DFMLBENCH_CACHE`, else `~/.cache/dfmlbench`."""
    return Path(os.environ.get("DFMLBENCH_CACHE") or Path.home() / ".cache" / "dfmlbench")


def data_root_candidates(explicit: str | os.PathLike | None) -> list[Path]:
    """Folders searched for dataset files, in order: --data-root, $DFMLBENCH_DATA, ../shared/data."""
    if explicit:
        return [Path(explicit).expanduser()]
    found: list[Path] = []
    if os.environ.get("DFMLBENCH_DATA"):
        found.append(Path(os.environ["DFMLBENCH_DATA"]).expanduser())
    # The repository's sibling `shared/data` folder (development checkouts and CI).
    for base in (PACKAGE_DIR.parent, Path.cwd()):
        found.append((base / ".." / "shared" / "data").resolve())
    return list(dict.fromkeys(found))


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Before any work: `path` is a folder, or can be made one, that this process can write
    into. Probed by creating (and removing) a file in the nearest existing folder, since
    permission bits say nothing under root or on a read-only mount."""
    from dfmlbench.errors import UserError

    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise UserError(f"{what} {path} {where}, not a folder; choose another location")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".dfmlbench-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {path} is not writable ({exc.strerror} in {existing}); "
                        "choose another location or fix its permissions") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any, mode: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see the old
    file or the new one, never a torn one, even if the process is killed midway."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; records are meant to be shared
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    _atomic_write(path, lambda h: json.dump(payload, h, indent=2, sort_keys=False), "w")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda h: h.write(data), "wb")


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda h: np.save(h, array, allow_pickle=False), "wb")


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    _atomic_write(path, lambda h: np.savez(h, **arrays), "wb")
