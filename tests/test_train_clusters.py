"""`train --sample-clusters`: a corpus read by clusters (a block of lines between blank lines is
one cluster, each line a member), one member of every cluster an epoch, chosen uniformly by
(seed, epoch, cluster), as ESM-1b/ESM-2 sampled UniRef90 members of UniRef50 clusters."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import itertools

import numpy as np
import pytest
import torch

from conftest import DATA
from protrans_cli.errors import UsageError
from protrans_cli.training.data import (Clusters, Cursor, CorpusStream, StreamState, TokenLayout, count_proteins,
                                        iter_proteins, next_phase_state)

TRAIN = DATA / "train"
LEARNABLE = str(TRAIN / "learnable.txt")
SIZES = (1, 2, 3)  # the clusters' sizes, in turn

torch.set_num_threads(1)


def _proteins() -> list[str]:
    return [line for line in (TRAIN / "learnable.txt").read_text().splitlines() if line.strip()]


def _clustered(path, sizes=SIZES, compress=False) -> list[list[str]]:
    """A corpus of the learnable proteins in clusters of `sizes` members in turn, written to
    `path`; its clusters (members as written)."""
    proteins, clusters = iter(_proteins()), []
    for size in itertools.cycle(sizes):
        members = list(itertools.islice(proteins, size))
        if len(members) < size:
            break
        clusters.append(members)
    text = "".join("".join(m + "\n" for m in members) + "\n" for members in clusters)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return clusters


def _layout():
    from protrans_cli.models import get_family

    family = get_family("bert")
    return TokenLayout.from_tokenizer(family.build_tokenizer(), family.prepare)


def _stream(paths, **kw):
    layout = kw.pop("layout", None) or _layout()
    args = dict(max_length=40, global_batch_size=16, micro_batch_size=4, bucket_batches=2, seed=3)
    args.update(kw)
    return CorpusStream([str(p) for p in paths], layout, **args)


def _rows(step_batch):
    """(index, epoch, residues) of every sample of a step, in order."""
    return [(s.index, s.epoch, s.residues.tobytes(), s.n_terminus, s.c_terminus)
            for mb in step_batch.micro_batches for s in mb]


def test_one_member_of_every_cluster_an_epoch_each_drawn_uniformly(tmp_path):
    corpus = tmp_path / "c.txt"
    clusters = _clustered(corpus)
    assert [len(c) for c in clusters[:6]] == [1, 2, 3, 1, 2, 3] and len(clusters) == 150
    assert count_proteins([corpus]) == 300 and count_proteins([corpus], clusters=True) == 150
    counts = collections.Counter()
    reached = collections.defaultdict(set)
    picks_by_epoch = []
    for epoch in range(60):
        cursor = Cursor()
        got = list(iter_proteins([corpus], cursor=cursor, clusters=Clusters(seed=4, epoch=epoch)))
        assert len(got) == len(clusters) == cursor.proteins  # one per cluster, counted as one
        picks = []
        lines = 0
        for n, ((path, lineno, text), members) in enumerate(zip(got, clusters)):
            member = members.index(" ".join(text))  # the line it came from is the member's own
            assert lineno == lines + 1 + member and path == str(corpus)
            lines += len(members) + 1
            counts[len(members), member] += 1
            reached[n].add(member)
            picks.append(member)
        picks_by_epoch.append(picks)
    # every member reached; a third of 50 3-member clusters x 60 epochs each (1,000, sd 26)
    assert all(reached[n] == set(range(len(c))) for n, c in enumerate(clusters))
    assert all(880 <= counts[3, m] <= 1120 for m in range(3)), counts
    assert all(1380 <= counts[2, m] <= 1620 for m in range(2)), counts
    assert len({tuple(p) for p in picks_by_epoch}) == 60  # another choice every epoch
    # deterministic for a seed; another seed chooses otherwise
    again = [lineno for _, lineno, _ in iter_proteins([corpus], clusters=Clusters(4, 7))]
    assert again == [lineno for _, lineno, _ in iter_proteins([corpus], clusters=Clusters(4, 7))]
    assert again != [lineno for _, lineno, _ in iter_proteins([corpus], clusters=Clusters(5, 7))]


def test_a_corpus_of_one_protein_a_block_reads_the_same_either_way(tmp_path):
    """Every existing corpus (prep writes a protein then a blank line) gives exactly today's
    stream with --sample-clusters: the same proteins, positions and batches, byte for byte."""
    shard = TRAIN / "learnable_shard2.txt.gz"
    paths = [LEARNABLE, str(shard)]
    plain, cursor_a = [], Cursor()
    for item in iter_proteins(paths, cursor=cursor_a):
        plain.append((item, cursor_a.copy()))
    by_cluster, cursor_b = [], Cursor()
    for item in iter_proteins(paths, cursor=cursor_b, clusters=Clusters(3, 1)):
        by_cluster.append((item, cursor_b.copy()))
    assert plain == by_cluster and len(plain) == 400
    a = list(_stream(paths, max_epochs=2))
    b = list(_stream(paths, max_epochs=2, sample_clusters=True))
    assert len(a) == len(b) == 50
    for x, y in zip(a, b):
        assert _rows(x) == _rows(y) and x.state_after == y.state_after


@pytest.mark.parametrize("compress", [False, True])
def test_the_stream_counts_clusters_and_resumes_anywhere_as_the_uninterrupted_one(tmp_path, compress):
    corpus = tmp_path / ("c.txt.gz" if compress else "c.txt")
    clusters = _clustered(corpus, compress=compress)
    layout = _layout()
    steps = list(_stream([corpus], layout=layout, max_epochs=3, sample_clusters=True))
    assert len(steps) == 27  # 150 clusters: 9 global batches of 16 an epoch (six left over)
    per_epoch = collections.defaultdict(list)
    for sb in steps:
        for s in (s for mb in sb.micro_batches for s in mb):
            per_epoch[s.epoch].append(s.index)
    assert all(len(set(v)) == len(v) == 144 and max(v) < 150 for v in per_epoch.values())  # no cluster twice
    # the residues trained are those of the cluster the index names
    reader = list(iter_proteins([corpus], clusters=Clusters(3, 1)))
    epoch1 = [s for sb in steps[9:18] for mb in sb.micro_batches for s in mb]
    inverse = {int(t): c for c, t in zip("ACDEFGHIKLMNPQRSTVWY", (layout.residue_table[ord(c)]
                                                                   for c in "ACDEFGHIKLMNPQRSTVWY"))}
    for s in epoch1:
        text = "".join(inverse[int(t)] for t in s.residues)
        assert text in reader[s.index][2]  # (a crop's window of it)
        assert " ".join(reader[s.index][2]) in clusters[s.index]
    # another epoch trains other members of the clusters of 2 and 3
    chosen = [{s.index: s.residues.tobytes() for sb in steps[9 * e:9 * e + 9] for mb in sb.micro_batches
               for s in mb} for e in range(3)]
    common = set(chosen[0]) & set(chosen[1])
    assert sum(chosen[0][i] != chosen[1][i] for i in common) >= 40
    # resumed from any step's saved position (through a checkpoint's save and load): the same steps
    for k in range(len(steps) - 1):
        saved = StreamState.from_dict(steps[k].state_after.to_dict())
        resumed = list(_stream([corpus], layout=layout, max_epochs=3, sample_clusters=True, state=saved))
        assert [_rows(sb) for sb in resumed] == [_rows(sb) for sb in steps[k + 1:]], k
    # two ranks split each global batch without a cluster in common
    ranks = [list(_stream([corpus], layout=layout, max_epochs=1, sample_clusters=True, rank=r, world_size=2))
             for r in range(2)]
    for whole, a, b in zip(steps, *ranks):
        ia, ib = ({s.index for mb in x.micro_batches for s in mb} for x in (a, b))
        assert not ia & ib and sorted(ia | ib) == sorted(s.index for mb in whole.micro_batches for s in mb)


def test_a_new_phase_starts_after_the_clusters_of_the_previous_ones_buffer(tmp_path):
    corpus = tmp_path / "c.txt"
    _clustered(corpus)
    stream = iter(_stream([corpus], sample_clusters=True, bucket_batches=1))
    state = next(stream).state_after  # one batch of a buffer of one: the buffer done
    assert state.buffer_start == 16 and state.batches_done == 0
    mid = dataclasses.replace(state, batches_done=1)
    assert next_phase_state(mid, [str(corpus)], 16, 2, clusters=True).buffer_start == 48
    # by lines, the 32 proteins of that buffer would have been counted as 32 positions
    assert next_phase_state(mid, [str(corpus)], 16, 1, clusters=True).buffer_start == 32


def test_workers_yield_the_same_cluster_batches_as_one_process(tmp_path):
    from protrans_cli.training.data import step_batches

    corpus = tmp_path / "c.txt"
    _clustered(corpus)
    one = [_rows(sb) for sb in _stream([corpus], sample_clusters=True, max_epochs=2)]
    two = [_rows(sb) for sb in step_batches(_stream([corpus], sample_clusters=True, max_epochs=2), 2)]
    assert one == two


# --- the run --------------------------------------------------------------------------------

def _config(tmp_path, corpus, **kw):
    from protrans_cli.training.config import TrainConfig

    args = dict(family="bert", corpus=[str(corpus)], output_dir=str(tmp_path / "run"), num_steps=12,
                max_length=64, global_batch_size=16, micro_batch_size=8, lr=3e-3, warmup_steps=2, log_every=1,
                save_every=100, threads=1, bucket_batches=2, seed=5, sample_clusters=True)
    args.update(kw)
    return TrainConfig(**args)


def test_a_clustered_run_resumes_as_the_uninterrupted_one_and_refuses_the_other_reading(tmp_path, capsys):
    from safetensors.torch import load_file

    from protrans_cli.training.loop import train

    corpus = tmp_path / "c.txt"
    _clustered(corpus)
    val = tmp_path / "v.txt"
    _clustered(val, sizes=(3,))
    kw = dict(val_corpus=[str(val)], eval_every=4, num_eval_batches=1)
    whole = train(_config(tmp_path / "whole", corpus, **kw))  # 12 steps: 9 an epoch
    assert "one member of every cluster an epoch (--sample-clusters)" in capsys.readouterr().err
    part1 = train(_config(tmp_path / "parts", corpus, stop_after=5, **kw))
    with pytest.raises(UsageError, match=r"other settings \(sample_clusters: True there, False here"):
        train(_config(tmp_path / "parts", corpus, sample_clusters=False, **kw), resume=True)
    part2 = train(_config(tmp_path / "parts", corpus, **kw), resume=True)
    assert part2.completed and part1.losses + part2.losses == whole.losses and len(whole.losses) == 12
    a, b = (load_file(r.run_dir / "model.safetensors") for r in (whole, part2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from protrans_cli.training.metrics import read_metrics

    rows = read_metrics(whole.run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] * 9 + [2] * 3  # 150 clusters: 9 steps an epoch
    # (the val corpus: 100 clusters of 3, one evaluation batch of them)
    assert [r["step"] for r in rows if "eval_loss" in r] == [4, 8, 12]
    # by lines, the same corpus is 300 proteins: 18 steps an epoch, and other losses
    lines = train(_config(tmp_path / "lines", corpus, sample_clusters=False, **kw))
    assert [r["epoch"] for r in read_metrics(lines.run_dir / "metrics.jsonl")] == [1] * 12
    assert lines.losses != whole.losses
    assert np.isfinite(whole.losses).all()


def test_a_run_read_by_lines_is_not_resumed_by_clusters(tmp_path):
    """A checkpoint written before the setting existed (no sample_clusters in its config) counts
    proteins: resumed with --sample-clusters it is refused as a run of the other setting."""
    import json

    from protrans_cli.training.checkpoint import resumed_config

    config = _config(tmp_path, LEARNABLE, sample_clusters=False, precision="fp32")
    where = tmp_path / "step_00000002"
    where.mkdir()
    config.save(where / "train_config.json")
    saved = json.loads((where / "train_config.json").read_text())
    del saved["sample_clusters"]
    (where / "train_config.json").write_text(json.dumps(saved))
    assert resumed_config(config, where)
    with pytest.raises(UsageError, match=r"sample_clusters: False there, True here"):
        resumed_config(dataclasses.replace(config, sample_clusters=True), where)


def test_the_flag_reaches_the_config_and_its_help_fits(run_cli, tmp_path):
    res = run_cli("train", "--help")
    assert "--sample-clusters" in res.stdout
    corpus = tmp_path / "c.txt"
    _clustered(corpus)
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", corpus, "-o", out, "--num-steps", "2", "--max-length", "32",
                  "--global-batch-size", "16", "--micro-batch-size", "16", "--sample-clusters", "-j", "1")
    assert res.exit_code == 0, res.stderr
    import json

    assert json.loads((out / "train_config.json").read_text())["sample_clusters"] is True
    # the model card says how the corpus was read (it named the corpus alone, as a run by lines)
    assert ("- Corpus: `c.txt`; read by clusters, one member of every cluster an epoch (--sample-clusters); "
            "32 proteins seen") in (out / "README.md").read_text()


def test_a_stream_of_fewer_clusters_than_a_global_batch_counts_them_as_clusters(tmp_path):
    """6 proteins in 2 clusters, a global batch of 4: by clusters the stream makes no batch, and
    its error said "the corpus holds 2 protein(s)" (there are 6)."""
    from protrans_cli.errors import InputError

    corpus = tmp_path / "c.txt"
    _clustered(corpus, sizes=(3,))
    text = corpus.read_text()
    corpus.write_text("\n\n".join(text.split("\n\n")[:2]) + "\n\n")
    assert count_proteins([str(corpus)]) == 6 and count_proteins([str(corpus)], clusters=True) == 2
    with pytest.raises(InputError, match=r"holds 2 cluster\(s\) \(--sample-clusters\), fewer than one global batch"):
        next(iter(_stream([corpus], global_batch_size=4, micro_batch_size=2, sample_clusters=True)))
    assert next(iter(_stream([corpus], global_batch_size=4, micro_batch_size=2)))  # (by lines: 6 proteins)
