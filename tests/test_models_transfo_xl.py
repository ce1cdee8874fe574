"""The project's Transformer-XL: memory, relative positions, save/load, and that it learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from protrans_cli.models import FAMILIES
from protrans_cli.models.transfo_xl import (RelPartialLearnableAttention, TransfoXLConfig,
                                            TransfoXLLMHeadModel, _sinusoid)

torch.set_num_threads(1)
FAMILY = FAMILIES["transfo_xl"]


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = FAMILY.build_config("tiny", **overrides)
    return TransfoXLLMHeadModel(config).eval()


def _ids(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 29, (B, T), generator=g)


def test_mems_change_the_output():
    model = _model()
    first, second = _ids(2, 6, seed=1), _ids(2, 5, seed=2)
    with torch.no_grad():
        mems = model(input_ids=first).mems
        without = model(input_ids=second).logits
        with_mems = model(input_ids=second, mems=mems).logits
    assert len(mems) == model.config.n_layer and mems[0].shape == (2, 6, model.config.d_model)
    assert not torch.allclose(without, with_mems, atol=1e-4)


def test_segments_with_memory_equal_one_long_pass():
    # With memory as long as the prefix, segment 2 sees exactly what it sees in one causal pass
    # over both segments, at the same relative distances.
    model = _model(mem_len=64)
    ids = _ids(2, 11, seed=3)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out1 = model(input_ids=ids[:, :7])
        out2 = model(input_ids=ids[:, 7:], mems=out1.mems)
    torch.testing.assert_close(out1.logits, full[:, :7], rtol=0, atol=1e-5)
    torch.testing.assert_close(out2.logits, full[:, 7:], rtol=0, atol=1e-5)


def test_mems_of_another_dtype_are_taken_in_the_models_dtype():
    # float32 mems (a training step under autocast) given to a bfloat16 model failed in torch.cat
    model = _model(mem_len=64)
    first, second = _ids(2, 6, seed=1), _ids(2, 5, seed=2)
    with torch.no_grad():
        mems = model(input_ids=first).mems
        model.to(torch.bfloat16)
        out = model(input_ids=second, mems=[m.float() for m in mems]).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_memory_is_capped_at_mem_len_and_detached():
    model = _model(mem_len=4)
    with torch.no_grad():
        out = model(input_ids=_ids(1, 6))
        out = model(input_ids=_ids(1, 3), mems=out.mems)
    assert all(m.shape[1] == 4 and not m.requires_grad for m in out.mems)
    assert _model(mem_len=0)(input_ids=_ids(1, 3)).mems is None


def test_attention_matches_a_direct_relative_position_computation():
    torch.manual_seed(0)
    config = TransfoXLConfig(d_model=8, n_head=2, d_head=4, d_inner=16, n_layer=1, dropout=0.0)
    attn = RelPartialLearnableAttention(config).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    B, M, T = 1, 3, 4
    K = M + T
    h, mem = torch.randn(B, T, 8), torch.randn(B, M, 8)
    r = _sinusoid(torch.arange(K - 1, -1, -1), 8)
    causal = (torch.arange(K)[None, :] <= M + torch.arange(T)[:, None])[None]  # (1, T, K)
    with torch.no_grad():
        ours = attn(h, r, mem, causal)
        cat = torch.cat([mem, h], dim=1)[0]
        q, k, v = attn.qkv_net(cat).view(K, 3, 2, 4).unbind(1)
        q = q[M:]
        expected_heads = []
        for head in range(2):
            rows = []
            for i in range(T):
                scores = []
                for j in range(M + i + 1):
                    dist = torch.tensor([M + i - j])
                    r_k = attn.r_net(_sinusoid(dist, 8)).view(2, 4)[head]
                    s = (q[i, head] + attn.r_w_bias[head]) @ k[j, head] + (q[i, head] + attn.r_r_bias[head]) @ r_k
                    scores.append(s / math.sqrt(4))
                p = torch.softmax(torch.stack(scores), 0)
                rows.append(p @ v[: M + i + 1, head])
            expected_heads.append(torch.stack(rows))
        vec = torch.stack(expected_heads, dim=1).reshape(T, 8)
        expected = attn.layer_norm(h[0] + attn.o_net(vec))
    torch.testing.assert_close(ours[0], expected, rtol=0, atol=1e-5)


def test_padding_does_not_change_real_positions():
    model = _model()
    tokenizer = FAMILY.build_tokenizer()
    inputs, mask = FAMILY.encode(tokenizer, ["MKTAYIAK", "MKT"])
    alone, alone_mask = FAMILY.encode(tokenizer, ["MKT"])
    with torch.no_grad():
        batch = model(**inputs).logits
        one = model(**alone).logits
    torch.testing.assert_close(batch[1][mask[1]], one[0][alone_mask[0]], rtol=0, atol=1e-5)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    model = _model(seed=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "protrans-transfo-xl"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_kernels=False).eval()
    assert isinstance(reloaded, TransfoXLLMHeadModel)
    ids = _ids(2, 9, seed=5)
    with torch.no_grad():
        a, b = model(input_ids=ids), reloaded(input_ids=ids)
        assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(x, y) for x, y in zip(a.mems, b.mems))
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.word_emb.weight.data_ptr()
    base = AutoModel.from_pretrained(tmp_path, use_kernels=False).eval()
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids).last_hidden_state, a.last_hidden_state)


def test_loss_decreases_on_a_toy_batch():
    torch.manual_seed(0)
    model = _model(seed=6, dropout=0.0).train()
    # a repetitive "protein": next-token prediction is learnable within a few steps
    ids = torch.tensor([[2] + [4, 5, 6, 7] * 6 + [3]] * 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert math.isfinite(losses[-1])


@pytest.mark.parametrize("preset", ["prot_txl"])
def test_prot_txl_preset_size(preset):
    assert abs(FAMILY.num_params(preset) - 562e6) / 562e6 < 0.02


# --- against transformers 4.x's TransfoXLLMHeadModel (tests/data/transfo_xl_reference/README.md) ---

REFERENCE = Path(__file__).parent / "data" / "transfo_xl_reference"


def _reference_model():
    from safetensors.torch import load_file

    config = TransfoXLConfig(**json.loads((REFERENCE / "config.json").read_text()))
    model = TransfoXLLMHeadModel(config).eval()
    missing, unexpected = model.load_state_dict(load_file(REFERENCE / "model.safetensors"), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # lm_head is tied to the embeddings
    assert model.lm_head.weight.data_ptr() == model.transformer.word_emb.weight.data_ptr()
    return model, load_file(REFERENCE / "reference.safetensors")


def test_segments_with_memory_equal_transformers_4():
    # Three segments, the second longer than mem_len (memory cut), distances past clamp_len,
    # n_head * d_head != d_model: hidden states, log-probabilities, losses and memories.
    model, ref = _reference_model()
    mems = None
    with torch.no_grad():
        for k in range(3):
            ids = ref[f"ids_{k}"]
            out = model(input_ids=ids, mems=mems, labels=ids)
            torch.testing.assert_close(out.last_hidden_state, ref[f"hidden_{k}"], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.logits.log_softmax(-1), ref[f"logprobs_{k}"], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.loss, ref[f"loss_{k}"], rtol=0, atol=1e-5)
            mems = out.mems
    for n, m in enumerate(mems):
        torch.testing.assert_close(m, ref[f"mems_{n}"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_equal_transformers_4_on_their_tokens(side):
    # transformers 4.x had no attention_mask: a padded row's tokens match its unpadded reference.
    model, ref = _reference_model()
    ids = ref["ids_0"]
    pads = torch.zeros(ids.shape[0], 3, dtype=torch.long)
    padded = torch.cat([pads, ids] if side == "left" else [ids, pads], dim=1)
    mask = torch.cat([pads, torch.ones_like(ids)] if side == "left" else [torch.ones_like(ids), pads], dim=1)
    with torch.no_grad():
        out = model(input_ids=padded, attention_mask=mask).last_hidden_state
    real = out[:, 3:] if side == "left" else out[:, :ids.shape[1]]
    torch.testing.assert_close(real, ref["hidden_0"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("option", [{"adaptive": True}, {"same_length": True}, {"div_val": 4}, {"pre_lnorm": True},
                                    {"untie_r": False}, {"d_embed": 16}])
def test_transformers_4_options_this_model_lacks_are_refused(tmp_path, option):
    """transformers 4.x's TransfoXLConfig options (its defaults were adaptive softmax and
    same_length) were kept as unknown attributes and the model built without them."""
    sizes = dict(n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64)
    with pytest.raises(ValueError, match=f"does not implement {next(iter(option))}="):
        TransfoXLConfig(**sizes, **option)
    # the same in a model directory's config.json: from_pretrained refuses it too
    TransfoXLConfig(**sizes).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, **option}))
    with pytest.raises(ValueError, match="docs/models.md#transformer-xl"):
        TransfoXLConfig.from_pretrained(tmp_path)
    # the values that turn them off are fine
    assert TransfoXLConfig(**sizes, adaptive=False, same_length=False, div_val=1, d_embed=32).d_model == 32


def test_a_transformers_4_config_of_the_implemented_model_is_taken_and_cutoffs_are_refused(tmp_path):
    """transformers 4.x never read `adaptive` and wrote `adaptive: true` into every config.json,
    that of the model built here (`cutoffs: []`, as scripts/make_transfo_xl_reference.py builds
    it) too: that config was refused, and one with cutoffs (4.x's adaptive softmax) taken."""
    sizes = dict(n_layer=1, d_model=32, n_head=2, d_head=16, d_inner=64)
    # (what 4.44's TransfoXLConfig(cutoffs=[], div_val=1, same_length=False, ...).save_pretrained writes)
    saved = {**sizes, "model_type": "transfo-xl", "adaptive": True, "attn_type": 0, "clamp_len": 4, "cutoffs": [],
             "d_embed": 32, "div_val": 1, "init": "normal", "init_range": 0.01, "init_std": 0.02, "mem_len": 5,
             "pre_lnorm": False, "proj_init_std": 0.01, "same_length": False, "sample_softmax": -1,
             "tie_projs": [False], "untie_r": True, "vocab_size": 16, "transformers_version": "4.44.2"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert TransfoXLConfig.from_pretrained(tmp_path).d_model == 32
    with pytest.raises(ValueError, match=r"does not implement cutoffs=\[4, 8\]"):
        TransfoXLConfig(**sizes, cutoffs=[4, 8], adaptive=False)


def test_loss_is_the_shifted_cross_entropy_ignoring_minus_100():
    # labels are the inputs (transformers' causal-LM convention): position t is scored on token
    # t + 1, and -100 (a collator's padding label) is left out of the mean
    model = _model(seed=2)
    ids = _ids(2, 7, seed=8)
    labels = ids.clone()
    labels[0, 5:] = -100
    labels[1, 2] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(6) if labels[b, t + 1] != -100]
    assert len(terms) == 9
    torch.testing.assert_close(out.loss.double(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_padding_after_memory_does_not_change_real_positions():
    # the attention mask covers the current segment's keys, not the memory's
    model = _model(mem_len=64)
    first, second = _ids(2, 8, seed=1), _ids(2, 5, seed=2)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        mems = model(input_ids=first).mems
        padded = model(input_ids=second, mems=mems, attention_mask=mask).logits
        alone = model(input_ids=second[1:, :2], mems=[m[1:] for m in mems]).logits
        unmasked = model(input_ids=second, mems=mems).logits
    torch.testing.assert_close(padded[0], unmasked[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1, :2], alone[0], rtol=0, atol=1e-5)


def test_hidden_states_are_the_scaled_embeddings_then_each_layers_output():
    """`embed --layers` indexes the hidden states as transformers 4's Transformer-XL gave them:
    0 the token embeddings times sqrt(d_model), i the output of layer i (the input of layer
    i + 1), the last one the last hidden state: checked against the layers run one by one."""
    model = _model(seed=3)
    ids = _ids(2, 7, seed=4)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        states = out.hidden_states
        assert len(states) == model.config.n_layer + 1
        h = model.transformer.word_emb(ids) * math.sqrt(model.config.d_model)
        torch.testing.assert_close(states[0], h, rtol=0, atol=0)
        T = ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(2, T, T)
        r = _sinusoid(torch.arange(T - 1, -1, -1), model.config.d_model)
        for n, layer in enumerate(model.transformer.layers):
            h = layer(h, r, None, causal)
            torch.testing.assert_close(states[n + 1], h, rtol=0, atol=1e-5)
    torch.testing.assert_close(states[-1], out.last_hidden_state, rtol=0, atol=0)



def test_a_clamp_len_of_0_clamps_no_distance_as_in_transformers_4():
    """clamp_len clamps the relative distances only when above 0, as transformers 4's
    Transformer-XL (whose configs give 0 or -1 for none): at 0 every distance keeps its own
    encoding, not all the encoding of distance 0; a positive clamp_len changes the output."""
    ids = _ids(2, 9, seed=5)
    with torch.no_grad():
        unclamped = _model(seed=6, clamp_len=-1)(input_ids=ids).logits
        zero = _model(seed=6, clamp_len=0)(input_ids=ids).logits
        clamped = _model(seed=6, clamp_len=2)(input_ids=ids).logits
    torch.testing.assert_close(zero, unclamped, rtol=0, atol=0)
    assert not torch.equal(clamped, unclamped)
