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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--atoms", choices=["ca", "backbone"], default="ca")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
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
