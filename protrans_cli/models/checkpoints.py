"""Published checkpoints reachable by a short name: hub id, family, size and embedding dimension.

Parameter counts are those of the part `embed` loads (the T5 encoder, the ELECTRA
discriminator, the whole encoder elsewhere), counted on the published architecture (the
family preset named in `preset`, built on the meta device; tests check the two agree);
`total_params` is the whole published model where it differs.
"""

from __future__ import annotations

from protrans_cli.models.base import Checkpoint

DEFAULT_CHECKPOINT = "prot_t5_xl_half"

_T5_XL_ENCODER = 1_208_141_824
_T5_XL_TOTAL = 2_818_830_336
_T5_XXL_ENCODER = 4_832_023_552
_T5_XXL_TOTAL = 11_274_553_344
_BERT = 419_931_136

_ROWS = [
    Checkpoint("prot_t5_xl_half", "Rostlab/prot_t5_xl_half_uniref50-enc", "t5", _T5_XL_ENCODER, 1024,
               "ProtT5-XL-UniRef50 encoder only, half precision (the embed default)",
               torch_dtype="float16", num_layers=24, total_params=_T5_XL_TOTAL, preset="prot_t5_xl"),
    Checkpoint("prot_t5_xl_uniref50", "Rostlab/prot_t5_xl_uniref50", "t5", _T5_XL_ENCODER, 1024,
               "ProtT5-XL pretrained on BFD, fine-tuned on UniRef50 (encoder + decoder)",
               num_layers=24, total_params=_T5_XL_TOTAL, preset="prot_t5_xl"),
    Checkpoint("prot_t5_xl_bfd", "Rostlab/prot_t5_xl_bfd", "t5", _T5_XL_ENCODER, 1024,
               "ProtT5-XL pretrained on BFD (encoder + decoder)",
               num_layers=24, total_params=_T5_XL_TOTAL, preset="prot_t5_xl"),
    Checkpoint("prot_t5_xxl_uniref50", "Rostlab/prot_t5_xxl_uniref50", "t5", _T5_XXL_ENCODER, 1024,
               "ProtT5-XXL pretrained on BFD, fine-tuned on UniRef50 (encoder + decoder)",
               num_layers=24, total_params=_T5_XXL_TOTAL, preset="prot_t5_xxl"),
    Checkpoint("prot_t5_xxl_bfd", "Rostlab/prot_t5_xxl_bfd", "t5", _T5_XXL_ENCODER, 1024,
               "ProtT5-XXL pretrained on BFD (encoder + decoder)",
               num_layers=24, total_params=_T5_XXL_TOTAL, preset="prot_t5_xxl"),
    Checkpoint("prot_bert", "Rostlab/prot_bert", "bert", _BERT, 1024,
               "ProtBert pretrained on UniRef100", num_layers=30, preset="prot_bert"),
    Checkpoint("prot_bert_bfd", "Rostlab/prot_bert_bfd", "bert", _BERT, 1024,
               "ProtBert pretrained on BFD", num_layers=30, preset="prot_bert"),
]

CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in _ROWS}
