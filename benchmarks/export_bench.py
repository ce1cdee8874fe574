"""Benchmark of `protrans export` (no speed target: what a user waits for) against what a script
would write in its place, in the same run on the same file: an h5py loop over the file's
datasets into `numpy.savetxt` (tables) or `numpy.savez` (arrays), which holds every array in
memory before it writes one byte. Also `protrans info` on that file, with and without
`--residues`.

    python benchmarks/export_bench.py                         # 4,446 proteins (DeepLoc val+test), D 1024
    python benchmarks/export_bench.py --num-proteins 20000 --residues 300 --tmpdir /dev/shm
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _children import bytecode_env


def make_file(path: Path, num: int, dim: int, residues: int) -> int:
    """An embed-like grouped file: per-protein float32 vectors and per-residue float16 rows of
    `residues` mean length (lengths drawn from an exponential, at least 30). Residues written."""
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(0)
    lengths = np.maximum(30, rng.exponential(residues, num).astype(int))
    block = rng.standard_normal((int(lengths.max()), dim)).astype(np.float16)
    with EmbeddingsWriter(path, kinds=("per_residue", "per_protein"), storage_dtype="float16",
                          attrs={"model": "bench", "family": "bench"}) as w:
        for i, n in enumerate(lengths):
            rows = block[:n]
            w.write(f"P{i:06d}", f"P{i:06d} bench", "M" * int(n), per_residue=rows,
                    per_protein=rows.astype(np.float32).mean(axis=0))
    return int(lengths.sum())


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak resident MB) of a command in a process of its own (measured by a parent of
    its own: RUSAGE_CHILDREN here would be the largest of every command so far), its modules
    loaded from bytecode (`bytecode_env`)."""
    probe = ("import resource, subprocess, sys\n"
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *argv], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, float(done.stdout.split()[-1])


BASELINE = """
import sys, h5py, numpy as np
path, out, kind, how = sys.argv[1:5]
with h5py.File(path) as f:
    keys = sorted(f[kind])
    arrays = [f[kind][k][()] for k in keys]
if how == "npz":
    if kind == "per_protein":
        np.savez(out, ids=np.array(keys), embeddings=np.stack(arrays))
    else:
        np.savez(out, ids=np.array(keys), offsets=np.cumsum([0] + [len(a) for a in arrays]),
                 embeddings=np.concatenate(arrays))
else:
    with open(out, "w") as stream:
        for k, a in zip(keys, arrays):
            np.savetxt(stream, np.atleast_2d(a), fmt="%.9g", delimiter="\\t")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-proteins", type=int, default=4446)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--residues", type=int, default=120, help="mean per-residue rows a protein")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--residue-table", action="store_true", help="also a per-residue TSV (slow: a number at a time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        source = tmp / "e.h5"
        total = make_file(source, args.num_proteins, args.dim, args.residues)
        print(f"{args.num_proteins:,} proteins, {total:,} residues, D {args.dim}: "
              f"{source.stat().st_size / 1e9:.2f} GB", flush=True)
        env = bytecode_env(tmp)  # its cache filled by one untimed run of each side:
        for warm in ([sys.executable, "-m", "protrans_cli", "-q", "export", str(source), "-o", str(tmp / "warm.tsv")],
                     [sys.executable, "-c", BASELINE, str(source), str(tmp / "warm.npz"), "per_protein", "npz"]):
            subprocess.run(warm, check=True, env=env, stdout=subprocess.DEVNULL)
        for kind, fmt in (("per_protein", "tsv"), ("per_protein", "npz"), ("per_residue", "npz"),
                          *([("per_residue", "tsv")] if args.residue_table else [])):
            ours = [sys.executable, "-m", "protrans_cli", "-q", "export", str(source), f"--{kind.replace('_', '-')}",
                    "-o", str(tmp / f"ours.{fmt}")]
            base = [sys.executable, "-c", BASELINE, str(source), str(tmp / f"base.{fmt}"), kind, fmt]
            t_ours, m_ours = timed(ours, env)
            t_base, m_base = timed(base, env)
            rows = args.num_proteins if kind == "per_protein" else total
            print(f"{kind} {fmt}: protrans export {t_ours:.1f} s ({rows / t_ours:,.0f} rows/s, peak {m_ours:,.0f} MB), "
                  f"h5py + numpy {t_base:.1f} s (peak {m_base:,.0f} MB): {t_base / t_ours:.2f}x", flush=True)
        for extra in ([], ["--residues"]):
            seconds, _ = timed([sys.executable, "-m", "protrans_cli", "info", str(source), *extra], env)
            print(f"info {' '.join(extra)}: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
