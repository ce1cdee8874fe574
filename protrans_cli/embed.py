"""FASTA to embeddings: batching, inference, pooling, long sequences, writing, resume, sharding.

    from protrans_cli.embed import EmbedOptions, embed
    summary = embed("proteome.fa", "proteome.h5", EmbedOptions(model="onehot", per_protein=True))

Memory stays bounded whatever the input size. A first streaming pass parses and normalises every
record and refuses duplicate ids before any computation, keeping only 8-byte digests of ids and
sequences. The input is then read again in windows of `EmbedOptions.window` proteins: each
window applies the --max-length policy, computes each distinct sequence once, sorts the work by
length, packs it into batches bounded by a padded-token budget and streams each batch's results
into the HDF5 writer (flushed after a batch once a second at most: `FLUSH_SECONDS`). A sequence
met again in a later window is copied from the dataset already written. An `Embedder` is anything with
`embed_batch(sequences, pooled=False) -> [array (n_layers, L, D)]` (with `pooled`, the per-protein
means `(n_layers, D)`, asked for when no per-residue array is written): the built-in `onehot`
embedder and every transformer family share this code. The transformer embedder also has
`embed_arrays`, which returns rows already in the storage dtype and means taken where the model
runs, in one pass (what the pipeline uses when it is there). Under torchrun, each rank embeds a
balanced share of every window into its own file and rank 0 merges them into the one output
(embed_dist.py).
A batch's forward pass, with its out-of-memory and half-precision retries, is embed_retry.py.
With --resume, what the output already holds is read by embed_resume.py (in a forked child: a
file a SIGKILL damaged can crash HDF5) and compared here with the input before any computation.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import numbers
import os
import re
import shlex
import sys
import time
import types
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from protrans_cli import console
from protrans_cli.attention import SDPA_KERNELS, check_attention
from protrans_cli._version import __version__
from protrans_cli.choices import (CHAIN_POLICIES, DEFAULT_LINKER_LENGTH, DEFAULT_WINDOW, DTYPES, INVALID_POLICIES,
                                  LONG_POLICIES)
from protrans_cli.errors import (InputError, ModelError, ProtransError, RuntimeFailure, UsageError, at_least,
                                 expect_options, expect_path, force_option, given, one_of, option, resume_option)
from protrans_cli.io.fasta import NUL_HEADER, parse_fasta
from protrans_cli.io.files import (checked_hdf5_output, create_fresh, disk_full, display_name, file_locking,
                                   hdf5_output_in_use, input_named_by, open_input, output_lock,
                                   refuse_other_format_name, stdin_binary)
from protrans_cli.io.h5 import (LAYOUTS, PER_PROTEIN, PER_RESIDUE, EmbeddingsWriter, checksum64, digest128,
                                partial_path, refuse_if_in_use, refuse_non_file, weights_fingerprint_of)
from protrans_cli.embed_resume import _Done, _done_in
from protrans_cli.embed_dist import (_absorb_shards, _Dist, _finish_ranks, _same_on_every_rank, _setup_distributed,
                                     _shard_files, _torchrun_rank, shard_path)
from protrans_cli.embed_retry import Recomputed, _Want, embed_with_retry
from protrans_cli.embedders import (POOLINGS, Blosum62Embedder, Embedder, OneHotEmbedder, TransformerEmbedder,
                                    beyond_range, check_device, fits, is_weightless, mean_rows, pooling_text,
                                    resolve_device, weightless_embedder)
from protrans_cli.placement import PlacementOptions
from protrans_cli.residues import (NUCLEOTIDE_RULE, REASON_INVALID, THREE_DI, SequenceRejected, looks_nucleotide,
                                   normalise)
from protrans_cli.threads import check_threads, torch_threads

DEFAULT_CHUNK_OVERLAP = 64


@dataclass
class EmbedOptions(PlacementOptions):
    """Everything `protrans embed` can be asked for; the CLI fills it from its options."""

    model: str = "prot_t5_xl_half"
    revision: str | None = None
    per_residue: bool = True
    per_protein: bool = True
    layers: tuple[int, ...] = (-1,)
    pooling: str = "mean"                # per-protein vectors: mean over the residues | cls (the cls token's row)
    layout: str = "grouped"              # grouped | flat | stacked (per-protein only)
    storage_dtype: str = "float32"       # float32 | float16
    compression: str | None = None       # None | gzip | lzf
    device: str = "auto"
    dtype: str = "auto"                  # compute dtype
    max_tokens: int | None = None        # padded tokens per batch (longest x count); None: by device
    max_batch_size: int = 100
    max_length: int | None = None        # residues; longer proteins follow long_policy
    long_policy: str = "error"
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP  # residues shared by neighbouring windows (chunk policy)
    invalid_policy: str = "error"        # a sequence normalise refuses (J, an inner '*', empty): error | skip
    chains: str = "error"                # a ':' (chain break of a complex): error | linker | separate
    linker_length: int = DEFAULT_LINKER_LENGTH  # glycines between chains under chains='linker'
    three_di: bool = False               # the sequences are Foldseek 3Di strings (ProstT5), not amino acids
    # a FASTA of 3Di strings, one per input record (same ids and lengths): SaProt's structure half
    structure_tokens: str | None = None
    cpu_fallback: bool = False           # retry a protein on the CPU when it alone runs out of memory
    packing: bool | None = None          # each batch one row without padding; None: auto (packing_by_default)
    sdpa_kernels: str = "auto"           # attention kernels on a GPU (protrans_cli/attention.py)
    compile: bool = False                # torch.compile the model (dynamic shapes)
    attention: str = "auto"              # auto | sdpa (the model's own) | flex (FlexAttention: T5 family only)
    resume: bool = False
    force: bool = False                  # replace an existing finished OUTPUT (else it is refused)
    window: int = DEFAULT_WINDOW         # proteins read, length-sorted and embedded at a time
    threads: int | None = None
    command_line: str | None = None
    part: str | None = None              # "K/N": only part K of N of the input (a job array's share)
    # earlier outputs of the same model and settings whose proteins are copied, by sequence, into
    # this output instead of computed (embed_reuse.py)
    reuse: tuple = ()
    # a model spread over devices by from_pretrained (protrans_cli/placement.py): auto | balanced |
    # sequential, None for one device; the most each device holds ("0=20GiB,cpu=60GiB" or a dict);
    # the folder for the weights that fit nowhere else
    device_map: str | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None

    @property
    def part_of(self) -> tuple[int, int] | None:
        """(K, N) of `part` (validate checked it), or None."""
        if self.part is None:
            return None
        k, n = str(self.part).split("/")
        return int(k), int(n)

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in ((PER_RESIDUE, self.per_residue), (PER_PROTEIN, self.per_protein)) if on)

    @property
    def alphabet(self) -> str | None:
        """The letters a sequence may hold beyond normalise's rules (3Di: its 20 states), or None."""
        return THREE_DI if self.three_di else None

    def structure(self):
        """The --structure-tokens file's 3Di strings by id (models/saprot.py), or None."""
        if self.structure_tokens is None:
            return None
        from protrans_cli.models.saprot import read_structure_tokens

        return read_structure_tokens(self.structure_tokens)

    @property
    def skip_invalid(self) -> bool:
        """Records normalise refuses are recorded as failed (`_records`), not an error."""
        return self.invalid_policy == "skip"

    def validate(self) -> None:
        if not (self.per_residue or self.per_protein):
            raise UsageError("nothing to write: ask for " + option("--per-residue and/or --per-protein",
                                                                   "per_residue=True and/or per_protein=True"))
        if self.layout == "flat" and self.per_residue and self.per_protein:
            # Both are on when neither flag was given (embed's default) and when both were: "add"
            # a flag read wrong in the second case, where one must go.
            raise UsageError("the flat layout holds one kind only: " + option(
                "give exactly one of --per-residue and --per-protein", "per_residue=False or per_protein=False"))
        if self.layout == "stacked" and (self.per_residue or not self.per_protein):
            raise UsageError("the stacked layout holds per-protein vectors only (one (N, D) array): " + option(
                "give --per-protein alone, or --layout grouped for per-residue arrays",
                "give per_protein=True and per_residue=False, or layout='grouped' for per-residue arrays"))
        one_of(self.layout, LAYOUTS, "--layout", keyword="layout")
        if self.max_tokens is not None:
            at_least(self.max_tokens, 1, "--max-tokens", keyword="max_tokens")
        at_least(self.max_batch_size, 1, "--max-batch-size", keyword="max_batch_size")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        one_of(self.invalid_policy, INVALID_POLICIES, "--invalid-policy", keyword="invalid_policy")
        if self.max_length is not None:
            at_least(self.max_length, 1, "--max-length", keyword="max_length")
        if isinstance(self.chunk_overlap, numbers.Real):  # (accepted without a word under another --long-policy)
            at_least(self.chunk_overlap, 0, "--chunk-overlap", keyword="chunk_overlap")
        if self.long_policy == "chunk" and self.max_length is not None \
                and not 0 <= self.chunk_overlap < self.max_length:
            raise UsageError(f"{option('--chunk-overlap', 'chunk_overlap')} must be smaller than "
                             f"{option('--max-length', 'max_length')} ({self.max_length}), got {self.chunk_overlap}"
                             + (f"; {DEFAULT_CHUNK_OVERLAP} is its default: give a smaller one"
                                if self.chunk_overlap == DEFAULT_CHUNK_OVERLAP else ""))
        at_least(self.window, 1, "--window", keyword="window")
        one_of(self.pooling, POOLINGS, "--pooling", keyword="pooling")
        check_chains(self)
        if self.pooling == "cls":
            cls = given("--pooling", "pooling", "cls")
            if is_weightless(self.model):
                raise UsageError(f"{cls} reads a model's cls token: the {self.model} embedder has none")
            if self.long_policy == "chunk":
                raise UsageError(f"{cls} with {given('--long-policy', 'long_policy', 'chunk')}: each window would "
                                 "have a cls token of its own (use truncate or skip, or "
                                 f"{given('--pooling', 'pooling', 'mean')})")
            if self.packing:
                raise UsageError(f"{cls} reads each protein's cls token from padded batches: no "
                                 + option("--packing", "packing=True"))
        if self.part is not None:
            found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(self.part))
            if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
                raise UsageError(f"{given('--part', 'part', self.part)}: give K/N, part K of N (1 <= K <= N), "
                                 "e.g. 7/100")
            self.part = f"{int(found.group(1))}/{int(found.group(2))}"
        if self.three_di and is_weightless(self.model):
            prostt5 = option("-m prostt5", "model='prostt5'")
            raise UsageError(f"{option('--3di', 'three_di=True')} is for a model that reads 3Di strings (ProstT5: "
                             f"{prostt5}), not {self.model}")
        if self.structure_tokens is not None and (self.three_di or is_weightless(self.model)):
            raise UsageError(f"{option('--structure-tokens', 'structure_tokens')} pairs each residue with its 3Di "
                             "state for a structure-aware model (SaProt), "
                             + ("not with --3di (3Di strings as the sequences)" if self.three_di else f"not {self.model}"))
        if self.threads is not None:  # 0 was ignored, -2 a RuntimeError from torch
            check_threads(self.threads)
        if isinstance(self.layers, int):  # EmbedOptions(layers=-1) from Python: a TypeError further on
            raise UsageError(f"layers is a tuple of layer indices: layers=({self.layers},), not layers={self.layers}")
        # ("-1" or ("-1",), read from a YAML file or a form: a TypeError from inside the model's
        # layer check once the model had loaded, or "--layer - does not exist" for onehot; True
        # was layer 1, -1.0 layer -1, without a word)
        try:
            layers = None if isinstance(self.layers, (str, bytes)) else tuple(self.layers)
        except TypeError:  # (None, an object that is no sequence)
            layers = None
        if layers is None or not all(isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))
                                     for x in layers):
            raise UsageError(f"EmbedOptions.layers must be a tuple of ints (layer indices, e.g. (-1,)), got "
                             f"{type(self.layers).__name__} {self.layers!r:.60}")
        self.layers = tuple(int(x) for x in layers)
        if not self.layers:
            raise UsageError(f"{option('--layer', 'layers')} needs at least one index")
        repeated = [x for i, x in enumerate(self.layers) if x in self.layers[:i]]
        if repeated:
            raise UsageError(f"{option('--layer', 'layer')} {repeated[0]} is given twice: each hidden state is written "
                             "once")
        check_device(self.device)  # (the words of fit and predict, and of resolve_device)
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        one_of(self.sdpa_kernels, SDPA_KERNELS, "--sdpa-kernels", keyword="sdpa_kernels")
        check_attention(self.attention, compile=self.compile)
        self._check_device_map()

    def _check_device_map(self) -> None:
        """--device-map and its companions (UsageError; placement.PlacementOptions)."""
        self.check_placement(
            conflicts=((self.packing, option("--packing", "packing=True")),
                       (self.compile, option("--compile", "compile=True")),
                       (self.attention == "flex", given("--attention", "attention", "flex"))),
            no_model=(f"the {self.model} embedder has no model to spread over devices" if is_weightless(self.model)
                      else None))


@dataclass
class EmbedSummary:
    output: Path | None          # None on a torchrun rank other than 0 (rank 0 writes and reports the file)
    num_records: int = 0
    num_embedded: int = 0        # proteins written by this run
    num_resumed: int = 0         # already in the output (--resume)
    # copied from --reuse files, not computed (not in num_embedded): with the later copies of
    # such a protein (a repeated sequence), whichever window they are in
    num_reused: int = 0
    # proteins whose sequence another id already carried (computed or reused: a share of
    # num_embedded + num_reused, not beside them)
    num_duplicates: int = 0
    num_residues: int = 0        # residues written by this run (identical sequences computed once count for each id)
    seconds: float = 0.0         # from the first batch to the file's completion (model loading excluded)
    failed: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)  # ids this run stored truncated (--long-policy truncate)
    max_length: int | None = None  # the length limit applied: max_length, else the model's (None: none)
    device: str = ""             # where the model ran ("cpu", "cuda:0"; rank 0's under torchrun)
    compute_dtype: str = ""      # what it computed in ("float32", "bfloat16", ...)
    world_size: int = 1          # torchrun ranks that embedded
    device_map: dict | None = None  # --device-map: {module: device} as from_pretrained placed them

    @property
    def residues_per_second(self) -> float:
        return self.num_residues / self.seconds if self.seconds > 0 else 0.0


def check_chains(options) -> None:
    """--chains and --linker-length (embed's and contacts' options; UsageError)."""
    one_of(options.chains, getattr(options, "chain_policies", CHAIN_POLICIES), "--chains", keyword="chains")
    at_least(options.linker_length, 0, "--linker-length", keyword="linker_length")
    if options.chains != "error" and getattr(options, "long_policy", "error") == "truncate":
        raise UsageError(f"{given('--long-policy', 'long_policy', 'truncate')} with "
                         f"{given('--chains', 'chains', options.chains)}: a complex cut short loses whole chains "
                         f"(use skip{', chunk' if 'chunk' in getattr(options, 'long_policies', LONG_POLICIES) else ''}"
                         " or error)")
    if options.chains != "error" and getattr(options, "pooling", "mean") == "cls":
        raise UsageError(f"{given('--pooling', 'pooling', 'cls')} with {given('--chains', 'chains', options.chains)}: "
                         "a complex's vector is the mean of its chains' residues")


def chain_lengths(sequence: str) -> list[int]:
    """The residues of each chain of a sequence (one chain without ':')."""
    return [len(c) for c in sequence.split(":")]


def model_length(sequence: str, chains: str = "error", linker_length: int = DEFAULT_LINKER_LENGTH) -> int:
    """The residues the model sees at once: a complex's joined chains with their linkers (linker),
    its longest chain (separate), else the sequence's length. --max-length applies to this."""
    if ":" not in sequence:
        return len(sequence)
    lengths = chain_lengths(sequence)
    if chains == "separate":
        return max(lengths)
    return sum(lengths) + linker_length * (len(lengths) - 1)


def residue_count(sequence: str) -> int:
    """The residues of a sequence, a complex's ':'s not counted (its rows)."""
    return len(sequence) - sequence.count(":")


def model_text(sequence: str, chains: str = "error", linker_length: int = DEFAULT_LINKER_LENGTH) -> str:
    """What the model reads of a sequence: a complex's chains joined by glycines (linker) or
    concatenated (separate: cut at the chain boundaries by the caller), else the sequence."""
    if ":" not in sequence:
        return sequence
    return ("G" * linker_length if chains == "linker" else "").join(sequence.split(":"))


def without_linker(rows: np.ndarray, lengths, linker_length: int, axes=(1,)) -> np.ndarray:
    """`rows` (..., joined, ...) with the linkers' positions removed along `axes`: one row per
    residue of the chains, in order."""
    keep, start = [], 0
    for n in lengths:
        keep.extend(range(start, start + n))
        start += n + linker_length
    keep = np.asarray(keep, dtype=np.intp)
    for axis in axes:
        rows = np.take(rows, keep, axis=axis)
    return rows


def linker_length_ignored(options) -> str | None:
    """The warning for a --linker-length that sets nothing (the run's --chains is not linker), or
    None: embed's, and perplexity's."""
    if options.linker_length != DEFAULT_LINKER_LENGTH and options.chains != "linker":
        return (f"--linker-length {options.linker_length} ignored: it sets the glycines between a complex's chains "
                f"under --chains linker, and this run's is {options.chains}")
    return None


def build_embedder(options: EmbedOptions, *, device: str | None = None, loaded=None) -> Embedder:
    """The onehot or blosum62 embedder, or a registry model loaded from a short name, directory or hub id.
    `loaded`: that model already loaded (`models.load_model` of options.model, in the device and
    dtype options resolve to), not loaded again (esm-extract's contacts and rows)."""
    expect_options(options, EmbedOptions, "options")
    options.validate()  # (before the model loads: a bad setting was found after minutes of loading)
    # (said once: under torchrun every rank builds its embedder from the same options)
    warn = console.warn if _torchrun_rank()[0] == 0 else (lambda message: None)
    if options.compression not in (None, "none") and not options.per_residue:  # ("none": as the writer reads it)
        warn(f"--compression {options.compression} ignored: it compresses per-residue arrays, and this run "
             "writes per-protein vectors only (stored uncompressed: too small to gain)")
    if options.chunk_overlap != DEFAULT_CHUNK_OVERLAP and options.long_policy != "chunk":
        warn(f"--chunk-overlap {options.chunk_overlap} ignored: it sets the windows of --long-policy chunk, and this "
             f"run's policy is {options.long_policy}")
    if (ignored := linker_length_ignored(options)) is not None:
        warn(ignored)
    if options.pooling != "mean" and not options.per_protein:
        warn(f"--pooling {options.pooling} ignored: it makes the per-protein vectors, and this run writes "
             "per-residue arrays only")
    if is_weightless(options.model):
        name = options.model
        if options.device not in ("auto", "cpu") or options.dtype not in ("auto", "float32"):
            warn(f"the {name} embedder runs on the CPU in float32: --device/--dtype ignored")
        if options.packing:  # (None, the default, says nothing)
            warn(f"the {name} embedder has no attention: --packing ignored")
        if options.compile:
            warn(f"the {name} embedder has no model to compile: --compile ignored")
        if options.attention not in ("auto", "sdpa"):
            warn(f"the {name} embedder has no attention: --attention {options.attention} ignored")
        if options.revision:
            warn(f"the {name} embedder has no weights: --revision {options.revision} ignored")
        _warn_gpu_only(options, "cpu", warn)
        return weightless_embedder(name, options.layers)
    mapped = options.device_map is not None
    if mapped:
        # the compute dtype of the map's first GPU (bfloat16, float16...), float32 for a map that
        # --max-memory keeps on the CPU (and disk)
        device_name, dtype, placing = options.placed_loading([options.model])
        if options.cpu_fallback:
            warn("--cpu-fallback ignored with --device-map: the device map already puts on the CPU (and disk) "
                 "what the GPUs cannot hold")
    else:
        placing = {}
        device_name, dtype = resolve_device(device or options.device, options.dtype)
        _warn_gpu_only(options, device_name, warn)
    try:
        from protrans_cli.models import load_model
    except ImportError as exc:  # pragma: no cover - the registry ships with the package
        raise ModelError(f"the model registry is unavailable ({exc})") from None
    # Loaded straight into the compute dtype and device: a 3B-parameter checkpoint is never
    # materialised in float32 on the way to a bf16 GPU. (Loading may draw from torch's global
    # generator, as from_pretrained does: a fork_rng around it replayed other threads' draws.)
    from protrans_cli.models.saprot import structure_checks

    # --structure-tokens: its letters and ids read before the model loads, whether the model reads
    # them before its weights (a bad letter was found after loading a 650M model). Without them,
    # nothing here: the run that reads the sequences says so (_warn_unknown_structure), not the
    # build (an embedder built alone, then given embed_sequences(structure=...), warned wrongly).
    options.structure()
    checks = structure_checks(options.structure_tokens is not None,
                              option("--structure-tokens", "structure_tokens"), lambda message: None)
    if loaded is None:
        loaded = load_model(options.model, device=device_name, dtype=dtype, revision=options.revision,
                            before_weights=checks, **placing)
    else:
        checks(loaded.name, loaded.family)
    if mapped:
        from protrans_cli.placement import input_device

        # (where its inputs go: the first GPU of the map, or the CPU)
        device_name = input_device(options.loaded_map(loaded))
    automatic = options.attention == "auto"
    attention = options.attention
    if mapped:
        attention = "sdpa"  # (the model's own: flex and packing swap attention modules under accelerate's hooks)
    elif automatic:
        attention = "flex" if flex_by_default(loaded.family, device_name, dtype, compiled=options.compile) else "sdpa"
    build = functools.partial(TransformerEmbedder, loaded, options.layers, device_name, dtype,
                              packed=bool(options.packing), sdpa_kernels=options.sdpa_kernels,
                              compile=options.compile, three_di=options.three_di, pooling=options.pooling)
    try:
        embedder = build(attention=attention)
    except ModelError as exc:
        if not (automatic and attention == "flex"):
            raise
        # a T5 model of a layout the flex switch does not know (it checks before switching anything)
        console.info(f"FlexAttention left out ({exc}): the model's own attention")
        attention = "sdpa"
        embedder = build(attention=attention)
    if attention == "flex" and not device_name.startswith("cuda"):
        console.warn(f"--attention flex on {device_name}: FlexAttention runs uncompiled here, every attention score "
                     "materialised (the same numbers, slower than the default attention); its fused kernel is "
                     "for CUDA GPUs")
    elif options.compile:
        # (nothing shows for that while: the first batch waits for torch.compile)
        console.info("compiling the model's blocks with torch.compile: the first batches wait for it "
                     "(seconds to a minute)")
    if options.packing is None and not mapped and packing_by_default(embedder, options.max_tokens or default_max_tokens(device_name,
                                                                                                      embedder),
                                                      compiled=options.compile):
        embedder.use_packing()
        kernel = ("FlexAttention with a block mask of its proteins" if embedder.attention == "flex"
                  else "the fused varlen attention kernel")
        console.info(f"packing each batch into one row ({kernel}); --no-packing pads batches instead")
    if embedder.attention == "flex":
        from protrans_cli.models.t5 import flex_is_compiled

        if flex_is_compiled(device_name):
            _build_flex_kernel(embedder, automatic, packing_asked=options.packing is True)
    return embedder


def _warn_gpu_only(options: EmbedOptions, device_name: str, warn) -> None:
    """Options of a GPU run given for one on the CPU (the onehot embedder's included): they changed
    nothing there without a word, and a user who asked for them believed the run protected or tuned."""
    if options.cpu_fallback and device_name == "cpu":
        warn("--cpu-fallback ignored: the run is on the CPU already (it retries on the CPU a protein that "
             "does not fit in GPU memory)")
    if options.sdpa_kernels != "auto" and not device_name.startswith("cuda"):
        warn(f"--sdpa-kernels {options.sdpa_kernels} ignored on {device_name}: it chooses among a CUDA GPU's "
             "attention kernels")


def flex_by_default(family, device_name: str, dtype: str, *, compiled: bool = False) -> bool:
    """Whether `--attention auto` (embed's default) takes FlexAttention: for a family that has it
    (T5: ProtT5, Ankh) on a CUDA GPU of compute capability 8.0 or later, in bfloat16, with
    torch's FlexAttention and Triton (its kernel's compiler), and not with --compile. Measured
    there: 2.35x the ProtTrans script's strategy padded, 2.77x packed, where the model's own
    attention ran 0.95-0.97x (H200, ProtT5-XL-sized, docs/benchmarks.md#gpu). float16 (V100,
    T4) and older GPUs keep the model's own attention: not measured."""
    import importlib.util

    if compiled or not getattr(family, "flex_attention", False) or dtype != "bfloat16" \
            or not device_name.startswith("cuda"):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.get_device_capability(device_name) >= (8, 0)


# The batches the FlexAttention kernel is built on before the first real one. Compiled with
# dynamic shapes, a graph is still specialised to a size of 1 (one protein in a batch, one
# 128-token block in a row) and, at first, to the block counts it saw: batches of several and
# of one protein, over several blocks and over one, then another of each size again, build
# every graph a run meets, padded or packed (tested: none compiles after them). A run would
# build the same graphs as its batches came; built here, a kernel that cannot be built fails
# (or, under auto, falls back) before any output is made.
_PROBE_LETTERS = "ACDEFGHIKLMNPQRSTVWY" * 16
_FLEX_PROBES = tuple(tuple(_PROBE_LETTERS[:n] for n in lengths)
                     for lengths in ((200, 150, 60), (300,), (50, 40), (30,), (260, 250, 100, 20)))


def _build_flex_kernel(embedder, automatic: bool, packing_asked: bool = False) -> None:
    """Build FlexAttention's kernel now, on the probe batches, rather than inside the first real one:
    where torch.compile cannot build it (no working compiler, a torch whose inductor cannot lower
    it), `--attention auto` goes on with the model's own attention and says so; an explicit
    `--attention flex` fails here, before any output is made."""
    from protrans_cli.errors import compile_failure, described

    console.info("compiling the FlexAttention kernel with torch.compile (seconds to a minute, once)")
    try:
        for batch in _FLEX_PROBES:
            embedder.embed_arrays(list(batch), rows=False, means=True, check=False)
    except Exception as exc:  # noqa: BLE001 - a compiler's failure is told apart below
        inner = compile_failure(exc)
        if not automatic or inner is None:
            raise
        packed = embedder.packed
        embedder.drop_flex()
        dropped = ("; --packing dropped: T5 models pack only under FlexAttention" if packed and packing_asked
                   else "")
        console.warn(f"FlexAttention's kernel could not be built on this machine ({described(inner)}): the model's "
                     f"own attention instead (--attention sdpa skips the attempt){dropped}")


# Where `--packing` was measured faster than padded batches (docs/benchmarks.md#gpu: H200,
# ProtBert-sized, 32000 tokens per batch: 1.15x per-residue, 1.25x per-protein; at 4000 tokens
# it was 0.90x, as the host's kernel launches bound such batches and packing adds work there).
PACKING_MIN_TOKENS = 32000


def packing_by_default(embedder, max_tokens: int, *, compiled: bool = False) -> bool:
    """Whether `--packing` is on when neither it nor --no-packing is given: on a CUDA GPU whose
    packed attention is one Flash varlen kernel (compute capability 8.0 or later, PyTorch with
    `torch.nn.attention.varlen`), for a family that packs, with batches of at least
    PACKING_MIN_TOKENS tokens, and not with --compile (the two together are not measured on a
    GPU yet; `--compile --packing` asks for them). Under FlexAttention (T5) in bfloat16 too: its
    packed rows (a block mask of the row's proteins, not the varlen kernel) ran 1.18x its padded
    batches (H200, ProtT5-XL-sized, 32000 tokens, 2026-11-30). Not in float32, which the varlen
    kernel does not take (packed rows then run the padded fallback)."""
    if compiled or max_tokens < PACKING_MIN_TOKENS or not str(getattr(embedder, "device", "")).startswith("cuda"):
        return False
    import torch

    if getattr(embedder, "compute_dtype", None) not in ("float16", "bfloat16"):
        return False  # float32 (--dtype float32): the Flash varlen kernel takes half precision only
    if getattr(embedder, "packing_problem", None) is None or embedder.packing_problem() is not None:
        return False
    if getattr(embedder, "attention", "sdpa") == "flex":
        return embedder.compute_dtype == "bfloat16"  # (float16 flex: not measured)
    from protrans_cli.models import packing

    return torch.cuda.get_device_capability(embedder.device) >= (8, 0) and packing.varlen_available(embedder.device)


# --- reading the input --------------------------------------------------------------------

@dataclass
class _Protein:
    id: str
    header: str
    sequence: str          # normalised (rare residues kept: the checksum's sequence)
    line: int
    rejected: str | None = None  # --invalid-policy skip: why normalise refused it (its sequence is "")
    gapped: bool = False   # the record held gap characters ('-', '.'), removed by normalise


@dataclass
class _Unit:
    """A distinct sequence to embed and every protein that carries it."""

    sequence: str                              # what the model sees (truncated if asked)
    proteins: list[_Protein]
    windows: list[tuple[int, int]] | None = None  # chunk policy: (start, end) residue windows
    copy_of: str | None = None                 # written earlier under this id: copied, not computed
    # A complex (chains joined by ':'): what the model reads (`model_text`: the linker joins the
    # chains, or they are concatenated and each chain is its own window), its chain lengths, and
    # the linker's length whose rows are dropped (None: no linker)
    text: str | None = None
    chains: tuple[int, ...] | None = None
    linker: int | None = None
    reused: int | None = None                  # held by a --reuse file: its index there (embed_reuse.Reuse)

    @property
    def model_input(self) -> str:
        return self.sequence if self.text is None else self.text


def _digest64(text: str) -> int:
    """8-byte digest: ids and sequences are compared through these in the streaming passes."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def chain_break(text: str, offered=("linker", "separate")) -> str:
    """What a ':' in a sequence read without --chains is: a chain break, and the `offered`
    --chains policies that read it (none: the command reads one chain a record)."""
    remedy = (" or ".join(option(f"--chains {p}", f"chains={p!r}") for p in offered) + " reads it" if offered
              else "this command reads one chain a record (give each chain a record of its own)")
    return (f"':' at residue {text.index(':') + 1} is a chain break (a complex's chains, as ColabFold and ESMFold "
            f"write them): {remedy}")


def _normalise_record(raw, alphabet: str | None, chains: str, offered=("linker", "separate")) -> str:
    """A record's normalised sequence; a complex's chains each normalised and joined by ':'
    (`chains` linker or separate), a ':' refused under `chains` error (naming the `offered`
    policies: contacts has no separate)."""
    if not isinstance(raw, (str, bytes, bytearray)):
        raw = bytes(raw)
    if (":" if isinstance(raw, str) else b":") not in raw:  # (no copy of every sequence to look)
        seq = normalise(raw, rare="keep")
        if alphabet is not None:
            _check_alphabet(seq, alphabet)
        return seq
    text = raw if isinstance(raw, str) else raw.decode("latin-1")
    if chains == "error":
        raise SequenceRejected(REASON_INVALID, chain_break(text, offered))
    parts = text.split(":")
    out = []
    for i, part in enumerate(parts, 1):
        if not part.strip():
            raise SequenceRejected(REASON_INVALID, f"chain {i} of {len(parts)} is empty (a ':' at the start or the end, "
                                   "or '::')")
        try:
            seq = normalise(part, rare="keep")
            if alphabet is not None:
                _check_alphabet(seq, alphabet)
        except SequenceRejected as exc:
            raise SequenceRejected(exc.reason, f"chain {i} of {len(parts)}: {exc.detail}") from None
        out.append(seq)
    return ":".join(out)


def _records(source, name: str, skip_invalid: bool = False, alphabet: str | None = None,
             part: tuple[int, int] | None = None, chains: str = "error",
             offered=("linker", "separate"), structure=None) -> Iterator[_Protein]:
    """Every record of `source`, normalised; errors name `name` (the user's path, or <stdin>).
    `skip_invalid`: a sequence normalise refuses is yielded with its reason in `rejected`
    (--invalid-policy skip: one bad ORF in a metagenome stopped the whole run). `alphabet`: the
    only letters allowed (--3di: the 20 3Di states; no X or rare letters). `part` (K, N): only
    the records of part K of N (`in_part`). `structure`: 3Di strings by id (--structure-tokens,
    models/saprot.py), each paired with its record's residues; a missing id is an InputError."""
    with open_input(source, name=name) as stream:
        for rec in parse_fasta(stream, name, nul_headers=True):
            try:
                if "\x00" in rec.description:  # (a damaged file: prep leaves the record out too)
                    # (embed_sequences' headers are the caller's ids, a Python key: no file to be damaged)
                    raise SequenceRejected(REASON_INVALID, "the id holds a NUL byte" if name == _GIVEN else NUL_HEADER)
                seq = _normalise_record(rec.sequence, alphabet, chains, offered)
            except SequenceRejected as exc:
                if part is not None and not in_part(rec.id, "", part):
                    continue
                if not skip_invalid:
                    skip = option("--invalid-policy skip", "invalid_policy='skip'")
                    raise InputError(f"{exc.detail} ({skip} leaves such records out)", path=name, line=rec.line,
                                     record=rec.id) from None
                yield _Protein(rec.id, rec.description, "", rec.line, rejected=f"skipped: {exc.detail} "
                                                                               "(--invalid-policy skip)")
                continue
            if structure is not None:
                seq = _with_structure(seq, rec.id, structure)
            if part is not None and not in_part(rec.id, seq, part):
                continue
            yield _Protein(rec.id, rec.description, seq, rec.line, gapped="-" in rec.sequence or "." in rec.sequence)


def _with_structure(seq: str, ident: str, structure) -> str:
    from protrans_cli.models.saprot import combine

    states = structure.get(ident)
    if states is None:
        raise InputError("no 3Di string for this record of the input (--structure-tokens needs one for every "
                         "record, under the same id)", path=structure.path, record=ident)
    return combine(seq, states, structure.path, ident, structure.lines.get(ident))


def in_part(ident: str, sequence: str, part: tuple[int, int]) -> bool:
    """Whether a record is in part K of N (`--part K/N`): chosen by its normalised sequence's
    digest, so that every copy of a sequence is in one part (computed once there, the copies
    written from it, as in one run over the whole input); a record without a usable sequence by
    its id's. The same record is in the same part in every run, on every machine."""
    return _digest_in_part(_digest64(sequence or ident), part)


def _digest_in_part(digest: int, part: tuple[int, int]) -> bool:
    """`in_part` of a record whose part digest (its sequence's, else its id's) is known."""
    k, n = part
    return digest % n == k - 1


def _check_alphabet(seq: str, alphabet: str) -> None:
    bad = next(((i, c) for i, c in enumerate(seq) if c not in alphabet), None)
    if bad is not None:
        raise SequenceRejected(REASON_INVALID, f"{bad[1]!r} at residue {bad[0] + 1} is not a 3Di letter "
                               f"(3Di strings hold only {alphabet})")


def read_windows(source, name: str, size: int, skip_invalid: bool = False,
                 alphabet: str | None = None, part: tuple[int, int] | None = None,
                 chains: str = "error", offered=("linker", "separate"),
                 structure=None) -> Iterator[list[_Protein]]:
    """The records (of `part`) in consecutive lists of at most `size`: all the pipeline holds at a time."""
    window: list[_Protein] = []
    for prot in _records(source, name, skip_invalid, alphabet, part, chains, offered, structure):
        window.append(prot)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


@dataclass
class InputScan:
    """What the first pass learns, in 8-16 bytes per protein while it runs and a few after."""

    num_records: int
    num_residues: int
    longest: int
    repeated: np.ndarray   # sorted uint64 digests of the sequences that more than one record carries
    digest: str = ""       # of every id and sequence in order: torchrun's ranks compare their inputs by it
    input_digest: str = ""  # with --part: of the whole input's ids and sequences (merge compares the parts')
    # proteins that read as DNA or RNA (residues.looks_nucleotide), and those whose gap
    # characters were removed (an alignment's rows): how many, the first few by id
    nucleotide: console.Named = field(default_factory=console.Named)
    gapped: console.Named = field(default_factory=console.Named)

    def may_repeat(self, sequence: str) -> bool:
        """False: no other record has this sequence. True: probably one has (digests can collide)."""
        digest = np.uint64(_digest64(sequence))
        i = int(np.searchsorted(self.repeated, digest))
        return i < len(self.repeated) and self.repeated[i] == digest


_SAY_FIRST_PASS_BYTES = 256 << 20  # inputs from which the first pass is announced


def scan_input(source, name: str, skip_invalid: bool = False, alphabet: str | None = None,
               part: tuple[int, int] | None = None, chains: str = "error",
               linker_length: int = DEFAULT_LINKER_LENGTH, offered=("linker", "separate"),
               structure=None) -> InputScan:
    """The first streaming pass: every record is parsed and normalised (so unusable sequences
    fail before any computation) and duplicate ids are refused, keeping only an 8-byte digest of
    each id and of each sequence. Equal id digests are confirmed by a second pass over the ids,
    which names the duplicate (and ignores a mere digest collision)."""
    ids, seqs = array("Q"), array("Q")
    residues = longest = num = 0
    nucleotide, gapped = console.Named(), console.Named()
    # With `part`, still every record of the input: each is checked and every id counts for the
    # duplicate check (as one run over the whole input refuses them, whichever parts the two
    # copies fall in), but only the part's records are counted. A part may hold no record at
    # all (N near or above the number of records): its file is empty, and merge still has it.
    whole = hashlib.blake2b(digest_size=16)  # (with `part`: of the whole input's ids and sequences)
    for prot in _records(source, name, skip_invalid, alphabet, chains=chains, offered=offered, structure=structure):
        id_digest, seq_digest = _digest64(prot.id), _digest64(prot.sequence)  # (each once: `in_part`'s too)
        ids.append(id_digest)  # (a skipped record's id is the output's too: not twice)
        if part is not None:
            whole.update(id_digest.to_bytes(8, "little") + seq_digest.to_bytes(8, "little"))
            if not _digest_in_part(seq_digest if prot.sequence else id_digest, part):
                continue
        num += 1
        if prot.rejected is not None:
            continue
        seqs.append(seq_digest)
        residues += residue_count(prot.sequence)
        longest = max(longest, model_length(prot.sequence, chains, linker_length))
        if alphabet is None and looks_nucleotide(prot.sequence):  # (3Di strings are no amino acids either)
            nucleotide.add(prot.id)
        if prot.gapped:
            gapped.add(prot.id)
    if not ids:
        raise InputError("no FASTA records", path=name)
    digest = hashlib.blake2b(ids, digest_size=16)
    digest.update(seqs)
    # Sorted in place, in the arrays' own buffers: 16 bytes per protein at the peak.
    ordered = np.frombuffer(ids, dtype=np.uint64)
    ordered.sort()
    clash = ordered[1:] == ordered[:-1]
    if clash.any():
        _raise_duplicate_id(source, name, set(ordered[1:][clash].tolist()))
    del ordered, clash, ids
    ordered = np.frombuffer(seqs, dtype=np.uint64)
    ordered.sort()
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    return InputScan(num, residues, longest, repeated, digest.hexdigest(),
                     input_digest=whole.hexdigest() if part is not None else "",
                     nucleotide=nucleotide, gapped=gapped)


def _raise_duplicate_id(source, name: str, suspects: set[int]) -> None:
    first_line: dict[str, int] = {}
    with open_input(source, name=name) as stream:
        for rec in parse_fasta(stream, name, nul_headers=True):  # (as _records read them)
            if _digest64(rec.id) not in suspects:
                continue
            if rec.id in first_line:
                raise InputError(f"duplicate id (first seen on line {first_line[rec.id]}); ids must be unique "
                                 "because they are the keys of the output", path=name, line=rec.line, record=rec.id)
            first_line[rec.id] = rec.line


def chunk_windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of at most `window` residues covering [0, length), neighbours sharing `overlap`."""
    if length <= window:
        return [(0, length)]
    step = window - overlap
    starts = list(range(0, length - window, step)) + [length - window]
    return [(s, s + window) for s in sorted(set(starts))]


def stitch_windows(windows: list[tuple[int, int]], arrays: list[np.ndarray], length: int, *,
                   causal: bool = False) -> np.ndarray:
    """One (n_layers, L, D) array from overlapping window outputs, every row taken from the window
    where it has the most context: for a bidirectional model the first half of each overlap from
    the left window and the rest from the right one; for a causal one (Transformer-XL: a row sees
    only the residues before it) the whole overlap from the left window, whose rows see more of
    the protein before them (the right window's row 70 of a window starting at 40 saw 30 residues
    where the left window's saw 70)."""
    n_layers, _, dim = arrays[0].shape
    out = np.empty((n_layers, length, dim), dtype=arrays[0].dtype)
    for i, ((start, end), arr) in enumerate(zip(windows, arrays)):
        if causal:
            lo = start if i == 0 else windows[i - 1][1]
            hi = end
        else:
            lo = start if i == 0 else (start + windows[i - 1][1] + 1) // 2
            hi = end if i == len(windows) - 1 else (windows[i + 1][0] + end + 1) // 2
        if hi > lo:
            out[:, lo:hi] = arr[:, lo - start:hi - start]
    return out


def _record_input_digest(output: Path, digest: str) -> None:
    """Set a finished part file's `input_digest` (one attribute of the same size, written in place)
    where it differs."""
    from protrans_cli.io.h5 import _attr_value, _comparable, h5_file

    with h5_file(output, "r") as f:
        if str(_comparable(f.attrs.get("input_digest")) or "") == digest:
            return
    with h5_file(output, "r+") as f:
        f.attrs["input_digest"] = _attr_value(digest)


def resolve_max_length(options: EmbedOptions, model_max: int | None = None) -> int | None:
    """The length at which --long-policy applies: --max-length, else the model's own limit."""
    max_length = options.max_length
    if model_max is not None:
        if max_length is not None and max_length > model_max:
            raise UsageError(f"{option('--max-length ', 'max_length=')}{max_length} is more than the model accepts "
                             f"({model_max} residues, its special tokens besides)")
        max_length = max_length or model_max
    if max_length is None and options.long_policy != "error":
        console.warn(f"--long-policy {options.long_policy} has no effect: no --max-length, "
                     "and the model takes proteins of any length")
    if options.long_policy == "chunk" and max_length is not None and not 0 <= options.chunk_overlap < max_length:
        raise UsageError(f"{option('--chunk-overlap', 'chunk_overlap')} must be smaller than the window ({max_length}, "
                         "the model's limit), "
                         f"got {options.chunk_overlap}")
    return max_length


def _warn_beyond_training(embedder, scan: InputScan, max_length: int | None, name: str, main: bool,
                          given: bool = True) -> None:
    """A protein longer than any the model saw whole in training is embedded with positions it
    never learned (a learned table's untrained rows, rotations it never met): said once, with the
    remedy. A model of `protrans train --max-length 128` has a table of 2048 positions, and embed
    took proteins of 1,148 residues without a word."""
    trained = getattr(embedder, "trained_residues", None)
    if not trained or not main:
        return
    residues, source = trained
    if scan.longest <= residues or (max_length is not None and max_length <= residues):
        return
    overlap = f" --chunk-overlap {residues // 4}" if residues <= DEFAULT_CHUNK_OVERLAP else ""
    # (under --max-length, what a window or a truncated protein reaches: not the longest protein)
    # (`given`: --max-length was given; else max_length is the model's own limit, which the
    # message named as "under --max-length 2046" to a user who gave none)
    reach = ((f" ({max_length:,} at most under --max-length {max_length})" if given
              else f" ({max_length:,} at most: the model's own limit)")
             if max_length is not None and max_length < scan.longest else "")
    console.warn(f"{name}: its longest protein has {scan.longest:,} residues{reach}, more than the {residues:,} that "
                 f"{embedder.name} saw whole in training ({source}); rows beyond them come from positions it never "
                 f"learned. --max-length {residues} --long-policy chunk{overlap} keeps every window within them")


def _warn_cls_not_trained(embedder, options: EmbedOptions, main: bool) -> None:
    """`--pooling cls` of a family whose cls token's hidden state pretraining never made a summary
    of the protein (ESM's <cls>: masked-LM alone): written without a word, though such vectors
    are the mean's poorer substitute. Said once; nothing for a file without per-protein vectors."""
    if not main or not options.per_protein or getattr(embedder, "pooling", "mean") != "cls":
        return
    reason = getattr(getattr(embedder, "family_impl", None), "cls_not_trained", None)
    if reason:
        console.warn(f"--pooling cls: {embedder.name}: {reason}; --pooling mean (the default) averages the residue "
                     "rows instead")


def _warn_unknown_structure(embedder, options: EmbedOptions, main: bool) -> None:
    """A structure-aware model (SaProt) reading this run's sequences without 3Di strings (no
    --structure-tokens, no embed_sequences(structure=...)): every residue's state unknown. Said
    once, by the run, where the sequences go in: not by build_embedder, whose embedder may then
    be given the 3Di strings."""
    family = getattr(embedder, "family_impl", None)
    if not main or options.structure_tokens is not None or not getattr(family, "structure_aware", False):
        return  # (and no model code imported: the onehot embedder's run imports none)
    from protrans_cli.models.saprot import warn_unknown_structure

    warn_unknown_structure(getattr(embedder, "name", options.model), family,
                           option("--structure-tokens", "structure_tokens"))


# True within embed_sequences given a list: its proteins' ids are their positions ("0", "1", ...),
# which warnings name as its own warning names them (`item 0`), not as bare numbers
_ITEM_IDS: contextvars.ContextVar[bool] = contextvars.ContextVar("protrans_item_ids", default=False)


def _shown_ids(named: console.Named) -> str:
    """A warning's proteins (`named`: a count and the first ids) as the caller knows them."""
    if not _ITEM_IDS.get():
        return str(named)
    return console.some_named(named.count, [f"item {ident}" for ident in named.names])


def _warn_nucleotide(scan: InputScan, name: str, main: bool) -> None:
    """A FASTA of DNA or RNA (a genome's .fna given for its .faa) is embedded as proteins of
    alanine, cysteine, glycine, threonine (and asparagine for N) without a word, the vectors
    meaningless: said once, with how many and which. Not refused: protein databases hold a few
    such sequences."""
    if not scan.nucleotide.count or not main:
        return
    console.warn(f"{name}: {scan.nucleotide.count:,} of {scan.num_records:,} protein(s) {NUCLEOTIDE_RULE}: "
                 f"{_shown_ids(scan.nucleotide)}. Protein models read them "
                 "as amino acids; translate DNA or RNA to proteins first")


def _warn_gapped(scan: InputScan, name: str, main: bool) -> None:
    """Rows of an aligned FASTA (an MSA's, an A3M's) lose their gaps: row i of the output is the
    i-th residue, not the i-th column, which nothing said while the file's `length` disagreed with
    the alignment's width. Said once, with how many and which."""
    if not scan.gapped.count or not main:
        return
    console.warn(f"{name}: {scan.gapped.count:,} of {scan.num_records:,} protein(s) held gap characters ('-', '.'), "
                 f"removed: {_shown_ids(scan.gapped)}. Their rows are the residues alone, not the alignment's columns")


def _too_long(prot: _Protein, max_length: int, options: EmbedOptions, name: str | None = None) -> InputError:
    # (`protrans contacts` has a default --max-length of its own, not the model's limit, and no chunk)
    default = getattr(options, "default_limit", None)
    limit = (option(f"--max-length {max_length}", f"max_length={max_length}") if options.max_length
             else default.format(n=max_length) if default else f"the {max_length} residues the model accepts")
    others = [p for p in getattr(options, "long_policies", LONG_POLICIES) if p != "error"]
    remedy = option(f"--long-policy {', '.join(others[:-1])} or {others[-1]}",
                    f"long_policy={', '.join(map(repr, others[:-1]))} or {others[-1]!r}")
    if not options.max_length:
        other = "another" if default else "a smaller"
        remedy += f", with {option('--max-length N', 'max_length=N')} for {other} limit"
    measure = model_length(prot.sequence, getattr(options, "chains", "error"), getattr(options, "linker_length", 0))
    what = ("" if ":" not in prot.sequence else " in its longest chain" if options.chains == "separate"
            else " with the linkers")
    return InputError(f"{measure} residues{what}, longer than {limit} (add {remedy})",
                      path=name, line=prot.line, record=prot.id)


def plan_units(proteins: list[_Protein], options: EmbedOptions, max_length: int | None, done,
               record_failure, name: str | None = None) -> tuple[list[_Unit], int]:
    """Apply resume (`done`: ids to leave out), the --long-policy at `max_length` (see
    resolve_max_length) and deduplication. Returns (units, number of proteins that share
    another's sequence). `name` is the input as errors name it."""
    by_sequence: dict[str, _Unit] = {}
    duplicates = 0
    for prot in proteins:
        if prot.id in done:
            continue
        if prot.rejected is not None:
            record_failure(prot.id, prot.rejected)
            continue
        seq, windows, text, lengths = prot.sequence, None, None, None
        chains = getattr(options, "chains", "error")
        if ":" in seq:  # (only read where chains is linker or separate)
            lengths = tuple(chain_lengths(seq))
            text = model_text(seq, chains, options.linker_length)
        measure = model_length(seq, chains, getattr(options, "linker_length", 0))
        if max_length is not None and measure > max_length:
            policy = options.long_policy
            if policy == "error":
                raise _too_long(prot, max_length, options, name)
            if policy == "skip":
                limit = (f"--max-length {max_length}" if options.max_length
                         else f"the {max_length} residues the model accepts")
                what = ("residues in its longest chain" if lengths and chains == "separate" else
                        "residues with the linkers" if lengths else "residues")
                record_failure(prot.id, f"skipped: {measure} {what} > {limit}")
                continue
            if policy == "truncate":
                seq = seq[:max_length]  # its length goes into the file (truncated_from)
            elif lengths and chains == "separate":  # windows inside each chain, none across a chain break
                windows = _chain_windows(lengths, max_length, options.chunk_overlap)
            else:
                windows = chunk_windows(len(text or seq), max_length, options.chunk_overlap)
        if lengths and chains == "separate" and windows is None:
            windows = _chain_windows(lengths, None, 0)
        # Keyed by the whole sequence, as mark_copies keys the windows': keyed by a truncated one,
        # proteins that only share a kept prefix counted as identical within a window and not
        # across windows, and the summary's figure changed with --window.
        unit = by_sequence.get(prot.sequence)
        if unit is None:
            by_sequence[prot.sequence] = _Unit(seq, [prot], windows, text=text, chains=lengths,
                                               linker=options.linker_length if lengths and chains == "linker"
                                               else None)
        else:
            unit.proteins.append(prot)
            duplicates += 1
    return list(by_sequence.values()), duplicates


def _chain_windows(lengths, max_length: int | None, overlap: int) -> list[tuple[int, int]]:
    """Windows over a complex's concatenated chains (--chains separate): each chain alone, or
    its chunk windows when it is longer than `max_length`; no window spans two chains."""
    windows, start = [], 0
    for n in lengths:
        inner = [(0, n)] if max_length is None else chunk_windows(n, max_length, overlap)
        windows += [(start + s, start + e) for s, e in inner]
        start += n
    return windows


def mark_copies(units: list[_Unit], scan: InputScan, written: dict[bytes, str]) -> int:
    """Identical sequences in different windows: the first unit is computed, later ones become
    copies of what it wrote (`unit.copy_of`). `written` maps a 16-byte digest of the sequence
    to the id it is written under, only for sequences the first pass saw more than once.
    Returns how many more proteins this finds to be duplicates: each copied unit's first (its
    others plan_units counted already; counted again, the summary's "computed once" figure
    changed with --window)."""
    copied = 0
    for unit in units:
        full = unit.proteins[0].sequence  # the whole sequence, also for a truncated unit
        if not scan.may_repeat(full):
            continue
        key = digest128(full)
        first = written.get(key)
        if first is None:
            written[key] = unit.proteins[0].id
        else:
            unit.copy_of = first
            copied += 1
    return copied


@dataclass
class _Piece:
    unit: _Unit
    index: int             # window index (0 without chunking)
    sequence: str


def default_max_tokens(device: str, embedder=None) -> int:
    """The batch budget when --max-tokens is not given.

    On a CPU batches gain no parallelism and padded ones cost extra (T5's padded position-bias
    mask above all): 512 tokens, about one average protein, measured best
    (docs/benchmarks.md#embed). On a GPU, between 4000 (ProtTrans' 4000 residues, which fits
    ProtT5-XL in bf16 on a 16 GB card) and 32000 tokens: on an H200 32000 ran 1.6x faster than
    4000 for a ProtBert-sized model (the host's kernel launches bound 4000-token batches there)
    and as fast for a ProtT5-XL-sized one (docs/benchmarks.md#gpu).

    Within those bounds: for a model whose attention keeps no (L, L) scores (the embedder's
    `activation_bytes_per_token`: SDPA families, T5 under FlexAttention), a quarter of the free
    memory over that per-token estimate, which is above what the H200 measured (a
    ProtBert-sized model: 47 KB estimated, 24-31 KB measured), so that a 16-24 GB card gets the
    large batches too; for the others (T5's materialised bias and scores: 600-870 KB per token
    at proteome lengths, growing with them), 4000 more for each 10 GiB free. An out-of-memory
    batch is still split and retried."""
    if str(device) == "cpu":
        return 512
    free = _free_accelerator_bytes(device)
    if free is None:
        return GPU_MIN_TOKENS
    per_token = embedder.activation_bytes_per_token() if hasattr(embedder, "activation_bytes_per_token") else None
    if per_token:
        budget = int(free * GPU_MEMORY_SHARE // per_token)
    else:
        budget = GPU_MIN_TOKENS * int(free // (10 * 2**30))
    return max(GPU_MIN_TOKENS, min(GPU_MAX_TOKENS, budget))


GPU_MIN_TOKENS, GPU_MAX_TOKENS = 4000, 32000
GPU_MEMORY_SHARE = 0.25  # of the free memory, for a batch's activations (by the per-token estimate)


def _free_accelerator_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (what the loaded model left), None elsewhere."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def _input_residues(piece: _Piece) -> int:
    """The input residues a piece's computation accounts for (what the progress bar counts):
    its proteins' whole lengths (a truncated protein's too), or for a chunk window the residues
    no earlier window of its protein covered (its windows add up to the protein once, not its
    overlaps twice)."""
    unit = piece.unit
    if unit.windows is None:
        return sum(residue_count(p.sequence) for p in unit.proteins)
    start, end = unit.windows[piece.index]
    covered = unit.windows[piece.index - 1][1] if piece.index else 0
    return (end - max(start, covered)) * len(unit.proteins)


def make_batches(pieces: list[_Piece], max_tokens: int, max_batch_size: int,
                 special_tokens: int = 2) -> list[list[_Piece]]:
    """Longest first, then greedy packing: a batch's padded size (longest x count) stays within
    max_tokens, and holds at most max_batch_size sequences. A sequence longer than the budget
    gets a batch of its own. Longest first also makes any out-of-memory failure happen early.

    The windows of one chunked protein stay together, at its longest window's place: its last,
    shorter window went among the short proteins at the end of the window of input, and the
    protein, written only once every window is in, was held in memory (and lost to a stop) until
    then: 291 MB at the peak for E. coli at --max-length 100 (onehot, stacked), 154 MB now."""
    def order(p: _Piece):
        windows = p.unit.windows
        if windows is None:
            return (-len(p.sequence), p.sequence, 0)
        return (-max(end - start for start, end in windows), p.unit.proteins[0].id, p.index)

    ordered = sorted(pieces, key=order)
    batches: list[list[_Piece]] = []
    current: list[_Piece] = []
    longest = 0
    for piece in ordered:
        tokens = len(piece.sequence) + special_tokens
        width = max(longest, tokens)
        if current and (width * (len(current) + 1) > max_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, width = [], tokens
        current.append(piece)
        longest = width
    if current:
        batches.append(current)
    return batches


def shard_units(units: list[_Unit], rank: int, world_size: int, pinned=None) -> list[_Unit]:
    """Residue-balanced shards: longest first, each unit to the rank with the fewest residues so
    far (deterministic, so a resumed run gives every rank the same proteins). `pinned(unit)` may
    name the rank of a unit instead (a sequence met again in a later window goes to the rank
    that wrote it, which copies it); the others balance around those."""
    if world_size == 1:
        return units
    loads = [0] * world_size
    mine, free = [], []
    for unit in units:
        target = pinned(unit) if pinned else None
        if target is None:
            free.append(unit)
            continue
        loads[target] += 0 if unit.copy_of else len(unit.sequence)
        if target == rank:
            mine.append(unit)
    for unit in sorted(free, key=lambda u: (-len(u.sequence), u.proteins[0].id)):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += len(unit.sequence)
        if target == rank:
            mine.append(unit)
    return mine


class _Background:
    """Runs `work(*args)` calls in order on one thread, so that writing a batch to HDF5 overlaps
    the next forward pass (the main thread waits on the accelerator with the GIL released).
    At most `depth` calls wait; an error in the thread is raised in the caller."""

    def __init__(self, work, depth: int = 2):
        import queue
        import threading

        self.work = work
        self.queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failed = False  # (stays set once `error` is raised: the batches queued behind it are dropped)
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name="protrans-embed-writer", daemon=True)

    def _run(self):
        import queue

        while True:
            # A timed wait besides the None sentinel: Ctrl-C can interrupt Queue.put inside
            # Condition.notify after it took this thread off the waiting list but before waking
            # it (CPython gh-92530), and an untimed get() then slept for ever (a hung Ctrl-C)
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                # (finished is set after the last submit: what it put is in the queue by then,
                # and a batch put while this wait ran out is still to be written)
                if self.finished.is_set() and self.queue.empty():
                    return
                continue
            if item is None:
                return
            # Not after an error, even once the caller raised it: a write that failed inside
            # HDF5 left the file abandoned (io.h5, EmbeddingsWriter._abandon), and the batches
            # queued behind it were written into it as the caller unwound.
            if not self.failed:
                try:
                    self.work(*item)
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc
                    self.failed = True

    def submit(self, *args):
        self._raise()
        self.queue.put(args)

    def _raise(self):
        if self.error is not None:
            error, self.error = self.error, None
            try:
                raise error
            finally:
                # (the local held the error whose traceback holds this frame: a cycle that kept
                # the run's model and writer alive after the caller caught it, until gc ran)
                del error

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        # Also after Ctrl-C: batches already computed are still written before the file closes.
        self.finished.set()
        self.queue.put(None)  # the prompt wake-up; the timed wait above is the safety net
        self.thread.join()
        if exc_type is None:
            self._raise()


# --- the pipeline -------------------------------------------------------------------------

_ON_FINAL_OUTPUT: list = []  # the CLI's callbacks (when_output_final): OUTPUT has its final name


@contextlib.contextmanager
def when_output_final(callback):
    """Within the block, `callback()` runs the moment embed's OUTPUT takes its final name (the
    rename of OUTPUT.partial, or the stacked file written): the CLI marks its output complete
    there, so a Ctrl-C, SIGTERM or SIGHUP in the moments after (closing, releasing the lock, the summary)
    is not reported as an interruption of a file already whole. Not for callers that go on with
    more work after embed (predict). Under torchrun a rank other than 0 calls `callback(quiet=True)`
    once its share is written and it only waits for rank 0's merge: a signal from then on is no
    error of its own, and rank 0 says how the run ended."""
    _ON_FINAL_OUTPUT.append(callback)
    try:
        yield
    finally:
        _ON_FINAL_OUTPUT.remove(callback)


def final_output_hook():
    """The callback for the writer of the final OUTPUT (EmbeddingsWriter.on_final), or None."""
    return _ON_FINAL_OUTPUT[-1] if _ON_FINAL_OUTPUT else None


def embed(fasta, output, options: EmbedOptions | None = None, *, embedder: Embedder | None = None,
          distributed: bool = True, input_name: str | None = None) -> EmbedSummary:
    """Embed every protein of `fasta` into the HDF5 file `output` (see docs/embed.md).

    Pass `embedder` to use a model already in memory; otherwise `options.model` is loaded.
    Under torchrun the ranks share the work; `distributed=False` embeds everything in this
    process alone (embed_sequences: each rank has its own temporary file and wants every array).
    Returns a summary (under torchrun, `summary.output` is None on every rank but rank 0);
    proteins that could not be embedded are in `summary.failed` and in the file's `failed`
    attribute. `input_name`: what messages call `fasta` (a caller's copy of stdin is still
    `<stdin>` to the user).
    """
    # (a list of files, read_fasta's records, an open file or None: a TypeError from os.stat deep
    # inside, after the model's name had been checked)
    expect_path(fasta, "fasta", " (a str or pathlib.Path)", "; '-' is stdin, and sequences in memory go to "
                                                            "embed_sequences({id: sequence}, options, kind=...)")
    expect_path(output, "output", " (a str or pathlib.Path)")
    options = options or EmbedOptions()
    expect_options(options, EmbedOptions, "options")
    options.validate()
    if embedder is not None:
        _check_embedder_kind(embedder)
        _check_embedder_layers(options, embedder)
        _check_embedder_input(options, embedder)
    if str(output) == "-":
        raise UsageError("an HDF5 file cannot be written to stdout: give " + option("-o FILE.h5", "output a file name"))
    compress = given("--compression", "compression", "gzip")
    output = checked_hdf5_output(output, "the embeddings", compressed_hint=f" ({compress} compresses its arrays)",
                                 directory_hint=f" (give {option('-o', 'output')} a file name, such as "
                                                f"{Path(output) / 'embeddings.h5'})")
    # `embed e2.fa -o e2.fa` replaced the FASTA with its embeddings (and `x.fa.partial -o x.fa`
    # truncated it on opening): refused, as prep, labels and predict do.
    for target in (output, partial_path(output)):
        if input_named_by(target, (fasta,)):
            raise UsageError(f"{target} is also the input: writing it would replace the FASTA (choose another "
                             f"{option('-o', 'output')})")
        # (only a model directory: a folder that merely bears the model's name, `onehot/` or
        # `prot_bert/` without config.json, holds nothing of the model)
        refuse_inside_model(target, (options.model,), "-o", "output")
    refuse_other_format_name(output, "-o", "the embeddings", keyword="output")
    if options.reuse:
        from protrans_cli.embed_reuse import check_reuse_paths

        options.reuse = check_reuse_paths(options.reuse, output)
    if options.resume and options.force:
        raise UsageError(option("give --resume (keep OUTPUT's proteins) or --force (replace OUTPUT), not both",
                                "give resume=True (keep output's proteins) or force=True (replace output), not both"))
    # PROTRANS_FILE_LOCKING read on every rank, since only rank 0 takes the lock: a bad value left rank 1
    # stopped by torchrun's SIGTERM ("protrans: error: terminated"), where every rank says a usage error alike.
    file_locking()
    # Held from the "exists" check to the final rename (by rank 0 under torchrun: the other ranks
    # write shards of their own): a second run on the same output is refused instead of replacing
    # this run's file, or removing its partial file, when it ends.
    rank = _torchrun_rank()[0] if distributed else 0
    lock = output_lock(output, hdf5_output_in_use()) if rank == 0 else contextlib.nullcontext()
    with lock:
        return _embed_locked(fasta, output, options, embedder, distributed, input_name)


def _embed_locked(fasta, output: Path, options: EmbedOptions, embedder, distributed: bool,
                  input_name: str | None) -> EmbedSummary:
    """`embed` once the output is this process's (its arguments checked)."""
    refuse_non_file(partial_path(output))  # (before the model loads: a named pipe there hung the run for ever)
    if output.exists() and not options.resume and not options.force:
        # Hours of embedding, replaced by a command run again without --resume.
        raise UsageError(f"{output} exists: {resume_option()} keeps its proteins and embeds what it lacks, "
                         f"{force_option()} replaces it")
    if not options.resume and not options.force:
        # The same for an interrupted run's work (a finished file that a --resume made partial
        # again, interrupted, lost all its proteins to a plain rerun, with a warning)
        left = [p for p in (partial_path(output), *map(Path, _shard_files(output))) if p.exists()]
        for path in left:  # another run's live file is named as such first
            refuse_if_in_use(path)
        if left:
            raise UsageError(f"{left[0]} holds the work of an interrupted run: {resume_option()} finishes it, "
                             f"{force_option()} replaces it")
    if (options.force or options.resume) and output.exists():
        from protrans_cli.io.h5 import refuse_replacing_other_file

        refuse_replacing_other_file(output, "embed", resume=options.resume)
    name = input_name or display_name(fasta)
    # stdin, a named pipe or a process substitution (<(zcat x.fa.gz)) can be read once: copied
    # first (a pipe was read to its end by the first pass, and the run wrote an empty, "finished"
    # file; a FIFO blocked the second open for ever)
    streamed = str(fasta) == "-" or is_stream(fasta)
    if streamed and distributed and _torchrun_rank()[1] > 1:
        raise UsageError(f"under torchrun the FASTA must be a regular file: {name} reaches one process, not "
                         "every rank")
    if streamed:  # the copy is named after the output: a live run's own copy must not be replaced
        _refuse_live_outputs(output)
    spool = _spool_input(output, fasta) if streamed else None
    try:
        source = spool or fasta
        with contextlib.suppress(OSError):
            if os.path.getsize(source) >= _SAY_FIRST_PASS_BYTES:
                # (a silent minute per GB of FASTA before the model even loads: ~10 minutes for
                # 50 million proteins)
                console.info(f"reading {name}: checking every record and id before embedding")
        ranked = distributed and _torchrun_rank()[1] > 1
        # Joined before the input is checked: the ranks arrive together, and the check (minutes
        # for a large FASTA, longer on a slow node) falls under the barriers' timeout, not the join's.
        dist = _setup_distributed() if distributed else _Dist()
        try:
            try:
                scan, failure = scan_input(source, name, options.skip_invalid, options.alphabet, options.part_of,
                                          options.chains, options.linker_length,
                                          structure=options.structure()), None
            except Exception as exc:  # noqa: BLE001 - any failure, raised once every rank has taken part:
                if not ranked:       # the others stop too (they would wait for it at the barriers for hours)
                    raise
                scan, failure = None, exc
            if ranked:
                _same_on_every_rank(options, output, scan, failure, dist.group)
            summary = EmbedSummary(output=output, num_records=scan.num_records)
            # -j for this call only (torch's count is the process's); without -j, as it is. The
            # onehot embedder computes with numpy alone: it never imports torch (1.5-2 s of a
            # proteome's 8 s run went to importing torch to set a count nothing used).
            weightless = (isinstance(embedder, (OneHotEmbedder, Blosum62Embedder))
                          or (embedder is None and is_weightless(options.model)))
            threads = torch_threads(options.threads) if options.threads and not weightless else contextlib.nullcontext()
            with threads:
                return _embed_ranked(source, name, scan, output, options, embedder, dist, summary)
        finally:
            dist.close()
    finally:
        if spool is not None:
            spool.unlink(missing_ok=True)


# what the pipeline reads of an embedder given in memory (Embedder; num_hidden_states is optional)
_EMBEDDER_ATTRIBUTES = ("name", "family", "revision", "embedding_dim", "layers", "device", "compute_dtype",
                        "special_tokens", "max_residues")


def _check_embedder_kind(embedder) -> None:
    """`embedder` is an Embedder: load_model's LoadedModel (a model in memory, as embed.md's
    "a model already in memory" reads) or a model name failed with an AttributeError traceback
    ('LoadedModel' object has no attribute 'layers')."""
    missing = [] if callable(getattr(embedder, "embed_batch", None)) else ["embed_batch()"]
    missing += [a for a in _EMBEDDER_ATTRIBUTES if not hasattr(embedder, a)]
    if not missing:
        return
    hint = ""
    if type(embedder).__name__ == "LoadedModel":
        hint = ("; a loaded model becomes one with protrans_cli.embedders.TransformerEmbedder(loaded, layers=(-1,), "
                "device=..., compute_dtype=...), or load it as one with build_embedder(options)")
    raise UsageError(f"embedder must be an Embedder (what build_embedder(options) returns, or an object with "
                     f"embed_batch(sequences) and the attributes of protrans_cli.embedders.Embedder), got "
                     f"{type(embedder).__name__}, which lacks {', '.join(missing)}{hint}")


def _check_embedder_layers(options: EmbedOptions, embedder) -> None:
    """An embedder given in memory computes the layers it was built for, whatever `options.layers`
    says: `layers=(-2,)` with an embedder built for -1 gave the last layer's rows, same shape, with
    no word. The two must name the same hidden states (-1 and num_layers are one)."""
    states = getattr(embedder, "num_hidden_states", None)
    wanted = tuple(x - states if states and x >= 0 else x for x in options.layers)
    if wanted != tuple(embedder.layers):
        raise UsageError(f"options.layers is {tuple(options.layers)} but the embedder given computes layers "
                         f"{tuple(embedder.layers)}: build it with these options (build_embedder(options)), "
                         "or give its layers")


def _check_embedder_input(options: EmbedOptions, embedder) -> None:
    """An embedder given in memory reads the sequences as it was built to (amino acids, or 3Di
    strings: TransformerEmbedder(three_di=True)), whatever `options.three_di` says: 3Di strings
    were embedded as amino acids (a file saying <AA2fold>) by an embedder built without it, and
    amino acids with X or U by a 3Di one (each such letter an unknown token), without a word."""
    pooling = getattr(embedder, "pooling", "mean")
    if options.per_protein and options.pooling != pooling:
        # (an embedder built for one pooling wrote its vectors under the other's name)
        raise UsageError(f"options.pooling is {options.pooling!r} but the embedder given pools by {pooling!r}: build "
                         "it with these options (build_embedder(options)), or give its pooling")
    three_di = getattr(getattr(embedder, "family_impl", None), "input_kind", "aa") == "3di"
    if bool(options.three_di) != three_di:
        built, asked = (("3Di strings", "amino acids") if three_di else ("amino acids", "3Di strings"))
        raise UsageError(f"options.three_di is {bool(options.three_di)} but the embedder given reads {built}, not "
                         f"{asked}: build it with these options (build_embedder(options)), or give three_di="
                         f"{three_di}")


_GIVEN = "<sequences>"  # what embed_sequences' messages call the sequences given to it
_STRUCTURE_FILE = "structure.3di.fa"  # embed_sequences' structure=, written for embed to read


def _given_structure(structure, pairs, as_list: bool, options) -> list | None:
    """embed_sequences' `structure` as (id, 3Di string) pairs of the temporary FASTA, checked
    against the form of the sequences (UsageError), or None."""
    from collections.abc import Mapping

    if structure is None:
        return None
    if options.structure_tokens is not None:
        raise UsageError("give the 3Di strings once: structure= or options.structure_tokens, not both")
    if as_list:
        if isinstance(structure, (str, bytes, Mapping)) or not hasattr(structure, "__len__"):
            raise UsageError("structure is a list of 3Di strings as long as the list of sequences, got "
                             f"{type(structure).__name__}")
        structure = list(structure)
        if len(structure) != len(pairs):
            raise UsageError(f"structure holds {len(structure)} 3Di string(s) for {len(pairs)} sequence(s): one each")
        found = {ident: text for (ident, _), text in zip(pairs, structure)}
    else:
        if not isinstance(structure, Mapping):
            raise UsageError(f"structure is {{id: 3Di string}} as the sequences are, got {type(structure).__name__}")
        missing = [ident for ident, _ in pairs if ident not in structure]
        if missing:
            raise UsageError(f"structure has no 3Di string for protein {missing[0]!r} (one for every id given)")
        found = {ident: structure[ident] for ident, _ in pairs}
    for ident, text in found.items():
        if not isinstance(text, str) or ">" in text:
            whose = f"item {ident}" if as_list else f"protein {ident!r}"
            raise UsageError(f"structure of {whose}: a 3Di string, got {text!r:.60}")
    return list(found.items())


def embed_sequences(sequences, options: EmbedOptions | None = None, *, kind: str,
                    embedder: Embedder | None = None, structure=None):
    """Embeddings in memory, for a notebook: `sequences` is {id: sequence} (returns {id: array})
    or a list of sequences (returns a list of arrays, in order). `kind` is "per_residue" ((L, D)
    arrays) or "per_protein" ((D,)); several `options.layers` add a leading layer axis.

    It runs `embed` itself through a temporary HDF5 file (batching, out-of-memory retries, the
    --max-length policy, the NaN checks, identical sequences computed once), so the arrays are
    the ones `protrans embed` writes. A protein that could not be embedded is left out of the
    dict (None in the list), with a warning naming it. Warnings name a dict's proteins by id, a
    list's by position from 0 (`item 0`, the index of its array in the list returned); errors too.

    `structure` (SaProt, as `--structure-tokens`): the 3Di strings (one Foldseek state a residue,
    either case; `#` - ? . unknown), in the form of `sequences`: {id: 3Di string} with a string
    for every id, or a list as long as the list of sequences, in its order.
    """
    from collections.abc import Mapping
    from dataclasses import replace

    from protrans_cli.io.fasta import write_fasta
    from protrans_cli.io.files import temporary_folder
    from protrans_cli.io.h5 import EmbeddingsReader

    if kind not in (PER_RESIDUE, PER_PROTEIN):
        raise UsageError(f"kind must be {PER_RESIDUE!r} or {PER_PROTEIN!r}, not {kind!r}")
    if isinstance(sequences, (str, bytes)):  # one sequence: a list of its letters, silently
        raise UsageError("sequences is {id: sequence} or a list of sequences: put one sequence in a list")
    as_list = not isinstance(sequences, Mapping)
    pairs = [(str(i), s) for i, s in enumerate(sequences)] if as_list else list(sequences.items())
    for ident, seq in pairs:
        if not isinstance(ident, str) or not ident or any(c.isspace() for c in ident):
            raise UsageError(f"protein id {ident!r}: ids are non-empty strings without whitespace")
        if not isinstance(seq, str) or ">" in seq:
            whose = f"item {ident}" if as_list else f"protein {ident!r}"
            raise UsageError(f"{whose}: a sequence is a string of residues, got {seq!r:.60}")
    if not pairs:
        return [] if as_list else {}
    options = options or EmbedOptions()
    expect_options(options, EmbedOptions, "options")
    states = _given_structure(structure, pairs, as_list, options)
    # (part: a job array's share of a FASTA; every sequence given here is wanted: with it, those
    # of the other parts were missing from the temporary file, an error naming that file)
    options = replace(options, per_residue=kind == PER_RESIDUE, per_protein=kind == PER_PROTEIN,
                      layout="grouped", resume=False, force=False, part=None)
    # (make_temporary's folder: the next call removes one that a killed kernel, the out-of-memory
    # killer's SIGKILL, left in $TMPDIR; a TemporaryDirectory stayed there for ever)
    with temporary_folder(None, "protrans-embed-") as tmp:
        fasta, output = Path(tmp) / "sequences.fa", Path(tmp) / "embeddings.h5"
        with open(fasta, "wb") as fh:
            for ident, seq in pairs:
                write_fasta(fh, ident, seq)
        if states is not None:  # (read as --structure-tokens is: its letters checked, paired by id)
            with open(Path(tmp) / _STRUCTURE_FILE, "wb") as fh:
                for ident, text in states:
                    write_fasta(fh, ident, text)
            options = replace(options, structure_tokens=str(Path(tmp) / _STRUCTURE_FILE))
        try:
            # one process even under torchrun: another rank's shards are in its own temporary folder
            # (messages name the input "<sequences>": the temporary file's path means nothing here)
            token = _ITEM_IDS.set(as_list)
            try:
                summary = embed(fasta, output, options, embedder=embedder, distributed=False, input_name=_GIVEN)
            finally:
                _ITEM_IDS.reset(token)
        except ProtransError as exc:
            if exc.path is None or (exc.path not in (_GIVEN, _STRUCTURE_FILE) and Path(tmp) not in Path(exc.path).parents):
                raise
            # the temporary FASTA's path and line mean nothing to the caller: the record says it
            # (a list's by its position, as the warnings do: "record '1'" read as an id never given)
            if as_list and exc.record is not None:
                raise type(exc)(f"item {exc.record}: {exc.message}") from None
            if (isinstance(exc, RuntimeFailure) and exc.record is None and exc.path != _GIVEN
                    and exc.message.startswith(("no room for", "cannot write"))):
                # A full disk said "the output's disk", named no folder (the caller gave no file), and
                # advised --resume of a file that is removed: the folder is $TMPDIR's.
                problem = exc.message.split("; ")[0]
                remedy = "raise the limit" if "ulimit -f" in problem else "free some space"
                raise RuntimeFailure(f"the embeddings' temporary file in this folder ($TMPDIR): {problem}; nothing is "
                                     f"kept: {remedy} (or set TMPDIR to a folder with room) and call again",
                                     path=str(Path(tmp).parent)) from None
            raise type(exc)(exc.message, record=exc.record) from None
        with EmbeddingsReader(output) as reader:
            arrays = {ident: reader.get(ident, kind) for ident, _ in pairs if ident not in summary.failed}
    if summary.failed:
        from protrans_cli.heads.labels import some_failed

        # with why (a notebook has no embed log to look in); a list's proteins by their position
        shown = [(f"{'item ' if as_list else ''}{ident}", summary.failed[ident]) for ident, _ in pairs
                 if ident in summary.failed]
        console.warn(f"{len(summary.failed)} protein(s) could not be embedded and are left out: {some_failed(shown)}")
    return [arrays.get(ident) for ident, _ in pairs] if as_list else arrays


def is_stream(path) -> bool:
    """Whether `path` names something that can be read only once: a pipe, a FIFO, a character
    device (/dev/stdin, /dev/fd/N of a process substitution); not a file, not a missing path."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def _spool_input(output: Path, fasta) -> Path:
    """stdin or a pipe cannot be read twice (the id check, then the windows): its bytes, still
    compressed if they were, go to the hidden file `.OUTPUT_NAME.stdin.spool` next to the output,
    removed when the run ends. Named after the output, not at random, so that the spool a killed run
    (SIGKILL) left behind is replaced by the next run on the same output, not kept for ever."""
    import shutil

    path = output.parent / f".{output.name}.stdin.spool"
    # A name anyone can predict, in a folder that may be shared (a lab's group-writable scratch):
    # open(path, "wb") followed a link planted there and overwrote the file it pointed to with
    # the FASTA. The old spool (or such a link) is removed, and the new one is created
    # exclusively, refusing any link, and readable by its owner only.
    try:
        fd = create_fresh(path, 0o600)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the copy of stdin: {exc.strerror or exc}", path=str(path)) from None
    try:
        with open(fd, "wb") as spool:
            if str(fasta) == "-":
                shutil.copyfileobj(stdin_binary(), spool, 1 << 20)
            else:
                try:
                    source = open(fasta, "rb")
                except OSError as exc:
                    raise InputError(f"cannot read the FASTA: {exc.strerror or exc}", path=str(fasta)) from None
                with source:
                    shutil.copyfileobj(source, spool, 1 << 20)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if (reason := disk_full(exc)) is not None:  # (a write's error names no file: "No space left on device")
            raise RuntimeFailure(f"cannot write the copy of stdin: {reason}", path=str(path)) from None
        raise
    return path


def _build_on_every_rank(options, device, dist) -> Embedder:
    """Under torchrun every rank loads the model and builds its kernels; what rank 0 says of that
    (packing, the FlexAttention kernel, a fallback) is said once, by rank 0, and another rank adds
    only what it said differently, as `rank R: ...` (a kernel that one node could not build). A
    rank whose build failed raises its error after the exchange; the others stop too, in one line,
    rather than wait for it at the first barrier."""
    from protrans_cli.training.dist import exchange

    failure = None
    with console.recording(hold=not dist.is_main) as said:
        try:
            embedder = build_embedder(options, device=device)
        except Exception as exc:  # noqa: BLE001 - raised below, after every rank has taken part
            failure = exc
    said_by, failed = exchange(said, dist.world_size, failed=failure is not None, group=dist.group)
    if not dist.is_main:
        for kind, text in said:
            if (kind, text) not in said_by[0]:
                console.say(kind, f"rank {dist.rank}: {text}")
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeFailure(f"rank(s) {', '.join(map(str, failed))} could not load or build the model "
                             "(their error is above): no rank embeds")
    return embedder


def _file_attrs(embedder, options, max_length) -> dict:
    """The output file's attributes: what made these embeddings (docs/formats.md)."""
    attrs = {
        "model": model_attr(embedder.name), "revision": embedder.revision or "",
        "commit": getattr(embedder, "commit", None) or "", "family": embedder.family,
        "layers": list(embedder.layers), "pooling": pooling_text(embedder, options.per_protein),
        "compute_dtype": embedder.compute_dtype, "device": embedder.device,
        "embedding_dim": embedder.embedding_dim, "protrans_version": __version__,
        # Called from Python, sys.argv is the script's (in a notebook, the kernel launcher's):
        # say so rather than pass it off as the command that embedded.
        "command_line": options.command_line or f"protrans_cli.embed() called from {shlex.join(sys.argv) or 'python'}",
        "max_length": max_length or 0, "long_policy": options.long_policy,
        # Only where it changes the rows, so that --resume compares it only then.
        "chunk_overlap": options.chunk_overlap if options.long_policy == "chunk" else None,
        # what the model saw of a complex (':' in a record), and the glycines joining its chains
        "chains": options.chains,
        "linker_length": options.linker_length if options.chains == "linker" else None,
        # "K/N" of --part, "" for the whole input: --resume compares it (a part extended by a run
        # over the whole input, or by another part, would hold what its name does not say)
        "part": options.part or "",
        "packing": bool(getattr(embedder, "packed", False)),
        "compiled": bool(getattr(embedder, "compiled", False)),
        # sdpa or flex (--attention); none for the onehot embedder
        "attention": getattr(embedder, "attention", None),
        "device_map": None,  # (--device-map: below; None clears a resumed file's earlier map)
    }
    if getattr(embedder, "device_map", None):  # --device-map: the setting and where each module was
        from protrans_cli.placement import map_attribute

        attrs["device_map"] = map_attribute(options.device_map, embedder.device_map)
    if getattr(embedder, "sdpa_kernels", None):
        attrs["sdpa_kernels"] = embedder.sdpa_kernels
    if getattr(getattr(embedder, "family_impl", None), "structure_aware", False):
        # SaProt: "none" (every residue's 3Di state unknown) or the --structure-tokens file's
        # digest; --resume, --reuse and merge refuse to mix the two, or two files' 3Di strings
        tokens = options.structure()
        attrs["structure_tokens"] = f"blake2b:{tokens.digest}" if tokens is not None else "none"
        if tokens is not None:
            attrs["structure_tokens_file"] = tokens.name  # (not compared: the same file under another name)
    if getattr(embedder, "weights_fingerprint", None):  # a local model directory's (it has no commit)
        attrs["weights_fingerprint"] = embedder.weights_fingerprint
    if getattr(embedder, "input_prefix", ""):
        attrs["input_prefix"] = embedder.input_prefix  # ProstT5's <AA2fold>, before every protein
    if getattr(embedder, "num_hidden_states", None):
        # With `layers` (stored negative), lets readers accept `--layer 0` for the embedding layer.
        attrs["num_hidden_states"] = int(embedder.num_hidden_states)
    return attrs


def _embed_ranked(source, name, scan: InputScan, output, options, embedder, dist, summary) -> EmbedSummary:
    """One process's run (one rank's under torchrun) once the input is scanned: open the output,
    decide what is left to compute (resumed, reused, repeated), compute it in batches, write,
    summarise."""
    if embedder is None:
        embedder = _embedder_for_rank(options, dist)
    # Resolved before the attributes: the file records the length at which --long-policy applied
    # (the model's own limit when --max-length was not given; 0 for none).
    model_max = getattr(embedder, "max_residues", None)
    max_length = summary.max_length = resolve_max_length(options, model_max)
    summary.device, summary.compute_dtype = str(embedder.device), embedder.compute_dtype
    summary.device_map = getattr(embedder, "device_map", None)
    summary.world_size = dist.world_size
    _warn_beyond_training(embedder, scan, max_length, name, dist.is_main, given=options.max_length is not None)
    _warn_cls_not_trained(embedder, options, dist.is_main)
    _warn_unknown_structure(embedder, options, dist.is_main)
    writer_kw = _writer_kw(embedder, options, scan, max_length, model_max)
    reuse = _open_reuse(options, writer_kw)

    # What is already done: the main output (or its partial file) and, under torchrun, every
    # shard file a previous run left behind.
    _refuse_live_outputs(output)  # another run's live files: hands off
    shard_files = _shard_files(output)
    # --resume of a finished output (no partial file, no shards): it may be extended
    extending = options.resume and output.exists() and not partial_path(output).exists() and not shard_files
    done = _done_so_far(source, name, output, options, writer_kw, dist, shard_files)
    # Checks that need the model or the output come before any computation, as the id check did:
    # one more pass over the input, only when there is something to check.
    if len(done) or (options.long_policy == "error" and max_length is not None and scan.longest > max_length):
        left, found, file_failed = _check_done(source, name, output, options, max_length, done, dist, extending)
        if left == 0 and not partial_path(output).exists() and not shard_files:
            # --resume of a finished file with nothing to add: the file stays as it is (it
            # would otherwise become OUTPUT.partial until the run ends).
            return _kept_as_is(output, options, scan, dist, summary, found, file_failed)
    dist.barrier()  # nobody opens a file for writing while another rank still reads it

    writer = _open_writer(output, options, writer_kw, dist, done if extending else None, shard_files)
    # (said once the output is open and there is work to do: not before an error about the output,
    # nor on a resume that has nothing left to add)
    _warn_nucleotide(scan, name, dist.is_main)
    _warn_gapped(scan, name, dist.is_main)
    run = _Computation(writer, embedder, options, scan, dist, summary, reuse, max_length)
    run.run(source, name, done)

    if run.splits:
        console.warn(f"ran out of memory {len(run.splits)} time(s); those batches were split "
                     "(a smaller --max-tokens avoids the retries)")
    summary.failed = dict(writer.failed)
    if dist.world_size > 1:
        _finish_ranks(summary, output, options, writer_kw, dist, run.cut_before)
    summary.seconds = time.perf_counter() - run.start
    return summary


def _embedder_for_rank(options, dist) -> Embedder:
    """`options.model`, built on this rank's device (every rank's, under torchrun)."""
    device = options.device
    if dist.world_size > 1 and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            from protrans_cli.training.dist import local_gpu

            # as train does: more ranks than visible GPUs share them (rank 1 of two on a
            # one-GPU machine asked for cuda:1, "invalid device ordinal")
            index = local_gpu(dist.local_rank)
            device = f"cuda:{index}"
            torch.cuda.set_device(index)
    return _build_on_every_rank(options, device, dist) if dist.world_size > 1 \
        else build_embedder(options, device=device)


def _writer_kw(embedder, options, scan: InputScan, max_length, model_max) -> dict:
    """The EmbeddingsWriter's keywords for every file this run writes: kinds, layout, storage,
    the attributes, and how --resume compares the recorded attributes with this run's."""
    attrs = _file_attrs(embedder, options, max_length)
    if options.part is not None:
        # the whole input's (the last run's, as the other attributes): `protrans merge` refuses
        # parts embedded from different inputs
        attrs["input_digest"] = scan.input_digest
    return dict(kinds=options.kinds(), layout=options.layout, storage_dtype=options.storage_dtype,
                compression=options.compression, attrs=attrs,
                resume_equal={"model": same_model, "max_length": _same_max_length(model_max),
                              "commit": same_commit,
                              # a directory has no revisions (files of earlier versions recorded
                              # an ignored --revision, and no resume matched them)
                              **({"revision": lambda old, new: True}
                                 if _model_directory(options.model) is not None else {})})


def _open_reuse(options, writer_kw: dict):
    """The --reuse files (embed_reuse.Reuse), or None."""
    # the --reuse files, checked (made as this run makes its rows) and indexed by sequence before
    # anything is read back or computed; their arrays are read as the writer reaches them
    if not options.reuse:
        return None
    from protrans_cli.embed_reuse import Reuse

    reuse = Reuse.open(options.reuse, writer_kw, structure=options.structure())
    if reuse.weights_unknown:
        # every file this run writes records no weights_fingerprint: the output of one process,
        # and under torchrun each rank's shard and the merged output (rank 0's writer_kw)
        writer_kw["weights_unknown"] = True
    return reuse


def _done_so_far(source, name, output, options, writer_kw: dict, dist, shard_files) -> _Done:
    """--resume: the proteins the output (or its partial file) and the shards hold. Otherwise
    nothing, and (--force) the shards of an earlier torchrun run are removed."""
    if options.resume:
        _refuse_planted_links(output, shard_files)
        found = []
        if not dist.is_main:  # the main rank reads (and mends, if damaged) the files first
            dist.barrier()
        for path in [partial_path(output) if partial_path(output).exists() else output, *map(Path, shard_files)]:
            if path.exists():
                found.append(_done_in(path, writer_kw, lambda: (p.id for window in read_windows(
                    source, name, options.window, options.skip_invalid, options.alphabet, options.part_of,
                    options.chains, structure=options.structure())
                    for p in window),
                    seal=path != output and dist.is_main))
        if dist.is_main:  # (two ranks mending one file at once both gave up: "delete it to start again")
            dist.barrier()
        return _Done.union(found)
    if dist.is_main:  # --force (without it, embed() refused these files)
        from protrans_cli.io.h5 import remove_ledger

        for path in shard_files:
            remove_ledger(path)
            os.unlink(path)
    return _Done.empty()


def _check_done(source, name, output, options, max_length, done: _Done, dist, extending) -> tuple[int, int, dict]:
    """Pass two (_check_before_compute), and a warning for the output's proteins that the input
    lacks. Returns the number of proteins left to do, the number of the input's proteins the
    output holds, and (`extending`) the finished file's failed proteins."""
    file_failed: dict = {}  # the finished file's failed proteins (extending)
    if extending:
        from protrans_cli.io.h5 import EmbeddingsReader

        with EmbeddingsReader(output) as reader:
            file_failed = reader.failed()
    # a finished file's proteins skipped by the length policy: the same settings skip them
    # again, so they are nothing to add (the file was rewritten for them, a run recorded)
    settled = {i for i, why in file_failed.items() if str(why).startswith("skipped:")}
    left, found = _check_before_compute(source, name, options, max_length, done, output, settled)
    gone = len(np.unique(done.ids)) - found
    if gone > 0 and dist.is_main:
        # (resume only adds: the file is not what a fresh run on this FASTA makes)
        console.warn(f"{output}: {gone:,} protein(s) in the output are not in {name} (removed from it since?): "
                     "kept; write to a new file for an output of this FASTA alone")
    return left, found, file_failed


def _kept_as_is(output, options, scan: InputScan, dist, summary: EmbedSummary, found: int,
                file_failed: dict) -> EmbedSummary:
    """The summary of a --resume that had nothing to add to a finished file."""
    # (as a run that adds proteins counts them: those with an embedding; the file's
    # failed proteins are reported as failed, not as already there. Proteins found with
    # no partial file or shard were found in the finished file: `extending`, read above.)
    summary.num_resumed = found
    summary.failed = file_failed
    if dist.is_main:  # a stacked extension's link that a kill after its partial file's removal left
        from protrans_cli.io.h5 import remove_partial

        remove_partial(partial_path(output))  # (there is none: its side files, the link's old file's space)
        if options.part is not None:
            # this part of the input is what it holds: it records the input it is now a
            # part of, as a resume that adds proteins does (the other parts, resumed on this
            # input, record it; merge refused a part kept as it was)
            _record_input_digest(output, scan.input_digest)
    if not dist.is_main:
        summary.output = None  # rank 0 reports
    return summary


def _open_writer(output, options, writer_kw: dict, dist, extended: _Done | None, shard_files) -> EmbeddingsWriter:
    """This rank's writer: its shard under torchrun, else the output (through its partial file).
    `extended`: what was read of a finished output that this run extends."""
    if dist.world_size > 1:
        out_path = shard_path(output, dist.rank, dist.world_size)
        return EmbeddingsWriter(out_path, resume=options.resume, finalize=False, **writer_kw)
    # a finished output that this run extends: what was read of it starts its ledger
    writer = EmbeddingsWriter(output, resume=options.resume, **writer_kw,
                              finished_proteins=(extended.ids, extended.sums) if extended is not None else None)
    writer.on_final = final_output_hook()
    if options.resume and shard_files:
        # An interrupted torchrun run continued in one process: its ranks' shards hold
        # proteins counted as done above; they go into this file now, then the shards go.
        _absorb_shards(writer, shard_files)
        console.info(f"merged {len(shard_files)} shard file(s) of an interrupted torchrun run into "
                     f"{partial_path(output)}")
    return writer


class _Computation:
    """The batching loop of one rank's run and the state it shares with the background writer
    (_Background). Window by window: plan the units (resumed, repeated, reused), queue the writes
    that need no model, compute the rest in batches, queue their writes. The `_write_*` and
    `_note_truncated` methods run on the writer's thread, in the order they were queued."""

    def __init__(self, writer: EmbeddingsWriter, embedder, options, scan: InputScan, dist, summary: EmbedSummary,
                 reuse, max_length: int | None):
        self.writer, self.embedder, self.options, self.scan = writer, embedder, options, scan
        self.dist, self.summary, self.reuse, self.max_length = dist, summary, reuse, max_length
        self.max_tokens = options.max_tokens or default_max_tokens(embedder.device, embedder)
        self.written: dict[bytes, str] = {}  # repeated sequences only: digest -> the id it is written under
        self.pending: dict[str, list] = {}   # chunked units waiting for their other windows, by first id
        # how windows are stitched
        self.causal = bool(getattr(getattr(embedder, "family_impl", None), "causal", False))
        self.splits: list = []  # the batches split after running out of memory (embed_with_retry)
        # the proteins an earlier run stored truncated (this run's truncate them again: the same
        # settings): the file's `truncated` lists them whether or not the earlier run closed it
        self.cut_before: set[str] = set()
        self.truncating = options.long_policy == "truncate" and max_length is not None
        # repeated sequences only: the ids of the proteins copied from a --reuse file, whose later
        # windows' copies (copied from the output) are reused proteins too, not this run's computation
        self.reused_ids: set[str] = set()
        self.start = 0.0
        self.computed = 0.0

    def run(self, source, name, done: _Done) -> None:
        """Reads the input again, window by window, and computes and writes what `done` lacks."""
        options, dist, summary = self.options, self.dist, self.summary
        self.start = time.perf_counter()  # rates count the embedding itself, not loading the model
        bar = console.progress(total=self.scan.num_residues,
                               desc="embed" if dist.world_size == 1 else f"embed[{dist.rank}]",
                               unit="res", unit_scale=True)
        try:
            with self.writer, _Background(lambda work, *args: work(*args)) as background:
                for window in read_windows(source, name, options.window, options.skip_invalid, options.alphabet,
                                           options.part_of, options.chains, structure=options.structure()):
                    done_here = done.members(window)
                    summary.num_resumed += len(done_here)
                    if self.truncating and done_here:
                        earlier = [p for p in window if p.id in done_here and len(p.sequence) > self.max_length]
                        self.cut_before.update(p.id for p in earlier)
                        background.submit(self._note_truncated, earlier)
                    failures: dict[str, str] = {}
                    units, duplicates = plan_units(window, options, self.max_length, done_here,
                                                   failures.__setitem__, name)
                    summary.num_duplicates += duplicates + mark_copies(units, self.scan, self.written)
                    mine = shard_units(units, dist.rank, dist.world_size, self._pinned)
                    reused = self._find_reused(mine, background)
                    # Queued behind the previous windows' batches, so a copy's source is already written.
                    background.submit(self._write_copies, [u for u in mine if u.copy_of], failures)
                    pieces = _pieces(mine)
                    to_count = self._count_settled(bar, window, done_here, failures, mine, reused)
                    del window, units
                    self._compute(pieces, to_count, background, bar)
        finally:
            bar.close()
            if self.reuse is not None:
                self.reuse.close()

    def _pinned(self, unit: _Unit) -> int | None:
        # Every copy of a repeated sequence goes to one rank, the one that can copy it.
        full = unit.proteins[0].sequence
        return _digest64(full) % self.dist.world_size if self.scan.may_repeat(full) else None

    def _find_reused(self, mine: list[_Unit], background) -> list[_Unit]:
        """The units found in a --reuse file (their writes queued)."""
        reused = []
        if self.reuse is None:
            return reused
        # (a copy of an earlier window's protein is copied from the output)
        fresh = [u for u in mine if not u.copy_of]
        for unit, at in zip(fresh, self.reuse.find([u.sequence for u in fresh])):
            if at is not None:
                unit.reused = at
                reused.append(unit)
                if self.scan.may_repeat(unit.proteins[0].sequence):  # (as mark_copies keys them)
                    self.reused_ids.add(unit.proteins[0].id)
        if reused:
            background.submit(self._write_reused, reused)
        return reused

    def _count_settled(self, bar, window, done_here, failures: dict, mine: list[_Unit], reused: list[_Unit]) -> int:
        """Counts a window's residues that need no computation; returns those left to count."""
        # The bar counts every residue of the input once: what needs no computation
        # (done, skipped, invalid) at once, what this rank computes as it goes (each
        # protein its whole length, truncated or not, and its copies in the window), the
        # rest (copies of earlier windows, other ranks' shares) when the window ends.
        to_count = sum(residue_count(p.sequence) for p in window)
        resumed = sum(residue_count(p.sequence) for p in window if p.id in done_here)
        settled = sum(residue_count(p.sequence) for p in window if p.id not in done_here and p.id in failures)
        taken = sum(residue_count(p.sequence) for u in reused for p in u.proteins) + sum(
            residue_count(p.sequence) for u in mine if u.copy_of in self.reused_ids for p in u.proteins)
        to_count -= resumed + settled + taken
        console.skip(bar, resumed + taken)  # (not this run's work: out of a log line's rate)
        bar.update(settled)
        return to_count

    def _compute(self, pieces: list[_Piece], to_count: int, background, bar) -> None:
        """A window's pieces, in batches: each batch's write is queued as the next one computes."""
        options = self.options
        for batch in make_batches(pieces, self.max_tokens, options.max_batch_size, self.embedder.special_tokens):
            # Means computed beside the model, rows converted to the storage dtype there;
            # windows of a chunked protein bring float32 rows, stitched and averaged
            # once all of them are in.
            whole = all(p.unit.windows is None and p.unit.linker is None for p in batch)
            want = _Want(rows=options.per_residue or not whole, means=options.per_protein and whole,
                         dtype=options.storage_dtype if whole else "float32")
            results = embed_with_retry(self.embedder, [p.sequence for p in batch], want=want,
                                       cpu_fallback=options.cpu_fallback, on_split=self.splits.append)
            background.submit(self._write_batch, batch, results)
            step = min(sum(_input_residues(p) for p in batch), to_count)
            to_count -= step
            bar.update(step)
            # proteins computed, a chunked one a share per window (the writer's count
            # lags, and stood at 0 through a run of one long protein)
            self.computed += sum(1 / len(p.unit.windows) if p.unit.windows else 1 for p in batch)
            bar.set_postfix_str(_protein_rate(self.computed, time.perf_counter() - self.start), refresh=False)
        bar.update(to_count)

    # --- on the writer's thread

    def _write_batch(self, batch, results):
        writer = self.writer
        writer.ensure_room(sum(a.nbytes for r in results if not isinstance(r, str) for a in r if a is not None))
        for piece, result in zip(batch, results):
            _deliver(piece, result, writer, self.pending, self.summary, causal=self.causal)
        writer.flush_due()

    def _note_truncated(self, proteins):
        for prot in proteins:
            self.writer.note_truncated(prot.id, len(prot.sequence))

    def _write_copies(self, units, failures):
        for ident, reason in failures.items():
            self.writer.record_failure(ident, reason)
        for unit in units:
            _deliver_copy(unit, self.writer, self.summary, reused=unit.copy_of in self.reused_ids)

    def _write_reused(self, units):
        writer = self.writer
        for unit in units:
            arrays, how = self.reuse.arrays(unit.reused)
            writer.ensure_room(sum(a.nbytes for a in arrays.values()), what="the reused proteins")
            _write_unit(unit, writer, self.summary, arrays.get(PER_RESIDUE), arrays.get(PER_PROTEIN), how,
                        reused=True)
        writer.flush_due()


def _pieces(units: list[_Unit]) -> list[_Piece]:
    """What the model computes of the units: each whole, or each window of a chunked one (none for
    a copy or a reused unit)."""
    pieces = []
    for unit in units:
        if unit.copy_of or unit.reused is not None:
            continue
        text = unit.model_input
        if unit.windows is None:
            pieces.append(_Piece(unit, 0, text))
        else:
            pieces += [_Piece(unit, i, text[s:e]) for i, (s, e) in enumerate(unit.windows)]
    return pieces


def _protein_rate(proteins: float, seconds: float) -> str:
    """The progress bar's protein rate: proteins/s, or s/protein below one a second."""
    rate = proteins / max(seconds, 1e-9)
    return f"{rate:.1f} proteins/s" if rate >= 1 else f"{1 / rate:.1f} s/protein" if rate > 0 else ""


def _refuse_live_outputs(output) -> None:
    """Refuse OUTPUT, OUTPUT.partial or a torchrun shard of it that another run is writing."""
    for path in (partial_path(output), output, *map(Path, _shard_files(output))):
        refuse_if_in_use(path)


def _refuse_planted_links(output, shard_files) -> None:
    """--resume writes into OUTPUT.partial (or a shard, or OUTPUT itself when it extends it): a
    symbolic link there that protrans never made (it makes none) or that someone else owns (a
    shared folder) was followed, and the file it led to, another user's choice, was rewritten.
    (OUTPUT as the user's own link was resolved by through_link before.)"""
    for path in (partial_path(output), *map(Path, shard_files)):
        if Path(path).is_symlink():
            raise InputError("is a symbolic link, which protrans never makes (planted in a shared folder?): "
                             f"{resume_option()} does not write through it; delete it, or {force_option()} replaces "
                             "it", path=str(path))
    output = Path(output)
    if output.is_symlink() and os.lstat(output).st_uid != os.geteuid():
        raise InputError(f"is a symbolic link someone else owns: {resume_option()} does not extend the file it leads "
                         f"to; {force_option()} replaces the link with a file of your own", path=str(output))


def _model_directory(name) -> Path | None:
    """`-m name` as a local model directory (one holding config.json), None for onehot/blosum62, a short
    name or a hub id (a folder that merely bears such a name holds no model)."""
    path = Path(str(name)).expanduser()
    return path if not is_weightless(name) and (path / "config.json").is_file() else None


# The names under which a model directory keeps what loading it, or a training run there, reads
# and writes (transformers' files; training/rundir.py's, checkpoint.py's, card.py's and
# metrics.py's): an output under one of them would replace the model's file, or be read as one
# (a tokenizer*, vocab* or adapter_* name changes how the directory loads). Matched whatever the
# case (a file system that ignores it). First match wins: the run's own names before the patterns.
_MODEL_NAMES = tuple((re.compile(pattern, re.IGNORECASE), what) for pattern, what in (
    (r"training_state\.pt", "the training run's state, which --resume reads"),
    (r"pretraining_model\.safetensors", "the training run's pretraining weights"),
    (r"train_config\.json|metrics\.jsonl|loss_curve\.png|best_checkpoint\.json|complete\.json|wandb_run\.json"
     r"|progress\.json|SHA256SUMS|lr_find\.(png|json)", "a record of the training run"),
    (r"config\.json", "its config"),
    (r"generation_config\.json|preprocessor_config\.json", "its settings"),
    (r".*\.index\.json", "the index of its weights"),
    (r".*\.(safetensors|bin|pt|pth|ckpt|msgpack|gguf)|tf_model\.h5", "its weights"),
    (r"(tokenizer|vocab|spiece|merges|sentencepiece).*|special_tokens_map\.json|added_tokens\.json|.*\.model"
     r"|chat_template.*", "its tokenizer"),
    (r"adapter_.*", "its adapter (PEFT) files"),
    (r"README\.md", "its model card"),
    (r".*\.py", "its code"),
))
# Folders a model directory or its training run uses: a file put there could replace theirs.
_MODEL_FOLDERS = {"checkpoints": "the training run's checkpoints", "generator": "ELECTRA's generator",
                  "model": "finetune's model", "tensorboard": "the training run's TensorBoard log",
                  "wandb": "the training run's W&B files"}


def _model_file_role(directory: Path, name: str) -> str | None:
    """What the entry `name` of the model directory `directory` is to the model (`_MODEL_NAMES`,
    or a file that its weights' index or its SHA256SUMS names), None for a name of no use to it."""
    import json

    if (what := next((what for pattern, what in _MODEL_NAMES if pattern.fullmatch(name)), None)) is not None:
        return what
    folded = name.casefold()
    try:
        indexes = sorted(p for p in directory.iterdir() if p.name.casefold().endswith(".index.json"))
    except OSError:
        indexes = []
    for index in indexes:
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, KeyError):
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if folded in {str(v).casefold() for v in weight_map.values()}:
                return f"its weights, named in {index.name}"
    with contextlib.suppress(OSError, ValueError):
        listed = (directory / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
        if folded in {line.split(maxsplit=1)[-1].split("/")[0].casefold() for line in listed if line.strip()}:
            return "a file its SHA256SUMS names"
    return None


def model_output_problem(path, directory: Path, contents: str | None = None) -> str | None:
    """Why the output `path` (a file; a folder where `contents` says what goes in it: "the .pt
    files") would harm the model directory `directory` in which it lies, or None where it is
    harmless there, or where it does not lie there (`refuse_inside_model`)."""
    from protrans_cli.io.files import parts_below

    parts = parts_below(path, directory)
    if parts is None:
        return None
    if not parts:
        return (f"is the model directory {directory}: {contents or 'the output'} would go among the model's files")
    first = parts[0]
    if first.casefold() in _MODEL_FOLDERS:
        if len(parts) == 1:
            return f"is the folder of {_MODEL_FOLDERS[first.casefold()]}: writing it could replace its files"
        return f"is in {directory / first}, {_MODEL_FOLDERS[first.casefold()]}: writing there could replace its files"
    if (what := _model_file_role(directory, first)) is not None:
        if len(parts) == 1:
            if os.path.lexists(directory / first):
                return f"is one of the model directory's files ({what}): writing it would replace it"
            return (f"is a name the model directory's files go under ({what}): a file there would be taken for the "
                    "model's")
        return (f"is in {directory / first}, a name the model directory's files go under ({what}): a folder there "
                "would be taken for the model's")
    # (a folder of it with a model or a run of its own: ELECTRA's generator/ by another name, a
    # checkpoint; a folder output, that folder itself)
    for k in range(1, len(parts) + (contents is not None)):
        folder = directory.joinpath(*parts[:k])
        for name in ("config.json", "training_state.pt"):
            if (folder / name).is_file():
                where = f"is in {folder}, a folder" if k < len(parts) else "is a folder"
                return (f"{where} of the model directory that holds a {name} of its own: writing there could replace "
                        "its files")
    return None


def refuse_inside_model(path, models, flag: str, keyword: str, contents: str | None = None) -> None:
    """UsageError for an output `path` that would replace or corrupt a file of the directory of one
    of `models` (-m names: only a model directory counts, `_model_directory`'s), or of the training
    run there: one of its files' names, a folder it uses, the directory itself
    (`model_output_problem`); `contents`: what a folder output `path` holds (esm-extract's
    OUTPUT_DIR). Any other name in the directory is allowed (`embed -m . -o x.h5`). Embed's and
    contacts' -o, perplexity's, generate's, variants' and translate's outputs, esm-extract's
    OUTPUT_DIR (`perplexity -m run -o run/config.json` replaced the model's config with the table,
    and every later run on that model failed with "config.json is not a valid JSON file")."""
    if path in (None, "-") or str(path) == "-":
        return
    for directory in filter(None, map(_model_directory, models)):
        if problem := model_output_problem(path, directory, contents):
            raise UsageError(f"{path} {problem} (choose another {option(flag, keyword)})")


def model_attr(name: str) -> str:
    """The file's `model` attribute for `-m name`: a local model directory as its resolved
    absolute path, so that --resume from another working directory (or with `./dir` for `dir`)
    recognises it; a short name, hub id or `onehot` as given."""
    path = _model_directory(name)
    return str(path.resolve()) if path is not None else name


def same_model(old: str, new: str) -> bool:
    """Whether a file's `model` attribute and this run's name the same model (--resume): a short
    name and its hub id are the same; a directory is compared by its resolved path. A file written
    before `model_attr` stored absolute paths holds the directory as it was given: it is resolved
    from the current directory, so resume such a run from the directory it was started in."""
    if old == new:
        return True
    return _model_key(str(old)) == _model_key(str(new))


def same_commit(old: str, new: str) -> bool:
    """The hub commit of both runs, where both know it: a resumed run whose `main` has moved on
    would mix two versions of a model in one file."""
    return not old or not new or old == new


def other_weights(recorded, now) -> str | None:
    """Where two records of one local model directory (a file's attributes, a head's
    "embedding", the directory as it is now) say its weights differ: "weights_fingerprint A,
    now B" (the directory was retrained or replaced between them); None where they agree or
    either record lacks it (a hub model, a file from before it was recorded)."""
    before, after = weights_fingerprint_of(recorded), weights_fingerprint_of(now)
    return None if before is None or after is None or before == after else f"weights_fingerprint {before}, now {after}"


def _same_max_length(model_max: int | None):
    """The --resume test of the `max_length` attribute. Files record the resolved length; files
    written by earlier versions recorded --max-length as given, 0 when it was not, which on
    the same model (compared on its own) meant the model's limit `model_max`: the same run too."""
    def same(old, new) -> bool:
        return old == new or (old == 0 and new == (model_max or 0))
    return same


def _model_key(name: str) -> str:
    # (the catalog's copy of CHECKPOINTS: protrans_cli.models imports transformers, 2 s that knn,
    # merge, fit and predict spent on two files whose model is named two ways, or two models)
    from protrans_cli.catalog import checkpoint_hub_ids

    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    if name in (hub_ids := checkpoint_hub_ids()):
        return hub_ids[name]
    return os.path.normpath(name) if path.is_absolute() else name


def _check_before_compute(source, name, options, max_length, done: "_Done", output,
                          settled: set[str] = frozenset()) -> tuple[int, int]:
    """Pass two, before any batch: an id the output already holds must carry the same sequence
    (--resume), and with --long-policy error no protein left to do may exceed `max_length`.
    Returns the number of proteins left to do (`settled`: ids not counted, a finished file's
    proteins that its length policy skipped) and the number of the input's ids already done."""
    from protrans_cli.io.h5 import sequence_checksum

    left = found = 0
    for window in read_windows(source, name, options.window, options.skip_invalid, options.alphabet,
                               options.part_of, options.chains, structure=options.structure()):
        stored = done.stored_checksums(window)
        for prot, checksum in zip(window, stored):
            found += checksum is not None
            if prot.rejected is not None and checksum is None:  # (skipped again, as a finished file's was)
                left += prot.id not in settled
                continue
            if checksum is None:
                # (a protein skipped before counts as done only if its sequence is skipped again:
                # one shortened since is embedded)
                left += not (prot.id in settled and max_length is not None
                             and model_length(prot.sequence, options.chains, options.linker_length) > max_length)
                if max_length is not None and options.long_policy == "error" \
                        and model_length(prot.sequence, options.chains, options.linker_length) > max_length:
                    raise _too_long(prot, max_length, options, name)
            elif checksum and checksum != checksum64(sequence_checksum(_kept(prot.sequence, max_length, options))):
                where = partial_path(output) if partial_path(output).exists() else output
                raise InputError("cannot resume: the output holds another sequence under this id "
                                 "(a different FASTA?); write to a new file instead", path=str(where), record=prot.id)
    return left, found


def _kept(sequence: str, max_length: int | None, options) -> str:
    """What the output holds of a sequence: its first max_length residues under --long-policy
    truncate (the stored checksum is theirs), else all of it."""
    if options.long_policy == "truncate" and max_length is not None and len(sequence) > max_length:
        return sequence[:max_length]
    return sequence


def _deliver(piece: _Piece, result, writer: EmbeddingsWriter, pending: dict, summary: EmbedSummary, *,
             causal: bool = False) -> None:
    unit = piece.unit
    # Its first protein's id: unique in the input (duplicate ids are refused). id(unit) was
    # reused once a unit was freed, and a later protein's windows were then dropped unrecorded.
    key = unit.proteins[0].id
    if isinstance(result, str):
        for prot in unit.proteins:
            writer.record_failure(prot.id, result)
        if unit.windows is not None:
            pending[key] = None  # the other windows of this protein are dropped
        return
    rows, mean = result  # rows (n_layers, L, D) or None; mean (n_layers, D) or None
    how = {result.how} if isinstance(result, Recomputed) else set()
    if unit.windows is not None:
        got = pending.setdefault(key, [None] * len(unit.windows))
        if got is None:
            return
        got[piece.index] = result
        if any(g is None for g in got):
            return
        del pending[key]
        rows = stitch_windows(unit.windows, [g[0] for g in got], len(unit.model_input), causal=causal)
        mean = None
        redone = [g.how for g in got if isinstance(g, Recomputed)]
        # (a window of a chunked protein recomputed alone: its other windows' rows are the file's
        # compute dtype, which the attribute says)
        how = {f"{h} ({redone.count(h)} of {len(got)} windows)" if len(redone) < len(got) else h for h in redone}
    if unit.linker is not None:  # a complex joined by a linker: its rows go, the mean is the chains' residues'
        rows, mean = without_linker(rows, unit.chains, unit.linker), None
    if mean is None and PER_PROTEIN in writer.kinds:
        mean = mean_rows(rows)  # (n_layers, D), squeezed below with the rows
    problem = _storage_problem(rows, mean, writer.storage_dtype)
    if problem:
        for prot in unit.proteins:
            writer.record_failure(prot.id, problem)
        return
    per_residue = None if rows is None else (rows[0] if rows.shape[0] == 1 else rows)  # (L, D) or (n_layers, L, D)
    per_protein = None if mean is None else (mean[0] if mean.shape[0] == 1 else mean)  # (D,) or (n_layers, D)
    _write_unit(unit, writer, summary, per_residue, per_protein, "; ".join(sorted(how)) or None)


def _storage_problem(rows, mean, storage: np.dtype) -> str | None:
    """Why arrays that are not yet in the storage dtype cannot be stored (NaN or infinity, or
    values beyond float16's range), or None. Rows already in it were checked where the model ran;
    stitched windows, whole proteins of a batch that held windows (float32) and means are not."""
    for values in (rows, mean):
        if values is None or values.dtype == storage:
            continue
        if not np.isfinite(values).all():
            return "NaN or infinity in the embedder's output"
        if not fits(values, storage):
            return beyond_range(values, storage.name).reason
    return None


def _write_unit(unit: _Unit, writer: EmbeddingsWriter, summary: EmbedSummary, per_residue, per_protein,
                computed: str | None = None, *, reused: bool = False) -> None:
    for prot in unit.proteins:
        # Each protein's own: proteins that share a truncated prefix (or a protein whose whole
        # sequence is another's kept prefix) are computed once but were cut from other lengths.
        extra = {}
        if unit.windows is not None and len(unit.windows) > len(unit.chains or ()):
            extra = {"chunks": len(unit.windows)}
        elif len(prot.sequence) > len(unit.sequence):
            extra = {"truncated_from": len(prot.sequence)}
            summary.truncated.append(prot.id)
        if computed:
            extra["computed"] = computed
        if unit.chains is not None:  # a complex: its residues (no ':') and each chain's
            extra.update(length=sum(unit.chains), chains=np.asarray(unit.chains, dtype=np.int64))
        writer.write(prot.id, prot.header, unit.sequence, per_residue=per_residue, per_protein=per_protein,
                     extra_attrs=extra)
        if reused:  # (copied from a --reuse file: not this run's computation, nor in its rate)
            summary.num_reused += 1
            continue
        summary.num_embedded += 1
        summary.num_residues += residue_count(unit.sequence)  # every protein written, copies of a sequence too


def _deliver_copy(unit: _Unit, writer: EmbeddingsWriter, summary: EmbedSummary, *, reused: bool = False) -> None:
    """A sequence computed in an earlier window: its stored arrays (already in the storage dtype,
    so the copy is exact) go under this unit's ids; a failure is recorded for them alike.
    `reused`: the earlier protein was copied from a --reuse file (so is this one, in the summary)."""
    from protrans_cli.io.h5 import escape_key

    reason = writer.failed.get(unit.copy_of)
    if reason is not None:
        for prot in unit.proteins:
            writer.record_failure(prot.id, reason)
        return
    arrays, computed = {}, None
    for kind in writer.kinds:
        group = writer.file if writer.layout == "flat" else writer.file[kind]
        source = group[escape_key(unit.copy_of)]
        arrays[kind] = source[()]
        computed = source.attrs.get("computed", computed)
    _write_unit(unit, writer, summary, arrays.get(PER_RESIDUE), arrays.get(PER_PROTEIN), computed, reused=reused)


class _CallableModule(types.ModuleType):
    """`from protrans_cli import embed` yields this module (a submodule import binds the package
    attribute to the module, shadowing the lazy export of the function): calling it calls
    `embed()`, so the documented `protrans_cli.embed(fasta, output, options)` works."""

    def __call__(self, *args, **kwargs):
        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
