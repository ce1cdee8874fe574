"""Benchmark of `protrans contacts`' head, computed one layer at a time, against transformers'
`EsmModel.predict_contacts` (what fair-esm's `return_contacts=True` does too: every layer's
attention maps collected, stacked, then read by the head), on the same random ESM-2-shaped model,
the same proteins, in the same run: seconds per batch, peak memory, and the largest difference
between their maps.

Each measurement runs in a fresh process, so that its peak memory is its own: on the CPU the
process's peak resident set (`ru_maxrss`) less the model's after loading; on a CUDA GPU
`torch.cuda.max_memory_allocated` less the model's.

    python benchmarks/contacts_bench.py                         # esm2_t12_35M shape, CPU
    python benchmarks/contacts_bench.py --preset esm2_t33_650M --lengths 1022 --batch 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_model(preset: str, directory: Path) -> None:
    """A random model of the preset's shape, saved as a published checkpoint is (EsmForMaskedLM
    with its contact head; no protrans stamp, so `protrans contacts` takes it)."""
    import torch
    from transformers import EsmForMaskedLM

    from protrans_cli.models import get_family
    from protrans_cli.models.tokenizers import save_tokenizer

    family = get_family("esm")
    tokenizer = family.build_tokenizer()
    torch.manual_seed(0)
    model = EsmForMaskedLM(family.build_config(preset, tokenizer)).eval()
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory)


def measure(method: str, model_dir: str, lengths: list[int], batch: int, device: str, repeats: int) -> dict:
    """In this process: load, run `repeats` batches of `batch` proteins of each length, report."""
    import resource
    import time

    import numpy as np
    import torch

    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.models import load_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_model(model_dir, device=device, dtype="float32" if device == "cpu" else "bfloat16")
    cuda = device.startswith("cuda")

    def peak() -> int:
        if cuda:
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    predictor = ContactPredictor(loaded)  # (eager attention for both methods)
    with torch.inference_mode():  # (a first call's one-off costs, for both methods alike)
        predictor.predict(["MKTAYIAKQR"])
        warm, _ = loaded.family.encode(loaded.tokenizer, ["MKTAYIAKQR"], 1)
        loaded.model.predict_contacts(warm["input_ids"].to(device), warm["attention_mask"].to(device))
    base = peak()
    rng = np.random.default_rng(0)
    alphabet = list("ACDEFGHIKLMNPQRSTVWY")
    out, seconds = {}, {}
    for length in lengths:
        seqs = ["".join(rng.choice(alphabet, size=length)) for _ in range(batch)]
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            if method == "protrans":
                maps = predictor.predict(seqs)
            else:
                inputs, mask = loaded.family.encode(loaded.tokenizer, seqs, 1)
                with torch.inference_mode():
                    probs = loaded.model.predict_contacts(inputs["input_ids"].to(device),
                                                          inputs["attention_mask"].to(device)).float().cpu()
                maps = [probs[i, :length, :length].numpy() for i in range(batch)]
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds[length] = min(times)
        out[length] = maps[0]
    path = os.environ["BENCH_MAPS"]
    np.savez(path, **{str(k): v for k, v in out.items()})
    return {"seconds": seconds, "peak_bytes": peak() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="esm2_t12_35M", help="ESM preset whose shape the random model has")
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 600, 1000])
    parser.add_argument("--batch", type=int, default=1, help="proteins per batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.lengths, args.batch, args.device, args.repeats)))
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(args.preset, model_dir)
        results, maps = {}, {}
        for method in ("transformers", "protrans"):
            env = {**os.environ, "BENCH_MAPS": str(Path(tmp) / f"{method}.npz"),
                   "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            run = subprocess.run([sys.executable, __file__, "--child", method, str(model_dir), "--lengths",
                                  *map(str, args.lengths), "--batch", str(args.batch), "--device", args.device,
                                  "--repeats", str(args.repeats)], env=env, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"{method} failed:\n{run.stderr[-3000:]}")
            results[method] = json.loads(run.stdout.strip().splitlines()[-1])
            maps[method] = np.load(env["BENCH_MAPS"])
    hf, ours = results["transformers"], results["protrans"]
    print(f"model: random {args.preset} shape; device {args.device}; {args.batch} protein(s) per batch; "
          f"best of {args.repeats}")
    print(f"{'length':>7} {'transformers s':>15} {'protrans s':>11} {'speed ratio':>12} {'max |diff|':>11}")
    for length in args.lengths:
        a, b = hf["seconds"][str(length)], ours["seconds"][str(length)]
        diff = float(np.abs(maps["transformers"][str(length)] - maps["protrans"][str(length)]).max())
        print(f"{length:>7} {a:>15.3f} {b:>11.3f} {a / b:>11.2f}x {diff:>11.2e}")
    print(f"peak memory above the loaded model, all lengths: transformers {hf['peak_bytes'] / 2**20:,.0f} MiB, "
          f"protrans {ours['peak_bytes'] / 2**20:,.0f} MiB: {hf['peak_bytes'] / max(ours['peak_bytes'], 1):.1f}x less")


if __name__ == "__main__":
    main()
