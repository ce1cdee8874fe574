"""`protrans generate`: sampling against plain transformers forward passes.

The references: AutoModelForCausalLM over the whole prefix `<s> residues` without memory
(Transformer-XL), XLNetLMHeadModel with transformers' own prepare_inputs_for_generation
(XLNet), AutoModelForMaskedLM with a site masked (ESM-2): with --top-k 1 (greedy) the sampled
residue at each step is the argmax of the reference over the residues that may be drawn.
"""

from __future__ import annotations

import math
import shutil

import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_model  # noqa: E402

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def txl(tmp_path_factory):
    return save_tiny_model(tmp_path_factory, "transfo_xl")


@pytest.fixture(scope="module")
def xlnet(tmp_path_factory):
    return save_tiny_model(tmp_path_factory, "xlnet")


@pytest.fixture(scope="module")
def esm(tmp_path_factory):
    return save_tiny_model(tmp_path_factory, "esm")


def _records(text: str) -> list[tuple[str, str]]:
    lines = text.strip().splitlines()
    assert len(lines) % 2 == 0 and all(h.startswith(">") for h in lines[::2]), text
    return [(h[1:], s) for h, s in zip(lines[::2], lines[1::2])]


def _fields(header: str) -> dict:
    ident, *rest = header.split()
    return {"id": ident, **dict(f.split("=", 1) for f in rest)}


def _generate(output="-", **kw):
    from protrans_cli.generate import GenerateOptions, run_generate

    return run_generate(output, GenerateOptions(device="cpu", **kw), keep_records=True).records


# -- the filter and the draw ---------------------------------------------------------------------

def test_filter_masks_then_tempers_then_keeps_top_k_and_top_p():
    from protrans_cli.generate import filtered_log_probs

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0])
    allowed = torch.tensor([True, True, True, True, False])
    plain = filtered_log_probs(logits, allowed)
    want = torch.tensor([2.0, 1.0, 0.0, -1.0]).log_softmax(-1)
    assert torch.allclose(plain[:4], want) and plain[4] == -math.inf
    hot = filtered_log_probs(logits, allowed, temperature=2.0)
    assert torch.allclose(hot[:4], (torch.tensor([2.0, 1.0, 0.0, -1.0]) / 2).log_softmax(-1))
    top2 = filtered_log_probs(logits, allowed, top_k=2)
    assert torch.allclose(top2[:2], torch.tensor([2.0, 1.0]).log_softmax(-1)) and (top2[2:] == -math.inf).all()
    greedy = filtered_log_probs(logits, allowed, top_k=1)
    assert greedy[0] == 0 and (greedy[1:] == -math.inf).all()
    # probabilities of the allowed four: 0.644, 0.237, 0.087, 0.032: p = 0.7 keeps the first two
    # (0.644 < 0.7), p = 0.6 the first alone, p = 0.9 three (0.881 < 0.9)
    probs = torch.tensor([2.0, 1.0, 0.0, -1.0]).softmax(-1)
    for p, kept in ((0.6, 1), (0.7, 2), (0.9, 3), (1.0, 4)):
        got = filtered_log_probs(logits, allowed, top_p=p)
        assert ((got > -math.inf).sum()) == kept, (p, got)
        assert torch.allclose(got[:kept].exp(), probs[:kept] / probs[:kept].sum())
    # top-k, then top-p of what is left; a batch of rows
    both = filtered_log_probs(torch.stack([logits, logits.flip(0)]), allowed, top_k=3, top_p=0.7)
    assert ((both[0] > -math.inf).tolist()) == [True, True, False, False, False]
    # (row 1: 3, -1, 0, 1 allowed; top 3: 3, 1, 0, of which 3 alone holds 0.84 >= 0.7)
    assert ((both[1] > -math.inf).tolist()) == [True, False, False, False, False]


def test_draw_inverts_the_cumulative_distribution():
    from protrans_cli.generate import draw

    log_probs = torch.tensor([[math.log(0.25), -math.inf, math.log(0.75), -math.inf]])
    picks = [int(draw(log_probs, torch.tensor([u], dtype=torch.float64))[0]) for u in (0.0, 0.2, 0.26, 0.9, 0.999999)]
    assert picks == [0, 0, 2, 2, 2]
    # a large sample follows the distribution
    g = torch.Generator().manual_seed(0)
    many = draw(log_probs.expand(20000, 4), torch.rand(20000, generator=g, dtype=torch.float64))
    assert set(many.tolist()) == {0, 2} and abs(float((many == 0).double().mean()) - 0.25) < 0.015


# -- causal: Transformer-XL ----------------------------------------------------------------------

def _plain_txl(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # (protrans_cli.models, imported by save_tiny_model, registered the Transformer-XL classes)
    return AutoTokenizer.from_pretrained(str(model_dir)), AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()


def _greedy_reference(next_logits, tokenizer, end: int, max_length: int, min_length: int, prompt: str = ""):
    """Greedy decoding with a reference `next_logits(ids) -> (V,)` over the whole prefix each step:
    the argmax over the 20 canonical residues (and the end token once min_length residues are
    there). Returns (the residues, whether the end token came, the log-probabilities of the residues)."""
    letters = {tokenizer.convert_tokens_to_ids(c): c for c in STANDARD}
    seq, lps = prompt, []
    while len(seq) < max_length:
        logits = next_logits(seq)
        allowed = torch.full_like(logits, -math.inf)
        allowed[list(letters)] = 0
        if len(seq) >= min_length:
            allowed[end] = 0
        token = int((logits + allowed).argmax())
        if token == end:
            return seq, True, lps
        lps.append(float(logits.log_softmax(-1)[token]))
        seq += letters[token]
    return seq, False, lps


def test_transfo_xl_greedy_is_the_plain_forward_argmax_step_by_step(txl):
    """Past the tiny model's mem_len (32): its memory must keep the whole prefix during generation."""
    tokenizer, model = _plain_txl(txl)
    assert model.config.mem_len == 32
    bos, end = tokenizer.bos_token_id, tokenizer.eos_token_id

    def next_logits(seq):
        ids = torch.tensor([[bos] + tokenizer.convert_tokens_to_ids(list(seq))])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, -1]

    for prompt, min_length in (("", 45), ("MKTAY", 1)):
        want, ended, lps = _greedy_reference(next_logits, tokenizer, end, 45, min_length, prompt)
        records = _generate(model=str(txl), num_sequences=2, top_k=1, max_length=45, min_length=min_length,
                            prompt=prompt or None, batch_size=2)
        for r in records:
            assert r.sequence == want and r.end == ("stop" if ended else "max-length")
        # mean_log_prob: the plain forward's mean log p(residue | those before it), prompt included
        with torch.no_grad():
            ids = torch.tensor([[bos] + tokenizer.convert_tokens_to_ids(list(want))])
            lp = model(input_ids=ids).logits[0].log_softmax(-1)
        plain = [float(lp[t - 1, ids[0, t]]) for t in range(1, len(want) + 1)]
        assert records[0].mean_log_prob == pytest.approx(sum(plain) / len(want), abs=1e-4)
        assert plain[len(prompt):] == pytest.approx(lps, abs=1e-4)


def test_transfo_xl_memory_steps_equal_the_whole_prefix_forward(txl):
    from protrans_cli.generate import TransfoXLSteps

    _, model = _plain_txl(txl)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 24, (3, 50), generator=g)
    with torch.no_grad():
        whole = model(input_ids=ids).logits  # (3, 50, V)
    steps = TransfoXLSteps(model)
    got = [steps.start(ids[:, :5], "cpu")]
    for t in range(5, 50):
        got.append(steps.next(ids[:, :t + 1], ids[:, t], "cpu"))
    assert model.config.mem_len == 32
    assert torch.allclose(torch.stack(got[:-1], dim=1), whole[:, 4:49], atol=1e-4)
    assert torch.allclose(got[-1], whole[:, 49], atol=1e-4)


def test_transfo_xl_generation_leaves_the_configs_mem_len_alone(txl):
    """generate kept the whole memory by raising the shared model.config.mem_len for the length of
    the run (wrong for another thread using the model then, and left wrong by an interruption in
    between): every pass now asks for it (whole_memory=True) and the config reads 32 throughout,
    while the memory handed back grows past it."""
    from protrans_cli.generate import GenerateOptions, Sampler, causal_layout, prompt_log_prob, sample_causal
    from protrans_cli.models import load_model

    sampler = Sampler(load_model(str(txl), device="cpu", masked_lm=True),
                      GenerateOptions(model=str(txl), prompt="MKTAYIAKQRQISFVKSHFSRQ", max_length=45, min_length=45))
    model = sampler.model
    seen, memory = [], []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (module.config.mem_len, kwargs.get("whole_memory"))), with_kwargs=True)
    model.register_forward_hook(lambda module, args, out: memory.append(out.mems[0].shape[1]))
    before, _ = causal_layout(sampler)
    prompt = [sampler.scorer.token_id(c) for c in sampler.options.prompt]
    prompt_log_prob(sampler, before, prompt)
    records = sample_causal(sampler, [0, 1])
    assert [len(r.sequence) for r in records] == [45, 45]
    assert len(seen) > 20 and {mem_len for mem_len, _ in seen} == {32}, seen
    assert [whole for _, whole in seen[1:]] == [True] * (len(seen) - 1)  # (generation's passes)
    assert max(memory) == len(before) + 44 > 32  # (the whole prefix, past mem_len)
    assert model.config.mem_len == 32


def test_transfo_xl_prompt_log_prob_in_one_pass_is_the_plain_forwards(txl, monkeypatch):
    """A prompt past mem_len (32): its log-probability from one pass equals the sum of the plain
    forward's log p(residue | those before it) over its residues, each from a pass over that prefix
    alone (what a pass a residue computed), and the header's mean holds it whatever --batch-size."""
    from protrans_cli.generate import GenerateOptions, Sampler, causal_layout, prompt_log_prob
    from protrans_cli.models import load_model

    tokenizer, model = _plain_txl(txl)
    g = torch.Generator().manual_seed(7)
    prompt = "".join(STANDARD[i] for i in torch.randint(0, 20, (60,), generator=g))
    bos = tokenizer.bos_token_id
    tokens = tokenizer.convert_tokens_to_ids(list(prompt))
    want = 0.0
    for k, token in enumerate(tokens):
        with torch.no_grad():
            want += float(model(input_ids=torch.tensor([[bos] + tokens[:k]])).logits[0, -1].log_softmax(-1)[token])
    sampler = Sampler(load_model(str(txl), device="cpu", masked_lm=True), GenerateOptions(model=str(txl), prompt=prompt,
                                                                                          max_length=70))
    calls = []
    real = sampler.model.forward
    monkeypatch.setattr(sampler.model, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    before, _ = causal_layout(sampler)
    assert prompt_log_prob(sampler, before, tokens) == pytest.approx(want, abs=1e-4) and len(calls) == 1
    assert prompt_log_prob(sampler, before, []) == 0.0
    monkeypatch.undo()
    one, four = (_generate(model=str(txl), num_sequences=4, prompt=prompt, max_length=62, min_length=62,
                           batch_size=b) for b in (1, 4))
    assert [(r.sequence, r.mean_log_prob) for r in one] == [(r.sequence, r.mean_log_prob) for r in four]


def test_same_seed_same_sequences_whatever_the_batch_size(txl, esm):
    kw = dict(model=str(txl), num_sequences=5, max_length=30, temperature=1.5, top_p=0.95)
    one = [(r.id, r.sequence) for r in _generate(seed=7, batch_size=1, **kw)]
    five = [(r.id, r.sequence) for r in _generate(seed=7, batch_size=5, **kw)]
    three = [(r.id, r.sequence) for r in _generate(seed=7, batch_size=3, **kw)]
    other = [(r.id, r.sequence) for r in _generate(seed=8, batch_size=5, **kw)]
    assert one == five == three and one != other
    assert [(r.id, r.sequence) for r in _generate(seed=7, batch_size=2, **{**kw, "num_sequences": 2})] == one[:2]
    assert [i for i, _ in one] == [f"gen_{n:04d}" for n in range(1, 6)]
    kw = dict(model=str(esm), num_sequences=4, template="MKT____AYIAK__R", iterations=2)
    assert [r.sequence for r in _generate(seed=1, batch_size=1, **kw)] == \
        [r.sequence for r in _generate(seed=1, batch_size=4, **kw)]


def test_only_canonical_residues_unless_rare_are_allowed(txl, esm):
    # a flat distribution (temperature 50): the special tokens, X, U, Z, O and B are all likely
    for r in _generate(model=str(txl), num_sequences=8, max_length=60, temperature=50.0):
        assert set(r.sequence) <= set(STANDARD) and len(r.sequence) >= 1
    drawn = "".join(r.sequence for r in _generate(model=str(esm), num_sequences=8, template="_" * 40,
                                                  temperature=50.0, iterations=0))
    assert set(drawn) <= set(STANDARD) and len(drawn) == 320
    rare = "".join(r.sequence for r in _generate(model=str(esm), num_sequences=8, template="_" * 40,
                                                 temperature=50.0, iterations=0, allow_rare=True))
    assert set(rare) <= set(STANDARD + "UO") and set(rare) & set("UO")


def test_allow_rare_with_a_model_that_reads_u_as_x_warns(txl, capsys):
    records = _generate(model=str(txl), num_sequences=4, max_length=40, temperature=50.0, allow_rare=True)
    assert all(set(r.sequence) <= set(STANDARD) for r in records)
    assert "adds nothing" in capsys.readouterr().err


def test_prompt_is_the_prefix_and_lengths_hold(txl):
    records = _generate(model=str(txl), num_sequences=6, prompt="mktay", min_length=12, max_length=20,
                        temperature=2.0)
    for r in records:
        assert r.sequence.startswith("MKTAY") and 12 <= len(r.sequence) <= 20
        assert r.end == "stop" or len(r.sequence) == 20


# -- causal: XLNet -------------------------------------------------------------------------------

def test_xlnet_greedy_is_transformers_generation_inputs_argmax(xlnet):
    from transformers import AutoTokenizer, XLNetLMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(xlnet))
    model = XLNetLMHeadModel.from_pretrained(str(xlnet)).eval()
    end = tokenizer.sep_token_id

    def next_logits(seq):
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(list(seq))], dtype=torch.long).reshape(1, len(seq))
        inputs = model.prepare_inputs_for_generation(ids, use_mems=False)
        with torch.no_grad():
            return model(**inputs).logits[0, -1]

    want, ended, lps = _greedy_reference(next_logits, tokenizer, end, 25, 1, "MK")
    records = _generate(model=str(xlnet), num_sequences=2, top_k=1, max_length=25, prompt="MK")
    assert [r.sequence for r in records] == [want, want]
    assert records[0].end == ("stop" if ended else "max-length")
    # mean_log_prob: the reference's log p(residue | those before it), the prompt's included
    every = [float(next_logits(want[:k]).log_softmax(-1)[tokenizer.convert_tokens_to_ids(want[k])])
             for k in range(len(want))]
    assert every[2:] == pytest.approx(lps, abs=1e-4)
    assert records[0].mean_log_prob == pytest.approx(sum(every) / len(want), abs=1e-4)


# -- masked LMs: templates -----------------------------------------------------------------------

def _plain_masked(model_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(str(model_dir)),
            AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval())


def test_template_keeps_its_residues_and_fills_every_designed_one(esm):
    template = "MKT____AYIAKQR__SF_"
    records = _generate(model=str(esm), num_sequences=5, template=template, iterations=2, temperature=1.3)
    assert len({r.sequence for r in records}) > 1
    for r in records:
        assert len(r.sequence) == len(template) and r.designed == 7
        assert all(c == t for c, t in zip(r.sequence, template) if t != "_")
        assert all(c in STANDARD for c, t in zip(r.sequence, template) if t == "_")
    # mean_log_prob: the designed residues' pseudo-log-likelihood under a plain masked forward
    tokenizer, model = _plain_masked(esm)
    seq = records[0].sequence
    ids = tokenizer(seq, return_tensors="pt")["input_ids"]
    lps = []
    for p in (p for p, t in enumerate(template) if t == "_"):
        masked = ids.clone()
        masked[0, p + 1] = tokenizer.mask_token_id
        with torch.no_grad():
            lps.append(float(model(input_ids=masked).logits[0, p + 1].log_softmax(-1)[ids[0, p + 1]]))
    assert records[0].mean_log_prob == pytest.approx(sum(lps) / len(lps), abs=1e-4)


def test_template_greedy_is_the_plain_masked_argmax(esm):
    """One designed position, greedy: the argmax over the canonical residues of the plain masked
    forward; two positions, greedy with no sweep: the second filled from the first (either order)."""
    tokenizer, model = _plain_masked(esm)
    letters = {tokenizer.convert_tokens_to_ids(c): c for c in STANDARD}

    def argmax_at(seq, p):
        ids = tokenizer(seq.replace("_", "A"), return_tensors="pt")["input_ids"]
        for q, c in enumerate(seq):
            if c == "_":
                ids[0, q + 1] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, p + 1]
        return letters[max(letters, key=lambda t: float(logits[t]))]

    one = "MKTAYIA_QRQISFV"
    want = one.replace("_", argmax_at(one, 7))
    assert _generate(model=str(esm), num_sequences=1, template=one, top_k=1, iterations=3)[0].sequence == want
    two = "MKTA_YIAKQ_RQISF"
    (first, second) = (4, 10)
    a = two[:first] + argmax_at(two, first) + two[first + 1:]
    a = a.replace("_", argmax_at(a, second))
    b = two[:second] + argmax_at(two, second) + two[second + 1:]
    b = b.replace("_", argmax_at(b, first))
    got = {r.sequence for r in _generate(model=str(esm), num_sequences=6, template=two, top_k=1, iterations=0)}
    assert got <= {a, b} and got


# -- complexes and many templates -----------------------------------------------------------------

def _stream(seed: int, i: int, record: str | None = None):
    """Sequence i's generator as the docs derive it: numpy SeedSequence((seed, i)) (a templates
    file's record: (seed, blake2b-64 of its id, little-endian, i)), its first 64-bit state word."""
    import hashlib

    import numpy as np

    key = (seed, i) if record is None else \
        (seed, int.from_bytes(hashlib.blake2b(record.encode(), digest_size=8).digest(), "little"), i)
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))


def _greedy_fill(tokenizer, model, text: str, g, iterations: int):
    """A plain reference of a greedy design of `text`'s `_` (what the model reads), drawing its
    orders from `g` as the docs say (a random permutation a sweep, one uniform a draw): each
    position in turn the argmax over the canonical residues of a plain masked forward with the
    positions not yet filled masked (sweeps: it alone masked). Returns (the text filled, the
    designed residues' log-probabilities each masked alone)."""
    letters = {tokenizer.convert_tokens_to_ids(c): c for c in STANDARD}
    ids = tokenizer(text.replace("_", "A"), return_tensors="pt")["input_ids"]
    designed = [p for p, c in enumerate(text) if c == "_"]
    for p in designed:
        ids[0, p + 1] = tokenizer.mask_token_id
    for _ in range(1 + iterations):
        order = torch.randperm(len(designed), generator=g).tolist()
        for t in order:
            p = designed[t] + 1
            ids[0, p] = tokenizer.mask_token_id
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, p]
            ids[0, p] = max(letters, key=lambda tok: float(logits[tok]))
            torch.rand(1, generator=g, dtype=torch.float64)
    lps = []
    for p in designed:
        masked = ids.clone()
        masked[0, p + 1] = tokenizer.mask_token_id
        with torch.no_grad():
            lps.append(float(model(input_ids=masked).logits[0, p + 1].log_softmax(-1)[ids[0, p + 1]]))
    filled = "".join(letters[int(t)] if c == "_" else c for t, c in zip(ids[0, 1:-1], text))
    return filled, lps


def test_complex_linker_greedy_is_the_plain_joined_reference(esm):
    """--chains linker, greedy with a sweep: the plain reference over the chains joined by the
    glycines (filled in the seeded orders), the linker dropped, the ':'s kept; mean_log_prob the
    designed residues' pseudo-log-likelihood with every chain present."""
    tokenizer, model = _plain_masked(esm)
    template = "MKT_AYI_AK:GSW__LVKR:PE_"
    records = _generate(model=str(esm), num_sequences=3, template=template, chains="linker", linker_length=4,
                        top_k=1, iterations=1, seed=3, batch_size=2)
    assert [r.id for r in records] == ["gen_0001", "gen_0002", "gen_0003"]
    for i, r in enumerate(records):
        joined, lps = _greedy_fill(tokenizer, model, "GGGG".join(template.split(":")), _stream(3, i), 1)
        chains = [joined[:10], joined[14:23], joined[27:]]
        assert r.sequence == ":".join(chains) and r.designed == 5
        assert r.mean_log_prob == pytest.approx(sum(lps) / 5, abs=1e-4)
    # a flat distribution: the template's residues and layout kept, no linker in the output
    for r in _generate(model=str(esm), num_sequences=6, template=template, chains="linker", temperature=50.0):
        assert [len(c) for c in r.sequence.split(":")] == [10, 9, 3]
        assert all(c == t for c, t in zip(r.sequence, template) if t != "_")
        assert all(c in STANDARD for c, t in zip(r.sequence, template) if t == "_")


def test_complex_separate_designs_each_chain_alone_from_one_stream(esm):
    """--chains separate: chain 1's designs are --template CHAIN1's with the same seed (sampled);
    the next chain's go on drawing from the same generator (greedy: the plain reference of each
    chain alone, orders from one stream); a chain without '_' is kept and draws nothing."""
    template = "MKT__AYIA:WWLKQ:GS_LVKR_E"
    chain1 = _generate(model=str(esm), num_sequences=4, template="MKT__AYIA", temperature=1.3, seed=9)
    both = _generate(model=str(esm), num_sequences=4, template=template, chains="separate", temperature=1.3, seed=9)
    assert [r.sequence.split(":")[0] for r in both] == [r.sequence for r in chain1]
    assert all(r.sequence.split(":")[1] == "WWLKQ" and r.designed == 4 for r in both)
    tokenizer, model = _plain_masked(esm)
    greedy = _generate(model=str(esm), num_sequences=2, template=template, chains="separate", top_k=1, seed=9)
    for i, r in enumerate(greedy):
        g = _stream(9, i)
        a, lps_a = _greedy_fill(tokenizer, model, "MKT__AYIA", g, 1)
        b, lps_b = _greedy_fill(tokenizer, model, "GS_LVKR_E", g, 1)
        assert r.sequence == f"{a}:WWLKQ:{b}"
        assert r.mean_log_prob == pytest.approx(sum(lps_a + lps_b) / 4, abs=1e-4)


def test_templates_file_designs_each_record_whatever_the_others(tmp_path, esm):
    records = {"cdr": "MKT___AYIAK", "pair": "GS_LV:KR__E"}
    forward, backward = tmp_path / "f.fa", tmp_path / "b.fa"
    forward.write_text("".join(f">{k} a template\n{v.lower()}\n" for k, v in records.items()))
    backward.write_text("".join(f">{k}\n{v}\n" for k, v in reversed(records.items())))
    kw = dict(model=str(esm), num_sequences=3, chains="linker", temperature=1.3, seed=2)
    one = _generate(templates=str(forward), batch_size=2, **kw)
    two = _generate(templates=str(backward), batch_size=3, **kw)
    assert [r.id for r in one] == ["cdr_0001", "cdr_0002", "cdr_0003", "pair_0001", "pair_0002", "pair_0003"]
    assert sorted((r.id, r.sequence) for r in one) == sorted((r.id, r.sequence) for r in two)
    assert len({r.sequence for r in one}) == 6
    for r in one:
        template = records[r.id.rsplit("_", 1)[0]]
        assert len(r.sequence) == len(template) and all(c == t for c, t in zip(r.sequence, template) if t != "_")
    # a record alone: the same designs; --id-prefix goes before the record's id
    alone = tmp_path / "a.fa"
    alone.write_text(">pair\nGS_LV:KR__E\n")
    got = _generate(templates=str(alone), prefix="r2_", **kw)
    assert [(r.id, r.sequence) for r in got] == [("r2_" + r.id, r.sequence) for r in one[3:]]
    # seeded by (seed, the id's digest, k): the greedy orders of the plain reference
    tokenizer, model = _plain_masked(esm)
    greedy = _generate(templates=str(alone), model=str(esm), num_sequences=2, top_k=1, seed=2, chains="separate")
    for k, r in enumerate(greedy):
        g = _stream(2, k, "pair")
        assert r.sequence == ":".join(_greedy_fill(tokenizer, model, c, g, 1)[0] for c in ("GS_LV", "KR__E"))


def test_templates_of_one_shape_share_batches_and_write_what_each_alone_writes(tmp_path, esm, monkeypatch):
    """Consecutive records of one shape (lengths and designed counts as the model reads them) fill
    a batch together (-n 2, batches of 3: a a b | b c c | d d | e e, d of another shape): each
    record's designs are those of a run of it alone, byte for byte; greedy, each row is the plain
    reference in its own seeded orders; an interruption and --resume give the same bytes."""
    import protrans_cli.generate as generate

    records = {"a": "MK__AYIA_R", "b": "G_SLVKR__E", "c": "__TAYIAKQ_", "d": "MKT_AY", "e": "PPL_KQW_A_"}
    templates = tmp_path / "t.fa"
    templates.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    original, batches = generate.sample_template, []

    def counting(sampler, indices, design=None):
        batches.append([d.record for d in design] if isinstance(design, list) else [design.record] * len(indices))
        return original(sampler, indices, design)

    monkeypatch.setattr(generate, "sample_template", counting)
    kw = dict(model=str(esm), num_sequences=2, batch_size=3, temperature=1.4, iterations=1, seed=3)
    from protrans_cli.generate import GenerateOptions, run_generate

    run_generate(tmp_path / "all.fa", GenerateOptions(device="cpu", templates=str(templates), **kw))
    assert batches == [["a", "a", "b"], ["b", "c", "c"], ["d", "d"], ["e", "e"]]
    alone = []
    for k, v in records.items():
        (tmp_path / f"{k}.fa").write_text(f">{k}\n{v}\n")
        run_generate(tmp_path / f"{k}.out.fa", GenerateOptions(device="cpu", templates=str(tmp_path / f"{k}.fa"), **kw))
        alone.append((tmp_path / f"{k}.out.fa").read_text())
    assert (tmp_path / "all.fa").read_text() == "".join(alone)
    # interrupted in its third batch: two kept (one of them of two records), --resume the same bytes
    calls = []

    def failing(sampler, indices, design=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(sampler, indices, design)

    monkeypatch.setattr(generate, "sample_template", failing)
    with pytest.raises(KeyboardInterrupt):
        run_generate(tmp_path / "r.fa", GenerateOptions(device="cpu", templates=str(templates), **kw))
    assert len(list((tmp_path / "r.fa.partial").glob("*.npy"))) == 2
    calls.clear()
    monkeypatch.setattr(generate, "sample_template", counting)
    batches.clear()
    run_generate(tmp_path / "r.fa", GenerateOptions(device="cpu", templates=str(templates), resume=True, **kw))
    assert len(batches) == 2 and (tmp_path / "r.fa").read_bytes() == (tmp_path / "all.fa").read_bytes()
    # greedy in a shared batch: each row the plain reference in its own orders
    tokenizer, model = _plain_masked(esm)
    greedy = _generate(templates=str(templates), model=str(esm), num_sequences=2, batch_size=3, top_k=1, seed=3)
    for r in greedy[:6]:
        record, k = r.id.rsplit("_", 1)
        want, lps = _greedy_fill(tokenizer, model, records[record], _stream(3, int(k) - 1, record), 1)
        assert r.sequence == want and r.mean_log_prob == pytest.approx(sum(lps) / len(lps), abs=1e-4)


def test_templates_resume_checks_the_file(run_cli, tmp_path, esm, monkeypatch):
    """Interrupted in its third batch (two records, -n 3, batches of 2: four batches), --resume
    gives the uninterrupted bytes; a changed templates file or --linker-length is refused."""
    import protrans_cli.generate as generate

    templates = tmp_path / "t.fa"
    templates.write_text(">x\nMKT__AY:GS_L\n>y\nAAW_KLV:PP_\n")
    args = ["-m", esm, "--templates", templates, "--chains", "linker", "--linker-length", "5", "-n", "3",
            "--batch-size", "2", "--seed", "4"]
    whole = tmp_path / "whole.fa"
    assert run_cli("generate", *args, "-o", whole).exit_code == 0
    original, calls = generate.sample_template, []

    def counting(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(generate, "sample_template", counting)
    out = tmp_path / "o.fa"
    r = run_cli("generate", *args, "-o", out)
    assert r.exit_code == 130 and "--resume" in r.stderr
    monkeypatch.setattr(generate, "sample_template", original)
    changed = tmp_path / "c.fa"
    changed.write_text(">x\nMKT__AY:GS_L\n>y\nAAW_KLV:PPA_\n")
    for other, flag in ((["--templates", changed], "--templates"), (["--linker-length", "6"], "--linker-length")):
        r = run_cli("generate", *args, *other, "-o", out, "--resume")
        assert r.exit_code == 2 and f"with {flag} " in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("generate", *args, "-o", out, "--resume")
    assert r.exit_code == 0 and "2 units of work kept" in r.stderr, r.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert [_fields(h)["id"] for h, _ in _records(whole.read_text())] == \
        ["x_0001", "x_0002", "x_0003", "y_0001", "y_0002", "y_0003"]
    assert all(_fields(h)["length"] == str(len(s) - 1) for h, s in _records(whole.read_text()))


@pytest.mark.parametrize("args, said, code", [
    (["--template", "MK_A:GSL"], "':' at residue 5 is a chain break", 2),
    (["--template", "MK_A:GSL"], "--chains linker or --chains separate reads it", 2),
    (["--template", "MK_A::GSL", "--chains", "linker"], "chain 2 of 3 is empty", 2),
    (["--template", "MK_A:GSL", "--templates", "T"], "--templates FILE and --template: give one", 2),
    (["--templates", "T"], "record 'b': the template: ':' at residue 3 is a chain break", 1),  # (a file's record)
    (["--templates", "T", "--chains", "separate"], "record 'c': the template: 'J' at position 2", 1),
    (["--templates", "D", "--chains", "linker"], "also that of the record at line 1", 1),
])
def test_cli_complex_and_templates_refusals(run_cli, tmp_path, esm, args, said, code):
    (tmp_path / "T").write_text(">a\nMK__\n>b\nGS:L_\n>c\nMJ_\n")
    (tmp_path / "D").write_text(">a\nMK__\n>a\nGS:L_\n")
    args = [str(tmp_path / a) if a in ("T", "D") else a for a in args]
    out = tmp_path / "designs.fa"
    r = run_cli("generate", "-m", esm, *args, "-o", out)
    assert r.exit_code == code and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_the_templates_file_is_not_the_output(run_cli, tmp_path, esm):
    """-o naming the --templates file would replace the designs' source with the designs."""
    templates = tmp_path / "T.fa"
    templates.write_text(">a\nMK__\n")
    r = run_cli("generate", "-m", esm, "--templates", templates, "-o", templates)
    assert r.exit_code == 2 and "is also an input: writing it would replace it" in r.stderr, r.stderr
    assert templates.read_text() == ">a\nMK__\n"


@pytest.mark.parametrize("args", [
    ["generate", "--template", "MK__", "-o", "IN/config.json"],
    ["perplexity", "X.fa", "-o", "IN/config.json"],
    ["perplexity", "X.fa", "-o", "p.tsv", "--per-residue", "IN/model.safetensors"],
    ["variants", "--sequence", "MKTV", "--all-singles", "-o", "IN/vocab.txt"],
    ["variants", "--sequence", "MKTV", "--all-singles", "-o", "v.tsv", "--plot", "IN/loss_curve.png"],
])
def test_an_output_over_a_file_of_the_model_directory_is_refused(run_cli, tmp_path, esm, args):
    """`perplexity -m run -o run/config.json` (generate and variants alike) replaced the model's
    config with the table, after which every run on that model failed ("config.json is not a
    valid JSON file"); embed and contacts refused such an output already."""
    model = tmp_path / "model"
    shutil.copytree(esm, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    (tmp_path / "X.fa").write_text(">a\nMKTV\n")
    command, *rest = args
    rest = [str(tmp_path / a.replace("IN", "model")) if "IN" in a or a in ("X.fa", "p.tsv", "v.tsv") else a
            for a in rest]
    r = run_cli(command, "-m", model, *rest)
    target = next(a for a in rest if "/model/" in a)
    flag = rest[rest.index(target) - 1]
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"protrans: error: {target} is " in r.stderr and "the model directory's files" in r.stderr \
        and f"(choose another {flag})" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.fa", "model"]


def test_an_output_of_another_name_in_the_model_directory_is_written(run_cli, tmp_path, esm, monkeypatch):
    """`perplexity x.fa -m run -o run/scores.tsv` (and `cd run && ... -m . -o scores.tsv`) was refused
    as "inside the model directory", although it replaces nothing of the model: written, and the
    model gives the same scores after it."""
    model = tmp_path / "model"
    shutil.copytree(esm, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    (tmp_path / "X.fa").write_text(">a\nMKTVLA\n")
    r = run_cli("perplexity", tmp_path / "X.fa", "-m", model, "-o", model / "scores.tsv",
                "--per-residue", model / "residues.tsv")
    assert r.exit_code == 0, r.stderr
    monkeypatch.chdir(model)
    again = run_cli("perplexity", tmp_path / "X.fa", "-m", ".", "-o", "again.tsv")
    assert again.exit_code == 0, again.stderr
    assert (model / "again.tsv").read_text() == (model / "scores.tsv").read_text()
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.name in before} == before
    assert sorted(p.name for p in model.iterdir()) == sorted([*before, "scores.tsv", "residues.tsv", "again.tsv"])


def test_cli_causal_refuses_a_complex_prompt_and_templates(run_cli, tmp_path, txl):
    r = run_cli("generate", "-m", txl, "--prompt", "MKT:GS")
    assert r.exit_code == 2 and "a causal LM draws one chain left to right" in r.stderr \
        and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "t.fa").write_text(">a\nMK__\n")
    r = run_cli("generate", "-m", txl, "--templates", tmp_path / "t.fa")
    assert r.exit_code == 2 and "is a causal LM" in r.stderr and "not --templates" in r.stderr, r.stderr


# -- the command line ----------------------------------------------------------------------------

def test_cli_writes_fasta_atomically_and_gz(run_cli, tmp_path, txl):
    import gzip

    out = tmp_path / "designs.fa.gz"
    r = run_cli("generate", "-m", txl, "-n", "3", "--max-length", "20", "--seed", "4", "-o", out)
    assert r.exit_code == 0, r.stderr
    records = _records(gzip.decompress(out.read_bytes()).decode())
    assert [_fields(h)["id"] for h, _ in records] == ["gen_0001", "gen_0002", "gen_0003"]
    for h, s in records:
        f = _fields(h)
        assert int(f["length"]) == len(s) and float(f["mean_log_prob"]) < 0 and f["end"] in ("stop", "max-length")
    r2 = run_cli("generate", "-m", txl, "-n", "3", "--max-length", "20", "--seed", "4")
    assert _records(r2.stdout) == records


@pytest.mark.parametrize("kind", ["causal", "template"])
def test_an_interrupted_run_goes_on_with_resume_to_the_same_bytes(run_cli, tmp_path, txl, esm, monkeypatch, kind):
    """A Ctrl-C in the third batch: exit 130 naming --resume, no FASTA, two batches kept in
    OUT.partial/; without --resume the folder is refused, under another seed or top-p too (one
    line naming it); --resume samples the last two batches only and writes the uninterrupted
    run's bytes (7 sequences, batches of 2)."""
    import protrans_cli.generate as generate

    args = ["-m", txl, "--max-length", "30", "--temperature", "1.5", "--top-p", "0.95"] if kind == "causal" else \
        ["-m", esm, "--template", "MKT____AYIAK__R", "--iterations", "1"]
    args += ["-n", "7", "--batch-size", "2", "--seed", "5"]
    whole = tmp_path / "whole.fa"
    r = run_cli("generate", *args, "-o", whole)
    assert r.exit_code == 0, r.stderr
    name = "sample_causal" if kind == "causal" else "sample_template"
    original, calls = getattr(generate, name), []

    def counting(*a, **kw):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(generate, name, counting)
    out = tmp_path / "o.fa"
    interrupt = True
    r = run_cli("generate", *args, "-o", out)
    assert r.exit_code == 130 and "--resume" in r.stderr and "o.fa.partial" in r.stderr, r.stderr
    assert not out.exists() and len(list((tmp_path / "o.fa.partial").glob("*.npy"))) == 2
    interrupt = False
    r = run_cli("generate", *args, "-o", out)
    assert r.exit_code == 2 and "--resume goes on with it" in r.stderr
    for changed, flag in ((["--seed", "6"], "--seed"), (["--batch-size", "3"], "--batch-size")):
        r = run_cli("generate", *args, *changed, "-o", out, "--resume")
        assert r.exit_code == 2 and f"with {flag} " in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("generate", *args, "-o", "-", "--resume")
    assert r.exit_code == 2 and "stdout keeps none" in r.stderr
    calls.clear()
    r = run_cli("generate", *args, "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert "2 units of work kept" in r.stderr and len(calls) == 2
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "o.fa.partial").exists()


def test_a_partial_folder_is_kept_to_the_end_and_a_long_run_holds_no_records(tmp_path, txl, monkeypatch):
    """Each batch reaches the output's temporary as it ends (a failure in the last batch leaves
    the earlier ones in OUT.partial/, the FASTA unwritten); the summary holds no records unless
    asked."""
    import protrans_cli.generate as generate
    from protrans_cli.generate import GenerateOptions, run_generate

    opts = dict(model=str(txl), num_sequences=5, batch_size=2, max_length=20, device="cpu")
    summary = run_generate(tmp_path / "a.fa", GenerateOptions(**opts))
    assert summary.records is None and summary.sequences == 5
    text = (tmp_path / "a.fa").read_text()
    assert summary.residues == sum(len(s) for _, s in _records(text))
    assert summary.mean_log_prob == pytest.approx(
        sum(float(_fields(h)["mean_log_prob"]) for h, _ in _records(text)) / 5)
    original, calls = generate.sample_causal, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return original(*a, **kw)

    monkeypatch.setattr(generate, "sample_causal", failing)
    with pytest.raises(RuntimeError):
        run_generate(tmp_path / "b.fa", GenerateOptions(**opts))
    assert not (tmp_path / "b.fa").exists() and not list(tmp_path.glob(".b.fa*"))
    assert len(list((tmp_path / "b.fa.partial").glob("*.npy"))) == 2
    monkeypatch.setattr(generate, "sample_causal", original)
    run_generate(tmp_path / "b.fa", GenerateOptions(**opts, resume=True))
    assert (tmp_path / "b.fa").read_bytes() == text.encode()


def test_a_resumed_run_counts_each_kept_sequence_once(tmp_path, txl, monkeypatch, progress_bars):
    """--resume: the bar counted each kept batch twice (as kept, and again as written), and ended
    at 9 of 5; it ends at the total, the kept sequences out of this run's rate."""
    import protrans_cli.generate as generate
    from protrans_cli import console
    from protrans_cli.generate import GenerateOptions, run_generate

    bars = progress_bars
    opts = dict(model=str(txl), num_sequences=5, batch_size=2, max_length=12, device="cpu")
    original, calls = generate.sample_causal, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(generate, "sample_causal", failing)
    with pytest.raises(KeyboardInterrupt):
        run_generate(tmp_path / "b.fa", GenerateOptions(**opts))
    assert bars[-1].n == 4
    monkeypatch.setattr(generate, "sample_causal", original)
    run_generate(tmp_path / "b.fa", GenerateOptions(**opts, resume=True))
    (bar,) = [b for b in bars[1:] if getattr(b, "desc", None) == "generating"]
    assert bar.total == bar.n == 5
    if isinstance(bar, console.LogProgress):
        assert bar.initial == 4  # (the kept ones: not this run's rate)


@pytest.mark.parametrize("args, said", [
    (["-n", "0"], "-n must be at least 1"),
    (["--temperature", "0"], "--temperature must be a number above 0"),
    (["--top-p", "1.5"], "--top-p must be above 0 and at most 1"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--min-length", "50", "--max-length", "40"], "--min-length 50 is more than --max-length 40"),
    (["--prompt", "MKJT"], "'J' at position 3 is not a residue letter"),
    (["--template", "MK__"], "is a causal LM"),
    (["--prompt", "MKT", "--template", "MK__"], "give one"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--prompt", "MKTAY", "--max-length", "5"], "nothing is left to draw"),
])
def test_cli_refusals_are_usage_errors_and_write_nothing(run_cli, tmp_path, txl, args, said):
    out = tmp_path / "designs.fa"
    r = run_cli("generate", "-m", txl, *args, "-o", out)
    assert r.exit_code == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_cli_masked_lm_needs_a_template(run_cli, tmp_path, esm):
    out = tmp_path / "designs.fa"
    out.write_text("kept\n")
    r = run_cli("generate", "-m", esm, "-o", out)
    assert r.exit_code == 2 and "--template" in r.stderr, r.stderr
    r = run_cli("generate", "-m", esm, "--template", "MKTX_BZ")
    assert r.exit_code == 0 and _records(r.stdout)[0][1][:4] == "MKTX"
    r = run_cli("generate", "-m", esm, "--template", "MK1_")
    assert r.exit_code == 2 and "'1' at position 3" in r.stderr
    assert out.read_text() == "kept\n"


def test_t5_and_xlnet_templates_are_refused(tmp_path_factory, xlnet):
    from protrans_cli.errors import UsageError

    t5 = save_tiny_model(tmp_path_factory, "t5")
    with pytest.raises(UsageError, match="T5 encoder-decoder"):
        _generate(model=str(t5), template="MK__")
    with pytest.raises(UsageError, match="causal LM"):
        _generate(model=str(xlnet), template="MK__")
    with pytest.raises(UsageError, match="model to sample from"):
        _generate(model="")


def test_a_template_longer_than_training_is_warned_about(capsys):
    from conftest import ROOT

    template = "M__" + "A" * 1030  # (ESM-2's rotary positions: trained on crops of 1024 tokens)
    records = _generate(model=str(ROOT / "tests" / "data" / "esm_reference"), template=template, num_sequences=1)
    assert records[0].sequence[3:] == template[3:] and "more than" in capsys.readouterr().err


# -- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_on_a_gpu_both_ways_sample_and_greedy_is_the_cpus(tmp_path_factory, tmp_path, dtype):
    """On cuda: a Transformer-XL and a masked LM's template sample well-formed records in bfloat16
    and float32; greedy (--top-k 1) float32 on cuda writes the CPU's sequences (mean_log_prob to
    1e-3); the Transformer-XL's memory steps on cuda give the whole-prefix forward's
    log-probabilities (float32 on the CPU) to 0.1 in bfloat16 (perplexity's GPU tolerance), 1e-3
    in float32; a run resumed on cuda gives the uninterrupted run's bytes."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from protrans_cli.generate import GenerateOptions, TransfoXLSteps, run_generate
    from protrans_cli.models import load_model

    txl = save_tiny_model(tmp_path_factory, "transfo_xl")
    esm = save_tiny_model(tmp_path_factory, "esm")
    template = "MKT____AYIAK__R"
    for kw in (dict(model=str(txl), max_length=40, top_p=0.95), dict(model=str(esm), template=template)):
        records = run_generate(tmp_path / "s.fa", GenerateOptions(num_sequences=6, batch_size=4, device="cuda",
                                                                  dtype=dtype, **kw), keep_records=True).records
        assert [r.id for r in records] == [f"gen_{n:04d}" for n in range(1, 7)]
        for r in records:
            assert set(r.sequence) <= set(STANDARD) and math.isfinite(r.mean_log_prob) and r.mean_log_prob < 0
            if "template" in kw:
                assert all(c == t for c, t in zip(r.sequence, template) if t != "_")
            else:
                assert 1 <= len(r.sequence) <= 40
    if dtype == "float32":
        for kw in (dict(model=str(txl), max_length=45, min_length=45), dict(model=str(esm), template=template)):
            got = {}
            for device in ("cpu", "cuda"):
                got[device] = _generate(num_sequences=3, top_k=1, **kw) if device == "cpu" else \
                    run_generate("-", GenerateOptions(num_sequences=3, top_k=1, device="cuda", dtype="float32", **kw),
                                 keep_records=True).records
            assert [r.sequence for r in got["cuda"]] == [r.sequence for r in got["cpu"]]
            for a, b in zip(got["cuda"], got["cpu"]):
                assert a.mean_log_prob == pytest.approx(b.mean_log_prob, abs=1e-3)
        # resumed on cuda: the same bytes (the kept batches are this device's)
        opts = dict(model=str(txl), num_sequences=5, batch_size=2, max_length=30, device="cuda", dtype=dtype)
        run_generate(tmp_path / "w.fa", GenerateOptions(**opts))
        import protrans_cli.generate as generate

        original, calls = generate.sample_causal, []

        def failing(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return original(*a, **k)

        generate.sample_causal = failing
        try:
            with pytest.raises(KeyboardInterrupt):
                run_generate(tmp_path / "r.fa", GenerateOptions(**opts))
        finally:
            generate.sample_causal = original
        run_generate(tmp_path / "r.fa", GenerateOptions(**opts, resume=True))
        assert (tmp_path / "r.fa").read_bytes() == (tmp_path / "w.fa").read_bytes()
    # memory steps on cuda against the whole-prefix forward in float32 on the CPU
    _, plain = _plain_txl(txl)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 24, (3, 50), generator=g)
    with torch.no_grad():
        whole = plain(input_ids=ids).logits.float().log_softmax(-1)
    model = load_model(str(txl), device=torch.device("cuda"), dtype=getattr(torch, dtype), masked_lm=True).model
    steps = TransfoXLSteps(model)
    got = [steps.start(ids[:, :5], "cuda")]
    for t in range(5, 50):
        got.append(steps.next(ids[:, :t + 1], ids[:, t], "cuda"))
    got = torch.stack(got, dim=1).float().log_softmax(-1).cpu()
    tolerance = 0.1 if dtype == "bfloat16" else 1e-3
    assert torch.allclose(got, whole[:, 4:], atol=tolerance), float((got - whole[:, 4:]).abs().max())


def test_a_templates_files_final_stop_is_read_as_other_commands_read_it(run_cli, tmp_path, esm):
    """A record ending in '*' (a translated ORF's stop, which embed, perplexity and variants drop)
    is the template without it (it was refused: "'*' at position 6 is not a residue letter");
    the designs and their lengths are those of the template written without the '*'; an inner
    '*' is still refused."""
    starred, plain = tmp_path / "s.fa", tmp_path / "p.fa"
    starred.write_text(">a\nmk__ay*\n>b\nGS_L:_W*\n")
    plain.write_text(">a\nMK__AY\n>b\nGS_L:_W\n")
    args = ["-m", esm, "-n", "2", "--chains", "linker", "--seed", "3"]
    one, two = tmp_path / "one.fa", tmp_path / "two.fa"
    r = run_cli("generate", *args, "--templates", starred, "-o", one)
    assert r.exit_code == 0, r.stderr
    assert run_cli("generate", *args, "--templates", plain, "-o", two).exit_code == 0
    assert one.read_text() == two.read_text()
    assert [_fields(h)["length"] for h, _ in _records(one.read_text())] == ["6", "6", "6", "6"]
    inner = tmp_path / "i.fa"
    inner.write_text(">c\nMK*_AY\n")
    r = run_cli("generate", *args, "--templates", inner, "-o", tmp_path / "three.fa")
    assert r.exit_code == 1 and "record 'c': the template: '*' at position 3" in r.stderr, r.stderr


def test_settings_that_set_nothing_are_said(run_cli, tmp_path, esm, txl):
    """--max-length/--min-length with a template (its length is its own) and --iterations for a
    causal LM were ignored without a word, as --linker-length without --chains linker is not."""
    r = run_cli("generate", "-m", esm, "--template", "MK__A", "--max-length", "50", "--min-length", "3", "-n", "1",
                "-o", tmp_path / "a.fa")
    assert r.exit_code == 0, r.stderr
    assert "--max-length 50 ignored: it bounds what a causal LM draws" in r.stderr
    assert "--min-length 3 ignored" in r.stderr
    r = run_cli("generate", "-m", txl, "--iterations", "3", "--max-length", "4", "-n", "1", "-o", tmp_path / "b.fa")
    assert r.exit_code == 0 and "--iterations 3 ignored: it sweeps a template's designed positions" in r.stderr
    r = run_cli("generate", "-m", esm, "--template", "MK__A", "--iterations", "3", "-n", "1", "-o", tmp_path / "c.fa")
    assert r.exit_code == 0 and "ignored" not in r.stderr, r.stderr


@pytest.mark.parametrize("args", [["generate", "--template", "MK__"], ["perplexity", "X.fa"],
                                  ["variants", "--sequence", "MKTV", "--all-singles"]])
def test_an_empty_output_path_is_one_line(run_cli, tmp_path, esm, args, monkeypatch):
    """`-o ''` was a traceback (ValueError: PosixPath('.') has an empty name) from the wrapper
    that names FILE.partial/, before the command could say what its neighbours say."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X.fa").write_text(">a\nMKTV\n")
    r = run_cli(args[0], "-m", esm, *args[1:], "-o", "")
    assert r.exit_code == 2 and r.stderr == "protrans: error: the output path is empty\n", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.fa"]


def test_an_empty_plot_path_names_the_option(run_cli, tmp_path, esm, monkeypatch):
    """`variants -o scan.csv --plot ''` said "the output path is empty", sending the reader to the
    -o given in full; the empty option is named (output_directory's flag, as perplexity's
    --per-residue '' is)."""
    monkeypatch.chdir(tmp_path)
    r = run_cli("variants", "-m", esm, "--sequence", "MKTV", "--all-singles", "-o", "scan.csv", "--plot", "")
    assert r.exit_code == 2 and r.stderr == "protrans: error: --plot is empty: give the path of a file\n", r.stderr
    assert list(tmp_path.iterdir()) == []
