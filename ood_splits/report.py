"""Sanity report of OOD manifests (docs/algorithms.md#ood-split-builder): Markdown + JSON + PNG beside each manifest.

For a manifest ``<dir>/<name>.json`` the report writes ``<dir>/reports/<name>.report.md``,
``.report.json`` and ``.report.png`` (a sibling folder, so ``<dir>/*.json`` stays a list of
manifests that ``data.manifests=[...]`` can take as it is); for a committed manifest of the package
(``ood_splits/manifests``, read-only package data) the default is the per-user manifest folder,
``<user manifests>/<dataset>/reports/``. It reloads the dataset the manifest
records (registry name and config), checks that the data is the one the manifest was built
from, rebuilds the vocabulary with the recorded split config, and shows: subset size; 7-class
and binary label histograms against the full test split (warning if the binary ratio moves by
more than 10 points); E of the chosen mask vs random same-size subsets, every chain's final E
and the E trace per chain; per vocabulary entry the negative rate on train / full test / OOD and
the 20 entries most correlated with the label on train; the Jaccard overlap with the other
manifests given; distinct videos; and, on synthetic data, how often the planted text shortcut
agrees with the label inside the set vs the test split.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from datamodules.manifest import OODManifest
from datamodules.schema import DatasetBundle
from ood_splits.annealing import Problem, label_sides, objective
from ood_splits.builder import (
    SplitBuildError,
    build_vocabulary,
    is_package_manifest,
    load_dataset,
    sha256_lines,
    source_fingerprint,
    split_config_from,
    user_manifest_root,
    video_of,
)
from ood_splits.vocab import tokenize

REPORT_DIR = "reports"
LABEL_SHIFT_WARNING = 0.10
TOP_ENTRIES = 20
CLASSES_7 = list(range(-3, 4))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A manifest written by `msabench splits build`, as a dict: validated by `OODManifest.load` (the datamodule's
    check) with the builder's record required, the file named in errors."""
    return OODManifest.load(path, built=True).to_dict()


def _rows(manifest: dict[str, Any], bundle: DatasetBundle, path: Path) -> np.ndarray:
    position = {sample_id: i for i, sample_id in enumerate(bundle.test.ids.tolist())}
    unknown = [i for i in manifest["ids"] if i not in position]
    if unknown:
        raise SplitBuildError(f"{path}: {len(unknown)} ids are not in the test split, e.g. {unknown[:3]}")
    return np.array(sorted(position[i] for i in manifest["ids"]), dtype=np.int64)


def _histograms(label: np.ndarray) -> dict[str, Any]:
    y = np.asarray(label, dtype=np.float64)
    classes = np.clip(np.round(y), -3, 3).astype(int)
    n = max(len(y), 1)
    seven = {str(k): int((classes == k).sum()) for k in CLASSES_7}
    nonzero = y[y != 0]
    return {
        "n": int(len(y)),
        "seven_class": seven,
        "seven_class_fraction": {k: v / n for k, v in seven.items()},
        "negative_fraction": float((y < 0).mean()) if len(y) else float("nan"),
        "neutral_fraction": float((y == 0).mean()) if len(y) else float("nan"),
        "positive_fraction_non0": float((nonzero > 0).mean()) if len(nonzero) else float("nan"),
        "mean": float(y.mean()) if len(y) else float("nan"),
    }


def _entry_stats(counts: Any, side: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(negative rate N_w/(N_w+P_w), total count, Pearson r of count vs b) per entry."""
    dense = np.asarray(counts.toarray(), dtype=np.float64)
    on = side >= 0
    neg = dense[side == 0].sum(axis=0)
    pos = dense[side == 1].sum(axis=0)
    total = neg + pos
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, neg / np.maximum(total, 1), np.nan)
        x, b = dense[on], (side[on] == 1).astype(np.float64)
        xc, bc = x - x.mean(axis=0), b - b.mean()
        denom = np.sqrt((xc**2).sum(axis=0) * (bc**2).sum())
        r = np.where(denom > 0, (xc * bc[:, None]).sum(axis=0) / np.where(denom > 0, denom, 1), np.nan)
    return rate, total, r


def text_shortcut_agreement(raw_text: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per sample of the synthetic benchmark: 1 if its spurious words' polarity matches the label
    sign (y >= 0 -> positive), 0 if not, NaN if it carries no spurious word or both polarities."""
    from datamodules.synthetic import SPURIOUS_NEGATIVE, SPURIOUS_POSITIVE

    pos_words, neg_words = set(SPURIOUS_POSITIVE), set(SPURIOUS_NEGATIVE)
    out = np.full(len(label), np.nan)
    for i, text in enumerate(raw_text.tolist()):
        tokens = set(tokenize(text))
        has_pos, has_neg = bool(tokens & pos_words), bool(tokens & neg_words)
        if has_pos != has_neg:
            out[i] = float(has_pos == (label[i] >= 0))
    return out


def _random_subsets(n: int, n_sel: int, seed: int, count: int) -> list[np.ndarray]:
    """The same random subsets as the builder's random baseline (same seed stream)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    return [np.sort(rng.choice(n, size=n_sel, replace=False)) for _ in range(count)]


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def analyse(manifest: dict[str, Any], bundle: DatasetBundle, path: Path, others: dict[str, set[str]]) -> dict[str, Any]:
    """Every number of the report for one manifest (JSON-ready)."""
    sha, _ = source_fingerprint(bundle, manifest["dataset"], manifest["params"].get("dataset_config"))
    if manifest.get("source_sha256") and manifest["source_sha256"] != sha:
        raise SplitBuildError(
            f"{path}: source_sha256 {manifest['source_sha256'][:12]}... differs from the loaded data's {sha[:12]}...; "
            "the report must run on the data the manifest was built from"
        )
    if manifest.get("test_ids_sha256") and manifest["test_ids_sha256"] != sha256_lines(bundle.test.ids.tolist()):
        raise SplitBuildError(f"{path}: test_ids_sha256 differs from the loaded test split's ids")
    cfg = split_config_from(manifest["params"]["split_config"])
    rows = _rows(manifest, bundle, path)
    mask = np.zeros(len(bundle.test), dtype=bool)
    mask[rows] = True
    vocab = build_vocabulary(bundle, cfg)
    recorded = [e for part in manifest["params"]["vocabulary"]["parts"].values() for e in part["counts"]]
    if sorted(recorded) != sorted(vocab.entries):
        raise SplitBuildError(f"{path}: the rebuilt vocabulary differs from the recorded one (data or code changed)")
    test, train = bundle.test, bundle.train
    test_side = label_sides(test.label, cfg.label_mode)
    problem = Problem(vocab.test_counts, test_side, vocab.weights, cfg.eps)
    e_chosen = objective(problem, mask)
    subsets = _random_subsets(len(test), int(mask.sum()), cfg.seed, cfg.random_subsets)
    random_e = np.array([objective(problem, np.isin(np.arange(len(test)), s)) for s in subsets])

    rate_train, total_train, r_train = _entry_stats(vocab.train_counts, label_sides(train.label, cfg.label_mode))
    rate_test, total_test, r_test = _entry_stats(vocab.test_counts, test_side)
    rate_ood, total_ood, r_ood = _entry_stats(vocab.test_counts[rows], test_side[rows])
    order = np.argsort(-np.nan_to_num(np.abs(r_train), nan=-1.0), kind="stable")[:TOP_ENTRIES]
    entries = [
        {
            "entry": vocab.entries[j],
            "modality": vocab.modality[j],
            "count_train": int(total_train[j]),
            "count_test": int(total_test[j]),
            "count_ood": int(total_ood[j]),
            "neg_rate_train": _finite(rate_train[j]),
            "neg_rate_test": _finite(rate_test[j]),
            "neg_rate_ood": _finite(rate_ood[j]),
            "r_train": _finite(r_train[j]),
            "r_test": _finite(r_test[j]),
            "r_ood": _finite(r_ood[j]),
        }
        for j in range(len(vocab))
    ]

    def mean_abs(values: np.ndarray, idx: np.ndarray | None = None) -> float | None:
        v = values if idx is None else values[idx]
        v = v[np.isfinite(v)]
        return float(np.abs(v).mean()) if v.size else None

    labels_test, labels_ood = _histograms(test.label), _histograms(test.label[rows])
    shift = labels_ood["negative_fraction"] - labels_test["negative_fraction"]
    ids_set = set(manifest["ids"])
    overlap = {name: len(ids_set & other) / max(len(ids_set | other), 1) for name, other in sorted(others.items())}
    out: dict[str, Any] = {
        "manifest": str(path),
        "name": manifest["name"],
        "dataset": manifest["dataset"],
        "modality": manifest["params"]["modality"],
        "label_mode": cfg.label_mode,
        "size": {"n_sel": int(mask.sum()), "n_test": len(test), "fraction": float(mask.mean())},
        "labels": {"test": labels_test, "ood": labels_ood, "negative_fraction_shift": shift},
        "warnings": [],
        "objective": {
            "initial": manifest["objective"]["initial"],
            "final": manifest["objective"]["final"],
            "recomputed": e_chosen,
            "random_mean": float(random_e.mean()),
            "random_std": float(random_e.std()),
            "random_min": float(random_e.min()),
            "final_over_random_mean": e_chosen / float(random_e.mean()) if random_e.mean() > 0 else None,
            "z_vs_random": (e_chosen - random_e.mean()) / random_e.std() if random_e.std() > 0 else None,
            "chosen_chain": manifest["objective"]["chosen_chain"],
            "chain_finals": [c["final"] for c in manifest["objective"]["chains"]],
            "random_energies": [float(e) for e in random_e],
        },
        "vocabulary": {
            "size": len(vocab),
            "mean_abs_neg_rate_minus_half": {
                "train": mean_abs(rate_train - 0.5),
                "test": mean_abs(rate_test - 0.5),
                "ood": mean_abs(rate_ood - 0.5),
            },
            "mean_abs_r_top": {
                "train": mean_abs(r_train, order),
                "test": mean_abs(r_test, order),
                "ood": mean_abs(r_ood, order),
            },
            "top_train_correlated": [entries[j] for j in order],
            "entries": entries,
        },
        "jaccard": overlap,
        "videos": {
            "ood": len({video_of(i) for i in manifest["ids"]}),
            "test": len({video_of(i) for i in test.ids.tolist()}),
        },
    }
    if abs(shift) > LABEL_SHIFT_WARNING:
        out["warnings"].append(
            f"binary label ratio moved by {100 * shift:+.1f} points (negative fraction "
            f"{labels_test['negative_fraction']:.3f} in the test split, {labels_ood['negative_fraction']:.3f} here); "
            "the objective balances words, not the label prior (with one-hot cluster words, which cover every "
            "sample, balancing each word also pushes the whole set towards 50 / 50)"
        )
    if manifest["dataset"] == "synthetic" and test.raw_text is not None:
        agree = text_shortcut_agreement(test.raw_text, test.label)
        rand = np.array([np.nanmean(agree[s]) for s in subsets])
        out["synthetic_text_shortcut"] = {
            "agreement_test": float(np.nanmean(agree)),
            "agreement_ood": float(np.nanmean(agree[rows])),
            "agreement_random_mean": float(rand.mean()),
            "agreement_random_std": float(rand.std()),
        }
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(stats: dict[str, Any], png_name: str) -> str:
    """The Markdown page of one report."""
    size, labels, obj, voc = stats["size"], stats["labels"], stats["objective"], stats["vocabulary"]
    lines = [
        f"# OOD set `{stats['name']}` ({stats['dataset']}, {stats['modality']}, label mode {stats['label_mode']})",
        "",
        f"![report]({png_name})",
        "",
        f"- size: **{size['n_sel']}** of {size['n_test']} test samples ({100 * size['fraction']:.1f} %)",
        f"- distinct videos: {stats['videos']['ood']} in the set, {stats['videos']['test']} in the test split",
        f"- objective E: initial (random start of the chosen chain) {obj['initial']:.4f}, "
        f"final **{obj['final']:.4f}**; "
        f"{len(obj['random_energies'])} random same-size subsets {obj['random_mean']:.4f} ± {obj['random_std']:.4f} "
        f"(min {obj['random_min']:.4f}); final / random mean = {_fmt(obj['final_over_random_mean'])}",
        f"- chains (final E): {', '.join(f'{e:.4f}' for e in obj['chain_finals'])}; chosen chain {obj['chosen_chain']}",
    ]
    for warning in stats["warnings"]:
        lines.append(f"- **warning**: {warning}")
    lines += [
        "",
        "## Labels",
        "",
        "| | n | negative | neutral | positive (of non-0) | mean | " + " | ".join(str(k) for k in CLASSES_7) + " |",
        "|---" * (6 + len(CLASSES_7)) + "|",
    ]
    for key in ("test", "ood"):
        h = labels[key]
        lines.append(
            f"| {'full test' if key == 'test' else 'OOD set'} | {h['n']} | {h['negative_fraction']:.3f} | "
            f"{h['neutral_fraction']:.3f} | {h['positive_fraction_non0']:.3f} | {h['mean']:.3f} | "
            + " | ".join(f"{h['seven_class_fraction'][str(k)]:.3f}" for k in CLASSES_7)
            + " |"
        )
    rate, corr = voc["mean_abs_neg_rate_minus_half"], voc["mean_abs_r_top"]
    lines += [
        "",
        "## Vocabulary",
        "",
        f"{voc['size']} entries. Mean |negative rate − 0.5| over entries: train {_fmt(rate['train'])}, "
        f"full test {_fmt(rate['test'])}, OOD {_fmt(rate['ood'])}. Mean |r(count, label)| over the "
        f"{TOP_ENTRIES} most train-correlated entries: train {_fmt(corr['train'])}, full test {_fmt(corr['test'])}, "
        f"OOD {_fmt(corr['ood'])}.",
        "",
        "| entry | count train / test / OOD | neg. rate train | neg. rate test | neg. rate OOD "
        "| r train | r test | r OOD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in voc["top_train_correlated"]:
        lines.append(
            f"| `{e['entry']}` | {e['count_train']} / {e['count_test']} / {e['count_ood']} | "
            f"{_fmt(e['neg_rate_train'])} | {_fmt(e['neg_rate_test'])} | {_fmt(e['neg_rate_ood'])} | "
            f"{_fmt(e['r_train'])} | {_fmt(e['r_test'])} | {_fmt(e['r_ood'])} |"
        )
    if stats["jaccard"]:
        lines += ["", "## Overlap with the other sets given (Jaccard)", "", "| set | Jaccard |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in stats["jaccard"].items()]
    if "synthetic_text_shortcut" in stats:
        s = stats["synthetic_text_shortcut"]
        lines += [
            "",
            "## Planted text shortcut (synthetic data)",
            "",
            "Fraction of samples whose spurious words agree with the label sign (0.5 = no shortcut signal):",
            f"full test {s['agreement_test']:.3f}, OOD set **{s['agreement_ood']:.3f}**, random same-size subsets "
            f"{s['agreement_random_mean']:.3f} ± {s['agreement_random_std']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def plot(stats: dict[str, Any], manifest: dict[str, Any], path: Path) -> None:
    """One PNG: E trace per chain, 7-class histograms, per-entry negative rates, E vs random subsets."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    obj = stats["objective"]
    ax = axes[0, 0]
    for chain in manifest["objective"]["chains"]:
        chosen = chain["chain"] == obj["chosen_chain"]
        ax.plot(chain["trace"], lw=2.0 if chosen else 0.8, label=f"chain {chain['chain']}" + (" *" if chosen else ""))
    ax.axhline(obj["random_mean"], color="k", ls="--", lw=1, label="random subsets (mean)")
    ax.set(xlabel="outer step", ylabel="E", title="objective per chain")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[0, 1]
    width = 0.4
    x = np.arange(len(CLASSES_7))
    for offset, key, label in ((-width / 2, "test", "full test"), (width / 2, "ood", "OOD set")):
        h = stats["labels"][key]["seven_class_fraction"]
        ax.bar(x + offset, [h[str(k)] for k in CLASSES_7], width=width, label=label)
    ax.set(xticks=x, xticklabels=[str(k) for k in CLASSES_7], xlabel="rounded label", ylabel="fraction")
    ax.set_title(
        f"labels: negative {stats['labels']['test']['negative_fraction']:.2f} (test) vs "
        f"{stats['labels']['ood']['negative_fraction']:.2f} (OOD)"
    )
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    entries = stats["vocabulary"]["entries"]
    train = np.array([np.nan if e["neg_rate_train"] is None else e["neg_rate_train"] for e in entries])
    for key, label, marker in (("neg_rate_test", "full test", "o"), ("neg_rate_ood", "OOD set", "x")):
        values = np.array([np.nan if e[key] is None else e[key] for e in entries])
        ax.scatter(train, values, s=12, marker=marker, label=label, alpha=0.7)
    ax.axhline(0.5, color="k", lw=0.8)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="negative rate on train", ylabel="negative rate", title="per entry")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.hist(obj["random_energies"], bins=20, color="grey", label="random same-size subsets")
    ax.axvline(obj["final"], color="C3", lw=2, label="chosen mask")
    ax.set(xlabel="E", ylabel="count", title="E of the OOD set vs random subsets")
    ax.legend(fontsize=8)
    fig.suptitle(f"{stats['dataset']} / {stats['name']}  ({stats['size']['n_sel']} of {stats['size']['n_test']})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())


def report(
    paths: list[str | os.PathLike],
    *,
    out_dir: str | os.PathLike | None = None,
    bundles: dict[str, DatasetBundle] | None = None,
) -> list[dict[str, Any]]:
    """Write the report files of every manifest in ``paths`` and return their statistics.

    ``out_dir`` (default: ``reports/`` beside each manifest; for a committed package manifest
    ``<user manifest root>/<dataset>/reports/``) receives ``<name>.report.{md,json,png}``;
    ``bundles`` maps dataset names to already loaded data (else each dataset is loaded from the
    registry with the config the manifest records).
    """
    manifests = [(Path(p), read_manifest(p)) for p in paths]
    given = dict(bundles or {})
    cache: dict[str, DatasetBundle] = {}
    results = []
    for path, manifest in manifests:
        config = manifest["params"].get("dataset_config") or {}
        key = json.dumps([manifest["dataset"], config], sort_keys=True)
        if manifest["dataset"] in given:
            cache[key] = given[manifest["dataset"]]
        elif key not in cache:
            cache[key] = load_dataset(manifest["dataset"], config)
        others = {
            m["name"]: set(m["ids"])
            for p, m in manifests
            if p != path
            and m["dataset"] == manifest["dataset"]
            and m.get("test_ids_sha256") == manifest.get("test_ids_sha256")
        }
        stats = analyse(manifest, cache[key], path, others)
        if out_dir:
            folder = Path(out_dir)
        elif is_package_manifest(path):
            folder = user_manifest_root() / manifest["dataset"] / REPORT_DIR
        else:
            folder = path.parent / REPORT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stem = path.name.removesuffix(".json")
        png = folder / f"{stem}.report.png"
        plot(stats, manifest, png)
        atomic_write_text(folder / f"{stem}.report.md", markdown(stats, png.name))
        text = json.dumps(stats, indent=1, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_text(folder / f"{stem}.report.json", text)
        stats["files"] = [str(folder / f"{stem}.report.{ext}") for ext in ("md", "json", "png")]
        results.append(stats)
    return results
