#!/usr/bin/env python3
"""Rebuild tests/data/peft/: PEFT LoRA adapters made with real peft, and peft's merged models' hidden states.

`protrans import-model ADAPTER_DIR` merges a peft LoRA adapter into its base model without peft
(protrans_cli/models/peft_merge.py); these fixtures are its independent reference. Each adapter is
made by peft on a tiny base (the ESM-2 of tests/data/esm_reference, 2 layers, 8 dimensions; the
T5ForConditionalGeneration of tests/data/tf4_reference/t5_full, as Rostlab/prot_t5_xl_uniref50,
wrapped as the T5EncoderModel ProtT5 is fine-tuned as), its LoRA weights (lora_B is zero when peft
makes it) and trained biases and modules_to_save filled with seeded random numbers, and saved with
peft's `save_pretrained` (adapter_config.json, adapter_model.safetensors). Beside each,
`reference.safetensors` holds `ids/<k>` (the input ids of SEQUENCES[k], the base's tokenizer) and
`hidden/<k>` (the last hidden state of peft's `merge_and_unload()` model's encoder on them):

    esm_qv          LoRA on query and value (r 4, alpha 8), EsmModel wrapped (keys without `esm.`)
    esm_rslora      use_rslora, rank_pattern and alpha_pattern (layer 1's value: r 2, alpha 3; query
                    elsewhere alpha 5), LoRA on word_embeddings (lora_embedding_A/B), bias "lora_only"
    esm_classifier  EsmForSequenceClassification wrapped (task SEQ_CLS): modules_to_save ["classifier"],
                    LoRA on query/key/value/dense, bias "all"
    t5_qv           LoRA on the encoder's q and v, T5EncoderModel wrapped

base_model_name_or_path is set to the published model each stands in for (the tests give --base).
peft 0.21.2 and accelerate are needed here only:

    pip install --target /tmp/side --no-deps peft==0.21.2 accelerate
    PYTHONPATH=$PWD:/tmp/side python scripts/make_peft_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "peft"
ESM = ROOT / "tests" / "data" / "esm_reference"
T5 = ROOT / "tests" / "data" / "tf4_reference" / "t5_full"
SEQUENCES = ("MKTAYIAKQR", "GSHMLEDPVAG", "ACDEFGHIKLMNPQRSTVWY")


def fill(model, seed: int) -> None:
    """Seeded random numbers in every trainable tensor (LoRA A and B, trained biases, saved modules)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def save(name: str, peft_model, base_id: str, tokenizer, spaced: bool, encoder) -> None:
    import torch
    from safetensors.torch import save_file

    folder = OUT / name
    peft_model.save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_id
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").unlink(missing_ok=True)  # (peft's model card template, kilobytes of it)
    merged = peft_model.merge_and_unload().eval()
    tensors = {}
    with torch.no_grad():
        for k, seq in enumerate(SEQUENCES):
            ids = tokenizer(" ".join(seq) if spaced else seq, return_tensors="pt")["input_ids"]
            tensors[f"ids/{k}"] = ids[0].contiguous()
            tensors[f"hidden/{k}"] = encoder(merged)(input_ids=ids).last_hidden_state[0].contiguous()
    save_file(tensors, str(folder / "reference.safetensors"), metadata={"sequences": ",".join(SEQUENCES)})


def main() -> None:
    import peft
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, EsmForSequenceClassification, EsmModel, T5EncoderModel

    assert peft.__version__ == "0.21.2", peft.__version__
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    esm_tok = AutoTokenizer.from_pretrained(str(ESM))

    model = get_peft_model(EsmModel.from_pretrained(str(ESM), add_pooling_layer=False),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    fill(model, 1)
    save("esm_qv", model, "facebook/esm2_t6_8M_UR50D", esm_tok, False, lambda m: m)

    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "value", "word_embeddings"],
                        rank_pattern={r"layer\.1\.attention\.self\.value": 2},
                        alpha_pattern={r"layer\.1\.attention\.self\.value": 3, "query": 5}, bias="lora_only")
    model = get_peft_model(EsmModel.from_pretrained(str(ESM), add_pooling_layer=False), config)
    fill(model, 2)
    save("esm_rslora", model, "facebook/esm2_t6_8M_UR50D", esm_tok, False, lambda m: m)

    config = LoraConfig(r=4, lora_alpha=16, task_type="SEQ_CLS", bias="all",
                        target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"])
    model = get_peft_model(EsmForSequenceClassification.from_pretrained(str(ESM), num_labels=2), config)
    fill(model, 3)
    save("esm_classifier", model, "facebook/esm2_t6_8M_UR50D", esm_tok, False, lambda m: m.esm)

    t5_tok = AutoTokenizer.from_pretrained(str(T5))
    model = get_peft_model(T5EncoderModel.from_pretrained(str(T5)), LoraConfig(r=2, lora_alpha=4,
                                                                                target_modules=["q", "v"]))
    fill(model, 4)
    save("t5_qv", model, "Rostlab/prot_t5_xl_uniref50", t5_tok, True, lambda m: m)


if __name__ == "__main__":
    main()
