#!/usr/bin/env python3
"""Rebuild tests/data/fair_esm_dictconfig.pt: a fair-esm ESM-2 checkpoint whose config is a real omegaconf DictConfig.

fair-esm's ESM-2 files keep their config as `cfg["model"]`, an omegaconf DictConfig in the files
fairseq's hydra training wrote (an argparse.Namespace in others). `protrans import-model` reads
it without omegaconf, through inert stand-ins for the classes it pickles; this fixture proves that
it reads such a config (tests/test_import_model.py). The weights are those of the tiny ESM-2 of
tests/data/esm_reference (2 layers, 8 dimensions, 2 heads) under fair-esm's names, without the
contact head (there is no regression file beside it, so the number of heads can come from the
config alone: 8 dimensions are in no published table). The whole `cfg` is a DictConfig with the
model's config nested in it, as hydra saves it. omegaconf is needed here only:

    pip install --target /tmp/side omegaconf
    PYTHONPATH=$PWD:/tmp/side python scripts/make_fair_esm_fixture.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "fair_esm_dictconfig.pt"
REFERENCE = ROOT / "tests" / "data" / "esm_reference"


def main() -> None:
    import sys

    import torch
    from omegaconf import OmegaConf
    from transformers import EsmForMaskedLM

    from protrans_cli.models.fair_esm import hf_name

    sys.path.insert(0, str(ROOT / "tests"))
    from test_import_model import REGRESSION, fair_esm_names  # (the tests' list of fair-esm's parameter names)

    hf = EsmForMaskedLM.from_pretrained(REFERENCE).state_dict()
    names = [n for n in fair_esm_names(esm1b=False, layers=2) if n not in REGRESSION]  # (no contact head)
    state = {("encoder." if n.startswith("lm_head.") else "encoder.sentence_encoder.") + n: hf[hf_name(n)].clone()
             for n in names}
    cfg = OmegaConf.create({
        "model": {"_name": "ESM2", "encoder_layers": 2, "encoder_embed_dim": 8, "encoder_ffn_embed_dim": 32,
                  "encoder_attention_heads": 2, "dropout": 0.0, "attention_dropout": 0.0, "token_dropout": True,
                  "max_positions": 1024, "no_seed_provided": False},
        "task": {"_name": "masked_lm", "data": "???", "tokens_per_sample": 1024},
        "optimization": {"lr": [4e-4], "max_update": 500000},
    })
    torch.save({"model": state, "cfg": cfg}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes; unsafe globals: "
          f"{torch.serialization.get_unsafe_globals_in_checkpoint(str(OUT))})")


if __name__ == "__main__":
    main()
