"""Running the CI regression check: launch the CI sweep (or a perturbed / planted variant of it), collect its OOD
cells and test them against the reference (statistics in :mod:`benchmarks.check`).

Three entry points, all behind ``msabench check``:

* :func:`run_check` — the check itself (CI): the sweep with its own seeds vs the reference; exit status 1 on an alarm.
* :func:`update_reference` — run the sweep with ``check.reference_seeds`` and write the reference, its metadata
  (environment, sweep fingerprint) and nothing else: the old calibration no longer matches, so the check refuses to
  run until :func:`calibrate` has been run on the new reference.
* :func:`calibrate` — the perturbations and planted regressions of :mod:`benchmarks.check`, plus the re-split
  false-alarm and power estimates; writes ``<sweep>.calibration.json``.

Everything that can be checked without training (reference files, calibration, sweep fingerprint, scenario names)
is checked before the first job starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from benchmarks import check as ck
from benchmarks.environment import differences, environment, git_commit
from benchmarks.leaderboard import per_seed_table
from benchmarks.sweep import SweepConfig, expand, launch

Printer = Callable[[str], None]
# Not part of what a cell means: which rows and seeds run, where, how, and the test's own settings. A method added to
# or removed from ``methods`` adds cells without a reference (ignored) or removes reference cells (an error).
FINGERPRINT_EXCLUDES = ("seeds", "methods", "root", "launcher", "slurm", "check")


def sweep_fingerprint(sweep: SweepConfig) -> str:
    """SHA-256 (16 hex) of everything in the sweep that changes what a cell means (see FINGERPRINT_EXCLUDES)."""
    plain = OmegaConf.to_container(OmegaConf.structured(sweep), resolve=True)
    for key in FINGERPRINT_EXCLUDES:
        plain.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:16]


def settings_of(sweep: SweepConfig) -> ck.TestSettings:
    c = sweep.check
    if not 0.0 < c.alpha < 1.0:
        raise ValueError(f"check.alpha must lie in (0, 1), got {c.alpha}")
    if c.min_reference_seeds < 2:
        raise ValueError(f"check.min_reference_seeds must be >= 2, got {c.min_reference_seeds}")
    if c.min_std < 0:
        raise ValueError(f"check.min_std must be >= 0, got {c.min_std}")
    return ck.TestSettings(alpha=c.alpha, min_std=c.min_std, min_reference_seeds=c.min_reference_seeds)


def drop_unavailable_datasets(sweep: SweepConfig, say: Printer) -> list[str]:
    """Remove the sweep's datasets whose files are absent (e.g. no real mosi_utt data here); return their names."""
    from benchmarks.config import build_config, to_object
    from datamodules import get_dataset

    skipped = []
    for name in list(sweep.datasets):
        if name == "synthetic":
            continue
        try:
            get_dataset(name).load(to_object(build_config([f"dataset={name}"]).source))
        except (FileNotFoundError, OSError) as exc:
            say(f"msabench check: skipping dataset {name}: {str(exc).splitlines()[0]}")
            sweep.datasets.remove(name)
            skipped.append(name)
    return skipped


@contextlib.contextmanager
def environment_variables(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` for the block (the sweep's spawned workers inherit it), then restore the previous values."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def current_cells(sweep: SweepConfig, say: Printer) -> pd.DataFrame:
    """Launch the sweep (skipping complete jobs) and return its OOD cells in the reference's long format."""
    final = launch(sweep, progress=say)
    unfinished = final["incomplete"] + final["not launched"]
    if unfinished:
        raise RuntimeError(
            f"{len(unfinished)} job(s) of sweep {sweep.name} did not finish, e.g. {unfinished[0].run_dir}"
        )
    return ck.ood_cells(per_seed_table(runs=[job.run_dir for job in expand(sweep)]))


@dataclass
class LoadedReference:
    table: pd.DataFrame
    meta: dict[str, Any]
    calibration: dict[str, Any] | None
    path: Path


def load_reference(
    path: Path, sweep: SweepConfig, settings: ck.TestSettings, *, need_calibration: bool
) -> LoadedReference:
    """Read and cross-check the reference, its metadata and (when needed) its calibration; errors name the file."""
    csv, meta_path, cal_path = ck.reference_paths(path)
    table = ck.read_reference(csv, settings.min_reference_seeds)
    meta = ck.read_json(meta_path, "reference metadata")
    for key in ("sweep_fingerprint", "seeds", "environment"):
        if key not in meta:
            raise ck.ReferenceError(f"reference metadata {meta_path} has no {key!r} field")
    fingerprint = sweep_fingerprint(sweep)
    if meta["sweep_fingerprint"] != fingerprint:
        raise ck.ReferenceError(
            f"reference {csv} was made from a different sweep (fingerprint {meta['sweep_fingerprint']}, the sweep "
            f"{sweep.name} now gives {fingerprint}): its cells are not comparable; rebuild it with "
            "`msabench check --update-reference`, then `msabench check --calibrate`"
        )
    calibration = None
    if need_calibration:
        calibration = ck.read_json(cal_path, "calibration of the reference")
        if calibration.get("reference_sha256") != ck.sha256_of(csv):
            raise ck.ReferenceError(
                f"calibration {cal_path} is not the calibration of {csv} (reference_sha256 differs): a refreshed "
                "reference must be calibrated before it is used; run `msabench check --calibrate`"
            )
    return LoadedReference(table, meta, calibration, csv)


def report_environment(reference_env: Mapping[str, Any], threads: int, say: Printer) -> list[tuple[str, Any, Any]]:
    """Print whether this machine matches the reference's (bit-identical numbers need every key to match)."""
    diffs = differences(reference_env, environment(threads))
    if not diffs:
        say("environment: matches the reference's (CPU, kernels, threads, libraries): expect identical numbers "
            "for the reference's seeds")
    else:
        say(f"environment: differs from the reference's in {len(diffs)} key(s); numbers differ at the bit level "
            "and the test allows for it:")
        for key, ref, cur in diffs:
            say(f"  {key}: reference {ref!r}, here {cur!r}")
    return diffs


def _independent(current: pd.DataFrame, reference: pd.DataFrame, say: Printer) -> pd.DataFrame:
    overlap = sorted(set(current["seed"]) & set(reference["seed"]))
    if overlap:
        say(f"msabench check: ignoring current seeds {overlap}: they are reference seeds, and the test needs "
            "independent draws")
        current = current[~current["seed"].isin(overlap)]
    return current


def test_cells(reference: pd.DataFrame, current: pd.DataFrame, settings: ck.TestSettings, datasets: list[str],
               say: Printer, source: Path | str = "") -> pd.DataFrame:
    reference = reference[reference["dataset"].isin(datasets)]
    current = _independent(current, reference, say)
    return ck.compare(reference, current, settings, source=str(source))


def print_result(result: pd.DataFrame, settings: ck.TestSettings, say: Printer, err: Printer) -> None:
    for row in result[result["alarm"]].sort_values("p_holm").to_dict("records"):
        err(f"REGRESSION {ck.describe_alarm(row)}")
    worst = result.sort_values("p").head(3)
    for row in worst.to_dict("records"):
        say(f"  closest to an alarm: {ck.describe_alarm(row)}")
    say(f"msabench check: {len(result)} OOD cells, one-sided pooled t-test with Holm over all cells at family-wise "
        f"alpha {settings.alpha}: {int(result['alarm'].sum())} alarm(s)")


def run_check(sweep: SweepConfig, reference_path: Path, *, plant: str | None = None, runs_root: Path | None = None,
              say: Printer = print, err: Printer = lambda m: print(m, file=sys.stderr)) -> int:
    """The check; returns the exit status (0 pass, 1 alarm)."""
    settings = settings_of(sweep)
    ref = load_reference(reference_path, sweep, settings, need_calibration=True)
    cal = ref.calibration or {}
    fa = cal.get("false_alarms", {})
    say(f"reference {ref.path}: {ref.table.groupby(ck.CELL).ngroups} cells x {len(ref.meta['seeds'])} seeds; "
        f"calibrated false-alarm rate {100 * fa.get('family_rate', math.nan):.1f} % "
        f"({fa.get('family_alarms', '?')} of {fa.get('splits', '?')} re-splits)")
    report_environment(ref.meta["environment"], sweep.launcher.threads, say)
    if plant is not None:
        if plant not in ck.PLANTS:
            raise ValueError(f"unknown plant {plant!r}; expected one of {sorted(ck.PLANTS)}")
        scenario = ck.PLANTS[plant]
        ck.apply_scenario(sweep, scenario)
        if scenario.datasets:
            sweep.datasets = [d for d in sweep.datasets if d in scenario.datasets]
        sweep.name = f"{sweep.name}-plant-{plant}"
        say(f"planted regression {plant}: {scenario.description} (the check should fail)")
    start = time.time()
    if runs_root is not None:
        current = ck.ood_cells(per_seed_table(runs_root))
    else:
        drop_unavailable_datasets(sweep, say)
        current = current_cells(sweep, say)
    result = test_cells(ref.table, current, settings, list(sweep.datasets), say, ref.path)
    print_result(result, settings, say, err)
    say(f"msabench check: {time.time() - start:.0f} s")
    return 1 if result["alarm"].any() else 0


def update_reference(sweep: SweepConfig, reference_path: Path, *, say: Printer = print) -> Path:
    """Run the sweep with ``check.reference_seeds`` and write the reference and its metadata (not the calibration)."""
    settings = settings_of(sweep)
    seeds = list(sweep.check.reference_seeds)
    if len(seeds) < settings.min_reference_seeds:
        raise ValueError(
            f"check.reference_seeds has {len(seeds)} seeds, at least check.min_reference_seeds="
            f"{settings.min_reference_seeds} are needed"
        )
    if set(seeds) & set(sweep.seeds):
        raise ValueError(f"check.reference_seeds {seeds} and the check's seeds {sweep.seeds} must be disjoint")
    skipped = drop_unavailable_datasets(sweep, say)
    if skipped:
        raise FileNotFoundError(f"the reference must cover every dataset of the sweep; missing data for {skipped}")
    fingerprint, check_seeds = sweep_fingerprint(sweep), list(sweep.seeds)
    sweep.seeds = seeds
    table = current_cells(sweep, say)
    csv, meta_path, _ = ck.reference_paths(reference_path)
    ck.write_reference(table, csv)
    ck.write_json({
        "sweep": sweep.name,
        "sweep_fingerprint": fingerprint,
        "seeds": seeds,
        "check_seeds": check_seeds,
        "metric": ck.METRIC,
        "environment": environment(sweep.launcher.threads),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, meta_path)
    say(f"wrote reference {csv} ({table.groupby(ck.CELL).ngroups} cells x {len(seeds)} seeds) and {meta_path}; "
        "now run `msabench check --calibrate` and commit all three files together")
    return csv


REQUIRED_SCENARIOS = ("none", "seeds_3001")  # the false-alarm pool is the reference plus these two


def calibrate(sweep_file: Path, overrides: list[str], reference_path: Path, *, splits: int = 2000,
              skip: Sequence[str] = (), say: Printer = print) -> dict[str, Any]:
    """Run every perturbation and plant, test each against the reference, estimate the false-alarm rate and the
    detectable drops by re-splitting the pool of 1-thread runs, and write the calibration JSON. Perturbations named
    in ``skip`` (the other-machine proxies) are not run and are recorded as ``not_run``; ``none``, ``seeds_3001``
    and the plants always run."""
    from benchmarks.sweep import load_sweep

    optional = [name for name in ck.PERTURBATIONS if name not in REQUIRED_SCENARIOS]
    for name in skip:
        if name not in optional:
            raise ValueError(
                f"--skip {name!r}: only these perturbations may be skipped: {', '.join(optional)} (the false-alarm "
                f"estimate needs {' and '.join(REQUIRED_SCENARIOS)}, the power estimate every plant)"
            )

    base = load_sweep(sweep_file, overrides)
    settings = settings_of(base)
    ref = load_reference(reference_path, base, settings, need_calibration=False)
    skipped = drop_unavailable_datasets(base, say)
    if skipped:
        raise FileNotFoundError(f"calibration must cover every dataset of the reference; missing data for {skipped}")
    root = Path(base.root)
    cells: dict[str, pd.DataFrame] = {}
    summaries: dict[str, dict[str, dict[str, Any]]] = {"perturbations": {}, "plants": {}}
    for kind, registry in (("perturbations", ck.PERTURBATIONS), ("plants", ck.PLANTS)):
        for name, scenario in registry.items():
            if name in skip:
                summaries[kind][name] = {"description": scenario.description, "not_run": True}
                say(f"calibration: {kind[:-1]} {name}: not run (--skip)")
                continue
            sweep = load_sweep(sweep_file, [*overrides, *ck.scenario_sweep_overrides(scenario, base.datasets)])
            sweep.datasets = [d for d in sweep.datasets if d in base.datasets]
            ck.apply_scenario(sweep, scenario)
            if name != "none":
                sweep.root = str(root / "calibration" / name)
            say(f"calibration: {kind[:-1]} {name}: {scenario.description}")
            with environment_variables(scenario.env):
                current = current_cells(sweep, say)
            cells[name] = current
            result = test_cells(ref.table, current, settings, list(sweep.datasets), say, ref.path)
            row = {"description": scenario.description, **ck.summarise(result)}
            if kind == "perturbations" and name != "none":
                row["agreement_with_none"] = ck.bitwise_agreement(cells["none"], current)
            summaries[kind][name] = row
            say(f"  {row['cells']} cells, {row['alarms']} alarm(s), smallest Holm p {row['min_p_holm']:.2g}")
    pool = pd.concat([ref.table, cells["none"], cells["seeds_3001"]], ignore_index=True)
    pool = pool.drop_duplicates(ck.CELL + ["seed"])
    n_ref, n_cur = len(ref.meta["seeds"]), len(base.seeds)
    pool_seeds = sorted(set(pool["seed"]))
    plan = ck.all_splits_or_sample(pool_seeds, n_ref, n_cur, splits)
    say(f"calibration: re-splitting {len(pool_seeds)} seeds into {n_ref} + {n_cur}, {len(plan.splits)} splits")
    false_alarms = ck.resampled_false_alarms(pool, plan, settings)
    power_plan = ck.all_splits_or_sample(pool_seeds, n_ref, n_cur, min(splits, 400), seed=1)
    resampled = ck.resampled_power(pool, power_plan, settings)
    calibration = {
        "reference": ref.path.name,
        "reference_sha256": ck.sha256_of(ref.path),
        "settings": asdict(settings),
        "target_false_alarm_rate": ck.TARGET_FALSE_ALARM_RATE,
        "reference_seeds": n_ref,
        "reference_seed_list": f"{min(ref.meta['seeds'])}–{max(ref.meta['seeds'])}",
        "check_seeds": n_cur,
        "cells": int(ref.table.groupby(ck.CELL).ngroups),
        "environment": ref.meta["environment"],
        "calibrated_on": environment(base.launcher.threads),
        "perturbations": summaries["perturbations"],
        "plants": summaries["plants"],
        "false_alarms": {"pool_seeds": pool_seeds, "n_ref": n_ref, "n_cur": n_cur, **false_alarms},
        "detectable_drop": ck.detectable_drop_table(ref.table, resampled, n_cur, settings),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _, _, cal_path = ck.reference_paths(ref.path)
    ck.write_json(calibration, cal_path)
    say(ck.render_calibration(calibration))
    say(f"wrote {cal_path}")
    return calibration


def committed_calibration(reference: Path | None = None) -> dict[str, Any]:
    """The calibration JSON of ``reference`` (default: the committed CI reference)."""
    from benchmarks.run import PROJECT_ROOT

    reference = reference or PROJECT_ROOT / "benchmarks" / "reference" / "ci.csv"
    return ck.read_json(ck.reference_paths(reference)[2], "calibration of the reference")
