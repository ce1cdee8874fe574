#!/usr/bin/env python3
"""Rebuild tests/data/tf4_reference/: ProtTrans and ESM-2 embeddings as transformers 4.x made them.

Every published checkpoint protrans embeds with (ProtT5, ProtBert, ProtAlbert, ProtXLNet,
ProtElectra, ESM-2) was saved by transformers 3.x/4.x and its published embeddings come from
4.x's model code; protrans runs them under transformers 5. This script builds, in transformers
4.x, one tiny random model per family laid out as the published checkpoint is
(`save_pretrained(..., safe_serialization=False)`: pytorch_model.bin; the published config
keys; slow-tokenizer files: vocab.txt for BERT/ELECTRA/ESM, a sentencepiece spiece.model for
T5/ALBERT/XLNet), and computes the hidden states as the ProtTrans notebooks do (slow
tokenizers, residues spaced, U/Z/O/B -> X for BERT/ALBERT/ELECTRA/T5, `add_special_tokens=True`,
a padded batch; rows 1..L for [CLS]-first models and ESM, 0..L-1 for T5, the L rows before
XLNet's trailing `<sep> <cls>` on its left-padded rows; 1..L for ProstT5, after its prefix). It writes what
tests/test_embed_tf4_reference.py compares `protrans embed` with:

  <model>/                   a model directory per published layout:
      t5_enc_half            T5EncoderModel in float16 (Rostlab/prot_t5_xl_half_uniref50-enc)
      t5_full                T5ForConditionalGeneration (Rostlab/prot_t5_xl_uniref50), config
                             as 3.x wrote it (architectures T5WithLMHeadModel, n_positions, ...)
      prostt5                T5ForConditionalGeneration whose spiece.model adds 3Di letters (ids
                             28-47 here, ProtT5's letters lower-cased) and the user-defined
                             pieces <AA2fold> <fold2AA> (Rostlab/ProstT5); rows 1..L of
                             "<AA2fold> M K ...", as its model card takes them
      bert                   BertForMaskedLM, no model_type in config.json (Rostlab/prot_bert)
      albert                 AlbertForMaskedLM, spiece.model (Rostlab/prot_albert)
      xlnet                  XLNetLMHeadModel, spiece.model (Rostlab/prot_xlnet)
      electra                ElectraForPreTraining (Rostlab/prot_electra_discriminator_bfd)
      esm                    EsmForMaskedLM, token_dropout, rotary (facebook/esm2_*)
  input.fa                   the proteins (rare residues, a one-residue protein)
  reference.safetensors      rows/<model>/<id>/<k>: the (L, D) rows of hidden state k
                             (0 embeddings, 1 the first block, 2 the last hidden state), float32

The T5 models are computed in float32 (the float16 one loaded with torch_dtype=float32). The
script checks that each protein alone gives the rows of the padded batch before writing.
The sentencepiece models are written piece by piece (unigram; `<pad>` `</s>` `<unk>` then
`▁A`... for T5, ALBERT's `<pad> <unk> [CLS] [SEP] [MASK]`, XLNet's nine specials), one
piece per residue; XLNet's have no U/Z/O/B (they are `<unk>`).

transformers 4.x needs its own environment (it cannot share a process with transformers 5):

    python -m venv /tmp/tf4 && /tmp/tf4/bin/pip install torch "transformers==4.46.3" sentencepiece protobuf
    /tmp/tf4/bin/python scripts/make_tf4_reference.py
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from pathlib import Path

SEED = 0
DIM, LAYERS, HEADS, INNER = 8, 2, 2, 16
RESIDUES = "LAGVESIKRDTPNQFYMHCWXUBZO"  # ProtBert's vocab.txt order
STANDARD_AND_X = "".join(r for r in RESIDUES if r not in "UBZO")
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
             "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
             "<null_1>", "<mask>"]
MODELS = ("t5_enc_half", "t5_full", "prostt5", "bert", "albert", "xlnet", "electra", "esm")


def proteins() -> dict[str, str]:
    rng = random.Random(SEED)
    std = "ACDEFGHIKLMNPQRSTVWY"

    def seq(n):
        return "".join(rng.choice(std) for _ in range(n))

    return {
        "rare": seq(3) + "XAUCZDOEB" + seq(2) + "BKXOXZXU" + seq(2),  # no two of U/Z/O/B adjacent
        "one": "W",
        "lower": seq(4) + seq(5).lower() + seq(3),
        "mixed_9": seq(9),
    }


def spiece_model(pieces, **ids) -> bytes:
    """A unigram sentencepiece model with exactly `pieces` [(piece, type)], ids in list order."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.vocab_size = len(pieces)
    for key in ("unk_id", "bos_id", "eos_id", "pad_id"):
        setattr(m.trainer_spec, key, ids.get(key, -1))
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = True
    m.normalizer_spec.escape_whitespaces = True
    kinds = {"normal": pb.ModelProto.SentencePiece.NORMAL, "unk": pb.ModelProto.SentencePiece.UNKNOWN,
             "control": pb.ModelProto.SentencePiece.CONTROL, "user": pb.ModelProto.SentencePiece.USER_DEFINED}
    for piece, kind in pieces:
        p = m.pieces.add()
        p.piece, p.type, p.score = piece, kinds[kind], (0.0 if kind != "normal" else -1.0)
    return m.SerializeToString()


def randomise(model) -> None:
    """Biases and norm weights away from 0 and 1, so that every term counts."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))


def fix_config(directory: Path, drop=(), **set_) -> None:
    """config.json as the published checkpoints have it (older keys, no transformers_version)."""
    path = directory / "config.json"
    data = json.loads(path.read_text())
    for key in ("transformers_version", *drop):
        data.pop(key, None)
    data.update(set_)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_random(model, directory: Path, half: bool = False, drop=(), **set_) -> None:
    """`model` randomised (see randomise), saved as pytorch_model.bin (in float16 with `half`),
    its config.json then made as the published checkpoints have it (see fix_config)."""
    randomise(model)
    (model.half() if half else model).save_pretrained(directory, safe_serialization=False)
    fix_config(directory, drop=drop, **set_)


def build(name: str, out: Path):
    """Save the published layout of `name` under out/name; return (encoder class, tokenizer class,
    tokenizer kwargs, how rows are taken, rare -> X)."""
    import torch
    import transformers as tf

    torch.manual_seed(SEED)
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    if name.startswith("t5"):
        (d / "spiece.model").write_bytes(spiece_model(
            [("<pad>", "control"), ("</s>", "control"), ("<unk>", "unk")] + [("▁" + r, "normal") for r in RESIDUES],
            pad_id=0, eos_id=1, unk_id=2))
        tok = tf.T5Tokenizer(str(d / "spiece.model"), do_lower_case=False, legacy=True)
        config = tf.T5Config(vocab_size=len(tok), d_model=DIM, d_ff=INNER, d_kv=DIM // HEADS, num_heads=HEADS,
                             num_layers=LAYERS, num_decoder_layers=LAYERS, dropout_rate=0.1,
                             relative_attention_num_buckets=8, relative_attention_max_distance=20,
                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        if name == "t5_full":
            model = tf.T5ForConditionalGeneration(config)
            save_random(model, d, drop=("feed_forward_proj", "dense_act_fn", "is_gated_act", "use_cache"),
                        architectures=["T5WithLMHeadModel"], n_positions=512, output_past=True)
        else:
            model = tf.T5EncoderModel(config)
            save_random(model, d, half=True, architectures=["T5EncoderModel"])
        tok.save_pretrained(d)
        return tf.T5EncoderModel, tf.T5Tokenizer, {"do_lower_case": False}, "t5", True
    if name == "prostt5":
        (d / "spiece.model").write_bytes(spiece_model(
            [("<pad>", "control"), ("</s>", "control"), ("<unk>", "unk")] + [("▁" + r, "normal") for r in RESIDUES]
            + [("▁" + r.lower(), "normal") for r in STANDARD_AND_X if r != "X"]
            + [("<AA2fold>", "user"), ("<fold2AA>", "user")],
            pad_id=0, eos_id=1, unk_id=2))
        # legacy=False: "<AA2fold> M" is the prefix and one residue (legacy's sentencepiece call
        # adds an <unk> for the space before a user-defined piece; the model card's rows 1..L
        # say the published tokenizer does not)
        tok = tf.T5Tokenizer(str(d / "spiece.model"), do_lower_case=False, legacy=False, extra_ids=0)
        config = tf.T5Config(vocab_size=len(tok), d_model=DIM, d_ff=INNER, d_kv=DIM // HEADS, num_heads=HEADS,
                             num_layers=LAYERS, num_decoder_layers=LAYERS, dropout_rate=0.1,
                             relative_attention_num_buckets=8, relative_attention_max_distance=20,
                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        save_random(tf.T5ForConditionalGeneration(config), d, architectures=["T5ForConditionalGeneration"])
        tok.save_pretrained(d)
        return tf.T5EncoderModel, tf.T5Tokenizer, {"do_lower_case": False, "legacy": False}, "prostt5", True
    if name in ("bert", "electra"):
        (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *RESIDUES]) + "\n")
        if name == "bert":
            config = tf.BertConfig(vocab_size=30, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   intermediate_size=INNER, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)
            model = tf.BertForMaskedLM(config)
            save_random(model, d, drop=("model_type",), architectures=["BertForMaskedLM"])
            (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}) + "\n")
            return tf.BertModel, tf.BertTokenizer, {"do_lower_case": False}, "cls", True
        config = tf.ElectraConfig(vocab_size=30, embedding_size=4, hidden_size=DIM, num_hidden_layers=LAYERS,
                                  num_attention_heads=HEADS, intermediate_size=INNER, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = tf.ElectraForPreTraining(config)
        save_random(model, d)
        (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}) + "\n")
        return tf.ElectraModel, tf.ElectraTokenizer, {"do_lower_case": False}, "cls", True
    if name == "albert":
        (d / "spiece.model").write_bytes(spiece_model(
            [("<pad>", "control"), ("<unk>", "unk"), ("[CLS]", "control"), ("[SEP]", "control"), ("[MASK]", "user")]
            + [("▁" + r, "normal") for r in RESIDUES], pad_id=0, unk_id=1, bos_id=2, eos_id=3))
        tok = tf.AlbertTokenizer(str(d / "spiece.model"), do_lower_case=False, keep_accents=True)
        config = tf.AlbertConfig(vocab_size=len(tok), embedding_size=4, hidden_size=DIM, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, intermediate_size=INNER, max_position_embeddings=64,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = tf.AlbertForMaskedLM(config)
        save_random(model, d)
        tok.save_pretrained(d)
        return tf.AlbertModel, tf.AlbertTokenizer, {"do_lower_case": False}, "cls", True
    if name == "xlnet":
        specials = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
        (d / "spiece.model").write_bytes(spiece_model(
            [("<unk>", "unk"), ("<s>", "control"), ("</s>", "control")] + [(s, "user") for s in specials[3:]]
            + [("▁" + r, "normal") for r in STANDARD_AND_X], unk_id=0, bos_id=1, eos_id=2))
        tok = tf.XLNetTokenizer(str(d / "spiece.model"), do_lower_case=False, keep_accents=True)
        config = tf.XLNetConfig(vocab_size=len(tok), d_model=DIM, n_layer=LAYERS, n_head=HEADS, d_inner=INNER,
                                dropout=0.0, pad_token_id=5, bos_token_id=1, eos_token_id=2)
        model = tf.XLNetLMHeadModel(config)
        save_random(model, d)
        tok.save_pretrained(d)
        return tf.XLNetModel, tf.XLNetTokenizer, {"do_lower_case": False}, "xlnet", False
    if name == "esm":
        (d / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
        config = tf.EsmConfig(vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=DIM,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INNER,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
                              layer_norm_eps=1e-5, position_embedding_type="rotary", emb_layer_norm_before=False,
                              token_dropout=True)
        model = tf.EsmForMaskedLM(config)
        save_random(model, d, architectures=["EsmForMaskedLM"])
        tf.EsmTokenizer(str(d / "vocab.txt")).save_pretrained(d)
        return tf.EsmModel, tf.EsmTokenizer, {}, "esm", False
    raise KeyError(name)


def reference(name: str, out: Path, records: dict[str, str]) -> dict:
    """The notebook's rows of every hidden state, from a padded batch; checked per protein."""
    import torch

    encoder, tokenizer_class, kwargs, rows_of, rare_to_x = build(name, out)
    d = out / name
    tok = tokenizer_class.from_pretrained(str(d), **kwargs)
    model = encoder.from_pretrained(str(d), torch_dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seqs = {}
    for pid, s in records.items():
        s = s.upper()
        if rare_to_x:
            s = re.sub(r"[UZOB]", "X", s)
        seqs[pid] = s if name == "esm" else " ".join(s)
        if name == "prostt5":
            seqs[pid] = "<AA2fold> " + seqs[pid]

    def rows(texts):
        enc = tok(list(texts), add_special_tokens=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            states = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           output_hidden_states=True).hidden_states
        got = []
        for i, text in enumerate(texts):
            n = len(text.replace("<AA2fold>", "").replace(" ", ""))
            valid = int(enc["attention_mask"][i].sum())
            width = enc["attention_mask"].shape[1]
            if rows_of == "t5":
                sl = slice(0, n)
                assert valid == n + 1
            elif rows_of == "prostt5":  # <AA2fold> first, </s> last
                sl = slice(1, n + 1)
                assert valid == n + 2 and int(enc["input_ids"][i, 0]) == tok.convert_tokens_to_ids("<AA2fold>")
            elif rows_of == "xlnet":  # left padding; <sep> <cls> at the end
                sl = slice(width - valid, width - 2)
                assert valid == n + 2, (text, valid, n)
            else:
                sl = slice(1, n + 1)
                assert valid == n + 2, (text, valid, n)
            got.append([s[i, sl].float().clone() for s in states])
        return got

    batch = rows(seqs.values())
    result = {}
    for (pid, text), layers in zip(seqs.items(), batch):
        alone = rows([text])[0]
        for k, (a, b) in enumerate(zip(layers, alone)):
            assert (a - b).abs().max() < 1e-5, (name, pid, k)
            result[f"rows/{name}/{pid}/{k}"] = a
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default=str(Path(__file__).resolve().parent.parent
                                                   / "tests" / "data" / "tf4_reference"))
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()

    import torch
    import transformers
    from safetensors.torch import save_file

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    records = proteins()
    (out / "input.fa").write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    ref = {}
    for name in args.models:
        ref.update(reference(name, out, records))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in ref.items()}, out / "reference.safetensors", metadata=meta)
    print(f"wrote {out} (transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
