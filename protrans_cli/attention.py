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
(`--packing`) call `torch.nn.attention.varlen.varlen_attn`. Up to PyTorch 2.13 it always runs
Flash Attention. From 2.14 it runs cuDNN's ragged attention on Hopper and data-centre Blackwell
GPUs (compute capability 9.x and 10.x, cuDNN 9.18 or later; half precision, head size a
multiple of 8), which builds its plan for every new (number of proteins, longest protein) as
the padded kernel does for every (B, L), and a packed batch of embed or train is nearly always
a new one:
  2.14   for every row whose longest protein is over 128 tokens, whatever SDPA's flags say,
         chosen in `varlen._should_use_cudnn` for the forward and again for the backward pass
  2.15   by SDPA's flags and priority order (cuDNN first on those GPUs), chosen once for both
         passes, and for rows of any length with cuDNN 9.24 or later (2.15 bundles 9.26)
`auto` keeps it on Flash too, for the forward and the backward pass alike: its flags leave cuDNN
out (enough from 2.15), and `varlen_on_flash` answers 2.14's own question (the train and embed
passes, backward ones included, all run inside the policy).
"""

from __future__ import annotations

import contextlib
import threading

SDPA_KERNELS = ("auto", "torch")

# `embed --attention`: sdpa is the model's own attention (transformers' scaled_dot_product_attention
# path); flex replaces a T5 encoder's self-attention by FlexAttention (models/t5.py); auto (embed's
# default) is flex where it was measured faster and its kernel builds (a T5 model on a CUDA GPU
# in bfloat16: embed.flex_by_default), sdpa elsewhere. An embedder is built with sdpa or flex.
ATTENTIONS = ("auto", "sdpa", "flex")


def check_attention(attention: str, *, compile: bool) -> None:
    """A usage error unless `attention` is one of ATTENTIONS and goes with the other settings:
    flex compiles its own kernel (not yet inside a compiled model)."""
    from protrans_cli.errors import UsageError, one_of, option

    one_of(attention, ATTENTIONS, "--attention", keyword="attention")
    if attention == "flex" and compile:
        raise UsageError(option("--attention flex and --compile", "attention='flex' and compile=True")
                         + " cannot be combined: flex compiles its own attention kernel; choose one")


def sdpa_kernels(device, policy: str = "auto"):
    """A context manager that applies `policy` to the attention calls made inside it.

    Wrap the forward and the backward pass: the backward kernel follows the forward's choice,
    but activation checkpointing recomputes the forward inside the backward."""
    import torch

    if policy not in SDPA_KERNELS:
        raise ValueError(f"unknown --sdpa-kernels {policy!r} (choose from {', '.join(SDPA_KERNELS)})")
    if policy == "torch" or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return _without_cudnn()


@contextlib.contextmanager
def _without_cudnn():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]), \
            varlen_on_flash():
        yield


# varlen_on_flash's state: how many of its blocks are running (in any thread), and PyTorch's
# own choice, put back when the last one ends
_VARLEN_LOCK = threading.Lock()
_varlen_blocks = 0
_varlen_choice = None


def _never_cudnn(device_index) -> bool:
    return False


def varlen_attn():
    """PyTorch's `torch.nn.attention.varlen.varlen_attn` (packed batches' fused kernel), or None
    before PyTorch 2.9 (here, not in models/packing.py, so that `protrans env` reads it without the
    model package and the transformers import behind it)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # PyTorch before 2.9
        return None
    return varlen_attn


def _varlen_module():
    """torch.nn.attention.varlen where it chooses varlen_attn's kernel in `_should_use_cudnn`
    (2.11 to 2.15 have it; it says True on Hopper and data-centre Blackwell from 2.14), else None."""
    try:
        from torch.nn.attention import varlen
    except ImportError:  # PyTorch before 2.9: no varlen kernel at all
        return None
    return varlen if callable(getattr(varlen, "_should_use_cudnn", None)) else None


def varlen_kernel_choice():
    """PyTorch's own `_should_use_cudnn(device_index)` for varlen_attn (also while
    varlen_on_flash's stand-in is in place), or None where this PyTorch has no such choice."""
    varlen = _varlen_module()
    if varlen is None:
        return None
    choose = varlen._should_use_cudnn
    return _varlen_choice if choose is _never_cudnn else choose


@contextlib.contextmanager
def varlen_on_flash():
    """Inside the block, `varlen_attn` runs Flash Attention, never cuDNN (PyTorch 2.14 chooses
    cuDNN on Hopper and Blackwell GPUs in `varlen._should_use_cudnn`, without asking SDPA's
    flags, once for the forward and again for the backward pass; 2.15 asks it too, as one of
    cuDNN's conditions, after SDPA's flags, which `_without_cudnn` already sets). Process-wide
    while any such block runs (the backward pass runs in autograd's own threads), restored when
    the last one ends. Nothing changes where PyTorch has no such choice (before 2.14 it always
    runs Flash)."""
    global _varlen_blocks, _varlen_choice
    varlen = _varlen_module()
    if varlen is None:
        yield
        return
    with _VARLEN_LOCK:
        if _varlen_blocks == 0:
            # (not our own stand-in: one a Ctrl-C left in place, between the count and the
            # restore below, is put back by the next block that ends)
            if varlen._should_use_cudnn is not _never_cudnn:
                _varlen_choice = varlen._should_use_cudnn
            varlen._should_use_cudnn = _never_cudnn
        _varlen_blocks += 1
    try:
        yield
    finally:
        with _VARLEN_LOCK:
            _varlen_blocks -= 1
            if _varlen_blocks == 0 and _varlen_choice is not None:
                varlen._should_use_cudnn = _varlen_choice
