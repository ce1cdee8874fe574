"""Which fused kernel runs `scaled_dot_product_attention` on a GPU (`--sdpa-kernels`).

PyTorch picks one of its attention kernels for every call. On Hopper GPUs (H100, H200) with the
cuDNN that PyTorch 2.11 and later bundle, its first choice is cuDNN's fused attention, which
builds an execution plan ("graph") for every new combination of batch size and sequence length
and caches it. A padded forward pass over a 512-token batch builds one, its backward pass
another. protrans changes its shapes all the time: `embed` sizes each batch by a token budget
over length-sorted proteins (almost every batch is a new (B, L)), `train` rounds each
length-bucketed micro-batch to `--pad-multiple`. With cuDNN first, each new shape pays the plan
build (tens to hundreds of milliseconds, pytorch/pytorch#155958, sgl-project/sglang#4650)
before any arithmetic.

  auto   on a CUDA device, cuDNN attention is left out: Flash Attention where it applies (no
         mask), otherwise the memory-efficient kernel, which take any shape without set-up;
         the same numbers to bf16 rounding
  torch  PyTorch's own choice, untouched (cuDNN first on Hopper; worth trying for a long
         training run whose few shapes all recur, after its first steps have built them)

CPU runs are never affected (the setting only concerns CUDA kernels). Packed batches
(`--packing`) call the Flash varlen kernel directly, which this setting does not change.
"""

from __future__ import annotations

import contextlib

SDPA_KERNELS = ("auto", "torch")

# `embed --attention`: sdpa is the model's own attention (transformers' scaled_dot_product_attention
# path); flex replaces a T5 encoder's self-attention by FlexAttention (models/t5.py); auto (embed's
# default) is flex where it was measured faster and its kernel builds (a T5 model on a CUDA GPU
# in bfloat16: embed.flex_by_default), sdpa elsewhere. An embedder is built with sdpa or flex.
ATTENTIONS = ("auto", "sdpa", "flex")


def check_attention(attention: str, *, compile: bool) -> None:
    """A usage error unless `attention` is one of ATTENTIONS and goes with the other settings:
    flex compiles its own kernel (not yet inside a compiled model)."""
    from protrans_cli.errors import UsageError

    if attention not in ATTENTIONS:
        raise UsageError(f"--attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention == "flex" and compile:
        raise UsageError("--attention flex and --compile cannot be combined: flex compiles its own attention "
                         "kernel; choose one")


def sdpa_kernels(device, policy: str = "auto"):
    """A context manager that applies `policy` to the attention calls made inside it.

    Wrap the forward and the backward pass: the backward kernel follows the forward's choice,
    but activation checkpointing recomputes the forward inside the backward."""
    import torch

    if policy not in SDPA_KERNELS:
        raise ValueError(f"unknown --sdpa-kernels {policy!r} (choose from {', '.join(SDPA_KERNELS)})")
    if policy == "torch" or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
