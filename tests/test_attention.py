"""`--sdpa-kernels`: which attention kernels `embed` and `train` allow on a GPU.

PyTorch's first choice on Hopper GPUs, cuDNN attention, builds a plan for every new batch shape,
and protrans's batches change shape all the time; `auto` leaves it out, from the padded SDPA
calls and (PyTorch 2.14+) from the packed varlen calls. These tests check the switch itself (the
global SDPA flags and varlen's choice, restored afterwards) and that both commands run their
forward (and, in training, backward) passes under the policy they were given."""

from __future__ import annotations

import contextlib

import h5py
import pytest

from conftest import DATA
from protrans_cli import attention
from protrans_cli.embed import EmbedOptions
from protrans_cli.errors import UsageError
from protrans_cli.training.config import TrainConfig

torch = pytest.importorskip("torch")

LEARNABLE = str(DATA / "train" / "learnable.txt")


def _flags() -> dict:
    b = torch.backends.cuda
    return {"cudnn": b.cudnn_sdp_enabled(), "flash": b.flash_sdp_enabled(),
            "efficient": b.mem_efficient_sdp_enabled(), "math": b.math_sdp_enabled()}


def test_auto_leaves_out_cudnn_attention_on_a_cuda_device_and_restores_the_flags():
    before = _flags()
    assert before["cudnn"], "PyTorch's default has cuDNN attention enabled"
    with attention.sdpa_kernels("cuda", "auto"):
        assert _flags() == {"cudnn": False, "flash": True, "efficient": True, "math": True}
    with attention.sdpa_kernels(torch.device("cuda", 0)):  # the default policy is auto
        assert not _flags()["cudnn"]
    assert _flags() == before
    with pytest.raises(RuntimeError), attention.sdpa_kernels("cuda"):
        raise RuntimeError("an error inside still restores the flags")
    assert _flags() == before


@pytest.mark.parametrize("device,policy", [("cpu", "auto"), ("cpu", "torch"), ("cuda", "torch")])
def test_the_cpu_and_the_torch_policy_leave_pytorch_its_choice(device, policy):
    before = _flags()
    with attention.sdpa_kernels(device, policy):
        assert _flags() == before


def _varlen():
    return pytest.importorskip("torch.nn.attention.varlen", reason="no varlen kernel in this PyTorch")


def test_auto_keeps_packed_attention_on_flash_where_pytorch_would_pick_cudnn(monkeypatch):
    # PyTorch 2.14+ on a Hopper or Blackwell GPU: varlen_attn's _should_use_cudnn says True, and
    # its forward and backward then run cuDNN, which builds a plan per new packed shape
    varlen = attention._varlen_module() or pytest.skip("this PyTorch's varlen_attn has no cuDNN choice")

    def hopper(device_index):
        return True

    monkeypatch.setattr(varlen, "_should_use_cudnn", hopper)
    with attention.sdpa_kernels("cuda", "auto"):
        assert varlen._should_use_cudnn(0) is False
    assert varlen._should_use_cudnn is hopper
    for device, policy in (("cuda", "torch"), ("cpu", "auto")):
        with attention.sdpa_kernels(device, policy):
            assert varlen._should_use_cudnn is hopper
    with pytest.raises(RuntimeError), attention.sdpa_kernels("cuda"):
        raise RuntimeError("an error inside still restores PyTorch's choice")
    assert varlen._should_use_cudnn is hopper


def test_packed_attention_stays_on_flash_until_the_last_overlapping_block_ends(monkeypatch):
    # A forward pass's choice and its backward's must agree (the backward chooses again, in
    # autograd's threads): one block ending must not hand the choice back under another.
    varlen = attention._varlen_module() or pytest.skip("this PyTorch's varlen_attn has no cuDNN choice")
    monkeypatch.setattr(varlen, "_should_use_cudnn", lambda device_index: True)
    chosen = varlen._should_use_cudnn
    first, second = attention.varlen_on_flash(), attention.varlen_on_flash()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # (not nested: the first one ends before the second)
    assert varlen._should_use_cudnn(0) is False
    second.__exit__(None, None, None)
    assert varlen._should_use_cudnn is chosen
    # a Ctrl-C between the count and the restore leaves the stand-in in place, no block running:
    # the next block that ends puts PyTorch's own choice back
    monkeypatch.setattr(varlen, "_should_use_cudnn", attention._never_cudnn)
    with attention.varlen_on_flash():
        assert varlen._should_use_cudnn(0) is False
    assert varlen._should_use_cudnn is chosen


def test_the_kernel_choice_reported_is_pytorchs_own_while_packed_attention_is_kept_on_flash(monkeypatch):
    # (`protrans env` asks it: inside a block it answered the stand-in's False, not PyTorch's choice)
    varlen = attention._varlen_module() or pytest.skip("this PyTorch's varlen_attn has no cuDNN choice")

    def hopper(device_index):
        return True

    monkeypatch.setattr(varlen, "_should_use_cudnn", hopper)
    with attention.varlen_on_flash():
        assert varlen._should_use_cudnn(0) is False and attention.varlen_kernel_choice() is hopper
    assert attention.varlen_kernel_choice() is hopper


def test_an_unknown_policy_is_refused_everywhere(tmp_path, run_cli):
    with pytest.raises(ValueError, match="unknown --sdpa-kernels"):
        attention.sdpa_kernels("cuda", "cudnn")
    with pytest.raises(UsageError, match="sdpa_kernels must be one of auto, torch"):
        TrainConfig(corpus=[LEARNABLE], sdpa_kernels="fast").validate()
    with pytest.raises(UsageError, match="^sdpa_kernels must be one of auto, torch, got 'fast'$"):
        EmbedOptions(sdpa_kernels="fast").validate()
    res = run_cli("embed", DATA / "embed" / "small.fa", "-m", "onehot", "-o", tmp_path / "x.h5",
                  "--sdpa-kernels", "fast")
    assert res.exit_code == 2 and "fast" in res.stderr
    assert not (tmp_path / "x.h5").exists()


class _Spy:
    """Stands in for attention.sdpa_kernels: records each (device, policy) and what ran inside."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.inside = False
        self.backward_inside = 0

    def __call__(self, device, policy="auto"):
        spy = self

        @contextlib.contextmanager
        def ctx():
            spy.calls.append((torch.device(device).type, policy))
            spy.inside = True
            try:
                yield
            finally:
                spy.inside = False

        return ctx()


def test_embed_runs_its_forward_passes_under_the_policy_and_records_it(tmp_path, run_cli, monkeypatch):
    from protrans_cli import embedders
    from protrans_cli.models import get_family

    fam = get_family("bert")
    tok = fam.build_tokenizer()
    torch.manual_seed(0)
    model_dir = tmp_path / "bert"
    fam.save_pretrained(fam.pretraining_model(fam.build_config("tiny", tok)).eval(), tok, model_dir)
    spy = _Spy()
    monkeypatch.setattr(embedders, "sdpa_kernels", spy)
    seen = []
    original = type(fam).hidden_states

    def hidden_states(self, *args, **kwargs):
        seen.append(spy.inside)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(fam), "hidden_states", hidden_states)
    out = tmp_path / "e.h5"
    res = run_cli("embed", DATA / "embed" / "small.fa", "-m", model_dir, "-o", out, "--sdpa-kernels", "torch",
                  "--max-tokens", "64", "-j", "1")
    assert res.exit_code == 0, res.stderr
    assert seen and all(seen), "every forward pass runs inside the attention policy"
    assert spy.calls and set(spy.calls) == {("cpu", "torch")}
    with h5py.File(out, "r") as f:
        assert f.attrs["sdpa_kernels"] == "torch"
    res = run_cli("embed", DATA / "embed" / "small.fa", "-m", model_dir, "-o", tmp_path / "d.h5", "-j", "1")
    assert res.exit_code == 0, res.stderr
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert f.attrs["sdpa_kernels"] == "auto"  # the default


def test_train_runs_forward_and_backward_under_the_policy(tmp_path, monkeypatch):
    from protrans_cli.training import loop

    spy = _Spy()
    monkeypatch.setattr(loop, "sdpa_kernels", spy)
    backward_inside = []
    original_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        backward_inside.append(spy.inside)
        return original_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    config = TrainConfig(family="bert", preset="tiny", corpus=[LEARNABLE], val_corpus=[LEARNABLE],
                         output_dir=str(tmp_path / "run"), num_steps=2, max_length=48, global_batch_size=8,
                         micro_batch_size=4, warmup_steps=1, log_every=1, save_every=1000, threads=1,
                         sdpa_kernels="torch")
    result = loop.train(config)
    assert result.completed
    train_calls = 2 * 2  # steps x micro-batches
    assert len(spy.calls) >= train_calls + 1  # + the evaluation's forward passes
    assert set(spy.calls) == {("cpu", "torch")}
    assert backward_inside and all(backward_inside), "every backward pass runs inside the policy"


@pytest.mark.gpu
def test_on_the_gpu_auto_runs_packed_attention_forward_and_backward_on_flash():
    import inspect
    import logging

    varlen = _varlen()
    # (not skipped where `_should_use_cudnn` is missing: a PyTorch that chose cuDNN by another
    # name, which varlen_on_flash does not change, must fail here, not skip)
    if "Using Flash Attention backend for varlen_attn" not in inspect.getsource(varlen):
        pytest.skip("this PyTorch's varlen_attn does not say which kernel it runs")
    t, h, d = 700, 8, 64
    q, k, v = (torch.randn(t, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 300, 700], device="cuda", dtype=torch.int32)
    said = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())  # (the backward's thread too)
    log = logging.getLogger(varlen.__name__)  # where varlen_attn says which kernel it runs
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with attention.sdpa_kernels("cuda"):
            varlen.varlen_attn(q, k, v, cu, cu, 400, 400).float().sum().backward()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(said) == 2 and all("Flash" in m for m in said), said  # forward, backward


@pytest.mark.gpu
def test_on_the_gpu_auto_never_picks_cudnn_and_changes_no_embedding():
    q = torch.randn(4, 8, 200, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(4, 1, 200, 200, device="cuda", dtype=torch.bool)
    cudnn = 3  # torch._fused_sdp_choice's number for cuDNN attention
    with attention.sdpa_kernels("cuda"):
        for m in (None, mask):
            assert torch._fused_sdp_choice(q, q, q, attn_mask=m) != cudnn
    from protrans_cli.models import get_family

    fam = get_family("bert")
    tok = fam.build_tokenizer()
    torch.manual_seed(0)
    model = fam.encoder_class(fam.build_config("small", tok)).to("cuda", torch.bfloat16).eval()
    inputs, _ = fam.encode(tok, ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 5])
    inputs = {k: v.to("cuda") for k, v in inputs.items()}
    outs = {}
    for policy in attention.SDPA_KERNELS:
        with torch.inference_mode(), attention.sdpa_kernels("cuda", policy):
            (outs[policy],) = fam.hidden_states(model, inputs, [-1])
    torch.testing.assert_close(outs["auto"].float(), outs["torch"].float(), atol=3e-2, rtol=3e-2)
