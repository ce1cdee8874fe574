"""`protrans embed --attention flex`: the T5 encoder's self-attention through FlexAttention
(models/t5.py), compared with the plain transformers forward pass of each protein alone.

The tiny T5's relative-attention-bias weights are re-drawn with std 1.0 (HF initialises them
small), so that a wrong bias (a flipped relative position, a missing table) moves the rows far
beyond the 1e-5 tolerance: `test_a_wrong_bias_table_is_caught` checks that it does."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

torch = pytest.importorskip("torch")
pytest.importorskip("torch.nn.attention.flex_attention")
from protrans_cli.models import FAMILIES  # noqa: E402
from protrans_cli.models import t5 as t5_module  # noqa: E402

T5 = FAMILIES["t5"]
# Lengths across the exact and the logarithmic buckets and past max_distance (128), in one
# batch with padding; X/U/Z/O/B and lower case included.
SEQUENCES = {
    "long": ("MKTAYIAKQRQISFVKSHFSRQ" * 7)[:150],
    "mid": "ACDEFGHIKLMNPQRSTVWY" * 2,
    "rare": "MKXUZOBA",
    "one": "M",
    "lower": "mktayiakqrqisfvk",
}


def _t5_directory(path, **overrides):
    torch.manual_seed(0)
    tokenizer = T5.build_tokenizer()
    config = T5.build_config("tiny", tokenizer, **overrides)
    model = T5.pretraining_model(config).eval()
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0.0, 1.0)
    T5.save_pretrained(model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return _t5_directory(tmp_path_factory.mktemp("tiny_t5_flex"))


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("flex_fasta") / "p.fa"
    path.write_text("".join(f">{k}\n{v}\n" for k, v in SEQUENCES.items()))
    return path


def reference(model_dir, sequence: str, layers=(-1,)) -> np.ndarray:
    """(n_layers, L, D): plain transformers, the protein alone (no padding); T5 puts the
    residues first and one `</s>` after them."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = T5EncoderModel.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    letters = sequence.upper().translate(str.maketrans("UZOB", "XXXX"))
    ids = tokenizer(" ".join(letters), return_tensors="pt")["input_ids"]
    assert ids.shape[1] == len(letters) + 1
    with torch.no_grad():
        out = encoder(input_ids=ids, output_hidden_states=True)
    states = [out.hidden_states[i] for i in layers]
    return torch.stack([s[0, :len(letters)] for s in states]).numpy()


def _read(path, kind=PER_RESIDUE):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}


def _embedder(model_dir, attention="flex", layers=(-1,)):
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    return TransformerEmbedder(load_model(str(model_dir), device="cpu", dtype="float32"), layers, "cpu", "float32",
                               attention=attention)


def test_flex_rows_equal_the_plain_forward_of_each_protein(tiny_t5):
    """One padded batch of five lengths, two layers: every residue row equals the plain forward
    pass of its protein alone."""
    embedder = _embedder(tiny_t5, layers=(-1, -2))
    assert t5_module.uses_flex_attention(embedder.model)
    seqs = list(SEQUENCES.values())
    rows = embedder.embed_batch(seqs)
    for seq, got in zip(seqs, rows):
        ref = reference(tiny_t5, seq, layers=(-1, -2))
        assert got.shape == ref.shape == (2, len(seq), 32)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_a_wrong_bias_table_is_caught(tiny_t5, monkeypatch):
    """What makes the comparison meaningful: with the relative positions mirrored (j - i read as
    i - j) or no bias at all, the rows move far beyond the tolerance."""
    seqs = [SEQUENCES["long"], SEQUENCES["mid"]]
    refs = [reference(tiny_t5, s)[0] for s in seqs]
    right = t5_module.relative_bias_table
    for wrong in (lambda *a: right(*a).flip(-1), lambda *a: torch.zeros_like(right(*a))):
        monkeypatch.setattr(t5_module, "relative_bias_table", wrong)
        rows = _embedder(tiny_t5).embed_batch(seqs)
        for got, ref in zip(rows, refs):
            assert np.abs(got[0] - ref).max() > 1e-2
    monkeypatch.setattr(t5_module, "relative_bias_table", right)
    for got, ref in zip(_embedder(tiny_t5).embed_batch(seqs), refs):
        np.testing.assert_allclose(got[0], ref, atol=1e-5, rtol=0)


def test_the_bias_table_is_hf_compute_bias(tiny_t5):
    """Column clamp(j - i, -M, M) + M of the table is HF's own position bias for query i and key j
    (M = max_distance; 140 positions reach past it)."""
    from transformers import T5EncoderModel

    encoder = T5EncoderModel.from_pretrained(str(tiny_t5), use_kernels=False).eval()
    attention = encoder.encoder.block[0].layer[0].SelfAttention
    length = 140
    table = t5_module.relative_bias_table(attention, "cpu")  # (H, 2M + 1)
    reach = attention.relative_attention_max_distance
    assert length > reach and table.shape[1] == 2 * reach + 1
    with torch.no_grad():
        dense = attention.compute_bias(length, length)[0]  # (H, L, L)
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    torch.testing.assert_close(table[:, (j - i).clamp(-reach, reach) + reach], dense, rtol=0, atol=0)


def test_padding_rows_and_an_empty_row_stay_finite(tiny_t5):
    """Padded query rows hold finite numbers; a row whose mask is all zeros (every key masked)
    gives no NaN, and the other proteins' rows do not change with it."""
    from protrans_cli.models import load_model

    loaded = load_model(str(tiny_t5), device="cpu", dtype="float32")
    model = loaded.model.eval()
    t5_module.use_flex_attention(model)
    inputs, mask = T5.encode(loaded.tokenizer, [SEQUENCES["mid"], SEQUENCES["rare"]])
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        empty = {k: torch.cat([v, v[1:]]) for k, v in inputs.items()}
        empty["attention_mask"][2] = 0
        out = model(**empty).last_hidden_state
    assert torch.isfinite(plain).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out[:2], plain, rtol=0, atol=1e-6)


def test_a_copied_model_keeps_flex_on_its_own_modules(tiny_t5):
    """The CPU twin (--cpu-fallback) is a deepcopy: its layers run flex on its own weights."""
    embedder = _embedder(tiny_t5)
    twin = copy.deepcopy(embedder.model)
    assert t5_module.uses_flex_attention(twin)
    attention = twin.encoder.block[1].layer[0].SelfAttention
    assert attention.forward.__self__ is attention
    assert twin.encoder._protrans_flex.bias_module is twin.encoder.block[0].layer[0].SelfAttention
    # one state for the copy's stack and every layer (the copy's, not the original's)
    states = {id(b.layer[0].SelfAttention._protrans_flex) for b in twin.encoder.block}
    assert states == {id(twin.encoder._protrans_flex)} != {id(embedder.model.encoder._protrans_flex)}
    assert list(twin.state_dict()) == list(embedder.model.state_dict())  # nothing registered
    with torch.no_grad():
        twin.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.mul_(2)
    seq = SEQUENCES["mid"]
    inputs, _ = T5.encode(embedder.tokenizer, [seq])
    with torch.no_grad():
        a, b = embedder.model(**inputs).last_hidden_state, twin(**inputs).last_hidden_state
    assert (a - b).abs().max() > 1e-3  # the twin reads its own (changed) bias
    np.testing.assert_allclose(a[0, :len(seq)].numpy(), reference(tiny_t5, seq)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_the_cpu_twin_of_a_flex_embedder_runs_the_models_own_attention(tiny_t5, monkeypatch, packed):
    """--cpu-fallback's twin drops flex (eager on the CPU: tens of times slower than the model's
    own attention there) and gives the same rows; the GPU embedder keeps flex. A packed flex
    embedder's twin pads its batches (its model has no segment mask any more). The twin is built
    the way `on_cpu` builds it, with the moves between devices left out (no GPU here)."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(str(tiny_t5), device="cpu", dtype="float32"), (-1,), "cpu",
                                   "float32", attention="flex", packed=packed)
    monkeypatch.setattr(embedder, "device", "cuda:0")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # every module stays where it is
    twin = TransformerEmbedder.on_cpu(embedder)
    assert twin is not None and twin.attention == "sdpa" and embedder.attention == "flex"
    assert not t5_module.uses_flex_attention(twin.model) and t5_module.uses_flex_attention(embedder.model)
    assert not twin.packed and embedder.packed == packed
    monkeypatch.setattr(t5_module, "_flex_self_attention", None)  # the twin never calls it
    seq = SEQUENCES["long"]
    np.testing.assert_allclose(twin.embed_batch([seq])[0][0], reference(tiny_t5, seq)[0], atol=1e-5, rtol=0)


def test_cli_flex_file_equals_the_default_and_records_it(run_cli, tmp_path, tiny_t5, fasta):
    """Through the real CLI, batched with padding, two layers, per-residue and per-protein: the
    same arrays as the default attention and as the reference; the file says which ran."""
    common = ["-m", tiny_t5, "--device", "cpu", "-j", "1", "--max-tokens", "400", "--layer", "-1", "--layer", "-2"]
    flex, sdpa = tmp_path / "flex.h5", tmp_path / "sdpa.h5"
    result_flex = run_cli("embed", fasta, "-o", flex, "--attention", "flex", *common)
    assert result_flex.exit_code == 0, result_flex.stderr
    result = run_cli("embed", fasta, "-o", sdpa, *common)
    assert result.exit_code == 0, result.stderr
    got, base = _read(flex), _read(sdpa)
    got_prot, base_prot = _read(flex, PER_PROTEIN), _read(sdpa, PER_PROTEIN)
    assert sorted(got) == sorted(SEQUENCES)
    for name, seq in SEQUENCES.items():
        ref = reference(tiny_t5, seq, layers=(-1, -2))
        assert got[name].shape == ref.shape
        np.testing.assert_allclose(got[name], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[name], base[name], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_prot[name], base_prot[name], atol=1e-5, rtol=0)
    with EmbeddingsReader(flex) as r:
        assert r.attrs["attention"] == "flex"
    with EmbeddingsReader(sdpa) as r:
        assert r.attrs["attention"] == "sdpa"
    # on the CPU flex is correct but not fast: said once, on stderr
    warned = [line for line in result_flex.stderr.splitlines() if "FlexAttention runs uncompiled" in line]
    assert len(warned) == 1 and "--attention flex on cpu" in warned[0]
    assert "FlexAttention" not in result.stderr


def test_flex_is_refused_for_other_families_and_with_compile(run_cli, tmp_path, tiny_t5, fasta):
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import UsageError

    bert = tmp_path / "bert"
    family = FAMILIES["bert"]
    tokenizer = family.build_tokenizer()
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)).eval(), tokenizer, bert)
    out = tmp_path / "x.h5"
    result = run_cli("embed", fasta, "-m", bert, "-o", out, "--device", "cpu", "--attention", "flex")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "bert family" in result.stderr and "--attention flex" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu", "--attention", "flex", "--compile")
    assert result.exit_code == 2 and "--attention flex and --compile cannot be combined" in result.stderr
    # T5 packs under flex only: without it --packing says how
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu", "--packing")
    assert result.exit_code == 2 and "does not support packing" in result.stderr
    assert "--attention flex" in result.stderr and not out.exists()
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5", "--attention", "flex")
    assert result.exit_code == 0 and "--attention flex ignored" in result.stderr
    with pytest.raises(UsageError, match="^attention must be one of auto, sdpa, flex, got 'Flex'$"):
        embed(fasta, tmp_path / "y.h5", EmbedOptions(model=str(tiny_t5), attention="Flex", device="cpu"))


def _segments(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))


@pytest.mark.parametrize("block", [4, 16, 128])
def test_the_segment_block_mask_is_create_block_masks(block):
    """The packed row's block mask, built from segment boundaries, is the one create_block_mask
    finds by evaluating `same segment` over every pair (which a 32000-token row cannot afford):
    the same blocks, the same full blocks, both directions (the backward pass's q blocks).
    Eager flex (the CPU) applies the mask function to every pair and never reads the blocks, so
    this is what checks the blocks the GPU kernel visits."""
    from torch.nn.attention.flex_attention import create_block_mask

    rng = np.random.default_rng(block)
    cases = [[1], [block], [block, block], [3 * block + 1], [1, 1, 1], [block - 1, 2, block + 1, 7]]
    cases += [list(rng.integers(1, 3 * block, size=rng.integers(1, 9))) for _ in range(40)]
    for lengths in cases:
        seg = _segments(lengths)
        total = int(seg.numel())
        mine = t5_module.segment_block_mask(seg, block)
        ref = create_block_mask(lambda b, h, q, k: seg[q] == seg[k], 1, 1, total, total, device="cpu",
                                BLOCK_SIZE=block)
        assert torch.equal(mine.to_dense(), ref.to_dense()), lengths
        for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
            assert torch.equal(getattr(mine, name), getattr(ref, name)), (name, lengths)
        for counts, indices in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
            for i, n in enumerate(getattr(mine, counts)[0, 0].tolist()):
                assert sorted(getattr(mine, indices)[0, 0, i, :n].tolist()) == \
                    sorted(getattr(ref, indices)[0, 0, i, :n].tolist()), (indices, lengths)
    # a long row of short proteins: the kernel visits a thin band, not the whole square
    seg = _segments([300] * 100)
    assert t5_module.segment_block_mask(seg).sparsity() > 95


def test_packed_flex_rows_equal_the_plain_forward_of_each_protein(tiny_t5):
    """--packing under flex: the five proteins back to back in one row (no padding between them,
    the bias read at key - query inside each protein) give every protein its own rows and means,
    two layers."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(str(tiny_t5), device="cpu", dtype="float32"), (-1, -2), "cpu",
                                   "float32", attention="flex", packed=True)
    assert embedder.packed and embedder.attention == "flex"
    seqs = list(SEQUENCES.values())
    pairs = embedder.embed_arrays(seqs, rows=True, means=True)
    for seq, (rows, mean) in zip(seqs, pairs):
        ref = reference(tiny_t5, seq, layers=(-1, -2))
        assert rows.shape == ref.shape
        np.testing.assert_allclose(rows, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mean, ref.mean(axis=1), atol=1e-5, rtol=0)


def test_packed_flex_without_the_segment_mask_is_caught(tiny_t5, monkeypatch):
    """What makes the packed comparison meaningful: with attention let across proteins (every key
    of the row visible), the rows move far beyond the tolerance."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    seqs = [SEQUENCES["long"], SEQUENCES["mid"]]
    monkeypatch.setattr(t5_module, "segment_block_mask", lambda seg, block_size=128: None)
    embedder = TransformerEmbedder(load_model(str(tiny_t5), device="cpu", dtype="float32"), (-1,), "cpu",
                                   "float32", attention="flex", packed=True)
    for seq, got in zip(seqs, embedder.embed_batch(seqs)):
        assert np.abs(got[0] - reference(tiny_t5, seq)[0]).max() > 1e-2


def test_cli_packed_flex_file_equals_the_padded_one(run_cli, tmp_path, tiny_t5, fasta):
    """`--attention flex --packing` through the CLI: the same arrays as padded flex batches; the
    file records both settings."""
    common = ["-m", tiny_t5, "--device", "cpu", "-j", "1", "--max-tokens", "400", "--attention", "flex"]
    packed, padded = tmp_path / "packed.h5", tmp_path / "padded.h5"
    result = run_cli("embed", fasta, "-o", packed, "--packing", *common)
    assert result.exit_code == 0, result.stderr
    assert run_cli("embed", fasta, "-o", padded, *common).exit_code == 0
    got, base = _read(packed), _read(padded)
    assert sorted(got) == sorted(base) == sorted(SEQUENCES)
    for name in SEQUENCES:
        np.testing.assert_allclose(got[name], base[name], atol=1e-5, rtol=0)
    with EmbeddingsReader(packed) as r:
        assert r.attrs["attention"] == "flex" and bool(r.attrs["packing"])


def test_a_model_of_another_layout_is_a_clear_error():
    from transformers import BertConfig, BertModel

    from protrans_cli.errors import ModelError

    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ModelError, match="no encoder.block"):
        t5_module.use_flex_attention(model)


def test_resume_may_switch_the_attention(tmp_path, tiny_t5, fasta):
    """attention is a run setting (like packing): a file begun with sdpa is finished with flex,
    and its runs list says so."""
    import json

    import h5py

    from protrans_cli.embed import EmbedOptions, embed

    out, part = tmp_path / "r.h5", tmp_path / "part.fa"
    part.write_text("".join(f">{k}\n{v}\n" for k, v in list(SEQUENCES.items())[:2]))
    embed(part, out, EmbedOptions(model=str(tiny_t5), device="cpu", command_line="first"))
    embed(fasta, out, EmbedOptions(model=str(tiny_t5), device="cpu", attention="flex", resume=True,
                                   command_line="second"))
    with h5py.File(out) as f:
        assert [r.get("attention") for r in json.loads(f.attrs["runs"])] == ["sdpa", "flex"]
        assert f.attrs["attention"] == "flex" and len(f["per_residue"]) == len(SEQUENCES)


@pytest.mark.gpu
def test_flex_on_the_gpu_in_bf16_matches_the_fp32_reference(run_cli, tmp_path, fasta):
    """On a CUDA GPU flex runs the compiled Triton kernel (d_kv 16: Triton's smallest head
    size); bf16 rows match the fp32 plain forward pass by relative norm."""
    model = _t5_directory(tmp_path / "t5_dkv16", d_kv=16)
    out = tmp_path / "g.h5"
    result = run_cli("embed", fasta, "-m", model, "-o", out, "--attention", "flex", "--layer", "-1", "--layer", "-2")
    assert result.exit_code == 0, result.stderr
    assert t5_module.flex_attention_function("cuda") is not t5_module._eager_flex
    got = _read(out)
    with EmbeddingsReader(out) as r:
        assert r.attrs["attention"] == "flex" and r.attrs["compute_dtype"] in ("bfloat16", "float16")
    for name, seq in SEQUENCES.items():
        ref = reference(model, seq, layers=(-1, -2))
        assert got[name].shape == ref.shape
        assert np.linalg.norm(got[name] - ref) / np.linalg.norm(ref) < 2e-2, name


@pytest.mark.gpu
def test_packed_flex_on_the_gpu_matches_the_fp32_reference(tmp_path):
    """The compiled kernel over a packed row visits only the blocks of segment_block_mask: rows of
    proteins longer and shorter than a block, back to back, match the fp32 plain forward pass."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    model = _t5_directory(tmp_path / "t5_dkv16_packed", d_kv=16)
    embedder = TransformerEmbedder(load_model(str(model), device="cuda", dtype="bfloat16"), (-1,), "cuda",
                                   "bfloat16", attention="flex", packed=True)
    seqs = [SEQUENCES["long"] * 2, *SEQUENCES.values(), SEQUENCES["long"]]
    for seq, got in zip(seqs, embedder.embed_batch(seqs)):
        ref = reference(model, seq)
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2, seq[:10]


def test_an_sdpa_embedder_never_runs_flex_through_a_model_another_embedder_switched(tiny_t5):
    """The flex switch is made in place on the model: an embedder built for the default attention
    on the same loaded model (before or after the flex one) ran FlexAttention without a word, and
    its files recorded attention = "sdpa". It is refused instead, with what to do."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model

    seqs = [SEQUENCES["mid"], SEQUENCES["rare"]]
    loaded = load_model(str(tiny_t5), device="cpu", dtype="float32")
    pristine = copy.deepcopy(loaded.model)
    before = TransformerEmbedder(loaded, (-1,), "cpu", "float32")  # sdpa, built first
    before.embed_batch(seqs)
    flex = TransformerEmbedder(loaded, (-1,), "cpu", "float32", attention="flex")
    flex.embed_batch(seqs)
    with pytest.raises(UsageError, match="switched to FlexAttention"):
        before.embed_batch(seqs)
    with pytest.raises(UsageError, match="switched to FlexAttention"):
        TransformerEmbedder(loaded, (-1,), "cpu", "float32")  # sdpa, built after
    # On a copy of the model taken before the switch, as the message says, the two coexist.
    import dataclasses

    plain = TransformerEmbedder(dataclasses.replace(loaded, model=pristine), (-1,), "cpu", "float32")
    assert plain.attention == "sdpa" and not t5_module.uses_flex_attention(plain.model)
    for a, b in zip(plain.embed_batch(seqs), flex.embed_batch(seqs)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_a_kernel_the_compiler_cannot_build_is_one_line(run_cli, tmp_path, tiny_t5, fasta, monkeypatch):
    """On a machine whose compiler cannot build flex's kernel (no C or Triton compiler, a
    compiler bug), torch.compile's own traceback runs to screens of generated code: the CLI says
    it in one line with what to run instead, exit 1, and leaves no output file. The failure is
    torch.compile's own (a backend that raises, wrapped by dynamo as it wraps inductor's)."""
    from torch.nn.attention.flex_attention import flex_attention

    def broken(graph, example_inputs):
        raise RuntimeError("no working C compiler here\nsecond line of the compiler's output")

    monkeypatch.setattr(t5_module, "flex_attention_function",
                        lambda device: torch.compile(flex_attention, backend=broken, dynamic=True))
    out = tmp_path / "c.h5"
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu", "--attention", "flex")
    assert result.exit_code == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "torch.compile could not build a kernel (RuntimeError: no working C compiler here)" in last
    assert "--attention sdpa" in last and "--debug" in last
    assert "Traceback" not in result.stderr and "second line" not in result.stderr
    assert not out.exists()
    with pytest.raises(Exception, match="no working C compiler"):  # --debug: the compiler's own traceback
        run_cli("--debug", "embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu", "--attention", "flex",
                "--force")  # (the first run's resumable .partial is refused without --resume or --force)


def test_two_threads_on_one_flex_model_each_get_their_own_rows(tiny_t5, monkeypatch):
    """The mask of the forward pass under way lives with the thread that runs it: two threads
    embedding different batches with one flex model at the same time (held inside the first
    layer until both are there, so that the second has reset its pass before the first reads
    its own) each get the rows they get alone. With one pass for the model, the first thread
    read the second's mask: a shape error or other proteins' padding."""
    import threading

    embedder = _embedder(tiny_t5)
    batches = [[SEQUENCES["long"], SEQUENCES["one"]], [SEQUENCES["mid"], SEQUENCES["rare"], SEQUENCES["lower"]]]
    alone = [embedder.embed_batch(b) for b in batches]
    both_inside = threading.Barrier(2, timeout=30)
    right = t5_module.relative_bias_table

    def meet_then_build(*args):
        both_inside.wait()
        return right(*args)

    monkeypatch.setattr(t5_module, "relative_bias_table", meet_then_build)
    results, errors = [None, None], []

    def run(i):
        try:
            results[i] = embedder.embed_batch(batches[i])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    for got, ref in zip(results, alone):
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_the_compiled_score_mod_takes_no_shape_expression(tiny_t5, monkeypatch, packed):
    """What torch.compile(flex_attention, dynamic=True) hands the kernel besides q, k and v: the
    score_mod's and mask_mod's captured values, each a tensor or a plain size symbol. Inductor in
    torch 2.11 cannot lower an expression of sizes there (the relative-position bound `-M`, when
    it was a captured Python int: 'ShapeAsConstantBuffer' object has no attribute 'dtype' on an
    H200): checked on the traced graph, so on any machine. The graph then runs as traced
    (no inductor), and its rows still equal the plain forward pass."""
    import sympy
    from torch.nn.attention.flex_attention import flex_attention

    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    seen = []

    def capture(graph, example_inputs):
        for node in graph.graph.nodes:
            if node.op == "call_function" and "flex_attention" in str(node.target):
                seen.append([*node.args[7], *node.args[8]])  # score_mod's and mask_mod's captures
        return graph

    torch._dynamo.reset()
    monkeypatch.setattr(t5_module, "flex_attention_function",
                        lambda device: torch.compile(flex_attention, backend=capture, dynamic=True))
    embedder = TransformerEmbedder(load_model(str(tiny_t5), device="cpu", dtype="float32"), (-1,), "cpu",
                                   "float32", attention="flex", packed=packed)
    seqs = list(SEQUENCES.values())
    for batch in (seqs, seqs[1:4]):  # two shapes: the second runs the dynamic graph
        for seq, rows in zip(batch, embedder.embed_batch(batch)):
            np.testing.assert_allclose(rows, reference(tiny_t5, seq), atol=1e-5, rtol=0)
    assert seen
    for captures in seen:
        for arg in captures:
            value = arg.meta.get("example_value") if isinstance(arg, torch.fx.Node) else arg
            if isinstance(value, torch.SymInt):
                assert isinstance(value.node.expr, sympy.Symbol), f"a shape expression among the captures: {value}"
            else:
                assert isinstance(value, (torch.Tensor, int)), type(value)


def _broken_compiler(monkeypatch):
    """flex_attention compiled by a backend that raises, as a machine without a working
    compiler does (wrapped by dynamo as it wraps inductor's failures)."""
    from torch.nn.attention.flex_attention import flex_attention

    def broken(graph, example_inputs):
        raise RuntimeError("no working C compiler here")

    monkeypatch.setattr(t5_module, "flex_attention_function",
                        lambda device: torch.compile(flex_attention, backend=broken, dynamic=True))


def test_auto_attention_picks_flex_only_for_t5_on_a_bf16_cuda_gpu(monkeypatch):
    """embed's default (--attention auto) takes FlexAttention where it was measured faster: a T5
    model on a CUDA GPU in bfloat16, not with --compile; the model's own attention elsewhere."""
    from protrans_cli.embed import flex_by_default

    assert not flex_by_default(T5, "cpu", "float32")
    assert not flex_by_default(T5, "mps", "bfloat16")
    assert not flex_by_default(FAMILIES["bert"], "cuda", "bfloat16")
    assert not flex_by_default(T5, "cuda", "float16")      # (V100, T4: not measured)
    assert not flex_by_default(T5, "cuda", "bfloat16", compiled=True)
    # a faked GPU: the choice reads the compute capability and whether Triton is installed
    import importlib.util

    from protrans_cli import embed as embed_module

    capability = {"value": (9, 0)}
    triton = {"found": True}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if triton["found"] else None) if name == "triton"
                        else real_find_spec(name, *a))
    assert embed_module.flex_by_default(T5, "cuda", "bfloat16")
    assert embed_module.flex_by_default(T5, "cuda:1", "bfloat16")
    assert not embed_module.flex_by_default(T5, "cuda", "bfloat16", compiled=True)
    capability["value"] = (7, 5)  # a T4
    assert not embed_module.flex_by_default(T5, "cuda", "bfloat16")
    capability["value"] = (8, 0)
    assert embed_module.flex_by_default(T5, "cuda", "bfloat16")
    triton["found"] = False
    assert not embed_module.flex_by_default(T5, "cuda", "bfloat16")


def test_auto_attention_on_the_cpu_runs_the_models_own(run_cli, tmp_path, tiny_t5, fasta):
    out = tmp_path / "a.h5"
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    import h5py

    with h5py.File(out, "r") as f:
        assert f.attrs["attention"] == "sdpa"


def test_auto_attention_falls_back_when_flex_cannot_be_built(run_cli, tmp_path, tiny_t5, fasta, monkeypatch):
    """Where auto chose FlexAttention but torch.compile cannot build its kernel, embed says so in
    one warning and goes on with the model's own attention (padded batches: a T5 model packs
    only under flex): exit 0, the rows of the plain forward pass, attention = sdpa recorded. The
    kernel is built on a probe batch before the output is made."""
    import h5py

    from protrans_cli import embed as embed_module

    calls = []
    monkeypatch.setattr(embed_module, "flex_by_default", lambda *a, **k: calls.append(a) or True)
    monkeypatch.setattr(embed_module, "packing_by_default", lambda *a, **k: True)  # as on a GPU at 32000 tokens
    _broken_compiler(monkeypatch)
    out = tmp_path / "f.h5"
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", out, "--device", "cpu", "--per-residue")
    assert result.exit_code == 0, result.stderr
    assert calls
    warning = [line for line in result.stderr.splitlines() if "could not be built" in line]
    assert len(warning) == 1 and "RuntimeError: no working C compiler here" in warning[0], result.stderr
    assert "--attention sdpa" in warning[0] and "Traceback" not in result.stderr
    assert "--packing dropped" not in warning[0]  # (packing was the default's, not asked for)
    asked = tmp_path / "p.h5"
    result = run_cli("embed", fasta, "-m", tiny_t5, "-o", asked, "--device", "cpu", "--per-residue", "--packing")
    assert result.exit_code == 0, result.stderr
    assert "--packing dropped: T5 models pack only under FlexAttention" in result.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["attention"] == "sdpa"
    rows = _read(out)
    assert set(rows) == set(SEQUENCES)
    for key, seq in SEQUENCES.items():
        np.testing.assert_allclose(rows[key], reference(tiny_t5, seq)[0], atol=1e-5, rtol=0)


def test_an_explicit_flex_whose_kernel_fails_is_still_an_error(tiny_t5, monkeypatch):
    from protrans_cli.embed import EmbedOptions, build_embedder

    _broken_compiler(monkeypatch)
    with pytest.raises(Exception, match="no working C compiler"):
        build_embedder(EmbedOptions(model=str(tiny_t5), device="cpu", dtype="float32", attention="flex"))


def test_an_embedder_is_built_with_a_resolved_attention(tiny_t5):
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model

    with pytest.raises(UsageError, match="'auto' is embed's choice"):
        TransformerEmbedder(load_model(str(tiny_t5), device="cpu", dtype="float32"), (-1,), "cpu", "float32",
                            attention="auto")


def _count_flex_graphs(monkeypatch) -> list:
    """FlexAttention compiled with a backend that records each graph it is asked to build: the
    list it fills (a new graph after the warm-up is a compilation inside a timed run)."""
    from torch.nn.attention.flex_attention import flex_attention

    built = []

    def counting(graph, example_inputs):
        built.append(graph)
        return graph

    monkeypatch.setattr(t5_module, "flex_attention_function",
                        lambda device: torch.compile(flex_attention, backend=counting, dynamic=True))
    torch._dynamo.reset()
    return built


@pytest.mark.parametrize("packed", [False, True])
def test_the_probe_builds_every_graph_the_run_needs(tiny_t5, monkeypatch, packed):
    """Where the kernel builds, auto keeps FlexAttention (packed when packing is on), built on
    probe batches before the first real one, so that a kernel which cannot be built fails (or,
    under auto, falls back) before any output, and the run then compiles nothing more: batches
    of one to five proteins, padded or packed, of lengths from 1 to 300 residues meet no new
    compilation, and rows still equal the plain forward pass."""
    from protrans_cli import embed as embed_module
    from protrans_cli.embed import EmbedOptions, build_embedder

    monkeypatch.setattr(embed_module, "flex_by_default", lambda *a, **k: True)
    monkeypatch.setattr(embed_module, "packing_by_default", lambda *a, **k: packed)
    built = _count_flex_graphs(monkeypatch)
    embedder = build_embedder(EmbedOptions(model=str(tiny_t5), device="cpu", dtype="float32"))
    assert embedder.attention == "flex" and embedder.packed == packed
    after_probe = len(built)
    assert after_probe >= 1
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    for size in (1, 2, 3, 4, 5, 1, 2):
        for top in (1, 40, 129, 300):
            batch = ["".join(rng.choice(letters, int(rng.integers(1, top + 1)))) for _ in range(size)]
            embedder.embed_batch(batch)
    assert len(built) == after_probe, f"{len(built) - after_probe} compilations after the probe"
    seqs = list(SEQUENCES.values())
    for seq, rows in zip(seqs, embedder.embed_batch(seqs)):
        np.testing.assert_allclose(rows, reference(tiny_t5, seq), atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_embed_bench_flex_warm_up_builds_every_graph_its_timed_runs_need(monkeypatch, packed):
    """benchmarks/embed_bench.py's flex strategies are warmed up before their timed runs; their
    warm-up (batches under 128 tokens) built no graph of several blocks, and a padded flex run
    compiled one inside its first timed run (the GPU session's only one). Simulated here with
    a counting backend and the GPU's pad multiple of 8."""
    import importlib.util
    from pathlib import Path

    from protrans_cli.embedders import TransformerEmbedder

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "embed_bench.py"
    spec = importlib.util.spec_from_file_location("embed_bench_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    built = _count_flex_graphs(monkeypatch)
    loaded = bench.build_loaded("t5", "tiny", "cpu", "float32")
    embedder = TransformerEmbedder(loaded, (-1,), "cpu", "float32", attention="flex", packed=packed)
    embedder.pad_multiple = 8  # (a CUDA GPU's)
    rng = np.random.default_rng(1)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    bench._flex_warm_up(embedder, "".join(rng.choice(letters, 221)))
    warmed = len(built)
    for lengths in ((300, 250, 180), (400, 20), (260,), (500, 480, 470, 300)):
        embedder.embed_batch(["".join(rng.choice(letters, n)) for n in lengths])
    assert len(built) == warmed, f"{len(built) - warmed} compilations after the warm-up"
