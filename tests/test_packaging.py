"""`pip install .` builds a wheel that carries the example data and works outside the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_wheel_contains_example_data_and_runs_outside_the_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("protrans-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("proteins.fasta", "ss_train.csv", "ss_test.csv", "loc_train.fasta", "loc_test.fasta"):
        assert f"protrans_cli/example_data/{f}" in names
    assert "protrans_cli/catalog.json" in names  # (what `protrans models` reads)
    assert "protrans_cli/recipes/prot_bert.toml" in names  # (what `train --recipe` reads)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # (MIT: the notice travels with it)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    # (the installed wheel, not a checkout a PYTHONPATH names: the suite run from a clone set one)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True,
                   env=env)
    # The dependencies as this suite has them: --system-site-packages gives the base Python's,
    # and where the suite runs in a venv of its own (the README's install into one) its packages
    # are elsewhere: the new venv had no click, and `protrans prep` failed. A .pth line adds the
    # running environment's folders after the venv's own, once the wheel is in (before, pip took
    # the running environment's protrans for the wheel and installed nothing).
    found = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(found) / "_suite_environment.pth").write_text("".join(f"{d}\n" for d in outer))
    code = ("import protrans_cli.quickstart as q, sys; d = q.example_data_dir(); "
            "assert str(d).startswith(sys.argv[1]), d; print(d / 'proteins.fasta')")
    out = subprocess.run([str(py), "-c", code, str(venv)], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=env)
    fasta = out.stdout.strip()
    corpus = subprocess.run([str(venv / "bin" / "protrans"), "-q", "prep", fasta], cwd=tmp_path,
                            capture_output=True, text=True, check=True, env=env).stdout
    assert corpus.count("\n\n") == 720
    listing = subprocess.run([str(venv / "bin" / "protrans"), "models", "--json"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, env=env).stdout
    assert '"prot_t5_xl_half"' in listing
    recipes = subprocess.run([str(venv / "bin" / "protrans"), "train", "--list-recipes"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, env=env)
    assert "prot_bert " in recipes.stdout and str(venv) in recipes.stderr


def test_changelog_has_an_entry_for_the_packaged_version():
    """The version lives in protrans_cli/_version.py; the changelog must describe that release.
    Between releases the version is the next one's development release (0.2.0.dev0 after
    0.1.0), described by [Unreleased]: files and heads record the version that wrote them, and
    the development code's said 0.1.0 like the release's."""
    import re

    from protrans_cli import __version__

    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text, re.M)
    assert released, "no release in CHANGELOG.md"
    development = re.fullmatch(r"(\d+\.\d+\.\d+)\.dev\d+", __version__)
    if development is None:
        assert __version__ == released[0], f"{__version__} is not the changelog's latest release, {released[0]}"
    else:
        def key(version):
            return tuple(int(part) for part in version.split("."))

        assert key(development.group(1)) > key(released[0]), (
            f"{__version__} is not a development release after the latest one, {released[0]}")


def test_console_script_runs_without_site_having_imported_importlib_util(tmp_path):
    """The installed `protrans` script is `from protrans_cli.cli import main; sys.exit(main())`:
    nothing like runpy (`python -m`) or pytest has imported `importlib.util` before it. Python
    3.11's site module happens to import it, 3.10, 3.12 and 3.13's do not: there `protrans
    --help` failed with "module 'importlib' has no attribute 'util'". `-S` shows that start on
    any version (site-packages put on sys.path by hand, without its .pth files)."""
    import click

    packages = os.path.dirname(os.path.dirname(click.__file__))
    code = ("import sys\n"
            f"sys.path[:0] = [{str(ROOT)!r}, {packages!r}]\n"
            "assert 'importlib.util' not in sys.modules, 'the test needs a start without it'\n"
            "from protrans_cli.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    for argv in (["--help"], ["-q", "prep", "-"], ["models", "--json"]):
        done = subprocess.run([sys.executable, "-S", "-c", code, *argv], input=">a\nMKTAYIAK\n", cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr[-2000:])


@pytest.mark.slow
def test_sdist_carries_a_runnable_test_suite_and_no_build_output(tmp_path):
    """The sdist had tests/test_*.py (setuptools' default) without conftest.py or tests/data, so
    its suite could not even be collected; MANIFEST.in adds them, the docs and the licence."""
    import shutil
    import tarfile

    # (from a copy without *.egg-info: setuptools adds every file an old SOURCES.txt lists)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", "__pycache__"))
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp_path)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=True)
    with tarfile.open(tmp_path / done.stdout.strip().splitlines()[-1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for f in ("LICENSE", "CHANGELOG.md", "tests/conftest.py", "docs/cli.md", "protrans_cli/catalog.json",
              "protrans_cli/example_data/proteins.fasta"):
        assert f in names, f
    assert any(n.startswith("tests/data/") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


# The standard library's additions after Python 3.10, the oldest Python protrans supports
# (requires-python >= 3.10; CI runs a newer one, so nothing else catches their use): module -> names.
_NEWER_THAN_3_10 = {
    "contextlib": {"chdir"},  # 3.11
    "datetime": {"UTC"},
    "hashlib": {"file_digest"},
    "enum": {"StrEnum", "verify", "EnumCheck", "ReprEnum", "global_enum"},
    "asyncio": {"timeout", "timeout_at", "TaskGroup", "Runner", "Barrier"},
    "operator": {"call"},
    "math": {"cbrt", "exp2", "sumprod"},
    "inspect": {"getmembers_static", "markcoroutinefunction"},
    "logging": {"getLevelNamesMapping", "getHandlerByName", "getHandlerNames"},
    "re": {"NOFLAG", "PatternError"},
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "dataclass_transform", "TypeVarTuple", "Unpack", "override", "TypeAliasType",
               "TypeIs", "ReadOnly", "NoDefault", "get_protocol_members", "is_protocol"},
    "itertools": {"batched"},  # 3.12
    "os.path": {"splitroot"},
    "sys": {"monitoring", "activate_stack_trampoline", "deactivate_stack_trampoline", "is_stack_trampoline_active",
            "last_exc", "_is_gil_enabled"},
    "copy": {"replace"},  # 3.13
    "warnings": {"deprecated"},
    "os": {"process_cpu_count"},
    "random": {"binomialvariate"},
    "statistics": {"kde", "kde_random"},
}
_NEWER_MODULES = {"tomllib"}  # 3.11: imported only where ImportError falls back (tomli)


def _attribute_chain(node) -> str | None:
    import ast

    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def test_no_standard_library_name_newer_than_the_oldest_python_supported():
    """pyproject says Python 3.10+, CI runs 3.11: a test that used contextlib.chdir (3.11) failed
    on 3.10 only (AttributeError), found by running the suite there by hand. Every use of a
    standard-library name added after 3.10, in the package, the tests, the benchmarks and the
    scripts, is caught here instead; a newer module only inside a try whose except takes the
    ImportError."""
    import ast

    found = []
    for path in sorted(p for folder in ("protrans_cli", "tests", "benchmarks", "scripts")
                       for p in (ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try)
                   and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                           for h in t.handlers)
                   for stmt in t.body for node in ast.walk(stmt)}
        where = f"{path.relative_to(ROOT)}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain = _attribute_chain(node)
                if chain and "." in chain:
                    module, name = chain.rsplit(".", 1)
                    if name in _NEWER_THAN_3_10.get(module, ()):
                        found.append(f"{where}:{node.lineno}: {chain}")
            elif isinstance(node, ast.ImportFrom) and node.module in _NEWER_THAN_3_10:
                found += [f"{where}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                          if a.name in _NEWER_THAN_3_10[node.module]]
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{where}:{node.lineno}: import {n} (unguarded)" for n in names if n in _NEWER_MODULES]
    assert not found, "\n".join(found)
