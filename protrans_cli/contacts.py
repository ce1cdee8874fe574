"""Residue-residue contact maps from ESM's contact head (`protrans contacts`).

ESM-2 and ESM-1b carry a logistic regression over their attention maps (Rao et al. 2021, "Transformer
protein language models are unsupervised structure learners"): every layer's every head's
attention, without the special tokens, made symmetric and corrected by the average product
(APC), weighted and summed, through a sigmoid: the probability that two residues are in contact
(C-beta within 8 A). It is what `esm-extract --include contacts`, fair-esm's
`model(tokens, return_contacts=True)` and transformers' `EsmModel.predict_contacts` give.

Those collect the attention maps of every layer before the head reads them (layers x heads maps
of (L, L) per protein: 660 for ESM-2 650M, 2.7 GB in float32 for a protein of 1,000 residues).
Here the head's sum is taken layer by layer as the model runs (a hook on each layer's attention),
so only one layer's maps are held at a time; the numbers are the same (`tests/test_contacts.py`
compares them with `predict_contacts` and with fair-esm's own contacts). The APC term of a layer
is computed from its maps' row sums, without a corrected copy of the maps.

    out.h5:  /contacts/<id>  (L, L) float16 (or float32) probabilities, symmetric; attributes as
    embed writes them (id, header, length, checksum; the model, its commit, ...).

Written through OUT.partial as embed writes (flushed every batch, `--resume` goes on after a
stop); the resume machinery, the FASTA checks and the batch budget are embed's own.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli._version import __version__
from protrans_cli.errors import (InputError, ModelError, RuntimeFailure, UsageError, a_or_an, at_least, expect_options,
                                 expect_path, force_option, given, one_of, option, resume_option)
from protrans_cli.io.h5 import CONTACTS
from protrans_cli.placement import PlacementOptions

DEFAULT_MODEL = "esm2_t33_650M_UR50D"
# ESM-2 and ESM-1b were trained on crops of 1,022 residues (1,024 tokens with <cls> and <eos>);
# esm-extract truncates there by default. Longer proteins follow --long-policy.
TRAINED_RESIDUES = 1022
LONG_POLICIES = ("error", "skip", "truncate")
CPU_MAX_TOKENS, GPU_MAX_TOKENS = 1024, 4096  # padded tokens per batch (esm-extract: 4096)
# the file's `contacts` attribute: what its maps are
CONTACTS_DESCRIPTION = ("ESM's contact head: logistic regression over the symmetrised, APC-corrected attention maps "
                        "of every layer and head (Rao et al. 2021); P(contact), (L, L)")


@dataclass
class ContactOptions(PlacementOptions):
    """Everything `protrans contacts` can be asked for; the CLI fills it from its options."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"                  # compute dtype: auto = bf16/fp16 on a GPU, fp32 on the CPU
    max_tokens: int | None = None        # padded tokens per batch; None: 1024 on the CPU, 4096 on a GPU
    max_batch_size: int = 100
    max_length: int | None = None        # residues; None: 1,022 (ESM's training crops)
    long_policy: str = "error"           # error | skip | truncate
    invalid_policy: str = "error"        # error | skip
    chains: str = "error"                # a ':' (chain break of a complex): error | linker
    linker_length: int = 25              # glycines between the chains under chains='linker' (ESMFold's)
    storage_dtype: str = "float16"       # float16 | float32
    compression: str | None = None       # None | gzip | lzf
    resume: bool = False
    force: bool = False
    window: int = 10_000                 # proteins read, length-sorted and computed at a time
    threads: int | None = None
    command_line: str | None = None
    # a model spread over devices (embed's --device-map, protrans_cli/placement.py): auto | balanced |
    # sequential, None for one device; the most each device holds; the folder for what fits nowhere
    device_map: str | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None

    # (what embed's readers and checks ask of their options)
    long_policies = LONG_POLICIES
    chain_policies = ("error", "linker")  # (no map between chains embedded alone)
    default_limit = "the default --max-length {n} (the crops ESM was trained on)"
    alphabet = None
    part_of = None
    chunk_overlap = 0

    def structure(self):  # (no --structure-tokens: contacts reads amino acids alone)
        return None

    @property
    def skip_invalid(self) -> bool:
        return self.invalid_policy == "skip"

    def validate(self) -> None:
        from protrans_cli.embed import DTYPES, INVALID_POLICIES
        from protrans_cli.embedders import check_device, encoding_words, is_weightless
        from protrans_cli.io.h5 import COMPRESSIONS, STORAGE_DTYPES
        from protrans_cli.threads import check_threads

        if is_weightless(str(self.model)):  # (embed's encoding, not a model: it was looked for on the hub)
            raise UsageError(f"{given('-m', 'model', str(self.model))} is embed's {encoding_words(self.model)}, not a "
                             "model: it has no attention to predict contacts from (an ESM-2 or ESM-1b model has)")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", "a contact map is not stitched from windows",
               keyword="long_policy")
        one_of(self.invalid_policy, INVALID_POLICIES, "--invalid-policy", keyword="invalid_policy")
        from protrans_cli.embed import check_chains

        check_chains(self)
        if self.max_length is not None:
            at_least(self.max_length, 1, "--max-length", keyword="max_length")
        if self.max_tokens is not None:
            at_least(self.max_tokens, 1, "--max-tokens", keyword="max_tokens")
        at_least(self.max_batch_size, 1, "--max-batch-size", keyword="max_batch_size")
        one_of(self.storage_dtype, STORAGE_DTYPES, "--storage-dtype", keyword="storage_dtype")
        if self.compression is not None:  # (None or "none": COMPRESSIONS holds "none")
            one_of(self.compression, COMPRESSIONS, "--compression", keyword="compression")
        check_device(self.device)
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        at_least(self.window, 1, "--window", keyword="window")
        if self.threads is not None:
            check_threads(self.threads)
        if self.resume and self.force:
            raise UsageError(option("give --resume (keep OUTPUT's proteins) or --force (replace OUTPUT), not both",
                                    "give resume=True (keep output's proteins) or force=True (replace output), not "
                                    "both"))
        self.check_placement()


@dataclass
class ContactSummary:
    output: Path | None
    num_records: int = 0
    num_written: int = 0
    num_resumed: int = 0
    num_residues: int = 0
    seconds: float = 0.0          # the whole call, the model's loading included
    compute_seconds: float = 0.0  # reading the input, computing and writing the maps
    failed: dict | None = None
    device_map: dict | None = None  # --device-map: {module: device} as from_pretrained placed them


# --- the head, layer by layer --------------------------------------------------------------

class ContactPredictor:
    """ESM's contact head over a loaded model (`models.load_model`), computed as the model runs.

        predictor = ContactPredictor(load_model("esm2_t6_8M_UR50D"))
        maps = predictor.predict(["MKTAYIAK", "MAAG"])   # [(8, 8), (4, 4)] float32 arrays
    """

    def __init__(self, loaded):
        import torch

        refuse_without_head(loaded)
        model = _encoder(loaded)
        self.loaded, self.model, self.tokenizer = loaded, model, loaded.tokenizer
        self.family = loaded.family
        from protrans_cli.placement import model_device

        self.device = model_device(model)
        # --device-map: {module: device} (accelerate runs each block where its weights are, or on
        # self.device for those offloaded to the CPU or disk); None for a model on one device
        self.device_map = dict(getattr(model, "hf_device_map", None) or {}) or None
        # (attention weights are returned only by the eager attention; SDPA returns None. The
        # loaded model is switched for good: a caller embedding with it afterwards gets the same
        # numbers, computed more slowly)
        model.set_attn_implementation("eager")
        layers = list(model.encoder.layer)
        heads = model.config.num_attention_heads
        regression = model.contact_head.regression
        if regression.in_features != len(layers) * heads:
            raise ModelError(f"{loaded.name}: its contact head reads {regression.in_features} attention maps, the "
                             f"model has {len(layers)} layers x {heads} heads")
        weight, bias = _head_weights(loaded, regression, self.device)
        self.weights = weight.view(len(layers), heads)
        self.bias = bias
        self._layers = layers
        self._sum = None  # (B, T, T) float32 on self.device while a batch runs
        self._mask = None
        self._masks = {}  # the batch's mask on each device a layer ran on (under a device map)
        self.compute_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        # ESM-1b's learned positions end at 1,022 residues (ESM-2's rotary ones take any length)
        from protrans_cli.embedders import _count_special_tokens, _max_residues

        self.max_residues = _max_residues(model, _count_special_tokens(self.family, self.tokenizer))
        self._torch = torch

    def predict(self, sequences: list[str]) -> list[np.ndarray]:
        """(L, L) float32 contact probabilities per sequence (one padded batch). Sequences are read
        as embed reads them (upper-cased, gaps and a final `*` removed); one it refuses (a J, an
        inner `*`, no residues) is an InputError."""
        from collections.abc import Mapping

        from protrans_cli.residues import SequenceRejected, normalise

        torch = self._torch
        if isinstance(sequences, str):
            raise UsageError("predict takes a list of sequences, not one str")
        if isinstance(sequences, Mapping):  # (its ids were read as the sequences)
            raise UsageError("predict takes a list of sequences, not a dict: give list(d.values()), the maps come "
                             "back in that order")
        normalised = []
        for i, s in enumerate(sequences):  # (which of the list a refused one is: the message said only why)
            try:
                normalised.append(normalise(s, rare="keep"))
            except SequenceRejected as exc:
                raise SequenceRejected(exc.reason, f"sequence {i} of the list: {exc.detail}") from None
        sequences = normalised
        if not sequences:
            return []
        longest = max((len(s) for s in sequences), default=0)
        if self.max_residues is not None and longest > self.max_residues:
            which = next(i for i, s in enumerate(sequences) if len(s) == longest)
            raise UsageError(f"{self.loaded.name}: sequence {which} of the list has {longest} residues; the model "
                             f"accepts at most {self.max_residues} (learned positions)")
        inputs, mask = self.family.encode(self.tokenizer, list(sequences), 1)
        lengths = mask.sum(dim=1).tolist()
        for seq, n in zip(sequences, lengths):
            if n != len(seq):
                raise RuntimeFailure(f"the {self.family.name} family produced {n} residue rows for a "
                                     f"{len(seq)}-residue sequence (a bug in its encode())")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        self._mask = mask.to(self.device, dtype=torch.float32)  # (B, T): the residues, no special tokens
        self._sum = None
        hooks = [layer.attention.self.register_forward_hook(self._hook(i)) for i, layer in enumerate(self._layers)]
        try:
            with torch.inference_mode():
                self.model(**inputs)
                if self._sum is None:
                    raise RuntimeFailure(f"{self.loaded.name}: the model returned no attention maps")
                probs = torch.sigmoid(self._sum + self.bias)
                keep = mask.to(self.device, dtype=torch.bool)
                out = [probs[b][keep[b]][:, keep[b]].cpu().numpy() for b in range(len(sequences))]
        finally:
            for hook in hooks:
                hook.remove()
            self._sum = self._mask = None
            self._masks = {}
        return out

    @contextlib.contextmanager
    def in_float32(self):
        """This predictor with its model cast to float32, for the few proteins whose half-precision
        map held NaN or infinity (an attention weight that overflowed); cast back afterwards,
        exactly (every bfloat16 or float16 number is a float32), as embed's retry
        (TransformerEmbedder.in_float32). Out of memory while casting is raised, the model as it was."""
        from protrans_cli.embedders import cast_weights

        torch = self._torch
        half = self.compute_dtype
        try:
            cast_weights(self.model, torch.float32)
            self.compute_dtype = "float32"
            yield self
        finally:
            cast_weights(self.model, getattr(torch, half))
            self.compute_dtype = half

    def _hook(self, index: int):
        def hook(module, args, output):
            attn = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if attn is None:
                raise RuntimeFailure(f"{self.loaded.name}: layer {index} returned no attention weights (the "
                                     "eager attention gives them)")
            # (under a device map the layer ran on its block's GPU: its term is computed there and
            # gathered, (B, T, T), to the input device, where the head's sum is taken)
            mask = self._mask if attn.device == self._mask.device else self._masks.setdefault(
                attn.device, self._mask.to(attn.device))
            part = layer_contribution(attn, mask, self.weights[index].to(attn.device)).to(self.device)
            self._sum = part if self._sum is None else self._sum.add_(part)
        return hook


def _head_weights(loaded, regression, device=None):
    """The contact head's weights (flat, on `device`) and bias in float32: from the checkpoint's own
    tensors where its safetensors file can be read (a model loaded in bfloat16 has them rounded to 8
    bits of mantissa), else the loaded module's. A head offloaded by a device map (on the meta
    device: its numbers are in a file) is read from the checkpoint, else from accelerate's
    offloaded copy; ModelError where neither can be read."""
    if regression.weight.device.type == "meta":
        return _offloaded_head_weights(loaded, regression, device)
    weight = regression.weight.detach().float().reshape(-1)
    bias = float(regression.bias.detach().float()) if regression.bias is not None else 0.0
    if regression.weight.dtype == weight.dtype:
        return weight, bias
    folder = _checkpoint_folder(loaded)
    # (a .bin checkpoint, a hub id not cached, a file unreadable: the loaded weights)
    with contextlib.suppress(Exception):  # noqa: BLE001
        files = _safetensors_files(folder)
        key = next(n for n in files if n.endswith("contact_head.regression.weight"))
        exact = _stored_tensor(files[key], key).float().reshape(-1)
        bias_key = key.removesuffix("weight") + "bias"
        exact_bias = float(_stored_tensor(files[bias_key], bias_key).float()) if bias_key in files else bias
        if exact.shape == weight.shape:
            return exact.to(weight.device), exact_bias
    return weight, bias


def _offloaded_head_weights(loaded, regression, device):
    """_head_weights of a head a device map left on the meta device (offloaded to disk)."""
    import torch

    shape = (regression.weight.numel(),)
    with contextlib.suppress(Exception):  # noqa: BLE001 - a .bin checkpoint, a hub id not cached: below
        files = _safetensors_files(_checkpoint_folder(loaded))
        key = next(n for n in files if n.endswith("contact_head.regression.weight"))
        weight = _stored_tensor(files[key], key).float().reshape(-1)
        bias_key = key.removesuffix("weight") + "bias"
        bias = float(_stored_tensor(files[bias_key], bias_key).float()) if bias_key in files else 0.0
        if weight.shape == shape:
            return weight.to(device), bias
    # accelerate's own copy of the offloaded weights (its offload folder, in the loaded dtype)
    stored = getattr(getattr(regression, "_hf_hook", None), "weights_map", None)
    with contextlib.suppress(Exception):  # noqa: BLE001
        weight = torch.as_tensor(stored["weight"]).float().reshape(-1)
        bias = float(torch.as_tensor(stored["bias"]).float()) if regression.bias is not None else 0.0
        if weight.shape == shape:
            return weight.to(device), bias
    raise ModelError(f"{loaded.name}: its contact head was offloaded by the device map and its weights could not "
                     "be read back (from the checkpoint's safetensors files or the offload folder)")


def _safetensors_files(folder: Path) -> dict[str, Path]:
    """{tensor name: the safetensors file holding it} of a checkpoint folder: its model.safetensors,
    or the shards its model.safetensors.index.json maps (ESM-2 3B and 15B are published in shards)."""
    import json

    from safetensors import safe_open

    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), "pt", device="cpu") as f:
            return dict.fromkeys(f.keys(), single)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
    return {name: folder / file for name, file in weight_map.items()}


def _stored_tensor(path: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(path), "pt", device="cpu") as f:
        return f.get_tensor(key)


def layer_contribution(attn, mask, weights):
    """One layer's term of the contact head's logits, (B, T, T) float32.

    `attn` (B, H, T, T) the layer's attention probabilities, `mask` (B, T) 1.0 at the residues
    (0 at special tokens and padding), `weights` (H,) the head's weights of this layer's maps. The
    head (as fair-esm and transformers compute it) zeroes the maps outside the residues, makes
    each symmetric, S = A + A^T, corrects it by the average product, S - r r^T / t (r the row
    sums of S, t their total), and sums the weighted heads. The weighted sum of the symmetric
    maps is W + W^T for W the weighted sum of the masked maps, and the correction needs only r:
    the (B, H, T, T) corrected maps are never made."""
    import torch

    a = attn.float()
    outer = mask[:, :, None] * mask[:, None, :]                     # (B, T, T)
    w = torch.einsum("bhij,h->bij", a, weights) * outer             # weighted masked maps
    rows = torch.einsum("bhij,bj->bhi", a, mask) * mask[:, None, :]  # row sums of the masked maps
    cols = torch.einsum("bhij,bi->bhj", a, mask) * mask[:, None, :]  # their column sums
    r = rows + cols                                                  # row sums of S (B, H, T)
    total = r.sum(dim=-1)                                            # (B, H)
    scale = weights[None, :] / total.clamp_min(torch.finfo(torch.float32).tiny)
    apc = torch.einsum("bh,bhi,bhj->bij", scale, r, r)
    return w + w.transpose(1, 2) - apc


def refuse_without_head(loaded) -> None:
    """ModelError unless `loaded` is an ESM model whose checkpoint holds a trained contact head."""
    if loaded.family.name != "esm":
        raise ModelError(f"{loaded.name}: {a_or_an(loaded.family.name)} model has no contact head; contact maps come from "
                         "ESM-2 or ESM-1b checkpoints (e.g. -m esm2_t33_650M_UR50D)")
    if getattr(_encoder(loaded), "contact_head", None) is None:
        raise ModelError(f"{loaded.name}: the model has no contact head")
    refuse_esm1v(loaded.name, *model_identities(loaded))
    names = checkpoint_tensor_names(loaded)
    if names is not None and not any(n.endswith("contact_head.regression.weight") for n in names):
        raise ModelError(f"{loaded.name}: the checkpoint holds no contact head weights (a model saved without "
                         "them): use a published ESM-2 or ESM-1b checkpoint")
    trained_here = _trained_by_protrans(loaded)
    if trained_here:
        raise ModelError(f"{loaded.name}: {trained_here}; ESM's contact head is a regression fitted to known "
                         "structures after pretraining, so this model's contact maps would be noise. Use a "
                         "published ESM-2 or ESM-1b checkpoint")


def refuse_esm1v(name: str, *identities: str) -> None:
    """ModelError where one of `identities` (what names the model itself: its short name, hub id,
    directory's own name, config's `_name_or_path`, fair-esm file's name; never a parent folder's,
    so that an ESM-2 under /data/esm1v_study/ is not refused) says ESM-1v: fair-esm ships no
    contact regression for it (its `_has_regression_weights`), and the converted checkpoints carry
    the head as it was initialised. (refuse_without_head's, and esm-extract's before a .pt converts)"""
    if any("esm1v" in identity.lower() for identity in identities):
        raise ModelError(f"{name}: ESM-1v was released without a fitted contact regression; use ESM-2 or "
                         "ESM-1b (e.g. -m esm2_t33_650M_UR50D or esm1b_t33_650M_UR50S)")


def model_identities(loaded) -> list[str]:
    """The names that identify `loaded`'s model (refuse_esm1v's): its short name, the last part of
    its hub id (not the organisation's), or for a directory its own name (a cache snapshot's: its
    repository's) and the last part of config.json's `_name_or_path` (where transformers before 5
    recorded what the model was loaded from); and so for each model of its chain of origins
    (`train --init-from`, `finetune`: their contact head is its own, and finetune's OUT/model is
    named `model` whatever it was fine-tuned from)."""
    from protrans_cli.origins import chain_of_origins

    names = [loaded.checkpoint.name] if loaded.checkpoint is not None else []
    target = Path(str(loaded.path_or_hub_id)).expanduser()
    if not target.is_dir():
        return [*names, _last_part(str(loaded.path_or_hub_id))]
    names += _folder_identities(target)
    chain = chain_of_origins(target)
    for step in chain[1:]:
        names += _folder_identities(step.folder)
    if chain and chain[-1].origin is not None and not Path(chain[-1].origin).is_dir():
        names.append(_last_part(chain[-1].origin))  # (a short name, a hub id, a folder no longer there)
    return names


def _last_part(name: str) -> str:
    """A hub id's repository name (not the organisation's), a path's last folder."""
    return re.split(r"[/\\]", name.rstrip("/\\"))[-1]


def _folder_identities(target: Path) -> list[str]:
    """model_identities' names of the model directory `target`."""
    import json

    folder = target.resolve()
    names = [folder.name]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        # (a snapshot of the Hugging Face cache, named by its commit: the repository's is the model's)
        names.append(folder.parent.parent.name.rsplit("--", 1)[-1])
    try:
        recorded = json.loads((target / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        recorded = None  # (load_model read it; a config it cannot read here says nothing of the name)
    if isinstance(recorded, str) and recorded.strip("/\\"):
        names.append(_last_part(recorded))
    return names


def _encoder(loaded):
    """The ESM model that holds the contact head: `loaded.model`, or its `esm` where it was loaded
    with the masked-LM head (`load_model(..., masked_lm=True)`, as for VariantScorer): "the model has
    no contact head" was said of it."""
    return getattr(loaded.model, "esm", None) or loaded.model


def checkpoint_tensor_names(loaded) -> set[str] | None:
    """The tensor names of the loaded checkpoint's safetensors weights, or None where they cannot be
    read without loading (a .bin checkpoint, a hub id not in the cache)."""
    from protrans_cli.models.base import _safetensors_names

    folder = _checkpoint_folder(loaded)
    return None if folder is None else (_safetensors_names(folder) or None)


def _checkpoint_folder(loaded) -> Path | None:
    """The local folder of the loaded checkpoint's files: its directory, or a hub id's snapshot in
    the cache (None: not cached, or not found)."""
    target = Path(str(loaded.path_or_hub_id))
    if target.is_dir():
        return target
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "model.safetensors.index.json"):  # (one file, or shards)
            found = try_to_load_from_cache(str(loaded.path_or_hub_id), name, revision=loaded.commit or loaded.revision)
            if isinstance(found, str):
                return Path(found).parent
    except Exception:  # noqa: BLE001 - no cache, an odd id: the check is skipped
        return None
    return None


def _trained_by_protrans(loaded) -> str | None:
    """Why the model's contact head is untrained (pretrained by `protrans train` from scratch, or
    trained further or fine-tuned from such a model), or None."""
    return _untrained_head(Path(str(loaded.path_or_hub_id)))


def _untrained_head(target: Path) -> str | None:
    """Why the contact head of the model directory `target` is as initialised, or None. A model
    `protrans train` pretrained from scratch (protrans_version in its config.json, no init_from)
    never fitted it; one trained further (`--init-from`) or fine-tuned (`protrans finetune`) has
    the head of the model it began with, which is followed where it is a local folder: a chain
    back to a run from scratch has that run's untrained head. A published model (a hub id, or a
    folder protrans did not write) ends the chain, as does an origin that is no longer there."""
    from protrans_cli.models.base import _safetensors_names
    from protrans_cli.origins import chain_of_origins, from_scratch

    chain = chain_of_origins(target)
    for n, step in enumerate(chain[1:], 1):
        # (a model continued from one saved without the contact head's weights: its head was initialised)
        names = _safetensors_names(step.folder)
        if names and not any(name.endswith("contact_head.regression.weight") for name in names):
            return _through(chain[:n - 1], f"it was {chain[n - 1].how} from {step.folder}, whose checkpoint holds no "
                                           "contact head weights")
    if not from_scratch(chain):
        return None  # continued from a published model: its head came with it (warned by the caller)
    if (chain[-1].train_config or {}).get("num_steps") == 0 and not (chain[-1].train_config or {}).get("phases"):
        # (train --num-steps 0: a random-initialisation baseline, every weight untrained)
        return _through(chain[:-1], "it was written untrained by protrans train --num-steps 0 (a random-"
                                    "initialisation baseline), so its contact head, as all its weights, is as "
                                    "initialised")
    return _through(chain[:-1], "it was pretrained by protrans train, whose masked-LM objective leaves the contact "
                                "head as initialised")


def _through(steps, reason: str) -> str:
    """`reason` (of the last model of a chain: "it was ...") said of the first of `steps`, the
    models before it: "it was trained further ... from X, which was ..."."""
    for step in reversed(steps):
        reason = f"it was {step.how} from {step.origin}, which was {reason.removeprefix('it was ')}"
    return reason


def _continued_from(loaded) -> str | None:
    """How a model of protrans came by a published model's contact head (a warning's words), or None."""
    from protrans_cli.origins import TRAINED_FURTHER, step_of

    step = step_of(Path(str(loaded.path_or_hub_id)))
    if step is None or not step.origin:
        return None
    # (--init-from as given: the name of the published model, not the path it resolved to)
    return f"{step.how} from {step.train_config['init_from'] if step.how == TRAINED_FURTHER else step.origin}"


# --- the command ---------------------------------------------------------------------------

def predict_contacts(fasta, output, options: ContactOptions | None = None, *, predictor: ContactPredictor | None = None,
                     input_name: str | None = None, on_load=None) -> ContactSummary:
    """Contact maps of every protein of `fasta` into the HDF5 file `output` (docs/embed.md, "Contact maps").
    `on_load`: called with the model it loads (not given `predictor`), once the input is checked:
    esm-extract embeds with it next instead of loading it again."""
    from protrans_cli.embed import _refuse_live_outputs, _spool_input, is_stream, refuse_inside_model
    from protrans_cli.io.files import (checked_hdf5_output, display_name, hdf5_output_in_use, input_named_by,
                                       output_lock, refuse_other_format_name)
    from protrans_cli.io.h5 import partial_path, refuse_if_in_use, refuse_non_file, refuse_replacing_other_file

    expect_path(fasta, "fasta", " (a str or pathlib.Path)")
    expect_path(output, "output", " (a str or pathlib.Path)")
    options = options or ContactOptions()
    expect_options(options, ContactOptions, "options")
    options.validate()
    if str(output) == "-":
        raise UsageError("an HDF5 file cannot be written to stdout: give " + option("-o FILE.h5", "output a file name"))
    compress = given("--compression", "compression", "gzip")
    output = checked_hdf5_output(output, "the contact maps", compressed_hint=f" ({compress} compresses its arrays)",
                                 directory_hint=f" (give {option('-o', 'output')} a file name, such as "
                                                f"{Path(output) / 'contacts.h5'})")
    for target in (output, partial_path(output)):
        if input_named_by(target, (fasta,)):
            raise UsageError(f"{target} is also the input: writing it would replace the FASTA (choose another "
                             f"{option('-o', 'output')})")
        refuse_inside_model(target, (options.model,), "-o", "output")
    refuse_other_format_name(output, "-o", "the contact maps", keyword="output")
    with output_lock(output, hdf5_output_in_use()):
        refuse_non_file(partial_path(output))  # (before the model loads: a named pipe there hung the run for ever)
        if output.exists() and not options.resume and not options.force:
            raise UsageError(f"{output} exists: {resume_option()} keeps its proteins and computes what it lacks, "
                             f"{force_option()} replaces it")
        left = partial_path(output)
        if left.exists() and not options.resume and not options.force:
            refuse_if_in_use(left)
            raise UsageError(f"{left} holds the work of an interrupted run: {resume_option()} finishes it, "
                             f"{force_option()} replaces it")
        if (options.force or options.resume) and output.exists():
            refuse_replacing_other_file(output, "contacts", resume=options.resume)
        name = input_name or display_name(fasta)
        streamed = str(fasta) == "-" or is_stream(fasta)
        if streamed:
            _refuse_live_outputs(output)
        spool = _spool_input(output, fasta) if streamed else None
        try:
            return _run(spool or fasta, name, output, options, predictor, on_load)
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)


def _run(source, name: str, output: Path, options: ContactOptions, predictor, on_load=None) -> ContactSummary:
    import time

    from protrans_cli.embed import (_check_before_compute, _Done, _warn_gapped, _warn_nucleotide, model_attr,
                                    read_windows, same_commit, same_model, scan_input)
    from protrans_cli.embed_resume import _done_in
    from protrans_cli.io.h5 import EmbeddingsWriter, partial_path
    from protrans_cli.threads import torch_threads

    start = time.perf_counter()
    scan = scan_input(source, name, options.skip_invalid, chains=options.chains, linker_length=options.linker_length,
                      offered=("linker",))
    summary = ContactSummary(output=output, num_records=scan.num_records)
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    with threads:
        if predictor is None:
            from protrans_cli.models import load_model

            # (under --device-map: the map's compute dtype, and from_pretrained's placing keywords)
            device, dtype, placing = options.loading([options.model])
            loaded = load_model(options.model, device=device, dtype=dtype, revision=options.revision, **placing)
            if on_load is not None:
                on_load(loaded)
            predictor = ContactPredictor(loaded)
        loaded = predictor.loaded
        if options.device_map is not None:
            summary.device_map = options.loaded_map(loaded)  # (a predictor given: refused without a map)
        from protrans_cli.models.saprot import warn_unknown_structure

        warn_unknown_structure(loaded.name, loaded.family, None)  # (SaProt: its contacts from residues alone)
        if (how := _continued_from(loaded)):
            origin = how.rsplit(" from ", 1)[1]
            console.warn(f"{loaded.name} was {how}: its contact head is {origin}'s, fitted to that model's "
                         "attention, not to this one's")
        model_max = predictor.max_residues
        if options.max_length and model_max is not None and options.max_length > model_max:
            raise UsageError(f"{given('--max-length', 'max_length', options.max_length)} is more than the model "
                             f"accepts ({model_max} residues, its special tokens besides)")
        max_length = options.max_length or min(TRAINED_RESIDUES, model_max or TRAINED_RESIDUES)
        if max_length > TRAINED_RESIDUES:
            console.warn(f"--max-length {max_length}: ESM's contact head was fitted on proteins of at most "
                         f"{TRAINED_RESIDUES} residues; longer maps come from positions it never met")
        attrs = {"model": model_attr(loaded.name), "revision": loaded.revision or "", "commit": loaded.commit or "",
                 "family": loaded.family.name, "compute_dtype": predictor.compute_dtype,
                 "device": str(predictor.device), "protrans_version": __version__,
                 "command_line": options.command_line or f"protrans_cli.contacts called from "
                                                         f"{shlex.join(sys.argv) or 'python'}",
                 "max_length": max_length, "long_policy": options.long_policy,
                 "chains": options.chains,
                 "linker_length": options.linker_length if options.chains == "linker" else None,
                 "contacts": CONTACTS_DESCRIPTION,
                 "device_map": None}  # (--device-map: below; None clears a resumed file's earlier map)
        if summary.device_map:  # the setting and where each module was, as embed records it
            from protrans_cli.placement import map_attribute

            attrs["device_map"] = map_attribute(options.device_map, summary.device_map)
        if loaded.weights_fingerprint:  # (a local directory: no commit tells a retrained model)
            attrs["weights_fingerprint"] = loaded.weights_fingerprint
        writer_kw = dict(kinds=(CONTACTS,), layout="grouped", storage_dtype=options.storage_dtype,
                         compression=None if options.compression in (None, "none") else options.compression,
                         attrs=attrs, resume_equal={"model": same_model, "commit": same_commit})
        done = _Done.empty()
        if options.resume:
            for path in (partial_path(output), output):
                if path.exists():
                    done = _done_in(path, writer_kw, lambda: (p.id for window in read_windows(
                        source, name, options.window, options.skip_invalid, chains=options.chains) for p in window),
                        seal=path != output)
                    break
            if len(done):
                left, found = _check_before_compute(source, name, options, max_length, done, output)
                summary.num_resumed = found
                if left == 0 and not partial_path(output).exists():
                    summary.seconds = time.perf_counter() - start
                    return summary
        if not len(done) and options.long_policy == "error" and scan.longest > max_length:
            # (--resume with nothing kept too: it computed and wrote every batch before the long protein)
            _check_before_compute(source, name, options, max_length, done, output)
        with EmbeddingsWriter(output, resume=options.resume, **writer_kw) as writer:
            # (embed's warnings, as embed says them: once the output is open and there is work to do)
            _warn_nucleotide(scan, name, True)
            _warn_gapped(scan, name, True)
            began = time.perf_counter()
            _compute(source, name, options, predictor, writer, done, max_length, summary, scan.num_residues)
            summary.compute_seconds = time.perf_counter() - began
            summary.failed = dict(writer.failed)
    summary.seconds = time.perf_counter() - start
    return summary


def _compute(source, name, options, predictor, writer, done, max_length, summary, total_residues) -> None:
    from protrans_cli.embed import model_text, read_windows, residue_count

    max_tokens = options.max_tokens or (CPU_MAX_TOKENS if str(predictor.device) == "cpu" else GPU_MAX_TOKENS)
    bar = console.progress(total=total_residues, desc="contacts", unit="res")
    try:
        for window in read_windows(source, name, options.window, options.skip_invalid, chains=options.chains,
                                   offered=("linker",)):
            skip = done.members(window)
            todo: dict[str, list] = {}  # kept sequence -> its proteins (identical sequences computed once)
            texts: dict[str, str] = {}  # kept sequence -> what the model reads (a complex's chains with linkers)
            for prot in window:
                if prot.id in skip:
                    console.skip(bar, residue_count(prot.sequence))  # (not this run's work: out of a log line's rate)
                    continue
                if prot.rejected is not None:
                    writer.record_failure(prot.id, prot.rejected)
                    continue
                kept = prot.sequence
                text = model_text(kept, options.chains, options.linker_length)
                if len(text) > max_length:
                    what = " with the linkers" if ":" in kept else ""
                    if options.long_policy == "skip":
                        writer.record_failure(prot.id, f"skipped: {len(text)} residues{what}, longer than "
                                                       f"--max-length {max_length} (--long-policy skip)")
                        bar.update(residue_count(kept))
                        continue
                    if options.long_policy == "error":  # (checked before any computation; a file changed since)
                        raise InputError(f"{len(text)} residues{what}, longer than {max_length}", path=name,
                                         record=prot.id)
                    kept = text = kept[:max_length]  # (not a complex: chains refuses truncate)
                todo.setdefault(kept, []).append(prot)
                texts[kept] = text
            for batch in _batches(list(todo), max_tokens, options.max_batch_size, texts):
                inputs = [texts[seq] for seq in batch]
                results, computed = _redo_in_float32(predictor, inputs, _predict_or_split(predictor, inputs))
                writer.ensure_room(sum(r.size * writer.storage_dtype.itemsize for r in results
                                       if not isinstance(r, str)))
                for j, (seq, result) in enumerate(zip(batch, results)):
                    for prot in todo[seq]:
                        _write(writer, prot, seq, result, summary, predictor.compute_dtype, computed.get(j),
                               linker=options.linker_length)
                    bar.update(sum(residue_count(p.sequence) for p in todo[seq]))
                writer.flush()
    finally:
        bar.close()


def _redo_in_float32(predictor: ContactPredictor, batch: list[str], results: list) -> tuple[list, dict[int, str]]:
    """The maps that held NaN or infinity in half precision computed again with the model in
    float32 (as embed does: ESM's attention in float16 can overflow where float32 does not), and
    how each map so replaced was computed (by its place in the batch); a map still not finite, or
    out of memory (casting, or the protein), gets the reason it failed."""
    from protrans_cli.embed_retry import _free_memory, is_out_of_memory

    redo = [i for i, r in enumerate(results) if not isinstance(r, str) and not np.isfinite(r).all()]
    half = predictor.compute_dtype
    if not redo or half == "float32":
        return results, {}
    results, computed = list(results), {}
    if getattr(predictor, "device_map", None):  # (its weights offloaded in the dtype they were loaded in: as embed)
        for i in redo:
            results[i] = (f"NaN or infinity in its contact map (the attention maps of the model's {half} pass; no "
                          "float32 retry for a model spread with --device-map: give --dtype float32)")
        return results, {}
    try:
        with predictor.in_float32() as exact:
            again = _predict_or_split(exact, [batch[i] for i in redo])
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        _free_memory()
        again = ["out of memory for a float32 retry"] * len(redo)
    for i, result in zip(redo, again):
        why = f"NaN or infinity in its contact map (the attention maps of the model's {half} pass"
        if isinstance(result, str):
            results[i] = f"{why}); the float32 retry: {result}"
        elif not np.isfinite(result).all():
            results[i] = f"{why}, and of a float32 pass too)"
        else:
            results[i], computed[i] = result, f"float32 on {predictor.device} (NaN or infinity in {half})"
    return results, computed


def _write(writer, prot, seq: str, result, summary: ContactSummary, compute_dtype: str,
           computed: str | None = None, linker: int = 0) -> None:
    if isinstance(result, str):
        writer.record_failure(prot.id, result)
        return
    if not np.isfinite(result).all():
        writer.record_failure(prot.id, "NaN or infinity in its contact map (the attention maps of the model's "
                                       f"{compute_dtype} pass)")
        return
    extra = {"truncated_from": len(prot.sequence)} if len(prot.sequence) > len(seq) else {}
    if computed:  # (as embed records a protein computed in float32)
        extra["computed"] = computed
    if ":" in seq:  # a complex joined by its linker: the linker's rows and columns go (--chains linker)
        from protrans_cli.embed import chain_lengths, without_linker

        lengths = chain_lengths(seq)
        result = without_linker(result, lengths, linker, axes=(0, 1))
        extra.update(length=sum(lengths), chains=np.asarray(lengths, dtype=np.int64))
    # (symmetric as computed; made exactly so in the stored dtype)
    stored = ((result + result.T) / 2).astype(writer.storage_dtype)
    writer.write(prot.id, prot.header, seq, contacts=stored, extra_attrs=extra)
    summary.num_written += 1
    summary.num_residues += len(seq) - seq.count(":")


def _batches(sequences: list[str], max_tokens: int, max_batch_size: int, texts: dict | None = None) -> list[list[str]]:
    """embed's batches (make_batches): longest first; a batch's padded tokens (longest + 2 special
    tokens, times its count) within `max_tokens`, at most `max_batch_size` proteins; a protein over
    the budget alone. `texts`: what the model reads of each sequence where it differs (a complex)."""
    from protrans_cli.embed import _Piece, _Unit, make_batches

    texts = texts or {}
    pieces = [_Piece(_Unit(seq, []), 0, texts.get(seq, seq)) for seq in sequences]
    return [[piece.unit.sequence for piece in batch] for batch in make_batches(pieces, max_tokens, max_batch_size)]


def _predict_or_split(predictor: ContactPredictor, batch: list[str]) -> list:
    """The batch's maps; out of memory, its halves again, then one protein at a time; a protein that
    alone does not fit gets the reason (recorded as failed) instead of its map."""
    from protrans_cli.embed_retry import _free_memory, is_out_of_memory

    try:
        return predictor.predict(batch)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
    _free_memory()
    if len(batch) == 1:
        return [f"out of memory on {predictor.device} ({len(batch[0])} residues; a smaller --max-length, with "
                "--long-policy truncate or skip, leaves such proteins out)"]
    half = len(batch) // 2
    return _predict_or_split(predictor, batch[:half]) + _predict_or_split(predictor, batch[half:])
