"""The T5 family (ProtT5-XL, ProtT5-XXL): encoder-decoder; embed uses the encoder alone.

Input layout: spaced residues (U/Z/O/B -> X) followed by one `</s>`; no leading special
token. The vocabulary mirrors ProtT5's 128 ids: `<pad>` 0, `</s>` 1, `<unk>` 2, 25 residues,
and the 100 `<extra_id_*>` sentinels used by span corruption.
ProtT5-XL: 24 + 24 layers, d_model 1024, d_ff 16384, 32 heads of d_kv 128 (~3B parameters,
1.2B in the encoder); ProtT5-XXL: d_ff 65536, 128 heads (~11B, 4.8B in the encoder).
"""

from __future__ import annotations

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
NUM_SENTINELS = 100
SENTINELS = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]

PRESETS = {
    "tiny": dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2),
    "small": dict(d_model=256, d_ff=1024, d_kv=32, num_heads=8, num_layers=4, num_decoder_layers=4),
    "base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
    # ProtT5-XL-UniRef50 / ProtT5-XL-BFD (original T5: ReLU feed-forward, not gated)
    "prot_t5_xl": dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24,
                       num_decoder_layers=24, dropout_rate=0.1),
    # ProtT5-XXL-UniRef50 / ProtT5-XXL-BFD
    "prot_t5_xxl": dict(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24,
                        num_decoder_layers=24, dropout_rate=0.1),
    # Ankh base and large (Elnaggar et al. 2023): 48 encoder + 24 decoder layers, gated-GELU
    # feed-forward, relative positions in 64 buckets up to 128 apart; 740M and 1.9B parameters
    "ankh_base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=48, num_decoder_layers=24,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=64,
                      relative_attention_max_distance=128, tie_word_embeddings=False),
    "ankh_large": dict(d_model=1536, d_ff=3840, d_kv=64, num_heads=16, num_layers=48, num_decoder_layers=24,
                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=64,
                       relative_attention_max_distance=128, tie_word_embeddings=False),
}


class T5Family(Family):
    name = "t5"
    model_types = ("t5",)
    objective = "t5"
    presets = PRESETS
    description = "T5 encoder-decoder; embeddings from the encoder (ProtT5)"

    def build_tokenizer(self):
        return residue_tokenizer(
            T5_SPECIALS + list(RESIDUES) + SENTINELS, unk_token="<unk>",
            single="$A </s>", pair="$A </s> $B:1 </s>:1",
            pad_token="<pad>", eos_token="</s>", additional_special_tokens=SENTINELS)

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                # T5 starts decoding from the pad token
                "decoder_start_token_id": tokenizer.pad_token_id}

    @property
    def config_class(self):
        from transformers import T5Config

        return T5Config

    @property
    def encoder_class(self):
        from transformers import T5EncoderModel

        return T5EncoderModel

    def pretraining_model(self, config):
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration(config)


FAMILY = T5Family()
