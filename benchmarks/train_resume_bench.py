"""How long `protrans train --resume` waits before its first step: the data stream repositioned
from the checkpoint's cursor (the file and byte where its buffer begins) against re-reading the
corpus up to that buffer (what checkpoints of earlier versions, without a cursor, still do), in the
same run on the same corpus. A process pays this once per resume, every rank and data-loader
worker alike.

The corpus is made of random proteins (lengths 50-1000) in `--shards` files, plain or gzip;
the checkpoint's position is `--fraction` of the way through it. A gzip file is written as prep
writes it, a member for each block of about 1 MiB of text (`--one-member`: one gzip stream, as
`gzip` writes, which a resume must decompress from its beginning).

    python benchmarks/train_resume_bench.py                        # 256 MB, 4 plain shards
    python benchmarks/train_resume_bench.py --megabytes 1024 --gzip --tmpdir /dev/shm
    python benchmarks/train_resume_bench.py --gzip --shards 1 [--one-member]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_corpus(directory: Path, megabytes: int, shards: int, compress: bool,
                one_member: bool = False) -> tuple[list[str], int]:
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    per_shard = megabytes * (1 << 20) // shards
    paths, proteins = [], 0
    for k in range(shards):
        path = directory / f"corpus_{k}.txt{'.gz' if compress else ''}"
        opener = gzip.open(path, "wb", compresslevel=1) if compress and one_member else open(path, "wb")
        written = 0
        with opener as out:
            while written < per_shard:
                chunk = []
                for length in rng.integers(50, 1000, 1000):
                    line = np.full(2 * length, 32, dtype=np.uint8)
                    line[0::2] = rng.choice(letters, length)
                    line[-1] = 10
                    chunk.append(line.tobytes() + b"\n")
                data = b"".join(chunk)
                # (prep's workers compress each block as a gzip member of its own)
                out.write(gzip.compress(data, compresslevel=1) if compress and not one_member else data)
                written += len(data)
                proteins += len(chunk)
        paths.append(str(path))
    return paths, proteins


def first_step_seconds(paths, state) -> float:
    from protrans_cli.models import get_family
    from protrans_cli.training.data import CorpusStream, TokenLayout

    family = get_family("bert")
    layout = TokenLayout.from_tokenizer(family.build_tokenizer(), family.prepare)
    stream = CorpusStream(paths, layout, max_length=512, global_batch_size=64, micro_batch_size=64,
                          bucket_batches=16, seed=0, state=state)
    start = time.perf_counter()
    next(iter(stream))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--one-member", action="store_true", help="each gzip file one stream, not a member per block")
    parser.add_argument("--fraction", type=float, default=0.9, help="where the checkpoint is (default 0.9)")
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()

    from protrans_cli.models import get_family
    from protrans_cli.training.data import Cursor, StreamState, iter_proteins

    directory = Path(tempfile.mkdtemp(prefix="resume_bench_", dir=args.tmpdir))
    try:
        t = time.perf_counter()
        paths, total = make_corpus(directory, args.megabytes, args.shards, args.gzip, args.one_member)
        size = sum(Path(p).stat().st_size for p in paths)
        print(f"corpus: {total:,} proteins, {args.megabytes} MiB of text in {args.shards} "
              f"{('gzip, one member' if args.one_member else 'gzip') if args.gzip else 'plain'} shard(s), {size / 1e6:,.0f} MB on disk "
              f"({time.perf_counter() - t:.0f} s to make)")
        # The checkpoint: a buffer start `fraction` of the way in, with the cursor a run would save.
        buffer = 64 * 16
        start = int(total * args.fraction) // buffer * buffer
        cursor = Cursor()
        reader = iter_proteins(paths, cursor=cursor)
        for _ in range(start):
            next(reader)
        at = cursor.copy()
        del reader
        get_family("bert").build_tokenizer()  # (imports paid before timing)
        rows = []
        for name, state in (("re-read up to the buffer (no cursor)", StreamState(0, start, 3)),
                            ("from the checkpoint's cursor", StreamState(0, start, 3, at))):
            rows.append((name, min(first_step_seconds(paths, state) for _ in range(2))))
        print(f"checkpoint at protein {start:,} of {total:,} (shard {at.file + 1} of {len(paths)}, "
              f"byte {at.offset:,} of its text)")
        for name, seconds in rows:
            print(f"  {name:40s} {seconds:8.2f} s to the first step")
        print(f"  ratio (re-read / cursor): {rows[0][1] / rows[1][1]:.1f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
