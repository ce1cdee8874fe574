#!/usr/bin/env python3
"""Rebuild tests/data/esmc_reference/: outputs of EvolutionaryScale's own ESM C layers.

protrans implements ESM C itself (protrans_cli/models/esmc.py) and converts the published
`esmc_*_2024_12_v0.pth` with `protrans import-model`. This script builds a tiny ESM C with random
weights from the `esm` package's layers, exactly as `esm.models.esmc.ESMC.__init__` builds it
(nn.Embedding(64, d), TransformerStack(d, heads, None, layers, n_layers_geom=0),
RegressionHead(d, 64)), and writes what tests/test_esmc.py compares protrans with:

  esmc_tiny.pth          the state dict, under ESMC's parameter names (what the hub's .pth holds),
                         in float16 to keep the fixture small (the reference runs in float32 on
                         those same float16 values)
  reference.safetensors  for each protein k: ids_k (its tokens by esm's EsmSequenceTokenizer),
                         embeddings_k (L+2, D: the final norm's output, ESMC's `embeddings`),
                         logits_k (L+2, 64: the sequence head's), hiddens_k (layers, L+2, D: ESMC's
                         `hidden_states`, the blocks' outputs before the norm); and for the
                         padded batch of all of them, batch_ids, batch_embeddings, batch_logits
  proteins.json          the proteins (as protrans reads them: a lower-case one is embedded as
                         its upper-case letters; esm's tokenizer would make `<unk>` of each, so
                         the reference is computed on the upper-case form)

ESMC.forward itself cannot be imported without the `esm` SDK's dependencies (httpx ...), so its
non-flash path is written out here: sequence_id = tokens != pad, x = embed(tokens),
transformer(x, sequence_id=sequence_id), sequence_head(x).

    pip install --target /tmp/esm3 esm==3.2.1   # and its layers' dependencies (einops ...)
    PYTHONPATH=$PWD:/tmp/esm3 python scripts/make_esmc_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "esmc_reference"
D_MODEL, HEADS, LAYERS = 128, 2, 2  # (heads of 64, as the published models: import-model reads 64)
PROTEINS = {"plain": "MKTAYIAKQRQISFVKSHFSRQ", "with_x": "MKXAYIXKQR", "rare": "MUZOBKT",
            "lower": "mktayiakqr", "one": "M"}


class TinyESMC(nn.Module):
    """ESMC's modules under ESMC's names (its __init__ without the tokenizer and flash attention)."""

    def __init__(self):
        super().__init__()
        from esm.layers.regression_head import RegressionHead
        from esm.layers.transformer_stack import TransformerStack

        self.embed = nn.Embedding(64, D_MODEL)
        self.transformer = TransformerStack(D_MODEL, HEADS, None, LAYERS, n_layers_geom=0, use_flash_attn=False)
        self.sequence_head = RegressionHead(D_MODEL, 64)

    def forward(self, tokens, pad_id):
        sequence_id = tokens != pad_id
        x, _, hiddens = self.transformer(self.embed(tokens), sequence_id=sequence_id)
        return x, self.sequence_head(x), torch.stack(hiddens, dim=0)


def main() -> None:
    from esm.tokenization.sequence_tokenizer import EsmSequenceTokenizer
    from safetensors.torch import save_file

    torch.manual_seed(20241204)
    model = TinyESMC().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # (the LayerNorms start at 1 and 0: give them values of their own)
                p.add_(torch.randn_like(p) * 0.1)
            p.copy_(p.half().float())
    state = {k: v.half() for k, v in model.state_dict().items()}
    tokenizer = EsmSequenceTokenizer()
    pad = tokenizer.pad_token_id
    out = {}
    rows = []
    with torch.no_grad():
        for key, protein in PROTEINS.items():
            ids = torch.tensor([tokenizer.encode(protein.upper(), add_special_tokens=True)])
            embeddings, logits, hiddens = model(ids, pad)
            out.update({f"ids_{key}": ids[0], f"embeddings_{key}": embeddings[0], f"logits_{key}": logits[0],
                        f"hiddens_{key}": hiddens[:, 0]})
            rows.append(ids[0])
        batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)
        embeddings, logits, _ = model(batch, pad)
        out.update(batch_ids=batch, batch_embeddings=embeddings, batch_logits=logits)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(state, OUT / "esmc_tiny.pth")
    save_file({k: v.contiguous() for k, v in out.items()}, OUT / "reference.safetensors")
    (OUT / "proteins.json").write_text(json.dumps(PROTEINS, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
