"""`protrans esm-extract --resume`: an interrupted or failed run keeps what it computed in
OUTPUT_DIR/.protrans-esm-extract.partial/, and --resume goes on from it (embed's and contacts'
own resume), to the files of an uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "esm_reference"
INPUT = ">P1 first protein\nMKTAYIAKQRQISFV\n>P2\nMAAGW\n>P3 a/slash\nWKVLAAG\n>P4\nMKKLLPT\n"
PARTIAL = ".protrans-esm-extract.partial"
NAMES = ["P1.pt", "P2.pt", "P3.pt", "P4.pt"]
# one protein a batch: P1's 17 tokens alone, the others' 9 (P2's 7 padded to 9 beside one) two to a batch
# were it 18: 10 keeps them one a batch
BATCH = ["--toks_per_batch", "10"]


@pytest.fixture
def model_dir(tmp_path):
    to = tmp_path / "esm2_tiny"
    shutil.copytree(REFERENCE, to, ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    return to


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fa"
    path.write_text(INPUT)
    return path


def _files(folder) -> dict:
    return {p.name: torch.load(p, weights_only=True) for p in sorted(Path(folder).glob("*.pt"))}


def _assert_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and want
    for name, entry in want.items():
        assert sorted(got[name]) == sorted(entry), name
        for key, value in entry.items():
            if isinstance(value, dict):
                assert sorted(got[name][key]) == sorted(value)
                for layer, tensor in value.items():
                    assert torch.equal(got[name][key][layer], tensor), (name, key, layer)
            elif isinstance(value, torch.Tensor):
                assert torch.equal(got[name][key], value), (name, key)
            else:
                assert got[name][key] == value


def _counting(monkeypatch, stop_after: int | None = None):
    """Proteins given to the model's hidden states and to the contact head, counted; a Ctrl-C at the
    hidden states' batch after `stop_after` proteins."""
    import protrans_cli.contacts as contacts
    from protrans_cli.models import FAMILIES

    counts = {"rows": 0, "contacts": 0}
    family = type(FAMILIES["esm"])
    rows, predict = family.hidden_states, contacts.ContactPredictor.predict

    def hidden_states(self, model, inputs, layers):
        if stop_after is not None and counts["rows"] >= stop_after:
            raise KeyboardInterrupt
        counts["rows"] += int(inputs["input_ids"].shape[0])
        return rows(self, model, inputs, layers)

    def contact_maps(self, sequences):
        counts["contacts"] += len(sequences)
        return predict(self, sequences)

    monkeypatch.setattr(family, "hidden_states", hidden_states)
    monkeypatch.setattr(contacts.ContactPredictor, "predict", contact_maps)
    return counts


@pytest.mark.parametrize("include", [["mean", "per_tok"], ["mean", "contacts"], ["bos", "per_tok", "contacts"]])
def test_an_interrupted_run_resumed_writes_an_uninterrupted_runs_files_computing_nothing_twice(
        run_cli, tmp_path, model_dir, fasta, monkeypatch, include):
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "whole", "--include", *include, *BATCH)
    assert r.exit_code == 0, r.stderr
    whole = _files(tmp_path / "whole")

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        counts = _counting(patch, stop_after=2)
        r = run_cli("esm-extract", model_dir, fasta, out, "--include", *include, *BATCH, "--repr_layers", "-1")
    assert r.exit_code == 130, r.stderr
    assert counts["rows"] == 2 and counts["contacts"] == (4 if "contacts" in include else 0)
    what = "contact maps of 4 and hidden states of 2 of 4" if "contacts" in include else "2 of 4"
    assert r.stderr.splitlines(keepends=True)[-1] == (f"protrans: error: interrupted: {what} proteins computed are kept in {out / PARTIAL}; "
                        "run the same command with --resume\n"), r.stderr
    assert os.listdir(out) == [PARTIAL]  # (none of its files in the output folder)

    # without --resume: refused, the work kept
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", *include, *BATCH)
    assert r.exit_code == 2 and r.stderr.splitlines(keepends=True)[-1] == (
        f"protrans: error: {out / PARTIAL}: holds the work of an interrupted "
                                             "esm-extract run: --resume finishes it (with the settings it was computed "
                                             "with); remove the folder to start again\n"), r.stderr

    counts = _counting(monkeypatch)
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", *include, *BATCH, "--resume")
    assert r.exit_code == 0, r.stderr
    assert counts == {"rows": 2, "contacts": 0}, counts  # (nothing computed again)
    assert "; 2 of them computed by the interrupted run" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == NAMES == sorted(whole)  # (the folder removed)
    _assert_equal(_files(out), whole)


def test_the_library_resumes_and_counts_the_proteins_it_kept(tmp_path, model_dir, fasta, monkeypatch):
    from protrans_cli.esm_extract import ExtractOptions, esm_extract

    def options(**kw):
        return ExtractOptions(model=str(model_dir), include=("mean",), toks_per_batch=10, **kw)

    whole = esm_extract(fasta, tmp_path / "whole", options())
    assert whole.num_resumed == 0 and whole.num_written == 4
    with monkeypatch.context() as patch:
        _counting(patch, stop_after=3)
        with pytest.raises(KeyboardInterrupt) as caught:
            esm_extract(fasta, tmp_path / "out", options())
    assert caught.value.__notes__ == [f"3 of 4 proteins computed are kept in {tmp_path / 'out' / PARTIAL}; call "
                                      "again with resume=True"]
    counts = _counting(monkeypatch)
    summary = esm_extract(fasta, tmp_path / "out", options(resume=True))
    assert summary.num_resumed == 3 and summary.num_written == 4 and counts["rows"] == 1
    assert not (tmp_path / "out" / PARTIAL).exists()
    _assert_equal(_files(tmp_path / "out"), _files(tmp_path / "whole"))
    # a resume with nothing kept is a plain run
    again = esm_extract(fasta, tmp_path / "out", options(resume=True))
    assert again.num_resumed == 0 and again.num_written == 4


@pytest.mark.parametrize("args, differs", [
    (["--include", "mean", "--repr_layers", "1"], "--repr_layers 2, now 1"),
    (["--include", "mean", "bos"], "--include mean, now mean bos"),
    (["--include", "mean", "--truncation_seq_length", "5"], "--truncation_seq_length 1022, now 5"),
    (["--include", "mean", "--dtype", "float16", "--truncation_seq_length", "9"],
     "--truncation_seq_length 1022, now 9; --dtype float32, now float16"),
])
def test_a_resume_with_other_settings_is_refused_naming_them(run_cli, tmp_path, model_dir, fasta, monkeypatch, args,
                                                             differs):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _counting(patch, stop_after=1)
        assert run_cli("esm-extract", model_dir, fasta, out, "--include", "mean", *BATCH).exit_code == 130
    kept = sorted(os.listdir(out / PARTIAL))
    r = run_cli("esm-extract", model_dir, fasta, out, *args, "--resume")
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: {out / PARTIAL}: holds the work of a run with other "
                                             f"settings ({differs}): --resume goes on with the settings it was "
                                             "computed with; remove the folder to start again with these\n"), r.stderr
    assert sorted(os.listdir(out / PARTIAL)) == kept
    # another model
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    r = run_cli("esm-extract", other, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 2 and f"(MODEL_LOCATION {model_dir.resolve()}, now {other.resolve()})" in r.stderr, r.stderr


def test_a_failure_after_the_proteins_were_computed_keeps_them(run_cli, tmp_path, model_dir, fasta, monkeypatch):
    """An error (here a folder that cannot take a protein's file's place) once the proteins are
    computed: they are kept, and said; --resume once the cause is removed computes none again."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "P2.pt").mkdir()
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.endswith(f"; 4 of 4 proteins computed are kept in {out / PARTIAL}; run the same command with "
                             "--resume\n"), r.stderr
    (out / "P2.pt").rmdir()
    counts = _counting(monkeypatch)
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 0 and counts["rows"] == 0, r.stderr
    assert sorted(os.listdir(out)) == NAMES


def test_stdin_is_read_again_by_the_resumed_run(run_cli, tmp_path, model_dir, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _counting(patch, stop_after=2)
        r = run_cli("esm-extract", model_dir, "-", out, "--include", "mean", *BATCH, input=INPUT.encode())
    assert r.exit_code == 130 and "2 of 4 proteins computed" in r.stderr, r.stderr
    counts = _counting(monkeypatch)
    r = run_cli("esm-extract", model_dir, "-", out, "--include", "mean", *BATCH, "--resume", input=INPUT.encode())
    assert r.exit_code == 0 and counts["rows"] == 2, r.stderr
    assert len(_files(out)) == 4 and not (out / PARTIAL).exists()


def test_a_kept_folder_of_a_killed_run_is_resumed(run_cli, tmp_path, model_dir, fasta, monkeypatch):
    """SIGKILL: the folder's lock goes with the process (flock); its name is fixed, so the next
    --resume finds it, as it was left (here: a copy of a kept folder, with a lock file
    of embed's and no settings written since)."""
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _counting(patch, stop_after=2)
        assert run_cli("esm-extract", model_dir, fasta, out, "--include", "mean", *BATCH).exit_code == 130
    (out / PARTIAL / ".embeddings.h5.lock").write_bytes(b"")  # (embed's, left by the kill)
    counts = _counting(monkeypatch)
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean", *BATCH, "--resume")
    assert r.exit_code == 0 and counts["rows"] == 2, r.stderr
    assert len(_files(out)) == 4 and not (out / PARTIAL).exists()


@pytest.mark.slow  # (two commands in their own processes: torch imported twice, about 20 s)
def test_a_real_sigint_keeps_the_work_for_resume(tmp_path, model_dir, fasta):
    """A real Ctrl-C (SIGINT) to a running command, at its second batch of rows."""
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from protrans_cli.models import FAMILIES\n"
        "family = type(FAMILIES['esm']); rows = family.hidden_states; calls = []\n"
        "def hidden_states(self, *args):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "    return rows(self, *args)\n"
        "family.hidden_states = hidden_states\n"
        "from protrans_cli.cli import main\n"
        "sys.argv = ['protrans', *sys.argv[1:]]\n"
        "main()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = ["esm-extract", str(model_dir), str(fasta), str(out), "--include", "mean", *BATCH]
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 130 and time.monotonic() - started < 60, r.stderr
    assert re.fullmatch(rf"protrans: error: interrupted: 1 of 4 proteins computed are kept in {re.escape(str(out / PARTIAL))}; "
                        r"run the same command with --resume\n", r.stderr), r.stderr
    r = subprocess.run([sys.executable, "-m", "protrans_cli", *args, "--resume"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "; 1 of them computed by the interrupted run" in r.stderr, r.stderr
    assert len(_files(out)) == 4


def _fair_esm_file(path: Path) -> Path:
    from tests.test_import_model import save_fair_esm

    return save_fair_esm(path, "esm2")


def _conversions(monkeypatch) -> list:
    """fair-esm files converted, counted."""
    from protrans_cli.models import fair_esm

    made, convert = [], fair_esm.import_fair_esm

    def counted(checkpoint, out_dir, **kw):
        made.append(Path(checkpoint))
        return convert(checkpoint, out_dir, **kw)

    monkeypatch.setattr(fair_esm, "import_fair_esm", counted)
    return made


def test_a_fair_esm_file_as_model_location_resumes_with_its_conversion_kept(run_cli, tmp_path, fasta, monkeypatch):
    """MODEL_LOCATION a fair-esm .pt (esm-extract's usual call): it was converted into a new
    temporary folder at every run, and --resume was refused naming two temporary paths. Its
    conversion now lies in the working folder, kept with the work and used again."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ckpt = _fair_esm_file(tmp_path / "esm2_t2_tiny.pt")
    include = ["mean", "per_tok", "contacts"]
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "whole", "--include", *include, *BATCH)
    assert r.exit_code == 0, r.stderr
    whole = _files(tmp_path / "whole")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        counts = _counting(patch, stop_after=2)
        r = run_cli("esm-extract", ckpt, fasta, out, "--include", *include, *BATCH)
    assert r.exit_code == 130 and counts["rows"] == 2, r.stderr
    assert (out / PARTIAL / "model" / "esm2_t2_tiny" / "config.json").is_file()  # (kept for the resume)
    converted = _conversions(monkeypatch)
    counts = _counting(monkeypatch)
    r = run_cli("esm-extract", ckpt, fasta, out, "--include", *include, *BATCH, "--resume")
    assert r.exit_code == 0, r.stderr
    assert counts == {"rows": 2, "contacts": 0} and converted == [], (counts, converted)  # (nothing done again)
    assert f"esm-extract: the conversion of {ckpt} that the interrupted run made is used\n" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == NAMES
    _assert_equal(_files(out), whole)
    # (no temporary conversion; torch's compiler caches may be made there)
    assert [p for p in scratch.iterdir() if p.name.startswith("protrans-import-model")] == []


def test_a_resume_from_another_fair_esm_file_is_refused_naming_model_location(run_cli, tmp_path, fasta,
                                                                              monkeypatch):
    ckpt = _fair_esm_file(tmp_path / "esm2_t2_tiny.pt")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _counting(patch, stop_after=1)
        assert run_cli("esm-extract", ckpt, fasta, out, "--include", "mean", *BATCH).exit_code == 130
    kept = sorted(os.listdir(out / PARTIAL))
    assert "model" in kept and "model.json" in kept
    converted = _conversions(monkeypatch)
    # another file: refused before it is converted, naming the user's files (no temporary path)
    other = tmp_path / "elsewhere" / "esm2_t2_tiny.pt"
    other.parent.mkdir()
    shutil.copy(ckpt, other)
    r = run_cli("esm-extract", other, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 2 and r.stderr == (
        f"protrans: error: {out / PARTIAL}: holds the work of a run with other settings (MODEL_LOCATION "
        f"{ckpt.resolve()}, now {other.resolve()}): --resume goes on with the settings it was computed with; remove "
        "the folder to start again with these\n"), r.stderr
    # the same path, the file replaced since
    before = os.stat(ckpt).st_mtime_ns
    os.utime(ckpt, ns=(time.time_ns(), before + 10**9))
    r = run_cli("esm-extract", ckpt, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.search(r"\(MODEL_LOCATION's file [\d,]+ bytes, modified \S+ \S+; esm2_t2_tiny-contact-regression\.pt "
                     r"[\d,]+ bytes, modified \S+ \S+, now [\d,]+ bytes, modified ", r.stderr), r.stderr
    # a model directory in place of the file
    r = run_cli("esm-extract", REFERENCE, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 2 and f"(MODEL_LOCATION {ckpt.resolve()}, now {REFERENCE.resolve()})" in r.stderr, r.stderr
    assert "protrans-import-model" not in r.stderr and converted == []
    assert sorted(os.listdir(out / PARTIAL)) == kept
    # the file as it was, its kept conversion removed: converted again (to the same weights), and resumed
    os.utime(ckpt, ns=(time.time_ns(), before))
    shutil.rmtree(out / PARTIAL / "model")
    r = run_cli("esm-extract", ckpt, fasta, out, "--include", "mean", "--resume")
    assert r.exit_code == 0 and converted == [ckpt] and "1 of them computed by the interrupted run" in r.stderr, \
        r.stderr
    assert sorted(os.listdir(out)) == NAMES


def test_a_fair_esm_file_that_cannot_be_converted_leaves_no_folder(run_cli, tmp_path, fasta):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(_fair_esm_file(tmp_path / "esm2_t2_tiny.pt").read_bytes()[:2000])
    r = run_cli("esm-extract", cut, fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 1 and "cut.pt: cannot read the checkpoint" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_working_folders_of_earlier_versions_killed_runs_are_swept(run_cli, tmp_path, model_dir, fasta):
    """Earlier versions worked in OUTPUT_DIR/.esm-extract.<host>.<pid>-XXXX (make_temporary's, swept
    by the next run's make_temporary): a SIGKILLed run's is swept once a run starts, as it was --
    a process of this host that is gone, the folder untouched for an hour."""
    from protrans_cli.io.files import STALE_SECONDS, _host_tag

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = _host_tag()
    folders = {name: out / name for name in (f".esm-extract.{host}.{dead}-ab12", f".esm-extract.{host}.{dead}-new1",
                                             f".esm-extract.{host}.{os.getppid()}-live", f".esm-extract.other.{dead}-x1")}
    old = time.time() - STALE_SECONDS - 60
    for name, path in folders.items():
        (path / "embeddings.h5").parent.mkdir()
        (path / "embeddings.h5").write_bytes(b"half")
        if not name.endswith("new1"):
            for each in (path / "embeddings.h5", path):
                os.utime(each, (old, old))
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted([*NAMES, *(name for name in folders if "ab12" not in name)])
