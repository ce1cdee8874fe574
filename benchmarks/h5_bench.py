"""Benchmark of what `embed` does with a file of many proteins: writing it (one dataset and four
attributes per protein), the torchrun merge (every rank's shard copied into the one output) and
the --resume scan (the id and sequence checksum of every protein already there), each against
h5py's dictionary interface, which is what protrans 0.1 used and what a script would write, in
the same run on the same files; and what --resume reads of a cleanly stopped run (its sealed
ledger) against what it reads of a SIGKILLed one (every protein of the file); and reading every
per-protein vector into one array (`EmbeddingsReader.matrix()`) from a stacked file
(`--layout stacked`) against the grouped file it was made from, with what the stacking costs
when a run completes; and writing in embed's small batches (9 proteins) with a flush after each
against embed's flush once a second at most (`flush_due`).

Per-protein arrays of UniRef50 are the case that matters: tens of millions of small datasets,
so the cost per dataset, not per byte, is what a run pays (50 M proteins x 100 us = 83 minutes).

    python benchmarks/h5_bench.py                       # 100,000 proteins, width 1024, float16
    python benchmarks/h5_bench.py --num-proteins 20000 --dim 1024 --tmpdir /dev/shm
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_shard(path: Path, num: int, dim: int, batch: int = 1000, due: bool = False) -> float:
    """A shard as a torchrun rank leaves it (EmbeddingsWriter, per-protein, float16), flushed
    after every `batch` proteins (`due`: as embed does, flush_due: once a second at most); seconds."""
    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsWriter

    mean = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    start = time.perf_counter()
    with EmbeddingsWriter(path, kinds=(PER_PROTEIN,), storage_dtype="float16", finalize=False,
                          attrs={"model": "bench", "family": "bench"}) as writer:
        for i in range(num):
            ident = f"UniRef50_A0A{i:07d}"
            writer.write(ident, f"{ident} n=2 Tax=Bacteria", "M" * 300, per_protein=mean)
            if i % batch == batch - 1:
                writer.flush_due() if due else writer.flush()
    return time.perf_counter() - start


def write_dictionary(path: Path, num: int, dim: int) -> float:
    """The same file as protrans 0.1 wrote it: h5py's create_dataset for each array (its
    attributes already went through the low-level calls then, as now)."""
    import h5py

    from protrans_cli.io.h5 import _set_attr, escape_key, sequence_checksum

    mean = np.random.default_rng(0).standard_normal(dim).astype(np.float16)
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        group = f.create_group("per_protein")
        for i in range(num):
            ident = f"UniRef50_A0A{i:07d}"
            ds = group.create_dataset(escape_key(ident), data=mean)
            for name, value in (("id", ident), ("header", f"{ident} n=2 Tax=Bacteria"), ("length", 300),
                                ("checksum", sequence_checksum("M" * 300))):
                _set_attr(ds, name, value)
            if i % 1000 == 999:
                f.flush()
    return time.perf_counter() - start


def merge_protrans(shard: Path, out: Path) -> float:
    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsWriter

    start = time.perf_counter()
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), storage_dtype="float16",
                          attrs={"model": "bench", "family": "bench"}) as merged:
        merged.copy_from(shard, own=True)  # (a rank's shard, as embed_dist merges it)
    return time.perf_counter() - start


def merge_dictionary(shard: Path, out: Path) -> float:
    """The same merge as protrans 0.1 did it, through h5py's dictionary interface: Group.copy
    per dataset, then the id of every protein in the output read back (to settle the failures)."""
    import h5py

    from protrans_cli.io.h5 import _plain, unescape_key

    start = time.perf_counter()
    with h5py.File(shard, "r") as src, h5py.File(out, "w") as dst:
        group = dst.create_group("per_protein")
        source = src["per_protein"]
        for key in source.keys():
            if not isinstance(source[key], h5py.Dataset):
                continue
            if key in group:
                del group[key]
            src.copy(source[key], group, name=key)
        done = {_plain(group[k].attrs.get("id", unescape_key(k))) for k in group.keys()
                if isinstance(group[k], h5py.Dataset)}
        assert len(done) == len(source)
    return time.perf_counter() - start


def scan_protrans(path: Path) -> tuple[float, list]:
    import h5py

    from protrans_cli.io.h5 import stored_proteins

    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        found = list(stored_proteins(f["per_protein"]))
    return time.perf_counter() - start, found


def scan_dictionary(path: Path) -> tuple[float, list]:
    import h5py

    from protrans_cli.io.h5 import _plain, unescape_key

    start = time.perf_counter()
    found = []
    with h5py.File(path, "r") as f:
        group = f["per_protein"]
        for key in group.keys():
            ds = group[key]
            checksum = None if "truncated_from" in ds.attrs else _plain(ds.attrs.get("checksum"))
            found.append((_plain(ds.attrs.get("id", unescape_key(key))), checksum))
    return time.perf_counter() - start, found


def resume_read(path: Path, ledger: bool) -> tuple[float, int]:
    """What `embed --resume` reads of a stopped run's file before it computes anything: its
    sealed ledger, or (the ledger removed: a SIGKILLed run) every protein, in a forked child."""
    from protrans_cli.embed_resume import _done_in
    from protrans_cli.io.h5 import PER_PROTEIN, remove_ledger

    if not ledger:
        remove_ledger(path)
    kw = dict(kinds=(PER_PROTEIN,), layout="grouped", storage_dtype="float16",
              attrs={"model": "bench", "family": "bench"}, resume_equal={})
    start = time.perf_counter()
    done = _done_in(path, kw, seal=True)  # (the scan seals a ledger of what it read, as for a partial file)
    return time.perf_counter() - start, len(done)


def stack(shard: Path, out: Path) -> float:
    """What a stacked run does when it completes: the stacked file written from its partial file."""
    from protrans_cli.io.stacked import stack_file

    start = time.perf_counter()
    stack_file(shard, out, then="")
    return time.perf_counter() - start


def read_matrix(path: Path) -> tuple[float, list, np.ndarray]:
    """Every per-protein vector as one array, as a user's script loads them (EmbeddingsReader.matrix)."""
    from protrans_cli.io.h5 import EmbeddingsReader

    start = time.perf_counter()
    with EmbeddingsReader(path) as reader:
        ids, vectors = reader.matrix()
    return time.perf_counter() - start, ids, vectors


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-proteins", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2, help="alternate the two ways N times, keep each one's best")
    p.add_argument("--tmpdir", default=None, help="where the files go (/dev/shm: memory, not the disk)")
    args = p.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="h5_bench.", dir=args.tmpdir))
    try:
        shard = folder / "shard.h5"
        seconds = write_shard(shard, args.num_proteins, args.dim)
        shard = folder / "shard.h5.partial"  # finalize=False: the name a rank's shard keeps
        per = 1e6 / args.num_proteins
        print(f"{args.num_proteins} per-protein datasets of width {args.dim} (float16), in {folder}")
        best: dict[str, float] = {"write protrans": seconds}
        for _ in range(args.repeats):
            best["write dictionary"] = min(best.get("write dictionary", float("inf")),
                                           write_dictionary(folder / "before.h5", args.num_proteins, args.dim))
            (folder / "before.h5").unlink()
            best["write protrans"] = min(best["write protrans"], write_shard(folder / "again.h5", args.num_proteins,
                                                                             args.dim))
            (folder / "again.h5.partial").unlink()
            # embed's batches of a small model's per-protein run: a flush after each (before
            # 2026-12-02) against one a second at most (flush_due, embed's now)
            for name, due in (("write, flush every 9", False), ("write, flush_due", True)):
                best[name] = min(best.get(name, float("inf")),
                                 write_shard(folder / "small.h5", args.num_proteins, args.dim, batch=9, due=due))
                (folder / "small.h5.partial").unlink()
            for name, merge in (("merge dictionary", merge_dictionary), ("merge protrans", merge_protrans)):
                out = folder / "merged.h5"
                best[name] = min(best.get(name, float("inf")), merge(shard, out))
                out.unlink()
            results = {}
            for name, scan in (("scan dictionary", scan_dictionary), ("scan protrans", scan_protrans)):
                took, results[name] = scan(shard)
                best[name] = min(best.get(name, float("inf")), took)
            if results["scan dictionary"] != results["scan protrans"]:
                raise SystemExit("the two scans disagree")
            counts = set()
            for name, ledger in (("resume, file read", False), ("resume, ledger", True)):
                took, count = resume_read(shard, ledger)
                counts.add(count)
                best[name] = min(best.get(name, float("inf")), took)
            if counts != {args.num_proteins}:
                raise SystemExit(f"the two resume reads found {counts} proteins, not {args.num_proteins}")
            stacked = folder / "stacked.h5"
            best["stack"] = min(best.get("stack", float("inf")), stack(shard, stacked))
            read = {}
            for name, path in (("matrix, grouped", shard), ("matrix, stacked", stacked)):
                took, *read[name] = read_matrix(path)
                best[name] = min(best.get(name, float("inf")), took)
            (ids_a, x_a), (ids_b, x_b) = read.values()
            if ids_a != ids_b or not np.array_equal(x_a, x_b):
                raise SystemExit("the grouped and stacked files disagree")
            stacked.unlink()
        for name, took in best.items():
            print(f"{name:26s} {took * per:8.1f} us per protein")
        for what in ("write", "merge", "scan"):
            print(f"{what} protrans / dictionary: {best[f'{what} dictionary'] / best[f'{what} protrans']:.2f}x")
        print(f"write in batches of 9, a flush after each / flush_due: "
              f"{best['write, flush every 9'] / best['write, flush_due']:.2f}x")
        print(f"resume read, file / ledger: {best['resume, file read'] / best['resume, ledger']:.1f}x")
        print(f"all vectors as one array, grouped / stacked: {best['matrix, grouped'] / best['matrix, stacked']:.0f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
