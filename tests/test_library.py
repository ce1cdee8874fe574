"""The Python API as a notebook or a web app uses it: a call leaves the caller's process as it
found it (torch's thread count, matplotlib's backend ...), whether it returns or raises."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA
from protrans_cli.corpus import CorpusOptions, build_corpus
from protrans_cli.embed import EmbedOptions, build_embedder, embed, embed_sequences
from protrans_cli.errors import ModelError, UsageError
from protrans_cli.heads.fit import FitConfig, fit
from protrans_cli.heads.predict import evaluate_head, predict
from protrans_cli.models import load_model
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.lr_finder import find_lr

torch = pytest.importorskip("torch")

CALLERS = 3  # a thread count no protrans default gives on the test machines' 1-4 cores


@pytest.fixture
def caller_threads():
    """torch on CALLERS threads, as the caller had it; the module's own count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(CALLERS)
    yield CALLERS
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loc_data(tmp_path_factory):
    """A tiny per-protein task: 24 proteins, 2 locations that follow from the composition."""
    root = tmp_path_factory.mktemp("lib_loc")
    rng = np.random.default_rng(0)
    with open(root / "train.fasta", "w") as fh:
        for i in range(24):
            loc, rich = ("Nucleus", "KR") if i % 2 else ("Extracellular", "CW")
            body = rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=20).tolist() + list(rich * 5)
            fh.write(f">p{i} {loc}-S\n{''.join(body)}\n")
    embed(root / "train.fasta", root / "train.h5", EmbedOptions(model="onehot", per_residue=False))
    return root


def _train_config(tmp_path, **kw):
    return TrainConfig(family="bert", preset="tiny", corpus=[str(DATA / "train" / "learnable.txt")],
                       output_dir=str(tmp_path / "run"), num_steps=2, max_length=32, global_batch_size=4,
                       micro_batch_size=4, **kw)


def test_embed_leaves_the_callers_torch_thread_count(caller_threads, tmp_path):
    embed_sequences(["MKTAYIAKQR"], EmbedOptions(model="onehot", threads=1), kind="per_protein")
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(UsageError):  # also when the call fails
        embed(DATA / "embed" / "small.fa", tmp_path / "o.h5", EmbedOptions(model="onehot", threads=1, layers=(5,)))
    assert torch.get_num_threads() == caller_threads


def test_train_and_find_lr_leave_the_callers_torch_thread_count(caller_threads, tmp_path):
    train(_train_config(tmp_path, threads=1))
    assert torch.get_num_threads() == caller_threads
    find_lr(_train_config(tmp_path / "lr", threads=1), num_steps=3)
    assert torch.get_num_threads() == caller_threads


def test_fit_predict_and_evaluate_leave_the_callers_torch_thread_count(caller_threads, loc_data, tmp_path):
    # threads=None: min(cores, 4), which the CLI's -j default is, for the call only
    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=2, n_bootstrap=10), loc_data / "train.h5", loc_data / "train.fasta", head)
    assert torch.get_num_threads() == caller_threads
    predict(head, loc_data / "train.h5", tmp_path / "pred.csv", threads=1)
    assert torch.get_num_threads() == caller_threads
    evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", n_boot=10, threads=1)
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(UsageError, match="n_boot must be at least 10"):  # (a "95% CI" of one resample)
        evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", n_boot=1)


@pytest.fixture
def caller_plots():
    """A session with its own matplotlib backend (a notebook's inline one, say) and an open figure."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    yield "svg", plt.get_fignums()
    plt.close(fig)
    matplotlib.use(before)


def test_the_plots_leave_the_callers_matplotlib_backend_and_figures(caller_plots, loc_data, tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = caller_plots
    train(_train_config(tmp_path, threads=1))  # loss_curve.png
    find_lr(_train_config(tmp_path / "lr", threads=1), num_steps=3)  # lr_find.png
    result = fit(FitConfig(task="loc", max_epochs=2, n_bootstrap=10, threads=1), loc_data / "train.h5",
                 loc_data / "train.fasta", tmp_path / "head")  # curves.png, metrics/valid.loc.png
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert (tmp_path / "lr" / "run" / "lr_find.png").stat().st_size > 1000
    assert (result.head_dir / "curves.png").stat().st_size > 1000
    assert (result.head_dir / "metrics" / "valid.loc.png").stat().st_size > 1000
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures


def test_train_leaves_transformers_progress_bars_as_the_caller_had_them(tmp_path):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # transformers' default
    train(_train_config(tmp_path, threads=1))  # quiet while it saves its checkpoint and final model
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a caller who turned them off keeps them off
    try:
        train(_train_config(tmp_path / "2", threads=1))
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


@pytest.mark.parametrize("options,message", [
    (dict(layers=-1), r"layers=\(-1,\), not layers=-1"),  # a TypeError deep in validate
    (dict(threads=0), "^threads must be at least 1, got 0"),  # was ignored
    (dict(threads=-2), "^threads must be at least 1, got -2"),  # a RuntimeError from torch
    (dict(chunk_overlap=-1), "^chunk_overlap must be at least 0, got -1"),  # accepted without chunking
    (dict(chunk_overlap=-1, long_policy="truncate", max_length=2), "^chunk_overlap must be at least 0, got -1"),
    # the CLI's choices keep these out; a Python caller's typo is one line naming the choices
    (dict(max_batch_size=0), "^max_batch_size must be at least 1, got 0"),
    (dict(max_tokens=0), "^max_tokens must be at least 1, got 0"),
    (dict(long_policy="cut"), "^long_policy must be one of error, skip, truncate, chunk, got 'cut'$"),
    (dict(invalid_policy="drop"), "^invalid_policy must be one of error, skip, got 'drop'$"),
    (dict(max_length=0), "^max_length must be at least 1, got 0"),
    (dict(pooling="max"), "^pooling must be one of mean, cls, got 'max'$"),
    (dict(layers=()), "^layers needs at least one index"),  # (the field: "--layer" is embed's flag)
    (dict(dtype="int8"), "^dtype must be one of auto, float32, bfloat16, float16, got 'int8'$"),
])
def test_embed_options_a_python_caller_can_get_wrong_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        embed_sequences(["MKT"], EmbedOptions(model="onehot", **options), kind="per_protein")


@pytest.mark.parametrize("options,message", [
    (dict(layout="table"), "layout must be one of grouped, flat, stacked, got 'table'"),
    (dict(per_residue=False, per_protein=False), "nothing to write: ask for per_residue=True and/or per_protein=True"),
    (dict(layout="stacked"), "the stacked layout holds per-protein vectors only"),  # per-residue on by default
])
def test_embed_options_of_a_file_a_python_caller_can_get_wrong_are_refused_before_any_output(tmp_path, options,
                                                                                             message):
    from protrans_cli.embed import embed

    out = tmp_path / "o.h5"
    with pytest.raises(UsageError, match=message):
        embed(DATA / "embed" / "small.fa", out, EmbedOptions(model="onehot", **options))
    assert list(tmp_path.iterdir()) == []


def test_stdout_outputs_work_where_stdout_takes_text_only(loc_data, tmp_path):
    """A notebook's stdout (ipykernel's OutStream) and contextlib.redirect_stdout's StringIO have no
    `.buffer`: `-` (or prep's default output) was an AttributeError there."""
    import contextlib
    import io

    from protrans_cli.corpus import CorpusOptions, build_corpus

    build_corpus([DATA / "embed" / "small.fa"], CorpusOptions(output=str(tmp_path / "c.txt")))
    with contextlib.redirect_stdout(io.StringIO()) as text:
        build_corpus([DATA / "embed" / "small.fa"])  # no output: stdout
    assert text.getvalue() == (tmp_path / "c.txt").read_text()

    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, n_bootstrap=10, threads=1), loc_data / "train.h5",
        loc_data / "train.fasta", head)
    predict(head, loc_data / "train.h5", tmp_path / "pred.csv", threads=1)
    with contextlib.redirect_stdout(io.StringIO()) as text:
        predict(head, loc_data / "train.h5", "-", threads=1)
    assert text.getvalue() == (tmp_path / "pred.csv").read_text()


@pytest.mark.parametrize("callers_group", [True, False])
def test_train_ends_only_a_process_group_it_started(monkeypatch, callers_group):
    """A script under torchrun that starts its own group, trains, then calls all_reduce: train's
    cleanup destroyed the caller's group ("Default process group has not been initialized")."""
    import torch.distributed

    from protrans_cli.training import dist

    group = {"up": callers_group, "started": 0, "destroyed": 0}

    def start(**kwargs):
        group.update(up=True, started=group["started"] + 1)

    def destroy():
        group.update(up=False, destroyed=group["destroyed"] + 1)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: group["up"])
    monkeypatch.setattr(torch.distributed, "init_process_group", start)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    info = dist.setup()  # what train and find_lr do first, and cleanup() last
    assert info.initialised
    dist.cleanup()
    assert group == ({"up": True, "started": 0, "destroyed": 0} if callers_group
                     else {"up": False, "started": 1, "destroyed": 1})


@pytest.mark.parametrize("callers_backend", [None, "nccl", "gloo"])
def test_train_refuses_more_ranks_on_a_node_than_gpus_under_nccl(monkeypatch, callers_backend):
    """NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): rank 2 of three on a
    two-GPU node was given cuda:0, rank 0's, and the group's start failed with NCCL's traceback.
    A caller's gloo group can share them."""
    import torch.distributed

    from protrans_cli.errors import UsageError
    from protrans_cli.training import dist

    started, chosen = [], []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: callers_backend is not None)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: callers_backend)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: started.append(kwargs))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for name, value in (("RANK", "2"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "2")):
        monkeypatch.setenv(name, value)
    try:
        if callers_backend == "gloo":
            assert dist.setup().device == torch.device("cuda", 0)
        else:
            with pytest.raises(UsageError, match=r"rank 2 is process 3 on its node, which has 2 visible GPU"):
                dist.setup()
            assert not started and not chosen
    finally:
        dist.cleanup()


def test_output_permissions_read_the_umask_without_changing_it(tmp_path, monkeypatch):
    """Setting the umask to 0 and back, to read it, let another thread of the process create
    world-writable files in between."""
    import os
    import sys

    from protrans_cli.io.files import atomic_output

    if not sys.platform.startswith("linux"):
        pytest.skip("the umask is read from /proc/self/status on Linux only")
    mask = os.umask(0o027)
    try:
        def umask(_):
            raise AssertionError("the umask was changed")

        monkeypatch.setattr(os, "umask", umask)
        with atomic_output(tmp_path / "out.txt") as out:
            out.write(b"x\n")
    finally:
        monkeypatch.undo()
        os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o640


class _ThreeStates:
    """An embedder in memory built for the last of its 3 hidden states (as build_embedder makes them)."""

    name, family, revision, embedding_dim, layers, num_hidden_states = "mine", "custom", None, 2, (-1,), 3
    device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

    def embed_batch(self, sequences):
        return [np.ones((1, len(s), 2), dtype=np.float32) for s in sequences]


def test_an_embedder_given_must_compute_the_layers_the_options_ask_for():
    """options.layers was ignored when an embedder was passed: layers=(-2,) gave the last layer."""
    mine = _ThreeStates()
    for same in ((-1,), (2,)):  # 2 is -1 of 3 hidden states
        rows = embed_sequences(["MKT"], EmbedOptions(model="mine", layers=same), kind="per_residue", embedder=mine)
        assert rows[0].shape == (3, 2)
    with pytest.raises(UsageError, match=r"options.layers is \(-2,\) but the embedder given computes layers \(-1,\)"):
        embed_sequences(["MKT"], EmbedOptions(model="mine", layers=(-2,)), kind="per_residue", embedder=mine)


def test_an_embedder_that_is_no_embedder_is_a_usage_error_naming_what_it_lacks(tmp_path):
    """load_model's LoadedModel (a model in memory), a model name or a bare torch module passed as
    `embedder` failed with an AttributeError traceback ('LoadedModel' object has no attribute
    'layers')."""
    import torch

    from protrans_cli.models import LoadedModel, get_family

    # (what load_model returns, without weights to load)
    loaded = LoadedModel("mine", "mine", None, get_family("bert"), None, torch.nn.Linear(2, 2), 2, 1)
    for given, said in ((loaded, r"got LoadedModel, which lacks embed_batch\(\), layers.*TransformerEmbedder\(loaded"),
                        ("onehot", "got str, which lacks embed_batch"), (object(), "got object")):
        with pytest.raises(UsageError, match=f"embedder must be an Embedder .*{said}"):
            embed_sequences(["MKT"], EmbedOptions(model="onehot"), kind="per_residue", embedder=given)
        with pytest.raises(UsageError, match="embedder must be an Embedder"):
            embed(DATA / "embed" / "small.fa", tmp_path / "e.h5", EmbedOptions(model="onehot"), embedder=given)
        assert not list(tmp_path.glob("e.h5*"))


def test_embed_called_from_python_says_so_in_its_command_line(tmp_path, monkeypatch):
    """From Python, the file recorded sys.argv as the command that embedded: in a notebook,
    the kernel launcher's command line."""
    import sys

    import h5py

    from protrans_cli.embed import EmbedOptions, embed

    monkeypatch.setattr(sys, "argv", ["/opt/conda/lib/python3.11/site-packages/ipykernel_launcher.py", "-f", "k.json"])
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n")
    embed(fasta, tmp_path / "a.h5", EmbedOptions(model="onehot"))
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["command_line"].startswith("protrans_cli.embed() called from ")
        assert "ipykernel_launcher.py" in f.attrs["command_line"]


def test_the_cli_called_in_process_records_its_own_arguments_not_the_processes(tmp_path, monkeypatch):
    """main([...]) from a notebook: embed's and merge's files recorded sys.argv[1:] as the command
    ("protrans -f k.json", the kernel launcher's arguments), not the command that ran."""
    import sys

    import h5py

    from protrans_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["/opt/conda/lib/python3.11/site-packages/ipykernel_launcher.py", "-f", "k.json"])
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n")
    for argv in (["-q", "embed", str(fasta), "-m", "onehot", "-o", str(tmp_path / "a.h5")],
                 ["-q", "merge", str(tmp_path / "a.h5"), "-o", str(tmp_path / "m.h5")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    for name, argv in (("a.h5", ["-q", "embed", str(fasta), "-m", "onehot"]), ("m.h5", ["-q", "merge", str(tmp_path / "a.h5")])):
        with h5py.File(tmp_path / name) as f:
            assert f.attrs["command_line"].startswith(" ".join(["protrans", *argv])), f.attrs["command_line"]
    assert sys.argv[1:] == ["-f", "k.json"]


def test_progress_bars_show_in_a_notebook(monkeypatch):
    """Bars needed stderr to be a terminal, which a Jupyter kernel's is not: a long embed in a
    notebook showed nothing until its summary."""
    import sys
    import types

    from protrans_cli import console

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not console.show_progress()
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert console.show_progress()
    TerminalInteractiveShell = type("TerminalInteractiveShell", (), {})  # ipython in a pipe: no bars
    fake.get_ipython = lambda: TerminalInteractiveShell()
    assert not console.show_progress()


def test_train_and_find_lr_leave_the_callers_random_generators_alone(tmp_path):
    """train seeded torch's global generator and a resumed run reset Python's and numpy's: a
    notebook's seeded random numbers changed after a call (runs stay reproducible from their seed)."""
    import random

    import numpy as np
    import torch

    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train
    from protrans_cli.training.lr_finder import find_lr

    corpus = tmp_path / "c.txt"
    rng = random.Random(0)
    corpus.write_text("".join(" ".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(20, 60))) + "\n\n"
                              for _ in range(40)))

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    def seeded():
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(5)

    seeded()
    expected = draws()
    kw = dict(family="bert", corpus=[str(corpus)], max_length=64, global_batch_size=8, micro_batch_size=8,
              log_every=2, save_every=2, threads=1)
    seeded()
    train(TrainConfig(output_dir=str(tmp_path / "a"), num_steps=2, **kw))
    assert draws() == expected
    seeded()
    train(TrainConfig(output_dir=str(tmp_path / "a"), num_steps=4, **kw), resume=True)
    assert draws() == expected
    seeded()
    find_lr(TrainConfig(output_dir=str(tmp_path / "b"), **kw), num_steps=3)
    assert draws() == expected


def test_logs_get_a_progress_line_every_interval(monkeypatch, run_cli, tmp_path):
    """stderr that is no terminal (a batch job's log) gets no bar but a plain progress line every
    PROTRANS_PROGRESS_INTERVAL seconds (60 by default; 0 here: one per update): embed's residues
    with proteins/s, train's steps with loss, lr and tokens/s. PROTRANS_NO_PROGRESS and -q keep
    the log to the summary."""
    import re

    from conftest import DATA

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVK\n>b\nMSTNPKPQRKTKRNTNRRPQD\n>c\nMA\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5", "--max-tokens", "24")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("embed: ")]
    assert lines and re.fullmatch(r"embed: 39/39 res \(100%\) \[.*proteins/s\]", lines[-1]), lines
    result = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", DATA / "train" / "learnable.txt",
                     "-o", tmp_path / "run", "--num-steps", "3", "--global-batch-size", "4",
                     "--micro-batch-size", "2", "--max-length", "32", "--log-every", "1")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: ") and "step" in line
             and "%" in line]
    assert len(lines) == 3, result.stderr
    assert re.match(r"train: 3/3 step \(100%\) \[.*, loss \d+\.\d{4}, lr \d\.\d\de-\d\d, \d+ tokens/s\]$", lines[-1])
    # one long protein in windows: its rate counts a share per window, not 0.0 until its end
    fasta.write_text(">long\n" + "MKTAYIAKQRQISFVKSHFSRQ" * 20 + "\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "l.h5", "--max-length", "64",
                     "--chunk-overlap", "16", "--long", "chunk", "--max-tokens", "70")
    lines = [line for line in result.stderr.splitlines() if line.startswith("embed: ")]
    assert result.exit_code == 0 and len(lines) > 2, result.stderr
    # (the first lines come before the first batch's postfix)
    assert all(re.search(r", (\d+\.\d proteins/s|\d+\.\d s/protein)\]$", line) for line in lines[2:]), lines
    assert not any(" 0.0 proteins/s" in line for line in lines), lines
    monkeypatch.setenv("PROTRANS_NO_PROGRESS", "1")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o2.h5")
    assert result.exit_code == 0 and "embed: " not in result.stderr.replace("embedded", "")
    monkeypatch.delenv("PROTRANS_NO_PROGRESS")
    result = run_cli("-q", "embed", fasta, "-m", "onehot", "-o", tmp_path / "o3.h5")
    assert result.exit_code == 0 and result.stderr == ""


def test_a_progress_interval_that_is_no_number_is_said_and_the_default_used(monkeypatch):
    from protrans_cli import console

    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "1m")
    assert console._progress_interval() == console.PROGRESS_INTERVAL


def test_train_resume_of_another_type_is_a_usage_error_before_any_work(tmp_path):
    """train(config, resume=1) (for True) was a TypeError traceback from os.path."""
    for resume in (1, 0.5, ["run"]):
        with pytest.raises(UsageError, match=r"^resume is True \(the run's latest checkpoint\), a checkpoint's path, "
                                             f"or None \\(a new run\\), got {type(resume).__name__}"):
            train(_train_config(tmp_path, threads=1), resume=resume)
    assert not (tmp_path / "run").exists()


def test_train_takes_paths_and_one_corpus_file_from_python(tmp_path):
    """pathlib paths were a TypeError from json after the model was built; a bare string corpus
    was read letter by letter ("c: no such file"); lr="1e-3" was "must be positive, got 1e-3"."""
    import random

    from protrans_cli.corpus import CorpusOptions, build_corpus
    from protrans_cli.errors import UsageError
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    fasta = tmp_path / "p.fa"
    rng = random.Random(1)
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(30))}\n"
                             for i in range(16)))
    corpus = tmp_path / "c.txt"
    build_corpus(fasta, CorpusOptions(output=str(corpus)))  # one file, as a Path
    result = train(TrainConfig(family="bert", preset="tiny", corpus=corpus, val_corpus=[corpus],
                               output_dir=tmp_path / "run", num_steps=2, max_length=32, global_batch_size=8,
                               threads=1))
    assert result.completed and (tmp_path / "run" / "train_config.json").is_file()
    with pytest.raises(UsageError, match=r"--lr \(lr\) must be a number, got '1e-3'"):
        TrainConfig(corpus=[str(corpus)], lr="1e-3").check_values()


def test_a_settings_object_of_the_wrong_type_is_a_usage_error(tmp_path):
    """A dict or a task name where the settings object goes was a TypeError/AttributeError that
    named neither (`fit("loc", ...)`: 'str' object has no attribute 'check')."""
    from protrans_cli.corpus import build_corpus
    from protrans_cli.embed import embed_sequences
    from protrans_cli.errors import UsageError
    from protrans_cli.heads.fit import fit
    from protrans_cli.training.loop import train

    with pytest.raises(UsageError, match=r"options must be an EmbedOptions \(EmbedOptions\(\*\*your_dict\)\), got dict"):
        embed_sequences(["MKV"], {"model": "onehot"}, kind="per_protein")
    with pytest.raises(UsageError, match="config must be a FitConfig, got str 'loc'"):
        fit("loc", tmp_path / "e.h5", tmp_path / "l.csv", tmp_path / "h")
    with pytest.raises(UsageError, match="options must be a CorpusOptions"):
        build_corpus([tmp_path / "x.fa"], {"output": "c.txt"})
    with pytest.raises(UsageError, match="config must be a TrainConfig"):
        train({"corpus": ["c.txt"]})


def test_settings_of_the_wrong_type_are_usage_errors_before_any_work(tmp_path):
    """Settings a pipeline read as text (YAML, environment) were a TypeError deep inside
    (`max_tokens="100"`: '<' not supported between 'str' and 'int'), or, for a flag, counted as
    true without a word (`per_residue="no"` wrote per-residue arrays)."""
    import numpy as np

    from protrans_cli.corpus import CorpusOptions, build_corpus
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import UsageError
    from protrans_cli.heads.fit import FitConfig, fit
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    out = tmp_path / "e.h5"
    for options, message in ((EmbedOptions(model="onehot", max_tokens="100"),
                              r"EmbedOptions.max_tokens must be an int or None, got str '100'"),
                             (EmbedOptions(model="onehot", per_residue="no"),
                              r"EmbedOptions.per_residue must be a bool, got str 'no'"),
                             (EmbedOptions(model="onehot", chunk_overlap=2.5),
                              r"EmbedOptions.chunk_overlap must be an int, got float 2.5")):
        with pytest.raises(UsageError, match=message):
            embed(fasta, out, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.fa"]
    with pytest.raises(UsageError, match="FitConfig.max_epochs must be an int or None, got str '5'"):
        fit(FitConfig(task="loc", max_epochs="5"), tmp_path / "e.h5", tmp_path / "l.csv", tmp_path / "h")
    with pytest.raises(UsageError, match="CorpusOptions.dedup must be a bool"):
        build_corpus([fasta], CorpusOptions(output=str(tmp_path / "c.txt"), dedup="yes"))
    with pytest.raises(UsageError, match="TrainConfig.num_steps must be an int, got str '10'"):
        train(TrainConfig(corpus=[str(fasta)], num_steps="10"))
    # numpy's scalars are what they stand for
    embed(fasta, out, EmbedOptions(model="onehot", max_tokens=np.int64(64), per_residue=np.True_))
    assert out.is_file()



def test_a_whole_number_serves_a_float_setting_and_a_bool_serves_no_number():
    """`FitConfig(lr=1)`, `weight_decay=0` (a YAML file's `0`): whole numbers are floats to a float
    setting, as Python's own arithmetic takes them; a bool is neither (True is no learning rate)."""
    from protrans_cli.errors import expect_options

    expect_options(FitConfig(task="loc", lr=1, weight_decay=0, valid_fraction=np.int64(0)), FitConfig, "config")
    with pytest.raises(UsageError, match="FitConfig.lr must be a float, got bool True"):
        expect_options(FitConfig(task="loc", lr=True), FitConfig, "config")
    with pytest.raises(UsageError, match="FitConfig.batch_size must be an int, got float 64.0"):
        expect_options(FitConfig(task="loc", batch_size=64.0), FitConfig, "config")


def test_messages_put_the_article_a_name_is_read_aloud_with():
    """Family and class names in messages ("cannot load it as an electra pretraining model", "an
    FNN head", "an EmbedOptions"): "a electra" and "a albert" were written."""
    from protrans_cli.errors import a_or_an

    assert [a_or_an(w) for w in ("electra", "albert", "esm", "xlnet", "t5", "bert", "roberta", "transfo_xl")] == [
        "an electra", "an albert", "an esm", "an xlnet", "a t5", "a bert", "a roberta", "a transfo_xl"]
    assert [a_or_an(w) for w in ("FNN", "CNN", "FitConfig", "EmbedOptions", "TrainConfig")] == [
        "an FNN", "a CNN", "a FitConfig", "an EmbedOptions", "a TrainConfig"]
    # numpy's and Python's type names in messages ("a object array", "expects a int" were written)
    assert [a_or_an(w) for w in ("object", "int", "float32", "uint8", "ndarray", "OrderedDict", "list")] == [
        "an object", "an int", "a float32", "a uint8", "an ndarray", "an OrderedDict", "a list"]


def test_every_message_naming_a_model_family_puts_its_article(tmp_path):
    """import-esm -m of another family's checkpoint, a model's config.json given as train's --config
    and a resumed checkpoint of another model said "a albert checkpoint", "a electra model" after
    the family messages of --init-from, contacts and variants said "an"."""
    import json

    import torch
    from safetensors.torch import save_file

    from protrans_cli.errors import InputError
    from protrans_cli.esm_import import import_esm
    from protrans_cli.training import checkpoint as ckpt

    with pytest.raises(UsageError, match=r"^model 'prot_albert' is an albert checkpoint; esm-extract runs ESM models: "
                                         r"give model the"):
        import_esm([tmp_path / "x.pt"], tmp_path / "e.h5", model="prot_albert")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "electra", "hidden_size": 8}))
    with pytest.raises(UsageError, match=r"config.json: the config.json of an electra model \(its transformers"):
        TrainConfig.from_file(tmp_path / "config.json")
    where = tmp_path / "step_00000002"
    where.mkdir()
    save_file({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, where / ckpt.HF_WEIGHTS)
    (where / "train_config.json").write_text(json.dumps({"family": "electra", "preset": "tiny"}))
    with pytest.raises(InputError, match=r"does not match the model being trained: it holds an electra/tiny model; "):
        ckpt.load_weights(where, torch.nn.Linear(2, 2))


def test_numpy_scalars_in_a_fit_config_are_the_numbers_they_stand_for(loc_data, tmp_path):
    """FitConfig took np.int64 and np.float32 (expect_options accepts numpy's scalars), but the
    head's config.json was then "TypeError: Object of type int64 is not JSON serializable", once
    every epoch had run, with the work left in HEAD.partial."""
    config = FitConfig(task="loc", max_epochs=np.int64(1), hidden=np.int64(8), lr=np.float32(1e-3),
                       seed=np.int64(1), n_bootstrap=np.int64(10), threads=1, plots=False)
    fit(config, loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "head")
    assert predict(tmp_path / "head", loc_data / "train.h5", tmp_path / "p.csv")["proteins"] == 24
    assert type(config.max_epochs) is int and type(config.lr) is float

def test_numpy_scalars_in_a_train_config_are_the_numbers_they_stand_for(tmp_path):
    """type_problem accepts numpy's scalars for plain settings (CHANGELOG: "numpy's scalars are
    accepted"), but for TrainConfig np.float32 then failed check_values ("--lr (lr) must be a
    number, got np.float32(0.001)") and np.int64 the run's train_config.json (TypeError: Object
    of type int64 is not JSON serializable, a traceback once the model was built)."""
    import numpy as np

    from protrans_cli.errors import expect_options
    from protrans_cli.training.config import TrainConfig

    config = TrainConfig(family="bert", corpus=["c.txt"], num_steps=np.int64(5), lr=np.float32(1e-3),
                         sop=np.True_, warmup_steps=np.int64(2))
    expect_options(config, TrainConfig, "config")
    config.check_values()
    config.save(tmp_path / "train_config.json")
    back = TrainConfig.from_file(tmp_path / "train_config.json")
    assert (back.num_steps, back.warmup_steps, back.sop) == (5, 2, True)
    assert type(back.num_steps) is int and back.lr == pytest.approx(1e-3)
    # a phase's numbers too (Phase(np.int64(64), ...)): the saved config was the same TypeError
    from protrans_cli.training.config import Phase

    config = TrainConfig(family="bert", corpus=["c.txt"], phases=[Phase(np.int64(64), np.int64(5),
                                                                        global_batch_size=np.int32(8))])
    expect_options(config, TrainConfig, "config")
    config.save(tmp_path / "phased.json")
    (phase,) = TrainConfig.from_file(tmp_path / "phased.json").phases
    assert (phase.max_length, phase.num_steps, phase.global_batch_size) == (64, 5, 8) and type(phase.num_steps) is int


def test_overlapping_calls_in_two_threads_leave_the_callers_thread_count(caller_threads):
    """Calls whose spans overlap (two threads of a web app): the first one in ends first. Saved
    and restored per call, the second one put back the count the first had set."""
    from protrans_cli.threads import torch_threads

    first, second = torch_threads(1), torch_threads(2)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.get_num_threads() == 2  # the call still under way keeps its count
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == caller_threads


def test_overlapping_model_loads_leave_the_callers_transformers_log_levels():
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    from protrans_cli.models import _quiet_transformers

    before = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hub_logging.set_verbosity_warning()
    try:
        first, second = _quiet_transformers(), _quiet_transformers()
        first.__enter__()
        second.__enter__()  # started while the first is under way: it sees ERROR as "the caller's"
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert (hf_logging.get_verbosity(), hub_logging.get_verbosity()) == (hf_logging.WARNING, hub_logging.WARNING)
    finally:
        hf_logging.set_verbosity(before[0])
        hub_logging.set_verbosity(before[1])



def test_model_loads_in_two_threads_run_one_at_a_time_and_leave_transformers_as_it_was(tmp_path_factory,
                                                                                           monkeypatch):
    """transformers' from_pretrained swaps PreTrainedModel.tie_weights for a no-op (and torch's
    default dtype) while it builds a model and puts back what it found: two load_model calls at
    once in two threads (a web app) put back each other's no-op, and this and every later T5
    load in the process failed, "no weights for encoder.embed_tokens.weight". Here the first
    load waits inside from_pretrained until the second thread has started its own load."""
    import threading
    import time

    from transformers import PreTrainedModel, T5EncoderModel

    from conftest import save_tiny_model
    from protrans_cli.models import load_model

    directory = save_tiny_model(tmp_path_factory, "t5")
    real, tie = T5EncoderModel.from_pretrained.__func__, PreTrainedModel.tie_weights
    second_started, state = threading.Event(), {"inside": 0, "most": 0, "calls": 0}
    lock = threading.Lock()

    def from_pretrained(cls, *args, **kwargs):
        with lock:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
            state["calls"] += 1
            first = state["calls"] == 1
        try:
            if first:  # (the second thread's load is under way before this one goes on)
                second_started.wait(10)
                time.sleep(0.3)
            return real(cls, *args, **kwargs)
        finally:
            with lock:
                state["inside"] -= 1

    monkeypatch.setattr(T5EncoderModel, "from_pretrained", classmethod(from_pretrained))
    errors = []

    def load(signal=None):
        if signal is not None:
            signal.set()
        try:
            load_model(directory)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=load), threading.Thread(target=load, args=(second_started,))]
    threads[0].start()
    while not state["calls"]:
        time.sleep(0.01)
    threads[1].start()
    for t in threads:
        t.join(60)
    assert errors == [] and state == {"inside": 0, "most": 1, "calls": 2}
    assert PreTrainedModel.tie_weights is tie
    load_model(directory)

def test_uncompiled_flex_attention_leaves_the_process_warning_filters_alone(monkeypatch):
    """The CPU's FlexAttention call hides torch's "called without torch.compile" warning without
    swapping the process's warning filters while it runs (catch_warnings is not thread-safe: two
    threads doing it at once left an "ignore every UserWarning" filter behind)."""
    import warnings

    from torch.nn.attention import flex_attention as module

    from protrans_cli.models.t5 import _eager_flex

    seen = []
    real = module.flex_attention

    def watched(*args, **kwargs):
        seen.append(list(warnings.filters))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "flex_attention", watched)
    q = torch.randn(1, 2, 8, 4)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        _eager_flex(q, q, q)
        assert seen == [inside]
    assert not [w for w in caught if "torch.compile" in str(w.message)]
    assert warnings.filters == before


def test_a_callers_float64_default_dtype_does_not_reach_models_or_heads(tmp_path, loc_data):
    from safetensors import safe_open

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(_train_config(tmp_path, threads=1))
        fit(FitConfig(task="loc", max_epochs=2, n_bootstrap=10, threads=1), loc_data / "train.h5",
            loc_data / "train.fasta", tmp_path / "head")
    finally:
        torch.set_default_dtype(previous)
    for path in (tmp_path / "run" / "model.safetensors", tmp_path / "head" / "weights.safetensors"):
        with safe_open(str(path), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}, path


def test_train_and_fit_work_where_the_caller_switched_gradients_off(tmp_path, loc_data):
    with torch.no_grad():
        assert train(_train_config(tmp_path, threads=1)).completed
        fit(FitConfig(task="loc", max_epochs=2, n_bootstrap=10, threads=1), loc_data / "train.h5",
            loc_data / "train.fasta", tmp_path / "head")
        assert not torch.is_grad_enabled()
    assert (tmp_path / "head" / "weights.safetensors").exists()


def test_a_signal_after_the_runs_last_check_still_ends_it_as_stopped():
    """SIGTERM or Ctrl-C in the moment between train's last look at a stop request and the end of
    its StopRequest block was swallowed (exit 0 after SIGTERM); the previous handler now acts on
    it when the block ends (the CLI's maps SIGTERM to exit 143)."""
    import os
    import signal

    import pytest

    from protrans_cli.training.loop import StopRequest

    called = []

    def handler(signum, frame):
        called.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            with StopRequest() as stop:
                os.kill(os.getpid(), signal.SIGTERM)  # noted by StopRequest, not acted on yet
                assert called == []
                stop.late_detail = "the run is complete (2 steps; model in run)"  # (as train sets it)
        assert called == [signal.SIGTERM] and info.value.protrans_detail == "the run is complete (2 steps; model in run)"
        with StopRequest():  # no signal: nothing raised, the handlers put back
            pass
        assert signal.getsignal(signal.SIGTERM) is handler and called == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_train_leaves_a_signal_the_caller_ignores_ignored():
    """nohup, a script's `cmd &`: SIGINT is ignored, and a stop request must not take it over."""
    import signal

    from protrans_cli.training.loop import StopRequest

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_protein_rate_turns_to_seconds_per_protein_below_one_a_second():
    from protrans_cli.embed import _protein_rate

    assert _protein_rate(30, 2) == "15.0 proteins/s"
    assert _protein_rate(0.25, 10) == "40.0 s/protein"  # a quarter of one long protein's windows
    assert _protein_rate(0, 5) == ""





@pytest.mark.parametrize("layers", ["-1", ("-1",), (True,), (-1.0,), None])
def test_embed_options_layers_of_another_type_are_refused_before_the_model_loads(layers):
    """layers=("-1",) (read from a YAML file) was a TypeError from inside the model's layer check
    once the model had loaded, "-1" told onehot's user "--layer - does not exist", and (True,)
    was layer 1 without a word."""
    from protrans_cli.embed import build_embedder

    for call in (lambda: embed_sequences(["MKT"], EmbedOptions(model="onehot", layers=layers), kind="per_protein"),
                 # (refused before loading: this model does not exist)
                 lambda: build_embedder(EmbedOptions(model="./no/such/model", layers=layers))):
        with pytest.raises(UsageError, match=r"EmbedOptions\.layers must be a tuple of ints"):
            call()


def test_embed_options_layers_as_a_list_or_numpy_ints_still_work():
    rows = embed_sequences(["MKT"], EmbedOptions(model="onehot", layers=[np.int64(-1)]), kind="per_residue")
    assert rows[0].shape == (3, 21)


@pytest.mark.parametrize("make_fasta", [lambda p: [str(p)], lambda p: iter(["MKT"]), lambda p: None,
                                        lambda p: open(p, "rb")])
def test_embed_refuses_a_fasta_that_is_not_a_path(tmp_path, make_fasta):
    """A list of files, read_fasta's records or an open file was a TypeError from os.stat."""
    fasta = make_fasta(DATA / "embed" / "small.fa")
    try:
        with pytest.raises(UsageError, match=r"fasta must be a path .*embed_sequences"):
            embed(fasta, tmp_path / "o.h5", EmbedOptions(model="onehot"))
    finally:
        getattr(fasta, "close", lambda: None)()
    with pytest.raises(UsageError, match=r"output must be a path"):
        embed(DATA / "embed" / "small.fa", None, EmbedOptions(model="onehot"))
    assert not list(tmp_path.iterdir())


def test_fit_refuses_one_test_pair_not_in_a_list(loc_data, tmp_path):
    """tests=("t.h5", "t.fasta") (one pair, not in a list) was "ValueError: too many values to
    unpack", and a dict an IndexError: both a UsageError saying what to give, before any work."""
    pair = (str(loc_data / "train.h5"), str(loc_data / "train.fasta"))
    with pytest.raises(UsageError, match=r"one pair goes in a list, tests=\["):
        fit(FitConfig(task="loc", max_epochs=1, plots=False), *pair, tmp_path / "head", tests=pair)
    with pytest.raises(UsageError, match="tests must be a list of"):
        fit(FitConfig(task="loc", max_epochs=1, plots=False), *pair, tmp_path / "head", tests={"t": pair})
    with pytest.raises(UsageError, match="valid must be one"):
        fit(FitConfig(task="loc", max_epochs=1, plots=False), *pair, tmp_path / "head", valid=[pair])
    assert not (tmp_path / "head").exists()


def test_reader_without_a_kind_reads_a_one_kind_files_kind(loc_data):
    """r.ids(), r.get(ident) and r.dim() on a per-protein file said it "has no per_residue
    embeddings": the default is the file's one kind (per_residue when it holds both)."""
    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsReader

    with EmbeddingsReader(loc_data / "train.h5") as r:
        assert r.kinds == (PER_PROTEIN,)
        ids = r.ids()
        assert ids == r.ids(PER_PROTEIN) and len(ids) == 24
        assert np.array_equal(r.get(ids[0]), r.get(ids[0], PER_PROTEIN))
        assert r.dim() == 21 and len(list(r.items())) == 24


@pytest.mark.parametrize("kw", [{"num_steps": "5"}, {"num_steps": 0}, {"num_steps": 2.5}, {"min_lr": "1e-6"},
                                {"min_lr": 1.0, "max_lr": 1e-3}, {"max_lr": float("nan")}])
def test_find_lr_arguments_of_the_wrong_type_or_range_are_usage_errors_before_any_model(kw, tmp_path, monkeypatch):
    import protrans_cli.training.lr_finder as lr_finder

    def never(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(lr_finder, "build_run", never)
    with pytest.raises(UsageError, match="find_lr: (min_lr|max_lr|num_steps)"):
        find_lr(_train_config(tmp_path, threads=1), **kw)
    assert not (tmp_path / "run").exists()


def test_train_and_find_lr_take_a_family_by_name_and_refuse_other_values(tmp_path):
    from protrans_cli.models import get_family

    result = train(_train_config(tmp_path / "named", threads=1), family="bert")
    assert result.completed
    for call in (train, find_lr):
        with pytest.raises(UsageError, match="unknown model family"):
            call(_train_config(tmp_path / "bad", threads=1), family="nosuch")
        with pytest.raises(UsageError, match="family must be"):
            call(_train_config(tmp_path / "bad", threads=1), family=3)
        assert not (tmp_path / "bad").exists()
    assert train(_train_config(tmp_path / "object", threads=1), family=get_family("bert")).completed


@pytest.mark.parametrize("kw, match", [({"threads": "1"}, "^threads must be a whole number"),
                                       ({"threads": 2.0}, "^threads must be a whole number"),
                                       ({"max_residues": "100"}, "max_residues.* must be a whole number, got str"),
                                       ({"max_residues": True}, "max_residues.* must be a whole number, got bool")])
def test_predict_arguments_of_the_wrong_type_are_usage_errors(kw, match, loc_data, tmp_path):
    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    with pytest.raises(UsageError, match=match):
        predict(head, loc_data / "train.h5", tmp_path / "p.csv", **kw)
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(UsageError, match=match):
        evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", **kw)



def test_predict_and_predict_embeddings_take_numpy_integers_for_max_residues(loc_data, tmp_path):
    """max_residues=np.int64(4096) was refused as "must be a whole number" (predict, evaluate_head)
    and "must be a whole number of at least 1, got np.int64(4096)" (predict_embeddings): numpy's
    integers are the numbers they stand for, as in every settings object."""
    from protrans_cli import predict_embeddings
    from protrans_cli.io.h5 import EmbeddingsReader

    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    assert predict(head, loc_data / "train.h5", tmp_path / "p.csv", max_residues=np.int64(4096))["proteins"] == 24
    evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", max_residues=np.int32(4096))
    # the bootstrap's resamples likewise (text or a float: "'<' not supported between 'str' and 'int'")
    evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", n_boot=np.int64(100))
    for n_boot in ("100", 100.0):
        with pytest.raises(UsageError, match=f"^n_boot must be a whole number of resamples, got {type(n_boot).__name__}"):
            evaluate_head(head, loc_data / "train.h5", loc_data / "train.fasta", n_boot=n_boot)
    with EmbeddingsReader(loc_data / "train.h5") as r:
        vectors = {i: r.get(i) for i in r.ids()[:3]}
    found = predict_embeddings(head, vectors, max_residues=np.int64(4096), threads=1)
    assert {i: p["loc"].labels for i, p in found.items()} == {
        i: p["loc"].labels for i, p in predict_embeddings(head, vectors, threads=1).items()}

def test_predict_wrong_calls_are_refused_before_the_embeddings_are_read(loc_data, tmp_path):
    """probabilities with a per-protein head was refused once the whole embeddings file had been
    read (minutes on a large one): here a file that does not exist would have been the error."""
    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    with pytest.raises(UsageError, match="^probabilities is for per-residue heads"):
        predict(head, tmp_path / "absent.h5", tmp_path / "p.csv", probabilities=tmp_path / "p.h5")
    # (a list of files was "['x.h5']: no such file", an InputError for a wrong call)
    with pytest.raises(UsageError, match="embeddings must be a path"):
        predict(head, [loc_data / "train.h5"], tmp_path / "p.csv")
    with pytest.raises(UsageError, match="out must be a path"):
        predict(head, loc_data / "train.h5", None)


def test_predict_and_evaluate_from_python_refuse_outputs_that_would_replace_their_inputs(loc_data, tmp_path):
    """`protrans predict` refuses these (exit 2); from Python, predict(head, "q.h5", "q.h5") replaced
    the embeddings with the CSV of predictions, an output inside the head could replace its files
    (metrics_dir=head: a label file named config.* wrote the head's config.json) and out and
    probabilities naming one file kept only the last written."""
    import shutil

    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    query = tmp_path / "query.h5"
    shutil.copy(loc_data / "train.h5", query)
    kept = {p.name: p.read_bytes() for p in (query, head / "config.json")}
    with pytest.raises(UsageError, match="query.h5 is also an input: writing it would replace it"):
        predict(head, query, query)
    with pytest.raises(UsageError, match="is inside the head directory"):
        predict(head, query, head / "config.json")
    with pytest.raises(UsageError, match="out and probabilities both name"):
        predict(head, query, tmp_path / "p.out", probabilities=tmp_path / "p.out")
    with pytest.raises(UsageError, match="metrics_dir .* is inside the head directory"):
        evaluate_head(head, query, loc_data / "train.fasta", metrics_dir=head)
    assert {p.name: p.read_bytes() for p in (query, head / "config.json")} == kept
    assert not (tmp_path / "p.out").exists()
    assert predict(head, query, tmp_path / "p.csv")["proteins"] == 24


def test_predict_order_is_a_list_of_ids_written_first_and_one_string_is_a_usage_error(loc_data, tmp_path):
    """order="P12345" (one id, or a FASTA's path) was read letter by letter, matched no id, and
    the order asked for was silently not followed."""
    head = tmp_path / "head"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    with pytest.raises(UsageError, match="order is a list of ids"):
        predict(head, loc_data / "train.h5", tmp_path / "p.csv", order=str(loc_data / "train.fasta"))
    assert not (tmp_path / "p.csv").exists()
    # a list naming some of the ids: those first, in its order; the others after them, in file order
    plain = predict(head, loc_data / "train.h5", tmp_path / "plain.csv")
    in_file = [line.split(",")[0] for line in (tmp_path / "plain.csv").read_text().splitlines()[1:]]
    assert plain["proteins"] == len(in_file) == 24
    first = [in_file[5], "not-there", in_file[2]]
    predict(head, loc_data / "train.h5", tmp_path / "p.csv", order=first)
    rows = [line.split(",")[0] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert rows == [in_file[5], in_file[2]] + [i for i in in_file if i not in first]


@pytest.mark.parametrize("which, value", [("embeddings", ["train.h5"]), ("embeddings", None), ("labels", None),
                                          ("out_dir", None), ("out_dir", 3)])
def test_fit_refuses_an_embeddings_labels_or_output_that_is_not_a_path(which, value, loc_data, tmp_path):
    args = {"embeddings": loc_data / "train.h5", "labels": loc_data / "train.fasta", "out_dir": tmp_path / "head"}
    args[which] = value
    with pytest.raises(UsageError, match=f"{which} must be a path"):
        fit(FitConfig(task="loc", max_epochs=1, threads=1), args["embeddings"], args["labels"], args["out_dir"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [None, 3, ["/tmp/model"]])
def test_load_model_given_no_name_or_path_is_a_usage_error(value):
    """load_model(None) was looked up as the hub id "None": "cannot load model 'None'"."""
    from protrans_cli import load_model

    with pytest.raises(UsageError, match="load_model needs a short name, a model directory or a hub id"):
        load_model(value)


def test_library_calls_work_in_a_process_without_stderr(monkeypatch, capsys, loc_data, tmp_path):
    """sys.stderr is None under pythonw and in a process started with descriptor 2 closed (the CLI
    opens one first; a library caller may not): an embed's first warning, a resume's flush before
    its reader is forked and train's set-up line were an AttributeError on None. The messages go
    nowhere (none to stdout, the data's), the results are those of a process with a stderr."""
    import sys

    from protrans_cli.io.h5 import EmbeddingsReader

    fasta = tmp_path / "x.fa"
    fasta.write_text(">dna\n" + "ACGT" * 10 + "\n>p\nMKTAYIAKQR\n")  # (a nucleotide warning)
    monkeypatch.setattr(sys, "stderr", None)
    first = embed(fasta, tmp_path / "x.h5", EmbedOptions(model="onehot", threads=1))
    again = embed(fasta, tmp_path / "x.h5", EmbedOptions(model="onehot", threads=1, resume=True))
    fit(FitConfig(task="loc", max_epochs=1, n_bootstrap=10), loc_data / "train.h5", loc_data / "train.fasta",
        tmp_path / "head")
    train(_train_config(tmp_path, threads=1))
    monkeypatch.undo()
    assert (first.num_embedded, again.num_embedded, again.num_resumed) == (2, 0, 2)
    assert sorted(EmbeddingsReader(tmp_path / "x.h5").ids()) == ["dna", "p"]
    assert (tmp_path / "head" / "config.json").exists() and (tmp_path / "run" / "config.json").exists()
    assert capsys.readouterr().out == ""


def test_resuming_into_a_file_this_process_holds_open_is_refused_and_leaves_it_as_it_was(tmp_path):
    """A notebook's reader left open (no `with`) and then `embed(..., resume=True)` into that file:
    h5py's OSError "file is already open for read-only", after the file had been renamed
    OUTPUT.partial. The run is refused naming the file, the file untouched; closed, it resumes."""
    from protrans_cli.io.h5 import EmbeddingsReader

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMVLSPADK\n")
    half = tmp_path / "half.fa"
    half.write_text(">a\nMKTAYIAK\n")
    out = tmp_path / "out.h5"
    embed(half, out, EmbedOptions(model="onehot"))
    reader = EmbeddingsReader(out)
    with pytest.raises(UsageError, match="is open in this process.*close it"):
        embed(fasta, out, EmbedOptions(model="onehot", resume=True))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.h5"]
    assert reader.ids() == ["a"]
    reader.close()
    assert embed(fasta, out, EmbedOptions(model="onehot", resume=True)).num_embedded == 1
    with EmbeddingsReader(out) as r:
        assert r.ids() == ["a", "b"]


def test_load_model_takes_device_auto_and_refuses_an_unknown_device_before_loading(tmp_path, monkeypatch):
    """`device="auto"`, which every other call takes, was a ModelError listing torch's device
    types, after the whole model had been loaded; so was a device torch does not know."""
    import protrans_cli.models as models
    from protrans_cli import load_model
    from protrans_cli.errors import ModelError
    from test_embed import save_bert_into

    save_bert_into(tmp_path / "m", seed=0)
    loaded = load_model(tmp_path / "m", device="auto")  # (the CPU here: no GPU)
    assert loaded.device.type in (("cuda",) if torch.cuda.is_available() else ("cpu", "mps"))

    def no_config(*a, **k):
        raise AssertionError("the model was read")

    monkeypatch.setattr(models, "open_config", no_config)
    with pytest.raises(ModelError, match=r"cannot move the model to device 'gpu'"):
        load_model(tmp_path / "m", device="gpu")


def _written(path, text: str):
    path.write_text(text)
    return path


def _stopped_run(tmp_path):
    """A training run stopped before its end: checkpoints/step_N alone, no final model."""
    step = tmp_path / "run" / "checkpoints" / "step_00000004"
    step.mkdir(parents=True, exist_ok=True)
    (step / "training_state.pt").write_bytes(b"")
    return tmp_path / "run"


def _hub_folder(tmp_path):
    """The Hugging Face cache's folder of a model (refs/main, snapshots/COMMIT/config.json)."""
    folder = tmp_path / "models--acme--pl"
    (folder / "snapshots" / "c1").mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / "c1" / "config.json").write_text("{}")
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text("c1")
    return folder


def _adapter(tmp_path):
    """What PEFT's save_pretrained writes: adapter weights, no model."""
    (tmp_path / "lora").mkdir(exist_ok=True)
    (tmp_path / "lora" / "adapter_config.json").write_text('{"base_model_name_or_path": "prot_bert"}')
    return tmp_path / "lora"


def _bert(tmp_path):
    from test_embed import save_bert_into

    save_bert_into(tmp_path / "bert", seed=0)
    return str(tmp_path / "bert")


def _one_layer_file(loc_data, tmp_path):
    """Another tool's per-protein file of loc_data's proteins: one layer, no layer numbers."""
    import h5py

    with h5py.File(tmp_path / "flat.h5", "w") as f:
        for i in range(24):
            f.create_dataset(f"p{i}", data=np.random.default_rng(i).normal(size=21).astype(np.float32))
    return tmp_path / "flat.h5"


def _fit_loc(loc_data, tmp_path, embeddings=None, **kw):
    fit(FitConfig(**{"task": "loc", "max_epochs": 1, "threads": 1, "n_bootstrap": 10, "plots": False, **kw}),
        embeddings or loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "head")


def _fit_cli(loc_data, tmp_path, *args, embeddings=None):
    return ["fit", "loc", "--embeddings", embeddings or loc_data / "train.h5", "--labels", loc_data / "train.fasta",
            "--max-epochs", "1", "-j", "1", *args, "-o", tmp_path / "head"]


def _onehot(**kw):
    return EmbedOptions(model="onehot", threads=1, **kw)


# (what is wrong, the library call (tmp_path, loc_data), what its error says, the same at the
# command line and what that says): a setting named as the caller gives it (errors.option)
NAMED_AS_GIVEN = [
    ("invalid residue", lambda t, d: embed_sequences({"a": "MK*LA"}, _onehot(), kind="per_protein"),
     "record 'a': internal stop '*' at residue 3 (invalid_policy='skip' leaves such records out)",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK*LA\n"), "-m", "onehot", "-o", t / "e.h5"],
     "record 'a': internal stop '*' at residue 3 (--invalid-policy skip leaves such records out)"),
    ("too long", lambda t, d: embed_sequences({"a": "MKVLAKKKK"}, _onehot(max_length=4), kind="per_protein"),
     "record 'a': 9 residues, longer than max_length=4 (add long_policy='skip', 'truncate' or 'chunk')",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMKVLAKKKK\n"), "-m", "onehot", "--max-length", "4",
                   "-o", t / "e.h5"],
     "record 'a': 9 residues, longer than --max-length 4 (add --long-policy skip, truncate or chunk)"),
    ("3Di strings", lambda t, d: embed_sequences({"a": "MK"}, _onehot(three_di=True), kind="per_protein"),
     "three_di=True is for a model that reads 3Di strings (ProstT5: model='prostt5'), not onehot",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", "onehot", "--3di", "-o", t / "e.h5"],
     "--3di is for a model that reads 3Di strings (ProstT5: -m prostt5), not onehot"),
    ("no such layer", lambda t, d: embed_sequences({"a": "MK"}, _onehot(layers=(5,)), kind="per_protein"),
     "the onehot embedder has a single layer: layer 5 does not exist",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", "onehot", "--layer", "5", "-o", t / "e.h5"],
     "the onehot embedder has a single layer: --layer 5 does not exist"),
    ("a layer twice", lambda t, d: embed_sequences({"a": "MK"}, _onehot(layers=(-1, -1)), kind="per_protein"),
     "layer -1 is given twice: each hidden state is written once",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", "onehot", "--layer", "-1", "--layer", "-1",
                   "-o", t / "e.h5"],
     "error: --layer -1 is given twice: each hidden state is written once"),
    ("onehot's layer twice", lambda t, d: embed_sequences({"a": "MK"}, _onehot(layers=(-1, 0)), kind="per_protein"),
     "the onehot embedder has a single layer: layers=(-1, 0) name it more than once",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", "onehot", "--layer", "-1", "--layer", "0",
                   "-o", t / "e.h5"],
     "the onehot embedder has a single layer: --layer -1 --layer 0 name it more than once"),
    ("a model not found", lambda t, d: embed_sequences({"a": "MK"}, EmbedOptions(model="zzqx_nothing"),
                                                       kind="per_protein"),
     "--local-dir DIR`) and pass the directory: model=DIR",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", "zzqx_nothing", "-o", t / "e.h5"],
     "--local-dir DIR`) and pass the directory: -m DIR"),
    ("a stopped training run", lambda t, d: load_model(_stopped_run(t)),
     "its latest checkpoint, {t}/run/checkpoints/step_00000004, is a model directory (give it as model)",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _stopped_run(t), "-o", t / "e.h5"],
     "its latest checkpoint, {t}/run/checkpoints/step_00000004, is a model directory (give it to -m)"),
    ("a run's checkpoints folder", lambda t, d: load_model(_stopped_run(t) / "checkpoints"),
     "each step_N inside is one; give model={t}/run/checkpoints/step_00000004 for the latest",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _stopped_run(t) / "checkpoints", "-o", t / "e.h5"],
     "each step_N inside is one; give -m {t}/run/checkpoints/step_00000004 for the latest"),
    ("a hub cache folder", lambda t, d: load_model(_hub_folder(t)),
     "give model={t}/models--acme--pl/snapshots/c1 (the model's files), or model=acme/pl where this is the cache",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _hub_folder(t), "-o", t / "e.h5"],
     "give -m {t}/models--acme--pl/snapshots/c1 (the model's files), or -m acme/pl where this is the cache"),
    ("a PEFT adapter", lambda t, d: load_model(_adapter(t)), "import_adapter('{t}/lora', DIR) and give that directory as model",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _adapter(t), "-o", t / "e.h5"],
     "`protrans import-model {t}/lora -o DIR` (--base MODEL for a local copy of the base) and give -m that "
     "directory"),
    ("a layer a model lacks", lambda t, d: build_embedder(EmbedOptions(model=_bert(t), layers=(99,), device="cpu")),
     "layer 99 does not exist: ",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _bert(t), "--layer", "99", "--device", "cpu",
                   "-o", t / "e.h5"],
     "error: --layer 99 does not exist: "),
    ("3Di strings for a model of amino acids",
     lambda t, d: build_embedder(EmbedOptions(model=_bert(t), three_di=True, device="cpu")),
     "does not read 3Di strings (its vocabulary has no <fold2AA>); ProstT5 does: model='prostt5'",
     lambda t, d: ["embed", _written(t / "q.fa", ">a\nMK\n"), "-m", _bert(t), "--3di", "--device", "cpu",
                   "-o", t / "e.h5"],
     "does not read 3Di strings (its vocabulary has no <fold2AA>); ProstT5 does: -m prostt5"),
    ("no shards", lambda t, d: build_corpus([d / "train.fasta"], CorpusOptions(output=str(t / "c.txt"), num_shards=0)),
     "num_shards must be at least 1, got 0",
     lambda t, d: ["prep", d / "train.fasta", "-o", t / "c.txt", "--shards", "0"],
     "error: --shards must be at least 1, got 0"),
    ("shards two ways", lambda t, d: build_corpus([d / "train.fasta"], CorpusOptions(output=str(t / "c.txt"),
                                                                                     num_shards=2, shard_size=10)),
     "num_shards and shard_size cannot be combined: choose one",
     lambda t, d: ["prep", d / "train.fasta", "-o", t / "c.txt", "--shards", "2", "--shard-size", "10"],
     "--shards and --shard-size cannot be combined: choose one"),
    # (the one bound, 10: "must be at least 1, got 0" was refused again at 1)
    ("no resamples", lambda t, d: _fit_loc(d, t, n_bootstrap=0), "n_bootstrap must be at least 10 (a 95% ",
     lambda t, d: _fit_cli(d, t, "--bootstrap", "0"), "error: --bootstrap must be at least 10 (a 95% "),
    ("too few resamples", lambda t, d: _fit_loc(d, t, n_bootstrap=9), "n_bootstrap must be at least 10 (a 95% ",
     lambda t, d: _fit_cli(d, t, "--bootstrap", "9"), "error: --bootstrap must be at least 10 (a 95% "),
    ("a negative cache", lambda t, d: _fit_loc(d, t, cache_bytes=-1), "cache_bytes must be 0 or more, got -1",
     lambda t, d: _fit_cli(d, t, "--cache-gb", "-1"), "error: --cache-gb must be a size in GB, 0 or more, got -1"),
    ("per-protein vectors for a residue task",
     lambda t, d: fit(FitConfig(task="ss3", max_epochs=1, threads=1, plots=False), d / "train.h5",
                      DATA / "heads" / "pisces_small.csv", t / "head"),
     "has no per_residue embeddings (it holds per_protein): embed with per_residue=True",
     lambda t, d: ["fit", "ss3", "--embeddings", d / "train.h5", "--labels", DATA / "heads" / "pisces_small.csv",
                   "-o", t / "head"],
     "has no per_residue embeddings (it holds per_protein): embed without --per-protein (or with --per-residue too)"),
    ("a layer a file of one lacks", lambda t, d: _fit_loc(d, t, _one_layer_file(d, t), layer=5),
     "not layer 5: fit a head on it with layer=-1 (the default), or embed with layers=(5,)",
     lambda t, d: _fit_cli(d, t, "--layer", "5", embeddings=_one_layer_file(d, t)),
     "not layer 5: fit a head on it with --layer -1 (the default), or embed with --layer 5"),
    ("sizes from two places",
     lambda t, d: train(TrainConfig(family="bert", preset="tiny", init_from=str(t / "m"), output_dir=str(t / "run"),
                                    corpus=[str(DATA / "train" / "learnable.txt")])),
     "(model_overrides changes settings such as dropout, not sizes)",
     lambda t, d: ["train", "--family", "bert", "--preset", "tiny", "--init-from", t / "m", "--corpus",
                   DATA / "train" / "learnable.txt", "-o", t / "run"],
     "(--set KEY=VALUE changes settings such as dropout, not sizes)"),
]


@pytest.mark.parametrize("call, said, command, cli_said", [case[1:] for case in NAMED_AS_GIVEN],
                         ids=[case[0] for case in NAMED_AS_GIVEN])
def test_a_message_names_a_setting_as_the_library_caller_gives_it_and_the_command_line_by_its_flag(
        tmp_path, loc_data, run_cli, call, said, command, cli_said):
    # A library caller was told to pass flags ("--invalid-policy skip", "--shards", "-m DIR",
    # "--bootstrap", "--cache-gb" in GB) that no call takes: the same error now names the keyword
    # or field the call takes; the command's line is as it was.
    from protrans_cli.errors import ProtransError

    library, command_line = tmp_path / "library", tmp_path / "cli"
    library.mkdir()
    command_line.mkdir()
    with pytest.raises(ProtransError) as caught:
        call(library, loc_data)
    said = said.format(t=library)
    assert said in str(caught.value) and f"-{said}" not in str(caught.value), str(caught.value)
    r = run_cli(*command(command_line, loc_data))
    assert r.exit_code in (1, 2) and cli_said.format(t=command_line) in r.stderr.strip().splitlines()[-1], r.stderr
    # (and a library call after the command is worded for its caller again)
    with pytest.raises(ProtransError) as caught:
        call(library, loc_data)
    assert said in str(caught.value) and f"-{said}" not in str(caught.value), str(caught.value)


def test_too_many_shards_for_the_open_file_limit_names_num_shards_to_a_library_caller(tmp_path, loc_data, run_cli,
                                                                                     monkeypatch):
    import protrans_cli.corpus as corpus

    monkeypatch.setattr(corpus, "_raise_open_file_limit", lambda needed: 96)
    with pytest.raises(UsageError, match=r"^num_shards=200 keeps 200 files open, and this process may open 96 "
                                         r"\(ulimit -n\): use fewer shards, or shard_size, which keeps one open$"):
        build_corpus([loc_data / "train.fasta"], CorpusOptions(output=str(tmp_path / "c.txt"), num_shards=200))
    r = run_cli("prep", loc_data / "train.fasta", "-o", tmp_path / "c.txt", "--shards", "200")
    assert r.exit_code == 2 and r.stderr.strip() == (
        "protrans: error: --shards 200 keeps 200 files open, and this process may open 96 (ulimit -n): use fewer "
        "shards, or --shard-size, which keeps one open"), r.stderr
    assert not list(tmp_path.iterdir())


def test_predict_on_embeddings_of_another_width_says_what_a_library_caller_can_do(tmp_path, loc_data, run_cli):
    # (a library caller was told "embed with -m onehot, or give the sequences with --fasta":
    # predict() takes no FASTA; predict_sequences does)
    import h5py

    _fit_loc(loc_data, tmp_path)
    with h5py.File(tmp_path / "narrow.h5", "w") as f:
        for i in range(24):
            f.create_dataset(f"p{i}", data=np.zeros(10, np.float32))
    said = "embeddings have dimension 10, the head was trained on 21-d embeddings of onehot: embed with {}"
    with pytest.raises(ModelError) as caught:
        predict(tmp_path / "head", tmp_path / "narrow.h5", tmp_path / "p.csv")
    assert str(caught.value).endswith(said.format("model='onehot', or give the sequences to predict_sequences "
                                                  "(embedded with the head's model)")), str(caught.value)
    r = run_cli("predict", tmp_path / "head", "--embeddings", tmp_path / "narrow.h5", "-o", tmp_path / "p.csv")
    assert r.exit_code == 1 and r.stderr.strip().endswith(said.format(
        "-m onehot, or give the sequences with --fasta (embedded with the head's model)")), r.stderr
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_library_calls_repeated_leave_no_file_open(tmp_path, loc_data):
    """A notebook or a service calls the library again and again: each call closes what it opened
    (HDF5 files, NpzFile, id lists, corpus shards), whether it returns or raises, so the process's
    open files do not grow (and no ResourceWarning is left for the garbage collector)."""
    import gc
    import os
    import warnings

    from protrans_cli.errors import InputError
    from protrans_cli.export import export, info
    from protrans_cli.knn import nearest
    from protrans_cli.merge import merge

    h5 = loc_data / "train.h5"
    (tmp_path / "ids.txt").write_text("absent\n")

    def calls(i):
        export(h5, tmp_path / f"x{i}.tsv")
        export(h5, tmp_path / f"x{i}.npz")
        info(h5)
        nearest(h5, h5, k=2, exclude_self=True)
        with pytest.raises(UsageError):  # (one file given twice)
            merge([h5, h5], tmp_path / f"m{i}.h5")
        build_corpus([loc_data / "train.fasta"], CorpusOptions(output=str(tmp_path / f"c{i}.txt")))
        predict(tmp_path / "head", h5, tmp_path / f"p{i}.csv")
        with pytest.raises(InputError):
            export(h5, tmp_path / f"y{i}.tsv", ids=tmp_path / "ids.txt")

    def open_fds():
        gc.collect()
        return sorted(os.listdir("/proc/self/fd"))

    _fit_loc(loc_data, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        calls(0)  # (first use: lazy imports)
        before = open_fds()
        for i in range(1, 4):
            calls(i)
        assert len(open_fds()) == len(before)
