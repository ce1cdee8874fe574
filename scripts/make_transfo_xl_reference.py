#!/usr/bin/env python3
"""Rebuild tests/data/transfo_xl_reference/: Transformer-XL outputs of transformers 4.x.

transformers 5 removed Transformer-XL, so protrans implements it (protrans_cli/models/transfo_xl.py).
This script runs the last Hugging Face implementation, `TransfoXLLMHeadModel` of transformers 4.x
(tested with 4.44.2), on a tiny model with random weights and writes what
tests/test_models_transfo_xl.py compares protrans's model with:

  config.json            protrans TransfoXLConfig arguments of the tiny model
  model.safetensors      its weights under protrans's parameter names (lm_head.weight is tied to
                         transformer.word_emb.weight and not stored)
  reference.safetensors  ids_{k} (B, T_k) of three consecutive segments; for each, hidden_{k} (the
                         last hidden state), logprobs_{k} (log-softmax of the LM head) and
                         loss_{k} (the model's shifted next-token loss with labels = ids_{k});
                         mems_{l} (B, mem_len, D) per layer after the last segment

The memory runs over the three segments (the second is longer than mem_len, so memory is cut).
The model is built in transformers 4.x with the options protrans implements: no adaptive
softmax (cutoffs=[], div_val=1, d_embed=d_model), post-LayerNorm (pre_lnorm=False),
same_length=False, attn_type=0, untie_r=True, tied embeddings, clamp_len below the longest
distance, n_head * d_head != d_model. Mapping to protrans's names: word_emb.emb_layers.0 ->
word_emb, layers.N.dec_attn -> layers.N.attn, pos_ff.CoreNet -> ff.net, pos_ff.layer_norm ->
ff.layer_norm, crit.out_layers.0.weight -> lm_head.weight (its bias, which protrans's head does
not have, is set to zero). The first segment is given an empty memory (0 tokens per layer) as
the original Transformer-XL code starts; transformers 4.x given mems=None instead starts from
mem_len zero vectors, which protrans does not do.

The two transformers versions cannot share a process, so this script never imports protrans;
install transformers 4.x in its own directory and name it:

    pip install --target /tmp/tf4 --no-deps "transformers==4.44.2" "tokenizers==0.19.1" \\
        "huggingface_hub==0.24.7"
    python scripts/make_transfo_xl_reference.py --transformers4 /tmp/tf4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG = dict(vocab_size=16, d_model=8, n_layer=3, n_head=2, d_head=3, d_inner=12, mem_len=5,
              clamp_len=4, dropout=0.1, dropatt=0.1, layer_norm_epsilon=1e-6, pad_token_id=0)
SEGMENTS = (5, 6, 3)   # tokens per segment; batch of 2
SEED = 0


def protrans_name(name: str) -> str | None:
    """transformers 4.x parameter name -> protrans's (None: not stored)."""
    if name == "transformer.word_emb.emb_layers.0.weight":
        return "transformer.word_emb.weight"
    if name.startswith("crit."):
        return None  # the tied output layer; its bias is zero
    return (name.replace(".dec_attn.", ".attn.").replace(".pos_ff.CoreNet.", ".ff.net.")
            .replace(".pos_ff.layer_norm.", ".ff.layer_norm."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transformers4", required=True, help="directory holding transformers 4.x")
    parser.add_argument("-o", "--out", default=str(Path(__file__).resolve().parent.parent
                                                   / "tests" / "data" / "transfo_xl_reference"))
    args = parser.parse_args()
    sys.path.insert(0, args.transformers4)

    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers.models.deprecated.transfo_xl.configuration_transfo_xl import TransfoXLConfig
    from transformers.models.deprecated.transfo_xl.modeling_transfo_xl import TransfoXLLMHeadModel

    if not transformers.__version__.startswith("4."):
        sys.exit(f"{args.transformers4} holds transformers {transformers.__version__}, not 4.x")
    # transformers 4.4x calls Tensor.type_as(dtype=...), which recent torch refuses; it means .to(dtype)
    type_as = torch.Tensor.type_as
    torch.Tensor.type_as = lambda self, other=None, dtype=None: (
        self.to(dtype) if other is None else type_as(self, other))

    c = CONFIG
    config = TransfoXLConfig(
        vocab_size=c["vocab_size"], cutoffs=[], d_model=c["d_model"], d_embed=c["d_model"],
        n_head=c["n_head"], d_head=c["d_head"], d_inner=c["d_inner"], div_val=1, pre_lnorm=False,
        n_layer=c["n_layer"], mem_len=c["mem_len"], clamp_len=c["clamp_len"], same_length=False,
        attn_type=0, adaptive=True, untie_r=True, dropout=c["dropout"], dropatt=c["dropatt"],
        layer_norm_epsilon=c["layer_norm_epsilon"], tie_word_embeddings=True)
    torch.manual_seed(SEED)
    model = TransfoXLLMHeadModel(config).eval()
    with torch.no_grad():  # weights well away from the initialisation, so every term counts
        for name, p in model.named_parameters():
            if name == "crit.out_layers.0.bias":
                p.zero_()
            elif "layer_norm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    assert model.crit.out_layers[0].weight is model.transformer.word_emb.emb_layers[0].weight

    g = torch.Generator().manual_seed(SEED + 1)
    B, D = 2, c["d_model"]
    mems = [torch.zeros(0, B, D) for _ in range(c["n_layer"])]  # empty, as the original code
    ref = {}
    with torch.no_grad():
        for k, T in enumerate(SEGMENTS):
            ids = torch.randint(1, c["vocab_size"], (B, T), generator=g)
            out = model.transformer(input_ids=ids, mems=mems)
            ref[f"ids_{k}"] = ids
            ref[f"hidden_{k}"] = out.last_hidden_state
            ref[f"logprobs_{k}"] = model(input_ids=ids, mems=mems).prediction_scores
            ref[f"loss_{k}"] = model(input_ids=ids, mems=mems, labels=ids.clone()).loss.reshape(())
            mems = out.mems
        for n, m in enumerate(mems):
            ref[f"mems_{n}"] = m.transpose(0, 1)  # (M, B, D) -> protrans's (B, M, D)

    weights = {protrans_name(n): t for n, t in model.state_dict().items()
               if protrans_name(n) is not None and "inv_freq" not in n}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in weights.items()}, out_dir / "model.safetensors", metadata=meta)
    save_file({k: v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors", metadata=meta)
    (out_dir / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
    print(f"wrote {out_dir} (transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
