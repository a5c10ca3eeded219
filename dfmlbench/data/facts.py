"""What a dataset holds, as far as episodes and teachers care: classes per split and the fewest
images of a class in each split. Declared for every registered dataset (the published
counts), so settings are checked before any file is read; measured on a loaded dataset, so a
copy with fewer images than published is checked too, still before any pool is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfmlbench.data.base import SPLITS, ImageDataset
from dfmlbench.errors import UserError


@dataclass(frozen=True)
class SplitFacts:
    name: str  # the dataset (a domain's own name for a multi-domain benchmark)
    classes: dict[str, int]  # split -> number of classes
    images: dict[str, int]  # split -> the fewest images of one class in it

    @classmethod
    def declared(cls, name: str, classes: tuple[int, int, int], images: int) -> "SplitFacts":
        return cls(name, dict(zip(SPLITS, classes)), {split: images for split in SPLITS})

    @classmethod
    def measured(cls, dataset: ImageDataset) -> "SplitFacts":
        return cls(dataset.name, {s: len(dataset.splits[s]) for s in SPLITS},
                   {s: min((len(dataset.indices_of(c)) for c in dataset.splits[s]), default=0) for s in SPLITS})


def declared_facts(name: str) -> list[SplitFacts]:
    """The registered dataset's facts, one per domain (a multi-domain benchmark has several)."""
    from dfmlbench.data import DATASETS
    from dfmlbench.data.multidomain import MEMBERS

    if name in MEMBERS:
        return [fact for member in MEMBERS[name] for fact in declared_facts(member)]
    return [DATASETS.get(name).settings["facts"]]


def measured_facts(dataset: Any) -> list[SplitFacts]:
    domains = getattr(dataset, "domains", None)
    return [SplitFacts.measured(d.source) for d in domains] if domains else [SplitFacts.measured(dataset)]


def check_fit(facts: list[SplitFacts], way: int, shot: int, query: int, pool_way: int | None) -> None:
    """Episodes (`way` classes of val and test, shot + query images of each) and teachers
    (`pool_way` classes of meta-train; None: no pool is trained) fit the data; one line
    naming the setting otherwise."""
    need = shot + query
    for fact in facts:
        for split in ("val", "test"):
            if way > fact.classes[split]:
                raise UserError(f"protocol.way={way} is not allowed on {fact.name}: its {split} split has "
                                f"{fact.classes[split]} classes; protocol.way must be at most {fact.classes[split]}")
            if need > fact.images[split]:
                raise UserError(f"shot {shot} + protocol.query={query} needs {need} images per class, but "
                                f"{fact.name}'s {split} classes have as few as {fact.images[split]}; "
                                "lower protocol.query or the shots")
        if pool_way is not None and pool_way > fact.classes["train"]:
            raise UserError(f"pool.way={pool_way} is not allowed on {fact.name}: its train split has "
                            f"{fact.classes['train']} classes; pool.way must be at most {fact.classes['train']}")
