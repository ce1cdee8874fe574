"""FASTA to embeddings: batching, inference, pooling, OOM handling, long sequences, writing, resume, sharding.

    from protrans_cli.embed import EmbedOptions, embed
    summary = embed("proteome.fa", "proteome.h5", EmbedOptions(model="onehot", per_protein=True))

The pipeline reads every record first (so duplicate ids fail before any computation), normalises
the sequences, applies the --max-length policy, computes each distinct sequence once, sorts the
work by length and packs it into batches bounded by a padded-token budget, and streams each
batch's results into the HDF5 writer (flushed after every batch). An `Embedder` is anything
with `embed_batch(sequences) -> [array (n_layers, L, D)]`: the built-in `onehot` embedder and every
transformer family share this code. Under torchrun, each rank embeds a balanced shard into its
own file and rank 0 merges them into the one output.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from protrans_cli import console
from protrans_cli._version import __version__
from protrans_cli.errors import InputError, ModelError, RuntimeFailure, UsageError
from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsWriter, partial_path
from protrans_cli.residues import SequenceRejected, normalise

LONG_POLICIES = ("error", "skip", "truncate", "chunk")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ONEHOT = "onehot"
ONEHOT_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"  # 20 standard residues + X (U/Z/O/B map to X)


@dataclass
class EmbedOptions:
    """Everything `protrans embed` can be asked for; the CLI fills it from its options."""

    model: str = "prot_t5_xl_half"
    revision: str | None = None
    per_residue: bool = True
    per_protein: bool = True
    layers: tuple[int, ...] = (-1,)
    layout: str = "grouped"              # grouped | flat
    storage_dtype: str = "float32"       # float32 | float16
    compression: str | None = None       # None | gzip | lzf
    device: str = "auto"
    dtype: str = "auto"                  # compute dtype
    max_tokens: int | None = None        # padded tokens per batch (longest x count); None: by device
    max_batch_size: int = 100
    max_length: int | None = None        # residues; longer proteins follow long_policy
    long_policy: str = "error"
    chunk_overlap: int = 64              # residues shared by neighbouring windows (chunk policy)
    cpu_fallback: bool = False           # retry a protein on the CPU when it alone runs out of memory
    resume: bool = False
    threads: int | None = None
    command_line: str | None = None

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in ((PER_RESIDUE, self.per_residue), (PER_PROTEIN, self.per_protein)) if on)

    def validate(self) -> None:
        if not (self.per_residue or self.per_protein):
            raise UsageError("nothing to write: ask for --per-residue and/or --per-protein")
        if self.layout == "flat" and self.per_residue and self.per_protein:
            raise UsageError("the flat layout holds one kind only: add --per-residue or --per-protein")
        if (self.max_tokens is not None and self.max_tokens < 1) or self.max_batch_size < 1:
            raise UsageError("--max-tokens and --max-batch-size must be at least 1")
        if self.long_policy not in LONG_POLICIES:
            raise UsageError(f"--long-policy must be one of {', '.join(LONG_POLICIES)}")
        if self.max_length is not None and self.max_length < 1:
            raise UsageError("--max-length must be at least 1")
        if self.long_policy == "chunk" and self.max_length is not None \
                and not 0 <= self.chunk_overlap < self.max_length:
            raise UsageError("--chunk-overlap must be at least 0 and smaller than --max-length")
        if not self.layers:
            raise UsageError("--layer needs at least one index")
        if self.device not in DEVICES and not self.device.startswith(("cuda:", "mps:")):
            raise UsageError(f"--device must be one of {', '.join(DEVICES)} or cuda:N")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")


@dataclass
class EmbedSummary:
    output: Path
    num_records: int = 0
    num_embedded: int = 0        # proteins written by this run
    num_resumed: int = 0         # already in the output (--resume)
    num_duplicates: int = 0      # proteins whose sequence another id already carried
    num_residues: int = 0        # residues embedded by this run
    seconds: float = 0.0         # from the first batch to the file's completion (model loading excluded)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def residues_per_second(self) -> float:
        return self.num_residues / self.seconds if self.seconds > 0 else 0.0


# --- embedders ---------------------------------------------------------------------------

class Embedder(Protocol):
    """What the pipeline needs from a model; the writer records the attributes."""

    name: str               # model name or path, as given
    family: str
    revision: str | None
    embedding_dim: int
    layers: tuple[int, ...]
    device: str
    compute_dtype: str
    special_tokens: int     # tokens added to each sequence (for the batch budget)
    max_residues: int | None  # longest sequence the model accepts (absolute positions), None: any

    def embed_batch(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """One float32 array (n_layers, L_i, D) per sequence; row j is residue j."""
        ...


class OneHotEmbedder:
    """The built-in baseline: one-hot residues over ACDEFGHIKLMNPQRSTVWY + X (21 dimensions).

    U/Z/O/B are encoded as X, as ProtTrans' models see them; per-protein is therefore the amino
    acid composition. It has one layer (index -1/0); other --layer values are refused.
    """

    name = ONEHOT
    family = ONEHOT
    revision = None
    embedding_dim = len(ONEHOT_ALPHABET)
    device = "cpu"
    compute_dtype = "float32"
    special_tokens = 0
    max_residues = None

    _INDEX = np.full(256, ONEHOT_ALPHABET.index("X"), dtype=np.int64)
    for _i, _c in enumerate(ONEHOT_ALPHABET):
        _INDEX[ord(_c)] = _i
        _INDEX[ord(_c.lower())] = _i

    def __init__(self, layers: Sequence[int] = (-1,)):
        bad = [x for x in layers if x not in (0, -1)]
        if bad:
            raise UsageError(f"the onehot embedder has a single layer: --layer {bad[0]} does not exist")
        self.layers = (-1,)

    def embed_batch(self, sequences: Sequence[str]) -> list[np.ndarray]:
        eye = np.eye(self.embedding_dim, dtype=np.float32)
        out = []
        for seq in sequences:
            idx = self._INDEX[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
            out.append(eye[idx][None])  # (1, L, 21)
        return out


class TransformerEmbedder:
    """A model from the family registry: tokenises with the family's conventions, keeps the
    hidden states at the requested layers and returns exactly the rows of the residues."""

    def __init__(self, loaded, layers: Sequence[int], device: str, compute_dtype: str):
        import torch

        self.loaded = loaded
        self.family_impl = loaded.family
        self.name = loaded.name
        self.family = getattr(loaded.family, "name", str(loaded.family))
        self.revision = getattr(loaded, "revision", None)
        self.embedding_dim = int(loaded.embedding_dim)
        num_states = int(loaded.num_layers) + 1  # embeddings output + every layer
        for x in layers:
            if not -num_states <= x < num_states:
                raise UsageError(f"--layer {x} does not exist: {self.name} has {loaded.num_layers} layers "
                                 f"(valid indices {-num_states}..{num_states - 1}; 0 is the embedding layer)")
        # Normalised to negative indices so that -1 and num_layers name the same layer in the file.
        self.layers = tuple(x - num_states if x >= 0 else x for x in layers)
        self.device = device
        self.compute_dtype = compute_dtype
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model.to(device=device, dtype=getattr(torch, compute_dtype)).eval()
        self.special_tokens = _count_special_tokens(self.family_impl, self.tokenizer)
        self.max_residues = _max_residues(self.model, self.special_tokens)
        self._cpu_copy = None

    def embed_batch(self, sequences: Sequence[str]) -> list[np.ndarray]:
        import torch

        model, device = self.model, self.device
        inputs, mask = self.family_impl.encode(self.tokenizer, list(sequences))
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        mask = mask.to(device=device, dtype=torch.bool)  # (B, T)
        with torch.inference_mode():
            states = self.family_impl.hidden_states(model, inputs, list(self.layers))
            stacked = torch.stack(list(states), dim=0)  # (n_layers, B, T, D)
            rows = stacked[:, mask]                     # (n_layers, sum L_i, D)
            rows = rows.float().cpu().numpy()
        lengths = mask.sum(dim=1).tolist()
        for seq, n in zip(sequences, lengths):
            if n != len(seq):
                raise RuntimeFailure(f"the {self.family} family produced {n} residue rows for a "
                                     f"{len(seq)}-residue sequence (a bug in its encode())")
        return list(np.split(rows, np.cumsum(lengths)[:-1], axis=1))

    def on_cpu(self) -> "TransformerEmbedder | None":
        """A float32 CPU twin, built on first use, for proteins too large for the accelerator."""
        import copy

        import torch

        if self.device == "cpu":
            return None
        if self._cpu_copy is None:
            twin = copy.copy(self)
            # Copied on the CPU, not on the accelerator that just ran out of memory.
            self.model.to("cpu")
            twin.model = copy.deepcopy(self.model).to(dtype=torch.float32)
            self.model.to(self.device)
            twin.device = "cpu"
            twin.compute_dtype = "float32"
            twin._cpu_copy = None
            self._cpu_copy = twin
        return self._cpu_copy


def _max_residues(model, special_tokens: int) -> int | None:
    """Residues that fit a model with a learned position table (BERT, ALBERT, ELECTRA, RoBERTa);
    None for relative or rotary positions (T5, XLNet, Transformer-XL, ESM-2), which take any length."""
    import torch

    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        return None
    # RoBERTa-style tables start counting after the padding index.
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    return table.num_embeddings - offset - special_tokens


def _count_special_tokens(family, tokenizer) -> int:
    try:
        inputs, mask = family.encode(tokenizer, ["A"])
        return int(inputs["input_ids"].shape[1]) - 1
    except Exception:  # budget estimate only; two is right for most families
        return 2


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device, compute dtype): a GPU with bf16 (fp16 without bf16 support) when there is one,
    else the CPU in float32. Half precision on the CPU is refused: it is slow and inexact there."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (try --device cpu)")
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device.startswith("mps"):
            dtype = "float16"
        else:
            dtype = "float32"
    if device == "cpu" and dtype != "float32":
        raise UsageError(f"--dtype {dtype} on the CPU: half precision is only used on a GPU (use float32)")
    return device, dtype


def build_embedder(options: EmbedOptions, *, device: str | None = None) -> Embedder:
    """The onehot embedder, or a registry model loaded from a short name, directory or hub id."""
    if options.model == ONEHOT:
        if options.device not in ("auto", "cpu") or options.dtype not in ("auto", "float32"):
            console.warn("the onehot embedder runs on the CPU in float32: --device/--dtype ignored")
        return OneHotEmbedder(options.layers)
    device_name, dtype = resolve_device(device or options.device, options.dtype)
    try:
        from protrans_cli.models import load_model
    except ImportError as exc:  # pragma: no cover - the registry ships with the package
        raise ModelError(f"the model registry is unavailable ({exc})") from None
    # Loaded straight into the compute dtype and device: a 3B-parameter checkpoint is never
    # materialised in float32 on the way to a bf16 GPU.
    loaded = load_model(options.model, device=device_name, dtype=dtype, revision=options.revision)
    return TransformerEmbedder(loaded, options.layers, device_name, dtype)


# --- work units ---------------------------------------------------------------------------

@dataclass
class _Protein:
    id: str
    header: str
    sequence: str          # normalised (rare residues kept: the checksum's sequence)
    line: int


@dataclass
class _Unit:
    """A distinct sequence to embed and every protein that carries it."""

    sequence: str                              # what the model sees (truncated if asked)
    proteins: list[_Protein]
    windows: list[tuple[int, int]] | None = None  # chunk policy: (start, end) residue windows
    truncated_from: int | None = None


def read_proteins(fasta) -> list[_Protein]:
    """Every record, normalised; duplicate ids and unusable sequences fail before any compute."""
    proteins: list[_Protein] = []
    seen: dict[str, int] = {}
    name = "<stdin>" if str(fasta) == "-" else str(fasta)
    for rec in read_fasta(fasta):
        if rec.id in seen:
            raise InputError(f"duplicate id (first seen on line {seen[rec.id]}); ids must be unique "
                             "because they are the keys of the output", path=name, line=rec.line, record=rec.id)
        seen[rec.id] = rec.line
        try:
            seq = normalise(rec.sequence, rare="keep")
        except SequenceRejected as exc:
            raise InputError(exc.detail, path=name, line=rec.line, record=rec.id) from None
        proteins.append(_Protein(rec.id, rec.description, seq, rec.line))
    if not proteins:
        raise InputError("no FASTA records", path=name)
    return proteins


def chunk_windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of at most `window` residues covering [0, length), neighbours sharing `overlap`."""
    if length <= window:
        return [(0, length)]
    step = window - overlap
    starts = list(range(0, length - window, step)) + [length - window]
    return [(s, s + window) for s in sorted(set(starts))]


def stitch_windows(windows: list[tuple[int, int]], arrays: list[np.ndarray], length: int) -> np.ndarray:
    """One (n_layers, L, D) array from overlapping window outputs: in each overlap the first
    half of the rows comes from the left window and the rest from the right one, so every row
    is taken from the window where it has the most context."""
    n_layers, _, dim = arrays[0].shape
    out = np.empty((n_layers, length, dim), dtype=arrays[0].dtype)
    for i, ((start, end), arr) in enumerate(zip(windows, arrays)):
        lo = start if i == 0 else (start + windows[i - 1][1] + 1) // 2
        hi = end if i == len(windows) - 1 else (windows[i + 1][0] + end + 1) // 2
        out[:, lo:hi] = arr[:, lo - start:hi - start]
    return out


def plan_units(proteins: list[_Protein], options: EmbedOptions, done,
               record_failure, model_max: int | None = None) -> tuple[list[_Unit], int]:
    """Apply resume, the --max-length policy (and the model's own length limit) and
    deduplication. Returns (units, number of proteins that share another's sequence)."""
    max_length = options.max_length
    if model_max is not None:
        if max_length is not None and max_length > model_max:
            raise UsageError(f"--max-length {max_length} is more than the model accepts "
                             f"({model_max} residues with its special tokens)")
        max_length = max_length or model_max
    if max_length is None and options.long_policy != "error":
        console.warn(f"--long-policy {options.long_policy} has no effect: no --max-length, "
                     "and the model takes proteins of any length")
    if options.long_policy == "chunk" and max_length is not None and not 0 <= options.chunk_overlap < max_length:
        raise UsageError(f"--chunk-overlap must be at least 0 and smaller than the window ({max_length})")
    by_sequence: dict[str, _Unit] = {}
    duplicates = 0
    for prot in proteins:
        if prot.id in done:
            continue
        seq, windows, truncated = prot.sequence, None, None
        if max_length is not None and len(seq) > max_length:
            policy = options.long_policy
            if policy == "error":
                limit = (f"--max-length {max_length}" if options.max_length
                         else f"the {max_length} residues the model accepts")
                raise InputError(f"{len(seq)} residues, longer than {limit} (add --max-length N "
                                 "--long-policy skip, truncate or chunk)", record=prot.id)
            if policy == "skip":
                record_failure(prot.id, f"skipped: {len(seq)} residues > --max-length {max_length}")
                continue
            if policy == "truncate":
                truncated, seq = len(seq), seq[:max_length]
            else:
                windows = chunk_windows(len(seq), max_length, options.chunk_overlap)
        unit = by_sequence.get(seq)
        if unit is None:
            by_sequence[seq] = _Unit(seq, [prot], windows, truncated)
        else:
            unit.proteins.append(prot)
            duplicates += 1
    return list(by_sequence.values()), duplicates


@dataclass
class _Piece:
    unit: _Unit
    index: int             # window index (0 without chunking)
    sequence: str


def default_max_tokens(device: str) -> int:
    """The batch budget when --max-tokens is not given. On a GPU, ProtTrans' 4000 residues keeps
    the large matrix products busy and fits ProtT5-XL in bf16 on a 16 GB card. On a CPU batches
    gain no parallelism and padded ones cost extra (T5's padded position-bias mask above all):
    512 tokens, about one average protein, measured best (docs/benchmarks.md#embed)."""
    return 512 if str(device) == "cpu" else 4000


def make_batches(pieces: list[_Piece], max_tokens: int, max_batch_size: int,
                 special_tokens: int = 2) -> list[list[_Piece]]:
    """Longest first, then greedy packing: a batch's padded size (longest x count) stays within
    max_tokens, and holds at most max_batch_size sequences. A sequence longer than the budget
    gets a batch of its own. Longest first also makes any out-of-memory failure happen early."""
    ordered = sorted(pieces, key=lambda p: (-len(p.sequence), p.sequence))
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


def shard_units(units: list[_Unit], rank: int, world_size: int) -> list[_Unit]:
    """Residue-balanced shards: longest first, each unit to the rank with the fewest residues so
    far (deterministic, so a resumed run gives every rank the same proteins)."""
    if world_size == 1:
        return units
    loads = [0] * world_size
    mine = []
    for unit in sorted(units, key=lambda u: (-len(u.sequence), u.proteins[0].id)):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += len(unit.sequence)
        if target == rank:
            mine.append(unit)
    return mine


# --- out of memory ------------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def embed_with_retry(embedder, sequences: list[str], *, cpu_fallback: bool = False,
                     on_split=None) -> list[np.ndarray | str]:
    """Embed a batch; on out-of-memory split it in halves down to single sequences, then try the
    CPU (when allowed). A sequence that still fails comes back as a reason string."""
    try:
        return embedder.embed_batch(sequences)
    except Exception as exc:  # noqa: BLE001 - only memory failures are handled, the rest re-raised
        if not _is_oom_safe(exc):
            raise
        _free_memory()
    if len(sequences) > 1:
        if on_split:
            on_split(len(sequences))
        half = len(sequences) // 2
        return (embed_with_retry(embedder, sequences[:half], cpu_fallback=cpu_fallback, on_split=on_split)
                + embed_with_retry(embedder, sequences[half:], cpu_fallback=cpu_fallback, on_split=on_split))
    reason = f"out of memory on {embedder.device} ({len(sequences[0])} residues)"
    twin = embedder.on_cpu() if cpu_fallback and hasattr(embedder, "on_cpu") else None
    if twin is not None:
        try:
            return twin.embed_batch(sequences)
        except Exception as exc:  # noqa: BLE001
            if not _is_oom_safe(exc):
                raise
            _free_memory()
            reason += "; out of memory on the CPU too"
    return [reason]


def _is_oom_safe(exc) -> bool:
    try:
        return is_out_of_memory(exc)
    except ImportError:  # pragma: no cover
        return False


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
        self.thread = threading.Thread(target=self._run, name="protrans-embed-writer", daemon=True)

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.work(*item)
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc

    def submit(self, *args):
        self._raise()
        self.queue.put(args)

    def _raise(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        # Also after Ctrl-C: batches already computed are still written before the file closes.
        self.queue.put(None)
        self.thread.join()
        if exc_type is None:
            self._raise()


# --- distributed --------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum_counts(self, *counts: int) -> list[int]:
        """Totals over all ranks (also the barrier before rank 0 merges the shards)."""
        import torch
        import torch.distributed as dist

        totals = torch.tensor(counts, dtype=torch.int64)
        dist.all_reduce(totals)
        return totals.tolist()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _setup_distributed(device: str) -> _Dist:
    """torchrun sets RANK/WORLD_SIZE: join the group (gloo for the barriers, the data never moves)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import datetime

    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        # Ranks finish at different times and wait in the final barrier: a generous timeout.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
        here = True
    return _Dist(rank, world, local, here)


def shard_path(output, rank: int, world_size: int) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.shard-{rank:03d}-of-{world_size:03d}")


# --- the pipeline -------------------------------------------------------------------------

def embed(fasta, output, options: EmbedOptions | None = None, *, embedder: Embedder | None = None) -> EmbedSummary:
    """Embed every protein of `fasta` into the HDF5 file `output` (see docs/embed.md).

    Pass `embedder` to use a model already in memory; otherwise `options.model` is loaded.
    Returns a summary; proteins that could not be embedded are in `summary.failed` and in the
    file's `failed` attribute.
    """
    options = options or EmbedOptions()
    options.validate()
    if str(output) == "-":
        raise UsageError("an HDF5 file cannot be written to stdout: give -o FILE.h5")
    output = Path(output)
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise InputError("output directory does not exist", path=str(output.parent))
    proteins = read_proteins(fasta)
    summary = EmbedSummary(output=output, num_records=len(proteins))

    dist = _setup_distributed(options.device)
    try:
        return _embed_ranked(proteins, output, options, embedder, dist, summary)
    finally:
        dist.close()


def _embed_ranked(proteins, output, options, embedder, dist, summary) -> EmbedSummary:
    import glob

    if embedder is None:
        device = options.device
        if dist.world_size > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{dist.local_rank}"
                torch.cuda.set_device(dist.local_rank)
        embedder = build_embedder(options, device=device)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)

    attrs = {
        "model": embedder.name, "revision": embedder.revision or "", "family": embedder.family,
        "layers": list(embedder.layers), "pooling": "mean over residue tokens (special tokens excluded)",
        "compute_dtype": embedder.compute_dtype, "device": embedder.device,
        "embedding_dim": embedder.embedding_dim, "protrans_version": __version__,
        "command_line": options.command_line or " ".join(shlex.quote(a) for a in sys.argv),
        "max_length": options.max_length or 0, "long_policy": options.long_policy,
    }
    writer_kw = dict(kinds=options.kinds(), layout=options.layout, storage_dtype=options.storage_dtype,
                     compression=options.compression, attrs=attrs)

    # What is already done: the main output (or its partial file) and, under torchrun, every
    # shard file a previous run left behind.
    done: dict[str, str | None] = {}
    shard_files = sorted(glob.glob(glob.escape(str(output)) + ".shard-*.partial"))
    if options.resume:
        for path in [partial_path(output) if partial_path(output).exists() else output, *map(Path, shard_files)]:
            if path.exists():
                found = _done_in(path, writer_kw)
                _check_same_sequences(proteins, found, path)
                done.update(found)
    elif dist.is_main:
        for path in [partial_path(output), *map(Path, shard_files)]:
            if path.exists():
                console.warn(f"{path} is left from an interrupted run and will be replaced (use --resume to continue it)")
        for path in shard_files:
            os.unlink(path)
    dist.barrier()  # nobody opens a file for writing while another rank still reads it

    summary.num_resumed = sum(1 for p in proteins if p.id in done)
    failures: dict[str, str] = {}
    units, summary.num_duplicates = plan_units(proteins, options, done, failures.__setitem__,
                                               getattr(embedder, "max_residues", None))
    my_units = shard_units(units, dist.rank, dist.world_size)

    if dist.world_size > 1:
        out_path = shard_path(output, dist.rank, dist.world_size)
        writer = EmbeddingsWriter(out_path, resume=options.resume, finalize=False, **writer_kw)
    else:
        writer = EmbeddingsWriter(output, resume=options.resume, **writer_kw)

    pieces = []
    for unit in my_units:
        if unit.windows is None:
            pieces.append(_Piece(unit, 0, unit.sequence))
        else:
            pieces += [_Piece(unit, i, unit.sequence[s:e]) for i, (s, e) in enumerate(unit.windows)]
    max_tokens = options.max_tokens or default_max_tokens(embedder.device)
    batches = make_batches(pieces, max_tokens, options.max_batch_size, embedder.special_tokens)

    total_residues = sum(len(p.sequence) for p in pieces)
    pending: dict[int, list] = {}  # chunked units waiting for their other windows
    splits = []
    start = time.perf_counter()  # rates count the embedding itself, not loading the model
    bar = console.progress(total=total_residues, desc="embed" if dist.world_size == 1 else f"embed[{dist.rank}]",
                           unit="res", unit_scale=True)
    try:
        with writer:
            for ident, reason in failures.items():
                writer.record_failure(ident, reason)

            def write_batch(batch, results):
                for piece, result in zip(batch, results):
                    _deliver(piece, result, writer, pending, summary)
                writer.flush()

            with _Background(write_batch) as background:
                for batch in batches:
                    results = embed_with_retry(embedder, [p.sequence for p in batch],
                                               cpu_fallback=options.cpu_fallback, on_split=splits.append)
                    background.submit(batch, results)
                    bar.update(sum(len(p.sequence) for p in batch))
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{summary.num_embedded / elapsed:.1f} proteins/s", refresh=False)
    finally:
        bar.close()
    if splits:
        console.warn(f"ran out of memory {len(splits)} time(s); those batches were split "
                     "(a smaller --max-tokens avoids the retries)")
    summary.failed = dict(writer.failed)

    if dist.world_size > 1:
        summary.num_embedded, summary.num_residues = dist.sum_counts(summary.num_embedded, summary.num_residues)
        if dist.is_main:
            summary.failed = _merge_shards(output, options, writer_kw, dist.world_size)
        else:
            summary.output = None  # rank 0 reports
    summary.seconds = time.perf_counter() - start
    return summary


def _done_in(path: Path, writer_kw: dict) -> dict[str, str | None]:
    """Ids already complete in an existing output (for --resume) -> their sequence checksum,
    after checking that the file was made the same way."""
    from protrans_cli.io.h5 import _check_resumable

    import h5py

    _check_resumable(path, {**writer_kw["attrs"], "layout": writer_kw["layout"],
                            "kinds": ",".join(writer_kw["kinds"]), "storage_dtype": writer_kw["storage_dtype"]})
    with h5py.File(path, "r") as f:
        per_kind = []
        for kind in writer_kw["kinds"]:
            group = f if writer_kw["layout"] == "flat" else f.get(kind)
            if group is None:
                return {}
            per_kind.append({_attr_id(group[k], k): _attr_checksum(group[k]) for k in group.keys()})
    return {ident: checksum for ident, checksum in per_kind[0].items() if all(ident in d for d in per_kind)}


def _attr_checksum(ds):
    from protrans_cli.io.h5 import _plain

    # A truncated protein's checksum describes the kept prefix: not comparable, not checked.
    return None if "truncated_from" in ds.attrs else _plain(ds.attrs.get("checksum"))


def _check_same_sequences(proteins, done: dict[str, str | None], path) -> None:
    """--resume keeps proteins by id: refuse if an id now carries another sequence."""
    from protrans_cli.io.h5 import sequence_checksum

    for prot in proteins:
        stored = done.get(prot.id)
        if stored and stored != sequence_checksum(prot.sequence):
            raise InputError(f"cannot resume: the output holds another sequence under this id "
                             f"(a different FASTA?); write to a new file instead", path=str(path), record=prot.id)


def _attr_id(ds, key):
    from protrans_cli.io.h5 import _plain, unescape_key

    return _plain(ds.attrs.get("id", unescape_key(key)))


def _deliver(piece: _Piece, result, writer: EmbeddingsWriter, pending: dict, summary: EmbedSummary) -> None:
    unit = piece.unit
    if isinstance(result, str):
        for prot in unit.proteins:
            writer.record_failure(prot.id, result)
        if unit.windows is not None:
            pending[id(unit)] = None  # the other windows of this protein are dropped
        return
    if unit.windows is not None:
        got = pending.setdefault(id(unit), [None] * len(unit.windows))
        if got is None:
            return
        got[piece.index] = result
        if any(g is None for g in got):
            return
        del pending[id(unit)]
        result = stitch_windows(unit.windows, got, len(unit.sequence))
    per_residue = result[0] if result.shape[0] == 1 else result          # (L, D) or (n_layers, L, D)
    per_protein = per_residue.mean(axis=-2, dtype=np.float64).astype(np.float32)  # (D,) or (n_layers, D)
    extra = {}
    if unit.truncated_from is not None:
        extra = {"truncated_from": unit.truncated_from}
    if unit.windows is not None:
        extra = {"chunks": len(unit.windows)}
    for prot in unit.proteins:
        writer.write(prot.id, prot.header, unit.sequence if unit.truncated_from else prot.sequence,
                     per_residue=per_residue, per_protein=per_protein, extra_attrs=extra)
        summary.num_embedded += 1
    summary.num_residues += len(unit.sequence)


def _merge_shards(output: Path, options: EmbedOptions, writer_kw: dict, world_size: int) -> dict[str, str]:
    """Rank 0: fold every rank's shard into the one output, then remove the shards."""
    import glob

    shards = sorted(glob.glob(glob.escape(str(output)) + ".shard-*.partial"))
    with EmbeddingsWriter(output, resume=options.resume, **writer_kw) as merged:
        for shard in shards:
            merged.copy_from(shard)
        failed = dict(merged.failed)
    for shard in shards:
        os.unlink(shard)
    return failed


class _CallableModule(types.ModuleType):
    """`from protrans_cli import embed` yields this module (a submodule import binds the package
    attribute to the module, shadowing the lazy export of the function): calling it calls
    `embed()`, so the documented `protrans_cli.embed(fasta, output, options)` works."""

    def __call__(self, *args, **kwargs):
        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
