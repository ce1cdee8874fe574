"""A model spread over several devices (`embed --device-map`): transformers' `from_pretrained(
device_map=..., max_memory=..., offload_folder=...)`, which places whole blocks on GPUs, then
the CPU's memory, then files on disk (the `accelerate` package moves each block's weights to where
its input is). No heavy imports here: the CLI validates its options with these.
"""

from __future__ import annotations

import re

from protrans_cli.errors import UsageError

DEVICE_MAPS = ("auto", "balanced", "sequential")
INSTALL_BIG = 'pip install "protrans[big]"'

# accelerate's sizes: a number and a unit (GiB: 2**30, GB: 10**9), or bytes
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", re.IGNORECASE)
_DEVICE_KEY = re.compile(r"\d+|cpu|disk|mps|cuda:\d+")


def parse_max_memory(text: str | None, flag: str = "--max-memory") -> dict | None:
    """`0=20GiB,1=20GiB,cpu=60GiB` as from_pretrained's max_memory ({0: "20GiB", 1: "20GiB",
    "cpu": "60GiB"}); None for None. UsageError naming the item that is not DEVICE=SIZE."""
    if text is None:
        return None
    result: dict = {}
    for item in str(text).split(","):
        device, sep, size = (part.strip() for part in item.partition("="))
        problem = None
        if not sep or not device or not size:
            problem = "not DEVICE=SIZE"
        elif not _DEVICE_KEY.fullmatch(device.lower()):
            problem = f"{device!r} is not a device (a GPU index 0, 1, ..., cpu or mps)"
        elif not _SIZE.fullmatch(size) or not float(re.match(r"[\d.]+", size).group()) > 0:
            problem = f"{size!r} is not a size (e.g. 20GiB, 500MB, or bytes)"
        elif device.lower() == "disk":
            problem = "disk takes no limit: weights beyond the other devices go to --offload-folder"
        if problem is None:
            key = int(device.removeprefix("cuda:")) if device.lower().removeprefix("cuda:").isdigit() \
                else device.lower()
            if key in result:
                problem = f"device {device} is given twice"
            else:
                result[key] = int(size) if size.isdigit() else size.replace(" ", "")
        if problem is not None:
            raise UsageError(f"{flag} {text}: item {item.strip()!r}: {problem} (give e.g. 0=20GiB,1=20GiB,cpu=60GiB)")
    return result


def check_device_map(device_map: str | None, flag: str = "--device-map") -> None:
    """UsageError for a setting transformers does not take here."""
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise UsageError(f"{flag} {device_map}: use {', '.join(DEVICE_MAPS)}")


def require_accelerate(flag: str = "--device-map") -> None:
    """UsageError (a missing optional extra: the command as given cannot run here) naming the
    install command when the `accelerate` package is not importable."""
    import importlib

    try:
        importlib.import_module("accelerate")
    except ImportError:
        raise UsageError(f"{flag} needs the accelerate package, which is not installed: {INSTALL_BIG}") from None


def cpu_only(max_memory: dict | None) -> bool:
    """Whether a max_memory leaves out every GPU (cpu alone): the map is then on the CPU (and disk)."""
    return max_memory is not None and all(k == "cpu" for k in max_memory)


def device_name(where) -> str:
    """A device map's value as a torch device name: 0 -> cuda:0; "cpu", "disk", "mps" as given."""
    if isinstance(where, int) or (isinstance(where, str) and where.isdigit()):
        return f"cuda:{int(where)}"
    return str(where)


def input_device(device_map: dict) -> str:
    """Where a mapped model computes its first block and so takes its inputs: accelerate runs every
    module offloaded to the CPU or disk on the map's first GPU (its main device), so that GPU,
    or the CPU for a map without one."""
    for where in device_map.values():
        name = device_name(where)
        if name not in ("cpu", "disk"):
            return name
    return "cpu"


def modules_per_device(device_map: dict) -> dict[str, int]:
    """{device: how many of the map's modules (blocks, embeddings, norms) it holds}, in the
    map's order of first appearance."""
    counts: dict[str, int] = {}
    for where in device_map.values():
        name = device_name(where)
        counts[name] = counts.get(name, 0) + 1
    return counts


def describe(device_map: dict) -> str:
    """`3 modules on cuda:0, 2 on cpu, 4 on disk` (the end summary's words)."""
    counts = list(modules_per_device(device_map).items())
    words = [f"{n} module{'s' if n != 1 else ''} on {d}" if i == 0 else f"{n} on {d}"
             for i, (d, n) in enumerate(counts)]
    return ", ".join(words)
