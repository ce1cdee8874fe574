"""Offline tokenizers built from the residue alphabet: one token per residue, family special tokens.

Every family's `build_tokenizer` calls `residue_tokenizer` with its vocabulary and
special-token template. The result is a `PreTrainedTokenizerFast` (transformers 5 names it
`TokenizersBackend`) over a `tokenizers` WordLevel model, which `save_pretrained` writes as
tokenizer.json and `AutoTokenizer.from_pretrained(dir)` reads back with no network and no
sentencepiece model. Residues are split on whitespace (spaced families) or one character at a
time (unspaced families), so a residue can never become two tokens or merge with a neighbour.
"""

from __future__ import annotations

from pathlib import Path

# ProtBert's residue order (vocab.txt of Rostlab/prot_bert); the other families reuse it so
# that residue ids differ between families only by their number of leading special tokens.
RESIDUES = tuple("LAGVESIKRDTPNQFYMHCWXUBZO")
STANDARD_AND_X = tuple(r for r in RESIDUES if r not in "UBZO")

# Longest sequence a tokenizer accepts without warning; embed enforces its own --max-length.
MODEL_MAX_LENGTH = 1_000_000


def residue_tokenizer(vocab: list[str], *, unk_token: str, single: str, pair: str | None = None,
                      padding_side: str = "right", **special_tokens):
    """A fast tokenizer with `vocab` (ids in list order) and the post-processor template
    `single` (e.g. "[CLS] $A [SEP]"). `special_tokens` are the named roles
    (pad_token="[PAD]", cls_token=..., additional_special_tokens=[...])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    if len(ids) != len(vocab):
        raise ValueError("duplicate token in vocabulary")
    tok = Tokenizer(models.WordLevel(ids, unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # (residues separated by spaces)
    template_tokens = [t for t in (single + " " + (pair or "")).split()
                       if not t.startswith("$")]
    names = sorted({t.split(":")[0] for t in template_tokens})
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair or single.replace("$A", "$A $B:1"),
        special_tokens=[(n, ids[n]) for n in names])
    extra = special_tokens.pop("additional_special_tokens", None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk_token, padding_side=padding_side,
        model_max_length=MODEL_MAX_LENGTH, clean_up_tokenization_spaces=False, **special_tokens)
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra)})
    if len(tokenizer) != len(vocab):
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, vocabulary {len(vocab)}")
    return tokenizer


# from_pretrained's options that transformers 5 (5.25 checked) records in a loaded tokenizer's
# init_kwargs and so writes into tokenizer_config.json (token, revision, cache_dir it leaves out)
_LOADING_OPTIONS = ("is_local", "local_files_only")


def save_tokenizer(tokenizer, directory) -> None:
    """`tokenizer.save_pretrained(directory)`, with a tokenizer_config.json that transformers 4.x
    reads as well (a model directory is often handed to a collaborator on 4.x). transformers 5
    writes two things 4.x refuses: `"tokenizer_class": "TokenizersBackend"` (a class 4.x does not
    have: AutoTokenizer raises "Tokenizer class TokenizersBackend does not exist") and
    `extra_special_tokens` as a list (T5's sentinels, XLNet's <eod>/<eop>: 4.48-4.57 take that key
    for a dict and raise AttributeError: 'list' object has no attribute 'keys'). They become
    `PreTrainedTokenizerFast` (5 still knows the name, as an alias of TokenizersBackend) and
    `additional_special_tokens` (5 reads it as extra_special_tokens); transformers 5 loads the
    rewritten file to the same tokenizer (class, special tokens, ids). A tokenizer that was
    loaded (`train --init-from`, finetune's model/) is saved by transformers 5 with two of the
    loading's own options, `is_local` and `local_files_only`, as if they were settings of the
    tokenizer: they are left out, so the file is the one a tokenizer built anew writes."""
    import json

    tokenizer.save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for key in _LOADING_OPTIONS:
        if key in data:
            del data[key]
            changed = True
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if isinstance(data.get("extra_special_tokens"), list) and "additional_special_tokens" not in data:
        data["additional_special_tokens"] = data.pop("extra_special_tokens")
        changed = True
    if ("add_prefix_space" in data and data.get("tokenizer_class") == "T5Tokenizer"
            and not (Path(directory) / "spiece.model").is_file()):
        # (`train --init-from` of a T5 saved by 4.x, which wrote the key: 4.x's T5TokenizerFast
        # then rebuilds itself from spiece.model, which transformers 5 does not write ("Either
        # model_file or model_proto must be specified"); tokenizer.json's Metaspace says it already)
        del data["add_prefix_space"]
        changed = True
    if changed:
        path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
