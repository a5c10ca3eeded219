"""Image files on disk -> uint8 arrays: listing, decoding and resizing, shared by the
folder-of-images datasets (miniImageNet, CUB)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dfmlbench.data.npz import one_line
from dfmlbench.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def is_image_name(name: str) -> bool:
    # Names starting with '.' are skipped: macOS leaves '._x.jpg' AppleDouble files in archives.
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (the official code used raw
    `os.listdir` order, which depends on the filesystem)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and is_image_name(e.name))


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, then PIL bilinear resize, which is what the
    official `transforms.Resize((s, s))` does to a PIL image, so pixels match its pipeline."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # forces the full decode: truncated files fail here
    except UnidentifiedImageError:  # its message repeats the path
        raise UserError(f"cannot decode image {path}: not an image file PIL can read (empty, or not "
                        f"JPEG/PNG data); replace the file (re-extract the dataset)") from None
    except (OSError, EOFError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode image {path}: {one_line(exc)}; replace the file "
                        f"(re-extract the dataset)") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_images(paths: list[Path], size: int, desc: str) -> np.ndarray:
    """All `paths` as one uint8 (N, 3, size, size) array, in order. PIL releases the GIL while
    decoding and resizing, so threads use every core without worker processes."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(index: int) -> None:
        out[index] = decode_image(paths[index], size)

    pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
    try:
        with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=None) as bar:
            for _ in pool.map(work, range(len(paths))):  # re-raises a worker's UserError here
                bar.update(1)
    finally:
        # On an error, drop the queued images: the user should not wait for the whole decode.
        pool.shutdown(wait=True, cancel_futures=True)
    return out
