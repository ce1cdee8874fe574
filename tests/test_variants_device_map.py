"""`protrans variants --device-map` and `protrans perplexity --device-map`: a masked LM spread by
from_pretrained (accelerate) over the CPU and files on disk gives the scores and perplexities of
the run without a map (and of a plain transformers loop); and the options' errors."""

from __future__ import annotations

import csv
import io
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_model  # noqa: E402
from test_perplexity import _plain_pll  # noqa: E402

SEQS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "LEERLGLIEVQAPILSRVG", "p3": "GDGTQDNLSGAEKAVW"}
WILD_TYPE = "MKTAYIAKQRQISFVK"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {name: save_tiny_model(tmp_path_factory, name) for name in ("esm", "bert")}


def _fasta(path):
    path.write_text("".join(f">{k}\n{v}\n" for k, v in SEQS.items()))
    return path


def _rows(path, delimiter):
    return list(csv.DictReader(io.StringIO(path.read_text()), delimiter=delimiter))


def _map_options(model_dir, tmp_path):
    """--device-map auto with room on the CPU for 80% of the masked LM's weights: the rest on disk."""
    from protrans_cli.models import load_model

    model = load_model(str(model_dir), masked_lm=True).model
    cpu = int(sum(p.numel() * p.element_size() for p in model.parameters()) * 0.8)
    return ["--device-map", "auto", "--max-memory", f"cpu={cpu}", "--offload-folder", str(tmp_path / "offload")]


@pytest.mark.parametrize("family_name", ["esm", "bert"])
def test_variants_under_a_map_with_disk_offload_score_as_without(run_cli, tmp_path, tiny, family_name):
    pytest.importorskip("accelerate")
    model_dir = tiny[family_name]
    mapped, plain = tmp_path / "mapped.csv", tmp_path / "plain.csv"
    common = ["variants", "--all-singles", "--sequence", WILD_TYPE, "-m", model_dir, "--scoring", "masked-marginals",
              "--scoring", "wt-marginals", "-j", "1"]
    result = run_cli(*common, "-o", mapped, *_map_options(model_dir, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "the model was spread over devices (--device-map auto):" in result.stderr
    assert " on disk" in result.stderr.split("spread over devices")[1].splitlines()[0], result.stderr
    assert run_cli(*common, "-o", plain, "--device", "cpu").exit_code == 0
    got, want = _rows(mapped, ","), _rows(plain, ",")
    assert len(got) == len(want) == 19 * len(WILD_TYPE)
    columns = [c for c in want[0] if c != "mutant"]
    assert len(columns) == 2
    for g, w in zip(got, want):
        assert g["mutant"] == w["mutant"]
        for column in columns:
            assert float(g[column]) == pytest.approx(float(w[column]), abs=1e-5)


@pytest.mark.parametrize("family_name", ["esm", "bert"])
def test_perplexity_under_a_map_with_disk_offload_is_the_plain_loops(run_cli, tmp_path, tiny, family_name):
    pytest.importorskip("accelerate")
    model_dir, fasta = tiny[family_name], _fasta(tmp_path / "in.fa")
    mapped, plain = tmp_path / "mapped.tsv", tmp_path / "plain.tsv"
    result = run_cli("perplexity", fasta, "-m", model_dir, "-o", mapped, "-j", "1", *_map_options(model_dir, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert " on disk" in result.stderr.split("spread over devices")[1].splitlines()[0], result.stderr
    assert run_cli("perplexity", fasta, "-m", model_dir, "-o", plain, "--device", "cpu", "-j", "1").exit_code == 0
    got, want = _rows(mapped, "\t"), _rows(plain, "\t")
    assert [r["id"] for r in got] == list(SEQS)
    for g, w in zip(got, want):
        assert float(g["log_likelihood"]) == pytest.approx(float(w["log_likelihood"]), abs=1e-5)
        assert float(g["perplexity"]) == pytest.approx(float(w["perplexity"]), rel=1e-5)
        assert float(g["log_likelihood"]) == pytest.approx(_plain_pll(model_dir, family_name, SEQS[g["id"]]),
                                                           abs=1e-4)


def test_the_scorer_takes_its_inputs_on_the_maps_device(tiny, tmp_path):
    """VariantScorer under a map whose first module is on disk: the CPU (its input device), not
    the meta device of an offloaded first parameter."""
    pytest.importorskip("accelerate")
    from protrans_cli.models import load_model
    from protrans_cli.placement import model_device
    from protrans_cli.variants import VariantScorer

    loaded = load_model(str(tiny["esm"]), masked_lm=True, device_map="auto", max_memory={"cpu": 1},
                        offload_folder=str(tmp_path / "off"))
    assert any(p.device.type == "meta" for p in loaded.model.parameters())
    scorer = VariantScorer(loaded, progress=False)
    assert str(scorer.device) == str(loaded.device) == str(model_device(loaded.model)) == "cpu"
    assert scorer.device_map == loaded.model.hf_device_map


@pytest.mark.parametrize("command", ["variants", "perplexity"])
@pytest.mark.parametrize("extra, message", [
    (["--device-map", "auto", "--max-memory", "cpu=1GB,gpu=3"], "item 'gpu=3': 'gpu' is not a device"),
    (["--device-map", "auto", "--device", "cpu"], "--device-map auto with --device cpu"),
    (["--max-memory", "cpu=1GB"], "--max-memory places a model spread over devices"),
    (["--offload-folder", "off"], "--offload-folder places a model spread over devices"),
])
def test_usage_errors(run_cli, tmp_path, tiny, command, extra, message):
    out = tmp_path / "out.tsv"
    args = (["variants", "--all-singles", "--sequence", WILD_TYPE] if command == "variants"
            else ["perplexity", _fasta(tmp_path / "in.fa")])
    result = run_cli(*args, "-m", tiny["esm"], "-o", out, *extra)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("command", ["variants", "perplexity"])
def test_refused_under_torchrun_without_accelerate_and_among_the_models_files(run_cli, tmp_path, tiny, command,
                                                                           monkeypatch):
    model_dir = tiny["esm"]
    args = (["variants", "--all-singles", "--sequence", WILD_TYPE] if command == "variants"
            else ["perplexity", _fasta(tmp_path / "in.fa")])
    out = tmp_path / "out.tsv"
    with monkeypatch.context() as env:
        env.setenv("WORLD_SIZE", "2")
        env.setenv("RANK", "0")
        result = run_cli(*args, "-m", model_dir, "-o", out, "--device-map", "auto")
    assert result.exit_code == 2 and "--device-map auto under torchrun with 2 ranks" in result.stderr
    with monkeypatch.context() as env:
        env.setitem(sys.modules, "accelerate", None)  # (import accelerate: ImportError)
        result = run_cli(*args, "-m", model_dir, "-o", out, "--device-map", "auto")
    assert result.exit_code == 2 and 'needs the accelerate package, which is not installed' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    pytest.importorskip("accelerate")
    before = sorted(p.name for p in model_dir.iterdir())
    result = run_cli(*args, "-m", model_dir, "-o", out, "--device-map", "auto", "--offload-folder", model_dir)
    assert result.exit_code == 2 and "is the model directory" in result.stderr, result.stderr
    assert "--offload-folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in model_dir.iterdir()) == before and not out.exists()


@pytest.mark.parametrize("command", ["variants", "perplexity"])
def test_onehot_has_no_model_to_map(run_cli, tmp_path, command):
    args = (["variants", "--all-singles", "--sequence", WILD_TYPE] if command == "variants"
            else ["perplexity", _fasta(tmp_path / "in.fa")])
    result = run_cli(*args, "-m", "onehot", "--device-map", "auto")
    assert result.exit_code == 2 and "one-hot encoding, not a language model" in result.stderr, result.stderr


def test_esms_lm_head_is_kept_whole_under_a_map(tiny, tmp_path):
    """ESM's LM head holds a bare `bias` beside its modules: a map that split the head put
    `lm_head.bias` on the disk apart from `lm_head.decoder` (at 65% of the weights on the CPU),
    left it on the meta device, and scoring failed with "Tensor on device meta is not on the
    expected device cpu". Every key of the map is a module, and the log-probabilities are the
    unmapped ones, over CPU budgets that split the model at other places."""
    pytest.importorskip("accelerate")
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    plain = load_model(str(tiny["esm"]), masked_lm=True)
    want = VariantScorer(plain, progress=False).residue_log_probs([WILD_TYPE], masked=True)[0]
    size = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    for fraction in (0.6, 0.65, 0.7, 0.8, 0.9):
        loaded = load_model(str(tiny["esm"]), masked_lm=True, device_map="auto", max_memory={"cpu": int(size * fraction)},
                            offload_folder=str(tmp_path / f"off{fraction}"))
        for key in loaded.model.hf_device_map:
            if key:
                loaded.model.get_submodule(key)  # (an AttributeError for a parameter's name)
        got = VariantScorer(loaded, progress=False).residue_log_probs([WILD_TYPE], masked=True)[0]
        assert abs(got - want).max() < 1e-5, fraction
