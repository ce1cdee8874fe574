"""The interface every model family implements; embed and train talk only to this.

A family module (models/bert.py, models/t5.py, ...) defines one `Family` subclass instance with
the same shape: presets (a `tiny` one that trains on CPU in seconds, up to the published
ProtTrans sizes), an offline tokenizer built from the residue alphabet, the pretraining model,
the encoder used for embedding, and the input conventions (spaces, rare residues, special
tokens). The quirks of a family (T5's trailing `</s>`, XLNet's left padding and trailing
special tokens, ELECTRA's generator/discriminator pair) stay inside its module.

The base class implements everything that is the same across families (encode, hidden
states, parameter counts on the meta device, loading through `from_pretrained`), so a family
module mostly declares its vocabulary, its special-token layout, its HF classes and presets.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from protrans_cli.errors import ModelError, UsageError, a_or_an, given
from protrans_cli.residues import THREE_DI_PREFIX, residue_text


# Every model load passes this to from_pretrained. transformers 5.25 made `use_kernels` default
# to True: each loaded model is "kernelized", its activations, norms and (ESM) rotary embeddings
# swapped for compiled kernels fetched from the Hugging Face Hub at load time. That is code from
# the network run without being asked for (the policy that keeps trust_remote_code off), a
# download an offline cluster cannot make, and numbers that no longer come from the model's own
# code; without the `kernels` package installed, every load failed. transformers 5.15-5.24 take
# the same keyword with False as its default. A caller's own `use_kernels` wins.
NO_HUB_KERNELS = {"use_kernels": False}


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint reachable by a short name (`-m prot_t5_xl_half`)."""

    name: str            # short name used on the command line
    hub_id: str          # Hugging Face hub id
    family: str          # registry key of the family that loads it
    num_params: int      # parameters of the part that embed uses
    embedding_dim: int
    description: str
    torch_dtype: str | None = None  # dtype the weights are published in, if not float32
    num_layers: int | None = None   # layers of the part that embed uses
    total_params: int | None = None  # whole published model (e.g. T5 encoder + decoder)
    preset: str | None = None       # the preset of the same architecture, if any


class Family:
    """Base class of a model family. Subclasses set the class attributes and implement methods.

    Class attributes
      name         registry key ("bert", "albert", "electra", "t5", "xlnet", "transfo_xl", "esm", ...)
      model_types  HF `config.model_type` values this family loads, so a checkpoint directory
                   finds its family from its config.json alone
      objective    pretraining objective key understood by protrans_cli.training.objectives
                   ("mlm", "electra", "t5", "t5_span", "plm", "clm")
      presets      preset name -> HF config kwargs; every family has "tiny"
      spaced       the tokenizer expects residues separated by single spaces
      rare_to      what U/Z/O/B become before tokenizing ("X", or None to keep them: the
                   tokenizer then maps them itself, to their own token or to `<unk>`)
      description  one line for `protrans models`
      padding_side "right" for every family but XLNet ("left")
      packable     `--packing` works (train and embed): the models take position_ids and route
                   attention through transformers' AttentionInterface (see models/packing.py)
      sentence_order  the pretraining model has a sentence-order head (`train --sop`)
      lora_targets the attention projections `finetune` adapts (ends of module names)
      tokenizer_kwargs  given to AutoTokenizer.from_pretrained: {"do_lower_case": False} for the
                   WordPiece/sentencepiece tokenizers whose default lower-cases (a ProtBert-style
                   directory with vocab.txt but no tokenizer_config.json mapped every residue to
                   [UNK]; residues are upper-case letters)
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    objective: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]
    spaced: ClassVar[bool] = True
    rare_to: ClassVar[str | None] = "X"
    description: ClassVar[str] = ""
    padding_side: ClassVar[str] = "right"
    # inputs the encoder takes; tokenizers may return more (token_type_ids) that are dropped
    input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    packable: ClassVar[bool] = False
    sentence_order: ClassVar[bool] = False
    tokenizer_kwargs: ClassVar[dict] = {}
    causal: ClassVar[bool] = False  # a row sees only the residues before it (chunked windows stitch so)
    # Why the hidden state of the cls token is no summary of the protein that pretraining taught
    # (`embed --pooling cls` warns with it), or None where nothing is known against it
    cls_not_trained: ClassVar[str | None] = None
    structure_aware: ClassVar[bool] = False  # reads residue-and-3Di tokens (SaProt: models/saprot.py)
    # the name of the models a subclass of a family reads (one that a checkpoint's vocabulary picks:
    # "SaProt", models/saprot.py), for `protrans models` to name those that differ (--packing)
    variant: ClassVar[str | None] = None
    input_kind: ClassVar[str] = "aa"  # what the sequences are: amino acids, or "3di" (three_di_input)
    # the encoder's blocks a device map (embed --device-map) keeps whole, where its class names
    # none (`_no_split_modules`): the granularity of the map, beyond what load_checked keeps whole
    # for every family (a module with a bare parameter beside its modules: `_bare_parameter_owners`)
    no_split_modules: ClassVar[tuple[str, ...]] = ()
    flex_attention: ClassVar[bool] = False  # use_flex_attention switches its encoder (embed --attention flex)
    # Linear modules that `finetune` puts LoRA adapters on, by the end of their qualified names
    # (heads/lora.py); () where the attention has no Linear projections (XLNet, Transformer-XL)
    lora_targets: ClassVar[tuple[str, ...]] = ()
    # The transformers class holding the encoder with its masked-LM head (`protrans variants`
    # scores residues with it); None for a family that predicts no masked residue from both sides
    masked_lm_class: ClassVar[str | None] = None
    masked_lm_lacking: ClassVar[str] = ("its masked-LM head is not in the checkpoint (an encoder saved without it); "
                                        "masked-LM scores need the head the model was pretrained with")

    def use_flex_attention(self, model) -> None:
        """Switch `model` (this family's encoder, loaded for inference) to FlexAttention
        (`embed --attention flex`); a usage error for a family that has no such path."""
        raise UsageError(f"{given('--attention', 'attention', 'flex')}: the {self.name} family does not support it "
                         f"(only t5: ProtT5 and Ankh); use {given('--attention', 'attention', 'sdpa')}")

    def overflow_guard(self, model):
        """For float16 inference: an object whose `watch(keep, rows, device)` / `rows()` mark
        the batch rows in which the model's float16 arithmetic overflowed where its own code
        would hide it, so that its modules kept in float32 (`_keep_in_fp32_modules`) can run in
        float16 too (models/t5.py); None keeps transformers' float32 modules."""
        return None

    # --- building (train) -------------------------------------------------------------
    def packed_position_offset(self, config) -> int:
        """The position id of a protein's first token in an unpadded row (packing restarts the
        numbering at every protein)."""
        return 0

    def packing_problem(self, config, training: bool) -> str | None:
        """Why packed rows would not give this model exactly what padded batches give it
        (in training, or in embedding when `training` is False), or None."""
        return None if self.packable else f"the {self.name} family does not support packing"

    def shape_problem(self, config) -> str | None:
        """Why this family's model could not run a config's sizes (a --set a config class takes
        but a forward pass does not), or None: said before any step, as a usage error."""
        return None

    def build_tokenizer(self):
        """A tokenizer made offline from the residue alphabet (saved with every checkpoint)."""
        raise NotImplementedError

    def preset_config(self, preset: str) -> dict[str, Any]:
        """The config kwargs of `preset`; a usage error naming the known presets otherwise."""
        if preset not in self.presets:
            known = ", ".join(self.presets)
            raise UsageError(f"unknown preset {preset!r} for family {self.name!r} (known: {known})")
        return dict(self.presets[preset])

    def build_config(self, preset: str = "tiny", tokenizer=None, **overrides):
        """An HF config for `preset`, vocabulary and special-token ids taken from `tokenizer`."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        kwargs = self.preset_config(preset)
        kwargs.update(self.token_config(tokenizer))
        # An HF config stores any unknown keyword as an attribute, so a typo in --set would be
        # silently ignored: refuse names the config class does not know.
        defaults = self.config_class()
        unknown = sorted(key for key in overrides if not hasattr(defaults, key))
        if unknown:
            raise ModelError(f"unknown {type(defaults).__name__} field(s): {', '.join(unknown)}")
        kwargs.update({key: self.typed_override(key, getattr(defaults, key), value)
                       for key, value in overrides.items()})
        for key in overrides:
            if problem := _override_problem(key, kwargs[key]):
                raise ModelError(f"invalid {self.name} config: {problem}")
        try:
            return self.config_class(**kwargs)
        except Exception as exc:  # TypeError/ValueError, or huggingface_hub's strict validation
            detail = " ".join(str(exc).split())  # the strict-validation text spans lines
            raise ModelError(f"invalid {self.name} config: {detail}") from None

    def typed_override(self, key: str, current, value):
        """`value` (from `--set KEY=VALUE`) for a config field that now holds `current`. Not
        every config class validates types (T5Config keeps num_hidden_layers="abc"): a text for a
        number is refused. A whole number for a float field (JSON reads `0` as an int) becomes a
        float: ESM's strictly validated config refused `hidden_dropout_prob=0`."""
        if isinstance(current, (bool, int, float)) and isinstance(value, str):
            raise ModelError(f"invalid {self.name} config: {key} expects {a_or_an(type(current).__name__)}, got "
                             f"{value!r}")
        if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, bool):
            # (transformers' strict validation said "... doesn't match any type in (<class 'float'>,
            # <class 'int'>). Errors: ...", and a config class without it took true for 1)
            raise ModelError(f"invalid {self.name} config: {key} expects {a_or_an(type(current).__name__)}, got "
                             f"{str(value).lower()} (a boolean)")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def token_config(self, tokenizer) -> dict[str, Any]:
        """Config kwargs that come from the tokenizer (vocabulary size, special-token ids)."""
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}

    @property
    def config_class(self):
        raise NotImplementedError

    def pretraining_model(self, config):
        """A freshly initialised model with the heads the family's objective needs."""
        raise NotImplementedError

    def pretraining_model_from(self, model):
        """A freshly initialised pretraining model of `model`'s architecture (FSDP's full copy)."""
        return self.pretraining_model(model.config)

    def pretraining_model_like(self, directory, config, **hub):
        """A freshly initialised pretraining model of the architecture saved in `directory` (a
        checkpoint whose weights are loaded next), `config` being its config with any overrides."""
        return self.pretraining_model(config)

    def encoder_model(self, config):
        """A freshly initialised encoder (the model `load_encoder` returns), e.g. for counts, built
        on a copy of `config`: transformers' T5EncoderModel sets `is_encoder_decoder` and
        `use_cache` to False on the config it is given, and a model card's count made on a
        training model's own config saved a T5ForConditionalGeneration that `generate()` refused."""
        import copy

        return self.encoder_class(copy.deepcopy(config))

    @property
    def encoder_class(self):
        """The HF class whose hidden states are the embeddings."""
        raise NotImplementedError

    def load_pretraining_model(self, directory, *, config=None, **kwargs):
        """The pretraining model (with its heads) saved in `directory` (or a hub id), e.g. to
        continue training; `config` replaces the saved config (overridden fields), other kwargs
        go to from_pretrained (dtype, revision, output_loading_info...)."""
        import torch
        from transformers import AutoConfig

        if config is None:
            hub = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only")}
            config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False, **hub)
        self.repair_config(config)  # (a resumed run saves its config again: put right for good)
        with torch.device("meta"):
            model_class = type(self.pretraining_model(config))
        refuse_missing_layers(model_class, directory)
        with HF_LOADING:  # (see load_checked)
            return model_class.from_pretrained(str(directory), config=config, **{**NO_HUB_KERNELS, **kwargs})

    def save_pretrained(self, model, tokenizer, directory) -> None:
        """Write an HF model directory that `load_encoder` and `AutoModel` read back."""
        from protrans_cli.models.tokenizers import save_tokenizer

        model.save_pretrained(directory)
        save_tokenizer(tokenizer, directory)  # (a tokenizer_config.json transformers 4.x reads too)
        stamp_versions(directory)

    # --- embedding (embed) ------------------------------------------------------------
    def load_tokenizer(self, name_or_path, **hub_kwargs):
        from transformers import AutoTokenizer

        # trust_remote_code=False, not left unset: unset, a tokenizer_config.json naming its own
        # code (auto_map) for a config transformers maps no tokenizer to (ProtTXL's) made
        # transformers ask "Do you wish to run the custom code? [y/N]" on stdin, and a "y" there
        # (typed, or the first line of a piped stdin) ran that code.
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False, **self.tokenizer_kwargs,
                                                  **hub_kwargs)
        # The special-token layout of a family depends on the padding side (XLNet pads left);
        # a hub tokenizer may not say so in its config.
        tokenizer.padding_side = self.padding_side
        return tokenizer

    def repair_config(self, config) -> None:
        """Put right, in place, what an earlier protrans version saved wrong in a config.json of
        this family (open_config's config and load_masked_lm's model); nothing for most families."""

    def load_encoder(self, name_or_path, *, dtype=None, **hub_kwargs):
        """The model whose hidden states are the embeddings (T5 encoder, ELECTRA discriminator...)."""
        return load_checked(self.mappable(self.encoder_class, hub_kwargs), name_or_path, dtype=dtype, **hub_kwargs)

    def mappable(self, model_class, kwargs: dict):
        """`model_class`, or under a device map (`kwargs["device_map"]`) where the class names no
        blocks to keep whole, a subclass that names this family's `no_split_modules` (load_checked
        adds, for every family, the modules holding a bare parameter beside their modules)."""
        if kwargs.get("device_map") is None or getattr(model_class, "_no_split_modules", None):
            return model_class
        return keep_whole(model_class, self.no_split_modules)

    def load_masked_lm(self, name_or_path, *, dtype=None, **hub_kwargs):
        """The encoder with its masked-LM head (`masked_lm_class`): logits over the vocabulary at
        every position. A checkpoint without the head's trained weights (an encoder saved alone,
        ProtT5's `-enc`) is refused, not given a random head."""
        if self.masked_lm_class is None:
            raise ModelError(f"{name_or_path}: {a_or_an(self.name)} model, not a masked language model: it does not score a "
                             "masked residue from both sides (use an ESM, ProtBert, ProtAlbert, ProtT5, ProtXLNet, "
                             "RoBERTa-style BERT or ELECTRA generator checkpoint)")
        import transformers

        model_class = self.mappable(getattr(transformers, self.masked_lm_class), hub_kwargs)
        model = load_checked(model_class, name_or_path, dtype=dtype, lacking=self.masked_lm_lacking, **hub_kwargs)
        self.repair_config(model.config)
        return model

    def prefix_ids(self, tokenizer) -> list[int]:
        """Token ids a model expects before every protein, after its tokenizer's own leading
        special tokens ([] for none): one of `INPUT_PREFIXES` that its vocabulary holds
        (ProstT5 reads amino acids after `<AA2fold>`). Inserted as ids, never as text: how a
        tokenizer splits "<AA2fold> M K" varies (transformers 5 makes `<unk> <AA2fold> ▁M ▁K` of
        a spiece.model that has it as a user-defined piece, 4.x `<AA2fold> ▁M ▁K`)."""
        return input_prefix_ids(tokenizer)

    def normalise(self, sequence: str) -> str:
        """The residues as the model reads them: upper-case, rare residues as `rare_to` says."""
        seq = sequence.upper()
        return seq.translate(_RARE_TO_X) if self.rare_to == "X" else seq

    def prepare(self, sequence: str) -> str:
        """Tokenizer input for one normalised sequence (upper-case, spacing, rare residues)."""
        seq = self.normalise(sequence)
        return " ".join(seq) if self.spaced else seq

    def tokenize(self, tokenizer, sequences: list[str], words: bool = False, **kwargs):
        """Call `tokenizer` on `sequences` as this family formats them; `words`: one residue per
        word (`is_split_into_words`), the form for tokenizers that do not split on spaces
        (Ankh's scripts pass `list(sequence)` so; whitespace-splitting tokenizers, ProtT5's
        and ProtBert's, give the same ids either way)."""
        if words:
            return tokenizer([list(self.normalise(s)) for s in sequences], is_split_into_words=True, **kwargs)
        return tokenizer([self.prepare(s) for s in sequences], **kwargs)

    def encode(self, tokenizer, sequences: list[str], multiple: int = 1):
        """Tokenize a batch. Returns (inputs: dict of tensors for the model,
        residue_mask: bool tensor (B, T) that is True at exactly one position per residue).
        T is rounded up to a multiple of `multiple` with more padding (8: tensor-core shapes).

        Special tokens and padding are False in the mask; the tokenizer's own special-tokens
        mask says which positions its template added, so this works for hub tokenizers too.
        A tokenizer that splits or merges residues raises ModelError instead of shifting rows.

        Tokenizers that map each residue to one token regardless of its neighbours (checked once
        per tokenizer, see `residue_layout`) are applied by table lookup, 15-140x faster than
        calling them and identical in result; anything else goes through the tokenizer.
        """
        layout = residue_layout(self, tokenizer)
        if layout is not None:
            encoded = layout.encode(sequences, tokenizer.pad_token_id, tokenizer.padding_side == "left", multiple)
            if encoded is not None:
                return encoded
        return self.encode_with_tokenizer(tokenizer, sequences, multiple)

    def encode_with_tokenizer(self, tokenizer, sequences: list[str], multiple: int = 1):
        """`encode` by calling the tokenizer itself (the reference the fast path is tested against)."""
        import numpy as np
        import torch

        wrong = None
        # Spaced families: spaced text first; a tokenizer that does not split on spaces (Ankh's)
        # makes unknown tokens of it, and takes one residue per word instead.
        lead = self.prefix_ids(tokenizer)
        for words in (False, True) if self.spaced else (False,):
            # Python lists, converted through numpy: return_tensors="pt" spends most of its time
            # flattening nested lists in Python (3x slower for a batch of 50 x 300 residues).
            enc = self.tokenize(tokenizer, sequences, words, padding=not lead, truncation=False,
                                return_special_tokens_mask=True, return_attention_mask=True,
                                add_special_tokens=True, pad_to_multiple_of=multiple if multiple > 1 else None)
            if lead:
                enc = _insert_prefix(tokenizer, enc, lead, multiple)
            tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in enc.items()}
            special = tensors["special_tokens_mask"].bool()  # (B, T)
            attention = tensors["attention_mask"].bool()      # (B, T)
            residue_mask = attention & ~special               # (B, T)
            counts = residue_mask.sum(dim=1)              # (B,)
            bad = next(((int(counts[i]), seq) for i, seq in enumerate(sequences) if int(counts[i]) != len(seq)), None)
            if bad is None:
                inputs = {k: tensors[k] for k in self.input_names if k in tensors}
                return inputs, residue_mask
            wrong = wrong or bad  # the first form's, reported if neither maps one token per residue
        count, seq = wrong
        seq = residue_text(seq)  # (SaProt's residue-and-3Di characters: their amino acids)
        raise ModelError(
            f"the {self.name} tokenizer made {count} residue tokens of a sequence of "
            f"{len(seq)} residues ({seq[:20]}{'...' if len(seq) > 20 else ''}); "
            "it does not map one token per residue")

    def hidden_states(self, model, inputs, layers: list[int]):
        """Hidden states at `layers` (python indexing over embeddings + every layer,
        so -1 is the last layer): a list of (B, T, D) tensors."""
        if list(layers) == [-1]:
            # The common case needs no per-layer outputs kept in memory.
            return [model(**inputs).last_hidden_state]
        out = model(**inputs, output_hidden_states=True)
        states = out.hidden_states  # tuple of num_layers + 1 tensors (B, T, D)
        try:
            return [states[i] for i in layers]
        except IndexError:
            raise ModelError(f"layer index out of range: {list(layers)} for a model with "
                             f"{len(states) - 1} layers (valid: {-len(states)}..{len(states) - 1})") from None

    def embedding_dim(self, config) -> int:
        return int(config.hidden_size)

    def num_layers(self, config) -> int:
        return int(config.num_hidden_layers)

    def num_params(self, preset: str) -> int:
        """Parameters of the preset's pretraining model (built on the meta device)."""
        return _count_on_meta(lambda: self.pretraining_model(self.build_config(preset)))

    def encoder_num_params(self, preset: str) -> int:
        """Parameters of the preset's encoder, the part embed uses (built on the meta device)."""
        return _count_on_meta(lambda: self.encoder_model(self.build_config(preset)))


class ResidueLayout:
    """How a tokenizer lays out one protein: special-token ids before and after, one token per
    residue from a (256,) table of letter bytes (lower and upper case) -> id, -1 for none."""

    def __init__(self, table, prefix: list[int], suffix: list[int]):
        self.table, self.prefix, self.suffix = table, prefix, suffix

    def encode(self, sequences: list[str], pad_id: int, left: bool, multiple: int = 1):
        """(inputs, residue_mask) as Family.encode, or None when a letter is not in the table."""
        import numpy as np
        import torch

        rows = self._residue_ids(sequences)
        if rows is None:
            return None
        P, S = len(self.prefix), len(self.suffix)
        width = max(len(r) for r in rows) + P + S
        width = -(-width // multiple) * multiple
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)      # (B, T)
        attention = np.zeros((len(rows), width), dtype=np.int64)       # (B, T)
        residue_mask = np.zeros((len(rows), width), dtype=bool)        # (B, T)
        for i, r in enumerate(rows):
            start = width - (len(r) + P + S) if left else 0
            end = start + len(r) + P + S
            ids[i, start:end] = np.concatenate([self.prefix, r, self.suffix])
            attention[i, start:end] = 1
            residue_mask[i, start + P:start + P + len(r)] = True
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention)}
        return inputs, torch.from_numpy(residue_mask)

    def encode_packed(self, sequences: list[str], pad_id: int, position_offset: int, multiple: int = 8):
        """(inputs, residue_mask) of one packed row (see models/packing.py): every protein's
        prefix + residues + suffix back to back, (1, T) tensors; None as `encode`."""
        import numpy as np
        import torch

        from protrans_cli.models import packing

        rows = self._residue_ids(sequences)
        if rows is None:
            return None
        prefix, suffix = np.array(self.prefix, dtype=np.int64), np.array(self.suffix, dtype=np.int64)
        tokens = [np.concatenate([prefix, r, suffix]) for r in rows]
        ids = packing.pack(tokens, pad_id, multiple)
        cu, longest, positions = packing.segments([len(t) for t in tokens], ids.shape[1], position_offset)
        residue_mask = np.zeros(ids.shape, dtype=bool)
        for start, r in zip(cu[:len(rows)].tolist(), rows):
            residue_mask[0, start + len(prefix):start + len(prefix) + len(r)] = True
        inputs = {"input_ids": ids, **packing.model_kwargs(cu, longest, positions)}
        return inputs, torch.from_numpy(residue_mask)

    def _residue_ids(self, sequences):
        import numpy as np

        rows = [self.table[np.frombuffer(s.encode("latin-1", errors="replace"), dtype=np.uint8)]
                for s in sequences]
        return None if any((r < 0).any() for r in rows) else rows


_LAYOUTS: dict[int, tuple[Any, ResidueLayout | None, str]] = {}


def residue_layout(family: Family, tokenizer) -> ResidueLayout | None:
    """The ResidueLayout of `tokenizer` under `family`'s input convention, or None when the
    tokenizer may depend on context (unspaced fast tokenizers could merge residues) or fails
    the check: every letter of the alphabet alone is one token, and a probe protein holding
    every letter tokenizes to prefix + those tokens + suffix, with the tokenizer's own
    special-tokens mask on exactly the prefix and suffix."""
    import numpy as np

    from protrans_cli.residues import ALPHABET

    key = id(tokenizer)
    cached = _LAYOUTS.get(key)
    if cached is not None and cached[0] is tokenizer and cached[2] == (family.name, family.input_kind):
        return cached[1]
    layout = None
    if family.spaced or type(tokenizer).__name__ == "EsmTokenizer":
        # spaced text, then one residue per word (a tokenizer that does not split on spaces)
        for words in (False, True) if family.spaced else (False,):
            try:
                layout = _probe_layout(family, tokenizer, ALPHABET, np, words)
            except (ValueError, TypeError, KeyError, IndexError):
                layout = None
            if layout is not None:
                break
    if len(_LAYOUTS) > 64:  # tokenizers are few; never let the cache grow without bound
        _LAYOUTS.clear()
    _LAYOUTS[key] = (tokenizer, layout, (family.name, family.input_kind))
    return layout


def _probe_layout(family, tokenizer, alphabet, np, words=False):
    table = np.full(256, -1, dtype=np.int64)
    for letter in alphabet:
        ids = family.tokenize(tokenizer, [letter], words, add_special_tokens=False)["input_ids"][0]
        if len(ids) != 1:
            return None
        table[ord(letter)] = table[ord(letter.lower())] = ids[0]
    single = {k: v[0] for k, v in family.tokenize(tokenizer, ["A"], words, return_special_tokens_mask=True).items()}
    ids = single["input_ids"]
    at = [i for i, t in enumerate(ids) if t == table[ord("A")]]
    if len(at) != 1:
        return None
    layout = ResidueLayout(table, list(ids[:at[0]]), list(ids[at[0] + 1:]))
    probe = alphabet + alphabet[::-1] + "".join(a + b for a in alphabet for b in alphabet[::3]) + alphabet.lower()
    enc = {k: v[0] for k, v in family.tokenize(tokenizer, [probe], words, return_special_tokens_mask=True).items()}
    expected = layout.prefix + table[np.frombuffer(probe.encode(), dtype=np.uint8)].tolist() + layout.suffix
    special = [1] * len(layout.prefix) + [0] * len(probe) + [1] * len(layout.suffix)
    if list(enc["input_ids"]) != expected or list(enc["special_tokens_mask"]) != special:
        return None
    layout.prefix += family.prefix_ids(tokenizer)  # (ProstT5's <AA2fold>) after the tokenizer's own
    return layout


# Tokens a model's authors put before every protein; a vocabulary that holds one takes it.
# ProstT5 (Heinzinger et al. 2024, ProtT5-XL fine-tuned to translate to and from Foldseek's 3Di
# letters): "<AA2fold>" before amino acids ("<fold2AA>" before lower-case 3Di strings: `embed
# --3di`, three_di_input). Ankh3 (Alsamkary et al. 2025, T5 trained
# on two tasks, each named by a token before the protein): "[NLU]", the masked-LM task, whose
# encoder states its model card extracts as embeddings ("[S2S]" asks for sequence completion).
INPUT_PREFIXES = ("<AA2fold>", "[NLU]")


def input_prefix(tokenizer, prefixes=INPUT_PREFIXES) -> str:
    """The first of `prefixes` that `tokenizer` holds as a token of its own, '' for none."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        return ""
    return next((p for p in prefixes if p in vocab), "")


def input_prefix_ids(tokenizer, prefixes=INPUT_PREFIXES) -> list[int]:
    """The id of `input_prefix(tokenizer, prefixes)` as a one-item list, [] for none."""
    lead = input_prefix(tokenizer, prefixes)
    return [tokenizer.convert_tokens_to_ids(lead)] if lead else []


# `embed --3di`: THREE_DI and THREE_DI_PREFIX are defined in protrans_cli.residues, which commands
# that only read files import without the model code and transformers behind this module.


def three_di_input(family: Family) -> Family:
    """`family` reading 3Di strings: each letter lower-cased (ProstT5's 3Di tokens) and kept as it
    is (there are no rare ones), `<fold2AA>` before every protein. Everything else (special
    tokens, rows, packing, attention) is the family's."""
    base = type(family)
    cls = _THREE_DI_CLASSES.get(base)
    if cls is None:
        cls = _THREE_DI_CLASSES[base] = type(f"{base.__name__}ThreeDi", (base,), {
            "input_kind": "3di",
            "normalise": lambda self, sequence: sequence.lower(),
            "prefix_ids": lambda self, tokenizer: input_prefix_ids(tokenizer, (THREE_DI_PREFIX,)),
        })
    return cls()


_THREE_DI_CLASSES: dict[type, type] = {}


def _insert_prefix(tokenizer, enc, lead: list[int], multiple: int):
    """Unpadded tokenizer output `enc` with the ids `lead` before each row's first residue
    (after the tokenizer's own leading special tokens), flagged special, then padded as the
    tokenizer pads (its side, to a multiple of `multiple`)."""
    rows = {k: [list(v) for v in values] for k, values in enc.items()}
    fill = {"input_ids": lead, "special_tokens_mask": [1] * len(lead), "attention_mask": [1] * len(lead)}
    for i, special in enumerate(enc["special_tokens_mask"]):
        at = next((j for j, flag in enumerate(special) if not flag), len(special))
        for key, values in rows.items():
            row = values[i]  # token_type_ids and the like: the first residue's value
            row[at:at] = fill.get(key, [row[at] if at < len(row) else 0] * len(lead))
    return tokenizer.pad(rows, padding=True, pad_to_multiple_of=multiple if multiple > 1 else None)


def unknown_residues(family: Family, tokenizer) -> list[str]:
    """The standard residue letters that `tokenizer`, given them as `family` formats its input,
    maps to no token or to its unknown token (all 20 when there is no tokenizer at all).

    A model directory without its tokenizer files still loads: transformers then builds the
    config class's default tokenizer (a bare BertTokenizer, XLNetTokenizer...) whose vocabulary
    holds special tokens only, so every residue becomes `[UNK]` and every protein the same rows.
    Rare letters (U/Z/O/B, X) are left out: published vocabularies legitimately lack some."""
    from protrans_cli.residues import STANDARD

    if tokenizer is None or not callable(tokenizer):
        return list(STANDARD)
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = []
    for letter in STANDARD:
        try:
            ids = tokenizer(family.prepare(letter), add_special_tokens=False)["input_ids"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            ids = []
        if not ids or (unk is not None and unk in ids):
            bad.append(letter)
    return bad


# Weights an encoder may lack in a pretraining checkpoint without changing its hidden states:
# BERT's pooler, ESM's contact head (a regression on the attention maps; fair-esm published none
# for ESM-1v, and ESM checkpoints saved by other tools often leave it out).
_OPTIONAL_ENCODER_KEYS = ("pooler.", "contact_head.")


def _override_problem(key: str, value) -> str | None:
    """Why a `--set` value a config class takes would still wreck the run, or None: a dropout
    of 1 (every activation zeroed) or a layer norm epsilon of 0 or less trained to "the gradient
    is not finite" at step 1, with advice about the learning rate; a dtype was ignored."""
    if key in ("dtype", "torch_dtype"):
        return f"{key} is not a model setting here: --precision sets the training precision"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # (dropatt: Transformer-XL's attention dropout; at 1 every attention output was zero)
    if ("dropout" in key or key.endswith("_prob") or key == "dropatt") and not 0 <= value < 1:
        return f"{key} is a probability of dropping, from 0 up to (not including) 1, got {value}"
    if ("eps" in key.split("_") or "epsilon" in key) and not value > 0:
        return f"{key} must be greater than 0, got {value}"
    return None


# transformers' from_pretrained changes process-wide state while it builds a model (it replaces
# PreTrainedModel.tie_weights with a no-op and sets torch's default dtype) and puts back what it
# found: two loads at once in two threads (a web app, a notebook's thread pool) put back each
# other's no-op, so that this and every later load in the process left T5's embed_tokens untied
# ("no weights for encoder.embed_tokens.weight") or weights on the meta device. One at a time.
HF_LOADING = threading.RLock()


def load_checked(model_class, name_or_path, *, dtype=None, lacking: str | None = None, **kwargs):
    """`model_class.from_pretrained`, in eval mode, refusing a checkpoint that leaves any weight
    the hidden states depend on freshly initialised (a wrong or truncated checkpoint would
    otherwise give random embeddings without a word). Unused heads are fine. `lacking`: what to
    say when every weight missing is outside the base model (a head the checkpoint does not hold)."""
    if kwargs.get("device_map") is not None and _takes(model_class, "add_pooling_layer"):
        # (a pooler no embedding reads, which a masked-LM checkpoint lacks: initialised fresh, it
        # was put on the disk with no weights there, a KeyError at the first forward)
        kwargs.setdefault("add_pooling_layer", False)
    problem = _depth_problem(model_class, name_or_path, kwargs)
    if problem:
        raise ModelError(f"{name_or_path}: {problem}")
    if isinstance(kwargs.get("device_map"), str):  # (auto, balanced, sequential: accelerate makes the map)
        model_class = keep_whole(model_class, _bare_parameter_owners(model_class, name_or_path, kwargs))
    with HF_LOADING:
        model, info = model_class.from_pretrained(str(name_or_path), dtype=dtype, output_loading_info=True,
                                                  **{**NO_HUB_KERNELS, **kwargs})
    if kwargs.get("device_map") is not None and (problem := split_parameter_problem(model)):
        raise ModelError(f"{name_or_path}: {problem}")
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    # (under a head class the encoder's names carry its prefix: `esm.contact_head.` in EsmForMaskedLM)
    missing = [k for k in info.get("missing_keys", [])
               if not k.startswith(_OPTIONAL_ENCODER_KEYS) and not k.removeprefix(prefix).startswith(_OPTIONAL_ENCODER_KEYS)]
    if missing and lacking and prefix and not any(k.startswith(prefix) for k in missing):
        raise ModelError(f"{name_or_path}: {lacking} (no weights for {sorted(missing)[0]})")
    if missing:
        raise ModelError(f"{name_or_path}: the checkpoint has no weights for {len(missing)} parameters of "
                         f"{model_class.__name__} (e.g. {sorted(missing)[0]}); it is not a complete "
                         "checkpoint of this model")
    return model.eval()


def keep_whole(model_class, names):
    """`model_class`, or a subclass whose `_no_split_modules` (the module classes transformers has
    accelerate place whole under a device map) adds `names` to the class's own. The one way a
    device map is told what to keep whole: Family.mappable (a family's blocks) and load_checked
    (every module with a bare parameter) both go through it."""
    own = list(getattr(model_class, "_no_split_modules", None) or ())
    added = [name for name in dict.fromkeys(names) if name not in own]
    if not added:
        return model_class
    return type(model_class.__name__, (model_class,), {"_no_split_modules": own + added,
                                                        "__module__": model_class.__module__})


def _bare_parameter_owners(model_class, name_or_path, kwargs: dict) -> list[str]:
    """The classes of the modules a device map must keep whole, found on a copy of the model built
    from its config on the meta device: those that own a parameter directly (not through a child)
    beside children with parameters (ESM's EsmLMHead: `bias` beside `dense` and `decoder`; XLNet's
    attention: `q`, `k`, `v` beside `layer_norm`). accelerate splits such a module into its children
    and the bare parameter, and no hook moves the parameter for the module's own forward: it was
    left on the meta device ("Tensor on device meta is not on the expected device") or on another
    device, or read wrong values. The model itself and the base model a head class wraps are left
    out (kept whole, there would be no map at all); split_parameter_problem checks theirs after
    loading. [] when the config cannot be read or built: from_pretrained says why."""
    import torch
    from transformers import PreTrainedModel

    hub = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token", "subfolder")}
    try:
        config = model_class.config_class.from_pretrained(str(name_or_path), **hub)
        with torch.device("meta"):
            model = model_class(config, **{k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS})
    except Exception:  # noqa: BLE001 - from_pretrained reports a config it cannot read or build
        return []
    return list(dict.fromkeys(
        type(module).__name__ for module in model.modules()
        if not isinstance(module, PreTrainedModel) and next(module.parameters(recurse=False), None) is not None
        and any(next(child.parameters(), None) is not None for child in module.children())))


def split_parameter_problem(model) -> str | None:
    """What is wrong with a loaded model's device map (`hf_device_map`) that names a parameter
    apart from its module, or None. No hook moves such a parameter: it must already be where its
    module computes, which is where the module's other entries compute (accelerate computes an
    entry offloaded to the CPU or disk on the map's main device), or, for the model itself and a
    head class's base model, which no hook moves either, where the inputs are. One offloaded stays
    on the meta device. Never silent: a map load_checked did not make (a dict given) or a module
    `_bare_parameter_owners` could not see."""
    from transformers import PreTrainedModel

    from protrans_cli.placement import device_name, input_device

    device_map = getattr(model, "hf_device_map", None) or {}
    main = input_device(device_map)
    parameters = dict(model.named_parameters(remove_duplicate=False))

    def computes(where) -> str:
        name = device_name(where)
        return main if name in ("cpu", "disk") else name

    for key, where in device_map.items():
        if key not in parameters:
            continue
        owner_name = key.rpartition(".")[0]
        owner = model.get_submodule(owner_name)
        if isinstance(owner, PreTrainedModel):
            others = {main}
        else:
            others = {computes(v) for k, v in device_map.items() if k != key and k.startswith(f"{owner_name}.")}
        held = str(parameters[key].device)
        if held == "meta" or others - {held}:
            what = f"{owner_name or 'the model'} ({type(owner).__name__})"
            return (f"the device map put {key} on {device_name(where)} apart from the rest of {what}, which "
                    f"computes on {', '.join(sorted(others))}, and nothing moves it there (a module holding a bare "
                    "parameter beside its modules, split by the map): give --max-memory another size, or load "
                    "the model without --device-map")
    return None


def _takes(model_class, keyword: str) -> bool:
    """Whether the model class's constructor takes `keyword`."""
    import inspect

    try:
        return keyword in inspect.signature(model_class.__init__).parameters
    except (TypeError, ValueError):
        return False


def refuse_missing_layers(model_class, directory) -> None:
    """Before a model directory is loaded to train on (`train --init-from`): ModelError when its
    config.json gives more layers than its weights hold. The extra layers trained from random,
    with "usually a pretraining head" as the only word."""
    problem = _depth_problem(model_class, directory, {})
    if problem:
        raise ModelError(f"{directory}: {problem}")


# from_pretrained's own options, not the model class's (the rest of load_checked's kwargs are)
_LOADING_KWARGS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "subfolder",
                   "device_map", "max_memory", "offload_folder")


def _depth_problem(model_class, directory, kwargs: dict) -> str | None:
    """Why a model directory's config.json asks for more layers than its safetensors weights hold,
    or None. from_pretrained builds and initialises every layer the config gives before the
    missing weights are known: `num_hidden_layers: 2000` on a 2-layer model took a minute to be
    refused, 20000 ran for more than five. Compared here on the meta device, from the tensor names
    in the weights' header (or the sharded index), so nothing is allocated. Only whole layers
    missing after complete ones are refused here: anything else (a weight missing inside a layer,
    weights renamed on loading, .bin only, a hub id) goes on to from_pretrained and load_checked's
    own check after it, as before."""
    import copy
    import re

    import torch

    saved = _safetensors_names(directory)
    if not saved:
        return None
    try:
        config = model_class.config_class.from_pretrained(str(directory))
        depth = int(config.num_hidden_layers)
        # Layer i has the same names in a model of any depth, and each layer adds at least one:
        # a depth beyond the number of tensors saved already lacks some, so build no deeper.
        config = copy.deepcopy(config)
        config.num_hidden_layers = built = min(depth, len(saved) + 1)
        with torch.device("meta"):
            model = model_class(config, **{k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS})
    except Exception:  # noqa: BLE001 - a config the class cannot read or build: from_pretrained says why
        return None
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    # (transformers reads a layer norm's legacy gamma and beta, which it still writes for ESM,
    # as its weight and bias)
    saved = {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", n.removeprefix(prefix))) for n in saved}
    lacking = _names_missing(model, saved, prefix)
    if not lacking:
        return None
    # The layer stacks: the module lists as long as the model is deep (a shared-weight stack,
    # ALBERT's groups, is not one, and is never refused here).
    stacks = [name.removeprefix(prefix) for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) == built and name]
    first_absent = None
    for name in lacking:
        layer = next((f"{stack}.{i}." for stack in stacks for i in range(1, built)
                      if name.startswith(f"{stack}.{i}.")), None)
        if layer is None or any(n.startswith(layer) for n in saved):
            return None  # a weight missing outside the layers, or inside a layer that is there
        first_absent = first_absent or name
    return (f"its config.json gives {depth} layers (num_hidden_layers), more than its weights hold: none for "
            f"{first_absent} (a config edited, or another model's weights)")


def _safetensors_names(directory) -> set[str]:
    """The tensor names in a model directory's model.safetensors (its header only) or in the
    weight map of its model.safetensors.index.json; empty when there is neither (a hub id, a
    pytorch_model.bin) or it cannot be read (from_pretrained then reports it)."""
    import json

    directory = Path(directory)
    try:
        if (directory / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(directory / "model.safetensors"), "pt", device="cpu") as f:
                return set(f.keys())
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            return set(weight_map) if isinstance(weight_map, dict) else set()
    except Exception:  # noqa: BLE001 - a damaged file: from_pretrained's error names it
        return set()
    return set()


def _names_missing(model, saved: set[str], prefix: str) -> list[str]:
    """The parameters of `model` (in module order) that `saved` (names without the base model's
    `prefix`: an encoder is read from a pretraining checkpoint too) holds under no name, a tied
    weight under none of its names."""
    tied: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name.removeprefix(prefix))
    return [names[0] for names in tied.values()
            if not names[0].startswith(_OPTIONAL_ENCODER_KEYS) and not any(n in saved for n in names)]


def _count_on_meta(build) -> int:
    import torch

    with torch.device("meta"):
        model = build()
    # parameters() yields a tied tensor once, so shared embeddings are counted once.
    return sum(p.numel() for p in model.parameters())


_RARE_TO_X = str.maketrans("UZOB", "XXXX")


@dataclass
class Preset:
    """A row of `protrans models --presets`."""

    family: str
    name: str
    num_params: int
    config: dict = field(default_factory=dict)
    embedding_dim: int | None = None
    num_layers: int | None = None


def stamp_versions(directory) -> None:
    """The versions that wrote a model directory, beside transformers' own `transformers_version`
    in its config.json (and in a sub-model's, ELECTRA's generator/): `protrans_version`,
    `torch_version`. A run's provenance, read back by nobody else (HF keeps unknown keys). An
    `auto_map` inherited through --init-from is dropped: it named code the directory does not hold."""
    import json

    import torch

    from protrans_cli import __version__

    for path in (*Path(directory).glob("config.json"), *Path(directory).glob("*/config.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        data.update(protrans_version=__version__, torch_version=torch.__version__.split("+")[0])
        # (a model continued from one that named code of its own: the code is not copied, and
        # protrans's own classes wrote it)
        data.pop("auto_map", None)
        # (import-model's record of the base an adapter was merged into: not a model saved from it)
        data.pop("protrans_merged_into", None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def register_auto_classes(model_type: str, config_class, model_class, head: str, head_class) -> None:
    """Make AutoConfig, AutoModel and the head's Auto class (`head`: "AutoModelForMaskedLM", ...)
    know a model the project implements itself (Transformer-XL, ESM C), so that its saved
    directories load through `from_pretrained` without `trust_remote_code`. Idempotent."""
    import transformers

    transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
    transformers.AutoModel.register(config_class, model_class, exist_ok=True)
    getattr(transformers, head).register(config_class, head_class, exist_ok=True)
