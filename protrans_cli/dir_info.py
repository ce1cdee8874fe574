"""`protrans info DIR`: what a folder protrans wrote (or downloaded) holds, read without torch.

    from protrans_cli.dir_info import directory_info, directory_lines
    facts = directory_info("heads/ss3")        # a head: task, classes, architecture, metrics
    facts = directory_info("runs/bert_small")  # a train run: its model, last step, loss, tokens
    print("\\n".join(directory_lines(facts)))

Five kinds of folder: a prediction head (`fit`, `finetune`, `import-head`: config.json with a task),
a model directory (config.json with a model_type: `train`'s final model, `import-model`'s, a
downloaded checkpoint), a `protrans train` run directory (train_config.json or checkpoints/step_N/,
with its final model at the root once written), one of a run's checkpoints (step_N/) and a
`protrans finetune` output (finetune.json, head/ and model/: the two described together).

Only JSON is read: config.json, metrics.json, train_config.json, metrics.jsonl, finetune.json, and the JSON header
of each safetensors file (its first 8 bytes give the header's length; the header gives every
tensor's dtype and shape), so a 3B model is described without reading its weights. Nothing is
unpickled: a pytorch_model.bin is named with its size, never loaded, and a checkpoint's
training_state.pt neither.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

from protrans_cli.errors import InputError, brief

# The model_types of each model family (protrans_cli.models' FAMILIES, which imports torch;
# tests/test_dir_info.py checks that the two agree).
FAMILY_MODEL_TYPES = {
    "bert": ("bert",), "roberta": ("roberta",), "albert": ("albert",), "electra": ("electra",), "t5": ("t5",),
    "xlnet": ("xlnet",), "transfo_xl": ("protrans-transfo-xl",), "esm": ("esm",), "esmc": ("protrans_esmc",),
}
# safetensors' dtype names as torch names them
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
           "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}
# What a checkpoint stores besides parameters: integer tensors (position_ids of older BERTs) and
# these floating buffers (rotary embeddings' inverse frequencies, which ESM-2 checkpoints hold: a
# tiny ESM-2 counted 2 more than its model card)
_FLOATS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_BUFFERS = (".inv_freq",)
_MAX_HEADER = 100 * 1024 * 1024  # (safetensors' own limit on a header)
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
# (config.json's names for a size, by family: BERT-likes, T5/XLNet/Transformer-XL)
_SIZES = {"hidden_size": ("hidden_size", "d_model"), "layers": ("num_hidden_layers", "num_layers", "n_layer"),
          "heads": ("num_attention_heads", "num_heads", "n_head"),
          "max_positions": ("max_position_embeddings", "n_positions")}
STATE_FILE = "training_state.pt"  # (training.rundir's names: that module is not imported for them)
TRAIN_CONFIG = "train_config.json"
PROGRESS_FILE = "progress.json"  # a checkpoint's step and the run's tokens up to it (training.rundir's)
_STEP_DIR = re.compile(r"^step_(\d+)$")


def directory_info(path) -> dict:
    """The facts of the folder `path` (kind: head, model, run or checkpoint); an InputError naming
    what info reads for any other folder."""
    path = Path(path)
    config = _json(path / "config.json")
    if isinstance(config, dict) and "task" in config and "hyperparameters" in config:
        return _head(path, config)
    step = _STEP_DIR.match(path.name)
    if step and (path / STATE_FILE).is_file():
        facts = {"directory": str(path), "kind": "checkpoint", "step": int(step.group(1))}
        facts.update(_model(path, config if isinstance(config, dict) else {}))
        facts.update(_run(path, checkpoint=True))
        return facts
    if (path / TRAIN_CONFIG).is_file() or _checkpoints(path):
        facts = {"directory": str(path), "kind": "run"}
        if isinstance(config, dict) and isinstance(config.get("model_type"), str):
            facts.update(_model(path, config))
        else:
            facts["model"] = "not written yet (the run has not finished: its checkpoints hold the model so far)"
        facts.update(_run(path))
        return facts
    if isinstance(config, dict) and isinstance(config.get("model_type"), str):
        facts = {"directory": str(path), "kind": "model"}
        facts.update(_model(path, config))
        return facts
    # (finetune.json alone marks one: _finetune says which of head/ and model/ is missing)
    if (path / "finetune.json").is_file() or ((path / "head" / "config.json").is_file() and (path / "model").is_dir()):
        return _finetune(path)
    if path.name.endswith(".partial") and (kept := _partial(path)) is not None:
        return kept
    raise InputError("not a folder info reads: info describes an embeddings, contact-map or probabilities file, "
                     "a head directory (fit, finetune, import-head), a model directory (config.json with a "
                     "model_type) or a train run directory", path=str(path))


# The commands whose OUTPUT.partial/ keeps finished batches, each with its marker file
# (protrans-COMMAND.json: variants.UnitStore's); fit's and finetune's keep state.pt
_UNIT_COMMANDS = ("variants", "perplexity", "translate", "generate")


def _partial(path: Path) -> dict | None:
    """An interrupted run's OUTPUT.partial/ recognised by what it holds, without reading it: a
    batch command's marker file, or fit's or finetune's state.pt (told apart by its settings'
    names in the pickle's bytes, read from the zip without unpickling); None for anything else."""
    output = str(path.with_name(path.name[:-len(".partial")]))
    facts = {"directory": str(path), "kind": "partial", "output": output}
    for command in _UNIT_COMMANDS:
        if (path / f"protrans-{command}.json").is_file():
            facts.update(command=command, holds="the batches it finished (read back, not computed again)")
            return facts
    state = path / "state.pt"
    if not state.is_file():
        return None
    command = _state_command(state)
    facts.update(command=command or "fit or finetune",
                 holds=f"its state so far (state.pt, {_size(state)}: saved as it goes)")
    return facts


def _state_command(state: Path) -> str | None:
    """fit or finetune, from the names in a state.pt's pickle (finetune's settings have lora_rank);
    None where the file cannot be read as a torch zip."""
    import zipfile

    try:
        with zipfile.ZipFile(state) as archive:  # (the sha256 line in front: zipfile allows a prefix)
            pickled = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pickled is None:
                return None
            with archive.open(pickled) as fh:
                data = fh.read(_MAX_HEADER)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return "finetune" if b"lora_rank" in data else "fit"


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "unreadable"
    return f"{size / 2 ** 20:,.1f} MiB" if size >= 2 ** 20 else f"{size:,} bytes"


def _json(path: Path):
    """The JSON a file holds; None where it is missing or unreadable."""
    try:
        if not path.is_file():  # (a FIFO or a link to a device is not read)
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _checkpoints(run: Path) -> list[tuple[int, Path]]:
    """A run's complete checkpoints (with their training state), oldest first."""
    root = run / "checkpoints"
    try:
        found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    except OSError:
        return []
    return sorted((step, p) for step, p in found if (p / STATE_FILE).is_file())


# --- a head ---

def _head(path: Path, config: dict) -> dict:
    facts: dict = {"directory": str(path), "kind": "head"}
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    facts["task"] = task.get("name")
    facts["predicts"] = config.get("kind", task.get("kind"))
    outputs = {}
    for output in task.get("outputs", []) if isinstance(task.get("outputs"), list) else []:
        if isinstance(output, dict):
            outputs[str(output.get("name"))] = ("value" if output.get("kind") == "value"
                                                else list(output.get("classes") or []))
    facts["outputs"] = outputs
    facts["architecture"] = config.get("architecture") or ("cnn" if facts["predicts"] == "per_residue" else "fnn")
    for key in ("input_dim", "layer", "ensemble", "format_version", "protrans_version"):
        if key in config:
            facts[key] = config[key]
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    if training.get("folds"):
        facts["folds"] = len(training["folds"])
    embedding = config.get("embedding") if isinstance(config.get("embedding"), dict) else {}
    facts["embedding"] = {k: embedding[k] for k in ("model", "family", "revision", "commit", "layers", "pooling",
                                                     "embedding_dim", "storage_dtype", "chains", "linker_length",
                                                     "long_policy", "max_length", "finetuned_from")
                          if embedding.get(k) not in (None, "")}
    for key in ("embeddings", "labels", "proteins", "validation"):
        if training.get(key) is not None:
            facts.setdefault("training", {})[key] = training[key]
    if training.get("imported_from") is not None:  # (import-head's: the published checkpoint and its digest)
        facts["imported"] = {"from": training["imported_from"],
                             **{k: training[k] for k in ("source", "sha256", "epoch") if training.get(k) is not None}}
    weights = path / "weights.safetensors"
    facts["weights"] = _bytes(weights) if weights.is_file() else None
    metrics = _json(path / "metrics.json")
    if isinstance(metrics, dict):
        facts["metrics"] = {name: {output: _headline(m) for output, m in per_set.items() if isinstance(m, dict)}
                            for name, per_set in metrics.items() if isinstance(per_set, dict)}
    return facts


def _headline(m: dict) -> dict:
    """An output's headline numbers of a metrics.json set."""
    keys = ("metric", "kind", "accuracy", "ci95", "mcc", "spearman", "pearson", "n", "n_proteins")
    return {k: m[k] for k in dict.fromkeys(keys) if isinstance(k, str) and k in m}


# --- a finetune output ---

def _finetune(path: Path) -> dict:
    """A `protrans finetune` OUT: finetune.json's record (base model, LoRA, epochs), OUT/head as a
    head and OUT/model as a model."""
    facts: dict = {"directory": str(path), "kind": "finetune"}
    record = _json(path / "finetune.json")
    if not isinstance(record, dict) and (path / "finetune.json").is_file():
        # (cut short or edited: its LoRA and epochs are not known; said, not left out)
        try:
            json.loads((path / "finetune.json").read_text(encoding="utf-8"))
            why = "not a JSON object"
        except (OSError, ValueError, RecursionError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        facts["finetune_json"] = f"unreadable ({why}): its LoRA and epochs are not known"
    record = record if isinstance(record, dict) else {}
    head_config = _json(path / "head" / "config.json")
    head = _head(path / "head", head_config) if isinstance(head_config, dict) else {}
    embedding = head.get("embedding", {})
    base = record.get("model") or embedding.get("finetuned_from")
    if base:
        facts["finetuned_from"] = base
        # (a local base directory's weights, recorded since finetune records its absolute path)
        if isinstance(record.get("model_weights_fingerprint"), str):
            facts["finetuned_from_weights"] = record["model_weights_fingerprint"]
    if isinstance(record.get("lora"), dict):
        facts["lora"] = {k: record["lora"][k] for k in ("rank", "alpha", "dropout", "targets") if k in record["lora"]}
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    facts["training"] = {k: config[k] for k in ("lr", "weight_decay", "max_epochs", "patience", "accumulate", "seed")
                         if config.get(k) is not None}
    history = record.get("history")
    if isinstance(history, list):
        facts["training"]["epochs"] = len(history)
    if isinstance(record.get("best_epoch"), int):
        facts["training"]["best_epoch"] = record["best_epoch"]
    facts["head"] = head or "missing (no readable head/config.json)"
    model_config = _json(path / "model" / "config.json")
    if isinstance(model_config, dict) and isinstance(model_config.get("model_type"), str):
        facts["model"] = _model(path / "model", model_config)
    else:
        facts["model"] = "missing (no model/config.json: `predict --fasta` with the head cannot embed)"
    return facts


# --- a model ---

def _model(path: Path, config: dict) -> dict:
    facts: dict = {}
    model_type = config.get("model_type")
    facts["model_type"] = model_type
    facts["family"] = family_of(config)
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        facts["architecture"] = ", ".join(map(str, architectures))
    for name, keys in _SIZES.items():
        for key in keys:
            if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
                facts[name] = config[key]
                break
    if isinstance(config.get("vocab_size"), int):
        facts["vocab_size"] = config["vocab_size"]
    dtype = config.get("dtype", config.get("torch_dtype"))
    if isinstance(dtype, str):
        facts["config_dtype"] = dtype
    facts.update(_weights(path))
    generator = path / "generator"
    if isinstance(_json(generator / "config.json"), dict) and (generator / "model.safetensors").is_file():
        facts["generator_parameters"] = _weights(generator).get("parameters", 0)
    return facts


def family_of(config: dict) -> str | None:
    """The family a model's config.json belongs to (by model_type, then architectures), as
    protrans_cli.models.family_for_config tells it; None for a model of no family."""
    for name, types in FAMILY_MODEL_TYPES.items():
        if config.get("model_type") in types:
            return name
    architectures = config.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        if not isinstance(arch, str):
            continue
        base = re.sub(r"(for[a-z]+|encodermodel|lmheadmodel|pretrainedmodel|model)$", "", arch.lower())
        for name, types in FAMILY_MODEL_TYPES.items():
            if any(base == t.replace("-", "").replace("_", "") for t in types):
                return name
    return None


def _weights(path: Path) -> dict:
    """Parameters and stored dtypes from the safetensors headers (one file, or the shards an
    index names); a pickled checkpoint's name and size alone."""
    index = _json(path / "model.safetensors.index.json")
    if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
        files = sorted({str(f) for f in index["weight_map"].values()})
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickles = [name for name in _PICKLES if (path / name).is_file()]
        if pickles:
            shards = sorted(p.name for p in path.glob("pytorch_model-*.bin"))
            total = sum(_bytes(path / n) for n in (pickles + shards) if n.endswith((".bin", ".pt", ".pth")))
            return {"weights": f"a pickle ({', '.join(pickles[:1] + shards[:2])}{', ...' if len(shards) > 2 else ''}; "
                               "not read: protrans never unpickles)", "weights_bytes": total}
        return {"weights": "none (no model.safetensors or pytorch_model.bin)"}
    parameters, by_dtype, total = 0, {}, 0
    for name in files:
        header = safetensors_header(path / name)
        total += _bytes(path / name)
        for key, entry in header.items():
            if key == "__metadata__" or not isinstance(entry, dict):
                continue
            count = math.prod(entry.get("shape") or [])
            if entry.get("dtype") in _FLOATS and not key.endswith(_BUFFERS):
                parameters += count
            dtype = _DTYPES.get(entry.get("dtype"), str(entry.get("dtype")).lower())
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    return {"weights": ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else ""),
            "weights_bytes": total, "parameters": parameters,
            "stored_dtype": {k: v for k, v in sorted(by_dtype.items(), key=lambda kv: -kv[1])}}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: {tensor name: {dtype, shape, data_offsets}} and
    `__metadata__` (8 bytes of little-endian length, then the header; no tensor is read)."""
    try:
        with open(path, "rb") as stream:
            if not os.path.isfile(path):
                raise OSError("not a regular file")
            size = os.fstat(stream.fileno()).st_size
            head = stream.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise ValueError(f"its header claims {length:,} bytes of a {size:,}-byte file")
            header = json.loads(stream.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise InputError("is missing (a model directory's index names it)", path=str(path)) from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"not a readable safetensors file ({brief(exc)})", path=str(path)) from None
    if not isinstance(header, dict):
        raise InputError("not a readable safetensors file (its header is not a JSON object)", path=str(path))
    return header


def _bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- a train run ---

def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _progress(checkpoints: list[tuple[int, Path]]) -> tuple[int, int] | None:
    """(step, tokens) of the last checkpoint's progress.json, where it has a readable one."""
    saved = _progress_json(checkpoints)
    return (saved["step"], saved["tokens"]) if saved is not None else None


def _progress_json(checkpoints: list[tuple[int, Path]]) -> dict | None:
    """The last checkpoint's progress.json, where it has a readable one of its step."""
    if not checkpoints:
        return None
    step, path = checkpoints[-1]
    saved = _json(path / PROGRESS_FILE)
    if isinstance(saved, dict) and saved.get("step") == step and _is_count(saved.get("tokens")):
        return saved
    return None


def _processes(checkpoints: list[tuple[int, Path]]) -> dict:
    """The run's process history up to its last checkpoint (progress.json's "processes": each
    invocation's first step, processes, strategy and precision), None where it is not recorded
    (checkpoints of earlier versions), with the step it goes up to; nothing without a checkpoint."""
    if not checkpoints:
        return {}
    saved = _progress_json(checkpoints)
    records = saved.get("processes") if saved is not None else None
    return {"processes": records if isinstance(records, list) else None, "processes_up_to": checkpoints[-1][0]}


def _run(path: Path, *, checkpoint: bool = False) -> dict:
    facts: dict = {}
    cfg = _json(path / TRAIN_CONFIG)
    if isinstance(cfg, dict):
        facts["training"] = {k: cfg[k] for k in ("family", "preset", "objective", "num_steps", "max_length",
                                                  "global_batch_size", "lr") if cfg.get(k) is not None}
        if isinstance(cfg.get("init_from"), str) and cfg["init_from"]:
            # (`train --init-from`: the weights it began with, whose earlier training the tokens,
            # steps and length here do not count; as given, where train_config.json records it so)
            facts["training"]["init_from"] = cfg["init_from"]
        phases = _phases(cfg)
        if phases:
            # (a run of --phase: its num_steps and max_length are defaults it never used)
            facts["training"].pop("global_batch_size", None)
            facts["training"].update(num_steps=sum(p["num_steps"] for p in phases),
                                     max_length=max(p["max_length"] for p in phases), phases=phases)
    if checkpoint:
        # (the run's tokens up to this checkpoint, where it has a progress.json: checkpoints of
        # earlier versions have none, and training_state.pt is not unpickled here)
        step = _STEP_DIR.match(path.name)
        if step and (saved := _progress([(int(step.group(1)), path)])) is not None:
            facts["tokens"], facts["tokens_up_to"], facts["tokens_from"] = saved[1], saved[0], "checkpoint"
        if step:
            facts.update(_processes([(int(step.group(1)), path)]))
        return facts
    checkpoints = _checkpoints(path)
    if checkpoints:
        facts["checkpoints"] = [step for step, _ in checkpoints]
    rows = _metrics_rows(path / "metrics.jsonl")
    if rows:
        last = rows[-1]
        facts["last_logged"] = {k: last[k] for k in ("step", "epoch", "loss", "eval_loss", "lr", "accuracy")
                                if last.get(k) is not None and not (isinstance(last[k], float) and math.isnan(last[k]))}
        facts["tokens"] = sum(int(r["tokens"]) for r in rows if isinstance(r.get("tokens"), (int, float)))
    complete = _json(path / "complete.json")
    best = _json(path / "best_checkpoint.json")
    counted = complete.get("tokens") if isinstance(complete, dict) else None
    if _is_count(counted):
        # the run's own count, every step's (a checkpoint's steps after the last line included)
        facts["tokens"] = counted
    elif isinstance(complete, dict) and complete.get("step") == (rows[-1].get("step") if rows else None):
        pass  # (an older complete run's last line is its last step: the lines' sum is its count)
    elif (saved := _progress(checkpoints)) is not None and (not rows or not _is_count(rows[-1].get("step"))
                                                            or saved[0] >= rows[-1]["step"]):
        # a run not complete: its last checkpoint's own count (training_state.pt's, in progress.json),
        # exact where the lines' sum misses the steps after the last line (up to that checkpoint)
        facts["tokens"], facts["tokens_up_to"], facts["tokens_from"] = saved[1], saved[0], "checkpoint"
    elif "tokens" in facts:
        # (a stopped run's lines may end before its last checkpoint's step, whose tokens after them
        # no file here tells: checkpoints of earlier versions have no progress.json)
        facts["tokens_up_to"], facts["tokens_from"] = rows[-1].get("step"), "metrics.jsonl"
    if isinstance(complete, dict) and complete.get("step") == 0:
        # (train --num-steps 0: the model as initialised)
        facts["status"] = "complete (step 0: untrained, the weights as initialised: a random-initialisation baseline)"
    elif isinstance(complete, dict) and "step" in complete:
        facts["status"] = f"complete (step {complete['step']})"
    else:
        facts["status"] = "not complete (stopped, running or failed: train --resume continues it)"
    if isinstance(best, dict) and "step" in best:
        facts["best"] = {k: best[k] for k in ("step", "eval_loss", "checkpoint") if k in best}
    facts.update(_processes(checkpoints))
    return facts


def _phases(cfg: dict) -> list[dict]:
    """A train config's phases as trained: length, steps and global batch (a phase without one has
    the run's); none for a run without phases or with phases info cannot read."""
    phases = cfg.get("phases")
    if not isinstance(phases, list) or not phases:
        return []
    shown = []
    for phase in phases:
        if not isinstance(phase, dict):
            return []
        values = {"max_length": phase.get("max_length"), "num_steps": phase.get("num_steps"),
                  "global_batch_size": phase.get("global_batch_size") or cfg.get("global_batch_size")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            return []
        shown.append(values)
    return shown


def _metrics_rows(path: Path) -> list[dict]:
    """metrics.jsonl's lines (a damaged line left out: info describes, the run reads it strictly)."""
    try:
        if not path.is_file():
            return []
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


# --- as lines ---

def size_text(count: int) -> str:
    """A byte count as people read it: 612 bytes, 39.3 KB, 6.1 GB (powers of 1000)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def _number(n: int) -> str:
    """A parameter count as people say it (84,862; 1.2M; 2.8B)."""
    if n < 100_000:
        return f"{n:,}"
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def directory_lines(facts: dict) -> list[str]:
    """directory_info's facts as aligned lines for people."""
    kind = facts["kind"]
    names = {"head": "prediction head (fit, finetune or import-head)", "model": "model directory (Hugging Face)",
             "run": "protrans train run", "checkpoint": f"train run checkpoint (step {facts.get('step')})",
             "finetune": "protrans finetune output (head/ and model/)",
             "partial": f"an interrupted protrans {facts.get('command')} run's work (not an output)"}
    lines: list[tuple[str, str]] = [("directory", facts["directory"]), ("kind", names[kind])]
    if kind == "partial":
        lines += [("output", f"{facts['output']} (not written yet)"), ("holds", facts["holds"]),
                  ("resume", f"the same protrans {facts['command']} command with --resume continues it "
                             f"(-o {facts['output']})")]
    elif kind == "head":
        lines += _head_lines(facts)
    elif kind == "finetune":
        lines += _finetune_lines(facts)
    else:
        if kind == "run":
            lines.append(("status", facts["status"]))
        lines += _model_lines(facts)
        lines += _run_lines(facts)
    width = max(len(k) for k, _ in lines)
    return [f"{k.ljust(width)}  {v}" for k, v in lines]


def _head_lines(facts: dict) -> list[tuple[str, str]]:
    lines = [("task", f"{facts.get('task')} ({str(facts.get('predicts')).replace('_', '-')})")]
    for name, classes in facts.get("outputs", {}).items():
        lines.append((f"output {name}", "a value" if classes == "value" else
                      f"{len(classes)} classes: {' '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}"))
    arch = f"{facts['architecture']}, input dimension {facts.get('input_dim')}"
    members = facts.get("ensemble")
    if members:
        arch += f", {members} member(s)" + (f" ({facts['folds']} folds)" if facts.get("folds") else "")
    lines.append(("architecture", arch))
    emb = facts.get("embedding", {})
    if emb:
        what = str(emb.get("model", "a model not recorded"))
        extra = [f"{k} {emb[k]}" for k in ("family", "pooling", "storage_dtype") if emb.get(k)]
        lines.append(("embeddings of", what + (f" ({', '.join(extra)})" if extra else "")))
    lines.append(("layer", str(facts.get("layer"))))
    if emb.get("chains"):
        lines.append(("complexes", str(emb["chains"]) + (f" ({emb['linker_length']} glycines between chains)"
                                                          if emb["chains"] == "linker" and "linker_length" in emb else "")))
    imported = facts.get("imported")
    if isinstance(imported, dict):
        about = [str(imported["source"])] if imported.get("source") else []
        if imported.get("epoch") is not None:
            about.append(f"epoch {imported['epoch']:g}" if isinstance(imported["epoch"], (int, float))
                         else f"epoch {imported['epoch']}")
        lines.append(("imported from", str(imported.get("from")) + (f" ({', '.join(about)})" if about else "")))
        if imported.get("sha256"):
            lines.append(("checkpoint sha256", str(imported["sha256"])))
    training = facts.get("training", {})
    if training:
        # (a finetune head's embeddings were made in training: it records none)
        source = (f"{training['embeddings']} with " if training.get("embeddings") is not None
                  else "sequences embedded while fine-tuned, " if emb.get("finetuned_from") else "None with ")
        lines.append(("trained on", f"{source}{training.get('labels')}"
                      + (f", {training['proteins']:,} proteins" if isinstance(training.get("proteins"), int) else "")))
        if training.get("validation"):
            lines.append(("validation", str(training["validation"])))
    for name, outputs in facts.get("metrics", {}).items():
        for output, m in outputs.items():
            metric = m.get("metric")
            # (heads.metrics.headline's number: accuracy under Q3, Q10, ...; Spearman's rho of a value,
            # whose metrics.json entry fit writes without a "kind": it said "Spearman n/a" for every value head)
            value = m.get("spearman") if m.get("kind") == "value" or "spearman" in m else m.get("accuracy")
            shown = f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"{metric} n/a"
            ci = m.get("ci95")
            if isinstance(ci, list) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
                shown += f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})"
            if isinstance(m.get("mcc"), (int, float)):
                shown += f", MCC {m['mcc']:.3f}"
            count = m.get("n_proteins")
            lines.append((f"{name} {output}", shown + (f", {count:,} proteins" if isinstance(count, int) else "")))
    if facts.get("weights") is not None:
        lines.append(("weights", f"weights.safetensors ({size_text(facts['weights'])})"))
    return lines


def _finetune_lines(facts: dict) -> list[tuple[str, str]]:
    lines = []
    if facts.get("finetune_json"):
        lines.append(("finetune.json", str(facts["finetune_json"])))
    if facts.get("finetuned_from"):
        lines.append(("fine-tuned", str(facts["finetuned_from"])
                      + (f" (weights {facts['finetuned_from_weights']})" if facts.get("finetuned_from_weights") else "")))
    lora = facts.get("lora", {})
    if lora:
        shown = [f"{k} {lora[k]}" for k in ("rank", "alpha", "dropout") if k in lora]
        targets = lora.get("targets")
        if isinstance(targets, list) and targets:
            shown.append("on " + " ".join(map(str, targets)))
        lines.append(("LoRA", ", ".join(shown)))
    training = facts.get("training", {})
    if "epochs" in training:
        lines.append(("epochs", f"{training['epochs']} trained" + (f" (of at most {training['max_epochs']})"
                                                                  if "max_epochs" in training else "")
                      + (f", the best {training['best_epoch']}" if "best_epoch" in training else "")))
    if "lr" in training:
        lines.append(("trained with", ", ".join(f"{k.replace('_', ' ')} {training[k]}"
                                                for k in ("lr", "weight_decay", "accumulate", "seed") if k in training)))
    head = facts.get("head")
    if isinstance(head, dict):
        # (the head's own lines, less its embeddings' model, which is OUT/model, and its file)
        lines += [(k, v) for k, v in _head_lines(head) if k not in ("embeddings of", "weights")]
    else:
        lines.append(("head", str(head)))
    model = facts.get("model")
    if isinstance(model, dict):
        lines += [("model " + k if k != "model" else k, v) for k, v in _model_lines(model)]
    else:
        lines.append(("model", str(model)))
    return lines


def _model_lines(facts: dict) -> list[tuple[str, str]]:
    if "model_type" not in facts:
        return [("model", str(facts.get("model", "")))]
    lines = [("family", f"{facts.get('family') or 'none of protrans (it cannot embed with it)'} "
                        f"(model_type {facts['model_type']})")]
    if facts.get("architecture"):
        lines.append(("architecture", facts["architecture"]))
    if "parameters" in facts:
        count = facts["parameters"]
        lines.append(("parameters", _number(count) + (f" ({count:,})" if count >= 100_000 else "")))
        if "generator_parameters" in facts:
            lines.append(("generator", f"{_number(facts['generator_parameters'])} parameters (generator/, "
                                       "ELECTRA's, not counted above)"))
    sizes = [f"{facts[k]} {label}" for k, label in (("layers", "layers"), ("hidden_size", "hidden"),
                                                     ("heads", "heads")) if k in facts]
    if sizes:
        lines.append(("size", ", ".join(sizes)))
    if "vocab_size" in facts:
        lines.append(("vocabulary", f"{facts['vocab_size']:,} tokens"))
    lengths = []
    if "max_positions" in facts:
        lengths.append(f"{facts['max_positions']:,} positions")
    trained = facts.get("training", {}).get("max_length")
    if trained and facts.get("training", {}).get("num_steps") != 0:  # (num steps 0: never trained)
        lengths.append(f"trained at {'up to ' if facts['training'].get('phases') else ''}{trained:,} tokens a sequence")
    if lengths:
        lines.append(("length", ", ".join(lengths)))
    if facts.get("stored_dtype"):
        lines.append(("dtype", "stored as " + ", ".join(facts["stored_dtype"])
                      + (f" (config says {facts['config_dtype']})" if facts.get("config_dtype") else "")))
    elif facts.get("config_dtype"):
        lines.append(("dtype", f"{facts['config_dtype']} (config)"))
    weights = str(facts.get("weights"))
    if facts.get("weights_bytes"):
        weights += f" ({size_text(facts['weights_bytes'])})"
    lines.append(("weights", weights))
    return lines


def _run_lines(facts: dict) -> list[tuple[str, str]]:
    lines = []
    training = facts.get("training", {})
    if training:
        shown = [f"{k.replace('_', ' ')} {training[k]}" for k in ("family", "preset", "objective", "num_steps",
                                                                 "global_batch_size", "lr") if k in training]
        if training.get("phases"):
            shown.insert(-1 if "lr" in training else len(shown), "phases " + " then ".join(
                f"{p['max_length']}:{p['num_steps']}x{p['global_batch_size']}" for p in training["phases"]))
        lines.append(("trained with", ", ".join(shown)))
        if training.get("init_from"):
            lines.append(("started from", f"{training['init_from']} (train --init-from: its earlier training is not "
                                          "counted here)"))
    if facts.get("last_logged"):
        last = facts["last_logged"]
        shown = [f"step {last['step']:,}" if isinstance(last.get("step"), int) else f"step {last.get('step')}"]
        for key in ("loss", "eval_loss", "accuracy"):
            if isinstance(last.get(key), (int, float)):
                shown.append(f"{key.replace('_', ' ')} {last[key]:.4f}")
        lines.append(("last logged", ", ".join(shown)))
    if "tokens" in facts:
        up_to = facts.get("tokens_up_to")
        lines.append(("tokens", f"{facts['tokens']:,} trained on"
                      + ((" by the run up to this step" if facts.get("kind") == "checkpoint"
                          else f" up to step {up_to:,} (its last checkpoint's count)" if facts.get("tokens_from") == "checkpoint"
                          else f" up to step {up_to:,} (metrics.jsonl's last line)") if isinstance(up_to, int) else "")))
    if "processes" in facts:
        # (the model card's wording: training.card imports no torch)
        from protrans_cli.training.card import process_history

        up_to = facts.get("processes_up_to")
        said = process_history(facts["processes"], up_to) if isinstance(up_to, int) else None
        if said is None:
            lines.append(("processes", "not recorded (a checkpoint of an earlier version)"))
        else:
            lines += [("processes", said[1]), ("precision", said[0])]
    if facts.get("checkpoints"):
        steps = facts["checkpoints"]
        lines.append(("checkpoints", f"{len(steps)}: steps " + ", ".join(f"{s:,}" for s in steps[-5:])
                      + (" (the last 5)" if len(steps) > 5 else "")))
    if facts.get("best"):
        lines.append(("best", f"step {facts['best'].get('step')}, eval loss {facts['best'].get('eval_loss')}"))
    return lines
