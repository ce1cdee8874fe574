"""`protrans info DIR`: a head, a model directory, a train run and one of its checkpoints described
from their JSON and safetensors headers (no torch, nothing unpickled); any other folder refused."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import _Entry, heavy_imports_of, save_tiny_model

TRAIN = Path(__file__).parent / "data" / "train"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A per-protein head of 4-d inputs, two members, fitted in a second."""
    from protrans_cli.heads.fit import FitConfig, fit
    from protrans_cli.io.h5 import EmbeddingsWriter

    root = tmp_path_factory.mktemp("head")
    rng = np.random.default_rng(0)
    emb, labels = root / "train.h5", root / "train.csv"
    with EmbeddingsWriter(emb, kinds=("per_protein",)) as w:
        for i in range(20):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=rng.normal(size=4) + (i % 2))
    labels.write_text("id,label\n" + "".join(f"p{i},{'AB'[i % 2]}\n" for i in range(20)))
    fit(FitConfig(task="protein", max_epochs=1, threads=1, n_bootstrap=50, ensemble=2), emb, labels, root / "head")
    return root / "head"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step `protrans train` run with a checkpoint at each step."""
    out = tmp_path_factory.mktemp("run") / "run"
    res = CliRunner().invoke(_Entry("protrans"), ["train", "--corpus", str(TRAIN / "learnable.txt"), "--max-length", "32",
                                                  "--global-batch-size", "4", "--micro-batch-size", "4", "--save-every",
                                                  "1", "-j", "1", "--num-steps", "2", "-o", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A 2-epoch `protrans finetune` of a tiny BERT on 20 synthetic ss3 proteins."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune
    from test_heads_fit import _netsurfp, _seqs

    model = save_tiny_model(tmp_path_factory, "bert")
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    _netsurfp(root / "train.csv", _seqs(rng, 20))
    _netsurfp(root / "test.csv", _seqs(rng, 5))
    config = FinetuneConfig(task="ss3", model=str(model), max_epochs=2, patience=5, lr=0.01, lora_rank=2,
                            max_residues=600, threads=1, n_bootstrap=20, device="cpu")
    finetune(config, root / "train.csv", root / "out", tests=[root / "test.csv"])
    return root / "out"


def _info(run_cli, *args) -> dict:
    res = run_cli("info", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _reference_parameters(directory: Path) -> tuple[int, dict]:
    """Parameters and their count per dtype by safetensors' own reader (no header parsing of ours)."""
    from safetensors import safe_open

    total, by_dtype = 0, {}
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            total += tensor.numel()
            name = str(tensor.dtype).removeprefix("torch.")
            by_dtype[name] = by_dtype.get(name, 0) + tensor.numel()
    return total, by_dtype


def test_family_model_types_are_the_registry_s():
    from protrans_cli.dir_info import FAMILY_MODEL_TYPES
    from protrans_cli.models import FAMILIES

    assert FAMILY_MODEL_TYPES == {name: tuple(f.model_types) for name, f in FAMILIES.items()}


def test_a_head_directory(run_cli, head):
    config = json.loads((head / "config.json").read_text())
    facts = _info(run_cli, head)
    assert facts["kind"] == "head" and facts["task"] == "protein" and facts["predicts"] == "per_protein"
    assert facts["outputs"] == {"label": ["A", "B"]}
    assert facts["architecture"] == "fnn" and facts["input_dim"] == 4 and facts["ensemble"] == 2
    assert facts["layer"] == config["layer"]
    assert facts["training"]["proteins"] == config["training"]["proteins"]
    metrics = json.loads((head / "metrics.json").read_text())
    assert facts["metrics"]["valid"]["label"]["accuracy"] == metrics["valid"]["label"]["accuracy"]
    assert facts["weights"] == (head / "weights.safetensors").stat().st_size
    text = run_cli("info", head).stdout
    assert "output label   2 classes: A B\n" in text
    assert "architecture   fnn, input dimension 4, 2 member(s)\n" in text
    assert f"valid label    accuracy {metrics['valid']['label']['accuracy']:.4f}" in text


def test_a_head_records_the_embeddings_it_was_trained_on(run_cli, head, tmp_path):
    import shutil

    copy = tmp_path / "head"
    shutil.copytree(head, copy)
    config = json.loads((copy / "config.json").read_text())
    config["embedding"].update(model="Rostlab/prot_t5_xl_half_uniref50-enc", family="t5", pooling="mean",
                               chains="linker", linker_length=25)
    (copy / "config.json").write_text(json.dumps(config))
    facts = _info(run_cli, copy)
    assert facts["embedding"]["model"] == "Rostlab/prot_t5_xl_half_uniref50-enc"
    assert facts["embedding"]["chains"] == "linker"
    text = run_cli("info", copy).stdout
    assert "embeddings of  Rostlab/prot_t5_xl_half_uniref50-enc (family t5, pooling mean" in text
    assert "complexes      linker (25 glycines between chains)\n" in text


@pytest.mark.parametrize("family", ["bert", "t5", "xlnet", "transfo_xl", "esm", "esmc", "electra", "albert", "roberta"])
def test_a_model_directory_of_each_family(run_cli, tmp_path_factory, family):
    directory = save_tiny_model(tmp_path_factory, family)
    config = json.loads((directory / "config.json").read_text())
    facts = _info(run_cli, directory)
    parameters, by_dtype = _reference_parameters(directory)
    assert facts["kind"] == "model" and facts["family"] == family and facts["model_type"] == config["model_type"]
    assert facts["architecture"] == config["architectures"][0]
    assert facts["stored_dtype"] == by_dtype  # (every stored tensor; parameters: the test below)
    assert parameters >= facts["parameters"] > 0
    assert (facts["hidden_size"], facts["layers"], facts["heads"]) == (32, 2, 4)
    assert facts["vocab_size"] == config["vocab_size"]
    assert facts["weights_bytes"] == (directory / "model.safetensors").stat().st_size
    if family == "electra":
        assert facts["generator_parameters"] == _reference_parameters(directory / "generator")[0]


@pytest.mark.parametrize("family", ["bert", "t5", "xlnet", "transfo_xl", "esm", "esmc", "electra", "albert", "roberta"])
def test_parameters_agree_with_transformers(run_cli, tmp_path_factory, family):
    """The count from the safetensors header is the loaded model's, its class as config.json names
    it: parameters, not the buffers a checkpoint also stores (ESM's rotary inv_freq counted 2 more
    than the model card's count of a tiny ESM-2)."""
    import transformers

    from protrans_cli.models import FAMILIES  # (importing it registers protrans's own classes)

    assert family in FAMILIES
    directory = save_tiny_model(tmp_path_factory, family)
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    # (protrans's own classes, registered with transformers' auto classes: ESM C, Transformer-XL)
    model_class = getattr(transformers, architecture, None) or {
        "esmc": transformers.AutoModelForMaskedLM, "transfo_xl": transformers.AutoModelForCausalLM}[family]
    model = model_class.from_pretrained(directory)
    assert _info(run_cli, directory)["parameters"] == model.num_parameters()


def test_a_sharded_model_counts_every_shard(run_cli, tmp_path_factory):
    """model.safetensors.index.json: the parameters of all the shards it names, each once."""
    from safetensors.torch import load_file, save_file

    directory = save_tiny_model(tmp_path_factory, "esm")
    whole = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    keys = sorted(whole)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: whole[k].half() for k in names}, str(directory / name))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}))
    facts = _info(run_cli, directory)
    stored = sum(t.numel() for t in whole.values())
    assert facts["stored_dtype"] == {"float16": stored}
    # (each shard's parameters once; ESM's rotary inv_freq is a buffer stored with them)
    assert facts["parameters"] == stored - sum(t.numel() for k, t in whole.items() if k.endswith(".inv_freq")) < stored
    assert facts["weights"] == ", ".join(shards)


def test_a_3b_model_is_described_from_its_header_alone(run_cli, tmp_path):
    """A sparse file holding a header of 3B bfloat16 parameters and no data: only the header is read."""
    directory = tmp_path / "big"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5EncoderModel"],
                                                       "d_model": 2560, "num_layers": 36, "num_heads": 32,
                                                       "vocab_size": 128, "torch_dtype": "bfloat16"}))
    header, offset, total = {"__metadata__": {"format": "pt"}}, 0, 0
    for i in range(500):
        shape = [2560, 2344]
        size = 2 * math.prod(shape)
        header[f"encoder.block.{i}.weight"] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        total += math.prod(shape)
    raw = json.dumps(header).encode()
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    facts = _info(run_cli, directory)
    assert facts["parameters"] == total == 3_000_320_000 and facts["stored_dtype"] == {"bfloat16": total}
    assert facts["family"] == "t5" and facts["layers"] == 36
    assert "parameters    3.00B (3,000,320,000)\n" in run_cli("info", directory).stdout


def test_a_damaged_safetensors_header_is_one_line(run_cli, tmp_path_factory):
    directory = save_tiny_model(tmp_path_factory, "esm")
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    res = run_cli("info", directory)
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "model.safetensors: not a readable safetensors file" in res.stderr


def test_a_pickled_checkpoint_is_named_never_loaded(run_cli, tmp_path, monkeypatch):
    import torch

    def refused(*_, **__):
        raise AssertionError("info unpickled a checkpoint")

    monkeypatch.setattr(torch, "load", refused)
    directory = tmp_path / "old"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                                                       "hidden_size": 1024, "num_hidden_layers": 30}))
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle" * 100)
    facts = _info(run_cli, directory)
    assert "a pickle (pytorch_model.bin; not read" in facts["weights"] and facts["weights_bytes"] == 2100
    assert "parameters" not in facts
    assert "weights       a pickle (pytorch_model.bin; not read" in run_cli("info", directory).stdout


def test_a_train_run_and_its_checkpoint(run_cli, run):
    facts = _info(run_cli, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert facts["kind"] == "run" and facts["family"] == "bert" and facts["status"] == "complete (step 2)"
    assert facts["checkpoints"] == [1, 2]
    assert facts["last_logged"]["step"] == 2 and facts["last_logged"]["loss"] == rows[-1]["loss"]
    assert facts["tokens"] == sum(r["tokens"] for r in rows)
    assert facts["training"]["max_length"] == 32 and facts["training"]["num_steps"] == 2
    assert facts["parameters"] == _reference_parameters(run)[0]
    text = run_cli("info", run).stdout
    assert "last logged   step 2, loss " in text and "trained at 32 tokens a sequence" in text
    step = run / "checkpoints" / "step_00000001"
    facts = _info(run_cli, step)
    assert facts["kind"] == "checkpoint" and facts["step"] == 1 and facts["parameters"] == _reference_parameters(step)[0]


def test_a_run_s_process_history_is_said_as_its_card_says_it(run_cli, run, tmp_path):
    """info said nothing of the processes a run trained with; the last checkpoint's progress.json
    now carries training_state.pt's records (read without unpickling it), said in the card's words,
    --json the records; a checkpoint of an earlier version (no records): "not recorded"."""
    import shutil

    import torch

    ckpt = run / "checkpoints" / "step_00000002"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    one = {"world_size": 1, "strategy": "none", "precision": "fp32"}
    assert state["processes"] == [{"first_step": 1, **one}]
    for where, up_to, said in ((run, 2, "steps 1-2"), (ckpt, 2, "steps 1-2"),
                               (run / "checkpoints" / "step_00000001", 1, "step 1")):
        facts = _info(run_cli, where)
        assert (facts["processes"], facts["processes_up_to"]) == (state["processes"], up_to)
        text = run_cli("info", where).stdout
        assert f"processes     1 for {said}\n" in text and "precision     fp32\n" in text, text
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "step_00000002"
    progress = json.loads((last / "progress.json").read_text())
    # two ranks under DDP for step 1 (as torchrun records them), then one process: the card's line
    history = [{"first_step": 1, **one, "world_size": 2, "strategy": "ddp"}, {"first_step": 2, **one}]
    (last / "progress.json").write_text(json.dumps({**progress, "processes": history}))
    for where in (copy, last):
        assert _info(run_cli, where)["processes"] == history
        assert "processes     2 (ddp) for step 1, 1 for step 2\n" in run_cli("info", where).stdout
    (last / "progress.json").write_text(json.dumps({k: v for k, v in progress.items() if k != "processes"}))
    for where in (copy, last):
        assert _info(run_cli, where)["processes"] is None
        text = run_cli("info", where).stdout
        assert "processes     not recorded (a checkpoint of an earlier version)\n" in text and "precision" not in text
    out = heavy_imports_of([["info", str(run)], ["info", str(ckpt), "--json"]], ("torch", "transformers", "numpy"))
    assert out.returncode == 0, out.stderr


def test_a_run_continued_from_another_model_says_so(run_cli, run, tmp_path):
    """A `train --init-from` run and its checkpoints were described as a run from scratch (the
    model's tokens and steps, no word of the weights it began with): they name that model as
    train_config.json records it; a run from scratch names none."""
    out = tmp_path / "continued"
    res = run_cli("train", "--corpus", TRAIN / "learnable.txt", "--init-from", run, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 1, "--num-steps", 1, "-j", 1,
                  "-o", out)
    assert res.exit_code == 0, res.output
    recorded = json.loads((out / "train_config.json").read_text())["init_from"]
    assert recorded == str(run)
    for where in (out, out / "checkpoints" / "step_00000001"):
        assert _info(run_cli, where)["training"]["init_from"] == recorded
        text = run_cli("info", where).stdout
        assert f"started from  {recorded} (train --init-from: " in text, text
    assert "init_from" not in _info(run_cli, run)["training"] and "started from" not in run_cli("info", run).stdout


def test_a_run_with_phases_is_described_by_its_phases(run_cli, tmp_path):
    """A run of --phase LEN:STEPS (no --num-steps, --max-length) was described by the defaults it
    never used: 'num steps 1000', 'trained at 512 tokens a sequence'."""
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", TRAIN / "learnable.txt", "--phase", "32:2:4:4", "--phase", "16:1:2:2",
                  "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 2, "-j", 1, "-o", out)
    assert res.exit_code == 0, res.output
    for where in (out, out / "checkpoints" / "step_00000002"):
        facts = _info(run_cli, where)
        assert facts["training"]["num_steps"] == 3 and facts["training"]["max_length"] == 32
        assert facts["training"]["phases"] == [{"max_length": 32, "num_steps": 2, "global_batch_size": 4},
                                               {"max_length": 16, "num_steps": 1, "global_batch_size": 2}]
        assert "global_batch_size" not in facts["training"]
        text = run_cli("info", where).stdout
        assert "num steps 3, phases 32:2x4 then 16:1x2, lr" in text, text
        assert "trained at up to 32 tokens a sequence" in text and "512" not in text and "1000" not in text


def test_an_unfinished_run_has_no_model_yet(run_cli, run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("config.json", "model.safetensors", "complete.json"):
        (copy / name).unlink()
    facts = _info(run_cli, copy)
    assert facts["kind"] == "run" and facts["status"].startswith("not complete") and "parameters" not in facts
    assert "model         not written yet" in run_cli("info", copy).stdout


def test_another_folder_is_refused_in_one_line(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    res = run_cli("info", tmp_path)
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "not a folder info reads: info describes an embeddings" in res.stderr
    for flag in ("--ids", "--residues"):
        res = run_cli("info", tmp_path, flag)
        assert res.exit_code == 2 and f"{flag} reads an embeddings file; this is a directory" in res.stderr


def test_info_of_a_model_and_a_head_imports_no_torch(tmp_path_factory, head):
    directory = save_tiny_model(tmp_path_factory, "bert")
    out = heavy_imports_of([["info", str(directory)], ["info", str(head), "--json"]],
                           ("torch", "transformers", "protrans_cli.models", "safetensors", "h5py", "numpy"))
    assert out.returncode == 0, out.stderr


def test_a_head_s_headline_figure_is_its_accuracy_or_spearman_whatever_the_metric_s_name(run_cli, head, tmp_path):
    """metrics.json keeps Q3's (Q8's, Q10's) figure under `accuracy` and a value output's under
    `spearman`: info said "Q3 n/a" for every secondary-structure head."""
    import shutil

    copy = tmp_path / "ss3"
    shutil.copytree(head, copy)
    (copy / "metrics.json").write_text(json.dumps({"cb513": {
        "ss3": {"metric": "Q3", "accuracy": 0.8123, "ci95": [0.8, 0.82], "mcc": 0.71, "n": 900, "n_proteins": 5},
        "stability": {"kind": "value", "metric": "Spearman", "spearman": 0.456, "ci95": [0.4, 0.5], "pearson": 0.5,
                      "n": 5, "n_proteins": 5}}}))
    text = run_cli("info", copy).stdout
    assert "cb513 ss3        Q3 0.8123 (95% CI 0.8000-0.8200), MCC 0.710, 5 proteins\n" in text
    assert "cb513 stability  Spearman 0.4560 (95% CI 0.4000-0.5000), 5 proteins\n" in text


def test_a_fitted_value_head_s_spearman_is_shown(run_cli, tmp_path):
    """fit writes a value output's metrics.json entry without a "kind": info said "Spearman n/a"
    for every value head fit wrote (the test above wrote the entry by hand, with one)."""
    rng = np.random.default_rng(0)
    seqs = {f"p{i}": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30)) for i in range(12)}
    (tmp_path / "s.fa").write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    (tmp_path / "v.csv").write_text("id,label\n" + "".join(f"{k},{v.count('K') / 30:.4f}\n" for k, v in seqs.items()))
    assert run_cli("embed", tmp_path / "s.fa", "-m", "onehot", "-o", tmp_path / "s.h5").exit_code == 0
    r = run_cli("fit", "value", "--embeddings", tmp_path / "s.h5", "--labels", tmp_path / "v.csv", "--max-epochs", "2",
                "--bootstrap", "10", "-j", "1", "--no-plots", "--valid-fraction", "0.5", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    rho = json.loads((tmp_path / "h" / "metrics.json").read_text())["valid"]["value"]["spearman"]
    assert isinstance(rho, float)
    assert re.search(rf"^valid value +Spearman {rho:.4f} \(95% CI ", run_cli("info", tmp_path / "h").stdout, re.M)


def test_a_finetune_output_is_described_whole(run_cli, finetuned):
    """info refused a finetune's OUT (pointing at head/ and model/): it describes what finetune
    wrote there, as finetune.json, OUT/head and OUT/model record it."""
    record = json.loads((finetuned / "finetune.json").read_text())
    facts = _info(run_cli, finetuned)
    assert facts["kind"] == "finetune" and facts["finetuned_from"] == record["model"]
    assert facts["lora"] == {"rank": 2, "alpha": 8.0, "dropout": 0.0, "targets": record["lora"]["targets"]}
    assert facts["training"]["epochs"] == len(record["history"]) == 2
    assert facts["training"]["best_epoch"] == record["best_epoch"] and facts["training"]["lr"] == 0.01
    assert facts["head"] == _info(run_cli, finetuned / "head")
    model = _info(run_cli, finetuned / "model")
    assert facts["model"] == {k: v for k, v in model.items() if k not in ("directory", "kind")}
    assert facts["model"]["family"] == "bert"
    assert facts["model"]["parameters"] == _reference_parameters(finetuned / "model")[0]
    q3 = record["metrics"]["test"]["ss3"]["accuracy"]
    text = run_cli("info", finetuned).stdout
    for line in (f"fine-tuned          {record['model']} (weights {record['model_weights_fingerprint']})\n", "LoRA                rank 2, alpha 8.0, dropout 0.0, on ",
                 "epochs              2 trained (of at most 2), the best ", "task                ss3 (per-residue)\n",
                 f"test ss3            Q3 {q3:.4f} (95% CI ", "model family        bert (model_type bert)\n",
                 "trained on          sequences embedded while fine-tuned, "):
        assert line in text, (line, text)
    assert "model parameters    " in text and "embeddings of" not in text and "None with" not in text
    # OUT/head alone says how its head was trained too
    assert "trained on     sequences embedded while fine-tuned, " in run_cli("info", finetuned / "head").stdout
    out = heavy_imports_of([["info", str(finetuned)], ["info", str(finetuned), "--json"]],
                           ("torch", "transformers", "protrans_cli.models", "safetensors", "h5py", "numpy"))
    assert out.returncode == 0, out.stderr


def test_a_finetune_output_missing_its_head_is_described_as_one(run_cli, finetuned, tmp_path):
    """finetune.json and model/ without head/ (deleted, or copied without it): described as a
    finetune output whose head is missing (the line info has for it), not refused as a folder info
    does not read."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finetuned, out)
    shutil.rmtree(out / "head")
    r = run_cli("info", out, "--json")
    assert r.exit_code == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["kind"] == "finetune" and facts["head"] == "missing (no readable head/config.json)"
    assert facts["model"]["family"] == "bert" and facts["lora"]["rank"] == 2
    assert "head                missing (no readable head/config.json)" in run_cli("info", out).stdout


def test_a_damaged_finetune_json_is_said_not_passed_over(run_cli, finetuned, tmp_path):
    """A finetune.json that cannot be read (cut short) lost the base model's LoRA and epochs lines
    without a word: info says the file is unreadable and still describes head/ and model/."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finetuned, out)
    (out / "finetune.json").write_text('{"model": "x", "lora": {"ra')
    r = run_cli("info", out, "--json")
    assert r.exit_code == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["kind"] == "finetune" and facts["finetune_json"].startswith("unreadable (")
    assert facts["head"]["task"] == "ss3" and facts["model"]["family"] == "bert"
    assert "finetune.json       unreadable (" in run_cli("info", out).stdout


def test_an_interrupted_run_s_partial_folder_is_said_with_its_resume(run_cli, tmp_path):
    """info OUT.partial said "not a folder info reads": a batch command's folder (its marker file),
    fit's and finetune's (state.pt, as their own writers save it, told apart without unpickling)
    are said as what they are, with the --resume that continues them."""
    import dataclasses

    from protrans_cli.heads.finetune import FinetuneConfig, _write_state
    from protrans_cli.heads.fit import FitConfig, FitState
    from protrans_cli.variants import UnitStore

    UnitStore(tmp_path / "d.fa.partial", resume=False, command="translate")._create()
    (tmp_path / "ft.partial").mkdir()
    _write_state(tmp_path / "ft.partial" / "state.pt",
                 {"fingerprint": json.dumps(dataclasses.asdict(FinetuneConfig(model="m"))), "epoch": 1})
    FitState(tmp_path / "head.partial", dataclasses.asdict(FitConfig()))._write()
    for name, command in (("d.fa.partial", "translate"), ("ft.partial", "finetune"), ("head.partial", "fit")):
        facts = _info(run_cli, tmp_path / name)
        assert (facts["kind"], facts["command"], facts["output"]) == ("partial", command,
                                                                      str(tmp_path / name.removesuffix(".partial")))
        text = run_cli("info", tmp_path / name).stdout
        assert f"an interrupted protrans {command} run's work" in text, text
        assert f"the same protrans {command} command with --resume continues it" in text, text
    (tmp_path / "other.partial").mkdir()
    res = run_cli("info", tmp_path / "other.partial")
    assert res.exit_code == 1 and "not a folder info reads" in res.stderr
    out = heavy_imports_of([["info", str(tmp_path / "ft.partial")], ["info", str(tmp_path / "d.fa.partial")]],
                           ("torch", "transformers", "protrans_cli.models", "safetensors", "h5py", "numpy"))
    assert out.returncode == 0, out.stderr


def test_a_stopped_run_s_tokens_are_its_last_checkpoint_s_count(run_cli, tmp_path):
    """A run stopped by --stop-after between two metrics lines: info summed metrics.jsonl (the
    steps after its last line missing); the checkpoint's progress.json (in its SHA256SUMS) has the
    count training_state.pt holds, which info reads without unpickling it."""
    import hashlib

    import torch

    out = tmp_path / "run"
    res = run_cli("train", "--corpus", TRAIN / "learnable.txt", "--max-length", "32", "--global-batch-size", "4",
                  "--micro-batch-size", "4", "--save-every", "3", "--log-every", "2", "-j", "1", "--num-steps", "6",
                  "--stop-after", "3", "-o", out)
    assert res.exit_code == 0, res.output
    ckpt = out / "checkpoints" / "step_00000003"
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and state["tokens"] > rows[0]["tokens"]  # (step 3 after the line)
    assert json.loads((ckpt / "progress.json").read_text()) == {"step": 3, "tokens": state["tokens"],
                                                                "processes": state["processes"]}
    sums = (ckpt / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256((ckpt / 'progress.json').read_bytes()).hexdigest()}  progress.json\n" in sums
    facts = _info(run_cli, out)
    assert (facts["tokens"], facts["tokens_up_to"], facts["tokens_from"]) == (state["tokens"], 3, "checkpoint")
    assert facts["status"].startswith("not complete")
    assert f"tokens        {state['tokens']:,} trained on up to step 3 (its last checkpoint's count)" in \
        run_cli("info", out).stdout
    (ckpt / "progress.json").unlink()  # a checkpoint of an earlier version: the lines' sum, said as such
    facts = _info(run_cli, out)
    assert (facts["tokens"], facts["tokens_up_to"], facts["tokens_from"]) == (rows[0]["tokens"], 2, "metrics.jsonl")


def test_a_finetune_s_local_base_model_is_recorded_wherever_it_is_read(run_cli, tmp_path_factory, monkeypatch):
    """finetune recorded its base model as given (`bert`, relative to where it ran: meaningless
    elsewhere): a local directory is recorded by its absolute path and weights fingerprint, in
    finetune.json, the head's finetuned_from and the model card; info says both from elsewhere."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune
    from protrans_cli.models import weights_fingerprint
    from test_heads_fit import _netsurfp, _seqs

    model = save_tiny_model(tmp_path_factory, "bert")
    root = tmp_path_factory.mktemp("ft_rel")
    _netsurfp(root / "train.csv", _seqs(np.random.default_rng(0), 8))
    monkeypatch.chdir(model.parent)
    config = FinetuneConfig(task="ss3", model=model.name, max_epochs=1, patience=5, lora_rank=2,
                            max_residues=600, threads=1, n_bootstrap=10, device="cpu")
    finetune(config, root / "train.csv", root / "out")
    monkeypatch.chdir(root)
    record = json.loads((root / "out" / "finetune.json").read_text())
    assert record["model"] == str(model.resolve()) and record["config"]["model"] == model.name  # (as given)
    assert record["model_weights_fingerprint"] == weights_fingerprint(model)
    head = json.loads((root / "out" / "head" / "config.json").read_text())
    assert head["embedding"]["finetuned_from"] == str(model.resolve())
    assert f"- Base model: `{model.resolve()}`\n" in (root / "out" / "model" / "README.md").read_text()
    facts = _info(run_cli, root / "out")
    assert (facts["finetuned_from"], facts["finetuned_from_weights"]) == (str(model.resolve()),
                                                                          weights_fingerprint(model))
    assert f"fine-tuned          {model.resolve()} (weights {weights_fingerprint(model)})\n" in \
        run_cli("info", root / "out").stdout
