"""Benchmark of `protrans variants` against the strategy of fair-esm's
examples/variant-prediction/predict.py, on the same random ESM-2-shaped model, the same protein and
variants, in the same run: seconds, variants per second, and the largest difference between the
two sets of scores.

The baseline is predict.py's procedure written with plain transformers (EsmForMaskedLM and its
tokenizer): masked marginals mask every residue of the wild type in turn, one copy per forward
pass, whichever sites the variants touch, then read each variant's log-odds; pseudo-ppl masks every
residue of every mutant, one copy per pass. protrans masks only the sites that are mutated and
stacks the copies into passes of `--max-tokens` tokens (pseudo-ppl: all mutants' copies together).

    python benchmarks/variants_bench.py                          # esm2_t6_8M shape, CPU
    python benchmarks/variants_bench.py --preset esm2_t33_650M --device cuda --length 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contacts_bench import build_model  # noqa: E402  (the same random ESM-2-shaped checkpoint)

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def baseline_site_log_probs(model, tokenizer, sequence: str, device):
    """predict.py: every residue masked in turn, one copy a pass; (L, V) log-probabilities."""
    import torch

    ids = tokenizer(sequence, return_tensors="pt")["input_ids"].to(device)
    rows = []
    with torch.inference_mode():
        for i in range(len(sequence)):
            masked = ids.clone()
            masked[0, i + 1] = tokenizer.mask_token_id
            rows.append(model(input_ids=masked).logits[0, i + 1].float().log_softmax(-1))
    return torch.stack(rows).cpu().numpy()


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="esm2_t6_8M", help="ESM preset whose shape the random model has")
    parser.add_argument("--length", type=int, default=250, help="residues of the wild type")
    parser.add_argument("--sites", type=int, default=40, help="sites of the sparse scan (19 variants each)")
    parser.add_argument("--mutants", type=int, default=8, help="multi-site mutants scored by pseudo-ppl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import EsmForMaskedLM, EsmTokenizer

    from protrans_cli.models import load_model
    from protrans_cli.variants import Mutation, VariantScorer, all_singles, mutate

    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    rng = np.random.default_rng(0)
    wild_type = "".join(rng.choice(list(AMINO), size=args.length))
    sites = sorted(rng.choice(args.length, size=min(args.sites, args.length), replace=False).tolist())
    sparse = [(Mutation(p, wild_type[p], a),) for p in sites for a in AMINO if a != wild_type[p]]
    singles = all_singles(wild_type)
    mutants = []
    for _ in range(args.mutants):
        where = sorted(rng.choice(args.length, size=3, replace=False).tolist())
        mutants.append(tuple(Mutation(p, wild_type[p], next(a for a in "AWG" if a != wild_type[p])) for p in where))

    with tempfile.TemporaryDirectory() as tmp:
        build_model(args.preset, Path(tmp) / "model")
        tokenizer = EsmTokenizer.from_pretrained(str(Path(tmp) / "model"))
        plain = EsmForMaskedLM.from_pretrained(str(Path(tmp) / "model"), dtype=dtype, use_kernels=False)
        plain = plain.to(args.device).eval()
        loaded = load_model(Path(tmp) / "model", device=args.device, dtype=dtype, masked_lm=True)
        scorer = VariantScorer(loaded, progress=False)
        column = {t: i for i, t in enumerate(tokenizer.convert_ids_to_tokens(range(len(tokenizer))))}

        def timed(fn):
            synchronise(args.device)
            start = time.perf_counter()
            value = fn()
            synchronise(args.device)
            return value, time.perf_counter() - start

        scorer.score(wild_type[:20], all_singles(wild_type[:20]))  # (one-off costs, for both alike)
        baseline_site_log_probs(plain, tokenizer, wild_type[:20], args.device)

        def baseline_marginals(variants):
            lp = baseline_site_log_probs(plain, tokenizer, wild_type, args.device)
            return np.array([sum(lp[m.position, column[m.mt]] - lp[m.position, column[m.wt]] for m in v)
                             for v in variants])

        def baseline_pppl(variants):
            def pll(seq):
                lp = baseline_site_log_probs(plain, tokenizer, seq, args.device)
                return sum(float(lp[i, column[c]]) for i, c in enumerate(seq))
            base = pll(wild_type)
            return np.array([pll(mutate(wild_type, v)) - base for v in variants])

        rows = []
        for label, variants, strategy, baseline in (
                (f"{len(sites)} sites x 19", sparse, "masked-marginals", baseline_marginals),
                (f"all singles ({args.length} x 19)", singles, "masked-marginals", baseline_marginals),
                (f"{args.mutants} triple mutants", mutants, "pseudo-ppl", baseline_pppl)):
            want, t_base = timed(lambda: baseline(variants))
            got, t_ours = timed(lambda: scorer.score(wild_type, variants, strategy))
            rows.append((label, strategy, len(variants), t_base, t_ours, float(np.abs(got - want).max())))

    print(f"model: random {args.preset} shape; device {args.device} ({str(dtype).removeprefix('torch.')}); "
          f"wild type of {args.length} residues; {args.threads} CPU threads")
    print(f"{'variants':<26} {'scoring':<17} {'n':>6} {'predict.py s':>13} {'protrans s':>11} {'speed ratio':>12} "
          f"{'variants/s':>11} {'max |diff|':>11}")
    for label, strategy, n, t_base, t_ours, diff in rows:
        print(f"{label:<26} {strategy:<17} {n:>6} {t_base:>13.3f} {t_ours:>11.3f} {t_base / t_ours:>11.2f}x "
              f"{n / t_ours:>11,.0f} {diff:>11.2e}")


if __name__ == "__main__":
    main()
