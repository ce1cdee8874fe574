#!/usr/bin/env python3
"""Rebuild tests/data/esm_reference/ (ESM-2) or esm1b_reference/ (ESM-1b): embeddings as fair-esm's `esm-extract` makes them.

ESM users compare embeddings with those of `esm-extract` (fair-esm's scripts/extract.py), which
runs ESM's own model code, not transformers'. This script builds a tiny ESM-2 in fair-esm
(`esm.model.esm2.ESM2`, random weights, token_dropout as in every published ESM-2), converts it
to a transformers model directory laid out as the published facebook/esm2_* checkpoints are,
and runs esm-extract's extraction on a small FASTA, writing what
tests/test_embed_esm_reference.py compares `protrans embed` with. `--arch esm1b` builds an
ESM-1b instead (`esm.model.esm1.ProteinBertModel` with arch roberta_large: a learned position
table of 1,024 positions after the padding index, a layer norm before the first block, token
dropout), laid out as facebook/esm1b_t33_650M_UR50S is; its table holds no protein longer than
1,022 residues, so it has no `long_full_*` keys:

  config.json, model.safetensors   the model as transformers' EsmForMaskedLM (`save_pretrained`)
  vocab.txt, tokenizer_config.json transformers' EsmTokenizer over fair-esm's alphabet (ESM-1b's
                                   33 tokens: U, Z, O, B and X are tokens of their own)
  input.fa                         the proteins (one has lowercase letters, one 1,100 residues)
  reference.safetensors            esm-extract's outputs, keyed by its layer numbers k (0: the
                                   embeddings, 1..N: the blocks, N after `emb_layer_norm_after`):
      rows/<id>/<k>, mean/<id>/<k>  `--include per_tok mean` with its defaults
                                    (`--truncation_seq_length 1022`, `--toks_per_batch 4096`)
      long_truncated_rows/<k>       the 1,100-residue protein at those defaults: rows 0-3 and
      long_truncated_mean/<k>       1018-1021 of its 1,022, and the mean over them
      long_full_rows/<k>            the same protein with `--truncation_seq_length 1100`: rows
      long_full_mean/<k>            0-3 and 1096-1099, and the mean over all 1,100
      contacts/<id>                 `--include contacts`: the (L, L) contact probabilities of
                                    fair-esm's contact head (`return_contacts=True`)
      long_truncated_contacts/first the long protein's at the default truncation: rows 0-3 and
      long_truncated_contacts/last  1018-1021 of its 1,022 x 1,022 map

esm-extract's logic is followed with fair-esm's own pieces: `FastaBatchedDataset.from_file`,
`get_batch_indices(toks_per_batch, extra_toks_per_seq=1)` (the short proteins share one padded
batch), `alphabet.get_batch_converter(truncation_seq_length)`, `model(tokens, repr_layers=...)`
with `--repr_layers -3 -2 -1` mapped to 0..N as the script maps them, and the rows
`1 : min(truncation_seq_length, len(seq)) + 1` of each protein (no BOS/EOS), averaged for `mean`.
esm-extract cannot read lowercase letters (fair-esm's tokenizer raises KeyError), so that protein
is given to it upper-cased, as `protrans embed` reads it.

Parameter names, fair-esm -> transformers (`esm.` prefix of EsmForMaskedLM): embed_tokens ->
embeddings.word_embeddings; layers.N -> encoder.layer.N with self_attn.{q,k,v}_proj ->
attention.self.{query,key,value}, self_attn.out_proj -> attention.output.dense,
self_attn_layer_norm -> attention.LayerNorm, fc1 -> intermediate.dense, fc2 -> output.dense,
final_layer_norm -> LayerNorm; emb_layer_norm_after -> encoder.emb_layer_norm_after;
ESM-1b's embed_positions -> embeddings.position_embeddings, emb_layer_norm_before ->
embeddings.layer_norm;
contact_head -> contact_head; lm_head.weight (tied) -> lm_head.decoder.weight, the rest of
lm_head unchanged; rot_emb.inv_freq is not stored (both compute it). The script checks that the
converted model's hidden states equal fair-esm's before writing anything.

fair-esm 2.0.0 (the PyPI release) needs no dependencies beyond torch:

    pip install --target /tmp/fairesm --no-deps "fair-esm==2.0.0"
    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm
    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm --arch esm1b
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

LAYERS, DIM, HEADS = 2, 8, 2
SEED = 0
TRUNCATION = 1022          # esm-extract's default --truncation_seq_length
TOKS_PER_BATCH = 4096      # esm-extract's default --toks_per_batch
LONG = 1100
LONG_ROWS = (0, 1, 2, 3)   # plus the last four rows kept


def proteins() -> dict[str, str]:
    rng = random.Random(SEED)
    std = "ACDEFGHIKLMNPQRSTVWY"

    def seq(n):
        return "".join(rng.choice(std) for _ in range(n))

    return {
        "rare": seq(8) + "XUZOB" + seq(6) + "BOZUX" + seq(4),   # ESM has a token for each
        "one": "W",
        "lower": seq(4) + seq(5).lower() + seq(3),
        "mixed_5": seq(5),
        "mixed_20": seq(20),
        "mixed_40": seq(40),
        "long": seq(LONG),
    }


def hf_name(name: str) -> str | None:
    """fair-esm ESM2 or ESM-1b parameter name -> transformers EsmForMaskedLM's (None: not stored)."""
    if name == "embed_tokens.weight":
        return "esm.embeddings.word_embeddings.weight"
    if name == "embed_positions.weight":
        return "esm.embeddings.position_embeddings.weight"
    if name.startswith("emb_layer_norm_before."):
        return "esm.embeddings.layer_norm." + name.split(".", 1)[1]
    if name.startswith("emb_layer_norm_after."):
        return "esm.encoder." + name
    if name.startswith("contact_head."):
        return "esm." + name
    if name == "lm_head.weight":
        return "lm_head.decoder.weight"
    if name.startswith("lm_head."):
        return name
    _, n, rest = name.split(".", 2)
    if rest.endswith("rot_emb.inv_freq"):
        return None
    renames = {"self_attn.q_proj.": "attention.self.query.", "self_attn.k_proj.": "attention.self.key.",
               "self_attn.v_proj.": "attention.self.value.", "self_attn.out_proj.": "attention.output.dense.",
               "self_attn_layer_norm.": "attention.LayerNorm.", "fc1.": "intermediate.dense.",
               "fc2.": "output.dense.", "final_layer_norm.": "LayerNorm."}
    for old, new in renames.items():
        if rest.startswith(old):
            return f"esm.encoder.layer.{n}.{new}{rest[len(old):]}"
    raise KeyError(name)


def extract(esm, model, alphabet, fasta: Path, truncation: int, contacts: dict | None = None) -> dict:
    """esm-extract's per_tok and mean outputs: {label: {k: (rows, mean)}}; with `contacts`, its
    `--include contacts` output as well, into that dict: {label: (L, L) contact probabilities}."""
    import torch

    dataset = esm.FastaBatchedDataset.from_file(fasta)
    batches = dataset.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=1)
    converter = alphabet.get_batch_converter(truncation)
    repr_layers = [(i + model.num_layers + 1) % (model.num_layers + 1) for i in (-3, -2, -1)]
    out = {}
    with torch.no_grad():
        for batch in batches:
            labels, strs, tokens = converter([dataset[i] for i in batch])
            reps = model(tokens, repr_layers=repr_layers)["representations"]
            # (a pass of its own: with return_contacts fair-esm computes attention another way, and
            # the hidden states differ in the last bits from those esm-extract writes without it)
            maps = model(tokens, return_contacts=True)["contacts"] if contacts is not None else None
            for i, label in enumerate(labels):
                n = min(truncation, len(strs[i]))
                out[label] = {k: (t[i, 1:n + 1].clone(), t[i, 1:n + 1].mean(0).clone()) for k, t in reps.items()}
                if contacts is not None:  # (as esm-extract: the first n rows and columns of the batch's map)
                    contacts[label] = maps[i, :n, :n].clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fair-esm", required=True, help="directory holding fair-esm (the `esm` package)")
    parser.add_argument("--arch", choices=("esm2", "esm1b"), default="esm2")
    parser.add_argument("-o", "--out", help="default: tests/data/esm_reference (esm2) or esm1b_reference")
    args = parser.parse_args()
    esm1b = args.arch == "esm1b"
    if args.out is None:
        args.out = str(Path(__file__).resolve().parent.parent / "tests" / "data"
                       / ("esm1b_reference" if esm1b else "esm_reference"))
    sys.path.insert(0, args.fair_esm)

    import esm
    import torch
    import transformers
    from esm.version import version as esm_version
    from safetensors.torch import save_file
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    torch.manual_seed(SEED)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    if esm1b:
        hub = argparse.Namespace(arch="roberta_large", layers=LAYERS, embed_dim=DIM, ffn_embed_dim=4 * DIM,
                                 attention_heads=HEADS, max_positions=1024, emb_layer_norm_before=True,
                                 token_dropout=True)
        model = esm.model.esm1.ProteinBertModel(hub, alphabet).eval()
    else:
        model = esm.model.esm2.ESM2(num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS,
                                    alphabet=alphabet, token_dropout=True).eval()
    with torch.no_grad():  # layer norms and biases away from 1 and 0, so every term counts
        for name, p in model.named_parameters():
            if "layer_norm.weight" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias") or name in ("embed_tokens.weight", "embed_positions.weight"):
                p.copy_(0.3 * torch.randn_like(p) if name.endswith("bias") else torch.randn_like(p))

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = EsmConfig(
        vocab_size=len(alphabet), mask_token_id=alphabet.mask_idx, pad_token_id=alphabet.padding_idx,
        hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=4 * DIM,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026, layer_norm_eps=1e-5,
        position_embedding_type="absolute" if esm1b else "rotary",
        emb_layer_norm_before=esm1b, token_dropout=True, architectures=["EsmForMaskedLM"])
    hf = EsmForMaskedLM(config).eval()
    weights = {hf_name(n): t for n, t in model.state_dict().items() if hf_name(n) is not None}
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    allowed = {"esm.embeddings.position_ids"} if esm1b else {"esm.rotary_embeddings.inv_freq"}
    assert not unexpected and set(missing) <= allowed, (missing, unexpected)

    records = proteins()
    with tempfile.TemporaryDirectory() as tmp:
        (out_dir / "input.fa").write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
        upper = Path(tmp) / "upper.fa"  # esm-extract raises KeyError on lowercase letters
        upper.write_text("".join(f">{k}\n{v.upper()}\n" for k, v in records.items()))
        contact_maps: dict = {}
        default = extract(esm, model, alphabet, upper, TRUNCATION, contact_maps)
        full = None if esm1b else extract(esm, model, alphabet, upper, LONG)

        # the converted model gives fair-esm's hidden states (a padded batch of two proteins)
        _, _, tokens = alphabet.get_batch_converter()([("a", records["rare"]), ("b", "MK")])
        with torch.no_grad():
            ref = model(tokens, repr_layers=list(range(LAYERS + 1)))["representations"]
            mask = tokens.ne(alphabet.padding_idx)
            states = hf.esm(tokens, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        for k in range(LAYERS + 1):
            assert ((ref[k] - states[k]).abs() * mask[..., None]).max() < 1e-5, k

    ref = {}
    for label, layers in default.items():
        for k, (rows, mean) in layers.items():
            if label == "long":
                assert rows.shape[0] == TRUNCATION
                ref[f"long_truncated_rows/{k}"] = torch.cat([rows[list(LONG_ROWS)], rows[-len(LONG_ROWS):]])
                ref[f"long_truncated_mean/{k}"] = mean
            else:
                ref[f"rows/{label}/{k}"], ref[f"mean/{label}/{k}"] = rows, mean
    for label, contact in contact_maps.items():
        if label == "long":  # (1,022 x 1,022: its corners and a band of rows)
            ref["long_truncated_contacts/first"] = contact[list(LONG_ROWS)]
            ref["long_truncated_contacts/last"] = contact[-len(LONG_ROWS):]
        else:
            ref[f"contacts/{label}"] = contact
    for k, (rows, mean) in (full["long"].items() if full else ()):
        assert rows.shape[0] == LONG
        ref[f"long_full_rows/{k}"] = torch.cat([rows[list(LONG_ROWS)], rows[-len(LONG_ROWS):]])
        ref[f"long_full_mean/{k}"] = mean

    meta = {"fair_esm": esm_version, "arch": args.arch, "transformers": transformers.__version__, "torch": torch.__version__}
    hf.save_pretrained(out_dir)
    (out_dir / "vocab.txt").write_text("\n".join(alphabet.all_toks) + "\n")
    EsmTokenizer(str(out_dir / "vocab.txt")).save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors", metadata=meta)
    print(f"wrote {out_dir} (fair-esm {esm_version}, transformers {transformers.__version__}, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
