"""Seconds per epoch of the streamed ss3 fit on ProtTrans-sized (1024-d) per-residue embeddings, on CPU.

    python benchmarks/heads_bench.py                      # 400 proteins of NetSurfP train, 1 thread
    python benchmarks/heads_bench.py --proteins 1000 --threads 2 --dim 1024

The full NetSurfP-2.0 training set is 2,760,553 residues, 11 GB of float32 at 1024-d. This script
measures a scaled-down set with the same protein lengths and labels (the first N proteins of
Train_HHblits.csv.gz from ../shared/data, or random lengths when it is absent) and random
1024-d embeddings written in the `protrans embed` layout, then fits ss3 twice in one process:

  streamed   cache_bytes=0: every batch read from HDF5 by the prefetch thread (the 11 GB path)
  in-memory  the same set read once into RAM (the baseline)

It prints seconds per training epoch for both, their ratio, residues per second, peak RSS, and
the linear extrapolation to the full set: seconds(full) = seconds(subset) x 2,760,553 / residues(subset).
An epoch's cost is linear in residues (one convolution pass per residue, batches of a fixed residue
budget), so the extrapolation holds as long as the file stays readable at the measured rate
(the page cache held the subset; a cold 11 GB read adds disk time, reported separately as MB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_RESIDUES = 2_760_553
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "netsurfp2" / "Train_HHblits.csv.gz"


def make_set(directory: Path, n_proteins: int, dim: int, seed: int = 0) -> tuple[Path, Path, int, str]:
    """A NetSurfP-style CSV subset and a matching random-embedding HDF5; returns paths, residues
    and what the labels are (printed: the figures differ with the length distribution)."""
    import gzip

    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(seed)
    csv_path = directory / "train.csv"
    data = f"{SHARED.name}, first {n_proteins} proteins" if SHARED.is_file() else \
        f"random proteins of 40-499 residues ({SHARED} is absent)"
    if SHARED.is_file():
        with gzip.open(SHARED, "rt") as fh, open(csv_path, "w") as out:
            for i, line in enumerate(fh):
                if i > n_proteins:
                    break
                out.write(line)
    else:
        with open(csv_path, "w") as out:
            out.write("seq,dssp3,dssp8,disorder\n")
            for _ in range(n_proteins):
                length = int(rng.integers(40, 500))
                seq = rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=length)
                ss = rng.choice(list("HEC"), size=length)
                out.write(",".join([" ".join(seq), " ".join(ss), " ".join(ss), " ".join(["1.0"] * length)]) + "\n")
    from protrans_cli.heads.labels import read_labels

    records = read_labels(csv_path).records
    h5_path = directory / "train.h5"
    with EmbeddingsWriter(h5_path, attrs={"model": "random-1024"}) as writer:
        for record in records:
            emb = rng.standard_normal((len(record.sequence), dim), dtype=np.float32)  # (L, D)
            writer.write(record.id, record.id, record.sequence, per_residue=emb)
    return csv_path, h5_path, sum(len(r.sequence) for r in records), data


def epoch_seconds(h5_path: Path, csv_path: Path, out: Path, *, stream: bool, threads: int,
                  epochs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of a training epoch."""
    from protrans_cli.heads.fit import FitConfig, fit

    config = FitConfig(task="ss3", max_epochs=epochs, patience=epochs, threads=threads, n_bootstrap=10,
                       cache_bytes=0 if stream else 64 << 30, valid_fraction=0.05)
    result = fit(config, h5_path, csv_path, out)
    return (float(np.median([h["train_seconds"] for h in result.history])),
            float(np.median([h["train_cpu_seconds"] for h in result.history])))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Linux: restart the VmHWM high-water mark, so the next peak is the fit's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def read_rate(h5_path: Path) -> float:
    """MB/s of reading every per-residue dataset once (page cache warm)."""
    import h5py

    start, total = time.perf_counter(), 0
    with h5py.File(h5_path, "r") as f:
        for ds in f["per_residue"].values():
            total += ds[()].nbytes
    return total / (time.perf_counter() - start) / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=400)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the median epoch is reported")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from protrans_cli import console

    console.configure(verbosity=-1)
    with tempfile.TemporaryDirectory(prefix="heads_bench.") as tmp:
        tmp = Path(tmp)
        csv_path, h5_path, residues, data = make_set(tmp, args.proteins, args.dim)
        mb_s = read_rate(h5_path)
        rss_before = _status_mb("VmRSS")
        reset_peak_rss()
        streamed = epoch_seconds(h5_path, csv_path, tmp / "streamed", stream=True, threads=args.threads,
                                 epochs=args.epochs)
        rss_streamed = _status_mb("VmHWM")
        in_memory = epoch_seconds(h5_path, csv_path, tmp / "in_memory", stream=False, threads=args.threads,
                                  epochs=args.epochs)
    train_residues = residues * 0.95  # 5% held out for validation
    (streamed, streamed_cpu), (in_memory, in_memory_cpu) = streamed, in_memory
    figures = {
        "data": data, "proteins": args.proteins, "residues": residues, "dim": args.dim, "threads": args.threads,
        "float32_gb": round(residues * args.dim * 4 / 1e9, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "streamed_s_per_epoch": round(streamed, 2), "in_memory_s_per_epoch": round(in_memory, 2),
        "streamed_cpu_s_per_epoch": round(streamed_cpu, 2), "in_memory_cpu_s_per_epoch": round(in_memory_cpu, 2),
        "streamed_over_in_memory": round(streamed / in_memory, 3),
        "streamed_residues_per_s": round(train_residues / streamed),
        "rss_mb_before_fit": round(rss_before),
        "peak_rss_mb_streamed_fit": round(rss_streamed),
        "hdf5_read_mb_per_s": round(mb_s),
        "extrapolated_full_s_per_epoch": round(streamed * FULL_RESIDUES / train_residues),
        "extrapolated_full_cpu_s_per_epoch": round(streamed_cpu * FULL_RESIDUES / train_residues),
        "full_float32_gb": round(FULL_RESIDUES * args.dim * 4 / 1e9, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for key, value in figures.items():
            print(f"{key:34s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
