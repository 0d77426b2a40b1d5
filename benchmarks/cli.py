"""`msabench`: the command line of the suite.

msabench run method=baseline dataset=synthetic seed=1111 [key=value ...]
msabench run --show-config method=baseline          # print the resolved config and exit
msabench leaderboard runs/manual [--out DIR] [--recompute]
msabench prepare synthetic --out data/synthetic_unaligned.pkl [synthetic.bias=0.8 ...]
msabench list                                        # registered methods and datasets
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
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
    from benchmarks.run import RunExistsError, run_job

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


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmarks.leaderboard import build_leaderboard, find_runs, write_leaderboard
    from methods import METHODS

    root = Path(args.root)
    if not root.is_dir():
        print(f"msabench leaderboard: {root} is not a directory of run folders", file=sys.stderr)
        return 2
    complete, incomplete = find_runs(root)
    if not complete:
        print(f"msabench leaderboard: no complete run folder (with 'done') under {root}", file=sys.stderr)
        return 1
    df = build_leaderboard(root, recompute=args.recompute, order=list(METHODS))
    csv_path, md_path = write_leaderboard(df, Path(args.out) if args.out else root)
    print(md_path.read_text())
    print(f"{len(complete)} complete runs, {len(incomplete)} incomplete (ignored); wrote {csv_path} and {md_path}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from datamodules.mmsa import write_mmsa_pickle
    from datamodules.synthetic import SyntheticConfig, generate

    if args.what != "synthetic":
        print(f"msabench prepare: unknown target {args.what!r}; available: synthetic", file=sys.stderr)
        return 2
    overrides = [o.removeprefix("synthetic.") for o in args.overrides]
    cfg = OmegaConf.merge(OmegaConf.structured(SyntheticConfig), OmegaConf.from_dotlist(overrides))
    bundle = generate(OmegaConf.to_object(cfg))
    write_mmsa_pickle(bundle, Path(args.out))
    print(
        f"wrote {args.out} (MMSA unaligned layout: train {len(bundle.train)}, valid {len(bundle.valid)}, "
        f"test {len(bundle.test)}; the OOD sets are not part of an MMSA pickle)"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from datamodules import DATASETS
    from methods import METHODS

    print("methods:")
    for name, cls in METHODS.items():
        print(f"  {name:<12} {(cls.__doc__ or '').strip().splitlines()[0]}")
    print("datasets:")
    for name, entry in DATASETS.items():
        print(f"  {name:<12} {entry.description}")
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

    board = sub.add_parser("leaderboard", help="run folders -> leaderboard.csv / leaderboard.md")
    board.add_argument("root", help="directory searched recursively for run folders")
    board.add_argument("--out", help="output directory (default: the root)")
    board.add_argument("--recompute", action="store_true", help="recompute every metric from predictions.csv")
    board.set_defaults(func=_cmd_leaderboard)

    prep = sub.add_parser("prepare", help="write data files (synthetic benchmark as an MMSA pickle)")
    prep.add_argument("what", choices=["synthetic"])
    prep.add_argument("--out", required=True, help="output .pkl path")
    prep.add_argument("overrides", nargs="*", help="synthetic.<field>=value")
    prep.set_defaults(func=_cmd_prepare)

    lst = sub.add_parser("list", help="registered methods and datasets")
    lst.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    try:
        return int(args.func(args))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"msabench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
