"""`python -m dfmlbench data verify [DATASET ...]`: is each dataset where the loaders look, are
all split classes there, how many images, are the splits disjoint; and what to fix."""

from __future__ import annotations

from dfmlbench.data import DATASETS, load_dataset
from dfmlbench.data.base import SPLITS
from dfmlbench.data.npz import one_line
from dfmlbench.data.sources import Survey
from dfmlbench.errors import UserError
from dfmlbench.registry import import_target

# Datasets read from user files, surveyed without decoding; others are verified by loading.
SURVEYS = {
    "cifar-fs": "dfmlbench.data.cifar_fs:survey",
    "miniimagenet": "dfmlbench.data.miniimagenet:survey",
    "cub": "dfmlbench.data.cub:survey",
}
DEFAULT = ("cifar-fs", "miniimagenet", "cub")
SHOWN = 10  # problems printed per kind; the rest are counted


def _range(low: int, high: int) -> str:
    return f"{low}" if low == high else f"{low}-{high}"


def _survey_lines(s: Survey) -> list[str]:
    names = s.split.class_names
    split_ids = s.split.splits
    classes = "  ".join(f"{split} {sum(s.counts[c] > 0 for c in split_ids[split])}/{len(split_ids[split])}"
                        for split in SPLITS)
    disjoint = "disjoint" if not s.split.overlaps() else "NOT disjoint"
    present = [n for n in s.counts if n]
    per_class = _range(min(present), max(present)) if present else "0"
    images = "  ".join(f"{split} {sum(s.counts[c] for c in split_ids[split])}" for split in SPLITS)
    lines = [f"  classes  {classes}  (of {len(names)}; splits {disjoint})",
             f"  images   {sum(s.counts)}: {images}; {per_class} per class "
             f"(published: {_range(*s.expected_per_class)})"]
    for kind, items in (("error", s.errors), ("warning", s.warnings)):
        lines += [f"  {kind}: {item}" for item in items[:SHOWN]]
        if len(items) > SHOWN:
            lines.append(f"  ... and {len(items) - SHOWN} more {kind}s")
    return lines


def verify_one(name: str, data_root: str | None, strict: bool) -> tuple[list[str], bool]:
    entry = DATASETS.get(name)  # an unknown name is a usage error (exit 2), not a finding
    try:
        if name in SURVEYS:
            survey: Survey = import_target(SURVEYS[name])(data_root)
        else:
            dataset = load_dataset(entry.name, data_root)
            sizes = {s: len(dataset.splits[s]) for s in SPLITS}
            return [f"{name}: ok: {len(dataset.images)} images, "
                    f"{'/'.join(str(sizes[s]) for s in SPLITS)} classes ({dataset.notes})"], True
    except UserError as exc:
        message = str(exc)
        prefix = f"{name}: "
        return [f"{name}: FAILED: {message[len(prefix):] if message.startswith(prefix) else message}"], False
    except OSError as exc:  # a file or folder the survey cannot read: a finding, not a crash
        where = f" {exc.filename}" if exc.filename else ""
        return [f"{name}: FAILED: cannot access{where}: {exc.strerror or one_line(exc)}; check its "
                f"permissions, or re-copy it"], False
    ok = not survey.errors and not (strict and survey.warnings)
    status = "ok" if ok and not survey.warnings else ("ok, with warnings" if ok else "FAILED")
    return [f"{name}: {status}: {survey.location} ({survey.layout})", *_survey_lines(survey)], ok


def verify(names: list[str], data_root: str | None = None, strict: bool = False) -> tuple[list[str], bool]:
    """Report lines for each dataset, and whether all passed (warnings fail only if `strict`)."""
    for name in names:
        DATASETS.get(name)  # fail on a typo before doing any work
    from dfmlbench.data.multidomain import MEMBERS
    lines, all_ok = [], True
    expanded = [member for name in names or DEFAULT for member in MEMBERS.get(name, (name,))]
    for name in dict.fromkeys(expanded):  # a multi-domain name checks each of its datasets
        found, ok = verify_one(name, data_root, strict)
        lines += found
        all_ok &= ok
    return lines, all_ok
