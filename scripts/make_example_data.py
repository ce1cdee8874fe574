#!/usr/bin/env python3
"""Generate the example data shipped in `protrans_cli/example_data/` (run once; output is committed).

The proteins are synthetic, so the data carries no licensing question, and their labels follow
stated rules that a small model can learn from the sequence alone:

Secondary structure (NetSurfP-2.0 CSV format, no ids, like the real files)
  A protein is a chain of segments. Helices (8-20 residues) draw 80% of their residues from the
  helix formers A L E K M Q R, strands (4-10) from the strand formers V I Y F W T C, coils (3-10)
  from G P N D S T H; the other 20% of residues are drawn from all 20. The label of a residue is
  its segment's state. 8-state labels refine this: helix -> H (G for 3-residue helix caps at both
  ends, I for every fifth helix); strand -> E (B for a strand shorter than 5); coil -> T next to a
  helix, S next to a strand, else C. About 3% of residues at the ends are marked disordered
  (disorder 0.0), which evaluation leaves out, as in NetSurfP-2.0.

Localization (DeepLoc FASTA headers: `>ID Location-M|S|U [test]`)
  Each of the 10 DeepLoc classes enriches three residues (CLASS_BIAS below) to 20% of the
  protein, on top of a background composition. Membrane-bound proteins (M) carry 1-4
  transmembrane segments of 18-22 residues drawn from L I V F A; soluble ones (S) carry none.
  Cell.membrane proteins are always M; a fifth of all proteins get membrane code U (unknown).

Also written: `proteins.fasta`, all proteins of both sets (the corpus for `prep` and `train`).

    python scripts/make_example_data.py            # rewrites protrans_cli/example_data/
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

AMINO = "ACDEFGHIKLMNPQRSTVWY"
HELIX_FORMERS = "ALEKMQR"
STRAND_FORMERS = "VIYFWTC"
COIL_FORMERS = "GPNDSTH"
LOCATIONS = [
    "Cell.membrane", "Cytoplasm", "Endoplasmic.reticulum", "Extracellular", "Golgi.apparatus",
    "Lysosome/Vacuole", "Mitochondrion", "Nucleus", "Peroxisome", "Plastid",
]
CLASS_BIAS = {
    "Cell.membrane": "LIF", "Cytoplasm": "EDA", "Endoplasmic.reticulum": "KDE",
    "Extracellular": "CST", "Golgi.apparatus": "QNY", "Lysosome/Vacuole": "HGW",
    "Mitochondrion": "RLA", "Nucleus": "KRP", "Peroxisome": "SKL", "Plastid": "TSV",
}
TM_RESIDUES = "LIVFA"


def _draw(rng: random.Random, favoured: str, n: int, p_favoured: float = 0.8) -> str:
    return "".join(rng.choice(favoured) if rng.random() < p_favoured else rng.choice(AMINO) for _ in range(n))


def secondary_structure_protein(rng: random.Random):
    """(sequence, dssp3, dssp8, disorder mask) for one synthetic protein."""
    target = rng.randint(50, 260)
    segments = [("C", rng.randint(2, 6))]
    while sum(n for _, n in segments) < target:
        state = rng.choices("HEC", weights=[0.4, 0.25, 0.35])[0]
        if state == segments[-1][0]:
            state = "C"
        n = {"H": rng.randint(8, 20), "E": rng.randint(4, 10), "C": rng.randint(3, 10)}[state]
        segments.append((state, n))
    segments.append(("C", rng.randint(2, 6)))
    seq, ss3, ss8 = [], [], []
    for i, (state, n) in enumerate(segments):
        favoured = {"H": HELIX_FORMERS, "E": STRAND_FORMERS, "C": COIL_FORMERS}[state]
        seq.append(_draw(rng, favoured, n))
        ss3.append(state * n)
        if state == "H":
            inner = "I" if rng.random() < 0.2 else "H"
            cap = "G" if n >= 10 else inner
            ss8.append(cap * 3 + inner * (n - 6) + cap * 3 if n >= 10 else inner * n)
        elif state == "E":
            ss8.append(("B" if n < 5 else "E") * n)
        else:
            before = segments[i - 1][0] if i else "C"
            after = segments[i + 1][0] if i + 1 < len(segments) else "C"
            coil = "T" if "H" in (before, after) else ("S" if "E" in (before, after) else "C")
            ss8.append(coil * n)
    seq, ss3, ss8 = "".join(seq), "".join(ss3), "".join(ss8)
    disorder = ["1.0"] * len(seq)
    for k in range(rng.randint(0, 4)):  # a few unresolved residues at the termini
        disorder[k] = "0.0"
    return seq, ss3, ss8, disorder


def localization_protein(rng: random.Random, location: str):
    """(sequence, membrane code) for one synthetic protein of `location`."""
    length = rng.randint(80, 400)
    bias = CLASS_BIAS[location]
    body = [rng.choice(bias) if rng.random() < 0.2 else rng.choice(AMINO) for _ in range(length)]
    membrane = location == "Cell.membrane" or rng.random() < 0.3
    if membrane:
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(18, 22)
            start = rng.randint(0, max(0, length - n))
            body[start:start + n] = [rng.choice(TM_RESIDUES) for _ in range(n)]
    code = "M" if membrane else "S"
    if rng.random() < 0.2:
        code = "U"
    return "M" + "".join(body[1:]), code


def write_netsurfp_csv(path: Path, rows) -> None:
    with open(path, "w") as fh:
        fh.write("input, dssp3, dssp8, disorder, cb513_mask\n")
        for seq, ss3, ss8, disorder in rows:
            fh.write(",".join([" ".join(seq), " ".join(ss3), " ".join(ss8), " ".join(disorder),
                               " ".join(["1.0"] * len(seq))]) + "\n")


def write_deeploc_fasta(path: Path, rows, test: bool) -> None:
    with open(path, "w") as fh:
        for ident, location, code, seq in rows:
            fh.write(f">{ident} {location}-{code}{' test' if test else ''}\n")
            for i in range(0, len(seq), 60):
                fh.write(seq[i:i + 60] + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parent.parent / "protrans_cli" / "example_data")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--num-ss", type=int, default=320, help="secondary-structure proteins (80% train)")
    parser.add_argument("--num-loc", type=int, default=400, help="localization proteins (75% train)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    args.output.mkdir(parents=True, exist_ok=True)

    ss = [secondary_structure_protein(rng) for _ in range(args.num_ss)]
    n_train = int(0.8 * len(ss))
    write_netsurfp_csv(args.output / "ss_train.csv", ss[:n_train])
    write_netsurfp_csv(args.output / "ss_test.csv", ss[n_train:])

    loc = []
    for i in range(args.num_loc):
        location = LOCATIONS[i % len(LOCATIONS)]
        seq, code = localization_protein(rng, location)
        loc.append((f"EX{i:04d}", location, code, seq))
    rng.shuffle(loc)
    n_train = int(0.75 * len(loc))
    write_deeploc_fasta(args.output / "loc_train.fasta", loc[:n_train], test=False)
    write_deeploc_fasta(args.output / "loc_test.fasta", loc[n_train:], test=True)

    with open(args.output / "proteins.fasta", "w") as fh:
        for i, (seq, *_rest) in enumerate(ss):
            fh.write(f">SS{i:04d} synthetic secondary-structure protein\n{seq}\n")
        for ident, location, _code, seq in loc:
            fh.write(f">{ident} synthetic {location} protein\n{seq}\n")
    (args.output / "README.md").write_text(
        "Synthetic example data generated by scripts/make_example_data.py "
        f"(seed {args.seed}); see that script's docstring for the rules behind the labels.\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
