"""NaN and infinity never reach an embeddings file.

Half precision overflows (T5 in float16 is the known case: huggingface/transformers#4287), and
values beyond 65504 become infinity when stored as float16. The model is made to misbehave on
purpose: the family's hidden states get NaN (or are scaled up) for the proteins that contain a
tryptophan (W), in chosen compute dtypes only. The bfloat16 runs are on the CPU, which torch
allows, so the float32 retry is exercised without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, save_tiny_model
from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import EmbeddingsReader

torch = pytest.importorskip("torch")
from protrans_cli.embed import EmbedOptions, TransformerEmbedder, embed  # noqa: E402
from protrans_cli.models import FAMILIES, load_model  # noqa: E402

SMALL = DATA / "embed" / "small.fa"
POISONED = "sp|Q9/slash"  # the only protein of small.fa with a W


def _tiny_dir(tmp_path_factory, name: str):
    return save_tiny_model(tmp_path_factory, name)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory, "bert")


@pytest.fixture(scope="module")
def w_id(bert_dir) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_dir)).convert_tokens_to_ids("W")


def _misbehave(monkeypatch, w_id, dtypes, *, value=None, scale=None):
    """The bert family's hidden states, for batch rows holding a W (token `w_id`) and a model in
    `dtypes`: set to `value` or multiplied by `scale`. Returns the dtypes of every call."""
    family_class = type(FAMILIES["bert"])
    original = family_class.hidden_states
    calls = []

    def hidden_states(self, model, inputs, layers):
        states = original(self, model, inputs, layers)
        calls.append(states[0].dtype)
        if states[0].dtype in dtypes:
            hit = (inputs["input_ids"] == w_id).any(dim=1)
            for s in states:
                if value is not None:
                    s[hit] = value
                else:
                    s[hit] *= scale
        return states

    monkeypatch.setattr(family_class, "hidden_states", hidden_states)
    return calls


def _read(path, kind="per_residue") -> dict[str, np.ndarray]:
    with EmbeddingsReader(path) as reader:
        return {k: np.asarray(reader.get(k, kind)) for k in reader.ids(kind)}


def _embedder(bert_dir, dtype):
    return TransformerEmbedder(load_model(str(bert_dir), device="cpu", dtype=dtype), (-1,), "cpu", dtype)


def test_half_precision_overflow_is_embedded_again_in_float32_and_the_weights_come_back(tmp_path, bert_dir,
                                                                                         monkeypatch, w_id):
    options = EmbedOptions(model=str(bert_dir), device="cpu", max_tokens=10_000, per_protein=True)
    plain = _embedder(bert_dir, "bfloat16")
    ref = embed(SMALL, tmp_path / "ref.h5", options, embedder=plain).output
    poisoned = _embedder(bert_dir, "bfloat16")
    weights = {k: v.clone() for k, v in poisoned.model.state_dict().items()}
    calls = _misbehave(monkeypatch, w_id, {torch.bfloat16}, value=float("nan"))
    summary = embed(SMALL, tmp_path / "out.h5", options, embedder=poisoned)
    assert summary.failed == {}
    assert calls == [torch.bfloat16, torch.float32]  # one batch, then the one protein again
    assert {k: v.dtype for k, v in poisoned.model.state_dict().items()} == {k: v.dtype for k, v in weights.items()}
    assert all(torch.equal(v, weights[k]) for k, v in poisoned.model.state_dict().items())

    seq = dict((r.id, r.sequence) for r in read_fasta(SMALL))[POISONED]
    # The retry computes in float32 with the weights as loaded: their bfloat16 values.
    loaded = load_model(str(bert_dir), device="cpu", dtype="bfloat16")
    exact = TransformerEmbedder(loaded, (-1,), "cpu", "float32").embed_batch([seq])[0][0]
    for kind in ("per_residue", "per_protein"):
        got, want = _read(summary.output, kind), _read(ref, kind)
        assert set(got) == set(want)
        for k in want:
            if k != POISONED:
                np.testing.assert_array_equal(got[k], want[k])  # the rest of the batch: bfloat16 as before
        assert np.isfinite(got[POISONED]).all()
    np.testing.assert_allclose(_read(summary.output)[POISONED], exact, atol=1e-5, rtol=0)
    import h5py

    with h5py.File(summary.output) as f:
        computed = {ds.attrs["id"]: ds.attrs.get("computed") for kind in ("per_residue", "per_protein")
                    for ds in f[kind].values()}
    assert {k: v for k, v in computed.items() if v} == {POISONED: "float32 on cpu (NaN or infinity in bfloat16)"}
    np.testing.assert_allclose(_read(summary.output, "per_protein")[POISONED], exact.mean(axis=0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kinds", [(), ("--per-protein",)])
def test_nan_in_float32_too_is_a_recorded_failure_never_written(run_cli, tmp_path, bert_dir, monkeypatch, w_id, kinds):
    _misbehave(monkeypatch, w_id, {torch.float32}, value=float("nan"))
    out = tmp_path / "out.h5"
    result = run_cli("embed", SMALL, "-m", bert_dir, "-o", out, *kinds)
    assert result.exit_code == 0, result.stderr
    assert f"{POISONED}: NaN or infinity in the model's float32 output" in result.stderr
    with EmbeddingsReader(out) as reader:
        assert reader.failed() == {POISONED: "NaN or infinity in the model's float32 output"}
        kind = "per_protein" if kinds else "per_residue"
        assert POISONED not in reader.ids(kind) and len(reader.ids(kind)) == 5
        assert all(np.isfinite(np.asarray(reader.get(k, kind))).all() for k in reader.ids(kind))


def test_nan_in_bfloat16_and_float32_says_both(tmp_path, bert_dir, monkeypatch, w_id):
    _misbehave(monkeypatch, w_id, {torch.bfloat16, torch.float32}, value=float("inf"))
    summary = embed(SMALL, tmp_path / "out.h5", EmbedOptions(model=str(bert_dir), device="cpu"),
                    embedder=_embedder(bert_dir, "bfloat16"))
    assert summary.failed == {POISONED: "NaN or infinity in the model's bfloat16 output, and in float32 too"}


def test_out_of_memory_while_casting_to_float32_is_a_failure_and_the_model_stays(tmp_path, bert_dir, monkeypatch, w_id):
    poisoned = _embedder(bert_dir, "bfloat16")
    _misbehave(monkeypatch, w_id, {torch.bfloat16}, value=float("nan"))
    from protrans_cli import embedders

    real_cast = embedders.cast_weights

    def cast(model, dtype, **kwargs):
        if dtype is torch.float32:
            real_cast(model.encoder, torch.float32)  # half-way through, as an allocation failure would leave it
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        return real_cast(model, dtype, **kwargs)

    monkeypatch.setattr(embedders, "cast_weights", cast)
    summary = embed(SMALL, tmp_path / "out.h5", EmbedOptions(model=str(bert_dir), device="cpu"), embedder=poisoned)
    assert summary.failed == {POISONED: "NaN or infinity in the model's bfloat16 output; "
                                        "out of memory for a float32 retry"}
    assert {p.dtype for p in poisoned.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("kinds", [(), ("--per-protein",), ("--per-residue", "--per-protein")])
def test_values_beyond_float16_fail_in_float16_storage_and_are_kept_in_float32(run_cli, tmp_path, bert_dir,
                                                                               monkeypatch, w_id, kinds):
    _misbehave(monkeypatch, w_id, {torch.float32}, scale=1e6)
    half, full = tmp_path / "half.h5", tmp_path / "full.h5"
    result = run_cli("embed", SMALL, "-m", bert_dir, "-o", half, "--storage-dtype", "float16", *kinds)
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(half) as reader:
        assert list(reader.failed()) == [POISONED]
        reason = reader.failed()[POISONED]
    assert reason.startswith("values beyond float16's range (largest magnitude ")
    assert reason.endswith("; --storage-dtype float32 keeps them)")
    assert run_cli("embed", SMALL, "-m", bert_dir, "-o", full, *kinds).exit_code == 0
    with EmbeddingsReader(full) as reader:
        assert reader.failed() == {}
        kind = "per_protein" if kinds == ("--per-protein",) else "per_residue"
        assert np.abs(np.asarray(reader.get(POISONED, kind))).max() > 65504


def test_chunked_windows_beyond_float16_fail_once_stitched(run_cli, tmp_path, bert_dir, monkeypatch, w_id):
    _misbehave(monkeypatch, w_id, {torch.float32}, scale=1e6)
    out = tmp_path / "out.h5"
    result = run_cli("embed", SMALL, "-m", bert_dir, "-o", out, "--storage-dtype", "float16",
                     "--max-length", "8", "--long-policy", "chunk", "--chunk-overlap", "2")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as reader:
        assert list(reader.failed()) == [POISONED]
        assert reader.failed()[POISONED].startswith("values beyond float16's range")
        assert all(np.isfinite(np.asarray(reader.get(k, "per_residue"))).all() for k in reader.ids("per_residue"))


def test_a_chunked_protein_says_how_many_of_its_windows_were_recomputed(tmp_path, bert_dir, monkeypatch, w_id):
    # one window overflowing in bfloat16 and computed again in float32: the protein's `computed`
    # said float32 as if all its rows were
    import h5py

    from protrans_cli.embed import chunk_windows

    fasta = tmp_path / "long.fa"
    fasta.write_text(">long\nMWTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n")  # the W in the first window only
    windows = chunk_windows(33, 12, 4)
    assert sum(1 for a, b in windows if a <= 1 < b) == 1 and len(windows) > 2
    _misbehave(monkeypatch, w_id, {torch.bfloat16}, value=float("nan"))
    options = EmbedOptions(model=str(bert_dir), device="cpu", max_length=12, long_policy="chunk", chunk_overlap=4)
    summary = embed(fasta, tmp_path / "out.h5", options, embedder=_embedder(bert_dir, "bfloat16"))
    assert summary.failed == {}
    with h5py.File(summary.output) as f:
        assert f["per_residue"]["long"].attrs["computed"] == (
            f"float32 on cpu (NaN or infinity in bfloat16) (1 of {len(windows)} windows)")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return _tiny_dir(tmp_path_factory, "t5")


def _overflowing_t5(embedder, w_id) -> None:
    """In the first block, a W token's residual stream sits at float16's largest value in two
    dimensions and the attention output pushes one of them past it (+-1000 x the sum of the
    values): an infinity, for the proteins with a W only, that T5's block clamps to 64504."""
    with torch.no_grad():
        embedder.model.shared.weight[w_id, :2] = 65504.0
        out = embedder.model.encoder.block[0].layer[0].SelfAttention.o.weight
        out[0], out[1] = 1000.0, -1000.0


def test_t5_in_float16_runs_every_module_in_float16_and_redoes_an_overflow_in_float32(tmp_path, t5_dir):
    """transformers keeps T5's `wo` in float32 under float16 (an eighth of the rate on a T4);
    protrans runs it in float16 as the ProtTrans script does, and an infinity inside any layer,
    which T5's own code clamps to finite, wrong numbers (so no check of the output saw it, in
    the attention output before this too), sends that protein alone to the float32 retry."""
    from transformers import AutoTokenizer

    w_id = AutoTokenizer.from_pretrained(str(t5_dir)).convert_tokens_to_ids("W")
    options = EmbedOptions(model=str(t5_dir), device="cpu", max_tokens=10_000, per_protein=True)
    half = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float16")
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}
    exact = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float32")
    # (from_pretrained left `wo` in float32 at the checkpoint's precision: the float16 weights here)
    exact.model.load_state_dict({k: v.float() for k, v in half.model.state_dict().items()})
    ref = embed(SMALL, tmp_path / "ref.h5", options, embedder=exact).output
    plain = embed(SMALL, tmp_path / "half.h5", options, embedder=half).output
    got, want = _read(plain), _read(ref)
    for k in want:  # every module in float16: float16's rounding, no more
        np.testing.assert_allclose(got[k], want[k], atol=2e-2, rtol=0)

    _overflowing_t5(half, w_id)
    _overflowing_t5(exact, w_id)
    ref = embed(SMALL, tmp_path / "ref2.h5", options, embedder=exact).output
    summary = embed(SMALL, tmp_path / "out.h5", options, embedder=half)
    assert summary.failed == {}
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}  # cast back after the retry
    import h5py

    with h5py.File(summary.output) as f:
        computed = {ds.attrs["id"]: ds.attrs.get("computed") for ds in f["per_residue"].values()}
    assert {k: v for k, v in computed.items() if v} == {POISONED: "float32 on cpu (float16 overflowed inside the model)"}
    seq = dict((r.id, r.sequence) for r in read_fasta(SMALL))[POISONED]
    alone = exact.embed_batch([seq])[0][0]  # (the retry's batch: that protein alone)
    got, want = _read(summary.output), _read(ref)
    np.testing.assert_allclose(got[POISONED], alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[POISONED], want[POISONED], atol=1e-4, rtol=0)
    for k in set(want) - {POISONED}:
        np.testing.assert_allclose(got[k], want[k], atol=2e-2, rtol=0)
    for kind in ("per_residue", "per_protein"):
        assert all(np.isfinite(v).all() for v in _read(summary.output, kind).values())


@pytest.mark.slow
def test_t5_float16_overflow_is_seen_inside_compiled_blocks(t5_dir):
    """Inside a compiled block inductor computes in float32 and T5's clamp saturates at float16's
    largest value, so no infinity ever appears: the guard looks for that value too (about 30 s
    of compilation on a CPU)."""
    from transformers import AutoTokenizer

    w_id = AutoTokenizer.from_pretrained(str(t5_dir)).convert_tokens_to_ids("W")
    half = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float16",
                               compile=True)
    sequences = ["MKTAAGHKL", "MKTWAAGHKLWPP", "MKV"]
    assert all(isinstance(r, tuple) for r in half.embed_arrays(sequences))
    _overflowing_t5(half, w_id)
    assert [isinstance(r, tuple) for r in half.embed_arrays(sequences)] == [True, False, True]


def test_embedders_built_on_one_t5_model_share_one_overflow_guard(t5_dir):
    loaded = load_model(str(t5_dir), device="cpu", dtype="float16")
    first = TransformerEmbedder(loaded, (-1,), "cpu", "float16")
    second = TransformerEmbedder(loaded, (-2,), "cpu", "float16")
    assert first._overflow_guard is second._overflow_guard is not None
    assert len(loaded.model.encoder.block[0].layer[0]._forward_hooks) == 1


def test_t5_float16_embed_batch_gives_the_float32_numbers_where_float16_overflowed(t5_dir):
    """embed_batch (the library call, no NaN check) returned T5's clamped, wrong rows for a
    protein whose float16 arithmetic overflowed; now those proteins come from float32."""
    from transformers import AutoTokenizer

    w_id = AutoTokenizer.from_pretrained(str(t5_dir)).convert_tokens_to_ids("W")
    half = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float16")
    exact = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float32")
    exact.model.load_state_dict({k: v.float() for k, v in half.model.state_dict().items()})
    _overflowing_t5(half, w_id)
    _overflowing_t5(exact, w_id)
    sequences = ["MKTAAGHKL", "MKTWAAGHKLWPP", "MKV"]
    got = half.embed_batch(sequences)
    np.testing.assert_allclose(got[1], exact.embed_batch(sequences[1:2])[0], atol=1e-5, rtol=0)
    for i in (0, 2):  # float16 (the poisoned weights magnify its rounding)
        np.testing.assert_allclose(got[i], exact.embed_batch([sequences[i]])[0], atol=0.1, rtol=0)
    assert {p.dtype for p in half.model.parameters()} == {torch.float16}


def test_t5_float16_overflow_at_padding_alone_sends_no_protein_to_float32(t5_dir):
    # the padding of a shorter protein's row overflowing (its pad token poisoned) is in no
    # protein's rows: the guard counts the tokens of proteins only, and every protein stays float16
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(str(t5_dir)).pad_token_id
    half = TransformerEmbedder(load_model(str(t5_dir), device="cpu", dtype="float16"), (-1,), "cpu", "float16")
    sequences = ["MKTAAGHKL", "MKTWAAGHKLWPP", "MKV"]
    _overflowing_t5(half, pad_id)
    after = half.embed_arrays(sequences)
    assert [isinstance(r, tuple) for r in after] == [True, True, True]
    assert all(np.isfinite(r[0]).all() for r in after)


def test_two_threads_on_one_float16_t5_each_see_their_own_overflows(t5_dir):
    """The guard's armed state was one per model: two threads embedding with one model crashed
    ("size of tensor a (2) must match ... (4)") or lost each other's overflows."""
    import threading

    from transformers import AutoTokenizer

    w_id = AutoTokenizer.from_pretrained(str(t5_dir)).convert_tokens_to_ids("W")
    loaded = load_model(str(t5_dir), device="cpu", dtype="float16")
    first = TransformerEmbedder(loaded, (-1,), "cpu", "float16")
    second = TransformerEmbedder(loaded, (-1,), "cpu", "float16")
    _overflowing_t5(first, w_id)  # (one model: both see the poisoned weights)
    work = {first: (["MKTWAAGHKLW", "MKV"], [False, True]),
            second: (["MKTAAGH", "MKVW", "GGS", "AAAAW"], [True, False, True, False])}
    errors, seen = [], {}

    def run(embedder):
        sequences, finite = work[embedder]
        try:
            for _ in range(15):
                got = [isinstance(r, tuple) for r in embedder.embed_arrays(sequences)]
                seen.setdefault(embedder, set()).add(tuple(got))
                assert got == finite, got
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
