"""The memory bank of recovered images (free.md §3.4): per absolute class, a FIFO ring of
slots, each holding one recovery's images of that class, kept in RAM as uint8.

Images are quantised as the official PNG round trip does (clamp to [0, 1], x255, truncate),
without the disk. Tasks drawn from the bank mix classes recovered from different teachers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class BankTask:
    support: torch.Tensor  # float [0, 1] (way*shot, C, H, W), class-major
    support_labels: torch.Tensor
    query: torch.Tensor  # float [0, 1] (way*query, C, H, W), class-major
    query_labels: torch.Tensor
    classes: list[int]  # absolute class ids, in relative-label order


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 by truncation, as `(x.clamp(0, 1) * 255).astype(uint8)` does."""
    return (images.detach().clamp(0, 1) * 255).to(torch.uint8).cpu()


class MemoryBank:
    def __init__(self, slots_per_class: int = 20) -> None:
        self.slots_per_class = slots_per_class
        self._slots: dict[int, list[torch.Tensor]] = {}
        self._next: dict[int, int] = {}

    @property
    def ready_classes(self) -> list[int]:
        """Classes with at least one stored slot, in the order they first arrived."""
        return list(self._slots)

    def classes_with(self, min_images: int) -> list[int]:
        """Classes holding at least `min_images` images (enough for one task's share)."""
        return [c for c, slots in self._slots.items() if sum(len(s) for s in slots) >= min_images]

    def add(self, class_id: int, images: torch.Tensor) -> None:
        """Store one recovery's images of a class in its next slot (overwriting the oldest)."""
        stored = quantize(images)
        slots = self._slots.setdefault(int(class_id), [])
        slot = self._next.get(int(class_id), 0)
        if slot < len(slots):
            slots[slot] = stored
        else:
            slots.append(stored)
        self._next[int(class_id)] = (slot + 1) % self.slots_per_class

    def add_task(self, class_ids: list[int], images: torch.Tensor, labels: torch.Tensor) -> None:
        """Store a recovered task: relative label i's images under the absolute class_ids[i]."""
        for label, class_id in enumerate(class_ids):
            self.add(class_id, images[labels == label])

    def state_dict(self) -> dict:
        return {"slots": {c: list(slots) for c, slots in self._slots.items()}, "next": dict(self._next)}

    def load_state_dict(self, state: dict) -> None:
        self._slots = {int(c): list(slots) for c, slots in state["slots"].items()}
        self._next = {int(c): int(i) for c, i in state["next"].items()}

    def images_of(self, class_id: int) -> torch.Tensor:
        return torch.cat(self._slots[int(class_id)])

    def __len__(self) -> int:
        return sum(sum(len(s) for s in slots) for slots in self._slots.values())

    def sample_task(self, way: int, shot: int, query: int, rng: np.random.Generator) -> BankTask:
        """`way` random classes among those holding shot+query images, then shot+query random
        images of each, class-major."""
        ready = self.classes_with(shot + query)
        if len(ready) < way:
            raise ValueError(f"the bank holds {len(ready)} classes with {shot + query} images, a task needs {way}")
        classes = [ready[i] for i in rng.choice(len(ready), size=way, replace=False)]
        support, queries = [], []
        for c in classes:
            pool = self.images_of(c)
            chosen = pool[torch.from_numpy(rng.choice(len(pool), size=shot + query, replace=False))]
            support.append(chosen[:shot])
            queries.append(chosen[shot:])
        labels = torch.arange(way)
        return BankTask(torch.cat(support).float() / 255, labels.repeat_interleave(shot),
                        torch.cat(queries).float() / 255, labels.repeat_interleave(query), classes)
