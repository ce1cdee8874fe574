"""Commands on a per-protein file of many proteins (UniRef50-sized runs), in the three layouts
that hold per-protein vectors a protein each (grouped; flat, one dataset per protein at the root as
bio_embeddings and the ProtTrans script write them) or in one array (stacked): seconds and peak
resident MB of info, export (.npz, .tsv), knn (1,000 queries), merge of two halves, fit of a
per-protein head (labels for --labels proteins), predict, and the writer itself.

    python benchmarks/proteins_bench.py --num-proteins 100000 --tmpdir /var/tmp
    python benchmarks/proteins_bench.py --num-proteins 1000000 --layouts stacked --skip tsv
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
from export_bench import timed


def make_file(path: Path, ids: list[str], vectors: np.ndarray, layout: str, dtype: str) -> float:
    """Seconds to write `vectors` as embed writes them (EmbeddingsWriter: a stacked file is written
    grouped into its partial file, then stacked when it closes)."""
    from protrans_cli.io.h5 import EmbeddingsWriter

    start = time.perf_counter()
    with EmbeddingsWriter(path, kinds=("per_protein",), layout=layout, storage_dtype=dtype,
                          attrs={"model": "bench", "family": "bench"}) as w:
        for i, ident in enumerate(ids):
            w.write(ident, f"{ident} bench", "M" * 100, per_protein=vectors[i])
            if i % 1000 == 999:
                w.flush()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-proteins", type=int, default=100000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--labels", type=int, default=20000, help="proteins with a label for fit")
    parser.add_argument("--layouts", default="grouped,flat,stacked")
    parser.add_argument("--skip", default="", help="commands left out, comma-separated (e.g. tsv,fit)")
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    n = args.num_proteins
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, args.dim)).astype(np.float32)
    ids = [f"UniRef50_P{i:08d}" for i in range(n)]
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        env = bytecode_env(tmp)
        labels = tmp / "labels.csv"
        labels.write_text("id,label\n" + "".join(f"{ids[i]},{'AB'[int(vectors[i, 0] > 0)]}\n"
                                                 for i in range(min(n, args.labels))))
        layouts = args.layouts.split(",")
        for layout in layouts:
            big, query = tmp / f"{layout}.h5", tmp / f"{layout}.q.h5"
            seconds = make_file(big, ids, vectors, layout, args.dtype)
            print(f"{layout} N={n:,}: writer {seconds:.1f} s ({seconds / n * 1e5:.1f} s per 100k), "
                  f"{big.stat().st_size / 1e6:,.0f} MB", flush=True)
            make_file(query, ids[:1000], vectors[:1000] + 0.01, layout, args.dtype)
            halves = [tmp / f"{layout}.a.h5", tmp / f"{layout}.b.h5"]
            if "merge" not in skip:
                for part, (lo, hi) in zip(halves, ((0, n // 2), (n // 2, n))):
                    make_file(part, ids[lo:hi], vectors[lo:hi], layout, args.dtype)
            cli = [sys.executable, "-m", "protrans_cli", "-q"]
            # Untimed, to fill the bytecode cache: info's modules, and (unless fit is skipped) fit's and
            # predict's, torch's included; with info's alone the first layout's fit compiled them (5-8 s
            # more than the second layout's, timed alike on their own)
            warm = [["info", str(query)]]
            if "fit" not in skip and layout == layouts[0]:
                warm += [["fit", "protein", "--embeddings", str(query), "--labels", str(labels), "--only-embedded",
                          "--max-epochs", "1", "-o", str(tmp / "warm.head")],
                         ["predict", str(tmp / "warm.head"), "--embeddings", str(query), "-o", str(tmp / "warm.csv")]]
            for argv in warm:
                subprocess.run([*cli, *argv], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs = {
                "info": ["info", str(big)],
                "npz": ["export", str(big), "--per-protein", "-o", str(tmp / "x.npz")],
                "tsv": ["export", str(big), "--per-protein", "-o", str(tmp / "x.tsv")],
                "knn": ["knn", str(query), "--reference", str(big), "-o", str(tmp / "hits.tsv")],
                "merge": ["merge", *map(str, halves), "-o", str(tmp / "merged.h5"), "--force"],
                "fit": ["fit", "protein", "--embeddings", str(big), "--labels", str(labels), "--max-epochs", "5",
                        "-o", str(tmp / f"{layout}.head")],
                "predict": ["predict", str(tmp / f"{layout}.head"), "--embeddings", str(big), "-o", str(tmp / "p.csv")],
            }
            for name, argv in runs.items():
                if name in skip or (name == "predict" and "fit" in skip):
                    continue
                seconds, peak = timed([*cli, *argv], env)
                print(f"{layout} N={n:,} {name}: {seconds:.1f} s, peak {peak:,.0f} MB", flush=True)
                for out in ("x.npz", "x.tsv", "merged.h5", "p.csv"):
                    (tmp / out).unlink(missing_ok=True)
            for path in (big, query, *halves):
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
