"""One batch's forward pass, and what happens when it fails: out of memory splits the batch in
halves down to single sequences, then (when allowed) tries the CPU; a sequence whose
half-precision output held NaN or infinity is embedded again with the model in float32.

    results = embed_with_retry(embedder, sequences, cpu_fallback=True, on_split=splits.append,
                               want=_Want(rows=True, means=True, dtype="float16"))

Each result is a (rows, mean) pair (a `Recomputed` one when it was computed otherwise than the
run's device and dtype) or a one-line reason string for a sequence that still failed: the
pipeline (embed.py) records those in the output's `failed` attribute and never writes arrays with
NaN or infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protrans_cli.embedders import NonFinite, mps_available
from protrans_cli.errors import ModelError, gpu_out_of_memory


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failed pass is worth retrying smaller (embed, contacts, variants): any RuntimeError
    that says it ran out of memory (MPS's, a CUDA library's "CUDA error: out of memory", the CPU
    twin's "can't allocate memory"), and whatever errors.gpu_out_of_memory takes (MPS's "Invalid
    buffer size" too). Broader than that test, the CLI's for its one-line message, which takes
    torch's OutOfMemoryError and MPS's alone: a wrong guess here costs a retry, there it would hide
    a traceback."""
    if gpu_out_of_memory(exc):  # (torch's OutOfMemoryError, CUDA's, among them)
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif mps_available():
        torch.mps.empty_cache()  # (Apple's GPU keeps freed blocks cached too: the split retry needs them)


def _takes_pooled(embedder) -> bool:
    import inspect

    try:
        params = inspect.signature(embedder.embed_batch).parameters
    except (TypeError, ValueError):
        return False
    return "pooled" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclass(frozen=True)
class _Want:
    """What a batch's forward pass hands back: per-residue rows (in `dtype`), means, or both."""

    rows: bool
    means: bool
    dtype: str = "float32"


def _call(embedder, sequences, want: _Want) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """(rows, mean) per sequence. An embedder of the library API may implement
    embed_batch(sequences) alone: its rows come back as they are, and the means that are still
    None are taken from them where the batch is written (_deliver)."""
    if _uses_arrays(embedder):
        return embedder.embed_arrays(sequences, rows=want.rows, means=want.means, dtype=want.dtype)
    if not want.rows and _takes_pooled(embedder):
        pairs = [(None, mean) for mean in embedder.embed_batch(sequences, pooled=True)]
    else:
        pairs = [(rows, None) for rows in embedder.embed_batch(sequences)]
    # embed_arrays checks where the model runs; another embedder's arrays are checked here.
    pairs = _checked_shapes(embedder, sequences, pairs)
    return [pair if all(a is None or np.isfinite(a).all() for a in pair)
            else NonFinite("NaN or infinity in the embedder's output", False) for pair in pairs]


def _checked_shapes(embedder, sequences, pairs) -> list:
    """A library embedder's arrays as numpy arrays of the documented shapes: (n_layers, L, D)
    rows, (n_layers, D) means. Rows that kept the special tokens' (L + 2), a missing layer axis
    or another width were written as they came: a per-residue array longer than the protein,
    its mean over the special tokens' rows too, a width other than the file's embedding_dim."""
    if len(pairs) != len(sequences):
        raise ModelError(f"{embedder.name}: embed_batch returned {len(pairs)} arrays for {len(sequences)} sequences")
    layers = len(getattr(embedder, "layers", None) or (-1,))
    width = embedder.embedding_dim
    checked = []
    for seq, pair in zip(sequences, pairs):
        out = []
        for values, expected in zip(pair, ((layers, len(seq), width), (layers, width))):
            if values is not None:
                values = np.asarray(values)
                if values.shape != expected:
                    raise ModelError(f"{embedder.name}: embed_batch returned an array of shape {values.shape} for a "
                                     f"sequence of {len(seq)} residues; expected {expected}, (layers, residues, "
                                     "embedding_dim) for rows or (layers, embedding_dim) for a mean: one row per "
                                     "residue, no special tokens'")
            out.append(values)
        checked.append(tuple(out))
    return checked


def _uses_arrays(embedder) -> bool:
    """Whether `embed_arrays` is the embedder's way to embed: not when a subclass overrides
    `embed_batch` below the class that defines `embed_arrays` (its own embed_batch is then what
    it means, as before embed_arrays existed)."""
    mro = type(embedder).__mro__
    arrays = next((c for c in mro if "embed_arrays" in c.__dict__), None)
    batch = next((c for c in mro if "embed_batch" in c.__dict__), None)
    return arrays is not None and (batch is None or issubclass(arrays, batch))


class Recomputed(tuple):
    """(rows, mean) of a sequence computed otherwise than the run's device and dtype: on the CPU
    after running out of memory, or in float32 after its half-precision output overflowed.
    `how` goes into its datasets' `computed` attribute."""

    how: str

    def __new__(cls, pair, how: str):
        made = super().__new__(cls, pair)
        made.how = how
        return made


def embed_with_retry(embedder, sequences: list[str], *, cpu_fallback: bool = False,
                     on_split=None, want: _Want = _Want(rows=True, means=False)) -> list[tuple | str]:
    """Embed a batch into (rows, mean) pairs (see _call); on out-of-memory split it in halves
    down to single sequences, then try the CPU (when allowed). A sequence whose half-precision
    output held NaN or infinity is embedded again with the model in float32. A sequence that
    still fails comes back as a reason string: arrays with NaN or infinity are never written."""
    results = _embed_or_split(embedder, sequences, cpu_fallback, on_split, want)
    return [r.reason if isinstance(r, NonFinite) else r for r in results]


def _embed_or_split(embedder, sequences, cpu_fallback, on_split, want) -> list[tuple | str | NonFinite]:
    try:
        results = _call(embedder, sequences, want)
    except Exception as exc:  # noqa: BLE001 - only memory failures are handled, the rest re-raised
        if not is_out_of_memory(exc):
            raise
    else:
        return _redo_in_float32(embedder, sequences, results, cpu_fallback, on_split, want)
    # Out of the except block: its traceback held the failed pass's frames, and with them its
    # activations, so the cache emptied there kept their memory through the retry.
    _free_memory()
    if len(sequences) > 1:
        if on_split:
            on_split(len(sequences))
        half = len(sequences) // 2
        return (_embed_or_split(embedder, sequences[:half], cpu_fallback, on_split, want)
                + _embed_or_split(embedder, sequences[half:], cpu_fallback, on_split, want))
    reason = f"out of memory on {embedder.device} ({len(sequences[0])} residues)"
    twin = embedder.on_cpu() if cpu_fallback and hasattr(embedder, "on_cpu") else None
    if twin is not None:
        try:
            how = f"float32 on the CPU (out of memory on {embedder.device})"
            return [r if isinstance(r, NonFinite) else Recomputed(r, how) for r in _call(twin, sequences, want)]
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc):
                raise
        _free_memory()  # (out of the except block, as above)
        reason += "; out of memory on the CPU too"
    return [reason]


def _redo_in_float32(embedder, sequences, results, cpu_fallback, on_split, want) -> list:
    """The sequences whose output overflowed in half precision, once more with the model in
    float32 on the same device (TransformerEmbedder.in_float32); what is still not finite keeps
    a NonFinite that says so."""
    redo = [i for i, r in enumerate(results) if isinstance(r, NonFinite) and r.compute]
    if not redo or getattr(embedder, "compute_dtype", "float32") == "float32" or not hasattr(embedder, "in_float32"):
        return results
    if getattr(embedder, "device_map", None):  # (its weights offloaded in the dtype they were loaded in)
        results = list(results)
        for i in redo:
            results[i] = NonFinite(f"{results[i].reason} (no float32 retry for a model spread with --device-map: "
                                   "give --dtype float32)", False)
        return results
    results, again = list(results), None
    try:
        with embedder.in_float32() as exact:
            again = _embed_or_split(exact, [sequences[i] for i in redo], cpu_fallback, on_split, want)
    except Exception as exc:  # noqa: BLE001 - casting the weights to float32 ran out of memory
        if not is_out_of_memory(exc):
            raise
    if again is None:
        _free_memory()  # (out of the except block, as in _embed_or_split)
        for i in redo:
            results[i] = f"{results[i].reason}; out of memory for a float32 retry"
        return results
    for i, result in zip(redo, again):
        if isinstance(result, NonFinite) and result.compute:
            result = NonFinite(f"{results[i].reason}, and in float32 too", True)
        elif isinstance(result, str):  # the retry ran out of memory
            result = f"{results[i].reason}; the float32 retry: {result}"
        elif not isinstance(result, (NonFinite, Recomputed)):
            why = results[i].retried_because or f"NaN or infinity in {embedder.compute_dtype}"
            result = Recomputed(result, f"float32 on {embedder.device} ({why})")
        results[i] = result
    return results
