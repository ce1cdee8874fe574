"""The RoBERTa family: BERT without next-sentence prediction, `<s> residues </s>`.

RoBERTa's recipe (no NSP, dynamic masking, large batches) lives in the training objective and
config; the model is RobertaForMaskedLM. Its positions start after the padding index, so
`max_position_embeddings` is the longest sequence + 2.
"""

from __future__ import annotations

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=2050),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=2050),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=40002),
    # ProtBert's size trained with RoBERTa's recipe
    "large": dict(hidden_size=1024, num_hidden_layers=30, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=40002),
}


class RobertaFamily(Family):
    name = "roberta"
    model_types = ("roberta",)
    # finetune's LoRA adapters: query, key, value and output projections of every layer
    lora_targets = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    objective = "mlm"
    masked_lm_class = "RobertaForMaskedLM"
    packable = True
    presets = PRESETS
    description = "RoBERTa-style BERT (no NSP, dynamic masking)"

    def build_tokenizer(self):
        return residue_tokenizer(
            ["<s>", "<pad>", "</s>", "<unk>"] + list(RESIDUES) + ["<mask>"], unk_token="<unk>",
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            pad_token="<pad>", bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
            mask_token="<mask>")

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "type_vocab_size": 1}

    def packed_position_offset(self, config):
        return config.pad_token_id + 1  # RoBERTa numbers positions after the padding index

    @property
    def config_class(self):
        from transformers import RobertaConfig

        return RobertaConfig

    @property
    def encoder_class(self):
        from transformers import RobertaModel

        return RobertaModel

    def pretraining_model(self, config):
        from transformers import RobertaForMaskedLM

        return RobertaForMaskedLM(config)


FAMILY = RobertaFamily()
