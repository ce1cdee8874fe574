"""The BERT family (ProtBert, ProtBert-BFD): masked-LM encoder, `[CLS] residues [SEP]`.

ProtBert (Elnaggar et al. 2021): 30 layers, hidden 1024, 16 heads, intermediate 4096, 40,000
positions, a 30-token vocabulary (5 special tokens + 25 residue letters); ~420M parameters.
Residues are spaced and U/Z/O/B become X, as in ProtTrans' own pipeline.
"""

from __future__ import annotations

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=2048),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=40000),
    # ProtBert / ProtBert-BFD
    "prot_bert": dict(hidden_size=1024, num_hidden_layers=30, num_attention_heads=16,
                      intermediate_size=4096, max_position_embeddings=40000,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}


class BertFamily(Family):
    name = "bert"
    tokenizer_kwargs = {"do_lower_case": False}
    model_types = ("bert",)
    # finetune's LoRA adapters: query, key, value and output projections of every layer
    lora_targets = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    objective = "mlm"
    masked_lm_class = "BertForMaskedLM"
    packable = True
    presets = PRESETS
    description = "BERT masked-LM encoder (ProtBert)"

    def build_tokenizer(self):
        return residue_tokenizer(
            BERT_SPECIALS + list(RESIDUES), unk_token="[UNK]",
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    @property
    def config_class(self):
        from transformers import BertConfig

        return BertConfig

    @property
    def encoder_class(self):
        from transformers import BertModel

        return BertModel

    def pretraining_model(self, config):
        from transformers import BertForMaskedLM

        return BertForMaskedLM(config)


FAMILY = BertFamily()
