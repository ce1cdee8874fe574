"""Benchmark of `protrans train` against a plain transformers training loop, same process, same data.

Both train the same masked-LM model (the family's stock transformers class, same config, same
seed) on the same proteins with the same global batch, micro-batch, optimizer and precision:

  baseline  the loop most scripts write: proteins in file order, tokenized by the tokenizer
            (truncated to the N-terminal residues: the C-terminus cut), DataCollatorForLanguageModeling (pads each
            micro-batch to its longest protein), `model(**batch).loss / accum`, AdamW
  protrans  `protrans_cli.training.loop.train` itself: length-bucketed batches, random crops,
            loss per predicted token over the whole step, checkpoints and metrics
            (--packing: each micro-batch one row without padding, varlen attention on a GPU;
            --sdpa-kernels: its attention-kernel policy, by default without cuDNN attention)

Printed: real (non-padding) tokens per second per device after warm-up, the ratio, the share of
padding in each, and on a GPU the model FLOPs utilisation against the device's dense bf16 peak
(FLOPs per token: 6 x non-embedding parameters + 12 x layers x hidden x length for attention).
Each is run --repeats times (2), alternating, and each one's best run is kept: the load of a
shared machine varies more than the difference being measured.

    # CPU (what docs/benchmarks.md records for a CPU machine)
    python benchmarks/train_bench.py --preset small --max-length 256 --num-steps 12
    # GPU: ProtBert-sized BERT at length 512, bf16
    python benchmarks/train_bench.py --gpu
    python benchmarks/train_bench.py --gpu --packing
    python benchmarks/train_bench.py --gpu --token-micro-batches
    # several protrans settings against one baseline run (each variant: '+'-joined VARIANT_FLAGS)
    python benchmarks/train_bench.py --gpu --variants plain,tokens,tokens+packing,tokens+packing+compile
    python benchmarks/train_bench.py --gpu --variants tokens+packing+compile,tokens+packing+compile+static,\
        tokens+packing+compile+static+cudagraphs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ECOLI = ROOT.parent / "shared" / "data" / "proteomes" / "UP000000625_83333.fasta"
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def write_corpus(directory: Path, num_proteins: int, seed: int, fasta: Path = ECOLI) -> tuple[Path, str]:
    """A corpus file of real proteins (--fasta, by default the E. coli proteome from
    ../shared/data when present), else random ones with a proteome-like length distribution."""
    import random

    rng = random.Random(seed)
    if fasta.is_file():
        from protrans_cli.io.fasta import read_fasta
        from protrans_cli.residues import normalise

        proteins = [normalise(r.sequence) for r in read_fasta(fasta)]
        rng.shuffle(proteins)
        source = f"{fasta.name} ({len(proteins)} proteins, {num_proteins} used)"
    else:
        letters = "ACDEFGHIKLMNPQRSTVWY"
        proteins = ["".join(rng.choice(letters) for _ in range(max(30, int(rng.lognormvariate(5.6, 0.6)))))
                    for _ in range(num_proteins)]
        source = "random proteins (lognormal lengths, median ~270)"
    proteins = proteins[:num_proteins]
    path = directory / "corpus.txt"
    path.write_text("".join(" ".join(p) + "\n\n" for p in proteins))
    return path, source


# --variants: what each word sets on top of the command line's own protrans settings
VARIANT_FLAGS = {
    "plain": {},
    "tokens": {"token_micro_batches": True},
    "packing": {"packing": True},
    "compile": {"compile": True},
    "eager": {"compile": False},      # (the blocks uncompiled: train's default on a CPU, not on a CUDA GPU)
    "mb64": {"micro_batch_size": 64},  # one micro-batch per step at the GPU preset's global batch
    "pad64": {"pad_multiple": 64},
    "recompute": {"activation_checkpointing": True},
    "cudnn": {"sdpa_kernels": "torch"},
    # every packed micro-batch one shape per phase (with packing), blocks compiled without dynamic
    # shapes; and CUDA graphs over them (torch.compile's reduce-overhead; the default mode off CUDA)
    "static": {"static_shapes": True},
    "cudagraphs": {"compile_mode": "reduce-overhead"},
    # the step's data made by 2 forked workers while the device computes (train's default, 0: in
    # the main process, between one step's update and the next step's first launch)
    "workers": {"num_workers": 2},
}


def parse_variants(text: str | None) -> list[tuple[str, dict]]:
    """'plain,tokens+packing' -> [("plain", {}), ("tokens+packing", {...})]; None: one variant,
    the command line's own settings."""
    if not text:
        return [("protrans", {})]
    variants = []
    for name in text.split(","):
        flags: dict = {}
        for word in name.split("+"):
            if word not in VARIANT_FLAGS:
                raise SystemExit(f"--variants: unknown {word!r} in {name!r} (known: {', '.join(VARIANT_FLAGS)})")
            flags.update(VARIANT_FLAGS[word])
        variants.append((name, flags))
    return variants


def flops_per_token(config, num_params_non_embedding: int, length: float) -> float:
    """Model FLOPs per real token of a training step: 6 N for the weights, and attention's
    12 x layers x hidden x length (forward and backward of QK^T and AV) at the proteins' own
    mean attention length (`_attention_length`), whatever padding a loop computes."""
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    return 6.0 * num_params_non_embedding + 12.0 * layers * hidden * length


def bench_baseline(args, corpus: Path, device) -> dict:
    """Stock transformers: tokenizer + DataCollatorForLanguageModeling + model(**batch).loss."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    from protrans_cli.models import get_family
    from protrans_cli.training.data import iter_proteins

    family = get_family(args.family)
    tokenizer = family.build_tokenizer()
    config = family.build_config(args.preset, tokenizer)
    torch.manual_seed(args.seed)
    model = family.pretraining_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,
                                  **({"fused": True} if device.type == "cuda" else {}))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    accum = args.global_batch_size // args.micro_batch_size
    texts = [family.prepare(t) for _, _, t in iter_proteins([corpus])]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else None
    batches = _baseline_batches(args, texts, tokenizer, collator)
    real = padded = 0
    t0 = None
    for step in range(args.num_steps):
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
            real = padded = 0
        for _ in range(accum):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            with autocast if autocast is not None else _null():
                loss = model(**batch).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"tokens_per_s": real / elapsed, "padding": 1 - real / padded}


def _baseline_batches(args, texts: list[str], tokenizer, collator):
    """The plain loop's micro-batches, endlessly: proteins in file order, tokenized (truncated to
    the N-terminal residues), padded to the longest and masked by the collator."""
    cursor = 0
    while True:
        chunk = [texts[(cursor + i) % len(texts)] for i in range(args.micro_batch_size)]
        cursor += args.micro_batch_size
        yield collator([tokenizer(t, truncation=True, max_length=args.max_length) for t in chunk])


def bench_protrans(args, corpus: Path, run_dir: Path) -> dict:
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    cfg = TrainConfig(family=args.family, preset=args.preset, corpus=[str(corpus)], output_dir=str(run_dir),
                      num_steps=args.num_steps, max_length=args.max_length,
                      global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
                      lr=1e-4, warmup_steps=0, log_every=1, save_every=10**9, keep_last=1,
                      seed=args.seed, threads=args.threads, compile=args.compile, pad_multiple=args.pad_multiple,
                      packing=args.packing, sdpa_kernels=args.sdpa_kernels,
                      activation_checkpointing=args.activation_checkpointing,
                      token_micro_batches=args.token_micro_batches, num_workers=args.num_workers,
                      static_shapes=args.static_shapes, compile_mode=args.compile_mode)
    train(cfg)
    _, _, rate = _logged_rate(run_dir / "metrics.jsonl", args.warmup)
    return {"tokens_per_s": float("nan") if rate is None else rate, "padding": _protrans_padding(args, corpus, cfg)}


def profile_protrans(args, corpus: Path, run_dir: Path, gpu: bool) -> None:
    """--profile-steps N: torch.profiler over N steps of protrans's own loop (train() as the
    comparison runs it, compiled blocks, packing, data path and logging included), after
    --warmup steps and one more untimed. A step ends at the optimizer's step (a global post-hook
    marks it), so the loop runs unchanged; no baseline runs."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from gpu_profile import report_profile
    from protrans_cli.training.metrics import read_metrics

    ends: list[float] = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    prof = profile(activities=activities,
                   schedule=schedule(wait=args.warmup, warmup=1, active=args.profile_steps, repeat=1))

    def step_ended(optimizer, *_):
        ends.append(time.perf_counter())
        prof.step()

    hook = register_optimizer_step_post_hook(step_ended)
    try:
        with prof:
            bench_protrans(args, corpus, run_dir)
    finally:
        hook.remove()
    first, n = args.warmup + 1, args.profile_steps  # profiled: steps first + 1 ... first + n
    if len(ends) < first + n:
        raise SystemExit(f"--profile-steps: {len(ends)} optimizer steps ran, {first + n} needed")
    wall = (ends[first + n - 1] - ends[first - 1]) / n
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if first < r.get("step", 0) <= first + n]
    tokens = sum(r["tokens"] for r in rows) / n if len(rows) == n else float("nan")
    title = (f"train loop profile: protrans train ({args.family}/{args.preset}, micro-batch "
             f"{args.micro_batch_size}, global {args.global_batch_size}, length {args.max_length}), steps "
             f"{first + 1}-{first + n}: {wall * 1e3:.1f} ms wall per step, {tokens:,.0f} real tokens per step "
             f"({tokens / wall:,.0f} tokens/s under the profiler)")
    report_profile(prof.key_averages(), wall, n, gpu, title, "train loop profile", args.profile_out)


def _logged_rate(metrics: Path, warmup: int) -> tuple[int, int, float | None]:
    """(steps logged, steps past the warm-up, real tokens/s over those: None before any) from
    a protrans run's metrics.jsonl."""
    from protrans_cli.training.metrics import read_metrics

    rows = [r for r in read_metrics(metrics) if "tokens_per_s" in r]
    timed = rows[warmup:]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    return len(rows), len(timed), (sum(r["tokens"] for r in timed) / seconds if seconds else None)


def _report_later(args, bases: list, tmp: Path) -> None:
    """After --report-after seconds, print the figures measured so far: the baseline's runs and
    the steps protrans has logged past the warm-up (metrics.jsonl of its runs). A step limit that
    cuts the run (a compilation that takes long) then still leaves numbers in the log."""
    import threading

    def report():
        lines = [f"partial report after {args.report_after:.0f} s:"]
        lines += [f"  baseline run {i + 1}: {b['tokens_per_s']:.0f} tokens/s" for i, b in enumerate(bases)]
        for metrics in sorted(tmp.glob("run*/metrics.jsonl")):
            try:
                logged, timed, rate = _logged_rate(metrics, args.warmup)
            except Exception as exc:  # noqa: BLE001 - a report, not the benchmark
                lines.append(f"  {metrics.parent.name}: unreadable ({exc})")
                continue
            shown = "no timed step yet" if rate is None else f"{rate:.0f} tokens/s"
            lines.append(f"  protrans {metrics.parent.name}: {logged} steps logged, {timed} past the warm-up: {shown}")
        if len(lines) == 1 + len(bases):
            lines.append("  protrans: no step logged yet")
        print("\n".join(lines), flush=True)

    timer = threading.Timer(args.report_after, report)
    timer.daemon = True
    timer.start()


def _protrans_padding(args, corpus: Path, cfg) -> float:
    """Share of padding in the micro-batches protrans forms for the same steps."""
    from protrans_cli.models import get_family
    from protrans_cli.training.data import CorpusStream, TokenLayout

    family = get_family(args.family)
    layout = TokenLayout.from_tokenizer(family.build_tokenizer(), family.prepare)
    stream = CorpusStream([str(corpus)], layout, max_length=args.max_length,
                          global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
                          seed=args.seed, **cfg.stream_sizing(cfg.resolved_phases()[0]))
    real = padded = 0
    shape = cfg.packed_shape(cfg.resolved_phases()[0], layout.num_special)
    for (_, sb) in zip(range(args.num_steps), stream):
        for mb in sb.micro_batches:
            lengths = [len(s.residues) + layout.num_special for s in mb]
            real += sum(lengths)
            if shape is not None:  # --static-shapes: every row the phase's one width
                padded += shape[0]
            elif args.packing:  # one row, its end rounded up
                padded += -(-sum(lengths) // args.pad_multiple) * args.pad_multiple
            else:
                padded += -(-max(lengths) // args.pad_multiple) * args.pad_multiple * len(lengths)
    return 1 - real / padded


def _attention_length(args, corpus: Path) -> float:
    """sum(L^2) / sum(L) over the proteins of the run's steps (special tokens included, as
    cropped): the length that attention's model FLOPs per real token follow. Charged at
    max_length, every token paid for a 512-long attention, most proteins being shorter."""
    from protrans_cli.models import get_family
    from protrans_cli.training.data import CorpusStream, TokenLayout

    family = get_family(args.family)
    layout = TokenLayout.from_tokenizer(family.build_tokenizer(), family.prepare)
    stream = CorpusStream([str(corpus)], layout, max_length=args.max_length,
                          global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
                          seed=args.seed)
    squares = tokens = 0
    for (_, sb) in zip(range(args.num_steps), stream):
        for mb in sb.micro_batches:
            for sample in mb:
                n = len(sample.residues) + layout.num_special
                squares, tokens = squares + n * n, tokens + n
    return squares / max(tokens, 1)


def bench_data(args, corpus: Path) -> None:
    """--data-only: the host's side of a step alone, no model. Milliseconds per step batch
    (global batch, tokenized, masked and collated into micro-batches) of the baseline's path
    (tokenizer + DataCollatorForLanguageModeling) and of protrans's (CorpusStream and the
    objective's collate), same proteins, alternating, best of --repeats. With --num-workers 0
    (train's default) a GPU waits this long every step for its next batch."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    from protrans_cli.models import get_family
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.data import CorpusStream, TokenLayout, iter_proteins
    from protrans_cli.training.objectives import make_objective

    family = get_family(args.family)
    tokenizer = family.build_tokenizer()
    layout = TokenLayout.from_tokenizer(tokenizer, family.prepare)
    cfg = TrainConfig(family=args.family, preset=args.preset, corpus=[str(corpus)], max_length=args.max_length,
                      global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
                      seed=args.seed, token_micro_batches=args.token_micro_batches, packing=args.packing,
                      pad_multiple=args.pad_multiple)
    objective = make_objective(family.objective, layout, cfg)
    if args.packing:  # (as train's _use_packing sets it: rows of several proteins, positions from each start)
        objective.packed_position_offset = family.packed_position_offset(
            family.build_config(args.preset, tokenizer))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    texts = [family.prepare(t) for _, _, t in iter_proteins([corpus])]
    accum = args.global_batch_size // args.micro_batch_size
    steps = args.num_steps

    def baseline() -> tuple[float, int]:
        torch.manual_seed(args.seed)
        batches = _baseline_batches(args, texts, tokenizer, collator)
        t0, real = time.perf_counter(), 0
        for _ in range(steps * accum):
            real += int(next(batches)["attention_mask"].sum())
        return time.perf_counter() - t0, real

    def protrans() -> tuple[float, int]:
        stream = iter(CorpusStream([str(corpus)], layout, max_length=args.max_length,
                                   global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
                                   seed=args.seed, collate=objective.collate,
                                   **cfg.stream_sizing(cfg.resolved_phases()[0])))
        next(stream)  # (the first buffer's read and sort, once per run, out of the timing)
        t0, real = time.perf_counter(), 0
        for _ in range(steps):
            real += sum(int((b["input_ids"] != layout.pad_id).sum()) for b in next(stream).micro_batches)
        return time.perf_counter() - t0, real

    best = {"baseline": (float("inf"), 0), "protrans": (float("inf"), 0)}
    for _ in range(args.repeats):
        for name, fn in (("baseline", baseline), ("protrans", protrans)):
            best[name] = min(best[name], fn())
    print(f"{args.family}/{args.preset} data only: length {args.max_length}, global batch {args.global_batch_size}, "
          f"micro-batch {args.micro_batch_size}, {steps} steps, one process, {args.threads} thread(s)")
    for name, (seconds, real) in best.items():
        print(f"{name:9s} {seconds / steps * 1e3:7.1f} ms per step batch, {real / seconds:10.0f} real tokens/s")
    ratio = best["baseline"][0] / best["protrans"][0]
    print(f"speed-up  {ratio:.2f}x (milliseconds per step batch, baseline / protrans)")
    if args.json:
        Path(args.json).write_text(json.dumps({name: {"ms_per_step": seconds / steps * 1e3,
                                                      "tokens_per_s": real / seconds}
                                               for name, (seconds, real) in best.items()}, indent=1) + "\n")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="bert")
    parser.add_argument("--preset", default=None, help="default: small on CPU, prot_bert with --gpu")
    parser.add_argument("--max-length", type=int, default=None, help="default: 256 on CPU, 512 with --gpu")
    parser.add_argument("--global-batch-size", type=int, default=None)
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--num-proteins", type=int, default=4000)
    parser.add_argument("--fasta", type=Path, default=ECOLI, help="proteins to train on (default: the E. coli "
                        "proteome in ../shared/data; random proteins when absent)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--compile", action="store_const", const=True, default=None,
                        help="protrans with --compile (torch.compile, dynamic shapes; train's default for this "
                             "model on a CUDA GPU); raise --warmup to leave the compilations out of the timing")
    parser.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                        help="protrans with --no-compile (default: train's own choice)")
    parser.add_argument("--pad-multiple", type=int, default=8,
                        help="protrans train --pad-multiple (micro-batch lengths rounded up to a multiple)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="protrans train --activation-checkpointing (what recomputing the blocks costs)")
    parser.add_argument("--token-micro-batches", action="store_true",
                        help="protrans train --token-micro-batches (micro-batches cut by padded tokens)")
    parser.add_argument("--packing", action="store_true",
                        help="protrans train --packing (one row per micro-batch; varlen attention on a GPU)")
    parser.add_argument("--static-shapes", action="store_true",
                        help="protrans train --static-shapes (with --packing: one packed shape per phase; "
                             "variant word 'static')")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="protrans train --compile-mode (reduce-overhead: CUDA graphs; variant word "
                             "'cudagraphs')")
    parser.add_argument("--sdpa-kernels", default="auto", choices=("auto", "torch"),
                        help="protrans train --sdpa-kernels (the baseline keeps PyTorch's choice)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="protrans train --num-workers (data-loader workers; variant word 'workers': 2)")
    parser.add_argument("--data-only", action="store_true",
                        help="time the host's data path alone (no model): ms per step batch of the baseline's "
                             "tokenizer + collator and of protrans's stream, as --gpu sizes them")
    parser.add_argument("--variants", default=None,
                        help="comma-separated protrans settings timed against the same baseline runs, each a "
                             f"'+'-joined set of {', '.join(VARIANT_FLAGS)} (e.g. plain,tokens+packing); "
                             "default: one run with the flags above")
    parser.add_argument("--profile-steps", type=int, default=0, metavar="N",
                        help="instead of the comparison: profile N steps of protrans's own loop after --warmup "
                             "steps (device busy against wall time, kernel launches, top kernels); with "
                             "--variants, the first variant's settings")
    parser.add_argument("--profile-out", type=Path, default=None,
                        help="with --profile-steps: also write the profile's table to this file")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--report-after", type=float, default=None, metavar="SECONDS",
                        help="print what has been measured so far after this many seconds (a run cut by a "
                             "time limit, e.g. one still compiling, then leaves its figures)")
    args = parser.parse_args(argv)
    if args.fasta != ECOLI and not args.fasta.is_file():  # (it measured random proteins, exit 0)
        parser.error(f"--fasta {args.fasta}: no such file")
    import torch

    gpu = args.gpu and torch.cuda.is_available()
    if args.gpu and not gpu:  # (it measured the CPU instead, and said so on a line easy to miss)
        parser.error("--gpu: no CUDA device (torch.cuda.is_available() is False)")
    sized = gpu or args.data_only  # (--data-only: the host's part of the GPU's steps)
    args.preset = args.preset or ("prot_bert" if sized else "small")
    args.max_length = args.max_length or (512 if sized else 256)
    args.global_batch_size = args.global_batch_size or (64 if sized else 32)
    args.micro_batch_size = args.micro_batch_size or (32 if sized else 8)
    args.num_steps = args.num_steps or (30 if sized else 12)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if gpu else "cpu")
    if args.data_only:
        with tempfile.TemporaryDirectory() as tmp:
            corpus, source = write_corpus(Path(tmp), args.num_proteins, args.seed, args.fasta)
            print(f"data: {source}")
            bench_data(args, corpus)
        return 0

    from protrans_cli.models import get_family

    family = get_family(args.family)
    config = family.build_config(args.preset, family.build_tokenizer())
    with torch.device("meta"):
        model = family.pretraining_model(config)
    embed_params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_embed = sum(p.numel() for p in model.parameters()) - embed_params

    variants = parse_variants(args.variants)
    # Run directories in memory where there is /dev/shm: each run ends by writing its checkpoint
    # (a ProtBert-sized one with Adam state: ~6.8 GB) and model, which a VM's disk makes slow;
    # each is removed once measured.
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        corpus, source = write_corpus(Path(tmp), args.num_proteins, args.seed, args.fasta)
        attention_length = _attention_length(args, corpus)
        if args.profile_steps:
            name, flags = variants[0]
            run_args = argparse.Namespace(**{**vars(args), **flags,
                                             "num_steps": args.warmup + 1 + args.profile_steps})
            print(f"profiling {name}: {run_args.num_steps} steps, the last {args.profile_steps}", flush=True)
            profile_protrans(run_args, corpus, Path(tmp) / "profiled", gpu)
            return 0
        # Alternate baseline and variants, and keep each one's best run: a shared machine's load varies.
        bases, runs = [], {name: [] for name, _ in variants}
        if args.report_after:
            _report_later(args, bases, Path(tmp))
        for r in range(args.repeats):
            bases.append(bench_baseline(args, corpus, device))
            print(f"baseline run {r + 1}: {bases[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
            for v, (name, flags) in enumerate(variants):
                run_args = argparse.Namespace(**{**vars(args), **flags})
                run_dir = Path(tmp) / f"run{r}_{v}"
                try:
                    runs[name].append(bench_protrans(run_args, corpus, run_dir))
                except Exception as exc:  # noqa: BLE001 - one setting failing must not cost the others
                    if not args.variants:
                        raise
                    from protrans_cli.errors import described

                    print(f"{name} run {r + 1}: failed: {described(exc)[:300]}", flush=True)
                    continue
                finally:
                    shutil.rmtree(run_dir, ignore_errors=True)
                if args.variants:  # each as it ends: a step limit that cuts the rest keeps it
                    rate = runs[name][-1]["tokens_per_s"]
                    print(f"{name} run {r + 1}: {rate:.0f} tokens/s, {rate / bases[-1]['tokens_per_s']:.2f}x "
                          "that run's baseline", flush=True)
        base = max(bases, key=lambda x: x["tokens_per_s"])
        base["all_tokens_per_s"] = [round(x["tokens_per_s"], 1) for x in bases]
        best = {}
        for name, done in runs.items():
            if done:  # (a variant whose every run failed is left out)
                best[name] = max(done, key=lambda x: x["tokens_per_s"])
                best[name]["all_tokens_per_s"] = [round(x["tokens_per_s"], 1) for x in done]
    if not best:
        raise SystemExit("every protrans run failed")
    first = next(name for name, _ in variants if name in best)
    result = {"device": torch.cuda.get_device_name() if gpu else f"CPU, {args.threads} thread(s)",
              "model": f"{args.family}/{args.preset}", "non_embedding_params": non_embed,
              "max_length": args.max_length, "global_batch_size": args.global_batch_size,
              "micro_batch_size": args.micro_batch_size, "steps_timed": args.num_steps - args.warmup,
              "data": source, "baseline": base, "protrans": best[first],
              "speedup": best[first]["tokens_per_s"] / base["tokens_per_s"]}
    shown = {"baseline": base, **({"protrans": best[first]} if not args.variants else best)}
    if gpu:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        fpt = flops_per_token(config, non_embed, attention_length)
        for r in shown.values():
            r["mfu"] = r["tokens_per_s"] * fpt / (peak * 1e12) if peak else None
    if args.variants:  # (after the MFU: the JSON's variants were copied without it)
        result["variants"] = {name: {**r, "speedup": r["tokens_per_s"] / base["tokens_per_s"]}
                              for name, r in best.items()}
    print(f"{result['model']} ({non_embed / 1e6:.1f}M non-embedding parameters), length {args.max_length}, "
          f"global batch {args.global_batch_size}, micro-batch {args.micro_batch_size}, {result['device']}")
    print(f"data: {source}" + (f"; MFU's attention FLOPs at the proteins' mean attention length, {attention_length:.0f} "
                               "tokens" if gpu else ""))
    width = max(9, *(len(k) for k in shown))
    for key, r in shown.items():
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        all_runs = ", ".join(f"{x:.0f}" for x in r["all_tokens_per_s"])
        ratio = "" if key == "baseline" else f", {r['tokens_per_s'] / base['tokens_per_s']:.2f}x"
        print(f"{key:{width}s} {r['tokens_per_s']:10.0f} tokens/s (best of {all_runs}), "
              f"padding {r['padding']:.1%}{mfu}{ratio}")
    print(f"speed-up  {result['speedup']:.2f}x" + (f" ({first})" if args.variants else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
