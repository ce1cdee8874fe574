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


def check_devices(max_memory: dict | None, text, flag: str = "--max-memory") -> None:
    """UsageError for a device of `max_memory` (parsed from `text`) that this machine lacks: a GPU
    index past torch's count, mps without MPS (accelerate printed "Device 0 is not available,
    available devices are []" twice, then from_pretrained failed with "Cannot access accelerator
    device when none is available")."""
    if not max_memory:
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key in max_memory:
        problem = None
        if isinstance(key, int) and key >= gpus:
            problem = f"there is no GPU {key} here (CUDA sees {gpus})"
        elif key == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            problem = "MPS is not available here"
        if problem is not None:
            raise UsageError(f"{flag} {text}: {problem} (cpu=SIZE alone keeps the model on the CPU)")


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


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def idle_device_note(model, max_memory: dict | None) -> str | None:
    """Why a device `max_memory` gave room holds none of a mapped model while a later one holds
    some (a tiny BERT with --max-memory cpu=<most of it> went whole to the disk, said as "1 module
    on disk" and nothing else), or None. A device takes whole blocks only (the classes the model
    keeps whole, `_no_split_modules`), and accelerate keeps room on the map's main device (the
    first GPU, or the CPU; the MPS device) for the largest block, which offloaded blocks are
    brought into one at a time: less than twice that block holds nothing there."""
    device_map = getattr(model, "hf_device_map", None)
    if not max_memory or not device_map:
        return None
    from accelerate.utils import convert_file_size_to_int

    order = sorted(k for k in max_memory if isinstance(k, int))
    order += [d for d in ("mps", "cpu") if d in max_memory]
    used = {device_name(v) for v in device_map.values()}
    later = ["disk"] if "disk" in used else []
    idle = []
    for position, device in enumerate(order):
        if device_name(device) in used:
            continue
        beyond = [device_name(d) for d in order[position + 1:] if device_name(d) in used] + later
        if beyond and convert_file_size_to_int(max_memory[device]) > 0:
            idle.append((device, beyond))
    if not idle:
        return None
    keep = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [(sum(p.numel() * p.element_size() for p in module.parameters()), type(module).__name__)
              for module in model.modules() if type(module).__name__ in keep]
    size, name = max(blocks) if blocks else (0, "")
    main = order[0] if order else "cpu"
    device, beyond = idle[0]
    reason = ("a device takes whole blocks only" + (f" (the largest, {name}: {_mib(size)})" if name else "")
              + (", and accelerate keeps room for the largest one there, to bring offloaded blocks in"
                 if device == main else ""))
    needed = f"; give it more than {_mib(2 * size if device == main else size)} to hold part of the model" if name else ""
    return (f"--max-memory {device}={max_memory[device]}: the device map put none of the model there, but some "
            f"on {', '.join(dict.fromkeys(beyond))}: {reason}{needed}")


def spread_line(setting: str, device_map: dict) -> str:
    """The line a run says of a model spread over devices (embed's summary, variants, perplexity)."""
    return f"the model was spread over devices (--device-map {setting}): {describe(device_map)}"


def describe(device_map: dict) -> str:
    """`3 modules on cuda:0, 2 on cpu, 4 on disk` (the end summary's words)."""
    counts = list(modules_per_device(device_map).items())
    words = [f"{n} module{'s' if n != 1 else ''} on {d}" if i == 0 else f"{n} on {d}"
             for i, (d, n) in enumerate(counts)]
    return ", ".join(words)


def map_attribute(setting: str, device_map: dict) -> str:
    """The `device_map` attribute of an HDF5 output (embed, contacts): the setting and where each
    module was, as JSON ({"setting": "auto", "modules": {"encoder.layer.0": "cuda:0", ...}})."""
    import json

    return json.dumps({"setting": setting, "modules": {k: device_name(v) for k, v in device_map.items()}})


def model_device(model):
    """Where `model` takes its inputs (a torch.device): under a device map its input device (the
    map's first GPU, or the CPU; a first parameter offloaded to the disk is on the meta device),
    else its first parameter's device. Embed, variants, perplexity and contacts ask it, not
    `next(model.parameters()).device` each."""
    import torch

    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        return torch.device(input_device(device_map))
    return next(model.parameters()).device


class PlacementOptions:
    """What an options dataclass with the fields `device_map`, `max_memory`, `offload_folder` and
    `device` (embed, variants, perplexity) shares: the checks of --device-map and its companions,
    and what loading a model spread over devices takes. (A mixin, not a dataclass: each class keeps
    its own fields in its own order.)"""

    @property
    def max_memory_map(self) -> dict | None:
        """`max_memory` as from_pretrained takes it ({0: "20GiB", "cpu": "60GiB"}), or None."""
        from protrans_cli.errors import option

        if self.max_memory is None or isinstance(self.max_memory, dict):
            return self.max_memory
        return parse_max_memory(self.max_memory, option("--max-memory", "max_memory"))

    def check_placement(self, conflicts=(), no_model: str | None = None) -> None:
        """--device-map and its companions (UsageError): only with each other, and not with what
        needs the whole model on one device: `conflicts` ((asked, its words) of the command's
        own options: --packing, --compile...), --device, torchrun's ranks; `no_model`: why there
        is no model to spread (embed's onehot)."""
        from protrans_cli.embed_dist import _torchrun_rank
        from protrans_cli.errors import given, option

        if self.device_map is None:
            for name, value in (("--max-memory", self.max_memory), ("--offload-folder", self.offload_folder)):
                if value is not None:
                    raise UsageError(f"{option(name, name[2:].replace('-', '_'))} places a model spread over devices: "
                                     "give it with " + option("--device-map auto", "device_map='auto'"))
            return
        mapped = given("--device-map", "device_map", self.device_map)
        check_device_map(self.device_map, option("--device-map", "device_map"))
        if no_model is not None:
            raise UsageError(f"{mapped}: {no_model}")
        self.max_memory_map  # (its syntax checked before the model loads)
        if self.device != "auto":
            raise UsageError(f"{mapped} with {given('--device', 'device', self.device)}: the device map places "
                             "the model (leave --device out; --max-memory cpu=SIZE alone keeps it off the GPUs)")
        for asked, what in conflicts:
            if asked:
                raise UsageError(f"{mapped} with {what}: a model spread over devices runs padded batches with "
                                 "its own attention, uncompiled")
        if _torchrun_rank()[1] > 1:
            raise UsageError(f"{mapped} under torchrun with {_torchrun_rank()[1]} ranks: one process spreads one "
                             "model over the devices, where each rank holds a whole model (run it without torchrun)")

    def placed_loading(self, models) -> tuple[str, str, dict]:
        """Before a mapped model loads: (device, dtype) as resolve_device gives them (the compute
        dtype of the map's first GPU, float32 for a map --max-memory keeps on the CPU and disk)
        and load_model's keywords; UsageError without accelerate, or for an --offload-folder
        among the files of one of `models`."""
        from protrans_cli.embed import refuse_inside_model
        from protrans_cli.embedders import resolve_device
        from protrans_cli.errors import option

        require_accelerate(option("--device-map", "device_map"))
        check_devices(self.max_memory_map, self.max_memory, option("--max-memory", "max_memory"))
        device, dtype = resolve_device("cpu" if cpu_only(self.max_memory_map) else "auto", self.dtype)
        if self.offload_folder is not None:
            refuse_inside_model(str(self.offload_folder), list(models), "--offload-folder", "offload_folder",
                                contents="the offloaded weights")
        return device, dtype, dict(device_map=self.device_map, max_memory=self.max_memory_map,
                                   offload_folder=self.offload_folder)

    def loading(self, models) -> tuple[str, str, dict]:
        """(device, dtype, load_model's keywords) of this run: placed_loading's under a device
        map, else resolve_device's for --device and --dtype and no keywords."""
        if self.device_map is not None:
            return self.placed_loading(models)
        from protrans_cli.embedders import resolve_device

        return (*resolve_device(self.device, self.dtype), {})

    def loaded_map(self, loaded) -> dict:
        """The mapped model's {module: device} (hf_device_map); UsageError for a model given
        that was loaded without one."""
        from protrans_cli.errors import given

        device_map = getattr(loaded.model, "hf_device_map", None)
        if not device_map:
            raise UsageError(f"{given('--device-map', 'device_map', self.device_map)}: the model given was "
                             "loaded without a device map (load_model(..., device_map=...))")
        return dict(device_map)
