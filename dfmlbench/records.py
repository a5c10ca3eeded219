"""Run records: one JSON per cell (written last, atomically: it marks the cell done) and a
per-episode accuracy .npy beside it, for paired tests and re-aggregation."""

from __future__ import annotations

import json
import platform
import zipfile
import socket
import subprocess
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from dfmlbench import __version__
from dfmlbench.paths import PACKAGE_DIR, save_npy_atomic, write_json_atomic

SCHEMA_VERSION = 1


class Timings(TypedDict, total=False):
    recovery_seconds: float | None  # data recovery only (the paper's Time column); None: none
    meta_train_seconds: float
    validation_seconds: float
    eval_seconds: float
    pool_seconds: float
    wall_seconds: float
    fit_wall_seconds: float  # an evaluation's: the fit's wall time


class CellRecord(TypedDict, total=False):
    """A method cell's record (`run`, and `evaluate` of a saved learner), as written as JSON.
    `finished_record` checks what tables and paired tests need of it."""

    status: str  # "ok" (a crashed cell's `.failed.json` holds "failed", its error and traceback)
    config_hash: str
    suite: str
    profile: str
    method: str
    dataset: str
    way: int
    shot: int
    query: int
    seed: int
    accuracy: dict[str, Any]  # mean, ci95, std, n, ...
    extra_evaluations: dict[str, dict[str, Any]]  # diagnostic learners (the last step's)
    per_domain: dict[str, dict[str, Any]]
    meta_test_lr: dict[str, Any]  # chosen, selected_on, val_accuracy_by_lr
    test_episodes: dict[str, Any]  # count, sha, episode_seed
    timings: Timings
    sweep: dict[str, Any]
    overrides: dict[str, Any]  # the run's --set KEY=VALUE, as given
    events_file: str
    learner: str  # the learner's description
    learner_file: str | None  # the saved learner beside the record (None: see learner_not_saved)
    learner_not_saved: str | None
    evaluation_of: dict[str, Any]  # an evaluation's fit: config_hash, record, shot
    method_info: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]]
    pool: dict[str, Any] | None
    dataset_fingerprint: str
    config: dict[str, Any]
    environment: dict[str, Any]
    started_at: str
    finished_at: str
    per_episode_file: str  # added by write_record
    schema_version: int  # added by write_record


class AnalysisRecord(TypedDict, total=False):
    """An analysis cell's record (dfmlbench.analysis): arrays instead of accuracies."""

    status: str
    config_hash: str
    suite: str
    profile: str
    analysis: str
    dataset: str
    seed: int
    info: dict[str, Any]
    arrays_file: str
    pool: dict[str, Any]
    timings: Timings
    config: dict[str, Any]
    environment: dict[str, Any]
    started_at: str
    finished_at: str
    schema_version: int


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=PACKAGE_DIR.parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (results differ in the last digits between CPU types, so records
    and pools name it), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


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


def parse_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None), or (None, why the file is not a record): not UTF-8, not JSON, not an
    object. A missing file is (None, None)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    return record, None


def read_record(stem: Path) -> dict[str, Any] | None:
    return parse_record(stem.with_suffix(".json"))[0]


def finished_record(stem: Path, config_hash: str,
                    companion: str = "per_episode_file") -> tuple[dict[str, Any] | None, str | None]:
    """The finished record of a cell: (record, None); else (None, why the files there do not
    count, or None when there is nothing). Finished means: an "ok" JSON object of this config
    hash whose companion file (per-episode accuracies, analysis arrays) is beside it and reads
    back whole. Every reader of records (run, report, analyses) decides it here."""
    record, problem = parse_record(stem.with_suffix(".json"))
    if record is None:
        return None, problem
    if record.get("status") != "ok":
        return None, f"status {record.get('status')!r}, not 'ok'"
    if record.get("config_hash") != config_hash:
        return None, f"config hash {record.get('config_hash')!r}, expected {config_hash!r}"
    if companion == "per_episode_file":
        problem = _result_fields_problem(record)
        if problem is not None:
            return None, problem
    file = record.get(companion)
    if not isinstance(file, str):
        return None, f"no '{companion}' field"
    path = stem.parent / file
    try:
        if companion == "per_episode_file":
            count = len(np.load(path, allow_pickle=False))
            expected = (record.get("accuracy") or {}).get("n")
            if count != expected:
                return None, f"{path.name} holds {count} episodes, the record says {expected}"
        else:
            with np.load(path, allow_pickle=False) as arrays:
                for name in arrays.files:
                    arrays[name]
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return None, f"{path.name} cannot be read ({type(exc).__name__})"
    return record, None


def _result_fields_problem(record: dict[str, Any]) -> str | None:
    """What a method cell's record lacks for tables and paired tests (hand-edited records)."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    accuracy, episodes = record.get("accuracy"), record.get("test_episodes")
    if not isinstance(accuracy, dict) or not all(number(accuracy.get(k)) for k in ("mean", "ci95", "n")):
        return "'accuracy' lacks a numeric mean, ci95 or n"
    if not isinstance(episodes, dict) or not isinstance(episodes.get("sha"), str):
        return "'test_episodes' lacks its 'sha'"
    if episodes.get("count") != accuracy["n"]:
        return f"'test_episodes.count' {episodes.get('count')!r} differs from accuracy n {accuracy['n']!r}"
    return None


def failed_path(stem: Path) -> Path:
    """Where a crashed cell's record goes: beside, never over, a finished record."""
    return stem.with_suffix(".failed.json")


def write_record(stem: Path, record: CellRecord | AnalysisRecord | dict[str, Any],
                 per_episode: np.ndarray | None) -> Path:
    """Per-episode file first, JSON last: a JSON record always has its episodes beside it.
    A failed record goes to `failed_path`; a finished one removes an earlier failure's."""
    if per_episode is not None:
        save_npy_atomic(stem.with_suffix(".episodes.npy"), per_episode.astype(np.float64))
        record["per_episode_file"] = stem.with_suffix(".episodes.npy").name
    record["schema_version"] = SCHEMA_VERSION
    path = failed_path(stem) if record.get("status") == "failed" else stem.with_suffix(".json")
    write_json_atomic(path, record)
    if record.get("status") == "ok":
        failed_path(stem).unlink(missing_ok=True)
    return path


def load_per_episode(record_path: Path) -> np.ndarray:
    record = json.loads(Path(record_path).read_text())
    return np.load(Path(record_path).parent / record["per_episode_file"], allow_pickle=False)




def method_label(record: dict[str, Any]) -> str:
    """The method's name as tables show it; reconstructed methods (no official code) say so."""
    reconstructed = (record.get("method_info") or {}).get("reconstructed")
    return f"{record.get('method', '?')}{' (reconstructed)' if reconstructed else ''}"
