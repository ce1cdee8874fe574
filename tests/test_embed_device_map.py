"""`protrans embed --device-map`: a model spread by from_pretrained (accelerate) over the
devices, here the CPU and files on disk, gives the rows of a plain transformers forward pass
and of the run without a map; and the options' errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import save_tiny_models
from test_embed_models import SMALL, reference_rows

from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader
from protrans_cli.models import FAMILIES
from protrans_cli.placement import describe, input_device, modules_per_device, parse_max_memory


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory)


def _read(path, kind=PER_RESIDUE):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}


def _encoder_bytes(family, directory) -> int:
    encoder = family.encoder_class.from_pretrained(str(directory), use_kernels=False)
    return sum(p.numel() * p.element_size() for p in encoder.parameters())


# The families whose tiny preset is mostly its 2048 learned positions: its embeddings, one block
# kept whole, are more than half of it, and accelerate keeps room for the largest block on the CPU,
# so no budget under the whole model holds any of it there ({"": "disk"}). These are mapped with
# 64 positions and 3 layers (_small_position_model) instead.
_POSITION_HEAVY = ("albert", "bert", "electra", "roberta")
# The CPU's share of the model that holds part of it and leaves the rest to the disk: 80%, but for
# ALBERT, whose one shared layer is three quarters of it (room for it kept, then the embeddings).
_CPU_SHARE = {"albert": 0.9}


@pytest.fixture(scope="module")
def position_light_models(tmp_path_factory):
    return {name: _small_position_model(tmp_path_factory.mktemp(f"light_{name}"), name)[1]
            for name in _POSITION_HEAVY}


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_a_map_with_disk_offload_gives_the_plain_forward_pass(run_cli, tmp_path, tiny_models, position_light_models,
                                                              family_name):
    """Every family spread over the CPU and the disk (some of it on each: a map of the whole model on
    the disk, {"": "disk"}, proved nothing of the spreading) gives the rows of a plain transformers
    forward pass and of the run without a map, and no warning of a device left empty."""
    pytest.importorskip("accelerate")
    family = FAMILIES[family_name]
    model_dir = position_light_models.get(family_name) or tiny_models[family_name]
    # room on the CPU for part of the weights: the rest goes to the disk
    cpu = int(_encoder_bytes(family, model_dir) * _CPU_SHARE.get(family_name, 0.8))
    mapped, plain = tmp_path / "mapped.h5", tmp_path / "plain.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", mapped, "--device-map", "auto",
                     "--max-memory", f"cpu={cpu}", "--offload-folder", tmp_path / "offload", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert "the model was spread over devices (--device-map auto):" in result.stderr
    assert "the device map put none of the model there" not in result.stderr, result.stderr
    assert run_cli("embed", SMALL, "-m", model_dir, "-o", plain, "--device", "cpu", "-j", "1").exit_code == 0
    with EmbeddingsReader(mapped) as r:
        recorded = json.loads(r.attrs["device_map"])
        assert r.attrs["compute_dtype"] == "float32" and r.attrs["device"] == "cpu"
        assert r.attrs["packing"] is False or not r.attrs["packing"]
    assert recorded["setting"] == "auto" and set(recorded["modules"].values()) == {"cpu", "disk"}, recorded
    rows, means = _read(mapped), _read(mapped, PER_PROTEIN)
    plain_rows = _read(plain)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "")
        ref = reference_rows(family, model_dir, seq)[0]
        np.testing.assert_allclose(rows[rec.id], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(means[rec.id], ref.mean(0), atol=1e-5, rtol=0)
        np.testing.assert_array_equal(rows[rec.id], plain_rows[rec.id])


def test_the_loaded_model_has_a_disk_entry_and_is_not_moved(tiny_models, tmp_path):
    pytest.importorskip("accelerate")
    from protrans_cli.embed import EmbedOptions, build_embedder

    model_dir = tiny_models["esm"]
    cpu = int(_encoder_bytes(FAMILIES["esm"], model_dir) * 0.8)
    options = EmbedOptions(model=str(model_dir), device_map="sequential", max_memory={"cpu": cpu},
                           offload_folder=str(tmp_path / "off"), threads=1)
    embedder = build_embedder(options)
    assert "disk" in embedder.model.hf_device_map.values()
    assert embedder.device == "cpu" and embedder.on_cpu() is None and not embedder.packed
    # the offloaded weights stay on the meta device (read from disk by accelerate's hooks)
    assert any(p.device.type == "meta" for p in embedder.model.parameters())
    rows = embedder.embed_batch(["MKTAYIAK", "GG"])
    assert [r.shape[-2] for r in rows] == [8, 2]


def test_max_memory_is_parsed_and_bad_items_are_named():
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory("cuda:1=500MB,cpu=1000") == {1: "500MB", "cpu": 1000}
    assert parse_max_memory(None) is None
    from protrans_cli.errors import UsageError

    for text, item in (("0=20GiB,gpu=3GB", "'gpu=3GB'"), ("cpu20GiB", "'cpu20GiB'"), ("cpu=lots", "'cpu=lots'"),
                       ("cpu=0GB", "'cpu=0GB'"), ("cpu=1GB,cpu=2GB", "'cpu=2GB'"), ("disk=1GB", "'disk=1GB'")):
        with pytest.raises(UsageError, match=f"item {item}"):
            parse_max_memory(text)


def test_map_summaries():
    device_map = {"embeddings": 0, "encoder.layer.0": 0, "encoder.layer.1": 1, "encoder.layer.2": "cpu",
                  "encoder.layer.3": "disk"}
    assert input_device(device_map) == "cuda:0"
    assert input_device({"": "disk"}) == input_device({"a": "cpu", "b": "disk"}) == "cpu"
    assert modules_per_device(device_map) == {"cuda:0": 2, "cuda:1": 1, "cpu": 1, "disk": 1}
    assert describe(device_map) == "2 modules on cuda:0, 1 on cuda:1, 1 on cpu, 1 on disk"


@pytest.mark.parametrize("extra, message", [
    (["--max-memory", "cpu=1GB,gpu=3"], "--max-memory cpu=1GB,gpu=3: item 'gpu=3': 'gpu' is not a device"),
    (["--max-memory", "cpu"], "item 'cpu': not DEVICE=SIZE"),
    (["--packing"], "--device-map auto with --packing"),
    (["--compile"], "--device-map auto with --compile"),
    (["--attention", "flex"], "--device-map auto with --attention flex"),
    (["--device", "cpu"], "--device-map auto with --device cpu"),
])
def test_device_map_usage_errors(run_cli, tmp_path, tiny_models, extra, message):
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models["esm"], "-o", out, "--device-map", "auto", *extra)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_a_device_this_machine_lacks_is_a_usage_error_naming_it(run_cli, tmp_path, tiny_models):
    # (accelerate printed "Device 99 is not available, available devices are [...]" twice, then
    # the load failed with "Cannot access accelerator device when none is available", exit 1)
    pytest.importorskip("accelerate")
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models["esm"], "-o", out, "--device-map", "auto",
                     "--max-memory", "99=1GiB,cpu=1GiB")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--max-memory 99=1GiB,cpu=1GiB: there is no GPU 99 here (CUDA sees " in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value", [("--max-memory", "cpu=1GB"), ("--offload-folder", "off")])
def test_companions_need_a_device_map(run_cli, tmp_path, tiny_models, flag, value):
    result = run_cli("embed", SMALL, "-m", tiny_models["esm"], "-o", tmp_path / "e.h5", flag, value)
    assert result.exit_code == 2 and f"{flag} places a model spread over devices" in result.stderr


def test_refused_under_torchrun_with_several_ranks(run_cli, tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = run_cli("embed", SMALL, "-m", tiny_models["esm"], "-o", tmp_path / "e.h5", "--device-map", "auto")
    assert result.exit_code == 2 and "--device-map auto under torchrun with 2 ranks" in result.stderr


def test_without_accelerate_it_names_the_extra(run_cli, tmp_path, tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # (import accelerate: ImportError)
    result = run_cli("embed", SMALL, "-m", tiny_models["esm"], "-o", tmp_path / "e.h5", "--device-map", "auto")
    assert result.exit_code == 2, result.stderr
    assert 'needs the accelerate package, which is not installed: pip install "protrans[big]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_offload_folder_among_the_models_files_is_refused(run_cli, tmp_path, tiny_models):
    """The model directory itself, or a folder of its run, is refused as --offload-folder (accelerate
    writes index.json and a .dat file a weight there); a folder of another name inside it is not."""
    pytest.importorskip("accelerate")
    model_dir = tiny_models["esm"]
    before = sorted(p.name for p in model_dir.iterdir())
    for folder, says in ((model_dir, "is the model directory"), (model_dir / "checkpoints", "the training run's checkpoints")):
        result = run_cli("embed", SMALL, "-m", model_dir, "-o", tmp_path / "e.h5", "--device-map", "auto",
                         "--offload-folder", folder)
        assert result.exit_code == 2 and says in result.stderr, result.stderr
        assert "--offload-folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in model_dir.iterdir()) == before and not (tmp_path / "e.h5").exists()
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", tmp_path / "e.h5", "--device-map", "auto",
                     "--offload-folder", model_dir / "offload")
    assert result.exit_code == 0, result.stderr


def test_onehot_has_no_model_to_map(run_cli, tmp_path):
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", tmp_path / "e.h5", "--device-map", "auto")
    assert result.exit_code == 2 and "the onehot embedder has no model to spread" in result.stderr


def test_a_model_that_fits_is_recorded_on_its_one_device(run_cli, tmp_path, tiny_models):
    pytest.importorskip("accelerate")
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models["t5"], "-o", out, "--device-map", "sequential", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert "(--device-map sequential): 1 module on cpu" in result.stderr
    assert "meta device" not in result.stderr  # (accelerate's own warning: the summary says where)
    with EmbeddingsReader(out) as r:
        assert json.loads(r.attrs["device_map"]) == {"setting": "sequential", "modules": {"": "cpu"}}
    info = run_cli("info", out)  # (it said nothing of the map)
    assert info.exit_code == 0 and "device map:    sequential: 1 module on cpu\n" in info.stdout, info.output


def test_a_resumed_run_records_its_own_map_or_none(run_cli, tmp_path, tiny_models):
    pytest.importorskip("accelerate")
    records = list(read_fasta(SMALL))
    first = tmp_path / "first.fa"
    first.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records[:2]))
    out, model_dir = tmp_path / "e.h5", tiny_models["esm"]
    assert run_cli("embed", first, "-m", model_dir, "-o", out, "--device-map", "auto", "-j", "1").exit_code == 0
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", out, "--resume", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        assert "device_map" not in r.attrs  # (the last run's: none)
        runs = json.loads(r.attrs["runs"])
    assert json.loads(runs[0]["device_map"])["setting"] == "auto" and "device_map" not in runs[1]
    assert sorted(_read(out)) == sorted(r.id for r in records)


@pytest.mark.parametrize("family_name", ["xlnet", "esm", "bert", "albert", "transfo_xl"])
def test_load_model_maps_the_masked_lm_too(tiny_models, tmp_path, family_name):
    """load_model(masked_lm=True, device_map=...) (variants' and perplexity's loader, from Python):
    the logits of the model without a map (XLNet's attention split between CPU and disk gave others;
    ALBERT's and ESM's heads and Transformer-XL's attention hold bare parameters: kept whole by the
    general rule of models/base.py load_checked, no family list)."""
    pytest.importorskip("accelerate")
    import torch

    from protrans_cli.models import load_model

    model_dir, family = tiny_models[family_name], FAMILIES[family_name]
    plain = load_model(str(model_dir), masked_lm=True)
    size = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    mapped = load_model(str(model_dir), masked_lm=True, device_map="auto", max_memory={"cpu": int(size * 0.8)},
                        offload_folder=str(tmp_path / "off"))
    assert "disk" in mapped.model.hf_device_map.values()
    inputs = family.encode(plain.tokenizer, ["MKTAYIAKQRQISFVK", "GGW"])[0]
    with torch.no_grad():
        torch.testing.assert_close(mapped.model(**inputs).logits, plain.model(**inputs).logits, atol=1e-5, rtol=0)


def test_accelerates_warning_of_a_bare_parameters_key_is_quiet_unless_verbose(run_cli, tmp_path, tiny_models,
                                                                              recwarn):
    """XLNet's mask_emb (a bare parameter of the model itself) is a key of its map, and accelerate
    warned "The following device_map keys do not match any submodules in the model: ['mask_emb']"
    on stderr at every run: harmless (the model's own parameter stays where its inputs are), so
    said only with -v, as accelerate's other placing messages."""
    pytest.importorskip("accelerate")
    family, model_dir = FAMILIES["xlnet"], tiny_models["xlnet"]
    cpu = int(_encoder_bytes(family, model_dir) * 0.8)
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", tmp_path / "m.h5", "--device-map", "auto",
                     "--max-memory", f"cpu={cpu}", "--offload-folder", tmp_path / "offload", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert not [w for w in recwarn if "do not match any submodules" in str(w.message)]


def _small_position_model(tmp_path, family_name: str) -> tuple:
    """A tiny model of `family_name` with 3 layers and 64 positions (66 for RoBERTa, which numbers
    them after the padding index): the tiny preset's 2048 learned positions are most of its weights,
    and BERT's and RoBERTa's embeddings are one block a map keeps whole (transformers'
    _no_split_modules)."""
    import torch

    torch.manual_seed(0)
    family = FAMILIES[family_name]
    tokenizer = family.build_tokenizer()
    positions = 66 if family_name == "roberta" else 64
    model = family.pretraining_model(family.build_config("tiny", tokenizer, max_position_embeddings=positions,
                                                           num_hidden_layers=3)).eval()
    family.save_pretrained(model, tokenizer, tmp_path / "model")
    return family, tmp_path / "model"


@pytest.mark.parametrize("family_name, block", [("bert", "BertLayer"), ("roberta", "RobertaLayer"),
                                                ("electra", "ElectraLayer"), ("albert", "AlbertLayer")])
def test_bert_like_models_are_spread_a_layer_at_a_time(run_cli, tmp_path, family_name, block):
    """BERT and RoBERTa name their blocks (BertEmbeddings, BertLayer: transformers 5's own
    _no_split_modules, gathered into a head class by post_init), ALBERT and ELECTRA name none and
    the family does (AlbertLayer, ElectraLayer): a budget of the embeddings and one layer (with the
    room accelerate keeps on the CPU for the largest block) puts the embeddings and the first layer
    on the CPU and the other two on the disk, with the rows of the run without a map."""
    pytest.importorskip("accelerate")
    from protrans_cli.models import load_model

    family, model_dir = _small_position_model(tmp_path, family_name)
    encoder = family.encoder_class.from_pretrained(str(model_dir), use_kernels=False)

    def size(module):  # (what accelerate counts: parameters and buffers, here the position ids)
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    layer = max(size(m) for m in encoder.modules() if type(m).__name__ == block)
    cpu = size(encoder.embeddings) + 2 * layer + layer // 2
    if family_name == "albert":  # (one layer shared by every depth: the embeddings on the CPU, the layer not)
        cpu = layer + size(encoder.embeddings) + 64
    mapped, plain = tmp_path / "mapped.h5", tmp_path / "plain.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", mapped, "--device-map", "auto", "--max-memory",
                     f"cpu={cpu}", "--offload-folder", tmp_path / "offload", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert "the device map put none of the model there" not in result.stderr, result.stderr
    assert run_cli("embed", SMALL, "-m", model_dir, "-o", plain, "--device", "cpu", "-j", "1").exit_code == 0
    with EmbeddingsReader(mapped) as r:
        modules = json.loads(r.attrs["device_map"])["modules"]
    assert len(modules) > 1 and set(modules.values()) == {"cpu", "disk"}, modules
    if family_name != "albert":
        assert modules["embeddings"] == modules["encoder.layer.0"] == "cpu", modules
        assert modules["encoder.layer.1"] == "disk", modules
    loaded = load_model(str(model_dir), device_map="auto", max_memory={"cpu": cpu},
                        offload_folder=str(tmp_path / "offload2"))
    assert block in loaded.model._no_split_modules
    assert not [key for key in loaded.model.hf_device_map if key.startswith("embeddings.")], loaded.model.hf_device_map
    rows, plain_rows = _read(mapped), _read(plain)
    assert sorted(rows) == sorted(plain_rows)
    for ident, expected in plain_rows.items():
        np.testing.assert_allclose(rows[ident], expected, atol=1e-5, rtol=0)


def test_a_budget_that_holds_no_block_says_why(run_cli, tmp_path, tiny_models):
    """The tiny BERT preset (2048 learned positions: its embeddings, one block, are 78% of it) with
    --max-memory cpu at 80% of the model: accelerate keeps room on the CPU for that block and puts
    the whole model on the disk; said in one warning naming the block and the room to give."""
    pytest.importorskip("accelerate")
    family, model_dir = FAMILIES["bert"], tiny_models["bert"]
    total = _encoder_bytes(family, model_dir)
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", out, "--device-map", "auto", "--max-memory",
                     f"cpu={int(total * 0.8)}", "--offload-folder", tmp_path / "offload", "-j", "1")
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "the device map put none of the model there" in line]
    assert len(said) == 1, result.stderr
    assert f"--max-memory cpu={int(total * 0.8)}: the device map put none of the model there, but some on disk" in said[0]
    assert "(the largest, BertEmbeddings: 0.25 MiB)" in said[0] and "more than 0.51 MiB" in said[0], said[0]
    with EmbeddingsReader(out) as r:
        assert json.loads(r.attrs["device_map"])["modules"] == {"": "disk"}
    # the room it says (twice the block: more than this model): all of it on the CPU, nothing said
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", tmp_path / "f.h5", "--device-map", "auto",
                     "--max-memory", "cpu=0.52MiB", "--offload-folder", tmp_path / "offload2", "-j", "1")
    assert result.exit_code == 0 and "the device map put none" not in result.stderr, result.stderr
    with EmbeddingsReader(tmp_path / "f.h5") as r:
        assert json.loads(r.attrs["device_map"])["modules"] == {"": "cpu"}


@pytest.mark.parametrize("family_name, block", [("albert", "AlbertEmbeddings"), ("electra", "ElectraEmbeddings")])
def test_albert_and_electra_embeddings_are_kept_whole(run_cli, tmp_path, tiny_models, family_name, block):
    """AlbertModel and ElectraModel name no blocks of their own, and their embeddings (word, position
    and token-type tables added in the embeddings module's forward) were split: at 80% of the tiny
    model the map put embeddings.word_embeddings on the CPU and the position table on the disk (on
    several GPUs, an addition of tensors on two devices). The family keeps the module whole, as
    BertModel keeps BertEmbeddings; the rows are those of the run without a map."""
    pytest.importorskip("accelerate")
    from protrans_cli.models import load_model

    family, model_dir = FAMILIES[family_name], tiny_models[family_name]
    cpu = int(_encoder_bytes(family, model_dir) * 0.8)
    loaded = load_model(str(model_dir), device_map="auto", max_memory={"cpu": cpu},
                        offload_folder=str(tmp_path / "offload"))
    assert block in loaded.model._no_split_modules
    assert "disk" in loaded.model.hf_device_map.values()
    deeper = [key for key in loaded.model.hf_device_map if key.startswith("embeddings.")]
    assert not deeper, loaded.model.hf_device_map
    masked = load_model(str(model_dir), masked_lm=True, device_map="auto", max_memory={"cpu": cpu},
                        offload_folder=str(tmp_path / "offload_lm"))
    assert block in masked.model._no_split_modules
    assert not [key for key in masked.model.hf_device_map if ".embeddings." in key], masked.model.hf_device_map
    mapped, plain = tmp_path / "mapped.h5", tmp_path / "plain.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", mapped, "--device-map", "auto", "--max-memory",
                     f"cpu={cpu}", "--offload-folder", tmp_path / "offload2", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert run_cli("embed", SMALL, "-m", model_dir, "-o", plain, "--device", "cpu", "-j", "1").exit_code == 0
    with EmbeddingsReader(mapped) as r:
        modules = json.loads(r.attrs["device_map"])["modules"]
    assert not [key for key in modules if key.startswith("embeddings.")], modules
    rows, plain_rows = _read(mapped), _read(plain)
    assert sorted(rows) == sorted(plain_rows)
    for ident, expected in plain_rows.items():
        np.testing.assert_allclose(rows[ident], expected, atol=1e-5, rtol=0)
