"""The ALBERT family (ProtAlbert): factorised embeddings and one layer shared across depth.

ProtAlbert: 12 (shared) layers, hidden 4096, 64 heads, intermediate 16384, embedding size 128,
40,000 positions (~224M parameters). Input `[CLS] residues [SEP]`, U/Z/O/B -> X. The
pretraining model is AlbertForPreTraining: the MLM head plus the sentence-order head that the
optional sentence-order objective uses (its loss is only computed when asked for).
"""

from __future__ import annotations

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

PRESETS = {
    "tiny": dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=2048),
    "small": dict(embedding_size=128, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, max_position_embeddings=2048),
    "base": dict(embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=40000),
    # ProtAlbert
    "prot_albert": dict(embedding_size=128, hidden_size=4096, num_hidden_layers=12, num_attention_heads=64,
                        intermediate_size=16384, max_position_embeddings=40000,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


class AlbertFamily(Family):
    name = "albert"
    # (the blocks a device map places whole, where AlbertModel names none: not a bare parameter,
    # which load_checked keeps whole for every family; models/base.py). AlbertEmbeddings adds its
    # word, position and token-type tables in its own forward: split, they could sit on different
    # GPUs (BertModel names BertEmbeddings for this). The projection to the hidden size
    # (encoder.embedding_hidden_mapping_in) is a Linear of its own, its input moved by its hook.
    no_split_modules = ("AlbertEmbeddings", "AlbertLayer")
    tokenizer_kwargs = {"do_lower_case": False}
    model_types = ("albert",)
    # finetune's LoRA adapters: query, key, value and output projections (shared across layers)
    lora_targets = ("attention.query", "attention.key", "attention.value", "attention.dense")
    objective = "mlm"
    masked_lm_class = "AlbertForMaskedLM"
    packable = True
    sentence_order = True  # AlbertForPreTraining's sentence-order head (train --sop)
    presets = PRESETS
    description = "ALBERT: factorised embeddings, cross-layer sharing (ProtAlbert)"

    def build_tokenizer(self):
        return residue_tokenizer(
            ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"] + list(RESIDUES), unk_token="<unk>",
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            pad_token="<pad>", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}

    @property
    def config_class(self):
        from transformers import AlbertConfig

        return AlbertConfig

    @property
    def encoder_class(self):
        from transformers import AlbertModel

        return AlbertModel

    def pretraining_model(self, config):
        from transformers import AlbertForPreTraining

        return AlbertForPreTraining(config)


FAMILY = AlbertFamily()
