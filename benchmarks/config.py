"""Typed job configs: dataclasses merged with YAML files and CLI dotlists by OmegaConf.

A job config has fixed sections (``data``, ``trainer``, ``selection``, ``output``, ``logger``)
plus two sections typed by the choices made: ``model`` is the chosen method's hyper-parameter
dataclass and ``source`` the chosen dataset's. On the command line ``<method>.<field>=...`` is
an alias of ``model.<field>`` and ``<dataset>.<field>=...`` of ``source.<field>`` (so
``gear.q=0.7`` and ``synthetic.bias=0.8`` work). Unknown keys and wrong types are errors that
name the key. A choice field is a ``Literal[...]`` on its dataclass: a value outside its choices is refused when the
config is built, in one line naming the key, the value, the choices and the closest one (`ConfigChoiceError`).

What a field means for the run hash is marked where the field is defined (`datamodules.fields`): ``non_semantic``
fields are never hashed, ``hash_neutral`` ones only when they differ from their neutral value (`config_hash`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError
from omegaconf.nodes import LiteralNode

from datamodules import get_dataset
from datamodules.fields import has_neutral, hash_neutral, is_semantic, neutral_value, non_semantic
from datamodules.schema import Modality
from methods import get_method
from methods.metrics import SelectionKey

Accelerator = Literal["cpu", "gpu", "cuda", "mps", "auto"]
# Lightning's precision names (its numeric aliases such as 32 or "16" are not taken: the closest name is suggested).
Precision = Literal["64-true", "32-true", "16-true", "16-mixed", "bf16-true", "bf16-mixed"]
Kind = Literal["", "method", "reference", "oracle"]
Logger = Literal["csv", "wandb"]


@dataclass
class DataConfig:
    batch_size: int = 32
    eval_batch_size: int = 256
    modalities: Optional[list[Modality]] = None
    manifests: list[str] = field(default_factory=list)
    allow_source_mismatch: bool = False
    preset: bool = True
    # Fraction of training labels replaced by labels drawn at random from the training labels (seeded by the
    # job's seed). 0 = off. A planted regression for the CI check's power test, not a benchmark setting.
    train_label_noise: float = hash_neutral(0.0)


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    min_epochs: int = 1
    patience: int = 8
    min_delta: float = 1e-6
    accelerator: Accelerator = "cpu"
    devices: int = 1
    # Lightning strategy; "ddp" with devices > 1 trains in that many processes (gloo on CPU). Evaluation rows
    # are gathered across processes before metrics and selection (methods/distributed.py). Spawn-based
    # strategies are not offered: their processes' outputs do not return to the job that writes the run folder.
    strategy: Literal["auto", "ddp"] = hash_neutral("auto")
    precision: Precision = "32-true"
    deterministic: bool = True
    threads: int = 1  # hashed: the CPU thread count changes floating-point reduction order
    limit_train_batches: float = 1.0
    progress_bar: bool = non_semantic(True)
    # Early stopping on IID valid (patience, min_delta); false trains all max_epochs (selection is unchanged).
    early_stop: bool = hash_neutral(True)
    # Per-epoch predictions on valid and every test set (epochs.npz in the run folder) for post-hoc selection.
    record_epochs: bool = hash_neutral(True)


@dataclass
class SelectionConfig:
    key: SelectionKey = "mae"


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
    # online | offline | disabled; "" = $WANDB_MODE, else offline (runs are written under the run folder's wandb/).
    mode: Literal["", "online", "offline", "disabled"] = ""
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
    kind: Kind = hash_neutral("")
    model: Any = None
    source: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    logger: list[Logger] = non_semantic(default_factory=lambda: ["csv"])
    wandb: WandbConfig = non_semantic(default_factory=WandbConfig)
    output: OutputConfig = non_semantic(default_factory=OutputConfig)


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


class ConfigChoiceError(ValueError):
    """A choice field (a ``Literal`` on a config dataclass) got a value outside its choices."""


def _choices_of(exc: ValidationError) -> tuple[Any, ...] | None:
    """The choices of the ``Literal`` field (or list element) whose check raised ``exc``; None for other errors."""
    if isinstance(exc.child_node, LiteralNode):
        return get_args(exc.child_node.ref_type)
    ref = exc.ref_type
    if get_origin(ref) is Union:  # Optional[list[Literal[...]]]
        ref = next((arg for arg in get_args(ref) if arg is not type(None)), ref)
    if get_origin(ref) is list and get_args(ref) and get_origin(get_args(ref)[0]) is Literal:
        return get_args(get_args(ref)[0])
    return None


def choice_message(key: str, value: Any, choices: Sequence[Any]) -> str:
    """One line naming the key, its choices, the value it got and the choice closest to that value."""
    by_text = {str(c): c for c in choices}
    closest = difflib.get_close_matches(str(value), list(by_text), n=1, cutoff=0.0)
    hint = f" (closest: {by_text[closest[0]]!r})" if closest else ""
    return f"{key} must be one of {list(choices)}, got {value!r}{hint}"


@contextmanager
def checked_choices(where: str = "", aliases: dict[str, str] | None = None, prefix: str = "") -> Iterator[None]:
    """Turn OmegaConf's error for a value outside a ``Literal`` field's choices into a `ConfigChoiceError` of one
    line (`choice_message`), prefixed with ``where`` (e.g. the file). The key is named as the user writes it:
    ``aliases`` renames its first part (``model`` -> ``gear``), ``prefix`` goes before it (``split.``). Every
    other error passes through unchanged."""
    try:
        yield
    except ValidationError as exc:
        choices = _choices_of(exc)
        if choices is None:
            raise
        head, dot, rest = str(exc.full_key).partition(".")
        key = f"{prefix}{(aliases or {}).get(head, head)}{dot}{rest}"
        prefix = f"{where}: " if where else ""
        raise ConfigChoiceError(prefix + choice_message(key, exc.value, choices)) from None


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
    with checked_choices(aliases={"model": chosen["method"], "source": chosen["dataset"]}):
        if OmegaConf.select(OmegaConf.merge(schema, user), "data.preset"):
            for key, value in dataset.method_preset.items():
                OmegaConf.update(preset, f"model.{key}", value, force_add=True)
        cfg = OmegaConf.merge(schema, preset, user)
        OmegaConf.resolve(cfg)
    if not 0 <= cfg.seed < 2**32:
        raise ValueError(f"seed={cfg.seed}: expected an integer in [0, {2**32 - 1}] (numpy's seed range)")
    if cfg.label and (cfg.label.startswith(".") or "/" in cfg.label or "\\" in cfg.label):
        raise ValueError(
            f"label={cfg.label!r}: expected a plain name (no '/' and no leading '.': the run folder is named after "
            "it, and hidden folders are never counted)"
        )
    to_object(cfg.source)  # the dataset config's own checks (e.g. synthetic.scenario) before any data or training
    if method_cls.needs_ground_truth and not getattr(dataset, "has_ground_truth", False):
        raise ValueError(
            f"method={chosen['method']} is an oracle row that trains on the synthetic generator's ground-truth groups "
            f"(docs/protocol.md#reference-and-oracle-rows); dataset={chosen['dataset']} has none (use synthetic or "
            "synthetic_<scenario>)"
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


def hash_markers(cfg: DictConfig, prefix: str = "") -> tuple[list[str], dict[str, Any]]:
    """The dotted keys of a resolved config whose dataclass fields are marked ``non_semantic`` (never hashed), and
    those marked ``hash_neutral`` with their neutral value (hashed only when they differ from it); nested sections
    (``model``, ``source``, ``model.backbone`` ...) are read from the dataclass each section was built from."""
    never: list[str] = []
    neutral: dict[str, Any] = {}
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return never, neutral
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        if not is_semantic(f):
            never.append(key)
            continue
        if has_neutral(f):
            neutral[key] = neutral_value(f)
        child = cfg.get(f.name)
        if isinstance(child, DictConfig):
            child_never, child_neutral = hash_markers(child, key + ".")
            never.extend(child_never)
            neutral.update(child_neutral)
    return never, neutral


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 (12 hex) of the semantic part of a resolved config: same job -> same hash. Left out: fields marked
    ``non_semantic``, and fields marked ``hash_neutral`` while they hold their neutral value (`hash_markers`), so
    that a knob added at the value that reproduces the earlier behaviour moves no existing run folder."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    never, neutral = hash_markers(cfg)
    for key in never:
        holder, leaf = _parent(plain, key)
        holder.pop(leaf, None)
    for key, value in neutral.items():
        holder, leaf = _parent(plain, key)
        if leaf in holder and holder[leaf] == value:
            holder.pop(leaf)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:12]


def run_dir_for(cfg: DictConfig) -> Path:
    """``output.dir`` if set, else ``<root>/<sweep>/<label or method>-<dataset>-s<seed>-<hash>``."""
    if cfg.output.dir:
        return Path(cfg.output.dir)
    name = f"{cfg.label or cfg.method}-{cfg.dataset}-s{cfg.seed}-{config_hash(cfg)}"
    return Path(cfg.output.root) / cfg.output.sweep / name


def staging_dir(run_dir: Path) -> Path:
    """The hidden sibling ``.<name>.new`` a job trains into; it becomes ``run_dir`` only when complete, so a visible run
    folder is always a complete one (a failed attempt's staging folder keeps its logs until the job is relaunched)."""
    return run_dir.parent / f".{run_dir.name}.new"


def to_object(node: DictConfig) -> Any:
    """A config section back as its dataclass instance."""
    return OmegaConf.to_object(node)
