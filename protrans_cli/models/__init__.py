"""The registry of model families (one module per family) and the published checkpoints.

    from protrans_cli.models import FAMILIES, get_family, load_model

    loaded = load_model("prot_t5_xl_half", device="cuda", dtype="bfloat16")
    inputs, residue_mask = loaded.family.encode(loaded.tokenizer, ["MKTAYIAK"])
    (hidden,) = loaded.family.hidden_states(loaded.model, inputs, [-1])   # (B, T, D)

The registry is a plain dict built from explicit imports; nothing registers itself on import,
except that importing this package tells transformers' Auto classes about the project's
Transformer-XL (transformers 5 removed its own), so `AutoModel.from_pretrained(dir)` loads a
ProtTXL directory without `trust_remote_code`.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protrans_cli.environment import _offline
from protrans_cli.errors import ModelError, UsageError, described, first_line, option
from protrans_cli.io.files import json_object, starts_like_hdf5
from protrans_cli.models import albert, bert, electra, esm, esmc, roberta, t5, transfo_xl, xlnet
from protrans_cli.models.base import Checkpoint, Family, Preset
from protrans_cli.models.checkpoints import CHECKPOINTS, DEFAULT_CHECKPOINT
from protrans_cli.threads import SharedSetting

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (bert.FAMILY, roberta.FAMILY, albert.FAMILY, electra.FAMILY, t5.FAMILY, xlnet.FAMILY,
              transfo_xl.FAMILY, esm.FAMILY, esmc.FAMILY)
}

# transformers 5 has no Transformer-XL: make AutoConfig/AutoModel know the project's one.
transfo_xl.register_auto_classes()
# ESM C's weights are no transformers model (models/esmc.py implements it): the same.
esmc.register_auto_classes()

__all__ = [
    "FAMILIES", "CHECKPOINTS", "DEFAULT_CHECKPOINT", "Checkpoint", "Family", "Preset", "LoadedModel",
    "get_family", "family_for_config", "resolve_model", "load_model", "list_presets",
]


def get_family(name: str) -> Family:
    """The family registered as `name` (a --family value); a usage error listing the known names
    otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UsageError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def family_for_config(config) -> Family:
    """The family that loads a checkpoint with this HF config (by model_type, then architectures)."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    family = _family_by_architecture(getattr(config, "architectures", None))
    if family is not None:
        return family
    raise ModelError(_unsupported_type(model_type))


def _unsupported_type(model_type) -> str:
    return f"unsupported model type {model_type!r} (supported: {_known_types()})"


def _known_types() -> str:
    return ", ".join(t for f in FAMILIES.values() for t in f.model_types)


def _family_by_architecture(architectures) -> Family | None:
    """A config without a known model_type may still name its architecture ("BertForMaskedLM")."""
    if not isinstance(architectures, (list, tuple)):  # (a config.json's `"architectures": 5`)
        return None
    for arch in architectures:
        if not isinstance(arch, str):
            continue
        # The class name less its task ("BertForMaskedLM", "T5EncoderModel": bert, t5), the whole of a
        # model type: a prefix matched ESM C's EsmCForMaskedLM to ESM-2's family (esm)
        base = re.sub(r"(for[a-z]+|encodermodel|lmheadmodel|pretrainedmodel|model)$", "", arch.lower())
        for family in FAMILIES.values():
            if any(base == t.replace("-", "").replace("_", "") for t in family.model_types):
                return family
    return None


def _config_without_model_type(target: str, checkpoint, hub_kwargs: dict):
    """The config of a checkpoint whose config.json has no `model_type` (the published ProtBert
    and ProtBert-BFD: transformers 4 guessed the type from the repository name, transformers 5
    refuses), read with the config class of the family its `architectures` (or, for a short
    name, the published checkpoint) names; None when neither names one."""
    from transformers import PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(target, **hub_kwargs)
    if config_dict.get("model_type"):
        return None
    family = _family_by_architecture(config_dict.get("architectures"))
    if family is None and checkpoint is not None:
        family = get_family(checkpoint.family)
    return None if family is None else family.config_class.from_pretrained(target, **hub_kwargs)


def list_presets(family: str | None = None) -> list[Preset]:
    """Every preset (of one family or all) with its parameter count, built on the meta device."""
    families = [get_family(family)] if family else list(FAMILIES.values())
    rows = []
    for fam in families:
        for name in fam.presets:
            config = fam.build_config(name)
            rows.append(Preset(family=fam.name, name=name, num_params=fam.num_params(name),
                               config=fam.preset_config(name), embedding_dim=fam.embedding_dim(config),
                               num_layers=fam.num_layers(config)))
    return rows


@dataclass
class LoadedModel:
    """A model ready for embedding: its family, tokenizer and encoder (eval mode, on device)."""

    name: str               # what the user asked for (short name, directory or hub id)
    path_or_hub_id: str     # what from_pretrained read
    revision: str | None
    family: Family
    tokenizer: Any
    model: Any
    embedding_dim: int
    num_layers: int
    checkpoint: Checkpoint | None = None  # set when `name` was a short name
    commit: str | None = None  # the hub commit the files came from (None for a local directory)
    # a local directory's weight files, fingerprinted (weights_fingerprint; None for a hub model)
    weights_fingerprint: str | None = None

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def device(self):
        """Where the model takes its inputs (a model spread over devices: its map's input device)."""
        from protrans_cli.placement import model_device

        return model_device(self.model)


def _refuse_special_files(path: Path, name: str) -> None:
    """Refuse a model directory holding a device, FIFO or socket (or a link to one) among its
    files: one under a name that protrans or transformers reads whole (tokenizer_config.json,
    train_config.json) was read for ever, a link to /dev/zero until the kernel killed the run for
    its memory, a FIFO hung. A directory from elsewhere holds only files and folders."""
    import stat

    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # (what reads the directory says why it cannot)
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode  # (after links; a FIFO is not opened)
        except OSError:
            continue  # (a dangling link: what reads it, if anything, says so)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelError(f"{name}: cannot load the model directory: {entry.path} is not a regular file (a "
                             "device, FIFO or socket, or a link to one), which would be read without end")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name"; anything else with a separator, or starting like a path, is a path.
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
            or name in (".", ".."))


def resolve_model(name_or_path: str, flag: str = "-m") -> tuple[str, Checkpoint | None, bool]:
    """(path or hub id, the Checkpoint when a short name was given, whether it is a local dir);
    `flag`: the option that named it (what a message tells the user to give; to a library call,
    `_keyword` of it)."""
    name = str(name_or_path)
    if not name.strip():
        raise UsageError("no model given: an empty name (give a model directory, a hub id or a short name "
                         "from `protrans models`)")
    path = Path(name).expanduser()
    # A short name is a hub id unless a model directory of that name exists (what
    # `hf download Rostlab/prot_bert --local-dir prot_bert` makes for offline use).
    if name in CHECKPOINTS and not (path / "config.json").is_file():
        return CHECKPOINTS[name].hub_id, CHECKPOINTS[name], False
    if path.is_dir():
        if (adapter := _adapter_problem(path, flag)) is not None:
            raise ModelError(f"{name}: {adapter}")
        if not (path / "config.json").is_file():
            from protrans_cli.training.checkpoint import list_checkpoints  # (an error path: torch is fine)

            if checkpoints := list_checkpoints(path):  # a training run stopped before its end
                latest = checkpoints[-1]
                give = option(f"give it to {flag}", f"give it as {_keyword(flag)}")
                # (a library caller was told the command: its call is train with resume=True)
                finish = option(f"`protrans train --resume -o {name}`",
                                f"train(TrainConfig(output_dir={name!r}, ...), resume=True)")
                raise ModelError(f"{name}: a training run without its final model (it stopped before its last "
                                 f"step): its latest checkpoint, {latest}, is a model directory ({give}), "
                                 f"or {finish} finishes the run")
            if path.name == "checkpoints" and (checkpoints := list_checkpoints(path.parent)):  # a run's folder of them
                final = (f", or the run directory {path.parent} for its final model"
                         if (path.parent / "config.json").is_file() else "")
                raise ModelError(f"{name}: a training run's checkpoints folder, not a model directory: each step_N "
                                 f"inside is one; give {_give(flag)}{checkpoints[-1]} for the latest{final}")
            if (snapshot := _cached_snapshot(path)) is not None:
                repo = path.name.removeprefix("models--").replace("--", "/")
                raise ModelError(f"{name}: the Hugging Face cache's folder of {repo}, not a model directory: give "
                                 f"{_give(flag)}{snapshot} (the model's files), or {_give(flag)}{repo} where this is "
                                 "the cache that Hugging Face reads (HF_HOME, HF_HUB_CACHE)")
            raise ModelError(f"{name}: directory has no config.json, so it is not a model directory "
                             "(give the directory that `protrans train` or save_pretrained wrote)")
        _refuse_special_files(path, name)
        return str(path), None, True
    if path.exists():
        suffix = path.suffix.lower()
        if suffix in (".safetensors", ".bin") and (path.parent / "config.json").is_file():
            raise ModelError(f"{name}: a weights file of the model directory {path.parent}: give the directory")
        if suffix in (".pt", ".pth", ".ckpt"):
            # (fair-esm's esm2_t33_650M_UR50D.pt, a PyTorch checkpoint: read by no from_pretrained)
            raise ModelError(f"{name}: {_pytorch_file_advice(path)}")
        # (an embeddings file given as the model, the two files swapped: "not a directory" alone)
        what = "an HDF5 file (such as embed writes), not a model" if starts_like_hdf5(path) else \
            "not a directory"
        raise ModelError(f"{name}: {what}; a model is a directory with config.json, a hub id "
                         f"or a short name ({', '.join(CHECKPOINTS)})")
    if path.suffix.lower() in (".pt", ".pth", ".ckpt") and (
            _looks_like_path(name) or path.stem.removesuffix("-contact-regression") in CHECKPOINTS):
        # (a fair-esm script's path, from another machine: `checkpoints/esm2_t33_650M_UR50D.pt` is no hub id)
        raise ModelError(f"{name}: no such file; {_pytorch_file_advice(path)}")
    if _looks_like_path(name):
        raise ModelError(f"{name}: no such model directory")
    if (advice := esmc.short_name_advice(name, _give(flag))) is not None:  # (its hub repository holds no config.json)
        raise ModelError(f"{name}: {advice}")
    return name, None, False


def _pytorch_file_advice(path: Path) -> str:
    """What to give instead of a PyTorch weights file: fair-esm's `esm2_t33_650M_UR50D.pt` (or
    its `-contact-regression.pt`, which the transformers model holds) by the short name of the
    same weights, converted (what a script written around esm-extract's MODEL_LOCATION needs), or
    the file converted by `protrans import-model` (offline, or a model of one's own)."""
    stem = path.stem.removesuffix("-contact-regression")
    model_file = path.with_name(stem + path.suffix) if stem != path.stem else path
    convert = option(f"`protrans import-model {model_file} -o DIR`",
                     f"protrans_cli.models.fair_esm.import_fair_esm({str(model_file)!r}, DIR)")
    if stem in CHECKPOINTS:
        what = "contact regression" if stem != path.stem else "weights"
        return (f"fair-esm's {what} of {stem} (a PyTorch file, which is not loaded); give the short name "
                f"{stem}: the same weights converted for transformers ({CHECKPOINTS[stem].hub_id}"
                f"{', its contact head included' if stem != path.stem else ''}), or convert the file with "
                f"{convert}")
    return (f"a PyTorch weights file (such as fair-esm's), which is not loaded; convert a fair-esm checkpoint with "
            f"{convert}, or give the transformers model of the same weights: a directory with config.json, a hub id "
            f"or a short name ({', '.join(CHECKPOINTS)}; `protrans models` lists them)")


def _keyword(flag: str) -> str:
    """The library's name for the option `flag` that takes a model: EmbedOptions' `model` (and
    load_model's, predict_sequences' ...) for -m, TrainConfig's `init_from` for --init-from."""
    return "model" if flag == "-m" else flag.lstrip("-").replace("-", "_")


def _give(flag: str) -> str:
    """What goes before a model's path or name that a message says to give: the flag and a space
    at the command line ("-m "), the keyword and "=" to a library call ("model=")."""
    return option(f"{flag} ", f"{_keyword(flag)}=")


def _config_model_type(directory) -> str | None:
    """The model_type a model directory's config.json gives, or None."""
    kind = json_object(Path(directory) / "config.json").get("model_type")
    return kind if isinstance(kind, str) else None


def _cached_snapshot(path: Path) -> Path | None:
    """The model directory inside a Hugging Face cache folder (`hub/models--facebook--esm2_t6_8M_UR50D`,
    which holds blobs/, refs/ and snapshots/COMMIT/ with the files): the snapshot `refs/main`
    names, else the newest one with a config.json; None for any other folder."""
    snapshots = path / "snapshots"
    if not path.name.startswith("models--") or not snapshots.is_dir():
        return None
    try:
        main = snapshots / (path / "refs" / "main").read_text(encoding="utf-8").strip()
        if (main / "config.json").is_file():
            return main
    except (OSError, ValueError):
        pass
    try:
        found = [p for p in snapshots.iterdir() if (p / "config.json").is_file()]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _adapter_problem(path: Path, flag: str) -> str | None:
    """Why a directory holding a PEFT adapter (adapter_config.json: LoRA weights for another model)
    is not loaded, or None. Alone, it was "no config.json, not a model directory (give the directory
    save_pretrained wrote)", which PEFT's save_pretrained had written; beside a config.json, the base
    weights loaded and the adapter was left out without a word where peft is not installed (and
    applied where it is: the rows depended on that)."""
    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    base = json_object(config).get("base_model_name_or_path")
    of = f" of the base model {base}" if isinstance(base, str) and base else ""
    # (merged by protrans itself: the advice was to install peft and merge with its Python API)
    merge = option(f"`protrans import-model {path} -o DIR` (--base MODEL for a local copy of the base)",
                   f"protrans_cli.models.peft_merge.import_adapter({str(path)!r}, DIR)")
    return (f"a PEFT adapter ({config.name}: LoRA or other adapter weights{of}), which is not loaded: merge a LoRA "
            f"adapter into its base model with {merge} and " + option(f"give {flag} that directory",
                                                                      f"give that directory as {_keyword(flag)}"))


def _parse_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    try:
        return names[str(dtype)]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from None


@dataclass
class ModelSource:
    """Where a model comes from, with its HF config read: what loading it needs next."""

    name: str              # as the user gave it
    target: str            # local directory or hub id
    checkpoint: Checkpoint | None  # the published checkpoint a short name stands for
    is_dir: bool
    hub_kwargs: dict       # revision / local_files_only for every later from_pretrained
    config: Any            # the transformers config
    family: Family


def open_config(name_or_path, *, revision=None, local_files_only=None, flag: str = "-m") -> ModelSource:
    """Resolve a short name, directory or hub id and read its config (no weights): a one-line
    ModelError when it cannot be found (offline, not cached, no such repo) or is unsupported;
    `flag` is the option the message tells the user to pass a local directory with."""
    from transformers import AutoConfig

    name = str(name_or_path)
    target, checkpoint, is_dir = resolve_model(name, flag)
    if is_dir and (problem := _config_json_problem(target)):
        raise ModelError(f"{name}: cannot load the model directory: {problem}")
    hub_kwargs: dict[str, Any] = {}
    if is_dir and revision is not None:
        from protrans_cli import console

        console.warn(f"--revision {revision} is ignored for the local directory {target}")
    if not is_dir:
        if revision is not None:
            hub_kwargs["revision"] = revision
        if local_files_only is None and (_offline() or not hub_reachable()):
            # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it when set later. A
            # node without network and without HF_HUB_OFFLINE: the cache alone, at once (else every
            # file request retries for half a minute, two minutes for a cached model).
            local_files_only = True
        if local_files_only is not None:
            hub_kwargs["local_files_only"] = local_files_only
    try:
        with _quiet_transformers():  # the first hub request: no retry chatter without network
            # (never trust_remote_code: a model's own code would run, and protrans's families
            # could not use its classes anyway)
            config = AutoConfig.from_pretrained(target, trust_remote_code=False, **hub_kwargs)
    except ValueError as exc:
        # An unknown model_type, none at all, or a malformed hub id
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        config = _config_without_model_type(target, checkpoint, hub_kwargs) if "`model_type`" in text else None
        if config is not None:
            return ModelSource(name, target, checkpoint, is_dir, hub_kwargs, config, _family_of(name, config))
        if "model type" in text or "model_type" in text:
            if is_dir and _is_head(target):  # `embed -m heads/ss3`: transformers' "Unrecognized model"
                raise ModelError(f"{name}: a prediction head, not a language model: apply it with `protrans "
                                 f"predict {name} --fasta FILE` (it embeds with its own model)") from None
            if unknown := re.search(r"model type `([^`]*)`", text):
                # (transformers' text, "... does not recognize this architecture ... or because your
                # version of Transformers is out of date", sent users to upgrade a library whose
                # newest version protrans would refuse the same way; said as for any other type)
                raise ModelError(f"{name}: {_unsupported_type(unknown.group(1))}") from None
            raise ModelError(f"{name}: unsupported model ({text})") from None
        if "contains custom code" in text:
            # auto_map with a model_type no transformers class has: transformers' "... contains custom
            # code which must be executed to correctly load the model" read as a switch to turn on
            kind = _config_model_type(target) if is_dir else None
            supported = _unsupported_type(kind) if kind else f"the model types it loads are {_known_types()}"
            raise ModelError(f"{name}: a model built by its own code (its config.json's auto_map), which protrans "
                             f"never runs; {supported}") from None
        raise ModelError(_not_found_message(name, target, is_dir, text, flag, revision=revision)) from None
    except _strict_config_errors() as exc:
        # a field of the wrong type in an edited config.json ("hidden_size": "big", "dropout": null):
        # a multi-line StrictDataclassFieldValidationError traceback from transformers
        detail = " ".join(str(exc).split())
        where = f"cannot load the model directory: {Path(target) / 'config.json'}" if is_dir else "its config.json"
        raise ModelError(f"{name}: {where}: {detail}") from None
    except (OSError, KeyError) as exc:
        if _invalid_repo_id(exc):  # "foo bar": nothing to download, whatever the network
            raise ModelError(f"{name}: not a model directory, a short name (`protrans models`) or a valid hub "
                             "id (owner/name)") from None
        raise ModelError(_not_found_message(name, target, is_dir, first_line(exc), flag, revision=revision,
                                            exc=exc)) from None
    family = _family_of(name, config)
    family.repair_config(config)
    return ModelSource(name, target, checkpoint, is_dir, hub_kwargs, config, family)


def _config_json_problem(directory) -> str | None:
    """Why a model directory's config.json is not a JSON object whose `model_type` (if any) is a
    string, or None (also for a file that is not JSON: transformers' own message says so).
    transformers read `[1, 2]`, `"x"`, `null` or `{"model_type": ["bert"]}` into a traceback."""
    import json

    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        return f"{path} holds {kind}, not a JSON object of settings"
    if "model_type" in data and not isinstance(data["model_type"], str):
        return f"{path}: its model_type is {data['model_type']!r}, not a name"
    for key in _SIZE_FIELDS:
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            # (transformers' strict validation refuses a text or null there, but a 0 or a negative
            # number built the model into a ZeroDivisionError traceback, or read as "-1 layers")
            return f"{path}: its {key} is {value!r:.40}, not a whole number of at least 1"
    return None


# The sizes and counts a model is built from, which no family takes as 0 (config.json's names).
_SIZE_FIELDS = ("vocab_size", "hidden_size", "embedding_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "max_position_embeddings", "d_model", "d_ff", "d_kv", "d_inner", "d_head",
                "d_embed", "num_layers", "num_decoder_layers", "num_heads", "n_layer", "n_head")


def _strict_config_errors() -> tuple:
    """huggingface_hub's errors of a config field of the wrong type (none in versions without
    strict config validation)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def _family_of(name: str, config) -> Family:
    """`family_for_config`, its error naming the model (`-m gpt2dir` said only "unsupported
    model type 'gpt2'", not which model or directory it was)."""
    try:
        return family_for_config(config)
    except ModelError as exc:
        raise ModelError(f"{name}: {exc}") from None


def load_model(name_or_path, *, device="cpu", dtype=None, revision=None, local_files_only=None,
               masked_lm: bool = False, before_weights=None, device_map: str | None = None,
               max_memory: dict | None = None, offload_folder=None) -> LoadedModel:
    """Load a short name, a local model directory or a hub id for embedding.

    The family comes from the checkpoint's config (model_type), the tokenizer and encoder
    through the real `from_pretrained` code paths. `dtype=None` loads float32 (never the
    checkpoint's half precision by surprise); the caller picks bf16/fp16 for a GPU.
    A model that cannot be found (offline, not cached, no such repo) is a one-line ModelError.
    `masked_lm`: the encoder with its masked-LM head (`Family.load_masked_lm`), for scoring
    residues (`protrans variants`), in place of the encoder alone.
    `before_weights(name, family, config, tokenizer)`: a check of the config and tokenizer that raises
    before the weights are read (translate refuses a model without ProstT5's tokens at once, not
    after reading a 3B ProtT5's 11 GB).
    `device_map` (auto, balanced, sequential; needs the accelerate package): the model spread by
    from_pretrained over the GPUs, then the CPU, then files in `offload_folder`, each device holding
    at most its `max_memory` ({0: "20GiB", "cpu": "60GiB"}); `device` is then not used (the
    model's `hf_device_map` says where each module is; protrans_cli/placement.py).
    """
    import torch

    if not isinstance(name_or_path, (str, os.PathLike)):  # (None was looked up as the hub id "None")
        raise UsageError(f"load_model needs a short name, a model directory or a hub id, got "
                         f"{type(name_or_path).__name__} {name_or_path!r:.60}")
    name = str(name_or_path)
    torch_dtype = _parse_dtype(dtype)
    if isinstance(device, str) and device == "auto":  # (as every other call's device: a GPU where there is one)
        from protrans_cli.embedders import resolve_device

        device = resolve_device("auto", "auto")[0]
    placing = {}
    if device_map is not None:
        from protrans_cli import placement

        placement.check_device_map(device_map, "device_map")
        placement.require_accelerate("device_map")
        placing = {"device_map": device_map, "max_memory": max_memory,
                   **({"offload_folder": str(offload_folder)} if offload_folder is not None else {})}
    try:  # (before the model is read: a device torch does not know was refused after a whole load)
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"{name}: cannot move the model to device {device!r}: {first_line(exc)}") from None
    source = open_config(name, revision=revision, local_files_only=local_files_only)
    target, checkpoint, is_dir, hub_kwargs = source.target, source.checkpoint, source.is_dir, source.hub_kwargs
    family = source.family
    fingerprint = weights_fingerprint(target) if is_dir else None  # (before loading: the files loaded, or newer)
    with _quiet_transformers():
        try:
            # The config as read: a tokenizer_config.json without tokenizer_class (ProtBert's) makes
            # AutoTokenizer read the config, and that config may lack model_type.
            tokenizer = family.load_tokenizer(target, config=source.config, **hub_kwargs)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
            # (KeyError and the like: a damaged tokenizer.json, e.g. `{}`, was a traceback; a bare
            # Exception: the tokenizers library's "No such file or directory (os error 2)" for a
            # folder whose name is not UTF-8 in the locale). Anything else (out of memory, a bug,
            # one of ours) is not the tokenizer files' fault: passed on.
            from protrans_cli.io.files import utf8_path_problem, utf8_text

            if type(exc) is not Exception and not isinstance(
                    exc, (ImportError, ValueError, TypeError, OSError, KeyError, AttributeError, IndexError)):
                raise
            if is_dir and (problem := utf8_path_problem(target)) is not None:
                raise ModelError(f"{utf8_text(name)}: cannot load the tokenizer: {problem}") from None
            if is_dir and not _has_tokenizer_files(target):
                # transformers fails in odd ways then ("expected str, bytes or os.PathLike object")
                has = ("its tokenizer_config.json but no vocabulary (tokenizer.json, vocab.txt or spiece.model)"
                       if (Path(target) / "tokenizer_config.json").is_file() else "no tokenizer files")
                raise ModelError(f"{name}: the model directory has {has}; {_COPY_TOKENIZER}") from None
            if is_dir and (problem := _tokenizer_json_problem(target)):
                # ("cannot load the tokenizer: Expecting value: line 1 column 1 (char 0)" named no file)
                raise ModelError(f"{name}: cannot load the tokenizer: {problem}; {_COPY_TOKENIZER}") from None
            if is_dir and (problem := _tokenizer_config_problem(target)):
                raise ModelError(f"{name}: cannot load the tokenizer: {problem}") from None
            if isinstance(exc, OSError):
                raise ModelError(_not_found_message(name, target, is_dir, first_line(exc), revision=revision,
                                                    exc=exc)) from None
            from protrans_cli import spm_reader

            # sentencepiece's spiece.model reader refused this protobuf, and transformers went on to
            # its tiktoken fallback, which read as damaged tokenizer files (5.15 raises it while
            # handling the reader's error; 5.25 logs that error and raises the fallback's alone)
            failure = spm_reader.reader_failure(exc)
            problem = (spm_reader.describe_failure(failure) if failure is not None
                       else spm_reader.reader_problem() if "tiktoken" in str(exc) else None)
            if problem is not None:
                raise ModelError(f"{name}: cannot load the tokenizer: {problem}") from None
            if is_dir and "tiktoken" in str(exc) and (problem := spm_reader.model_problem(Path(target)
                                                                                            / "spiece.model")):
                raise ModelError(f"{name}: cannot load the tokenizer: {problem}; {_COPY_TOKENIZER}") from None
            # e.g. a sentencepiece-only tokenizer (ProtT5, ProtXLNet, ProtAlbert) without sentencepiece
            hint = " (pip install sentencepiece protobuf)" if _names_missing_sentencepiece(str(exc)) else ""
            if "tiktoken" in str(exc) or not isinstance(exc, (ImportError, ValueError)):
                # transformers' last fallback ("`tiktoken` is required to read a `tiktoken` file")
                # after a damaged spiece.model, or a tokenizer.json without the fields it reads
                raise ModelError(f"{name}: cannot load the tokenizer: its tokenizer files are damaged or of a "
                                 f"kind transformers does not read ({described(exc)}); {_COPY_TOKENIZER}") from None
            raise ModelError(f"{name}: cannot load the tokenizer: {first_line(exc)}{hint}") from None
        from protrans_cli.models.base import unknown_residues

        if not is_dir and unknown_residues(family, tokenizer) and not _tokenizer_cached(target, hub_kwargs):
            # offline with the hub model's config cached but not its tokenizer: transformers made an
            # empty tokenizer from the config, which read as "not a protein tokenizer"
            raise ModelError(_not_found_message(name, target, is_dir, "", what="its tokenizer files",
                                                revision=revision))
        from protrans_cli.models.saprot import family_for

        family = family_for(family, tokenizer)  # (SaProt: an ESM-2 reading residue-and-3Di tokens)
        if (problem := getattr(family, "vocabulary_problem", lambda: None)()) is not None:
            raise ModelError(f"{name}: {problem}")
        _check_tokenizer(name, family, tokenizer, is_dir, getattr(source.config, "vocab_size", None),
                         directory=target if is_dir else None)
        if before_weights is not None:
            before_weights(name, family, source.config, tokenizer)
        try:
            # (on the CPU; the caller's random numbers are put back: BERT's encoder initialised
            # the pooler that an MLM checkpoint lacks from them, so a notebook seeded before
            # load_model drew other numbers after it)
            with torch.random.fork_rng(devices=[]):
                load = family.load_masked_lm if masked_lm else family.load_encoder
                model = load(target, dtype=torch_dtype or _default_dtype(), **hub_kwargs, **placing)
        except ValueError as exc:
            if placing and (problem := _placement_problem(exc, family)):
                raise UsageError(f"{name}: {problem}") from None
            if is_dir and (lacking := missing_weights(target, generator=masked_lm)):
                raise ModelError(f"{name}: {lacking}") from None
            raise ModelError(_not_found_message(name, target, is_dir, first_line(exc), revision=revision,
                                                exc=exc)) from None
        except OSError as exc:
            # (an ELECTRA pair's masked LM is its generator/: named as train --init-from names it)
            if is_dir and (lacking := missing_weights(target, generator=masked_lm)):
                raise ModelError(f"{name}: {lacking}") from None
            raise ModelError(_not_found_message(name, target, is_dir, first_line(exc), revision=revision,
                                                exc=exc)) from None
        except weight_errors() as exc:
            raise ModelError(f"{name}: cannot load the weights: {weights_problem(exc)}") from None
    if placing:  # (from_pretrained placed every module: moving the model would undo it)
        if not getattr(model, "hf_device_map", None):
            # (the whole model on one device, as transformers 5.25 leaves a map of the CPU alone:
            # no hf_device_map then; said so, as a map of one entry)
            model.hf_device_map = {"": str(next(model.parameters()).device)}
        if note := placement.idle_device_note(model, max_memory):
            from protrans_cli import console

            console.warn(f"{name}: {note}")
    else:
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as exc:
            raise ModelError(f"{name}: cannot move the model to device {device!r}: {first_line(exc)}") from None
    model.eval()
    # (ignored for a directory, with a warning: recorded, it also made a resume without it refused)
    return LoadedModel(name=name, path_or_hub_id=target, revision=None if is_dir else revision, family=family,
                       tokenizer=tokenizer, model=model, embedding_dim=family.embedding_dim(model.config),
                       num_layers=family.num_layers(model.config), checkpoint=checkpoint,
                       commit=None if is_dir else _hub_commit(target, hub_kwargs, source.config),
                       weights_fingerprint=fingerprint)


def _placement_problem(exc: ValueError, family: Family) -> str | None:
    """What from_pretrained's ValueError says of a device map it could not make, in our words,
    or None for another ValueError: weights left for the disk without an offload folder, or a
    model class that cannot be split."""
    text = str(exc)
    if "offload_folder" in text or "offload folder" in text:
        return ("the --max-memory given leaves part of the weights for the disk: give --offload-folder DIR "
                "(or more memory)")
    if "_no_split_modules" in text or "does not support `device_map" in text:
        return f"the {family.name} family cannot be spread over devices (--device-map): {first_line(exc)}"
    return None


# A directory's weight files as from_pretrained reads them (sharded too); not train's
# pretraining_model.safetensors or training_state.pt, which a copy of the model may leave out.
_WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)")
_FINGERPRINT_SAMPLES = 32   # blocks read from each weight file, spread over it
_FINGERPRINT_BLOCK = 4096
_FINGERPRINT_ENDS = 65536   # bytes read at each end (a safetensors file's header: names, shapes, offsets)


def weights_fingerprint(directory) -> str | None:
    """A cheap fingerprint of a local model directory's weights, recorded in embed's files: a
    directory has no hub commit, so --resume and merge could not tell that the model saved there
    had been retrained between two runs (rows of two models mixed in one file). Each weight
    file's name and size, its first and last 64 KiB and 32 blocks of 4 KiB spread over it: well
    under a millisecond a file, a multi-GB file included (about 36 reads). The same weights copied
    elsewhere give the same fingerprint; retrained weights of the same shapes differ in every
    sampled block. None when the directory holds no weight file this reads (or it cannot be read)."""
    import hashlib

    try:
        files = sorted(p for p in Path(directory).iterdir() if _WEIGHT_FILE.fullmatch(p.name) and p.is_file())
        if not files:
            return None
        digest = hashlib.blake2b(digest_size=16)
        for path in files:
            with open(path, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                digest.update(f"{path.name}\0{size}\0".encode("utf-8"))
                digest.update(stream.read(_FINGERPRINT_ENDS))
                for k in range(_FINGERPRINT_SAMPLES):  # the middle of each 1/32 of the file
                    stream.seek(size * (2 * k + 1) // (2 * _FINGERPRINT_SAMPLES))
                    digest.update(stream.read(_FINGERPRINT_BLOCK))
                stream.seek(max(0, size - _FINGERPRINT_ENDS))
                digest.update(stream.read(_FINGERPRINT_ENDS))
    except OSError:
        return None  # (provenance only: loading the model says what is wrong with its files)
    return digest.hexdigest()


def _hub_commit(repo_id: str, hub_kwargs: dict, config) -> str | None:
    """The hub commit a hub model's files came from: the snapshot its config.json was read from
    in the local cache (transformers 5 no longer keeps it on the config as `_commit_hash`, so
    every file recorded an empty `commit` and `--resume` could not tell a `main` that moved on)."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers.utils.hub import extract_commit_hash

        path = try_to_load_from_cache(repo_id, "config.json", revision=hub_kwargs.get("revision"))
        return extract_commit_hash(path, None) if isinstance(path, str) else None
    except Exception:  # noqa: BLE001 - provenance only: unknown, as for a local directory
        return None


_COPY_TOKENIZER = ("copy the tokenizer files (tokenizer.json, or vocab.txt / spiece.model, with "
                   "tokenizer_config.json) of the model it was trained from into it")


def _tokenizer_cached(repo_id: str, hub_kwargs: dict) -> bool:
    """Whether the local Hugging Face cache holds any tokenizer file of a hub model (True when
    the hub can be reached: transformers then fetched whatever the model has)."""
    if not (_offline() or hub_kwargs.get("local_files_only")) and hub_reachable():
        return True
    from huggingface_hub import try_to_load_from_cache

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
             "vocab.json")
    return any(isinstance(try_to_load_from_cache(repo_id, name, revision=hub_kwargs.get("revision")), str)
               for name in names)


def _tokenizer_json_problem(directory) -> str | None:
    """Which JSON file of a model directory's tokenizer is not a JSON object (empty, cut short,
    edited into an array), and why; None where each is one or absent."""
    import json

    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.json"):
        path = Path(directory) / file
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError) as exc:
            return f"{path}: not valid JSON ({first_line(exc)})"
        if not isinstance(data, dict):
            return f"{path} holds {type(data).__name__}, not a JSON object"
    return None


def _tokenizer_config_problem(directory) -> str | None:
    """Which field of a model directory's tokenizer_config.json holds a value the tokenizer cannot
    use, and what it is; None where none does (or the file is absent or no JSON object:
    `_tokenizer_json_problem` says that). A `model_max_length` of "x" loaded, and every call of
    the tokenizer then failed on comparing it with a length, which read as residues it does not
    know: "the directory lacks this model's tokenizer", naming neither the file nor the field."""
    import json

    path = Path(directory) / "tokenizer_config.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("model_max_length")
    # (only what breaks the tokenizer: a number of any size loads and works, the limit unused here)
    if value is not None and not isinstance(value, (int, float)):
        return f"{path}: its model_max_length is {value!r:.40}, not a number of tokens"
    return None


def _has_tokenizer_files(directory) -> bool:
    """Whether a model directory holds any file a tokenizer's vocabulary is read from (not its
    settings alone: a copy holding tokenizer_config.json and no vocabulary was "damaged or of a
    kind transformers does not read (TypeError: expected str, bytes or os.PathLike object...)")."""
    return any(p.name.startswith(("tokenizer", "vocab", "spiece", "merges", "sentencepiece"))
               and p.name not in ("tokenizer_config.json", "special_tokens_map.json")
               for p in Path(directory).iterdir())


def _check_tokenizer(name: str, family: Family, tokenizer, is_dir: bool, vocab_size: int | None = None, *,
                     directory=None) -> None:
    """Refuse a tokenizer that does not know the residues (see `unknown_residues`): without this
    check, a directory lacking its tokenizer files embedded every protein as rows of `[UNK]`.
    With the model's `vocab_size`, also one whose ids (residues and special tokens) do not all
    exist in the model's embedding table: another model's tokenizer. `directory`: the model
    directory it was loaded from, whose tokenizer_config.json fields are checked first (one the
    tokenizer loaded with but cannot use read as residues it does not know)."""
    from protrans_cli.models.base import unknown_residues

    if directory is not None and (problem := _tokenizer_config_problem(directory)):
        raise ModelError(f"{name}: cannot load the tokenizer: {problem}")
    unknown = unknown_residues(family, tokenizer)
    if not unknown:
        if vocab_size:
            _check_token_ids(name, family, tokenizer, is_dir, int(vocab_size))
        return
    if tokenizer is None:
        raise ModelError(f"{name}: no tokenizer could be loaded; " + (_COPY_TOKENIZER if is_dir else
                         "it is not a protein language model this tool can use"))
    what = (f"the tokenizer maps the residue(s) {''.join(unknown)} to its unknown token "
            f"{getattr(tokenizer, 'unk_token', None)!r}")
    if is_dir:
        raise ModelError(f"{name}: {what}: the directory lacks this model's tokenizer; {_COPY_TOKENIZER}")
    raise ModelError(f"{name}: {what}: it is not a protein tokenizer this tool can use")


def _check_token_ids(name: str, family: Family, tokenizer, is_dir: bool, vocab_size: int) -> None:
    from protrans_cli.residues import STANDARD

    try:
        inputs, _ = family.encode(tokenizer, [STANDARD + "X"])
    except ModelError as exc:
        # a tokenizer that splits or merges residues (a sentencepiece model with "▁" a piece of its
        # own): said here, naming the model, and not at the first batch, after the output was begun
        # (an empty OUTPUT.partial that the next run called an interrupted run's work)
        raise ModelError(f"{name}: {exc}") from None
    except Exception:  # noqa: BLE001 - other encoding problems are reported where embedding fails
        return
    top = int(inputs["input_ids"].max())
    if top >= vocab_size:
        what = (f"its tokenizer gives token id {top}, but the model's vocabulary has {vocab_size} entries "
                "(another model's tokenizer)")
        raise ModelError(f"{name}: {what}; " + (_COPY_TOKENIZER if is_dir else "the two do not belong together"))


def _read_transformers_logging():
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    return hf_logging.get_verbosity(), hub_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()


def _write_transformers_logging(saved) -> None:
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity, hub_verbosity, bars = saved
    hf_logging.set_verbosity(verbosity)
    hub_logging.set_verbosity(hub_verbosity)
    if bars:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


# transformers' and huggingface_hub's log levels and transformers' progress bars, saved and put
# back as one process-wide setting (threads.SharedSetting; checkpoint saves share it)
TRANSFORMERS_LOGGING = SharedSetting(_read_transformers_logging, _write_transformers_logging)


@contextmanager
def _quiet_transformers():
    """No "Loading weights" bars or load reports from transformers unless protrans shows
    progress bars / runs with -v. The caller's levels are back afterwards, also when loads
    overlap in several threads."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    from protrans_cli import console

    with TRANSFORMERS_LOGGING.held():
        if console.state.verbosity < 1:
            # Without network, huggingface_hub logs two lines per retry ("... thrown while requesting",
            # "Retrying in 8s") before load_model's one-line error says the same; -v shows them.
            hub_logging.set_verbosity_error()
        if hf_logging.is_progress_bar_enabled() and not console.show_progress():
            hf_logging.disable_progress_bar()
        if console.state.verbosity < 1:
            # The load report lists the pretraining heads an encoder does not use; load_checked
            # already refuses a checkpoint that lacks encoder weights.
            hf_logging.set_verbosity_error()
        # (accelerate, under --device-map: "Some parameters are on the meta device because they were
        # offloaded to the disk", which embed's summary says as where each module was)
        placing_log = logging.getLogger("accelerate.big_modeling")
        level = placing_log.level
        if console.state.verbosity < 1:
            placing_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                if console.state.verbosity < 1:
                    # (and its UserWarning for a map key that is a bare parameter of the model itself,
                    # XLNet's mask_emb: "device_map keys do not match any submodules", at every run)
                    warnings.filterwarnings("ignore", message="The following device_map keys do not match any "
                                            "submodules")
                yield
        finally:
            placing_log.setLevel(level)


def weight_errors() -> tuple[type[BaseException], ...]:
    """What from_pretrained raises for weights it cannot use: shapes that do not fit the config
    (RuntimeError), a safetensors file cut short, a pickle that weights_only=True refuses."""
    import pickle

    from safetensors import SafetensorError

    return RuntimeError, SafetensorError, pickle.UnpicklingError


def weights_problem(exc: BaseException) -> str:
    """One line for an error of `weight_errors()`, without torch's advice to load a refused
    pickle with weights_only=False (which would run whatever code it holds)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return ("the pickled checkpoint (pytorch_model.bin) holds objects other than tensors; it is read with "
                "weights_only=True and refused (convert it to safetensors where you trust it)")
    if "ignore_mismatched_sizes" in str(exc):
        # transformers' "For details look at the above report!", whose report -v shows
        return ("some of its tensors have other shapes than its config.json gives (a config edited, or another "
                "model's weights); -v shows which")
    text = first_line(exc)
    if text.startswith("PytorchStreamReader failed"):
        # (torch's first sentence only: it went on "This is an internal miniz error. If you are seeing this
        # error, there is a high likelihood that your checkpoint file is corrupted. This can happen if ...")
        return (f"the weights file is damaged or cut short ({text.split('. ')[0].rstrip('.')}): copy or download "
                "the model again")
    return text


# The files from_pretrained looks for a model's weights in (an index names the shards).
_WEIGHT_ENTRIES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def missing_weights(folder, *, generator: bool = True) -> str | None:
    """What a model folder holding config.json lacks when it holds none of the weights files
    from_pretrained reads (a copy or download cut short, save_pretrained of the config and tokenizer
    alone): "the model directory has no ...", or, `generator`, "its generator folder G has no ..."
    for an ELECTRA pair's generator/; else None. Transformers' own "Error no file named
    model.safetensors, or pytorch_model.bin, found in directory D." was repeated inside our line,
    and for the generator/ it named the pair's directory, whose weights were there."""
    if lacking := _missing_weights(Path(folder)):
        return f"the model directory {lacking}"
    if generator and (lacking := _missing_weights(inner := Path(folder) / "generator")):
        return f"its generator folder {inner} {lacking}"
    return None


def _missing_weights(folder: Path) -> str | None:
    if not (folder / "config.json").is_file() or any((folder / name).is_file() for name in _WEIGHT_ENTRIES):
        return None
    # (a Hugging Face cache snapshot links each file to its blob: a download cut short, or a blob
    # deleted to free space, leaves the link dangling, and "has no weights file" hid where it went)
    if broken := next((name for name in _WEIGHT_ENTRIES if (folder / name).is_symlink()), None):
        return (f"has a {broken} that is a broken link (to {os.readlink(folder / broken)}: a download cut short "
                "or a cache cleaned? download the model again)")
    return "has no weights file (model.safetensors or pytorch_model.bin)"


def _invalid_repo_id(exc: BaseException) -> bool:
    """huggingface_hub's HFValidationError, which transformers re-raises as an OSError."""
    seen = exc
    while seen is not None:
        if type(seen).__name__ == "HFValidationError":
            return True
        seen = seen.__cause__ or seen.__context__
    return "Repo id must" in str(exc)


def _names_missing_sentencepiece(text: str) -> bool:
    """transformers names sentencepiece in several tokenizer errors; the install hint helps only
    when it (or protobuf) is really missing."""
    import importlib.util

    text = text.lower()
    if "sentencepiece" not in text and "protobuf" not in text:
        return False
    try:
        return importlib.util.find_spec("sentencepiece") is None or importlib.util.find_spec("google.protobuf") is None
    except (ImportError, ValueError):
        return True


def _default_dtype():
    import torch

    return torch.float32


HUB_PROBE_SECONDS = 60.0  # how long a probe's answer stands
_HUB_PROBE: list = []  # [(time.monotonic() of the last probe, its answer)]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host takes a TCP connection (one probe a minute at most: probed once a
    process, a notebook whose network came back read the cache alone until its kernel
    restarted). A proxy in the environment is trusted to reach it (the probe would go around it)."""
    import time

    now = time.monotonic()
    if _HUB_PROBE and now - _HUB_PROBE[0][0] < HUB_PROBE_SECONDS:
        return _HUB_PROBE[0][1]
    answer = _probe_hub(timeout)
    _HUB_PROBE[:] = [(now, answer)]
    return answer


hub_reachable.cache_clear = _HUB_PROBE.clear  # (the next call probes again)


def _probe_hub(timeout: float) -> bool:
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _cache_write_problem(exc: BaseException | None) -> str | None:
    """What refused a download's files in the Hugging Face cache ("PATH: Permission denied"), from
    the error's chain (transformers rewords a PermissionError and chains it); None when the
    failure was not the cache's (no network, no such model)."""
    import errno

    refusals = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in refusals:
            return f"{seen.filename}: {seen.strerror}" if seen.filename else seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _not_found_message(name: str, target: str, is_dir: bool, reason: str, flag: str = "-m",
                       what: str = "", revision: str | None = None, exc: BaseException | None = None) -> str:
    """`what`: the part of the hub model that is missing from the cache (all of it when empty);
    `revision`: the one asked for, which the download hint names (without it `hf download`
    fetches `main`, and the run still could not find its revision); `exc`: the error raised."""
    if is_dir:
        return f"{name}: cannot load the model directory: {reason}"
    get = f"`hf download {target}{f' --revision {revision}' if revision else ''} --local-dir DIR`"
    if (problem := _cache_write_problem(exc)) is not None:
        # (a read-only or full home, HF_HOME on a shared read-only store: the hub was reached, and
        # "download it where there is network" sent the user looking for a network they had)
        from huggingface_hub import constants

        return (f"cannot load model {name!r}: the Hugging Face cache ({constants.HF_HUB_CACHE}) cannot take its "
                f"files ({problem}); set HF_HOME (or HF_HUB_CACHE) to a folder you can write in, with room, or "
                f"download it ({get}) and pass the directory: {_give(flag)}DIR")
    if _offline():
        why = "the hub is offline (HF_HUB_OFFLINE=1)"
    elif not hub_reachable():
        why = "the hub cannot be reached from here (no network)"
    else:
        why = "it could not be downloaded"
    missing = f"{what} of the hub model {target} are" if what else f"the hub model {target} is"
    typo = _near_miss(name) if not what else None
    if typo:  # `-m prot_bertt` was told to `hf download prot_bertt`
        return f"cannot load model {name!r}: {typo} ({missing} not in the local Hugging Face cache and {why})"
    return (f"cannot load model {name!r}: no local directory of that name, and {missing} "
            f"not in the local Hugging Face cache and {why}; "
            f"download it where there is network ({get}) "
            f"and pass the directory: {_give(flag)}DIR{_fair_esm_advice(name, flag) if not what else ''}")


def _fair_esm_advice(name: str, flag: str) -> str:
    """The way to use fair-esm's own download of an ESM short name's weights without network
    (fair_esm.torch_hub_file), or "". A node that ran fair-esm has the weights, and was told to
    download them."""
    from protrans_cli.models.fair_esm import torch_hub_file

    path = torch_hub_file(name)
    if path is None:
        return ""
    return (f"; or convert fair-esm's download of the same weights, here: protrans import-model {path} -o DIR, "
            f"then {_give(flag)}DIR")


def _is_head(directory) -> bool:
    """Whether `directory` holds a head written by `protrans fit` (its config.json's `kind`)."""
    config = json_object(Path(directory) / "config.json")
    return "kind" in config and "model_type" not in config


def _near_miss(name: str) -> str | None:
    """What a name that is neither a model directory nor a hub model was likely meant to be: a
    short name spelled nearly so (`prot_bertt`), or a model directory beside a folder that
    exists (`runs/bert-tiny` for runs/bert_tiny). None when nothing comes close."""
    import difflib

    from protrans_cli.models.checkpoints import CHECKPOINTS

    if name in CHECKPOINTS:  # a short name whose hub model is missing: the download advice is right
        return None
    if "/" not in name:
        # Scored as difflib.get_close_matches scores (cutoff 0.75), but of names equally close the
        # first in the registry's order: difflib breaks a tie by the greatest name, so fair-esm's
        # `esm1v_t33_650M_UR90S` (its model 1) was offered `_5`.
        matcher = difflib.SequenceMatcher(b=name)
        scores = {}
        for candidate in CHECKPOINTS:
            matcher.set_seq1(candidate)
            scores[candidate] = matcher.ratio()
        best = max(scores, key=scores.__getitem__)  # (the first of equal scores)
        if scores[best] >= 0.75:
            return f"not a short name: did you mean {best}? (`protrans models` lists them)"
        return None
    parent = Path(name).expanduser().parent
    try:
        models = [p.name for p in parent.iterdir() if (p / "config.json").is_file()]
    except OSError:  # no such folder: a hub id (owner/name)
        return None
    close = difflib.get_close_matches(Path(name).name, models, n=1, cutoff=0.6)
    if close:
        return f"no model directory of that name: did you mean {parent / close[0]}?"
    held = f"the model directories there: {', '.join(sorted(models)[:8])}" + (", ..." if len(models) > 8 else "") \
        if models else "it holds no model directory"
    return f"no model directory of that name in {parent} ({held})"
