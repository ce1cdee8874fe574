"""Benchmark of `protrans embed` against two baselines run in the same process on the same proteins.

Strategies, all with the same randomly initialised model (the shapes are what matter):
  naive      one protein per forward pass
  prottrans  the published ProtTrans script's strategy: proteins sorted by length (longest
             first), a batch closed as the script closes it (its residues plus the newest
             protein's length again reach 4000, or 100 proteins), padded to its longest protein
             (no rounding up), embeddings kept in memory
  prottrans_auto  the same batches with protrans's attention-kernel policy: what batching alone
             gains, apart from the kernel choice (on Hopper PyTorch's choice, cuDNN attention,
             builds a plan for every new batch shape, which the baselines pay and protrans not)
  script     the same batches the way the published script handles them: tokenizer on spaced
             text, last hidden state, each protein's rows copied to the host on their own
  protrans   `protrans_cli.embed.embed` itself: padded-token budget, dedup, HDF5 streaming writes;
             with --max-tokens A,B,... one run per budget ("default" is embed's own choice for
             the device, which on a GPU depends on the memory left after loading the model)
  packed     protrans with --packing (one row per batch, varlen attention; packable families)
  compiled   protrans with --compile (torch.compile, dynamic shapes); the compilation is timed
             apart, on warm-up batches of three shapes, and not counted in residues/s
  flex       protrans with --attention flex (T5 family: FlexAttention, the relative-position bias
             as a score_mod in one compiled kernel on CUDA), on a copy of the model (the switch
             is in place); its rows are checked against the default attention's on a padded
             batch first, and its compilation is timed apart on warm-up batches as `compiled`'s
  flex_packed  --attention flex --packing (T5 family): each batch one row, attention kept inside
             each protein by a block mask of the row's segments; on the same copy as flex

The baselines run with PyTorch's own choice of attention kernel (what a script gets); protrans
runs with its --sdpa-kernels (default auto: no cuDNN attention on a GPU; see
protrans_cli/attention.py); `--sdpa-kernels torch` gives protrans PyTorch's choice as well.

Residues/s are printed with ratios against both baselines; on a GPU also the fraction of the
device's dense bf16 peak reached (model FLOPs: 2 x parameters x residues + attention).

    # CPU (a small model on a sample of the E. coli proteome)
    python benchmarks/embed_bench.py --family bert --preset small --num-proteins 100 --repeats 3 --threads 1
    # GPU: ProtT5-XL-sized T5 encoder and ProtBert-sized BERT, whole proteome, bf16
    python benchmarks/embed_bench.py --gpu
    # what each strategy costs around the model (zeros instead of the forward pass), ProtBert's width
    python benchmarks/embed_bench.py --host-only --family bert --preset prot_bert --tmpdir /dev/shm
    # GPU: ProtT5-XL-sized T5 through FlexAttention against ProtTrans' strategy and protrans
    python benchmarks/embed_bench.py --device cuda --family t5 --preset prot_t5_xl --strategies prottrans,protrans,flex
    # GPU, protrans at ProtTrans' budget and at embed's default budget
    python benchmarks/embed_bench.py --gpu --max-tokens 4000,default
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ECOLI = ROOT.parent / "shared" / "data" / "proteomes" / "UP000000625_83333.fasta"
# Dense bf16 tensor-core peak (TFLOP/s) by device name fragment, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def load_proteins(fasta, num_proteins: int | None, seed: int, max_length: int | None):
    from protrans_cli.io.fasta import read_fasta
    from protrans_cli.residues import normalise

    records = [(r.id, normalise(r.sequence, rare="keep")) for r in read_fasta(fasta)]
    # protrans embeds a repeated sequence once; the baselines would compute it again. Each
    # sequence is kept once, so that every strategy is credited with the work it did.
    seen: set[str] = set()
    unique = [r for r in records if not (r[1] in seen or seen.add(r[1]))]
    if len(unique) < len(records):
        print(f"{len(records) - len(unique)} repeated sequences left out "
              f"({sum(len(s) for _, s in records) - sum(len(s) for _, s in unique):,} residues)", flush=True)
    records = unique
    if max_length:
        records = [r for r in records if len(r[1]) <= max_length]
    if num_proteins and num_proteins < len(records):
        records = random.Random(seed).sample(records, num_proteins)
    return records


def build_loaded(family_name: str, preset: str, device: str, dtype: str):
    """A random model of the preset, as LoadedModel (no file round trip for multi-GB models)."""
    import torch

    from protrans_cli.models import LoadedModel, get_family

    family = get_family(family_name)
    tokenizer = family.build_tokenizer()
    config = family.build_config(preset, tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = family.encoder_model(config).to(getattr(torch, dtype)).eval()
    return LoadedModel(name=f"random {family_name}/{preset}", path_or_hub_id="", revision=None, family=family,
                       tokenizer=tokenizer, model=model, embedding_dim=family.embedding_dim(config),
                       num_layers=family.num_layers(config))


def _skip_the_model(loaded) -> None:
    """--host-only: the encoder's forward returns zeros of its output shape at once, so a
    strategy's time is what it spends around the model (encoding, copies, means, writing)."""
    import types

    import torch

    model, width = loaded.model, loaded.embedding_dim

    def forward(*args, input_ids=None, **kwargs):
        ids = input_ids if input_ids is not None else args[0]
        hidden = torch.zeros(*ids.shape, width, device=ids.device, dtype=model.dtype)
        return types.SimpleNamespace(last_hidden_state=hidden, hidden_states=(hidden,) * (loaded.num_layers + 1))

    model.forward = forward


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_naive(embedder, records, per_protein_only=False):
    out = {}
    for ident, seq in records:
        (rows,) = embedder.embed_batch([seq], pooled=per_protein_only)  # (1, L, D) or (1, D)
        out[ident] = rows[0] if per_protein_only else (rows[0], rows[0].mean(0))
    return out


def run_prottrans(embedder, records, max_residues=4000, max_batch=100, max_seq_len=1000, per_protein_only=False):
    """The ProtTrans script's batching, re-implemented from its description. Its per-protein
    means are taken on the GPU too (the script averages there before copying), here batched."""
    out = {}
    for batch in _prottrans_batches(records, max_residues, max_batch, max_seq_len):
        arrays = embedder.embed_batch([s for _, s in batch], pooled=per_protein_only)
        for (bid, _), rows in zip(batch, arrays):
            out[bid] = rows[0] if per_protein_only else (rows[0], rows[0].mean(0))
    return out


def _prottrans_batches(records, max_residues=4000, max_batch=100, max_seq_len=1000):
    """The published script's batches: longest first; after adding a protein, the batch is
    run once `sum(its lengths) + that protein's length >= max_residues` (the script counts the
    newest protein twice), or it holds max_batch proteins, or the protein is longer than
    max_seq_len, or the input ends."""
    ordered = sorted(records, key=lambda r: len(r[1]), reverse=True)
    batch, residues = [], 0
    for i, (ident, seq) in enumerate(ordered):
        batch.append((ident, seq))
        residues += len(seq)
        if (len(batch) >= max_batch or residues + len(seq) >= max_residues or i == len(ordered) - 1
                or len(seq) > max_seq_len):
            yield batch
            batch, residues = [], 0


def _protrans_batches(records, max_tokens, max_batch_size, special):
    """The sequences of each batch `protrans embed` makes at this budget."""
    from protrans_cli.embed import _Piece, _Unit, make_batches

    pieces = [_Piece(_Unit(s, []), 0, s) for _, s in records]
    return [[p.sequence for p in b] for b in make_batches(pieces, max_tokens, max_batch_size, special)]


def padded_tokens(batches, special, multiple=1):
    """Token positions a padded forward pass computes over these batches."""
    return sum(len(b) * -(-(max(map(len, b)) + special) // multiple) * multiple for b in batches)


def run_script(embedder, records, per_protein_only=False):
    """The ProtTrans embedding script as users run it, re-implemented from its description (not
    its code): the same batches as `prottrans`, but the tokenizer called on space-separated
    text and padded to the longest, the model's last hidden state, and every protein's rows
    sliced out and copied to the host one protein at a time (`.cpu().numpy()`); the
    per-protein mean taken on the device before its copy."""
    import torch

    from protrans_cli.models.base import residue_layout

    family, tokenizer, model, device = embedder.family_impl, embedder.tokenizer, embedder.model, embedder.device
    layout = residue_layout(family, tokenizer)  # special tokens before and after the residues
    before, after = len(layout.prefix), len(layout.suffix)
    left = tokenizer.padding_side == "left"  # XLNet
    out = {}
    for batch in _prottrans_batches(records):
        enc = tokenizer([family.prepare(s) for _, s in batch], add_special_tokens=True, padding="longest")
        ids = torch.tensor(enc["input_ids"]).to(device)
        mask = torch.tensor(enc["attention_mask"]).to(device)
        with torch.no_grad():
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for i, (ident, seq) in enumerate(batch):
            start = states.shape[1] - after - len(seq) if left else before
            rows = states[i, start:start + len(seq)]
            mean = rows.float().mean(dim=0).cpu().numpy()
            out[ident] = mean if per_protein_only else (rows.float().cpu().numpy(), mean)
    return out


def run_protrans(embedder, records, tmpdir, max_tokens, max_batch_size, per_protein_only=False, expected=None):
    """`embed` over the records into a file in tmpdir (removed after). With `expected` ({id:
    the baseline's rows or mean}): the largest relative difference of the file's arrays from
    them, so that no strategy is credited with residues it embedded wrong (None without)."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.io.fasta import write_fasta
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

    fasta = Path(tmpdir) / "in.fa"
    with open(fasta, "wb") as f:
        for ident, seq in records:
            write_fasta(f, ident, seq)
    out = Path(tmpdir) / f"out{time.monotonic_ns()}.h5"
    options = EmbedOptions(model=embedder.name, max_tokens=max_tokens, max_batch_size=max_batch_size,
                           per_residue=not per_protein_only, command_line="embed_bench")
    embed(fasta, out, options, embedder=embedder)
    worst = None
    if expected:
        with EmbeddingsReader(out) as reader:
            kind = PER_PROTEIN if per_protein_only else PER_RESIDUE
            worst = 0.0
            for ident, want in expected.items():
                want = np.asarray(want if per_protein_only else want[0], dtype=np.float32)
                got = reader.get(ident, kind).astype(np.float32)
                worst = max(worst, float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)))
    out.unlink()
    return worst


def model_flops(loaded, records) -> float:
    """Forward FLOPs over the residues (special tokens and padding excluded): the useful work."""
    params = sum(p.numel() for n, p in loaded.model.named_parameters() if "embed" not in n)
    cfg = loaded.model.config
    d = loaded.embedding_dim
    inner = getattr(cfg, "num_heads", None) and cfg.num_heads * cfg.d_kv or d
    layers = loaded.num_layers
    total = 0.0
    for _, seq in records:
        n = len(seq)
        total += 2 * params * n + 4 * layers * inner * n * n  # weights + (QK^T, AV)
    return total


def peak_tflops(device_name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def _warm_up(embedder, seq: str) -> None:
    """The batches that make a compiled embedder build the graphs a run meets (batches without
    padding, with padding, of one protein), so that no compilation falls in the timed runs."""
    for count, length in ((2, 50), (3, 70), (1, 90)):
        embedder.embed_batch([seq[:length]] * count)
    embedder.embed_batch([seq[:40], seq[:60]])
    embedder.embed_batch([seq[:45], seq[:65], seq[:80]])


def _flex_warm_up(embedder, seq: str) -> None:
    """`_warm_up`, then the probe batches embed builds FlexAttention's kernel on
    (embed._FLEX_PROBES): `_warm_up`'s batches, all under 128 tokens, build no graph of several
    128-token blocks, and a padded flex run compiled it inside its first timed run."""
    from protrans_cli.embed import _FLEX_PROBES

    _warm_up(embedder, seq)
    for batch in _FLEX_PROBES:
        embedder.embed_arrays(list(batch), rows=False, means=True, check=False)


class _Later:
    """An embedder built (untimed) just before its strategy's first timed run, once."""

    def __init__(self, label: str, make):
        self.label, self.make, self.built, self.done = label, make, None, False

    def build(self):
        if not self.done:
            self.built, self.done = _unless_it_fails(self.label, self.make), True
        return self.built

    @staticmethod
    def get(embedder):
        return embedder.build() if isinstance(embedder, _Later) else embedder


def _unless_it_fails(label: str, build):
    """`build()`, or None with one line saying why: a strategy that cannot be built, warmed up or
    checked (a kernel the GPU's compiler cannot build, rows that differ) is left out, and the
    others still run (a GPU session's step has one time limit for all of them)."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - reported, and the other strategies run
        import traceback

        from protrans_cli.errors import described

        traceback.print_exc()  # the whole story in the step's log
        print(f"{label}: left out: {described(exc)[:300]}", flush=True)
        return None


def bench_one(family, preset, records, args):
    import torch

    from protrans_cli.embed import TransformerEmbedder

    loaded = build_loaded(family, preset, args.device, args.dtype)
    if args.host_only:
        _skip_the_model(loaded)
    # The baselines' embedder keeps PyTorch's kernel choice; protrans's is the same object with
    # its own --sdpa-kernels (one model in memory).
    embedder = TransformerEmbedder(loaded, (-1,), args.device, args.dtype, sdpa_kernels="torch")
    protrans_embedder = copy.copy(embedder)
    protrans_embedder.sdpa_kernels = args.sdpa_kernels
    embedder.pad_multiple = 1  # the script pads to the longest protein, not to a multiple of 8
    # the ProtTrans batches with protrans's kernel policy (strategy prottrans_auto)
    auto_embedder = copy.copy(embedder)
    auto_embedder.sdpa_kernels = args.sdpa_kernels
    # (--dtype float16: the script watches no overflow; protrans's T5 guard stays protrans's own)
    embedder._overflow_guard = auto_embedder._overflow_guard = None
    if embedder.max_residues is not None:  # the baselines cannot embed what the model cannot take
        kept = [r for r in records if len(r[1]) <= embedder.max_residues]
        if len(kept) < len(records):
            print(f"dropped {len(records) - len(kept)} proteins longer than the model's "
                  f"{embedder.max_residues} positions", flush=True)
        records = kept
    residues = sum(len(s) for _, s in records)
    nparams = sum(p.numel() for p in loaded.model.parameters())
    print(f"\n## {family}/{preset}: {nparams / 1e6:.1f}M parameters, {len(records)} proteins, {residues} residues, "
          f"{args.device} {args.dtype}, {'per-protein only' if args.per_protein else 'per-residue and per-protein'}",
          flush=True)
    embedder.embed_batch([records[0][1][:50]] * 2)  # warm-up (kernels, allocator)
    from protrans_cli.embed import default_max_tokens

    default = default_max_tokens(args.device, protrans_embedder)
    budgets = list(dict.fromkeys(default if b == "default" else int(b) for b in args.max_tokens))
    print(f"protrans budgets: {', '.join(f'{b} tokens' for b in budgets)} (embed's default here: "
          f"{default}), at most {args.max_batch_size} proteins per batch", flush=True)
    # The token work each batching computes (padding included) per residue: what batching alone
    # can change; the rest of any ratio below is the cost per token.
    # (protrans's own multiple: 8 on a GPU; the baselines' embedder was set to 1 above)
    special, multiple = embedder.special_tokens, protrans_embedder.pad_multiple
    work = {"prottrans": padded_tokens([[s for _, s in b] for b in _prottrans_batches(records)], special)}
    for budget in budgets:
        work[f"protrans@{budget}"] = padded_tokens(_protrans_batches(records, budget, args.max_batch_size, special),
                                                   special, multiple)
    print("computed tokens per residue (padding and special tokens included): "
          + ", ".join(f"{k} {v / residues:.4f}" for k, v in work.items()), flush=True)
    # Every run: the rows embed_batch gives (every strategy but script, protrans's file included,
    # is checked against them) must be those of the tokenizer and the raw model, as the
    # published script computes them: an error shared by embed_batch and embed (special tokens,
    # pooling) would otherwise pass unseen. Eight proteins: cheap beside the run.
    sample = records[:8]
    ours, theirs = run_prottrans(embedder, sample), run_script(embedder, sample)
    worst = max(float(np.linalg.norm(ours[k][0] - theirs[k][0]) / max(np.linalg.norm(ours[k][0]), 1e-12))
                for k in ours)
    if worst > 1e-2:
        raise SystemExit(f"the tokenizer and raw model's rows (the published script's) differ from embed_batch's "
                         f"(relative error {worst:.2g})")
    print(f"embed_batch's rows equal the tokenizer and raw model's on {len(sample)} proteins (relative error "
          f"{worst:.1e})", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmpdir:
        only = args.per_protein
        runs = {"naive": lambda: run_naive(embedder, records, only),
                "prottrans": lambda: run_prottrans(embedder, records, per_protein_only=only),
                "prottrans_auto": lambda: run_prottrans(auto_embedder, records, per_protein_only=only),
                "script": lambda: run_script(embedder, records, only)}
        strategies = []
        packed = None
        if "packed" in args.strategies:
            if not getattr(loaded.family, "packable", False):
                print(f"packed: the {family} family does not pack; left out", flush=True)
            else:
                # The same model; its attention now goes through models/packing.py, which hands
                # unpacked batches (every other strategy) to transformers' SDPA path unchanged.
                packed = TransformerEmbedder(loaded, (-1,), args.device, args.dtype, packed=True,
                                             sdpa_kernels=args.sdpa_kernels)
                packed.embed_batch([records[0][1][:50]] * 2)
        compiled = None
        if "compiled" in args.strategies:
            def build_compiled():
                # on a copy: --compile compiles the model's blocks in place (the other strategies run plain)
                built = TransformerEmbedder(dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)), (-1,),
                                            args.device, args.dtype, sdpa_kernels=args.sdpa_kernels, compile=True)
                start = time.perf_counter()
                _warm_up(built, records[0][1])
                _sync(args.device)
                print(f"compiled: {time.perf_counter() - start:.1f} s to compile (warm-up, not timed below)",
                      flush=True)
                return built

            compiled = _unless_it_fails("compiled", build_compiled)
        flex = flex_packed = None
        if "flex" in args.strategies or "flex_packed" in args.strategies:
            if loaded.family.name != "t5":
                print(f"flex: the {family} family has no FlexAttention path; left out", flush=True)
            else:
                # on a copy (flex switches the model in place); flex_packed shares it
                flex_loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
                flex_sample = [s for _, s in records[:8]]  # rows checked against the default attention's on these
                expected = protrans_embedder.embed_batch(flex_sample)

                def build_flex(label, packed_rows, sample=flex_sample, expected=expected):
                    built = TransformerEmbedder(flex_loaded, (-1,), args.device, args.dtype, attention="flex",
                                                packed=packed_rows)
                    start = time.perf_counter()
                    _flex_warm_up(built, records[0][1])
                    _sync(args.device)
                    print(f"{label}: {time.perf_counter() - start:.1f} s of warm-up ("
                          f"{'the kernel compilation' if args.device.startswith('cuda') else 'eager on the CPU'}; "
                          "not timed below)", flush=True)
                    worst = max(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
                                for a, b in zip(built.embed_batch(sample), expected))
                    # (as the strategies' check below: each bf16 path is ~0.012 from float32 on a
                    # ProtT5-XL-sized model, so two of them may differ by twice that)
                    limit = 1e-4 if args.dtype == "float32" else 3e-2
                    print(f"{label}: rows of {len(sample)} proteins within {worst:.2g} (relative norm) of the "
                          f"default attention's", flush=True)
                    if worst > limit:
                        raise RuntimeError(f"rows differ from the default attention's (relative error {worst:.2g} "
                                           f"> {limit:g})")
                    return built

                # Built just before their first timed run, in the order of --strategies (untimed):
                # a slow flex_packed compilation cut by the step's limit cost the flex figure it
                # was built before.
                if "flex" in args.strategies:
                    flex = _Later("flex", lambda: build_flex("flex", False))
                if "flex_packed" in args.strategies:
                    flex_packed = _Later("flex_packed", lambda: build_flex("flex_packed", True))
        ready: dict[str, _Later] = {}  # strategies whose embedder is built before their first run
        for name in args.strategies:
            chosen = {"protrans": protrans_embedder, "packed": packed, "compiled": compiled, "flex": flex,
                      "flex_packed": flex_packed}
            if name not in chosen:
                strategies.append(name)
                continue
            if chosen[name] is None:  # left out above (a family without that path)
                continue
            chosen = chosen[name]
            for budget in budgets:
                label = f"protrans{'' if name == 'protrans' else '-' + name}" + ("" if len(budgets) == 1 else f"@{budget}")
                runs[label] = (lambda b=budget, e=chosen, check=None:
                               run_protrans(_Later.get(e), records, tmpdir, b, args.max_batch_size, only, check))
                if isinstance(chosen, _Later):
                    ready[label] = chosen
                strategies.append(label)
        # Each protrans strategy's file is checked once against the baseline's rows of a few
        # proteins (in its first, timed run: the check is made after the clock stops)
        sample = dict(records[:8])
        reference = {k: v for k, v in run_prottrans(embedder, list(sample.items()), per_protein_only=only).items()}
        limit = 1e-4 if args.dtype == "float32" else 3e-2
        wrong = set()
        # Strategies alternate within each repeat and the best time of each counts, so that a
        # load change on a shared machine does not favour whichever ran last.
        for repeat in range(args.repeats):
            for name in strategies:
                if name == "naive" and repeat > 0 and args.naive_once:
                    continue
                if name in ready and ready[name].build() is None:
                    continue  # (left out, with its reason printed)
                if name in wrong:
                    continue
                _sync(args.device)
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                try:
                    if name.startswith("protrans") and repeat == 0:
                        worst = runs[name](check=reference)
                    else:
                        runs[name]()
                        worst = None
                    _sync(args.device)
                except Exception as exc:  # noqa: BLE001 - reported; the strategies after it still run
                    from protrans_cli.errors import described

                    print(f"{name}: failed: {described(exc)[:300]}", flush=True)
                    wrong.add(name)
                    continue
                seconds = time.perf_counter() - start
                if worst is not None:
                    # (8 proteins read back inside the timed run: milliseconds, counted against protrans)
                    print(f"{name}: rows of {len(reference)} proteins within {worst:.2g} (relative norm) of "
                          "the ProtTrans strategy's", flush=True)
                    if worst > limit:
                        print(f"{name}: WRONG ROWS (> {limit:g}): left out of the results", flush=True)
                        wrong.add(name)
                if name in wrong:
                    continue
                results[name] = max(results.get(name, 0.0), residues / seconds)
                mem = (f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                       if args.device.startswith("cuda") else "")
                print(f"[{repeat + 1}/{args.repeats}] {name:21s} {seconds:8.1f} s  "
                      f"{residues / seconds:10.0f} residues/s{mem}", flush=True)
        for name, rate in results.items():
            print(f"best {name:21s} {rate:10.0f} residues/s")
    for base in ("naive", "prottrans", "prottrans_auto", "script"):
        for name in results:
            if base in results and name.startswith("protrans"):
                print(f"{name} / {base}: {results[name] / results[base]:.2f}x")
    if args.device.startswith("cuda") and not args.host_only:
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or peak_tflops(name)
        flops = model_flops(loaded, records)
        for strategy, rate in results.items():
            achieved = flops * rate / residues / 1e12
            frac = f" = {achieved / peak:.1%} of {peak:.0f} TFLOP/s bf16 peak ({name})" if peak else ""
            print(f"{strategy:15s} {achieved:7.1f} TFLOP/s{frac}")
    return results  # the model goes with this frame, before the next one is built


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=str(ECOLI))
    p.add_argument("--family", default="bert")
    p.add_argument("--preset", default="small")
    p.add_argument("--gpu", action="store_true", help="ProtT5-XL encoder and ProtBert shapes on cuda, bf16")
    p.add_argument("--num-proteins", type=int, default=None, help="random sample (default: all)")
    p.add_argument("--max-length", type=int, default=None, help="drop longer proteins from the sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--max-tokens", default="default",
                   help="protrans budget(s), comma-separated: numbers or 'default' (embed's own, by device)")
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--strategies", default="naive,prottrans,protrans",
                   help="comma-separated: naive, prottrans, prottrans_auto (ProtTrans' batches with protrans's "
                   "attention kernels), script, protrans, packed (protrans with --packing), "
                   "compiled (protrans with --compile), flex (protrans with --attention flex; t5 family), "
                   "flex_packed (--attention flex --packing; t5 family)")
    p.add_argument("--sdpa-kernels", default="auto", choices=("auto", "torch"),
                   help="protrans's attention-kernel policy (the baselines keep PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the strategies N times, keep each one's best")
    p.add_argument("--naive-once", action="store_true", help="run the (slow) naive loop in the first repeat only")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--per-protein", action="store_true",
                   help="per-protein arrays only (means taken beside the model) in every strategy")
    p.add_argument("--host-only", action="store_true",
                   help="replace the model's forward pass by zeros of its output shape: what each strategy "
                   "costs around the model (encoding, copies, means, HDF5 writing)")
    p.add_argument("--tmpdir", default=None, help="where protrans writes its HDF5 file (e.g. /dev/shm: the "
                   "baselines keep their arrays in memory)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.gpu or (args.device or "").startswith("cuda")
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    from protrans_cli.embed import EmbedOptions

    args.max_tokens = args.max_tokens.split(",")
    args.max_batch_size = args.max_batch_size or EmbedOptions().max_batch_size
    args.strategies = args.strategies.split(",")
    records = load_proteins(args.fasta, args.num_proteins, args.seed, args.max_length)
    print(f"{len(records)} proteins from {args.fasta}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    models = [("t5", "prot_t5_xl"), ("bert", "prot_bert")] if args.gpu else [(args.family, args.preset)]
    for family, preset in models:
        bench_one(family, preset, records, args)
        if gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
