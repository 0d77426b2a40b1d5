"""`msabench`: the command line of the suite.

msabench run method=baseline dataset=synthetic seed=1111 [key=value ...]
msabench run --show-config method=baseline          # print the resolved config and exit
msabench leaderboard runs/manual [--out DIR] [--recompute] [--min-group-size N]
msabench prepare synthetic --out data/synthetic_unaligned.pkl [synthetic.bias=0.8 ...]
msabench prepare encode mosi_text|mosei_text [mosei_text.batch_size=128 ...]   # offline text encoding cache
msabench prepare cache mosi|mosei [mosei.path=/data/MOSEI/unaligned_50.pkl ...]  # MMSA mmap cache
msabench data fetch mosi_utt|mosi_text|mosei_text|all [--from MIRROR] [--root DIR] [--force]
msabench data list [--root DIR]                      # which real-data files are there, and whether they verify
msabench splits build dataset=mosi_text [--modality text audio vision tav] [split.seed=0 ...] [--report] [--out DIR]
msabench splits report MANIFEST.json ... [--out DIR]   # sanity reports in reports/ beside each manifest
msabench sweep launch default [--dry-run] [launcher.gpus=[0] launcher.workers_per_gpu=4 ...]   # see docs/gpu.md
msabench list                                        # registered methods and datasets
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import time
import warnings
import zipfile
from pathlib import Path

RUN_HELP = """\
Train one method on one dataset with one seed, select the epoch on the IID validation split,
test once on every test set, and write the run folder:
  <output.root>/<output.sweep>/<method>-<dataset>-s<seed>-<confighash>/
      config.yaml  result.json  predictions.csv  logs/metrics.csv  done

Overrides are OmegaConf dotlist items (key=value). Main keys:
  method=baseline            a registered method (msabench list)
  dataset=synthetic          a registered dataset (msabench list)
  seed=1111                  training seed (the synthetic data has its own: synthetic.seed)
  <method>.<field>=...       method hyper-parameters, e.g. baseline.backbone.fusion.layers=1
  <dataset>.<field>=...      dataset parameters, e.g. synthetic.bias=0.8 synthetic.ood_mode=reversed
  data.modalities=[text,audio]   ablate modalities;  data.batch_size=32
  data.manifests=[path.json]     extra OOD test sets (id lists over the test split)
  trainer.max_epochs=100 trainer.patience=8 trainer.accelerator=cpu|gpu
  selection.key=mae|acc2_mean    what "best epoch" means on IID valid
  output.root=runs output.sweep=manual output.overwrite=false
Use --show-config to see every key with its default.
"""


def _cmd_run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from benchmarks.config import build_config, load_yaml, run_dir_for
    from benchmarks.run import RunExistsError, ddp_child, run_job

    _quiet_lightning(args.verbose)

    base = load_yaml(args.config) if args.config else None
    cfg = build_config(args.overrides, base)
    if args.show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    start = time.time()
    try:
        run_dir = run_job(cfg)
    except RunExistsError as exc:
        if not args.skip_existing:
            print(f"msabench run: {exc}", file=sys.stderr)
            return 1
        run_dir = run_dir_for(cfg)
        print(f"msabench run: {run_dir} is already complete; skipped")
    if ddp_child():
        return 0  # rank 0 of a DDP job writes and reports the run
    result = json.loads((run_dir / "result.json").read_text())
    print(f"\nrun folder: {run_dir}  ({time.time() - start:.1f} s, selected epoch {result['selected_epoch']})")
    header = f"{'test set':<12} {'n':>5} {'Non0_acc_2':>10} {'Has0_acc_2':>10} {'MAE':>7} {'Corr':>7}"
    print(header)
    for name in result["test_sets"]:
        m = result["metrics"][name]
        print(
            f"{name:<12} {result['n_samples'][name]:>5} {m['Non0_acc_2']:>10.4f} {m['Has0_acc_2']:>10.4f} "
            f"{m['MAE']:>7.4f} {m['Corr']:>7.4f}"
        )
    return 0


LEADERBOARD_HELP = """\
Read the complete run folders below ROOT (folders without 'done' are counted and ignored) and write,
atomically, to ROOT or --out:
  leaderboard.csv                    one row per (label, dataset); columns documented in benchmarks/leaderboard.py
  leaderboard.md                     per dataset: the headline table, one table per metric, group accuracies
  leaderboard.png                    bars per row: IID, each OOD set, OOD avg (y axis not from 0)
  leaderboard_iid_vs_headline.png    IID vs headline Non0 Acc-2, one point per seed, y = x and the ceiling

Headline (docs/protocol.md#headline): Non0 Acc-2 on the set where every shortcut is broken (ood_tav; on real data the
*_tav set) and worst-group Non0 Acc-2 on IID test where predictions.csv has ground-truth groups. Method
rows are ranked by the headline; reference and oracle rows (kind column) are listed apart, never ranked.
Every cell has a 95% percentile-bootstrap interval over seeds; each row has its paired difference to the
baseline on the headline with its interval, P(row > baseline) and "not resolved" when the interval
includes 0. The OOD average is a diagnostic column, not a ranking.
"""


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmarks.leaderboard import build_leaderboard, find_runs, log_to_wandb, write_leaderboard
    from benchmarks.selection import DEFAULT_SELECTION, SELECTIONS
    from methods import METHODS

    root = Path(args.root)
    if not root.is_dir():
        print(f"msabench leaderboard: {root} is not a directory of run folders", file=sys.stderr)
        return 2
    if args.min_group_size < 1:
        print(f"msabench leaderboard: --min-group-size must be at least 1, got {args.min_group_size}", file=sys.stderr)
        return 2
    if args.selection not in SELECTIONS:
        print(f"msabench leaderboard: unknown --selection {args.selection!r}; expected one of "
              f"{', '.join(SELECTIONS)}", file=sys.stderr)
        return 2
    complete, incomplete = find_runs(root)
    if not complete:
        print(f"msabench leaderboard: no complete run folder (with 'done') under {root}", file=sys.stderr)
        return 1
    df = build_leaderboard(
        root, recompute=args.recompute, order=list(METHODS), min_group_size=args.min_group_size,
        selection=args.selection,
    )
    default_out = root if args.selection == DEFAULT_SELECTION else root / f"selection-{args.selection}"
    csv_path, md_path, png_path, line_path = write_leaderboard(df, Path(args.out) if args.out else default_out)
    print(md_path.read_text())
    print(
        f"{len(complete)} complete runs, {len(incomplete)} incomplete (ignored); "
        f"wrote {csv_path}, {md_path}, {png_path} and {line_path}"
    )
    if args.wandb:
        name = f"leaderboard-{root.resolve().name}"
        logged = log_to_wandb(df, project=args.wandb_project, name=name, plot=png_path, line_plot=line_path)
        print("W&B: leaderboard table logged" if logged else "W&B: not logged (see the warning above); files written")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import comparisons, comparisons_markdown
    from benchmarks.leaderboard import build_leaderboard, find_runs
    from datamodules.atomic import atomic_write_text
    from methods import METHODS

    root = Path(args.root)
    if not root.is_dir() or not find_runs(root)[0]:
        print(f"msabench compare: no complete run folder (with 'done') under {root}", file=sys.stderr)
        return 1
    frame = comparisons(build_leaderboard(root, order=list(METHODS), selection=args.selection))
    markdown = comparisons_markdown(frame)
    print(markdown)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "compare.md", markdown)
        atomic_write_text(out / "compare.csv", frame.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
        print(f"wrote {out / 'compare.md'} and {out / 'compare.csv'}")
    return 0


PREPARE_TARGETS = {"encode": ("mosi_text", "mosei_text"), "cache": ("mosi", "mosei", "mmsa")}


def _dataset_config(name: str, overrides: list[str]) -> object:
    """The registered dataset's config dataclass with ``<name>.field=value`` (or ``field=value``) overrides."""
    from omegaconf import OmegaConf

    from benchmarks.config import checked_choices
    from datamodules import get_dataset

    items = [o.removeprefix(f"{name}.") for o in overrides]
    with checked_choices(prefix=f"{name}."):
        cfg = OmegaConf.merge(OmegaConf.structured(get_dataset(name).config_class), OmegaConf.from_dotlist(items))
    return OmegaConf.to_object(cfg)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from benchmarks.config import checked_choices
    from datamodules import get_dataset
    from datamodules.mmsa import write_mmsa_pickle
    from datamodules.synthetic import SyntheticConfig, generate

    if args.what in PREPARE_TARGETS:
        choices = PREPARE_TARGETS[args.what]
        if not args.overrides or args.overrides[0] not in choices:
            print(f"msabench prepare {args.what}: name the dataset first, one of {', '.join(choices)}", file=sys.stderr)
            return 2
        name, overrides = args.overrides[0], args.overrides[1:]
        cfg = _dataset_config(name, overrides)
        if args.what == "cache":
            cfg.cache = True
        start = time.time()
        bundle = get_dataset(name).load(cfg)
        sizes = ", ".join(f"{s} {len(getattr(bundle, s))}" for s in ("train", "valid", "test"))
        print(f"{name}: ready in {time.time() - start:.1f} s ({sizes}; dims {bundle.spec.dims}, "
              f"lengths {bundle.spec.max_lengths}); later loads read the cache")
        return 0
    if args.what != "synthetic":
        print(f"msabench prepare: unknown target {args.what!r}; available: synthetic, encode, cache", file=sys.stderr)
        return 2
    if not args.out:
        print("msabench prepare synthetic: --out PATH.pkl is required", file=sys.stderr)
        return 2
    overrides = [o.removeprefix("synthetic.") for o in args.overrides]
    with checked_choices(prefix="synthetic."):
        cfg = OmegaConf.merge(OmegaConf.structured(SyntheticConfig), OmegaConf.from_dotlist(overrides))
    bundle = generate(OmegaConf.to_object(cfg))
    write_mmsa_pickle(bundle, Path(args.out))
    print(
        f"wrote {args.out} (MMSA unaligned layout: train {len(bundle.train)}, valid {len(bundle.valid)}, "
        f"test {len(bundle.test)}; the OOD sets are not part of an MMSA pickle)"
    )
    return 0


def _sweep_path(name_or_path: str) -> Path:
    """A sweep YAML path, or the name of one in benchmarks/sweeps/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return Path(__file__).resolve().parent / "sweeps" / f"{name_or_path}.yaml"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from benchmarks.sweep import STATES, delete_incomplete, expand, launch, load_sweep, status

    sweep = load_sweep(_sweep_path(args.sweep), args.overrides)
    if args.dry_run and args.action != "launch":
        raise ValueError(f"--dry-run goes with `sweep launch`, not `sweep {args.action}`")
    if args.action == "launch":
        from benchmarks.run import PROJECT_ROOT  # noqa: F401 - imports lightning before quieting it

        _quiet_lightning(args.verbose)
        start = time.time()
        final = launch(sweep, dry_run=args.dry_run)
        if args.dry_run:
            return 0
        print(f"sweep {sweep.name}: " + ", ".join(f"{len(final[s])} {s}" for s in STATES)
              + f" ({time.time() - start:.0f} s)")
        return 0 if not final["incomplete"] and not final["not launched"] else 1
    jobs = expand(sweep)
    if args.action == "status":
        groups = status(jobs)
        for name in STATES:
            print(f"{name:>13}: {len(groups[name])}")
            if name != "done":
                for job in groups[name]:
                    print(f"{'':>15}{job.run_dir}")
        return 0
    removed = delete_incomplete(jobs)
    print(f"removed {len(removed)} incomplete run folders" + "".join(f"\n  {p}" for p in removed))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from benchmarks import check_runner
    from benchmarks.run import PROJECT_ROOT
    from benchmarks.sweep import load_sweep

    _quiet_lightning(args.verbose)
    sweep_file = _sweep_path(args.sweep)
    sweep = load_sweep(sweep_file, args.overrides)
    default_reference = PROJECT_ROOT / "benchmarks" / "reference" / f"{sweep.name}.csv"
    reference = Path(args.reference) if args.reference else default_reference
    if args.update_reference:
        check_runner.update_reference(sweep, reference)
        return 0
    if args.calibrate:
        skip = [name for part in (args.skip or []) for name in part.split(",") if name]
        check_runner.calibrate(sweep_file, list(args.overrides), reference, splits=args.splits, skip=skip)
        return 0
    return check_runner.run_check(
        sweep, reference, plant=args.plant, runs_root=Path(args.runs) if args.runs else None
    )


CHECK_HELP = """\
The CI regression check of OOD accuracy. Runs the CI sweep (benchmarks/sweeps/ci.yaml: every method, the
check's own seeds, a small synthetic benchmark and mosi_utt when its data exists) and tests every OOD cell
(method x dataset x OOD set, plus each row's OOD average; Non0_acc_2) against the reference's values over
its own seeds (benchmarks/reference/ci.csv): a one-sided pooled two-sample t-test per cell, Holm's
correction over all cells at check.alpha (0.03 for ci.yaml), so that the measured probability of any false
alarm in the whole check is below 5 % (benchmarks/reference/ci.calibration.json).
Exit 1 names method, dataset, set and metric with the drop, effect size and p-value of each alarm.

The numbers are bit-identical only on the same machine, library build and thread count; elsewhere they
differ and the test allows for it (it prints whether this environment matches the reference's).

  msabench check                          the check (what CI runs); root=DIR puts the runs elsewhere
  msabench check --plant label_noise      plant a real regression (label_noise | shortcut_x2): should fail
  msabench check --runs DIR               test existing run folders instead of launching the sweep
  msabench check --update-reference       run check.reference_seeds and rewrite the reference (+ .meta.json);
                                          the check refuses it until it is calibrated:
  msabench check --calibrate              perturbations, plants, re-split false-alarm rate and detectable
                                          drops -> benchmarks/reference/ci.calibration.json (about 1 h on 2 cores)
"""


SPLITS_BUILD_HELP = """\
Build OOD test sets of the GEAR protocol (docs/algorithms.md#ood-split-builder): for each modality set, a subset of
the dataset's standard test split chosen by simulated annealing so that every frequent "word" of
that modality is label-balanced inside it. Writes one manifest per set (ids only, no labels or text):
  <out>/<dataset>/test_<label_mode>_<modality>.json
(--out DIR; default: manifests/ in the per-user data directory, never the installed package), which
`msabench run data.manifests=[...]` loads as an extra test set named after the manifest.

Overrides (key=value):
  dataset=synthetic                 a registered dataset (msabench list); <dataset>.<field>=... as in `msabench run`
  split.seed=0                      seed of the chains, the random baseline and K-means
  split.label_mode=nn               nn: b = 1[y >= 0];  np: negative vs positive, neutral on neither side
  split.fraction=0.47  split.n_sel= subset size (n_sel overrides the fraction)
  split.text.min_count=             keep words with test count > min_count (default 50 if N >= 2000, else 10)
  split.text.stop_words=nltk        nltk (179 words) | none
  split.av.k=                       K-means clusters (default 50 if N >= 2000, else 10)
  split.av.descriptor=masked_mean   masked_mean | mean | mean_std
  split.av.normalise=train_zscore   train_zscore | none;   split.av.fit_on=train | test
  split.av.words=utterance          utterance (one-hot cluster) | frame (split.av.frame_k=64 clusters, presence)
  split.tav.weighting=sum           sum | per_modality
  split.sa.chains=8 split.sa.t0=0.1 split.sa.cooling=0.99 split.sa.outer=400 split.sa.n0=200
  split.sa.growth=1.0008 split.sa.moves=notebook|exchange
  split.random_subsets=100 split.eps=1e-6 split.name=   (''= test_<label_mode>_<modality>)
For text-only sets of a dataset whose config has a `features` switch (mosi_text, mosei_text), the
text encoder is not run (<dataset>.features=false unless given): the builder needs transcripts only.
Same data, overrides and seed -> byte-identical manifest (within one git commit: created_by records it).
"""


def _cmd_readme(args: argparse.Namespace) -> int:
    from benchmarks.readme_blocks import current_documents, display
    from datamodules.atomic import atomic_write_text

    stale = [(path, fresh) for path, text, fresh in current_documents() if text != fresh]
    if not stale:
        print("README.md and docs/*.md: generated blocks are current")
        return 0
    if args.check:
        for path, _ in stale:
            print(f"{display(path)}: generated blocks are stale; run `msabench readme`", file=sys.stderr)
        return 1
    for path, fresh in stale:
        atomic_write_text(path, fresh)
        print(f"rewrote the generated blocks of {display(path)}")
    return 0


DATA_HELP = """\
Real data: the files the datasets mosi_utt, mosi_text and mosei_text read, under the data root.

The data root is, in this order: --root DIR (or a dataset's <dataset>.root=DIR in `msabench run`), the
environment variable MSABENCH_DATA, or the per-user data directory (on Linux ~/.local/share/msa-debias-bench).

  msabench data fetch NAME      download the pinned public upstream files (raw.githubusercontent.com at fixed
                                commits), check each SHA-256, build the files NAME needs and write them
  msabench data list            show each dataset's files, whether they verify, and where the data root is

NAME: mosi_utt (mosi/bclstm_utterance.npz), mosi_text (mosi/label.csv, mosi/std_folds.json,
mosi/CMU_MOSI_Opinion_Labels.csd), mosei_text (mosei/label.csv, mosei/std_folds.json), or all.
The MMSA pickles of the datasets mosi / mosei are not fetched: bring them (docs/data.md).
"""

DATA_FETCH_HELP = """\
Download the pinned public upstream files of NAME (mosi_utt, mosi_text, mosei_text or all), check each
SHA-256 against the pinned value, build the files the datamodules read, and write them into the data root,
with SOURCES.lock.json recording what was built from which upstream SHA-256. Files that are already there
and verify are kept (--force rebuilds them). Nothing is written unless every source verifies.

Offline: --from DIR reads the same files from a local mirror laid out as DIR/<owner>/<repo>/<path in repo>
(the error of a failed download names the URL and where to put the file). The pinned list, with licences,
is benchmarks/data_sources.json; docs/data.md describes the files and how to cite them.
"""


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from benchmarks.datafetch import fetch, format_listing, list_data

    where, built = fetch(args.names, args.root, mirror=args.mirror, force=args.force, progress=sys.stderr.isatty())
    made = sum(b.action == "built" for b in built)
    print(f"data root {where.path} ({where.why}): {made} file(s) built, {len(built) - made} kept")
    print(format_listing(*list_data(args.root)))
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from benchmarks.datafetch import format_listing, list_data

    print(format_listing(*list_data(args.root)))
    return 0


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    split = [o.removeprefix("split.") for o in overrides if o.startswith("split.")]
    return split, [o for o in overrides if not o.startswith("split.")]


def _cmd_splits_build(args: argparse.Namespace) -> int:
    import dataclasses

    from omegaconf import OmegaConf

    from benchmarks.config import build_config, checked_choices
    from datamodules import get_dataset
    from ood_splits.builder import MODALITY_SETS, SplitConfig, build_and_write, load_dataset, user_manifest_root
    from ood_splits.report import report

    split_items, rest = _split_overrides(args.overrides)
    dataset = "synthetic"
    for item in rest:
        key, _, value = item.partition("=")
        if key == "dataset":
            dataset = value
    for item in rest:
        key = item.partition("=")[0]
        if key != "dataset" and not key.startswith((f"{dataset}.", "source.")):
            raise ValueError(
                f"override {item!r} is not a split or dataset key; expected split.<field>=..., dataset=<name> or "
                f"{dataset}.<field>=..."
            )
    with checked_choices(prefix="split."):
        base = OmegaConf.merge(OmegaConf.structured(SplitConfig), OmegaConf.from_dotlist(split_items))
    modalities = args.modality or [base.modality]
    fields = {f.name for f in dataclasses.fields(get_dataset(dataset).config_class)}
    if all(MODALITY_SETS[m] == ("text",) for m in modalities):
        for key, value in (("features", "false"), ("progress", "false")):
            if key in fields and not any(i.startswith((f"{dataset}.{key}=", f"source.{key}=")) for i in rest):
                rest.append(f"{dataset}.{key}={value}")
    source = OmegaConf.to_container(build_config(rest).source, resolve=True)
    if args.show_config:
        print(OmegaConf.to_yaml(OmegaConf.create({"dataset": dataset, dataset: source, "split": base})), end="")
        return 0
    out_root = Path(args.out) if args.out else user_manifest_root()
    start = time.time()
    bundle = load_dataset(dataset, source)
    print(f"{dataset}: loaded in {time.time() - start:.1f} s (test split {len(bundle.test)} samples)")
    written = []
    for modality in modalities:
        cfg = OmegaConf.to_object(OmegaConf.merge(base, {"modality": modality}))
        start = time.time()
        path, manifest = build_and_write(
            bundle, cfg, dataset=dataset, dataset_config=source, root=out_root
        )
        obj, params = manifest["objective"], manifest["params"]
        print(
            f"{path}: {params['n_sel']} of {params['n_source']} test samples, |V| = {params['vocabulary']['size']}, "
            f"E {obj['initial']:.4f} -> {obj['final']:.4f} (random subsets {obj['random_baseline']['mean']:.4f} "
            f"± {obj['random_baseline']['std']:.4f}), chain {obj['chosen_chain']} of {len(obj['chains'])}, "
            f"{time.time() - start:.1f} s"
        )
        written.append(path)
    if args.report:
        for stats in report(written, bundles={dataset: bundle}, out_dir=out_root / dataset / "reports"):
            print(f"report: {stats['files'][0]}")
    return 0


def _cmd_splits_report(args: argparse.Namespace) -> int:
    from ood_splits.report import report

    for stats in report(args.manifests, out_dir=args.out):
        obj, labels = stats["objective"], stats["labels"]
        line = (
            f"{stats['dataset']}/{stats['name']}: {stats['size']['n_sel']} of {stats['size']['n_test']}, "
            f"E {obj['final']:.4f} vs random {obj['random_mean']:.4f} ± {obj['random_std']:.4f}, negative fraction "
            f"{labels['ood']['negative_fraction']:.3f} (test {labels['test']['negative_fraction']:.3f}), videos "
            f"{stats['videos']['ood']} / {stats['videos']['test']}"
        )
        if "synthetic_text_shortcut" in stats:
            s = stats["synthetic_text_shortcut"]
            line += f", text-shortcut agreement {s['agreement_ood']:.3f} (test {s['agreement_test']:.3f})"
        print(line)
        for warning in stats["warnings"]:
            print(f"  warning: {warning}")
        print(f"  wrote {', '.join(stats['files'])}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from datamodules import DATASETS
    from methods import METHODS

    width = max(len(n) for n in [*METHODS, *DATASETS])
    print("methods:")
    for name, cls in METHODS.items():
        kind = "" if cls.kind == "method" else f"[{cls.kind}] "
        print(f"  {name:<{width}} {kind}{(cls.__doc__ or '').strip().splitlines()[0]}")
    print("datasets:")
    for name, entry in DATASETS.items():
        print(f"  {name:<{width}} {entry.description}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from benchmarks.tuning import describe, record_choice

    print(describe(Path(args.root), args.prefix, args.dataset))
    if args.out:
        record_choice(Path(args.root), args.prefix, args.dataset, Path(args.out))
        print(f"choice recorded in {args.out}")
    return 0


def _cmd_mechanisms(args: argparse.Namespace) -> int:
    from benchmarks.leaderboard import find_runs
    from benchmarks.mechanisms import summary_of, write_summary

    root = Path(args.root)
    if not root.is_dir() or not find_runs(root)[0]:
        print(f"msabench mechanisms: no complete run folder (with 'done') under {root}", file=sys.stderr)
        return 1
    if args.out:
        _, markdown = write_summary(root, Path(args.out))
        print(markdown)
        print(f"wrote {Path(args.out) / 'mechanisms.csv'} and {Path(args.out) / 'mechanisms.md'}")
    else:
        print(summary_of(root)[1])
    return 0


def _quiet_lightning(verbose: bool) -> None:
    """Lightning sets its loggers to INFO when imported; keep its banner lines out unless -v."""
    if verbose:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msabench",
        description="Benchmark debiasing methods for multimodal sentiment analysis on IID and OOD test sets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="train and evaluate one job",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("overrides", nargs="*", help="key=value config overrides")
    run.add_argument("--config", help="a YAML job config merged under the overrides")
    run.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--skip-existing", action="store_true", help="exit 0 without training if the run is complete")
    run.set_defaults(func=_cmd_run)

    board = sub.add_parser(
        "leaderboard",
        help="run folders -> leaderboard.csv / .md / .png (headline first, intervals, kind column)",
        description=LEADERBOARD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    board.add_argument("root", help="directory searched recursively for run folders")
    board.add_argument("--out", help="output directory (default: the root; ROOT/selection-NAME under --selection)")
    board.add_argument(
        "--selection", default="iid_valid",
        help="model selection rule, recomputed from the runs' per-epoch records: iid_valid (default: the runs' own "
        "choice, as in result.json), oracle (per test set the epoch, and CLUE's alpha, that score best on that set: "
        "an upper bound, kind oracle), last (the last epoch trained)",
    )
    board.add_argument(
        "--recompute",
        action="store_true",
        help="recompute every metric from predictions.csv (the group metrics always are)",
    )
    board.add_argument(
        "--min-group-size",
        type=int,
        default=10,
        metavar="N",
        help="smallest ground-truth group (samples with a non-zero label) in the worst-group accuracy (default: 10)",
    )
    board.add_argument(
        "--wandb",
        action="store_true",
        help="also log the leaderboard as a W&B table (job_type leaderboard; offline unless WANDB_MODE is set)",
    )
    board.add_argument("--wandb-project", default="msa-debias-bench", help="W&B project (default: msa-debias-bench)")
    board.set_defaults(func=_cmd_leaderboard)

    prep = sub.add_parser(
        "prepare",
        help="write data files: the synthetic benchmark as an MMSA pickle, the text encoding cache, the MMSA cache",
        description="synthetic --out X.pkl [synthetic.k=v]: the synthetic benchmark as an MMSA pickle.\n"
        "encode mosi_text|mosei_text [k=v]: encode the transcripts offline into the cache (progress bar).\n"
        "cache mosi|mosei|mmsa [k=v]: convert an MMSA pickle into the memory-mapped cache.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("what", choices=["synthetic", *PREPARE_TARGETS])
    prep.add_argument("--out", help="output .pkl path (synthetic)")
    prep.add_argument(
        "overrides", nargs="*", help="for encode / cache the dataset name first; then <dataset>.<field>=value"
    )
    prep.set_defaults(func=_cmd_prepare)

    sweep = sub.add_parser(
        "sweep",
        help="launch a sweep (methods x datasets x seeds), show its status, or delete incomplete jobs",
        description="A sweep YAML (benchmarks/sweeps/<name>.yaml, or a path) names methods, variants, datasets, "
        "test sets, seeds, overrides and the launcher (serial, local process pool, or slurm via submitit). Each "
        "job's folder is named by a hash of its resolved config, so relaunching runs only what is missing.",
    )
    sweep.add_argument("action", choices=["launch", "status", "delete-incomplete"])
    sweep.add_argument("sweep", nargs="?", default="default", help="sweep name or YAML path (default: default)")
    sweep.add_argument("overrides", nargs="*", help="sweep-level overrides, e.g. seeds=[1111] launcher.workers=1")
    sweep.add_argument(
        "--dry-run", action="store_true",
        help="launch: print the plan (workers, threads, each worker's device and environment) and what would stop a "
        "launch on this machine (e.g. launcher.gpus without CUDA); run nothing",
    )
    sweep.set_defaults(func=_cmd_sweep)

    check = sub.add_parser(
        "check",
        help="CI regression check: a calibrated test of OOD Acc-2 against the committed reference",
        description=CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--sweep", default="ci", help="sweep name or YAML path (default: ci)")
    check.add_argument("--reference", help="reference CSV (default: benchmarks/reference/<sweep name>.csv)")
    mode = check.add_mutually_exclusive_group()
    mode.add_argument("--update-reference", action="store_true",
                      help="run check.reference_seeds and rewrite the reference (then --calibrate)")
    mode.add_argument("--calibrate", action="store_true",
                      help="measure false alarms and power; writes <reference>.calibration.json")
    mode.add_argument("--plant", help="plant a regression for the power test: label_noise | shortcut_x2")
    mode.add_argument("--runs", help="test the complete run folders below DIR instead of launching the sweep")
    check.add_argument("--splits", type=int, default=2000, help="re-splits for the false-alarm estimate (default 2000)")
    check.add_argument("--skip", action="append", metavar="NAME[,NAME]",
                       help="with --calibrate: other-machine perturbations not to run this time (threads2, "
                       "avx2_kernels); the calibration records them as not run")
    check.add_argument("overrides", nargs="*", help="sweep-level overrides, e.g. root=/tmp/ci-runs")
    check.set_defaults(func=_cmd_check)

    readme = sub.add_parser(
        "readme",
        help="rewrite the generated blocks of README.md and docs/*.md (results, calibration, config reference)",
        description="Rewrites the blocks between <!-- NAME:begin --> and <!-- NAME:end --> in README.md and "
        "docs/*.md from the committed files and the code: results tables from docs/results/*/leaderboard.csv, the "
        "CI calibration from benchmarks/reference/ci.calibration.json, the method registry and the config reference "
        "from the dataclasses (the list of blocks: benchmarks/readme_blocks.py).",
    )
    readme.add_argument("--check", action="store_true", help="only say whether the blocks are current (exit 1 if not)")
    readme.set_defaults(func=_cmd_readme)

    data = sub.add_parser(
        "data",
        help="get the real MOSI / MOSEI files (pinned public sources, SHA-256 checked) and check them",
        description=DATA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser(
        "fetch",
        help="download, verify and build the files of mosi_utt, mosi_text, mosei_text or all",
        description=DATA_FETCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="mosi_utt | mosi_text | mosei_text | all")
    fetch.add_argument(
        "--from", dest="mirror", metavar="DIR",
        help="read the upstream files from this local mirror (DIR/<owner>/<repo>/<path>) instead of the network",
    )
    fetch.add_argument("--root", metavar="DIR", help="data root to build into (default: $MSABENCH_DATA, else the "
                       "per-user data directory)")
    fetch.add_argument("--force", action="store_true", help="rebuild files that are already there and verify")
    fetch.set_defaults(func=_cmd_data_fetch)
    dlist = data_sub.add_parser(
        "list",
        help="each dataset's files: present, verified (SHA-256 vs the build record), and where the data root is",
        description="For each of mosi_utt, mosi_text and mosei_text: its files under the data root, their size and "
        "whether their SHA-256 matches the build record SOURCES.lock.json (or, without one, the reference build); "
        "and the data root with the reason it was chosen (--root, $MSABENCH_DATA or the per-user directory).",
    )
    dlist.add_argument("--root", metavar="DIR", help="data root to inspect (default: $MSABENCH_DATA, else the "
                       "per-user data directory)")
    dlist.set_defaults(func=_cmd_data_list)

    splits = sub.add_parser("splits", help="build OOD test-set manifests and their sanity reports")
    splits_sub = splits.add_subparsers(dest="splits_command", required=True)
    build = splits_sub.add_parser(
        "build",
        help="anneal OOD subsets of a dataset's test split and write their manifests",
        description=SPLITS_BUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("overrides", nargs="*", help="dataset=..., <dataset>.<field>=..., split.<field>=...")
    build.add_argument(
        "--modality",
        nargs="+",
        choices=["text", "audio", "vision", "tav"],
        help="modality sets to build, one manifest each (default: split.modality, i.e. text)",
    )
    build.add_argument(
        "--out",
        help="manifest root; files go to <out>/<dataset>/<name>.json (default: manifests/ in the per-user data "
        "directory, e.g. ~/.local/share/msa-debias-bench/manifests; the committed ones in ood_splits/manifests are "
        "rebuilt by `make splits`)",
    )
    build.add_argument("--report", action="store_true", help="also write the sanity reports (<out>/<dataset>/reports/)")
    build.add_argument("--show-config", action="store_true", help="print the resolved split and dataset config; exit")
    build.set_defaults(func=_cmd_splits_build)
    rep = splits_sub.add_parser(
        "report",
        help="sanity report (Markdown + JSON + PNG) in reports/ beside each manifest",
        description="For each manifest <dir>/<name>.json write <dir>/reports/<name>.report.md / .report.json / "
        ".report.png (for a committed manifest of the package, ood_splits/manifests, the per-user manifest folder's "
        "<dataset>/reports/ instead, unless --out is given): subset size, label "
        "histograms vs the full test split, E vs random subsets and per chain, per-entry negative rates on "
        "train / test / OOD, Jaccard overlap between the manifests given, distinct videos, and on synthetic data "
        "the planted text shortcut's agreement rate. The dataset is reloaded from the config the manifest records.",
    )
    rep.add_argument("manifests", nargs="+", help="manifest JSON files (overlaps are computed between them)")
    rep.add_argument("--out", help="write the reports here instead of reports/ beside each manifest")
    rep.set_defaults(func=_cmd_splits_report)

    tune = sub.add_parser(
        "tune",
        help="choose a grid's variant on the IID validation split (e.g. JTT's T x lambda_up)",
        description="Reads the complete runs below ROOT whose label starts with --prefix (a grid sweep such as "
        "benchmarks/sweeps/jtt_grid.yaml) and prints each variant's mean IID-valid selection value (result.json "
        "'selection', the key the runs were selected with) and the best one. Never reads a test metric.",
    )
    tune.add_argument("root", help="run root of the grid sweep, e.g. runs/jtt_grid")
    tune.add_argument("--prefix", required=True, help="label prefix of the grid's variants, e.g. jtt_")
    tune.add_argument("--dataset", help="only runs of this dataset")
    tune.add_argument("--out", help="also write the choice (chosen label, overrides, every variant's value) as JSON")
    tune.set_defaults(func=_cmd_tune)

    compare = sub.add_parser(
        "compare",
        help="each method against its matched-architecture baseline, and each variant (ablation) against its method",
        description="Reads the complete runs below ROOT and prints, per dataset, the headline of every method row "
        "against its matched baseline (MMCI: baseline_seq; LF-TF methods: baseline) and of every method against "
        "each of its named variants (full - variant: does the term act?), with paired 95 %% intervals over seeds "
        "and P(> reference).",
    )
    compare.add_argument("root", help="run root, e.g. runs/ablations")
    compare.add_argument("--out", help="also write compare.md and compare.csv into this folder")
    compare.add_argument("--selection", default="iid_valid", help="post-hoc selection rule (default iid_valid)")
    compare.set_defaults(func=_cmd_compare)

    mech = sub.add_parser(
        "mechanisms",
        help="what each debiasing mechanism does (MMCI's beta^c, CaMIB's mask, GEAR's weights, h_b probe), over seeds",
        description="Reads diagnostics.mechanism from every complete run below ROOT (GEAR, MMCI and CaMIB write it at "
        "their selected weights) and prints the key quantities per row, mean ± std [95 %% bootstrap interval] over "
        "seeds; docs/algorithms-mmci-camib.md#5-mechanism-diagnostics says how to read them.",
    )
    mech.add_argument("root", help="run root, e.g. runs/mechanisms")
    mech.add_argument("--out", help="also write mechanisms.csv (every scalar) and mechanisms.md into this folder")
    mech.set_defaults(func=_cmd_mechanisms)

    lst = sub.add_parser("list", help="registered methods and datasets")
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (e.g. `prepare synthetic --out X bias=0.8`) still count
        stray = [t for t in extra if t.startswith("-") or "=" not in t]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    try:
        return int(args.func(args))
    except (ValueError, KeyError, OSError, RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        # user input (a bad file, key or value, a full disk) or a failed job: one line naming it, no traceback
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # a KeyError's str() adds quotes
        print(f"msabench {args.command}: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl+C: say what was kept, exit like a shell (128 + SIGINT)
        print(f"msabench {args.command}: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
