"""The benchmark scripts still run (slow tests: the scripts are not unit tests, but a figure in
docs/benchmarks.md is only as good as the script that re-measures it, and a script left behind
by a change of the library fails only when someone needs its figure). Each runs at its smallest
size on the CPU, one thread, and must print its ratio against the baseline it measures in the
same run; the figures themselves are not checked (a loaded 2-core machine makes any of them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

# script, arguments ({tmp}: a temporary folder), what the output must hold (a regular expression)
RATIO = r"\d+(\.\d+)?x\b"
CASES = [
    ("embed_bench.py", "--family bert --preset tiny --num-proteins 12 --repeats 1 --threads 1",
     r"protrans / prottrans: " + RATIO),
    ("train_bench.py", "--family bert --preset tiny --max-length 64 --num-steps 3 --warmup 1 --num-proteins 32 "
     "--repeats 1 --threads 1 --global-batch-size 8 --micro-batch-size 4", r"speed-up\s+" + RATIO),
    # (the variant words of --static-shapes and of CUDA graphs, the default compile mode off CUDA)
    ("train_bench.py", "--family bert --preset tiny --max-length 64 --num-steps 3 --warmup 1 --num-proteins 32 "
     "--repeats 1 --threads 1 --global-batch-size 8 --micro-batch-size 4 --variants tokens+packing+static,"
     "tokens+packing+static+cudagraphs", r"tokens\+packing\+static\+cudagraphs +\d+ tokens/s.*, " + RATIO),
    ("contacts_bench.py", "--preset tiny --lengths 30 40 --batch 2 --repeats 1", r"speed ratio[\s\S]*" + RATIO),
    ("variants_bench.py", "--preset tiny --length 40 --sites 2 --mutants 2 --threads 1",
     r"masked-marginals.*" + RATIO),
    ("generate_bench.py", "--preset tiny --num-sequences 2 --length 20 --threads 1", r"identical sequences: 2/2\s+"
     r"protrans / naive: " + RATIO),
    ("embed_writer_bench.py", "--num-proteins 20 --dim 8 --repeats 1", r"device / host: " + RATIO),
    ("export_bench.py", "--num-proteins 20 --dim 8 --residues 10 --tmpdir {tmp}", r"per_protein tsv: .*" + RATIO),
    ("h5_bench.py", "--num-proteins 20 --dim 8 --repeats 1 --tmpdir {tmp}", r"merge protrans / dictionary: " + RATIO),
    ("heads_bench.py", "--proteins 20 --dim 8 --threads 1 --epochs 1", r"extrapolated_full_s_per_epoch\s+\d"),
    ("prep_bench.py", "--size-mb 1 --threads 1 --repeat 1 --workdir {tmp}", r"ratio\s+" + RATIO + r".*identical output: True"),
    ("train_resume_bench.py", "--megabytes 1 --shards 2 --tmpdir {tmp}", r"ratio \(re-read / cursor\): " + RATIO),
    # (against the file's size: import-model's peak memory is the weights held once plus start-up)
    ("import_bench.py", "--size 8M --tmpdir {tmp}", r"peak resident \d+(\.\d+)? GB = " + RATIO + " the file"),
    ("structures_bench.py", "--models 6 --rounds 1", r"AFDB-like tar .*-j 2: .* x\d+\.\d+ of -j 1"),
    # (its memory mode: a child's peak at N and 4N models; no --before here)
    ("structures_bench.py", "--memory --models 4", r"16 models .* this checkout : peak +\d+\.\d MB"),
    # (no baseline: how commands scale with the proteins of a file, each layout; it prints figures)
    ("proteins_bench.py", "--num-proteins 60 --labels 30 --tmpdir {tmp}", r"stacked N=60 predict: \d+(\.\d+)? s"),
]


def test_every_cpu_benchmark_is_covered():
    """A new script under benchmarks/ gets a case here (or is GPU-only)."""
    gpu_only = {"gpu_peak.py", "gpu_profile.py"}
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}  # _: shared code
    assert scripts - gpu_only == {script for script, _, _ in CASES}


@pytest.mark.parametrize("script,arguments,expected", CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_and_prints_its_ratio(tmp_path, script, arguments, expected):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "benchmarks" / script), *arguments.format(tmp=tmp_path).split()]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert re.search(expected, output), output[-3000:]
