"""Benchmark of `protrans generate`'s Transformer-XL sampler (its memory: one token's forward pass a
residue) against a naive loop (a forward pass over the whole prefix for every new residue,
transformers-style without a cache), on the same random Transformer-XL, the same seeds and the same
draws, in the same run: residues per second of each and their ratio.

Both draw N sequences of exactly L residues (the end token is never allowed: --min-length L) in one
batch, each sequence from its own generator seeded by (seed, i) (protrans_cli.generate.Draws), under
the same filter (temperature 1, top-p 0.95); the model's load is outside the timings. On the CPU in
float32 the two write the same sequences (said on the last line); on a GPU in bfloat16 they may
part where a draw falls within rounding of a boundary between two tokens.

    python benchmarks/generate_bench.py                          # small preset, 8 x 200, CPU
    python benchmarks/generate_bench.py --preset prot_txl --num-sequences 16 --length 300 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive_sample(sampler, indices: list[int]) -> list[str]:
    """The sequences `indices` drawn left to right, each residue from a forward pass over
    `<s>` and the whole prefix (no memory), with protrans' filter and draws."""
    import torch

    from protrans_cli.generate import Draws, causal_layout

    o = sampler.options
    before, _ = causal_layout(sampler)
    ids = torch.tensor([before] * len(indices), dtype=torch.long, device=sampler.device)
    draws = Draws(o.seed, indices)
    drawn = []
    with torch.inference_mode():
        for _ in range(o.max_length):
            logits = sampler.model(input_ids=ids).logits[:, -1]
            token = sampler.sample(logits, sampler.allowed, draws)
            drawn.append(token)
            ids = torch.cat([ids, token[:, None].to(ids.device)], dim=1)
    tokens = torch.stack(drawn, dim=1).tolist()
    return ["".join(sampler.letter_of[t] for t in row) for row in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="Transformer-XL preset of the random model "
                        "(tiny, small, base, prot_txl)")
    parser.add_argument("--num-sequences", type=int, default=8, help="sequences, sampled in one batch")
    parser.add_argument("--length", type=int, default=200, help="residues of each sequence")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = parser.parse_args()

    import torch

    from protrans_cli.generate import GenerateOptions, Sampler, sample_causal
    from protrans_cli.models import FAMILIES, load_model

    torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    family = FAMILIES["transfo_xl"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = family.build_tokenizer()
        family.save_pretrained(family.pretraining_model(family.build_config(args.preset, tokenizer)).eval(),
                               tokenizer, folder)
        loaded = load_model(folder, device=torch.device(args.device), dtype=getattr(torch, dtype), masked_lm=True)
    options = GenerateOptions(model="bench", num_sequences=args.num_sequences, max_length=args.length,
                              min_length=args.length, top_p=0.95, seed=0, batch_size=args.num_sequences,
                              device=args.device, dtype=dtype)
    sampler = Sampler(loaded, options)
    indices = list(range(args.num_sequences))
    residues = args.num_sequences * args.length
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"Transformer-XL {args.preset} ({params:,} parameters, mem_len {loaded.model.config.mem_len}), "
          f"{args.num_sequences} x {args.length} residues, {args.device} {dtype}, {args.threads} threads")

    warm = Sampler(loaded, replace(options, max_length=4, min_length=4))  # (kernels and allocator warmed)
    sample_causal(warm, indices)
    naive_sample(warm, indices)
    synchronise(args.device)
    start = time.perf_counter()
    ours = [r.sequence for r in sample_causal(sampler, indices)]
    synchronise(args.device)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    naive = naive_sample(sampler, indices)
    synchronise(args.device)
    naive_s = time.perf_counter() - start

    print(f"protrans (memory, one token a pass):  {ours_s:8.2f} s  {residues / ours_s:10.1f} residues/s")
    print(f"naive (whole prefix a residue):       {naive_s:8.2f} s  {residues / naive_s:10.1f} residues/s")
    same = sum(a == b for a, b in zip(ours, naive))
    print(f"identical sequences: {same}/{len(ours)}")
    print(f"protrans / naive: {naive_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
