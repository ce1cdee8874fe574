"""Regenerates the training fixtures in this folder (deterministic; run from anywhere).

learnable.txt          300 proteins built from 6 fixed motifs: a masked residue is predictable
                       from its neighbours, so the loss of any objective falls within tens of steps
learnable_shard2.txt.gz  100 more such proteins, gzipped: a second shard
invalid_residue.txt    a corpus whose third protein holds a digit
too_few_proteins.txt   3 proteins (fewer than one global batch in the tests)
"""

import gzip
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
MOTIFS = ["MKTAYIAKQR", "GSSGSSG", "LLLLAAAA", "PEPTIDE", "HHHHHH", "WYFWYF"]


def protein(rng):
    return "".join(rng.choice(MOTIFS) for _ in range(rng.randint(2, 9)))


def corpus(proteins):
    # prep's format: residues separated by spaces, one protein per line, a blank line between
    return "".join(" ".join(p) + "\n\n" for p in proteins)


def main():
    rng = random.Random(4)
    (HERE / "learnable.txt").write_text(corpus(protein(rng) for _ in range(300)))
    with gzip.GzipFile(HERE / "learnable_shard2.txt.gz", "wb", mtime=0) as fh:
        fh.write(corpus(protein(rng) for _ in range(100)).encode())
    bad = [protein(rng) for _ in range(5)]
    bad[2] = bad[2][:5] + "7" + bad[2][5:]
    (HERE / "invalid_residue.txt").write_text(corpus(bad))
    (HERE / "too_few_proteins.txt").write_text(corpus(protein(rng) for _ in range(3)))


if __name__ == "__main__":
    main()
