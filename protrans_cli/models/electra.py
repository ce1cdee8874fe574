"""The ELECTRA family (ProtElectra): a small MLM generator and a discriminator sharing embeddings.

Pretraining uses `ElectraPair`, an nn.Module holding
  .generator      ElectraForMaskedLM, `generator_size` (default 1/4) of the discriminator's
                  hidden size, intermediate size and heads, same depth;
  .discriminator  ElectraForPreTraining (replaced-token detection).
How the embeddings are shared: both models keep ELECTRA's factorised embeddings
(`embedding_size` wide, the generator projects them down to its own hidden size), so the
generator's `electra.embeddings` module (token, position and token-type tables and their
LayerNorm) is replaced by the discriminator's module object itself, and the generator's output
layer is tied to that token table. One set of parameters receives the gradients of both losses;
`parameters()` yields it once. `save_pretrained(dir)` writes the discriminator at the root
(what embed and `AutoModel` load) and the generator under `dir/generator/`; `from_pretrained`
reads both back and re-establishes the sharing.

ProtElectra discriminator: 30 layers, hidden 1024, 16 heads, intermediate 4096 (~420M).
"""

from __future__ import annotations

from pathlib import Path

from protrans_cli.errors import ModelError
from protrans_cli.models.base import HF_LOADING, NO_HUB_KERNELS, Family, refuse_missing_layers
from protrans_cli.models.bert import BERT_SPECIALS
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer, save_tokenizer

DEFAULT_GENERATOR_SIZE = 0.25

PRESETS = {
    "tiny": dict(embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=2048),
    "small": dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                  intermediate_size=1024, max_position_embeddings=2048),
    "base": dict(embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=40000),
    # ProtElectra (discriminator; the generator is a quarter of its width)
    "prot_electra": dict(embedding_size=1024, hidden_size=1024, num_hidden_layers=30, num_attention_heads=16,
                         intermediate_size=4096, max_position_embeddings=40000,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


def generator_config(config):
    """The generator's config: the discriminator's scaled by `config.generator_size`."""
    from transformers import ElectraConfig

    size = float(getattr(config, "generator_size", DEFAULT_GENERATOR_SIZE))
    heads = max(1, round(config.num_attention_heads * size))
    hidden = max(heads, round(config.hidden_size * size))
    hidden -= hidden % heads  # heads must divide the hidden size
    values = config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "generator_size", "dtype",
                "torch_dtype"):
        values.pop(key, None)
    values.update(hidden_size=hidden, num_attention_heads=heads,
                  intermediate_size=max(1, round(config.intermediate_size * size)))
    return ElectraConfig(**values)


_NOT_SETTINGS = ("architectures", "model_type", "transformers_version", "generator_size", "dtype", "torch_dtype",
                 "_name_or_path", "name_or_path")


def saved_generator_config(directory: str, config=None, **hub):
    """The generator's config saved in `directory/generator`, with the settings in which
    `config` (the discriminator's, with --set overrides) differs from the saved discriminator's
    applied to it as well: `--set hidden_dropout_prob=0` reaches both networks, as in a run
    without --init-from (whose generator config is derived from the discriminator's)."""
    from transformers import ElectraConfig

    generator = ElectraConfig.from_pretrained(directory, subfolder="generator", **hub)
    if config is not None:
        saved = ElectraConfig.from_pretrained(directory, **hub).to_dict()
        for key, value in config.to_dict().items():
            if key not in _NOT_SETTINGS and key in saved and saved[key] != value and hasattr(generator, key):
                setattr(generator, key, value)
    return generator


def _require_generator(directory: str, kwargs: dict) -> None:
    """A discriminator alone (what Rostlab/prot_electra_discriminator_bfd publishes) cannot
    continue ELECTRA pretraining: say what is missing, where transformers would say that the
    discriminator's own weights file is not there."""
    from transformers.utils import cached_file

    from protrans_cli.errors import ModelError

    hub = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only")}
    try:
        found = cached_file(directory, "config.json", subfolder="generator",
                            _raise_exceptions_for_missing_entries=False, **hub)
    except OSError:  # not reachable at all: from_pretrained says so next
        return
    if found is None:
        raise ModelError(f"{directory}: an ELECTRA discriminator without its generator ({directory}/generator/); "
                         "continued ELECTRA pretraining needs both: put the generator's model directory there "
                         "(for ProtElectra, Rostlab/prot_electra_generator_bfd)")


def _warn_unshared_embeddings(directory: str, discriminator, generator) -> None:
    """The pair shares the discriminator's embeddings (as ELECTRA trains): a generator saved with
    embeddings of its own (one paired with a discriminator it was not trained with) loses them,
    which went without a word."""
    import torch

    from protrans_cli import console

    own = generator.electra.embeddings.state_dict()
    shared = discriminator.electra.embeddings.state_dict()
    differ = sorted(name for name, tensor in own.items()
                    if name in shared and (tensor.shape != shared[name].shape or not torch.equal(tensor, shared[name])))
    if differ:
        console.warn(f"{directory}: the generator's embeddings ({', '.join(differ)}) differ from the "
                     "discriminator's; the pair shares the discriminator's, as ELECTRA trains, and the "
                     "generator's own are not used")


def _pair_class():
    import torch
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    class ElectraPair(torch.nn.Module):
        """Generator + discriminator with shared embeddings (see the module docstring)."""

        def __init__(self, discriminator, generator):
            super().__init__()
            self.discriminator = discriminator
            self.generator = generator
            self.share_embeddings()

        @classmethod
        def from_config(cls, config):
            return cls(ElectraForPreTraining(config), ElectraForMaskedLM(generator_config(config)))

        @classmethod
        def from_pretrained(cls, directory, output_loading_info=False, config=None, **kwargs):
            """The discriminator from `directory`, the generator from its `generator/` folder
            (a local directory or a hub repository). With output_loading_info, also the
            missing keys of both, prefixed like the pair's own state dict."""
            directory = str(directory)
            _require_generator(directory, kwargs)
            kwargs = {**NO_HUB_KERNELS, **kwargs}  # (models/base.py says why)
            kwargs_d, kwargs_g = dict(kwargs), dict(kwargs)
            if config is not None:  # overridden fields apply to both networks
                hub = {k: v for k, v in kwargs.items() if k in ("revision", "local_files_only")}
                kwargs_d["config"] = config
                kwargs_g["config"] = saved_generator_config(directory, config, **hub)
            with HF_LOADING:  # (one from_pretrained at a time in the process: models/base.py)
                discriminator, d_info = ElectraForPreTraining.from_pretrained(directory, output_loading_info=True,
                                                                              **kwargs_d)
                generator, g_info = ElectraForMaskedLM.from_pretrained(directory, subfolder="generator",
                                                                       output_loading_info=True, **kwargs_g)
            _warn_unshared_embeddings(directory, discriminator, generator)
            pair = cls(discriminator, generator)
            if not output_loading_info:
                return pair
            missing = [f"discriminator.{k}" for k in d_info.get("missing_keys", [])]
            missing += [f"generator.{k}" for k in g_info.get("missing_keys", [])]
            return pair, {"missing_keys": missing}

        @property
        def config(self):
            return self.discriminator.config

        def share_embeddings(self):
            shared = self.discriminator.electra.embeddings
            if self.generator.config.embedding_size != self.discriminator.config.embedding_size:
                raise ValueError("generator and discriminator need the same embedding_size to share embeddings")
            self.generator.electra.embeddings = shared
            self.generator.generator_lm_head.weight = shared.word_embeddings.weight

        def forward(self, *args, **kwargs):
            """The discriminator's forward (replaced-token detection logits)."""
            return self.discriminator(*args, **kwargs)

        def save_pretrained(self, directory, **kwargs):
            directory = Path(directory)
            self.discriminator.save_pretrained(directory, **kwargs)
            self.generator.save_pretrained(directory / "generator", **kwargs)

        def gradient_checkpointing_enable(self, **kwargs):
            self.discriminator.gradient_checkpointing_enable(**kwargs)
            self.generator.gradient_checkpointing_enable(**kwargs)

    return ElectraPair


_PAIR = None


def electra_pair_class():
    """The ElectraPair class (made on first use, so importing this module needs no torch)."""
    global _PAIR
    if _PAIR is None:
        _PAIR = _pair_class()
    return _PAIR


def __getattr__(name: str):
    # `from protrans_cli.models.electra import ElectraPair`, as docs/models.md shows it (made then)
    if name == "ElectraPair":
        return electra_pair_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ElectraFamily(Family):
    name = "electra"
    # (the blocks a device map places whole, where ElectraModel names none: not a bare parameter,
    # which load_checked keeps whole for every family; models/base.py). ElectraEmbeddings adds its
    # word, position and token-type tables in its own forward: split, they could sit on different
    # GPUs (BertModel names BertEmbeddings for this). The projection to the hidden size
    # (embeddings_project, where the sizes differ) is a Linear of its own, its input moved by its hook.
    no_split_modules = ("ElectraEmbeddings", "ElectraLayer")
    tokenizer_kwargs = {"do_lower_case": False}
    model_types = ("electra",)
    # finetune's LoRA adapters: query, key, value and output projections of every layer (the discriminator)
    lora_targets = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    objective = "electra"
    masked_lm_class = "ElectraForMaskedLM"
    packable = True
    presets = PRESETS
    description = "ELECTRA generator + discriminator; embeddings from the discriminator (ProtElectra)"

    def build_tokenizer(self):
        return residue_tokenizer(
            BERT_SPECIALS + list(RESIDUES), unk_token="[UNK]",
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    def build_config(self, preset="tiny", tokenizer=None, generator_size=DEFAULT_GENERATOR_SIZE, **overrides):
        import math

        # (a size of 0 or below built a generator 1 wide without a word; NaN failed in round())
        if (isinstance(generator_size, bool) or not isinstance(generator_size, (int, float))
                or not (math.isfinite(generator_size) and generator_size > 0)):
            raise ModelError(f"invalid electra config: generator_size must be a number above 0 (the generator's "
                             "share of the discriminator's hidden size, heads and intermediate size; "
                             f"{DEFAULT_GENERATOR_SIZE} by default), got {generator_size!r}")
        config = super().build_config(preset, tokenizer, **overrides)
        config.generator_size = float(generator_size)
        return config

    @property
    def config_class(self):
        from transformers import ElectraConfig

        return ElectraConfig

    @property
    def encoder_class(self):
        from transformers import ElectraModel

        return ElectraModel

    def pretraining_model(self, config):
        return electra_pair_class().from_config(config)

    def pretraining_model_from(self, model):
        """The pair of `model`'s two configs (a generator loaded by --init-from keeps its own)."""
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        return electra_pair_class()(ElectraForPreTraining(model.discriminator.config),
                                    ElectraForMaskedLM(model.generator.config))

    def pretraining_model_like(self, directory, config, **hub):
        """The pair as saved in `directory` (a checkpoint): the generator's config is the one saved
        there, not one derived again from the discriminator's (a generator of another size, or
        one loaded by --init-from with its own settings, came back otherwise)."""
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        return electra_pair_class()(ElectraForPreTraining(config),
                                    ElectraForMaskedLM(saved_generator_config(directory, config, **hub)))

    def save_pretrained(self, model, tokenizer, directory) -> None:
        """The pair's layout, with the tokenizer in `generator/` as well: that folder is a
        complete HF model directory of its own (AutoTokenizer and AutoModelForMaskedLM load it)."""
        super().save_pretrained(model, tokenizer, directory)
        if hasattr(model, "generator"):
            save_tokenizer(tokenizer, Path(directory) / "generator")

    def load_masked_lm(self, name_or_path, *, dtype=None, **hub_kwargs):
        """The generator (the discriminator has no masked-LM head): the model itself when it is a
        generator (Rostlab/prot_electra_generator_bfd, a run's `generator/` folder), else the
        `generator/` folder of a `protrans train` run directory."""
        from transformers import AutoConfig

        hub = {k: v for k, v in hub_kwargs.items() if k in ("revision", "local_files_only")}
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=False, **hub)
        if self.masked_lm_class in (getattr(config, "architectures", None) or []):
            return super().load_masked_lm(name_or_path, dtype=dtype, **hub_kwargs)
        generator = Path(str(name_or_path)) / "generator"
        if (generator / "config.json").is_file():
            return super().load_masked_lm(generator, dtype=dtype, **hub_kwargs)
        raise ModelError(f"{name_or_path}: an ELECTRA discriminator, which has no masked-LM head; score with its "
                         "generator (Rostlab/prot_electra_generator_bfd for ProtElectra; a protrans train run keeps "
                         "it in RUN/generator)")

    def load_pretraining_model(self, directory, *, config=None, **kwargs):
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        refuse_missing_layers(ElectraForPreTraining, directory)
        refuse_missing_layers(ElectraForMaskedLM, Path(directory) / "generator")
        return electra_pair_class().from_pretrained(directory, config=config, **kwargs)


FAMILY = ElectraFamily()
