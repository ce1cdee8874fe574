"""What this machine gives protrans: versions, devices, and which fast paths can run here
(`protrans env`; the first thing to paste into a bug report or a speed question).

    from protrans_cli.environment import describe
    describe(check_compile=True)["kernels"]

The fast paths are the ones whose absence changes speed without an error: the fused varlen
kernel that `--packing` uses (otherwise packed rows go through a padded SDPA call),
FlexAttention (`embed --attention flex`) and Triton (its compiled kernel on CUDA), and whether
torch.compile can build a kernel at all (`--compile`, and flex on CUDA): a machine without a
working compiler fails there, which `check_compile` finds out in seconds instead of at the
first batch of a long job.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed, or no metadata: shown as absent
        return None


def _offline() -> bool:
    """Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), as the
    model loader reads it (here, not in protrans_cli.models: importing that package imports
    transformers, 2 s of `protrans env`'s 5)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _default_threads():
    """-j's default for the commands here, or what is wrong with PROTRANS_THREADS."""
    from protrans_cli.errors import UsageError
    from protrans_cli.threads import resolve_threads

    try:
        return resolve_threads(None)
    except UsageError as exc:
        return f"none: {exc.message}"


def describe(check_compile: bool = False) -> dict:
    """The machine as a dict (see `protrans env --json`)."""
    import torch

    # (nothing from protrans_cli.models: that package imports transformers and every model family)
    from protrans_cli import __version__
    from protrans_cli.attention import varlen_attn
    from protrans_cli.embedders import fast_fp16, mps_available, native_bf16
    from protrans_cli.spm_reader import reader_problem
    from protrans_cli.threads import available_cores

    hip = getattr(torch.version, "hip", None)
    dnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {
        "protrans": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("torch", "transformers", "tokenizers", "safetensors",
                                                        "huggingface_hub", "h5py", "numpy", "triton",
                                                        "sentencepiece", "protobuf")},
        # why the published ProtT5, ProtXLNet and ProtAlbert tokenizers cannot load here, or None
        "sentencepiece_reader": reader_problem(),
        "torch_cuda": torch.version.cuda,
        # a ROCm build (AMD GPUs, which are `cuda` devices there) has no CUDA version, and its
        # torch.backends.cudnn is MIOpen
        "torch_hip": hip,
        "cudnn": None if hip else dnn,
        "miopen": dnn if hip else None,
        # what the commands use: the cores this process may run on, and -j's default from them
        # (PROTRANS_THREADS, else at most 4), not torch's own default
        "cpu": {"cores": available_cores(), "machine_cores": os.cpu_count(), "threads": _default_threads()},
        "cuda_devices": [],
        # Apple's GPU: what embed, fit and predict take by default where there is no CUDA device
        "mps": mps_available(),
        "kernels": {},
        "hub": {"cache": _hub_cache(), "offline": _offline()},  # as the model loader reads it
    }
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        info["cuda_devices"].append({
            "index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
            # an AMD GPU's architecture (gfx90a: MI250X), which its "compute capability" (9.0) stands for
            "arch": getattr(props, "gcnArchName", None) if hip else None,
            "memory_gib": round(total / 2**30, 1), "free_gib": round(free / 2**30, 1),
            # what embed and train choose (bfloat16 in hardware, compute capability 8.0+), for
            # every device: is_bf16_supported() counts emulation (a T4 said yes, and runs float16)
            "bf16": native_bf16(f"cuda:{i}"),
            # and where it has none, whether float16 is faster than float32 (else auto is float32)
            "fast_fp16": fast_fp16(f"cuda:{i}"),
            # PyTorch 2.14+: varlen_attn (packed batches) takes cuDNN's ragged attention on this
            # device unless --sdpa-kernels auto (the default) keeps it on Flash; None: no choice
            "varlen_cudnn": _varlen_picks_cudnn(i),
        })
    cuda = bool(info["cuda_devices"])
    kernels = info["kernels"]
    kernels["varlen_attention"] = varlen_attn() is not None  # --packing's fused kernel (CUDA)
    kernels["flex_attention"] = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    kernels["triton"] = importlib.util.find_spec("triton") is not None  # flex's compiled kernel on CUDA
    if check_compile:
        kernels["compile_cpu"] = compile_check("cpu")
        if cuda:
            kernels["compile_cuda"] = compile_check("cuda")
    return info


def _varlen_picks_cudnn(index: int) -> bool | None:
    """Whether PyTorch's own choice for varlen_attn on CUDA device `index` is cuDNN (2.14+ on
    Hopper and data-centre Blackwell, cuDNN 9.18+); None where this PyTorch has no such choice."""
    from protrans_cli.attention import varlen_kernel_choice

    choose = varlen_kernel_choice()
    if choose is None:
        return None
    try:
        return bool(choose(index))
    except Exception:  # noqa: BLE001 - a private function of PyTorch's: no answer rather than a traceback
        return None


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - an older huggingface_hub: its default place
        return os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def compile_check(device: str) -> dict:
    """Whether torch.compile builds and runs a small kernel on `device` (layer norm, GELU and a
    residual add: what it fuses in a transformer block), with the seconds it took or the
    compiler's first line of error."""
    import torch

    def block(x, w):
        return x + torch.nn.functional.gelu(torch.nn.functional.layer_norm(x, x.shape[-1:]) * w)

    start = time.perf_counter()
    try:
        x = torch.randn(16, 64, device=device)
        w = torch.randn(64, device=device)
        got = torch.compile(block, dynamic=True)(x, w)
        ok = torch.allclose(got, block(x, w), atol=1e-4, rtol=1e-4)
        result = {"ok": bool(ok), "seconds": round(time.perf_counter() - start, 1)}
        if not ok:
            result["error"] = "the compiled kernel's numbers differ from eager ones"
        return result
    except Exception as exc:  # noqa: BLE001 - what a failing compiler raises varies: reported
        from protrans_cli.errors import described

        return {"ok": False, "error": described(getattr(exc, "inner_exception", None) or exc)[:300]}


def format_lines(info: dict) -> list[str]:
    """`protrans env`'s text: one `key: value` line each."""
    from protrans_cli import console  # ("commands use 1 threads" on a one-core machine)

    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    missing = [k for k, v in info["packages"].items() if not v]
    lines = [f"protrans: {info['protrans']}", f"python: {info['python']} ({info['platform']})",
             f"packages: {packages}" + (f" (not installed: {', '.join(missing)})" if missing else ""),
             (f"torch build: ROCm (HIP {info['torch_hip']}), MIOpen {info.get('miopen') or 'none'}"
              if info.get("torch_hip") else
              f"torch build: CUDA {info['torch_cuda'] or 'none (CPU build)'}, cuDNN {info['cudnn'] or 'none'}"),
             f"cpu: {info['cpu']['cores']} cores for this process (of {info['cpu']['machine_cores']}); "
             + (f"commands use {console.counted(info['cpu']['threads'], 'thread')} unless -j says otherwise"
                if isinstance(info["cpu"]["threads"], int) else f"-j's default: {info['cpu']['threads']}")]
    if not info["cuda_devices"] and info.get("mps"):
        lines.append("cuda: no device; mps: Apple GPU (embed computes there in float16, fit and predict run there; "
                     "train runs on the CPU in float32)")
    elif not info["cuda_devices"]:
        lines.append("cuda: no device (embed and train run on the CPU in float32)")
    for d in info["cuda_devices"]:
        kind = f"architecture {d['arch']}" if d.get("arch") else f"compute capability {d['capability']}"
        lines.append(f"cuda:{d['index']}: {d['name']}, {kind}, "
                     f"{d['memory_gib']} GiB ({d['free_gib']} free)"
                     + ("" if d["bf16"] is None else ", bfloat16 yes" if d["bf16"] else
                        ", bfloat16 no (float16 instead)" if d.get("fast_fp16", True) else
                        ", bfloat16 no, float16 slow (float32 instead)"))
        if d.get("varlen_cudnn"):
            lines.append(f"cuda:{d['index']}: packed attention (varlen_attn) is cuDNN's by PyTorch's choice here; "
                         "--sdpa-kernels auto (the default) keeps it on Flash Attention")
    if info.get("sentencepiece_reader"):
        lines.append(f"tokenizers of ProtT5, ProtXLNet and ProtAlbert (spiece.model): cannot load here: "
                     f"{info['sentencepiece_reader']}")
    k = info["kernels"]
    yes = {True: "yes", False: "no"}
    lines.append(f"varlen attention in this PyTorch (--packing's fused kernel on CUDA): {yes[k['varlen_attention']]}"
                 + (" (not used on AMD GPUs: packed rows run the padded call)"
                    if info.get("torch_hip") and k["varlen_attention"] else ""))
    lines.append(f"FlexAttention (embed --attention flex): {yes[k['flex_attention']]}; "
                 f"Triton (its compiled kernel on CUDA): {yes[k['triton']]}")
    for key, uses in (("compile_cpu", "--compile"), ("compile_cuda", "--compile, --attention flex")):
        if key in k:
            c = k[key]
            state = f"works ({c['seconds']} s)" if c["ok"] else f"fails ({c['error']})"
            lines.append(f"torch.compile on {key.split('_')[1]} ({uses}): {state}")
    if "compile_cpu" not in k:
        lines.append("torch.compile: not checked (--check-compile builds a small kernel)")
    lines.append(f"Hugging Face cache: {info['hub']['cache']}"
                 + (" (offline: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)" if info["hub"]["offline"] else ""))
    return lines


def print_report(info: dict, stream=None) -> None:
    stream = stream or sys.stdout
    text = "\n".join(format_lines(info)) + "\n"
    try:
        stream.write(text)
    except UnicodeEncodeError:  # a path the stream cannot hold (PYTHONIOENCODING=ascii, a Latin-1 locale)
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
