"""PEFT LoRA adapters merged into their base model (`protrans import-model ADAPTER_DIR`), without peft.

    merged = import_adapter("esm2_lora/", "esm2_merged/")          # base from adapter_config.json
    merged = import_adapter("esm2_lora/", "esm2_merged/", base="esm2_t12_35M/")   # offline: a local base
    print(describe(merged))

peft's `save_pretrained` writes adapter_config.json and adapter_model.safetensors (adapter_model.bin
in older versions), the tensors keyed `base_model.model.<module path>.<name>` with the adapter's own
name removed (peft/utils/save_and_load.py), the module path relative to the model peft wrapped
(EsmModel: `encoder.layer.0...`; EsmForSequenceClassification: `esm.encoder.layer.0...`). What
peft's `merge_and_unload()` does is done here (peft/tuners/lora/layer.py, peft 0.21):

    <path>.lora_A.weight (r, in), <path>.lora_B.weight (out, r)   W += scale * (B @ A), transposed when
                                                                  fan_in_fan_out
    <path>.lora_B.bias (lora_bias)                                b += scale * bias
    <path>.lora_embedding_A (r, vocab), .lora_embedding_B (d, r)  W += scale * (B @ A).T
    <path>.base_layer.<p>, <path>.<p> (trained biases: `bias`     copied into the module's parameter
    "all" / "lora_only"; modules_to_save; embedding layers)

with scale = alpha / r (alpha / sqrt(r) under use_rslora), r and alpha those of the first key of
rank_pattern / alpha_pattern that matches the module's name as `(.*\\.)?(KEY)$` (peft's
get_pattern_key), else the config's r and lora_alpha. The merge is computed in float32 and cast to
the weight's dtype, as peft's on the CPU. The base is loaded through `load_model` (short names, hub
ids, the Hugging Face cache and offline as everywhere) as the model directory its family holds
(the masked-LM class, ESM's EsmForMaskedLM, ProtT5's T5ForConditionalGeneration; the encoder alone
where the base has no head), the paths mapped onto it as given, under its base-model prefix
(`esm.`) or without their first part. Modules of a task head peft saved whole (modules_to_save:
EsmForSequenceClassification's `classifier`), which the base lacks, are left out and named.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from protrans_cli.errors import InputError, ModelError, UsageError, expect_path, first_line, force_option, option

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
# Settings whose adapters are not a plain LoRA delta on the base's weights (a value that is not
# None/False/empty refuses the adapter)
_UNSUPPORTED = {"use_dora": "DoRA (weight-decomposed LoRA)", "use_qalora": "QALoRA",
                "alora_invocation_tokens": "activated LoRA (aLoRA)", "layer_replication": "layer replication",
                "trainable_token_indices": "trainable tokens", "target_parameters": "LoRA on nn.Parameters",
                "arrow_config": "Arrow routing", "use_bdlora": "BD-LoRA", "megatron_config": "Megatron layers"}
# init_lora_weights that change the base's weights when the adapter is made (saved without
# peft's conversion, the adapter is relative to those, not to the published base)
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


@dataclass
class MergedAdapter:
    out_dir: Path
    base: str
    r: int
    alpha: float
    rslora: bool
    modules: int                      # modules given a LoRA delta
    patterned: int = 0                # of them, those whose r or alpha rank_pattern / alpha_pattern set
    copied: int = 0                   # tensors copied (trained biases, modules_to_save, embeddings)
    skipped: list[str] = field(default_factory=list)   # task heads the base lacks


def describe(merged: MergedAdapter) -> str:
    alpha = f"{merged.alpha:g}"
    details = [f"r {merged.r}", f"alpha {alpha}"] + (["rsLoRA"] if merged.rslora else []) + [
        f"{merged.modules} modules" + (f", {merged.patterned} with rank_pattern/alpha_pattern's r or alpha"
                                       if merged.patterned else "")]
    if merged.copied:
        details.append(f"{merged.copied} trained tensors copied")
    heads = f" ({', '.join(merged.skipped)} not merged: a task head)" if merged.skipped else ""
    return f"merged LoRA adapter ({', '.join(details)}) into {merged.base}; wrote {merged.out_dir}{heads}"


def is_adapter(path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def read_config(directory: Path) -> dict:
    """adapter_config.json, checked to be a LoRA adapter this merge reproduces (InputError naming the
    file and the setting otherwise)."""
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the adapter config: {first_line(exc)}", path=str(path)) from None
    if not isinstance(config, dict):
        raise InputError("is not a JSON object: not a peft adapter config", path=str(path))
    kind = config.get("peft_type")
    if kind != "LORA":
        raise InputError(f"peft_type is {kind!r}: import-model merges LoRA adapters (peft_type \"LORA\") only",
                         path=str(path))
    for key, what in _UNSUPPORTED.items():
        if config.get(key) not in (None, False, [], {}):
            raise InputError(f"{key} is {config[key]!r}: {what}, which import-model does not merge (merge it with "
                             "peft's merge_and_unload())", path=str(path))
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise InputError(f"init_lora_weights is {init!r}: the adapter is relative to base weights that {init} "
                         "changed, not the base model's (save it with peft's path_initial_model_for_weight_conversion"
                         ")", path=str(path))
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool) or config[key] <= 0:
            raise InputError(f"{key} is {config.get(key)!r}, not a positive number", path=str(path))
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise InputError(f"{key} is {config[key]!r}, not an object of module patterns", path=str(path))
    return config


def read_weights(directory: Path) -> tuple[Path, dict]:
    """The adapter's tensors (adapter_model.safetensors, else adapter_model.bin read weights-only)."""
    import torch

    path = next((directory / name for name in WEIGHTS if (directory / name).is_file()), None)
    if path is None:
        raise InputError(f"the adapter has no weights: neither {WEIGHTS[0]} nor {WEIGHTS[1]} is in it",
                         path=str(directory))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a cut or damaged file, or one refused weights-only
        raise InputError(f"cannot read the adapter weights: {first_line(exc)[:300]}", path=str(path)) from None
    if not isinstance(tensors, dict) or not tensors or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise InputError("holds no state dict of tensors: not a peft adapter's weights", path=str(path))
    return path, tensors


def pattern_value(patterns: dict, name: str, default):
    """peft's get_pattern_key: the value of the first pattern that matches the module name's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


# ---------------------------------------------------------------------------------------------
# The merge


_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|"
                   r"lora_embedding_B)$")


def _group(path: Path, tensors: dict) -> tuple[dict, dict]:
    """{module path: {part: tensor}} of the LoRA pairs, and {parameter path: tensor} of the tensors
    copied as they are (names without peft's prefix, wrappers and the adapter's name)."""
    pairs, plain = {}, {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        if ".original_module." in name:  # (the untrained original of a modules_to_save copy: bias "all" saves it)
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
        if match := _LORA.match(name):
            pairs.setdefault(match["module"], {})[match["part"]] = tensor
        elif re.search(r"(^|\.)(lora_|base_layer\.lora)", name):
            raise InputError(f"holds {key}, a LoRA tensor of a kind import-model does not merge", path=str(path))
        else:
            plain[name.replace(".base_layer.", ".")] = tensor
    for module, parts in pairs.items():
        if not ({"lora_A.weight", "lora_B.weight"} <= set(parts) or
                {"lora_embedding_A", "lora_embedding_B"} <= set(parts)):
            raise InputError(f"holds {', '.join(sorted(parts))} of {module} without its other half (lora_A and "
                             "lora_B)", path=str(path))
    return pairs, plain


def _locate(model, name: str, modules: dict) -> str | None:
    """`name` (a module or parameter path of the model peft wrapped) in the loaded base: as given,
    under the base-model prefix (`esm.`), or without its first part (a task model's prefix)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [name, f"{prefix}.{name}" if prefix else None]
    if "." in name:
        rest = name.split(".", 1)[1]
        candidates += [rest, f"{prefix}.{rest}" if prefix else None]
    return next((c for c in candidates if c is not None and c in modules), None)


def merge(model, config: dict, path: Path, tensors: dict) -> MergedAdapter:
    """Merge the adapter's tensors into `model` in place; the counts for the summary."""
    import torch

    pairs, plain = _group(path, tensors)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    result = MergedAdapter(Path(), "", int(config["r"]), config["lora_alpha"], bool(config.get("use_rslora")), 0)
    targets = {}
    for name, parts in sorted(pairs.items()):
        found = _locate(model, name, modules)
        if found is None:
            raise InputError(f"holds LoRA weights for {name}, which matches no module of the base model "
                             f"({type(model).__name__}): an adapter of another model", path=str(path))
        targets[name] = found
    with torch.no_grad():
        for name, parts in sorted(pairs.items()):
            module = modules[targets[name]]
            r = pattern_value(rank_pattern, name, config["r"])
            alpha = pattern_value(alpha_pattern, name, config["lora_alpha"])
            result.patterned += (r, alpha) != (config["r"], config["lora_alpha"])
            scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            embedding = "lora_embedding_A" in parts
            a = parts["lora_embedding_A" if embedding else "lora_A.weight"].float()
            b = parts["lora_embedding_B" if embedding else "lora_B.weight"].float()
            weight = getattr(module, "weight", None)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
                raise InputError(f"the LoRA weights of {name} have shapes {tuple(a.shape)} and {tuple(b.shape)}, "
                                 f"not (r, in) and (out, r) for its r {r}", path=str(path))
            delta = b @ a
            if embedding or config.get("fan_in_fan_out"):
                delta = delta.T
            if not isinstance(weight, torch.Tensor) or weight.shape != delta.shape:
                shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else "none"
                raise InputError(f"the LoRA weights of {name} make a {tuple(delta.shape)} update, but the base "
                                 f"model's {targets[name]}.weight is {shape}: an adapter of another model",
                                 path=str(path))
            weight.copy_((weight.float() + scale * delta).to(weight.dtype))
            if "lora_B.bias" in parts:  # (lora_bias: peft adds it, scaled, to the base layer's bias)
                bias = getattr(module, "bias", None)
                if not isinstance(bias, torch.Tensor) or bias.shape != parts["lora_B.bias"].shape:
                    raise InputError(f"holds a lora_B bias for {name}, whose module in the base model has no bias "
                                     "of that shape", path=str(path))
                bias.copy_((bias.float() + scale * parts["lora_B.bias"].float()).to(bias.dtype))
            result.modules += 1
        skipped = set()
        for name, tensor in sorted(plain.items()):
            found = _locate(model, name, params)
            if found is None:
                # (a module peft saved whole that the base lacks: a task head, such as the classifier
                # EsmForSequenceClassification adds)
                head = next((m[0].rstrip(".") for e in config.get("modules_to_save") or []
                             if (m := re.match(rf"(.*\.)?{re.escape(e)}\.", name))), None)
                if head is not None:
                    skipped.add(head)
                    continue
                raise InputError(f"holds {name}, which matches no parameter of the base model "
                                 f"({type(model).__name__}): an adapter of another model", path=str(path))
            param = params[found]
            if param.shape != tensor.shape:
                raise InputError(f"holds {name} of shape {tuple(tensor.shape)}, but the base model's {found} is "
                                 f"{tuple(param.shape)}: an adapter of another model", path=str(path))
            param.copy_(tensor.to(param.dtype))
            result.copied += 1
    result.skipped = sorted(skipped)
    return result


# ---------------------------------------------------------------------------------------------
# The directory


def load_base(name: str):
    """The base as `load_model` loads it, with the head its model directory holds (the masked-LM
    class) where the family has one and the base holds it, else the encoder; in the base's dtype
    where that is half precision (a merged ProtT5-XL half stays half)."""
    from protrans_cli.models import load_model, open_config

    source = open_config(name, flag="--base")
    dtype = getattr(source.config, "dtype", None) or getattr(source.config, "torch_dtype", None)
    dtype = str(dtype).removeprefix("torch.") if str(dtype).removeprefix("torch.") in ("float16", "bfloat16") \
        else None
    if source.family.masked_lm_class is not None:
        try:
            return load_model(name, dtype=dtype, masked_lm=True), True
        except ModelError as exc:
            if source.family.masked_lm_lacking not in str(exc):
                raise
    return load_model(name, dtype=dtype), False


def _refuse_base_replaced(out_dir: Path, base: str) -> None:
    """UsageError where `out_dir` (replaced under --force) is, or holds, the local base model
    directory: `import-model ADAPTER --base base -o base --force` replaced the base with the
    merged model and deleted whatever else its folder held, as it refuses to for the adapter."""
    from protrans_cli.embed import _model_directory
    from protrans_cli.io.files import input_inside

    base_dir = _model_directory(base)
    if base_dir is not None and out_dir.is_dir() and input_inside(out_dir, [base_dir]) is not None:
        raise UsageError(f"{out_dir} holds the base model {base}: {force_option()} would delete it (choose another "
                         f"{option('-o', 'out_dir')})")


def record_base(folder: Path, base: str) -> None:
    """Record in the merged model's config.json (origins.MERGED_KEY) the base it was merged into,
    a local one by its absolute path: contacts follows it back to where the contact head came from
    (a published model's, or the untrained one of a run protrans pretrained from scratch)."""
    import json

    from protrans_cli.origins import MERGED_KEY

    local = Path(base).expanduser()
    origin = str(local.resolve()) if local.is_dir() else base
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data[MERGED_KEY] = origin
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def import_adapter(adapter, out_dir, *, base: str | None = None, force: bool = False) -> MergedAdapter:
    """Write the model directory `out_dir`: the base model with the peft LoRA adapter in the
    directory `adapter` merged into it. `base`: the base model (a short name, hub id or local
    directory) in place of the adapter config's base_model_name_or_path."""
    from protrans_cli.models.imported import model_output, write_checked

    expect_path(adapter, "adapter")
    expect_path(out_dir, "out_dir")
    adapter = Path(adapter)
    out_dir = model_output(out_dir, adapter, "adapter", "esm2_merged", force)
    config = read_config(adapter)
    weights_path, tensors = read_weights(adapter)
    if base is None:
        base = config.get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise UsageError(f"{adapter / CONFIG} names no base_model_name_or_path: give the base model with "
                             f"{option('--base', 'base')}")
    _refuse_base_replaced(out_dir, str(base))
    loaded, masked_lm = load_base(str(base))
    result = merge(loaded.model, config, weights_path, tensors)
    del tensors
    result.base = str(base)
    holder, loaded.model = [loaded.model], None  # (freed once written, before the directory is read back)
    fingerprint = loaded.weights_fingerprint

    def card(read):
        from protrans_cli.embed import model_attr
        from protrans_cli.training.card import import_card

        rank = f"r {result.r}, alpha {result.alpha:g}" + (", rsLoRA" if result.rslora else "")
        # (a local base directory by its absolute path and weights: `--base esm2/`, as given, named
        # nothing once the card was read elsewhere)
        shown = model_attr(str(base))
        return import_card(loaded=read, base=str(base),
                           source=f"`{shown}` with the peft LoRA adapter `{adapter.name}` merged into its weights",
                           details=[f"Base model: `{shown}`" + (f" (weights {fingerprint})" if fingerprint else ""),
                                    f"LoRA: {rank}, {result.modules} modules merged as peft's merge_and_unload()"
                                    + (f", {result.copied} trained tensors copied" if result.copied else ""),
                                    *([f"Left out: {', '.join(result.skipped)} (a task head the base lacks)"]
                                      if result.skipped else [])])

    def save(model, folder):
        loaded.family.save_pretrained(model, loaded.tokenizer, folder)
        record_base(folder, str(base))

    write_checked(out_dir, holder, save, masked_lm=masked_lm, card=card)
    result.out_dir = out_dir
    return result
