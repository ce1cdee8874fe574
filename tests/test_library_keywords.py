"""A library call's range and choice refusals name the keyword or settings field the caller gave
(`max_length must be at least 1, got 0`, `long_policy must be one of ..., got 'cut'`), not a flag
it has no way to pass; the command's messages keep their flags (errors.option)."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from protrans_cli.errors import UsageError
from protrans_cli.heads.tasks import TASKS

# a flag as a message names one: "--max-length", "-k"
FLAG = re.compile(r"(?<![\w-])--?[a-z]")


def _embed(**kw):
    from protrans_cli.embed import EmbedOptions, embed_sequences

    return lambda tmp: embed_sequences(["MKT"], EmbedOptions(model="onehot", **kw), kind="per_protein")


def _resolve(model_max, **kw):
    from protrans_cli.embed import EmbedOptions, resolve_max_length

    return lambda tmp: resolve_max_length(EmbedOptions(model="onehot", **kw), model_max)


def _contacts(**kw):
    from protrans_cli.contacts import ContactOptions, predict_contacts

    return lambda tmp: predict_contacts(tmp / "in.fa", tmp / "out.h5", ContactOptions(**kw))


def _variants(**kw):
    from protrans_cli.variants import VariantOptions, run_variants

    return lambda tmp: run_variants(tmp / "out.csv", VariantOptions(**kw), sequence="MKT", fasta=None)


def _perplexity(**kw):
    from protrans_cli.perplexity import PerplexityOptions, run_perplexity

    return lambda tmp: run_perplexity(tmp / "in.fa", tmp / "out.tsv", PerplexityOptions(**kw))


def _generate(**kw):
    from protrans_cli.generate import GenerateOptions, run_generate

    return lambda tmp: run_generate(tmp / "out.fa", GenerateOptions(model="m", **kw))


def _translate(**kw):
    from protrans_cli.translate import TranslateOptions, translate

    return lambda tmp: translate(tmp / "in.fa", tmp / "out.fa", TranslateOptions(**{"to": "3di", **kw}))


def _knn(**kw):
    from protrans_cli.knn import knn

    kw.setdefault("query", "q.h5")
    return lambda tmp: knn(reference=tmp / "r.h5", output=tmp / "o.tsv", **kw)


def _project(**kw):
    from protrans_cli.project import project

    return lambda tmp: project([tmp / "e.h5"], tmp / "o.tsv", **kw)


def _bounds(**kw):  # (UMAP's, which project checks once umap-learn is found)
    from protrans_cli.project import check_bounds

    return lambda tmp: check_bounds("umap", **kw)


def _corpus(**kw):
    from protrans_cli.corpus import CorpusOptions, build_corpus

    return lambda tmp: build_corpus([tmp / "in.fa"], CorpusOptions(output=str(tmp / "c.txt"), **kw))


def _extract(**kw):
    from protrans_cli.esm_extract import ExtractOptions, esm_extract

    return lambda tmp: esm_extract(tmp / "in.fa", tmp / "out", ExtractOptions(include=("mean",), **kw))


def _call(name, **kw):
    """A library function that takes the settings as keywords after its paths."""
    def call(tmp):
        if name == "predict":
            from protrans_cli.heads.predict import predict

            return predict(tmp / "head", tmp / "e.h5", tmp / "p.csv", **kw)
        if name == "export":
            from protrans_cli.export import export

            return export(tmp / "e.h5", tmp / "o.tsv", **kw)
        if name == "reduce":
            from protrans_cli.project import reduce

            return reduce(np.zeros((5, 4)), **kw)
        if name == "import_esm":
            from protrans_cli.esm_import import import_esm

            return import_esm([tmp / "pt"], tmp / "o.h5", **kw)
        from protrans_cli.quickstart import run_quickstart

        return run_quickstart(tmp / "qs", **kw)
    return call


@pytest.mark.parametrize("call, message", [
    (_embed(max_length=0), "max_length must be at least 1, got 0"),
    (_embed(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (_embed(max_batch_size=0), "max_batch_size must be at least 1, got 0"),
    (_embed(window=0), "window must be at least 1, got 0"),
    (_embed(chunk_overlap=-1), "chunk_overlap must be at least 0, got -1"),
    (_embed(long_policy="chunk", max_length=10, chunk_overlap=10),
     "chunk_overlap must be smaller than max_length (10), got 10"),
    (_embed(threads=0), "threads must be at least 1, got 0"),
    (_resolve(10, max_length=20), "max_length=20 is more than the model accepts (10 residues"),
    (_resolve(10, long_policy="chunk"), "chunk_overlap must be smaller than the window (10, the model's limit), got"),
    (_contacts(max_length=0), "max_length must be at least 1, got 0"),
    (_contacts(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (_contacts(max_batch_size=0), "max_batch_size must be at least 1, got 0"),
    (_contacts(window=0), "window must be at least 1, got 0"),
    (_contacts(threads=0), "threads must be at least 1, got 0"),
    (_variants(max_length=0), "max_length must be at least 1, got 0"),
    (_variants(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (_variants(threads=0), "threads must be at least 1, got 0"),
    (_perplexity(max_length=0), "max_length must be at least 1, got 0"),
    (_perplexity(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (_generate(num_sequences=0), "num_sequences must be at least 1, got 0"),
    (_generate(top_k=0), "top_k must be at least 1, got 0"),
    (_generate(temperature=0), "temperature must be a number above 0, got 0"),
    (_generate(min_length=9, max_length=5), "min_length 9 is more than max_length 5"),
    (_generate(prompt="MKJ"), "prompt: 'J' at position 3 is not a residue letter"),
    (_generate(threads=0), "threads must be at least 1, got 0"),
    (_translate(to=None), "to is required: 3di"),
    (_translate(num_sequences=0), "num_sequences must be at least 1, got 0"),
    (_translate(temperature=0.5), "temperature shapes sampling: give sample=True with it"),
    (_translate(num_sequences=2), "num_sequences 2 designs a protein need sample=True or at least as many num_beams"),
    (_translate(model="onehot"), "model='onehot' is an encoding, not a model"),
    (_translate(model="blosum62"), "model='blosum62' is an encoding, not a model"),
    (_call("predict", max_residues=0), "max_residues must be at least 1, got 0"),
    (_knn(k=0), "k must be at least 1, got 0"),
    (_knn(n_bootstrap=5), "n_bootstrap must be at least 10"),
    (_knn(query=None, fasta="q.fa", max_length=0), "max_length must be at least 1, got 0"),
    (_knn(query=None, fasta="q.fa", chunk_overlap=-1), "chunk_overlap must be at least 0, got -1"),
    (_knn(threads=0), "threads must be at least 1, got 0"),
    (_project(dims=4), "dims must be 2 or 3, got 4"),
    (_project(method="tsne", perplexity=0), "perplexity must be positive, got 0"),
    (_project(sample=1), "sample must be at least 2, got 1"),
    (_project(method="tsne", sample=3), "sample must be at least 4, got 3"),
    (_project(seed=-1), "seed must be at least 0, got -1"),
    (_bounds(neighbors=1), "neighbors must be at least 2, got 1"),
    (_bounds(neighbors=5, n=5), "neighbors=5 is too many for 5 proteins (each has 4 others): give 4 or fewer"),
    (_bounds(min_dist=2), "min_dist must be between 0 and 1, got 2"),
    (_call("reduce", method="tsne", perplexity=10), "perplexity=10 is too large for 5 proteins: give one below 5"),
    (_project(threads=0), "threads must be at least 1, got 0"),  # (t-SNE: a ValueError from scikit-learn)
    (_call("reduce", method="tsne", threads=0), "threads must be at least 1, got 0"),
    (_call("export", digits=0), "digits must be between 1 and 17, got 0"),
    (_corpus(min_length=0), "min_length must be at least 1, got 0"),
    (_corpus(min_length=5, max_length=3), "max_length must be at least min_length (5), got 3"),
    (_corpus(valid_fraction=1.5), "valid_fraction must be in [0, 1), got 1.5"),
    (_corpus(shard_size=0), "shard_size must be positive, got 0"),
    (_corpus(seed=-1), "seed must be at least 0, got -1"),
    (_corpus(threads=0), "threads must be at least 1, got 0"),
    (_call("import_esm", truncation_seq_length=0), "truncation_seq_length must be at least 1, got 0"),
    (_extract(toks_per_batch=0), "toks_per_batch must be at least 1, got 0"),
    (_extract(truncation_seq_length=0), "truncation_seq_length must be at least 1, got 0"),
    (_call("quickstart", num_steps=0), "num_steps must be at least 1, got 0"),
])
def test_a_library_call_out_of_range_is_told_its_keyword_not_a_flag(tmp_path, call, message):
    with pytest.raises(UsageError) as caught:
        call(tmp_path)
    said = str(caught.value)
    assert said.startswith(message) and not FLAG.search(said), said
    assert not any(tmp_path.iterdir())  # (refused before anything is written)


@pytest.mark.parametrize("args, message", [
    (["embed", "in.fa", "-m", "onehot", "-o", "o.h5", "--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["embed", "in.fa", "-m", "onehot", "-o", "o.h5", "--long-policy", "chunk", "--max-length", "10",
      "--chunk-overlap", "10"], "--chunk-overlap must be smaller than --max-length (10), got 10"),
    (["embed", "in.fa", "-m", "onehot", "-o", "o.h5", "-j", "0"], "--threads must be at least 1, got 0"),
    (["knn", "q.h5", "--reference", "r.h5", "-k", "0"], "-k must be at least 1, got 0"),
    (["export", "e.h5", "-o", "o.tsv", "--digits", "0"], "--digits must be between 1 and 17, got 0"),
    (["project", "e.h5", "--dims", "4"], "--dims must be 2 or 3, got 4"),
    (["prep", "in.fa", "-o", "c.txt", "--min-length", "0"], "--min-length must be at least 1, got 0"),
])
def test_the_command_keeps_its_flags_in_the_same_refusals(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.fa").write_text(">a\nMKT\n")
    result = run_cli(*args)
    assert result.exit_code == 2 and result.stderr == f"protrans: error: {message}\n", result.stderr


def _embed_file(**kw):
    from protrans_cli.embed import EmbedOptions, embed

    return lambda tmp: embed(tmp / "in.fa", tmp / "o.h5", EmbedOptions(model="onehot", **kw))


def _extract_including(include, **kw):
    from protrans_cli.esm_extract import ExtractOptions, esm_extract

    return lambda tmp: esm_extract(tmp / "in.fa", tmp / "out", ExtractOptions(include=include, **kw))


def _other(name, **kw):
    """A library call of another shape, with `kw` its settings."""
    def call(tmp):
        if name == "merge":
            from protrans_cli.merge import merge

            return merge([tmp / "a.h5", tmp / "b.h5"], tmp / "o.h5", **kw)
        if name == "import_head":
            from protrans_cli.heads.imported import import_head

            return import_head(tmp / "c.pt", tmp / "head", **kw)
        if name == "import_esm_contacts":
            from protrans_cli.esm_import import import_esm_contacts

            return import_esm_contacts([tmp / "pt"], tmp / "o.h5", **kw)
        if name == "fit":
            from protrans_cli.heads.fit import FitConfig, fit

            return fit(FitConfig(task="loc", **kw), tmp / "e.h5", tmp / "l.csv", tmp / "head")
        if name == "get_task":
            from protrans_cli.heads.tasks import get_task

            return get_task("loc", **kw)
        if name == "normalise":
            from protrans_cli.residues import normalise

            return normalise("MKT", **kw)
        from protrans_cli.io.h5 import EmbeddingsWriter

        return EmbeddingsWriter(tmp / "o.h5", **kw)
    return call


EMBED_LONG = "error, skip, truncate, chunk"
DTYPES = "auto, float32, bfloat16, float16"

# (the library call, what its refusal says to a library caller, and the flag the command line names)
CHOICES = [
    (_embed(long_policy="cut"), f"long_policy must be one of {EMBED_LONG}, got 'cut'", "--long-policy"),
    (_embed(invalid_policy="drop"), "invalid_policy must be one of error, skip, got 'drop'", "--invalid-policy"),
    (_embed_file(layout="table"), "layout must be one of grouped, flat, stacked, got 'table'", "--layout"),
    (_embed(pooling="max"), "pooling must be one of mean, cls, got 'max'", "--pooling"),
    (_embed(dtype="fp8"), f"dtype must be one of {DTYPES}, got 'fp8'", "--dtype"),
    (_embed(sdpa_kernels="fast"), "sdpa_kernels must be one of auto, torch, got 'fast'", "--sdpa-kernels"),
    (_embed(attention="Flex"), "attention must be one of auto, sdpa, flex, got 'Flex'", "--attention"),
    (_contacts(long_policy="chunk"), "long_policy must be one of error, skip, truncate, got 'chunk'; a contact map "
     "is not stitched from windows", "--long-policy"),
    (_contacts(invalid_policy="keep"), "invalid_policy must be one of error, skip, got 'keep'", "--invalid-policy"),
    (_contacts(storage_dtype="int8"), "storage_dtype must be one of float32, float16, got 'int8'", "--storage-dtype"),
    (_contacts(compression="zstd"), "compression must be one of none, gzip, lzf, got 'zstd'", "--compression"),
    (_contacts(dtype="fp8"), f"dtype must be one of {DTYPES}, got 'fp8'", "--dtype"),
    (_variants(strategies=("masked",)), "strategies must be one of masked-marginals, wt-marginals, pseudo-ppl, "
     "log-likelihood, got 'masked'", "--scoring"),
    (_variants(long_policy="chunk"), "long_policy must be one of error, window, got 'chunk'", "--long-policy"),
    (_variants(dtype="fp8"), f"dtype must be one of {DTYPES}, got 'fp8'", "--dtype"),
    (_perplexity(method="pll"), "method must be one of pseudo, causal, wt-marginals, got 'pll'", "--method"),
    (_perplexity(long_policy="chunk"), "long_policy must be one of error, window, skip, got 'chunk'", "--long-policy"),
    (_perplexity(invalid_policy="keep"), "invalid_policy must be one of error, skip, got 'keep'",
     "--invalid-policy"),
    (_knn(metric="manhattan"), "metric must be one of euclidean, cosine, got 'manhattan'", "--metric"),
    (_project(method="mds"), "method must be one of pca, tsne, umap, got 'mds'", "--method"),
    (_project(metric="manhattan"), "metric must be one of euclidean, cosine, got 'manhattan'", "--metric"),
    (_corpus(rare="drop"), "rare must be one of x, keep, got 'drop'", "--rare"),
    (_corpus(long="drop"), "long must be one of skip, crop, got 'drop'", "--long"),
    (_extract_including(("means",)), "include must be one of mean, per_tok, bos, contacts, got 'means'", "--include"),
    (_extract(dtype="fp8"), f"dtype must be one of {DTYPES}, got 'fp8'", "--dtype"),
    # (none given: the same names)
    (_extract_including(()), "include: give one or more of mean, per_tok, bos, contacts", "--include"),
    (_variants(strategies=()), "strategies: give one or more of masked-marginals, wt-marginals, pseudo-ppl, "
     "log-likelihood", "--scoring"),
    (_call("export", fmt="parquet"), "fmt must be one of tsv, csv, npz, esm, got 'parquet'", "--format"),
    (_call("import_esm", layout="table"), "layout must be one of grouped, flat, stacked, got 'table'", "--layout"),
    (_call("import_esm", storage_dtype="int8"), "storage_dtype must be one of float32, float16, got 'int8'",
     "--storage-dtype"),
    (_other("import_esm_contacts", storage_dtype="int8"), "storage_dtype must be one of float32, float16, got "
     "'int8'", "--storage-dtype"),
    (_other("merge", layout="table"), "layout must be one of grouped, flat, stacked, got 'table'", "--layout"),
    (_other("import_head", source="esm"), "source must be one of prottrans-secstruct, la-location, la-membrane, "
     "got 'esm'", "--from"),
    (_other("fit", dual="both"), "dual must be one of first, skip, got 'both'", "--dual"),
    (_other("fit", on_mismatch="some"), "on_mismatch must be one of error, skip, missing, got 'some'",
     "on_mismatch"),  # (no flag: fit's --skip-mismatched and --only-embedded set it)
    (_call("export", kind="residue"), "kind must be one of per_protein, per_residue, got 'residue'",
     "kind"),  # (no flag: export's --per-protein and --per-residue set it)
    (_other("get_task", dual="both"), "dual must be one of first, skip, got 'both'", "--dual"),
    (_other("normalise", rare="drop"), "rare must be one of x, keep, got 'drop'", "--rare"),
    (_other("writer", layout="table"), "layout must be one of grouped, flat, stacked, got 'table'", "--layout"),
    (_other("writer", storage_dtype="int8"), "storage_dtype must be one of float32, float16, got 'int8'",
     "--storage-dtype"),
    (_other("writer", compression="zstd"), "compression must be one of none, gzip, lzf, got 'zstd'", "--compression"),
]


@pytest.mark.parametrize("call, message, flag", CHOICES,
                         ids=[f"{flag.lstrip('-')}-{i}" for i, (_, _, flag) in enumerate(CHOICES)])
def test_a_library_call_given_no_choice_is_told_its_keyword_and_the_command_line_its_flag(
        tmp_path, monkeypatch, call, message, flag):
    # (told "--long-policy must be one of ...": a flag no call takes, and the same refusal had
    # five wordings, some with the value given, some with the choices as a tuple's repr)
    from protrans_cli import console

    with pytest.raises(UsageError) as caught:
        call(tmp_path)
    said = str(caught.value)
    assert said == message and not FLAG.search(said), said
    assert not any(tmp_path.iterdir())  # (refused before anything is written)
    # at the command line (where click's choices keep most of these out): the flag, in the same words
    keyword = re.match(r"\w+", message).group()
    monkeypatch.setattr(console.state, "command_line", True)
    with pytest.raises(UsageError) as caught:
        call(tmp_path)
    assert str(caught.value) == message.replace(keyword, flag, 1), str(caught.value)



def _raised(text):
    """A refusal that a library call builds from `text` (a remedy returned, not raised)."""
    raise UsageError(text)


def _embed_with(output="o.h5", **kw):
    from protrans_cli.embed import EmbedOptions, embed

    return lambda tmp: embed(tmp / "in.fa", output if output == "-" else tmp / output, EmbedOptions(**kw))


def _device(*args):
    """resolve_device(*args) on a machine without CUDA, whatever this one has."""
    def call(tmp):
        from unittest import mock

        import torch

        from protrans_cli.embedders import resolve_device

        with mock.patch.object(torch.cuda, "is_available", lambda: False):
            return resolve_device(*args)
    return call


def _contacts_to(output):
    from protrans_cli.contacts import ContactOptions, predict_contacts

    return lambda tmp: predict_contacts(tmp / "in.fa", output, ContactOptions())


def _scan(output="out.csv", *, fasta=None, variants_file=None, **kw):
    """run_variants with `kw` its VariantOptions: `fasta` the name of a FASTA of two wild types made
    in the test's folder, `variants_file` of a table (neither read before these refusals)."""
    from protrans_cli.variants import VariantOptions, run_variants

    sequence = kw.pop("sequence", None if fasta else "MKT")
    record_id = kw.pop("record_id", None)

    def call(tmp):
        if fasta:
            (tmp / fasta).write_text(">a\nMKTAYIAK\n>b\nMKVLAAGI\n")
        where = {name: (value if value in (None, "-") else tmp / value)
                 for name, value in (("output", output), ("fasta", fasta), ("variants_file", variants_file))}
        options = VariantOptions(**{**kw, **({"plot": tmp / kw["plot"]} if "plot" in kw else {})})
        return run_variants(where["output"], options, variants_file=where["variants_file"],
                            sequence=sequence, fasta=where["fasta"], record_id=record_id)
    return call


def _export_to(output, make=None, **kw):
    """export to `output` in the test's folder ('-': stdout); `make`: "dir" or "file", what is made
    there first, with a file in a folder ("dir+") to make it one that is not empty."""
    from protrans_cli.export import export

    def call(tmp):
        target = output if output == "-" else tmp / output
        if make in ("dir", "dir+"):
            target.mkdir()
            if make == "dir+":
                (target / "x.pt").write_text("")
        elif make == "file":
            target.write_text("")
        return export(tmp / "e.h5", target, **kw)
    return call


def _corpus_to(output, **kw):
    """build_corpus into `output` in the test's folder ('-': stdout, '': the folder itself), its
    stats and rejects there too."""
    from protrans_cli.corpus import CorpusOptions, build_corpus

    def call(tmp):
        at = {k: v if v in ("-", None) else str(tmp / v) for k, v in kw.items() if k in ("stats", "rejects")}
        target = output if output in ("-", "") else str(tmp / output)
        return build_corpus([tmp / "in.fa"], CorpusOptions(output=target or str(tmp), **{**kw, **at}))
    return call


def _fit_check(**kw):
    from protrans_cli.heads.fit import FitConfig

    return lambda tmp: FitConfig(task="loc", **kw).check()


def _fit_with(task="loc", valid=False, **kw):
    from protrans_cli.heads.fit import FitConfig, fit

    return lambda tmp: fit(FitConfig(task=task, **kw), tmp / "e.h5", tmp / "l.csv", tmp / "head",
                           valid=(tmp / "v.h5", tmp / "v.csv") if valid else None)


def _finetune_check(**kw):
    from protrans_cli.heads.finetune import FinetuneConfig

    kw.setdefault("model", "prot_bert")
    return lambda tmp: FinetuneConfig(task="loc", **kw).check()


def _piped_mask(tmp):
    import os

    from protrans_cli.heads.fit import refuse_piped_mask

    os.mkfifo(tmp / "m.fa")
    refuse_piped_mask(tmp / "m.fa", 2)


def _heads(name, *args):
    def call(tmp):
        from protrans_cli.heads import labels, predict, tasks
        from protrans_cli.heads.fit import refuse_unused_mask_columns

        if name == "architecture":
            return tasks.architecture_for(tasks.get_task(args[0]), args[1])
        if name == "head_output":
            return predict.check_head_output(tasks.get_task(args[0]), args[1])
        if name == "mismatch":
            return predict.mismatch("embeddings come from model 'a', the head was trained on 'b'", "e.h5", False)
        if name == "mask_columns":
            return refuse_unused_mask_columns(args[0], ["fasta"])
        if name == "labels":
            return labels.read_labels(tmp / "l.csv", args[0])
        return tasks.get_task(args[0])
    return call


def _project_to(output="o.tsv", **kw):
    from protrans_cli.project import project

    def call(tmp):
        paths = {k: v if v in (None, "-") else tmp / v for k, v in kw.items() if k in ("plot", "html_path")}
        return project([tmp / "e.h5"], output if output == "-" else tmp / output, **{**kw, **paths})
    return call


def _without_umap(tmp):
    from unittest import mock

    from protrans_cli.project import project

    with mock.patch("importlib.util.find_spec", lambda name, *a: None):
        project([tmp / "e.h5"], tmp / "o.tsv", method="umap")


def _flex_family(tmp):
    from protrans_cli.models import get_family

    get_family("bert").use_flex_attention(None)


def _cls_problem(causal):
    from types import SimpleNamespace

    from protrans_cli.embedders import cls_problem

    return lambda tmp: _raised(cls_problem(SimpleNamespace(causal=causal, name="bert"), None))


def _esm_layers(tmp):
    from protrans_cli.esm_extract import esm_layers

    esm_layers((0, 34), 33, "m")


PER_KIND = "the flat layout holds one kind only: "
STACKED = "the stacked layout holds per-protein vectors only (one (N, D) array): "

# (the library call; what its refusal says to a library caller; what it says at the command line, where
# many are kept out earlier by click, in the words they had: each with {tmp} the test's folder)
SWEEP = [
    # embed
    (_embed_with(model="onehot", per_residue=False, per_protein=False),
     "nothing to write: ask for per_residue=True and/or per_protein=True",
     "nothing to write: ask for --per-residue and/or --per-protein"),
    (_embed_with(model="onehot", layout="flat"), PER_KIND + "per_residue=False or per_protein=False",
     PER_KIND + "give exactly one of --per-residue and --per-protein"),
    (_embed_with(model="onehot", layout="stacked"),
     STACKED + "give per_protein=True and per_residue=False, or layout='grouped' for per-residue arrays",
     STACKED + "give --per-protein alone, or --layout grouped for per-residue arrays"),
    (_embed(pooling="cls"), "pooling='cls' reads a model's cls token: the onehot embedder has none",
     "--pooling cls reads a model's cls token"),
    (_embed_with(model="prot_bert", pooling="cls", long_policy="chunk"),
     "pooling='cls' with long_policy='chunk': each window would have a cls token of its own (use truncate or skip, "
     "or pooling='mean')", "--pooling cls with --long-policy chunk: each window would have a cls token of its own "
     "(use truncate or skip, or --pooling mean)"),
    (_embed_with(model="prot_bert", pooling="cls", packing=True),
     "pooling='cls' reads each protein's cls token from padded batches: no packing=True",
     "--pooling cls reads each protein's cls token from padded batches: no --packing"),
    (_embed_with(model="onehot", part="9/3"), "part='9/3': give K/N, part K of N", "--part 9/3: give K/N, part K of N"),
    (_embed(device="gpu"), "device='gpu': use auto, cpu, cuda, cuda:N or mps", "--device gpu: use auto, cpu, cuda"),
    (_embed(attention="flex", compile=True), "attention='flex' and compile=True cannot be combined",
     "--attention flex and --compile cannot be combined"),
    (_embed_with("-", model="onehot"), "an HDF5 file cannot be written to stdout: give output a file name",
     "an HDF5 file cannot be written to stdout: give -o FILE.h5"),
    (_embed_with(model="onehot", resume=True, force=True),
     "give resume=True (keep output's proteins) or force=True (replace output), not both",
     "give --resume (keep OUTPUT's proteins) or --force (replace OUTPUT), not both"),
    (_device("cpu", "float16"),
     "dtype='float16' on the CPU: half precision is only used on a GPU", "--dtype float16 on the CPU: half precision"),
    (_device("cuda"),
     "device='cuda': no CUDA device is available (try device='cpu')",
     "--device cuda: no CUDA device is available (try --device cpu)"),
    (_cls_problem(True), "a causal model (bert) has no token that sees the whole protein but its last: use "
     "pooling='mean'", "a causal model (bert) has no token that sees the whole protein but its last: use --pooling "
     "mean"),
    (_cls_problem(False), "the bert tokenizer has no cls token (T5 models have none): use pooling='mean'",
     "the bert tokenizer has no cls token (T5 models have none): use --pooling mean"),
    (_flex_family, "attention='flex': the bert family does not support it (only t5: ProtT5 and Ankh); use "
     "attention='sdpa'", "--attention flex: the bert family does not support it (only t5: ProtT5 and Ankh); use "
     "--attention sdpa"),
    (_other("writer", kinds=("per_residue", "per_protein"), layout="flat"),
     "the flat layout holds one kind only: kinds=('per_residue',) or ('per_protein',)",
     "the flat layout holds one kind only: choose --per-residue or --per-protein"),
    (_other("writer", kinds=("per_residue",), layout="stacked"),
     "the stacked layout holds per-protein vectors only: kinds=('per_protein',)",
     "the stacked layout holds per-protein vectors only: choose --per-protein alone"),
    # contacts
    (_contacts(model="onehot"), "model='onehot' is embed's one-hot encoding, not a model",
     "-m onehot is embed's one-hot encoding, not a model"),
    (_contacts(model="blosum62"), "model='blosum62' is embed's BLOSUM62 encoding, not a model",
     "-m blosum62 is embed's BLOSUM62 encoding, not a model"),
    (_contacts(device="gpu"), "device='gpu': use auto, cpu, cuda, cuda:N or mps", "--device gpu: use auto"),
    (_contacts(resume=True, force=True), "give resume=True (keep output's proteins) or force=True (replace output), "
     "not both", "give --resume (keep OUTPUT's proteins) or --force (replace OUTPUT), not both"),
    (_contacts_to("-"), "an HDF5 file cannot be written to stdout: give output a file name",
     "an HDF5 file cannot be written to stdout: give -o FILE.h5"),
    # variants
    # (VariantOptions takes `models`, a tuple: "model='onehot'" named a field it has not)
    (_variants(models=("esm2_t6_8M_UR50D", "onehot")), "models: 'onehot' is embed's one-hot encoding, not a "
     "language model",
     "-m onehot is embed's one-hot encoding, not a language model"),
    (_variants(models=("blosum62",)), "models: 'blosum62' is embed's BLOSUM62 encoding, not a language model",
     "-m blosum62 is embed's BLOSUM62 encoding, not a language model"),
    (_variants(device="gpu"), "device='gpu': use auto, cpu, cuda, cuda:N or mps", "--device gpu: use auto"),
    (_variants(models=("a", "b"), column="s"), "column names the one score column of one model and one scoring",
     "--column names the one score column of one model and one scoring"),
    (_variants(models=("a", "b"), revision="v1"), "revision applies to one model; with several models, name each by "
     "a directory", "--revision applies to one model; with several -m, name each by a directory"),
    (_variants(plot="v.png"), "plot draws the landscape of an all_singles=True scan",
     "--plot draws the landscape of an --all-singles scan"),
    (_variants(all_singles=True, truth_column="dms"), "truth_column and id_column read the variants table; "
     "all_singles=True has none", "--truth-column and --id-column read the variants table; --all-singles has none"),
    (_variants(all_singles=True, mutation_column="mut"), "mutation_column='mut' reads the variants table; "
     "all_singles=True has none", "--mutation-column mut reads the variants table; --all-singles has none"),
    (_scan(sequence=None, all_singles=True), "give the wild type: sequence or fasta (one of them)",
     "give the wild type: --sequence SEQ or --fasta FILE (one of them)"),
    (_scan(record_id="a", all_singles=True), "record_id picks a record of fasta", "--id picks a record of --fasta"),
    (_scan(), "give a variants table (CSV or TSV with a mutant column) or all_singles=True, one of them",
     "give a variants table (CSV or TSV with a mutant column) or --all-singles, one of them"),
    (_scan(variants_file="-", fasta="-"), "the variants table and fasta cannot both be read from stdin",
     "the variants table and --fasta cannot both be read from stdin"),
    (_scan("-", all_singles=True, resume=True), "resume=True goes on with the work kept beside the output file; "
     "stdout keeps none", "--resume goes on with the work kept beside -o FILE; stdout keeps none"),
    (_scan(variants_file="v.csv", id_column="wt"), "id_column names each row's wild type among the records of fasta "
     "(without record_id)", "--id-column names each row's wild type among the records of --fasta (without --id)"),
    (_scan(fasta="wt.fa", all_singles=True, plot="v.png"), "plot draws one wild type's scan; {tmp}/wt.fa holds 2 "
     "(pick one with record_id)", "--plot draws one wild type's scan; {tmp}/wt.fa holds 2 (pick one with --id)"),
    (_scan(all_singles=True, plot="out.csv"), "plot {tmp}/out.csv is also the output: the heatmap would replace",
     "--plot {tmp}/out.csv is also -o: the heatmap would replace"),
    (_scan(fasta="wt.fa", record_id="a", all_singles=True, plot="wt.fa"), "plot {tmp}/wt.fa is also an input: "
     "drawing it would replace it (choose another plot)", "--plot {tmp}/wt.fa is also an input: drawing it would "
     "replace it (choose another --plot)"),
    (_scan(models=("a/esm", "b/esm"), all_singles=True), "two models have the same name",
     "two -m models have the same name"),
    # knn
    (_knn(layer="-1"), "layer is a whole number (-1: the last layer), got str '-1'",
     "--layer is a whole number (-1: the last layer), got str '-1'"),
    (_knn(query=None), "give the queries' embeddings (query) or their sequences (fasta), one of them",
     "give the queries' embeddings (QUERY.h5) or their sequences (--fasta), one of them"),
    (_knn(model="prot_bert"), "model goes with fasta (query was embedded already)",
     "-m goes with --fasta (QUERY.h5 was embedded already)"),
    (_knn(long_policy="skip"), "long_policy goes with fasta", "--long-policy goes with --fasta"),
    (_knn(score="s.csv"), "score compares the labels transferred from the reference: give the reference's labels",
     "--score compares the labels transferred from the reference: give the reference's --labels"),
    # import-esm, esm-extract
    (_call("import_esm", layers=(1, 1)), "layers holds a layer twice: 1, 1", "--layer given twice: 1, 1"),
    (_call("import_esm", bos=True, per_residue=True), "bos=True imports per-protein vectors (the <cls> token's): no "
     "per_residue=True", "--bos imports per-protein vectors (the <cls> token's): no --per-residue"),
    (_call("import_esm", per_residue=True, layout="stacked"), "the stacked layout holds per-protein vectors only: "
     "leave out per_residue=True", "the stacked layout holds per-protein vectors only: choose --per-protein alone"),
    (_call("import_esm", per_residue=True, per_protein=True, layout="flat"), PER_KIND + "per_residue=True or "
     "per_protein=True, not both", PER_KIND + "choose --per-residue or --per-protein"),
    (_call("import_esm", truncation_seq_length="1022"), "truncation_seq_length must be a whole number, got str "
     "'1022'", "--truncation-seq-length must be a whole number, got str '1022'"),
    (_call("import_esm", model="prot_albert"), "model 'prot_albert' is an albert checkpoint; esm-extract runs ESM "
     "models: give model the ESM model it ran", "-m prot_albert is an albert checkpoint; esm-extract runs ESM models: "
     "give -m the ESM model it ran"),
    (_extract(repr_layers=()), "repr_layers: give one or more layers", "--repr_layers: give one or more layers"),
    (_extract(repr_layers=("1",)), "repr_layers: whole numbers (layers), got str '1'",
     "--repr_layers: whole numbers (layers), got str '1'"),
    (_esm_layers, "repr_layers 34: m has 33 layers", "--repr_layers 34: m has 33 layers"),
    # export
    (_export_to("o.bin"), "output {tmp}/o.bin: name the file .tsv, .csv or .npz (.tsv.gz compresses), or say the "
     "format with fmt (fmt='esm': a folder of esm-extract's .pt files)", "-o {tmp}/o.bin: name the file .tsv, .csv "
     "or .npz (.tsv.gz compresses), or say the format with --format (--format esm: a folder of esm-extract's .pt "
     "files)"),
    (_export_to("-", fmt="esm"), "fmt='esm' writes a folder of .pt files: give output a folder",
     "--format esm writes a folder of .pt files: give -o FOLDER"),
    (_export_to("-", fmt="npz"), "an .npz is written to a file: give output a file name",
     "an .npz is written to a file: give -o FILE.npz"),
    (_export_to("o.npz.gz"), "output {tmp}/o.npz.gz: an .npz is a zip archive of its own: leave out .gz",
     "-o {tmp}/o.npz.gz: an .npz is a zip archive of its own: leave out .gz"),
    (_export_to("o.npz", digits=3), "digits rounds the numbers of a table: an .npz keeps the stored values",
     "--digits rounds the numbers of a table: an .npz keeps the stored values"),
    (_export_to("o.tsv", all_layers=True), "all_layers=True writes an .npz or esm-extract's .pt files (a table holds "
     "one layer: choose it with layer)", "--all-layers writes an .npz or esm-extract's .pt files (a table holds one "
     "layer: choose it with --layer)"),
    (_export_to("o.npz", all_layers=True, layer=-1), "all_layers=True writes every stored layer: leave out layer",
     "--all-layers writes every stored layer: leave out --layer"),
    (_export_to("d.tsv", "dir"), "output {tmp}/d.tsv: is a folder: a tsv output needs a file name (fmt='esm' writes",
     "-o {tmp}/d.tsv: is a folder: a tsv output needs a file name (--format esm writes"),
    (_export_to("e.h5", fmt="tsv"), "output {tmp}/e.h5 is also an input", "-o {tmp}/e.h5 is also an input"),
    (_export_to("d", "file", fmt="esm"), "output {tmp}/d: exists and is not a folder (fmt='esm' writes",
     "-o {tmp}/d: exists and is not a folder (--format esm writes"),
    (_export_to("d", "dir+", fmt="esm"), "output {tmp}/d: a folder that is not empty: fmt='esm' writes a new folder",
     "-o {tmp}/d: a folder that is not empty: --format esm writes a new folder"),
    # prep
    (_corpus(long="crop"), "long='crop' needs max_length (the window size)",
     "--long crop needs --max-length (the window size)"),
    (_corpus(valid_fraction=0.1), "valid_fraction needs valid_output", "--valid-fraction needs --valid-output FILE"),
    (_corpus(valid_output="v.txt"), "valid_output needs valid_fraction above 0",
     "--valid-output needs --valid-fraction above 0"),
    (_corpus_to("-", num_shards=2), "sharding needs output a file name", "sharding needs -o FILE"),
    (_corpus_to("-", stats="-"), "output and stats cannot both go to stdout (-)",
     "-o and --stats cannot both go to stdout (-)"),
    (_corpus_to(""), "output {tmp} is a directory: give a file name", "-o {tmp} is a directory: give a file name"),
    (_corpus_to("c.txt", stats="c.txt"), "output and stats both name {tmp}/c.txt",
     "-o and --stats both name {tmp}/c.txt"),
    (_corpus(tmp_dir="nowhere"), "tmp_dir nowhere: no such directory", "--tmp-dir nowhere: no such directory"),
    # fit, finetune, predict
    (_fit_check(max_epochs=0), "max_epochs must be at least 1, got 0", "--max-epochs must be at least 1, got 0"),
    (_fit_check(architecture=3), "architecture is a name, got int 3", "--architecture is a name, got int 3"),
    (_fit_check(folds=1), "folds must be at least 2", "--folds must be at least 2"),
    (_fit_check(folds=3, ensemble=2), "folds=3 trains one member per fold (3 members): leave out ensemble=2",
     "--folds 3 trains one member per fold (3 members): leave out --ensemble 2"),
    (_fit_check(kernel=4), "kernel must be odd (every residue keeps its position), got 4",
     "--kernel must be odd (every residue keeps its position), got 4"),
    (_fit_check(lr=0.0), "lr must be positive, got 0.0", "--lr must be positive, got 0.0"),
    (_fit_check(seed=2**64 - 2, ensemble=5), "seed must be at most 18446744073709551611 (2**64 - 5 with ensemble=5: ",
     "--seed must be at most 18446744073709551611 (2**64 - 5 with --ensemble 5: "),
    (_fit_with(folds=3, valid=True), "folds=3 validates each member on the fold it was not trained on: it takes no "
     "valid (put those proteins in labels, or leave out folds)", "--folds 3 validates each member on the fold it was "
     "not trained on: it takes no --valid (put those proteins in --labels, or leave out --folds)"),
    (_fit_with(mask_path="-"), "mask_path cannot be stdin ('-')", "--mask cannot be stdin ('-')"),
    (_fit_with("value", class_weights=True), "class_weights=True is for classification; the value task is a "
     "regression", "--class-weights is for classification; the value task is a regression"),
    (_piped_mask, "mask_path {tmp}/m.fa is a pipe, which can be read once", "--mask {tmp}/m.fa is a pipe"),
    (_heads("mask_columns", ("rsa",)), "mask_columns=('rsa',): none of the label files is a NetSurfP CSV (fasta)",
     "--mask-column rsa: none of the label files is a NetSurfP CSV (fasta)"),
    (_finetune_check(max_epochs=0), "max_epochs must be at least 1, got 0", "--max-epochs must be at least 1, got 0"),
    (_finetune_check(lora_rank=0), "lora_rank must be at least 1, got 0", "--lora-rank must be at least 1, got 0"),
    (_finetune_check(lora_dropout=1.0), "lora_dropout must be in [0, 1), got 1.0",
     "--lora-dropout must be in [0, 1), got 1.0"),
    (_finetune_check(n_bootstrap=5), "n_bootstrap must be at least 10", "--bootstrap must be at least 10"),
    (_finetune_check(kernel=4), "kernel must be odd", "--kernel must be odd"),
    (_finetune_check(model=""), "finetune needs a model (model=): a model directory",
     "finetune needs a model (-m): a model directory"),
    (_finetune_check(model="onehot"), "model='onehot' has no weights to fine-tune",
     "-m onehot has no weights to fine-tune"),
    (_finetune_check(model="blosum62"), "model='blosum62' has no weights to fine-tune",
     "-m blosum62 has no weights to fine-tune"),
    (_finetune_check(mask_path="-"), "mask_path cannot be stdin ('-')", "--mask cannot be stdin ('-')"),
    (_call("predict", max_residues="100"), "max_residues must be a whole number, got str '100'",
     "--max-residues must be a whole number, got str '100'"),
    (_heads("head_output", "loc", "loc"), "output is for per-residue heads", "--head-output is for per-residue heads"),
    (_heads("mismatch"), "e.h5: embeddings come from model 'a', the head was trained on 'b' "
     "(allow_model_mismatch=True overrides)", "e.h5: embeddings come from model 'a', the head was trained on 'b' "
     "(--allow-model-mismatch overrides)"),
    (_heads("architecture", "ss3", "fnn"), "architecture='fnn': ss3 is a per-residue task, whose head is cnn or linear",
     "--architecture fnn: ss3 is a per-residue task, whose head is cnn or linear"),
    # (no flag: a name the command's click choices keep out, in one_of's words)
    (_heads("architecture", "ss3", "rnn"), "architecture must be one of cnn, fnn, light-attention, linear, got 'rnn'",
     "--architecture must be one of cnn, fnn, light-attention, linear, got 'rnn'"),
    (_heads("task", "locc"), *[f"task must be one of {', '.join(TASKS)}, got 'locc'"] * 2),
    (_heads("labels", "xml"), "label_format must be one of auto, ", "--label-format must be one of auto, "),
    # project
    (_project_to(html_path="m.html", dims=3), "html_path draws 2 dimensions: leave out dims=3 (or html_path)",
     "--html draws 2 dimensions: leave out --dims 3 (or --html)"),
    (_project_to(plot="m.gif"), "plot {tmp}/m.gif: a picture is .png, .svg or .pdf",
     "--plot {tmp}/m.gif: a picture is .png, .svg or .pdf"),
    (_project_to("-", html_path="-"), "output and html_path cannot both go to stdout (-): give files",
     "-o and --html cannot both go to stdout (-): give files"),
    (_project_to("e.h5"), "output {tmp}/e.h5 is also an input", "-o {tmp}/e.h5 is also an input"),
    (_project_to(plot="o.png", html_path="o.png"), "plot and html_path name one file ({tmp}/o.png)",
     "--plot and --html name one file ({tmp}/o.png)"),
    (_without_umap, "method='umap' needs umap-learn, which is not installed: pip install 'protrans[project]' (or "
     "umap-learn); method='pca' needs nothing more", "--method umap needs umap-learn, which is not installed: pip "
     "install 'protrans[project]' (or umap-learn); --method pca needs nothing more"),
]




def _made(tmp, *, embedded=(), files=None, dirs=(), fifos=(), links=None):
    """The test's folder as a call below meets it: `embedded` {name: FASTA text} embedded by onehot
    (per_protein=False or per_residue=False where the name says "residues" or "vectors"), `files`
    {name: text}, `dirs` made, `fifos` named pipes, `links` {name: target} symbolic links."""
    import os

    from protrans_cli.embed import EmbedOptions, embed

    for name in dirs:
        (tmp / name).mkdir(parents=True, exist_ok=True)
    for name in fifos:
        os.mkfifo(tmp / name)
    for name, target in (links or {}).items():
        (tmp / name).symlink_to(tmp / target)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for name, text in dict(embedded).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / f"{name}.fa").write_text(text)
        embed(tmp / f"{name}.fa", tmp / name, EmbedOptions(model="onehot", per_protein="residues" not in name,
                                                           per_residue="vectors" not in name))


def _then(call, **made):
    """`call(tmp)` once the folder is `_made(**made)`."""
    def run(tmp):
        _made(tmp, **made)
        return call(tmp)
    return run


def _embed_into(output, **kw):
    from protrans_cli.embed import EmbedOptions, embed

    return lambda tmp: embed(tmp / "in.fa", tmp / output, EmbedOptions(model="onehot", **kw))


def _embed_locked_out(tmp):
    from protrans_cli.io.files import output_lock

    with output_lock(tmp / "o.h5", "held by this test"):
        _embed_into("o.h5")(tmp)


@contextmanager
def _flocked(path, shared=False):
    """`path` (a file or a directory) locked, exclusive or shared, by an open of it of its own, as
    another process (or HDF5 in this one) locks it: an flock, which a lock taken in this process
    on another open of it meets."""
    import fcntl
    import os

    held = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(held, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        yield
    finally:
        os.close(held)


def _held(call, name="o.h5.partial"):
    """`call(tmp)` while `name`, an HDF5 file, is locked as a run writing it locks it (HDF5's lock,
    an flock: taken here on an open of the file of its own, which HDF5's open in this process meets)."""
    def run(tmp):
        import h5py

        h5py.File(tmp / name, "w").close()
        with _flocked(tmp / name):
            return call(tmp)
    return run


def _read_by(call, name="o.h5"):
    """`call(tmp)` while `name`, a file there, is read by another process as HDF5 locks a file it
    reads (its shared lock, an flock: a notebook's EmbeddingsReader), which lets a check's read
    through and refuses a write."""
    def run(tmp):
        with _flocked(tmp / name, shared=True):
            return call(tmp)
    return run


def _as_partial(call):
    """`call(tmp)` once {tmp}/o.h5 is {tmp}/o.h5.partial, as a stopped run leaves its work."""
    def run(tmp):
        (tmp / "o.h5").rename(tmp / "o.h5.partial")
        return call(tmp)
    return run


def _import_esm_into(tmp):
    import torch

    from protrans_cli.esm_import import import_esm

    (tmp / "pt").mkdir()
    torch.save({"label": "a", "mean_representations": {1: torch.zeros(4)}}, tmp / "pt" / "a.pt")
    import_esm([tmp / "pt"], tmp / "o.h5", force=True)


def _fit_into(out_dir, embeddings="v.h5", **kw):
    from protrans_cli.heads.fit import FitConfig, fit

    return lambda tmp: fit(FitConfig(task="loc", **kw), tmp / embeddings, tmp / "l.csv",
                           out_dir if out_dir == "/" else tmp / out_dir)


def _fit_state(tmp):
    from protrans_cli.heads.fit import FitState

    (tmp / "h.partial").mkdir()
    (tmp / "h.partial" / FitState.FILE).write_bytes(b"")
    FitState.open(tmp / "h.partial", {}, resume=False, force=False)


def _search_into(tmp):
    from protrans_cli.heads.fit import FitConfig
    from protrans_cli.heads.search import search

    search(FitConfig(task="loc"), {"lr": [0.1, 0.01]}, tmp / "v.h5", tmp / "l.csv", tmp / "h")


def _finetune_into(tmp):
    from protrans_cli.heads.finetune import FinetuneConfig, checked_output

    checked_output(FinetuneConfig(task="loc", model="prot_bert"), tmp / "h", [tmp / "l.csv"])


def _quickstart_into(output):
    from protrans_cli.quickstart import run_quickstart

    return lambda tmp: run_quickstart(tmp / output)


def _import_head_into(tmp):
    from protrans_cli.heads.imported import import_head

    import_head(tmp / "c.pt", tmp / "h")


def _merge_into(output="o.h5", parts=("a.h5", "b.h5"), **kw):
    from protrans_cli.merge import merge

    return lambda tmp: merge([tmp / p for p in parts], tmp / output, **kw)


def _score(variants="v.csv", fasta=None, **kw):
    from protrans_cli.variants import VariantOptions, run_variants

    return lambda tmp: run_variants(tmp / "o.csv", VariantOptions(**kw), variants_file=tmp / variants,
                                    sequence=None if fasta else "MKT", fasta=tmp / fasta if fasta else None)


def _contacts_into(tmp):
    _contacts_to(tmp / "o.h5")(tmp)


def _export_of(path, **kw):
    from protrans_cli.export import export

    return lambda tmp: export(tmp / path, tmp / "o.tsv", **kw)


def _knn_of(query, **kw):
    from protrans_cli.knn import knn

    return lambda tmp: knn(tmp / query, tmp / "vectors.h5", tmp / "o.tsv", **kw)


def _esm_extract_head(tmp):
    import json

    from protrans_cli.heads.predict import head_embed_options
    from protrans_cli.heads.tasks import get_task

    (tmp / "h").mkdir()
    (tmp / "h" / "config.json").write_text(json.dumps({"task": get_task("loc").to_json(),
                                                       "embedding": {"model": "esm-extract"}}))
    head_embed_options(tmp / "h")


FA = ">a\nMKT\n>b\nMKVL\n"
NOT_HDF5 = "is not an HDF5 file, it begins '>a\\nMKT\\n': "
OWN_FOLDER = "a head directory is a folder of its own, which "
TWO_KINDS = "the parts hold per_residue and per_protein embeddings; the flat layout holds one kind: merge into "
PARTIAL_NAME = ("{tmp}/o.h5.partial: a name ending in .partial is an unfinished run's file (a run writes "
                "OUTPUT.partial and renames it OUTPUT once complete; info and merge take such a file for unfinished): "
                "name the output o.h5 (an interrupted embed or contacts run's o.h5.partial is finished by the same ")
BESIDE = ("{tmp}/e.h5: no such file (e.h5.partial beside it is the unfinished output of an embed or contacts run that "
          "was interrupted or is still running: ")
WRITTEN = ("is being written by another process (it holds the HDF5 file lock): wait for that run to end, or choose "
           "another ")
READ = ("is open in another process (it holds the HDF5 file lock): close it there (an EmbeddingsReader or h5py.File), "
        "or wait for that process to end, and ")
FASTA_OUT = {"in.fa": FA, "o.h5": ">a\nMKT\n"}  # (an -o that names a FASTA)
ON_DISK = dict(files={"in.fa": FA, "l.csv": "id,label\na,Nucleus\nb,Cytoplasm\n"})

# (the call, what a library caller is told, and the command line's words, as they were)
RESUMES = [
    # embed, contacts: an output or an interrupted run's work there
    (_then(_embed_into("o.h5"), embedded={"o.h5": FA}, **ON_DISK), "{tmp}/o.h5 exists: resume=True keeps its proteins "
     "and embeds what it lacks, force=True replaces it", "{tmp}/o.h5 exists: --resume keeps its proteins and embeds "
     "what it lacks, --force replaces it"),
    (_then(_embed_into("o.h5"), files={"in.fa": FA, "o.h5.partial": ""}), "{tmp}/o.h5.partial holds the work of an "
     "interrupted run: resume=True finishes it, force=True replaces it", "{tmp}/o.h5.partial holds the work of an "
     "interrupted run: --resume finishes it, --force replaces it"),
    (_then(_embed_into("o.h5", force=True), files=FASTA_OUT), "{tmp}/o.h5: " + NOT_HDF5 + "force=True replaces an "
     "earlier embed output only (remove this file yourself, or choose another output)", "{tmp}/o.h5: " + NOT_HDF5 +
     "--force replaces an earlier embed output only (remove this file yourself, or choose another -o)"),
    (_then(_embed_into("o.h5", resume=True), files=FASTA_OUT), "{tmp}/o.h5: " + NOT_HDF5 + "not an output of embed "
     "to resume (choose another output)", "{tmp}/o.h5: " + NOT_HDF5 + "not an output of embed to resume (choose "
     "another -o)"),
    (_then(_embed_into("o.h5"), dirs=("o.h5.partial",), **ON_DISK), "{tmp}/o.h5.partial: is a directory, expected an "
     "HDF5 file (move it away, or choose another output)", "{tmp}/o.h5.partial: is a directory, expected an HDF5 "
     "file (move it away, or choose another -o)"),
    (_then(_embed_into("in.fa"), **ON_DISK), "{tmp}/in.fa is also the input: writing it would replace the FASTA "
     "(choose another output)", "{tmp}/in.fa is also the input: writing it would replace the FASTA (choose another "
     "-o)"),
    (_then(_embed_into("o.h5.partial"), **ON_DISK), "output " + PARTIAL_NAME + "call with resume=True and "
     "output='o.h5')", "-o " + PARTIAL_NAME + "command with --resume and -o o.h5)"),
    (_then(_embed_locked_out, **ON_DISK), "{tmp}/o.h5: is the output of another protrans run (embed, contacts, merge, "
     "import-esm) that is running now: wait for it to end, or choose another output", "{tmp}/o.h5: is the output of "
     "another protrans run (embed, contacts, merge, import-esm) that is running now: wait for it to end, or choose "
     "another -o"),
    # (a file another process writes, holding HDF5's lock on it: embed, contacts, merge, import-esm)
    (_then(_held(_embed_into("o.h5")), **ON_DISK), "{tmp}/o.h5.partial: " + WRITTEN + "output", "{tmp}/o.h5.partial: "
     + WRITTEN + "-o"),
    (_then(_held(_contacts_into), **ON_DISK), "{tmp}/o.h5.partial: " + WRITTEN + "output", "{tmp}/o.h5.partial: "
     + WRITTEN + "-o"),
    (_then(_held(_merge_into("o.h5", force=True), "o.h5"), embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n"}),
     "{tmp}/o.h5: " + WRITTEN + "output", "{tmp}/o.h5: " + WRITTEN + "-o"),
    (_held(_import_esm_into, "o.h5"), "{tmp}/o.h5: " + WRITTEN + "output", "{tmp}/o.h5: " + WRITTEN + "-o"),
    # (a file another process reads: HDF5's shared lock refuses the resumed run's write)
    (_then(_read_by(_embed_into("o.h5", resume=True)), embedded={"o.h5": ">a\nMKT\n"}, **ON_DISK), "{tmp}/o.h5: "
     + READ + "call again", "{tmp}/o.h5: " + READ + "run the command again"),
    (_then(_as_partial(_read_by(_embed_into("o.h5", resume=True), "o.h5.partial")), embedded={"o.h5": ">a\nMKT\n"},
           **ON_DISK), "{tmp}/o.h5.partial: " + READ + "call again", "{tmp}/o.h5.partial: " + READ + "run the "
     "command again"),
    (_then(_contacts_into, embedded={"o.h5": FA}, **ON_DISK),
     "{tmp}/o.h5 exists: resume=True keeps its proteins and computes what it lacks, force=True replaces it",
     "{tmp}/o.h5 exists: --resume keeps its proteins and computes what it lacks, --force replaces it"),
    # merge (and import-esm's output_free), reading an unfinished file
    (_then(_merge_into("o.h5"), embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n", "o.h5": FA}), "{tmp}/o.h5: "
     "exists: give force=True to replace it", "{tmp}/o.h5: exists: give --force to replace it"),
    (_then(_merge_into("o.h5"), embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n"}, files={"o.h5.partial": ""}),
     "{tmp}/o.h5: o.h5.partial exists (a run into this output that did not finish): give force=True to replace it",
     "{tmp}/o.h5: o.h5.partial exists (a run into this output that did not finish): give --force to replace it"),
    (_then(_merge_into(layout="flat"), embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n"}), TWO_KINDS +
     "layout='grouped'", TWO_KINDS + "--layout grouped"),
    (_then(_merge_into(parts=("a.h5.partial", "b.h5")), files={"a.h5.partial": "", "b.h5": ""}), "{tmp}/a.h5.partial: "
     "an unfinished embed run's file: finish it first (the same embed call with resume=True), then merge its output",
     "{tmp}/a.h5.partial: an unfinished embed run's file: finish it first (the same embed command with --resume), "
     "then merge its output"),
    (_then(_call("export"), files={"e.h5.partial": ""}), BESIDE + "that run again with resume=True finishes it)",
     BESIDE + "that run's command with --resume finishes it)"),
    (_then(_export_of("vectors.h5", kind="per_residue"), embedded={"vectors.h5": FA}), "{tmp}/vectors.h5: holds "
     "per-protein vectors only: per-residue rows are not in it (embed with per_residue=True)", "{tmp}/vectors.h5: "
     "holds per-protein vectors only: per-residue rows are not in it (embed with --per-residue)"),
    # fit, a search, finetune, import-head, quickstart: a folder of their own
    (_then(_fit_into("h"), dirs=("h",), files={"h/x": "", **ON_DISK["files"]}), "{tmp}/h exists (force=True replaces "
     "it)", "{tmp}/h exists (--force replaces it)"),
    (_fit_into("/"), "out_dir='/': " + OWN_FOLDER + "force=True replaces whole; name one, e.g. out_dir='heads/ss3'",
     "-o /: " + OWN_FOLDER + "--force replaces whole; name one, e.g. -o heads/ss3"),
    (_then(_fit_into("l.csv"), **ON_DISK), "{tmp}/l.csv: is a file, not a head directory (choose another out_dir)",
     "{tmp}/l.csv: is a file, not a head directory (choose another -o)"),
    (_then(_fit_into("h", embeddings="h/v.h5", force=True), embedded={"h/v.h5": FA}, **ON_DISK), "{tmp}/h holds the "
     "input {tmp}/h/v.h5: force=True would delete it (choose another out_dir)", "{tmp}/h holds the input "
     "{tmp}/h/v.h5: --force would delete it (choose another -o)"),
    (_fit_state, "{tmp}/h.partial holds an interrupted fit: add resume=True to continue it, or force=True to start "
     "over", "{tmp}/h.partial holds an interrupted fit: add --resume to continue it, or --force to start over"),
    (_then(_search_into, dirs=("h.search",), embedded={"v.h5": FA}, **ON_DISK), "{tmp}/h.search holds an earlier "
     "search: resume=True continues it, force=True starts over", "{tmp}/h.search holds an earlier search: --resume "
     "continues it, --force starts over"),
    (_then(_finetune_into, files={"h/x": ""}, dirs=("h",)), "{tmp}/h exists (force=True replaces it)",
     "{tmp}/h exists (--force replaces it)"),
    (_then(_import_head_into, files={"c.pt": "", "h/x": ""}, dirs=("h",)), "{tmp}/h exists (force=True replaces it)",
     "{tmp}/h exists (--force replaces it)"),
    (_then(_quickstart_into("q"), files={"q/x": ""}, dirs=("q",)), "{tmp}/q exists and is not empty (use force=True "
     "to replace it)", "{tmp}/q exists and is not empty (use --force to replace it)"),
    (_then(_quickstart_into("q"), files={"q": ""}), "{tmp}/q: is a file, not a folder for the quickstart (choose "
     "another output)", "{tmp}/q: is a file, not a folder for the quickstart (choose another -o)"),
    # variants: its kept work, and the table's columns and positions
    (_then(_score(), files={"v.csv": "mutant\nK2G\n", "o.csv.partial/protrans-variants.json": "{}"},
           dirs=("o.csv.partial",)), "{tmp}/o.csv.partial holds the work of an interrupted run: resume=True goes on "
     "with it", "{tmp}/o.csv.partial holds the work of an interrupted run: --resume goes on with it"),
    (_then(_score(), files={"v.csv": "mutant\nK2G\n"}, dirs=("o.csv.partial",)), "{tmp}/o.csv.partial exists and is "
     "not the work of a protrans variants run: move it away, or choose another output", "{tmp}/o.csv.partial exists "
     "and is not the work of a protrans variants run: move it away, or choose another -o"),
    (_then(_score(), files={"v.csv": "mutant\nA24G\n"}), "{tmp}/v.csv:2: A24G: position 24 is outside the sequence "
     "(residues 1..3; offset gives the number", "{tmp}/v.csv:2: A24G: position 24 is outside the sequence (residues "
     "1..3; --offset gives the number"),
    (_then(_score(offset=2), files={"v.csv": "mutant\nK2G\n"}), "{tmp}/v.csv:2: K2G: residue 2 of the wild type is M, "
     "not K (check offset, the number", "{tmp}/v.csv:2: K2G: residue 2 of the wild type is M, not K (check --offset, "
     "the number"),
    (_then(_score(mutation_column="mut"), files={"v.csv": "mutant\nK2G\n"}), "{tmp}/v.csv: has no 'mut' column "
     "(columns: mutant; mutation_column names it)", "{tmp}/v.csv: has no 'mut' column (columns: mutant; "
     "--mutation-column names it)"),
    (_then(_score(truth_column="dms"), files={"v.csv": "mutant\nK2G\n"}), "{tmp}/v.csv: has no 'dms' column for "
     "truth_column", "{tmp}/v.csv: has no 'dms' column for --truth-column"),
    (_then(_score(truth_column="dms"), files={"v.csv": "mutant,dms\nM1G,high\n"}), "{tmp}/v.csv: its "
     "truth_column='dms' holds no numbers", "{tmp}/v.csv: its --truth-column 'dms' holds no numbers"),
    (_then(_score(fasta="in.fa"), files={"v.csv": "mutant\nM1G\n", "in.fa": FA}), "{tmp}/in.fa holds 2 sequences; a "
     "variants table has one wild type: pick it with record_id", "{tmp}/in.fa holds 2 sequences; a variants table "
     "has one wild type: pick it with --id"),
    # knn, export, predict: what a file holds
    (_then(_knn_of("residues.h5"), embedded={"residues.h5": FA, "vectors.h5": FA}), "{tmp}/residues.h5: query: holds "
     "per-residue embeddings only; knn compares per-protein vectors (embed with per_protein=True)",
     "{tmp}/residues.h5: query: holds per-residue embeddings only; knn compares per-protein vectors (embed with "
     "--per-protein, or without --per-residue)"),
    (_then(_knn_of("vectors.h5", layer=5), embedded={"vectors.h5": FA}), "{tmp}/vectors.h5: holds layer(s) -1 of 1 "
     "hidden states, 0 = -1, not layer 5 (choose one of those with layer)", "{tmp}/vectors.h5: holds layer(s) -1 of "
     "1 hidden states, 0 = -1, not layer 5 (choose one of those with --layer)"),
    (_esm_extract_head, "{tmp}/h was fit on embeddings imported from esm-extract without naming the model "
     "(import_esm's model=): give model=", "{tmp}/h was fit on embeddings imported from esm-extract without naming "
     "the model (import-esm -m): give --model"),
]




def _abandoned_write(path):
    """The error a write failing inside HDF5 gives (EmbeddingsWriter._abandon), its advice in the
    words of whoever reads it (`errors.option`)."""
    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsWriter

    writer = EmbeddingsWriter(path, kinds=(PER_PROTEIN,))
    writer.write("p", "p", "MKV", per_protein=np.ones(21, np.float32))
    return writer, writer._abandon(OSError("file write failed"))


@pytest.mark.parametrize("at_command_line", [False, True])
def test_merge_leaves_out_embeds_resume_advice_in_a_library_callers_words_too(tmp_path, monkeypatch, at_command_line):
    # (merge keeps nothing and takes no resume: it drops the writer's advice where it names
    # --resume, and let "call again with resume=True" through to a library caller)
    from protrans_cli import console, merge as merge_module
    from protrans_cli.errors import RuntimeFailure

    _made(tmp_path, embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n"})
    monkeypatch.setattr(console.state, "command_line", at_command_line)

    def failing(writer, part, skip, output):
        raise writer._abandon(OSError("file write failed"))

    monkeypatch.setattr(merge_module, "_copy_part", failing)
    with pytest.raises(RuntimeFailure) as caught:
        merge_module.merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
    said = str(caught.value)
    assert said.endswith("cannot write to it: file write failed; nothing was kept: free some space (or remove the "
                         "cause) and run the merge again") and "resume" not in said, said


@pytest.mark.parametrize("at_command_line", [False, True])
def test_esm_extract_leaves_out_embeds_resume_advice_in_a_library_callers_words_too(tmp_path, monkeypatch,
                                                                                     at_command_line):
    # (no protein computed, nothing kept: embed's advice to resume its file inside esm-extract's
    # working folder was dropped where it named --resume, not resume=True)
    from protrans_cli import console
    from protrans_cli.esm_extract import _nothing_kept

    monkeypatch.setattr(console.state, "command_line", at_command_line)
    (tmp_path / "work").mkdir()
    writer, failure = _abandoned_write(tmp_path / "work" / "embeddings.h5")
    _nothing_kept(failure, tmp_path / "work", str(tmp_path / "out"))
    said = str(failure)
    assert said == (f"{tmp_path / 'out'}: cannot write to it: file write failed; nothing was kept (no protein had "
                    "been computed): remove the cause and " + ("run it again" if at_command_line else "call it again"))


@pytest.mark.parametrize("kept", [None, "3 of 5 proteins computed are kept in WORK"])
def test_esm_extract_keeps_a_problem_that_names_a_file_in_its_working_folder(tmp_path, kept):
    # (the first part of the message, the problem itself, named a file inside the working folder:
    # it was dropped with the advice after it, leaving "; nothing was kept ..." or no problem at all)
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.esm_extract import _nothing_kept

    work, out = tmp_path / "work", str(tmp_path / "out")
    failure = RuntimeFailure(f"cannot write {work / 'embeddings.h5.partial'}: no room on the device; what was "
                             f"computed is kept in {work / 'embeddings.h5.partial'}; run the same command with --resume")
    _nothing_kept(failure, work, out, kept)
    said = str(failure)
    if kept is None:
        assert said == (f"cannot write {out}: no room on the device; nothing was kept (no protein had been "
                        "computed): free some space and call it again"), said
    else:
        assert said == f"cannot write {out}: no room on the device; {kept}; call again with resume=True", said
    # advice alone, no problem before it: the message starts with what is true, not "; "
    failure = RuntimeFailure(f"what was computed is kept in {work}; run the same command with --resume")
    _nothing_kept(failure, work, out)
    assert str(failure).startswith("nothing was kept (no protein had been computed): "), str(failure)


LEARNABLE = str(Path(__file__).parent / "data" / "train" / "learnable.txt")


def _train_into(output_dir, **kw):
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    def call(tmp):
        out = output_dir if output_dir.startswith("/dev") else str(tmp / output_dir)
        return train(TrainConfig(corpus=[LEARNABLE], output_dir=out, num_steps=2, max_length=32, global_batch_size=2,
                                 micro_batch_size=2, threads=1), **kw)
    return call


def _find_lr_into(output_dir):
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.lr_finder import find_lr

    return lambda tmp: find_lr(TrainConfig(corpus=[LEARNABLE], output_dir=str(tmp / output_dir), max_length=32,
                                           global_batch_size=2, micro_batch_size=2, threads=1), num_steps=2)


def _run_dir_held(call):
    """`call(tmp)` while the run directory {tmp}/r is locked as a run (or a range test) holds it:
    by an open of it of its own, which the call's lock in this process meets."""
    def run(tmp):
        (tmp / "r").mkdir()
        with _flocked(tmp / "r"):
            return call(tmp)
    return run


def _stopped_run(tmp):
    """A run directory as a run stopped before its last step leaves it: a complete checkpoint, no model."""
    (tmp / "r" / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp / "r" / "checkpoints" / "step_00000001" / "training_state.pt").write_bytes(b"")


def _model_of_stopped_run(tmp):
    from protrans_cli.models import resolve_model

    _stopped_run(tmp)
    resolve_model(str(tmp / "r"))


def _variants_plot_to_stdout(tmp):
    from protrans_cli.variants import VariantOptions, run_variants

    run_variants(tmp / "o.csv", VariantOptions(all_singles=True, plot="-"), sequence="MKT")


def _resume_other_layers(tmp):
    """_check_resumable of a file written with layers (-1,) by a run that asks for layer 1 of 3
    hidden states (stored as -2)."""
    import h5py

    from protrans_cli.io.h5 import _check_resumable

    with h5py.File(tmp / "o.h5", "w") as f:
        f.attrs.update(layout="grouped", kinds=["per_protein"], layers=[-1])
    _check_resumable(tmp / "o.h5", {"layers": [-2], "num_hidden_states": 3})


def _partial_gone(tmp):
    import os

    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsWriter

    writer = EmbeddingsWriter(tmp / "o.h5", kinds=(PER_PROTEIN,))
    writer.write("p", "p", "MKV", per_protein=np.ones(21, np.float32))
    os.unlink(writer.partial)
    writer.close(complete=True)


def _head_locked(tmp):
    from protrans_cli.heads.fit import head_in_use

    _raised(f"{tmp}/h.partial: " + head_in_use())


def _diverged_in(tmp, kept=True):
    """train's refusal of a step whose gradient is not finite (fp16: float16 overflowing), in a run
    directory with a checkpoint (`kept`) or none yet."""
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import _diverged

    if kept:
        _stopped_run(tmp)
    raise _diverged(TrainConfig(corpus=[LEARNABLE], output_dir=str(tmp / "r")), 7, float("inf"), fp16=not kept)


def _resume_into_another_run(tmp):
    """A checkpoint of one run resumed (resume=PATH) into an output_dir that holds a run of other settings."""
    import dataclasses
    import json
    import types

    import torch

    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import _check_resume_settings

    config = TrainConfig(corpus=[LEARNABLE], output_dir=str(tmp / "r"), family="bert", preset="tiny")
    (tmp / "r").mkdir()
    (tmp / "r" / "train_config.json").write_text(json.dumps(dataclasses.replace(config, seed=9).to_dict()))
    checkpoint = tmp / "o" / "checkpoints" / "step_00000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "training_state.pt").write_bytes(b"")
    (checkpoint / "train_config.json").write_text(json.dumps(config.to_dict()))
    _check_resume_settings(config, str(checkpoint), None, types.SimpleNamespace(device=torch.device("cpu")))


AS_HDF5 = "{tmp}/o.csv: the embeddings are written as HDF5, not CSV: name the file .h5; for CSV, write the .h5 and then "
UNCOMPRESSED = "{tmp}/o.h5.gz: an HDF5 file is written uncompressed ("
ANOTHER_RUN = "{tmp}/r already holds a run (step_00000001): add "
NOT_FINITE = "step 7: the gradient is not finite (loss inf), so the step was not applied and the run stopped; "
OVERFLOWS = ("the steps before it were skipped as float16 overflows, down to a loss scale below 1: float16 may overflow "
             "in this model's activations: ")
RUN_DIR_HELD = ("is in use by another training run or learning-rate range test (protrans train, train() or find_lr(): "
                "it holds the run directory's lock): wait for it to end, or choose another ")
OTHER_RUN = "{tmp}/r holds another run than {tmp}/o/checkpoints/step_00000001's (seed: 9 there, 0 here): "

# (the call, what a library caller is told, and the command line's words, as they were)
LEFTOVERS = [
    # the output's name, as the call gives it (output, plot, output_dir), not as -o or --plot
    (_then(_embed_into("o.h5.gz"), **ON_DISK), "output " + UNCOMPRESSED + "compression='gzip' compresses its arrays)",
     "-o " + UNCOMPRESSED + "--compression gzip compresses its arrays)"),
    (_then(lambda tmp: _contacts_to(tmp / "o.h5.gz")(tmp), **ON_DISK), "output " + UNCOMPRESSED +
     "compression='gzip' compresses its arrays)", "-o " + UNCOMPRESSED + "--compression gzip compresses its arrays)"),
    (_then(_embed_into("o.csv"), **ON_DISK), "output " + AS_HDF5 + "export('OUT.h5', 'o.csv')",
     "-o " + AS_HDF5 + "`protrans export OUT.h5 -o o.csv`"),
    (_then(_merge_into("o.csv"), embedded={"a.h5": ">a\nMKT\n", "b.h5": ">b\nMKVL\n"}), "output {tmp}/o.csv: the "
     "merged embeddings are written as HDF5, not CSV: name the file .h5", "-o {tmp}/o.csv: the merged embeddings are "
     "written as HDF5, not CSV: name the file .h5"),
    (lambda tmp: __import__("protrans_cli.quickstart").quickstart.run_quickstart("-"), "output -: the quickstart "
     "folder cannot go to stdout; give a path", "-o -: the quickstart folder cannot go to stdout; give a path"),
    (_variants_plot_to_stdout, "plot -: the heatmap cannot go to stdout", "--plot -: the heatmap cannot go to stdout"),
    # train, and what a stopped run is told
    (_train_into("/dev/null"), "/dev/null: is a device, pipe or socket: a run directory is written under a temporary "
     "name and renamed into place, which would replace it (give output_dir a path of your own)", "/dev/null: is a "
     "device, pipe or socket: a run directory is written under a temporary name and renamed into place, which would "
     "replace it (give -o a path of your own)"),
    (_then(_train_into("f"), files={"f": ""}), "{tmp}/f: is a file, not a run directory (choose another output_dir)",
     "{tmp}/f: is a file, not a run directory (choose another -o)"),
    (_then(_train_into("r"), files={"r/config.json": "{}"}, dirs=("r",)), "{tmp}/r already holds a model "
     "(config.json) and no checkpoint: a new run would overwrite it; choose another output_dir (or move the model "
     "away)", "{tmp}/r already holds a model (config.json) and no checkpoint: a new run would overwrite it; choose "
     "another -o (or move the model away)"),
    (lambda tmp: (_stopped_run(tmp), _train_into("r")(tmp)), ANOTHER_RUN + "resume=True to continue it, or choose "
     "another output_dir", ANOTHER_RUN + "--resume to continue it, or choose another -o"),
    (_diverged_in, NOT_FINITE + "continue from the last checkpoint, {tmp}/r/checkpoints/step_00000001, past this "
     "step's batch with resume=True, skip_data=6 (or more: PaLM skipped 200-500 batches around a spike), or "
     "skip_nonfinite N skips such steps, or start a new run from it with init_from and a lower lr, or check the corpus",
     NOT_FINITE + "continue from the last checkpoint, {tmp}/r/checkpoints/step_00000001, past this step's batch with "
     "--resume --skip-data 6 (or more: PaLM skipped 200-500 batches around a spike), or --skip-nonfinite N skips such "
     "steps, or start a new run from it with --init-from and a lower --lr, or check the corpus"),
    (lambda tmp: _diverged_in(tmp, kept=False), NOT_FINITE + "no checkpoint was written yet: lower lr or lengthen "
     "warmup_steps; " + OVERFLOWS + "precision='fp32' (or bf16 on a GPU that has it), or check the corpus",
     NOT_FINITE + "no checkpoint was written yet: lower --lr or lengthen --warmup-steps; " + OVERFLOWS + "--precision "
     "fp32 (or bf16 on a GPU that has it), or check the corpus"),
    (_resume_into_another_run, OTHER_RUN + "resuming from a checkpoint of another run (resume=PATH) continues it in a "
     "new directory (give an output_dir that holds no run)", OTHER_RUN + "--resume-from a checkpoint of another run "
     "continues it in a new directory (give -o one that holds no run)"),
    (_model_of_stopped_run, "{tmp}/r: a training run without its final model (it stopped before its last step): its "
     "latest checkpoint, {tmp}/r/checkpoints/step_00000001, is a model directory (give it as model), or "
     "train(TrainConfig(output_dir='{tmp}/r', ...), resume=True) finishes the run", "{tmp}/r: a training run without "
     "its final model (it stopped before its last step): its latest checkpoint, {tmp}/r/checkpoints/step_00000001, "
     "is a model directory (give it to -m), or `protrans train --resume -o {tmp}/r` finishes the run"),
    # a run directory another run or range test holds: either may be a library call's or the command line's
    (_run_dir_held(_train_into("r")), "{tmp}/r: " + RUN_DIR_HELD + "output_dir", "{tmp}/r: " + RUN_DIR_HELD + "-o"),
    (_run_dir_held(_find_lr_into("r")), "{tmp}/r: " + RUN_DIR_HELD + "output_dir", "{tmp}/r: " + RUN_DIR_HELD + "-o"),
    # the embeddings file, and a head's lock
    (_resume_other_layers, "{tmp}/o.h5: cannot resume: the file was written with layers=[-1], this run uses "
     "layers=[-2] (layer 1 = -2) (use the same settings", "{tmp}/o.h5: cannot resume: the file was written with "
     "layers=[-1], this run uses layers=[-2] (--layer 1 = -2) (use the same settings"),
    (_partial_gone, "{tmp}/o.h5: o.h5.partial was removed during the run: the embeddings written there are lost; "
     "call again", "{tmp}/o.h5: o.h5.partial was removed during the run: the embeddings written there are lost; run "
     "the command again"),
    (_head_locked, "{tmp}/h.partial: is in use by another protrans fit, search or finetune (it holds the lock of "
     "this head's unfinished state): wait for it to end, or choose another out_dir", "{tmp}/h.partial: is in use by "
     "another protrans fit, fit --search or finetune (it holds the lock of this head's unfinished state): wait for it "
     "to end, or choose another -o"),
]




@pytest.mark.parametrize("at_command_line", [False, True])
def test_a_stopped_train_run_and_its_damaged_checkpoint_are_told_in_the_callers_words(tmp_path, monkeypatch,
                                                                                       at_command_line):
    # (a library caller whose run stopped was told "continue with the same command and --resume",
    # and of a damaged checkpoint "continue from the one before with --resume-from ...")
    from protrans_cli import console
    from protrans_cli.training.checkpoint import _damaged
    from protrans_cli.training.loop import continue_advice

    monkeypatch.setattr(console.state, "command_line", at_command_line)
    assert continue_advice() == ("continue with the same command and --resume" if at_command_line
                                 else "continue by calling train again with resume=True")
    monkeypatch.chdir(tmp_path)
    _stopped_run(tmp_path)
    (tmp_path / "r" / "checkpoints" / "step_00000002").mkdir()
    said = str(_damaged(Path("r/checkpoints/step_00000002"), "training_state.pt", ValueError("truncated")))
    assert said.endswith("with --resume-from r/checkpoints/step_00000001, after moving this one away" if at_command_line
                         else "with resume='r/checkpoints/step_00000001', after moving this one away"), said


@pytest.mark.parametrize("at_command_line", [False, True])
def test_a_disk_without_room_for_a_new_embeddings_file_is_told_in_the_callers_words(tmp_path, monkeypatch,
                                                                                    at_command_line):
    # (a library caller was told "nothing was written; free some space and run the command again")
    import types

    from protrans_cli import console
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk
    from protrans_cli.io.h5 import EmbeddingsWriter

    monkeypatch.setattr(console.state, "command_line", at_command_line)
    monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=1 << 20, f_frsize=1, f_flag=0))
    with pytest.raises(RuntimeFailure) as caught:
        EmbeddingsWriter(tmp_path / "o.h5")
    said = str(caught.value)
    assert said.startswith(f"{tmp_path / 'o.h5'}: no room for a new output file: "), said
    assert said.endswith("; nothing was written; free some space and "
                         + ("run the command again" if at_command_line else "call again")), said
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("at_command_line", [False, True])
def test_a_closed_stdout_is_told_in_the_callers_words(monkeypatch, at_command_line):
    from protrans_cli import console
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import stdout_binary

    monkeypatch.setattr(console.state, "command_line", at_command_line)
    monkeypatch.setattr("sys.stdout", None)
    with pytest.raises(RuntimeFailure) as caught:
        stdout_binary()
    assert str(caught.value) == ("standard output is closed: give -o FILE" if at_command_line
                                 else "standard output is closed: give a file's path, not '-' or None")


NOWHERE = "is a link to {tmp}/nowhere, which does not exist"
PIPE = "is a named pipe, not "

# (the call, what a library caller is told, and the command line's words, as they were): a named
# pipe, a folder or a link to nothing where an output, its lock, its unfinished work or a run's file goes
SPECIAL = [
    (_then(_fit_into("h"), links={"h": "nowhere"}, **ON_DISK), "{tmp}/h: " + NOWHERE + " (make that folder, or "
     "choose another out_dir)", "{tmp}/h: " + NOWHERE + " (make that folder, or choose another -o)"),
    (_then(_fit_into("h"), fifos=("h.partial",), embedded={"v.h5": FA}, **ON_DISK), "{tmp}/h.partial: " + PIPE +
     "a folder: an unfinished run keeps its state in a folder of this name (move it away, or choose another out_dir)",
     "{tmp}/h.partial: " + PIPE + "a folder: an unfinished run keeps its state in a folder of this name (move it "
     "away, or choose another -o)"),
    (_then(_embed_into("o.h5"), fifos=(".o.h5.lock",), **ON_DISK), "{tmp}/.o.h5.lock: " + PIPE + "a lock file: "
     "protrans locks output='o.h5' with a file of this name (move it away, or choose another output)",
     "{tmp}/.o.h5.lock: " + PIPE + "a lock file: protrans locks -o o.h5 with a file of this name (move it away, or "
     "choose another -o)"),
    (_then(_embed_into("o.h5"), fifos=("o.h5.partial.untrusted",), **ON_DISK), "{tmp}/o.h5.partial.untrusted: " + PIPE
     + "a regular file: a run keeps a file of its own under this name, beside o.h5.partial (move it away, or choose "
     "another output)", "{tmp}/o.h5.partial.untrusted: " + PIPE + "a regular file: a run keeps a file of its own "
     "under this name, beside o.h5.partial (move it away, or choose another -o)"),
    (_then(_train_into("r"), dirs=("r",), fifos=("r/metrics.jsonl",)), "{tmp}/r/metrics.jsonl: " + PIPE + "a regular "
     "file: a run writes a file of this name (move it away, or choose another output_dir)", "{tmp}/r/metrics.jsonl: "
     + PIPE + "a regular file: a run writes a file of this name (move it away, or choose another -o)"),
    (_then(_train_into("r"), dirs=("r",), links={"r/checkpoints": "nowhere"}), "{tmp}/r/checkpoints: " + NOWHERE +
     ": a run keeps its checkpoints in a folder of this name (make that folder, move the link away, or choose "
     "another output_dir)", "{tmp}/r/checkpoints: " + NOWHERE + ": a run keeps its checkpoints in a folder of this "
     "name (make that folder, move the link away, or choose another -o)"),
    (_then(_score(), files={"v.csv": "mutant\nK2G\n"}, links={"o.csv.partial": "nowhere"}), "{tmp}/o.csv.partial "
     + NOWHERE + ", and is not the work of a protrans variants run: move it away, or choose another output",
     "{tmp}/o.csv.partial " + NOWHERE + ", and is not the work of a protrans variants run: move it away, or choose "
     "another -o"),
]


def _cases(**tables):
    """Every table's rows as one test's cases, named '<table>-<row>-<the message's first words>'."""
    return [pytest.param(*row, id=f"{name}-{i}-{re.sub(r'[^a-z_]+', '-', row[1][:30])}")
            for name, table in tables.items() for i, row in enumerate(table)]


@pytest.mark.parametrize("call, message, at_command_line",
                         _cases(sweep=SWEEP, resumes=RESUMES, leftovers=LEFTOVERS, special=SPECIAL))
def test_a_library_call_refused_is_told_its_settings_and_the_command_line_its_flags(
        tmp_path, monkeypatch, call, message, at_command_line):
    # (each said a flag to a library caller, which has no way to pass one: "--layer is a whole
    # number", "--device gpu: use auto, ...", "-o x.bin: name the file ... or say the format with --format";
    # resumes: "--resume finishes it", "give --force to replace it", "--offset gives the number of its first
    # residue"; leftovers: "-o x.h5.gz: ... (--compression gzip ...)", "`protrans train --resume -o R`";
    # special: "protrans locks -o o.h5 with a file of this name")
    from protrans_cli import console
    from protrans_cli.errors import ProtransError

    with pytest.raises(ProtransError) as caught:
        call(tmp_path)
    said = str(caught.value)
    assert said.startswith(message.format(tmp=tmp_path)) and not FLAG.search(said.replace(str(tmp_path), "")), said
    for path in tmp_path.iterdir():  # (what the call made before the refusal, made again below)
        path.unlink() if not path.is_dir() else shutil.rmtree(path)
    monkeypatch.setattr(console.state, "command_line", True)
    with pytest.raises(ProtransError) as caught:
        call(tmp_path)
    assert str(caught.value).startswith(at_command_line.format(tmp=tmp_path)), str(caught.value)


@pytest.mark.parametrize("call, message", [
    (lambda tmp: _translate_paths(3, tmp / "o.fa"),
     "fasta must be a path (one FASTA file, or '-' for stdin), got int 3"),
    (lambda tmp: _translate_paths([tmp / "in.fa"], tmp / "o.fa"), "fasta must be a path (one FASTA file, or '-' "
                                                                   "for stdin), got list ["),
    (lambda tmp: _translate_paths(tmp / "in.fa", 3),
     "output must be a path (one FASTA file, or '-' for stdout), got int 3"),
    (lambda tmp: _generate_to(3), "output must be a path (one FASTA file, or '-' for stdout), got int 3"),
    (lambda tmp: _generate_to([tmp / "o.fa"]), "output must be a path (one FASTA file, or '-' for stdout), got list ["),
])
def test_generate_and_translate_files_that_are_no_paths_are_named(tmp_path, call, message):
    """translate's fasta and output and run_generate's output given a number or a list were a
    TypeError from pathlib ("expected str, bytes or os.PathLike object, not int"), the keyword
    unnamed; now one UsageError naming it, before the model loads and with nothing written."""
    (tmp_path / "in.fa").write_text(">a\nMKT\n")
    with pytest.raises(UsageError) as caught:
        call(tmp_path)
    said = str(caught.value)
    assert said.startswith(message) and not FLAG.search(said), said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]


def _translate_paths(fasta, output):
    from protrans_cli.translate import TranslateOptions, translate

    return translate(fasta, output, TranslateOptions(to="3di", model="no/such/model"))


def _generate_to(output):
    from protrans_cli.generate import GenerateOptions, run_generate

    return run_generate(output, GenerateOptions(model="no/such/model", template="MK__"))
