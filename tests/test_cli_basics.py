"""The command surface every command shares: help, version, lazy imports, errors, exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from protrans_cli import __version__
from protrans_cli.errors import InputError, UsageError


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys; from protrans_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "prep" in out.stdout


@pytest.mark.parametrize("model", ["onehot", "blosum62"])
def test_a_onehot_embedding_imports_no_model_code(tmp_path, model):
    """`embed -m onehot` (the weight-free baseline) needs no transformers: reading the options'
    alphabet imported every model family (and transformers' model code behind Transformer-XL's),
    4 of the 14 s it took over the E. coli proteome here. Nor torch, -j given or not (setting
    torch's thread count imported it: 1.5 s of an 8 s run). `-m blosum62` alike."""
    from conftest import heavy_imports_of

    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMKV\n")
    argv = ["embed", str(fasta), "-m", model, "-o", str(tmp_path / "o.h5"), "-q", "-j", "2"]
    out = heavy_imports_of([argv], ("torch", "transformers", "protrans_cli.models"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o.h5").is_file()


def test_comparing_model_names_imports_no_model_code(run_cli, tmp_path):
    """Two files whose model is named two ways (prot_t5_xl_half, its hub id) are one model to
    merge, knn, fit and predict; telling so imported protrans_cli.models for its checkpoint list,
    and transformers behind it: a 0.3 s merge took 4 s."""
    import h5py
    from conftest import heavy_imports_of

    parts = []
    for i, (record, model) in enumerate([(">a\nMKTAYIAKQR\n", "prot_t5_xl_half"),
                                         (">b\nMKVLLA\n", "Rostlab/prot_t5_xl_half_uniref50-enc")]):
        (tmp_path / f"{i}.fa").write_text(record)
        parts.append(tmp_path / f"{i}.h5")
        assert run_cli("embed", tmp_path / f"{i}.fa", "-m", "onehot", "-o", parts[-1], "-q").exit_code == 0
        with h5py.File(parts[-1], "a") as f:
            f.attrs["model"] = model
    merged = tmp_path / "all.h5"
    out = heavy_imports_of([["merge", *map(str, parts), "-o", str(merged), "-q"]], ("transformers", "protrans_cli.models"))
    assert out.returncode == 0, out.stderr
    from protrans_cli.io.h5 import EmbeddingsReader

    with EmbeddingsReader(merged) as r:
        assert sorted(i for i, _, _ in r.items("per_protein")) == ["a", "b"]


def test_a_run_logging_its_progress_imports_no_tqdm(tmp_path, monkeypatch):
    """With stderr a log (a script's, a batch job's), progress is LogProgress's lines: tqdm.auto
    (asyncio behind it) was imported all the same, 0.04 s of a 0.2 s `prep` of a small FASTA."""
    from conftest import heavy_imports_of

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMKVLLA\n")
    out = heavy_imports_of([["prep", str(fasta), "-o", str(tmp_path / "c.txt")]], ("tqdm", "torch"))
    assert out.returncode == 0, out.stderr  # (stderr a pipe here: a log)
    proteins = [line for line in (tmp_path / "c.txt").read_text().splitlines() if line]
    assert proteins == ["M K T A Y I A K Q R", "M K V L L A"]


def test_a_quiet_run_imports_no_tqdm(run_cli, tmp_path):
    """Under -q progress shows nothing: a disabled tqdm bar imported tqdm.auto (asyncio behind it)
    all the same, 0.04 s of a 0.3 s `export -q` of a small file."""
    from conftest import heavy_imports_of

    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMKVLLA\n")
    assert run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "e.h5", "-q").exit_code == 0
    out = heavy_imports_of([["export", str(tmp_path / "e.h5"), "-o", str(tmp_path / "e.tsv"), "-q"]], ("tqdm",))
    assert out.returncode == 0, out.stderr
    assert [line.split("\t")[0] for line in (tmp_path / "e.tsv").read_text().splitlines()[1:]] == ["a", "b"]


def test_the_package_lists_its_lazy_exports_without_importing_them():
    """dir(protrans_cli) (tab completion in IPython) offered none of embed, train, fit...: they are
    loaded on first use. Listing them imports nothing heavy."""
    code = ("import sys, protrans_cli\n"
            "names = dir(protrans_cli)\n"
            "assert set(protrans_cli.__all__) <= set(names), set(protrans_cli.__all__) - set(names)\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_package_exports_what_the_library_docs_use():
    """embed_sequences, build_embedder and EmbeddingsReader (docs/embed.md, docs/formats.md) were
    only reachable through their modules: `from protrans_cli import embed_sequences` failed."""
    import protrans_cli
    from protrans_cli.embed import build_embedder, embed_sequences
    from protrans_cli.io.h5 import EmbeddingsReader

    assert protrans_cli.embed_sequences is embed_sequences and protrans_cli.build_embedder is build_embedder
    assert protrans_cli.EmbeddingsReader is EmbeddingsReader


def test_unknown_command_is_usage_error(run_cli):
    result = run_cli("frobnicate")
    assert result.exit_code == 2


def test_protrans_alone_shows_the_help_page_on_stderr(run_cli):
    # click 8.2+ raises a usage error holding the whole help page: it was squeezed into one line
    result = run_cli()
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: protrans") and any(line.split()[:1] == ["embed"] for line in lines)


@pytest.mark.parametrize("command", ["", "prep", "train", "embed", "models", "fit", "finetune", "predict", "merge", "import-esm", "esm-extract", "contacts", "import-head", "variants", "perplexity", "generate", "knn",
                                     "labels", "from-structure", "quickstart", "env"])
def test_help_fits_an_80_column_terminal(command):
    """At 80 columns the examples of prep, train and embed (up to 95 characters) and labels'
    `--format, --label-format [auto|netsurfp|...]` line (90) ran past the edge and wrapped."""
    from click.testing import CliRunner

    from protrans_cli.cli import cli

    result = CliRunner().invoke(cli, [*command.split(), "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    wide = [line for line in result.output.splitlines() if len(line) > 80]
    assert not wide, wide


def test_stdout_writes_are_whole_and_a_reader_that_left_is_a_broken_pipe():
    # a large write to a pipe whose reader left returned a short count without an error:
    # `predict | head -1` exited 0 instead of 141
    from protrans_cli.io.files import _WholeWrites

    class Pipe:
        def __init__(self, room):
            self.room, self.got = room, b""

        def write(self, data):
            n = min(len(data), self.room, 7)
            self.room -= n
            self.got += bytes(data[:n])
            return n

    pipe = Pipe(10_000)
    assert _WholeWrites(pipe).write(b"x" * 1000) == 1000 and pipe.got == b"x" * 1000
    with pytest.raises(BrokenPipeError):
        _WholeWrites(Pipe(20)).write(b"y" * 100)
    shell = (f"{sys.executable} -c \"from protrans_cli.io.files import stdout_binary; "
             "stdout_binary().write(b'x' * 4_000_000)\" | head -c 1 > /dev/null; echo ${PIPESTATUS[0]}")
    status = subprocess.run(["bash", "-c", shell], capture_output=True, text=True)
    assert status.stdout.strip() != "0" and "BrokenPipeError" in status.stderr, (status.stdout, status.stderr)


def test_error_formats_name_file_and_record():
    err = InputError("invalid character 'J' at residue 3", path="x.fa", record="P1", line=7)
    assert str(err) == "x.fa:7, record 'P1': invalid character 'J' at residue 3"
    assert err.exit_code == 1
    assert UsageError("bad").exit_code == 2
    # an empty name (`protrans prep ''`) is shown quoted, not as ": no such file"
    assert str(InputError("no such file", path="")) == "'': no such file"


def test_located_names_the_file_of_an_error_that_names_none_and_keeps_one_that_does():
    """`located(labels)` (fit, finetune): a label error naming only its record gets the labels
    file; an error that already names its file (the embeddings) keeps it, line and record too."""
    from protrans_cli.errors import located

    with pytest.raises(InputError) as raised, located("labels.csv"):
        raise InputError("no label", record="P1", line=3)
    assert str(raised.value) == "labels.csv:3, record 'P1': no label"
    with pytest.raises(UsageError) as raised, located("labels.csv"):
        raise UsageError("not an embeddings file", path="train.h5")
    assert str(raised.value) == "train.h5: not an embeddings file" and raised.value.exit_code == 2


def test_described_names_an_errors_type_once():
    """`Type: first line`, and the first line alone where it starts with the type's name (the
    compiler errors torch.compile wraps): "BackendCompilerFailed: BackendCompilerFailed: ..." read twice."""
    from protrans_cli.errors import described

    BackendCompilerFailed = type("BackendCompilerFailed", (Exception,), {})
    assert described(ValueError("bad value\nmore")) == "ValueError: bad value"
    assert described(BackendCompilerFailed("BackendCompilerFailed: backend='inductor' raised:\nC++ compile error")) \
        == "BackendCompilerFailed: backend='inductor' raised:"


@pytest.mark.parametrize("closed,args,message", [
    (0, ["prep", "-"], "<stdin>: standard input is closed"),
    (0, ["prep", "-", "--dedup"], "<stdin>: standard input is closed"),
    (0, ["embed", "-", "-m", "onehot", "-o", "{tmp}/x.h5"], "<stdin>: standard input is closed"),
    (1, ["prep", "{fasta}"], "standard output is closed: give -o FILE"),
    (1, ["models"], "standard output is closed: models writes there"),
    (1, ["models", "--json"], "standard output is closed: models writes there"),
    (1, ["env", "--json"], "standard output is closed: env writes there"),
    # (they wrote nothing and exited 0, where every command that writes to stdout said so)
    (1, ["--version"], "standard output is closed: --version writes there"),
    (1, ["-V"], "standard output is closed: --version writes there"),
    (1, ["--help"], "standard output is closed: --help writes there"),
    (1, ["embed", "-h"], "standard output is closed: --help writes there"),
    (1, ["prep", "--help"], "standard output is closed: --help writes there"),
])
def test_a_closed_stdin_or_stdout_is_one_line(tmp_path, closed, args, message):
    """`protrans prep - <&-` and `protrans prep x.fa >&-` were AttributeError tracebacks."""
    import os

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMK\n")
    args = [a.format(tmp=tmp_path, fasta=fasta) for a in args]
    out = subprocess.run([sys.executable, "-m", "protrans_cli", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: os.close(closed))
    assert out.returncode == 1 and out.stderr == f"protrans: error: {message}\n", out.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["models"], ["models", "--json"], ["env", "--json"], ["--help"], ["embed", "-h"],
                                  ["--version"]])
def test_listings_on_a_full_stdout_name_it(args):
    """`protrans models > /dev/full` said only "No space left on device"."""
    with open("/dev/full", "wb") as full:
        out = subprocess.run([sys.executable, "-m", "protrans_cli", *args], stdin=subprocess.DEVNULL, stdout=full,
                             stderr=subprocess.PIPE, text=True)
    assert out.returncode == 1 and out.stderr == \
        "protrans: error: standard output: cannot write: No space left on device\n", out.stderr


def test_a_closed_stderr_discards_the_messages_and_the_command_still_works(tmp_path):
    """`protrans embed x.fa -o x.h5 2>&-` (a scheduler's or daemon's closed descriptor) failed
    on its first message, exit 1 with the output left .partial; prep wrote nothing. Now the
    messages go nowhere, as with 2>/dev/null, and a file opened later never takes descriptor 2
    (where HDF5 and torch write theirs)."""
    import os

    import h5py

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKLV\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "protrans_cli", *map(str, args)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(2))

    out = run("embed", fasta, "-m", "onehot", "-o", tmp_path / "x.h5")
    assert out.returncode == 0
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["per_residue"]["a"].shape == (8, 21) and f["per_residue"]["b"].shape == (4, 21)
    out = run("prep", fasta, "-o", tmp_path / "corpus.txt")
    assert out.returncode == 0 and (tmp_path / "corpus.txt").read_text() == "M K T A Y I A K\n\nM K L V\n\n"
    out = run("embed", tmp_path / "missing.fa", "-m", "onehot", "-o", tmp_path / "y.h5")
    assert out.returncode == 1 and not list(tmp_path.glob("y.h5*"))
    if os.path.isdir("/proc/self/fd"):
        probe = ("import os; from protrans_cli.cli import _open_closed_standard_streams as fix; fix(); "
                 f"f = open({str(tmp_path / 'z.txt')!r}, 'w'); print(f.fileno() != 2, os.readlink('/proc/self/fd/2'))")
        out = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: os.close(2))
        assert out.stdout.split() == ["True", os.devnull], out.stdout


@pytest.mark.parametrize("command", ["embed", "prep"])
def test_a_stderr_whose_reader_left_discards_the_messages_and_the_command_still_works(tmp_path, command):
    """`protrans embed x.fa -o x.h5 2>&1 | tee log` whose tee went away (a dropped ssh connection's
    SIGHUP ends it with the job): embed's summary failed it (EPIPE, exit 141), prep's table did
    (rich's own exit 1), train's first line (141, nothing trained). Their messages go nowhere now,
    as a closed stderr's do, and the command ends as it would have."""
    import os

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKLV\n")
    out = tmp_path / ("x.h5" if command == "embed" else "c.txt")
    read_end, write_end = os.pipe()
    os.close(read_end)  # (the reader gone)
    try:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", command, str(fasta), "-o", str(out),
                               *(["-m", "onehot"] if command == "embed" else [])],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.fa", out.name])


def test_a_library_callers_stderr_that_is_its_stdout_still_fails_when_the_reader_left(tmp_path):
    """A script that merges its messages into its output (`sys.stderr = sys.stdout`, or
    redirect_stderr(sys.stdout)), piped to a reader that went away: protrans' first warning met
    EPIPE on descriptor 1, which was pointed at /dev/null as a stderr gone, so the script's own data
    after it vanished without an error and it exited 0. Only a stderr of its own is discarded; the
    data's failure is raised, as before (BrokenPipeError)."""
    import os

    script = ("import sys\nsys.stderr = sys.stdout\nfrom protrans_cli import console\n"
              "console.warn('a message')\nprint('the data', flush=True)\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # (the reader gone)
    try:
        proc = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=write_end,
                              stderr=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert proc.returncode != 0


def test_shell_completion_lists_commands_and_options():
    import os

    env = {**os.environ, "_PROTRANS_COMPLETE": "bash_complete", "COMP_WORDS": "protrans pr", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-m", "protrans_cli"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["plain,prep", "plain,predict", "plain,project"]
    env.update(COMP_WORDS="protrans embed --lay", COMP_CWORD="2")
    out = subprocess.run([sys.executable, "-m", "protrans_cli"], env=env, capture_output=True, text=True)
    assert "plain,--layout" in out.stdout.split()


def test_tab_after_protrans_lists_the_commands_without_importing_them(monkeypatch):
    """Completion runs on every Tab press: `protrans <Tab>` imported every command module (numpy
    behind half of them) to read their help, 0.2 s a press where --help takes 0.08."""
    from conftest import heavy_imports_of

    from protrans_cli.cli import COMMANDS

    monkeypatch.setenv("_PROTRANS_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "protrans ")
    monkeypatch.setenv("COMP_CWORD", "1")
    out = heavy_imports_of([[]], ("numpy", "torch", *(module for module, _ in COMMANDS.values())))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"plain,{name}" for name in COMMANDS]
    monkeypatch.setenv("_PROTRANS_COMPLETE", "zsh_complete")  # (zsh and fish show each command's help)
    out = heavy_imports_of([[]], ("numpy", *(module for module, _ in COMMANDS.values())))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:3] == ["plain", "prep", COMMANDS["prep"][1]]


def test_every_commands_help_and_tab_completion_import_no_numpy():
    """`fit --help`, `embed -m <Tab>`, `fit <Tab>`... imported numpy (and h5py's helpers) for the
    choices of their options: 0.1 s of each 0.2 s Tab press. They read protrans_cli.choices."""
    from protrans_cli.cli import COMMANDS

    code = ("import sys\n"
            "from click.shell_completion import BashComplete\n"
            "from protrans_cli.cli import COMMANDS, cli, main\n"
            "comp = BashComplete(cli, {}, 'protrans', '_PROTRANS_COMPLETE')\n"
            "for name in COMMANDS:\n"
            "    options = [c.value for c in comp.get_completions([name], '--')]\n"
            "    assert '--help' in options, (name, options)\n"
            "    try:\n        main([name, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print(' '.join(c.value for c in comp.get_completions(['fit'], '')))\n"
            "print(' '.join(c.value for c in comp.get_completions(['embed', '--dtype'], '')))\n"
            "print([m for m in ('numpy', 'h5py', 'torch') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-3:] == ["ss3 ss8 ss3+ss8 disorder ss3+ss8+disorder loc residue protein value",
                                            "auto float32 bfloat16 float16", "[]"]
    assert all(f"protrans {name}" in out.stdout for name in COMMANDS)  # (every help page printed)


def test_the_light_choices_are_the_tasks_and_kinds_of_the_heads():
    """fit's and finetune's TASK choices (protrans_cli.choices, for --help and completion without
    numpy) are the tasks the heads know, in their order; the architectures' keys are the layouts."""
    from protrans_cli.choices import ALL_ARCHITECTURES, ARCHITECTURES, TASK_NAMES
    from protrans_cli.heads.tasks import TASKS
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE

    assert TASK_NAMES == tuple(TASKS)
    assert set(ARCHITECTURES) == {PER_RESIDUE, PER_PROTEIN}
    assert sorted(ALL_ARCHITECTURES) == sorted({a for options in ARCHITECTURES.values() for a in options})


def test_shell_completion_of_families_presets_and_models_reads_the_catalog_only():
    """`train --family`, `--preset`, `models --family`, `embed -m` and every other option that takes
    a model complete the names `protrans models` lists (from catalog.json, without torch); `-m
    ./...` completes directories."""
    code = ("import sys\n"
            "from click.shell_completion import BashComplete\n"
            "from protrans_cli.cli import cli\n"
            "comp = BashComplete(cli, {}, 'protrans', '_PROTRANS_COMPLETE')\n"
            "for args, incomplete in [(['train', '--family'], 'e'), (['train', '--family', 'esm', '--preset'], 'esm2_t3'),\n"
            "                         (['models', '--family'], 'x'), (['embed', '-m'], 'prot_t5_xl_h'),\n"
            "                         (['embed', '-m'], 'one'), (['embed', '-m'], './runs'),\n"
            "                         (['contacts', '-m'], 'esm2_t6'), (['variants', '-m'], 'one'), (['knn', '-m'], 'one'),\n"
            "                         (['predict', '-m'], 'prot_bert'), (['train', '--init-from'], 'prot_bert'),\n"
            "                         (['finetune', '-m'], 'prot_t5_xl_h')]:\n"
            "    print(' '.join(f'{c.type},{c.value}' for c in comp.get_completions(args, incomplete)))\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "plain,electra plain,esm plain,esmc",
        "plain,esm2_t30_150M plain,esm2_t33_650M plain,esm2_t36_3B",
        "plain,xlnet",
        "plain,prot_t5_xl_half",
        "plain,onehot",
        "dir,./runs",
        # the other options that take a model (onehot where it embeds: knn and predict --fasta)
        "plain,esm2_t6_8M_UR50D",
        "dir,one",
        "plain,onehot",
        "plain,prot_bert plain,prot_bert_bfd",
        "plain,prot_bert plain,prot_bert_bfd",
        "plain,prot_t5_xl_half",
        "False False",
    ]


def test_shared_option_names_are_consistent():
    """-o/--output, -m/--model, -j/--threads mean the same everywhere they appear."""
    import click

    from protrans_cli.cli import COMMANDS, cli

    ctx = click.Context(cli)
    expected = {"-o": "--output", "-m": "--model", "-j": "--threads", "-v": "--verbose", "-q": "--quiet"}
    seen = set()
    for name in COMMANDS:
        for param in cli.get_command(ctx, name).params:
            for short, long in expected.items():
                if short in param.opts:
                    assert long in param.opts, f"protrans {name}: {short} is {param.opts}, expected {long}"
                    seen.add(short)
    assert {"-o", "-m", "-j"} <= seen


def test_shared_options_are_described_alike():
    """-j said "[default: min(cores, 4), or $PROTRANS_THREADS]" (prep), "(default: $PROTRANS_THREADS,
    else ...)" (embed, fit, predict) and "(default min(cores, 4))" (train, which reads
    $PROTRANS_THREADS too); train's -o was a TEXT where every other command's is a FILE or DIRECTORY."""
    import click

    from protrans_cli.cli import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        for param in command.params:
            if "-j" in param.opts:
                assert "[default: " in param.help and "$PROTRANS_THREADS" in param.help, (name, param.help)
            if "-o" in param.opts:
                assert param.make_metavar(click.Context(command)) in ("FILE", "DIRECTORY"), name


def _command_whose_signal_python_drops(name: str):
    """A stand-in for the click group's main(): it raises signal `name` inside a weakref callback,
    where the handler's exception is dropped ("Exception ignored in ..."), and returns 0."""
    import signal
    import weakref

    def swallowed(*args, **kwargs):
        class Thing:
            pass

        thing = Thing()
        # the handler raises inside the callback: dropped
        ref = weakref.ref(thing, lambda _: signal.raise_signal(getattr(signal, name)))
        del thing
        assert ref() is None  # (its callback ran)
        return 0

    return swallowed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
@pytest.mark.parametrize("name, code, message", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted"),
                                                 # (Slurm's --signal=USR1@N: it killed the command on the spot)
                                                 ("SIGUSR1", 138, "warned by SIGUSR1 (the job's time is nearly up)")])
def test_a_signal_whose_exception_python_swallowed_still_stops(monkeypatch, capsys, name, code, message):
    """Raised while a weakref callback ran, the handler's exception was dropped ("Exception ignored
    in ..."): `fit` (SIGTERM) and `predict` (Ctrl-C, one try in five) then ended normally, exit 0."""
    import signal
    import weakref

    import protrans_cli.cli as cli_module

    swallowed = _command_whose_signal_python_drops(name)
    monkeypatch.setattr(cli_module.cli, "main", swallowed)
    seen = []  # what reached the unraisable hook in place before main(): Python's printer
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"protrans: error: {message}"
    # the dropped exception is not printed ("Exception ignored in ..." and a traceback above the
    # one line), and the hook is put back for an in-process caller
    assert seen == [] and sys.unraisablehook == seen.append
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    monkeypatch.setattr(cli_module.cli, "main", lambda *a, **k: 0)
    with pytest.raises(SystemExit) as caught:  # the next call in this process is not stopped
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 0

    def other_unraisable(*args, **kwargs):  # not a signal's: reported as before
        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda _: 1 / 0)
        del thing
        assert ref() is None  # (its callback ran)
        return 0

    monkeypatch.setattr(cli_module.cli, "main", other_unraisable)
    with pytest.raises(SystemExit):
        cli_module.main(["prep", "x.fa"])
    assert [type(u.exc_value) for u in seen] == [ZeroDivisionError]


@pytest.mark.parametrize("command", ["models", "prep"])
def test_an_in_process_call_that_prints_a_table_leaves_the_callers_random_state_alone(tmp_path, command):
    """A workflow that seeded Python's `random` and then called main() in process saw its draws move:
    the first table imported rich, which draws random.getrandbits(24) at import (rich.style)."""
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    argv = {"models": ["models"], "prep": ["prep", str(fasta), "-o", str(tmp_path / "c.txt")]}[command]
    code = ("import random, sys\n"
            "random.seed(7); expected = random.random(); random.seed(7)\n"
            "from protrans_cli.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'rich.style' in sys.modules, 'no table printed'\n"
            "assert random.random() == expected, 'random state moved'\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_an_in_process_calls_message_flags_are_its_own(tmp_path, capsys):
    """`main(["-q", ...])` from a notebook left the console quiet for every library call after it
    (and `-v` verbose); the caller's settings are back once it returns."""
    import protrans_cli.cli as cli_module
    from protrans_cli import console

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    saved = console.state.verbosity, console.state.debug
    console.state.verbosity, console.state.debug = before = 0, False  # (a notebook's: messages, no tracebacks)
    try:
        for flags in (["-q"], ["-vv"], ["--debug"]):
            with pytest.raises(SystemExit) as caught:
                cli_module.main([*flags, "prep", str(fasta), "-o", str(tmp_path / "c.txt")])
            assert caught.value.code == 0
            assert (console.state.verbosity, console.state.debug) == before, flags
        capsys.readouterr()
        console.info("said after the calls")
        assert "said after the calls" in capsys.readouterr().err
    finally:
        console.state.verbosity, console.state.debug = saved


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_noted_in_an_in_process_call_does_not_stop_the_callers_next_library_call(tmp_path, monkeypatch, name):
    """A Ctrl-C (SIGTERM) whose exception Python dropped in an in-process CLI call (a notebook, a
    test) stayed noted after main() returned: the caller's next library call that checks for a
    stop, export() with no CLI around it, raised KeyboardInterrupt at once (a pytest worker of
    the suite died so, about one run in seven of a few modules)."""
    import h5py
    import numpy as np

    import protrans_cli.cli as cli_module
    from protrans_cli.export import export

    monkeypatch.setattr(cli_module.cli, "main", _command_whose_signal_python_drops(name))
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == (143 if name == "SIGTERM" else 130)
    with h5py.File(tmp_path / "e.h5", "w") as f:  # (another tool's flat file)
        f["p1"] = np.ones((2, 3), dtype=np.float32)
    try:
        cli_module.raise_if_stopped()  # nothing of that call is left to stop this one
        exported = export(tmp_path / "e.h5", tmp_path / "e.tsv")
    except KeyboardInterrupt:  # (caught: raised, it ends the whole test run)
        pytest.fail("the stop noted in the CLI call stopped the library call after it")
    assert exported.proteins == 1


@pytest.mark.parametrize("name, message", [("SIGTERM", "terminated"), ("SIGINT", "interrupted")])
def test_a_signal_once_the_output_is_complete_loses_nothing_and_exits_0(monkeypatch, capsys, name, message):
    """`fit` SIGTERMed in the second after `wrote HEAD`: a traceback from a weakref callback, then
    "interrupted" and exit 130 (143), for a head already whole: a scheduler's job reported failed."""
    import signal

    import protrans_cli.cli as cli_module
    from protrans_cli import console

    def finished_then_signalled(*args, **kwargs):
        console.output_complete("heads/ss3")
        signal.raise_signal(getattr(signal, name))  # (raised: the command would have stopped here)
        return 0

    monkeypatch.setattr(cli_module.cli, "main", finished_then_signalled)
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"protrans: warning: {message} once the output was complete (heads/ss3): "
                                            "nothing was lost") and "Traceback" not in err
    monkeypatch.setattr(cli_module.cli, "main", lambda *a, **k: signal.raise_signal(getattr(signal, name)))
    with pytest.raises(SystemExit) as caught:  # before completion a signal still stops the command
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == (143 if name == "SIGTERM" else 130)


@pytest.mark.parametrize("verbosity", [0, 1])
def test_a_signal_once_a_share_is_complete_quietly_is_no_line_of_this_process(monkeypatch, capsys, verbosity):
    """A torchrun rank whose share is written waits for rank 0, which says how the run ended: a signal
    then is no warning of its own (each rank repeated "nothing was lost"), one debug line with -v; exit 0."""
    import signal

    import protrans_cli.cli as cli_module
    from protrans_cli import console

    def share_done_then_signalled(*args, **kwargs):
        console.state.verbosity = verbosity  # (-v, as the command's options set it)
        console.output_complete("this rank's share of o.h5", quiet=True)
        signal.raise_signal(signal.SIGTERM)
        return 0

    monkeypatch.setattr(cli_module.cli, "main", share_done_then_signalled)
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 0
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ([] if not verbosity else ["[debug] terminated once this rank's share of o.h5 was complete; "
                                              "another process reports how the run ended"])
    monkeypatch.setattr(cli_module.cli, "main", lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(SystemExit) as caught:  # the next call is not quiet: a signal stops it
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 143


def test_a_ctrl_c_while_python_exits_keeps_the_exit_code_without_a_traceback(tmp_path):
    """Once main() has its exit code, Python's teardown (atexit callbacks) interrupted by Ctrl-C
    printed "Exception ignored in atexit callback" and a KeyboardInterrupt traceback."""
    import subprocess
    import sys

    (tmp_path / "in.fa").write_text(">a\nMKV\n")
    code = ("import atexit, os, signal\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
            "from protrans_cli.cli import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code, "prep", str(tmp_path / "in.fa"), "-o", str(tmp_path / "c.txt"),
                           "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "c.txt").read_text() == "M K V\n\n"


def test_a_stop_that_a_library_turned_into_another_error_is_still_a_stop(monkeypatch, capsys):
    """Ctrl-C inside an import can surface as an ImportError raised while handling it: that was a
    traceback, and exit 1, for what was a Ctrl-C. Other errors keep their traceback (bugs)."""
    import protrans_cli.cli as cli_module

    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("cannot import name 'x' from partially initialized module") from None

    monkeypatch.setattr(cli_module.cli, "main", interrupted_import)
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "protrans: error: interrupted"

    def bug(*args, **kwargs):
        raise ImportError("a real one")

    monkeypatch.setattr(cli_module.cli, "main", bug)
    with pytest.raises(ImportError, match="a real one"):
        cli_module.main(["prep", "x.fa"])


@pytest.mark.parametrize("args,message", [
    (["fit", "ss3", "--embeddings", "x.h5"], "Missing option '--labels' (see 'protrans fit --help')"),
    (["nosuch"], "No such command 'nosuch' (see 'protrans --help')"),
    (["embed", "x.fa", "-o", "y.h5", "--max-tokens", "abc"],
     "Invalid value for '--max-tokens': 'abc' is not a valid integer (see 'protrans embed --help')"),
    (["fit"], "Missing argument '{ss3|ss8|ss3+ss8|disorder|ss3+ss8+disorder|loc|residue|protein|value}'. Choose from: ss3, ss8,"),
])
def test_click_usage_errors_are_one_line(run_cli, args, message):
    """click's own usage errors took four lines (usage, a "Try" line, a blank line, "Error: ..."),
    every other failure one: a log's last line held the message alone, without the command."""
    r = run_cli(*args)
    assert r.exit_code == 2
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("protrans: error: ") and message in r.stderr, r.stderr


@pytest.mark.parametrize("args,shown", [
    (["fit", "s\udcff"], "Invalid value for '{ss3|ss8|ss3+ss8|disorder|ss3+ss8+disorder|loc|residue|protein|value}': 's\\xff' is not one of"),
    (["embed", "x.fa", "--layout", "g\udc80\udcff"], "Invalid value for '--layout': 'g\\x80\\xff' is not one of"),
    (["e\udcff"], "No such command 'e\\xff' (see 'protrans --help')"),
    # a backslash the user typed stays one: 'e\\udcff' is the text e, backslash, udcff
    (["e\\udcff"], "No such command 'e\\\\udcff'"),
    (["e\\\udcff"], "No such command 'e\\\\\\xff'"),
])
def test_click_usage_errors_show_a_byte_that_is_not_utf8_as_protrans_does(run_cli, args, shown):
    """A command-line argument holding a byte that is not UTF-8 (a file name from another system,
    a Latin-1 shell) reached click's refusals as repr()'s surrogate escape, "'s\\udcff' is not one of",
    where protrans' own messages say 's\\xff' ("a\\xffb.fa: no such file")."""
    r = run_cli(*args)
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert shown in r.stderr and "udcff" not in r.stderr.replace("\\\\udcff", ""), r.stderr


@pytest.mark.parametrize("args,option", [
    (["--test", "t.h5", "-o", "heads/ss3"], "--test"),
    (["-o", "heads/ss3", "--test", "t.h5", "--max-epochs", "1"], "--test"),
    (["-o", "heads/ss3", "--test", "t.h5", "--no-plots"], "--test"),
    (["-o", "heads/ss3", "--valid", "v.h5", "--seed=3"], "--valid"),
])
def test_fit_valid_and_test_without_their_labels_file_say_so(run_cli, tmp_path, args, option):
    """`fit --test EMB.h5` with the labels file left out took the next option as the labels file:
    "Missing option '-o'" (given), "Got unexpected extra argument (1)", or (a flag) a fit that
    trained and then failed on "--no-plots: no such file", exit 1."""
    r = run_cli("fit", "ss3", "--embeddings", tmp_path / "x.h5", "--labels", tmp_path / "x.csv", *args)
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"Invalid value for '{option}': takes two files, EMBEDDINGS LABELS, and got" in r.stderr, r.stderr
    assert "give the labels file after the embeddings file" in r.stderr


@pytest.mark.parametrize("args,option,value", [
    (["embed", "{fa}", "-m", "onehot", "-o", "--per-protein"], "--output", "--per-protein"),
    (["prep", "{fa}", "-o", "-q"], "--output", "-q"),
    (["train", "--corpus", "--val-corpus", "v.txt"], "--corpus", "--val-corpus"),
    (["embed", "{fa}", "-m", "--layer=2", "-o", "x.h5"], "--model", "--layer=2"),
    (["predict", "head", "--embeddings", "x.h5", "-o", "--help"], "--output", "--help"),
    (["embed", "{fa}", "-m", "onehot", "-o", "--no-packing"], "--output", "--no-packing"),  # a flag's "off" name
])
def test_an_option_taken_as_a_value_is_a_usage_error(run_cli, tmp_path, monkeypatch, args, option, value):
    """An option's value left out made the next option its value: `embed x.fa -o --per-protein`
    wrote an HDF5 file named `--per-protein` (exit 0), `prep x.fa -o -q` a corpus named `-q`."""
    monkeypatch.chdir(tmp_path)
    fa = tmp_path / "a.fa"
    fa.write_text(">a\nMKV\n")
    r = run_cli(*[a.format(fa=fa) for a in args])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"'{option}': '{value}' is an option of this command, not a value" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa"]
    # a file really named so is given with its folder
    r = run_cli("prep", fa, "-o", "./-q")
    assert r.exit_code == 0 and (tmp_path / "-q").read_text().startswith("M K V"), r.stderr


def test_env_reports_versions_devices_and_fast_paths(run_cli):
    """`protrans env`: what a bug report needs, from the libraries themselves (no GPU here: no
    device, CPU build)."""
    import json

    import torch

    result = run_cli("env", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    # (the installed distribution's version: a PyPI CUDA wheel says 2.13.0 there, torch.__version__
    # 2.13.0+cu130; the CPU wheel says +cpu in both)
    assert info["protrans"] == __version__ and info["packages"]["torch"] == importlib.metadata.version("torch")
    assert torch.__version__.startswith(info["packages"]["torch"].split("+")[0])
    assert info["cuda_devices"] == ([] if not torch.cuda.is_available() else info["cuda_devices"])
    assert set(info["kernels"]) == {"varlen_attention", "flex_attention", "triton"}  # no compile check asked
    assert info["kernels"]["flex_attention"] is True  # torch 2.5+
    text = run_cli("env").stdout
    assert f"protrans: {__version__}" in text and "not checked (--check-compile" in text
    if not torch.cuda.is_available():
        assert "cuda: no device" in text


def test_env_names_rocm_and_miopen_on_an_amd_gpu(monkeypatch):
    """A ROCm build of PyTorch has no CUDA version and its torch.backends.cudnn is MIOpen: `protrans
    env` said "torch build: CUDA none (CPU build), cuDNN 3003000" beside the AMD GPU it listed, and
    that GPU's "compute capability 9.4" (its gfx942 architecture). Simulated here: a ROCm MI300X."""
    from types import SimpleNamespace

    import torch

    from protrans_cli import environment

    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 3003000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name="AMD Instinct MI300X", major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (190 * 2**30, 192 * 2**30))
    info = environment.describe()
    assert (info["torch_cuda"], info["torch_hip"], info["cudnn"], info["miopen"]) == (None, "6.2.41133", None, 3003000)
    assert info["cuda_devices"][0]["arch"] == "gfx942:sramecc+:xnack-" and info["cuda_devices"][0]["bf16"] is True
    text = "\n".join(environment.format_lines(info))
    assert "torch build: ROCm (HIP 6.2.41133), MIOpen 3003000" in text
    assert "CPU build" not in text and "cuDNN" not in text
    assert "cuda:0: AMD Instinct MI300X, architecture gfx942:sramecc+:xnack-, 192.0 GiB (190.0 free)" in text
    if info["kernels"]["varlen_attention"]:  # (PyTorch 2.9+) there, but --packing does not call it on ROCm
        assert "(not used on AMD GPUs: packed rows run the padded call)" in text


def test_env_imports_no_model_code():
    """`protrans env` loads no model: reading the hub's offline switch, the sentencepiece reader's
    state and whether varlen attention exists imported protrans_cli.models, every family and
    transformers behind it (2 of its 5 s here)."""
    from conftest import heavy_imports_of

    out = heavy_imports_of([["env", "--json"]], ("transformers", "protrans_cli.models"))
    assert out.returncode == 0, out.stderr
    assert '"varlen_attention"' in out.stdout and '"sentencepiece_reader"' in out.stdout


def test_env_reports_offline_and_threads_as_the_commands_read_them(run_cli, monkeypatch):
    # HF_HUB_OFFLINE=0 was reported offline, TRANSFORMERS_OFFLINE=1 online; the thread count was
    # torch's default, not the commands' -j default
    import json

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("PROTRANS_THREADS", "1")
    info = json.loads(run_cli("env", "--json").stdout)
    assert info["hub"]["offline"] is False and info["cpu"]["threads"] == 1
    assert "; commands use 1 thread unless -j says otherwise" in run_cli("env").stdout  # (not "1 threads")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert json.loads(run_cli("env", "--json").stdout)["hub"]["offline"] is True


def test_a_thread_count_beyond_any_machine_is_a_usage_error(run_cli, monkeypatch, tmp_path):
    """-j 99999 (or PROTRANS_THREADS) segfaulted after the work (torch's thread pool), fit left its
    .partial folder behind, train printed an ImportError traceback: refused before any work now."""
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    for args in (["prep", fasta], ["embed", fasta, "-m", "onehot", "-o", tmp_path / "x.h5"],
                 ["fit", "loc", "--embeddings", tmp_path / "x.h5", "--labels", fasta, "-o", tmp_path / "h"],
                 ["train", "--corpus", fasta, "-o", tmp_path / "run"]):
        r = run_cli(*args, "-j", "99999")
        assert r.exit_code == 2 and "--threads must be at most 4096, got 99999" in r.stderr, (args, r.stderr)
    monkeypatch.setenv("PROTRANS_THREADS", "40000")
    r = run_cli("prep", fasta)
    assert r.exit_code == 2 and "PROTRANS_THREADS must be at most 4096, got 40000" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]


@pytest.mark.parametrize("args, said", [
    (["predict", "HEAD", "--embeddings", "q.h5", "-j", "-1"], "--threads must be at least 1, got -1"),
    (["predict", "HEAD", "--fasta", "q.fa", "--max-length", "-1"], "--max-length must be at least 1, got -1"),
    # (under --long-policy skip it was warned of as ignored, then taken)
    (["predict", "HEAD", "--fasta", "q.fa", "--chunk-overlap", "-1", "--long-policy", "skip"],
     "--chunk-overlap must be at least 0, got -1"),
    (["knn", "q.h5", "--reference", "ref.h5", "-j", "0"], "--threads must be at least 1, got 0"),
    (["knn", "--fasta", "q.fa", "--reference", "ref.h5", "--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["finetune", "ss3", "-m", "no_such_model", "--labels", "l.csv", "-o", "ft", "-j", "-1"],
     "--threads must be at least 1, got -1"),
])
def test_a_bad_option_value_is_refused_before_a_missing_input_is_named(run_cli, tmp_path, monkeypatch, args, said):
    """A usage error (exit 2, naming the option) comes before any input is opened: predict named
    a mistyped HEAD (exit 1) and refused --max-length -1 only once that was put right; knn read
    the reference, finetune loaded the model before -j -1 was refused."""
    monkeypatch.chdir(tmp_path)  # (none of the inputs exists)
    r = run_cli(*args)
    assert (r.exit_code, r.stderr) == (2, f"protrans: error: {said}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, said", [
    (["fit", "loc", "--embeddings", "e.h5", "--labels", "l.csv", "-o", "h", "--kernel", "-1"],
     "--kernel must be at least 1, got -1"),
    (["fit", "loc", "--embeddings", "e.h5", "--labels", "l.csv", "-o", "h", "--folds", "3", "--valid-fraction", "2"],
     "--valid-fraction must be between 0 and 1, got 2.0"),
    (["project", "e.h5", "--method", "pca", "-j", "-1"], "--threads must be at least 1, got -1"),
    (["train", "--corpus", "c.txt", "-o", "run", "--find-lr", "--lr", "-1"], "--lr (lr) must be positive, got -1.0"),
    (["train", "--corpus", "c.txt", "-o", "run", "--phase", "32:2:4:2", "--global-batch-size", "-1"],
     "--global-batch-size (global_batch_size) must be at least 1, got -1"),
])
def test_a_bad_value_of_an_option_ignored_there_is_refused_without_the_warning(run_cli, tmp_path, monkeypatch,
                                                                                args, said):
    """An option that does nothing in this run (--kernel for an FNN head, -j with PCA, --lr under
    --find-lr) was warned of as ignored and then refused for its value, or (a batch size every
    phase sets) taken: its value is refused first, alone."""
    monkeypatch.chdir(tmp_path)
    r = run_cli(*args)
    assert (r.exit_code, r.stderr) == (2, f"protrans: error: {said}\n")


@pytest.mark.parametrize("args", [
    ["prep", "x.fa", "-o", "c.txt", "--shuffle"],
    ["train", "--corpus", "c.txt", "-o", "run"],
    ["fit", "loc", "--embeddings", "e.h5", "--labels", "l.csv", "-o", "h"],
    ["finetune", "ss3", "-m", "no_such_model", "--labels", "l.csv", "-o", "ft"],
    ["project", "e.h5", "--method", "tsne"],
])
def test_a_negative_seed_is_worded_one_way_by_every_command(run_cli, tmp_path, monkeypatch, args):
    """"--seed must be 0 or more", "must be 0 to 2**64 - 1", "--seed -1: between 0 and 4294967295",
    click's "-1 is not in the range x>=0": one wording (train names its config key too, as it
    names every setting)."""
    monkeypatch.chdir(tmp_path)
    r = run_cli(*args, "--seed", "-1")
    named = "--seed (seed)" if args[0] == "train" else "--seed"
    assert (r.exit_code, r.stderr) == (2, f"protrans: error: {named} must be at least 0, got -1\n")


@pytest.mark.parametrize("args, said", [
    (["esm-extract", "no_such_model", "x.fa", "out", "--include", "mean", "--toks_per_batch", "-1"],
     "--toks_per_batch must be at least 1, got -1"),
    (["esm-extract", "no_such_model", "x.fa", "out", "--include", "mean", "--truncation_seq_length", "0"],
     "--truncation_seq_length must be at least 1, got 0"),
    (["import-esm", "out", "-o", "x.h5", "--truncation-seq-length", "0"],
     "--truncation-seq-length must be at least 1, got 0"),
    (["project", "e.h5", "--sample", "-1"], "--sample must be at least 2, got -1"),
    (["project", "e.h5", "--dims", "4"], "--dims must be 2 or 3, got 4"),
    (["export", "e.h5", "-o", "x.tsv", "--digits", "-1"], "--digits must be between 1 and 17, got -1"),
    (["embed", "x.fa", "-m", "no_such_model", "-o", "x.h5", "--max-length", "0"],
     "--max-length must be at least 1, got 0"),
    (["embed", "x.fa", "-m", "no_such_model", "-o", "x.h5", "--max-batch-size", "0"],
     "--max-batch-size must be at least 1, got 0"),
    (["embed", "x.fa", "-m", "no_such_model", "-o", "x.h5", "--chunk-overlap", "-1"],
     "--chunk-overlap must be at least 0, got -1"),
    (["embed", "x.fa", "-m", "no_such_model", "-o", "x.h5", "--window", "0"], "--window must be at least 1, got 0"),
    (["contacts", "x.fa", "-m", "no_such_model", "-o", "x.h5", "--max-tokens", "0"],
     "--max-tokens must be at least 1, got 0"),
    (["variants", "v.csv", "--sequence", "MKV", "-m", "no_such_model", "-o", "v.out", "--max-tokens", "0"],
     "--max-tokens must be at least 1, got 0"),
    (["knn", "--fasta", "x.fa", "--reference", "e.h5", "--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["prep", "x.fa", "-o", "c.txt", "--max-length", "0"], "--max-length must be at least --min-length (1), got 0"),
    (["quickstart", "-o", "qs", "--num-steps", "0"], "--num-steps must be at least 1, got 0"),
])
def test_a_number_out_of_range_is_worded_one_way_by_every_command(run_cli, tmp_path, monkeypatch, args, said):
    """"--toks_per_batch -1: at least 1", "--sample -1: a map of 4 proteins at least", "--digits -1:
    from 1 to 17", "--max-length must be at least 1" (the value left out), "--max-tokens and
    --max-batch-size must be at least 1" (which?) and click's "0 is not in the range x>=1": one
    wording, "--OPTION must be at least N, got V", before any file is looked for (exit 2)."""
    monkeypatch.chdir(tmp_path)
    r = run_cli(*args)
    assert (r.exit_code, r.stderr) == (2, f"protrans: error: {said}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, said", [
    (["variants", "wt.fa", "--fasta", "wt.fa", "-m", "no_such_model"], "is a FASTA file, not a variants table"),
    (["knn", "wt.fa", "--reference", "wt.fa"], "it is a FASTA file: embed it first"),
    (["fit", "loc", "--embeddings", "wt.fa", "--labels", "l.csv", "-o", "h"], "it is a FASTA file: embed it first"),
    (["export", "wt.fa", "-o", "x.tsv"], "it is a FASTA file: embed it first"),
    (["import-esm", "wt.fa", "-o", "x.h5"], "not an esm-extract output: it is a FASTA file"),
])
def test_a_fasta_given_where_another_kind_of_file_goes_is_bad_input_in_every_command(run_cli, tmp_path,
                                                                                     monkeypatch, args, said):
    """A wrong kind of file is bad input (exit 1), the file named: variants said so of a FASTA given
    as its table with exit 2 (a usage error), where knn, fit and export exit 1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wt.fa").write_text(">wt\nMKTAYIAK\n")
    (tmp_path / "l.csv").write_text("id,label\nwt,Nucleus\n")
    r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.startswith("protrans: error: wt.fa: ") and said in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_env_check_compile_says_when_the_compiler_fails(run_cli, monkeypatch):
    """--check-compile builds a small kernel: a compiler that cannot (here a backend that
    raises, as dynamo wraps inductor's failures) is reported with its first line, exit 0 (a
    report, not a failure of protrans)."""
    import torch

    real = torch.compile

    def broken(graph, example_inputs):
        raise RuntimeError("no working C compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: real(fn, **{**kw, "backend": broken}))
    result = run_cli("env", "--check-compile")
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("torch.compile on cpu"))
    assert "fails (" in line and "no working C compiler here" in line and "second line" not in line


@pytest.mark.slow
def test_env_check_compile_works_here(run_cli):
    import json

    result = run_cli("env", "--check-compile", "--json")
    check = json.loads(result.stdout)["kernels"]["compile_cpu"]
    assert check["ok"] is True and check["seconds"] >= 0, check


def test_env_says_bfloat16_as_the_commands_choose_it_for_every_device(monkeypatch):
    # is_bf16_supported() counts emulation: a T4 said "bfloat16 yes" (the commands run float16
    # there), and every device but the current one said nothing
    import types

    import torch

    from protrans_cli.environment import describe

    capability = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="GPU", major=capability[i][0], minor=capability[i][1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (2**30, 2**31))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability[i or 0])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert [d["bf16"] for d in describe()["cuda_devices"]] == [False, True]
    # (a GTX 1660: no bfloat16, and float16 slow without tensor cores: auto computes in float32)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=("NVIDIA GeForce GTX 1660 SUPER", "GPU")[i],
                                                        major=capability[i][0], minor=capability[i][1]))
    from protrans_cli.environment import format_lines

    info = describe()
    assert [(d["bf16"], d["fast_fp16"]) for d in info["cuda_devices"]] == [(False, False), (True, True)]
    assert any(line.startswith("cuda:0: NVIDIA GeForce GTX 1660 SUPER, compute capability 7.5")
               and line.endswith("bfloat16 no, float16 slow (float32 instead)") for line in format_lines(info))


def test_env_says_where_pytorch_would_run_packed_attention_on_cudnn(monkeypatch):
    # PyTorch 2.14+ on a Hopper GPU: varlen_attn takes cuDNN unless --sdpa-kernels auto
    import types

    import torch

    from protrans_cli.environment import describe, format_lines

    varlen = pytest.importorskip("torch.nn.attention.varlen")
    capability = {0: (8, 0), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=f"GPU{i}", major=capability[i][0], minor=capability[i][1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (2**30, 2**31))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability[i or 0])
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(varlen, "_should_use_cudnn", lambda index: capability[index][0] in (9, 10), raising=False)
    info = describe()
    assert [d["varlen_cudnn"] for d in info["cuda_devices"]] == [False, True]
    from protrans_cli.attention import varlen_on_flash

    with varlen_on_flash():  # (PyTorch's own choice, not protrans's stand-in, in a library caller's block)
        assert [d["varlen_cudnn"] for d in describe()["cuda_devices"]] == [False, True]
    said = [line for line in format_lines(info) if "packed attention" in line]
    assert said == ["cuda:1: packed attention (varlen_attn) is cuDNN's by PyTorch's choice here; "
                    "--sdpa-kernels auto (the default) keeps it on Flash Attention"]
    monkeypatch.delattr(varlen, "_should_use_cudnn")  # a PyTorch without the choice
    assert [d["varlen_cudnn"] for d in describe()["cuda_devices"]] == [None, None]


def test_output_flags_after_the_command_name(run_cli, tmp_path):
    # `protrans embed x.fa -q` (esm-extract and bio_embeddings take their flags there) was
    # "No such option: -q", exit 2.
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n")
    loud = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert loud.exit_code == 0 and "records in" in loud.stderr
    quiet = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    from protrans_cli.errors import InputError

    with pytest.raises(InputError, match="no such file"):  # --debug: the exception itself, for its traceback
        run_cli("prep", tmp_path / "none.fa", "--debug")
    assert run_cli("prep", tmp_path / "none.fa").stderr.strip().startswith("protrans: error:")  # reset per call
    # -v after the command name counts as the group's: -vv is --debug (the help's "same as --debug")
    verbose = run_cli("prep", tmp_path / "none.fa", "-v")
    assert verbose.exit_code == 1 and verbose.stderr.strip().startswith("protrans: error:"), verbose.stderr
    with pytest.raises(InputError, match="no such file"):
        run_cli("prep", tmp_path / "none.fa", "-vv")


def test_main_called_from_a_thread_leaves_signals_alone_and_runs(tmp_path, capsys):
    """An application that runs protrans.cli.main in a worker thread: signal handlers can only
    be set in the main thread (ValueError), so main installs none there and runs the command."""
    import signal
    import threading

    from protrans_cli.cli import main

    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook
    codes = []

    def call():
        try:
            main(["prep", str(fasta), "-o", str(tmp_path / "c.txt"), "-q"])
        except SystemExit as exc:
            codes.append(exc.code)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            codes.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(60)
    assert codes in ([0], [None]), codes
    assert (tmp_path / "c.txt").read_text().startswith("M K V")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook) == before



def test_the_hubs_warnings_are_protrans_lines_in_a_command_and_the_callers_own_after_it(monkeypatch, capsys):
    """huggingface_hub's UserWarnings (a cache without room for a download) said amid a command are
    one `protrans: warning:` line, not Python's two; a library caller's showwarning is its own again
    after an in-process call, and other warnings are shown as the caller shows them."""
    import os
    import warnings

    from protrans_cli import cli

    hub_file = os.path.join("site-packages", "huggingface_hub", "file_download.py")
    caller = warnings.showwarning
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *rest, **kw: shown.append(str(message)))

    def command(console, argv):
        warnings.warn_explicit("Not enough free disk space to download the file.", UserWarning, hub_file, 773)
        warnings.warn_explicit("something of torch's", UserWarning, "torch/x.py", 1)

    monkeypatch.setattr(cli, "_main", command)
    cli.main(["--version"])
    err = capsys.readouterr().err
    assert err == "protrans: warning: huggingface_hub: Not enough free disk space to download the file.\n"
    assert shown == ["something of torch's"]
    warnings.warn_explicit("after", UserWarning, hub_file, 774)
    assert shown == ["something of torch's", "after"] and capsys.readouterr().err == ""
    monkeypatch.undo()
    assert warnings.showwarning is caller

def test_env_names_apples_gpu_where_embed_fit_and_predict_would_use_it(run_cli, monkeypatch):
    """On an Apple-silicon Mac `env` said "no device ... run on the CPU" while embed, fit and
    predict took MPS by default: a misleading bug report."""
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli("env")
    assert result.exit_code == 0 and ("cuda: no device; mps: Apple GPU (embed computes there in float16, fit and "
                                      "predict run there; train runs on the CPU in float32)") in result.stdout
    assert json.loads(run_cli("env", "--json").stdout)["mps"] is True


def test_tables_on_a_narrow_terminal_keep_the_names_whole():
    """At 80 columns `models --checkpoints` showed `prot_t5_xl_unir…`: the name `embed -m` takes."""
    import io

    from rich.console import Console

    from protrans_cli import console

    buf = io.StringIO()
    console.print_table("t", ["name", "hub id"], [["prot_t5_xl_uniref50", "Rostlab/prot_t5_xl_uniref50"]],
                        file_console=Console(file=buf, width=40))
    text = buf.getvalue()
    assert "prot_t5_xl_uniref50" in text and "…" not in text
    assert "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3) \
        == "Rostlab/prot_t5_xl_uniref50"


def test_a_ctrl_c_while_torch_is_being_imported_is_delivered_once_it_is(monkeypatch):
    # Raised inside torch's import, a KeyboardInterrupt could land in torch's C++ while it ran
    # Python code: "terminate called after throwing an instance of 'pybind11::error_already_set'"
    # and an abort (status -6) for about one Ctrl-C in fifteen in embed's first second.
    import importlib.machinery
    import signal
    import sys
    import time
    import types

    from protrans_cli import cli, console

    fake = types.ModuleType("torch._being_imported")
    fake.__spec__ = importlib.machinery.ModuleSpec("torch._being_imported", None)
    fake.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "torch._being_imported", fake)
    monkeypatch.setattr(cli, "_INTERRUPTED", [])
    monkeypatch.setattr(console.state, "complete", None)
    previous = signal.signal(signal.SIGINT, cli._on_sigint)
    try:
        cli._on_sigint(signal.SIGINT, None)  # deferred: nothing raised while the import runs
        time.sleep(0.1)
        assert cli._INTERRUPTED == []
        fake.__spec__._initializing = False
        with pytest.raises(KeyboardInterrupt):
            for _ in range(300):
                time.sleep(0.01)
        assert cli._INTERRUPTED == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_torchruns_local_ranks_share_the_cores_by_default(monkeypatch, tmp_path):
    """Each torchrun rank took min(cores, 4) threads: `torchrun --nproc-per-node 2 -m protrans_cli
    embed` on 2 cores ran 4 threads and took 37-49 s where one thread a rank took 10.5-11 s. The
    default now divides the cores among the node's ranks (LOCAL_WORLD_SIZE); -j and
    PROTRANS_THREADS still decide when given."""
    from protrans_cli import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert threads.resolve_threads(None) == 4
    for local, expected in (("1", 4), ("2", 4), ("4", 2), ("3", 2), ("8", 1), ("16", 1), ("", 4), ("x", 4)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert threads.resolve_threads(None) == expected, local
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.resolve_threads(3) == 3 and threads.resolve_threads(None, small_work=True) == 1
    monkeypatch.setenv("PROTRANS_THREADS", "2")
    assert threads.resolve_threads(None) == 2


def test_thread_counts_from_1_to_4096_are_taken_and_others_refused(monkeypatch):
    """-j and PROTRANS_THREADS take 1 to MAX_THREADS (4096) threads, both ends included; 0 and
    4097 are usage errors naming the option; an empty PROTRANS_THREADS (`export
    PROTRANS_THREADS=`) counts as unset; small work (an FNN head) takes 1 thread by default on
    any number of cores; a LOCAL_WORLD_SIZE of 0 counts as one process."""
    from protrans_cli import threads

    for value in (1, 4096):
        assert threads.check_threads(value) == value
    # (called from Python: named by its keyword, threads; -j says --threads)
    for value, said in ((0, "^threads must be at least 1, got 0"), (4097, "^threads must be at most 4096, got 4097")):
        with pytest.raises(UsageError, match=said):
            threads.check_threads(value)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("PROTRANS_THREADS", "")
    assert threads.resolve_threads(None) == 4 and threads.resolve_threads(None, small_work=True) == 1
    monkeypatch.setenv("PROTRANS_THREADS", "0")
    with pytest.raises(UsageError, match="PROTRANS_THREADS must be at least 1, got 0"):
        threads.resolve_threads(None)
    monkeypatch.delenv("PROTRANS_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    assert threads.resolve_threads(None) == 4


def test_a_ctrl_c_in_pythons_finalization_leaves_the_exit_status_alone(tmp_path):
    """Python's finalization resets the signal handlers it set before it tears the modules down
    (torch's teardown: a second): a Ctrl-C then killed a finished `embed` by SIGINT, status -2
    after its success line (found by a kill sweep). From the atexit callbacks on it is ignored,
    as SIGTERM is."""
    script = tmp_path / "late.py"
    script.write_text("import os, signal, sys, time\nfrom protrans_cli.cli import main\n"
                      "class LateCtrlC:\n    def __del__(self):  # (in the finalization, after the reset)\n"
                      "        os.kill(os.getpid(), signal.SIGINT)\n        time.sleep(0.2)\n"
                      "late = LateCtrlC()\nsys.argv = ['protrans', '--version']\nmain()\n")
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.startswith("protrans, version")


def test_quiet_leaves_only_errors_on_stderr(run_cli, tmp_path):
    """-q: "Only errors on stderr" (protrans --help), warnings and info lines included, not
    only the summary tables; an error is still said."""
    empty = tmp_path / "empty.fa"
    empty.write_bytes(b"")
    loud = run_cli("prep", empty, "-o", tmp_path / "c.txt")
    assert loud.exit_code == 0 and "protrans: warning: no FASTA records in the input" in loud.stderr
    quiet = run_cli("-q", "prep", empty, "-o", tmp_path / "c.txt")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\na,Nucleus\n")
    (tmp_path / "s.fa").write_text(">a\nMKV\n")
    loud = run_cli("labels", labels, "--sequences", tmp_path / "s.fa", "-o", tmp_path / "l.fa")
    assert loud.exit_code == 0 and "wrote 1 sequence" in loud.stderr, loud.stderr
    quiet = run_cli("labels", labels, "--sequences", tmp_path / "s.fa", "-o", tmp_path / "l.fa", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert (tmp_path / "l.fa").read_text().startswith(">a")
    failed = run_cli("-q", "prep", tmp_path / "none.fa")
    assert failed.exit_code == 1 and failed.stderr == f"protrans: error: {tmp_path / 'none.fa'}: no such file\n"


def test_failed_proteins_are_listed_by_name_up_to_20_then_counted(capsys):
    """A run's failed proteins (embed, contacts): a count, the first 20 by name with their reasons,
    then "... and N more" for the rest; exactly 20 are all named, with no "... and 0 more"."""
    from protrans_cli import console

    console.list_failed({f"P{i}": "out of memory" for i in range(25)}, "embedding")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "protrans: warning: 25 protein(s) have no embedding (listed in the file's 'failed' attribute):"
    assert lines[1:21] == [f"protrans: warning:   P{i}: out of memory" for i in range(20)]
    assert lines[21:] == ["protrans: warning:   ... and 5 more"]
    console.list_failed({f"P{i}": "NaN" for i in range(20)}, "contact map")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 21 and lines[-1] == "protrans: warning:   P19: NaN"
    console.list_failed({}, "embedding")
    assert capsys.readouterr().err == ""


def test_counts_and_names_in_messages_read_as_english():
    """`1 protein`, `0 proteins`, `12,345 proteins`; the first 3 names and "and N more" (never
    "and 0 more"); a name's control characters escaped, a message's own line breaks kept."""
    from protrans_cli import console

    assert [console.counted(n, "protein") for n in (0, 1, 2, 12345)] == [
        "0 proteins", "1 protein", "2 proteins", "12,345 proteins"]
    named = console.Named()
    for name in ("a", "b", "c"):
        named.add(name)
    assert str(named) == "a, b, c"
    named.add("d")
    named.add("e")
    assert str(named) == "a, b, c and 2 more" and named.count == 5
    assert console.printable("x\ny\x1b[31m") == "x\\ny\\x1b[31m"
    assert console.printable("line 1\nline\t2\r", newlines=True) == "line 1\nline\\t2\\r"


def test_a_log_progress_line_gives_the_rate_and_time_left_of_this_runs_work(capsys):
    """A resumed run's log line: the position counts what the file held (`skip`), the rate and the
    time left only what this run did (50 kept, 10 done in 10 s: 1 res/s, 40 s left)."""
    from protrans_cli import console

    bar = console.LogProgress(total=100, desc="embed", unit="res", interval=0)
    bar._start = bar._last = 0.0
    bar._clock = lambda: 10.0
    console.skip(bar, 50)
    bar.update(10)
    assert capsys.readouterr().err == "embed: 60/100 res (60%) [00:10<00:40, 1 res/s]\n"


def test_quiet_leaves_out_the_summary_tables(capsys, monkeypatch):
    """-q: fit's per-class table and confusion matrix, quickstart's tables, are summaries: not
    printed ("Only errors on stderr; no progress bars or summaries")."""
    from protrans_cli import console

    console.print_table("loc train: per class", ["class", "F1"], [["Nucleus", "0.900"]])
    assert "Nucleus" in capsys.readouterr().err
    monkeypatch.setattr(console.state, "verbosity", -1)
    console.print_table("loc train: per class", ["class", "F1"], [["Nucleus", "0.900"]])
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("exc, line", [
    (PermissionError(13, "Permission denied", "out/hits.tsv"), "protrans: error: out/hits.tsv: Permission denied"),
    (OSError(5, "Input/output error"), "protrans: error: Input/output error"),  # (no file to name)
])
def test_an_os_error_no_command_described_is_one_line_exit_1(monkeypatch, capsys, exc, line):
    """An OSError that reaches the CLI as it is (a file system refusing a write, an I/O error) is
    one line naming its file, exit 1: never a traceback."""
    import protrans_cli.cli as cli_module

    def fails(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli_module.cli, "main", fails)
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["prep", "x.fa"])
    assert caught.value.code == 1
    assert capsys.readouterr().err == line + "\n"


def test_quiet_draws_no_progress_bar_where_bars_are_shown(run_cli, tmp_path, monkeypatch):
    """-q turns progress bars off too, where they would be drawn (a terminal's stderr, or a
    notebook's: stood in for here, since the runner's stderr is no terminal)."""
    from protrans_cli import console

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setattr(console, "_in_notebook", lambda: True)
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n" * 50)
    shown = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert shown.exit_code == 0 and "prep: " in shown.stderr, shown.stderr  # (the bar: this stand-in works)
    quiet = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


@pytest.mark.parametrize("cut", ["click", "protrans_cli.console"])
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_ctrl_c_while_the_command_is_still_being_imported_is_one_line(entry, cut):
    """A Ctrl-C before cli.main ran (click and the command group still being imported: seconds on
    a loaded login node with packages on a network file system) printed Python's traceback of the
    import it cut. Now the one line and exit 130, through the console script's entry point and
    `python -m protrans_cli` alike. (The Ctrl-C is raised by an import hook at click's import:
    a real signal aimed at that window would be a matter of timing.) cli.main's own first import,
    the console's, came before its Ctrl-C handling: 7 of 60 Ctrl-Cs sent 0.3-0.7 s into
    `protrans info` printed a traceback from inside cli.main."""
    from conftest import ROOT

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    script = ("import sys\n"
              "class Cut:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              f"        if name == {cut!r}:\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Cut())\n"
              f"sys.modules.pop({cut!r}, None)\n")
    if entry == "console script":
        # (pyproject.toml's, not an installed one: an editable install keeps the script it was made with)
        target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["protrans"]
        module, _, function = target.partition(":")
        script += f"from {module} import {function}\n{function}()\n"
        argv = [sys.executable, "-c", script]
    else:
        argv = [sys.executable, "-c", script + "import runpy\nrunpy.run_module('protrans_cli', run_name='__main__')\n"]
    done = subprocess.run([*argv], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "protrans: error: interrupted\n")


def test_knn_project_and_variants_write_where_a_users_link_leads(tmp_path, run_cli):
    """-o (and project's --plot/--html, variants' --plot) a link of the user's own, onto scratch
    storage, writes its target, as export's, predict's and the shell's `>` do: renamed over, the
    link became a file and its target was never written. A link onto an input is still refused."""
    data = Path(__file__).parent / "data"
    fasta = tmp_path / "p.fa"
    fasta.write_text("".join(f">p{i}\n{'MKTAYIAKQRQISFVKSHFSRQ'[i:] + 'W' * i}\n" for i in range(6)))
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "-o", h5).exit_code == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def link(name):
        (scratch / name).write_bytes(b"old")
        (tmp_path / name).symlink_to(scratch / name)
        return tmp_path / name

    runs = [(("knn", h5, "--reference", h5, "-o", link("knn.tsv")), ["knn.tsv"]),
            (("project", h5, "-o", link("map.tsv"), "--plot", link("map.png"), "--html", link("map.html")),
             ["map.tsv", "map.png", "map.html"]),
            (("variants", "--all-singles", "--sequence", "MKTAYIAK", "-m", data / "esm_reference",
              "-o", link("v.csv"), "--plot", link("v.png")), ["v.csv", "v.png"])]
    for args, names in runs:
        r = run_cli(*args)
        assert r.exit_code == 0, r.stderr
        for name in names:
            assert (tmp_path / name).is_symlink() and (scratch / name).read_bytes() != b"old", (args[0], name)
    (tmp_path / "onto_input.tsv").symlink_to(h5)
    before = h5.read_bytes()
    r = run_cli("knn", h5, "--reference", h5, "-o", tmp_path / "onto_input.tsv")
    assert r.exit_code != 0 and h5.read_bytes() == before


@pytest.mark.parametrize("name", ["embed", "fit", "finetune", "predict"])
def test_a_command_given_no_options_asks_the_library_for_its_own_defaults(run_cli, tmp_path, monkeypatch, name):
    """An option left out gives what the library gives a setting left out (the --help's [default:
    ...] of both): EmbedOptions, FitConfig and FinetuneConfig are the Python API's, predict() a
    function of it. Nothing compared them: a default changed on one side only passed every test."""
    import dataclasses
    import inspect

    import protrans_cli.embed
    import protrans_cli.heads.finetune
    import protrans_cli.heads.fit
    import protrans_cli.heads.predict

    seen = {}

    class Stop(Exception):
        pass

    def record(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise Stop

    module, function = {"embed": (protrans_cli.embed, "embed"), "fit": (protrans_cli.heads.fit, "fit"),
                        "finetune": (protrans_cli.heads.finetune, "finetune"),
                        "predict": (protrans_cli.heads.predict, "predict")}[name]
    defaults = inspect.signature(getattr(module, function)).parameters  # (predict's)
    monkeypatch.setattr(module, function, record)
    for file in ("in.fa", "e.h5", "l.csv"):
        (tmp_path / file).write_text(">a\nMKV\n")
    (tmp_path / "head").mkdir()
    args = {"embed": ["embed", tmp_path / "in.fa", "-o", tmp_path / "o.h5"],
            "fit": ["fit", "ss3", "--embeddings", tmp_path / "e.h5", "--labels", tmp_path / "l.csv", "-o",
                    tmp_path / "h"],
            "finetune": ["finetune", "ss3", "-m", "onehot", "--labels", tmp_path / "l.csv", "-o", tmp_path / "f"],
            "predict": ["predict", tmp_path / "head", "--embeddings", tmp_path / "e.h5", "-o", tmp_path / "p.fa"]}
    with pytest.raises(Stop):
        run_cli(*args[name])
    if name == "predict":
        given = {key: value for key, value in seen["kwargs"].items() if key != "staged"}  # (the renames' list)
        assert given == {key: defaults[key].default for key in given}
        assert {"max_residues", "allow_model_mismatch", "device", "threads", "probabilities"} <= set(given)
        return
    (config,) = [arg for arg in seen["args"] if dataclasses.is_dataclass(arg)]
    # (what the run itself decides, and the settings a command must be given)
    own = {"embed": {"command_line", "threads"}, "fit": {"task"}, "finetune": {"task", "model"}}[name]
    library = type(config)(**{key: getattr(config, key) for key in own})
    differ = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(library, f.name)]
    assert differ == []


def test_a_huge_or_hostile_name_in_a_message_is_shortened_and_escaped(capsys):
    """A name a message shows is cut to its first 100 characters and its length (a 200,000-character
    id made a 200 KB "line"), a path to its first and last 100 (its file's name), and a message
    built with a huge name in its text is cut all the same; a short name is shown as before."""
    from protrans_cli import console
    from protrans_cli.errors import InputError, bounded, brief, brief_path, brief_repr
    from protrans_cli.heads.labels import some_ids

    huge = "M" + "K" * 199_999
    assert brief("P69905") == "P69905" and brief_repr("a\x1bb") == "'a\\x1bb'"
    assert brief(huge) == "M" + "K" * 99 + "... (200,000 characters)"
    assert brief_repr(huge) == "'M" + "K" * 99 + "...' (200,000 characters)"
    path = "/data/" + "d/" * 2000 + "proteome.fa"
    assert brief_path(path, ":3") == f"{path[:100]}...{path[-100:]}:3 (4,017 characters)"
    error = InputError("duplicate id", path=path, line=3, record=huge)
    assert str(error) == f"{path[:100]}...{path[-100:]}:3 (4,017 characters), record {brief_repr(huge)}: duplicate id"
    assert error.record == huge and error.path == path  # (the names themselves stay whole)
    assert some_ids(["a", huge, "b"]) == f"a, {brief(huge)}, b" and str(console.some_named(4, [huge])) == (
        f"{brief(huge)} and 3 more")
    assert bounded(f"not in x.h5 (first: {huge})") == (
        f"not in x.h5 (first: {huge[:100]}...{huge[-100:]}) (200,000 characters)")
    assert bounded(f"unknown set {huge!r}: train") == f"unknown set '{huge[:100]}...{huge[-100:]}' (200,000 characters): train"
    words = bounded("a value " + "z " * 500_000 + "is not a number")
    assert len(words) <= 5000 and words.startswith("a value z z") and words.endswith("z z is not a number")
    assert bounded(words) == words and bounded(str(error)) == str(error)  # (cut once: the CLI's line is the same)
    console.warn(f"id {huge} left out")
    console.error(f"x\x1b[31m{huge}")
    err = capsys.readouterr().err  # (the error's \x1b counted as its escape shows: escaped, then cut)
    assert err == (f"protrans: warning: id {brief_path(huge)} left out\n"
                   f"protrans: error: x\\x1b[31m{huge[:91]}...{huge[-100:]} (200,009 characters)\n")


def test_a_long_path_is_named_by_its_ends_in_a_one_line_error(tmp_path, run_cli):
    """A path of 4,000 characters (the most Linux takes) was echoed whole in `no such file`: its
    first and last 100 characters, the file's name among them, and its length."""
    path = str(tmp_path / ("folder/" * 570)) + "proteome.fa"
    result = run_cli("embed", path, "-m", "onehot", "-o", tmp_path / "o.h5")
    assert result.exit_code == 1 and result.stderr == (
        f"protrans: error: {path[:100]}...{path[-100:]} ({len(path):,} characters): no such file\n")


def test_unicode_line_separators_and_format_characters_in_a_message_are_escaped(capsys):
    """An id holding U+2028 (a line separator: Python's splitlines and some log viewers break the
    line there) or a right-to-left override U+202E (the rest of the line shown reversed) was
    written as it was in a warning naming it; such characters are escaped as repr escapes them.
    Letters of any script and a no-break space are shown as they are."""
    from protrans_cli import console

    named = console.Named()
    for name in ("a\u2028b", "x\u202eyz", "\u00e9t\u00e9\u00a0\u6f22"):
        named.add(name)
    console.warn(f"left out: {named}")
    console.info("done\nnext\u2029")
    assert capsys.readouterr().err == ("protrans: warning: left out: a\\u2028b, x\\u202eyz, \u00e9t\u00e9\u00a0\u6f22\n"
                                       "done\nnext\\u2029\n")


def test_names_and_lines_at_the_limits_are_shown_whole_and_one_more_character_cuts_them():
    """The limits docs/troubleshooting.md states are the lengths shown whole: a name of exactly 100
    characters, a run of exactly 250 without a space and a line of exactly 5,000 are unchanged,
    and one character more cuts them; a line cut says how much it left out. A run of punctuation
    alone is cut as a word is, and an error's own text is bounded (a library user's str(error))."""
    from protrans_cli.errors import InputError, bounded, brief, brief_path, brief_repr

    name, longer = "N" * 100, "N" * 101
    assert brief(name) == name and brief(longer) == "N" * 100 + "... (101 characters)"
    assert brief_repr(name) == repr(name) and brief_repr(longer) == "'" + "N" * 100 + "...' (101 characters)"
    word = "/" + "w" * 249
    assert brief_path(word, ":3") == word + ":3" and bounded(f"x {word} y") == f"x {word} y"
    assert brief_path(word + "w", ":3") == f"{word[:100]}...{'w' * 100}:3 (251 characters)"
    line = "abcd " * 1000
    assert len(line) == 5000 and bounded(line) == line
    assert bounded(line + "e") == f"{line[:2470]} ... (61 characters left out) ... {(line + 'e')[-2470:]}"
    assert bounded("(" * 300 + "?") == f"{'(' * 100}...{'(' * 99}? (301 characters)"
    huge = "Q" * 10_000
    assert str(InputError(f"unknown id {huge}", path="a.txt")) == f"a.txt: unknown id {brief_path(huge)}"


def test_the_failed_proteins_listed_are_named_short_and_an_astral_format_character_escaped_whole(capsys):
    """list_failed (embed's and merge's "have no embeddings" list) names a huge failed id by its
    first 100 characters, as every other message does; a format character beyond U+FFFF (a tag
    character, U+E0041, invisible text in an id) is escaped as repr escapes it, `\\U000e0041`, not
    cut into a `\\ue004` and a stray `1`."""
    from protrans_cli import console
    from protrans_cli.errors import brief

    huge = "P" * 150_000
    console.list_failed({huge: "out of memory"}, "embeddings")
    console.warn("id x\U000e0041y left out")
    err = capsys.readouterr().err
    assert err == ("protrans: warning: 1 protein(s) have no embeddings (listed in the file's 'failed' attribute):\n"
                   f"protrans: warning:   {brief(huge)}: out of memory\n"
                   "protrans: warning: id x\\U000e0041y left out\n")


@pytest.mark.parametrize("raw", ["1m", "-5", "nan"])
def test_a_progress_interval_that_is_no_number_of_seconds_is_said_and_the_default_used(monkeypatch, capsys, raw):
    """PROTRANS_PROGRESS_INTERVAL=-5 (or nan) took the minute without a word, where text such as
    `1m` was said: every value that is not a number of seconds, 0 or more, is said alike."""
    from protrans_cli import console

    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", raw)
    assert console._progress_interval() == console.PROGRESS_INTERVAL
    assert capsys.readouterr().err == (f"protrans: warning: PROTRANS_PROGRESS_INTERVAL={raw!r} is not a number of "
                                       "seconds, 0 or more: 60 used\n")
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")  # (0: a line at every update, as the docs' tests use)
    assert console._progress_interval() == 0
    assert capsys.readouterr().err == ""


def test_a_progress_interval_that_is_no_number_is_said_once_a_run_not_at_each_bar(monkeypatch, capsys):
    """fit and finetune make a bar an epoch, prep one a pass: PROTRANS_PROGRESS_INTERVAL=xyz was
    said again at each (15 epochs, 15 warnings between the epochs' lines in a batch job's log).
    Once a run (a `configure`, which the CLI calls at each command); another bad value is said too."""
    from protrans_cli import console

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "xyz")
    warning = "protrans: warning: PROTRANS_PROGRESS_INTERVAL='xyz' is not a number of seconds, 0 or more: 60 used\n"
    for epoch in range(1, 4):
        bar = console.progress(range(2), desc=f"member 0 epoch {epoch}", unit="batch")
        assert isinstance(bar, console.LogProgress) and bar.interval == console.PROGRESS_INTERVAL
        assert list(bar) == [0, 1]
    assert capsys.readouterr().err == warning
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "-1")
    console.progress(total=3, desc="prep")
    console.progress(total=3, desc="prep")
    assert capsys.readouterr().err == warning.replace("'xyz'", "'-1'")
    console.configure()  # (the next command run in this process)
    console.progress(total=3, desc="prep")
    assert capsys.readouterr().err == warning.replace("'xyz'", "'-1'")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX's")
@pytest.mark.parametrize("rows, columns, environment, width", [
    (0, 0, None, 79), (0, 0, "50", 49),  # a terminal that tells no size: COLUMNS, else 80 (less the last)
    (0, 90, "50", 89),  # its columns alone (`stty cols 90`): those, and 24 rows
    (30, 70, "50", 69),  # a terminal that tells its size is followed, as before (tqdm's own width)
])
def test_a_terminal_that_tells_no_size_still_gets_a_progress_bar(monkeypatch, rows, columns, environment, width):
    """A pseudo-terminal no one sized (`script` or `unbuffer` in a CI job, `docker run -t`) is a
    terminal of 0 columns and 0 rows: tqdm took them for -1 and drew nothing (a bar below the last
    row is hidden), so that an embed showed no progress at all until its summary; one given its
    columns alone (`stty cols 90`) had no rows, and no bar either. The bar leaves the last column
    free, as tqdm's own does."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    from protrans_cli import console

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    stream = os.fdopen(slave, "w", encoding="utf-8")
    try:
        monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
        monkeypatch.delenv("LINES", raising=False)
        if environment is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", environment)
        monkeypatch.setattr(sys, "stderr", stream)
        bar = console.progress(range(3), desc="embed", unit="res", mininterval=0)
        assert list(bar) == [0, 1, 2]
        bar.close()
    finally:
        stream.close()
    chunks = []  # (a read of the master gives what has arrived: until the closed end's EIO)
    try:
        while chunk := _read_or_nothing(master):
            chunks.append(chunk)
    finally:
        os.close(master)
    drawn = b"".join(chunks).decode()
    shown = [part.rstrip("\n") for part in drawn.replace("\r\n", "\n").split("\r") if part.strip()]
    assert shown and shown[-1].startswith("embed: 100%|") and "3/3" in shown[-1], drawn
    assert len(shown[-1]) == width, shown[-1]


def _read_or_nothing(fd) -> bytes:
    """What a pseudo-terminal's master holds, b"" once its other end is closed and all was read."""
    import os

    try:
        return os.read(fd, 1 << 16)
    except OSError:  # EIO: the other end closed
        return b""


def test_debug_lines_escape_control_characters_as_info_lines_do(capsys):
    """-v's `[debug]` lines (one names the output, a rank's share of it complete when a signal came)
    wrote a name's escape sequence raw to the terminal or the log."""
    from protrans_cli import console

    console.configure(verbosity=1)
    console.debug("terminated once o\x1b[31m.h5 was complete")
    console.info("wrote o\x1b[31m.h5")
    assert capsys.readouterr().err == "[debug] terminated once o\\x1b[31m.h5 was complete\nwrote o\\x1b[31m.h5\n"
    console.configure(verbosity=0)
    console.debug("not said")
    assert capsys.readouterr().err == ""


def test_a_log_progress_line_without_a_total_gives_the_count_and_rate(capsys):
    """A job whose size is not known ahead (fit's batches of an epoch, prep reading a compressed
    input or stdin) logs its count, elapsed time and rate, with no percentage or time left; the
    postfix as tqdm's set_postfix writes it."""
    from protrans_cli import console

    bar = console.LogProgress(iter(range(3)), desc="member 0 epoch 1", unit="batch", interval=0)
    bar._start = bar._last = 0.0
    bar._clock = lambda: 10.0
    bar.set_postfix({"loss": 0.5}, acc=0.9)
    assert list(bar) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines()[-1] == "member 0 epoch 1: 3 batch [00:10, 0.3 batch/s, loss=0.5, acc=0.9]"
    prep = console.LogProgress(total=None, desc="prep", unit="B", unit_scale=True, interval=0)
    prep._start = prep._last = 0.0
    prep._clock = lambda: 10.0
    prep.update(12_345_678)
    assert capsys.readouterr().err == "prep: 12.3MB [00:10, 1.23MB/s]\n"


def test_a_thread_count_that_is_no_number_is_refused_and_env_says_so(run_cli, monkeypatch, tmp_path):
    """PROTRANS_THREADS=four: every command refuses it before any work (exit 2, naming the
    variable); `protrans env`, what one pastes into a bug report, still answers (exit 0), and says
    what -j's default is missing instead of a count."""
    import json

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    monkeypatch.setenv("PROTRANS_THREADS", "four")
    r = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert r.exit_code == 2 and r.stderr == "protrans: error: PROTRANS_THREADS must be a whole number, got 'four'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]
    r = run_cli("env", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["cpu"]["threads"] == ("none: PROTRANS_THREADS must be a whole "
                                                                            "number, got 'four'")
    r = run_cli("env")
    assert r.exit_code == 0
    assert "; -j's default: none: PROTRANS_THREADS must be a whole number, got 'four'\n" in r.stdout


def test_a_setting_given_a_list_or_a_dict_where_a_number_goes_is_named(tmp_path):
    """A settings object read from YAML or JSON (`min_length: [30]`, `valid_fraction: {train: 0.1}`)
    holds a container where a number goes: refused naming the setting and what it must be, before
    any work (not a TypeError from a comparison deep inside)."""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    for field, value, wanted in (("min_length", [30], "an int"), ("valid_fraction", {"train": 0.1}, "a float")):
        options = CorpusOptions(output=str(tmp_path / "c.txt"), **{field: value})
        with pytest.raises(UsageError, match=rf"^CorpusOptions\.{field} must be {wanted}, got "
                                             f"{type(value).__name__} "):
            build_corpus([str(fasta)], options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]


def test_env_report_on_a_stream_that_cannot_hold_a_path_escapes_it():
    """`protrans env` under PYTHONIOENCODING=ascii (or a Latin-1 locale) with a Hugging Face cache
    under a home of another script: the path's characters escaped, the report whole (it was a
    UnicodeEncodeError traceback)."""
    import io

    from protrans_cli.environment import describe, print_report

    info = describe()
    info["hub"]["cache"] = "/home/jürgen/.cache/huggingface/hub"
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    print_report(info, stream)
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert text.startswith("protrans: ") and "Hugging Face cache: /home/j\\xfcrgen/.cache/huggingface/hub" in text


def test_the_list_of_failed_proteins_counts_them_thousands_separated_in_both_lines(capsys):
    """embed's and contacts' list of the proteins without output: its heading said "1025 protein(s)"
    while its last line said "... and 1,005 more"; both counts are thousands-separated now."""
    from protrans_cli import console

    console.list_failed({f"P{i}": "out of memory" for i in range(1025)}, "embedding")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("protrans: warning: 1,025 protein(s) have no embedding (listed in the file's 'failed' "
                        "attribute):")
    assert lines[1] == "protrans: warning:   P0: out of memory" and len(lines) == 22
    assert lines[-1] == "protrans: warning:   ... and 1,005 more"


def test_a_home_that_cannot_be_written_draws_the_plots_without_matplotlibs_warnings(tmp_path):
    """Clusters and containers (`docker run --user`, HOME=/, a read-only home): matplotlib could
    not make its config folder and said so on every run that draws a plot, two lines in the
    middle of train's (and fit's) messages, under -q too ("mkdir -p failed for path
    /.config/matplotlib: Permission denied", "Matplotlib created a temporary cache directory ...
    it is highly recommended to set the MPLCONFIGDIR environment variable"), though the plot
    was drawn all the same. The command line says nothing of it now."""
    import os

    from conftest import DATA, ROOT

    (tmp_path / "file").write_text("")  # (a home below a file: no mkdir there, for root too)
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "file" / "home"), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "protrans_cli", "train", "--corpus", DATA / "train" / "learnable.txt",
                             "-o", tmp_path / "run", "--num-steps", "1", "--max-length", "32", "--global-batch-size", "2",
                             "--micro-batch-size", "2", "-j", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0
    assert "matplotlib" not in result.stderr.lower() and "MPLCONFIGDIR" not in result.stderr, result.stderr


def test_inputs_on_a_read_only_store_are_only_read(run_cli, tmp_path, tmp_path_factory):
    """A model directory, a FASTA and a corpus on a shared read-only store (a cluster's model
    folder, a container image): embed (--resume too) and prep write nothing beside them (no
    lock, index, cache or scratch file), only where -o says. (A snapshot, not the folder's
    mode, decides: root writes into a read-only folder all the same.)"""
    import shutil

    from conftest import save_tiny_model

    store = tmp_path / "store"
    shutil.copytree(save_tiny_model(tmp_path_factory, "bert"), store / "model")
    (store / "in.fa").write_text(">a\nMKTAYIAKQR\n>b\nMKTAYIAKQR\n>c\nGGLLV\n")

    def snapshot():
        return {str(p.relative_to(store)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(store.rglob("*"))}

    before = snapshot()
    for p in [*store.rglob("*"), store]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        out = tmp_path / "out"
        out.mkdir()
        for args in (["embed", store / "in.fa", "-m", store / "model", "-o", out / "e.h5", "--device", "cpu"],
                     ["embed", store / "in.fa", "-m", store / "model", "-o", out / "e.h5", "--resume"],
                     ["prep", store / "in.fa", "--dedup", "--shuffle", "-o", out / "corpus.txt"]):
            result = run_cli(*args)
            assert result.exit_code == 0, (args, result.stderr)
    finally:
        for p in [store, *store.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert snapshot() == before
