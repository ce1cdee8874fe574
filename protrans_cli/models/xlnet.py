"""The XLNet family (ProtXLNet): permutation LM; left padding, `residues <sep> <cls>`.

XLNet puts its two special tokens at the end and pads on the left, so the last position is
always `<cls>`. Its vocabulary has no U/Z/O/B: rare residues become `<unk>` (one token each,
still one row per residue). ProtXLNet: 30 layers, d_model 1024, 16 heads, d_inner 4096
(~409M parameters).
"""

from __future__ import annotations

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import STANDARD_AND_X, residue_tokenizer

XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]

PRESETS = {
    "tiny": dict(d_model=32, n_layer=2, n_head=4, d_inner=64),
    "small": dict(d_model=256, n_layer=4, n_head=4, d_inner=1024),
    "base": dict(d_model=768, n_layer=12, n_head=12, d_inner=3072),
    # ProtXLNet
    "prot_xlnet": dict(d_model=1024, n_layer=30, n_head=16, d_inner=4096, dropout=0.0),
}


class XLNetFamily(Family):
    name = "xlnet"
    model_types = ("xlnet",)
    objective = "plm"
    # `protrans variants`: a site hidden from every position (perm_mask), predicted by the query
    # stream at it from all the others, as the permutation LM predicts its targets
    masked_lm_class = "XLNetLMHeadModel"
    presets = PRESETS
    rare_to = None  # not in the vocabulary: the tokenizer makes them <unk>
    padding_side = "left"
    description = "XLNet permutation LM (ProtXLNet)"

    def shape_problem(self, config):
        if config.d_model % 2:  # (transformers' relative positional encoding: a sine and a cosine per frequency)
            return f"d_model {config.d_model} is odd: the sinusoidal relative positions need an even one"
        return None

    def build_tokenizer(self):
        return residue_tokenizer(
            XLNET_SPECIALS + list(STANDARD_AND_X), unk_token="<unk>",
            # XLNet's segment id of <cls> is 2
            single="$A:0 <sep>:0 <cls>:2", pair="$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2",
            padding_side="left", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
            cls_token="<cls>", sep_token="<sep>", mask_token="<mask>",
            additional_special_tokens=["<eod>", "<eop>"])

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}

    @property
    def config_class(self):
        from transformers import XLNetConfig

        return XLNetConfig

    @property
    def encoder_class(self):
        from transformers import XLNetModel

        return XLNetModel

    def pretraining_model(self, config):
        from transformers import XLNetLMHeadModel

        return XLNetLMHeadModel(config)

    def save_pretrained(self, model, tokenizer, directory) -> None:
        """The run's files, with a generation_config.json whose eos is `<sep>`: a protein ends
        with `residues <sep> <cls>`, and `protrans generate` stops at `<sep>`; the config's eos,
        `</s>` (which transformers copies into the generation config), is never written, so
        plain `generate()` did not stop where protrans does. config.json keeps `</s>` as eos."""
        generation = getattr(model, "generation_config", None)
        if generation is not None and tokenizer.sep_token_id is not None:
            generation.eos_token_id = tokenizer.sep_token_id
        super().save_pretrained(model, tokenizer, directory)


FAMILY = XLNetFamily()
