"""Suites (YAML package data), profiles and `--set` overrides, resolved into per-cell configs.

Priority, lowest first: package defaults < suite file < profile < `--set key=value`.
Every key a suite or `--set` names must exist in the defaults (typos fail loudly), except the
free-form per-method settings under `method_settings.<method>.<key>` and `method.<key>`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from dfmlbench.errors import UserError
from dfmlbench.paths import PACKAGE_DIR
from dfmlbench.registry import did_you_mean
from dfmlbench.schema import GLOBAL_RULES, choice, load_yaml

SUITES_DIR = PACKAGE_DIR / "suites"

DEFAULTS: dict[str, Any] = {
    "methods": [],
    "datasets": ["glyphs"],
    "shots": [1, 5],
    "seeds": [0],
    "protocol": {
        "way": 5,
        "query": 15,
        "test_episodes": 600,
        "val_episodes": 100,
        "steps": 10,  # meta-test SGD steps on all parameters
        "lr": 0.01,
        # A list of meta-test lrs: each learner's lr is then chosen on the meta-val episodes
        # (a diagnostic protocol; null = the paper's fixed `lr`).
        "lr_grid": None,
        "episode_seed": 0,  # the fixed test/val episodes; the same for every method and seed
        # Also test at every model-selection point, as the official codes do, and record the
        # maximum as a labelled diagnostic (never used for selection; P4, D10).
        "max_over_test": False,
    },
    "pool": {"arch": "conv4", "num_teachers": 100, "way": 5, "epochs": 60, "batch_size": 128,
             "lr": 0.01, "clip": 50.0, "select": "best", "seed": 0, "path": None},
    "learner": {"arch": "conv4"},
    "method_settings": {},  # method name -> {setting: value}
    # dataset name -> {setting: value}, for datasets that take settings (glyphs-paper: its
    # render seed and difficulty); part of a cell's identity, recorded in its config.
    "dataset_settings": {},
    # Extra cell axes: a dotted setting -> the values it takes (e.g. pool.num_teachers for
    # Fig. 6); every combination of methods x datasets x shots x seeds runs at each value.
    "sweep": {},
    # Analyses of the teacher pools (dfmlbench/analysis; e.g. teacher-features for Fig. 4):
    # they train no learner and run once per dataset x seed.
    "analyses": [],
    "analysis_settings": {},  # analysis name -> {setting: value}
    # Scale every method's paper budget (Method.paper_budget: epochs, iterations...) by one
    # fraction, so recovery-time ratios between methods stay meaningful; explicit settings win.
    "budget_fraction": None,
    # Settings that change speed or location, never results: left out of the config hash.
    # `download`: let a dataset that can (cifar-fs) fetch its missing source files.
    # `checkpoint_minutes`: a long cell (FREE, PURER, BiDf-MKD) saves a resumable checkpoint at
    # the first step after this many minutes (null: only where the method's own interval asks).
    # `tensorboard`: also write each cell's curves as TensorBoard scalars (<stem>.tensorboard/).
    "runtime": {"device": "auto", "eval_chunk": 20, "data_root": None, "download": False, "checkpoint_minutes": 10,
                "tensorboard": False},
    # How `run --launcher local|slurm` sizes each job (submitit); never part of a config hash.
    # `slurm`: any further sbatch option, e.g. {qos: high, constraint: a100} (as --qos=high).
    "launcher": {"gpus_per_job": 0, "cpus_per_job": 2, "mem_gb": 16, "timeout_min": 720, "partition": None,
                 "account": None, "array_parallelism": 32, "slurm": {}},
}
SMOKE_PROFILE = "smoke"
# Where every `smoke` profile starts (seconds on a CPU, for tests): a 3-teacher pool of 2
# epochs, 5-way 1-shot, 20 small test episodes. The suite's own smoke profile and `--set` win;
# every method runs at its own `smoke_settings` (planning._build_method).
SMOKE_BASE: dict[str, Any] = {"shots": [1], "pool.num_teachers": 3, "pool.epochs": 2, "protocol.test_episodes": 20,
                              "protocol.val_episodes": 10, "protocol.query": 5}
# Sections that map a registered name (a method, an analysis, a dataset) to its own settings.
SETTINGS_BY_NAME = ("method_settings", "analysis_settings", "dataset_settings")
SUITE_META_KEYS = ("suite", "version", "description", "default_profile", "profiles", "paper", "report")


@dataclass
class Suite:
    name: str
    version: int
    description: str
    default_profile: str
    profiles: dict[str, dict[str, Any]]
    body: dict[str, Any]  # the suite's own settings, merged onto DEFAULTS at resolve time
    path: Path
    report: dict[str, Any] = field(default_factory=dict)  # how `report` lays out its records


def _read_yaml(path: Path) -> Any:
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the suite file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check the path and its permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: malformed YAML{where}: {problem}; fix the file") from None


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or any suite file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        if name_or_path not in suite_names():
            raise UserError(f"unknown suite '{name_or_path}': {did_you_mean(name_or_path, suite_names())}")
        path = SUITES_DIR / f"{name_or_path}.yaml"
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a suite must be a YAML mapping of settings")
    body = {k: v for k, v in raw.items() if k not in SUITE_META_KEYS}
    _check_keys(body, DEFAULTS, str(path))
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) or v is None for v in profiles.values()):
        raise UserError(f"{path}: 'profiles' must map profile names to mappings of dotted overrides")
    profiles = {name: dict(over or {}) for name, over in profiles.items()} or {"paper": {}}
    for name, overrides in profiles.items():
        for key in overrides:
            _check_dotted(key, f"{path} profile '{name}'")
    default_profile = raw.get("default_profile", "paper")
    if default_profile not in profiles:
        raise UserError(f"{path}: default_profile '{default_profile}' is not among its profiles")
    report = raw.get("report") or {}
    if not isinstance(report, dict):
        raise UserError(f"{path}: 'report' must be a mapping (table, figures, reference)")
    return Suite(str(raw.get("suite", path.stem)), int(raw.get("version", 1)),
                 str(raw.get("description", "")), default_profile, profiles, body, path, report)


def _check_keys(body: dict[str, Any], reference: dict[str, Any], where: str, prefix: str = "") -> None:
    for key, value in body.items():
        if key not in reference:
            raise UserError(f"{where}: unknown setting '{prefix}{key}': {did_you_mean(key, list(reference))}")
        if isinstance(reference[key], dict) and not isinstance(value, dict):
            raise UserError(f"{where}: '{prefix}{key}' must be a mapping")
        if key in SETTINGS_BY_NAME:
            if not all(isinstance(v, dict) for v in value.values()):
                raise UserError(f"{where}: {key} must map names to mappings of settings")
        elif key == "sweep":
            for swept, values in value.items():
                _check_dotted(swept, f"{where} sweep")
                if not isinstance(values, list) or not values:
                    raise UserError(f"{where}: sweep.{swept} must be a non-empty list of values")
        elif isinstance(reference[key], dict) and reference[key]:  # an empty default: any keys
            _check_keys(value, reference[key], where, f"{prefix}{key}.")


def _check_dotted(key: str, where: str) -> None:
    parts = key.split(".")
    if parts[0] == "sweep" and len(parts) > 1:  # sweep.<dotted setting>: its list of values
        _check_dotted(".".join(parts[1:]), where)
        return
    if parts[0] == "method" or parts[0] in SETTINGS_BY_NAME:
        if len(parts) < 2:
            raise UserError(f"{where}: '{key}' must name a setting, e.g. method_settings.best-model.variant")
        return
    node: Any = DEFAULTS
    for i, part in enumerate(parts):
        if node == {}:  # a mapping of free keys (launcher.slurm)
            return
        if not isinstance(node, dict) or part not in node:
            choices = list(node) if isinstance(node, dict) else []
            hint = did_you_mean(part, choices) if choices else "it has no sub-settings"
            raise UserError(f"{where}: unknown setting '{key}': {hint}")
        node = node[part]


def command_assignments(raw: Sequence[str], device: str | None, data_root: str | None) -> list[tuple[str, Any]]:
    """A command's `--set KEY=VALUE`s, then its `--device` and `--data-root` as the settings
    they stand for (run, plan, evaluate and the launcher's jobs alike)."""
    assignments = [parse_assignment(text) for text in raw]
    return assignments + [(key, value) for key, value in (("runtime.device", device),
                                                          ("runtime.data_root", data_root)) if value]


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"bad --set '{text}': write it as key=value, e.g. --set protocol.test_episodes=100")
    _check_dotted(key, "--set")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"bad --set '{text}': the value is not valid YAML; quote it") from None
    if key.count(".") == 1 and key.split(".")[0] in SETTINGS_BY_NAME and not isinstance(value, dict):
        raise UserError(f"bad --set '{text}': '{key}' must name a setting "
                        f"(e.g. {key}.epochs=10) or be given a mapping")
    return key, value


def assign(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "method":  # applies to whichever method is being run; kept apart
        config.setdefault("method_overrides", {})[".".join(parts[1:])] = value
        return
    if parts[0] in SETTINGS_BY_NAME and len(parts) > 2:
        parts = [parts[0], parts[1], ".".join(parts[2:])]
    elif parts[0] == "sweep" and len(parts) > 1:
        parts = ["sweep", ".".join(parts[1:])]
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        value = _deep_merge(node[parts[-1]], value)
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(suite: Suite, profile: str | None, assignments: list[tuple[str, Any]]) -> dict[str, Any]:
    """The suite's settings under a profile and the user's overrides (not yet split in cells)."""
    profile = profile or suite.default_profile
    if profile not in suite.profiles:
        raise UserError(f"suite '{suite.name}' has no profile '{profile}': "
                        f"{did_you_mean(profile, list(suite.profiles))}")
    config = _deep_merge(DEFAULTS, suite.body)
    base = SMOKE_BASE.items() if profile == SMOKE_PROFILE else ()
    for key, value in [*base, *suite.profiles.get(profile, {}).items(), *assignments]:
        assign(config, key, value)
    _check_keys({k: v for k, v in config.items() if k != "method_overrides"}, DEFAULTS, "settings")
    _coerce_settings(config)
    config["suite"] = {"name": suite.name, "version": suite.version, "path": str(suite.path)}
    config["profile"] = profile
    # What the user changed, readable in every record (not part of any cell's config hash).
    config["overrides"] = {key: value for key, value in assignments}
    return config


def _coerce_settings(config: dict[str, Any]) -> None:
    """Every package-level setting typed and in range, names registered, swept values checked
    like the setting they sweep, and the episodes and teachers fit each dataset's declared
    facts: all before any file is read or any pool is built."""
    from dfmlbench.analysis.cells import ANALYSES
    from dfmlbench.data import DATASETS, dataset_options
    from dfmlbench.data.facts import check_fit, declared_facts
    from dfmlbench.methods import METHODS
    from dfmlbench.models import ARCHITECTURES
    from dfmlbench.pool import MIXED

    for key, rule in GLOBAL_RULES.items():
        section, _, leaf = key.rpartition(".")
        node = config[section] if section else config
        node[leaf] = rule.apply(key, node[leaf])
    for registry, key in ((METHODS, "methods"), (DATASETS, "datasets"), (ANALYSES, "analyses")):
        for name in config[key]:
            registry.get(name)
    for key, allowed in (("pool.arch", (*ARCHITECTURES, MIXED)), ("learner.arch", ARCHITECTURES)):
        section, leaf = key.split(".")
        choice(allowed).apply(key, config[section][leaf])
    config["dataset_settings"] = {name: dataset_options(name, settings)
                                  for name, settings in config["dataset_settings"].items()}
    for key, values in config["sweep"].items():
        rule = GLOBAL_RULES.get(key)
        if rule is not None:
            config["sweep"][key] = [rule.apply(key, value) for value in values]
    for point in sweep_points(config):
        swept = copy.deepcopy(config)
        for key, value in point.items():
            assign(swept, key, value)
        pool = swept["pool"]
        trains_pool = bool(swept["methods"] or swept["analyses"]) and pool["path"] is None
        for name in swept["datasets"]:
            check_fit(declared_facts(name), swept["protocol"]["way"], max(swept["shots"]),
                      swept["protocol"]["query"], pool["way"] if trains_pool else None)


def config_hash(cell_config: dict[str, Any]) -> str:
    """Identity of a cell's result: everything but `runtime` (device, chunking, paths)."""
    identity = {k: v for k, v in cell_config.items() if k != "runtime"}
    identity["suite"] = {k: v for k, v in cell_config["suite"].items() if k != "path"}
    return _digest(identity)


def computation_key(cell_config: dict[str, Any]) -> str:
    """What a cell computes: its config hash without the suite's and profile's names, which
    label a result but do not change it (fig7's FREE cell computes table2's). The suite version
    stays: a version bump says the code under every suite changed."""
    identity = {k: v for k, v in cell_config.items() if k not in ("runtime", "profile")}
    identity["suite"] = {"version": cell_config["suite"]["version"]}
    return _digest(identity)


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sweep_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the swept settings' values, in suite order ([{}] without a sweep)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in config.get("sweep", {}).items():
        points = [{**point, key: value} for point in points for value in values]
    return points
