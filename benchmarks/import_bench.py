"""Benchmark of `protrans import-model` on a fair-esm checkpoint of a published ESM-2's shapes
(random weights, written here): the import's wall time and peak memory (its process's peak
resident set, VmHWM), the peak also as a multiple of the file's size (the weights once).

    python benchmarks/import_bench.py                      # ESM-2 650M shapes: a 2.6 GB file
    python benchmarks/import_bench.py --size 35M --dtype float16 --tmpdir /dev/shm

The import runs in a process of its own (`python -m protrans_cli import-model`), so its peak is
its own; a fresh interpreter that imports protrans, torch and transformers is some 0.4 GB of
it. A file mapped into memory (torch.load's mmap of the zip archive, the safetensors file
read back) counts in the resident set for the pages read, though the kernel can drop them
(clean, file-backed) where the memory is wanted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _children import bytecode_env

ROOT = Path(__file__).resolve().parent.parent
# ESM-2's published sizes: layers, embedding width, attention heads
SIZES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20),
         "3B": (36, 2560, 40)}
VOCAB = 33


def make_checkpoint(path: Path, size: str, dtype: str) -> int:
    """A fair-esm ESM-2 checkpoint (`{"model": ..., "cfg": {"model": Namespace}}`, torch's zip
    format) of `size`'s shapes with random weights at `path`; its size in bytes."""
    import argparse as ap

    import torch

    layers, dim, heads = SIZES[size]
    ffn = 4 * dim
    gen = torch.Generator().manual_seed(0)
    kind = getattr(torch, dtype)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(kind)

    prefix = "encoder.sentence_encoder."
    state = {prefix + "embed_tokens.weight": rand(VOCAB, dim)}
    for n in range(layers):
        for part, shape in (("self_attn.q_proj", (dim, dim)), ("self_attn.k_proj", (dim, dim)),
                            ("self_attn.v_proj", (dim, dim)), ("self_attn.out_proj", (dim, dim)),
                            ("fc1", (ffn, dim)), ("fc2", (dim, ffn))):
            state[f"{prefix}layers.{n}.{part}.weight"] = rand(*shape)
            state[f"{prefix}layers.{n}.{part}.bias"] = rand(shape[0])
        for part in ("self_attn_layer_norm", "final_layer_norm"):
            state[f"{prefix}layers.{n}.{part}.weight"] = 1 + rand(dim)
            state[f"{prefix}layers.{n}.{part}.bias"] = rand(dim)
        head_dim = dim // heads
        state[f"{prefix}layers.{n}.self_attn.rot_emb.inv_freq"] = \
            1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    state[prefix + "emb_layer_norm_after.weight"] = 1 + rand(dim)
    state[prefix + "emb_layer_norm_after.bias"] = rand(dim)
    state["encoder.lm_head.weight"] = state[prefix + "embed_tokens.weight"]  # (tied, as fair-esm saves it)
    state["encoder.lm_head.bias"] = rand(VOCAB)
    state["encoder.lm_head.dense.weight"] = rand(dim, dim)
    state["encoder.lm_head.dense.bias"] = rand(dim)
    state["encoder.lm_head.layer_norm.weight"] = 1 + rand(dim)
    state["encoder.lm_head.layer_norm.bias"] = rand(dim)
    cfg = ap.Namespace(encoder_layers=layers, encoder_embed_dim=dim, encoder_ffn_embed_dim=ffn,
                       encoder_attention_heads=heads, token_dropout=True, _name="ESM2")
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    regression = {"encoder.contact_head.regression.weight": rand(1, layers * heads),
                  "encoder.contact_head.regression.bias": rand(1)}
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return path.stat().st_size


# The import run as `python -m protrans_cli` runs it, its peak resident set (VmHWM: this
# process's memory alone) written to the file argv[1] as it exits
_CHILD = ("import atexit, runpy, sys\n"
          "def peak(path=sys.argv[1]):\n"
          "    kb = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
          "    open(path, 'w').write(kb)\n"
          "atexit.register(peak)\n"
          "sys.argv = ['protrans', *sys.argv[2:]]\n"
          "runpy.run_module('protrans_cli', run_name='__main__')\n")


def run_import(checkpoint: Path, out: Path, work: Path) -> tuple[float, int]:
    """Seconds and peak resident bytes of `protrans import-model checkpoint -o out` in a process
    of its own (its peak: /proc's VmHWM, the high-water mark of that process's own memory, read
    as it exits)."""
    env = bytecode_env(work)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    peak = work / "peak.txt"
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _CHILD, str(peak), "import-model", str(checkpoint), "-o", str(out),
                             "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    if result.returncode:
        sys.exit(f"import-model failed: {result.stderr.strip()}")
    return seconds, int(peak.read_text()) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="650M")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--write", metavar="PATH", help=argparse.SUPPRESS)  # (the checkpoint alone)
    args = parser.parse_args()
    if args.write:
        make_checkpoint(Path(args.write), args.size, args.dtype)
        return
    with tempfile.TemporaryDirectory(prefix="import_bench.", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        checkpoint = work / f"esm2_{args.size}.pt"
        t = time.perf_counter()
        # (written by a process of its own: this one never holds the weights)
        subprocess.run([sys.executable, __file__, "--write", str(checkpoint), "--size", args.size, "--dtype",
                        args.dtype], check=True)
        size = checkpoint.stat().st_size
        print(f"ESM-2 {args.size} shapes, {args.dtype}: {checkpoint.name} {size / 1e9:.2f} GB "
              f"(written in {time.perf_counter() - t:.0f} s)")
        subprocess.run([sys.executable, "-m", "protrans_cli", "--help"], env=bytecode_env(work), check=True,
                       capture_output=True, cwd=ROOT)  # (the bytecode cache filled, untimed)
        for _ in range(args.repeats):
            seconds, peak = run_import(checkpoint, work / "model", work)
            print(f"import-model: {seconds:.1f} s, peak resident {peak / 1e9:.2f} GB = {peak / size:.2f}x the file")
        written = sum(f.stat().st_size for f in (work / "model").iterdir())
        print(f"model directory: {written / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
