"""fair-esm `.pt` checkpoints (ESM-2, ESM-1b, ESM-1v) as transformers model directories
(`protrans import-model`).

    summary = import_fair_esm("esm2_t33_650M_UR50D.pt", "esm2_650M/")

fair-esm (`esm.pretrained.load_model_and_alphabet_local`) reads `MODEL.pt`, a `torch.save` of
`{"model": state dict, "cfg": {"model": config}}` (ESM-2; the config an argparse.Namespace or an
omegaconf DictConfig) or `{"model": ..., "args": Namespace(arch="roberta_large", ...)}` (ESM-1b
and ESM-1v), and merges `MODEL-contact-regression.pt` from beside it into the contact head (ESM-1v
has none). The file is read here with `torch.load(weights_only=True)`: every global it pickles
that torch does not allow (the config classes) is read as an inert stand-in of ours that only
records what the file gives it (constructor arguments, `__setstate__` state); no module the file
names is imported and nothing from it runs. The architecture comes from the config where it can be
read, else from the tensors' shapes and the published heads counts.

The weights are renamed as fair-esm loads them (the prefixes `encoder.sentence_encoder.` and
`encoder.` dropped; ESM-1b and ESM-1v's `<mask>` row of embed_tokens zeroed, "for token drop")
and then, fair-esm -> transformers (`esm.` prefix of EsmForMaskedLM): embed_tokens ->
embeddings.word_embeddings; layers.N -> encoder.layer.N with self_attn.{q,k,v}_proj ->
attention.self.{query,key,value}, self_attn.out_proj -> attention.output.dense,
self_attn_layer_norm -> attention.LayerNorm, fc1 -> intermediate.dense, fc2 -> output.dense,
final_layer_norm -> LayerNorm; emb_layer_norm_after -> encoder.emb_layer_norm_after; ESM-1b's
embed_positions -> embeddings.position_embeddings, emb_layer_norm_before -> embeddings.layer_norm;
contact_head -> contact_head; lm_head.weight (tied) -> lm_head.decoder.weight, the rest of lm_head
unchanged; rot_emb.inv_freq is not stored (both compute it). The directory is the one transformers'
`save_pretrained` writes for EsmForMaskedLM, with EsmTokenizer's vocab.txt over fair-esm's alphabet,
as the published facebook/esm2_* and esm1b/esm1v checkpoints are laid out; it is written beside the
target, loaded back through `load_model` and compared before it takes the target's place.
"""

from __future__ import annotations

import collections
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

from protrans_cli.errors import InputError, first_line
from protrans_cli.models.imported import ImportedModel

ESM2, ESM1B, ESM1V = "ESM-2", "ESM-1b", "ESM-1v"
REGRESSION_SUFFIX = "-contact-regression.pt"
# Published heads counts, by embedding width (ESM-2: 8M, 35M, 150M, 650M, 3B, 15B; ESM-1b and
# ESM-1v, 1280 wide: 20): what a config that cannot be read leaves to the shapes
ESM2_HEADS = {320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}
ESM1_HEADS = 20
ESM2_POSITIONS = 1026  # max_position_embeddings of the published ESM-2 configs (rotary: no table)
# Architectures fair-esm reads that have no transformers EsmForMaskedLM counterpart
_OTHER_ARCHS = {"msa_transformer": "the MSA Transformer", "protein_bert_base": "ESM-1 (protein_bert_base)",
                "invariant_gvp": "ESM-IF (inverse folding)"}
_PREFIX = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")
# Builtin types a config pickles as values (omegaconf's object_type, a defaultdict of its
# resolver cache): constructing them runs nothing from the file, and the unpickler fills a
# dict it made only when it is a real dict
_INERT = {"builtins.dict": dict, "builtins.list": list, "builtins.int": int, "builtins.float": float,
          "builtins.str": str, "builtins.bool": bool, "builtins.tuple": tuple, "builtins.set": set,
          "builtins.frozenset": frozenset, "collections.defaultdict": collections.defaultdict}


@dataclass
class Architecture:
    kind: str
    layers: int
    dim: int
    heads: int
    ffn: int
    token_dropout: bool
    max_positions: int
    emb_layer_norm_before: bool


def hf_name(name: str) -> str | None:
    """fair-esm ESM2 or ESM-1b parameter name -> transformers EsmForMaskedLM's (None: not stored).
    KeyError for a name neither has."""
    if name == "embed_tokens.weight":
        return "esm.embeddings.word_embeddings.weight"
    if name == "embed_positions.weight":
        return "esm.embeddings.position_embeddings.weight"
    if name.startswith("emb_layer_norm_before."):
        return "esm.embeddings.layer_norm." + name.split(".", 1)[1]
    if name.startswith("emb_layer_norm_after."):
        return "esm.encoder." + name
    if name.startswith("contact_head."):
        return "esm." + name
    if name == "lm_head.weight":
        return "lm_head.decoder.weight"
    if name.startswith("lm_head."):
        return name
    parts = name.split(".", 2)
    if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit():
        raise KeyError(name)
    _, n, rest = parts
    if rest.endswith("rot_emb.inv_freq"):
        return None
    renames = {"self_attn.q_proj.": "attention.self.query.", "self_attn.k_proj.": "attention.self.key.",
               "self_attn.v_proj.": "attention.self.value.", "self_attn.out_proj.": "attention.output.dense.",
               "self_attn_layer_norm.": "attention.LayerNorm.", "fc1.": "intermediate.dense.",
               "fc2.": "output.dense.", "final_layer_norm.": "LayerNorm."}
    for old, new in renames.items():
        if rest.startswith(old):
            return f"esm.encoder.layer.{n}.{new}{rest[len(old):]}"
    raise KeyError(name)


def transformers_config(arch: Architecture):
    """The EsmConfig of the published checkpoints for `arch`."""
    from transformers import EsmConfig

    from protrans_cli.models.esm import ESM_VOCAB

    esm1 = arch.kind != ESM2
    return EsmConfig(
        vocab_size=len(ESM_VOCAB), mask_token_id=ESM_VOCAB.index("<mask>"), pad_token_id=ESM_VOCAB.index("<pad>"),
        hidden_size=arch.dim, num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
        intermediate_size=arch.ffn, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=arch.max_positions, layer_norm_eps=1e-5,
        position_embedding_type="absolute" if esm1 else "rotary",
        emb_layer_norm_before=arch.emb_layer_norm_before, token_dropout=arch.token_dropout,
        architectures=["EsmForMaskedLM"])


def to_transformers(state: dict, arch: Architecture):
    """transformers' EsmForMaskedLM holding the fair-esm state dict `state`'s tensors themselves
    (names as fair-esm's model has them, prefixes dropped; built without weights of its own:
    imported.empty_parameters). AssertionError where a weight the model needs is missing or one is
    left over (the caller has checked the names and shapes)."""
    from transformers import EsmForMaskedLM

    from protrans_cli.models.imported import assign, empty_parameters, left_on_meta

    with empty_parameters():
        hf = EsmForMaskedLM(transformers_config(arch)).eval()
    dtype = state["embed_tokens.weight"].dtype
    if dtype.is_floating_point and dtype != hf.dtype:  # (a half-precision file stays half: not twice its size)
        hf = hf.to(dtype)
        hf.config.dtype = dtype
    weights = {hf_name(n): t for n, t in state.items() if hf_name(n) is not None}
    missing, unexpected = assign(hf, weights, hf.dtype)
    allowed = {"esm.embeddings.position_ids", "esm.rotary_embeddings.inv_freq", "lm_head.decoder.weight"}
    allowed |= {n for n in missing if ".rotary_embeddings." in n}
    if "contact_head.regression.weight" not in state:
        allowed |= {"esm.contact_head.regression.weight", "esm.contact_head.regression.bias"}
    assert not unexpected and set(missing) <= allowed, (missing, unexpected)
    if "contact_head.regression.weight" not in state:
        # (not saved: transformers' initial head would read as a fitted one, and `protrans
        # contacts` would draw noise from it; without it, contacts says the model has none)
        hf.esm.contact_head = None
    assert not left_on_meta(hf), left_on_meta(hf)
    return hf


def write_tokenizer(directory) -> None:
    """EsmTokenizer's files over fair-esm's alphabet (vocab.txt, tokenizer_config.json), as the
    published checkpoints have them."""
    from transformers import EsmTokenizer

    from protrans_cli.models.esm import ESM_VOCAB

    vocab = Path(directory) / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
    EsmTokenizer(str(vocab)).save_pretrained(str(directory))


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint without running anything from it


class _StandIn:
    """An inert object in place of a class or function a checkpoint pickles: it records the
    arguments it is called or constructed with (`args`) and the state the file gives it (`state`)."""

    global_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):  # (REDUCE calls the "class": nothing beyond __new__)
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.global_name}>"


def _stand_in(global_name: str):
    """The stand-in registered under `global_name` (a class of its own, so that each name's
    objects can be told apart)."""
    if global_name in _INERT:
        return _INERT[global_name]
    return type(global_name.rsplit(".", 1)[-1], (_StandIn,), {"global_name": global_name})


def load_checkpoint(path, *, shapes_only: bool = False) -> dict:
    """The fair-esm checkpoint at `path` as a dict, the config objects it pickles as stand-ins.
    `shapes_only`: a file in torch's older format (a pickle, read whole, not mapped) gives its
    tensors as fake ones, shapes and dtypes without values (torch.load under FakeTensorMode,
    weights-only still: the main pickle read, its storages made on the meta device and the bytes
    after it never read); a zip archive is mapped either way.
    InputError (naming the file) for a file that is not a torch checkpoint or that cannot be
    read weights-only."""
    import warnings

    import torch

    path = Path(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except IsADirectoryError:
        hint = ""
        if (path / "config.json").is_file():
            hint = "; it is a model directory already: give it to -m as it is"
        elif any(path.glob("*.pt")) and not any(path.glob("*-contact-regression.pt")):
            hint = (f"; if it holds esm-extract's outputs (one .pt a protein), protrans import-esm {path} -o OUT.h5 "
                    "reads them")
        raise InputError("is a directory, expected a fair-esm checkpoint file (such as esm2_t33_650M_UR50D.pt)"
                         + hint, path=str(path)) from None
    except FileNotFoundError:
        from protrans_cli.io.files import missing_file

        raise InputError(missing_file(path), path=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read the checkpoint: {exc.strerror or exc}", path=str(path)) from None
    if head.startswith(b"\x89HDF"):
        raise InputError("an HDF5 file (such as embed writes), not a fair-esm checkpoint (a .pt file)",
                         path=str(path))
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise InputError("not a torch checkpoint (neither the zip archive torch.save writes nor a pickle)",
                         path=str(path))
    zipped = head.startswith(b"PK")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # (torch lists the globals of a zip archive only; those of torch's older format are
            # learnt from its refusals, one at a time)
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) if zipped else set()
            for _ in range(_MOST_GLOBALS):
                try:
                    with torch.serialization.safe_globals([(_stand_in(name), name) for name in sorted(names)]), \
                            _fake_tensors(shapes_only and not zipped):
                        # (a zip archive mapped, not read into memory: the weights are copied into the model once)
                        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
                    break
                except pickle.UnpicklingError as exc:
                    name = _refused_global(exc)
                    if zipped or name is None or name in names:
                        raise
                    names.add(name)
            else:
                raise ValueError(f"it pickles more than {_MOST_GLOBALS} classes and functions")
    except Exception as exc:  # noqa: BLE001 - a cut or damaged file, or one refused weights-only
        raise InputError(f"cannot read the checkpoint ({_reason(exc)}); nothing in it was run",
                         path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(f"holds a {type(data).__name__}, not a fair-esm checkpoint (a dict with `model`)",
                         path=str(path))
    return data


_MOST_GLOBALS = 200


def _fake_tensors(wanted: bool):
    """FakeTensorMode where `wanted` (load_checkpoint's shapes_only): torch's legacy loader then
    makes each storage on the meta device and skips reading the bytes; a null context otherwise.
    (allow_non_fake_inputs: the loader's meta storages are plain tensors to the mode.)"""
    import contextlib

    if not wanted:
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def _refused_global(exc: BaseException) -> str | None:
    """The global torch's weights-only unpickler refused ("Unsupported global: GLOBAL argparse.Namespace
    was not an allowed global"; a builtin named without its module), or None for another refusal."""
    match = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
    if match is None:
        return None
    name = match.group(1)
    return name if "." in name else f"builtins.{name}"


def _reason(exc: BaseException) -> str:
    """torch's refusal in one line, without its advice to load with weights_only=False."""
    text = str(exc)
    if not text.startswith("Weights only load failed"):
        return first_line(exc) or type(exc).__name__
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch",
                   "(1)", "(2)", "Detected")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(boilerplate)]
    return " ".join(lines).replace("WeightsUnpickler error:", "").strip().rstrip(".") or first_line(exc)


def plain(value, depth: int = 0):
    """A config value with its stand-ins read: an argparse.Namespace -> the dict of its fields, an
    omegaconf DictConfig -> the dict of its `_content`, a node of one -> its `_val`; dicts, lists
    and tuples throughout. A stand-in that is none of these stays as it is."""
    if depth > 50:
        return None
    if isinstance(value, _StandIn):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):  # (dict, slots)
            state = state[0]
        if isinstance(state, dict):
            if "_val" in state:
                return plain(state["_val"], depth + 1)
            if "_content" in state:
                return plain(state["_content"], depth + 1)
            return {k: plain(v, depth + 1) for k, v in state.items()}
        return value
    if isinstance(value, dict):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return value


def _setting(config: dict, *names):
    """The first of `names` the config gives a plain value (not a stand-in), else None."""
    for name in names:
        value = config.get(name)
        if value is not None and not isinstance(value, _StandIn):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# From the checkpoint to the architecture and the state dict


def read_fair_esm(path, *, shapes_only: bool = False) -> tuple[Architecture, dict]:
    """The architecture and the state dict (fair-esm's names, prefixes dropped, the contact
    regression from beside the file merged) of the fair-esm checkpoint `path` (`shapes_only`:
    load_checkpoint's, the model's tensors of a file in torch's older format fake ones)."""
    import torch

    path = Path(path)
    data = load_checkpoint(path, shapes_only=shapes_only)
    model = data.get("model")
    if not isinstance(model, dict) or not model:
        if isinstance(data.get("label"), str) and ("representations" in data or "mean_representations" in data):
            # (one protein's embeddings, which the other import command reads: the two names are near)
            raise InputError("an esm-extract output (one protein's embeddings), not a model: protrans import-esm "
                             f"{path.parent} -o OUT.h5 reads a folder of them", path=str(path))
        raise InputError("has no `model` state dict: not a fair-esm checkpoint", path=str(path))
    if not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise InputError("its `model` holds objects other than tensors: not a fair-esm state dict", path=str(path))
    state = {_PREFIX.sub("", str(name)): tensor for name, tensor in model.items()}
    if set(state) <= {"contact_head.regression.weight", "contact_head.regression.bias"}:
        stem = path.name.removesuffix(REGRESSION_SUFFIX)
        raise InputError(f"the contact regression of a model, not the model: give {stem}.pt (this file is read "
                         "from beside it)", path=str(path))
    # (fairseq's checkpoints hold both keys, the one not used None; fair-esm reads ESM-2's cfg and
    # ESM-1b's and ESM-1v's args)
    if data.get("args") is None and data.get("cfg") is not None:
        cfg = plain(data["cfg"])
        config = plain(cfg.get("model")) if isinstance(cfg, dict) else None
        config = config if isinstance(config, dict) else {}
        arch = _setting(config, "arch", "_name")
        if any(n.startswith(("trunk.", "esm_s_combine", "distogram_head")) for n in state) or arch == "esmfold":
            raise InputError("an ESMFold checkpoint; import-model converts ESM-2, ESM-1b and ESM-1v language "
                             "models only", path=str(path))
        kind = ESM2
    elif data.get("args") is not None:
        config = plain(data["args"])
        config = config if isinstance(config, dict) else {}
        arch = _setting(config, "arch")
        if not isinstance(arch, str):
            raise InputError("its `args` give no arch (roberta_large for ESM-1b and ESM-1v): not a fair-esm "
                             "checkpoint that import-model reads", path=str(path))
        if arch != "roberta_large":
            what = next((v for k, v in _OTHER_ARCHS.items() if k in arch), None)
            raise InputError(f"a fair-esm {arch} checkpoint{f' ({what})' if what else ''}; import-model converts "
                             "ESM-2, ESM-1b and ESM-1v (roberta_large) only", path=str(path))
        kind = ESM1B if any(n.startswith("emb_layer_norm_before.") for n in state) else ESM1V
    else:  # (a state dict saved with `model` alone: the tensors say which)
        config = {}
        kind = ESM2 if "embed_positions.weight" not in state else (
            ESM1B if any(n.startswith("emb_layer_norm_before.") for n in state) else ESM1V)
    if kind == ESM2 and "embed_positions.weight" in state:  # (to_transformers would find it left over)
        raise InputError("its config is ESM-2's but it holds embed_positions, a learned position table (ESM-1b's and "
                         "ESM-1v's): not a fair-esm ESM-2 state dict", path=str(path))
    for name in list(state):
        try:
            hf_name(name)
        except KeyError:
            raise InputError(f"holds the tensor {name}, which no {kind} model has: not a fair-esm {kind} state "
                             "dict", path=str(path)) from None
    regression = Path(str(path.with_suffix("")) + REGRESSION_SUFFIX)
    if regression.is_file():  # (as fair-esm: merged into the model's, replacing any it holds)
        extra = load_checkpoint(regression).get("model")
        if not isinstance(extra, dict) or not all(isinstance(t, torch.Tensor) for t in extra.values()):
            raise InputError("has no `model` state dict of tensors: not a fair-esm contact regression",
                             path=str(regression))
        extra = {_PREFIX.sub("", str(n)): t for n, t in extra.items()}
        if not set(extra) <= {"contact_head.regression.weight", "contact_head.regression.bias"} or \
                "contact_head.regression.weight" not in extra:
            raise InputError("holds other tensors than contact_head.regression's: not a fair-esm contact "
                             "regression", path=str(regression))
        state.update(extra)
    arch = _architecture(path, kind, config, state)
    if kind != ESM2:  # (fair-esm's loader for roberta_large: "For token drop")
        from protrans_cli.models.esm import ESM_VOCAB

        state["embed_tokens.weight"] = state["embed_tokens.weight"].clone()
        state["embed_tokens.weight"][ESM_VOCAB.index("<mask>")] = 0
    state.pop("lm_head.weight", None)  # (tied to embed_tokens, as in fair-esm's model)
    return arch, state


def mapped(path) -> bool:
    """Whether the checkpoint `path` is a zip archive (torch.save's format since torch 1.6), which
    load_checkpoint maps rather than reads: its config and tensors' shapes are read in a moment,
    whatever its size. torch's older format is read whole (but for checkpoint_shape's fake read)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(2) == b"PK"
    except OSError:
        return False


def checkpoint_shape(path) -> tuple[Architecture, bool]:
    """(the architecture, whether it has a contact head: a contact regression in it or beside it)
    of the fair-esm checkpoint `path`, checked as import_fair_esm checks it, nothing converted
    and no weight read: a zip archive's are mapped, an older-format file's tensors are fake ones
    (load_checkpoint's shapes_only: 0.1 s and no memory beyond torch's own for a 479 MB file, against
    0.5 s and 455 MiB more read whole)."""
    arch, state = read_fair_esm(path, shapes_only=True)
    return arch, "contact_head.regression.weight" in state


def _architecture(path: Path, kind: str, config: dict, state: dict) -> Architecture:
    """The model's sizes from its config, checked against (and where it gives none, taken from)
    the tensors' shapes; InputError naming the file where they disagree or a weight is missing."""
    from protrans_cli.models.esm import ESM_VOCAB

    def need(name):
        if name not in state:
            raise InputError(f"has no {name}: not a complete fair-esm {kind} state dict", path=str(path))
        return state[name]

    embed = need("embed_tokens.weight")
    if embed.ndim != 2 or embed.shape[0] != len(ESM_VOCAB):
        raise InputError(f"embed_tokens has shape {tuple(embed.shape)}, not ({len(ESM_VOCAB)}, D) for fair-esm's "
                         f"alphabet of {len(ESM_VOCAB)} tokens", path=str(path))
    dim = int(embed.shape[1])
    layers = len({int(n.split(".")[1]) for n in state if n.startswith("layers.")})
    ffn = int(need("layers.0.fc1.weight").shape[0]) if layers else 0
    given = {"layers": _setting(config, "encoder_layers", "layers"),
             "dim": _setting(config, "encoder_embed_dim", "embed_dim"),
             "ffn": _setting(config, "encoder_ffn_embed_dim", "ffn_embed_dim")}
    for key, found in (("layers", layers), ("dim", dim), ("ffn", ffn)):
        if given[key] is not None and given[key] != found:
            raise InputError(f"its config gives {key} {given[key]}, its tensors {found}", path=str(path))
    if not layers or any(f"layers.{i}.fc1.weight" not in state for i in range(layers)):
        raise InputError(f"its layers are not numbered 0..{max(layers - 1, 0)}: not a complete fair-esm state dict",
                         path=str(path))
    heads = _setting(config, "encoder_attention_heads", "attention_heads")
    regression = state.get("contact_head.regression.weight")
    if heads is None and regression is not None and regression.numel() % layers == 0:
        heads = regression.numel() // layers  # (one weight per layer and head)
    if heads is None:
        heads = ESM2_HEADS.get(dim) if kind == ESM2 else ESM1_HEADS if dim == 1280 else None
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise InputError(f"cannot tell its number of attention heads (the config gives {heads!r} for {dim} "
                         "dimensions)", path=str(path))
    if regression is not None and regression.numel() != layers * heads:
        raise InputError(f"its contact regression has {regression.numel()} weights, not one for each of the "
                         f"{layers} layers x {heads} heads", path=str(path))
    token_dropout = _setting(config, "token_dropout")
    positions = need("embed_positions.weight").shape[0] if kind != ESM2 else ESM2_POSITIONS
    return Architecture(kind=kind, layers=layers, dim=dim, heads=heads, ffn=ffn,
                        token_dropout=True if token_dropout is None else bool(token_dropout),
                        max_positions=int(positions), emb_layer_norm_before=kind == ESM1B)


# ---------------------------------------------------------------------------------------------
# The directory


def import_fair_esm(checkpoint, out_dir, *, force: bool = False) -> ImportedModel:
    """Write the transformers model directory `out_dir` from the fair-esm checkpoint file
    `checkpoint` (and its `-contact-regression.pt` beside it, where there is one)."""
    from protrans_cli.models.imported import checkpoint_output, write_checked

    checkpoint, out_dir = checkpoint_output(checkpoint, out_dir, "esm2_650M", force)
    arch, state = read_fair_esm(checkpoint)
    try:
        hf = to_transformers(state, arch)
    except (RuntimeError, AssertionError) as exc:  # (a tensor of another shape than its model's, one missing)
        raise InputError(f"its tensors do not make one {arch.kind} model of {arch.layers} layers, {arch.dim} "
                         f"dimensions: {first_line(exc)[:300]}", path=str(checkpoint)) from None
    contact_head = "contact_head.regression.weight" in state
    del state

    def save(model, folder):
        model.save_pretrained(str(folder))
        write_tokenizer(folder)

    # (the model handed over: freed once written, before the directory is read back; the contact
    # head's weights compared where there is one: without, the model has the head transformers
    # initialises, which neither holds)
    holder, hf = [hf], None
    regression = checkpoint.with_name(f"{checkpoint.stem}-contact-regression.pt").name

    def card(loaded):
        from protrans_cli.training.card import import_card

        return import_card(loaded=loaded, source=f"{arch.kind} from fair-esm's checkpoint `{checkpoint.name}`",
                           details=[f"Converted from: `{checkpoint.name}` (fair-esm, read weights-only)",
                                    f"Contact head: from `{regression}`" if contact_head else
                                    "Contact head: none (no contact regression beside the checkpoint)"])

    write_checked(out_dir, holder, save, masked_lm=True,
                  skip=lambda name: not contact_head and ".contact_head." in name,
                  hint=" (a transformers version that lays out EsmForMaskedLM otherwise?)", card=card)
    return ImportedModel(out_dir, arch.kind, arch.layers, arch.dim, arch.heads, contact_head)


def torch_hub_file(name: str) -> Path | None:
    """fair-esm's own download of the weights of the ESM short name `name`, where there is one:
    `esm.pretrained` keeps MODEL.pt in torch hub's checkpoints folder (~/.cache/torch/hub/
    checkpoints, or $TORCH_HOME/hub/checkpoints), named as protrans's short names are. None for
    another name or where no such file is."""
    from protrans_cli.models.checkpoints import CHECKPOINTS

    checkpoint = CHECKPOINTS.get(name)
    if checkpoint is None or checkpoint.family != "esm":
        return None
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"
    return path if path.is_file() else None


def hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds the config of the short name `name`'s hub model."""
    from protrans_cli.models.checkpoints import CHECKPOINTS
    from protrans_cli.models.imported import hub_file

    return hub_file(CHECKPOINTS[name].hub_id, "config.json") is not None
