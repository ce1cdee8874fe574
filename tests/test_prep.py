"""`protrans prep`: golden files for the format and every rule, and the bulk path against a
per-record reference (read_fasta + normalise + " ".join) on random input."""

from __future__ import annotations

import bz2
import contextlib
import difflib
import gzip
import json
import lzma
import os
import random
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

from protrans_cli.corpus import CorpusOptions, build_corpus, in_validation, shard_path
from protrans_cli.errors import InputError, RuntimeFailure, UsageError
from protrans_cli.io.fasta import read_fasta
from protrans_cli.residues import SequenceRejected, looks_nucleotide, normalise

from conftest import sparse_file

DATA = Path(__file__).parent / "data" / "prep"


def assert_same_text(actual: bytes, expected: bytes) -> None:
    """Golden comparison with a readable diff; refuses to compare nothing."""
    assert expected, "empty golden file: nothing compared"
    if actual != expected:
        diff = difflib.unified_diff(expected.decode(errors="replace").splitlines(True),
                                    actual.decode(errors="replace").splitlines(True), "expected", "actual")
        pytest.fail("output differs from the golden file:\n" + "".join(diff))


def summary_rows(stderr: str) -> dict[str, str]:
    """The summary table prep prints on stderr: label -> figure."""
    return {cells[1].strip(): cells[2].strip() for line in stderr.splitlines()
            if len(cells := line.split("\u2502")) == 4}


def reference_corpus(paths, rare="x") -> bytes:
    """The corpus built record by record, the slow obvious way."""
    out = []
    for path in paths:
        for rec in read_fasta(path):
            try:
                seq = normalise(rec.sequence, rare=rare)
            except SequenceRejected:
                continue
            out.append(" ".join(seq).encode() + b"\n\n")
    return b"".join(out)


# ---------------------------------------------------------------------------------- golden files

def test_format_golden(run_cli):
    result = run_cli("prep", DATA / "format.fa")
    assert result.exit_code == 0, result.stderr
    assert_same_text(result.stdout_bytes, (DATA / "format.expected.txt").read_bytes())


@pytest.mark.parametrize("rare, golden", [("x", "normalisation.expected.txt"),
                                          ("keep", "normalisation.rare_keep.expected.txt")])
def test_every_normalisation_rule_golden(run_cli, rare, golden):
    result = run_cli("prep", DATA / "normalisation.fa", "--rare", rare)
    assert result.exit_code == 0, result.stderr
    assert_same_text(result.stdout_bytes, (DATA / golden).read_bytes())


def test_a_rejected_id_that_starts_with_a_quote_reads_back_from_the_rejects_tsv(run_cli, tmp_path):
    """Written as it stands, a TSV reader's quote handling (Python's csv, pandas, R) ate an id that
    starts with a quote, and the rows after it, up to the next quote."""
    import csv

    fasta = tmp_path / "q.fa"
    fasta.write_text('>"bad one\nMKJT\n>ok\nMKT\n>"empty\n>x\nMK"T\n')
    rejects = tmp_path / "rejects.tsv"
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--rejects", rejects)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(rejects.read_text().splitlines(), delimiter="\t"))
    assert [row[:2] for row in rows] == [["id", "reason"], ['"bad', "invalid_character"], ['"empty', "empty"],
                                         ["x", "invalid_character"]]
    assert all(len(row) == 5 for row in rows) and rows[3][2] == "invalid character '\"' at residue 3"


def test_every_rejection_reason_golden(run_cli, tmp_path):
    rejects = tmp_path / "rejects.tsv"
    stats = tmp_path / "stats.json"
    result = run_cli("prep", DATA / "rejects.fa", "--rejects", rejects, "--stats", stats)
    assert result.exit_code == 0, result.stderr
    assert_same_text(result.stdout_bytes, (DATA / "rejects.expected.txt").read_bytes())
    expected = (DATA / "rejects.expected.tsv").read_bytes().replace(b"REJECTS", str(DATA / "rejects.fa").encode())
    assert_same_text(rejects.read_bytes(), expected)
    summary = json.loads(stats.read_text())
    assert summary["rejected"] == {"empty": 3, "internal_stop": 2, "invalid_character": 3, "missing_id": 2,
                                   "too_short": 0, "too_long": 0, "duplicate": 0}
    assert summary["records_in"] == 12 and summary["proteins_out"] == 2
    assert "empty" in result.stderr and "internal_stop" in result.stderr  # the summary on stderr


def test_strict_names_file_record_and_line(run_cli, tmp_path):
    out = tmp_path / "corpus.txt"
    result = run_cli("prep", DATA / "rejects.fa", "--strict", "-o", out)
    assert result.exit_code == 1
    assert f"{DATA / 'rejects.fa'}:3, record 'j_residue': invalid character 'J' at residue 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "a temporary file was left behind"


def _fasta_with_invalid_records(bad) -> tuple[bytes, list[tuple[str, int]]]:
    """120 records of 1 to 4 lines, blank lines after some; those numbered in `bad` hold a J.
    The FASTA, and the (id, line of its header) of each record with a J."""
    lines, invalid = [], []
    for i in range(120):
        if i in bad:
            invalid.append((f"r{i}", len(lines) + 1))
        lines += [f">r{i}", *["MKTAYIAK" + ("J" if i in bad else "")] * (1 + i % 4), *[""] * (i % 3 == 0)]
    return ("\n".join(lines) + "\n").encode(), invalid


@pytest.mark.parametrize("compressed", [False, True], ids=["file", "gz"])
def test_rejects_and_strict_give_the_line_of_a_record_in_a_later_block_or_input(tmp_path, compressed):
    """The line of a record rejected in a later block of an input, and in the next input (counted
    from 1 again), is the line the file has it on: each block's lines are added up, and the next
    input starts over. (Every other test of the line fits in one block.)"""
    def write(name, data):
        path = tmp_path / (name + ".gz" if compressed else name)
        path.write_bytes(gzip.compress(data) if compressed else data)
        return path

    text, invalid = _fasta_with_invalid_records(range(3, 120, 7))
    paths = [write("a.fa", text), write("b.fa", text)]
    rejects = tmp_path / "r.tsv"
    build_corpus(paths, CorpusOptions(output=str(tmp_path / "c.txt"), rejects=str(rejects), block_bytes=1024))
    rows = [row.split("\t") for row in rejects.read_text().splitlines()[1:]]
    assert [(row[0], Path(row[3]).name, int(row[4])) for row in rows] == \
        [(rid, path.name, line) for path in paths for rid, line in invalid]
    clean = write("clean.fa", _fasta_with_invalid_records(())[0])
    text, [(rid, line)] = _fasta_with_invalid_records({110})
    late = write("late.fa", text)
    with pytest.raises(InputError) as info:
        build_corpus([clean, late], CorpusOptions(output=str(tmp_path / "c.txt"), strict=True, block_bytes=1024))
    assert f"{late}:{line}, record '{rid}': invalid character 'J'" in str(info.value)


def test_stdin_and_multiple_inputs(run_cli):
    fmt = (DATA / "format.fa").read_bytes()
    result = run_cli("prep", DATA / "normalisation.fa", "-", DATA / "format.fa", input=fmt)
    assert result.exit_code == 0, result.stderr
    golden_fmt = (DATA / "format.expected.txt").read_bytes()
    assert_same_text(result.stdout_bytes,
                     (DATA / "normalisation.expected.txt").read_bytes() + golden_fmt + golden_fmt)


def _pzstd(data: bytes) -> bytes:
    """What pzstd (zstd's parallel compressor) writes: a skippable frame holding the size of the
    zstd frame after it."""
    import struct

    import zstandard

    frame = zstandard.ZstdCompressor().compress(data)
    return struct.pack("<III", 0x184D2A50, 4, len(frame)) + frame


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, "zstd", _pzstd])
def test_compressed_input_detected_from_bytes(run_cli, tmp_path, compress):
    if compress == "zstd":
        import zstandard

        compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "no_extension"  # detection must not rely on the name
    path.write_bytes(compress((DATA / "normalisation.fa").read_bytes()))
    result = run_cli("prep", path)
    assert result.exit_code == 0, result.stderr
    assert_same_text(result.stdout_bytes, (DATA / "normalisation.expected.txt").read_bytes())


@pytest.mark.parametrize("name", ["corpus.txt.gz", "corpus.txt.GZ"])  # (the extension in any case)
def test_gzip_output_by_extension(run_cli, tmp_path, name):
    out = tmp_path / name
    result = run_cli("prep", DATA / "format.fa", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert_same_text(gzip.decompress(out.read_bytes()), (DATA / "format.expected.txt").read_bytes())
    assert result.stdout_bytes == b""


def test_edge_case_fixtures(run_cli, tmp_path):
    ok = run_cli("prep", DATA / "bom_and_leading_blank_lines.fa")
    assert ok.exit_code == 0 and ok.stdout_bytes == b"M K T\n\nA C\n\n"
    nofinal = run_cli("prep", DATA / "no_final_newline.fa")
    assert nofinal.exit_code == 0 and nofinal.stdout_bytes == b"M K T\n\nA C\n\n"
    nul = run_cli("prep", DATA / "nul_byte.fa")
    assert nul.exit_code == 0 and nul.stdout_bytes == b"M K T\n\nA C\n\n"
    assert "invalid_character" in nul.stderr
    empty = run_cli("prep", DATA / "empty.fa")
    assert empty.exit_code == 0 and empty.stdout_bytes == b""
    assert "no FASTA records" in empty.stderr
    # records, but every one left out: said in a line of its own, not only in the table's counts
    (tmp_path / "none_kept.fa").write_text(">a\n\n>b\n*\n")
    none_kept = run_cli("prep", tmp_path / "none_kept.fa")
    assert none_kept.exit_code == 0 and none_kept.stdout_bytes == b""
    assert "no protein written: all 2 records were left out" in none_kept.stderr


def test_not_fasta_is_input_error(run_cli):
    result = run_cli("prep", DATA / "not_fasta.fa")
    assert result.exit_code == 1
    assert f"{DATA / 'not_fasta.fa'}:3" in result.stderr and "not FASTA" in result.stderr



def test_utf16_or_hdf5_fasta_is_named(run_cli, tmp_path):
    """A UTF-16 FASTA (PowerShell's `>`, Notepad's "Unicode") or an HDF5 file given as the FASTA got
    the bare "not FASTA" of a file of anything else: the error says what the file is, through
    each of prep's readers (plain file, compressed, stdin) and embed's."""
    import gzip

    wide = tmp_path / "wide.fa"
    wide.write_bytes(">a\nMKTAYIAK\n".encode("utf-16"))
    (tmp_path / "wide.fa.gz").write_bytes(gzip.compress(wide.read_bytes()))
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", DATA.parent / "embed" / "small.fa", "-m", "onehot", "-o", h5).exit_code == 0
    for args, input in (([wide], None), ([tmp_path / "wide.fa.gz"], None), (["-"], wide.read_bytes()),
                        ([wide, "-j", "2", "--tmp-dir", tmp_path], None)):
        r = run_cli("prep", *args, "-o", tmp_path / "c.txt", input=input)
        assert r.exit_code == 1 and ":1: not FASTA" in r.stderr and "the file is UTF-16 text" in r.stderr
        assert r.stderr.count("\n") == 1 and not (tmp_path / "c.txt").exists()
    r = run_cli("embed", wide, "-m", "onehot", "-o", tmp_path / "w.h5")
    assert r.exit_code == 1 and "the file is UTF-16 text" in r.stderr
    for command in (["prep", h5, "-o", tmp_path / "c.txt"], ["embed", h5, "-m", "onehot", "-o", tmp_path / "h.h5"]):
        r = run_cli(*command)
        assert r.exit_code == 1 and f"{h5}:1: not FASTA" in r.stderr and "the file is HDF5" in r.stderr


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_fasta_without_a_byte_order_mark_is_named(run_cli, tmp_path, codec):
    """UTF-16 without its byte-order mark (Python's utf-16-le codec): little-endian begins with
    `>` too, and prep wrote an empty corpus with exit 0 ("left out: invalid_character"), embed said
    "the header holds a NUL byte (a damaged file?)" (exit 0, nothing embedded, under
    --invalid-policy skip); big-endian was "the file is binary"."""
    import gzip

    wide = tmp_path / "wide.fa"
    wide.write_bytes(">P1 desc\nMKTAYIAK\n>P2\nMKV\n".encode(codec))
    (tmp_path / "wide.fa.gz").write_bytes(gzip.compress(wide.read_bytes()))
    said = ("the file is UTF-16 text without a byte-order mark (convert it to UTF-8 first, iconv -f "
            f"{'UTF-16LE' if codec.endswith('le') else 'UTF-16BE'} -t UTF-8)")
    for args, input in (([wide], None), ([tmp_path / "wide.fa.gz"], None), (["-"], wide.read_bytes())):
        r = run_cli("prep", *args, "-o", tmp_path / "c.txt", input=input)
        assert r.exit_code == 1 and ":1: not FASTA: " + said in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "c.txt").exists()
    r = run_cli("embed", wide, "-m", "onehot", "-o", tmp_path / "w.h5", "--invalid-policy", "skip")
    assert r.exit_code == 1 and f"{wide}:1: not FASTA: " + said in r.stderr and not (tmp_path / "w.h5").exists()

@pytest.mark.parametrize("content, said", [
    (b"HEADER    HYDROLASE    01-JAN-00   1ABC\nATOM      1  N   MET A   1\n", "the file is a PDB structure"),
    (b"data_1ABC\n#\n_entry.id 1ABC\n", "the file is an mmCIF structure"),
    (b"LOCUS       NC_000913    4641652 bp    DNA\n", "the file is a GenBank record"),
    (b"ID   ALBU_HUMAN   Reviewed;   609 AA.\n", "the file is a UniProt or EMBL flat file"),
    (b"@read1\nACGT\n+\nIIII\n", "the file looks like FASTQ ('@' read headers)"),
    (b"# STOCKHOLM 1.0\na MKT-A\n//\n", "the file is a Stockholm alignment"),
    (b"#6\t1\n>101\nMKTAYI\n>hit\nMKtaTA-YI\n", "the file is an A3M alignment that begins with a '#' line (ColabFold, "
     "HH-suite): remove that line (sed 1d FILE) and its rows read as FASTA"),
    (b"input, dssp3, dssp8, disorder, cb513_mask\nM K, C C, C C, 1.0 1.0, 1.0 1.0\n",
     "the file looks like a table (CSV or TSV): a label file's sequences are written as FASTA by protrans labels"),
    (b"M K T A Y I A K\nM K V L\n", "the file is a pretraining corpus (one spaced protein a line)"),
])
def test_a_look_alike_given_as_the_fasta_is_named(run_cli, tmp_path, content, said):
    """A structure, a GenBank or FASTQ file, an alignment, a label table or prep's own corpus given
    as the FASTA got the bare "not FASTA": the error says what the file is, from prep (one
    process and -j 2) and embed."""
    path = tmp_path / "given.fa"
    path.write_bytes(content)
    for command in (["prep", path, "-o", tmp_path / "c.txt"], ["prep", path, "-j", "2", "--tmp-dir", tmp_path,
                                                              "-o", tmp_path / "c.txt"],
                    ["embed", path, "-m", "onehot", "-o", tmp_path / "e.h5"]):
        r = run_cli(*command)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"{path}:1: not FASTA: expected a '>' header line before sequence data; {said}" in r.stderr, r.stderr
        assert not (tmp_path / "c.txt").exists() and not (tmp_path / "e.h5").exists()


def test_a_zip_or_tar_archive_given_as_the_fasta_says_to_extract_it(run_cli, tmp_path):
    """FLIP's splits and DeepLoc ship as zip archives, and a .tar.gz is common: given as the FASTA
    they got the bare "not FASTA" (as if the file held anything else). One line saying the file is
    an archive and how to extract it, from prep (plain file, stdin, -j 2), embed, labels and variants."""
    import io
    import tarfile
    import zipfile

    fasta = b">a\nMKTAYIAK\n"
    zipped, tarred = tmp_path / "splits.zip", tmp_path / "set.tar.gz"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("sequences.fasta", fasta)
    with tarfile.open(tarred, "w:gz") as archive:
        member = tarfile.TarInfo("sequences.fasta")
        member.size = len(fasta)
        archive.addfile(member, io.BytesIO(fasta))
    for archive, kind, how in ((zipped, "zip", "unzip -p ARCHIVE.zip MEMBER > FILE"),
                               (tarred, "tar", "tar -xf ARCHIVE MEMBER")):
        said = f"the file is a {kind} archive (extract the file to read: {how};"
        _every_reader_says(run_cli, tmp_path, archive, said, [archive, "-j", "2", "--tmp-dir", tmp_path])


def test_a_pytorch_checkpoint_given_for_a_text_file_is_named_as_one(run_cli, tmp_path):
    """A .pt given for the FASTA, the corpus, the labels, their --sequences, the --ids or the
    variants table was "a zip archive (extract the file to read: unzip -p ...)": nothing in it is to
    be extracted. Every reader names it a PyTorch checkpoint, plain, gzipped or on stdin: the line
    readers (embed, train, --sequences) from the file's first bytes, as prep reads them, not its
    first line, which a 0x0a of the header cuts before the member name (m.pt's `m/data.pkl` is 10
    bytes long; a legacy pickle's magic holds one)."""
    import torch

    said = "the file is a PyTorch checkpoint (model weights or tensors, such as torch.save writes)"
    torch.save({"w": torch.zeros(3), "b": torch.ones(2)}, tmp_path / "m.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "m.pt.gz").write_bytes(gzip.compress((tmp_path / "m.pt").read_bytes()))
    assert b"\n" in (tmp_path / "m.pt").read_bytes()[:30] and (tmp_path / "old.pt").read_bytes()[3:4] == b"\n"
    embeddings, table = tmp_path / "ref.h5", tmp_path / "labels.csv"
    assert run_cli("embed", DATA.parent / "embed" / "small.fa", "-m", "onehot", "-o", embeddings).exit_code == 0
    table.write_text("id,label\nP1,a\n")
    for path in (tmp_path / "m.pt", tmp_path / "old.pt", tmp_path / "m.pt.gz"):
        _every_reader_says(run_cli, tmp_path, path, said, [path, "-j", "2", "--tmp-dir", tmp_path])
        r = run_cli("embed", "-", "-m", "onehot", "-o", tmp_path / "e.h5", input=path.read_bytes())
        assert r.exit_code == 1 and f"<stdin>:1: not FASTA: expected a '>' header line before sequence data; {said}\n" \
            in r.stderr, r.stderr
        r = run_cli("train", "--corpus", path, "-o", tmp_path / "run", "--num-steps", 2, "--max-length", 32,
                    "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
        assert r.exit_code == 1 and f"{path}:1: not a corpus: {said}; the corpus is the text" in r.stderr, r.stderr
        r = run_cli("export", embeddings, "--ids", path, "-o", tmp_path / "o.tsv")
        assert r.exit_code == 1 and f"{path}: is not a list of ids or a FASTA file: {said}\n" in r.stderr, r.stderr
        r = run_cli("labels", table, "--sequences", path, "-o", tmp_path / "l.fa")  # (fit's --mask reader too)
        assert r.exit_code == 1 and f"{path}:1: not FASTA: expected a '>' header line before sequence data; {said}\n" \
            in r.stderr, r.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "o.tsv").exists()
        assert not (tmp_path / "l.fa").exists()


def _every_reader_says(run_cli, tmp_path, path, said: str, *prep_runs) -> None:
    """prep (the file, stdin and each of `prep_runs`' argument lists), embed, labels, variants and
    export --ids refuse `path` in one line holding `said`, and write nothing (the last three in the
    same words: export's were "not a list of ids or a FASTA file; the file is ...")."""
    for args, input in (([path], None), (["-"], path.read_bytes()), *((run, None) for run in prep_runs)):
        r = run_cli("prep", *args, "-o", tmp_path / "c.txt", input=input)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
        assert ":1: not FASTA: expected a '>' header line before sequence data; " + said in r.stderr, r.stderr
        assert not (tmp_path / "c.txt").exists()
    r = run_cli("embed", path, "-m", "onehot", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and f"{path}:1: not FASTA" in r.stderr and said in r.stderr, r.stderr
    r = run_cli("labels", path, "-o", tmp_path / "l.fa")
    assert r.exit_code == 1 and f"{path}: is not a label file: {said}" in r.stderr, r.stderr
    r = run_cli("variants", path, "--sequence", "MKTAYIAK", "-o", tmp_path / "v.csv")
    assert r.exit_code == 1 and f"{path}: is not a variants table: {said}" in r.stderr, r.stderr
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "v.csv").exists()
    import numpy as np

    from protrans_cli.io.h5 import EmbeddingsWriter

    with EmbeddingsWriter(tmp_path / "x.h5", kinds=("per_protein",), attrs={"model": "tiny"}) as w:
        w.write("a", "a", "MKTAYIAK", per_protein=np.zeros(4, dtype=np.float32))
    r = run_cli("export", tmp_path / "x.h5", "--ids", path, "-o", tmp_path / "x.tsv")
    assert r.exit_code == 1 and f"{path}: is not a list of ids or a FASTA file: {said}" in r.stderr, r.stderr
    assert not (tmp_path / "x.tsv").exists()


def test_missing_input_is_input_error(run_cli, tmp_path):
    result = run_cli("prep", tmp_path / "nope.fa")
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_a_symlink_loop_as_input_is_said_to_be_one(run_cli, tmp_path):
    """`os.path.exists` is False for a symbolic link loop (ELOOP), and prep said "no such file" of
    a name that `ls` lists. It names the loop; embed, which read it through open_input, said
    "Too many levels of symbolic links" and now says the same as prep."""
    (tmp_path / "a.fa").symlink_to(tmp_path / "b.fa")
    (tmp_path / "b.fa").symlink_to(tmp_path / "a.fa")
    loop = "a symbolic link loop (too many levels of symbolic links)"
    result = run_cli("prep", tmp_path / "a.fa", "-o", tmp_path / "c.txt")
    assert result.exit_code == 1 and result.stderr == f"protrans: error: {tmp_path / 'a.fa'}: {loop}\n", result.stderr
    result = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "-o", tmp_path / "e.h5")
    assert result.exit_code == 1 and result.stderr == f"protrans: error: {tmp_path / 'a.fa'}: {loop}\n", result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "b.fa"]
    # (a missing file is still no such file)
    result = run_cli("prep", tmp_path / "nope.fa", "-o", tmp_path / "c.txt")
    assert result.stderr == f"protrans: error: {tmp_path / 'nope.fa'}: no such file\n", result.stderr


def test_a_link_to_a_missing_file_says_where_it_points(run_cli, tmp_path):
    """A symbolic link whose target is gone (a data folder moved or unmounted) was "no such file"
    of a name `ls` lists; every command that reads the input now says where the link points."""
    (tmp_path / "in.fa").symlink_to("/gone/uniref50.fa")
    (tmp_path / "in.h5").symlink_to("/gone/proteome.h5")
    said = "a symbolic link to /gone/{}, which does not exist"
    for command, name in ((["prep", "-o", tmp_path / "c.txt"], "uniref50.fa"),
                          (["embed", "-m", "onehot", "-o", tmp_path / "e.h5"], "uniref50.fa"),
                          (["info"], "proteome.h5"), (["merge", "-o", tmp_path / "m.h5"], "proteome.h5")):
        given = tmp_path / ("in.fa" if name.endswith(".fa") else "in.h5")
        result = run_cli(command[0], given, *command[1:])
        assert result.exit_code == 1, (command, result.stderr)
        assert result.stderr == f"protrans: error: {given}: {said.format(name)}\n", (command, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "in.h5"]


def test_missing_output_directory_is_a_usage_error(run_cli, tmp_path):
    # as for every command: exit 2, naming the directory; nothing is created
    result = run_cli("prep", DATA / "format.fa", "-o", tmp_path / "nodir" / "corpus.txt")
    assert result.exit_code == 2 and "nodir: output directory does not exist" in result.stderr
    assert not (tmp_path / "nodir").exists()


@pytest.mark.parametrize("text, size", [("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("1K", 1024),
                                        ("4kb", 4096), ("1T", 1 << 40), ("1000", 1000), (" 2 m ", 2 << 20)])
def test_shard_sizes_are_read_in_powers_of_1024(text, size):
    """docs/prep.md: --shard-size 500M, 2G; K/M/G/T are powers of 1024. Powers of 1000 passed every
    test (no test read a size: the shard tests cut by their own bytes)."""
    from protrans_cli.cli.prep import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("args", [
    ["--shards", "2"],                                   # sharding to stdout
    ["--shards", "2", "-o", "/dev/stdout"],              # ...named: it wrote files /dev/stdout.00000.txt
    ["--shard-size", "1K", "-o", "/dev/stdout"],
    ["--long", "crop"],                                  # crop without a window size
    ["--valid-fraction", "0.1"],                         # no --valid-output
    ["--min-length", "0"],
    ["--max-length", "3", "--min-length", "5"],
    ["--shards", "2", "--shard-size", "1M", "-o", "x.txt"],
    ["--shard-size", "lots", "-o", "x.txt"],
    ["-j", "0"],
    ["-o", "x.txt", "--valid-fraction", "0.5", "--valid-output", "x.txt"],  # one file for two outputs
    ["-o", "x.txt", "--valid-fraction", "1", "--valid-output", "/dev/null"],  # [0, 1): no training protein left
    ["-o", "x.txt", "--valid-output", "/dev/null"],      # a validation file without --valid-fraction: empty
    ["--dedup", "--tmp-dir", "/nonexistent/scratch", "-o", "x.txt"],  # (exit 1 as a failure of the run)
])
def test_contradictory_options_are_usage_errors(run_cli, tmp_path, args):
    args = [str(tmp_path / a) if a == "x.txt" else a for a in args]
    result = run_cli("prep", DATA / "format.fa", *args)
    assert result.exit_code == 2, (args, result.stderr)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "0", "-o", "x.txt"], "--shard-size must be at least one byte, got '0'"),
    (["--shard-size", "0.4", "-o", "x.txt"], "--shard-size must be at least one byte, got '0.4'"),
    (["-", "-", "-o", "x.txt"], "stdin (-) can be read only once"),
    (["--shards", "0", "-o", "x.txt"], "--shards must be at least 1, got 0"),
])
def test_a_shard_size_under_a_byte_and_stdin_twice_are_named(run_cli, tmp_path, args, message):
    args = [str(tmp_path / a) if a == "x.txt" else a for a in args]
    result = run_cli("prep", DATA / "format.fa", *args, input=">a\nMKT\n")
    assert result.exit_code == 2 and result.stderr.strip() == f"protrans: error: {message}", result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("inputs, options, message", [
    ([], {}, "no input: give one or more FASTA files, or - for stdin"),
    (None, {"long": "drop"}, "long must be one of skip, crop, got 'drop'"),
    (None, {"seed": -1}, "seed must be at least 0, got -1"),
    (None, {"shard_size": 0}, "shard_size must be positive, got 0"),
    (None, {"shuffle_bytes": 100}, "shuffle_bytes must be at least 1024"),
    (None, {"block_bytes": 0}, "block_bytes must be at least 1024"),
])
def test_build_corpus_refuses_options_the_cli_never_passes_before_any_output(tmp_path, inputs, options, message):
    """The library (docs/prep.md: build_corpus with CorpusOptions) checks what click checks for
    the command: a UsageError naming the option, and no output file."""
    from protrans_cli.errors import UsageError

    out = tmp_path / "c.txt"
    with pytest.raises(UsageError) as info:
        build_corpus([DATA / "format.fa"] if inputs is None else inputs, CorpusOptions(output=str(out), **options))
    assert str(info.value) == message
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- corpus building

def test_length_filters_and_crop(tmp_path):
    out = tmp_path / "c.txt"
    rejects = tmp_path / "r.tsv"
    stats = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=3, max_length=5,
                                                              long="crop", rejects=str(rejects)))
    # long12 -> MKTAY IAKQR (the 2-residue tail is below --min-length); ok8 -> MKTAY IAK
    assert out.read_bytes() == (b"M K T A Y\n\n"
                                b"M K T A Y\nI A K Q R\n\n"
                                b"M K T A Y\nI A K\n\n")
    assert (stats.proteins_out, stats.lines_out, stats.residues_out) == (3, 5, 23)
    assert stats.rejected["too_short"] == 1
    assert "short2\ttoo_short" in rejects.read_text()

    skip = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=3, max_length=8))
    assert out.read_bytes() == b"M K T A Y\n\nM K T A Y I A K\n\n"
    assert skip.rejected["too_long"] == 1 and skip.rejected["too_short"] == 1
    assert skip.length_percentiles()["p100"] == 8



def test_a_max_length_equal_to_the_min_length_keeps_proteins_of_exactly_that_length(tmp_path):
    """--max-length may equal --min-length (only --max-length below it is refused): skip keeps the
    proteins of exactly that length, crop cuts windows of it and drops every shorter tail."""
    out = tmp_path / "c.txt"
    skip = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=5, max_length=5))
    assert out.read_bytes() == b"M K T A Y\n\n"
    assert (skip.rejected["too_short"], skip.rejected["too_long"]) == (1, 2)
    crop = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=5, max_length=5,
                                                             long="crop"))
    # ok5 -> MKTAY; long12 -> MKTAY IAKQR (QI dropped); ok8 -> MKTAY (IAK dropped)
    assert out.read_bytes() == b"M K T A Y\n\nM K T A Y\nI A K Q R\n\nM K T A Y\n\n"
    assert (crop.lines_out, crop.residues_out, crop.crop_dropped) == (4, 20, 5)


def test_numpy_scalars_in_corpus_options_are_the_numbers_they_stand_for(tmp_path):
    """CorpusOptions took np.int64 (expect_options accepts numpy's scalars), but seed=np.int64(3)
    was refused as "--seed must be a whole number", and --stats of a numpy
    max_length was "TypeError: Object of type int64 is not JSON serializable"."""
    import numpy as np

    out, stats_file = tmp_path / "c.txt", tmp_path / "s.json"
    plain = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=3, max_length=5, long="crop",
                                                              shuffle=True, seed=3))
    kept = out.read_bytes()
    stats = build_corpus([DATA / "lengths.fa"], CorpusOptions(output=str(out), min_length=np.int64(3),
                                                              max_length=np.int64(5), long="crop", shuffle=np.True_,
                                                              seed=np.int64(3), stats=str(stats_file)))
    assert out.read_bytes() == kept and stats.lines_out == plain.lines_out
    assert json.loads(stats_file.read_text())["proteins_out"] == plain.proteins_out

def test_dedup_keeps_first_occurrence(tmp_path, run_cli):
    out = tmp_path / "c.txt"
    stats = build_corpus([DATA / "duplicates.fa"], CorpusOptions(output=str(out), dedup=True))
    assert_same_text(out.read_bytes(), (DATA / "duplicates.expected.txt").read_bytes())
    assert stats.rejected["duplicate"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "dedup scratch left behind"
    # stdin is spooled to disk for the two passes
    result = run_cli("prep", "-", "--dedup", input=(DATA / "duplicates.fa").read_bytes())
    assert result.exit_code == 0, result.stderr
    assert_same_text(result.stdout_bytes, (DATA / "duplicates.expected.txt").read_bytes())



@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_failed_dedup_run_closes_its_scratch_files(tmp_path):
    """A bad second input: the scratch folder is deleted, and its partition files must be closed
    too (a notebook keeps the traceback, and open deleted files keep their disk space)."""
    bad = tmp_path / "bad.fa.gz"
    bad.write_bytes(gzip.compress(b">x\nMKV\n" * 200)[:-20])  # cut short
    (tmp_path / "scratch").mkdir()
    with pytest.raises(InputError) as caught:
        build_corpus([DATA / "duplicates.fa", bad], CorpusOptions(output=str(tmp_path / "c.txt"), dedup=True,
                                                                  tmp_dir=str(tmp_path / "scratch")))
    assert caught.value.__traceback__ is not None  # held, as sys.last_traceback holds it
    open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.islink(f"/proc/self/fd/{fd}")]
    assert not [f for f in open_files if "protrans-dedup" in f], open_files

def _random_fasta(path: Path, n: int, seed: int, dirty: bool = True) -> None:
    rng = random.Random(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    out = []
    for i in range(n):
        length = rng.choice([0, 1, 5, 30, 61, 200, 700, 3000]) if dirty else rng.randint(1, 500)
        seq = "".join(rng.choice(letters) for _ in range(length))
        if dirty and rng.random() < 0.4:
            pos = rng.randrange(length + 1)
            seq = seq[:pos] + rng.choice("uozbUZOBxX-. \t*J1#acde") + seq[pos:]
        if dirty and rng.random() < 0.2:
            seq += "*"
        if rng.random() < 0.1 and i % 7 == 0:
            seq = (seq * 2)[: max(len(seq), 1)]
        width = rng.choice([10, 60, 80, 0])
        body = "\n".join(seq[k:k + width] for k in range(0, len(seq), width)) if width else seq
        eol = "\r\n" if dirty and rng.random() < 0.1 else "\n"
        header = f">rec{i} some description > with gt"
        out.append(header + eol + body.replace("\n", eol) + eol + ("\n" if rng.random() < 0.05 else ""))
    path.write_text("".join(out))


@pytest.mark.parametrize("block_bytes, threads", [(1024, 1), (5000, 2), (4 << 20, 1)])
@pytest.mark.parametrize("rare", ["x", "keep"])
def test_bulk_path_matches_per_record_reference(tmp_path, block_bytes, threads, rare):
    fasta = tmp_path / "random.fa"
    _random_fasta(fasta, 400, seed=block_bytes + len(rare))
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), rare=rare, block_bytes=block_bytes,
                                                threads=threads))
    expected = reference_corpus([fasta], rare=rare)
    assert_same_text(out.read_bytes(), expected)
    assert stats.records_in == 400
    assert stats.proteins_out == expected.count(b"\n\n")
    assert stats.proteins_out + stats.rejected_total == 400
    assert stats.residues_out == len(expected.replace(b" ", b"").replace(b"\n", b""))


@pytest.mark.parametrize("block_bytes, threads", [(1024, 1), (1500, 1), (4 << 20, 1), (2000, 2)])
def test_clean_blocks_measure_their_records_from_the_line_layout(tmp_path, block_bytes, threads):
    """A block of plain upper-case sequences is measured from its header and line positions, not
    by a scan of the joined sequences: every layout a FASTA has (wrapped, unwrapped, blank lines,
    a header with no sequence line, amid the file or as its last line, with or without a final
    newline) gives the per-record corpus, its counts, and the line of every empty record."""
    rng = random.Random(block_bytes)
    parts, empty_lines, line = [], [], 1
    for i in range(300):
        length = rng.choice([0, 1, 2, 59, 60, 61, 120, 333])
        seq = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWYX") for _ in range(length))
        width = rng.choice([1, 7, 60, 0])
        lines = [seq[k:k + width] for k in range(0, len(seq), width)] if width else ([seq] if seq else [])
        if lines and rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), "")  # a blank line inside or after the sequence
        if not length:
            empty_lines.append((f"r{i}", line))
        parts.append("\n".join([f">r{i} desc"] + lines) + "\n")
        line += 1 + len(lines)
    parts.append(">last")  # a last header with no sequence line and no final newline
    empty_lines.append(("last", line))
    fasta = tmp_path / "clean.fa"
    fasta.write_text("".join(parts))
    out, rejects = tmp_path / "c.txt", tmp_path / "r.tsv"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), rejects=str(rejects), block_bytes=block_bytes,
                                                threads=threads))
    expected = reference_corpus([fasta])
    assert_same_text(out.read_bytes(), expected)
    assert stats.records_in == 301
    assert stats.proteins_out == expected.count(b"\n\n") == 301 - len(empty_lines)
    assert stats.residues_out == len(expected.replace(b" ", b"").replace(b"\n", b""))
    rows = [row.split("\t") for row in rejects.read_text().splitlines()[1:]]
    assert [(row[0], row[1], int(row[4])) for row in rows] == [(rid, "empty", n) for rid, n in empty_lines]
    lengths = sorted(len(doc.split()) for doc in expected.decode().split("\n\n")[:-1])
    percentiles = stats.length_percentiles()
    assert (percentiles["p0"], percentiles["p50"], percentiles["p100"]) == \
        (lengths[0], lengths[-(-len(lengths) // 2) - 1], lengths[-1])


@pytest.mark.parametrize("block_bytes, threads", [(1024, 1), (4 << 20, 2)])
def test_nucleotide_records_are_counted_as_the_per_record_rule_does(tmp_path, run_cli, block_bytes, threads):
    """A genome's .fna given to prep: A, C, G, T and N are amino acids too, so a DNA or RNA FASTA
    became a training corpus without a word. Written as before, but counted (stats
    `nucleotide_like`) as residues.looks_nucleotide counts each record (29 and 30 letters, RNA, lower
    case, gaps, a final '*', a protein letter at the end), and said in one warning."""
    rng = random.Random(block_bytes)
    records, expected = [], 0
    for i in range(300):
        length = rng.choice([5, 29, 30, 31, 80, 400])
        seq = "".join(rng.choice("ACGT" if rng.random() < 0.6 else "ACGUN") for _ in range(length))
        if rng.random() < 0.3:
            pos = rng.randrange(length + 1)
            seq = seq[:pos] + rng.choice("MWacgt-.") + seq[pos:]
        if rng.random() < 0.1:
            seq += rng.choice("*E")
        if rng.random() < 0.05:
            seq = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"
        records.append(f">n{i} desc\n{seq}\n")
        expected += looks_nucleotide(normalise(seq, rare="keep"))
    fasta = tmp_path / "genes.fa"
    fasta.write_text("".join(records))
    stats = build_corpus([fasta], CorpusOptions(output=str(tmp_path / "c.txt"), block_bytes=block_bytes,
                                                threads=threads))
    assert 50 < expected < 300 and stats.nucleotide_like == expected and stats.proteins_out == 300
    result = run_cli("prep", fasta, "-o", tmp_path / "d.txt", "--stats", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "s.json").read_text())["nucleotide_like"] == expected
    assert result.stderr.count("as nucleotide sequences do") == 1
    assert (f"protrans: warning: {expected} of 300 protein(s) written hold only the letters A, C, G, T, U and N (at "
            f"least 30 residues), as nucleotide sequences do: {', '.join(stats.nucleotide_ids)} and {expected - 3} "
            "more. A model trained on them learns them as amino acids; translate DNA or RNA to proteins first\n"
            ) in result.stderr
    proteins = run_cli("prep", DATA / "normalisation.fa", "-o", tmp_path / "p.txt")
    assert proteins.exit_code == 0 and "nucleotide" not in proteins.stderr.replace(str(tmp_path), ""), proteins.stderr


def test_nucleotide_records_left_out_are_not_counted_as_written(tmp_path):
    """stats `nucleotide_like` counts the proteins written (docs/prep.md): a DNA record left out
    as too long, or as a duplicate, is neither counted nor named in the warning."""
    fasta = tmp_path / "genes.fa"
    fasta.write_text(">kept\n" + "ACGT" * 8 + "\n>long\n" + "ACGT" * 10 + "\n>again\n" + "ACGT" * 8 + "\n"
                     ">protein\nMKTAYIAKQR\n")
    stats = build_corpus([fasta], CorpusOptions(output=str(tmp_path / "c.txt"), max_length=35, dedup=True))
    assert (stats.rejected["too_long"], stats.rejected["duplicate"], stats.proteins_out) == (1, 1, 2)
    assert (stats.nucleotide_like, stats.nucleotide_ids) == (1, ["kept"])


@pytest.mark.parametrize("threads", [1, 2])
def test_input_bytes_same_for_file_and_stream_without_final_newline(tmp_path, threads):
    # A stream's last block once gained the newline it lacked and counted it as input.
    text = b"".join(b">r%d\n%s\n" % (i, b"ACDEFGHIK" * 20) for i in range(30)) + b">c\nWWWWY"
    plain, packed = tmp_path / "in.fa", tmp_path / "in.fa.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))
    outputs, sizes = [], []
    for source in (plain, packed):
        out = tmp_path / f"{source.name}.txt"
        stats = build_corpus([source], CorpusOptions(output=str(out), block_bytes=1024, threads=threads))
        outputs.append(out.read_bytes())
        sizes.append(stats.input_bytes)
    assert sizes == [len(text), len(text)]
    assert outputs[0] == outputs[1] and outputs[0].endswith(b"\n\nW W W W Y\n\n")
    assert outputs[0].count(b"\n\n") == 31


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("blank", [0, 1500])
def test_record_larger_than_a_block(tmp_path, packed, blank):
    """A record of many blocks, from a plain file or a stream (gzip, stdin: read a block at a
    time, the record's end searched for in the new bytes only), after blank lines that fill more
    than the first block: every record whole."""
    fasta = tmp_path / ("big.fa.gz" if packed else "big.fa")
    seq = "MKTAYIAKQR" * 2000
    text = "\n" * blank + ">small\nMK\n>big\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n>tail\nAC\n"
    fasta.write_bytes(gzip.compress(text.encode()) if packed else text.encode())
    out = tmp_path / "c.txt"
    build_corpus([fasta], CorpusOptions(output=str(out), block_bytes=1024))
    assert out.read_bytes() == b"M K\n\n" + " ".join(seq).encode() + b"\n\nA C\n\n"


def test_the_validation_residues_counted_are_those_the_validation_file_holds(tmp_path, run_cli):
    """--stats' valid_residues (and the summary's "of which validation ... residues") count the
    validation proteins' residues only; counting every protein's passed the other tests. Under
    --long crop, the residues written: not those of a dropped last window."""
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 200, seed=5, dirty=False)
    train, valid = tmp_path / "t.txt", tmp_path / "v.txt"

    def residues(text: bytes) -> int:
        return len(text.replace(b" ", b"").replace(b"\n", b""))

    for crop in ({}, {"max_length": 100, "min_length": 30, "long": "crop"}):
        stats = build_corpus([fasta], CorpusOptions(output=str(train), valid_fraction=0.3, valid_output=str(valid),
                                                    **crop))
        assert 0 < stats.valid_residues == residues(valid.read_bytes()) < stats.residues_out
        assert stats.residues_out - stats.valid_residues == residues(train.read_bytes())
        assert stats.to_dict()["valid_residues"] == stats.valid_residues
        assert (stats.crop_dropped > 0) == bool(crop)
    result = run_cli("prep", fasta, "-o", train, "--valid-fraction", "0.3", "--valid-output", valid)
    assert result.exit_code == 0, result.stderr
    text = valid.read_bytes()
    proteins = text.count(b"\n\n")
    assert summary_rows(result.stderr)["of which validation"] == f"{proteins:,} proteins, {residues(text):,} residues"
    assert "of which validation" not in run_cli("prep", fasta, "-o", train).stderr


def test_validation_split_is_deterministic(tmp_path):
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 600, seed=3, dirty=False)
    runs = []
    for block_bytes, threads in [(4 << 20, 1), (2000, 2)]:
        train, valid = tmp_path / f"t{block_bytes}.txt", tmp_path / f"v{block_bytes}.txt"
        stats = build_corpus([fasta], CorpusOptions(output=str(train), valid_fraction=0.2, valid_output=str(valid),
                                                    block_bytes=block_bytes, threads=threads))
        runs.append((train.read_bytes(), valid.read_bytes()))
        assert stats.valid_proteins == valid.read_bytes().count(b"\n\n")
    assert runs[0] == runs[1]
    train_text, valid_text = runs[0]
    # every protein lands in exactly one split, and the split is the hash of its id
    assert sorted((train_text + valid_text).split(b"\n\n")) == sorted(reference_corpus([fasta]).split(b"\n\n"))
    expected_valid = [r.id for r in read_fasta(fasta) if in_validation(r.id, 0.2)]
    assert valid_text.count(b"\n\n") == len(expected_valid)
    assert 0.1 * 600 < len(expected_valid) < 0.3 * 600
    # the hash is fixed: a change would move proteins between splits across versions
    # (pinned values: comparing the function with itself, as this line did, pinned nothing)
    assert [in_validation(f"P{i}", 0.5) for i in range(16)] == [
        True, False, True, True, False, False, False, False, False, True, False, True, True, True, False, True]
    assert in_validation("UniRef50_P12345", 0.999999) and not in_validation("UniRef50_P12345", 0.0)


def test_shards_round_robin_and_by_size(tmp_path):
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 300, seed=5, dirty=False)
    whole = reference_corpus([fasta])
    docs = whole.split(b"\n\n")[:-1]

    stats = build_corpus([fasta], CorpusOptions(output=str(tmp_path / "rr.txt.gz"), num_shards=3, block_bytes=4000))
    paths = [shard_path(tmp_path / "rr.txt.gz", k) for k in range(3)]
    assert [p.name for p in paths] == ["rr.00000.txt.gz", "rr.00001.txt.gz", "rr.00002.txt.gz"]
    assert stats.outputs == [str(p) for p in paths]
    shards = [gzip.decompress(p.read_bytes()).split(b"\n\n")[:-1] for p in paths]
    assert sorted(d for s in shards for d in s) == sorted(docs)
    counts = [len(s) for s in shards]
    assert max(counts) - min(counts) <= 1, counts

    limit = 5000
    build_corpus([fasta], CorpusOptions(output=str(tmp_path / "sz.txt"), shard_size=limit, block_bytes=3000))
    sized = sorted(tmp_path.glob("sz.*.txt"))
    assert len(sized) >= len(whole) // limit
    texts = [p.read_bytes() for p in sized]
    assert b"".join(texts) == whole  # in order, split only between proteins
    assert all(t.endswith(b"\n\n") for t in texts)
    assert all(len(t) <= limit or t.count(b"\n\n") == 1 for t in texts)


def test_shards_deal_the_training_proteins_round_robin_beside_a_validation_split(tmp_path):
    """docs/prep.md: protein k of the run goes to shard k mod N, shard sizes within one protein;
    with --valid-fraction, k counts the training proteins only (those the split leaves), across
    blocks, in input order."""
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 300, seed=7, dirty=False)
    docs = reference_corpus([fasta]).split(b"\n\n")[:-1]
    ids = [r.id for r in read_fasta(fasta)]
    train = [doc for ident, doc in zip(ids, docs) if not in_validation(ident, 0.3)]
    assert 150 < len(train) < 270
    build_corpus([fasta], CorpusOptions(output=str(tmp_path / "s.txt"), num_shards=3, valid_fraction=0.3,
                                        valid_output=str(tmp_path / "v.txt"), block_bytes=4000))
    shards = [shard_path(tmp_path / "s.txt", k).read_bytes().split(b"\n\n")[:-1] for k in range(3)]
    assert shards == [train[k::3] for k in range(3)]


def test_many_shards_hold_bounded_write_buffers(tmp_path, monkeypatch):
    # --shards N keeps N files open: with 1 MiB of write buffer each, 256 shards held 256 MiB of
    # corpus text (peak RSS 301 MB on a 134 MB input, 55 MB with 2 shards), against prep's
    # "peak memory does not depend on the input size"
    import protrans_cli.io.files as files

    buffers = []
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", buffering=-1, *args, **kwargs):
        if "w" in mode:
            buffers.append(buffering)
        return real_fdopen(fd, mode, buffering, *args, **kwargs)

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 300, seed=5, dirty=False)
    build_corpus([fasta], CorpusOptions(output=str(tmp_path / "s.txt"), num_shards=256, block_bytes=4000))
    monkeypatch.undo()
    assert len(buffers) == 256
    assert sum(buffers) <= 16 << 20, sum(buffers)
    shards = [shard_path(tmp_path / "s.txt", k).read_bytes() for k in range(256)]
    assert sorted(d for s in shards for d in s.split(b"\n\n")[:-1]) == \
        sorted(reference_corpus([fasta]).split(b"\n\n")[:-1])


def test_atomic_output_on_failure(tmp_path, run_cli):
    out = tmp_path / "corpus.txt"
    out.write_bytes(b"previous corpus\n")
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b"".join(b">ok%d\nMKTAYIAKQR\n" % i for i in range(3000)) + b">bad\nMKJ\n")
    result = run_cli("prep", bad, "--strict", "-o", out, "--shards", "1", "--rejects", tmp_path / "r.tsv")
    assert result.exit_code == 1
    assert out.read_bytes() == b"previous corpus\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa", "corpus.txt"]
    # shards: none of them appear
    result = run_cli("prep", bad, "--strict", "-o", tmp_path / "s.txt", "--shards", "4")
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa", "corpus.txt"]


def test_stats_json(tmp_path, run_cli):
    stats_path = tmp_path / "s.json"
    result = run_cli("prep", DATA / "normalisation.fa", "-o", tmp_path / "c.txt", "--stats", stats_path)
    assert result.exit_code == 0, result.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["records_in"] == 11 and stats["proteins_out"] == 11
    assert stats["rare_to_x"] == 8
    assert stats["residues_out"] == 10 + 6 * 6 + 6 * 2 + 2 + 4
    assert stats["length_percentiles"] == {"p0": 2, "p5": 2, "p25": 6, "p50": 6, "p75": 6, "p95": 10, "p100": 10}
    assert stats["rejected_total"] == 0


def test_length_stats_describe_every_line_written_whatever_the_blocks(tmp_path):
    """--stats' length_percentiles and mean_length (and the summary's p0/.../p100) are those of
    every line written: counted across blocks (the lengths of a block no longer than the ones
    before were put in place of theirs), with lengths of 65,536 residues and more (counted apart)
    summed across blocks too, and under --long crop a protein of exactly --max-length counted as
    its one line. Each of the three passed every test."""
    import math

    rng = random.Random(4)
    lengths = [rng.randint(3, 40) for _ in range(300)]
    huge = list(lengths)
    huge[50] = huge[250] = 70_000  # one in an early block, one in a late one
    for name, sizes in (("l.fa", lengths), ("huge.fa", huge)):
        (tmp_path / name).write_text("".join(f">p{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(n))}\n"
                                             for i, n in enumerate(sizes)))
    assert lengths.count(12) > 3  # --max-length 12 below: proteins of exactly one window
    runs = (("huge.fa", {}), ("l.fa", {}), ("l.fa", {"max_length": 12, "long": "crop", "min_length": 3}))
    for k, (name, extra) in enumerate(runs):
        out = tmp_path / f"c{k}.txt"
        stats = build_corpus([tmp_path / name], CorpusOptions(output=str(out), block_bytes=2048, threads=1, **extra))
        written = sorted((len(line) + 1) // 2 for line in out.read_text().splitlines() if line)
        assert len(written) == stats.lines_out
        expected = {f"p{q}": written[max(1, math.ceil(q / 100 * len(written))) - 1]  # nearest rank
                    for q in (0, 5, 25, 50, 75, 95, 100)}
        assert stats.length_percentiles() == expected
        assert stats.to_dict()["mean_length"] == round(sum(written) / len(written), 2)


def test_library_errors():
    with pytest.raises(UsageError):
        build_corpus([DATA / "format.fa"], CorpusOptions(rare="drop"))
    with pytest.raises(InputError):
        build_corpus([DATA / "not_fasta.fa"], CorpusOptions(output=os.devnull))


# ---------------------------------------------------------------------------------- process-level

def test_prep_never_imports_heavy_modules(tmp_path):
    from conftest import heavy_imports_of

    out = heavy_imports_of([["prep", "--help"], ["prep", str(DATA / "format.fa"), "-o", str(tmp_path / "c.txt")]],
                           ("torch", "transformers", "h5py"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.txt").read_bytes() == (DATA / "format.expected.txt").read_bytes()


def test_broken_pipe_is_quiet(tmp_path):
    fasta = tmp_path / "many.fa"
    fasta.write_bytes(b"".join(b">p%d\n%s\n" % (i, b"MKTAYIAKQR" * 30) for i in range(20000)))
    # PIPESTATUS: the exit code of protrans itself, 141 as documented (click alone gives 1).
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m protrans_cli prep {fasta} | head -n 1;"
                           " echo rc=${PIPESTATUS[0]}"], capture_output=True, text=True)
    assert proc.stdout == " ".join("MKTAYIAKQR" * 30) + "\nrc=141\n"
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("extra", [{}, {"num_shards": 2}, {"shard_size": 3000}])
def test_compressed_output_identical_for_any_threads(tmp_path, extra):
    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 300, seed=11)
    results = []
    for threads in (1, 2):
        d = tmp_path / f"j{threads}"
        d.mkdir()
        stats = build_corpus([fasta], CorpusOptions(output=str(d / "c.txt.gz"), valid_fraction=0.3,
                                                    valid_output=str(d / "v.txt.zst"), threads=threads,
                                                    block_bytes=2048, **extra))
        files = sorted(p.name for p in d.iterdir())
        assert len(stats.outputs) == len(files)
        results.append({name: (d / name).read_bytes() for name in files})
    assert results[0] == results[1]
    import zstandard

    text = b"".join(gzip.decompress(v) for k, v in results[0].items() if k.endswith(".gz"))
    import io

    valid = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(results[0]["v.txt.zst"]),
                                                       read_across_frames=True).read()
    assert sorted((text + valid).split(b"\n\n")) == sorted(reference_corpus([fasta]).split(b"\n\n"))


def test_empty_compressed_output_is_valid(tmp_path):
    """An empty corpus or validation file named .gz is an empty gzip member, which zcat reads (a
    file of no bytes, as Python's gzip.decompress reads it, is "unexpected end of file" to zcat)."""
    out, valid = tmp_path / "c.txt.gz", tmp_path / "v.txt.gz"
    stats = build_corpus([DATA / "empty.fa"], CorpusOptions(output=str(out), threads=2, valid_fraction=0.5,
                                                            valid_output=str(valid)))
    assert stats.records_in == 0
    for path in (out, valid):
        member = zlib.decompressobj(wbits=31)  # (one gzip member, its trailer included)
        assert member.decompress(path.read_bytes()) == b"" and member.eof, path.name


@pytest.mark.parametrize("rare, kept", [("x", 2), ("keep", 3)])
def test_dedup_compares_normalised_sequences(tmp_path, rare, kept):
    fasta = tmp_path / "d.fa"
    fasta.write_bytes(b">a\nMUK\n>b\nmxk*\n>c\nMK\n")  # a and b are both MXK once U becomes X
    stats = build_corpus([fasta], CorpusOptions(output=str(tmp_path / "c.txt"), rare=rare, dedup=True))
    assert stats.proteins_out == kept and stats.rejected["duplicate"] == 3 - kept


def test_dedup_drops_only_identical_sequences(tmp_path):
    """Exact dedup: sequences one residue apart, at the first or the last, or one a prefix of the
    other, are all kept; only the repeat of one of them is dropped."""
    fasta = tmp_path / "d.fa"
    fasta.write_text(">a\nMKTAY\n>b\nAKTAY\n>c\nMKTAW\n>d\nMKTA\n>e\nMKTAYI\n>f\nAKTAY\n")
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), dedup=True))
    assert out.read_bytes() == b"M K T A Y\n\nA K T A Y\n\nM K T A W\n\nM K T A\n\nM K T A Y I\n\n"
    assert stats.rejected["duplicate"] == 1


def _die_on_third_block(block, cfg, extra):
    if block.index == 2:
        os._exit(9)
    from protrans_cli.corpus import _process_block

    return _process_block(block, cfg, extra)


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path):
    from protrans_cli.corpus import _BlockConfig, _iter_blocks, _run_blocks
    from protrans_cli.errors import RuntimeFailure

    fasta = tmp_path / "r.fa"
    _random_fasta(fasta, 200, seed=2, dirty=False)
    cfg = _BlockConfig(rare="x", min_length=1, max_length=None, long="skip", valid_fraction=0.0,
                       num_shards=1, want_rejects=False, digests=False)
    jobs = ((b, None) for b in _iter_blocks([str(fasta)], 2048))
    with pytest.raises(RuntimeFailure, match="worker process died"):
        for _ in _run_blocks(jobs, _die_on_third_block, (cfg,), 2):
            pass


def test_dedup_across_partitions_blocks_and_drop_ranges(tmp_path, monkeypatch):
    from protrans_cli import corpus

    monkeypatch.setattr(corpus._Dedup, "RANGE", 7)  # many drop-list files, blocks straddling them
    rng = random.Random(4)
    pool = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(5, 40))) for _ in range(60)]
    fasta = tmp_path / "dups.fa"
    fasta.write_text("".join(f">r{i}\n{rng.choice(pool)}\n" for i in range(500)))
    seen, expected = set(), []
    for rec in read_fasta(fasta):
        if rec.sequence not in seen:
            seen.add(rec.sequence)
            expected.append(" ".join(rec.sequence).encode() + b"\n\n")
    for threads in (1, 2):
        out = tmp_path / f"c{threads}.txt"
        stats = build_corpus([fasta], CorpusOptions(output=str(out), dedup=True, block_bytes=1024, threads=threads))
        assert_same_text(out.read_bytes(), b"".join(expected))
        assert stats.rejected["duplicate"] == 500 - len(expected)


def test_output_that_is_an_input_is_refused_and_the_fasta_kept(tmp_path, run_cli):
    # `prep x.fa -o x.fa` used to succeed and replace the FASTA with its corpus.
    fasta = tmp_path / "x.fa"
    fasta.write_bytes(b">a\nMKV\n")
    for flag in ("-o", "--rejects"):
        r = run_cli("prep", fasta, flag, str(tmp_path / "." / "x.fa"))
        assert r.exit_code == 2 and "is also an input" in r.stderr
        assert fasta.read_bytes() == b">a\nMKV\n"
    assert run_cli("prep", fasta, "-o", tmp_path / "x.txt").exit_code == 0


def test_sigterm_exits_143_and_leaves_no_temporary_files(tmp_path):
    # A scheduler's SIGTERM killed prep on the spot, leaving .tmp outputs and the dedup scratch dir.
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "prep", "-", "--dedup", "-o", str(tmp_path / "c.txt")],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b">a\nMKV\n" * 1000)  # stdin stays open: prep is still reading
    proc.stdin.flush()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.decode().strip().splitlines()[-1] == "protrans: error: terminated"
    assert list(tmp_path.iterdir()) == []


def test_a_terminal_that_hangs_up_stops_prep_as_sigterm_does_leaving_no_temporary_files(tmp_path):
    """A dropped ssh connection's SIGHUP (to prep and its workers: the shell sends it to the whole
    job) killed prep on the spot, leaving its .tmp output, the dedup scratch folder and the
    workers' hand-over folder: exit 129 now, and nothing left."""
    from conftest import hung_up

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b">a\nMKV\n" * 1000)  # the pipe stays open: prep is still reading
        code = hung_up([sys.executable, "-m", "protrans_cli", "prep", "-", "--dedup", "-j", "2", "-o",
                        str(tmp_path / "c.txt"), "--tmp-dir", str(scratch)],
                       lambda: len(list(scratch.iterdir())) >= 2, stdin=read_end)  # (its scratch folders made)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert code == 129
    assert [p.name for p in tmp_path.iterdir()] == ["scratch"] and not list(scratch.iterdir())


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hang_up_sent_to_prep_and_its_workers_mid_run_is_one_line_from_the_main_process(tmp_path):
    """A hang-up reaches the whole job (the shell sends SIGHUP to its process group), prep's -j
    workers busy with blocks too: they die of it (as of SIGTERM; they ignore Ctrl-C, which the main
    process handles), and the main process alone says so (exit 129, one "hung up" line, not "a
    worker process died ...", no worker's traceback) and removes its temporary output and the
    workers' hand-over folder. (Pins what it does: it was right already.)"""
    import threading
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "prep", "-", "-j", "2", "-o",
                             str(tmp_path / "c.txt"), "--tmp-dir", str(scratch)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # (a process group of its own: a job)
    stop = threading.Event()

    def feed():  # (records all along: the workers have blocks in hand when the signal comes)
        chunk = b"".join(b">r%d\nMKVLAAGGHHTTWWYYKKRREEDDNNQQ%d\n" % (i, i) for i in range(20000))
        with contextlib.suppress(OSError):
            while not stop.is_set():
                proc.stdin.write(chunk)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.time() + 30
        while not list(scratch.iterdir()) and time.time() < deadline:  # (the workers' hand-over folder made)
            time.sleep(0.05)
        time.sleep(0.5)  # (blocks going through the workers)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGHUP)
        err = proc.stderr.read().decode()
        proc.wait(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        feeder.join(timeout=5)
        proc.stderr.close()
    assert proc.returncode == 129, err
    assert err.strip().splitlines() == ["protrans: error: hung up"], err
    assert [p.name for p in tmp_path.iterdir()] == ["scratch"] and not list(scratch.iterdir())


class _AppStop(Exception):
    """What an application's own stop handler raises (test below)."""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
@pytest.mark.parametrize("to", ["group", "main"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)],
                         ids=["SIGTERM", "SIGHUP"])
def test_a_library_callers_own_stop_handler_runs_in_the_main_process_alone(tmp_path, monkeypatch, signum, to):
    """An application calling build_corpus(threads=2) with its own SIGTERM or SIGHUP handler: prep's
    forked workers inherited it, and it ran in each of them (its side effects, its exception's
    traceback), for a signal sent to the whole job and for each proc.terminate() with which the main
    process stops its workers. The workers die of the signal now; the main process alone runs the
    handler and, stopped by it, ends its workers and leaves no temporary output."""
    from protrans_cli import corpus

    fasta = _many(tmp_path / "in.fa", 300)
    marker = tmp_path / "handled"
    workers = []

    def handler(number, frame):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        raise _AppStop

    real = corpus._collect

    def collect(running, pending):
        if not workers:  # (the first reply awaited: every worker has started and has blocks in hand)
            workers.extend(proc for proc, _ in running)
            if to == "group":  # (as a shell's hang-up or a scheduler's SIGTERM reaches the whole job)
                for proc in workers:
                    os.kill(proc.pid, signum)
                for proc in workers:
                    proc.join(timeout=2)
            os.kill(os.getpid(), signum)
        return real(running, pending)

    monkeypatch.setattr(corpus, "_collect", collect)
    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(_AppStop):
            build_corpus([fasta], CorpusOptions(output=tmp_path / "c.txt", threads=2, block_bytes=1024,
                                                progress=False))
    finally:
        signal.signal(signum, previous)
    assert marker.read_text().split() == [str(os.getpid())]
    stopped_by = signum if to == "group" else signal.SIGTERM  # (terminate()'s)
    assert len(workers) == 2 and [proc.exitcode for proc in workers] == [-stopped_by] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handled", "in.fa"]


def test_a_second_sigterm_during_the_cleanup_of_the_first_lets_it_finish(tmp_path, monkeypatch):
    """A hang-up's SIGHUP comes twice (from the kernel and from the shell), a scheduler may send
    SIGTERM twice: the second, raised in its turn, broke off the first one's cleanup where it was,
    and prep left its dedup folder in --tmp-dir (seen once in the full suite, under load, from the
    pseudo-terminal hang-up test). A repeat while the stop unwinds is noted, not raised."""
    import shutil

    from protrans_cli import corpus
    from protrans_cli.cli import main

    fasta = _many(tmp_path / "in.fa", 200)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    real_rmtree = shutil.rmtree
    sent = []

    def first_stop(self):
        os.kill(os.getpid(), signal.SIGTERM)

    def rmtree(path, *args, **kwargs):
        if not sent:  # (the repeat, as the cleanup begins)
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(corpus._Dedup, "finish", first_stop)
    monkeypatch.setattr(corpus.shutil, "rmtree", rmtree)
    with pytest.raises(SystemExit) as stopped:
        main(["prep", str(fasta), "--dedup", "--tmp-dir", str(scratch), "-o", str(tmp_path / "c.txt")])
    assert stopped.value.code == 143 and sent
    assert not list(scratch.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["in.fa", "scratch"]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks on this platform")
def test_a_stop_signal_in_a_worker_before_its_set_up_never_runs_the_callers_handler(tmp_path, monkeypatch):
    """A signal reaching a worker between its fork and its own set-up (a hang-up or `kill -TERM -PGID`
    just as prep starts its workers) ran the handler it inherited, the caller's, in the worker: the
    workers are forked with the stop signals blocked, and unblock them once their handlers are set."""
    from protrans_cli import corpus

    fasta = _many(tmp_path / "in.fa", 300)
    marker = tmp_path / "handled"
    real = corpus._worker_loop

    def signalled_at_once(*args):  # (in the worker, before _init_worker: the window)
        os.kill(os.getpid(), signal.SIGTERM)
        real(*args)

    def handler(number, frame):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")

    monkeypatch.setattr(corpus, "_worker_loop", signalled_at_once)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(RuntimeFailure, match="worker process died"):
            build_corpus([fasta], CorpusOptions(output=tmp_path / "c.txt", threads=2, block_bytes=1024,
                                                progress=False))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not marker.exists(), marker.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hang_up_the_caller_ignores_leaves_the_workers_working(tmp_path, monkeypatch):
    """Under nohup (SIGHUP ignored) a hang-up reaching the workers is ignored there too: the
    workers' reset of the stop signals (previous test) is of handlers, not of an ignored signal."""
    from protrans_cli import corpus

    fasta = _many(tmp_path / "in.fa", 300)
    build_corpus([fasta], CorpusOptions(output=tmp_path / "expected.txt", threads=1, progress=False))
    real, sent = corpus._collect, []

    def collect(running, pending):
        if not sent:
            sent.extend(proc.pid for proc, _ in running)
            for pid in sent:
                os.kill(pid, signal.SIGHUP)
        return real(running, pending)

    monkeypatch.setattr(corpus, "_collect", collect)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        build_corpus([fasta], CorpusOptions(output=tmp_path / "c.txt", threads=2, block_bytes=1024, progress=False))
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert len(sent) == 2 and (tmp_path / "c.txt").read_bytes() == (tmp_path / "expected.txt").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_main_process(tmp_path):
    # SIGKILL (the OOM killer, a hard time limit) cannot be handled; the workers must not be
    # left behind waiting on their pipes.
    import time

    proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "prep", "-", "-j", "2", "-o", str(tmp_path / "c.txt"),
                             "--tmp-dir", str(tmp_path)],  # the killed run's scratch stays in tmp_path
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdin.write(b">a\nMKV\n" * 1000)
    proc.stdin.flush()
    children_file = f"/proc/{proc.pid}/task/{proc.pid}/children"
    workers: list[int] = []
    deadline = time.time() + 30
    while len(workers) < 2 and time.time() < deadline:
        time.sleep(0.1)
        with open(children_file) as fh:
            workers = [int(p) for p in fh.read().split()]
    assert len(workers) == 2
    assert list(tmp_path.glob("protrans-prep.*"))  # --tmp-dir holds the workers' hand-over files
    proc.kill()
    proc.wait(timeout=10)

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(") ")[-1][0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


def _dup(tmp_path):
    path = tmp_path / "dup.fa"
    path.write_text(">a\nMKT\n>b\nMKT\n>c\nAAA\n")
    return path


@pytest.mark.parametrize("args,message", [
    (["-o", "{in}", "--stats", "s.json"], "is also an input"),
    (["-o", "c.txt", "--stats", "{in}"], "is also an input"),
    (["-o", "c.txt", "--stats", "c.txt"], "-o and --stats both name c.txt"),
    (["-o", "c.txt", "--rejects", "./c.txt"], "-o and --rejects both name ./c.txt"),
    (["-o", "c.txt", "--stats", "nodir/s.json"], "nodir: output directory does not exist"),
    (["-o", "c.txt", "--rejects", "nodir/r.tsv"], "nodir: output directory does not exist"),
    (["-o", "-", "--stats", "-"], "-o and --stats cannot both go to stdout"),
    (["--rejects", "-"], "-o and --rejects cannot both go to stdout"),
])
def test_every_output_is_checked_before_any_work(run_cli, tmp_path, monkeypatch, args, message):
    """--stats was checked only after the corpus was committed, so it could replace an input or
    the corpus itself; a bad --rejects left a temporary file of -o behind."""
    monkeypatch.chdir(tmp_path)
    source = _dup(tmp_path)
    before = source.read_bytes()
    r = run_cli("prep", source.name, *[a.replace("{in}", source.name) for a in args])
    assert r.exit_code == 2 and message in r.stderr
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.fa"]  # no output, no temporary file


def test_stats_and_rejects_to_stdout(run_cli, tmp_path):
    source = _dup(tmp_path)
    r = run_cli("prep", source, "-o", tmp_path / "c.txt", "--stats", "-", "--dedup")
    assert r.exit_code == 0 and json.loads(r.stdout)["proteins_out"] == 2
    r = run_cli("prep", source, "-o", tmp_path / "c2.txt", "--rejects", "-", "--dedup")
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "id\treason\tdetail\tfile\tline"
    assert r.stdout.splitlines()[1].startswith("b\tduplicate")
    assert not (tmp_path / "-").exists()


def test_a_shard_name_that_is_an_input_is_refused(run_cli, tmp_path):
    first = tmp_path / "c.00000.fa"
    first.write_text(">a\nMKT\n")
    r = run_cli("prep", first, "-o", tmp_path / "c.fa", "--shards", "2")
    assert r.exit_code == 2 and "a shard of -o" in r.stderr and first.read_text() == ">a\nMKT\n"
    r = run_cli("prep", first, "-o", tmp_path / "c.fa", "--shard-size", "1K")
    assert r.exit_code == 2 and first.read_text() == ">a\nMKT\n"


@pytest.mark.skipif(sys.platform == "win32", reason="named pipes")
def test_dedup_reads_a_pipe_twice_through_a_copy(tmp_path):
    """A FIFO or a process substitution cannot be read twice: it used to give an empty corpus
    (exit 0) or hang in the second pass."""
    import threading

    fifo = tmp_path / "in.fa"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(">a\nMKT\n>b\nMKT\n>c\nAAA\n"))
    writer.start()
    stats = build_corpus([str(fifo)], CorpusOptions(output=str(tmp_path / "d.txt"), dedup=True))
    writer.join(timeout=10)
    assert stats.records_in == 3 and (tmp_path / "d.txt").read_text() == "M K T\n\nA A A\n\n"


def test_shard_size_never_writes_an_empty_shard(tmp_path):
    """A protein bigger than the shard size ends a shard exactly; the last one did leave an empty
    shard after it."""
    source = tmp_path / "big.fa"
    source.write_text("".join(f">p{i}\n{'MKT' * 200}\n" for i in range(5)))
    stats = build_corpus([str(source)], CorpusOptions(output=str(tmp_path / "s.txt"), shard_size=100))
    shards = sorted(tmp_path.glob("s.*.txt"))
    assert len(shards) == 5 and all(p.stat().st_size > 0 for p in shards)
    assert stats.outputs == [str(p) for p in shards]


def test_shards_left_empty_are_said_and_an_empty_input_gives_one_empty_shard(tmp_path, run_cli):
    """docs/prep.md: --shards N over fewer training proteins than N leaves the last shards empty,
    with a warning (train then called them "a copy that failed?"); --shard-size writes one empty
    shard for an input that gives no protein, and no empty shard otherwise."""
    source = tmp_path / "one.fa"
    source.write_text(">a\nMKV\n")
    r = run_cli("prep", source, "-o", tmp_path / "n.txt", "--shards", "3", "-j", "1")
    assert r.exit_code == 0, r.stderr
    assert "--shards 3: 1 training protein for 3 shards, so the last 2 are empty" in r.stderr
    assert [p.stat().st_size for p in sorted(tmp_path.glob("n.*.txt"))] == [7, 0, 0]
    r = run_cli("prep", source, "-o", tmp_path / "m.txt", "--shards", "1", "-j", "1")
    assert r.exit_code == 0 and "empty" not in r.stderr, r.stderr
    (tmp_path / "empty.fa").write_text("")
    r = run_cli("prep", tmp_path / "empty.fa", "-o", tmp_path / "s.txt", "--shard-size", "1K", "-j", "1")
    assert r.exit_code == 0 and "no FASTA records" in r.stderr and "--shards" not in r.stderr
    assert [p.stat().st_size for p in sorted(tmp_path.glob("s.*.txt"))] == [0]


def test_shard_size_is_a_limit_a_shard_never_passes_by_a_byte(tmp_path):
    """docs/corpus.md: each shard at most SIZE bytes of text. Proteins of 7 bytes ("M K T\\n\\n")
    and a size of 13: one protein a shard (two would be 14); a size of 14 takes two."""
    source = tmp_path / "p.fa"
    source.write_text("".join(f">p{i}\nMKT\n" for i in range(6)))
    for size, per_shard in [(13, 1), (14, 2)]:
        out = tmp_path / f"s{size}.txt"
        build_corpus([str(source)], CorpusOptions(output=str(out), shard_size=size))
        texts = [p.read_bytes() for p in sorted(tmp_path.glob(f"s{size}.*.txt"))]
        assert texts == [b"M K T\n\n" * per_shard] * (6 // per_shard), (size, texts)


def _many(path, n=60):
    path.write_text("".join(f">p{i}\n{'MKVLAAGHWY' * (3 + i % 5)}\n" for i in range(n)))
    return path


@pytest.mark.parametrize("how", [["--shards", "4"], ["--shard-size", "1K"]])
def test_a_smaller_shard_set_replaces_an_earlier_larger_one(tmp_path, run_cli, how):
    """Shards an earlier run left beyond the new run's count stayed beside the new ones, and
    `--corpus 'c.*.txt'` then trained on two corpora; they are removed, with a warning."""
    big, small = _many(tmp_path / "big.fa", 60), _many(tmp_path / "small.fa", 6)
    out = tmp_path / "c.txt"
    assert run_cli("prep", big, "-o", out, *how).exit_code == 0
    before = sorted(p.name for p in tmp_path.glob("c.*.txt"))
    other = tmp_path / "c.00001.fa"  # not a shard name: left alone
    other.write_text(">x\nMK\n")
    fewer = ["--shards", "2"] if how[0] == "--shards" else how
    result = run_cli("prep", small, "-o", out, *fewer)
    assert result.exit_code == 0
    after = sorted(p.name for p in tmp_path.glob("c.*.txt"))
    assert len(after) < len(before) and other.exists()
    assert f"removed {len(before) - len(after)} shard(s) an earlier run left" in result.stderr
    text = "".join((tmp_path / name).read_text() for name in after)
    assert text.count("\n\n") == 6  # the new run's proteins, nothing else


def test_stale_shard_removal_matches_the_index_where_shard_path_puts_it(tmp_path, run_cli):
    # The pattern took the first "00000" of the name: `-o sub100000.txt` deleted sub150000.00000.txt.
    from protrans_cli.corpus import shard_index

    assert shard_index("d/sub100000.txt", "sub100000.00003.txt") == 3
    assert shard_index("d/sub100000.txt", "sub150000.00000.txt") is None
    assert shard_index("c.txt.gz", "c.00012.txt.gz") == 12 and shard_index("c.txt", "c.0000a.txt") is None
    other = tmp_path / "sub150000.00000.txt"
    other.write_text("another corpus\n\n")
    result = run_cli("prep", _many(tmp_path / "in.fa", 6), "-o", tmp_path / "sub100000.txt", "--shards", "2")
    assert result.exit_code == 0 and other.read_text() == "another corpus\n\n" and "removed" not in result.stderr


def test_shards_of_an_output_without_a_suffix_are_numbered_after_its_name(tmp_path, run_cli):
    """-o corpus (no suffix; .hidden, whose only dot starts it): corpus.00000, corpus.00001 ...,
    and a later run with fewer shards removes the ones beyond its own, as for corpus.txt."""
    source = _many(tmp_path / "in.fa", 12)
    assert run_cli("prep", source, "-o", tmp_path / "corpus", "--shards", 3).exit_code == 0
    assert sorted(p.name for p in tmp_path.glob("corpus*")) == ["corpus.00000", "corpus.00001", "corpus.00002"]
    assert sum(len(_proteins((tmp_path / f"corpus.{k:05d}").read_bytes())) for k in range(3)) == 12
    result = run_cli("prep", source, "-o", tmp_path / "corpus", "--shards", 2)
    assert result.exit_code == 0 and str(tmp_path / "corpus.00002") in result.stderr
    assert sorted(p.name for p in tmp_path.glob("corpus*")) == ["corpus.00000", "corpus.00001"]
    assert run_cli("prep", source, "-o", tmp_path / ".hidden", "--shards", 2).exit_code == 0
    assert sorted(p.name for p in tmp_path.glob(".hidden*")) == [".hidden.00000", ".hidden.00001"]


def test_outputs_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """The corpus was renamed before the rejects and stats were written out: a full disk at the
    rejects left a new corpus beside the old rejects and stats."""
    from protrans_cli.io import files

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKV\n>b\nMK1\n")
    out, rejects, stats = tmp_path / "c.txt", tmp_path / "rej.tsv", tmp_path / "s.json"
    for path in (out, rejects, stats):
        path.write_text("old\n")
    real = files.AtomicFile.prepare

    def full(self):
        if self.path == rejects:
            self._raw.write(b"x")
            raise OSError(28, "No space left on device")
        return real(self)

    monkeypatch.setattr(files.AtomicFile, "prepare", full)
    with pytest.raises(OSError):
        build_corpus([fasta], CorpusOptions(output=out, rejects=rejects, stats=stats))
    assert [p.read_text() for p in (out, rejects, stats)] == ["old\n"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "in.fa", "rej.tsv", "s.json"]
    monkeypatch.setattr(files.AtomicFile, "prepare", real)
    build_corpus([fasta], CorpusOptions(output=out, rejects=rejects, stats=stats))
    assert out.read_text() == "M K V\n\n" and "invalid" in rejects.read_text() and "records_in" in stats.read_text()


def test_what_killed_runs_left_is_removed_and_live_runs_are_not_touched(tmp_path, run_cli):
    """A SIGKILLed prep left its hidden output temporaries and its dedup folder (as large as
    the input) for good. The next run removes those of this host whose process is gone and
    that nobody has written for an hour."""
    import subprocess
    import time

    from protrans_cli.io.files import make_temporary

    probe = make_temporary(tmp_path, ".probe.")  # .probe.<host>.<pid>-XXXX.tmp
    host = probe.name.split(".")[2]
    assert probe.name.startswith(f".probe.{host}.{os.getpid()}-")
    probe.unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead = [tmp_path / f".c.txt.{host}.{gone}-abc.tmp", tmp_path / f".protrans-dedup.{host}.{gone}-xyz"]
    kept = [tmp_path / f".c.txt.{host}.{os.getpid()}-abc.tmp",  # a live process
            tmp_path / f".c.txt.othernode.{gone}-abc.tmp"]      # another node's, on a shared disk
    dead[0].write_text("half a corpus")
    dead[1].mkdir()
    (dead[1] / "part0000.u64").write_bytes(b"x" * 100)
    kept.append(tmp_path / f".c.txt.{host}.{gone}-new.tmp")  # written in the last hour: maybe a live
    for path in kept:                                          # run in another container
        path.write_text("someone's")
    hours_ago = time.time() - 7200
    for path in [*dead, dead[1] / "part0000.u64", *kept[:2]]:
        os.utime(path, (hours_ago, hours_ago))
    fasta = _many(tmp_path / "in.fa", 6)
    assert run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--dedup").exit_code == 0
    assert not any(p.exists() for p in dead) and all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(p.name for p in kept)


def test_a_file_with_cr_line_endings_is_one_line_not_an_empty_corpus(tmp_path, run_cli):
    """The whole file read as one header: exit 0 with an empty corpus, the other records uncounted."""
    fasta = tmp_path / "cr.fa"
    fasta.write_bytes(b">a desc\rMKTA\rGGH\r>b\rMKKL\r")
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"protrans: error: {fasta}:1, record 'a': a carriage return inside the header line")
    assert not (tmp_path / "c.txt").exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_files_concatenated_with_a_byte_order_mark_keep_every_record(tmp_path, run_cli, threads):
    """`cat a.fa b.fa` where b.fa starts with a mark: the record before it was rejected and b's first
    record vanished, uncounted."""
    fasta = tmp_path / "c.fa"
    fasta.write_bytes(b">a\r\nMKTA\r\n>b\r\nMKKL\r\n" + b"\xef\xbb\xbf>c\nMKTAW\n>d\nGG\n")
    result = run_cli("-q", "prep", fasta, "-o", "-", "-j", threads)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "M K T A\n\nM K K L\n\nM K T A W\n\nG G\n\n"


@pytest.mark.parametrize("how", ["file", "stdin", "gzip"])
def test_a_byte_order_mark_after_leading_blank_lines_is_read(tmp_path, run_cli, how):
    """`cat blank_first.fa bom.fa`: the mark was stripped only at byte 0, so prep refused the file
    as "not FASTA" (embed read it); a bad first line is still counted from the right line."""
    import gzip

    # (a vertical tab or form feed line too, which embed's reader skips as blank; prep said "not FASTA")
    data = b"\n\xef\xbb\xbf\n\x0b\n\x0c\n\xef\xbb\xbf>a\nMK\n>b\nGG\n"
    fasta = tmp_path / ("c.fa.gz" if how == "gzip" else "c.fa")
    fasta.write_bytes(gzip.compress(data) if how == "gzip" else data)
    args = ("-", ) if how == "stdin" else (fasta,)
    result = run_cli("-q", "prep", *args, "-o", "-", input=data if how == "stdin" else None)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "M K\n\nG G\n\n"
    fasta.write_bytes(b"\n\xef\xbb\xbfMK\n")
    result = run_cli("prep", fasta, "-o", "-")
    assert result.exit_code == 1 and f"{fasta}:2: not FASTA" in result.stderr, result.stderr


def _large_reply(block, extra):
    return b"x" * (4 << 20)  # more than a pipe holds: the worker waits for the main process to read it


def test_stopping_early_ends_the_workers_at_once():
    # Ctrl-C or SIGTERM in the middle of a run with -j N: the workers blocked on sending replies
    # nobody would read, and each one kept the main process 5 s in join() (10 s with -j 2 in
    # dedup's first pass on a large input) before it cleaned up and exited.
    import time

    from protrans_cli.corpus import _Block, _run_blocks

    blocks = ((_Block(b">a\nM\n", "x", 1, k, size=5), None) for k in range(8))
    results = _run_blocks(blocks, _large_reply, (), threads=2)
    next(results)
    start = time.perf_counter()
    results.close()  # what the caller's exception does to the generator
    assert time.perf_counter() - start < 3


def test_blocks_past_4_gib_are_cut_and_read_at_their_byte(tmp_path):
    # UniRef50's FASTA is ~25 GB: a worker reads its block by a byte offset past 2**32 (os.pread)
    from protrans_cli.corpus import _Block, _plain_blocks

    at = 5 * 2**30
    tail = b">b\nMK\n>c\nML\n"
    path = sparse_file(tmp_path / "big.fa", at - 1, b"\n" + tail, head=b">a\nM\n")
    blocks = list(_plain_blocks(str(path), at - 16, 0, "big.fa"))
    assert [(b.offset, b.size) for b in blocks] == [(0, at), (at, len(tail))]
    assert blocks[1].load() == tail
    assert _Block(None, "big.fa", 0, 0, str(path), at + 6, len(tail) - 6).load() == b">c\nML\n"


def test_a_block_is_read_whole_where_one_pread_returns_less(tmp_path, monkeypatch):
    # Linux's pread returns at most 0x7ffff000 bytes: the block of a record over 2 GiB came back
    # short and was "file changed while it was read". Here a pread of at most 5 bytes stands in.
    from protrans_cli.corpus import _Block

    data = b">a\n" + b"MKV" * 100 + b"\n"
    (tmp_path / "a.fa").write_bytes(b"xx" + data)
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, offset: real(fd, min(n, 5), offset))
    assert _Block(None, "a.fa", 1, 0, str(tmp_path / "a.fa"), 2, len(data)).load() == data
    with pytest.raises(InputError, match="file changed while it was read"):  # (the file ends first)
        _Block(None, "a.fa", 1, 0, str(tmp_path / "a.fa"), 2, len(data) + 9).load()


def test_an_output_that_is_a_directory_is_a_usage_error(run_cli, tmp_path):
    # (exit 1 as bad input, where a missing directory was already exit 2)
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMK\n")
    (tmp_path / "d").mkdir()
    for flag in ("-o", "--rejects", "--stats", "--valid-output"):
        extra = ["--valid-fraction", "0.5", "-o", tmp_path / "c.txt"] if flag == "--valid-output" else []
        if flag in ("--rejects", "--stats"):
            extra = ["-o", tmp_path / "c.txt"]
        result = run_cli("prep", fasta, *extra, flag, tmp_path / "d")
        assert result.exit_code == 2, (flag, result.stderr)
        assert f"{flag} {tmp_path / 'd'} is a directory" in result.stderr
    assert not (tmp_path / "c.txt").exists()


@pytest.mark.parametrize("data, corpus, rejected", [
    # A record with a carriage return inside its header and an invalid residue was taken for a
    # file with old Mac line endings: the whole run failed (exit 1, no corpus), where the same
    # record with valid residues was kept. It is rejected for its residue now, the run goes on.
    (b">a\nMK\n>b note\rmore\nMKJ\n>c\nAA\n", "M K\n\nA A\n\n", ["b", "invalid_character"]),
    # found by a property test: followed by a blank line, the record was taken for a file of old
    # Mac line endings (the whole run failed, exit 1), where embed read it as an empty record.
    (b">a\rnote\n\n>c\nAA\n", "A A\n\n", ["a", "empty"]),
], ids=["invalid residue", "empty record"])
def test_a_stray_cr_in_one_header_rejects_that_record_alone(run_cli, tmp_path, data, corpus, rejected):
    fasta = tmp_path / "cr.fa"
    fasta.write_bytes(data)
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--rejects", tmp_path / "r.tsv")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "c.txt").read_text() == corpus
    assert (tmp_path / "r.tsv").read_text().splitlines()[1].split("\t")[:2] == rejected


def test_a_header_with_a_stray_cr_and_no_line_after_it_reads_as_an_old_mac_file(run_cli, tmp_path):
    # (with a blank line after it, the record alone is rejected, above; with no line at all after
    # the header it still reads as a file of old Mac line endings, in embed as in prep)
    fasta = tmp_path / "cr.fa"
    fasta.write_bytes(b">a\rnote\n>c\nAA\n")
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert result.exit_code == 1 and "cr.fa:1, record 'a': a carriage return inside the header" in result.stderr


def test_dedup_of_an_old_mac_file_is_the_one_line_error(run_cli, tmp_path):
    # pass 1 of --dedup met the unreadable block without its digests: a TypeError traceback
    fasta = tmp_path / "cr.fa"
    fasta.write_bytes(b">a\rMKTA\r>b\rMKTA\r")
    for extra in ([], ["--dedup"]):
        result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", *extra)
        assert result.exit_code == 1 and "cr.fa:1, record 'a': a carriage return inside the header" in result.stderr


def test_dedup_of_stdin_names_stdin_in_rejects_and_errors(run_cli, tmp_path):
    # the copy --dedup reads twice was named instead (a deleted temporary file)
    data = b">a\nMKTA\n>b\nMKJA\n>c\nMKTA\n"
    result = run_cli("prep", "-", "-o", tmp_path / "c.txt", "--dedup", "--rejects", tmp_path / "r.tsv", input=data)
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in (tmp_path / "r.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [("b", "invalid_character", "<stdin>", "3"),
                                                      ("c", "duplicate", "<stdin>", "5")]
    result = run_cli("prep", "-", "-o", tmp_path / "d.txt", "--dedup", "--strict", input=data)
    assert result.exit_code == 1 and "<stdin>:3, record 'b': invalid character 'J'" in result.stderr


def test_stats_count_rare_residues_written_not_those_of_dropped_crop_windows(run_cli, tmp_path):
    fasta = tmp_path / "r.fa"
    fasta.write_text(">a\nMKTAMKTAMU\n>b\nMKTAU\n>c\nMUTA\n")  # windows of 4: 'MU' and 'U' (below 3) dropped
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--max-length", 4, "--long", "crop",
                     "--min-length", 3, "--stats", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    written = (tmp_path / "c.txt").read_text().count("X")
    assert json.loads((tmp_path / "s.json").read_text())["rare_to_x"] == written == 1
    assert summary_rows(result.stderr)["U/Z/O/B written as X"] == "1", result.stderr


def test_long_policy_is_spelled_as_embed_spells_it_too(run_cli, tmp_path):
    # embed calls the same choice --long-policy: a user who types it here got "no such option"
    fasta = tmp_path / "r.fa"
    fasta.write_text(">a\nMKTAMKTAMK\n>b\nMKT\n")
    outs = []
    for name in ("--long", "--long-policy"):
        out = tmp_path / f"c{len(outs)}.txt"
        result = run_cli("prep", fasta, "-o", out, "--max-length", 4, name, "crop")
        assert result.exit_code == 0, result.stderr
        outs.append(out.read_text())
    assert outs[0] == outs[1] == "M K T A\nM K T A\nM K\n\nM K T\n\n"  # windows of one protein together


def test_an_output_through_dev_stdout_appends_to_what_the_shell_opened(tmp_path):
    # `--stats /dev/stderr 2>> run.log` and `-o /dev/stdout >> log` truncated the log first
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nMKTA\n>b\nMKTA\n")
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    # (the second from stdin with two workers: their blocks were copied with sendfile, which
    # refuses a descriptor opened to append)
    for args in ([str(fasta), "-o", str(tmp_path / "c.txt"), "--stats", "/dev/stderr"],
                 ["-", "-o", "/dev/stdout", "-j", "2", "<", str(fasta)]):
        target = "2>>" if "/dev/stderr" in args else ">>"
        shell = f"{sys.executable} -m protrans_cli -q prep {' '.join(args)} {target} {log}"
        assert subprocess.run(["bash", "-c", shell]).returncode == 0
        assert log.read_text().startswith("earlier line\n")
    assert "M K T A" in log.read_text() and '"proteins_out"' in log.read_text()


def test_an_output_through_dev_stderr_shares_the_offset_of_what_the_shell_opened(tmp_path):
    # `--stats /dev/stderr 2> prep.log` (no `>>`): the JSON went to the log through a descriptor
    # of its own, and the summary table printed on stderr afterwards overwrote it (exit 0); as
    # `(echo a; prep --rejects /dev/stderr; echo b) > log 2>&1` lost the TSV's first bytes under `b`
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nMKTA\n>b\nMJTA\n")
    log = tmp_path / "prep.log"
    shell = f"{sys.executable} -m protrans_cli prep {fasta} -o {tmp_path / 'c.txt'} --stats /dev/stderr 2> {log}"
    assert subprocess.run(["bash", "-c", shell]).returncode == 0
    text = log.read_text()
    assert text.startswith("{") and json.loads(text[:text.index("\n}\n") + 2])["proteins_out"] == 1
    assert "records in" in text  # the summary after it
    shell = (f"(echo before; {sys.executable} -m protrans_cli -q prep {fasta} -o {tmp_path / 'd.txt'} "
             f"--rejects /dev/stderr; echo after) > {log} 2>&1")
    assert subprocess.run(["bash", "-c", shell]).returncode == 0
    assert log.read_text() == ("before\nid\treason\tdetail\tfile\tline\n"
                               f"b\tinvalid_character\tinvalid character 'J' at residue 2\t{fasta}\t3\nafter\n")


def test_a_second_output_through_dev_stdout_is_refused_as_a_second_dash(tmp_path):
    # `-o /dev/stdout --stats - > x` wrote the stats over the corpus's first bytes, and
    # `--valid-output /dev/stdout > x` lost the validation proteins: both exit 0
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nMKTA\n>b\nMKTV\n" * 20)
    out = tmp_path / "out.txt"
    for args, named in ((["-o", "/dev/stdout", "--stats", "-"], "-o /dev/stdout and --stats"),
                        (["--valid-fraction", "0.5", "--valid-output", "/dev/stdout"],
                         "-o and --valid-output /dev/stdout"),
                        (["--rejects", "/proc/self/fd/1"], "-o and --rejects /proc/self/fd/1"),
                        (["-o", str(out), "--stats", str(out)], None)):  # `> out` opened it: stdout too
        result = subprocess.run(["bash", "-c", f"{sys.executable} -m protrans_cli -q prep {fasta} {' '.join(args)} > {out}"],
                                capture_output=True, text=True)
        assert result.returncode == 2 and "cannot both go to stdout (-)" in result.stderr, result.stderr
        assert named is None or named in result.stderr
    # stdout on /dev/null and another output there discard both: allowed as before
    assert subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", str(fasta), "--stats", os.devnull],
                          stdout=subprocess.DEVNULL).returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
def test_many_shards_under_a_low_open_file_limit(tmp_path):
    # --shard-size kept every finished shard open: BFD at 500M (~2,000 shards) failed mid-run
    # under the usual 1024 with "cannot write in this folder: Too many open files"
    import resource

    def limit(n):
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    fasta = tmp_path / "s.fa"
    fasta.write_text("".join(f">p{i}\n{'MKTAYIAKQR' * (1 + i % 5)}\n" for i in range(300)))
    whole = subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", str(fasta)],
                           capture_output=True, check=True).stdout
    (tmp_path / "a").mkdir()
    run = subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", str(fasta), "-o", str(tmp_path / "a" / "c.txt"),
                          "--shard-size", "200", "-j", "1"], capture_output=True, text=True, preexec_fn=limit(96))
    assert run.returncode == 0, run.stderr
    shards = sorted((tmp_path / "a").iterdir())
    assert len(shards) > 96 and b"".join(p.read_bytes() for p in shards) == whole
    # round-robin shards are all open at once: more than the hard limit allows is refused up front
    (tmp_path / "b").mkdir()
    run = subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", str(fasta), "-o", str(tmp_path / "b" / "c.txt"),
                          "--shards", "200", "-j", "1"], capture_output=True, text=True, preexec_fn=limit(96))
    assert run.returncode == 2 and "--shards 200 keeps 200 files open, and this process may open 96 (ulimit -n)" \
        in run.stderr and not list((tmp_path / "b").iterdir())


@pytest.mark.parametrize("flag", ["--stats", "--rejects", "--valid-output"])
def test_an_output_named_like_a_shard_is_refused(run_cli, tmp_path, flag):
    # a shard replaced the file (or it a shard), or it was removed as an earlier run's shard
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nMKTA\n>b\nMKTV\n")
    extra = ["--valid-fraction", "0.5"] if flag == "--valid-output" else []
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--shards", 2, flag, tmp_path / "c.00001.txt", *extra)
    assert result.exit_code == 2 and f"{flag} {tmp_path / 'c.00001.txt'} has the name of shard 1 of -o" in result.stderr


def test_a_concatenated_file_starting_with_a_mark_and_a_blank_line(run_cli, tmp_path):
    # `cat a.fa b.fa`, b.fa starting with a byte-order mark then a blank line: a.fa's last
    # record was rejected for the mark's bytes
    data = b">x\nMKTA\n" + b"\xef\xbb\xbf\n>y\nMKTV\n"
    result = run_cli("prep", "-", "-o", "-", input=data)
    assert result.exit_code == 0 and result.stdout == "M K T A\n\nM K T V\n\n", result.stderr


def test_a_mark_after_a_concatenation_at_a_block_boundary(tmp_path):
    # the cut fell on the header after the mark and its blank line: the block before ended in the
    # mark, and a.fa's last record was rejected for its bytes
    import random as _random

    rng = _random.Random(0)
    a = "".join(f">a{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(100))}\n" for i in range(10))
    fasta = tmp_path / "cat.fa"
    fasta.write_bytes(a.encode() + "\ufeff\n>b0\nMKTAYIAK\n".encode())
    for block in (1 << 20, 1024):
        stats = build_corpus([str(fasta)], CorpusOptions(output=str(tmp_path / f"c{block}.txt"), block_bytes=block,
                                                         threads=1))
        assert stats.proteins_out == 11 and stats.rejected_total == 0, block


def test_dev_null_may_take_several_outputs(run_cli):
    # a dry run that keeps nothing: "-o and --stats both name /dev/null" (exit 2)
    result = run_cli("prep", DATA / "format.fa", "-o", "/dev/null", "--stats", "/dev/null",
                     "--rejects", "/dev/null")
    assert result.exit_code == 0, result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_while_writing_names_the_output_or_stdout(tmp_path, run_cli):
    """A write that met a full disk said "No space left on device" alone, naming no file."""
    fasta = _many(tmp_path / "in.fa", 3000)  # more than a write buffer holds
    r = run_cli("prep", fasta, "-o", "/dev/full")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        "protrans: error: /dev/full: cannot write: No space left on device"
    r = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--valid-fraction", "0.5", "--valid-output", "/dev/full")
    assert r.exit_code == 1 and "/dev/full: cannot write: No space left on device" in r.stderr
    assert not (tmp_path / "c.txt").exists()
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(fasta)], stdout=full,
                              stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == \
        "protrans: error: standard output: cannot write: No space left on device"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("flag", ["--stats", "--rejects"])
def test_a_full_stdout_for_stats_or_rejects_names_standard_output(tmp_path, flag):
    """`--stats - > /dev/full` (and `--rejects -`) said "No space left on device" alone, as -o -
    no longer did; nothing is written."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKT\n>b\nMKJ\n")
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(fasta), "-o",
                               str(tmp_path / "c.txt"), flag, "-"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == \
        "protrans: error: standard output: cannot write: No space left on device"
    assert not (tmp_path / "c.txt").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and /dev/null as on Linux")
def test_a_full_hand_over_folder_names_it(tmp_path):
    """A full folder for the -j workers' hand-over files (/dev/shm, $TMPDIR, --tmp-dir) failed in
    a worker with "No space left on device" alone (here the file-size limit, which a full disk
    reads as): one line naming the folder; nothing is written."""
    import resource

    fasta = _many(tmp_path / "in.fa", 60000)  # over two blocks: workers start
    spill = tmp_path / "spill"
    spill.mkdir()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(fasta), "-j", "2", "--tmp-dir",
                           str(spill), "-o", os.devnull, "--stats", str(tmp_path / "s.json")],
                          stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {spill}: cannot write the -j workers' hand-over files: File too large (--tmp-dir DIR "
        "puts them elsewhere; -j 1 needs none)")
    assert list(spill.iterdir()) == [] and not (tmp_path / "s.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as on Linux")
@pytest.mark.parametrize("stdin", [False, True])  # (stdin: its copy is the first scratch file written)
def test_a_full_dedup_scratch_folder_names_it(tmp_path, stdin):
    """--dedup's partitions (24 bytes a record: BFD's take ~50 GB) or its copy of stdin on a full
    disk (here the file-size limit, which reads as one) said "No space left on device" alone."""
    import resource

    fasta = tmp_path / "in.fa"  # 20,000 distinct proteins: ~30 KB of digests in each of 16 partitions
    fasta.write_text("".join(f">p{i}\nM{str(i).translate(str.maketrans('0123456789', 'ACDEFGHIKL'))}\n"
                             for i in range(20000)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    with open(fasta, "rb") as source:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", "-" if stdin else str(fasta), "-j", "1",
                               "--dedup", "--tmp-dir", str(scratch), "-o", os.devnull],
                              stdin=source, stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {scratch}: --dedup cannot write its scratch files: File too large (they take 24 bytes a "
        "record, and a copy of stdin or a pipe; --tmp-dir DIR puts them elsewhere)")
    assert list(scratch.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/fd/1"), reason="needs /dev/fd")
def test_dedup_and_shuffle_scratch_is_not_put_beside_a_device_output(tmp_path, monkeypatch):
    """--dedup's and --shuffle's scratch went "beside the output": `-o /dev/fd/1` failed ("/dev/fd:
    cannot write in this folder"), and `-o /dev/null` put it in /dev (root's alone, and memory).
    Such an output's scratch goes to $TMPDIR."""
    import protrans_cli.corpus as corpus

    fasta = _many(tmp_path / "in.fa", 30)
    made = []
    real = corpus.make_temporary
    monkeypatch.setattr(corpus, "make_temporary", lambda directory, *a, **k: made.append(str(directory))
                        or real(directory, *a, **k))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # (read $TMPDIR again)
    build_corpus([fasta], CorpusOptions(output=os.devnull, dedup=True, shuffle=True))
    assert made == [str(tmp_path), str(tmp_path)]
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(fasta), "-o", "/dev/fd/1", "--dedup",
                               "--shuffle"], stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.read_text().split("\n\n")) == sorted(set(reference_corpus([fasta]).decode().split("\n\n")))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_workers_run_for_a_pipe_whatever_its_size_on_disk(tmp_path, monkeypatch):
    """"Inputs smaller than two blocks run in one process" measured a pipe by its size on disk,
    0: `prep <(zcat x.fa.gz) -j 8` ran in one process, whatever it held."""
    import threading

    import protrans_cli.corpus as corpus

    data = _many(tmp_path / "in.fa", 300).read_bytes()  # ~10 KB: many blocks of 1,024 bytes
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    threads_used = []
    real = corpus._run_blocks
    monkeypatch.setattr(corpus, "_run_blocks", lambda blocks, fn, args, threads, *a: threads_used.append(threads)
                        or real(blocks, fn, args, threads, *a))
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    out = tmp_path / "c.txt"
    build_corpus([str(fifo)], CorpusOptions(output=str(out), threads=2, block_bytes=1024))
    writer.join()
    assert threads_used == [2]
    assert out.read_bytes() == reference_corpus([tmp_path / "in.fa"])


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_workers_text_is_written_where_sendfile_cannot_write_to_a_file(tmp_path, monkeypatch, platform):
    """macOS's sendfile writes to sockets only: prep with workers into a file failed there with
    "Socket operation on non-socket" (exit 1, no output). Refused before a byte, the text is
    written by the main process; off Linux sendfile is not tried."""
    import errno

    from protrans_cli import corpus

    fasta = _many(tmp_path / "in.fa", 600)
    expected = tmp_path / "expected.txt"
    build_corpus([fasta], CorpusOptions(output=expected, threads=1, progress=False))
    tried = []

    def refuse(out_fd, in_fd, offset, count):
        tried.append(count)
        raise OSError(errno.ENOTSOCK, "Socket operation on non-socket")

    monkeypatch.setattr(corpus.os, "sendfile", refuse)
    monkeypatch.setattr(corpus.sys, "platform", platform)
    out = tmp_path / "c.txt"
    build_corpus([fasta], CorpusOptions(output=out, threads=2, block_bytes=4096, progress=False))
    assert out.read_bytes() == expected.read_bytes()
    assert bool(tried) == (platform == "linux")


def test_a_shard_named_like_an_input_but_for_case_is_refused_where_they_are_one_file(tmp_path, run_cli):
    """On a file system that ignores case (macOS, Windows) `prep c.00000.fa -o C.fa --shards 2`
    wrote C.00000.fa over its own input. Simulated here by a hard link (one file, two names);
    where the names are two files (Linux) the run goes on."""
    fasta = _many(tmp_path / "c.00000.fa", 20)
    out = tmp_path / "C.fa"
    r = run_cli("prep", fasta, "-o", out, "--shards", "2")
    assert r.exit_code == 0 and (tmp_path / "C.00000.fa").exists()
    (tmp_path / "C.00000.fa").unlink()
    (tmp_path / "C.00001.fa").unlink()
    os.link(fasta, tmp_path / "C.00000.fa")
    before = fasta.read_bytes()
    r = run_cli("prep", fasta, "-o", out, "--shards", "2")
    assert r.exit_code == 2 and "c.00000.fa is also an input: a shard of -o" in r.stderr
    assert fasta.read_bytes() == before


def test_a_full_disk_at_a_later_shard_names_that_shard(tmp_path, monkeypatch, run_cli):
    """With --shard-size the writer goes on to the next shard inside one block: the error named
    the shard before the one that met the full disk."""
    from protrans_cli import corpus

    real = corpus._Writers._handle

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    def handle(self, path, kind, *named):
        stream = real(self, path, kind, *named)
        return Full() if str(path).endswith(".00002.txt") else stream

    monkeypatch.setattr(corpus._Writers, "_handle", handle)
    out = tmp_path / "c.txt"
    r = run_cli("prep", _many(tmp_path / "in.fa", 300), "-o", out, "--shard-size", "2K")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / 'c.00002.txt'}: cannot write: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]


def test_many_shards_scan_their_folder_for_stale_temporaries_once(tmp_path, run_cli, monkeypatch):
    """Every shard's temporary rescanned the output folder for a killed run's leftovers, a folder
    filling with the run's own temporaries: 5000 shards took 11-17 s instead of under 1. One scan
    per folder and family of names (a shard's number stands for any) still removes them."""
    import subprocess
    import time

    from protrans_cli.io import files
    from protrans_cli.io.files import make_temporary

    probe = make_temporary(tmp_path, ".probe.")
    host = probe.name.split(".")[2]
    probe.unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead = tmp_path / f".c.00007.txt.{host}.{gone}-abcdefgh.tmp"  # a killed run's shard 7
    dead.write_text("half a shard")
    hours_ago = time.time() - 7200
    os.utime(dead, (hours_ago, hours_ago))
    scans = []
    real = files.os.scandir
    monkeypatch.setattr(files.os, "scandir", lambda path: scans.append(path) or real(path))
    assert run_cli("-q", "prep", _many(tmp_path / "in.fa", 200), "-o", tmp_path / "c.txt", "--shards", 40).exit_code == 0
    assert not dead.exists() and len(scans) <= 2, scans
    assert len(list(tmp_path.glob("c.*.txt"))) == 40


def test_control_characters_in_a_file_name_are_escaped_in_messages_and_rejects(run_cli, tmp_path):
    """A name holding a newline split the one-line error in two and a --rejects row in two; an
    escape sequence (ESC) reached the terminal as is."""
    fasta = tmp_path / "x\ny\x1b[2J.fa"
    fasta.write_text(">a\nMKT\n>b\nMKT\n>c\nAAA\n")
    r = run_cli("prep", fasta, "-o", fasta)
    assert r.exit_code == 2
    assert r.stderr == f"protrans: error: {tmp_path}/x\\ny\\x1b[2J.fa is also an input: writing it would " \
                       "replace the FASTA (choose another name)\n"
    r = run_cli("prep", fasta, "--dedup", "-o", tmp_path / "c.txt", "--rejects", "-")
    assert r.exit_code == 0
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[1] == ["b", "duplicate", "same sequence as an earlier record", f"{tmp_path}/x\\ny\\x1b[2J.fa", "3"]
    assert len(rows) == 2



@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_header_holding_nul_bytes_is_left_out_as_damaged(run_cli, tmp_path, threads):
    # A damaged file (zeroed bytes in a header) was read as it came: the NULs went into the
    # id that decides the validation split; read_fasta (embed) refuses such a file. And an
    # escape sequence in an id reached the terminal through `--rejects -`. (A NUL in a sequence is
    # that record's invalid character, not a damaged header.)
    fasta = tmp_path / "d.fa"
    fasta.write_bytes(b">sp|P1|X desc\nMKTA\n>sp|P2\x00\x00\x00TAYI\nACDE\n>e\x1b]0;t\x07x desc\nJJJ\n"
                      b">s\nMK\x00TA\n>q\nMKTV\n")
    r = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--rejects", "-", "-j", threads)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "c.txt").read_text() == "M K T A\n\nM K T V\n\n"
    rows = [line.split("\t") for line in r.stdout.splitlines()[1:]]
    assert rows == [["sp|P2\\x00\\x00\\x00TAYI", "invalid_character", "the header holds a NUL byte (a damaged file?)",
                     str(fasta), "3"],
                    ["e\\x1b]0;t\\x07x", "invalid_character", "invalid character 'J' at residue 1", str(fasta), "5"],
                    ["s", "invalid_character", "invalid character '\\x00' at residue 3", str(fasta), "7"]]
    r = run_cli("prep", fasta, "-o", tmp_path / "s.txt", "--strict", "-j", threads)
    assert r.exit_code == 1 and "d.fa:3, record 'sp|P2\\x00\\x00\\x00TAYI': the header holds a NUL byte (a damaged " \
        "file?)" in r.stderr  # (as embed, knn and variants say it)
    assert not (tmp_path / "s.txt").exists()


def test_crop_stats_give_the_lengths_of_the_lines_written(run_cli, tmp_path):
    """With --long crop the length percentiles and mean counted each protein's input length: a
    68,700-residue protein cropped to windows of 1,024 showed p100 68700, longer than any line
    the corpus holds. They describe the lines written: each window its own length."""
    fasta = tmp_path / "c.fa"
    fasta.write_text(">a\n" + "MKTAY" * 5 + "\n>b\nMKTAY\n")  # 25 residues: windows 10, 10, 5
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--max-length", 10, "--long", "crop",
                     "--min-length", 3, "--stats", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    lines = [len(line.split()) for line in (tmp_path / "c.txt").read_text().splitlines() if line]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert sorted(lines) == [5, 5, 10, 10] and stats["lines_out"] == 4
    assert stats["length_percentiles"]["p100"] == 10 and stats["length_percentiles"]["p0"] == 5
    assert stats["mean_length"] == 7.5 == stats["residues_out"] / stats["lines_out"]
    assert stats["crop_dropped"] == 0


def test_crop_tails_dropped_are_counted(run_cli, tmp_path):
    """A crop's last window shorter than --min-length is dropped (as documented): its residues were
    counted nowhere, so the residues in and out did not reconcile."""
    fasta = tmp_path / "c.fa"
    fasta.write_text(">a\n" + "MKTAY" * 5 + "\n>b\n" + "MKTAY" * 4 + "\n")  # 25: 10, 10, (5); 20: 10, 10
    for threads in ("1", "2"):
        result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--max-length", 10, "--long", "crop",
                         "--min-length", 6, "--stats", tmp_path / "s.json", "-j", threads)
        assert result.exit_code == 0, result.stderr
        stats = json.loads((tmp_path / "s.json").read_text())
        assert (stats["residues_out"], stats["crop_dropped"], stats["lines_out"]) == (40, 5, 4)
        assert stats["residues_out"] + stats["crop_dropped"] == 45
        assert "residues dropped (crop windows < --min-length)" in result.stderr
        # (the summary's lines: 4 windows of 2 proteins, a row only where they differ)
        rows = summary_rows(result.stderr)
        assert (rows["proteins out"], rows["lines out (windows)"]) == ("2", "4"), result.stderr
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt")
    assert result.exit_code == 0 and "proteins out" in result.stderr and "lines out" not in result.stderr


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_crop_of_one_window_and_a_dropped_tail_writes_the_window_alone(run_cli, tmp_path, threads):
    """A protein of one window and a tail shorter than --min-length (5 residues, windows of 4):
    the block's fast path wrote the tail too, as "F \\n" where the empty line between proteins
    belongs, and the next protein ran on into the same document (found by the fuzz profile)."""
    fasta = tmp_path / "c.fa"
    fasta.write_text(">a\nACDEF\n>b\nMNPQ\n")
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--max-length", 4, "--long", "crop",
                     "--min-length", 2, "-j", threads, "--stats", tmp_path / "s.json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "c.txt").read_text() == "A C D E\n\nM N P Q\n\n"
    stats = json.loads((tmp_path / "s.json").read_text())
    assert (stats["residues_out"], stats["crop_dropped"]) == (8, 1)


def test_a_pipe_named_twice_is_refused_not_read_as_empty(tmp_path):
    # `prep - /dev/stdin`: the second name met the pipe's end and added nothing (exit 0, a
    # silently short corpus); a regular file named twice is still read twice.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b">a\nMK\n")
        os.close(write_end)
        fd = f"/dev/fd/{read_end}"
        with pytest.raises(UsageError, match="one stream"):
            build_corpus([fd, fd], CorpusOptions(output=str(tmp_path / "c.txt"), threads=1))
        assert not (tmp_path / "c.txt").exists()
    finally:
        os.close(read_end)
    fasta = tmp_path / "a.fa"
    fasta.write_bytes(b">a\nMK\n")
    build_corpus([str(fasta), str(fasta)], CorpusOptions(output=str(tmp_path / "c.txt"), threads=1))
    assert (tmp_path / "c.txt").read_bytes() == b"M K\n\n" * 2


def test_dev_null_named_twice_is_not_one_stream(tmp_path):
    """Only a pipe or socket is read once: /dev/null twice (an empty placeholder in a list of
    inputs) was refused as "one stream, which can be read only once", and adds nothing either way."""
    fasta = tmp_path / "a.fa"
    fasta.write_bytes(b">a\nMK\n")
    build_corpus([str(fasta), os.devnull, os.devnull], CorpusOptions(output=str(tmp_path / "c.txt"), threads=1))
    assert (tmp_path / "c.txt").read_bytes() == b"M K\n\n"


def test_read_fasta_and_build_corpus_refuse_inputs_that_are_not_paths(tmp_path):
    for value in (None, [DATA / "lengths.fa"], 3):
        with pytest.raises(UsageError, match="read_fasta reads one file"):
            next(read_fasta(value))
    out = tmp_path / "c.txt"
    for value in (None, 3, [DATA / "lengths.fa", None]):
        with pytest.raises(UsageError, match="inputs must be a FASTA path or a list of them"):
            build_corpus(value, CorpusOptions(output=str(out)))
    assert not out.exists()
    # a generator of paths still works
    assert build_corpus((p for p in [DATA / "lengths.fa"]), CorpusOptions(output=str(out))).records_in > 0


# --- --shuffle ---------------------------------------------------------------------------------

def _proteins(text: bytes) -> list[bytes]:
    assert text.endswith(b"\n\n") or not text
    return text.split(b"\n\n")[:-1]


@pytest.mark.parametrize("shuffle_bytes", [512 << 20, 1024], ids=["in-memory", "scattered-again"])
def test_shuffle_is_a_seeded_permutation_of_the_training_proteins_whatever_the_threads(tmp_path, shuffle_bytes):
    """The same proteins as without --shuffle (each once, windows of a cropped protein kept
    together), in another order; byte-identical for -j 1 and -j 2 and for a small memory budget
    that makes buckets be scattered again; another seed, another order."""
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 600, seed=11, dirty=False)
    common = dict(block_bytes=2048, max_length=300, long="crop", shuffle_bytes=shuffle_bytes)
    plain = tmp_path / "plain.txt"
    build_corpus([fasta], CorpusOptions(output=str(plain), **common))
    outputs = {}
    for threads, seed in [(1, 0), (2, 0), (1, 1)]:
        out = tmp_path / f"s{threads}_{seed}.txt"
        stats = build_corpus([fasta], CorpusOptions(output=str(out), threads=threads, shuffle=True, seed=seed,
                                                    tmp_dir=str(tmp_path), **common))
        assert stats.shuffle_seed == seed
        outputs[threads, seed] = out.read_bytes()
    expected = _proteins(plain.read_bytes())
    assert any(b"\n" in p for p in expected)  # (a cropped protein's windows: lines of one protein)
    assert outputs[1, 0] == outputs[2, 0]
    for text in outputs.values():
        got = _proteins(text)
        assert sorted(got) == sorted(expected) and got != expected
    assert outputs[1, 1] != outputs[1, 0]
    assert not list(tmp_path.glob(".protrans-shuffle.*"))  # the buckets are gone


def test_shuffle_places_every_protein_uniformly(tmp_path):
    """Where the first protein of the input lands, over many seeds: every quarter of the corpus
    about as often (a shuffle within blocks or buckets only would keep it near the start). (The
    buckets held in memory: the order is the same through files, see the next test.)"""
    fasta = tmp_path / "in.fa"
    rng = random.Random(3)
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(12))}\n"
                             for i in range(400)))
    build_corpus([fasta], CorpusOptions(output=str(tmp_path / "p.txt")))
    first = _proteins((tmp_path / "p.txt").read_bytes())[0]
    quarters = [0, 0, 0, 0]
    for seed in range(80):
        out = tmp_path / "s.txt"
        build_corpus([fasta], CorpusOptions(output=str(out), shuffle=True, seed=seed, block_bytes=1024,
                                            tmp_dir=str(tmp_path)))
        quarters[_proteins(out.read_bytes()).index(first) * 4 // 400] += 1
    assert min(quarters) >= 8, quarters  # (20 expected in each; 8 or fewer: p < 0.001 for a quarter)



def test_shuffle_permutes_the_proteins_within_each_bucket(tmp_path):
    """A protein and the next one of the input follow each other in a uniform shuffle of n about
    once in all (n - 1 pairs, each 1/n). Scattered into 256 buckets but left in input order within
    each, 1 in 256 of the pairs would: ~20 of 5,000 proteins."""
    fasta = tmp_path / "in.fa"
    rng = random.Random(4)
    seqs = list(dict.fromkeys("".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(10)) for _ in range(5000)))
    fasta.write_text("".join(f">p{i}\n{seq}\n" for i, seq in enumerate(seqs)))
    out = tmp_path / "s.txt"
    build_corpus([fasta], CorpusOptions(output=str(out), shuffle=True, seed=0, tmp_dir=str(tmp_path)))
    got = [p.replace(b" ", b"").decode() for p in _proteins(out.read_bytes())]
    assert sorted(got) == sorted(seqs)
    position = {seq: k for k, seq in enumerate(got)}
    followed = sum(position[a] + 1 == position[b] for a, b in zip(seqs, seqs[1:]))
    assert followed <= 6, followed  # (Poisson(1): 7 or more has p < 0.0001)


def test_shuffle_order_is_the_same_whatever_form_the_input_comes_in(tmp_path):
    """The same proteins and seed give the same corpus from a file, its .gz, or stdin, and with
    the buckets in memory or written to files: the number of buckets was planned from the input's
    size (twice a file's, eight times a .gz's, 64 budgets for stdin), so the three gave three
    different orders."""
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 1500, seed=8, dirty=False)
    packed = tmp_path / "in.fa.gz"
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    got = {}
    # (a budget of 256 MiB holds this corpus's buckets in memory; 64 KiB writes them to files)
    for name, source, budget in [("file", fasta, 1 << 28), ("gz", packed, 1 << 28), ("files", fasta, 1 << 16)]:
        out = tmp_path / f"{name}.txt"
        build_corpus([source], CorpusOptions(output=str(out), shuffle=True, seed=5, block_bytes=4096,
                                             shuffle_bytes=budget, tmp_dir=str(tmp_path)))
        got[name] = out.read_bytes()
    with open(packed, "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", "-", "--shuffle", "--seed", "5",
                               "-o", str(tmp_path / "stdin.txt"), "--tmp-dir", str(tmp_path)],
                              stdin=stdin, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got["stdin"] = (tmp_path / "stdin.txt").read_bytes()
    assert len(_proteins(got["file"])) == 1500
    assert got["gz"] == got["file"] and got["stdin"] == got["file"] and got["files"] == got["file"]
    assert not list(tmp_path.glob(".protrans-shuffle.*"))

def test_shuffle_deals_shards_round_robin_and_compresses(tmp_path):
    """--shards N: the shuffled order dealt round-robin (shard sizes differ by at most one
    protein); .gz outputs are whole gzip files; validation proteins stay out of the training ones."""
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 300, seed=5, dirty=False)
    out, valid = tmp_path / "c.txt.gz", tmp_path / "v.txt.gz"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), num_shards=3, shuffle=True, seed=7, block_bytes=2048,
                                                valid_fraction=0.1, valid_output=str(valid), tmp_dir=str(tmp_path)))
    shards = [_proteins(gzip.decompress(shard_path(out, k).read_bytes())) for k in range(3)]
    counts = sorted(len(s) for s in shards)
    assert counts[-1] - counts[0] <= 1 and sum(counts) == stats.proteins_out - stats.valid_proteins
    plain = tmp_path / "plain.txt"
    build_corpus([fasta], CorpusOptions(output=str(plain), valid_fraction=0.1, valid_output=str(tmp_path / "pv.txt")))
    assert sorted(p for s in shards for p in s) == sorted(_proteins(plain.read_bytes()))
    assert gzip.decompress(valid.read_bytes()) == (tmp_path / "pv.txt").read_bytes()  # (validation: input order)


def test_the_summary_on_a_narrow_terminal_wraps_its_figures(tmp_path, run_cli, monkeypatch):
    """On a 40-column terminal the length percentiles were cut, `309/309/329/422…`, and so was
    their label: the upper percentiles were lost. They wrap now."""
    import io

    from rich.console import Console

    from protrans_cli import console

    screen = io.StringIO()
    monkeypatch.setattr(console, "stderr_console", lambda: Console(file=screen, width=40, highlight=False))
    fasta = tmp_path / "x.fa"
    fasta.write_text("".join(f">p{n}\n{'M' * n}\n" for n in (123456, 234567)))
    assert run_cli("prep", fasta, "-o", tmp_path / "c.txt").exit_code == 0
    text = screen.getvalue()
    assert "\u2026" not in text, text
    assert "/234567" in "".join(text.replace("\u2502", "").split()), text


def test_shuffle_cli_seed_needs_shuffle_and_summary_says_so(tmp_path, run_cli):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKT\n>b\nACDE\n>c\nWW\n")
    result = run_cli("prep", fasta, "--seed", "3")
    assert result.exit_code == 2 and "--seed is the seed of --shuffle" in result.output
    result = run_cli("prep", fasta, "--shuffle", "--seed", "3", "-o", tmp_path / "c.txt", "--stats", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["shuffle_seed"] == 3
    assert sorted(_proteins((tmp_path / "c.txt").read_bytes())) == [b"A C D E", b"M K T", b"W W"]
    assert summary_rows(result.stderr)["training proteins shuffled"] == "seed 3", result.stderr
    assert "shuffled" not in run_cli("prep", fasta, "-o", tmp_path / "c.txt").stderr


def test_shuffle_seed_defaults_to_0_as_help_and_the_library_say(tmp_path, run_cli):
    """`prep --help` and docs/prep.md: --seed's default is 0, CorpusOptions' too: `--shuffle` alone,
    `--shuffle --seed 0` and build_corpus(shuffle=True) write the same corpus (not seed 1's)."""
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 200, seed=2, dirty=False)
    texts = {}
    for name, extra in [("default", []), ("zero", ["--seed", "0"]), ("one", ["--seed", "1"])]:
        result = run_cli("prep", fasta, "--shuffle", *extra, "-o", tmp_path / f"{name}.txt",
                         "--stats", tmp_path / f"{name}.json", "--tmp-dir", tmp_path)
        assert result.exit_code == 0, result.output
        texts[name] = (tmp_path / f"{name}.txt").read_bytes()
    assert json.loads((tmp_path / "default.json").read_text())["shuffle_seed"] == 0
    build_corpus([fasta], CorpusOptions(output=str(tmp_path / "library.txt"), shuffle=True, tmp_dir=str(tmp_path)))
    assert texts["default"] == texts["zero"] == (tmp_path / "library.txt").read_bytes() != texts["one"]


def test_shuffle_from_stdin_with_shard_size(tmp_path):
    """stdin (no size to plan buckets by) and --shard-size: every protein once, shards cut at
    protein boundaries."""
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 200, seed=9, dirty=False)
    out = tmp_path / "c.txt"
    with open(fasta, "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "prep", "-", "--shuffle", "--shard-size",
                               "20K", "-o", str(out), "--tmp-dir", str(tmp_path)], stdin=stdin,
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shards = sorted(tmp_path.glob("c.*.txt"))
    assert len(shards) > 2
    got = [p for shard in shards for p in _proteins(shard.read_bytes())]
    plain = tmp_path / "plain.txt"
    build_corpus([fasta], CorpusOptions(output=str(plain)))
    expected = _proteins(plain.read_bytes())
    assert sorted(got) == sorted(expected) and got != expected
    assert not list(tmp_path.glob(".protrans-shuffle.*"))


def test_shuffle_a_protein_bigger_than_the_memory_budget(tmp_path):
    """A protein whose text is bigger than twice `shuffle_bytes`, alone or among small ones, is
    read whole: scattered again it came back whole into one piece, again and again, until the
    piece's name was too long ('File name too long')."""
    rng = random.Random(4)
    big = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(5000))  # 10,000 bytes of text
    fasta = tmp_path / "in.fa"
    fasta.write_text(f">big\n{big}\n")
    out = tmp_path / "c.txt"
    build_corpus([fasta], CorpusOptions(output=str(out), shuffle=True, shuffle_bytes=1024, tmp_dir=str(tmp_path)))
    assert _proteins(out.read_bytes()) == [" ".join(big).encode()]
    fasta.write_text(f">big\n{big}\n" + "".join(f">p{i}\nMKTAYIAK\n" for i in range(50)))
    build_corpus([fasta], CorpusOptions(output=str(out), shuffle=True, shuffle_bytes=1024, tmp_dir=str(tmp_path)))
    got = _proteins(out.read_bytes())
    assert len(got) == 51 and " ".join(big).encode() in got
    assert not list(tmp_path.glob(".protrans-shuffle.*"))


def test_shuffle_with_many_shards_raises_the_open_file_limit_for_its_buckets(tmp_path):
    """--shards N keeps N files open and --shuffle up to 256 buckets besides: the soft limit was
    raised for the shards alone, and `--shards 1000 --shuffle` failed on the default 1024 with
    'Too many open files' once the buckets were opened. Refused up front (exit 2) where the hard
    limit has no room for both."""
    resource = pytest.importorskip("resource")
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 400, seed=2, dirty=False)
    # (shuffle_bytes=1024: 256 buckets, as a UniRef-sized input or stdin makes)
    script = ("import resource, sys\n"
              "from protrans_cli.corpus import CorpusOptions, build_corpus\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]) or hard))\n"
              "build_corpus([sys.argv[3]], CorpusOptions(output=sys.argv[4], num_shards=200, shuffle=True, "
              "shuffle_bytes=1024, tmp_dir=sys.argv[5]))\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 600:
        pytest.skip("the hard limit on open files is too low here")
    run = lambda *limits: subprocess.run(  # noqa: E731
        [sys.executable, "-c", script, *map(str, limits), str(fasta), str(tmp_path / "c.txt"), str(tmp_path)],
        capture_output=True, text=True)
    done = run(300, 0)
    assert done.returncode == 0, done.stderr
    got = [p for k in range(200) for p in _proteins(shard_path(tmp_path / "c.txt", k).read_bytes())]
    plain = tmp_path / "plain.txt"
    build_corpus([fasta], CorpusOptions(output=str(plain)))
    assert sorted(got) == sorted(_proteins(plain.read_bytes()))
    done = run(300, 300)  # no room: refused before anything is written
    assert done.returncode != 0 and "--shuffle keeps up to 256 scratch files open besides the 200 shard(s)" in done.stderr
    assert not list(tmp_path.glob(".protrans-shuffle.*"))


def test_shuffle_on_a_full_scratch_disk_names_it(tmp_path, monkeypatch):
    """A full --tmp-dir: one line naming the scratch folder and the remedy, exit 1 (the cleanup's
    close of the buffered rest failed again and replaced it with a bare "No space left on
    device"); no output left."""
    import errno

    import protrans_cli.corpus as corpus
    from protrans_cli.errors import RuntimeFailure

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):  # (the buffered rest, flushed)
            raise OSError(errno.ENOSPC, "No space left on device")

    import builtins

    def full_scratch(path, mode="r", *args, **kwargs):  # (the bucket files only)
        if ".protrans-shuffle." in str(path) and "w" in mode:
            return Full()
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(corpus, "open", full_scratch, raising=False)
    fasta = tmp_path / "in.fa"
    _random_fasta(fasta, 50, seed=4, dirty=False)
    out = tmp_path / "c.txt"
    with pytest.raises(RuntimeFailure, match=r"--shuffle cannot write its buckets: .*--tmp-dir") as caught:
        build_corpus([fasta], CorpusOptions(output=str(out), shuffle=True, shuffle_bytes=1024, tmp_dir=str(tmp_path)))
    assert ".protrans-shuffle." in str(caught.value)
    assert not out.exists() and not list(tmp_path.glob(".protrans-shuffle.*"))


def test_tmp_dir_help_names_every_user_of_the_scratch_space():
    """--shuffle writes its buckets (about the corpus's size) to --tmp-dir, beside the output by
    default: the option's help named only --dedup and the -j workers."""
    from protrans_cli.cli.prep import command

    (option,) = [p for p in command.params if p.name == "tmp_dir"]
    assert "--dedup" in option.help and "--shuffle" in option.help
    assert "dedup, shuffle and clusters beside the output" in option.help
    # (--clusters writes its buckets there too, the corpus's text once more)
    assert "--clusters" in option.help


def test_shuffle_streams_of_nested_buckets_differ(tmp_path):
    """A bucket and its first sub-bucket drew the same numbers: numpy pads a seed to four words
    with zeros, so [seed, 1, 3] and [seed, 1, 3, 0] were one stream."""
    from protrans_cli.corpus import _Shuffle

    shuffle = _Shuffle(tmp_path, seed=5, budget=1024)
    for purpose in (1, 2):
        draws = {key: tuple(shuffle._stream(purpose, key).integers(1 << 30, size=4)) for key in [(3,), (3, 0), (3, 0, 0)]}
        assert len(set(draws.values())) == 3, draws


def test_a_log_gets_progress_lines(run_cli, tmp_path, monkeypatch):
    """stderr that is no terminal (a batch job's `2> prep.log`) gets a plain progress line every
    PROTRANS_PROGRESS_INTERVAL seconds (0 here: one per update), as embed's and train's logs do:
    prep wrote none at all, for however long a UniRef-sized input took."""
    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")
    fasta = tmp_path / "p.fa"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQRQISFVKSHFSRQ{'A' * i}\n" for i in range(40)))
    result = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--shuffle")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("prep: ") and "B/s]" in line for line in lines), result.stderr
    assert any(line.startswith("prep: shuffle: ") and "(100%)" in line for line in lines), result.stderr
    assert "\r" not in result.stderr
    monkeypatch.setenv("PROTRANS_NO_PROGRESS", "1")
    result = run_cli("prep", fasta, "-o", tmp_path / "d.txt")
    assert result.exit_code == 0 and not any(line.startswith("prep: ") for line in result.stderr.splitlines())


def test_a_fasta_compressed_twice_is_said_to_be(run_cli, tmp_path):
    """A .fa.gz that a web server compressed again on the fly (Content-Encoding: gzip), saved as
    sent by wget or curl without --compressed: the bare "not FASTA" (or labels' "a binary file"),
    though the file is the FASTA asked for under one layer too many. One line saying so, from
    prep (file and stdin), embed, labels and variants; gzip or zstd inside."""
    import gzip

    import zstandard

    fasta = b">a\nMKTAYIAK\n"
    for inner, kind in ((gzip.compress(fasta), "gzip"), (zstandard.ZstdCompressor().compress(fasta), "zstd")):
        twice = tmp_path / "twice.fa.gz"
        twice.write_bytes(gzip.compress(inner))
        said = f"the file is compressed twice (decompressed once, it is {kind} data again: a download a server"
        _every_reader_says(run_cli, tmp_path, twice, said)


def test_a_header_without_an_id_is_named_by_its_line_as_embed_names_it(run_cli, tmp_path):
    # prep --strict said "FILE:1, record '<no id>': header has no id", a record no file holds,
    # where embed (and the FASTA reader) say "FILE:1: header has no id"
    fasta = tmp_path / "noid.fa"
    fasta.write_text(">b\nMKV\n>\nMKV\n")
    said = f"protrans: error: {fasta}:3: header has no id\n"
    r = run_cli("prep", fasta, "-o", tmp_path / "c.txt", "--strict")
    assert r.exit_code == 1 and r.stderr == said, r.stderr
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and r.stderr == said, r.stderr
