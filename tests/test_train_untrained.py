"""`protrans train --num-steps 0`: the model as initialised, untrained, written as a run's model
(a random-initialisation baseline of the architecture) that every -m takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from protrans_cli.models import FAMILIES

torch.set_num_threads(1)


def _saved_weights(run: Path) -> dict:
    """The run's tensors by the pretraining model's parameter names: ELECTRA's discriminator at the
    root, its generator in generator/ (as the pretraining model holds them)."""
    if (run / "generator").is_dir():
        weights = {f"discriminator.{k}": v for k, v in load_file(run / "model.safetensors").items()}
        weights.update({f"generator.{k}": v for k, v in load_file(run / "generator" / "model.safetensors").items()})
        return weights
    # (ESM's files keep the LayerNorm names of the published checkpoints, gamma and beta, and
    # its rotary inv_freq, computed, not drawn, once for every layer under a `layer.*` name)
    return {_module_name(k): v for k, v in load_file(run / "model.safetensors").items() if "*" not in k}


def _module_name(name: str) -> str:
    return name.removesuffix(".gamma") + ".weight" if name.endswith("LayerNorm.gamma") else \
        name.removesuffix(".beta") + ".bias" if name.endswith("LayerNorm.beta") else name


def _reference(family_name: str, seed: int) -> dict:
    """What the family's model class initialises under `seed`, built here without protrans train."""
    family = FAMILIES[family_name]
    torch.manual_seed(seed)
    return family.pretraining_model(family.build_config("tiny", family.build_tokenizer())).float().state_dict()


def _tensor_bytes(path: Path) -> dict:
    return {k: v.numpy().tobytes() for k, v in load_file(path).items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_writes_its_initialised_model_without_a_corpus(tmp_path, run_cli, family):
    run = tmp_path / "r"
    res = run_cli("train", "--family", family, "--preset", "tiny", "--num-steps", 0, "--seed", 5, "-o", run)
    assert res.exit_code == 0, res.stderr
    assert "0 steps: the model as initialised (seed 5), untrained" in res.stderr
    # the final model's files, and none of a training's
    for name in ("config.json", "model.safetensors", "README.md", "train_config.json", "complete.json"):
        assert (run / name).is_file(), name
    assert not any((run / name).exists() for name in ("metrics.jsonl", "loss_curve.png", "checkpoints"))
    assert json.loads((run / "complete.json").read_text()) == {"step": 0, "tokens": 0}
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["num_steps"] == 0 and saved["corpus"] == [] and saved["seed"] == 5
    card = (run / "README.md").read_text()
    assert "UNTRAINED (0 steps)" in card and "random-initialisation baseline" in card and "- Steps: 0" in card
    assert "Training loss" not in card and "Corpus" not in card

    # the weights: what the model class initialises under the seed (tied copies are saved once)
    weights, reference = _saved_weights(run), _reference(family, 5)
    assert weights and set(weights) <= set(reference)
    for name, tensor in weights.items():
        assert torch.equal(tensor, reference[name]), name

    # a model every -m takes
    from protrans_cli.models import load_model

    loaded = load_model(str(run))
    assert sum(p.numel() for p in loaded.model.parameters()) > 0


def test_the_seed_decides_the_weights_byte_for_byte(tmp_path, run_cli):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        res = run_cli("train", "--family", "esm", "--num-steps", 0, "--seed", seed, "-o", tmp_path / name)
        assert res.exit_code == 0, res.stderr
    a, b, c = (_tensor_bytes(tmp_path / name / "model.safetensors") for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    # (the embeddings differ, not only a bias here and there)
    assert a["esm.embeddings.word_embeddings.weight"] != c["esm.embeddings.word_embeddings.weight"]


def test_info_embed_and_contacts_of_an_untrained_model(tmp_path, run_cli):
    run = tmp_path / "esm0"
    assert run_cli("train", "--family", "esm", "--num-steps", 0, "-o", run).exit_code == 0
    res = run_cli("info", run)
    assert res.exit_code == 0, res.stderr
    assert "complete (step 0: untrained" in res.stdout and "trained at" not in res.stdout
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSTNPKPQRKTKRNTNRR\n")
    res = run_cli("embed", "-m", run, fasta, "-o", tmp_path / "e.h5")
    assert res.exit_code == 0, res.stderr
    import h5py

    with h5py.File(tmp_path / "e.h5") as h5:
        assert len(h5.keys()) >= 2
    # the contact head is as initialised: refused, saying why
    res = run_cli("contacts", "-m", run, fasta, "-o", tmp_path / "c.h5")
    assert res.exit_code == 1
    assert "written untrained by protrans train --num-steps 0" in res.stderr
    assert not (tmp_path / "c.h5").exists()


def test_a_corpus_given_is_neither_read_nor_recorded(tmp_path, run_cli):
    run = tmp_path / "r"
    res = run_cli("train", "--family", "bert", "--num-steps", 0, "--corpus", tmp_path / "absent.txt",
                  "--val-corpus", tmp_path / "absent_too.txt", "-o", run)
    assert res.exit_code == 0, res.stderr
    assert "--corpus and --val-corpus ignored: --num-steps 0" in res.stderr
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["corpus"] == [] and saved["val_corpus"] == []
    assert saved["resolved"]["corpus"] == []


@pytest.mark.parametrize("extra, message", [
    (["--resume"], "--num-steps 0 writes the model as initialised, without a checkpoint: --resume cannot go"),
    (["--skip-data", "2", "--resume"], "--resume, --skip-data cannot go with it"),
    (["--stop-after", "1"], "--stop-after (stop_after) cannot go with it"),
    (["--keep-best"], "--keep-best (keep_best) cannot go with it"),
    (["--time-limit", "1h"], "--time-limit (time_limit) cannot go with it"),
    (["--init-from", "MODEL"], "--init-from (init_from) MODEL with --num-steps (num_steps) 0 would write an "
                               "untrained copy of that model"),
    (["--phase", "64:0"], "phase 1 (64:0): num_steps must be at least 1, got 0"),
])
def test_what_makes_no_sense_without_a_step_is_refused(tmp_path, run_cli, extra, message):
    num_steps = [] if "--phase" in extra else ["--num-steps", 0]
    res = run_cli("train", "--family", "bert", *num_steps, *extra, "-o", tmp_path / "r")
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()


def test_negative_steps_are_refused_and_find_lr_still_needs_its_steps(tmp_path, run_cli):
    res = run_cli("train", "--num-steps", -1, "-o", tmp_path / "r")
    assert res.exit_code == 2
    assert "--num-steps (num_steps) must be at least 0, got -1 (0: the model as initialised, untrained)" in res.stderr
    res = run_cli("train", "--find-lr", "--num-steps", 0, "--corpus", tmp_path / "c.txt", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "--find-lr needs at least 10 steps" in res.stderr
    assert not (tmp_path / "r").exists()


def test_library_train_refuses_resume_with_no_steps(tmp_path):
    from protrans_cli.errors import UsageError
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    config = TrainConfig(num_steps=0, output_dir=str(tmp_path / "r"))
    with pytest.raises(UsageError, match="num_steps 0 writes the model as initialised, without a checkpoint: "
                                         "resume=True cannot go with it"):
        train(config, resume=True)
    result = train(config)
    assert result.completed and result.step == 0 and (tmp_path / "r" / "model.safetensors").is_file()
