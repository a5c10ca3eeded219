"""Run records: one JSON per cell (written last, atomically: it marks the cell done) and a
per-episode accuracy .npy beside it, for paired tests and re-aggregation."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfmlbench import __version__
from dfmlbench.paths import PACKAGE_DIR, save_npy_atomic, write_json_atomic

SCHEMA_VERSION = 1


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=PACKAGE_DIR.parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict[str, Any]:
    """Where a result came from: device, versions, code commit."""
    import torchvision

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": str(device),
        "device_name": device_name(device),
        "hostname": socket.gethostname(),
        "dfmlbench": __version__,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "num_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def record_stem(out_dir: Path, suite: str, profile: str, method: str, dataset: str, way: int,
                shot: int, seed: int, config_hash: str) -> Path:
    return Path(out_dir) / suite / profile / method / f"{dataset}-{way}w{shot}s-seed{seed}-{config_hash}"


def read_record(stem: Path) -> dict[str, Any] | None:
    path = stem.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a foreign or damaged file: the cell is simply run again


def is_done(stem: Path, config_hash: str) -> bool:
    record = read_record(stem)
    return bool(record and record.get("status") == "ok" and record.get("config_hash") == config_hash
                and stem.with_suffix(".episodes.npy").is_file())


def write_record(stem: Path, record: dict[str, Any], per_episode: np.ndarray | None) -> Path:
    """Per-episode file first, JSON last: a JSON record always has its episodes beside it."""
    if per_episode is not None:
        save_npy_atomic(stem.with_suffix(".episodes.npy"), per_episode.astype(np.float64))
        record["per_episode_file"] = stem.with_suffix(".episodes.npy").name
    record["schema_version"] = SCHEMA_VERSION
    path = stem.with_suffix(".json")
    write_json_atomic(path, record)
    return path


def load_per_episode(record_path: Path) -> np.ndarray:
    record = json.loads(Path(record_path).read_text())
    return np.load(Path(record_path).parent / record["per_episode_file"], allow_pickle=False)




def method_label(record: dict[str, Any]) -> str:
    """The method's name as tables show it; reconstructed methods (no official code) say so."""
    reconstructed = (record.get("method_info") or {}).get("reconstructed")
    return f"{record.get('method', '?')}{' (reconstructed)' if reconstructed else ''}"
