"""The attention kernels our CUDA forward passes allow (protrans_cli/models/attention.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from protrans_cli.models.attention import variable_shape_attention  # noqa: E402


def _flags():
    b = torch.backends.cuda
    return {"flash": b.flash_sdp_enabled(), "efficient": b.mem_efficient_sdp_enabled(),
            "math": b.math_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled()}


def test_cuda_forward_passes_leave_out_cudnn_attention_and_restore_the_flags(monkeypatch):
    monkeypatch.delenv("PROTRANS_CUDNN_ATTENTION", raising=False)
    before = _flags()
    with variable_shape_attention("cuda:0"):
        assert _flags() == {"flash": True, "efficient": True, "math": True, "cudnn": False}
    assert _flags() == before


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_other_devices_are_left_alone(monkeypatch, device):
    monkeypatch.delenv("PROTRANS_CUDNN_ATTENTION", raising=False)
    before = _flags()
    with variable_shape_attention(device):
        assert _flags() == before


def test_the_environment_can_give_the_choice_back_to_pytorch(monkeypatch):
    monkeypatch.setenv("PROTRANS_CUDNN_ATTENTION", "1")
    before = _flags()
    with variable_shape_attention("cuda"):
        assert _flags() == before


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True])
def test_on_the_gpu_the_kernel_chosen_for_our_batches_is_not_cudnn(monkeypatch, masked):
    """PyTorch's own choice for a bf16 BERT-like attention call (padding mask or none), asked
    inside the context: flash or memory-efficient, never cuDNN, whatever the card prefers."""
    from torch.nn.attention import SDPBackend

    monkeypatch.delenv("PROTRANS_CUDNN_ATTENTION", raising=False)
    q = torch.randn(13, 16, 301, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(13, 1, 301, 301, device="cuda", dtype=torch.bool) if masked else None
    with variable_shape_attention("cuda"):
        chosen = torch._fused_sdp_choice(q, q, q, attn_mask=mask)
    assert chosen in (SDPBackend.FLASH_ATTENTION.value, SDPBackend.EFFICIENT_ATTENTION.value), chosen
