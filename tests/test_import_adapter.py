"""`protrans import-model ADAPTER_DIR`: a peft LoRA adapter merged into its base model, without peft.

tests/data/peft/ (scripts/make_peft_fixture.py) holds adapters made by real peft 0.21.2 on the tiny
ESM-2 of tests/data/esm_reference and the tiny T5 of tests/data/tf4_reference/t5_full, with the last
hidden states of peft's `merge_and_unload()` model beside each (`reference.safetensors`): the merged
model directory must give them. peft is not needed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
PEFT = DATA / "peft"
ESM = DATA / "esm_reference"
T5 = DATA / "tf4_reference" / "t5_full"
BASES = {"esm_qv": ESM, "esm_rslora": ESM, "esm_classifier": ESM, "t5_qv": T5}


def _hidden_states_match(model_dir: Path, fixture: str) -> None:
    from safetensors.torch import load_file

    from protrans_cli.models import load_model

    reference = load_file(str(PEFT / fixture / "reference.safetensors"))
    model = load_model(model_dir).model
    for k in range(3):
        with torch.no_grad():
            hidden = model(input_ids=reference[f"ids/{k}"][None]).last_hidden_state[0]
        torch.testing.assert_close(hidden, reference[f"hidden/{k}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", sorted(BASES))
def test_merged_model_gives_peft_merge_and_unload_hidden_states(run_cli, tmp_path, fixture):
    """Plain LoRA on query/value; rsLoRA with rank_pattern/alpha_pattern, LoRA on word_embeddings and
    bias "lora_only"; an EsmForSequenceClassification adapter (esm. prefix, bias "all", modules_to_save
    classifier); ProtT5's T5EncoderModel adapter merged into the T5ForConditionalGeneration base."""
    out = tmp_path / "merged"
    r = run_cli("import-model", PEFT / fixture, "--base", BASES[fixture], "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("merged LoRA adapter ("), r.stderr
    assert f"into {BASES[fixture]}; wrote {out}" in r.stderr
    _hidden_states_match(out, fixture)
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".merged*"))


def test_summary_line_names_ranks_and_the_task_head_left_out(run_cli, tmp_path):
    r = run_cli("import-model", PEFT / "esm_rslora", "--base", ESM, "-o", tmp_path / "a")
    assert "(r 4, alpha 8, rsLoRA, 5 modules, 3 with rank_pattern/alpha_pattern's r or alpha, 4 trained " \
           "tensors copied)" in r.stderr, r.stderr
    r = run_cli("import-model", PEFT / "esm_classifier", "--base", ESM, "-o", tmp_path / "b")
    assert r.stderr.rstrip().endswith(f"wrote {tmp_path / 'b'} (classifier not merged: a task head)"), r.stderr
    # (the masked-LM head and contact head of the base stay: the directory is the base's, merged)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["architectures"] == ["EsmForMaskedLM"]


def test_the_merged_model_card_names_the_base_and_the_adapter(run_cli, tmp_path, monkeypatch):
    from protrans_cli.models import load_model

    out = tmp_path / "m"
    assert run_cli("import-model", PEFT / "esm_classifier", "--base", ESM, "-o", out).exit_code == 0
    card = (out / "README.md").read_text()
    assert f"`{ESM}` with the peft LoRA adapter `esm_classifier` merged into its weights" in card
    assert f"- Base model: `{ESM}`" in card and "- Left out: classifier (a task head the base lacks)" in card
    assert "base_model:" not in card  # (a local base: no Hub id to name)
    params = sum(p.numel() for p in load_model(out, masked_lm=True).model.parameters())
    assert f"- Parameters: {params:,}\n" in card and "- lora\n" in card
    # a local base given relative to where import-model ran: its absolute path and weights
    from protrans_cli.models import weights_fingerprint

    monkeypatch.chdir(ESM.parent)
    assert run_cli("import-model", PEFT / "esm_classifier", "--base", ESM.name, "-o", tmp_path / "rel").exit_code == 0
    card = (tmp_path / "rel" / "README.md").read_text()
    assert f"- Base model: `{ESM.resolve()}` (weights {weights_fingerprint(ESM)})\n" in card, card


def test_base_read_from_adapter_config_when_a_local_path(run_cli, tmp_path):
    adapter = tmp_path / "lora"
    shutil.copytree(PEFT / "esm_qv", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(ESM)}))
    r = run_cli("import-model", adapter, "-o", tmp_path / "m")
    assert r.exit_code == 0 and f"into {ESM}; wrote" in r.stderr, r.stderr
    _hidden_states_match(tmp_path / "m", "esm_qv")


def test_library_call_merges_too(tmp_path):
    from protrans_cli.models.peft_merge import describe, import_adapter

    merged = import_adapter(PEFT / "t5_qv", tmp_path / "m", base=str(T5))
    assert (merged.r, merged.alpha, merged.modules) == (2, 4, 4)
    assert describe(merged).startswith("merged LoRA adapter (r 2, alpha 4, 4 modules)")
    _hidden_states_match(tmp_path / "m", "t5_qv")


def _adapter(tmp_path, config_changes=None, tensors=None, fixture="esm_qv") -> Path:
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "bad"
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.copytree(PEFT / fixture, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    if tensors is not None:
        save_file(tensors(load_file(str(adapter / "adapter_model.safetensors"))),
                  str(adapter / "adapter_model.safetensors"))
    return adapter


def _refusal(run_cli, tmp_path, adapter, *expected, code=1, base=ESM):
    out = tmp_path / "out"
    r = run_cli("import-model", adapter, *(["--base", base] if base else []), "-o", out)
    assert r.exit_code == code, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_inputs_one_line_each(run_cli, tmp_path):
    _refusal(run_cli, tmp_path, _adapter(tmp_path, {"peft_type": "IA3"}), "adapter_config.json",
             "peft_type is 'IA3'", "LoRA adapters")
    _refusal(run_cli, tmp_path, _adapter(tmp_path, {"use_dora": True}), "adapter_config.json", "use_dora", "DoRA")
    _refusal(run_cli, tmp_path, _adapter(tmp_path, {"init_lora_weights": "pissa"}), "init_lora_weights is 'pissa'")
    adapter = _adapter(tmp_path)
    (adapter / "adapter_model.safetensors").unlink()
    _refusal(run_cli, tmp_path, adapter, "bad", "adapter_model.safetensors nor adapter_model.bin")

    def renamed(tensors):
        return {k.replace("layer.1.attention.self.query", "layer.7.attention.self.query"): t
                for k, t in tensors.items()}
    _refusal(run_cli, tmp_path, _adapter(tmp_path, tensors=renamed), "adapter_model.safetensors",
             "LoRA weights for encoder.layer.7.attention.self.query, which matches no module")

    def wider(tensors):
        key = "base_model.model.encoder.layer.0.attention.self.value.lora_B.weight"
        return {**tensors, key: torch.ones(16, 4)}
    _refusal(run_cli, tmp_path, _adapter(tmp_path, tensors=wider), "encoder.layer.0.attention.self.value",
             "(16, 8) update", "esm.encoder.layer.0.attention.self.value.weight is (8, 8)")
    _refusal(run_cli, tmp_path, _adapter(tmp_path, fixture="t5_qv"), "matches no module", "EsmForMaskedLM")
    # (a .pt file and --base: usage)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"")
    _refusal(run_cli, tmp_path, pt, "--base is for a peft adapter directory", code=2)


def test_existing_output_needs_force(run_cli, tmp_path):
    assert run_cli("import-model", PEFT / "esm_qv", "--base", ESM, "-o", tmp_path / "m").exit_code == 0
    r = run_cli("import-model", PEFT / "esm_qv", "--base", ESM, "-o", tmp_path / "m")
    assert r.exit_code == 2 and "--force" in r.stderr
    assert run_cli("import-model", PEFT / "esm_qv", "--base", ESM, "-o", tmp_path / "m", "--force").exit_code == 0


def test_embed_with_an_adapter_names_import_model(run_cli, tmp_path):
    fasta = tmp_path / "one.fa"
    fasta.write_text(">p\nMKTAYIAK\n")
    r = run_cli("embed", fasta, "-m", PEFT / "esm_qv", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and f"protrans import-model {PEFT / 'esm_qv'} -o DIR" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_half_precision_encoder_only_base_stays_so(run_cli, tmp_path):
    """ProtT5-XL's `-enc` half (T5EncoderModel, float16, no decoder to load as the masked LM): the merged
    directory is that encoder, in float16, not refused for its missing head nor written twice the size."""
    r = run_cli("import-model", PEFT / "t5_qv", "--base", DATA / "tf4_reference" / "t5_enc_half", "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["T5EncoderModel"] and config["dtype"] == "float16"


def test_the_base_model_directory_is_not_replaced_under_force(run_cli, tmp_path):
    """`-o BASE --force` with `--base BASE` replaced the base with the merged model and deleted
    what else its folder held; the adapter's folder was refused so already."""
    base = tmp_path / "base"
    shutil.copytree(ESM, base)
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    for given in (base, f"{base}/"):
        r = run_cli("import-model", PEFT / "esm_qv", "--base", given, "-o", base, "--force")
        assert r.exit_code == 2 and r.stderr.strip() == (
            f"protrans: error: {base} holds the base model {given}: --force would delete it (choose another -o)"), \
            r.stderr
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_merged_esm_model_keeps_its_bases_contact_head_and_a_model_trained_from_it_too(run_cli, tmp_path):
    """The merged directory's config.json carries protrans_version (save_pretrained's stamp) and no
    train_config.json: contacts took it for a run pretrained from scratch and refused it. It records
    the base it was merged into (protrans_merged_into), which contacts follows: the base's head, with
    a warning; a model saved from the merged one (train --init-from, finetune) does not inherit the key."""
    import json

    from protrans_cli.models import load_model

    out = tmp_path / "merged"
    assert run_cli("import-model", PEFT / "esm_qv", "--base", ESM, "-o", out).exit_code == 0
    assert json.loads((out / "config.json").read_text())["protrans_merged_into"] == str(ESM.resolve())
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", fasta, "-m", out, "-o", tmp_path / "c.h5")
    assert r.exit_code == 0, r.stderr
    assert (f"merged with a LoRA adapter by protrans import-model from {ESM.resolve()}: its contact head is "
            in r.stderr) and "pretrained by protrans train" not in r.stderr
    loaded = load_model(out)
    loaded.family.save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "ft" / "model")
    (tmp_path / "ft" / "finetune.json").write_text(json.dumps({"format": "protrans-finetune", "model": str(out)}))
    assert "protrans_merged_into" not in json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    r = run_cli("contacts", fasta, "-m", tmp_path / "ft" / "model", "-o", tmp_path / "d.h5")
    assert r.exit_code == 0, r.stderr
    assert f"fine-tuned by protrans finetune from {out}: its contact head is" in r.stderr
