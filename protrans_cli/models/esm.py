"""The ESM family: masked-LM encoders, `<cls> residues <eos>`, unspaced. ESM-2 has rotary
positions; ESM-1b and ESM-1v (Rives et al. 2021, Meier et al. 2021) a learned table of 1,024
positions after the padding index (1,022 residues), ESM-1b also a layer norm before the first block.

The tokenizer is transformers' own EsmTokenizer built from ESM-2's 33-token vocabulary (written
to a temporary vocab.txt), so a model trained here tokenizes exactly as facebook/esm2_*
checkpoints do. U/Z/O/B have their own tokens in ESM's vocabulary and are kept.
Presets are the ESM-2 sizes (Lin et al. 2023): esm2_t6_8M ... esm2_t48_15B, and the ESM-1b and
ESM-1v architecture (esm1b_t33_650M, esm1v_t33_650M); `tiny` is an ESM-2.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from protrans_cli.models.base import Family, load_checked

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]


_ROTARY = dict(position_embedding_type="rotary", emb_layer_norm_before=False)


def _esm2(layers, hidden, heads):
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=4 * hidden, max_position_embeddings=1026, **_ROTARY)


def _esm1(layer_norm_before: bool):
    # As the published configs: facebook/esm1b_t33_650M_UR50S has the layer norm before the first
    # block, facebook/esm1v_t33_650M_UR90S_1..5 do not (fair-esm's emb_layer_norm_before).
    return dict(num_hidden_layers=33, hidden_size=1280, num_attention_heads=20, intermediate_size=5120,
                max_position_embeddings=1026, position_embedding_type="absolute",
                emb_layer_norm_before=layer_norm_before)


PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=1026, **_ROTARY),
    "esm2_t6_8M": _esm2(6, 320, 20),
    "esm2_t12_35M": _esm2(12, 480, 20),
    "esm2_t30_150M": _esm2(30, 640, 20),
    "esm2_t33_650M": _esm2(33, 1280, 20),
    "esm2_t36_3B": _esm2(36, 2560, 40),
    "esm2_t48_15B": _esm2(48, 5120, 40),
    "esm1b_t33_650M": _esm1(True),
    "esm1v_t33_650M": _esm1(False),
}


class EsmFamily(Family):
    name = "esm"
    model_types = ("esm",)
    # finetune's LoRA adapters: query, key and value of every layer
    lora_targets = ("attention.self.query", "attention.self.key", "attention.self.value")
    objective = "mlm"
    masked_lm_class = "EsmForMaskedLM"
    # (fair-esm's bos token; fair-esm's own example of a per-sequence vector averages the residue rows)
    cls_not_trained = ("ESM is pretrained by masked-LM alone, so its <cls> (esm-extract's bos) was never trained as "
                       "a summary of the protein")
    packable = True
    presets = PRESETS
    spaced = False
    rare_to = None  # ESM has tokens for U, Z, O and B
    description = "ESM-2 masked-LM encoder with rotary positions (ESM-1b/1v: learned positions)"

    def build_tokenizer(self):
        from transformers import EsmTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(ESM_VOCAB) + "\n", encoding="utf-8")
            tokenizer = EsmTokenizer(str(vocab), model_max_length=1_000_000)
        return tokenizer

    def packed_position_offset(self, config):
        return config.pad_token_id + 1  # as ESM numbers an unpadded protein

    def shape_problem(self, config):
        kind = getattr(config, "position_embedding_type", None)
        if kind not in ("absolute", "rotary"):
            # transformers' ESM knows these two; under any other name (BERT's "relative_key", a
            # typo) it builds a model with no positions at all, which trained without a word
            return (f"position_embedding_type {kind!r}: ESM has 'rotary' (ESM-2) or 'absolute' (ESM-1b/1v, "
                    "a learned table) positions; any other value builds a model without positions")
        heads = config.num_attention_heads
        if (kind == "rotary" and heads
                and config.hidden_size % heads == 0 and (config.hidden_size // heads) % 2):
            # (rotary positions turn pairs of a head's features)
            return (f"the head size {config.hidden_size // heads} (hidden_size {config.hidden_size} / "
                    f"num_attention_heads {heads}) is odd: rotary positions need an even one")
        return None

    def packing_problem(self, config, training):
        if training and getattr(config, "token_dropout", False):
            # ESM rescales the embeddings by the masked share of each row; a packed row is many
            # proteins, so the scale would differ from that of padded batches. (Embedding inputs
            # hold no mask token: the scale is then the same constant for every row.)
            return "ESM's token_dropout is computed per row; add --set token_dropout=false to pack"
        return None

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "mask_token_id": tokenizer.mask_token_id, "token_dropout": True, "layer_norm_eps": 1e-5,
                "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

    @property
    def config_class(self):
        from transformers import EsmConfig

        return EsmConfig

    @property
    def encoder_class(self):
        from transformers import EsmModel

        return EsmModel

    def encoder_model(self, config):
        from transformers import EsmModel

        return EsmModel(config, add_pooling_layer=False)

    def load_encoder(self, name_or_path, *, dtype=None, **hub_kwargs):
        from transformers import EsmModel

        # ESM-2 checkpoints are EsmForMaskedLM: there is no pooler to load.
        return load_checked(EsmModel, name_or_path, dtype=dtype, add_pooling_layer=False, **hub_kwargs)

    def pretraining_model(self, config):
        from transformers import EsmForMaskedLM

        return EsmForMaskedLM(config)


FAMILY = EsmFamily()
