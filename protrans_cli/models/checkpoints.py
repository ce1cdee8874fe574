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
_ALBERT = 223_813_888
_XLNET = 409_406_464
_ELECTRA = 418_881_536
_ANKH_BASE_ENCODER = 453_158_400
_ANKH_BASE_TOTAL = 736_330_752
_ANKH_LARGE_ENCODER = 1_151_683_072
_ANKH_LARGE_TOTAL = 1_878_459_392

_ROWS = [
    Checkpoint("prot_t5_xl_half", "Rostlab/prot_t5_xl_half_uniref50-enc", "t5", _T5_XL_ENCODER, 1024,
               "ProtT5-XL-UniRef50 encoder only, half precision (the embed default)",
               # (no total_params: the published weights are the encoder alone, no decoder)
               torch_dtype="float16", num_layers=24, preset="prot_t5_xl"),
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
    # ProstT5 (Heinzinger et al. 2024): ProtT5-XL-U50 fine-tuned to translate between amino acids
    # and Foldseek's 3Di structure letters; embed puts "<AA2fold>" before each protein, as its
    # authors do (base.INPUT_PREFIXES). Counted on ProtT5-XL's vocabulary: its 3Di letters and two
    # prefixes add some 22,000 weights per embedding table (under 0.01%).
    Checkpoint("prostt5", "Rostlab/ProstT5", "t5", _T5_XL_ENCODER, 1024,
               "ProstT5: ProtT5-XL-U50 fine-tuned on amino acids <-> 3Di structure (encoder + decoder)",
               num_layers=24, total_params=_T5_XL_TOTAL, preset="prot_t5_xl"),
    Checkpoint("prostt5_half", "Rostlab/ProstT5_fp16", "t5", _T5_XL_ENCODER, 1024,
               "ProstT5 in half precision (the same model, half the download)",
               torch_dtype="float16", num_layers=24, total_params=_T5_XL_TOTAL, preset="prot_t5_xl"),
    Checkpoint("prot_bert", "Rostlab/prot_bert", "bert", _BERT, 1024,
               "ProtBert pretrained on UniRef100", num_layers=30, preset="prot_bert"),
    Checkpoint("prot_bert_bfd", "Rostlab/prot_bert_bfd", "bert", _BERT, 1024,
               "ProtBert pretrained on BFD", num_layers=30, preset="prot_bert"),
    Checkpoint("prot_albert", "Rostlab/prot_albert", "albert", _ALBERT, 4096,
               "ProtAlbert pretrained on UniRef100", num_layers=12, preset="prot_albert"),
    Checkpoint("prot_xlnet", "Rostlab/prot_xlnet", "xlnet", _XLNET, 1024,
               "ProtXLNet pretrained on UniRef100", num_layers=30, preset="prot_xlnet"),
    Checkpoint("prot_electra_discriminator_bfd", "Rostlab/prot_electra_discriminator_bfd", "electra", _ELECTRA,
               1024, "ProtElectra discriminator pretrained on BFD", num_layers=30, preset="prot_electra"),
    # Ankh (Elnaggar et al. 2023): T5 models whose tokenizer takes one residue per word
    Checkpoint("ankh_base", "ElnaggarLab/ankh-base", "t5", _ANKH_BASE_ENCODER, 768,
               "Ankh base (T5, 48 encoder layers), UniRef50", num_layers=48, total_params=_ANKH_BASE_TOTAL,
               preset="ankh_base"),
    Checkpoint("ankh_large", "ElnaggarLab/ankh-large", "t5", _ANKH_LARGE_ENCODER, 1536,
               "Ankh large (T5, 48 encoder layers), UniRef50", num_layers=48, total_params=_ANKH_LARGE_TOTAL,
               preset="ankh_large"),
    # ESM-2 (Lin et al. 2023), UniRef50 (D: dropout-trained); counts without the LM head
    *(Checkpoint(f"esm2_{size}_UR50D", f"facebook/esm2_{size}_UR50D", "esm", n, dim,
                 f"ESM-2 {size.split('_')[1]} ({layers} layers)", num_layers=layers, preset=f"esm2_{size}")
      for size, n, dim, layers in [
          ("t6_8M", 7_409_081, 320, 6),
          ("t12_35M", 33_269_521, 480, 12),
          ("t30_150M", 147_728_601, 640, 30),
          ("t33_650M", 649_400_981, 1280, 33),
          ("t36_3B", 2_832_444_321, 2560, 36),
          ("t48_15B", 15_102_870_401, 5120, 48),
      ]),
    # SaProt (Su et al. 2024): ESM-2 architectures whose 446 tokens pair each residue with a
    # Foldseek 3Di state (models/saprot.py; embed --structure-tokens), trained on AlphaFold DB
    # (AF2) or PDB structures; counted with its 446-token embedding table, without the LM head.
    # No preset: the ESM-2 preset of its architecture (esm2_t12_35M, esm2_t33_650M; tests/test_saprot.py) has
    # ESM's 33-token vocabulary, another parameter count.
    *(Checkpoint(f"saprot_{size.lower()}_{data.lower()}", f"westlake-repl/SaProt_{size}_{data}", "esm", n, dim,
                 f"SaProt {size} ({layers} layers, residue + 3Di tokens), {data} structures", num_layers=layers)
      for size, data, n, dim, layers in [
          ("35M", "AF2", 33_467_761, 480, 12),
          ("650M", "AF2", 649_929_621, 1280, 33),
          ("650M", "PDB", 649_929_621, 1280, 33),
      ]),
    # ESM-1b (Rives et al. 2021; UniRef50, S: sparse) and ESM-1v (Meier et al. 2021; five models
    # of one architecture, UniRef90, seeds 1-5): learned positions, 1,022 residues at most
    # (longer proteins take --long-policy chunk)
    Checkpoint("esm1b_t33_650M_UR50S", "facebook/esm1b_t33_650M_UR50S", "esm", 650_716_821, 1280,
               "ESM-1b 650M (33 layers, learned positions)", num_layers=33, preset="esm1b_t33_650M"),
    *(Checkpoint(f"esm1v_t33_650M_UR90S_{i}", f"facebook/esm1v_t33_650M_UR90S_{i}", "esm", 650_714_261, 1280,
                 f"ESM-1v 650M, model {i} of 5 (33 layers, learned positions)", num_layers=33,
                 preset="esm1v_t33_650M")
      for i in range(1, 6)),
]

CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in _ROWS}
