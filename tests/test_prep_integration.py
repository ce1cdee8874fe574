"""`protrans prep` on the real files in ../shared/data (skipped when absent): counts from SOURCES.md
and the output of a per-record reference (read_fasta + normalise + " ".join)."""

from __future__ import annotations

import json

import pytest

from protrans_cli.corpus import CorpusOptions, build_corpus
from protrans_cli.io.fasta import read_fasta
from protrans_cli.residues import normalise

pytestmark = pytest.mark.shared


def reference(path, rare="x"):
    docs = []
    for rec in read_fasta(path):
        docs.append(" ".join(normalise(rec.sequence, rare=rare)).encode() + b"\n\n")
    return b"".join(docs)


def test_ecoli_proteome(shared_data, tmp_path, run_cli):
    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    out, stats_path = tmp_path / "c.txt", tmp_path / "s.json"
    result = run_cli("prep", fasta, "-o", out, "--stats", stats_path, "-j", "2")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(stats_path.read_text())
    # SOURCES.md: 4,401 proteins; 1,354,252 residues; length 8-2,339; U 3
    assert (stats["records_in"], stats["proteins_out"], stats["residues_out"]) == (4401, 4401, 1_354_252)
    assert stats["rare_to_x"] == 3
    assert stats["length_percentiles"]["p0"] == 8 and stats["length_percentiles"]["p100"] == 2339
    assert stats["length_percentiles"]["p50"] == 271  # SOURCES.md: median 271
    expected = reference(fasta)
    assert expected and out.read_bytes() == expected


def test_ecoli_dedup_drops_the_41_duplicates(shared_data, tmp_path):
    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    seen, unique = set(), []
    for rec in read_fasta(fasta):
        seq = normalise(rec.sequence)
        if seq not in seen:
            seen.add(seq)
            unique.append(" ".join(seq).encode() + b"\n\n")
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), dedup=True, block_bytes=64 << 10, threads=2))
    assert stats.rejected["duplicate"] == 41 == 4401 - len(unique)
    assert out.read_bytes() == b"".join(unique)


def test_gzipped_trembl_proteome(shared_data, tmp_path):
    fasta = shared_data / "proteomes" / "uniprotkb_proteome_UP000078142_2024_08_30.fasta.gz"
    out = tmp_path / "c.txt.gz"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), valid_fraction=0.1,
                                                valid_output=str(tmp_path / "v.txt")))
    # SOURCES.md: 5,236 proteins; 1,734,959 residues; standard alphabet only
    assert (stats.records_in, stats.proteins_out, stats.residues_out) == (5236, 5236, 1_734_959)
    assert stats.rejected_total == 0 and stats.rare_to_x == 0
    assert 400 < stats.valid_proteins < 650


def test_prodigal_stops_and_the_x_scaffold(shared_data, tmp_path):
    fasta = shared_data / "pathological" / "MIIJ01000039.single.faa.gz"
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out)))
    # every one of the 404 records ends in '*': the stop is dropped, none is rejected
    assert stats.proteins_out == 404 and stats.rejected_total == 0
    text = out.read_bytes()
    assert b"*" not in text and text == reference(fasta)
    longest = max(text.split(b"\n\n"), key=len)
    assert longest.count(b"X") == 144_257  # SOURCES.md: the N-scaffold record
    cropped = build_corpus([fasta], CorpusOptions(output=str(out), max_length=1000))
    assert cropped.rejected["too_long"] == sum(1 for r in read_fasta(fasta) if len(normalise(r.sequence)) > 1000)
    assert cropped.rejected["too_long"] >= 1


def test_metagenome_partial_genes(shared_data, tmp_path):
    fasta = shared_data / "pathological" / "SRR492066.meta.faa.gz"
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out)))
    assert stats.proteins_out == 70 and out.read_bytes() == reference(fasta)


def test_illegal_amino_acids(shared_data, run_cli):
    fasta = shared_data / "pathological" / "illegal_amino_acids.fasta"
    result = run_cli("prep", fasta)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == (b"M R H K D E S T N Q C X G P A V I F Y W L X X X X\n\n"
                                   b"T H I S I S A L X W E R C A S E S E Q X E N C E\n\n"
                                   b"P R X T E I N\n\n")
    keep = run_cli("prep", fasta, "--rare", "keep")
    assert keep.stdout_bytes.split(b"\n\n")[0] == b"M R H K D E S T N Q C U G P A V I F Y W L O X Z B"


def test_titin_twice_cropped_into_windows(shared_data, tmp_path):
    fasta = shared_data / "pathological" / "titin_twice.fasta"
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), max_length=1024, long="crop", block_bytes=4096))
    lines = out.read_bytes().split(b"\n")
    windows = [line for line in lines if line]
    assert stats.proteins_out == 1 and stats.lines_out == len(windows) == 68  # 67 x 1024 + 92
    assert [len(w.split()) for w in windows] == [1024] * 67 + [68_700 - 67 * 1024]
    assert b"".join(w.replace(b" ", b"") for w in windows) == reference(fasta).replace(b" ", b"").strip()
