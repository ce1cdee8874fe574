"""`protrans train --recipe NAME`: the published pretraining recipes shipped as package data
(protrans_cli/recipes/*.toml), read as `--config` reads a file."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from conftest import DATA
from protrans_cli.errors import UsageError
from protrans_cli.models import get_family
from protrans_cli.training import recipes
from protrans_cli.training.config import TrainConfig, grad_accum_steps

LEARNABLE = str(DATA / "train" / "learnable.txt")
SHIPPED = ["esm2_t33_650M", "prot_bert", "prot_bert_bfd", "prot_t5_xl_bfd"]
# a model small enough to train 2 steps in a second, whatever the recipe's preset
SHRINK = {"bert": ["num_hidden_layers=1", "hidden_size=16", "num_attention_heads=2", "intermediate_size=32"],
          "esm": ["num_hidden_layers=1", "hidden_size=16", "num_attention_heads=2", "intermediate_size=32"]}


def test_the_recipes_are_package_data():
    folder = resources.files("protrans_cli") / "recipes"
    assert sorted(f.name for f in folder.iterdir() if f.name.endswith(".toml")) == [f"{n}.toml" for n in SHIPPED]
    assert recipes.names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_reads_and_passes_a_users_files_checks(name):
    config = recipes.load(name)
    # (the same path as `--config FILE`: TrainConfig.from_file, then the checks of every value)
    assert config == TrainConfig.from_file(recipes.path(name)).override(recipe=name)
    config.check_values()
    assert config.recipe == name
    assert config.corpus == [] and config.val_corpus == []  # (the corpus is the user's)
    family = get_family(config.family)
    assert config.preset in family.presets
    for phase in config.resolved_phases():
        grad_accum_steps(phase.global_batch_size, phase.micro_batch_size, 1)  # one GPU: it divides
    about = recipes.get(name)
    assert about.model and about.source
    # every file starts by citing its source, and lists what it left out
    assert about.text.startswith("# model: ") and "Unverified" in about.text


def test_the_recipes_numbers_are_those_of_their_sources():
    """The numbers each file takes from its source (the authors' model cards, the ESM-2
    supplementary as quoted): changed by mistake, the file no longer says what it cites."""
    bert = recipes.load("prot_bert")
    assert (bert.optimizer, bert.lr, bert.weight_decay, bert.warmup_steps, bert.schedule) == ("lamb", 0.002, 0.01,
                                                                                            40000, "linear")
    assert [(p.max_length, p.num_steps, p.global_batch_size) for p in bert.phases] == [(512, 300000, 15000),
                                                                                      (2048, 100000, 2500)]
    bfd = recipes.load("prot_bert_bfd")
    assert (bfd.optimizer, bfd.lr, bfd.weight_decay, bfd.warmup_steps) == ("lamb", 0.002, 0.01, 140000)
    assert [(p.max_length, p.num_steps, p.global_batch_size) for p in bfd.phases] == [(512, 800000, 32000),
                                                                                     (2048, 200000, 6000)]
    t5 = recipes.load("prot_t5_xl_bfd")
    assert (t5.preset, t5.optimizer, t5.schedule, t5.max_length, t5.num_steps, t5.global_batch_size) == (
        "prot_t5_xl", "adafactor", "inverse_sqrt", 512, 1200000, 4000)
    esm = recipes.load("esm2_t33_650M")
    assert (esm.preset, esm.num_steps) == ("esm2_t33_650M", 500000)
    # the supplementary's optimizer paragraph (as MINT's and BioNeMo's sources quote it)
    assert (esm.optimizer, esm.adam_beta1, esm.adam_beta2, esm.adam_eps, esm.weight_decay) == (
        "adamw", 0.9, 0.98, 1e-8, 0.01)
    assert (esm.lr, esm.warmup_steps, esm.schedule, esm.min_lr_ratio) == (4e-4, 2000, "linear", 0.1)
    # what it leaves to the flag defaults: a batch in proteins (ESM-2's is 2M tokens), the crop length
    defaults = TrainConfig()
    assert (esm.global_batch_size, esm.max_length, esm.phases) == (defaults.global_batch_size, defaults.max_length, [])


def test_the_esm2_recipe_schedule_against_the_papers_sentence():
    """ESM-2's lr, as the supplementary says it (an independent reference: warmup over 2,000
    steps to 4e-4, a linear decay to a tenth of it over 90% of the run, held after), against the
    scheduler a run of the recipe builds (build_scheduler): the same at every step (decay_steps
    450,000; before it, the recipe reached the tenth only at the last step, 0.19 at 450,000)."""
    from protrans_cli.training.optim import build_scheduler

    esm = recipes.load("esm2_t33_650M")
    assert esm.decay_steps == 450000
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=esm.lr)
    fn = build_scheduler(optimizer, esm, esm.total_steps).lr_lambdas[0]
    assert esm.lr * fn(999) == pytest.approx(2e-4)  # halfway up the warmup (step 1000 of 2000)
    assert esm.lr * fn(1999) == pytest.approx(4e-4)  # the peak at the end of the warmup

    def paper(step):  # 0.1 reached at 90% of the run (step 450,000), held after
        return 4e-4 * max(0.1, 1 - 0.9 * (step - 2000) / (450000 - 2000))
    assert paper(450000) == pytest.approx(4e-5)
    assert esm.lr * fn(450000) == pytest.approx(4e-5)
    assert esm.lr * fn(esm.num_steps - 1) == pytest.approx(4e-5)  # held to the end
    steps = [*range(2000, 500000, 7919), 449999, 450001, 499999]
    assert [esm.lr * fn(s) for s in steps] == pytest.approx([paper(s) for s in steps], rel=1e-9)


def test_the_esm2_recipe_with_another_schedule_leaves_its_decay_steps_out(tmp_path, run_cli):
    """The recipe's decay_steps under `--schedule wsd` (which has no such end, and no flag takes a
    file's value back): warned about and left out, not refused (the run goes on to its next check,
    the missing corpus); `--decay-steps` given with wsd is refused; cosine keeps it."""
    res = run_cli("train", "--recipe", "esm2_t33_650M", "--schedule", "wsd", "-o", tmp_path / "a")
    assert res.exit_code == 2, res.stderr
    assert (f"protrans: warning: decay_steps 450000 of {recipes.path('esm2_t33_650M')} ignored: --schedule wsd has "
            "no such end (linear and cosine do)") in res.stderr
    assert "no training corpus" in res.stderr
    res = run_cli("train", "--recipe", "esm2_t33_650M", "--schedule", "wsd", "--decay-steps", 1000, "-o", tmp_path / "a")
    assert res.exit_code == 2 and "warning" not in res.stderr, res.stderr
    assert "--decay-steps (decay_steps) goes with --schedule linear or cosine (where their decay ends), not wsd" in res.stderr
    res = run_cli("train", "--recipe", "esm2_t33_650M", "--schedule", "cosine", "-o", tmp_path / "a")
    assert res.exit_code == 2 and "warning" not in res.stderr and "no training corpus" in res.stderr, res.stderr


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(UsageError, match="no such recipe; the recipes are esm2_t33_650M, prot_bert"):
        recipes.load("prot_bret")


def test_list_recipes(run_cli):
    res = run_cli("train", "--list-recipes")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["recipe", "model", "source"]
    assert [line.split()[0] for line in lines[1:]] == SHIPPED
    assert "ProtBert (Rostlab/prot_bert)" in lines[2] and "TPAMI 2022" in lines[2]
    assert "recipes" in res.stderr  # (where the files are, to copy one)


def test_recipe_with_config_is_refused(tmp_path, run_cli):
    cfg = tmp_path / "c.toml"
    cfg.write_text('lr = 0.001\n')
    res = run_cli("train", "--recipe", "prot_bert", "--config", cfg, "--corpus", LEARNABLE)
    assert res.exit_code == 2
    assert "--recipe prot_bert cannot go with --config" in res.stderr
    res = run_cli("train", "--recipe", "nope", "--corpus", LEARNABLE)
    assert res.exit_code == 2 and "--recipe nope: no such recipe" in res.stderr


def test_a_recipe_trains_with_flags_over_it_and_the_run_records_it(tmp_path, run_cli):
    """Flags override the recipe (phases, lr, the model's sizes); train_config.json records
    the recipe's name beside the settings the run had, and reads back."""
    out = tmp_path / "run"
    res = run_cli("train", "--recipe", "prot_bert", "--corpus", LEARNABLE, "-o", out,
                  "--phase", "32:1:4:2", "--phase", "48:1:4:4", "--lr", "0.001",
                  *[a for s in SHRINK["bert"] for a in ("--set", s)], "-j", 1)
    assert res.exit_code == 0, res.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["recipe"] == "prot_bert"
    assert saved["lr"] == 0.001  # the flag's
    assert (saved["optimizer"], saved["warmup_steps"], saved["preset"]) == ("lamb", 40000, "prot_bert")  # the recipe's
    assert [p["max_length"] for p in saved["phases"]] == [32, 48]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert TrainConfig.from_file(out / "train_config.json").recipe == "prot_bert"
    # the model card names it too (it said nothing of the recipe), and the settings are the run's
    card = (out / "README.md").read_text()
    assert ("- Recipe: `prot_bert` (`protrans_cli/recipes/prot_bert.toml`, with this run's flags over it: the "
            "lines here are the settings it trained with)\n") in card
    assert "- Learning rate: 0.001 peak, 40,000 warmup steps" in card


def test_the_esm2_recipe_trains_with_flags_over_it(tmp_path, run_cli):
    """A tiny run from the ESM-2 recipe starts and records the recipe's optimizer settings (the
    config-file-only betas and eps included) beside the flags that shrank it."""
    out = tmp_path / "run"
    res = run_cli("train", "--recipe", "esm2_t33_650M", "--corpus", LEARNABLE, "-o", out,
                  "--num-steps", "2", "--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "2",
                  *[a for s in SHRINK["esm"] for a in ("--set", s)], "-j", 1)
    assert res.exit_code == 0, res.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["recipe"] == "esm2_t33_650M" and saved["num_steps"] == 2
    assert (saved["optimizer"], saved["lr"], saved["warmup_steps"], saved["min_lr_ratio"]) == ("adamw", 4e-4, 2000, 0.1)
    assert (saved["adam_beta1"], saved["adam_beta2"], saved["adam_eps"]) == (0.9, 0.98, 1e-8)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


def test_a_recipe_with_resume_is_the_config_as_a_config_file_is(tmp_path, run_cli):
    """`--recipe NAME --resume` (a job script's one command, requeued) reads the recipe as
    `--config FILE --resume` reads its file: not the run's train_config.json, which the run
    said it read ("the run's settings from RUN/train_config.json") and then replaced by the recipe."""
    out = tmp_path / "run"
    args = ["train", "--recipe", "prot_bert", "--corpus", LEARNABLE, "-o", out, "--phase", "32:1:4:2",
            "--phase", "48:1:4:4", "--lr", "0.001", *[a for s in SHRINK["bert"] for a in ("--set", s)], "-j", 1]
    assert run_cli(*args).exit_code == 0
    res = run_cli(*args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert "train_config.json (flags given override them)" not in res.stderr
    assert json.loads((out / "train_config.json").read_text())["recipe"] == "prot_bert"
