"""Reading `.npz` files that may be damaged (truncated, overwritten, an array missing or of the
wrong dtype or shape), in the two ways the datasets need:

- `read_cache`: an entry dfmlbench wrote under the cache folder. A damaged one is not an error:
  it is reported on stderr in one line and the caller rebuilds it (`None` means "build it").
- `read_source`: the user's own file (e.g. the Omniglot `.npz`). It cannot be rebuilt, so a
  damaged one is a `UserError` naming the file and saying how to fix it.

Both check the arrays against a spec (`Array` per name) before anything uses them, so a
damaged file never surfaces later as a traceback.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfmlbench.errors import UserError, note

# What np.load and reading its arrays raise on a damaged archive: a torn or overwritten zip
# (BadZipFile, a bad CRC, zlib.error in a compressed member), a member cut short (EOFError,
# ValueError for a bad .npy header or too few bytes), a read error (OSError).
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
DTYPE_KINDS = {"integer": "iu", "string": "U"}
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class Array:
    """What one array of a file must be. `dtype`: a numpy dtype name ("uint8") or a kind
    ("integer", "string"). `shape`: per axis an int (that size), a str (a size every array
    naming it shares, e.g. "images" for the number of images) or None (any size). `below`:
    every value lies in [0, below) (an int, or the name of a size in `shape`s)."""

    dtype: str
    shape: tuple[int | str | None, ...]
    below: int | str | None = None


class Damaged(Exception):
    """Why a file cannot be used, in one line."""


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    axes = ["?" if axis is None else str(axis) for axis in shape]
    return f"({axes[0]},)" if len(axes) == 1 else f"({', '.join(axes)})"


def check_arrays(arrays: dict[str, np.ndarray], spec: dict[str, Array]) -> None:
    """Raise `Damaged` for the first array whose dtype, shape or values do not fit `spec`."""
    sizes: dict[str, int] = {}
    for name, want in spec.items():
        array = arrays[name]
        kinds = DTYPE_KINDS.get(want.dtype)
        if (array.dtype.kind not in kinds) if kinds else array.dtype != np.dtype(want.dtype):
            raise Damaged(f"array '{name}' has dtype {array.dtype}, expected {want.dtype}")
        fits = array.ndim == len(want.shape)
        for size, axis in zip(array.shape, want.shape if fits else ()):
            if isinstance(axis, str):
                fits &= sizes.setdefault(axis, size) == size
            elif axis is not None:
                fits &= size == axis
        if not fits:
            raise Damaged(f"array '{name}' has shape {array.shape}, expected {_shape_text(want.shape)}"
                          + (f" with {', '.join(f'{k}={v}' for k, v in sizes.items())}" if sizes else ""))
    for name, want in spec.items():
        if want.below is None or arrays[name].size == 0:
            continue
        bound = sizes[want.below] if isinstance(want.below, str) else want.below
        low, high = arrays[name].min(), arrays[name].max()
        if low < 0 or high >= bound:
            raise Damaged(f"array '{name}' holds values {low}..{high}, expected 0..{bound - 1}")


def read_npz(path: Path, spec: dict[str, Array]) -> dict[str, np.ndarray]:
    """The arrays of `spec` from the `.npz` at `path` (never unpickling), checked against it;
    `Damaged` says what is wrong with the file."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
    except OSError as exc:
        raise Damaged(f"cannot open it ({exc.strerror or one_line(exc)})") from None
    if not magic:
        raise Damaged("the file is empty")
    if magic.startswith(NPY_MAGIC):
        raise Damaged("it is a single .npy array, not an .npz archive")
    if not magic.startswith(ZIP_MAGIC):  # np.load would take it for a pickle
        raise Damaged("not an .npz archive (it does not start like a zip file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in spec if name not in npz.files]
            if missing:
                held = ", ".join(npz.files) or "no arrays"
                raise Damaged(f"no array '{missing[0]}' in it (it holds {held})")
            arrays = {name: npz[name] for name in spec}
    except READ_ERRORS as exc:
        raise Damaged(f"a damaged .npz archive ({one_line(exc)})") from None
    check_arrays(arrays, spec)
    return arrays


def read_cache(path: Path, spec: dict[str, Array]) -> dict[str, np.ndarray] | None:
    """A cache entry's arrays; None when it is absent or damaged (then said in one stderr line),
    and the caller builds it again and writes it over the damaged one."""
    if not path.is_file():
        return None
    try:
        return read_npz(path, spec)
    except Damaged as why:
        note(f"damaged cache file {path} ({why}); rebuilding it")
        return None


def read_source(path: Path, spec: dict[str, Array], fix: str) -> dict[str, np.ndarray]:
    """A user's data file's arrays; a damaged one is a UserError naming it and saying `fix`."""
    try:
        return read_npz(path, spec)
    except Damaged as why:
        raise UserError(f"cannot read {path}: {why}; {fix}") from None
