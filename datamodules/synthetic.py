"""Synthetic shortcut benchmark: the zero-download default, shaped like CMU-MOSI.

In the spirit of DomainBed's ColoredMNIST: every modality carries a *causal* sentiment signal of
its own strength (text strongest) and a *planted shortcut* that agrees with the label's sign with
probability ``bias`` in train, valid and the IID test set (``train_bias``, when set, replaces ``bias``
in train and valid only: ``train_bias=0.5`` is the unbiased world of the ceiling row,
docs/algorithms.md#erm_unbiased). The generator also emits ground-truth OOD test sets in which the shortcut of one
(``ood_text``, ``ood_audio``, ``ood_vision``) or of all three (``ood_tav``) carries no information
(``ood_mode=random``) or the reversed sign (``ood_mode=reversed``), while everything else is drawn as
in the IID test set.

Generative story for a clip with label y:

* y = mean of 5 annotators' integer ratings in {-3..3} around a latent opinion, so labels are
  multiples of 0.2 with many values near 0 and tails to +/-3 (MOSI: mean 0.07, std 1.57).
* each modality perceives the sentiment with its own noise: c_m = y / 3 + ``noise[m]`` * eta.
* text: a transcript of word ids with sentiment words (count grows with ``strength[text]`` * |c_t|,
  polarity sign(c_t)), filler and stop words, and 1-3 *spurious words* from a positive or a
  negative list chosen by the shortcut sign z_t. Token features are fixed random word embeddings
  (BERT-like layout: [CLS] words [SEP], padding), and ``raw_text`` spells the words out so the
  text OOD split builder can run on it.
* audio / vision: frames x_t = N(0, 1) + ``strength[m]`` * c_m * u_m + ``shortcut_strength`` * z_m * s_m
  over a variable number of valid frames (zero padding after), u_m and s_m fixed orthogonal
  unit directions.
* z_m = s(y) with probability ``bias`` (the *agreement*), else -s(y), where s(y) = +1 for y >= 0 and
  -1 otherwise. Only the modalities in ``shortcut_modalities`` (default: all three) carry the shortcut;
  elsewhere z_m agrees with s(y) with probability 0.5 in every split (same random draws, so the default
  data is unchanged), e.g. ``synthetic.shortcut_modalities=[vision]`` plants it in vision only.

Scenarios (``scenario``) say how the shortcut signs of a clip relate:

* ``independent`` (the design of every earlier run folder): z_m drawn independently per modality, so
  a clip conflicting in all three modalities is rare ((1 - bias)^3).
* ``shared``: one confounder per clip, a single z drawn with agreement ``bias`` and shown by every
  shortcut modality, so a fraction 1 - bias of training clips conflict in all of them at once. In an
  OOD set breaking a modality set B: if B covers every shortcut modality (``ood_tav``) one shared z per
  clip is drawn at the OOD agreement (0.5 for ``random``, 1 - bias for ``reversed``); otherwise each
  modality in B gets its own z at the OOD agreement and the others keep the shared z drawn at ``bias``.
* ``single``: a shortcut in ``single_modality`` only (the effective ``shortcut_modalities`` is
  ``[single_modality]``; setting both is an error), and only the OOD sets that break it are made.

Every scenario draws the same labels, causal signals, lengths and noise for a seed (the extra draws
of ``shared`` come from their own seed streams), so ``independent`` data is bitwise what it was before
scenarios existed, and ``train_bias=None`` changes nothing.

Ground truth (docs/design.md#ground-truth): every split records ``z`` int8 (N, 3) in text/audio/vision order,
z_m in {-1, +1} where modality m carries a shortcut (in the effective shortcut modalities and in
``modalities``), 0 elsewhere (a modality without a shortcut still has random spurious cues, which are
not a shortcut). The conflict flags and groups follow from it (:mod:`datamodules.schema`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

import numpy as np

from datamodules.fields import hash_neutral
from datamodules.schema import DatasetBundle, Modality, SplitData

OOD_SETS: dict[str, tuple[str, ...]] = {
    "ood_text": ("text",),
    "ood_audio": ("audio",),
    "ood_vision": ("vision",),
    "ood_tav": ("text", "audio", "vision"),
}

POSITIVE_WORDS = (
    "good great love loved amazing awesome excellent fantastic wonderful enjoyed beautiful best "
    "brilliant funny perfect fun favorite nice incredible impressive happy recommend strong superb"
).split()
NEGATIVE_WORDS = (
    "bad terrible boring hate hated awful worst horrible stupid disappointing waste poor annoying "
    "dull weak ridiculous mess lame sad pointless ugly painful forgettable mediocre"
).split()
FILLER_WORDS = (
    "film scene character plot actor actress ending music camera voice part time people guy girl "
    "night world year day friend family city house car money job school book show series trailer "
    "theater ticket seat screen sound picture line moment minute hour second place way thing kind "
    "sort lot bit side end start middle back front top version sequel original cast crew budget "
    "effects action drama comedy romance thriller horror animation dialogue script writer studio "
    "audience critic review opinion question answer point idea reason fact case example story "
    "think know see saw watch watched went said say tell told feel felt mean guess seem seemed "
    "going get got make made come came take took look looked want wanted give gave find found"
).split()
STOP_WORDS = "i it was the a and to of that is this but so he she they you we in on with".split()
SPURIOUS_POSITIVE = "basically honestly literally obviously".split()
SPURIOUS_NEGATIVE = "um uh anyway whatever".split()
VOCABULARY: tuple[str, ...] = (
    "[PAD]",
    "[CLS]",
    "[SEP]",
    *POSITIVE_WORDS,
    *NEGATIVE_WORDS,
    *FILLER_WORDS,
    *STOP_WORDS,
    *SPURIOUS_POSITIVE,
    *SPURIOUS_NEGATIVE,
)
_WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2, "ood_text": 3, "ood_audio": 4, "ood_vision": 5, "ood_tav": 6}


Scenario = Literal["independent", "shared", "single"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic shortcut benchmark (all have MOSI-like defaults)."""

    seed: int = 0
    n_train: int = 1284
    n_valid: int = 229
    n_test: int = 686
    n_ood: int = 686
    dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    max_len: dict[str, int] = field(default_factory=lambda: {"text": 50, "audio": 50, "vision": 50})
    min_len: dict[str, int] = field(default_factory=lambda: {"text": 5, "audio": 10, "vision": 10})
    modalities: list[Modality] = field(default_factory=lambda: ["text", "audio", "vision"])
    strength: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "audio": 0.6, "vision": 0.6})
    noise: dict[str, float] = field(default_factory=lambda: {"text": 0.25, "audio": 0.45, "vision": 0.45})
    bias: float = 0.9
    shortcut_strength: float = 1.0
    shortcut_modalities: list[Modality] = field(default_factory=lambda: ["text", "audio", "vision"])
    ood_mode: Literal["random", "reversed"] = "random"
    clips_per_video: int = 24
    embedding_noise: float = 0.0
    # How the shortcut signs are drawn (see SCENARIOS and the module docstring). ``independent``: z_m drawn per
    # modality (the design every earlier run folder used); ``shared``: one z per clip shown by every shortcut
    # modality; ``single``: a shortcut in ``single_modality`` only.
    scenario: Scenario = hash_neutral("independent")
    # Agreement of the shortcuts in train and valid (None = ``bias``); the IID test set keeps ``bias``. 0.5 gives
    # the unbiased world of the ceiling row (same labels, signals and sizes).
    train_bias: Optional[float] = hash_neutral(None)
    # The one shortcut modality of scenario ``single``.
    single_modality: Modality = hash_neutral("text")

    def __post_init__(self) -> None:
        _check_scenario(self)


_DEFAULT_SHORTCUT_MODALITIES = ("text", "audio", "vision")
_SHARED_STREAM = 1001  # seed-stream key of the shared confounder's draws (never used by ``independent``)


def _check_scenario(cfg: SyntheticConfig) -> None:
    """Scenario keys only (also run when the config object is built, e.g. by ``to_object``)."""
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"synthetic.scenario must be one of {list(SCENARIOS)}, got {cfg.scenario!r}")
    if cfg.single_modality not in _DEFAULT_SHORTCUT_MODALITIES:
        raise ValueError(
            f"synthetic.single_modality must be one of {list(_DEFAULT_SHORTCUT_MODALITIES)}, "
            f"got {cfg.single_modality!r}"
        )
    if cfg.scenario == "single":
        if sorted(cfg.shortcut_modalities) != sorted(_DEFAULT_SHORTCUT_MODALITIES):
            raise ValueError(
                f"synthetic.scenario=single takes its shortcut modality from synthetic.single_modality "
                f"({cfg.single_modality!r}); do not also set synthetic.shortcut_modalities "
                f"(got {list(cfg.shortcut_modalities)})"
            )
    elif cfg.single_modality != "text":
        raise ValueError(
            f"synthetic.single_modality={cfg.single_modality!r} applies to synthetic.scenario=single only "
            f"(scenario is {cfg.scenario!r}); use synthetic.shortcut_modalities=[...] for other scenarios"
        )


def shortcut_modalities_of(cfg: SyntheticConfig) -> tuple[str, ...]:
    """The modalities that carry a shortcut, in text/audio/vision order: the effective ``shortcut_modalities``
    (``[single_modality]`` for scenario ``single``) that are also in ``modalities``."""
    chosen = [cfg.single_modality] if cfg.scenario == "single" else list(cfg.shortcut_modalities)
    return tuple(m for m in _DEFAULT_SHORTCUT_MODALITIES if m in chosen and m in cfg.modalities)


def _check_config(cfg: SyntheticConfig) -> None:
    _check_scenario(cfg)
    if cfg.train_bias is not None and not 0.0 <= cfg.train_bias <= 1.0:
        raise ValueError(f"synthetic.train_bias must lie in [0, 1] (or null = bias), got {cfg.train_bias}")
    if cfg.scenario == "single" and cfg.single_modality not in cfg.modalities:
        raise ValueError(
            f"synthetic.single_modality={cfg.single_modality!r} is not among synthetic.modalities {cfg.modalities}"
        )
    if not 0.0 <= cfg.bias <= 1.0:
        raise ValueError(f"synthetic.bias must lie in [0, 1], got {cfg.bias}")
    if cfg.ood_mode not in ("random", "reversed"):
        raise ValueError(f"synthetic.ood_mode must be 'random' or 'reversed', got {cfg.ood_mode!r}")
    if not cfg.modalities or set(cfg.modalities) - set(OOD_SETS["ood_tav"]):
        raise ValueError(f"synthetic.modalities must be a non-empty subset of text/audio/vision, got {cfg.modalities}")
    if set(cfg.shortcut_modalities) - set(OOD_SETS["ood_tav"]):
        raise ValueError(
            f"synthetic.shortcut_modalities must be a subset of text/audio/vision, got {cfg.shortcut_modalities}"
        )
    for m in cfg.modalities:
        for knob in ("dims", "max_len", "min_len", "strength", "noise"):
            if m not in getattr(cfg, knob):
                raise ValueError(f"synthetic.{knob} has no entry for modality {m!r}")
        if not 1 <= cfg.min_len[m] <= cfg.max_len[m]:
            raise ValueError(f"synthetic.min_len.{m}={cfg.min_len[m]} must lie in [1, max_len.{m}={cfg.max_len[m]}]")
    if "text" in cfg.modalities and cfg.max_len["text"] < 3:
        raise ValueError("synthetic.max_len.text must be >= 3 ([CLS], one word, [SEP])")
    for name in ("n_train", "n_valid", "n_test"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"synthetic.{name} must be >= 1, got {getattr(cfg, name)}")


class _World:
    """The fixed parts shared by every split: word embeddings and feature directions."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 99]))
        self.embedding: np.ndarray | None = None
        if "text" in cfg.modalities:
            d = cfg.dims["text"]
            self.embedding = (rng.standard_normal((len(VOCABULARY), d)) / np.sqrt(d)).astype(np.float32)
            self.embedding[0] = 0.0
        self.directions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for m in ("audio", "vision"):
            d = cfg.dims[m]
            basis = np.linalg.qr(rng.standard_normal((d, max(d, 2))))[0]
            u, s = basis[:, 0], basis[:, 1 % d]
            if d == 1:
                u = s = np.ones(1)
            self.directions[m] = (u.astype(np.float32), s.astype(np.float32))


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    opinion = rng.normal(0.1, 1.7, size=n)
    ratings = np.clip(np.rint(opinion[:, None] + rng.normal(0.0, 0.9, size=(n, 5))), -3, 3)
    return np.round(ratings.mean(axis=1), 1).astype(np.float32)


def _lengths(rng: np.random.Generator, n: int, lo: int, hi: int, median: float) -> np.ndarray:
    raw = np.exp(rng.normal(np.log(median), 0.6, size=n))
    return np.clip(np.rint(raw), lo, hi).astype(np.int64)


def _shortcut_sign(rng: np.random.Generator, y: np.ndarray, agree: float) -> np.ndarray:
    sign = np.where(y >= 0, 1.0, -1.0)
    return np.where(rng.random(y.shape[0]) < agree, sign, -sign).astype(np.float32)


def _text(
    rng: np.random.Generator, cfg: SyntheticConfig, world: _World, c: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n, max_len = c.shape[0], cfg.max_len["text"]
    words_max = max_len - 2
    n_words = _lengths(rng, n, max(1, cfg.min_len["text"] - 2), words_max, median=10.0)
    ids = np.zeros((n, 3, max_len), dtype=np.int64)
    raw = np.empty(n, dtype=object)
    pos_ids = np.array([_WORD_ID[w] for w in POSITIVE_WORDS])
    neg_ids = np.array([_WORD_ID[w] for w in NEGATIVE_WORDS])
    filler_ids = np.array([_WORD_ID[w] for w in FILLER_WORDS + STOP_WORDS])
    spur_pos = np.array([_WORD_ID[w] for w in SPURIOUS_POSITIVE])
    spur_neg = np.array([_WORD_ID[w] for w in SPURIOUS_NEGATIVE])
    n_sent = rng.poisson(cfg.strength["text"] * 1.5 * np.abs(c))
    n_spur = 1 + rng.binomial(2, 0.5, size=n)
    for i in range(n):
        k = int(n_words[i])
        spur = rng.choice(spur_pos if z[i] > 0 else spur_neg, size=min(int(n_spur[i]), k))
        sent_count = min(int(n_sent[i]), k - spur.size)
        sent = rng.choice(pos_ids if c[i] >= 0 else neg_ids, size=sent_count)
        fill = rng.choice(filler_ids, size=k - spur.size - sent_count)
        words = np.concatenate([spur, sent, fill])
        rng.shuffle(words)
        ids[i, 0, 0], ids[i, 0, 1 : k + 1], ids[i, 0, k + 1] = _WORD_ID["[CLS]"], words, _WORD_ID["[SEP]"]
        ids[i, 1, : k + 2] = 1
        raw[i] = " ".join(VOCABULARY[w] for w in words)
    features = world.embedding[ids[:, 0]]
    if cfg.embedding_noise > 0:
        features += cfg.embedding_noise * rng.standard_normal(features.shape).astype(np.float32)
        features *= ids[:, 1, :, None]
    return features.astype(np.float32), ids, (n_words + 2).astype(np.int64), raw.astype(str)


def _frames(
    rng: np.random.Generator, cfg: SyntheticConfig, world: _World, m: str, c: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n, t_max, d = c.shape[0], cfg.max_len[m], cfg.dims[m]
    lengths = _lengths(rng, n, cfg.min_len[m], t_max, median=max(cfg.min_len[m], 0.6 * t_max))
    u, s = world.directions[m]
    x = rng.standard_normal((n, t_max, d), dtype=np.float32)
    x += (cfg.strength[m] * c)[:, None, None].astype(np.float32) * u
    x += (cfg.shortcut_strength * z)[:, None, None] * s
    x *= (np.arange(t_max)[None, :] < lengths[:, None])[:, :, None]
    return x, lengths


def _split(
    cfg: SyntheticConfig, world: _World, name: str, n: int, broken: tuple[str, ...], agree_iid: float
) -> SplitData:
    """One split; ``broken`` are the modalities whose shortcut this set breaks, ``agree_iid`` the agreement of the
    unbroken shortcuts (``bias``, or ``train_bias`` in train and valid)."""
    code = _SPLIT_CODES[name]
    y = _labels(np.random.default_rng(np.random.SeedSequence([cfg.seed, code])), n)
    ood_agree = 0.5 if cfg.ood_mode == "random" else 1.0 - cfg.bias
    shortcuts = shortcut_modalities_of(cfg)
    shared, covers = None, set(shortcuts) <= set(broken)
    if cfg.scenario == "shared" and shortcuts:
        shared_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, code, _SHARED_STREAM]))
        shared = _shortcut_sign(shared_rng, y, ood_agree if covers else agree_iid)
    data: dict[str, np.ndarray] = {}
    z_all = np.zeros((n, 3), dtype=np.int8)
    for k, m in enumerate(("text", "audio", "vision")):
        if m not in cfg.modalities:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, code, k + 1]))
        c = (y / 3.0 + cfg.noise[m] * rng.standard_normal(n)).astype(np.float32)
        agree = 0.5 if m not in shortcuts else ood_agree if m in broken else agree_iid
        # Always drawn from the modality's stream (so every later draw of that stream is the same in every
        # scenario); ``shared`` then shows the clip's confounder instead, except in a modality this set breaks
        # on its own.
        z = _shortcut_sign(rng, y, agree)
        if shared is not None and m in shortcuts and (covers or m not in broken):
            z = shared
        if m in shortcuts:
            z_all[:, k] = z.astype(np.int8)
        if m == "text":
            data["text"], data["text_ids"], data["text_lengths"], data["raw_text"] = _text(rng, cfg, world, c, z)
        else:
            data[m], data[f"{m}_lengths"] = _frames(rng, cfg, world, m, c, z)
    clip = np.arange(n)
    ids = np.array([f"syn_{name}_v{k // cfg.clips_per_video:03d}$_${k % cfg.clips_per_video + 1}" for k in clip])
    return SplitData(ids=ids, label=y, z=z_all, **data)


def ood_sets_of(cfg: SyntheticConfig) -> dict[str, tuple[str, ...]]:
    """The OOD sets the generator makes (name -> broken modalities): those touching a present modality, and for
    scenario ``single`` only those that break its shortcut modality."""
    shortcuts = set(shortcut_modalities_of(cfg))
    return {
        name: broken
        for name, broken in OOD_SETS.items()
        if set(broken) & set(cfg.modalities) and (cfg.scenario != "single" or set(broken) & shortcuts)
    }


# The last bundles generated in this process, by config repr: a sweep worker runs many jobs on one world, and
# generating it costs ~2.5 s per job. Callers get fresh bundle and split objects over the same arrays, which the
# datamodule and the methods only read.
_BUNDLES: dict[str, DatasetBundle] = {}
_BUNDLES_KEPT = 2


def generate(cfg: SyntheticConfig | None = None) -> DatasetBundle:
    """Generate the benchmark: train / valid / IID test plus the ground-truth OOD test sets (:func:`ood_sets_of`),
    every split with its ground truth ``z``.

    Deterministic for ``cfg.seed``; each split draws from its own seed stream, so changing one
    split's size leaves the others unchanged. The last two bundles are kept in memory per process.
    """
    cfg = cfg or SyntheticConfig()
    _check_config(cfg)
    key = repr(cfg)
    if key not in _BUNDLES:
        while len(_BUNDLES) >= _BUNDLES_KEPT:
            _BUNDLES.pop(next(iter(_BUNDLES)))
        _BUNDLES[key] = _generate(cfg)
    bundle = _BUNDLES[key]
    return dataclasses.replace(
        bundle,
        train=dataclasses.replace(bundle.train),
        valid=dataclasses.replace(bundle.valid),
        test=dataclasses.replace(bundle.test),
        extra_tests={name: dataclasses.replace(split) for name, split in bundle.extra_tests.items()},
    )


def _generate(cfg: SyntheticConfig) -> DatasetBundle:
    world = _World(cfg)
    train_agree = cfg.bias if cfg.train_bias is None else cfg.train_bias
    bundle = DatasetBundle(
        name="synthetic" if cfg.scenario == "independent" else f"synthetic_{cfg.scenario}",
        train=_split(cfg, world, "train", cfg.n_train, (), train_agree),
        valid=_split(cfg, world, "valid", cfg.n_valid, (), train_agree),
        test=_split(cfg, world, "test", cfg.n_test, (), cfg.bias),
        extra_tests={
            name: _split(cfg, world, name, cfg.n_ood, broken, cfg.bias)
            for name, broken in (ood_sets_of(cfg).items() if cfg.n_ood > 0 else ())
        },
    )
    bundle.validate("synthetic generator")
    return bundle
