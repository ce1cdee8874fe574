"""`protrans contacts --device-map`: ESM's contact head over a model spread by from_pretrained
(accelerate) over the CPU and files on disk gives the maps of the run without a map (itself
checked against fair-esm and transformers in tests/test_contacts.py) and of transformers'
`predict_contacts`; the map is recorded and cleared as embed records it; the options' errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_contacts import REFERENCES, _attrs, _maps, _stop_on_the_second_batch  # noqa: E402

MODEL = REFERENCES["esm2"]  # a tiny ESM-2 with its contact head (model.safetensors)
SEQS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "LEERLGLIEVQAPILSRVG", "p3": "GDGTQDNLSGAEKAVW", "p4": "MAAG"}


def _fasta(path):
    path.write_text("".join(f">{k}\n{v}\n" for k, v in SEQS.items()))
    return path


def _cpu_room() -> int:
    """80% of the model's weights in bytes: the rest goes to disk."""
    from protrans_cli.models import load_model

    model = load_model(str(MODEL)).model
    return int(sum(p.numel() * p.element_size() for p in model.parameters()) * 0.8)


def _map_args(tmp_path):
    return ["--device-map", "auto", "--max-memory", f"cpu={_cpu_room()}", "--offload-folder", tmp_path / "offload"]


def _transformers_maps() -> dict[str, np.ndarray]:
    from transformers import EsmForMaskedLM, EsmTokenizer

    hf = EsmForMaskedLM.from_pretrained(str(MODEL), attn_implementation="eager").eval()
    tok = EsmTokenizer.from_pretrained(str(MODEL))
    enc = tok(list(SEQS.values()), return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = hf.predict_contacts(enc["input_ids"], enc["attention_mask"]).numpy()
    return {k: ref[i, :len(s), :len(s)] for i, (k, s) in enumerate(SEQS.items())}


def test_maps_under_a_map_with_disk_offload_are_the_unmapped_runs(run_cli, tmp_path):
    pytest.importorskip("accelerate")
    fasta = _fasta(tmp_path / "in.fa")
    mapped, plain = tmp_path / "mapped.h5", tmp_path / "plain.h5"
    common = ["contacts", fasta, "-m", MODEL, "--storage-dtype", "float32", "-j", "1"]
    result = run_cli(*common, "-o", mapped, *_map_args(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "the model was spread over devices (--device-map auto):" in result.stderr
    assert " on disk" in result.stderr.split("spread over devices")[1].splitlines()[0], result.stderr
    assert run_cli(*common, "-o", plain, "--device", "cpu").exit_code == 0
    got, want, ref = _maps(mapped), _maps(plain), _transformers_maps()
    assert got.keys() == want.keys() == set(SEQS)
    for k in SEQS:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0, err_msg=k)
        np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=0, err_msg=k)
    recorded = json.loads(_attrs(mapped)["device_map"])
    assert recorded["setting"] == "auto" and "disk" in recorded["modules"].values()
    assert _attrs(mapped)["device"] == "cpu" and "device_map" not in _attrs(plain)
    info = run_cli("info", mapped)
    assert info.exit_code == 0 and "device map:   auto: " in info.stdout and " on disk" in info.stdout, info.stdout


def test_an_offloaded_head_is_read_from_accelerates_copy_without_a_readable_checkpoint(tmp_path, monkeypatch):
    """A head on the meta device is read from the checkpoint's safetensors file; where that cannot
    be read (a .bin checkpoint), from accelerate's offloaded copy: never the meta tensors."""
    pytest.importorskip("accelerate")
    from protrans_cli import contacts
    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.models import load_model

    loaded = load_model(str(MODEL), device_map="auto", max_memory={"cpu": 1}, offload_folder=str(tmp_path / "off"))
    assert loaded.model.contact_head.regression.weight.device.type == "meta"
    plain = ContactPredictor(load_model(str(MODEL)))
    want = plain.predict(list(SEQS.values()))
    for folder in (True, False):
        with monkeypatch.context() as patch:
            if not folder:
                patch.setattr(contacts, "_checkpoint_folder", lambda loaded: None)
            predictor = ContactPredictor(loaded)
        assert predictor.weights.device.type == "cpu" and torch.equal(predictor.weights, plain.weights)
        assert predictor.bias == plain.bias
        for g, w in zip(predictor.predict(list(SEQS.values())), want):
            np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
    monkeypatch.setattr(contacts, "_checkpoint_folder", lambda loaded: None)
    monkeypatch.delattr(loaded.model.contact_head.regression, "_hf_hook")
    with pytest.raises(contacts.ModelError, match="contact head was offloaded by the device map"):
        ContactPredictor(loaded)


def test_a_resumed_run_without_a_map_clears_the_recorded_map(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    from protrans_cli.contacts import ContactOptions, ContactPredictor, predict_contacts

    fasta = _fasta(tmp_path / "in.fa")
    plain = dict(model=str(MODEL), max_batch_size=1, storage_dtype="float32")
    full = _maps(predict_contacts(fasta, tmp_path / "full.h5", ContactOptions(**plain, device="cpu")).output)
    original = _stop_on_the_second_batch(monkeypatch)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        predict_contacts(fasta, out, ContactOptions(**plain, device_map="auto", max_memory={"cpu": _cpu_room()},
                                                    offload_folder=str(tmp_path / "off")))
    monkeypatch.setattr(ContactPredictor, "predict", original)
    partial = tmp_path / "out.h5.partial"
    assert json.loads(_attrs(partial)["device_map"])["setting"] == "auto" and len(_maps(partial)) == 1
    summary = predict_contacts(fasta, out, ContactOptions(**plain, device="cpu", resume=True))
    assert summary.num_resumed == 1 and summary.num_written == 3 and summary.device_map is None
    got, attrs = _maps(out), _attrs(out)
    assert got.keys() == full.keys()
    for k in full:
        np.testing.assert_allclose(got[k], full[k], atol=1e-5, rtol=0, err_msg=k)
    assert "device_map" not in attrs  # (the earlier run's map, not this one's)
    runs = json.loads(attrs["runs"])
    assert len(runs) == 2 and "device_map" in runs[0] and "device_map" not in runs[1]


def test_a_half_precision_map_not_finite_is_recorded_without_a_float32_retry(tmp_path, monkeypatch):
    """As embed does under a map: the offloaded weights cannot be recast, the protein is recorded
    as failed with the way out (--dtype float32)."""
    pytest.importorskip("accelerate")
    from protrans_cli.contacts import ContactOptions, ContactPredictor, predict_contacts
    from protrans_cli.models import load_model

    loaded = load_model(str(MODEL), dtype="bfloat16", device_map="auto", max_memory={"cpu": 1},
                        offload_folder=str(tmp_path / "off"))
    original, dtypes = ContactPredictor.predict, []

    def overflow(self, seqs):
        dtypes.append(self.compute_dtype)
        maps = [m.copy() for m in original(self, seqs)]
        for seq, m in zip(seqs, maps):
            if seq == SEQS["p2"]:
                m[1, 3] = np.inf
        return maps

    monkeypatch.setattr(ContactPredictor, "predict", overflow)
    out = tmp_path / "out.h5"
    summary = predict_contacts(_fasta(tmp_path / "in.fa"), out, ContactOptions(
        model=str(MODEL), device_map="auto", storage_dtype="float32"), predictor=ContactPredictor(loaded))
    assert set(dtypes) == {"bfloat16"}
    assert summary.failed == {"p2": "NaN or infinity in its contact map (the attention maps of the model's bfloat16 "
                                    "pass; no float32 retry for a model spread with --device-map: give --dtype "
                                    "float32)"}
    assert set(_maps(out)) == {"p1", "p3", "p4"}
    # a predictor whose model was loaded without a map, under options that ask for one: refused
    from protrans_cli.errors import UsageError

    with pytest.raises(UsageError, match="loaded without a device map"):
        predict_contacts(_fasta(tmp_path / "in.fa"), tmp_path / "other.h5", ContactOptions(
            model=str(MODEL), device_map="auto"), predictor=ContactPredictor(load_model(str(MODEL))))


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "auto", "--max-memory", "cpu=1GB,gpu=3"], "item 'gpu=3': 'gpu' is not a device"),
    (["--device-map", "auto", "--device", "cpu"], "--device-map auto with --device cpu"),
    (["--max-memory", "cpu=1GB"], "--max-memory places a model spread over devices"),
    (["--offload-folder", "off"], "--offload-folder places a model spread over devices"),
])
def test_usage_errors(run_cli, tmp_path, extra, message):
    out = tmp_path / "out.h5"
    result = run_cli("contacts", _fasta(tmp_path / "in.fa"), "-m", MODEL, "-o", out, *extra)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_refused_under_torchrun_without_accelerate_and_among_the_models_files(run_cli, tmp_path, monkeypatch):
    args = ["contacts", _fasta(tmp_path / "in.fa"), "-m", MODEL, "-o", tmp_path / "out.h5"]
    with monkeypatch.context() as env:
        env.setenv("WORLD_SIZE", "2")
        env.setenv("RANK", "0")
        result = run_cli(*args, "--device-map", "auto")
    assert result.exit_code == 2 and "--device-map auto under torchrun with 2 ranks" in result.stderr
    with monkeypatch.context() as env:
        env.setitem(sys.modules, "accelerate", None)  # (import accelerate: ImportError)
        result = run_cli(*args, "--device-map", "auto")
    assert result.exit_code == 2 and "needs the accelerate package, which is not installed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    pytest.importorskip("accelerate")
    before = sorted(p.name for p in MODEL.iterdir())
    result = run_cli(*args, "--device-map", "auto", "--offload-folder", MODEL)
    assert result.exit_code == 2 and "is the model directory" in result.stderr, result.stderr
    assert "--offload-folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in MODEL.iterdir()) == before and not (tmp_path / "out.h5").exists()
