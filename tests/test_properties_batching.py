"""Property tests of embed's batch plan and its long-protein policies (docs/embed.md, Batching
and Long sequences): for random length lists, budgets, windows and world sizes, every protein
lands in exactly one batch of one rank, no batch passes the token budget or the size cap (but a
lone protein longer than the budget), identical sequences are computed once, chunked windows
cover every residue and stitch back to exactly L rows; and with the onehot embedder and a tiny
random model of every family (packed batches too where it packs) the arrays do not depend on the
batching and equal an independent reference (a one-hot table written here; a plain
`transformers` forward pass over each protein alone)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import assume, example, given, strategies as st  # noqa: E402

from conftest import fewer, save_tiny_model  # noqa: E402
from protrans_cli.embed import (EmbedOptions, OneHotEmbedder, _Piece, _Protein, _Unit, chunk_windows,  # noqa: E402
                                embed, make_batches, plan_units, shard_units, stitch_windows)
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader  # noqa: E402

ONEHOT = "ACDEFGHIKLMNPQRSTVWYX"
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
LETTERS = "ACDEFGHIKLMNPQRSTVWYXUZOBacdefghiklmnpqrstvwyxuzob"


def onehot_rows(seq: str) -> np.ndarray:
    """The reference: row i one-hot at the residue's place in ONEHOT (U/Z/O/B and X at X)."""
    out = np.zeros((len(seq), len(ONEHOT)), dtype=np.float32)
    for i, c in enumerate(seq.upper()):
        out[i, ONEHOT.index(c) if c in ONEHOT else ONEHOT.index("X")] = 1
    return out


def _pieces(lengths):
    """One unchunked piece per length (each its own unit, so identity tells them apart)."""
    return [_Piece(_Unit("A" * n, []), 0, "A" * n) for n in lengths]


# --- make_batches ------------------------------------------------------------------------

@st.composite
def _budgets(draw):
    """(lengths, max_tokens, max_batch_size, special tokens), the budget often at a boundary:
    k padded rows of one of the lengths exactly, or one token either side."""
    lengths = draw(st.lists(st.integers(1, 300), max_size=60))
    special = draw(st.integers(0, 3))
    if lengths and draw(st.booleans()):
        row = draw(st.sampled_from(lengths)) + special
        max_tokens = max(1, row * draw(st.integers(1, 8)) + draw(st.integers(-1, 1)))
    else:
        max_tokens = draw(st.integers(1, 2000))
    return lengths, max_tokens, draw(st.integers(1, 20)), special


@given(_budgets())
@example(([62, 62, 62], 64, 3, 2))  # exactly one per budget
@example(([30, 30], 64, 2, 2))      # two fill the budget exactly
@example(([31, 31], 64, 2, 2))      # two fit only without their special tokens
def test_every_piece_lands_in_one_batch_within_the_budget_and_the_cap(args):
    lengths, max_tokens, max_batch_size, special = args
    pieces = _pieces(lengths)
    batches = make_batches(pieces, max_tokens, max_batch_size, special)
    placed = [id(p) for b in batches for p in b]
    assert sorted(placed) == sorted(id(p) for p in pieces)  # every piece once, none invented
    assert all(batches), "an empty batch"
    for b in batches:
        assert len(b) <= max_batch_size
        widest = max(len(p.sequence) + special for p in b)
        # the documented budget: longest sequence plus its special tokens, times the count;
        # only a protein that alone passes it may stand alone over it
        assert widest * len(b) <= max_tokens or len(b) == 1
    # longest first, and greedy: the next batch's first piece did not fit in the one before
    flat = [len(p.sequence) for b in batches for p in b]
    assert flat == sorted(flat, reverse=True)
    for b, nxt in zip(batches, batches[1:]):
        width = max(len(p.sequence) + special for p in b + nxt[:1])
        assert len(b) >= max_batch_size or width * (len(b) + 1) > max_tokens


@given(windows=st.lists(st.tuples(st.integers(2, 40), st.integers(0, 6)), max_size=6),
       whole=st.lists(st.integers(1, 60), max_size=20), max_tokens=st.integers(1, 400),
       max_batch_size=st.integers(1, 10))
def test_the_windows_of_a_chunked_protein_stay_together(windows, whole, max_tokens, max_batch_size):
    pieces = _pieces(whole)
    for k, (window, extra) in enumerate(windows):
        length = window + extra + 1
        seq = "A" * length
        unit = _Unit(seq, [_Protein(f"c{k}", f"c{k}", seq, 1)], chunk_windows(length, window, window // 2))
        pieces += [_Piece(unit, i, seq[s:e]) for i, (s, e) in enumerate(unit.windows)]
    batches = make_batches(pieces, max_tokens, max_batch_size, 2)
    order = [p for b in batches for p in b]
    assert sorted(map(id, order)) == sorted(map(id, pieces))
    for k in range(len(windows)):
        at = [i for i, p in enumerate(order) if p.unit.windows and p.unit.proteins[0].id == f"c{k}"]
        assert at == list(range(at[0], at[0] + len(at))), "a chunked protein's windows were parted"
        assert [order[i].index for i in at] == list(range(len(at)))


# --- plan_units + shard_units: the whole plan of one window of input ----------------------

proteins_st = st.lists(st.tuples(st.integers(0, 7), st.integers(1, 40)), min_size=1, max_size=40)


def _proteins(spec):
    """Proteins p0, p1... whose sequences are drawn from few (kind, length) pairs: duplicates."""
    return [_Protein(f"p{i}", f"p{i}", ("ACDEFGHIKL"[kind] + "MNPQRSTVWY"[kind]) * (n // 2) + "A" * (n % 2), i + 1)
            for i, (kind, n) in enumerate(spec)]


@given(spec=proteins_st, world_size=st.integers(1, 6), max_tokens=st.integers(1, 200),
       max_batch_size=st.integers(1, 8), pinned=st.sets(st.integers(0, 39)),
       policy=st.sampled_from([None, "truncate", "chunk", "skip"]), max_length=st.integers(2, 30))
def test_every_protein_is_in_exactly_one_batch_of_one_rank_and_each_sequence_computed_once(
        spec, world_size, max_tokens, max_batch_size, pinned, policy, max_length):
    proteins = _proteins(spec)
    options = EmbedOptions(model="onehot", long_policy=policy or "error", chunk_overlap=max_length // 3)
    failures = {}
    units, duplicates = plan_units(proteins, options, max_length if policy else None, set(), failures.__setitem__)
    assert duplicates == sum(len(u.proteins) - 1 for u in units)
    assert len({u.proteins[0].sequence for u in units}) == len(units)  # one unit per distinct sequence
    over = {p.id for p in proteins if policy and len(p.sequence) > max_length}
    assert set(failures) == (over if policy == "skip" else set())
    assert all(why.startswith("skipped: ") for why in failures.values())

    def pin(unit):  # some units pinned (a copy's rank), by their first protein's number
        number = int(unit.proteins[0].id[1:])
        return number % world_size if number in pinned else None

    shares = [shard_units(units, rank, world_size, pin) for rank in range(world_size)]
    assert shares == [shard_units(units, rank, world_size, pin) for rank in range(world_size)]  # deterministic
    seen, computed = [], []
    for rank, mine in enumerate(shares):
        for unit in mine:
            target = pin(unit)
            assert target is None or target == rank or world_size == 1
        pieces = []
        for unit in mine:
            if unit.windows is None:
                pieces.append(_Piece(unit, 0, unit.sequence))
            else:
                pieces += [_Piece(unit, i, unit.sequence[s:e]) for i, (s, e) in enumerate(unit.windows)]
        for batch in make_batches(pieces, max_tokens, max_batch_size, 2):
            assert len(batch) <= max_batch_size
            assert len(batch) == 1 or max(len(p.sequence) + 2 for p in batch) * len(batch) <= max_tokens
            for piece in batch:
                computed.append((piece.unit.proteins[0].sequence, piece.index))
                if piece.index == 0:
                    seen += [p.id for p in piece.unit.proteins]
                if policy in ("truncate", "chunk"):
                    assert len(piece.sequence) <= max_length
    assert sorted(seen) == sorted(p.id for p in proteins if p.id not in failures)  # each once, none lost
    assert len(computed) == len(set(computed))  # a sequence (or window of one) computed once


@given(lengths=st.lists(st.integers(1, 500), min_size=1, max_size=80), world_size=st.integers(2, 9))
def test_free_shares_are_balanced_within_one_protein(lengths, world_size):
    units = [_Unit("A" * n, [_Protein(f"p{i}", "", "A" * n, 1)]) for i, n in enumerate(lengths)]
    shares = [shard_units(units, rank, world_size) for rank in range(world_size)]
    assert sorted(id(u) for s in shares for u in s) == sorted(map(id, units))
    loads = [sum(len(u.sequence) for u in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)


# --- long proteins -----------------------------------------------------------------------

@st.composite
def _chunking(draw):
    window = draw(st.integers(1, 120))
    overlap = draw(st.integers(0, window - 1))
    length = draw(st.one_of(st.integers(1, 600), st.sampled_from([window, window + 1, 2 * window - overlap,
                                                                   2 * window - overlap + 1])))
    return length, window, overlap


@given(_chunking())
@example((101, 100, 99))
@example((1, 1, 0))
def test_windows_cover_every_residue_and_stitch_back_to_exactly_its_rows(args):
    length, window, overlap = args
    windows = chunk_windows(length, window, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == length
    assert all(0 <= s < e <= length and e - s == min(window, length) for s, e in windows)
    assert all(a[0] < b[0] and b[0] <= a[1] - overlap for a, b in zip(windows, windows[1:]))  # overlap at least
    covered = np.zeros(length, int)
    for s, e in windows:
        covered[s:e] += 1
    assert covered.min() >= 1
    # each window's rows computed from that window alone: the stitched rows are the protein's own
    truth = np.random.default_rng(length).normal(size=(2, length, 3)).astype(np.float32)
    for causal in (False, True):
        stitched = stitch_windows(windows, [truth[:, s:e] for s, e in windows], length, causal=causal)
        assert stitched.shape == truth.shape
        np.testing.assert_array_equal(stitched, truth)
    # and every row comes from one of the windows that holds it (no row left uninitialised)
    marks = [np.full((1, e - s, 1), k, np.float32) for k, (s, e) in enumerate(windows)]
    for causal in (False, True):
        got = stitch_windows(windows, marks, length, causal=causal)[0, :, 0]
        for row, k in enumerate(got.astype(int)):
            assert 0 <= k < len(windows) and windows[k][0] <= row < windows[k][1]


seq_st = st.text(alphabet=LETTERS, min_size=1, max_size=70)


class _Recording(OneHotEmbedder):
    """The onehot embedder that counts two special tokens (as a BERT does) and records its batches."""

    special_tokens = 2

    def __init__(self):
        super().__init__()
        self.batches = []

    def embed_batch(self, sequences, pooled=False):
        self.batches.append(list(sequences))
        return super().embed_batch(sequences, pooled)


def _write_fasta(path: Path, seqs) -> list[str]:
    ids = [f"s{i}" for i in range(len(seqs))]
    path.write_text("".join(f">{i} protein {i}\n{s}\n" for i, s in zip(ids, seqs)))
    return ids


def _read(path, kind):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}, r.failed(), {i: dict(r.dataset(i).attrs) for i in r.ids()}


@fewer(40)
@example(seqs=["A", "AA"], repeat=[], max_tokens=1, max_batch_size=1, window=1, policy="truncate", max_length=1,
         overlap=0)
@given(seqs=st.lists(seq_st, min_size=1, max_size=12), repeat=st.lists(st.integers(0, 11), max_size=4),
       max_tokens=st.integers(1, 150), max_batch_size=st.integers(1, 6), window=st.integers(1, 6),
       policy=st.sampled_from(["chunk", "truncate", "skip", None]), max_length=st.integers(1, 30),
       overlap=st.integers(0, 29))
def test_onehot_arrays_equal_the_reference_whatever_the_batches_windows_and_policy(
        seqs, repeat, max_tokens, max_batch_size, window, policy, max_length, overlap):
    assume(policy != "chunk" or overlap < max_length)
    seqs = seqs + [seqs[i % len(seqs)] for i in repeat]  # identical sequences, maybe windows apart
    recorder = _Recording()
    with tempfile.TemporaryDirectory() as tmp:
        fasta, out = Path(tmp) / "in.fa", Path(tmp) / "out.h5"
        ids = _write_fasta(fasta, seqs)
        options = EmbedOptions(model="onehot", max_tokens=max_tokens, max_batch_size=max_batch_size, window=window,
                               max_length=max_length if policy else None, long_policy=policy or "error",
                               chunk_overlap=overlap if policy == "chunk" else 0)
        summary = embed(fasta, out, options, embedder=recorder)
        rows, failed, attrs = _read(out, PER_RESIDUE)
        means, _, _ = _read(out, PER_PROTEIN)
    for batch in recorder.batches:
        assert len(batch) <= max_batch_size
        assert len(batch) == 1 or max(len(s) + 2 for s in batch) * len(batch) <= max_tokens
    # each distinct sequence (normalised: upper case) computed once, a chunked one once per
    # window; identity is the whole sequence's (two proteins that share only the residues
    # truncate keeps are two sequences: plan_units says why)
    distinct = {s.upper() for s in seqs if not (policy == "skip" and len(s) > max_length)}
    expected = sum(len(chunk_windows(len(s), max_length, overlap)) if policy == "chunk" else 1 for s in distinct)
    assert sum(len(b) for b in recorder.batches) == expected, "an identical sequence was computed twice"
    assert sorted(rows) == sorted(i for i, s in zip(ids, seqs) if not (policy == "skip" and len(s) > max_length))
    assert sorted(failed) == sorted(set(ids) - set(rows))
    for ident, seq in zip(ids, seqs):
        if ident in failed:
            assert failed[ident].startswith(f"skipped: {len(seq)} residues > --max-length {max_length}")
            continue
        kept = seq[:max_length] if policy == "truncate" else seq
        np.testing.assert_array_equal(rows[ident], onehot_rows(kept))  # exactly: chunked or not
        np.testing.assert_allclose(means[ident], onehot_rows(kept).mean(0), atol=1e-6)
        if policy == "truncate" and len(seq) > max_length:
            assert attrs[ident]["truncated_from"] == len(seq)
        if policy == "chunk" and len(seq) > max_length:
            assert attrs[ident]["chunks"] == len(chunk_windows(len(seq), max_length, overlap))
    assert summary.num_embedded == len(rows)


# --- a tiny random model: batching changes nothing, and each protein is its plain forward pass ----

# family -> packings its embedder is built with (XLNet pads on the left, Transformer-XL has no
# special tokens, ESM reads unspaced letters and its rare residues itself)
TINY_MODELS = {"bert": (False, True), "t5": (False,), "esm": (False, True), "roberta": (False, True),
               "albert": (False, True), "electra": (False, True), "xlnet": (False,), "transfo_xl": (False,)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{(family, packed): (embedder, tokenizer, encoder, family)}: a tiny random model of every
    family (padded batches; packed ones too for the families that pack), saved as `protrans
    train` saves them, each embedder built once."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer

    from protrans_cli.embed import build_embedder
    from protrans_cli.models import FAMILIES

    out = {}
    for name, packings in TINY_MODELS.items():
        family = FAMILIES[name]
        path = save_tiny_model(tmp_path_factory, name)
        encoder = family.encoder_class.from_pretrained(str(path), dtype=torch.float32).eval()
        for packed in packings:
            embedder = build_embedder(EmbedOptions(model=str(path), device="cpu", dtype="float32", packing=packed,
                                                   attention="sdpa"))
            assert embedder.packed == packed
            out[name, packed] = (embedder, AutoTokenizer.from_pretrained(str(path)), encoder, family)
    return out


def _plain_forward(tokenizer, encoder, family, seq: str) -> np.ndarray:
    """transformers alone: one protein, no padding, the family's own text convention (spaced
    letters, rare residues as X where it reads them so); the residue rows found by their ids."""
    import torch

    letters = seq.upper()
    if family.rare_to == "X":
        letters = letters.translate(str.maketrans("UZOB", "XXXX"))
    ids = tokenizer(" ".join(letters) if family.spaced else letters, return_tensors="pt")["input_ids"]
    residue_ids = tokenizer.convert_tokens_to_ids(list(letters))
    row = ids[0].tolist()
    starts = [i for i in range(len(row) - len(letters) + 1) if row[i:i + len(letters)] == residue_ids]
    assert len(starts) == 1 and len(row) - len(letters) <= 2, row
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.last_hidden_state[0, starts[0]:starts[0] + len(letters)].numpy()


def _check_against_plain_forward(tiny_models, model, seqs, options, pad_multiple=1):
    from protrans_cli.embed import embed_sequences

    embedder, tokenizer, encoder, family = tiny_models[model]
    embedder.pad_multiple = pad_multiple  # (a GPU's 8; the CPU's 1)
    try:
        rows = embed_sequences(seqs, options, kind=PER_RESIDUE, embedder=embedder)
        means = embed_sequences(seqs, options, kind=PER_PROTEIN, embedder=embedder)
    finally:
        embedder.pad_multiple = 1
    for seq, got, mean in zip(seqs, rows, means):
        ref = _plain_forward(tokenizer, encoder, family, seq)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mean, ref.mean(0), atol=1e-5, rtol=0)


@fewer(10)
@given(seqs=st.lists(st.text(alphabet=LETTERS, min_size=1, max_size=40), min_size=1, max_size=6),
       max_tokens=st.integers(1, 300), max_batch_size=st.integers(1, 6),
       model=st.sampled_from([(name, packed) for name, packings in TINY_MODELS.items() for packed in packings]),
       pad_multiple=st.sampled_from([1, 8]))
def test_a_models_arrays_are_each_proteins_plain_forward_pass_whatever_the_batches(
        tiny_models, seqs, max_tokens, max_batch_size, model, pad_multiple):
    """Padded or packed batches of any budget and size cap, a batch's length rounded up to 8 or
    not (as on a GPU or the CPU): each protein's rows are those of its plain forward pass."""
    options = EmbedOptions(model=tiny_models[model][0].name, device="cpu", dtype="float32", max_tokens=max_tokens,
                           max_batch_size=max_batch_size, packing=model[1], attention="sdpa")
    _check_against_plain_forward(tiny_models, model, seqs, options, pad_multiple)


@fewer(2)
@given(longest=st.integers(2030, 2046), pad_multiple=st.sampled_from([3, 8, 16, 24]), short=st.integers(1, 30))
@example(longest=2046, pad_multiple=24, short=3)
def test_rounding_a_batch_up_never_passes_the_learned_position_table(tiny_models, longest, pad_multiple, short):
    """A protein near the tiny BERT's 2,048 learned positions, batched with a short one: its
    batch is rounded up to `pad_multiple` only where that stays inside the table."""
    seqs = ["".join(STANDARD[(i * 7) % 20] for i in range(longest)), "M" * short]
    options = EmbedOptions(model=tiny_models["bert", False][0].name, device="cpu", dtype="float32", max_tokens=10_000)
    _check_against_plain_forward(tiny_models, ("bert", False), seqs, options, pad_multiple)
