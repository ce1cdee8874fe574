"""The interface every model family implements; embed and train talk only to this.

A family module (models/bert.py, models/t5.py, ...) defines one `Family` subclass instance with
the same shape: presets (a `tiny` one that trains on CPU in seconds, up to the published
ProtTrans sizes), an offline tokenizer built from the residue alphabet, the pretraining model,
the encoder used for embedding, and the input conventions (spaces, rare residues, special
tokens). The quirks of a family (T5's trailing `</s>`, XLNet's left padding and trailing
special tokens, ELECTRA's generator/discriminator pair) stay inside its module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


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
      rare_to      what U/Z/O/B become before tokenizing ("X", "<unk>" handled by the
                   tokenizer, or None to keep them)
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    objective: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]
    spaced: ClassVar[bool] = True
    rare_to: ClassVar[str | None] = "X"

    # --- building (train) -------------------------------------------------------------
    def build_tokenizer(self):
        """A tokenizer made offline from the residue alphabet (saved with every checkpoint)."""
        raise NotImplementedError

    def build_config(self, preset: str = "tiny", tokenizer=None, **overrides):
        """An HF config for `preset`, vocabulary and special-token ids taken from `tokenizer`."""
        raise NotImplementedError

    def pretraining_model(self, config):
        """A freshly initialised model with the heads the family's objective needs."""
        raise NotImplementedError

    def save_pretrained(self, model, tokenizer, directory) -> None:
        """Write an HF model directory that `load_encoder` and `AutoModel` read back."""
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    # --- embedding (embed) ------------------------------------------------------------
    def load_tokenizer(self, name_or_path, **hub_kwargs):
        raise NotImplementedError

    def load_encoder(self, name_or_path, *, dtype=None, **hub_kwargs):
        """The model whose hidden states are the embeddings (T5 encoder, ELECTRA discriminator...)."""
        raise NotImplementedError

    def prepare(self, sequence: str) -> str:
        """Tokenizer input for one normalised sequence (upper-case, spacing, rare residues)."""
        seq = sequence.upper()
        if self.rare_to == "X":
            seq = seq.translate(_RARE_TO_X)
        return " ".join(seq) if self.spaced else seq

    def encode(self, tokenizer, sequences: list[str]):
        """Tokenize a batch. Returns (inputs: dict of tensors for the model,
        residue_mask: bool tensor (B, T) that is True at exactly one position per residue)."""
        raise NotImplementedError

    def hidden_states(self, model, inputs, layers: list[int]):
        """Hidden states at `layers` (python indexing over embeddings + every layer,
        so -1 is the last layer): a list of (B, T, D) tensors."""
        raise NotImplementedError

    def num_params(self, preset: str) -> int:
        """Parameters of the preset's pretraining model (built on the meta device)."""
        raise NotImplementedError


_RARE_TO_X = str.maketrans("UZOB", "XXXX")


@dataclass
class Preset:
    """A row of `protrans models --presets`."""

    family: str
    name: str
    num_params: int
    config: dict = field(default_factory=dict)
