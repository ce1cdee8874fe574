"""Units of `protrans train`: config file + flags, corpus stream, masking statistics, optimizers."""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from protrans_cli.errors import InputError, RuntimeFailure, UsageError
from protrans_cli.training.config import Phase, TrainConfig, grad_accum_steps, parse_set
from protrans_cli.training.data import CorpusStream, Sample, StreamState, TokenLayout, count_proteins
from protrans_cli.training.objectives import IGNORE, make_objective
from protrans_cli.training.optim import LRLambda, Lamb, build_optimizer

from conftest import DATA, released_after_error, sparse_file

TRAIN = DATA / "train"
LEARNABLE = str(TRAIN / "learnable.txt")

torch.set_num_threads(1)


def _family(name):
    from protrans_cli.models import get_family

    return get_family(name)


def _layout(name):
    fam = _family(name)
    return TokenLayout.from_tokenizer(fam.build_tokenizer(), fam.prepare)


def _random_samples(layout, n=400, length=200, seed=1, epoch=0):
    rng = np.random.default_rng(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    out = []
    for i in range(n):
        text = "".join(rng.choice(list(letters), size=length))
        out.append(Sample(i, epoch, layout.encode(text), seed))
    return out


# --- config ------------------------------------------------------------------------------

def test_config_file_json_and_toml_then_flags_override(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({
        "family": "t5", "lr": 1e-3, "corpus": "a.txt", "model_overrides": {"num_layers": 3},
        "phases": ["64:10", {"max_length": 128, "num_steps": 5, "global_batch_size": 8}]}))
    (tmp_path / "c.toml").write_text(
        'family = "t5"\nlr = 1e-3\ncorpus = ["a.txt"]\n[model_overrides]\nnum_layers = 3\n'
        '[[phases]]\nmax_length = 64\nnum_steps = 10\n[[phases]]\nmax_length = 128\nnum_steps = 5\n'
        'global_batch_size = 8\n')
    for name in ("c.json", "c.toml"):
        cfg = TrainConfig.from_file(tmp_path / name)
        assert cfg.family == "t5" and cfg.lr == 1e-3 and cfg.corpus == ["a.txt"]
        assert cfg.phases == [Phase(64, 10), Phase(128, 5, 8)]
        over = cfg.override(lr=5e-4, family=None, model_overrides={"d_model": 16}, corpus=())
        assert over.lr == 5e-4 and over.family == "t5" and over.corpus == ["a.txt"]
        assert over.model_overrides == {"num_layers": 3, "d_model": 16}
        assert [(p.max_length, p.num_steps, p.global_batch_size) for p in over.resolved_phases()] == \
            [(64, 10, cfg.global_batch_size), (128, 5, 8)]
        assert over.total_steps == 15


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    (tmp_path / "bad.json").write_text('{"learning_rate": 1}')
    with pytest.raises(UsageError, match="learning_rate"):
        TrainConfig.from_file(tmp_path / "bad.json")
    # the flags whose settings have other names (--help: "flag names with _ for -"): said which
    (tmp_path / "flags.json").write_text('{"set": {"num_hidden_layers": 3}, "phase": ["64:10"]}')
    with pytest.raises(UsageError, match=r"flags.json: unknown setting\(s\) phase, set \(phase is phases in a config "
                                         r"file; set is model_overrides in a config file\)"):
        TrainConfig.from_file(tmp_path / "flags.json")
    # a model's or a head's config.json (beside train_config.json in a run; in a head folder) was
    # "unknown setting(s)" and the two dozen keys it holds: said what it is
    (tmp_path / "model.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "architectures": []}))
    with pytest.raises(UsageError, match=r"model.json: the config.json of a bert model \(its transformers settings\), "
                                         r"not train settings: a run's settings are its train_config.json; to "
                                         r"continue pretraining this model give its directory to --init-from$"):
        TrainConfig.from_file(tmp_path / "model.json")
    (tmp_path / "head.json").write_text(json.dumps({"task": {}, "hyperparameters": {}, "input_dim": 8}))
    with pytest.raises(UsageError, match=r"head.json: the config.json of a prediction head \(protrans fit\), not "
                                         r"train settings: a run's settings are its train_config.json$"):
        TrainConfig.from_file(tmp_path / "head.json")
    # a config saved in latin-1 (a note of "37\xb0C"): its line and byte, not the codec's own words
    for name, text, column in (("latin1.json", b'{"lr": 0.001,\n "note": "37\xb0C"}', 13),
                               ("latin1.toml", b'lr = 0.001\nnote = "37\xb0C"\n', 11)):
        (tmp_path / name).write_bytes(text)
        with pytest.raises(UsageError) as err:
            TrainConfig.from_file(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}:2: is not UTF-8 text (byte 0xb0, column {column}; save it as UTF-8)"
    (tmp_path / "broken.toml").write_text("lr = = 1")
    with pytest.raises(UsageError, match="broken.toml: cannot parse config"):
        TrainConfig.from_file(tmp_path / "broken.toml")
    # json keeps the last of a repeated key silently; a config file names it instead (as TOML does)
    (tmp_path / "twice.json").write_text('{"lr": 0.1, "model_overrides": {"a": 1, "a": 2}}')
    with pytest.raises(UsageError, match="twice.json: cannot parse config .setting 'a' given twice"):
        TrainConfig.from_file(tmp_path / "twice.json")
    with pytest.raises(UsageError, match="optimizer"):
        TrainConfig(corpus=["x"], optimizer="sgd").validate()
    with pytest.raises(UsageError, match="stdin"):
        TrainConfig(corpus=["-"]).validate()
    # --val-corpus - is named as such (it said "the corpus cannot be stdin" of a --corpus given as a file)
    with pytest.raises(UsageError, match=r"^--val-corpus \(val_corpus\) cannot be stdin \('-'\): it is read before "
                                         r"training and at every evaluation"):
        TrainConfig(corpus=["c.txt"], val_corpus=["-"]).validate()
    with pytest.raises(UsageError, match="LEN:STEPS"):
        Phase.parse("512")
    assert parse_set(["num_hidden_layers=4", "hidden_act=gelu"]) == {"num_hidden_layers": 4, "hidden_act": "gelu"}


def test_settings_take_the_bounds_of_their_range_and_refuse_what_lies_beyond():
    TrainConfig(corpus=["c.txt"], min_lr_ratio=1.0, plm_prob=1.0, segment_length=1, adam_beta1=0.0,
                fsdp_min_params=0).check_values()
    TrainConfig(corpus=["c.txt"], sop=True, model_overrides={"type_vocab_size": 2}).check_values()
    for settings, said in (
            (dict(min_lr_ratio=1.01), r"^--min-lr-ratio \(min_lr_ratio\) must be in \[0, 1\]"),
            (dict(decay_fraction=0.0), r"^--decay-fraction \(decay_fraction\) must be in \(0, 1\]"),
            (dict(plm_prob=1.5), r"^plm_prob must be above 0 and at most 1, got 1.5$"),
            (dict(segment_length=0), r"^segment_length must be at least 1, got 0$"),
            (dict(sop=True, model_overrides={"type_vocab_size": 1}), r"^--set type_vocab_size=1 \(model_overrides\): "
                                                                     r"sop .* needs at least 2 token types$"),
            (dict(phases=[Phase(64, 2, 0)]), r"^phase 1 \(64:2:0\): global_batch_size must be at least 1, got 0$")):
        with pytest.raises(UsageError, match=said):
            TrainConfig(corpus=["c.txt"], **settings).check_values()
    with pytest.raises(UsageError, match=r"--phase '64:2:8:4:1': expected LEN:STEPS\[:GLOBAL_BATCH\[:MICRO_BATCH\]\]"):
        Phase.parse("64:2:8:4:1")


def test_a_flag_over_a_saved_config_drops_the_settings_that_went_with_what_it_replaces():
    # a run's train_config.json (objective saved resolved, preset recorded) as a template
    saved = TrainConfig(corpus=["c.txt"], family="bert", objective="mlm", preset="tiny")
    assert saved.override(family="t5").objective is None  # the new family's own objective
    assert saved.override(family="t5", objective="t5_span").objective == "t5_span"
    assert dataclasses.replace(saved, objective="plm").override(family="xlnet").objective == "plm"  # not bert's default
    assert saved.override(init_from="runs/first").preset is None  # the architecture comes from the model
    assert saved.override(init_from="runs/first", preset="small").preset == "small"  # (check_values refuses it)


def test_a_corpus_file_whose_name_holds_pattern_characters_is_taken_as_named(tmp_path, monkeypatch):
    from protrans_cli.training.config import expand_corpus_paths

    monkeypatch.chdir(tmp_path)
    for name in ("c[1].txt", "c1.txt", "c2.txt"):
        (tmp_path / name).write_text("M K\n")
    assert expand_corpus_paths(["c[1].txt", "c[12].txt"]) == ["c[1].txt", "c1.txt", "c2.txt"]
    assert TrainConfig.from_dict({"corpus": "c[1].txt"}).corpus == ["c[1].txt"]


def test_token_micro_batches_hold_each_phases_own_micro_batch_of_its_own_length():
    config = TrainConfig(corpus=["c.txt"], token_micro_batches=True, micro_batch_size=8, max_length=512,
                         pad_multiple=16, packing=True)
    assert config.stream_sizing(Phase(128, 10, 32, 4)) == {"micro_batch_tokens": 4 * 128, "pad_multiple": 16,
                                                           "packed": True}
    assert [config.stream_sizing(p)["micro_batch_tokens"] for p in
            dataclasses.replace(config, phases=[Phase(64, 1), Phase(256, 1, 16, 2)]).resolved_phases()] == [8 * 64, 2 * 256]


def test_a_config_files_suffix_is_read_whatever_its_case(tmp_path):
    (tmp_path / "C.TOML").write_text('corpus = "c.txt"\nlr = 0.002\n')
    (tmp_path / "c.Json").write_text('{"corpus": "c.txt", "lr": 0.002}')
    assert TrainConfig.from_file(tmp_path / "C.TOML") == TrainConfig.from_file(tmp_path / "c.Json") == \
        TrainConfig(corpus=["c.txt"], lr=0.002)


def test_grad_accumulation_must_divide():
    assert grad_accum_steps(32, 4, 2) == 4
    with pytest.raises(UsageError, match="32 is not divisible by micro batch size 6 x 2"):
        grad_accum_steps(32, 6, 2)
    # and says what to do: a job requeued on 4 GPUs (global batch 12, micro 2) cannot change its
    # global batch on --resume, but may its micro batch
    with pytest.raises(UsageError, match=r"= 8: use a micro batch size that divides 3, e\.g\. 1 \(it may change on --resume"):
        grad_accum_steps(12, 2, 4)
    with pytest.raises(UsageError, match="use a number of processes that divides 12"):
        grad_accum_steps(12, 2, 5)
    # a phase's error shows it as given, batch sizes included (a micro-batch size alone with the
    # run's global one): "phase 1 (64:5)" left out the sizes that do not divide
    for phase, said in ((Phase(64, 5, 24), "phase 1 (64:5:24): global batch size 24 is not divisible by micro batch "
                                           "size 8 x 2 process(es) = 16"),
                        (Phase(64, 5, None, 6), "phase 1 (64:5:32:6): global batch size 32 is not divisible by micro "
                                                "batch size 6 x 2 process(es) = 12")):
        cfg = TrainConfig(corpus=["x"], global_batch_size=32, micro_batch_size=8, phases=[phase])
        with pytest.raises(UsageError) as info:
            cfg.validate(world_size=2)
        assert str(info.value).startswith(said + ": use a micro batch size that divides "), str(info.value)


def test_saved_config_round_trips(tmp_path):
    cfg = TrainConfig(corpus=["a"], phases=[Phase(64, 3)], model_overrides={"x": 1})
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg


# --- corpus stream -----------------------------------------------------------------------

def _stream(paths=(LEARNABLE,), **kw):
    layout = kw.pop("layout", None) or _layout("bert")
    args = dict(max_length=40, global_batch_size=16, micro_batch_size=4, bucket_batches=4, seed=3)
    args.update(kw)
    return CorpusStream(list(paths), layout, **args)


def _indices(step_batch):
    return sorted(s.index for mb in step_batch.micro_batches for s in mb)


def test_stream_reads_plain_and_gzip_shards_in_order():
    paths = [LEARNABLE, str(TRAIN / "learnable_shard2.txt.gz")]
    assert count_proteins(paths) == 400
    seen = set()
    for sb in _stream(paths, max_epochs=1):
        seen.update(_indices(sb))
    assert seen == set(range(400))  # 400 = 25 global batches of 16: nothing dropped, nothing twice


def test_a_lower_case_corpus_trains_the_proteins_of_its_upper_case_copy(tmp_path):
    """docs/train.md: lower-case letters are accepted in a corpus line; they are the residues
    their capitals are."""
    lower = tmp_path / "lower.txt"
    lower.write_text((TRAIN / "learnable.txt").read_text().lower())
    upper, low = (list(_stream(paths, max_epochs=1)) for paths in ((LEARNABLE,), (str(lower),)))
    assert len(upper) == len(low) > 0
    for a, b in zip(upper, low):
        for ma, mb in zip(a.micro_batches, b.micro_batches):
            assert [s.index for s in ma] == [s.index for s in mb]
            assert all(np.array_equal(x.residues, y.residues) for x, y in zip(ma, mb))


def test_ranks_split_each_global_batch_without_overlap():
    one = list(_stream(max_epochs=1))
    ranks = [list(_stream(rank=r, world_size=2, max_epochs=1)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) > 5
    for whole, a, b in zip(one, *ranks):
        assert set(_indices(a)).isdisjoint(_indices(b))
        assert sorted(_indices(a) + _indices(b)) == _indices(whole)
        assert len(a.micro_batches) == len(b.micro_batches) == 2  # 16 / (4 x 2)


def test_micro_batch_j_of_a_global_batch_goes_to_rank_j_mod_world_size():
    """docs/train.md: micro-batch j goes to rank j mod world_size, so that ranks get similar
    lengths (each global batch is sorted by length): not the first half of the batch to rank 0."""
    one = list(_stream(max_epochs=1, micro_batch_size=2))
    ranks = [list(_stream(rank=r, world_size=2, max_epochs=1, micro_batch_size=2)) for r in range(2)]
    for whole, *per_rank in zip(one, *ranks):
        micro = [[s.index for s in mb] for mb in whole.micro_batches]  # 8 micro-batches of 2
        for r, step in enumerate(per_rank):
            assert [[s.index for s in mb] for mb in step.micro_batches] == micro[r::2]


def test_every_epoch_forms_other_batches_without_more_padding():
    # The length sort of a buffer broke ties by position, so every epoch formed the same global
    # batches (only their order was shuffled). Now proteins of one padded width come in a random
    # order per epoch: other batches, each protein once an epoch, the same on every rank, and
    # with pad_multiple 8 each batch pads to the width the plain length sort gave it.
    paths = [LEARNABLE, str(TRAIN / "learnable_shard2.txt.gz")]  # 400 proteins, 25 batches of 16
    layout = _layout("bert")
    kw = dict(paths=paths, layout=layout, max_length=80, pad_multiple=8, max_epochs=2)
    one = list(_stream(**kw))
    ranks = [list(_stream(rank=r, world_size=2, **kw)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 50
    for whole, a, b in zip(one, *ranks):
        assert sorted(_indices(a) + _indices(b)) == _indices(whole)
    epochs = [[frozenset(_indices(sb)) for sb in one[:25]], [frozenset(_indices(sb)) for sb in one[25:]]]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(400))
    assert len(set(epochs[0]) & set(epochs[1])) <= 5, "the batches of epoch 0 recur in epoch 1"

    special = layout.num_special
    lengths = {s.index: len(s.residues) for sb in one[:25] for mb in sb.micro_batches for s in mb}
    real = sum(n + special for n in lengths.values())

    def padded(batches):  # each global batch padded to its longest row, rounded up to 8
        return sum(len(b) * -(-(max(lengths[i] for i in b) + special) // 8) * 8 for b in batches)

    # the plain length sort of each buffer of 64 (the last one 16), ties by position
    by_length = []
    for start in range(0, 400, 64):
        order = sorted(range(start, min(start + 64, 400)), key=lambda i: (lengths[i], i))
        by_length += [order[k:k + 16] for k in range(0, len(order), 16)]
    assert padded(by_length) / real > 1.05  # (a bound that means something)
    for batches in epochs:
        assert padded(batches) == padded(by_length)
    # pad_multiple 1 (or 2, 4) buckets by 8 tokens, as 8 does: batches re-formed for some
    # padding, never more than rounding the plain sort's rows up to 8 costs
    assert [_stream(pad_multiple=m).bucket_width for m in (1, 2, 3, 8, 16)] == [8, 8, 9, 8, 16]

    def exact(batches):  # rows padded to the longest, not rounded up
        return sum(len(b) * (max(lengths[i] for i in b) + special) for b in batches)

    for batches in epochs:
        assert exact(by_length) < exact(batches) <= padded(by_length)


def test_a_checkpoint_of_an_earlier_version_keeps_its_plan_of_batches():
    # A run of an earlier version (its data_state has no plan: batches by a plain length sort)
    # resumed in the middle of a buffer: re-planned the new way, the rest of that buffer held
    # other proteins, some trained twice in the epoch and others not at all. It keeps its plan.
    from protrans_cli.training.checkpoint import _data_state_problem
    from protrans_cli.training.data import PLAN, StreamState

    assert StreamState().plan == PLAN == 3 and StreamState.from_dict(None).plan == PLAN
    old = StreamState.from_dict({"epoch": 0, "buffer_start": 0, "batches_done": 0})
    assert old.plan == 1
    kw = dict(paths=[LEARNABLE, str(TRAIN / "learnable_shard2.txt.gz")], max_length=80, pad_multiple=8,
              max_epochs=2)
    uninterrupted = list(_stream(state=old, **kw))
    assert all(sb.state_after.plan == 1 for sb in uninterrupted)
    # the old plan: every epoch the same batches
    assert {frozenset(_indices(sb)) for sb in uninterrupted[:25]} == {frozenset(_indices(sb)) for sb in uninterrupted[25:]}
    # in the order that version gave them: shuffled anew every epoch (the first protein of each
    # of the first buffer's 4 batches, as the stream of d9ecf0e gave them)
    firsts = [min(_indices(sb)) for sb in uninterrupted]
    assert firsts[:4] == [0, 9, 3, 16] and firsts[25:29] == [3, 9, 16, 0]
    saved = StreamState.from_dict(uninterrupted[1].state_after.to_dict())  # 2 of 4 batches of a buffer done
    assert saved.batches_done == 2 and saved.plan == 1
    resumed = list(_stream(state=saved, **kw))
    assert [_indices(sb) for sb in resumed] == [_indices(sb) for sb in uninterrupted[2:]]
    # a new run's checkpoints say plan 3; a plan this version does not know is a damaged checkpoint
    assert StreamState.from_dict(StreamState().to_dict()).plan == 3
    assert _data_state_problem({"epoch": 0, "buffer_start": 0, "batches_done": 0, "plan": 2}) is None
    assert "plan 4 is not one this protrans knows" in _data_state_problem({"epoch": 0, "buffer_start": 0,
                                                                            "batches_done": 0, "plan": 4})


def test_length_buckets_are_as_wide_as_the_pad_multiple_and_a_plan_2_run_keeps_its_own(tmp_path):
    """--pad-multiple 12: buckets 12 wide, so every batch pads as the plain length sort's does
    (docs/train.md). train gave the stream its --pad-multiple only with token micro-batches, so
    its buckets were 8 wide whatever it was, and these two proteins of 33 and 37 tokens (one
    bucket of 8, rows of 36 and 48) were batched with shorter ones: 48-wide rows where the plain
    sort pads to 36. A run of plan 2 resumed keeps its 8-wide buckets (the batches it began)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(" ".join("M" * n) + "\n\n" for n in (1, 1, 1, 31, 35, 35, 1, 1)))
    assert TrainConfig(corpus=["x"], pad_multiple=12).stream_sizing(Phase(64, 1))["pad_multiple"] == 12
    # the smallest multiple of --pad-multiple that is 8 or more (docs/train.md: 9 for 3, 16 for 16)
    assert [_stream(pad_multiple=m).bucket_width for m in (1, 3, 5, 8, 12, 16)] == [8, 9, 10, 8, 12, 16]

    def widths(state, pad_multiple, **kw):
        stream = _stream([str(corpus)], max_length=60, global_batch_size=2, micro_batch_size=1, bucket_batches=3,
                         seed=5, pad_multiple=pad_multiple, max_epochs=1, state=state, **kw)
        return sorted(max(-(-(len(s.residues) + 2) // 12) * 12 for mb in step.micro_batches for s in mb)
                      for step in stream)

    assert widths(StreamState(), 12) == [12, 12, 36, 48]  # (the plain sort's: 1+1, 1+1, 31+35, 35+1...)
    old = StreamState.from_dict({"epoch": 0, "buffer_start": 0, "batches_done": 0, "plan": 2})
    assert widths(old, 12) == widths(old, 1) == widths(StreamState(plan=3), 8) == [12, 12, 48, 48]
    assert widths(old, 12, micro_batch_tokens=10_000) == widths(StreamState(), 12)  # (token micro-batches: as before)


@pytest.mark.parametrize("pad_multiple", [16, 24])
def test_a_resume_with_another_pad_multiple_keeps_the_runs_length_buckets(pad_multiple):
    """--pad-multiple may change on --resume (docs/train.md), and it sets the width of the length
    buckets: re-planned with other buckets, the buffer under way formed other batches, so the
    rest of its batches trained some of its proteins twice and others not at all in the epoch."""
    full = [_indices(sb) for sb in _stream(pad_multiple=8, max_epochs=1)]
    steps = list(_stream(pad_multiple=8, max_epochs=1))
    assert steps[2].state_after.batches_done == 3  # mid-buffer (4 batches a buffer)
    from protrans_cli.training.checkpoint import _data_state_problem

    position = json.loads(json.dumps(steps[2].state_after.to_dict()))  # as a checkpoint keeps it
    assert position["width"] == 8 and _data_state_problem(position) is None
    assert "width is 0" in _data_state_problem({**position, "width": 0})
    saved = StreamState.from_dict(position)
    resumed = [_indices(sb) for sb in _stream(pad_multiple=pad_multiple, max_epochs=1, state=saved)]
    assert resumed == full[3:]
    trained = [i for b in full[:3] + resumed for i in b]
    assert len(set(trained)) == len(trained) == len(full) * 16  # no protein twice, none left out
    # a new run with that multiple forms other batches (the test compares something)
    assert [_indices(sb) for sb in _stream(pad_multiple=pad_multiple, max_epochs=1)] != full


def test_workers_yield_the_same_batches_as_one_process():
    from protrans_cli.training.data import step_batches

    direct = [_indices(sb) for sb in _stream(max_epochs=1)]
    workers = [_indices(sb) for sb in step_batches(_stream(max_epochs=1), num_workers=2)]
    assert workers == direct


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="no signal masks (Windows)")
def test_workers_are_forked_with_the_stop_signals_blocked_until_they_ignore_them(tmp_path, monkeypatch):
    """A SIGTERM or hang-up sent to the process group between a worker's fork and its own set-up
    ran the trainer's handler, inherited, in the worker (its warning printed again). Workers start
    with the stop signals blocked and unblock them once they ignore them; the main process's mask
    is as it was."""
    import json
    import signal

    from protrans_cli.errors import STOP_SIGNALS, WARNING_SIGNALS
    from protrans_cli.training import data

    seen, real = tmp_path / "masks.json", data._ignore_stop_signals

    def recorded(worker_id, parent_pid=None):
        blocked = lambda: sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))  # noqa: E731
        before = blocked()
        real(worker_id, parent_pid)
        seen.write_text(json.dumps([before, blocked(), int(signal.getsignal(signal.SIGTERM))]))

    monkeypatch.setattr(data, "_ignore_stop_signals", recorded)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert list(data.step_batches(_stream(max_epochs=1), num_workers=1))
    before, after, sigterm = json.loads(seen.read_text())
    stops = {int(s) for s in (*STOP_SIGNALS, *WARNING_SIGNALS)}
    assert stops <= set(before) and not stops & set(after) and sigterm == int(signal.SIG_IGN)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


def _stream_in_a_subprocess(tmp_path, **kw) -> str:
    """Python lines that build `stream`, the same as `_stream(**kw)`, in a fresh process that imports neither
    this module nor transformers (the layout comes pickled): importing them was most of each process's time."""
    import pickle

    args = dict(max_length=40, global_batch_size=16, micro_batch_size=4, bucket_batches=4, seed=3)
    args.update(kw)
    (tmp_path / "layout.pickle").write_bytes(pickle.dumps(_layout("bert")))
    return (f"import pickle\nfrom protrans_cli.training.data import CorpusStream\n"
            f"stream = lambda: CorpusStream([{LEARNABLE!r}], pickle.loads(open({str(tmp_path / 'layout.pickle')!r}, "
            f"'rb').read()), **{args!r})\n")


def test_workers_run_whatever_the_default_start_method(tmp_path):
    """Python 3.14 made forkserver the default start method on Linux (macOS has spawn): the
    DataLoader pickled the stream's dataset, a local class, and train --num-workers failed with
    "Can't pickle local object" and a traceback. The workers are forked, as prep's are."""
    import subprocess
    import sys

    code = """
import multiprocessing
multiprocessing.set_start_method("forkserver")
""" + _stream_in_a_subprocess(tmp_path, max_epochs=1) + """
from protrans_cli.training.data import step_batches
indices = lambda step_batch: sorted(s.index for mb in step_batch.micro_batches for s in mb)
direct = [indices(sb) for sb in stream()]
workers = [indices(sb) for sb in step_batches(stream(), num_workers=2)]
assert workers == direct and len(direct) > 5, (len(workers), len(direct))
print("same")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-2000:]


def test_a_library_caller_that_stops_early_exits_and_workers_die_with_their_parent(tmp_path):
    # step_batches with workers, left unclosed: the process hung at exit in multiprocessing's
    # handler (the workers ignore SIGTERM); and workers of a killed trainer lived on under PID 1
    import os
    import signal
    import subprocess
    import sys
    import time

    code = """
import os, sys, tempfile
scratch = tempfile.TemporaryDirectory()  # a weakref.finalize made first: one at exit fired too late
""" + _stream_in_a_subprocess(tmp_path, max_epochs=50) + """
from protrans_cli.training.data import step_batches
batches = step_batches(stream(), num_workers=2)
next(batches)
print(os.getpid(), flush=True)
if sys.argv[1] == "hang":
    import time; time.sleep(60)
"""
    proc = subprocess.run([sys.executable, "-c", code, "exit"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # (and quietly: the generator, finalised at the interpreter's exit, put SIGCHLD's handler back
    # through an import, "Exception ignored in: <generator object step_batches> ... import of
    # signal halted" on stderr)
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
    if not sys.platform.startswith("linux"):
        return
    proc = subprocess.Popen([sys.executable, "-c", code, "hang"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    parent = int(proc.stdout.readline())
    with open(f"/proc/{parent}/task/{parent}/children") as fh:
        children = [int(c) for c in fh.read().split()]
    assert children
    os.kill(parent, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    def alive():  # (a zombie is dead: its parent, here PID 1, has not reaped it yet)
        running = []
        for child in children:
            try:
                with open(f"/proc/{child}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                running.append(child)
        return running

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive()


def test_a_corpus_error_met_by_workers_holds_nothing_of_the_caller_after_it(tmp_path):
    # `raise item` kept the error in a local of the frame its traceback holds: a failed
    # train(num_workers=N) kept the model and optimizer of the loop's frame alive until gc ran
    from protrans_cli.training.data import step_batches

    def loop(model):  # the training loop's frame holds the model while it reads the batches
        for _ in step_batches(_stream((str(bad),), max_epochs=1), num_workers=1):
            pass

    bad = tmp_path / "bad.txt"
    bad.write_text("MKTAYIAKQRQISFVKSHF\n" * 40 + "MKT1\n" + "MKTAYIAKQRQISFVKSHF\n" * 40)
    message, released = released_after_error(loop, InputError)
    assert "invalid residue '1'" in message
    assert released


def test_workers_leave_the_callers_sigchld_handler(monkeypatch):
    # torch's DataLoader sets a SIGCHLD handler with its first workers and never removes it:
    # train(num_workers=N) from a notebook left it installed for the rest of the session
    import signal

    from torch.utils.data._utils import signal_handling

    from protrans_cli.training.data import step_batches

    monkeypatch.setattr(signal_handling, "_SIGCHLD_handler_set", False)  # (as in a fresh process)
    callers = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        assert len(list(step_batches(_stream(max_epochs=1), num_workers=1))) > 5
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert signal_handling._SIGCHLD_handler_set is False  # (a later loader of the caller's sets its own)
    finally:
        signal.signal(signal.SIGCHLD, callers)


def test_workers_where_there_is_no_fork_are_a_usage_error(monkeypatch):
    import multiprocessing

    from protrans_cli.training.data import step_batches

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(UsageError, match="--num-workers 2: data-loader workers are forked, and this platform cannot fork"):
        next(step_batches(_stream(max_epochs=1), num_workers=2))


def test_long_proteins_are_cropped_at_random_windows():
    layout = _layout("bert")
    long = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), size=300))
    ids = layout.encode(long)
    starts = set()
    stream = _stream(max_length=50)
    for epoch in range(6):
        s = stream._sample([("x", 1, long)], 0, StreamState(epoch, 0, 0))
        assert len(s.residues) == 50 - layout.num_special
        window = np.lib.stride_tricks.sliding_window_view(ids, len(s.residues))
        (start,) = np.flatnonzero((window == s.residues).all(1))[:1]
        starts.add(int(start))
    assert len(starts) > 1 and starts != {0}  # not truncated at the N-terminus



def test_the_seed_chooses_each_proteins_crop_and_masks():
    """--seed: the same seed gives a protein the same crop and masked positions (a resume, another
    rank), another seed other ones (runs to compare or ensemble differ in their masks too, not
    only in their initial weights and order)."""
    layout = _layout("bert")
    long = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), size=300))

    def crops_and_masks(seed):
        stream = _stream(max_length=50, seed=seed)
        samples = [stream._sample([("x", 1, long)], 0, StreamState(epoch, 0, 0)) for epoch in range(8)]
        labels = make_objective("mlm", layout, _cfg()).collate(samples)["labels"]
        return [s.residues.tolist() for s in samples], (labels != IGNORE).tolist()

    assert crops_and_masks(3) == crops_and_masks(3)
    (crops_a, masks_a), (crops_b, masks_b) = crops_and_masks(3), crops_and_masks(4)
    assert crops_a != crops_b and masks_a != masks_b

def test_a_random_crop_reaches_either_end_of_the_protein():
    # a protein one residue longer than the crop has two windows; a draw that excluded the last
    # start (integers(0, L - max)) always cut the C-terminal residue, truncation at the other end
    layout = _layout("bert")
    stream = _stream(max_length=50)
    length = 50 - layout.num_special + 1
    long = "".join(np.random.default_rng(1).choice(list("ACDEFGHIKLMNPQRSTVWY"), size=length))
    ids = layout.encode(long)
    starts = set()
    for epoch in range(40):
        s = stream._sample([("x", 1, long)], 0, StreamState(epoch, 0, 0))
        start = 0 if np.array_equal(s.residues, ids[:-1]) else 1 if np.array_equal(s.residues, ids[1:]) else None
        starts.add(start)
        # which end the window keeps (clm predicts no terminus at a cut end; sop keeps a window's first residue)
        assert (s.n_terminus, s.c_terminus) == (start == 0, start == 1)
    assert starts == {0, 1}


def test_the_proteins_left_over_from_whole_batches_are_drawn_not_always_the_longest(tmp_path):
    # 20 proteins, global batches of 16: four are left out each epoch, at random. Taking the
    # four longest after the length sort instead meant they were never trained on.
    corpus = tmp_path / "c.txt"
    rng = np.random.default_rng(2)
    corpus.write_text("".join(" ".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=5 + i)) + "\n\n"
                              for i in range(20)))
    longest = {16, 17, 18, 19}
    batches = list(_stream([str(corpus)], max_epochs=3))  # one global batch per epoch
    assert len(batches) == 3
    left_out = [set(range(20)) - set(_indices(sb)) for sb in batches]
    assert all(len(d) == 4 for d in left_out)
    assert any(d != longest for d in left_out)
    # (batches are formed by padded width, 8 tokens: the four last of the sort are not always the
    # four longest, but always among the ten longest)
    assert any(d & set(range(10)) for d in left_out)


def test_length_buckets_reduce_padding():
    def padding(bucket_batches):
        pad = real = 0
        stream = _stream(max_length=200, bucket_batches=bucket_batches, max_epochs=1)
        for sb in stream:
            for mb in sb.micro_batches:
                width = max(len(s.residues) for s in mb)
                real += sum(len(s.residues) for s in mb)
                pad += sum(width - len(s.residues) for s in mb)
        return pad / (pad + real)

    assert padding(8) < 0.5 * padding(1)


def test_stream_epochs_reform_their_global_batches_and_the_remainder_is_as_documented():
    """docs/train.md (Data): each epoch forms other global batches of the same proteins within
    each buffer; the remainder beyond the last buffer's whole batches is a fresh random choice each
    epoch; a tail of fewer proteins than one global batch joins the buffer before it (it was left
    out whole every epoch: the corpus's last proteins never trained)."""
    total = count_proteins([LEARNABLE])
    assert total == 300

    def epochs(bucket_batches):
        stream = _stream(global_batch_size=16, bucket_batches=bucket_batches, max_epochs=3)
        out = {}
        for step in stream:
            out.setdefault(step.micro_batches[0][0].epoch, []).append(tuple(_indices(step)))
        return [out[e] for e in range(3)]

    # buffers of 64: the last holds 44, keeps 32; 12 left out, other ones each epoch
    seen = epochs(4)
    dropped = [set(range(total)) - {i for b in batches for i in b} for batches in seen]
    assert [len(d) for d in dropped] == [12, 12, 12] and len({frozenset(d) for d in dropped}) == 3
    # first 4 buffers: every protein once, in other batches (the same ones every epoch before)
    assert set(seen[0][:16]) != set(seen[1][:16])
    assert sorted(i for e in (0, 1) for b in seen[e][:16] for i in b) == sorted(list(range(256)) * 2)
    # buffers of 96: a tail of 12, fewer than a global batch, joins the third buffer (108: 96 kept,
    # 12 left out, other ones each epoch); before, the corpus's last 12 were left out of every epoch
    dropped = [set(range(total)) - {i for b in batches for i in b} for batches in epochs(6)]
    assert [len(d) for d in dropped] == [12, 12, 12] and len({frozenset(d) for d in dropped}) == 3
    assert all(d <= set(range(192, 300)) for d in dropped) and not set.intersection(*dropped) >= set(range(288, 300))


@pytest.mark.parametrize("bucket_batches", [6, 3, 1])  # a tail of 12 joining a buffer; carried batches
def test_stream_resumes_anywhere_when_the_tail_joins_the_last_buffer(bucket_batches):
    """Read one global batch ahead: a resume from any step's saved position, before, in or after
    the buffer the tail joined, sees the batches of the uninterrupted stream."""
    steps = list(_stream(bucket_batches=bucket_batches, max_epochs=2))
    full, states = [_indices(sb) for sb in steps], [sb.state_after for sb in steps]
    assert all(len(b) == 16 for b in full) and len({i for b in full[:len(full) // 2] for i in b}) == 288
    for k in range(len(full) - 1):
        resumed = [_indices(sb) for sb in _stream(bucket_batches=bucket_batches, max_epochs=2, state=states[k])]
        assert resumed == full[k + 1:], k


def test_a_stream_of_one_protein_fewer_than_a_global_batch_is_refused_not_left_empty(tmp_path):
    """A corpus of global_batch_size - 1 proteins makes no batch: the stream refuses it, naming
    the file and the counts (an epoch of no batches repeated for ever without a word, else);
    one protein more makes a batch."""
    corpus = tmp_path / "fifteen.txt"
    corpus.write_text("".join(f"{'M K V A C D E'[:2 * (i % 6) + 1]}\n\n" for i in range(15)))
    with pytest.raises(InputError, match=r"fifteen.txt: the corpus holds 15 protein\(s\), fewer than one "
                                         r"global batch \(16\)"):
        next(iter(_stream([str(corpus)], max_epochs=3)))
    corpus.write_text(corpus.read_text() + "W Y\n\n")
    assert [_indices(sb) for sb in _stream([str(corpus)], max_epochs=1)] == [list(range(16))]


def test_stream_resumes_from_a_saved_position():
    full = [_indices(sb) for sb, _ in zip(_stream(), range(45))]  # crosses an epoch (18 steps each)
    it = iter(_stream())
    for _ in range(7):
        sb = next(it)
    resumed = [_indices(sb) for sb, _ in zip(_stream(state=sb.state_after), range(38))]
    assert resumed == full[7:]
    assert full[:18] != full[18:36]  # a new epoch reshuffles


def _corrupt_line(path, lineno: int) -> None:
    """Replace the residues of one line by as many digits (same size: the file's offsets hold)."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = re.sub(rb"[A-Z]", b"7", lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("compress", [False, True])
def test_a_resumed_stream_reads_from_the_saved_byte_not_from_the_beginning(tmp_path, compress):
    # A checkpoint's data position names the file and byte of its buffer, so a resume deep into
    # a large corpus (every process re-read it up to there: minutes for UniRef50, an hour for
    # BFD) starts reading there. The proof: lines before that byte, spoiled after the state was
    # taken, are never read (reading them is an error); the batches are those of the whole run.
    import gzip
    import shutil

    first, second = tmp_path / "a.txt", tmp_path / ("b.txt.gz" if compress else "b.txt")
    shutil.copy(LEARNABLE, first)
    text = (TRAIN / "learnable.txt").read_bytes()
    second.write_bytes(gzip.compress(text) if compress else text)
    paths = [str(first), str(second)]
    epoch = [_indices(sb) for sb in _stream(paths, max_epochs=1)]  # 600 proteins, 37 steps
    it = iter(_stream(paths))
    for _ in range(20):  # 20 steps of 16 proteins (64-protein buffers): 20 proteins into the second file
        sb = next(it)
    state = StreamState.from_dict(torch.load(_saved(tmp_path, sb.state_after.to_dict()), weights_only=True))
    assert state == sb.state_after and state.at.file == 1 and state.at.line > 1
    assert state.at.proteins == state.buffer_start == 320
    _corrupt_line(first, 1)
    if compress:  # (its offsets count decompressed bytes)
        second.write_bytes(gzip.compress(text.replace(b"L L L L A", b"7 L L L A", 1)))
    else:
        _corrupt_line(second, 1)
    resumed = _stream(paths, state=state)
    resumed = iter(resumed)
    first_step = next(resumed)  # mid-buffer: its position is the same buffer's cursor, not the corpus start
    assert first_step.state_after.at == state.at and _indices(first_step) == epoch[20]
    epoch = epoch[:20] + epoch[21:]
    assert [_indices(sb) for _, sb in zip(range(len(epoch) - 20), resumed)] == epoch[20:]
    with pytest.raises(InputError, match="a.txt:1"):  # the next epoch starts at the spoilt line
        list(resumed)


def _saved(tmp_path, obj):
    torch.save(obj, tmp_path / "state.pt")
    return tmp_path / "state.pt"


def test_a_position_whose_byte_no_longer_begins_a_line_is_found_by_its_line_or_else_by_counting_proteins():
    from protrans_cli.training.data import Cursor, iter_proteins

    every = list(iter_proteins([LEARNABLE]))
    cursor = Cursor()
    it = iter_proteins([LEARNABLE], cursor=cursor)
    for _ in range(100):
        next(it)
    good = cursor.copy()
    assert list(iter_proteins([LEARNABLE], good)) == every[100:]
    # off by a byte (the middle of a line), past the end (both: by the line), a file the corpus
    # does not have (by counting proteins)
    for bad in (Cursor(0, good.offset - 2, good.line, 100), Cursor(0, 10 ** 9, good.line, 100), Cursor(3, 10, 1, 100)):
        assert list(iter_proteins([LEARNABLE], bad)) == every[100:]
    # a checkpoint of an earlier version (no cursor), and a new phase's (a cursor before the buffer)
    old = StreamState(0, 64, 2)
    assert StreamState.from_dict(old.to_dict()) == old and "at" not in old.to_dict()
    behind = StreamState(0, 128, 0, good)  # good.proteins = 100
    assert [_indices(sb) for sb, _ in zip(_stream(state=behind), range(6))] == \
        [_indices(sb) for sb, _ in zip(_stream(state=StreamState(0, 128, 0)), range(6))]


def test_a_shard_changed_before_the_position_moves_it_nowhere_in_the_shards_after_it(tmp_path):
    """--accept-corpus-change with three shards, the position at the end of the second (where a
    buffer ending with its last protein leaves it). The second cut short since (the position's
    byte past its end) or rewritten (the byte mid-line): the second is read to the position's
    line, and the third's proteins all come, from its first. (Counted from the corpus's
    beginning, the position fell as many proteins into the third as the second had lost, and
    those went untrained that epoch.) Grown at its end: the second's new proteins first, none
    read twice."""
    from protrans_cli.training.data import Cursor, iter_proteins

    def shard(name, letter, n, width=8):
        lines = [" ".join(letter + "ACDEFGHIKLMNPQRSTVWY"[i] * (width + i)) + "\n\n" for i in range(n)]
        (tmp_path / name).write_text("".join(lines))
        return [line.replace(" ", "").strip() for line in lines]

    paths = [str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt")]
    a, b, c = shard("a.txt", "A", 4), shard("b.txt", "B", 4), shard("c.txt", "C", 6)
    cursor = Cursor()
    reader = iter_proteins(paths, cursor=cursor)
    for _ in range(len(a) + len(b)):
        next(reader)
    at = cursor.copy()
    assert (at.file, at.proteins) == (1, 8)

    def after(start):
        return [text for _, _, text in iter_proteins(paths, start.copy())]

    assert after(at) == c
    shard("b.txt", "B", 2)  # cut short
    assert after(at) == c
    shard("b.txt", "B", 4, width=9)  # rewritten, longer lines: the byte falls mid-line
    assert after(at) == c
    new_b = shard("b.txt", "B", 6)  # appended to
    assert after(at) == new_b[4:] + c
    # the protein count goes on from the position's, whatever the shards before it hold now
    shard("a.txt", "A", 1)
    counted = Cursor()
    assert len(list(iter_proteins(paths, at.copy(), counted))) == 8 and counted.proteins == 16


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match=r"invalid_residue.txt:5.*'7'"):
        list(_stream([str(TRAIN / "invalid_residue.txt")], global_batch_size=5, micro_batch_size=5, max_length=500, max_epochs=1))
    with pytest.raises(InputError, match="3 protein"):
        next(iter(_stream([str(TRAIN / "too_few_proteins.txt")])))
    # a corpus whose first line holds the bad letter: an invalid residue, not "not a corpus: the
    # file is a pretraining corpus" (the look-alike hint for files given by mistake)
    first = tmp_path / "first_line.txt"
    first.write_text("M K J A\n" + "M K T A\n" * 20)
    with pytest.raises(InputError, match=r"first_line.txt:1: invalid residue 'J' at residue 3 of the protein") as info:
        list(_stream([str(first)], global_batch_size=5, micro_batch_size=5, max_length=500, max_epochs=1))
    assert "not a corpus" not in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        next(iter(_stream([str(tmp_path / "missing.txt")])))


def test_the_corpus_check_names_empty_shards_and_refuses_a_corpus_without_a_protein(tmp_path):
    from protrans_cli.training.data import check_corpus

    empty, blank, one = tmp_path / "empty.txt", tmp_path / "blank.txt", tmp_path / "one.txt"
    empty.write_text("")
    blank.write_text("\n\n \n")
    one.write_text("M K V\n\n")
    assert check_corpus([str(empty), str(one), str(blank)]) == [str(empty), str(blank)]
    assert check_corpus([str(one)], 1) == []
    with pytest.raises(InputError, match=r"empty.txt, .*blank.txt: the corpus holds no protein"):
        check_corpus([str(empty), str(blank)])


def test_the_corpus_check_refuses_fewer_proteins_than_the_largest_global_batch(tmp_path):
    from protrans_cli.training.data import check_corpus

    one, three = tmp_path / "one.txt", tmp_path / "three.txt"
    one.write_text("M K V\n\n")
    three.write_text("M K V\n\nA C\n\nD E F G\n")
    with pytest.raises(InputError, match=r"one.txt: the corpus holds 1 protein\(s\), fewer than one global batch \(2\)"):
        check_corpus([str(one)], 2)
    with pytest.raises(InputError, match=r"holds 3 protein\(s\), fewer than one global batch \(4 of phase 2\)"):
        check_corpus([str(three)], 4, batch_text=" of phase 2")
    assert check_corpus([str(three)], 3) == [] and check_corpus([str(one), str(three)], 4) == []


def test_a_token_layout_names_the_first_letter_it_cannot_encode_by_its_1_based_position():
    layout = _layout("bert")
    assert np.array_equal(layout.encode("MkV"), layout.residue_table[[ord("M"), ord("K"), ord("V")]])
    with pytest.raises(InputError, match=r"invalid residue '\*' at residue 3 of the protein"):
        layout.encode("MK*V*")


def test_every_corpus_line_is_checked_whole_with_its_position_in_the_protein(tmp_path):
    # A bad residue outside the window a crop keeps, in a protein of the last batch: the first
    # batch already fails, naming the line and the position in the whole protein.
    good = " ".join("MKTAYIAKQR" * 3)
    bad = list("ACDEFGHIKL" * 30)
    bad[249] = "7"
    lines = [good] * 40 + [" ".join(bad)]
    corpus = tmp_path / "long_bad.txt"
    corpus.write_text("\n\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"long_bad.txt:81: invalid residue '7' at residue 250 of the protein"):
        next(iter(_stream([str(corpus)], max_length=40, global_batch_size=4, micro_batch_size=4,
                          bucket_batches=16)))
    # Shown as written (UTF-8), not as Latin-1 bytes.
    corpus.write_text(good + "\n\nM K T \u00e9 A\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"long_bad.txt:3: invalid residue '\u00e9' at residue 4 "):
        next(iter(_stream([str(corpus)], global_batch_size=2, micro_batch_size=2)))
    # Whitespace to str.split() but not to the reader (a no-break space, \x1c, NEL): named too, where
    # the search for the bad letter skipped it and raised StopIteration (a traceback)
    for blank in ("\u00a0", "\x1c", "\x85"):
        corpus.write_text(good + f"\n\nM K{blank}T A\n", encoding="utf-8")
        with pytest.raises(InputError, match=re.escape(f"long_bad.txt:3: invalid residue {blank!r} at residue 3 ")):
            count_proteins([str(corpus)])


@pytest.mark.parametrize("sep,name", [("\t", "tab"), ("\f", "form feed")])
def test_a_table_as_corpus_is_refused_not_trained_on_name_and_sequence(tmp_path, sep, name):
    """`Gene<TAB>Sequence` rows (a TSV of names and sequences) trained on "GeneSequence" and
    name+sequence proteins, exit 0: a tab passed as a space."""
    corpus = tmp_path / "genes.tsv"
    corpus.write_text(f"Gene{sep}Sequence\nINS{sep}MKTAYIAK\nALB{sep}MKWVTFIS\n")
    with pytest.raises(InputError, match=re.escape(f"genes.tsv:1: a {name} at column 5 (a table?): a corpus line "
                                                   "holds one protein")):
        count_proteins([str(corpus)])


@pytest.mark.parametrize("first,kind", [
    ("input, dssp3, dssp8, disorder, cb513_mask", "the file looks like a table (CSV or TSV)"),  # NetSurfP
    ("HEADER    HYDROLASE    01-JAN-00   1ABC", "the file is a PDB structure"),
    ("@read1", "the file looks like FASTQ"),
])
def test_a_table_or_look_alike_as_corpus_says_what_it_is(tmp_path, first, kind):
    """A NetSurfP CSV given as --corpus was an "invalid residue ','" (a PDB or FASTQ file one of
    its first line): it is named, as the FASTA readers name such files."""
    corpus = tmp_path / "wrong.csv"
    corpus.write_text(first + "\nM K T A\n")
    with pytest.raises(InputError, match=re.escape(f"wrong.csv:1: not a corpus: {kind}")):
        count_proteins([str(corpus)])
    corpus.write_text("M K T A\n" + first + "\n")  # (a later line: the letter, as before)
    with pytest.raises(InputError, match="wrong.csv:2: invalid residue"):
        count_proteins([str(corpus)])


def test_a_fasta_file_as_corpus_says_to_run_prep(tmp_path, run_cli):
    fasta = tmp_path / "raw.fasta"
    fasta.write_text(">sp|P1|TEST a protein\nMKTAYIAKQRGSSG\n>sp|P2|TEST\nGSSGSSGHHHHHH\n" * 20)
    with pytest.raises(InputError, match=r"raw.fasta:1: a FASTA header line .*protrans prep"):
        next(iter(_stream([str(fasta)], global_batch_size=2, micro_batch_size=2)))
    res = run_cli("train", "--corpus", fasta, "-o", tmp_path / "run", "--num-steps", 2, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].endswith(
        "raw.fasta:1: a FASTA header line ('>...'): the corpus must come from `protrans prep` "
        "(one protein per line), e.g. protrans prep proteins.fasta -o corpus.txt")


@pytest.mark.parametrize("head,kind", [
    (b"\x18\x01\x00\x00\x00\x00\x00\x00{\"__metadata__\":{}}\r\n", "the file is binary"),  # safetensors
    (b"\x89HDF\r\n\x1a\n\x00\x00", "the file is HDF5, such as embed writes"),
    ("M K T A\n\n".encode("utf-16"), "the file is UTF-16 text (convert it to UTF-8 first"),
    (b"PK\x03\x04\x14\x00", "the file is a zip archive (extract the file to read: unzip -p"),
    (b"x.txt".ljust(257, b"\0") + b"ustar\x0000", "the file is a tar archive (extract the file to read: tar -xf")])
def test_a_file_that_is_no_text_as_corpus_says_what_it_is(tmp_path, run_cli, head, kind):
    """A model's weights given as --corpus were "lines end in CR alone (old Mac line endings)",
    an HDF5 or UTF-16 file an "invalid residue" of its first odd byte: a problem it does not have."""
    corpus = tmp_path / "wrong.txt"
    corpus.write_bytes(head + b"M K T A Y\n\n" * 20)
    for flag in ("--corpus", "--val-corpus"):
        files = ["--corpus", corpus] if flag == "--corpus" else ["--corpus", LEARNABLE, "--val-corpus", corpus]
        res = run_cli("train", *files, "-o", tmp_path / "run", "--num-steps", 2, "--max-length", 32,
                      "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
        assert res.exit_code == 1, res.output
        said = res.stderr.strip().splitlines()[-1]
        assert said.startswith(f"protrans: error: {corpus}:1: not a corpus: {kind}"), said
        assert said.endswith("; the corpus is the text `protrans prep` writes, one protein per line"), said
        assert not (tmp_path / "run").exists()


def test_a_corpus_line_that_is_not_utf8_names_its_letter_as_latin1_reads_it(tmp_path, run_cli):
    """A hand-made corpus in Latin-1 (byte 0xC9, É): one line naming the file, the line and the
    letter, not a UnicodeDecodeError; the run directory it made is removed."""
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(b"M K T A\n\n" * 20 + b"M K \xc9 A\n\n")
    res = run_cli("train", "--corpus", corpus, "-o", tmp_path / "run", "--num-steps", 2, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.output
    assert res.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {corpus}:41: invalid residue 'É' at residue 3 of the protein (the corpus must come from "
        "`protrans prep`) (met reading step 1's batch; no checkpoint was written yet)")
    assert not (tmp_path / "run").exists()


def test_a_corpus_error_in_a_data_loader_worker_is_one_line_and_the_run_exits(tmp_path):
    # The bad line is past the first global batch (read before training), so a worker meets it:
    # it was re-raised as "Caught InputError in DataLoader worker process 0" with a traceback,
    # and the process then hung at exit (multiprocessing joins workers that ignore SIGTERM).
    import os
    import subprocess
    import sys

    from conftest import ROOT

    corpus = tmp_path / "bad.txt"
    corpus.write_text("M K T A Y\n\nM K V\n\nA C J D\n\n" + "M K T\n\n" * 6)
    cmd = [sys.executable, "-m", "protrans_cli", "train", "--corpus", str(corpus), "-o", str(tmp_path / "run"),
           "--num-steps", "3", "--max-length", "32", "--global-batch-size", "2", "--micro-batch-size", "2",
           "-j", "1", "--num-workers", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {corpus}:5: invalid residue 'J' at residue 3 of the protein "
        "(the corpus must come from `protrans prep`) (met reading step 1's batch; no checkpoint was written yet)")
    assert "Traceback" not in proc.stderr


# --- masking statistics ------------------------------------------------------------------

def _cfg(**kw):
    return TrainConfig(corpus=["x"], **kw)


@pytest.mark.parametrize("family", ["bert", "esm", "albert", "electra"])
def test_mlm_masking_statistics(family):
    layout = _layout(family)
    obj = make_objective("electra" if family == "electra" else "mlm", layout, _cfg())
    samples = _random_samples(layout)
    batch = obj.collate(samples)
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    n_pre = len(layout.prefix)
    original = torch.full_like(ids, layout.pad_id)
    for i, s in enumerate(samples):
        original[i, :n_pre] = torch.tensor(layout.prefix)
        original[i, n_pre:n_pre + len(s.residues)] = torch.as_tensor(s.residues)
        original[i, n_pre + len(s.residues):n_pre + len(s.residues) + len(layout.suffix)] = torch.tensor(layout.suffix)
    chosen = labels != IGNORE
    residue = batch["residue_mask"]
    assert not chosen[~residue].any()                      # no special or padding position chosen
    assert torch.equal(ids[~residue], original[~residue])  # and none of them changed
    assert torch.equal(labels[chosen], original[chosen])   # labels are the true residues
    rate = chosen.sum().item() / residue.sum().item()
    assert abs(rate - 0.15) < 0.01
    n = chosen.sum().item()
    masked = (ids == layout.mask_id) & chosen
    kept = (ids == original) & chosen
    replaced = chosen & ~masked & ~kept
    # BERT's 80/10/10; ELECTRA's generator input as ELECTRA's own code masks it: 85% the mask
    # token, 15% unchanged, no random residue
    to_mask, to_random = (0.85, 0.0) if family == "electra" else (0.8, 0.1)
    assert abs(masked.sum().item() / n - to_mask) < 0.02
    assert abs(replaced.sum().item() / n - to_random * 19 / 20) < 0.015  # a random residue can equal the true one
    assert abs(kept.sum().item() / n - (1 - to_mask - to_random + to_random / 20)) < 0.015
    assert set(ids[replaced].tolist()) <= set(layout.standard_ids.tolist())  # residues only
    assert batch["num_predicted"] == n
    assert attn.sum().item() == sum(len(s.residues) + layout.num_special for s in samples)


def test_masking_is_dynamic_and_reproducible():
    layout = _layout("bert")
    obj = make_objective("mlm", layout, _cfg())
    a = obj.collate(_random_samples(layout, n=20, epoch=0))["labels"]
    again = obj.collate(_random_samples(layout, n=20, epoch=0))["labels"]
    other_epoch = obj.collate(_random_samples(layout, n=20, epoch=1))["labels"]
    assert torch.equal(a, again)
    assert not torch.equal(a != IGNORE, other_epoch != IGNORE)


def test_t5_masks_single_residues_and_targets_the_whole_protein():
    layout = _layout("t5")
    obj = make_objective("t5", layout, _cfg())
    samples = _random_samples(layout)
    batch = obj.collate(samples)
    ids, labels, masked = batch["input_ids"], batch["labels"], batch["masked"]
    assert layout.prefix == [] and layout.suffix == [1]  # residues then </s>
    for i, s in enumerate(samples):
        L = len(s.residues)
        assert labels[i, :L].tolist() == s.residues.tolist() and labels[i, L].item() == 1
        assert (labels[i, L + 1:] == IGNORE).all()
        m = masked[i, :L]
        assert (ids[i, :L][m] == layout.mask_id).all()
        assert torch.equal(ids[i, :L][~m], torch.as_tensor(s.residues)[~m])
    rate = masked.sum().item() / sum(len(s.residues) for s in samples)
    assert abs(rate - 0.15) < 0.01
    assert batch["num_predicted"] == sum(len(s.residues) + 1 for s in samples)


def test_t5_masked_accuracy_is_over_the_masked_residues_only():
    """`masked_accuracy` (docs/train.md): the decoder's accuracy on the residues the encoder saw
    masked, not on `</s>` or the residues it saw."""
    model, layout = _tiny_model("t5")
    obj = make_objective("t5", layout, _cfg())
    samples = _random_samples(layout, n=6, length=30)
    batch = obj.collate(samples)
    with torch.no_grad():
        seen = {}
        hook = model.register_forward_hook(lambda m, a, out: seen.update(logits=out.logits))
        _, _, metrics = obj.loss(model, batch)
        hook.remove()
    chosen = [np.flatnonzero(batch["input_ids"][i, :len(s.residues)].numpy() == layout.mask_id)
              for i, s in enumerate(samples)]
    correct = sum(int((seen["logits"][i, c].argmax(-1) == torch.as_tensor(s.residues[c])).sum())
                  for i, (s, c) in enumerate(zip(samples, chosen)))
    assert int(metrics["masked_accuracy"][1]) == sum(len(c) for c in chosen) > 0
    assert int(metrics["masked_accuracy"][0]) == correct


@pytest.mark.parametrize("objective", ["t5", "t5_span"])
def test_a_model_with_an_input_prefix_trains_with_it_as_embed_feeds_it(objective):
    """A tokenizer holding ProstT5's <AA2fold> (`train --init-from` such a model): every
    training input starts with it, as embed's (models/base.py), and no label is it."""
    from protrans_cli.models.base import residue_layout

    fam = _family("t5")
    tok = fam.build_tokenizer()
    tok.add_tokens(["<AA2fold>"])
    lead = tok.convert_tokens_to_ids("<AA2fold>")
    layout = TokenLayout.from_tokenizer(tok, fam.prepare)
    assert layout.prefix == [lead] == residue_layout(fam, tok).prefix and layout.suffix == [1]
    samples = _random_samples(layout, n=20, length=30)
    batch = make_objective(objective, layout, _cfg()).collate(samples)
    assert (batch["input_ids"][:, 0] == lead).all()
    assert not (batch["labels"] == lead).any()
    if objective == "t5":  # the decoder still reconstructs the residues and </s>, not the prefix
        for i, s in enumerate(samples):
            assert batch["labels"][i, :len(s.residues)].tolist() == s.residues.tolist()


def test_t5_span_corruption_statistics_and_reconstruction():
    layout = _layout("t5")
    obj = make_objective("t5_span", layout, _cfg())
    samples = _random_samples(layout, n=300, length=200)
    batch = obj.collate(samples)
    sentinels = set(layout.sentinel_ids)
    noise = spans = total = 0
    for i, s in enumerate(samples):
        x = [t for t in batch["input_ids"][i].tolist() if t != layout.pad_id]
        y = [t for t in batch["labels"][i].tolist() if t != IGNORE]
        assert x[-1] == y[-1] == layout.suffix[-1]
        # Put the spans back where their sentinels are: the original protein.
        parts, current = {}, None
        for t in y[:-1]:
            if t in sentinels:
                current = t
                parts[t] = []
            else:
                parts[current].append(t)
        rebuilt = []
        for t in x[:-1]:
            rebuilt.extend(parts[t] if t in sentinels else [t])
        assert rebuilt == s.residues.tolist()
        noise += sum(len(p) for p in parts.values())
        spans += len(parts)
        total += len(s.residues)
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1
    # Every position alike, the termini too: unrolled, the last residue was corrupted in every
    # protein and the first in none
    first = sum(obj.noise_mask(200, s.rng(1))[0] for s in samples) / len(samples)
    last = sum(obj.noise_mask(200, s.rng(1))[-1] for s in samples) / len(samples)
    assert 0.08 < first < 0.25 and 0.08 < last < 0.25, (first, last)



def test_t5_span_of_a_one_residue_protein_reconstructs_it_after_one_sentinel():
    """A protein of one residue (prep --min-length 1) has no span to corrupt beside a kept one:
    its input is one sentinel, its target that sentinel and the residue, batched with longer ones."""
    layout = _layout("t5")
    obj = make_objective("t5_span", layout, _cfg())
    samples = [*_random_samples(layout, n=2, length=1), *_random_samples(layout, n=1, length=30, seed=2)]
    batch = obj.collate(samples)
    eos, first = layout.suffix[-1], layout.sentinel_ids[0]
    for i in range(2):
        x = [t for t in batch["input_ids"][i].tolist() if t != layout.pad_id]
        y = [t for t in batch["labels"][i].tolist() if t != IGNORE]
        assert x == [*layout.prefix, first, eos] and y == [first, *samples[i].residues.tolist(), eos]
    assert batch["num_predicted"] == sum(int((batch["labels"][i] != IGNORE).sum()) for i in range(3))


@pytest.mark.parametrize("numbering", ["upwards", "downwards"])
def test_t5_span_sentinels_follow_t5s_order_by_name(numbering):
    """The first span of a protein becomes <extra_id_0>, the next <extra_id_1>..., in the input
    and the labels alike, as T5 (and so a ProtT5 or Ankh checkpoint continued with --init-from)
    was trained; taken by name, whatever ids the vocabulary gives them (ProtT5 numbers them
    downwards from 127, this project's tokenizer upwards from 28)."""
    from protrans_cli.models.t5 import SENTINELS, T5_SPECIALS
    from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

    vocab = T5_SPECIALS + list(RESIDUES) + (SENTINELS if numbering == "upwards" else SENTINELS[::-1])
    tokenizer = residue_tokenizer(vocab, unk_token="<unk>", single="$A </s>", pad_token="<pad>", eos_token="</s>",
                                  additional_special_tokens=SENTINELS)
    expected = tokenizer.convert_tokens_to_ids(SENTINELS)
    assert (expected[0] == 127) == (numbering == "downwards")
    layout = TokenLayout.from_tokenizer(tokenizer, _family("t5").prepare)
    batch = make_objective("t5_span", layout, _cfg()).collate(_random_samples(layout, n=20, length=100))
    ids = set(expected)
    for x, y in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        in_x, in_y = [t for t in x if t in ids], [t for t in y if t in ids]
        assert in_x and in_x == in_y == expected[:len(in_x)]

def test_t5_span_of_a_protein_longer_than_the_sentinels_allow_rebuilds_it_with_each_sentinel_once():
    """Above about 2,000 residues the vocabulary's 100 sentinels cap the spans (docs/train.md):
    the spans get longer, the density stays 0.15, and a span the random roll cuts in two (the
    protein's two ends) still has a sentinel of its own."""
    layout = _layout("t5")
    assert len(layout.sentinel_ids) == 100
    obj = make_objective("t5_span", layout, _cfg())
    samples = _random_samples(layout, n=40, length=3000)
    batch = obj.collate(samples)
    sentinels = set(layout.sentinel_ids)
    noise = cut = 0
    for i, s in enumerate(samples):
        x = [t for t in batch["input_ids"][i].tolist() if t != layout.pad_id][:-1]
        y = [t for t in batch["labels"][i].tolist() if t != IGNORE][:-1]
        in_x = [t for t in x if t in sentinels]
        assert in_x == [t for t in y if t in sentinels] == layout.sentinel_ids[:len(in_x)]
        assert len(in_x) <= 100
        cut += x[0] in sentinels and x[-1] in sentinels  # a span at either end: one cut by the roll
        noise += len(y) - len(in_x)
    assert cut > 0
    assert abs(noise / (40 * 3000) - 0.15) < 0.002


def test_xlnet_permutation_masks():
    layout = _layout("xlnet")
    obj = make_objective("plm", layout, _cfg())
    samples = _random_samples(layout, n=50, length=60)
    batch = obj.collate(samples)
    perm, tmap, labels, ids = batch["perm_mask"], batch["target_mapping"], batch["labels"], batch["input_ids"]
    n_targets = 0
    for b in range(len(samples)):
        valid = labels[b] != IGNORE
        targets = tmap[b][valid].argmax(-1)  # positions, in factorisation order
        assert torch.equal(tmap[b][valid].sum(-1), torch.ones(int(valid.sum())))
        assert torch.equal(labels[b][valid], ids[b, targets])  # inputs unchanged, labels = residues
        residue_pos = set(range(len(layout.prefix), len(layout.prefix) + len(samples[b].residues)))
        assert set(targets.tolist()) <= residue_pos
        is_target = torch.zeros(ids.shape[1], dtype=torch.bool)
        is_target[targets] = True
        assert not perm[b][:, ~is_target].any()          # non-targets are seen by every token
        assert perm[b][~is_target][:, is_target].all()   # ...and see no target
        for k, i in enumerate(targets.tolist()):
            seen = ~perm[b, i, targets].bool()
            assert seen.tolist() == [j < k for j in range(len(targets))]  # only earlier targets
        n_targets += int(valid.sum())
    assert abs(n_targets / sum(len(s.residues) for s in samples) - 0.15) < 0.03


def test_clm_labels_are_the_next_token():
    layout = _layout("transfo_xl")
    obj = make_objective("clm", layout, _cfg())
    samples = _random_samples(layout, n=5, length=30)
    batch = obj.collate(samples)
    for i, s in enumerate(samples):
        full = layout.prefix + s.residues.tolist() + layout.suffix
        assert batch["input_ids"][i, :len(full)].tolist() == full
        assert batch["labels"][i, :len(full) - 1].tolist() == full[1:]
        assert (batch["labels"][i, len(full) - 1:] == IGNORE).all()


def test_clm_predicts_no_terminus_where_a_crop_cut_the_protein(tmp_path):
    # A window cropped out of a longer protein is still framed by <s> ... </s>; the labels must
    # not teach that the protein starts at the window's first residue or ends after its last.
    layout = _layout("transfo_xl")
    obj = make_objective("clm", layout, _cfg())
    corpus = tmp_path / "long.txt"
    corpus.write_text(" ".join("M" + "ACDEFGHIKL" * 12) + "\n" + " ".join("MKV") + "\n")
    stream = CorpusStream([str(corpus)], layout, max_length=30, global_batch_size=2, micro_batch_size=2,
                          collate=obj.collate, max_epochs=1)
    batch = next(iter(stream)).micro_batches[0]
    for row in range(2):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        n = int((ids != layout.pad_id).sum())
        if n == 5:  # M K V, whole: <s> predicts M, V predicts </s>
            assert labels[:n - 1].tolist() == ids[1:n].tolist()
            continue
        assert n == 30 and ids[0] == layout.prefix[0] and ids[n - 1] == layout.suffix[-1]
        # (the seed's crop starts inside the protein and ends before its end)
        assert labels[0] == IGNORE and labels[n - 2] == IGNORE
        assert labels[1:n - 2].tolist() == ids[2:n - 1].tolist()  # every residue still predicts the next
        assert batch["num_predicted"] == 4 + (n - 3)


def test_clm_segments_carry_memory_as_one_pass():
    # Segments of 8 tokens with memory (mem_len 32 >= the batch width) give the loss of one pass
    # over the whole protein: the memory is carried, and nothing from the future is seen.
    model, layout = _tiny_model("transfo_xl")
    batch = make_objective("clm", layout, _cfg()).collate(_random_samples(layout, n=4, length=20))
    assert batch["input_ids"].shape[1] <= model.config.mem_len
    with torch.no_grad():
        whole, n, _ = make_objective("clm", layout, _cfg(segment_length=1000)).loss(model, batch)
        segments, n_seg, _ = make_objective("clm", layout, _cfg(segment_length=8)).loss(model, batch)
        model.config.mem_len = 0
        forgetful, _, _ = make_objective("clm", layout, _cfg(segment_length=8)).loss(model, batch)
    assert n == n_seg == batch["num_predicted"]
    # (summed losses of ~285: float rounding is ~3e-5; an untrained model leans on its memory
    # little, and without memory the sum moves by ~2e-3)
    assert abs(float(segments - whole)) < 2e-4
    assert abs(float(forgetful - whole)) > 1e-3


def test_clm_makes_as_many_model_calls_on_every_rank_whatever_its_proteins_lengths(monkeypatch):
    """Under FSDP every model call gathers each block's parameters from all ranks: a rank whose
    micro-batch held shorter proteins (fewer segments) made fewer calls, and the run failed in a
    collective (`torchrun ... --family transfo_xl --strategy fsdp`, gloo: "Received data size
    doesn't match expected size"; NCCL: a hang until --dist-timeout). The step's exchange gives
    every micro-batch the most segments of any on any rank; the extra ones predict nothing."""
    from protrans_cli.training import loop
    from protrans_cli.training.dist import DistInfo

    model, layout = _tiny_model("transfo_xl", dropout=0.0)
    obj = make_objective("clm", layout, _cfg(segment_length=8))
    # rank 0: micro-batches of 4 and 1 segments (8 tokens each); rank 1: of 2 and 1
    ranks = [[obj.collate(_random_samples(layout, n=2, length=length, seed=length)) for length in lengths]
             for lengths in ((30, 5), (12, 3))]
    with torch.no_grad():
        alone = [[obj.loss(model, dict(b))[:2] for b in rank] for rank in ranks]
    # the step's one exchange of the two ranks, all_reduce_sum's: their own counts, then the sum
    local = []
    monkeypatch.setattr(loop.dist, "all_reduce_sum", lambda t: local.append(t.clone()) or t)
    for r, rank in enumerate(ranks):
        loop._shared_counts([dict(b) for b in rank], DistInfo(rank=r, world_size=2, initialised=True), False)
    monkeypatch.setattr(loop.dist, "all_reduce_sum", lambda t: t.copy_(local[0] + local[1]))
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for r, rank in enumerate(ranks):
            loop._shared_counts(rank, DistInfo(rank=r, world_size=2, initialised=True), False)
            for b, (loss, n) in zip(rank, alone[r]):
                calls.clear()
                got, got_n, _ = obj.loss(model, b)
                assert len(calls) == 4  # (rank 0's first micro-batch's)
                assert torch.equal(got, loss) and int(got_n) == int(n) == b["num_predicted"]
    hook.remove()


def test_electra_loss_combines_generator_and_discriminator():
    model, layout = _tiny_model("electra")  # no dropout: logits recomputed below
    obj = make_objective("electra", layout, _cfg())
    samples = _random_samples(layout, n=8, length=40)
    batch = obj.collate(samples)
    seen = {}

    def capture(module, args, kwargs, output):  # the discriminator's input and logits
        seen["ids"], seen["logits"] = kwargs["input_ids"], output.logits.detach()

    hook = model.discriminator.register_forward_hook(capture, with_kwargs=True)
    total, n, metrics = obj.loss(model, batch)
    hook.remove()
    gen_sum, n_masked = metrics["gen_loss"]
    disc_sum, n_real = metrics["disc_loss"]
    assert n == n_masked == batch["num_predicted"]
    expected = gen_sum / n_masked + 50 * disc_sum / n_real
    assert torch.allclose(total / n, expected, rtol=1e-5)
    # By hand from the logits: the generator's cross entropy on the masked residues; the
    # discriminator's binary cross entropy on every residue, "replaced" where its input differs
    # from the true protein (a sample equal to the true residue is original).
    masked = batch["labels"] != IGNORE
    residue = batch["residue_mask"]
    with torch.no_grad():
        gen_logits = model.generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    gen = torch.nn.functional.cross_entropy(gen_logits[masked], batch["labels"][masked])
    truth = torch.full_like(seen["ids"], layout.pad_id)
    for i, s in enumerate(samples):
        truth[i, 1:1 + len(s.residues)] = torch.as_tensor(s.residues)
    assert torch.equal(seen["ids"][~masked], batch["input_ids"][~masked])  # only masked positions sampled
    assert set(seen["ids"][masked].tolist()) <= set(layout.residue_ids.tolist())
    replaced = (seen["ids"] != truth).float()
    assert 0 < replaced[masked].sum() < masked.sum()  # some samples equal the true residue
    disc = torch.nn.functional.binary_cross_entropy_with_logits(seen["logits"][residue], replaced[residue])
    assert torch.allclose(total / n, gen + 50 * disc, rtol=1e-5)
    total.backward()
    assert model.discriminator.electra.encoder.layer[0].attention.self.query.weight.grad is not None


@pytest.mark.parametrize("packed", [False, True])
def test_electra_replacements_depend_on_the_protein_not_on_its_batch(packed):
    # Each protein's replacements come from its own generator, so a protein is corrupted the
    # same way in one micro-batch of 8 or in 8 of one (on one rank or several), and the
    # global RNG is neither used nor needed.
    fam = _family("electra")
    tok = fam.build_tokenizer()
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tok, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0)).eval()
    layout = TokenLayout.from_tokenizer(tok, fam.prepare)
    obj = make_objective("electra", layout, _cfg())
    if packed:
        obj.packed_position_offset = fam.packed_position_offset(model.config)
        from protrans_cli.models import packing

        packing.use_packed_attention(model)
    samples = _random_samples(layout, n=8, length=40)

    def detection(batch_samples, seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            _, _, metrics = obj.loss(model, obj.collate(batch_samples))
        return np.array([float(metrics["disc_loss"][0]), int(metrics["disc_accuracy"][0]),
                         int(metrics["disc_accuracy"][1])])

    whole = detection(samples, seed=1)
    one_by_one = sum(detection([s], seed=100 + i) for i, s in enumerate(samples))
    assert whole[2] == one_by_one[2] == 8 * 40  # every residue judged
    assert whole[1] == one_by_one[1]
    np.testing.assert_allclose(whole[0], one_by_one[0], rtol=1e-5)


# --- optimizers and schedule -------------------------------------------------------------

def test_schedules():
    lin = LRLambda("linear", 10, 110, 0.1)
    assert lin(0) == pytest.approx(0.1) and lin(9) == pytest.approx(1.0)
    assert lin(60) == pytest.approx(0.55) and lin(110) == pytest.approx(0.1) and lin(500) == pytest.approx(0.1)
    cos = LRLambda("cosine", 10, 110, 0.0)
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    inv = LRLambda("inverse_sqrt", 100, 1000, 0.0)
    assert inv(99) == pytest.approx(1.0) and inv(399) == pytest.approx(0.5)
    # constant: the warmup, then the peak lr to the end and past it (min_lr_ratio is not a floor it decays to)
    const = LRLambda("constant", 10, 110, 0.1)
    assert const(0) == pytest.approx(0.1) and [const(s) for s in (9, 10, 60, 110, 500)] == [1.0] * 5
    assert LRLambda("constant", 0, 110, 0.1)(0) == 1.0


def test_wsd_holds_the_peak_then_decays_over_its_last_fraction():
    """Warmup-stable-decay: 10 warmup steps of 110, the peak to step 88 (110 - 0.2 x 110), then
    down to lr x min_lr_ratio one step after the last (as linear's), linearly or as 1 - sqrt."""
    wsd = LRLambda("wsd", 10, 110, 0.1, 0.2)
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == pytest.approx(1.0)  # warmup's end
    assert [wsd(s) for s in (10, 50, 87, 88)] == [1.0] * 4  # stable, to the decay's start
    assert wsd(99) == pytest.approx(1 - 0.9 * 11 / 22) and wsd(109) == pytest.approx(1 - 0.9 * 21 / 22)
    assert wsd(110) == pytest.approx(0.1) and wsd(500) == pytest.approx(0.1)  # the floor, and past the end
    root = LRLambda("wsd_sqrt", 10, 110, 0.0, 0.2)
    assert root(88) == 1.0 and root(93) == pytest.approx(1 - (5 / 22) ** 0.5) and root(110) == pytest.approx(0.0)
    # the decay never reaches into the warmup, and takes at least one step
    assert LRLambda("wsd", 10, 12, 0.5, 1.0)(10) == 1.0 and LRLambda("wsd", 10, 12, 0.5, 1.0)(11) == pytest.approx(0.75)
    assert LRLambda("wsd", 0, 10, 0.0, 0.01)(9) == 1.0 and LRLambda("wsd", 0, 10, 0.0, 0.01)(10) == 0.0



@pytest.mark.parametrize("schedule", ["linear", "cosine", "wsd", "wsd_sqrt"])
def test_a_runs_scheduler_decays_to_its_min_lr_ratio_by_hand(schedule):
    """The scheduler a run builds from its settings (build_scheduler), step by step against the
    schedule written out by hand: --warmup-steps 2 of 10 steps, then the decay to lr x min_lr_ratio
    (0.25 here, not the default 0.1), reached one step after the last."""
    import math

    from protrans_cli.training.optim import build_scheduler

    config = TrainConfig(family="bert", lr=1e-3, schedule=schedule, warmup_steps=2, min_lr_ratio=0.25,
                         decay_fraction=0.5)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, 10)
    seen = []
    for _ in range(11):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    def by_hand(step):
        if step < 2:
            return (step + 1) / 2
        if schedule.startswith("wsd"):  # (decay_fraction 0.5 of 10: the peak to step 5, the floor at 10)
            progress = max(0.0, min(1.0, (step - 5) / 5))
            return 0.25 + 0.75 * (1 - (progress if schedule == "wsd" else math.sqrt(progress)))
        progress = min(1.0, (step - 2) / 8)
        decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return 0.25 + 0.75 * decay

    assert seen == pytest.approx([1e-3 * by_hand(s) for s in range(11)], rel=1e-9)
    assert seen[-1] == pytest.approx(0.25e-3)

@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor"])
def test_optimizers_minimise_a_regression(name):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Linear(8, 1)
    opt = build_optimizer(model, _cfg(optimizer=name, lr=0.05, weight_decay=0.0))
    first = None
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_adafactor_takes_the_steps_of_transformers_adafactor():
    # Ours (it works under FSDP, where transformers' one fails) against the one ProtT5's recipe
    # named: same settings, an external learning rate, weight decay on matrices only.
    from transformers.optimization import Adafactor as HFAdafactor

    from protrans_cli.training.optim import param_groups

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = build_optimizer(models[0], _cfg(optimizer="adafactor", lr=1e-2, weight_decay=0.01))
    theirs = HFAdafactor(param_groups(models[1], 0.01), lr=1e-2, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    start = models[0][0].weight.detach().clone()
    x = torch.randn(32, 8)

    def steps(optimizers, begin, end):
        for step in range(begin, end):
            for model, opt in zip(models, optimizers):
                model(x * (1 + step)).pow(2).mean().backward()  # growing gradients: the update clip acts
                opt.step()
                opt.zero_grad()

    steps((ours, theirs), 0, 10)
    for a, b in zip(models[0].parameters(), models[1].parameters()):  # (a fresh run's steps)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # A checkpoint of transformers' Adafactor (protrans used it before) resumes in ours: its eps
    # pair and integer step failed at the first step
    resumed = build_optimizer(models[0], _cfg(optimizer="adafactor", lr=1e-2, weight_decay=0.01))
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))  # (as from a file: not the same tensors)
    models[0].load_state_dict(models[1].state_dict())
    steps((resumed, theirs), 10, 20)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (models[0][0].weight - start).abs().max() > 1e-3  # it moved


def test_lamb_trust_ratio_scales_the_step_with_the_weight_norm():
    # The first LAMB step of a weight moves it by lr * ||w|| (Adam's first step is sign-like).
    for scale in (1.0, 10.0):
        w = torch.nn.Parameter(torch.full((4, 4), scale))
        opt = Lamb([w], lr=0.01)
        w.grad = torch.ones(4, 4)
        before = w.detach().clone()
        opt.step()
        assert (before - w.detach()).norm().item() == pytest.approx(0.01 * before.norm().item(), rel=1e-4)


def test_lamb_moves_a_matrix_of_zeros_by_adams_step():
    """A weight matrix that is all zeros (a zero-initialised projection) has no norm for the trust
    ratio: it takes Adam's plain step, not none (a ratio of 0 kept it at zero for good)."""
    w = torch.nn.Parameter(torch.zeros(4, 4))
    opt = Lamb([w], lr=0.01, eps=1e-8)
    w.grad = torch.full((4, 4), 2.0)
    opt.step()
    # Adam's first step: m_hat / sqrt(v_hat) = g / |g| = 1 per element
    torch.testing.assert_close(w.detach(), torch.full((4, 4), -0.01), rtol=1e-5, atol=1e-7)


def test_lamb_takes_adams_steps_for_biases_and_norms():
    """LAMB as BERT's and ALBERT's code has it (ProtBert, ProtAlbert): the trust ratio for the
    weights that decay, plain Adam steps for biases and norms. With the ratio, a bias that starts
    at zero moved once and then by lr x its own norm: still ~0.01 after hundreds of steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    torch.nn.init.zeros_(model.bias)
    ref = {"weight": model.weight.detach().clone(), "bias": model.bias.detach().clone()}
    moments = {name: [torch.zeros_like(t), torch.zeros_like(t)] for name, t in ref.items()}
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.98), 1e-8, 0.01
    opt = build_optimizer(model, _cfg(optimizer="lamb", lr=lr, weight_decay=wd))
    for t in range(1, 21):
        x, y = torch.randn(16, 8), torch.randn(16, 4) + 1.0
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads = {"weight": model.weight.grad.clone(), "bias": model.bias.grad.clone()}
        opt.step()
        for name, w in ref.items():  # You et al. 2019, Algorithm 2; no ratio where no decay
            m, v = moments[name]
            m.mul_(b1).add_((1 - b1) * grads[name])
            v.mul_(b2).add_((1 - b2) * grads[name] ** 2)
            r = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
            if name == "weight":
                r = r + wd * w
                r = r * (w.norm() / r.norm())
            w -= lr * r
        torch.testing.assert_close(model.weight.detach(), ref["weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.bias.detach(), ref["bias"], rtol=1e-5, atol=1e-6)
    assert model.bias.detach().abs().max() > 0.1  # (with the ratio: about 0.01)


def test_adamw_steps_with_the_runs_betas_and_eps_and_decays_matrices_not_biases_or_norms():
    """--optimizer adamw as docs/train.md has it: the config's betas and eps (ESM-2's 0.9/0.98 and
    1e-8 by default), --weight-decay on every matrix (embeddings too) and none on the 1-D
    parameters (biases, LayerNorm weights); tied weights stepped once. Two steps of a tiny BERT
    against AdamW written out by hand, with settings other than torch's defaults."""
    defaults = TrainConfig()
    assert (defaults.adam_beta1, defaults.adam_beta2, defaults.adam_eps, defaults.weight_decay) == (0.9, 0.98, 1e-8, 0.01)
    model, _ = _tiny_model("bert")
    lr, b1, b2, eps, wd = 1e-2, 0.8, 0.9, 1e-3, 0.1
    opt = build_optimizer(model, _cfg(lr=lr, adam_beta1=b1, adam_beta2=b2, adam_eps=eps, weight_decay=wd))
    named = dict(model.named_parameters())  # (each tensor once: the tied decoder is the word embeddings)
    decays = {name: not name.endswith("bias") and "LayerNorm" not in name for name in named}
    assert decays["bert.embeddings.word_embeddings.weight"] and not decays["bert.embeddings.LayerNorm.weight"]
    ref = {name: p.detach().clone().double() for name, p in named.items()}
    moments = {name: [torch.zeros_like(t), torch.zeros_like(t)] for name, t in ref.items()}
    gen = torch.Generator().manual_seed(0)
    for t in (1, 2):
        grads = {name: torch.randn(p.shape, generator=gen) for name, p in named.items()}
        for name, p in named.items():
            p.grad = grads[name].clone()
        opt.step()
        for name, w in ref.items():
            m, v = moments[name]
            g = grads[name].double()
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            if decays[name]:
                w.mul_(1 - lr * wd)
            w.sub_(lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps))
    for name, p in named.items():
        torch.testing.assert_close(p.detach().double(), ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_albert_sentence_order_collate():
    layout = _layout("albert")
    layout.use_pair = True
    obj = make_objective("mlm", layout, _cfg(sop=True))
    samples = _random_samples(layout, n=200, length=50)
    for s in samples[::2]:  # a cropped window of a longer protein: its first residue is no terminus
        s.n_terminus = False
    batch = obj.collate(samples)
    order = batch["sentence_order_label"]
    assert 0.4 < order.float().mean().item() < 0.6
    sep = layout.pair_middle[-1]
    for i, s in enumerate(samples):
        ids = batch["input_ids"][i]
        labels = batch["labels"][i]
        residue = batch["residue_mask"][i]
        types = batch["token_type_ids"][i]
        truth = torch.where(labels != IGNORE, labels, ids)[residue]  # residues with masks undone
        (middle,) = torch.nonzero(ids == sep).flatten()[:1]
        a = truth[: middle - len(layout.pair_prefix)]
        b = truth[len(a):]
        # A protein's first residue (nearly always M) is left out: "A starts with M" gave the
        # order away (0.93 accuracy over DeepLoc proteins); a window's first residue is kept.
        original = torch.as_tensor(s.residues[1:] if s.n_terminus else s.residues)
        rebuilt = torch.cat([b, a]) if order[i] else torch.cat([a, b])
        assert torch.equal(rebuilt, original) and len(a) > 0 and len(b) > 0
        assert types[: middle + 1].eq(0).all() and types[middle + 1: batch["attention_mask"][i].sum()].eq(1).all()
    assert len(layout.pair_prefix) + len(layout.pair_middle) + len(layout.pair_suffix) == layout.num_special == 3


def test_albert_sentence_order_loss_outside_a_step_is_the_mlm_mean_plus_the_order_mean():
    # Evaluation (no step_ratio): sum_loss / num_masked is the masked residues' mean cross
    # entropy plus the proteins' mean sentence-order cross entropy, as during a training step.
    model, layout = _tiny_model("albert")
    layout.use_pair = True
    obj = make_objective("mlm", layout, _cfg(sop=True))
    batch = obj.collate(_random_samples(layout, n=6, length=40))
    with torch.no_grad():
        total, n, metrics = obj.loss(model, batch)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    masked = batch["labels"] != IGNORE
    mlm = torch.nn.functional.cross_entropy(out.prediction_logits[masked], batch["labels"][masked])
    order = torch.nn.functional.cross_entropy(out.sop_logits, batch["sentence_order_label"])
    assert int(n) == batch["num_predicted"] == int(masked.sum())
    assert torch.allclose(total / n, mlm + order, rtol=1e-5)
    assert torch.allclose(metrics["sop_loss"][0] / metrics["sop_loss"][1], order, rtol=1e-5)


def test_corpus_patterns_expand_to_sorted_shards(tmp_path):
    from protrans_cli.errors import UsageError
    from protrans_cli.training.config import TrainConfig

    for i in (2, 0, 1):
        (tmp_path / f"corpus.{i:05d}.txt").write_text("M K\n\n")
    config = TrainConfig().override(corpus=[str(tmp_path / "corpus.*.txt")])
    assert config.corpus == [str(tmp_path / f"corpus.{i:05d}.txt") for i in range(3)]
    from_file = TrainConfig.from_dict({"corpus": str(tmp_path / "corpus.0000[01].txt")})
    assert len(from_file.corpus) == 2
    with pytest.raises(UsageError, match="no corpus file matches"):
        TrainConfig().override(corpus=[str(tmp_path / "missing.*.txt")])


def test_print0_is_silent_when_quiet(capsys):
    # `protrans -q train` promises only errors on stderr; the progress lines went through print0.
    from protrans_cli import console
    from protrans_cli.training.dist import print0

    saved = console.state.verbosity
    try:
        console.configure(verbosity=-1)
        print0("train: phase 1/1")
        assert capsys.readouterr().err == ""
        console.configure(verbosity=0)
        print0("train: phase 1/1")
        assert capsys.readouterr().err == "train: phase 1/1\n"
    finally:
        console.state.verbosity = saved


def test_print0_escapes_control_characters_as_every_message_does(capsys):
    """train's lines (its set-up, its summary `model in RUN`) were printed as they were: a run
    directory named with an escape sequence coloured the terminal, and wrote the raw escape
    into a batch job's log, where every other message escapes it (console.info)."""
    from protrans_cli.training.dist import print0

    print0("train: done, 3 steps; model in runs/a\x1b[31mred", "(3 steps in 2 s)")
    assert capsys.readouterr().err == "train: done, 3 steps; model in runs/a\\x1b[31mred (3 steps in 2 s)\n"


def test_config_file_values_of_the_wrong_type_are_usage_errors(tmp_path):
    # `num_steps = "ten"` in a TOML file was a TypeError traceback deep in validate().
    path = tmp_path / "c.toml"
    for text, match in (('num_steps = "ten"', "num_steps must be an int, got 'ten'"),
                        ("compile = 1", "compile must be a bool"),
                        ("global_batch_size = true", "global_batch_size must be an int"),
                        ("lr = 1" + "0" * 400, "lr is too large a number")):  # (float(): OverflowError)
        path.write_text(text + "\n")
        with pytest.raises(UsageError, match=match):
            TrainConfig.from_file(path)
    path.write_text("lr = 1\nthreads = 2\nobjective = \"mlm\"\n")
    cfg = TrainConfig.from_file(path)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.threads == 2


# --- padding multiple --------------------------------------------------------------------

@pytest.mark.parametrize("family,objective", [("bert", "mlm"), ("esm", "mlm"), ("electra", "electra"),
                                              ("t5", "t5"), ("t5", "t5_span"), ("xlnet", "plm"),
                                              ("transfo_xl", "clm")])
def test_pad_multiple_rounds_every_batch_and_leaves_the_loss_unchanged(family, objective):
    """--pad-multiple only adds padding: every padded tensor's length is a multiple of it, and
    the loss of a model over the batch equals the loss over the same batch padded to 8."""
    fam = _family(family)
    tok = fam.build_tokenizer()
    layout = TokenLayout.from_tokenizer(tok, fam.prepare)
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tok)).eval()
    samples = _random_samples(layout, n=5, length=37)
    losses = {}
    for multiple in (8, 48):
        obj = make_objective(objective, layout, _cfg(pad_multiple=multiple))
        batch = obj.collate(samples)
        # Token axes (XLNet's labels run over its targets, not over positions).
        keys = {"input_ids", "attention_mask", "masked", "residue_mask", "token_type_ids"}
        keys |= set() if objective == "plm" else {"labels"}
        for key in keys & set(batch):
            assert batch[key].shape[1] % multiple == 0, (key, batch[key].shape)
        torch.manual_seed(1)
        with torch.no_grad():
            total, n, metrics = obj.loss(model, batch)
        # ELECTRA samples its replacements over every position, padding included, so only its
        # generator's loss is free of the random stream.
        losses[multiple] = (float(metrics["gen_loss"][0] if objective == "electra" else total), int(n))
    assert losses[48][1] == losses[8][1]
    assert losses[48][0] == pytest.approx(losses[8][0], rel=1e-5)


def test_strategy_none_is_refused_with_several_processes():
    """Under torchrun, --strategy none trained one unsynchronised copy per rank without a word."""
    _cfg(strategy="none").validate(world_size=1)
    with pytest.raises(UsageError, match=r"--strategy none \(strategy\) is for one process, not 2"):
        _cfg(strategy="none").validate(world_size=2)
    _cfg(strategy="ddp").validate(world_size=2)


def test_pad_multiple_is_checked_and_set_from_the_command_line(run_cli, tmp_path):
    with pytest.raises(UsageError, match=r"--pad-multiple \(pad_multiple\) must be at least 1"):
        _cfg(pad_multiple=0).validate()
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "--preset", "tiny", "--num-steps", 1, "--global-batch-size", 4,
                  "--micro-batch-size", 4, "--pad-multiple", 64, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "train_config.json").read_text())["pad_multiple"] == 64


@pytest.mark.parametrize("flags, message", [
    (["--lr", "1e38"], "--lr (lr) must be at most 3.4e+37 with --optimizer adamw, got 1e+38: AdamW's first step "
                       "divides it by 1 - adam_beta1 (0.1) and float32 holds no number above 3.403e+38"),
    (["--lr", "1e39", "--optimizer", "lamb"],
     "--lr (lr) must be at most 3.4e+38 with --optimizer lamb, got 1e+39: float32 holds no number above 3.403e+38"),
    (["--lr", "1e37", "--optimizer", "adafactor", "--weight-decay", "100"],
     "--lr (lr) must be at most 3.4e+36 with --optimizer adafactor, got 1e+37: weight decay multiplies it by "
     "--weight-decay (weight_decay) 100 and float32 holds no number above 3.403e+38"),
])
def test_an_lr_the_optimizer_cannot_hand_torch_is_a_usage_error(run_cli, tmp_path, flags, message):
    """`train --lr 1e38` ended at the first step in a traceback from torch's AdamW ("value cannot
    be converted to type float without overflow"): refused before anything is read, naming --lr."""
    r = run_cli("train", "--corpus", tmp_path / "absent.txt", "-o", tmp_path / "run", *flags)
    assert (r.exit_code, r.stderr) == (2, f"protrans: error: {message}\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optimizer, weight_decay, beta1", [("adamw", 0.01, 0.9), ("adamw", 1e6, 0.9),
                                                            ("adamw", 0.0, 0.0), ("lamb", 0.01, 0.9),
                                                            ("adafactor", 1e3, 0.9)])
def test_the_largest_lr_allowed_is_where_torch_stops_converting(optimizer, weight_decay, beta1):
    """The bound is torch's own: the largest lr allowed takes a step at full lr (the schedule never
    goes above it) and one a hair above it, refused, is torch's overflow error, not merely a
    cautious limit (AdamW's weight decay, however large, is no part of it)."""
    from protrans_cli.training.config import FLOAT32_MAX

    factor = max([1.0] + [1 / (1 - beta1)] * (optimizer == "adamw")
                 + [weight_decay] * (optimizer == "adafactor"))
    limit = FLOAT32_MAX / factor

    def step(lr):
        config = _cfg(optimizer=optimizer, lr=lr, weight_decay=weight_decay, adam_beta1=beta1)
        model = torch.nn.Linear(3, 2)
        opt = build_optimizer(model, config)
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        return config

    step(limit * (1 - 1e-9)).check_values()
    with pytest.raises(UsageError, match=r"--lr \(lr\) must be at most"):
        _cfg(optimizer=optimizer, lr=limit * 1.01, weight_decay=weight_decay, adam_beta1=beta1).check_values()
    with pytest.raises(RuntimeError, match="without overflow"):
        step(limit * 1.01)


def _long_flags(command) -> set[str]:
    return {o[2:].replace("-", "_") for p in command.params for o in p.opts + p.secondary_opts
            if o.startswith("--") and not o.startswith("--no-")}


def test_messages_name_the_flag_a_setting_really_has():
    """setting_name's flag list follows the click options: a new config-only field or a new flag
    would otherwise make messages name a flag that does not exist (or leave out one that does)."""
    import dataclasses

    from protrans_cli.cli.train import command
    from protrans_cli.training.config import CONFIG_ONLY, setting_name

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flagged = fields & _long_flags(command)
    assert flagged == fields - CONFIG_ONLY, "update CONFIG_ONLY in training/config.py"
    assert setting_name("warmup_steps") == "--warmup-steps (warmup_steps)"
    assert setting_name("min_lr_ratio") == "--min-lr-ratio (min_lr_ratio)"
    assert setting_name("adam_eps") == "adam_eps"


def test_fit_messages_name_existing_flags():
    from protrans_cli.cli.fit import command
    from protrans_cli.heads.fit import _FIT_FLAGS

    assert {f[2:].replace("-", "_") for f in _FIT_FLAGS.values()} <= _long_flags(command)


def test_phase_flags_over_a_config_files_single_phase_say_what_they_replace(capsys):
    """A config file's num_steps = 5000 was silently dropped by --phase flags (the docs read as if
    that were refused; it is allowed, since flags override the file, and now said)."""
    cfg = TrainConfig(corpus=["x"], num_steps=5000)
    over = cfg.override(phases=["64:2"])
    assert over.total_steps == 2
    assert "--phase replaces the config file's num_steps = 5000" in capsys.readouterr().err
    TrainConfig(corpus=["x"]).override(phases=["64:2"])  # defaults: nothing replaced, nothing said
    assert "replaces" not in capsys.readouterr().err


def test_a_bad_phase_string_in_a_config_file_names_the_file(tmp_path):
    # `phases = ["512"]` in a TOML file was reported as "--phase '512': ...", a flag never given.
    for phases, problem in (('["512"]', "expected LEN:STEPS"), ('["512:ten"]', "every field must be a whole number")):
        path = tmp_path / "c.toml"
        path.write_text(f"phases = {phases}\n")
        with pytest.raises(UsageError) as info:
            TrainConfig.from_file(path)
        message = info.value.format()
        assert message.startswith(f"{path}: phase ") and problem in message and "--phase" not in message


def test_loss_curve_is_not_written_through_a_planted_link(tmp_path):
    # `.loss_curve.png.tmp.png` had a fixed name: a link planted there was written through.
    from protrans_cli.training.metrics import append_metrics, plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    append_metrics(metrics, {"step": 1, "loss": 2.0})
    append_metrics(metrics, {"step": 2, "loss": 1.5})
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / ".loss_curve.png.tmp.png").symlink_to(victim)
    plot_metrics(metrics, tmp_path / "loss_curve.png")
    assert victim.read_bytes() == b"precious\n"
    assert (tmp_path / "loss_curve.png").read_bytes().startswith(b"\x89PNG")


def test_config_files_with_a_byte_order_mark_are_read_and_phase_keys_are_named(tmp_path):
    """A BOM (Notepad's UTF-8): TOML refused it ("Invalid statement at line 1"), and JSON from
    stdin was read as TOML. An unknown or missing phase key said "Phase.__init__() got ..."."""
    import io
    import sys

    toml = tmp_path / "c.toml"
    toml.write_bytes(b"\xef\xbb\xbfcorpus = \"c.txt\"\nlr = 0.002\n[[phases]]\nmax_length = 64\nnum_steps = 5\n")
    config = TrainConfig.from_file(toml)
    assert config.lr == 0.002 and config.phases[0].max_length == 64
    stdin = sys.stdin
    try:
        sys.stdin = io.TextIOWrapper(io.BytesIO(b'\xef\xbb\xbf{"corpus": "c.txt", "lr": 0.003}'))
        assert TrainConfig.from_file("-").lr == 0.003
    finally:
        sys.stdin = stdin
    toml.write_text('corpus = "c.txt"\n[[phases]]\nmax_length = 64\nnum_steps = 5\nsteps = 3\n')
    with pytest.raises(UsageError, match=r"c.toml: unknown phase setting\(s\) steps \(a phase has max_length, "
                                         r"num_steps, global_batch_size, micro_batch_size\)"):
        TrainConfig.from_file(toml)
    toml.write_text('corpus = "c.txt"\n[[phases]]\nmax_length = 64\n')
    with pytest.raises(UsageError, match=r"c.toml: a phase needs num_steps"):
        TrainConfig.from_file(toml)


def test_a_config_file_nested_too_deeply_is_a_usage_error(tmp_path, run_cli):
    """100,000 nested brackets were a RecursionError traceback from the JSON parser."""
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = run_cli("train", "--config", deep, "--corpus", "c.txt", "-o", tmp_path / "r")
    assert r.exit_code == 2 and r.stderr == f"protrans: error: {deep}: cannot parse config (nested too deeply)\n"


@pytest.mark.parametrize("setting,message", [
    ('precision = "fp8"', "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("micro_batch_size = 0", "--micro-batch-size (micro_batch_size) must be at least 1, got 0"),
    # "training: max_length must be at least 8" named neither the flag nor the key as the others do
    ("max_length = 4", "--max-length (max_length) must be at least 8, got 4"),
    # (0 writes the model as initialised: test_train_untrained.py)
    ("num_steps = -1", "--num-steps (num_steps) must be at least 0, got -1 (0: the model as initialised, untrained)"),
    ('corpus = "c.txt"\n[[phases]]\nmax_length = 4\nnum_steps = 2',
     "phase 1 (4:2): max_length must be at least 8, got 4"),
    ("lr = -1", "--lr (lr) must be positive, got -1.0"),
    # a phase table's micro-batch size without a global one: the run's global one is shown
    ('corpus = "c.txt"\nglobal_batch_size = 6\n[[phases]]\nmax_length = 32\nnum_steps = 2\nmicro_batch_size = 0',
     "phase 1 (32:2:6:0): micro_batch_size must be at least 1, got 0"),
])
def test_a_config_files_bad_value_names_the_file(tmp_path, run_cli, setting, message):
    """Checked only after the flags were merged, a config file's bad value was reported without
    the file: `precision must be one of ...`, with nothing saying where it came from."""
    config = tmp_path / "c.toml"
    config.write_text(f'family = "bert"\npreset = "tiny"\n{setting}\n')
    r = run_cli("train", "--config", config, "--corpus", "c.txt", "-o", tmp_path / "r")
    assert r.exit_code == 2 and r.stderr == f"protrans: error: {config}: {message}\n", r.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_value_of_a_config_read_from_stdin_names_stdin(tmp_path, run_cli):
    """`--config -`: the bad value's line names `<stdin>`, as every reader of `-` names it, not a
    file called `-`."""
    r = run_cli("train", "--config", "-", "--corpus", "c.txt", "-o", tmp_path / "r",
                input=b'family = "bert"\npreset = "tiny"\nprecision = "fp8"\n')
    assert r.exit_code == 2 and r.stderr == ("protrans: error: <stdin>: precision must be one of auto, fp32, bf16, "
                                             "fp16, got 'fp8'\n"), r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("packed", [False, True])
def test_token_micro_batches_hold_the_same_proteins_within_the_budget(tmp_path, packed):
    """Each rank keeps the proteins fixed micro-batches give it, cut into micro-batches of at most
    the budget's padded tokens (a protein alone may exceed it: it still goes), fewer of them where
    the proteins are short, and every rank makes as many as the others."""
    from protrans_cli.models import get_family

    rng = np.random.default_rng(0)
    corpus = tmp_path / "c.txt"
    lengths = np.concatenate([rng.integers(5, 30, 96), rng.integers(100, 200, 32)])
    rng.shuffle(lengths)
    corpus.write_text("".join(" ".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) + "\n\n" for n in lengths))
    layout = TokenLayout.from_tokenizer(get_family("bert").build_tokenizer())
    kw = dict(max_length=128, global_batch_size=32, micro_batch_size=4, seed=1, bucket_batches=4, max_epochs=1)
    budget, multiple = 4 * 128, 8

    def padded(ns):
        if packed:
            return -(-(sum(ns) + 2 * len(ns)) // multiple) * multiple
        return len(ns) * (-(-(max(ns) + 2) // multiple) * multiple)

    for world in (1, 2):
        per_rank = []
        for rank in range(world):
            fixed = list(CorpusStream([str(corpus)], layout, rank=rank, world_size=world, **kw))
            cut = list(CorpusStream([str(corpus)], layout, rank=rank, world_size=world, micro_batch_tokens=budget,
                                    pad_multiple=multiple, packed=packed, **kw))
            assert len(fixed) == len(cut) == 4
            for a, b in zip(fixed, cut):
                ids = lambda step: sorted(s.index for mb in step.micro_batches for s in mb)  # noqa: E731
                assert ids(a) == ids(b)
                for mb in b.micro_batches:
                    ns = [len(s.residues) for s in mb]
                    assert len(mb) == 1 or padded(ns) <= budget
            per_rank.append([len(step.micro_batches) for step in cut])
        assert all(counts == per_rank[0] for counts in per_rank)  # as many on every rank, step by step
        fewer = [n for n in per_rank[0] if n < 32 // 4 // world]
        assert fewer, per_rank  # the short proteins' steps need fewer passes


def test_a_protein_alone_over_the_token_budget_goes_alone_and_no_micro_batch_is_empty(tmp_path):
    # micro-batch size 1 x max length 100 = 100 tokens; a protein cropped to 100 tokens pads to 104
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(" ".join("ACDEFGHIKL"[i % 10] * n) + "\n\n" for i, n in enumerate([150, 120, 99, 200] * 2)))
    kw = dict(max_length=100, global_batch_size=4, micro_batch_size=1, bucket_batches=1, max_epochs=1)
    fixed = list(_stream([str(corpus)], **kw))
    cut = list(_stream([str(corpus)], micro_batch_tokens=100, pad_multiple=8, **kw))
    assert len(fixed) == len(cut) == 2
    for a, b in zip(fixed, cut):
        assert _indices(a) == _indices(b)
        assert all(len(mb) == 1 for mb in b.micro_batches)  # each alone over the budget (104 tokens)


@pytest.mark.parametrize("seed", [0, 3])
def test_token_micro_batches_of_a_rank_with_fewer_are_split_until_every_rank_has_as_many(tmp_path, seed):
    """Proteins of very different lengths, one bucket a step: the budget cuts one rank's share
    into fewer micro-batches than another's (the seeds were chosen so), and its largest ones are
    halved until the counts agree; under torchrun a rank with fewer forward passes left the others
    waiting at a collective. The proteins stay those of fixed micro-batches, each pass within the
    budget or a protein alone."""
    from protrans_cli.models import get_family

    rng = np.random.default_rng(seed)
    corpus = tmp_path / "c.txt"
    lengths = rng.choice([3, 6, 60, 120], 128)
    corpus.write_text("".join(" ".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) + "\n\n" for n in lengths))
    layout = TokenLayout.from_tokenizer(get_family("bert").build_tokenizer())
    kw = dict(max_length=128, global_batch_size=16, micro_batch_size=4, seed=seed, bucket_batches=1, max_epochs=1)
    per_rank = []
    for rank in range(2):
        fixed = list(CorpusStream([str(corpus)], layout, rank=rank, world_size=2, **kw))
        cut = list(CorpusStream([str(corpus)], layout, rank=rank, world_size=2, micro_batch_tokens=512,
                                pad_multiple=8, **kw))
        assert len(fixed) == len(cut) == 8
        for a, b in zip(fixed, cut):
            assert sorted(s.index for mb in a.micro_batches for s in mb) == \
                sorted(s.index for mb in b.micro_batches for s in mb)
            for mb in b.micro_batches:
                ns = [len(s.residues) for s in mb]
                assert len(mb) == 1 or len(ns) * (-(-(max(ns) + 2) // 8) * 8) <= 512
        per_rank.append([len(step.micro_batches) for step in cut])
    assert per_rank[0] == per_rank[1], per_rank


@pytest.mark.parametrize("family,metric,weight", [("electra", "disc_loss", 50.0), ("albert", "sop_loss", 1.0)])
def test_a_step_without_a_masked_residue_keeps_the_second_loss_term(family, metric, weight):
    # its weight was predicted / aux = 0: the step's loss was 0 and nothing trained
    import contextlib
    from types import SimpleNamespace

    from protrans_cli.models import get_family
    from protrans_cli.training import dist
    from protrans_cli.training.loop import LossModule, train_step

    fam = get_family(family)
    tokenizer = fam.build_tokenizer()
    layout = TokenLayout.from_tokenizer(tokenizer, fam.prepare)
    config = TrainConfig(family=family, grad_clip=0.0, sop=family == "albert")
    objective = make_objective(config.objective or fam.objective, layout, config)
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0))
    unmasked = [s for s in (Sample(i, 0, layout.encode("MKTAYIK"), 5) for i in range(200))
                if objective.collate([s])["num_predicted"] == 0][:2]
    assert len(unmasked) == 2
    module = LossModule(model, objective)
    run = SimpleNamespace(config=config, info=dist.DistInfo(), layout=layout, loss_scale=None, wrapped=module,
                          strategy="none", autocast=contextlib.nullcontext, model=model, compile_mode="default")

    class Keep:
        def step(self):
            self.norm = sum(float(p.grad.norm()) for p in module.parameters() if p.grad is not None)

        def zero_grad(self, set_to_none=True):
            module.zero_grad(set_to_none=True)

    optimizer = Keep()
    stats = train_step(run, optimizer, [objective.collate(unmasked)])
    (total, count), (term, term_count) = stats["loss"], stats[metric]
    assert count > 0 and total / count == pytest.approx(weight * term / term_count, rel=1e-5)
    assert optimizer.norm > 0


def test_a_checkpoint_keeps_its_own_gpus_random_state_and_restores_on_fewer_gpus(monkeypatch):
    # every visible GPU's state was saved (8 on an 8-GPU node) and restored with
    # set_rng_state_all: on a machine with fewer GPUs, an IndexError
    from protrans_cli.training import checkpoint as ckpt

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: calls.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append("all"))
    gpu = torch.device("cuda", 0)
    state = ckpt.rng_state(gpu)
    assert "cuda" not in state and int(state["cuda_device"][0]) == 7
    ckpt.set_rng_state(state, gpu)
    older = {**ckpt.rng_state(torch.device("cpu")),
             "cuda": [torch.tensor([s], dtype=torch.uint8) for s in range(8)]}  # saved on an 8-GPU node
    ckpt.set_rng_state(older, gpu)
    ckpt.set_rng_state(older, torch.device("cuda", 5))  # a device the saving run had: its own state
    assert calls == [(7, gpu), (0, gpu), (5, torch.device("cuda", 5))]


def test_an_evaluation_no_rank_ran_is_no_eval_loss(monkeypatch):
    # a rank whose validation reading failed: no rank evaluated, yet the loss came out 0.0 (the
    # other ranks' predicted tokens over nothing) and was logged as the eval loss
    import types

    from protrans_cli.training import loop

    class Failing:
        def __init__(self, *args, **kwargs):
            pass

        def __iter__(self):
            raise InputError("changed since", path="val.txt")

    def all_reduce_sum(t):  # the other rank read 120 predicted tokens and evaluated nothing
        return t + torch.tensor([120.0, 0.0, 0.0], dtype=t.dtype) if t.numel() == 3 else t

    monkeypatch.setattr(loop, "CorpusStream", Failing)
    monkeypatch.setattr(loop, "count_proteins", lambda paths, limit=None, clusters=False: 100)
    monkeypatch.setattr(loop.dist, "all_reduce_sum", all_reduce_sum)
    info = types.SimpleNamespace(world_size=2, rank=0, device=torch.device("cpu"), initialised=True, is_main=True)
    config = types.SimpleNamespace(val_corpus=["v"], num_eval_batches=2, sample_clusters=False, seed=0, sdpa_kernels="auto",
                                   static_shapes=False)
    run = types.SimpleNamespace(config=config, info=info, layout=None, objective=types.SimpleNamespace(collate=None),
                                wrapped=torch.nn.Linear(1, 1))
    assert np.isnan(loop.evaluate(run, types.SimpleNamespace(micro_batch_size=2, max_length=32, global_batch_size=4)))


def test_evaluation_step_size_is_the_global_batch_or_what_whole_micro_batches_take():
    from protrans_cli.training.data import evaluation_step_size

    assert evaluation_step_size(100, 16, 4, 2) == 16 == evaluation_step_size(16, 16, 2, 1)  # layout-free
    assert evaluation_step_size(10, 16, 4, 2) == 8 and evaluation_step_size(7, 16, 4, 2) == 0


def test_a_final_model_that_cannot_be_written_is_one_line_naming_the_checkpoint(tmp_path):
    """A full disk at the final export: a safetensors traceback, where a checkpoint's failure was
    one line. Now one line too, saying where the steps are kept."""
    import types

    from protrans_cli.training import checkpoint as ckpt

    def full(model, tokenizer, directory):
        raise OSError(28, "No space left on device")

    family = types.SimpleNamespace(save_pretrained=full)
    (tmp_path / "run" / "checkpoints" / "step_00000004").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000004" / ckpt.STATE_FILE).write_bytes(b"")
    with pytest.raises(RuntimeFailure, match=r"run: cannot write the final model \(.*No space left on device\); the "
                                             r"run's steps are kept in .*step_00000004: call again with resume=True "
                                             r"once there is room"):
        ckpt.export_model(tmp_path / "run", family=family, model=None, tokenizer=None)


def test_a_link_to_a_missing_run_directory_is_said(tmp_path):
    from protrans_cli.training.checkpoint import run_lock

    (tmp_path / "run").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="is a link to .*nowhere, which does not exist"):
        with run_lock(tmp_path / "run"):
            pass


def test_a_train_refused_by_the_lock_leaves_the_run_directory_to_the_run_holding_it(tmp_path, monkeypatch):
    """Two trains started together on a new -o (a job array sharing it): the one refused by the
    lock removed the directory it had made, still empty, from under the one holding the lock."""
    import contextlib
    import os

    from protrans_cli.training import checkpoint as ckpt

    run, real_open, held, raced = tmp_path / "runs" / "run", os.open, contextlib.ExitStack(), []

    def the_other_run_locks_first(path, flags, *args, **kwargs):
        if os.fspath(path) == os.fspath(run) and not raced:
            raced.append(True)
            held.enter_context(ckpt.run_lock(run))  # between this run's mkdir and its lock
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(ckpt.os, "open", the_other_run_locks_first)
    with held:
        with pytest.raises(RuntimeFailure, match="is in use by another training run"):
            with ckpt.run_lock(run):
                pass
        assert run.is_dir()  # the holder's run directory, where it writes its checkpoints


def test_a_run_directory_under_a_file_names_the_file(tmp_path):
    """`-o results/run` where `results` is a file said only "results/run: Not a directory"."""
    import errno

    from protrans_cli.training.checkpoint import _run_dir_problem, run_lock

    (tmp_path / "results").write_text("")
    with pytest.raises(UsageError, match=r"results: is not a directory, so the run directory .*results/a/run cannot "
                                         r"go inside it \(choose another output_dir\)"):
        with run_lock(tmp_path / "results" / "a" / "run"):
            pass
    assert not (tmp_path / "results" / "a").exists()
    denied = _run_dir_problem(tmp_path / "run", PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(denied, UsageError)
    assert str(denied).endswith("run: cannot make the run directory (permission denied; choose another output_dir)")
    full = _run_dir_problem(tmp_path / "run", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, RuntimeFailure) and "the disk is full" in str(full)


def test_corpora_the_reader_would_misread_are_refused(tmp_path):
    """CR-only line ends joined every protein into one (train ran on it, exit 0); a FIFO or a
    process substitution was read once by the corpus check and then waited for a writer for
    ever; a BOM was an invalid residue."""
    import os

    from protrans_cli.training.data import iter_proteins

    cr = tmp_path / "cr.txt"
    cr.write_bytes(b"M K T A Y\r\rM V L\r")
    with pytest.raises(InputError, match=r"cr.txt:1: lines end in CR alone"):
        list(iter_proteins([cr]))
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfM K T A Y\n\nM V L\n")
    assert [t for _, _, t in iter_proteins([bom])] == ["MKTAY", "MVL"]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"M K T A Y\r\n\r\nM V L\r\n")
    assert [t for _, _, t in iter_proteins([crlf])] == ["MKTAY", "MVL"]
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    # (--val-corpus was "the corpus must be a regular file", naming neither the option nor why)
    for where, said in (({"corpus": [str(fifo)]}, "--corpus (corpus)"),
                        ({"corpus": [str(bom)], "val_corpus": [str(fifo)]}, "--val-corpus (val_corpus)")):
        with pytest.raises(UsageError, match=rf"^{re.escape(said)} \S*corpus.fifo is a pipe, which can be read once, "
                                             "and .*: give it as a file$"):
            TrainConfig(**where).validate()


def test_a_full_disk_at_a_metrics_line_names_the_file(tmp_path, monkeypatch):
    """A metrics line that found the disk full said "No space left on device", naming no file."""
    import builtins

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import metrics

    path = tmp_path / "metrics.jsonl"
    metrics.append_metrics(path, {"step": 1, "loss": 2.0})
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k:
                        real_open("/dev/full", "a") if str(file) == str(path) else real_open(file, mode, *a, **k))
    with pytest.raises(RuntimeFailure) as info:
        metrics.append_metrics(path, {"step": 2, "loss": 1.5})
    assert info.value.format() == f"{path}: cannot append step 2's line: No space left on device"
    monkeypatch.undo()
    assert metrics.read_metrics(path) == [{"step": 1, "loss": 2.0}]


@pytest.mark.parametrize("family, once", [("bert", True), ("t5", True), ("esm", False), ("electra", False)])
def test_a_checkpoint_keeps_a_second_copy_of_the_weights_only_where_the_hf_directory_lacks_some(tmp_path, family, once):
    # Checkpoints held every weight twice (model.safetensors and pretraining_model.safetensors):
    # 1.7 GB more per ProtBert-sized checkpoint, 12 GB per ProtT5-XL one. The second copy is
    # written only where the HF directory does not restore the pretraining model exactly: ESM's
    # save renames its LayerNorm weights (gamma/beta), ELECTRA's root holds the discriminator only.
    from safetensors.torch import load_model

    from protrans_cli.models import get_family
    from protrans_cli.training.checkpoint import HF_WEIGHTS, _holds_every_weight

    fam = get_family(family)
    tokenizer = fam.build_tokenizer()
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer))
    fam.save_pretrained(model, tokenizer, tmp_path)
    assert _holds_every_weight(tmp_path / HF_WEIGHTS, model) == once
    if once:
        torch.manual_seed(1)
        other = fam.pretraining_model(fam.build_config("tiny", tokenizer))
        load_model(other, str(tmp_path / HF_WEIGHTS), strict=True)  # what a resume does
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
        with torch.no_grad():  # weights that changed since the save: not these
            next(model.parameters())[0] += 1
        assert not _holds_every_weight(tmp_path / HF_WEIGHTS, model)


def test_a_run_directory_removed_during_the_run_is_said(tmp_path):
    """`rm -rf RUN` mid-run: the next checkpoint made RUN/checkpoints again with its parents and the
    run exited 0 without its config; a moved RUN ended on "metrics.jsonl: No such file or directory"."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training.checkpoint import checkpoint_dir, save_checkpoint
    from protrans_cli.training.metrics import append_metrics

    run = tmp_path / "gone"
    with pytest.raises(RuntimeFailure, match=r"gone: the run directory was removed or moved during the run"):
        save_checkpoint(checkpoint_dir(run, 200), family=None, model=None, tokenizer=None, training_state={},
                        config=None)
    with pytest.raises(RuntimeFailure, match=r"gone: the run directory was removed or moved during the run"):
        append_metrics(run / "metrics.jsonl", {"step": 3})
    assert not run.exists()


def test_a_checkpoint_folder_the_file_system_will_not_rename_aside_is_named_once(tmp_path, monkeypatch):
    """A step's folder there already on a file system that renames no folder (gcsfuse): replace_directory's
    error, which names the step's folder, was quoted whole, "RUN/.../step_00000004: cannot write the
    checkpoint (RUN/.../step_00000004: cannot replace this folder: ...)". A run meets such a folder only
    where it lacks its training_state.pt (--resume-from step_2 past a step_4 whose state was deleted: a
    complete later checkpoint is refused, _refuse_later_checkpoints), so the last checkpoint is step_2."""
    import errno
    import os
    import types

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import files
    from protrans_cli.training.checkpoint import checkpoint_dir, save_checkpoint

    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint_dir(run, step).mkdir(parents=True)
        (checkpoint_dir(run, step) / "model.safetensors").write_bytes(b"old")
    (checkpoint_dir(run, 2) / "training_state.pt").write_bytes(b"old")
    real_replace = os.replace

    def no_folder_renames(a, b):
        if os.path.isdir(a):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(a), None, str(b))
        real_replace(a, b)

    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    monkeypatch.setattr(files.os, "replace", no_folder_renames)
    family = types.SimpleNamespace(save_pretrained=lambda model, tokenizer, folder: None)
    config = types.SimpleNamespace(save=lambda path, resolved=None: path.write_text("{}"))
    with pytest.raises(RuntimeFailure) as caught:
        save_checkpoint(checkpoint_dir(run, 4), family=family, model=torch.nn.Linear(2, 2), tokenizer=None,
                        training_state={}, config=config)
    said = caught.value.format()
    assert said.count(str(checkpoint_dir(run, 4))) == 1, said
    assert said.startswith(f"{checkpoint_dir(run, 4)}: cannot write the checkpoint (cannot replace this folder: "
                           f"the file system refused to rename it aside ({os.strerror(errno.EXDEV)}; "), said
    assert said.endswith("); the last one is step_00000002"), said
    assert (checkpoint_dir(run, 4) / "model.safetensors").read_bytes() == b"old"


def test_a_checkpoint_cut_by_the_file_size_limit_says_so(tmp_path, monkeypatch):
    """torch's writer says "[enforce fail at inline_container.cc:672] . unexpected pos ..." when
    ulimit -f stops it: the one line named no cause."""
    import resource

    from protrans_cli.training.checkpoint import _no_room

    (tmp_path / "training_state.pt").write_bytes(b"x" * 300_000)
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (300_000, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_FSIZE else real(which))
    assert _no_room(tmp_path) == "File too large: the file-size limit (ulimit -f) is 0.3 MiB"
    monkeypatch.setattr(resource, "getrlimit", real)
    assert _no_room(tmp_path) is None  # (a disk with room)


def test_a_step_with_nothing_to_predict_leaves_the_weights_and_the_optimizer_alone():
    # its gradient is zero, but AdamW's step would still decay every weight and move it by the
    # momentum of the steps before
    import contextlib
    from types import SimpleNamespace

    from protrans_cli.models import get_family
    from protrans_cli.training import dist
    from protrans_cli.training.loop import LossModule, train_step

    fam = get_family("bert")
    tokenizer = fam.build_tokenizer()
    layout = TokenLayout.from_tokenizer(tokenizer, fam.prepare)
    config = TrainConfig(family="bert", grad_clip=0.0)
    objective = make_objective(fam.objective, layout, config)
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0))
    samples = [Sample(i, 0, layout.encode("MKTAYIK"), 5) for i in range(200)]
    masked = [s for s in samples if objective.collate([s])["num_predicted"] > 0][:2]
    unmasked = [s for s in samples if objective.collate([s])["num_predicted"] == 0][:2]
    assert len(masked) == 2 and len(unmasked) == 2
    module = LossModule(model, objective)
    run = SimpleNamespace(config=config, info=dist.DistInfo(), layout=layout, loss_scale=None, wrapped=module,
                          strategy="none", autocast=contextlib.nullcontext, model=model, compile_mode="default")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.1)
    first = train_step(run, optimizer, [objective.collate(masked)])  # momentum, and a step count
    assert first["loss"][1] > 0 and "grad_norm" in first
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = [s["step"].clone() for s in optimizer.state.values()]
    from protrans_cli.training.optim import LossScale

    run.loss_scale = LossScale(scale=1.0, interval=1)  # (fp16's: nothing to say of the scale either)
    stats = train_step(run, optimizer, [objective.collate(unmasked)])
    assert stats["loss"] == (0.0, 0.0) and "grad_norm" not in stats
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s["step"] for s in optimizer.state.values()] == steps
    assert (run.loss_scale.scale, run.loss_scale.good_steps) == (1.0, 0)
    run.loss_scale = None
    again = train_step(run, optimizer, [objective.collate(masked)])  # and the next step trains
    assert again["loss"][1] > 0 and not all(torch.equal(before[k], v) for k, v in model.state_dict().items())



@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_a_step_clips_the_global_gradient_norm_to_grad_clip_and_logs_the_norm_before_it(grad_clip):
    """--grad-clip: the update is the gradient scaled to that global norm where it is larger (0:
    no clipping); grad_norm in metrics.jsonl is the norm before clipping. Measured with plain SGD
    (lr 1): the weights move by exactly the gradient applied."""
    import contextlib
    from types import SimpleNamespace

    from protrans_cli.models import get_family
    from protrans_cli.training import dist
    from protrans_cli.training.loop import LossModule, train_step

    fam = get_family("bert")
    tokenizer = fam.build_tokenizer()
    layout = TokenLayout.from_tokenizer(tokenizer, fam.prepare)
    config = TrainConfig(family="bert", grad_clip=grad_clip)
    objective = make_objective(fam.objective, layout, config)
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0))
    samples = [Sample(i, 0, layout.encode("MKTAYIAKQRQISFVKSHFSRQ"), 5) for i in range(4)]
    module = LossModule(model, objective)
    run = SimpleNamespace(config=config, info=dist.DistInfo(), layout=layout, loss_scale=None, wrapped=module,
                          strategy="none", autocast=contextlib.nullcontext, model=model, compile_mode="default")
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    before = [p.detach().clone() for p in module.parameters()]
    stats = train_step(run, optimizer, [objective.collate(samples)])
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(module.parameters(), before))).item()
    assert stats["grad_norm"] > 0.1  # (above the clip tested: it acts)
    assert moved == pytest.approx(grad_clip if grad_clip else stats["grad_norm"], rel=1e-3)

def _members_corpus(tmp_path, kind, member_bytes=4096):
    """LEARNABLE's text as gzip members or zstd frames of member_bytes of text each, cut
    anywhere (not at line ends), as prep (a member per block) and bgzip write them."""
    import gzip

    text = (TRAIN / "learnable.txt").read_bytes() * 4
    parts = [text[i:i + member_bytes] for i in range(0, len(text), member_bytes)]
    if kind == "gzip":
        data = b"".join(gzip.compress(p, compresslevel=1) for p in parts)
    else:
        import zstandard

        data = b"".join(zstandard.ZstdCompressor(level=1).compress(p) for p in parts)
    path = tmp_path / f"c.txt.{'gz' if kind == 'gzip' else 'zst'}"
    path.write_bytes(data)
    return path, text


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_corpus_of_many_members_resumes_from_the_member_of_its_position(tmp_path, kind):
    # A resume decompressed a single large .gz from its beginning (UniRef50: about 100 s in every
    # process); the cursor now names the member to start from. Proof that it does: the file's
    # first member spoilt after the checkpoint, the resume still reads on from the cursor.
    from protrans_cli.training.data import Cursor, iter_proteins

    path, text = _members_corpus(tmp_path, kind)
    every = [line.replace(b" ", b"").decode() for line in text.split(b"\n") if line.strip()]
    cursor, snaps = Cursor(), {}
    for k, (_, _, residues) in enumerate(iter_proteins([str(path)], cursor=cursor)):
        assert residues == every[k]
        snaps[k] = cursor.copy()
    assert k + 1 == len(every)
    late = snaps[len(every) - 20]
    assert 0 < late.member_text < late.offset and late.member > 0
    assert late.offset - late.member_text <= 4096 + 2 * max(map(len, text.split(b"\n")))
    for k in (0, 1, len(every) // 3, len(every) - 20, len(every) - 1):
        assert [r for _, _, r in iter_proteins([str(path)], snaps[k])] == every[k + 1:]
    data = bytearray(path.read_bytes())
    data[4:64] = bytes(60)
    path.write_bytes(bytes(data))
    assert [r for _, _, r in iter_proteins([str(path)], late)] == every[len(every) - 19:]
    with pytest.raises(InputError, match="corrupt or truncated compressed data"):
        list(iter_proteins([str(path)]))


def test_a_member_that_is_not_one_falls_back_to_reading_the_file_to_the_positions_line(tmp_path):
    # the file replaced by one compressed otherwise (the fingerprint check aside), and a
    # checkpoint of an earlier version (no member in its cursor)
    import dataclasses
    import gzip

    from protrans_cli.training.data import Cursor, iter_proteins

    path, text = _members_corpus(tmp_path, "gzip")
    every = [line.replace(b" ", b"").decode() for line in text.split(b"\n") if line.strip()]
    cursor = Cursor()
    for k, _ in zip(range(300), iter_proteins([str(path)], cursor=cursor)):
        pass
    assert cursor.member > 0
    path.write_bytes(gzip.compress(text))  # one member: the cursor's names no member start
    assert [r for _, _, r in iter_proteins([str(path)], cursor.copy())] == every[300:]
    old = {k: v for k, v in dataclasses.asdict(cursor).items() if k not in ("member", "member_text")}
    state = StreamState.from_dict({"epoch": 0, "buffer_start": 300, "batches_done": 0, "at": old})
    assert state.at.member == 0 and [r for _, _, r in iter_proteins([str(path)], state.at)] == every[300:]


def test_a_position_past_4_gib_resumes_there_and_survives_the_checkpoint(tmp_path):
    # UniRef50's corpus is ~35 GB: a checkpoint's cursor names a byte past 2**32 of a plain
    # file, or a member past 2**32 of a .gz whose text is past 2**32 too. (The holes of these
    # sparse files read as NUL bytes, which a resume never reads: it seeks past them.)
    import gzip

    from protrans_cli.training import checkpoint as ckpt
    from protrans_cli.training.data import Cursor, corpus_fingerprint, iter_proteins

    at = 5 * 2**30
    plain = sparse_file(tmp_path / "c.txt", at - 1, b"\nA C D\n\nE F\n", head=b"M K\n\n")
    cursor = Cursor()
    start = Cursor(file=0, offset=at, line=3, proteins=1)
    assert list(iter_proteins([plain], start, cursor)) == [(plain, 4, "ACD"), (plain, 6, "EF")]
    assert (cursor.offset, cursor.line, cursor.proteins) == (at + 11, 6, 3)
    assert corpus_fingerprint([plain])[0]["size"] == at + 11

    # a member at file byte `at` whose text begins at text byte 2 * at (members before it: not read)
    packed = sparse_file(tmp_path / "c.txt.gz", at, gzip.compress(b"A C D\n\nE F\n\nG\n"),
                            head=gzip.compress(b"M K\n\n"))
    start = Cursor(file=0, offset=2 * at + 6, line=40, proteins=7, member=at, member_text=2 * at)
    got = list(iter_proteins([packed], start, cursor))
    assert got == [(packed, 42, "EF"), (packed, 44, "G")]
    assert (cursor.offset, cursor.line, cursor.proteins, cursor.member, cursor.member_text) == \
        (2 * at + 14, 44, 9, at, 2 * at)

    # through the checkpoint's file (torch.save, read back with weights_only) and its checks
    state = StreamState(epoch=1, buffer_start=17 * 10**9, batches_done=3, at=cursor.copy())
    torch.save({"data": state.to_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)["data"]
    assert ckpt._data_state_problem(saved) is None
    assert StreamState.from_dict(saved) == state
    assert [r for _, _, r in iter_proteins([packed], StreamState.from_dict(saved).at)] == []


def test_member_reader_reads_what_gzip_reads(tmp_path):
    # empty members, zero padding after the last or between two (gzip takes both), a cut
    # member, data after the last that is not a member
    import gzip

    from protrans_cli.io.files import open_members

    parts = [b"M K\n", b"", b"A C D\nE F", b"\nG H\n"]
    data = b"".join(gzip.compress(p) for p in parts)
    for tail, expected in ((b"", None), (bytes(100), None), (bytes(10) + gzip.compress(b"K\n"), None),
                           (bytes(10) + b"x", r"Not a gzipped file: b'x'\.\.\. after the last member"),
                           (b"garbage", "Not a gzipped file"),
                           (gzip.compress(b"K\n")[:-3], "corrupt or truncated")):
        (tmp_path / "f.gz").write_bytes(data + tail)
        with open_members(tmp_path / "f.gz") as (stream, members):
            if expected is None:
                assert stream.read() == gzip.decompress(data + tail)
                assert [t for _, t in members.starts][:4] == [0, 4, 4, 13]
                # the member begun strictly before a text byte: at byte 13, the one of byte 4
                # (the third member; the second is empty), so that byte 12 can be checked
                starts = list(members.starts)
                assert members.member_before(0) is None
                assert members.member_before(13) == starts[2] and members.member_before(14) == starts[3]
            else:
                with pytest.raises(InputError, match=expected):
                    stream.read()


def test_a_checkpoint_cursor_with_its_member_is_not_taken_for_a_damaged_one():
    # The cursor's member and member_text (a resume decompressing from its gzip member) were
    # "unknown field 'member'" to the checkpoint's check: every --resume after the first save
    # was refused as a damaged checkpoint, whatever the corpus.
    from protrans_cli.training.checkpoint import _data_state_problem
    from protrans_cli.training.data import Cursor

    state = StreamState(epoch=0, buffer_start=5, at=Cursor(0, 4096, 10, 5, member=700, member_text=2048)).to_dict()
    assert _data_state_problem(state) is None
    assert StreamState.from_dict(state).at == Cursor(0, 4096, 10, 5, 700, 2048)
    assert _data_state_problem(StreamState(at=Cursor()).to_dict()) is None  # a plain corpus's (0, 0)
    bad = {**state, "at": {**state["at"], "member_text": -1}}
    assert "at.member_text is -1" in _data_state_problem(bad)


def test_ranks_compare_their_corpus_files_by_content_not_only_by_size(tmp_path):
    """Node-local copies of one size but other content (another prep of the same proteins, a
    corpus rewritten on one node) passed the ranks' comparison: each node trained on its own
    batches. Copies in other places still compare equal."""
    from protrans_cli.training.loop import _rank_settings

    node0, node1, elsewhere = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "copy" / "a.txt"
    node0.write_text("M K V L\n\nA G\n")
    node1.write_text("M K V I\n\nA G\n")  # the same size
    elsewhere.parent.mkdir()
    elsewhere.write_text(node0.read_text())

    def settings(path):
        return _rank_settings(TrainConfig(corpus=[str(path)]), None)

    assert settings(node0)["corpus (file sizes)"] == settings(node1)["corpus (file sizes)"]
    assert settings(node0) != settings(node1)
    assert settings(node0) == settings(elsewhere)
    assert settings(tmp_path / "missing.txt")["corpus (file sizes)"] == [None]  # its own error says why


# --- what a prediction may see, read from the models' outputs ----------------------------

def _tiny_model(name, **overrides):
    fam = _family(name)
    tok = fam.build_tokenizer()
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tok, **overrides)).eval()
    return model, TokenLayout.from_tokenizer(tok, fam.prepare)


def _other_residue(layout, token):
    ids = layout.standard_ids.tolist()
    return ids[(ids.index(token) + 7) % len(ids)] if token in ids else ids[0]


def test_xlnet_targets_see_earlier_targets_and_context_never_themselves_or_later_targets():
    # perm_mask as transformers' XLNet reads it: a target's prediction does not move when its own
    # token or a later target's changes, and does move with an earlier target or a neighbour.
    model, layout = _tiny_model("xlnet")
    obj = make_objective("plm", layout, _cfg())
    batch = obj.collate(_random_samples(layout, n=2, length=40))
    kw = {k: batch[k] for k in ("attention_mask", "perm_mask", "target_mapping")}
    with torch.no_grad():
        base = model(input_ids=batch["input_ids"], **kw).logits
        for b in range(2):
            positions = batch["target_mapping"][b][batch["labels"][b] != IGNORE].argmax(-1).tolist()
            assert len(positions) >= 3
            for k, target in enumerate(positions):
                changed = []
                for other in positions + [p for p in (target - 1, target + 1) if p not in positions]:
                    ids = batch["input_ids"].clone()
                    ids[b, other] = _other_residue(layout, int(ids[b, other]))
                    out = model(input_ids=ids, **kw).logits
                    changed.append(bool((out[b, k] - base[b, k]).abs().max() > 1e-6))
                earlier = len(positions[:k])
                assert not any(changed[k:len(positions)])                  # itself and later targets
                assert all(changed[:earlier] + changed[len(positions):])   # earlier targets, neighbours


@pytest.mark.parametrize("objective", ["t5", "t5_span"])
def test_t5_decoder_reads_the_labels_shifted_right_as_transformers_does(objective):
    # The objective builds the decoder inputs itself; transformers' own `labels=` path (shift
    # right after the decoder start token) gives the same loss, and no position's prediction
    # moves when its own label or a later one changes.
    model, layout = _tiny_model("t5", dropout_rate=0.0)
    obj = make_objective(objective, layout, _cfg())
    batch = obj.collate(_random_samples(layout, n=4, length=30))
    logits = []
    hook = model.register_forward_hook(lambda m, a, out: logits.append(out.logits))
    with torch.no_grad():
        total, n, _ = obj.loss(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        t = 5
        labels = batch["labels"].clone()
        labels[:, t] = torch.where(labels[:, t] == IGNORE, labels[:, t], (labels[:, t] + 1) % 25 + 3)
        obj.loss(model, dict(batch, labels=labels))
    hook.remove()
    assert torch.allclose(total / n, reference, rtol=1e-5)
    assert torch.equal(logits[2][:, :t + 1], logits[0][:, :t + 1])
    assert not torch.equal(logits[2][:, t + 1:], logits[0][:, t + 1:])


def test_clm_predictions_never_see_later_tokens_across_segments():
    model, layout = _tiny_model("transfo_xl", dropout=0.0)
    obj = make_objective("clm", layout, _cfg(segment_length=8))
    batch = obj.collate(_random_samples(layout, n=3, length=30))
    logits = []
    hook = model.register_forward_hook(lambda m, a, out: logits.append(out.logits))
    with torch.no_grad():
        obj.loss(model, batch)
        for t in (3, 7, 8, 20):  # inside a segment, at its end, at the next one's start
            ids = batch["input_ids"].clone()
            ids[:, t + 1] = torch.as_tensor([_other_residue(layout, int(x)) for x in ids[:, t + 1]])
            obj.loss(model, dict(batch, input_ids=ids))
    hook.remove()
    per_run = len(logits) // 5
    runs = [torch.cat(logits[i * per_run:(i + 1) * per_run], 1) for i in range(5)]
    for t, run in zip((3, 7, 8, 20), runs[1:]):
        assert torch.equal(run[:, :t + 1], runs[0][:, :t + 1])
        assert not torch.equal(run[:, t + 1:], runs[0][:, t + 1:])


@pytest.mark.parametrize("seed", [2**64, 10**23])
def test_a_seed_beyond_64_bits_is_a_usage_error(tmp_path, run_cli, seed):
    """torch.manual_seed takes 64 bits: `--seed 18446744073709551616` (or a config file's) was a
    traceback, "Overflow when unpacking long long", once the run was being built."""
    r = run_cli("train", "--corpus", "c.txt", "--seed", seed, "-o", tmp_path / "r")
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: --seed (seed) must be at most 18446744073709551615 "
                                             f"(2**64 - 1: torch's seeds are unsigned 64-bit), got {seed}\n"), r.stderr


def test_a_seed_from_2_63_to_2_64_is_taken_and_each_rank_stays_in_64_bits(tmp_path):
    """torch.manual_seed takes an unsigned 64-bit seed: 2**63 and above trained, and a limit of
    2**63 - 1 refused them (and the --resume of a run started with one). Rank r seeds seed + r."""
    import torch

    corpus = tmp_path / "c.txt"
    corpus.write_text("MKT\n\n")
    for seed in (2**63, 2**64 - 1):
        TrainConfig(corpus=[str(corpus)], seed=seed).validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # (what build_run does on rank 0)
    TrainConfig(corpus=[str(corpus)], seed=2**64 - 2).validate(world_size=2)
    with pytest.raises(UsageError, match=r"at most 18446744073709551614 \(2\*\*64 - 2 with 2 processes"):
        TrainConfig(corpus=[str(corpus)], seed=2**64 - 1).validate(world_size=2)


@pytest.mark.parametrize("settings,message", [
    (dict(phases=["32:2"]), "TrainConfig.phases must be a list of Phase (Phase(512, 1000) or "
                            "Phase.parse('512:1000')), got str '32:2'"),
    (dict(phases="32:2"), "TrainConfig.phases must be a list of Phase, got '32:2'"),
    (dict(phases=[(32, 2)]), "TrainConfig.phases must be a list of Phase (Phase(512, 1000) or "
                             "Phase.parse('512:1000')), got tuple (32, 2)"),
    (dict(phases=[Phase("32", 2)]), "Phase.max_length must be an int, got '32'"),
    (dict(model_overrides=[("hidden_dropout_prob", 0.0)]),
     "TrainConfig.model_overrides must be a dict of model config fields, got [('hidden_dropout_prob', 0.0)]"),
    (dict(corpus=3), "TrainConfig.corpus must be a path or a list of paths, got 3"),
    (dict(corpus=[3]), "TrainConfig.corpus must be a path or a list of paths, got [3]"),
])
def test_train_config_of_the_wrong_structure_from_python_is_a_usage_error(tmp_path, settings, message):
    """train(TrainConfig(phases=["512:1000"])) (the --phase syntax, which a config file takes) was an
    AttributeError deep inside; a list of pairs as model_overrides or a number as the corpus a
    TypeError: the README promises a UsageError naming the field, before any work."""
    from protrans_cli.training.loop import train

    settings = {"corpus": ["c.txt"], **settings}
    with pytest.raises(UsageError) as err:
        train(TrainConfig(output_dir=str(tmp_path / "r"), **settings))
    assert err.value.message == message
    assert not (tmp_path / "r").exists()


def test_a_model_override_that_is_not_a_json_value_is_a_usage_error(tmp_path, run_cli):
    """A TOML date in [model_overrides] (for a field the model's config takes as it is) was a
    TypeError traceback, "Object of type date is not JSON serializable", once the model was built
    and train_config.json written."""
    config = tmp_path / "c.toml"
    config.write_text('[model_overrides]\narchitectures = ["x", 1979-05-27]\n')
    r = run_cli("train", "--config", config, "--corpus", "c.txt", "-o", tmp_path / "r")
    assert r.exit_code == 2 and r.stderr.startswith(
        f"protrans: error: {config}: --set / model_overrides (architectures=['x', datetime.date(1979, 5, 27)]): "
        "not a JSON value"), r.stderr
    assert not (tmp_path / "r").exists()


def test_a_corpus_file_named_twice_or_also_the_val_corpus_is_warned(tmp_path):
    # `--corpus 'corpus.*.txt'` matched prep's `corpus.valid.txt` (the eval loss measured on
    # training proteins), and a pattern with a name it matches trained that shard twice an
    # epoch: both without a word.
    from protrans_cli.training.data import corpus_overlaps

    for name in ("corpus.00000.txt", "corpus.00001.txt", "corpus.valid.txt"):
        (tmp_path / name).write_text("M K\n\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "corpus.00001.txt")
    shards = [str(tmp_path / n) for n in ("corpus.00000.txt", "corpus.00001.txt")]
    assert corpus_overlaps(shards, [str(tmp_path / "corpus.valid.txt")]) == []
    (twice,) = corpus_overlaps(shards + [str(tmp_path / "link.txt")])
    assert "corpus.00001.txt is named 2 times" in twice
    (val,) = corpus_overlaps(shards + [str(tmp_path / "corpus.valid.txt")], [str(tmp_path / "corpus.valid.txt")])
    assert val.startswith("validation corpus file") and "also a training corpus file" in val
    assert corpus_overlaps(shards + [str(tmp_path / "missing.txt")]) == []
    # a shard beside its compressed copy (`--corpus 'corpus.*'`): most likely one corpus, twice
    (tmp_path / "corpus.00000.txt.gz").write_bytes(b"")
    (copy,) = corpus_overlaps(shards + [str(tmp_path / "corpus.00000.txt.gz")])
    assert "corpus.00000.txt and " in copy and "corpus.00000.txt.gz look like one corpus" in copy
    assert corpus_overlaps([str(tmp_path / "corpus.00000.txt.gz"), shards[1]]) == []
    # every extension prep writes (.zstd too) in any case, and two compressed copies said so
    for name in ("corpus.00000.txt.zstd", "corpus.00000.txt.GZ"):
        (tmp_path / name).write_bytes(b"")
        (copy,) = corpus_overlaps([shards[0], str(tmp_path / name)])
        assert f"corpus.00000.txt and {tmp_path / name} look like one corpus, compressed and not" in copy
    (copy,) = corpus_overlaps([str(tmp_path / "corpus.00000.txt.gz"), str(tmp_path / "corpus.00000.txt.zstd")])
    assert "look like one corpus, compressed two ways" in copy


def test_an_empty_run_directory_is_a_usage_error(tmp_path, run_cli, monkeypatch):
    """`-o ""` (an unset shell variable) is Path("") == ".": train wrote its checkpoints/ and model
    files into the working directory."""
    monkeypatch.chdir(tmp_path)
    res = run_cli("train", "--corpus", LEARNABLE, "-o", "", "--num-steps", 2, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 2 and "--output-dir (output_dir) is empty" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"corpus": LEARNABLE, "output_dir": ""}))
    res = run_cli("train", "--config", config)
    assert res.exit_code == 2 and f"{config}: --output-dir (output_dir) is empty" in res.stderr, res.stderr


def test_an_empty_corpus_path_is_a_usage_error_naming_the_setting(tmp_path, run_cli):
    """`--corpus "$CORPUS"` with the variable unset said "'': no such file", naming nothing."""
    base = ("-o", tmp_path / "run", "--num-steps", 2, "--max-length", 32, "--global-batch-size", 4,
            "--micro-batch-size", 4, "-j", 1)
    res = run_cli("train", "--corpus", "", *base)
    assert res.exit_code == 2 and "--corpus (corpus) names an empty path" in res.stderr, res.stderr
    res = run_cli("train", "--corpus", LEARNABLE, "--val-corpus", " ", *base)
    assert res.exit_code == 2 and "--val-corpus (val_corpus) names an empty path" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_the_summary_counts_one_step_in_the_singular():
    """`train: done, 1 steps; ... (1 steps in 1 s, ...)` after a one-step run."""
    from protrans_cli.console import counted

    assert (counted(1, "step"), counted(0, "step"), counted(20, "step")) == ("1 step", "0 steps", "20 steps")
    # one style for every count a summary writes: embed's already separated thousands, train's did not
    assert counted(150000, "step") == "150,000 steps"


def test_the_summary_says_a_runs_wall_time_in_seconds_minutes_and_hours():
    """The summary's wall time (`6 steps in 1 s`): the minutes of a run of hours are those past
    its last whole hour."""
    from protrans_cli.training.loop import _duration

    assert [_duration(s) for s in (0.4, 42, 59.6, 185, 3599, 3600, 2 * 3600 + 7 * 60 + 59, 30 * 3600 + 60)] == [
        "0 s", "42 s", "1 min 0 s", "3 min 5 s", "59 min 59 s", "1 h 0 min", "2 h 7 min", "30 h 1 min"]


def test_a_restarted_worker_group_on_one_node_joins_under_keys_of_its_own(monkeypatch):
    # torchrun --max-restarts: the restarted ranks share the launcher's store, which still holds
    # the previous attempt's addresses under torch's keys (gloo: "Connection refused")
    import datetime

    from torch.distributed import TCPStore

    from protrans_cli.training import dist

    monkeypatch.setattr(dist, "_groups_started", 0)  # (a group another test started in this process)

    server = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=10))
    env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2", "GROUP_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    joined = dist._restart_store(1, 2, 10)
    assert (joined["rank"], joined["world_size"]) == (1, 2)
    joined["store"].set("default_pg/0//cpu/rank_1", "this attempt's address")
    assert server.get("protrans/restart_2/default_pg/0//cpu/rank_1") == b"this attempt's address"
    assert dist._restart_failure(1, RuntimeError("x")) is not None
    # the first attempt, a store of the ranks' own, or several nodes (restart counts differ there): torch's keys
    for key, value in (("TORCHELASTIC_RESTART_COUNT", "0"), ("TORCHELASTIC_USE_AGENT_STORE", "False"),
                       ("GROUP_WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
        assert dist._restart_store(1, 2, 10) == {}
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in str(dist._restart_failure(1, RuntimeError("refused\nmore")))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert dist._restart_failure(1, RuntimeError("refused")) is None


def test_a_second_group_in_the_same_processes_joins_under_keys_of_its_own(monkeypatch):
    # A script under torchrun that calls train twice: the second train's group read the first
    # group's addresses from torchrun's store (gloo: "Connection reset by peer", or a hang)
    import datetime

    from torch.distributed import TCPStore

    from protrans_cli.training import dist

    monkeypatch.setattr(dist, "_groups_started", 0)  # (a group another test started in this process)

    server = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=10))
    for key, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0",
                       "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}.items():
        monkeypatch.setenv(key, value)
    assert dist._restart_store(1, 2, 10) == {}  # the first group: torch's keys
    monkeypatch.setattr(dist, "_groups_started", 1)
    joined = dist._restart_store(1, 2, 10)  # (on several nodes too: every rank counts its groups alike)
    joined["store"].set("default_pg/0//cpu/rank_1", "the second group's address")
    assert server.get("protrans/restart_0/group_1/default_pg/0//cpu/rank_1") == b"the second group's address"


def test_a_metrics_line_pools_the_intervals_tokens_and_averages_grad_norm_over_the_steps_applied():
    """metrics.jsonl as docs/train.md describes it: `loss` is the interval's summed loss over its
    predicted tokens (not a mean of the steps' losses), `grad_norm` the mean over the steps applied
    (a step with nothing to predict has none), `tokens` their sum; a checkpoint's interval state,
    loaded, reduces to the same line."""
    from protrans_cli.training.metrics import Accumulator

    steps = [{"loss": (6.0, 2.0), "accuracy": (1.0, 2.0), "tokens": 10, "grad_norm": 3.0},
             {"loss": (0.0, 0.0), "tokens": 4},  # nothing to predict: no step applied
             {"loss": (4.0, 8.0), "accuracy": (6.0, 8.0), "tokens": 30, "grad_norm": 1.0}]
    log, resumed = Accumulator(), Accumulator()
    for stats in steps[:2]:
        log.add(stats)
    resumed.load(copy.deepcopy(log.state()))
    for acc in (log, resumed):
        acc.add(steps[2])
    for acc in (log, resumed):
        line = acc.reduce()
        assert line["loss"] == pytest.approx(10.0 / 10.0) and line["accuracy"] == pytest.approx(7.0 / 10.0)
        assert line["grad_norm"] == pytest.approx((3.0 + 1.0) / 2) and line["tokens"] == 44


def test_strategy_auto_shards_a_model_of_fsdp_min_params_or_more():
    """docs/train.md: `--strategy auto` is DDP below fsdp_min_params, FSDP2 from there on; one
    process uses none, whatever was asked."""
    from protrans_cli.training.dist import choose_strategy

    least = 1_000_000_000
    assert [choose_strategy("auto", n, 2, least) for n in (least - 1, least, least + 1)] == ["ddp", "fsdp", "fsdp"]
    assert [choose_strategy(s, least, 1, least) for s in ("auto", "ddp", "fsdp")] == ["none"] * 3
    assert [choose_strategy(s, 10, 4, least) for s in ("ddp", "fsdp")] == ["ddp", "fsdp"]


def test_a_collective_failing_because_another_rank_stopped_is_one_line_naming_this_rank(monkeypatch):
    """gloo's and NCCL's words for a peer that is gone (gloo writes "Connection closed by peer"
    with a capital) become one line under torchrun; any other error, or one process, as it is."""
    from protrans_cli.errors import PeerStopped
    from protrans_cli.training import dist

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                        "[127.0.0.1]:29500")
    assert dist.peer_gone(gloo) and dist.peer_gone(RuntimeError("NCCL communicator was aborted on rank 1"))
    assert not dist.peer_gone(RuntimeError("CUDA out of memory")) and not dist.peer_gone(ValueError("broken pipe"))
    with pytest.raises(RuntimeError) as alone, dist.peers_stopping("this one stopped too"):
        raise gloo
    assert alone.value is gloo  # (one process: no peers to speak of)
    monkeypatch.setattr(dist, "_info", dist.DistInfo(rank=1, world_size=2, initialised=True))
    with pytest.raises(PeerStopped) as stopped, dist.peers_stopping("this one stopped too"):  # (torchrun: not the cause)
        raise gloo
    assert stopped.value.message == ("rank 1: another process of this torchrun run stopped (its error is above, or "
                                     "in its node's log); this one stopped too")
    other = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError) as kept, dist.peers_stopping("this one stopped too"):
        raise other
    assert kept.value is other


def test_the_defaults_train_help_states_are_train_configs():
    """Each flag of `train` defaults to None so that a config file's value stands where the flag
    is left out: its help's `[default: ...]` is written by hand, and is what TrainConfig (and,
    for --family and --preset, the run built from it) takes."""
    from protrans_cli.cli.train import command
    from protrans_cli.training.config import DEFAULT_FAMILY, DEFAULT_PRESET

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    fields.update(family=DEFAULT_FAMILY, preset=DEFAULT_PRESET)
    literals = {"off": False, "on": True}
    checked = set()
    for param in command.params:
        stated = re.search(r"\[default: ([^;\]]+)[;\]]", param.help or "")
        if param.name not in fields or stated is None or " " in stated.group(1):
            continue  # (the family's objective, a tenth of the steps, ...: said in words)
        text = stated.group(1)
        value = literals.get(text, text)
        default = fields[param.name]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            value = type(default)(text)
        assert value == default, (param.name, text, default)
        checked.add(param.name)
    assert {"family", "preset", "lr", "sop", "dist_timeout", "output_dir", "pad_multiple"} <= checked, checked
    assert len(checked) >= 25, checked


def test_a_family_flag_over_a_config_file_naming_an_unknown_family_keeps_the_files_objective():
    """--family over a config file whose own family is not one protrans knows (a typo, or a family
    of a newer version): the flag replaces it, so it is never an error of its own, and the file's
    objective, which cannot be told to have been that family's default, stays as the file gives it
    (check_values and the run then judge it against the flag's family)."""
    template = TrainConfig(corpus=["c.txt"], family="bertt", objective="mlm")
    over = template.override(family="t5")
    assert (over.family, over.objective) == ("t5", "mlm")
    assert template.override(family="t5", objective="t5_span").objective == "t5_span"


def test_tied_weights_are_one_parameter_of_the_optimizer():
    """BERT's output layer shares the word embeddings: a parameter listed twice is stepped twice
    (AdamW's moments updated twice a step, torch warns of it), so each goes into one group once;
    matrices decay, biases and norms do not, and a frozen weight is left out."""
    from protrans_cli.models import get_family
    from protrans_cli.training.optim import param_groups

    fam = get_family("bert")
    model = fam.pretraining_model(fam.build_config("tiny", fam.build_tokenizer()))
    tied = model.get_output_embeddings().weight
    assert tied is model.get_input_embeddings().weight  # (the premise: a tied model)
    groups = param_groups(model, 0.01)
    listed = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in listed}) == len(listed) == len(list(model.parameters()))
    assert sum(p is tied for p in groups[0]["params"]) == 1 and groups[0]["weight_decay"] == 0.01
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0
    model.get_input_embeddings().weight.requires_grad_(False)
    assert not any(p is tied for g in param_groups(model, 0.01) for p in g["params"])


def test_train_refuses_what_its_run_directory_holds_before_importing_torch(tmp_path):
    """`train -o RUN` on a run's directory without --resume (or on a model's, or --resume where
    there is no run, or --resume-from a path that is none) was told so after torch and the
    training code were imported: 5 to 9 s on a loaded machine for a one-line refusal. Said now
    before torch, in the words train() says them, a bad setting still first."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "checkpoints" / "step_00000010" / "training_state.pt").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    corpus = tmp_path / "c.txt"
    corpus.write_text("MKV\nMKL\n")
    cases = [
        (["--corpus", corpus, "-o", run], 2,
         f"{run} already holds a run (step_00000010): add --resume to continue it, or choose another -o"),
        (["--corpus", corpus, "-o", tmp_path / "model"], 2,
         f"{tmp_path / 'model'} already holds a model (config.json) and no checkpoint: a new run would overwrite it; "
         "choose another -o (or move the model away)"),
        (["--resume", "-o", tmp_path / "empty"], 2, f"{tmp_path / 'empty'} holds no run to resume"),
        (["--resume-from", tmp_path / "nope", "-o", tmp_path / "x"], 1,
         f"{tmp_path / 'nope'}: no checkpoint to resume from (expected checkpoints/step_*/)"),
        # (a bad setting is said first, as train() says it: not hidden behind "add --resume")
        (["--corpus", corpus, "-o", run, "--keep-best"], 2, "--keep-best (keep_best) needs --val-corpus"),
    ]
    code = ("import sys\nfrom protrans_cli.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(code, 'torch' in sys.modules)\n")
    for args, code_expected, said in cases:
        out = subprocess.run([sys.executable, "-c", code, "train", *map(str, args)], capture_output=True, text=True,
                             env={**os.environ, "WORLD_SIZE": "1"}, timeout=60)
        assert out.stdout.split() == [str(code_expected), "False"], (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"protrans: error: {said}") and out.stderr.count("\n") == 1, (args, out.stderr)


def test_torchruns_root_cause_is_the_rank_with_the_error_not_one_stopped_by_it(tmp_path, monkeypatch):
    """Two ranks failing in the same second: torchrun's summary named as "Root Cause" the rank that
    stopped because the other did (rank 0 on a tie: "rank(s) 1 stopped before starting"), and the
    real error ("missing.fa: no such file") only under Failures. Read by torch's own summary code."""
    import time

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from protrans_cli import cli

    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)
    lines = {0: "protrans: error: rank(s) 1 stopped before starting (their error is in their node's log): no rank runs",
             1: "protrans: error: missing.fa: no such file"}
    failures = {}
    for rank, line in lines.items():
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"{rank}.json"))
        cli._tell_torchrun(line, peer_stopped=rank == 0)  # (rank 0's line: an errors.PeerStopped)
        failures[rank] = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=1,
                                        error_file=str(tmp_path / f"{rank}.json"))
    rank, failure = ChildFailedError("protrans", failures).get_first_failure()
    assert rank == 1 and failure.message["message"] == lines[1]
    # (a rank's own error keeps the time it failed at)
    assert failure.timestamp == 1_700_000_000


def test_resumed_keep_best_record_is_dropped_for_the_first_reason_that_applies(tmp_path, capsys):
    """--keep-best's record read back from a checkpoint (loop._resumed_best), alone: kept while its
    checkpoint is there and its eval loss compares; otherwise dropped with the one warning of the
    first reason that applies (the folder, then the validation corpus, then the number of batches);
    None without --keep-best or for a new run."""
    from types import SimpleNamespace

    from protrans_cli.training import checkpoint as ckpt
    from protrans_cli.training.dist import DistInfo
    from protrans_cli.training.loop import _resumed_best

    valid, other = tmp_path / "valid.txt", tmp_path / "other.txt"
    for path in (valid, other):
        path.write_text("MKV\n")
    run_dir = tmp_path / "run"
    (ckpt.checkpoint_dir(run_dir, 4)).mkdir(parents=True)
    (ckpt.checkpoint_dir(run_dir, 4) / ckpt.STATE_FILE).write_bytes(b"")

    def read_back(best, keep_best=True, num_eval_batches=4, val_corpus=(str(valid),), rank=0):
        config = SimpleNamespace(keep_best=keep_best, num_eval_batches=num_eval_batches, val_corpus=list(val_corpus))
        run = SimpleNamespace(config=config, run_dir=run_dir, info=DistInfo(rank=rank, world_size=rank + 1))
        capsys.readouterr()
        kept = _resumed_best(run, None if best is None else {"best": best}, 6)
        return kept, capsys.readouterr().err

    best = {"step": 4, "eval_loss": 1.0, "val_corpus": [str(valid)], "num_eval_batches": 4}
    assert read_back(best) == (best, "")
    assert read_back({"step": 4, "eval_loss": 1.0}) == ({"step": 4, "eval_loss": 1.0}, "")  # (an older record)
    assert read_back(best, keep_best=False) == (None, "")
    assert read_back(None) == (None, "")
    start = "--keep-best: the best checkpoint as of step 6 (step 4, eval loss 1.0000) "
    end = ": the best is tracked from step 6 on"
    kept, said = read_back({**best, "step": 2}, val_corpus=[str(other)], num_eval_batches=1)
    assert kept is None and start.replace("(step 4", "(step 2") + f"is not in {run_dir / 'checkpoints'}" + end in said
    assert said.count("--keep-best") == 1
    kept, said = read_back(best, val_corpus=[str(other)], num_eval_batches=1)
    assert kept is None and start + f"was evaluated on another validation corpus ({valid})" + end in said
    assert said.count("--keep-best") == 1
    kept, said = read_back(best, num_eval_batches=1)
    assert kept is None and start + "was evaluated on 4 evaluation batch(es), this run evaluates 1" + end in said
    # Every rank drops it; rank 0 alone says so.
    assert read_back(best, num_eval_batches=1, rank=1) == (None, "")
