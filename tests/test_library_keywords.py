"""A library call's range and choice refusals name the keyword or settings field the caller gave
(`max_length must be at least 1, got 0`, `long_policy must be one of ..., got 'cut'`), not a flag
it has no way to pass; the command's messages keep their flags (errors.option)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from protrans_cli.errors import UsageError

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
    (_call("predict", max_residues=0), "max_residues must be at least 1, got 0"),
    (_knn(k=0), "k must be at least 1, got 0"),
    (_knn(n_bootstrap=5), "n_bootstrap must be at least 10"),
    (_knn(query=None, fasta="q.fa", max_length=0), "max_length must be at least 1, got 0"),
    (_knn(query=None, fasta="q.fa", chunk_overlap=-1), "chunk_overlap must be at least 0, got -1"),
    (_knn(threads=0), "threads must be at least 1, got 0"),
    (_project(dims=4), "dims must be 2 or 3, got 4"),
    (_project(method="tsne", perplexity=0), "perplexity must be positive, got 0"),
    (_project(sample=3), "sample must be at least 4, got 3"),
    (_project(seed=-1), "seed must be at least 0, got -1"),
    (_bounds(neighbors=1), "neighbors must be at least 2, got 1"),
    (_bounds(neighbors=5, n=5), "neighbors must be at most the number of proteins less one (4), got 5"),
    (_bounds(min_dist=2), "min_dist must be between 0 and 1, got 2"),
    (_call("reduce", method="tsne", perplexity=10), "perplexity must be between 0 and the number of proteins (5)"),
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

