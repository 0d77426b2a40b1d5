"""Typed job configs: dataclasses merged with YAML files and CLI dotlists by OmegaConf.

A job config has fixed sections (``data``, ``trainer``, ``selection``, ``output``, ``logger``)
plus two sections typed by the choices made: ``model`` is the chosen method's hyper-parameter
dataclass and ``source`` the chosen dataset's. On the command line ``<method>.<field>=...`` is
an alias of ``model.<field>`` and ``<dataset>.<field>=...`` of ``source.<field>`` (so
``gear.q=0.7`` and ``synthetic.bias=0.8`` work). Unknown keys and wrong types are errors that
name the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from datamodules import get_dataset
from methods import get_method


@dataclass
class DataConfig:
    batch_size: int = 32
    eval_batch_size: int = 256
    modalities: Optional[list[str]] = None
    manifests: list[str] = field(default_factory=list)
    allow_source_mismatch: bool = False
    preset: bool = True
    # Fraction of training labels replaced by labels drawn at random from the training labels (seeded by the
    # job's seed). 0 = off. A planted regression for the CI check's power test, not a benchmark setting.
    train_label_noise: float = 0.0


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    min_epochs: int = 1
    patience: int = 8
    min_delta: float = 1e-6
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"
    deterministic: bool = True
    threads: int = 1
    limit_train_batches: float = 1.0
    progress_bar: bool = True
    # Early stopping on IID valid (patience, min_delta); false trains all max_epochs (selection is unchanged).
    early_stop: bool = True
    # Per-epoch predictions on valid and every test set (epochs.npz in the run folder) for post-hoc selection.
    record_epochs: bool = True


@dataclass
class SelectionConfig:
    key: str = "mae"


@dataclass
class OutputConfig:
    root: str = "runs"
    sweep: str = "manual"
    dir: str = ""
    overwrite: bool = False


@dataclass
class WandbConfig:
    project: str = "msa-debias-bench"
    entity: str = ""
    group: str = ""
    # Seconds W&B may take to start (and to finish) a run; past it the job logs a warning and goes on without W&B
    # (an unreachable server otherwise stalls every job for about 100 s).
    timeout_s: float = 10.0


@dataclass
class JobConfig:
    method: str = "baseline"
    dataset: str = "synthetic"
    seed: int = 1111
    label: str = ""
    # Leaderboard kind of this job's row: "" = the method's own (MSAMethod.kind), else method | reference | oracle
    # (e.g. a ceiling row that is the baseline trained on unbiased data is the baseline method with kind reference).
    kind: str = ""
    model: Any = None
    source: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    logger: list[str] = field(default_factory=lambda: ["csv"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# Keys that do not change what a job computes: excluded from its hash and run-folder name.
# (trainer.threads is semantic: the CPU thread count changes floating-point reduction order.)
NON_SEMANTIC = (
    "output",
    "logger",
    "wandb",
    "trainer.progress_bar",
    "source.threads",
    "source.progress",
    "source.cache",
    "source.cache_dir",
    "source.verify_hash",
)
# Knobs added after run folders existed, with the default that reproduces the earlier behaviour: left out of the
# hash while they hold that default, so adding a knob does not move every existing run folder.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "data.train_label_noise": 0.0,
    "source.scenario": "independent",
    "source.train_bias": None,
    "source.single_modality": "text",
    "kind": "",
    "model.backbone.lstm_impl": "padded",
    "model.optim.impl": "foreach",
    "trainer.early_stop": True,
    "trainer.record_epochs": True,
    "model.iv.pull_c": False,
}
KINDS = ("method", "reference", "oracle")
FIXED_SECTIONS = (
    "label",
    "kind",
    "method",
    "dataset",
    "seed",
    "model",
    "source",
    "data",
    "trainer",
    "selection",
    "logger",
    "wandb",
    "output",
)


def _split_dotlist(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if not key:
            raise ValueError(f"override {item!r} has an empty key")
        pairs.append((key.strip(), value))
    return pairs


def build_config(overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> DictConfig:
    """Resolve a job config: defaults <- dataset preset <- ``base`` (e.g. a YAML) <- ``overrides``."""
    base = dict(base or {})
    pairs = _split_dotlist(list(overrides or []))
    chosen = {"method": base.get("method", "baseline"), "dataset": base.get("dataset", "synthetic")}
    for key, value in pairs:
        if key in chosen:
            chosen[key] = value
    method_cls, dataset = get_method(chosen["method"]), get_dataset(chosen["dataset"])
    schema = OmegaConf.structured(
        JobConfig(
            method=chosen["method"],
            dataset=chosen["dataset"],
            model=method_cls.config_class(),
            source=dataset.config_class(),
        )
    )
    rewritten = []
    for key, value in pairs:
        head, _, rest = key.partition(".")
        if rest and head == chosen["method"] and head not in FIXED_SECTIONS:
            key = f"model.{rest}"
        elif rest and head == chosen["dataset"] and head not in FIXED_SECTIONS:
            key = f"source.{rest}"
        rewritten.append(f"{key}={value}")
    user = OmegaConf.merge(OmegaConf.create(base), OmegaConf.from_dotlist(rewritten))
    preset = OmegaConf.create()
    if OmegaConf.select(OmegaConf.merge(schema, user), "data.preset"):
        for key, value in dataset.method_preset.items():
            OmegaConf.update(preset, f"model.{key}", value, force_add=True)
    cfg = OmegaConf.merge(schema, preset, user)
    OmegaConf.resolve(cfg)
    if cfg.kind not in ("", *KINDS):
        raise ValueError(f"kind must be one of {list(KINDS)} (or empty for the method's own), got {cfg.kind!r}")
    to_object(cfg.source)  # the dataset config's own checks (e.g. synthetic.scenario) before any data or training
    if method_cls.needs_ground_truth and not getattr(dataset, "has_ground_truth", False):
        raise ValueError(
            f"method={chosen['method']} is an oracle row that trains on the synthetic generator's ground-truth groups "
            f"(METHODS §10); dataset={chosen['dataset']} has none (use synthetic or synthetic_<scenario>)"
        )
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML job config as a plain dict, with the file named in errors."""
    path = Path(path)
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read YAML config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def _parent(plain: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The dict holding dotted ``key`` inside ``plain`` (an empty one when a level is missing) and the leaf name."""
    node, _, leaf = key.rpartition(".")
    holder = plain
    for part in filter(None, node.split(".")):
        holder = holder.get(part, {})
    return holder, leaf


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 (12 hex) of the semantic part of a resolved config: same job -> same hash."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC:
        holder, leaf = _parent(plain, key)
        holder.pop(leaf, None)
    for key, default in HASH_NEUTRAL_DEFAULTS.items():
        holder, leaf = _parent(plain, key)
        if leaf in holder and holder[leaf] == default:
            holder.pop(leaf)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:12]


def run_dir_for(cfg: DictConfig) -> Path:
    """``output.dir`` if set, else ``<root>/<sweep>/<label or method>-<dataset>-s<seed>-<hash>``."""
    if cfg.output.dir:
        return Path(cfg.output.dir)
    name = f"{cfg.label or cfg.method}-{cfg.dataset}-s{cfg.seed}-{config_hash(cfg)}"
    return Path(cfg.output.root) / cfg.output.sweep / name


def to_object(node: DictConfig) -> Any:
    """A config section back as its dataclass instance."""
    return OmegaConf.to_object(node)
