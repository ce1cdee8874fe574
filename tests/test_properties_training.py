"""Property tests of train's data side (docs/train.md, Data and Objectives): for random corpus
sizes, shards, world sizes, data-loader workers, global/micro batch sizes and phases, an epoch is
every protein once less the documented remainder, across ranks and workers; a resume from any
saved data position gives exactly the rest of the uninterrupted stream; crops lie inside the
protein; batch sizes that do not divide are refused exactly when they do not; and the masking
collators never touch a special or padding token, label exactly what they predict, rebuild the
protein (T5 spans) and give valid permutation masks (XLNet), at the documented rates."""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import math
import tempfile
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import assume, example, given, strategies as st  # noqa: E402

from conftest import fewer  # noqa: E402
from protrans_cli.errors import UsageError  # noqa: E402
from protrans_cli.training.config import TrainConfig, grad_accum_steps  # noqa: E402
from protrans_cli.training.data import CorpusStream, Sample, StreamState, TokenLayout  # noqa: E402
from protrans_cli.training.objectives import IGNORE, make_objective  # noqa: E402

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
LETTERS = STANDARD + "XUZOB"


@functools.lru_cache(maxsize=None)
def layout_of(family: str) -> TokenLayout:
    from protrans_cli.models import get_family

    fam = get_family(family)
    return TokenLayout.from_tokenizer(fam.build_tokenizer(), fam.prepare)


# --- corpus streams ----------------------------------------------------------------------

@st.composite
def corpora(draw, min_proteins=1, max_proteins=120, length=st.integers(1, 70)):
    """(lengths of the proteins, [(number of proteins, compression)] of 1-3 shards, some empty)."""
    lengths = draw(st.lists(length, min_size=min_proteins, max_size=max_proteins))
    shards = draw(st.integers(1, 3))
    cuts = sorted(draw(st.lists(st.integers(0, len(lengths)), min_size=shards - 1, max_size=shards - 1)))
    sizes = np.diff([0, *cuts, len(lengths)]).tolist()
    # ".gz+": a gzip file of many members (prep writes one per block), cut anywhere in the text
    kinds = draw(st.lists(st.sampled_from(["", ".gz", ".gz+"]), min_size=shards, max_size=shards))
    return lengths, list(zip(sizes, kinds))


def write_corpus(folder: Path, corpus, seed: int = 0) -> list[str]:
    """prep's format: residues separated by spaces, a blank line after each protein."""
    lengths, shards = corpus
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(STANDARD), n)) for n in lengths]
    paths, at = [], 0
    for k, (size, kind) in enumerate(shards):
        body = "".join(" ".join(t) + "\n\n" for t in texts[at:at + size]).encode()
        at += size
        path = folder / f"shard{k}.txt{kind.rstrip('+')}"
        if kind == ".gz+":  # members of 1-300 bytes of text each
            cuts = np.cumsum(rng.integers(1, 300, len(body) // 100 + 2))
            parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts[:-1], len(body)]) if a < len(body)]
            path.write_bytes(b"".join(gzip.compress(part) for part in parts or [b""]))
        else:
            path.write_bytes(gzip.compress(body) if kind else body)
        paths.append(str(path))
    return paths


@contextlib.contextmanager
def as_worker(worker: int, num_workers: int):
    """Inside a DataLoader worker `worker` of `num_workers` (what torch tells the stream), without
    forking one."""
    info = types.SimpleNamespace(id=worker, num_workers=num_workers) if num_workers > 1 else None
    with mock.patch("torch.utils.data.get_worker_info", return_value=info):
        yield


def indices(step) -> list[int]:
    return sorted(s.index for mb in step.micro_batches for s in mb)


@st.composite
def batch_sizes(draw):
    """(global, micro, world size) that divide."""
    world = draw(st.integers(1, 4))
    micro = draw(st.integers(1, 4))
    accum = draw(st.integers(1, 3))
    return micro * world * accum, micro, world


def _stream(paths, sizes, rank=0, **kw):
    global_batch, micro, world = sizes
    args = dict(max_length=kw.pop("max_length", 40), global_batch_size=global_batch, micro_batch_size=micro,
                rank=rank, world_size=world, seed=kw.pop("seed", 5))
    return CorpusStream(paths, layout_of("bert"), **args, **kw)


def _last_buffer_start(total: int, global_batch: int, bucket_batches: int) -> int:
    """Where the epoch's last buffer begins (docs/train.md: a tail shorter than one global batch
    joins the full buffer before it)."""
    size = global_batch * bucket_batches
    full, tail = divmod(total, size)
    if full and tail < global_batch:
        return (full - 1) * size
    return full * size


@given(corpus=corpora(), sizes=batch_sizes(), bucket_batches=st.integers(1, 4), workers=st.integers(1, 3),
       shuffle=st.booleans(), pad_multiple=st.sampled_from([1, 3, 8, 16]),
       tokens=st.sampled_from([None, False, True]), max_length=st.integers(3, 80),
       limit=st.one_of(st.none(), st.integers(1, 120)))
def test_an_epoch_is_every_protein_once_across_ranks_and_workers_less_the_documented_remainder(
        corpus, sizes, bucket_batches, workers, shuffle, pad_multiple, tokens, max_length, limit):
    """`tokens`: micro-batches by fixed size (None) or by padded tokens (False: padded rows,
    True: packed ones); `limit`: an evaluation stream's first proteins only (max_proteins)."""
    global_batch, micro, world = sizes
    total = len(corpus[0]) if limit is None else min(limit, len(corpus[0]))
    assume(total >= global_batch)
    budget = micro * max_length if tokens is not None else None
    special = layout_of("bert").num_special
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), corpus)
        per_rank = []
        for rank in range(world):
            by_worker = []
            for worker in range(workers):
                with as_worker(worker, workers):
                    stream = _stream(paths, sizes, rank, bucket_batches=bucket_batches, shuffle=shuffle,
                                     pad_multiple=pad_multiple, micro_batch_tokens=budget, max_epochs=2,
                                     max_length=max_length, packed=bool(tokens), max_proteins=limit)
                    by_worker.append(list(stream))
            # a DataLoader takes the workers' items in turn: worker w has steps w, w + W, ...
            steps = [None] * sum(map(len, by_worker))
            for worker, mine in enumerate(by_worker):
                steps[worker::workers] = mine
            assert all(s is not None for s in steps)
            per_rank.append(steps)
    assert len({len(steps) for steps in per_rank}) == 1, "ranks make different numbers of steps"
    for k, step in enumerate(zip(*per_rank)):
        # as many micro-batches on every rank (collectives); the global batch split between them
        assert len({len(s.micro_batches) for s in step}) == 1
        assert sum(s.num_proteins for s in step) == global_batch
        if budget is None:
            assert all(len(mb) == micro for s in step for mb in s.micro_batches)
        else:  # each within the budget as collate pads it (one protein alone may pass it)
            for mb in (mb for s in step for mb in s.micro_batches):
                ns = [len(x.residues) + special for x in mb]
                rows = -(-sum(ns) // pad_multiple) if tokens else len(ns) * -(-max(ns) // pad_multiple)
                padded = rows * pad_multiple
                assert len(mb) == 1 or padded <= budget, (ns, padded, budget)
        owners = [i for s in step for i in indices(s)]
        assert len(owners) == len(set(owners)), "one protein on two ranks"
        assert len({s.micro_batches[0][0].epoch for s in step}) == 1
    dropped = total % global_batch
    last = _last_buffer_start(total, global_batch, bucket_batches)
    misses = []
    for epoch in range(2):
        seen = [i for steps in per_rank for s in steps for mb in s.micro_batches for x in mb if x.epoch == epoch
                for i in [x.index]]
        assert len(seen) == len(set(seen)), f"a protein seen twice in epoch {epoch}"
        missing = set(range(total)) - set(seen)
        assert set(seen) <= set(range(total))
        assert len(missing) == dropped and all(i >= last for i in missing), (sorted(missing), last)
        misses.append(missing)
    # the remainder is drawn from the whole last buffer, not always the corpus's last proteins
    # (a tail that formed a buffer of its own made no batch, the same proteins left out every
    # epoch): both epochs leave out just those with a chance of 1 in C(buffer, dropped)^2 at most
    if dropped and math.comb(total - last, dropped) >= 1000:
        assert not all(m == set(range(total - dropped, total)) for m in misses), "the corpus's tail is never trained"


@given(corpus=corpora(min_proteins=4), sizes=batch_sizes(), bucket_batches=st.integers(1, 4),
       data=st.data(), shuffle=st.booleans(), new_world=st.integers(1, 4))
def test_a_resume_from_any_saved_position_gives_the_rest_of_the_uninterrupted_stream(
        corpus, sizes, bucket_batches, data, shuffle, new_world):
    total = len(corpus[0])
    global_batch, micro, world = sizes
    assume(total >= global_batch)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), corpus)
        kw = dict(bucket_batches=bucket_batches, shuffle=shuffle, max_epochs=3)
        whole = list(_stream(paths, (global_batch, global_batch, 1), **kw))  # one process: the global batches
        assert whole
        k = data.draw(st.integers(0, len(whole) - 1), label="step saved")
        # a checkpoint keeps the position as JSON
        saved = StreamState.from_dict(json.loads(json.dumps(whole[k].state_after.to_dict())))
        # resumed on another number of processes, with another micro-batch size (both may change)
        micro_now = data.draw(st.sampled_from([d for d in range(1, global_batch + 1)
                                                if global_batch % (d * new_world) == 0] or [0]), label="micro")
        assume(micro_now)
        ranks = [list(_stream(paths, (global_batch, micro_now, new_world), rank, state=saved, **kw))
                 for rank in range(new_world)]
    rest = [indices(s) for s in whole[k + 1:]]
    assert all(len(r) == len(rest) for r in ranks)
    assert [sorted(i for r in ranks for i in indices(r[j])) for j in range(len(rest))] == rest
    # the crops and epochs are those of the uninterrupted stream too
    for j, step in enumerate(whole[k + 1:]):
        want = {x.index: (x.epoch, x.residues.tolist()) for mb in step.micro_batches for x in mb}
        got = {x.index: (x.epoch, x.residues.tolist()) for r in ranks for mb in r[j].micro_batches for x in mb}
        assert got == want


@given(length=st.integers(1, 400), max_length=st.integers(3, 120), seed=st.integers(0, 2**32),
       index=st.integers(0, 10**6))
def test_a_crop_lies_inside_the_protein_within_the_max_length_and_not_always_at_the_n_terminus(
        length, max_length, seed, index):
    layout = layout_of("bert")
    text = "".join(np.random.default_rng(seed).choice(list(LETTERS), length))
    ids = layout.encode(text)
    stream = _stream([], (1, 1, 1), max_length=max_length, seed=seed)
    keep = max_length - layout.num_special
    cut_n = 0
    for epoch in range(24):
        buffer = [("c.txt", 1, text)] * 3
        sample = stream._sample(buffer, 2, StreamState(epoch, index, 0))
        assert sample.index == index + 2 and sample.epoch == epoch
        got = sample.residues
        assert len(got) == min(length, keep)
        window = np.lib.stride_tricks.sliding_window_view(ids, len(got))
        found = np.flatnonzero((window == got).all(1))
        assert len(found), "the crop is not a window of the protein"
        if sample.n_terminus:
            assert np.array_equal(got, ids[:len(got)])
        if sample.c_terminus:
            assert np.array_equal(got, ids[length - len(got):])
        if len(found) == 1:
            start = int(found[0])
            assert sample.n_terminus == (start == 0) and sample.c_terminus == (start + len(got) == length)
        cut_n += not sample.n_terminus
    assert (cut_n > 0) == (length > keep), "every crop began at the N-terminus"  # (all 24 at 0: 2^-24)


@given(global_batch=st.integers(-2, 400), micro=st.integers(-2, 40), world=st.integers(1, 16))
@example(global_batch=12, micro=2, world=4)
@example(global_batch=12, micro=2, world=5)
def test_batch_sizes_are_refused_exactly_when_they_do_not_divide(global_batch, micro, world):
    divides = global_batch >= 1 and micro >= 1 and global_batch % (micro * world) == 0
    if divides:
        assert grad_accum_steps(global_batch, micro, world) * micro * world == global_batch
        return
    with pytest.raises(UsageError) as info:
        grad_accum_steps(global_batch, micro, world)
    message = str(info.value)
    if global_batch >= 1 and micro >= 1:
        assert f"{global_batch} is not divisible by micro batch size {micro} x {world}" in message
        advice = message.rsplit(": ", 1)[1]
        if global_batch % world:
            assert f"processes that divides {global_batch}" in advice
        else:  # the micro-batch size it suggests does divide
            suggested = int(advice.split("e.g. ")[1].split(" ")[0])
            assert 1 <= suggested <= micro and global_batch % (suggested * world) == 0


# --- masking collators ---------------------------------------------------------------------

def _cfg(**kw):
    return TrainConfig(corpus=["x"], **kw)


@st.composite
def sample_batches(draw, max_size=12, max_length=60, letters=LETTERS):
    """Samples of random residues (rare letters included), lengths from 1, crops flagged."""
    n = draw(st.integers(1, max_size))
    seed = draw(st.integers(0, 2**32))
    epoch = draw(st.integers(0, 5))
    out = []
    for i in range(n):
        text = draw(st.text(alphabet=letters, min_size=1, max_size=max_length))
        s = Sample(draw(st.integers(0, 10**6)) * 16 + i, epoch, np.empty(0, np.int64), seed,
                   n_terminus=draw(st.booleans()), c_terminus=draw(st.booleans()))
        out.append((s, text))
    return out


def _samples(family, drawn):
    layout = layout_of(family)
    for s, text in drawn:
        s.residues = layout.encode(text)
    return [s for s, _ in drawn]


def _unpadded_rows(layout, samples):
    """Each protein as the model reads it unmasked: prefix, residues, suffix."""
    return [np.concatenate([layout.prefix, s.residues, layout.suffix]).astype(np.int64) for s in samples]


@given(drawn=sample_batches(), family=st.sampled_from(["bert", "esm", "albert", "roberta", "electra"]),
       pad_multiple=st.sampled_from([1, 8, 16]), packed=st.booleans())
def test_masked_lm_never_touches_a_special_or_padding_token_and_labels_exactly_what_it_predicts(
        drawn, family, pad_multiple, packed):
    from protrans_cli.models import get_family

    layout = layout_of(family)
    samples = _samples(family, drawn)
    obj = make_objective("electra" if family == "electra" else "mlm", layout, _cfg(pad_multiple=pad_multiple))
    if packed:
        fam = get_family(family)
        obj.packed_position_offset = fam.packed_position_offset(fam.build_config("tiny", fam.build_tokenizer()))
    batch = obj.collate(samples)
    ids, labels, residue = batch["input_ids"], batch["labels"], batch["residue_mask"]
    rows = _unpadded_rows(layout, samples)
    if packed:  # one row, the proteins back to back, padded at the end
        original = np.full(ids.shape[1], layout.pad_id)
        total = sum(map(len, rows))
        original[:total] = np.concatenate(rows)
        original = torch.from_numpy(original)[None]
        assert ids.shape[1] == max(pad_multiple, -(-total // pad_multiple) * pad_multiple)
        cu = batch["cu_seq_lens"].tolist()
        assert cu[:len(rows) + 1] == np.cumsum([0, *map(len, rows)]).tolist()
        assert cu[-1] == ids.shape[1]
        positions = batch["position_ids"][0].tolist()
        first = obj.packed_position_offset
        for a, b in zip(cu, cu[1:]):  # position ids restart at every protein (and at the padding)
            assert positions[a:b] == list(range(first, first + b - a))
        assert batch["max_length"] == max(b - a for a, b in zip(cu, cu[1:]))
    else:
        width = ids.shape[1]
        assert width == max(pad_multiple, -(-max(map(len, rows)) // pad_multiple) * pad_multiple)
        original = torch.full_like(ids, layout.pad_id)
        for i, r in enumerate(rows):
            original[i, :len(r)] = torch.from_numpy(r)
        assert torch.equal(batch["attention_mask"].bool(), torch.as_tensor(
            np.arange(width)[None] < np.array([len(r) for r in rows])[:, None]))
        expected_residue = torch.zeros_like(residue)
        for i, s in enumerate(samples):
            expected_residue[i, len(layout.prefix):len(layout.prefix) + len(s.residues)] = True
        assert torch.equal(residue, expected_residue)
    assert int(residue.sum()) == sum(len(s.residues) for s in samples)
    chosen = labels != IGNORE
    assert not chosen[~residue].any(), "a special or padding token is predicted"
    assert torch.equal(ids[~residue], original[~residue]), "a special or padding token was changed"
    assert torch.equal(labels[chosen], original[chosen]), "a label is not the original residue"
    changed = chosen & (ids != original) & (ids != layout.mask_id)
    allowed = set(layout.standard_ids.tolist()) if family != "electra" else set()
    assert set(ids[changed].tolist()) <= allowed, "a random replacement that is not a standard residue"
    assert torch.equal(ids[residue & ~chosen], original[residue & ~chosen]), "an unchosen residue changed"
    assert batch["num_predicted"] == int(chosen.sum())


def _within(count: int, n: int, p: float, floor: float = 1e-9) -> bool:
    """Whether `count` successes of `n` draws at rate `p` are no rarer than `floor`: the exact
    binomial tail on the side the count lies (a normal approximation's 5 sigmas failed for 5 of 5
    chosen residues drawn at random, a 1e-5 event the fuzz profile's search over seeds found)."""
    if p <= 0 or p >= 1:
        return count == (0 if p <= 0 else n)

    def pmf(j: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p)
                        + (n - j) * math.log1p(-p))

    side = range(count, n + 1) if count >= n * p else range(0, count + 1)
    return sum(pmf(j) for j in side) >= floor


@fewer(20)
@given(drawn=sample_batches(max_size=40, max_length=400, letters=STANDARD),
       family=st.sampled_from(["bert", "electra"]))
def test_masked_lm_rates_fall_within_a_binomial_tolerance(drawn, family):
    layout = layout_of(family)
    samples = _samples(family, drawn)
    batch = make_objective("electra" if family == "electra" else "mlm", layout, _cfg()).collate(samples)
    ids, labels, residue = batch["input_ids"], batch["labels"], batch["residue_mask"]
    chosen = labels != IGNORE
    n, k = int(residue.sum()), int(chosen.sum())
    assert _within(k, n, 0.15)
    to_mask, to_random = (0.85, 0.0) if family == "electra" else (0.8, 0.1)
    masked = int(((ids == layout.mask_id) & chosen).sum())
    other = int((chosen & (ids != labels) & (ids != layout.mask_id)).sum())
    assert _within(masked, k, to_mask)
    assert _within(other, k, to_random * 19 / 20)  # a random standard residue may be the true one


@given(drawn=sample_batches(max_size=8, max_length=120))
def test_t5_span_corruption_input_and_target_rebuild_the_protein(drawn):
    layout = layout_of("t5")
    samples = _samples("t5", drawn)
    obj = make_objective("t5_span", layout, _cfg())
    batch = obj.collate(samples)
    sentinels = layout.sentinel_ids
    eos = layout.suffix
    for i, s in enumerate(samples):
        x = [t for t in batch["input_ids"][i].tolist()]
        x = x[:int(batch["attention_mask"][i].sum())]
        y = [t for t in batch["labels"][i].tolist() if t != IGNORE]
        assert x[:len(layout.prefix)] == layout.prefix and x[len(x) - len(eos):] == eos == y[len(y) - len(eos):]
        x, y = x[len(layout.prefix):len(x) - len(eos)], y[:len(y) - len(eos)]
        used = [t for t in x if t in sentinels]
        assert used == sentinels[:len(used)] == [t for t in y if t in sentinels], "sentinels out of order"
        assert y[:1] == sentinels[:1]  # the target starts with the first span's sentinel
        spans, current = {}, None
        for t in y:
            if t in sentinels:
                current = spans.setdefault(t, [])
            else:
                current.append(t)
        assert all(spans.values()), "a sentinel with an empty span"
        rebuilt = [r for t in x for r in (spans[t] if t in sentinels else [t])]
        assert rebuilt == s.residues.tolist()
        noise = sum(map(len, spans.values()))
        L = len(s.residues)
        if L >= 2:  # 15% of the residues (at least one, never all), spans apart
            assert noise == min(max(int(round(L * 0.15)), 1), L - 1)
            assert all(a not in sentinels or b not in sentinels for a, b in zip(x, x[1:]))
        else:
            assert noise == L
    assert batch["num_predicted"] == int((batch["labels"] != IGNORE).sum())


@given(drawn=sample_batches(max_size=6, max_length=50))
def test_xlnet_permutation_masks_let_a_target_see_only_earlier_targets_and_the_context(drawn):
    layout = layout_of("xlnet")
    samples = _samples("xlnet", drawn)
    batch = make_objective("plm", layout, _cfg()).collate(samples)
    perm, tmap, labels, ids = batch["perm_mask"], batch["target_mapping"], batch["labels"], batch["input_ids"]
    rows = _unpadded_rows(layout, samples)
    pre = len(layout.prefix)
    for b, s in enumerate(samples):
        assert ids[b, :len(rows[b])].tolist() == rows[b].tolist()  # inputs unchanged
        valid = labels[b] != IGNORE
        n = int(valid.sum())
        assert n >= 1 and valid[:n].all() and not valid[n:].any()
        assert torch.equal(tmap[b][valid].sum(-1), torch.ones(n)) and not tmap[b][~valid].any()
        targets = tmap[b][valid].argmax(-1).tolist()  # positions in factorisation order
        assert len(set(targets)) == n
        assert all(pre <= t < pre + len(s.residues) for t in targets), "a special or padding token as target"
        assert labels[b][valid].tolist() == [int(ids[b, t]) for t in targets]
        order = {t: k for k, t in enumerate(targets)}
        T = ids.shape[1]
        for i in range(T):
            for j in range(T):
                blocked = bool(perm[b, i, j])
                if j not in order:
                    assert not blocked  # every token sees the context (non-targets)
                elif i not in order:
                    assert blocked      # the context sees no target
                else:                   # a target sees the targets before it, never itself or later ones
                    assert blocked == (order[j] >= order[i])


@st.composite
def _phase_corpora(draw):
    """(corpus, first phase's global batch, bucket_batches): often whole buffers and a tail of
    fewer proteins than one global batch, which joins the last buffer."""
    first = draw(st.integers(1, 24))
    bucket_batches = draw(st.integers(1, 4))
    if draw(st.booleans()):
        return draw(corpora(min_proteins=2)), first, bucket_batches
    total = first * bucket_batches * draw(st.integers(1, 3)) + draw(st.integers(0, first - 1))
    lengths = draw(st.lists(st.integers(1, 70), min_size=total, max_size=total))
    return (lengths, [(total, draw(st.sampled_from(["", ".gz"])))]), first, bucket_batches


@given(args=_phase_corpora(), then=st.one_of(st.integers(1, 4), st.integers(1, 24)), data=st.data())
@example(args=(([5] * 70, [(70, "")]), 16, 4), then=4, data=None)
def test_a_new_phase_trains_no_protein_twice_in_the_epoch(args, then, data):
    """docs/train.md: a new --phase starts at the next buffer; the batches left in the buffer the
    previous phase was in are not seen in that epoch, and none is seen twice."""
    from protrans_cli.training.data import next_phase_state

    corpus, first, bucket_batches = args
    total = len(corpus[0])
    assume(total >= max(first, then))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), corpus)
        one = list(_stream(paths, (first, first, 1), bucket_batches=bucket_batches, max_epochs=1))
        # (often a step of the last buffer, where the tail may have joined)
        k = data.draw(st.one_of(st.integers(1, len(one)), st.integers(max(1, len(one) - bucket_batches), len(one))),
                      label="steps of the first phase") if data else 2
        state = next_phase_state(StreamState.from_dict(one[k - 1].state_after.to_dict()), paths, first, bucket_batches)
        assert state.batches_done == 0 and state.epoch == 0
        two = list(_stream(paths, (then, then, 1), bucket_batches=bucket_batches, max_epochs=2, state=state,
                           max_length=60))
    seen = [i for s in one[:k] + [s for s in two if s.micro_batches[0][0].epoch == 0] for i in indices(s)]
    assert len(seen) == len(set(seen)), "a protein trained twice in the epoch of a phase change"
    # and the next epoch is the new phase's whole epoch
    later = [i for s in two if s.micro_batches[0][0].epoch == 1 for i in indices(s)]
    assert len(later) == len(set(later)) == total - total % then


@given(corpus=st.one_of(corpora(min_proteins=8), corpora(min_proteins=8, length=st.integers(20, 45))),
       sizes=batch_sizes(), bucket_batches=st.integers(1, 4), pad_multiple=st.sampled_from([8, 12, 16, 24, 40]),
       epoch=st.integers(0, 3))
@example(corpus=([1, 1, 1, 31, 35, 35, 1, 1], [(8, "")]), sizes=(2, 1, 1), bucket_batches=3, pad_multiple=12, epoch=0)
def test_batches_re_formed_by_padded_width_pad_as_the_plain_length_sort(corpus, sizes, bucket_batches, pad_multiple,
                                                                        epoch):
    """docs/train.md: with --pad-multiple 8 or more every batch pads to the width the plain
    length sort gave it (the sort is by the padded width, rounded up to --pad-multiple)."""
    total = len(corpus[0])
    global_batch = sizes[0]
    assume(total >= global_batch)
    special = layout_of("bert").num_special
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), corpus)
        steps = list(_stream(paths, (global_batch, global_batch, 1), bucket_batches=bucket_batches,
                             pad_multiple=pad_multiple, max_epochs=epoch + 1, max_length=60,
                             state=StreamState(epoch=epoch)))
    width = {x.index: -(-(len(x.residues) + special) // pad_multiple) * pad_multiple
             for s in steps for mb in s.micro_batches for x in mb}
    by_buffer: dict[int, list[list[int]]] = {}
    size = global_batch * bucket_batches
    for s in steps:
        batch = indices(s)
        by_buffer.setdefault(min(batch) // size, []).append(batch)
    for batches in by_buffer.values():
        kept = sorted((width[i], i) for b in batches for i in b)  # the plain sort of the same proteins
        plain = [max(w for w, _ in kept[k:k + global_batch]) for k in range(0, len(kept), global_batch)]
        assert sorted(max(width[i] for i in b) for b in batches) == sorted(plain)


@given(drawn=sample_batches(max_size=10, max_length=50), family=st.sampled_from(["bert", "roberta", "electra"]),
       pad_multiple=st.sampled_from([1, 8, 16]))
def test_a_packed_row_holds_the_padded_batch_without_its_padding(drawn, family, pad_multiple):
    """Every protein once, in order, with its own masks and labels (and ELECTRA's replacement
    draws), position ids restarting at each protein: the padded batch's rows, unpadded."""
    from protrans_cli.models import get_family

    layout = layout_of(family)
    samples = _samples(family, drawn)
    objective = "electra" if family == "electra" else "mlm"
    padded = make_objective(objective, layout, _cfg(pad_multiple=pad_multiple)).collate(samples)
    packer = make_objective(objective, layout, _cfg(pad_multiple=pad_multiple))
    fam = get_family(family)
    packer.packed_position_offset = fam.packed_position_offset(fam.build_config("tiny", fam.build_tokenizer()))
    packed = packer.collate(samples)
    real = padded["attention_mask"].bool()
    total = int(real.sum())
    for key in ("input_ids", "labels", "residue_mask"):
        assert torch.equal(packed[key][0, :total], padded[key][real]), key
    assert (packed["labels"][0, total:] == IGNORE).all() and not packed["residue_mask"][0, total:].any()
    assert packed["num_predicted"] == padded["num_predicted"]
    if objective == "electra":
        assert torch.equal(packed["replace_u"], padded["replace_u"]) and packed["num_aux"] == padded["num_aux"]
        assert len(packed["replace_u"]) == packed["num_predicted"]
