"""Benchmark `protrans from-structure` on many small models: -j 1 against -j N, in one run.

    python benchmarks/structures_bench.py                    # 500 models, -j 1 vs -j 2
    python benchmarks/structures_bench.py --models 2000 --threads 1 2 4 --atoms backbone

Generates (in a temporary folder) `--models` random chains of 100-400 residues (a random walk of
3.8 A steps; CA atoms only, or N, CA, C, O with `--atoms backbone`), B-factors as pLDDTs, and
writes each one both as PDB (.pdb) and as gzipped mmCIF (.cif.gz), as AlphaFold DB does:
  - folder: the models, the even ones as .pdb and the odd ones as .cif.gz;
  - tar: an AlphaFold DB-like archive holding AF-Xn-F1-model_v4.cif.gz and .pdb.gz of each model
    (from-structure reads the mmCIF of each, the PDB left out).
Then times from_structures (FASTA and --residues map written) on each input with each -j value,
best of --rounds, checks the outputs are byte for byte the same whatever -j, and prints files/s,
residues/s and the speed-up over the first -j value.

    python benchmarks/structures_bench.py --memory --models 1000 [--before /tmp/old-protrans]

`--memory`: the peak RSS (VmHWM of a child process, -j 1, FASTA and --residues map
to files) of from_structures on a folder of N and of 4N models (N = --models), with this checkout's
code and, given `--before DIR` (a folder holding an older protrans_cli, e.g. `git archive main
protrans_cli | tar -x -C DIR`), with that code too; and the child's peak after its imports alone.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREE = ["ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
         "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL"]
CIF_COLUMNS = ("group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
               "label_asym_id", "label_entity_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x",
               "Cartn_y", "Cartn_z", "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_asym_id",
               "pdbx_PDB_model_num")
BACKBONE = (("N", "N", (-1.2, 0.6, 0.0)), ("CA", "C", (0.0, 0.0, 0.0)), ("C", "C", (1.2, 0.6, 0.0)),
            ("O", "O", (1.3, 1.8, 0.0)))


def random_model(rng, length: int, atoms: str):
    """(residue names, [(atom name, element, residue index, x, y, z)], pLDDTs)."""
    names = [THREE[i] for i in rng.integers(0, 20, length)]
    steps = rng.normal(size=(length, 3))
    steps *= 3.8 / np.linalg.norm(steps, axis=1, keepdims=True)
    ca = np.cumsum(steps, axis=0)
    plddt = rng.uniform(30, 98, length)
    kinds = BACKBONE if atoms == "backbone" else BACKBONE[1:2]
    placed = [(a, e, i, *(ca[i] + off)) for i in range(length) for a, e, off in kinds]
    return names, placed, plddt


def pdb_text(names, placed, plddt) -> str:
    lines = []
    for serial, (atom, element, i, x, y, z) in enumerate(placed, 1):
        lines.append(f"ATOM  {serial:5d}  {atom:<3s} {names[i]:3s} A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"  1.00{plddt[i]:6.2f}           {element}")
    return "\n".join(lines + ["END", ""])


def cif_text(ident: str, names, placed, plddt) -> str:
    lines = [f"data_{ident}", "#", f"_entry.id {ident}", "#", "loop_", *(f"_atom_site.{c}" for c in CIF_COLUMNS)]
    for serial, (atom, element, i, x, y, z) in enumerate(placed, 1):
        lines.append(f"ATOM {serial} {element} {atom} . {names[i]} A 1 {i + 1} ? {x:.3f} {y:.3f} {z:.3f} "
                     f"1.00 {plddt[i]:.2f} {i + 1} A 1")
    return "\n".join(lines + ["#", ""])


def generate(root: Path, models: int, atoms: str, seed: int = 0) -> tuple[Path, Path, int]:
    """The folder and the tar of `models` models (see the module's doc), and their residues."""
    rng = np.random.default_rng(seed)
    folder, archive = root / "models", root / "UP000000000_1_SYNTH_v4.tar"
    folder.mkdir()
    residues = 0
    with tarfile.open(archive, "w") as tar:
        for n in range(models):
            length = int(rng.integers(100, 401))
            residues += length
            names, placed, plddt = random_model(rng, length, atoms)
            ident = f"AF-X{n:05d}-F1-model_v4"
            pdb, cif = pdb_text(names, placed, plddt).encode(), gzip.compress(cif_text(ident, names, placed, plddt).encode())
            if n % 2:
                (folder / f"{ident}.cif.gz").write_bytes(cif)
            else:
                (folder / f"{ident}.pdb").write_bytes(pdb)
            for name, data in ((f"{ident}.cif.gz", cif), (f"{ident}.pdb.gz", gzip.compress(pdb))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder, archive, residues


def run(source: Path, threads: int, out: Path) -> float:
    from protrans_cli.structures import StructureOptions, from_structures

    start = time.perf_counter()
    from_structures([source], out / "x.fa", out / "x.tsv", StructureOptions(threads=threads))
    return time.perf_counter() - start


# The child of --memory: imports protrans_cli from sys.argv[1] (not this checkout's, for --before),
# prints its peak RSS (kB) after the imports and after from_structures of the folder sys.argv[2].
# The peak is /proc's VmHWM where there is one: getrusage's ru_maxrss is carried over exec, so a
# child's starts at its parent's peak at the fork (this script's, which generated the models).
CHILD = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from protrans_cli.structures import StructureOptions, from_structures
import Bio.PDB

def peak():
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

imported = peak()
start = time.perf_counter()
from_structures([sys.argv[2]], sys.argv[3] + "/x.fa", sys.argv[3] + "/x.tsv", StructureOptions(threads=1))
print(imported, peak(), time.perf_counter() - start)
"""


def peak_rss(code: Path, folder: Path, out: Path) -> tuple[float, float, float]:
    """(MB after the imports, MB peak, seconds) of a child process running from_structures."""
    import subprocess

    out.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(code), str(folder), str(out)], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    imported, peak, seconds = done.stdout.split()
    return int(imported) / 1024, int(peak) / 1024, float(seconds)


def memory(args) -> None:
    codes = [("this checkout", Path(__file__).resolve().parent.parent)]
    if args.before:
        codes.append(("--before", Path(args.before).resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for models in (args.models, 4 * args.models):
            root = Path(tmp) / str(models)
            root.mkdir()
            folder, _, residues = generate(root, models, args.atoms)
            for label, code in codes:
                out = root / label.strip("-").replace(" ", "_")
                imported, peak, seconds = peak_rss(code, folder, out)
                outputs.setdefault(models, set()).add(((out / "x.fa").read_bytes(), (out / "x.tsv").read_bytes()))
                print(f"{models:6d} models {residues:10,d} residues  {label:14s}: peak {peak:7.1f} MB "
                      f"({peak - imported:+7.1f} MB over the imports' {imported:.1f}), {seconds:6.1f} s")
            assert len(outputs[models]) == 1, "the outputs differ between the codes"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--atoms", choices=["ca", "backbone"], default="ca")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="peak RSS of N and 4N models (see the doc)")
    parser.add_argument("--before", default=None, help="with --memory: a folder holding an older protrans_cli")
    args = parser.parse_args(argv)
    if args.memory:
        memory(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, archive, residues = generate(root, args.models, args.atoms)
        print(f"{args.models} models, {residues:,} residues ({args.atoms} atoms), {os.cpu_count()} cores; "
              f"tar {archive.stat().st_size / 1e6:.1f} MB")
        for label, source in (("folder (.pdb, .cif.gz)", folder), ("AFDB-like tar (mmCIF of each)", archive)):
            best, outputs = {}, {}
            for threads in args.threads:
                out = root / f"out{threads}"
                out.mkdir(exist_ok=True)
                best[threads] = min(run(source, threads, out) for _ in range(args.rounds))
                outputs[threads] = ((out / "x.fa").read_bytes(), (out / "x.tsv").read_bytes())
            base = args.threads[0]
            assert all(o == outputs[base] for o in outputs.values()), "outputs differ between -j values"
            for threads in args.threads:
                t = best[threads]
                print(f"{label:32s} -j {threads}: {t:6.2f} s  {args.models / t:7.1f} files/s  "
                      f"{residues / t:9,.0f} residues/s  x{best[base] / t:.2f} of -j {base}")


if __name__ == "__main__":
    main()
