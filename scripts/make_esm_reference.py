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
      variants/masked/<id>          for mixed_40 and rare: fair-esm's masked-LM log-probabilities
                                    as its examples/variant-prediction/predict.py takes them
                                    (masked marginals): (L, 33), row i the log_softmax of
                                    `model(tokens)["logits"][0, i + 1]` for the protein alone
                                    (`<cls> ... <eos>`, a batch of one) with token i + 1 (residue
                                    i) replaced by `alphabet.mask_idx`, one pass per residue;
                                    columns in `alphabet.all_toks`' order (that of vocab.txt)
      variants/unmasked/<id>        the same from one pass over the unmasked protein (rows 1..L),
                                    for wild-type marginals (pseudo-log-likelihoods take the
                                    wild-type entries of the masked rows)
      variants/masked/mixed_40_double  as variants/masked/ for a double mutant of mixed_40
                                    (`double_mutant()`: residue 5 the first of "AC", residue 30
                                    the first of "WY" that is not the wild type's)
    and in its metadata `variants_double_mutant` (that mutant in ProteinGym's form, e.g.
    "D5A:G30W") and `variants_vocab` (alphabet.all_toks joined by spaces), besides fair_esm,
    arch, transformers and torch.

esm-extract's logic is followed with fair-esm's own pieces: `FastaBatchedDataset.from_file`,
`get_batch_indices(toks_per_batch, extra_toks_per_seq=1)` (the short proteins share one padded
batch), `alphabet.get_batch_converter(truncation_seq_length)`, `model(tokens, repr_layers=...)`
with `--repr_layers -3 -2 -1` mapped to 0..N as the script maps them, and the rows
`1 : min(truncation_seq_length, len(seq)) + 1` of each protein (no BOS/EOS), averaged for `mean`.
esm-extract cannot read lowercase letters (fair-esm's tokenizer raises KeyError), so that protein
is given to it upper-cased, as `protrans embed` reads it.

The conversion is `protrans import-model`'s (protrans_cli/models/fair_esm.py: `hf_name` maps the
parameter names, `transformers_config` the architecture). The script checks that the converted
model's hidden states equal fair-esm's before writing anything.

fair-esm 2.0.0 (the PyPI release) needs no dependencies beyond torch:

    pip install --target /tmp/fairesm --no-deps "fair-esm==2.0.0"
    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm
    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm --arch esm1b

`--add-variants` rebuilds none of the files but adds the `variants/*` keys to an existing
directory's reference.safetensors: it builds the seeded fair-esm model, checks that its weights
equal the directory's model.safetensors (else it loads those back into fair-esm's model, the
reverse of `hf_name`), checks that transformers' model gives fair-esm's logits, computes the
`variants/*` keys and rewrites reference.safetensors with its tensors and metadata as they were
plus the new keys and metadata (a rebuild on another machine would change the other tensors in
their last bits):

    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm --add-variants
    python scripts/make_esm_reference.py --fair-esm /tmp/fairesm --arch esm1b --add-variants
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from protrans_cli.models.fair_esm import ESM1B, ESM2, Architecture, hf_name, to_transformers, write_tokenizer

LAYERS, DIM, HEADS = 2, 8, 2
SEED = 0
TRUNCATION = 1022          # esm-extract's default --truncation_seq_length
TOKS_PER_BATCH = 4096      # esm-extract's default --toks_per_batch
LONG = 1100
LONG_ROWS = (0, 1, 2, 3)   # plus the last four rows kept
VARIANT_PROTEINS = ("mixed_40", "rare")
DOUBLE_OF = "mixed_40"
DOUBLE_SITES = ((5, "AC"), (30, "WY"))   # 1-based residue, the letters tried in turn


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


def double_mutant(wild_type: str, sites=DOUBLE_SITES) -> str:
    """The double mutant's ProteinGym string ("D5A:G30W": wild-type letter, 1-based position,
    mutant letter, ':' between): at each site the first of its letters that differs from the wild type's."""
    return ":".join(f"{wild_type[pos - 1]}{pos}{next(c for c in letters if c != wild_type[pos - 1])}"
                    for pos, letters in sites)


def mutate(wild_type: str, mutant: str) -> str:
    """`wild_type` with a ProteinGym mutant string's substitutions applied (their wild-type letters checked)."""
    seq = list(wild_type)
    for sub in mutant.split(":"):
        wt, pos, mt = sub[0], int(sub[1:-1]), sub[-1]
        assert seq[pos - 1] == wt, (sub, seq[pos - 1])
        seq[pos - 1] = mt
    return "".join(seq)


def variant_logprobs(model, alphabet, seq: str):
    """fair-esm's masked-LM log-probabilities of `seq` alone (a batch of one, `<cls> ... <eos>`):
    (masked, unmasked), each (L, len(alphabet)); masked's row i from a pass with residue i masked
    (as predict.py's masked marginals), unmasked's rows from one pass over the protein."""
    import torch

    _, _, tokens = alphabet.get_batch_converter()([("p", seq)])
    assert tokens.shape == (1, len(seq) + 2)
    with torch.no_grad():
        unmasked = torch.log_softmax(model(tokens)["logits"], dim=-1)[0, 1:len(seq) + 1].clone()
        rows = []
        for i in range(len(seq)):
            masked = tokens.clone()
            masked[0, i + 1] = alphabet.mask_idx
            rows.append(torch.log_softmax(model(masked)["logits"], dim=-1)[0, i + 1].clone())
    return torch.stack(rows), unmasked


def variants(model, alphabet, records: dict) -> tuple[dict, dict]:
    """The `variants/*` keys of reference.safetensors and their metadata."""
    ref = {}
    for label in VARIANT_PROTEINS:
        ref[f"variants/masked/{label}"], ref[f"variants/unmasked/{label}"] = variant_logprobs(
            model, alphabet, records[label])
    mutant = double_mutant(records[DOUBLE_OF])
    double = mutate(records[DOUBLE_OF], mutant)
    ref[f"variants/masked/{DOUBLE_OF}_double"], _ = variant_logprobs(model, alphabet, double)
    assert all(t.shape[1] == len(alphabet) and t.dtype.is_floating_point for t in ref.values())
    return ({k: v.float().contiguous() for k, v in ref.items()},
            {"variants_double_mutant": mutant, "variants_vocab": " ".join(alphabet.all_toks)})


def build(esm, alphabet, esm1b: bool):
    """The seeded tiny fair-esm model (ESM-2, or ESM-1b with `esm1b`)."""
    import torch

    torch.manual_seed(SEED)
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
    return model


def check_converted(model, hf, alphabet, records: dict) -> None:
    """The converted model gives fair-esm's hidden states and logits (a padded batch of two proteins)."""
    import torch

    _, _, tokens = alphabet.get_batch_converter()([("a", records["rare"]), ("b", "MK")])
    with torch.no_grad():
        out = model(tokens, repr_layers=list(range(LAYERS + 1)))
        mask = tokens.ne(alphabet.padding_idx)
        got = hf(tokens, attention_mask=mask.long(), output_hidden_states=True)
    for k in range(LAYERS + 1):
        assert ((out["representations"][k] - got.hidden_states[k]).abs() * mask[..., None]).max() < 1e-5, k
    assert ((out["logits"] - got.logits).abs() * mask[..., None]).max() < 1e-5


def add_variants(esm, alphabet, esm1b: bool, out_dir: Path) -> None:
    """--add-variants: the `variants/*` keys added to out_dir's reference.safetensors, the rest kept."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import EsmForMaskedLM

    model = build(esm, alphabet, esm1b)
    hf = EsmForMaskedLM.from_pretrained(out_dir).eval()
    stored = hf.state_dict()
    names = {n: hf_name(n) for n in model.state_dict() if hf_name(n) is not None}
    same = all(torch.equal(model.state_dict()[n], stored[h]) for n, h in names.items())
    print(f"{out_dir.name}: the seeded fair-esm weights {'equal' if same else 'differ from'} model.safetensors'")
    if not same:  # (the directory's weights back into fair-esm's model)
        missing, unexpected = model.load_state_dict({n: stored[h] for n, h in names.items()}, strict=False)
        assert not unexpected and all(hf_name(n) is None for n in missing), (missing, unexpected)
        assert all(torch.equal(model.state_dict()[n], stored[h]) for n, h in names.items())
    records = dict(esm.FastaBatchedDataset.from_file(out_dir / "input.fa"))
    assert records == proteins(), "input.fa is not proteins()'"
    check_converted(model, hf, alphabet, records)

    path = out_dir / "reference.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        ref = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("variants/")}
    new, new_meta = variants(model, alphabet, records)
    save_file({**ref, **new}, path, metadata={**meta, **new_meta})
    print(f"added {', '.join(new)} to {path} ({new_meta})")


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
    parser.add_argument("--add-variants", action="store_true",
                        help="only add the variants/* keys to the directory's reference.safetensors")
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

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    if args.add_variants:
        add_variants(esm, alphabet, esm1b, Path(args.out))
        return
    model = build(esm, alphabet, esm1b)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # (the conversion `protrans import-model` makes of fair-esm's files: protrans_cli/models/fair_esm.py)
    arch = Architecture(kind=ESM1B if esm1b else ESM2, layers=LAYERS, dim=DIM, heads=HEADS, ffn=4 * DIM,
                        token_dropout=True, max_positions=1026, emb_layer_norm_before=esm1b)
    hf = to_transformers(model.state_dict(), arch)

    records = proteins()
    with tempfile.TemporaryDirectory() as tmp:
        (out_dir / "input.fa").write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
        upper = Path(tmp) / "upper.fa"  # esm-extract raises KeyError on lowercase letters
        upper.write_text("".join(f">{k}\n{v.upper()}\n" for k, v in records.items()))
        contact_maps: dict = {}
        default = extract(esm, model, alphabet, upper, TRUNCATION, contact_maps)
        full = None if esm1b else extract(esm, model, alphabet, upper, LONG)

        check_converted(model, hf, alphabet, records)

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

    variant_ref, variant_meta = variants(model, alphabet, records)
    ref.update(variant_ref)
    meta = {"fair_esm": esm_version, "arch": args.arch, "transformers": transformers.__version__, "torch": torch.__version__,
            **variant_meta}
    hf.save_pretrained(out_dir)
    write_tokenizer(out_dir)
    assert (out_dir / "vocab.txt").read_text().split() == alphabet.all_toks
    save_file({k: v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors", metadata=meta)
    print(f"wrote {out_dir} (fair-esm {esm_version}, transformers {transformers.__version__}, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
