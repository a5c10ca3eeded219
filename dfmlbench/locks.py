"""Advisory file locks, so that processes sharing a records folder or a pool cache (several
jobs of one suite, on one machine or a cluster's shared file system) never do one piece of
work twice. The operating system drops a lock with its process, so a killed job leaves none
behind (its empty lock file stays, under `.locks`)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from dfmlbench.errors import note


LOCKS = ".locks"


def lock_path(path: Path, root: Path) -> Path:
    """The lock file that guards `path` (a record stem or a pool folder) under `root` (the
    records folder, the pools folder): `root/.locks/<path relative to root>.lock`, out of the
    way of records and pools. It stays after release: removing a lock file that another process
    has opened would let a third one take a second lock on a new file."""
    return Path(root) / LOCKS / f"{Path(path).relative_to(root)}.lock"


def _lock(path: Path, root: Path) -> FileLock:
    lock_path(path, root).parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: a lock taken by one thread is the process's (as the work it guards)
    return FileLock(lock_path(path, root), thread_local=False)


@contextmanager
def exclusive(path: Path, root: Path, what: str) -> Iterator[None]:
    """Hold `path`'s lock, waiting (with one note) while another process holds it."""
    lock = _lock(path, root)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        note(f"waiting for another job, which holds {what} ({lock_path(path, root)})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def claimed(path: Path, root: Path) -> Iterator[bool]:
    """Try to take `path`'s lock without waiting: yields True when this process holds it, False
    when another one does (its work is under way there)."""
    lock = _lock(path, root)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def is_held(path: Path, root: Path) -> bool:
    """Whether another process holds `path`'s lock now (for `plan`'s "running")."""
    if not lock_path(path, root).exists():
        return False
    with claimed(path, root) as mine:
        return not mine
