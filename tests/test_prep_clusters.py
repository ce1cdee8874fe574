"""`protrans prep --clusters TSV`: each cluster's members written together, a line each, then an
empty line; the validation split, --shuffle and the shards keep clusters whole."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from protrans_cli.corpus import CorpusOptions, build_corpus, in_validation, shard_path
from protrans_cli.errors import InputError, UsageError

# 7 records in 3 clusters, z1 in none (it is written as a cluster of its own)
FASTA = ">a1 first\nMKV\n>a2\nmkl\n>b1\nGGG\n>c1\nPPP\n>a3\nAAA\n>z1\nWWW\n>b2\nHHH\n"
TSV = "A\ta1\nA\ta2\nB\tb1\nC\tc1\nA\ta3\nB\tb2\n"
GROUPED = "M K V\nM K L\nA A A\n\nG G G\nH H H\n\nP P P\n\nW W W\n\n"


def clusters_of(text: str) -> list[list[str]]:
    """The corpus's clusters: the lines between empty lines."""
    return [block.split("\n") for block in text.split("\n\n") if block]


@pytest.fixture
def small(tmp_path):
    fasta, tsv = tmp_path / "in.fa", tmp_path / "clusters.tsv"
    fasta.write_text(FASTA)
    tsv.write_text(TSV)
    return fasta, tsv


def test_members_written_together_in_the_tsvs_cluster_order(run_cli, small, tmp_path):
    fasta, tsv = small
    out, stats = tmp_path / "corpus.txt", tmp_path / "stats.json"
    result = run_cli("prep", fasta, "--clusters", tsv, "-o", out, "--stats", stats)
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == GROUPED
    summary = json.loads(stats.read_text())
    assert summary["clusters_out"] == 4 and summary["unclustered"] == 1 and summary["proteins_out"] == 7
    assert "1 of 7 protein(s) written have an id that is no member in the TSV" in result.stderr
    assert "z1" in result.stderr


def test_a_gzip_tsv_is_read_and_mmseqs_rep_rep_lines_count_once(run_cli, small, tmp_path):
    fasta, _ = small
    tsv = tmp_path / "c.tsv.gz"  # (mmseqs lists the representative as a member of its own cluster)
    tsv.write_bytes(gzip.compress(b"a1\ta1\na1\ta2\na1\ta3\nb1\tb1\r\nb1\tb2\nc1\tc1\nz1\tz1\n\n"))
    out = tmp_path / "corpus.txt.gz"
    result = run_cli("prep", fasta, "--clusters", tsv, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert gzip.decompress(out.read_bytes()).decode() == GROUPED
    assert "no member in the TSV" not in result.stderr


def test_without_clusters_every_protein_is_a_cluster_of_one(tmp_path, small):
    fasta, tsv = small
    plain, grouped = tmp_path / "plain.txt", tmp_path / "grouped.txt"
    build_corpus([fasta], CorpusOptions(output=str(plain)))
    assert plain.read_text() == "M K V\n\nM K L\n\nG G G\n\nP P P\n\nA A A\n\nW W W\n\nH H H\n\n"
    stats = build_corpus([fasta], CorpusOptions(output=str(grouped), clusters=str(tsv)))
    assert sorted(sum(clusters_of(grouped.read_text()), [])) == sorted(sum(clusters_of(plain.read_text()), []))
    assert "clusters_out" not in build_corpus([fasta], CorpusOptions(output=str(plain))).to_dict()
    assert stats.to_dict()["clusters_out"] == 4


def _many(tmp_path, clusters=60, seed=0):
    """A FASTA of `clusters` clusters of 1 to 4 members, in a shuffled order, and its TSV; the
    expected clusters as {cluster id: [member lines]} and a record without a cluster."""
    rng = random.Random(seed)
    members, expected = [], {}
    for c in range(clusters):
        for m in range(1 + c % 4):
            seq = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(5 + rng.randrange(20)))
            members.append((f"C{c}", f"c{c}m{m}", seq))
            expected.setdefault(f"C{c}", []).append(" ".join(seq))
    records = members[:]
    rng.shuffle(records)
    fasta = tmp_path / "many.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for _, rid, seq in records) + ">loose\nMKKK\n")
    tsv = tmp_path / "many.tsv"
    tsv.write_text("".join(f"{cid}\t{rid}\n" for cid, rid, _ in members))
    order = {rid: i for i, (_, rid, _) in enumerate(records)}  # members come in the input's order
    for cid in expected:
        rows = [(order[rid], " ".join(seq)) for c, rid, seq in members if c == cid]
        expected[cid] = [line for _, line in sorted(rows)]
    return fasta, tsv, expected


def _as_sets(text: str) -> list[tuple[str, ...]]:
    return [tuple(c) for c in clusters_of(text)]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_validation_split_keeps_every_cluster_whole(tmp_path, threads):
    fasta, tsv, expected = _many(tmp_path)
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt.gz"
    stats = build_corpus([fasta], CorpusOptions(output=str(train), clusters=str(tsv), valid_fraction=0.3,
                                                valid_output=str(valid), threads=threads, block_bytes=1024,
                                                shuffle_bytes=1024))
    train_clusters = _as_sets(train.read_text())
    valid_clusters = _as_sets(gzip.decompress(valid.read_bytes()).decode())
    want_valid = [tuple(v) for c, v in expected.items() if in_validation(c, 0.3)]
    want_train = [tuple(v) for c, v in expected.items() if not in_validation(c, 0.3)]
    loose = [("M K K K",)]
    assert want_valid and want_train  # both sides hold clusters
    (want_valid if in_validation("loose", 0.3) else want_train).extend(loose)
    assert valid_clusters == want_valid and train_clusters == want_train  # (in the TSV's order, loose last)
    assert stats.valid_proteins == sum(len(c) for c in valid_clusters)
    assert stats.valid_residues == sum(len(line.split()) for c in valid_clusters for line in c)
    assert stats.clusters_out == len(expected) + 1 and stats.unclustered == 1


def test_shuffle_shuffles_clusters_and_keeps_them_whole(tmp_path):
    fasta, tsv, expected = _many(tmp_path)
    outs = []
    for seed, threads in ((1, 1), (1, 2), (2, 1)):
        out = tmp_path / f"s{len(outs)}.txt"
        build_corpus([fasta], CorpusOptions(output=str(out), clusters=str(tsv), shuffle=True, seed=seed,
                                            shuffle_bytes=1024, block_bytes=1024, threads=threads))
        outs.append(_as_sets(out.read_text()))
    want = sorted([tuple(v) for v in expected.values()] + [("M K K K",)])
    assert sorted(outs[0]) == want  # every cluster whole, once (its members in the input's order)
    assert outs[0] == outs[1] and outs[0] != outs[2]  # the seed decides the order, not -j
    assert outs[0] != [tuple(v) for v in expected.values()] + [("M K K K",)]


@pytest.mark.parametrize("sharding", [{"num_shards": 3}, {"shard_size": 200}])
def test_shards_never_cut_a_cluster(tmp_path, sharding):
    fasta, tsv, expected = _many(tmp_path)
    out = tmp_path / "c.txt"
    build_corpus([fasta], CorpusOptions(output=str(out), clusters=str(tsv), block_bytes=1024, **sharding))
    shards = sorted(tmp_path.glob("c.*.txt"))
    assert len(shards) >= 3
    got = [c for shard in shards for c in _as_sets(shard.read_text())]
    assert sorted(got) == sorted([tuple(v) for v in expected.values()] + [("M K K K",)])
    if "num_shards" in sharding:  # dealt round-robin a cluster at a time
        first = _as_sets(shard_path(out, 0).read_text())
        assert first == ([tuple(v) for v in expected.values()] + [("M K K K",)])[::3]


@pytest.mark.parametrize("text, problem", [
    ("A\ta1\nB\ta2\nC\ta1\n", ":3: member 'a1' named again (it was on line 1)"),
    ("A\ta1\nA\ta2\tx\n", ":2: expected 2 tab-separated columns"),
    ("A\ta1\nA a2\n", ":2: expected 2 tab-separated columns"),
    ("A\ta1\n\ta2\n", ":2: expected 2 tab-separated columns"),
])
def test_a_bad_tsv_line_is_one_line_naming_file_and_line(run_cli, small, tmp_path, text, problem):
    fasta, tsv = small
    tsv.write_text(text)
    out = tmp_path / "corpus.txt"
    result = run_cli("prep", fasta, "--clusters", tsv, "-o", out)
    assert result.exit_code == 1, result.stderr
    assert f"{tsv}{problem}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_tsv_and_crop_are_refused_before_anything_is_written(run_cli, small, tmp_path):
    fasta, _ = small
    out = tmp_path / "corpus.txt"
    result = run_cli("prep", fasta, "--clusters", tmp_path / "nope.tsv", "-o", out)
    assert result.exit_code == 1 and "nope.tsv: no such file" in result.stderr
    result = run_cli("prep", fasta, "--clusters", small[1], "--max-length", "2", "--long", "crop", "-o", out)
    assert result.exit_code == 2 and "--clusters cannot be combined with --long crop" in result.stderr
    with pytest.raises(UsageError, match="needs a file"):
        build_corpus([fasta], CorpusOptions(output=str(out), clusters="-"))
    with pytest.raises(UsageError, match="also an input"):
        build_corpus([fasta], CorpusOptions(output=str(small[1]), clusters=str(small[1])))
    assert not out.exists()
    with pytest.raises(InputError):
        build_corpus([fasta], CorpusOptions(output=str(out), clusters=str(tmp_path / "nope.tsv")))


def test_left_out_members_are_not_written_and_an_emptied_cluster_not_at_all(tmp_path, small):
    fasta, tsv = small
    fasta.write_text(FASTA.replace(">c1\nPPP", ">c1\nP").replace(">a2\nmkl", ">a2\nMKV"))
    out = tmp_path / "c.txt"
    stats = build_corpus([fasta], CorpusOptions(output=str(out), clusters=str(tsv), min_length=2, dedup=True))
    assert out.read_text() == "M K V\nA A A\n\nG G G\nH H H\n\nW W W\n\n"
    assert stats.clusters_out == 3 and stats.rejected["duplicate"] == 1 and stats.rejected["too_short"] == 1


def test_a_clustered_prep_trains_one_member_of_every_cluster_an_epoch(run_cli, tmp_path):
    """The two halves together: `prep --clusters` writes the corpus that `train --sample-clusters`
    reads, one unit per cluster: 40 clusters of 3 members make an epoch of 40 proteins (5 steps of 8),
    where the same corpus read by lines is 120 (15 steps)."""
    rng = random.Random(1)
    records, rows = [], []
    for c in range(40):
        for m in range(3):
            name = f"c{c}m{m}"
            records.append(f">{name}\n{''.join(rng.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(20))}\n")
            rows.append(f"rep{c}\t{name}\n")
    fasta, tsv, corpus = tmp_path / "in.fa", tmp_path / "clu.tsv", tmp_path / "corpus.txt"
    fasta.write_text("".join(records))
    tsv.write_text("".join(rows))
    res = run_cli("prep", fasta, "--clusters", tsv, "-o", corpus)
    assert res.exit_code == 0, res.stderr
    assert [len(c) for c in clusters_of(corpus.read_text())] == [3] * 40
    for flags, epoch_six in ((["--sample-clusters"], 2), ([], 1)):
        out = tmp_path / f"run{len(flags)}"
        res = run_cli("train", "--family", "esm", "--preset", "tiny", "--corpus", corpus, "-o", out,
                      "--num-steps", "6", "--max-length", "32", "--global-batch-size", "8",
                      "--micro-batch-size", "8", "--log-every", "1", "-j", "1", *flags)
        assert res.exit_code == 0, res.stderr
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = {row["step"]: row["epoch"] for row in lines if "epoch" in row and "loss" in row}
        assert epochs[5] == 1 and epochs[6] == epoch_six, epochs  # (epochs count from 1)


def test_the_proteins_without_a_cluster_are_read_back_a_chunk_at_a_time(tmp_path, monkeypatch):
    """The loose proteins' scratch file (records whose id is in no cluster: a whole corpus when
    the TSV's ids do not match the FASTA's) is written out as it is read, a chunk at a time:
    `(*chunks, tail)` read all of it into memory before the first write."""
    import protrans_cli.corpus as corpus

    grouper = corpus._Grouper(tmp_path / "g", budget=16 * 64)  # (spills past 64 bytes)
    grouper.directory.mkdir()
    docs = [b"M K V %d" % i for i in range(40)]
    for doc in docs:
        grouper.add_loose([doc])
    assert grouper.paths[grouper.COUNT].exists()  # (spilled: read back from the file)
    events = []
    read = corpus._Grouper._chunks

    def small_chunks(path):
        for chunk in read(path):
            for at in range(0, len(chunk), 50):
                events.append("read")
                yield chunk[at:at + 50]

    monkeypatch.setattr(corpus._Grouper, "_chunks", staticmethod(small_chunks))
    written = []
    grouper.emit(lambda part: (events.append("write"), written.extend(part)))
    assert written == docs and grouper.clusters == len(docs)
    assert events.index("write") < len(events) - 1 - events[::-1].index("read")  # (written between reads)
    assert not grouper.paths[grouper.COUNT].exists()


def test_more_shards_than_training_clusters_is_warned_in_clusters(run_cli, small, tmp_path):
    """--shards deals whole clusters: 7 proteins in 4 clusters to 6 shards leave the last 2 empty,
    which the warning (counting proteins: 7 for 6 shards) did not say."""
    fasta, tsv = small
    result = run_cli("prep", fasta, "--clusters", tsv, "-o", tmp_path / "c.txt", "--shards", "6")
    assert result.exit_code == 0, result.stderr
    sizes = [shard_path(tmp_path / "c.txt", k).stat().st_size for k in range(6)]
    assert sizes[4:] == [0, 0] and all(sizes[:4])
    assert "--shards 6: 4 training clusters for 6 shards, so the last 2 are empty" in result.stderr
    result = run_cli("prep", fasta, "--clusters", tsv, "-o", tmp_path / "d.txt", "--shards", "4")
    assert result.exit_code == 0 and "are empty" not in result.stderr
