"""Sequence packing: proteins back to back in one row, no padding, variable-length attention.

A packed batch is one row of every protein's tokens (a (1, T) batch) with `cu_seq_lens` marking
where each protein starts; position ids restart at every protein, and attention never crosses
from one protein to another, so every protein gets what it would get alone. `train --packing`
(masked-LM objectives) and `embed --packing` use it for the families marked `packable`.

On an NVIDIA GPU with PyTorch's `torch.nn.attention.varlen.varlen_attn` (Flash Attention over
cumulative lengths) a layer's attention over the whole row is one call and no padded position is
computed. Elsewhere (CPU, AMD GPUs, older PyTorch, attention dropout) the proteins are gathered into a
padded batch for one `scaled_dot_product_attention` call: the same numbers, as a reference and
as a fallback.

The model's attention implementation is switched to `ATTENTION` (registered with transformers'
AttentionInterface). A forward pass without `cu_seq_lens_q` (an ordinary padded batch) goes
through transformers' own SDPA path unchanged, so a packed model still takes padded batches;
the choice is not saved (config.json records no attention implementation).
"""

from __future__ import annotations

import numpy as np
import torch

from protrans_cli.attention import varlen_attn

ATTENTION = "protrans_packed"

# objectives whose batches can be packed (which families can: Family.packable)
PACKABLE_OBJECTIVES = ("mlm", "electra")


def _varlen():
    return varlen_attn()


def _takes_scale(fn) -> bool:
    import inspect

    return "scale" in inspect.signature(fn).parameters


def varlen_available(device) -> bool:
    """Whether packed attention on `device` runs as one fused varlen kernel (half precision, no
    attention dropout: `_fused`)."""
    device = torch.device(device)
    return device.type == "cuda" and _varlen() is not None and _flash_capable(device.index)


@torch.compiler.assume_constant_result
def _flash_capable(index) -> bool:
    """Whether CUDA device `index` (None: the current one) runs PyTorch's Flash Attention kernels,
    which varlen_attn calls: compute capability 8.0 or later. On a V100 or T4 varlen_attn raises
    ("FlashAttention only supports Ampere GPUs or newer") at run time, and inside a compiled block
    (train compiles BERT's and RoBERTa's on a GPU by default) no `except` around the call sees
    that: the error ended the run instead of falling back. A constant to torch.compile (a
    device's capability does not change).

    Never on a ROCm build of PyTorch (an AMD GPU is a `cuda` device there). Its capability is the
    gfx version (MI250X's gfx90a says 9.0, MI300X's gfx942 9.4: every AMD GPU passed, those
    AOTriton has no kernel for too), and its varlen kernel (AOTriton) returns the log-sum-exp as
    (proteins, heads, longest), not the (heads, tokens) torch.compile's model of varlen_attn
    gives it (pytorch/pytorch#187872): inductor's size check ended `train --packing` (compiled by
    default) at its first step. Packed rows run the padded call there, the same numbers."""
    if torch.version.hip:
        return False
    return torch.cuda.get_device_capability(index) >= (8, 0)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs):
    """transformers attention function: (B, H, T, D) in, ((B, T, H, D), None) out."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=False, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("a packed batch is a single row")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, H, D)
    varlen = _varlen()
    out = None
    if varlen is not None and _fused(q, dropout) and _REFUSED.get(q.shape[-1]) is None:
        try:
            out = _call_varlen(varlen, q, k, v, cu, int(kwargs["max_length_q"]), scaling)
        except torch.cuda.OutOfMemoryError:
            raise  # embed splits the batch; never hidden behind the fallback
        except RuntimeError as exc:  # e.g. a head size the Flash kernel does not take
            _REFUSED[q.shape[-1]] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            from protrans_cli import console

            console.warn(f"packed attention: the varlen kernel refused head size {q.shape[-1]} "
                         f"({_REFUSED[q.shape[-1]]}); using the padded attention call instead")
    if out is None:
        out = _padded_attention(q, k, v, cu, dropout, scaling)
    return out.unsqueeze(0), None


# head size -> why the varlen kernel refused it (asked once per process, then the fallback runs)
_REFUSED: dict[int, str] = {}


def _call_varlen(varlen, q, k, v, cu, longest: int, scaling):
    # (T, H, D) views of (H, T, D) tensors: made contiguous, as Flash kernels lay them out
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    default = q.shape[-1] ** -0.5
    if scaling is None or abs(scaling - default) < 1e-12:
        return varlen(q, k, v, cu, cu, longest, longest)  # (T, H, D)
    if _takes_scale(varlen):
        return varlen(q, k, v, cu, cu, longest, longest, scale=scaling)
    # PyTorch 2.9's varlen_attn has no scale argument (ESM scales its queries itself)
    return varlen(q * (scaling / default), k, v, cu, cu, longest, longest)


def _fused(q, dropout) -> bool:
    """Whether the varlen kernel can take this call (Flash Attention: CUDA, compute capability 8.0
    or later, half precision, no dropout)."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not dropout
            and _flash_capable(q.device.index))


# Eager under `train --compile`: its shapes come from the protein lengths on the host
# (cu.tolist()), which torch.compile took as constants: a packed row of other lengths, or the
# other of ELECTRA's two networks, recompiled it, until dynamo's recompile limit (8) ran the rest
# of the run uncompiled with a screenful of warnings. Eager, the model around it compiles once.
@torch.compiler.disable
def _padded_attention(q, k, v, cu, dropout, scaling):
    """The reference and fallback: the segments gathered into a padded (N, H, Lmax, D) batch,
    one SDPA call with a key-padding mask, the rows scattered back. The same numbers as a padded
    batch, one kernel instead of one per protein."""
    bounds = cu.tolist()
    # (segments of no tokens, `train --static-shapes`' unused slots, are left out: a row with
    # no key to attend to is NaN in SDPA)
    segs = [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    lengths = [n for _, n in segs]
    n, longest = len(lengths), max(lengths)
    offsets = torch.arange(longest, device=q.device)
    starts = torch.tensor([a for a, _ in segs], device=q.device)
    valid = offsets[None, :] < torch.tensor(lengths, device=q.device)[:, None]      # (N, Lmax)
    index = torch.where(valid, starts[:, None] + offsets[None, :], 0).reshape(-1)    # (N * Lmax,)
    heads = q.shape[1]
    q, k, v = (x.index_select(0, index).view(n, longest, heads, -1).transpose(1, 2) for x in (q, k, v))
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :],
                                                         dropout_p=dropout, scale=scaling)
    return o.transpose(1, 2).reshape(n * longest, heads, -1)[valid.reshape(-1)]     # (T, H, D)


def _packed_mask(*args, attention_mask=None, **kwargs):
    """The mask function that goes with `packed_attention`: none for packed batches (they carry
    no attention_mask), transformers' SDPA mask for ordinary ones."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, _packed_mask)


def _hf_models(model):
    from transformers import PreTrainedModel

    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


def use_packed_attention(model) -> None:
    """Switch every transformers model inside `model` (ELECTRA: the pair, its generator and its
    discriminator) to packed attention. Not saved: config.json keeps no attention choice."""
    register()
    for m in _hf_models(model):
        m.set_attn_implementation(ATTENTION)


def pack(rows: list[np.ndarray], value: int, multiple: int, width: int | None = None) -> torch.Tensor:
    """(1, T) tensor of the rows back to back, T rounded up to `multiple` with `value`; or, given
    `width` (`train --static-shapes`), T = width whatever the rows (a ValueError if they do not fit)."""
    total = sum(len(r) for r in rows)
    if width is None:
        width = max(multiple, -(-total // multiple) * multiple)
    elif total > width:
        raise ValueError(f"{total} packed tokens do not fit a static row of {width}")
    out = np.full((1, width), value, dtype=np.int64)
    if rows:
        out[0, :total] = np.concatenate(rows)
    return torch.from_numpy(out)


def model_kwargs(cu_seq_lens: torch.Tensor, max_length: int, position_ids: torch.Tensor) -> dict:
    """The keyword arguments (besides input ids) of a forward pass over a packed row."""
    return {"position_ids": position_ids, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length, "max_length_k": max_length}


def segments(lengths: list[int], width: int, position_offset: int = 0, *, slots: int | None = None,
             longest: int | None = None):
    """(cu_seq_lens (N+1,) int32, max length, position ids (1, width)) for proteins of
    `lengths` packed into a row of `width` tokens; the padding at the end is one more segment
    (it attends to itself only, and carries no labels).

    Static shapes (`train --static-shapes`): given `longest` (the phase's length), the padding is
    cut into segments of at most `longest` tokens (its position ids stay within the model's
    table) and `longest` is the max length returned whatever the proteins; given `slots`,
    cu_seq_lens has slots + 1 entries, its last offset repeated (segments of no tokens, which
    attention passes over). A ValueError where the segments outnumber the slots."""
    lengths = [int(n) for n in lengths if n > 0]
    tail = width - sum(lengths)
    while tail > 0:
        piece = tail if longest is None else min(tail, longest)
        lengths.append(piece)
        tail -= piece
    if slots is not None and len(lengths) > slots:
        raise ValueError(f"{len(lengths)} packed segments do not fit {slots} static slots")
    cu = np.zeros(max(len(lengths), slots or 0) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:len(lengths) + 1])
    cu[len(lengths) + 1:] = cu[len(lengths)]
    positions = np.concatenate([np.arange(n) for n in lengths]) + position_offset
    return (torch.from_numpy(cu), max(lengths) if longest is None else longest,
            torch.from_numpy(positions[None].astype(np.int64)))
