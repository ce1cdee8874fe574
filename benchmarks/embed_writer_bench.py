"""What `protrans embed`'s writer thread costs per residue, two ways, in one run.

On a GPU, embed's main thread runs the forward passes and a background thread writes each
batch into HDF5 (protrans_cli/embed.py, `_Background`). Once a model is fast enough, that thread
is the limit: its work per residue bounds residues/s whatever the GPU does. This script times it
on the host alone, for the same proteins and arrays:

  host     the batch arrives as float32 rows; the thread takes each protein's mean (float64
           accumulation) and converts the rows to the storage dtype (numpy) before writing
           (what embed did before rows and means came from the model's device, and what it
           still does for a library embedder that implements embed_batch alone)
  device   the batch arrives as rows already in the storage dtype plus the means, both made
           where the model runs (`TransformerEmbedder.embed_arrays`); the thread only writes

Proteins: the lengths of the E. coli proteome (../shared/data/proteomes, read in place) or,
without it, log-normal lengths; random rows of ProtBert/ProtT5's width (1024). Each way's best
of --repeats, per storage dtype; the ratio is host / device time.

    python benchmarks/embed_writer_bench.py --num-proteins 1500 --tmpdir /dev/shm
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ECOLI = ROOT.parent / "shared" / "data" / "proteomes" / "UP000000625_83333.fasta"


def protein_lengths(num: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ECOLI.exists():
        from protrans_cli.io.fasta import parse_fasta

        with open(ECOLI, "rb") as f:
            lengths = np.array([len(rec.sequence) for rec in parse_fasta(f)])
        return rng.choice(lengths, size=min(num, len(lengths)), replace=False)
    return np.clip(rng.lognormal(np.log(270), 0.6, num).astype(int), 20, 5000)


def time_writer(units, results, storage_dtype: str, tmpdir: str) -> float:
    from protrans_cli import embed as E

    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        writer = E.EmbeddingsWriter(Path(d) / "x.h5", kinds=(E.PER_RESIDUE, E.PER_PROTEIN),
                                    storage_dtype=storage_dtype, attrs={})
        summary = E.EmbedSummary(output=Path(d))
        start = time.perf_counter()
        with writer:
            for i, (unit, result) in enumerate(zip(units, results)):
                E._deliver(E._Piece(unit, 0, unit.sequence), result, writer, {}, summary)
                if i % 12 == 11:  # embed flushes after every batch; ~12 proteins a batch at 4000 tokens
                    writer.flush()
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-proteins", type=int, default=1500)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", default=None, help="where the HDF5 files go (/dev/shm: memory, not the disk)")
    args = p.parse_args()

    from protrans_cli import embed as E
    from protrans_cli.embedders import mean_rows

    lengths = protein_lengths(args.num_proteins, args.seed)
    residues = int(lengths.sum())
    rng = np.random.default_rng(args.seed)
    rows = [rng.standard_normal((1, int(n), args.dim), dtype=np.float32) for n in lengths]
    units = [E._Unit("A" * int(n), [E._Protein(f"p{i}", f"p{i} random", "A" * int(n), i)])
             for i, n in enumerate(lengths)]
    print(f"{len(lengths)} proteins, {residues} residues, width {args.dim}, "
          f"{'E. coli lengths' if ECOLI.exists() else 'log-normal lengths'}", flush=True)
    for dtype in ("float32", "float16"):
        ways = {"host": [(r, None) for r in rows],
                "device": [(r.astype(dtype), mean_rows(r)) for r in rows]}
        best = {}
        for _ in range(args.repeats):  # alternating, so that load changes hit both ways
            for name, results in ways.items():
                seconds = time_writer(units, results, dtype, args.tmpdir)
                best[name] = min(best.get(name, float("inf")), seconds)
        for name, seconds in best.items():
            print(f"{dtype} {name:6s} {seconds:6.2f} s  {1e6 * seconds / residues:5.2f} us per residue "
                  f"({residues / seconds:,.0f} residues/s)", flush=True)
        print(f"{dtype} device / host: {best['host'] / best['device']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
