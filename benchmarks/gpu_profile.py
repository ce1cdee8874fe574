"""Where the time of an embedding or training batch goes: one short run that splits it up.

The first H200 figures (docs/benchmarks.md, "GPU") were 5-25x under what the model FLOPs allow,
with a cost that grew with residues but not with model size or batch budget. This script
measures, on the same batches:

  embed   per-residue microseconds of each phase of `TransformerEmbedder.embed_batch`: encode
          (host), host-to-device copy, forward pass (device events), device-to-host copy; then
          the forward pass with each attention-kernel choice (PyTorch's default, no cuDNN as
          `--sdpa-kernels auto`, memory-efficient only, math only) over shapes it has not seen
          and then over the same shapes again (what a new shape costs: cuDNN attention builds a
          plan per shape), and the kernel PyTorch picks for such a batch
  train   the same masked-LM training step (forward + backward + AdamW) on micro-batches of one
          fixed length against micro-batches whose length changes every step (as length
          buckets make them), under each attention-kernel choice
  profile torch.profiler's top operations by host time and by device time over a few batches

    python benchmarks/gpu_profile.py --fasta proteome.fasta             # ProtBert-sized, cuda
    python benchmarks/gpu_profile.py --device cpu --preset tiny --num-batches 4   # plumbing check
    # the T5 forward pass through FlexAttention, one packed row per batch (embed --attention flex --packing)
    python benchmarks/gpu_profile.py --family t5 --preset prot_t5_xl --skip-train --attention flex --packing
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from embed_bench import _protrans_batches, _sync  # noqa: E402  (helpers shared by the benchmarks)


def kernel_choices(device: str):
    """(label, context factory) for each attention-kernel choice to compare."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from protrans_cli.attention import sdpa_kernels

    choices = [("default", contextlib.nullcontext)]
    if device.startswith("cuda"):
        choices += [
            ("no-cudnn", lambda: sdpa_kernels(device, "auto")),  # protrans's --sdpa-kernels auto
            ("efficient", lambda: sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])),
            ("math", lambda: sdpa_kernel([SDPBackend.MATH])),
        ]
    return choices


def embed_phases(args, batches, embedder) -> None:
    import torch

    fam, tok, model, device = embedder.family_impl, embedder.tokenizer, embedder.model, args.device
    residues = sum(len(s) for b in batches for s in b)
    totals = {"encode": 0.0, "to device": 0.0, "forward": 0.0, "to host": 0.0}
    before = _allocator_counts(device)
    for seqs in batches:
        t0 = time.perf_counter()
        inputs, mask = fam.encode(tok, list(seqs))
        t1 = time.perf_counter()
        inputs = {k: v.to(device) for k, v in inputs.items()}
        mask = mask.to(device)
        _sync(device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            (state,) = fam.hidden_states(model, inputs, [-1])
            _sync(device)
            t3 = time.perf_counter()
            rows = state[mask].float().cpu()
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
        del rows
    whole = sum(totals.values())
    print(f"embed phases over {len(batches)} batches, {residues} residues: "
          f"{residues / whole:,.0f} residues/s in all")
    for key, dt in totals.items():
        print(f"  {key:10s} {dt * 1e6 / residues:8.2f} us/residue  {dt / whole:6.1%}")
    print("  (each batch shape above was new, under PyTorch's default kernel choice)")
    after = _allocator_counts(device)
    if after:
        # cudaMalloc/cudaFree are slow in some virtual machines: new batch shapes that the caching
        # allocator cannot serve from its pool would show here as device allocations per batch.
        print("  caching allocator over these batches: " + ", ".join(
            f"{k} +{after[k] - before.get(k, 0)}" for k in after))

    for c, (label, ctx) in enumerate(kernel_choices(device)):
        # Shapes no earlier pass has seen (each protein 2c+1 residues shorter), then the same
        # shapes again: the difference is what a new batch shape costs under this choice (cuDNN
        # attention builds a plan per shape; embed meets a new shape almost every batch).
        cut = [[s[:max(1, len(s) - 2 * c - 1)] for s in seqs] for seqs in batches]
        count = sum(len(s) for seqs in cut for s in seqs)
        fresh = [{k: v.to(device) for k, v in fam.encode(tok, seqs)[0].items()} for seqs in cut]
        try:
            with torch.inference_mode(), ctx():
                times = []
                for inputs in (fresh, fresh):
                    _sync(device)
                    start = time.perf_counter()
                    for inp in inputs:
                        fam.hidden_states(model, inp, [-1])
                    _sync(device)
                    times.append(time.perf_counter() - start)
            new, again = times
            print(f"  forward, attention {label:10s} new shapes {new * 1e6 / count:8.2f} us/residue, "
                  f"same shapes again {again * 1e6 / count:8.2f} ({count / again:,.0f} residues/s); "
                  f"{(new - again) / len(fresh) * 1e3:.1f} ms per new shape")
        except RuntimeError as exc:
            print(f"  forward, attention {label:10s} failed: {str(exc).splitlines()[0]}")
    # The same batches with lengths rounded up to a multiple of 8 (what embed does on a GPU):
    # whether token counts that are not multiples of 8 cost the matrix products anything. Every
    # shape is run once untimed first: multiple 1 met only shapes seen above, 8 and 64 new ones,
    # whose per-shape set-up (cuDNN's plans under the default choice) was charged to padding.
    for multiple in (1, 8, 64):
        padded = [fam.encode(tok, list(seqs), multiple) for seqs in batches]
        padded = [{k: v.to(device) for k, v in inp.items()} for inp, _ in padded]
        with torch.inference_mode():
            for inp in padded:
                fam.hidden_states(model, inp, [-1])
            _sync(device)
            start = time.perf_counter()
            for inp in padded:
                fam.hidden_states(model, inp, [-1])
            _sync(device)
        dt = time.perf_counter() - start
        print(f"  forward again, lengths to a multiple of {multiple:2d}: {dt * 1e6 / residues:8.2f} us/residue "
              f"({residues / dt:,.0f} residues/s)")
    if device.startswith("cuda"):
        cfg = model.config
        heads = getattr(cfg, "num_attention_heads", None) or cfg.num_heads
        head_dim = getattr(cfg, "d_kv", None) or embedder.embedding_dim // heads  # T5: 128, not 1024 / 32
        q = torch.randn(13, heads, 301, head_dim, device=device, dtype=torch.bfloat16)
        mask4 = torch.ones(13, 1, 301, 301, device=device, dtype=torch.bool)
        bias = torch.randn(13, heads, 301, 301, device=device, dtype=torch.bfloat16)
        names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
        from protrans_cli.attention import sdpa_kernels

        # T5's relative-position bias reaches SDPA as a dense additive float mask
        for what, mask in (("without a mask", None), ("with a padding mask", mask4),
                           ("with an additive bf16 bias (T5's position bias)", bias)):
            for policy in ("torch", "auto"):
                with sdpa_kernels(device, policy):
                    choice = torch._fused_sdp_choice(q, q, q, attn_mask=mask)
                print(f"  {policy:5s} kernel for a (13, {heads}, 301, {head_dim}) bf16 attention {what}: "
                      f"{names.get(choice, choice)}")


def _allocator_counts(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    stats = torch.cuda.memory_stats()
    keys = ("segment.all.allocated", "segment.all.freed", "num_alloc_retries", "num_device_alloc",
            "num_device_free")
    return {k: int(stats[k]) for k in keys if k in stats}


def train_shapes(args, records) -> None:
    """Training steps on one fixed length against a new length every step, with and without a
    padding mask, repeated, sized by tokens, and packed (see the modes below)."""
    import torch

    from protrans_cli.models import get_family, packing

    family = get_family(args.family)
    tokenizer = family.build_tokenizer()
    config = family.build_config(args.preset, tokenizer)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = family.pretraining_model(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if args.device.startswith("cuda") else {}))
    vocab = len(tokenizer)
    batch = args.train_micro_batch
    lengths_varying = [64 + 8 * ((i * 37) % 57) for i in range(args.train_steps)]  # 64..512, all different
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda")
                else contextlib.nullcontext())

    def step(length: int, batch: int = batch, form: str = "plain") -> int:
        """One step over `batch` rows of `length` tokens. form: plain (no padding: transformers
        drops an all-ones mask, so Flash may run), masked (every other row ends in 10% padding:
        a real mask, as length buckets leave, so attention takes a kernel that reads one), packed
        (the rows back to back in one row, varlen attention: models/packing.py)."""
        ids = torch.randint(5, vocab, (batch, length), device=args.device)
        labels = torch.where(torch.rand(batch, length, device=args.device) < 0.15, ids, -100)
        mask = torch.ones_like(ids)
        if form == "masked":
            mask[::2, length - max(1, length // 10):] = 0
            labels = labels.masked_fill(mask == 0, -100)
        with autocast:
            if form == "packed":
                cu = torch.arange(0, batch * length + 1, length, dtype=torch.int32, device=args.device)
                positions = torch.arange(length, device=args.device).repeat(batch)[None]
                loss = model(input_ids=ids.reshape(1, -1), labels=labels.reshape(1, -1),
                             **packing.model_kwargs(cu, length, positions)).loss
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * length

    # Two more ways under protrans's kernel choice, to tell apart what a new length costs:
    #   varying again  the same lengths once more (every shape seen): what is left is the cost
    #                  of fewer tokens per pass, not of new shapes
    #   tokens         a new length every step with about micro-batch x --train-length tokens
    #                  (proteins = that // length): micro-batches sized by tokens, not proteins
    def per_tokens(length: int) -> int:
        return max(1, batch * args.train_length // length)

    for c, (label, ctx) in enumerate(kernel_choices(args.device)):
        fixed = f"fixed {args.train_length}"
        # Lengths no earlier kernel choice has met (each 2c+1 tokens longer): with the same list
        # for every choice, only the first met new shapes, and "a new length every step"
        # compared cuDNN's fresh plans with shapes the others had seen.
        fresh = [n + 2 * c + 1 for n in lengths_varying]
        modes = [(fixed, [args.train_length] * args.train_steps, None), ("varying", fresh, None)]
        # the same with a real padding mask (as length buckets leave), over lengths not met before
        modes.append(("masked", [64 + 8 * ((i * 43 + 5) % 57) + 2 * c + 1 for i in range(args.train_steps)], None))
        if label == ("no-cudnn" if args.device.startswith("cuda") else "default"):
            modes += [("varying again", fresh, None),
                      ("tokens", [64 + 8 * ((i * 41 + 3) % 57) + 2 * c + 1 for i in range(args.train_steps)],
                       per_tokens)]
        for name, lengths, sizing in modes:
            _time_train_mode(args, label, ctx, name, lengths, sizing or (lambda n: batch), step,
                             "masked" if name == "masked" else "plain", warm=name != "varying again")
    # Where a fixed-length step's time goes (the baseline's shape: length 512, no new shapes),
    # under protrans's kernel choice: device busy time against wall time, kernel launches, the
    # top kernels. Busy well under wall means the host's launches bound the step (compile,
    # larger micro-batches pay); busy near wall means the kernels themselves do.
    label, ctx = kernel_choices(args.device)[1 if args.device.startswith("cuda") else 0]
    with ctx():
        profile_failed = _run_parts([("train step profile", train_step_profile,
                                      (args, lambda: step(args.train_length), args.train_length * batch))])
    # Last, as it switches the model's attention for good: the steps of "varying" packed into one
    # row each (varlen attention on CUDA; the row lengths are new shapes, as "varying"'s were),
    # under protrans's kernel choice as `train --packing` runs them: from PyTorch 2.14 varlen_attn
    # left to itself runs cuDNN's ragged attention on Hopper and Blackwell, not Flash.
    if family.packable:
        packing.use_packed_attention(model)
        _time_train_mode(args, "packed", ctx, "varying", lengths_varying, lambda n: batch,
                         step, "packed", warm=True)
    if profile_failed:  # (after the packed figure: the exit status says it, as for the other parts)
        raise RuntimeError("the train step profile failed (its traceback is above)")


def train_step_profile(args, one_step, tokens_per_step: int, steps: int = 3) -> None:
    """torch.profiler over `steps` training steps (after one untimed): per step the wall time, the
    device's summed kernel time and its share of the wall, kernel launches, and the kernels (or
    on the CPU the operations) that take the most time. Printed and, with --profile-out, written
    beside the embedding tables (suffix .train.txt)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = args.device.startswith("cuda")
    one_step()
    _sync(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        _sync(args.device)
        wall = (time.perf_counter() - start) / steps
    # (wall time under the profiler: its own bookkeeping slows the host a little)
    title = (f"train step profile: {args.train_micro_batch} x {args.train_length} tokens, {steps} steps: "
             f"{wall * 1e3:.1f} ms wall per step ({tokens_per_step / wall:,.0f} tokens/s under the profiler)")
    report_profile(prof.key_averages(), wall, steps, cuda, title, "train step profile",
                   args.profile_out.with_suffix(".train.txt") if args.profile_out else None)


def report_profile(averages, wall: float, steps: int, cuda: bool, title: str, label: str,
                   out: Path | None) -> None:
    """Print (and write to `out`) a profile of `steps` steps of `wall` seconds each: on a GPU the
    device's summed kernel time per step and its share of the wall, kernel launches per step,
    and the kernels that take the most time (on the CPU the operations)."""
    from torch.autograd import DeviceType

    lines = [title]
    if cuda:
        # (not the GPU-side user annotations, e.g. Optimizer.step's range: they span kernels counted
        # already, and "device busy" overstated the step's kernel time)
        kernels = [e for e in averages
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6 / steps  # us -> s
        launches = sum(e.count for e in averages if "LaunchKernel" in e.key or "cudaLaunch" in e.key) / steps
        lines.append(f"{label}: device busy {busy * 1e3:.1f} ms per step ({100 * busy / wall:.0f}% of "
                     f"wall), {launches:.0f} kernel launches per step ({wall / max(launches, 1) * 1e6:.1f} us of "
                     f"wall each)")
        table = averages.table(sort_by="self_device_time_total", row_limit=20)
    else:
        table = averages.table(sort_by="self_cpu_time_total", row_limit=20)
    if out:
        out.write_text("\n".join(lines) + "\n" + table)
        lines.append(f"{label}: tables written to {out}")
    print("\n".join(lines))
    print("\n".join(table.splitlines()[:26]))


def _time_train_mode(args, label, ctx, name, lengths, size, step, form, warm) -> None:
    """Times `step` over `lengths` (one warm-up step first unless `warm` is False) and prints it."""
    try:
        with ctx():
            if warm:
                step(lengths[0], size(lengths[0]), form)
            _sync(args.device)
            start = time.perf_counter()
            tokens = sum(step(n, size(n), form) for n in lengths)
            _sync(args.device)
        dt = time.perf_counter() - start
        print(f"train {label:10s} {name:13s} {tokens / dt:10,.0f} tokens/s ({dt / len(lengths) * 1e3:.0f} ms/step)")
    except RuntimeError as exc:
        print(f"train {label:10s} {name:13s} failed: {str(exc).splitlines()[0]}")


def profile(args, batches, embedder, out: Path | None) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with torch_profile(activities=activities) as prof:
        for seqs in batches[:5]:
            embedder.embed_batch(list(seqs))
        _sync(args.device)
    table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    text = "top operations by host time (5 embedding batches)\n" + table_cpu
    if args.device.startswith("cuda"):
        text += "\ntop operations by device time\n" + prof.key_averages().table(sort_by="self_device_time_total",
                                                                               row_limit=15)
    if out:
        out.write_text(text)
        print(f"profile tables written to {out}")
    print("\n".join(text.splitlines()[:25]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=str(ROOT.parent / "shared" / "data" / "proteomes" / "UP000000625_83333.fasta"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--family", default="bert")
    p.add_argument("--preset", default="prot_bert")
    p.add_argument("--num-batches", type=int, default=40, help="embedding batches of --max-tokens padded tokens")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--train-steps", type=int, default=12)
    p.add_argument("--train-micro-batch", type=int, default=16)
    p.add_argument("--train-length", type=int, default=512)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-embed", action="store_true", help="only the training part")
    p.add_argument("--profile-out", type=Path, default=None)
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "flex"),
                   help="the embedder's --attention (flex: t5 family; the kernel choices below then concern "
                        "nothing but the model's other calls)")
    p.add_argument("--packing", action="store_true", help="the embedder's --packing")
    args = p.parse_args(argv)

    import torch

    from embed_bench import build_loaded, load_proteins
    from protrans_cli.embed import TransformerEmbedder

    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    records = load_proteins(args.fasta, None, 0, None)
    loaded = embedder = None
    if not args.skip_embed:  # (the training part builds models of its own: seconds saved on a short loan)
        loaded = build_loaded(args.family, args.preset, args.device, dtype)
        embedder = TransformerEmbedder(loaded, (-1,), args.device, dtype, attention=args.attention,
                                       packed=args.packing)
        if embedder.max_residues:
            records = [r for r in records if len(r[1]) <= embedder.max_residues]
    print(f"{args.family}/{args.preset} on {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), "
          f"{dtype}, attention {args.attention}{', packed' if args.packing else ''}; torch {torch.__version__}")
    settings = {name: os.environ.get(name) for name in ("PYTORCH_TUNABLEOP_ENABLED", "PYTORCH_CUDA_ALLOC_CONF",
                                                         "TORCH_CUDNN_SDPA_DEPRIORITIZED", "CUDA_LAUNCH_BLOCKING",
                                                         "OMP_NUM_THREADS")}
    settings["cudnn.benchmark"] = torch.backends.cudnn.benchmark
    settings["threads"] = torch.get_num_threads()
    if args.device.startswith("cuda"):
        settings["tunable"] = torch.cuda.tunable.is_enabled()
        settings["cudnn"] = torch.backends.cudnn.version()
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))

    failed = 0
    if not args.skip_embed:
        batches = _protrans_batches(records, args.max_tokens, 100, embedder.special_tokens)
        # Evenly spread over the length range, as a proteome run meets them.
        step = max(1, len(batches) // args.num_batches)
        batches = batches[::step][:args.num_batches]
        embedder.embed_batch(batches[-1])  # warm-up
        # Each part reports on its own: one that fails must not cost the others' figures.
        failed += _run_parts([("embed phases", embed_phases, (args, batches, embedder)),
                              ("profile", profile, (args, batches, embedder, args.profile_out))])
    del embedder, loaded  # the training part needs the memory
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.skip_train:
        failed += _run_parts([("train shapes", train_shapes, (args, records))])
    return 1 if failed else 0


def _run_parts(parts) -> int:
    import traceback

    failed = 0
    for name, part, part_args in parts:
        try:
            part(*part_args)
        except Exception:  # noqa: BLE001 - reported, and the next part runs
            failed += 1
            print(f"{name} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
