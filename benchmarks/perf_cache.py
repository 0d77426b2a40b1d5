"""Benchmark of the MMSA memory-mapped cache and of the offline text encoding (figures, not assertions).

    python benchmarks/perf_cache.py [--scale 0.25] [--workdir /tmp/msabench_perf] [--encode mosi,mosei]

1. Writes a synthetic MMSA pickle of MOSEI's unaligned shape: train / valid / test = 16326 / 1871 /
   4659 clips x ``--scale``, each with text (50, 768), text_bert (3, 50), audio (500, 74), vision
   (375, 35) float32 (8.1 GB of arrays at scale 1).
2. Measures, each in a fresh process (so peak RSS is its own): the interpreter with the suite imported
   (the floor), the first load (SHA-256 + unpickling + validation + writing the cache), a cached load,
   a cached load plus the datamodule's tensors, and the same plus one full pass over the train batches.
   RSS is split into anonymous memory (heap: copies) and file-backed pages (the mapped cache, which the
   kernel can drop and re-read at any time).
3. With ``--encode``, encodes the real transcripts of the named datasets into an empty cache and
   reports wall and CPU time (on a shared CPU the wall time depends on the load; the CPU seconds of a
   1-thread run are the work itself).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

MOSEI_SIZES = {"train": 16326, "valid": 1871, "test": 4659}
SHAPES = {"text": (50, 768), "text_bert": (3, 50), "audio": (500, 74), "vision": (375, 35)}


def _memory() -> dict[str, float]:
    """Peak RSS (VmHWM) and current anonymous / file-backed RSS of this process, in MiB.

    ``getrusage``'s ru_maxrss is not used: Linux carries it over fork + exec, so a child would report
    its parent's peak (the parent held the pickle's arrays while writing it).
    """
    status = Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []
    keys = ("VmHWM", "RssAnon", "RssFile")
    fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(keys)}
    peak_kib = int(fields["VmHWM"]) if "VmHWM" in fields else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_rss_mib": peak_kib / 1024,
        "rss_anon_mib": int(fields.get("RssAnon", 0)) / 1024,
        "rss_file_mib": int(fields.get("RssFile", 0)) / 1024,
    }


def make_pickle(path: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """Write the synthetic MOSEI-shaped pickle; returns the clip counts per split."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    payload, sizes = {}, {}
    for split, full in MOSEI_SIZES.items():
        n = max(2, int(round(full * scale)))
        sizes[split] = n
        text_bert = np.zeros((n, *SHAPES["text_bert"]), dtype=np.float32)
        lengths = rng.integers(5, 51, size=n)
        text_bert[:, 1] = np.arange(50)[None, :] < lengths[:, None]
        text_bert[:, 0] = text_bert[:, 1] * rng.integers(1000, 30000, size=(n, 50))
        payload[split] = {
            "id": np.array([f"vid{i // 20:05d}_{split}$_${i % 20}" for i in range(n)], dtype=object),
            "raw_text": np.array([f"clip {i} of {split}" for i in range(n)], dtype=object),
            "text": rng.standard_normal((n, *SHAPES["text"]), dtype=np.float32),
            "text_bert": text_bert,
            "audio": rng.standard_normal((n, *SHAPES["audio"]), dtype=np.float32),
            "audio_lengths": rng.integers(1, 501, size=n),
            "vision": rng.standard_normal((n, *SHAPES["vision"]), dtype=np.float32),
            "vision_lengths": rng.integers(1, 376, size=n),
            "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    return sizes


def _stage(stage: str, pickle_path: Path, cache: Path) -> dict[str, float]:
    """One measurement, run in its own process."""
    import numpy as np

    from datamodules.datamodule import MSADataModule
    from datamodules.mmsa import load_mmsa_cached

    out: dict[str, float] = {}
    if stage == "floor":
        return {**out, **_memory()}
    start = time.perf_counter()
    bundle = load_mmsa_cached(pickle_path, cache_dir=cache, name="mosei_synthetic")
    out["load_s"] = time.perf_counter() - start
    out["arrays_mib"] = sum(
        getattr(getattr(bundle, s), k).nbytes
        for s in ("train", "valid", "test")
        for k in ("ids", "label", "text", "text_ids", "text_lengths", "audio", "audio_lengths", "vision",
                  "vision_lengths", "raw_text")
        if getattr(getattr(bundle, s), k) is not None
    ) / 2**20
    out["mapped"] = float(isinstance(bundle.train.audio, np.memmap))
    if stage in ("datamodule", "epoch"):
        start = time.perf_counter()
        dm = MSADataModule(bundle, batch_size=32, seed=0)
        for name in ("train", "valid", "test"):
            dm._tensor_split(name)
        out["datamodule_s"] = time.perf_counter() - start
    if stage == "epoch":
        start = time.perf_counter()
        batches = 0
        for batch in dm.train_dataloader():
            batches += int(batch.audio.shape[0] > 0)
        out["epoch_s"] = time.perf_counter() - start
        out["batches"] = batches
    return {**out, **_memory()}


def _run_stage(stage: str, pickle_path: Path, cache: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--stage", stage, "--pickle", str(pickle_path), "--cache", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _encode(dataset: str, cache: Path, threads: int) -> dict[str, float]:
    """Encode a real transcript track into an empty cache; wall and CPU seconds of this process."""
    from datamodules.transcripts import TranscriptConfig, load_transcripts

    before = os.times()
    start = time.perf_counter()
    bundle = load_transcripts(dataset, TranscriptConfig(cache_dir=str(cache), threads=threads, progress=True))
    wall = time.perf_counter() - start
    after = os.times()
    n = sum(len(getattr(bundle, s)) for s in ("train", "valid", "test"))
    cpu = (after.user - before.user) + (after.system - before.system)
    start = time.perf_counter()
    load_transcripts(dataset, TranscriptConfig(cache_dir=str(cache), progress=False))
    return {"texts": n, "wall_s": wall, "cpu_s": cpu, "cached_load_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25, help="fraction of MOSEI's clip counts (1 = full size)")
    parser.add_argument("--workdir", default="/tmp/msabench_perf", help="pickle and cache go here (deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep the pickle and the cache")
    parser.add_argument("--encode", default="", help="comma-separated transcript tracks to time: mosi,mosei")
    parser.add_argument("--skip-mmsa", action="store_true", help="only the encoding benchmark")
    parser.add_argument("--threads", type=int, default=1, help="encoder CPU threads (0 = torch's default)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--pickle", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(_stage(args.stage, Path(args.pickle), Path(args.cache))))
        return 0

    work = Path(args.workdir)
    report: dict[str, object] = {"scale": args.scale, "cpu_count": os.cpu_count()}
    if not args.skip_mmsa:
        pickle_path, cache = work / "unaligned_50.pkl", work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        start = time.perf_counter()
        sizes = make_pickle(pickle_path, args.scale)
        report["sizes"] = sizes
        report["write_pickle_s"] = time.perf_counter() - start
        report["pickle_mib"] = pickle_path.stat().st_size / 2**20
        stages = {}
        for stage in ("floor", "first", "cached", "cached", "datamodule", "epoch"):
            key = stage if stage not in stages else f"{stage}_again"
            stages[key] = _run_stage(stage, pickle_path, cache)
            print(f"{key:>13}: {stages[key]}", flush=True)
        report["stages"] = stages
        floor = stages["floor"]["peak_rss_mib"]
        arrays = stages["cached"]["arrays_mib"]
        print(f"\nsynthetic MOSEI-unaligned pickle, scale {args.scale}: {sizes}, "
              f"pickle {report['pickle_mib']:.0f} MiB, arrays {arrays:.0f} MiB; "
              f"interpreter floor {floor:.0f} MiB peak RSS")
        print(f"{'stage':<22} {'time s':>8} {'peak RSS MiB':>13} {'- floor':>9} {'/ arrays':>9} "
              f"{'anon MiB':>9} {'file MiB':>9}")
        for key, row in stages.items():
            if key == "floor":
                continue
            seconds = row.get("load_s", 0) + row.get("datamodule_s", 0) + row.get("epoch_s", 0)
            peak = row["peak_rss_mib"]
            print(f"{key:<22} {seconds:>8.2f} {peak:>13.0f} {peak - floor:>9.0f} {(peak - floor) / arrays:>9.2f} "
                  f"{row['rss_anon_mib']:>9.0f} {row['rss_file_mib']:>9.0f}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.encode:
        report["encode"] = {}
        for dataset in filter(None, args.encode.split(",")):
            cache = work / f"encode_{dataset}"
            shutil.rmtree(cache, ignore_errors=True)
            row = _encode(dataset, cache, args.threads)
            report["encode"][dataset] = row
            print(f"encode {dataset}_text ({args.threads or 'default'} threads): {row['texts']} texts, "
                  f"wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, cached load {row['cached_load_s']:.2f} s",
                  flush=True)
            if not args.keep:
                shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
