"""DFML methods, one module each; installed as `dfmlbench.methods`.

Registry targets are lazy ("module:Class") so listing methods imports none of them. A variant
is a registry entry made of a base method plus fixed settings: it appears in `list`, in
records and in tables like a method.
"""

from __future__ import annotations

from typing import Any

from dfmlbench.errors import UserError
from dfmlbench.method import Method
from dfmlbench.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
METHODS.register("random", "dfmlbench.methods.random_init:RandomInit",
                 summary="fine-tune one seeded random init per episode (no teachers)")
METHODS.register("random-reinit", "dfmlbench.methods.random_init:RandomInit",
                 {"reinit_per_task": True}, "Random with a fresh init for every episode")
METHODS.register("best-model", "dfmlbench.methods.best_model:BestModel",
                 summary="the most accurate teacher, fine-tuned on each support set")
METHODS.register("best-model-zero-step", "dfmlbench.methods.best_model:BestModel",
                 {"variant": "zero-step"}, "diagnostic: best teacher, identity head, no steps")
METHODS.register("best-model-hungarian", "dfmlbench.methods.best_model:BestModel",
                 {"variant": "hungarian"}, "diagnostic: best teacher, head matched on the support, no steps")
METHODS.register("average", "dfmlbench.methods.average:Average",
                 summary="element-wise mean of all teachers' weights, fine-tuned")
METHODS.register("ota", "dfmlbench.methods.ota:OTA",
                 summary="teachers aligned to the best one by optimal transport, averaged, fine-tuned")
METHODS.register("dro", "dfmlbench.methods.dro:DRO",
                 summary="(reconstructed) Wasserstein-robust hyper-network fusion, init at the mean embedding, fine-tuned")

METHODS.register("free", "dfmlbench.methods.free:Free",
                 summary="FREE_5: meta-generator (FIVE, k=5) + BELL + cross-task replay")
METHODS.register("free-2", "dfmlbench.methods.free:Free", {"k": 2}, "FREE_2: FREE with k=2 generator steps")
METHODS.register("free-baseline", "dfmlbench.methods.free:Free", {"generator": "sequential", "learner": "none"},
                 "Table 5 Baseline: sequential generator, replay only")
METHODS.register("free-erm", "dfmlbench.methods.free:Free", {"generator": "meta", "learner": "erm"},
                 "Table 5 ERM: meta-generator, one step on the mean KD loss")
METHODS.register("free-sequence", "dfmlbench.methods.free:Free", {"generator": "sequential", "learner": "bell"},
                 "Table 5 Sequence: sequential generator + BELL")
METHODS.register("free-official", "dfmlbench.methods.free:Free", {"fidelity": "official"},
                 "FREE with the official code's behaviour for every deviation switch")

METHODS.register("purer", "dfmlbench.methods.purer:Purer",
                 summary="PURER: learnable pseudo dataset (DeepInversion), adversarial episode curriculum, MAML")
METHODS.register("bidf-mkd", "dfmlbench.methods.bidf_mkd:BiDfMKD",
                 summary="BiDf-MKD (white-box): per-event generator, inner KD, boundary query, outer KD, replay")


def free_settings(name: str) -> set[str]:
    """The settings a user may change on this entry (those a variant does not fix)."""
    entry = METHODS.get(name)
    return set(entry.load().defaults) - set(entry.settings)


def create_method(name: str, overrides: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method or variant with user overrides of its free settings."""
    entry = METHODS.get(name)
    overrides = dict(overrides or {})
    fixed = sorted(set(overrides) & set(entry.settings))
    if fixed and any(overrides[k] != entry.settings[k] for k in fixed):
        raise UserError(f"'{fixed[0]}' is fixed by the variant '{name}'; "
                        "override it on the base method instead")
    method = entry.load()(**{**entry.settings, **overrides})
    method.name = name
    return method


__all__ = ["METHODS", "create_method"]
