"""Which fused attention kernels `scaled_dot_product_attention` may pick for our batches.

Embedding and training feed the models batches whose shape changes from one batch to the next
(length-sorted embedding batches, length-bucketed training micro-batches). Recent PyTorch builds
put cuDNN's attention first on Hopper GPUs (H100/H200, cuDNN newer than 9.15), and cuDNN builds
and caches an execution graph for every new batch shape: tens of milliseconds of host time per
new shape, which a proteome's worth of distinct shapes pays again and again. On an H200 the
embedding benchmark spent about 80 ms per batch whatever the model's size or the batch budget
(docs/benchmarks.md, "GPU"). The flash and memory-efficient kernels have no per-shape set-up, so
they are what our CUDA forward passes use; PROTRANS_CUDNN_ATTENTION=1 leaves the choice to
PyTorch (fixed shapes, e.g. a benchmark at one padded length, can gain from cuDNN's kernels).
"""

from __future__ import annotations

import contextlib
import os


def variable_shape_attention(device):
    """A context for forward passes on `device` whose batch shapes vary: on CUDA the flash,
    memory-efficient and math kernels (never cuDNN's, see the module text); elsewhere, and with
    PROTRANS_CUDNN_ATTENTION=1, no change."""
    if not str(device).startswith("cuda") or os.environ.get("PROTRANS_CUDNN_ATTENTION") == "1":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
