"""ELECTRA's generator/discriminator pair: shared embeddings, sizes, save layout, reload."""

from __future__ import annotations

import torch

from protrans_cli.models import FAMILIES, load_model

torch.set_num_threads(1)
FAMILY = FAMILIES["electra"]


def _pair(seed=0, **overrides):
    torch.manual_seed(seed)
    tokenizer = FAMILY.build_tokenizer()
    return tokenizer, FAMILY.pretraining_model(FAMILY.build_config("tiny", tokenizer, **overrides))


def test_generator_is_a_quarter_and_shares_embeddings():
    _, pair = _pair()
    gen, disc = pair.generator, pair.discriminator
    assert gen.config.hidden_size * 4 == disc.config.hidden_size
    assert gen.config.num_hidden_layers == disc.config.num_hidden_layers
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    # shared tensors are counted once
    n = sum(p.numel() for p in pair.parameters())
    assert n == FAMILY.num_params("tiny")
    assert n < sum(p.numel() for p in gen.parameters()) + sum(p.numel() for p in disc.parameters())


def test_generator_loss_reaches_the_shared_embeddings():
    _, pair = _pair()
    ids = torch.randint(5, 30, (2, 8))
    loss = pair.generator(input_ids=ids, labels=ids).loss
    loss.backward()
    grad = pair.discriminator.electra.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_generator_size_option():
    _, pair = _pair(generator_size=0.5)
    assert pair.generator.config.hidden_size * 2 == pair.discriminator.config.hidden_size


def test_save_layout_and_reload(tmp_path):
    tokenizer, pair = _pair(seed=1)
    pair.eval()
    FAMILY.save_pretrained(pair, tokenizer, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "generator" / "config.json").is_file()
    reloaded = FAMILY.load_pretraining_model(tmp_path).eval()
    assert reloaded.generator.electra.embeddings is reloaded.discriminator.electra.embeddings
    ids = torch.randint(5, 30, (2, 8))
    with torch.no_grad():
        assert torch.equal(reloaded.generator(input_ids=ids).logits, pair.generator(input_ids=ids).logits)
        assert torch.equal(reloaded.discriminator(input_ids=ids).logits, pair.discriminator(input_ids=ids).logits)
        # embed loads the discriminator at the root
        loaded = load_model(tmp_path)
        expected = pair.discriminator.electra(input_ids=ids).last_hidden_state
        torch.testing.assert_close(loaded.model(input_ids=ids).last_hidden_state, expected, rtol=0, atol=1e-6)
    assert loaded.model.config.hidden_size == pair.discriminator.config.hidden_size
    # generator/ is a complete HF directory of its own, tokenizer included.
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    probe = FAMILY.prepare("MKTAYIAKQR")
    assert AutoTokenizer.from_pretrained(tmp_path / "generator")(probe)["input_ids"] == tokenizer(probe)["input_ids"]
    generator = AutoModelForMaskedLM.from_pretrained(tmp_path / "generator", use_kernels=False).eval()
    with torch.no_grad():
        assert torch.equal(generator(input_ids=ids).logits, pair.generator(input_ids=ids).logits)
    from protrans_cli.models.electra import ElectraPair  # as docs/models.md shows it

    again = ElectraPair.from_pretrained(tmp_path).eval()
    assert again.generator.electra.embeddings is again.discriminator.electra.embeddings
    with torch.no_grad():
        assert torch.equal(again.generator(input_ids=ids).logits, pair.generator(input_ids=ids).logits)


def test_the_generator_config_is_stamped_with_the_versions_as_the_root_one(tmp_path):
    """generator/config.json carries protrans_version and torch_version as the root's does, and
    an auto_map inherited through --init-from is dropped there too (it named code the directory
    does not hold)."""
    import json

    import protrans_cli

    tokenizer, pair = _pair()
    pair.generator.config.auto_map = {"AutoModelForMaskedLM": "modeling_x.X"}
    FAMILY.save_pretrained(pair, tokenizer, tmp_path)
    for path in (tmp_path / "config.json", tmp_path / "generator" / "config.json"):
        config = json.loads(path.read_text())
        assert config["protrans_version"] == protrans_cli.__version__, path
        assert config["torch_version"] == torch.__version__.split("+")[0], path
        assert "auto_map" not in config, path


def test_a_discriminator_without_its_generator_is_named_as_such(tmp_path):
    # What Rostlab/prot_electra_discriminator_bfd publishes: --init-from said "no file named
    # model.safetensors" although the discriminator's was there; the generator was missing.
    import pytest

    from protrans_cli.errors import ModelError

    tokenizer, pair = _pair()
    pair.discriminator.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"an ELECTRA discriminator without its generator \(.*/generator/\)"):
        FAMILY.load_pretraining_model(tmp_path)
    assert load_model(tmp_path).family is FAMILY  # embed needs the discriminator only


def test_a_generator_with_embeddings_of_its_own_is_warned_about(tmp_path, capsys):
    """The pair shares the discriminator's embeddings: a generator saved with other ones (paired
    with a discriminator it was not trained with) lost them without a word."""
    from transformers import ElectraForMaskedLM

    tokenizer, pair = _pair(seed=2)
    FAMILY.save_pretrained(pair, tokenizer, tmp_path)
    FAMILY.load_pretraining_model(tmp_path)  # a pair saved by protrans: shared, nothing to say
    assert "embeddings" not in capsys.readouterr().err
    generator = ElectraForMaskedLM.from_pretrained(tmp_path / "generator", use_kernels=False)
    with torch.no_grad():
        generator.electra.embeddings.word_embeddings.weight.add_(1.0)
    generator.save_pretrained(tmp_path / "generator")
    reloaded = FAMILY.load_pretraining_model(tmp_path)
    err = capsys.readouterr().err
    assert "the generator's embeddings (word_embeddings.weight) differ from the discriminator's" in err
    assert reloaded.generator.electra.embeddings is reloaded.discriminator.electra.embeddings


def test_embedding_with_the_generator_is_warned_about(tmp_path, run_cli):
    """`embed -m RUN/generator` embedded with ELECTRA's small masked-LM generator without a word,
    where ProtTrans's ProtElectra embeddings are the discriminator's: one warning; the run's
    directory itself (the discriminator) gives none."""
    tokenizer, pair = _pair(seed=1)
    FAMILY.save_pretrained(pair.eval(), tokenizer, tmp_path / "run")
    (tmp_path / "x.fa").write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("embed", tmp_path / "x.fa", "-m", tmp_path / "run" / "generator", "-o", tmp_path / "g.h5")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("is an ELECTRA generator (ElectraForMaskedLM)") == 1
    assert "ProtElectra's embeddings are the discriminator's" in r.stderr.replace("\n", " ")
    r = run_cli("embed", tmp_path / "x.fa", "-m", tmp_path / "run", "-o", tmp_path / "d.h5")
    assert r.exit_code == 0 and "generator" not in r.stderr, r.stderr


def test_generator_size_scales_hidden_size_heads_and_intermediate_size_alike():
    """The generator is `generator_size` of the discriminator in hidden size, heads and
    intermediate size alike (a quarter by default, as ELECTRA's and ProtElectra's), of the same
    depth and the embedding width the two share (hand-computed from the presets' sizes)."""
    from protrans_cli.models.electra import generator_config

    _, pair = _pair()  # tiny discriminator: 32 wide, 4 heads, 64 inner, 2 layers, embeddings 32
    gen = pair.generator.config
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (8, 1, 16)
    assert (gen.num_hidden_layers, gen.embedding_size) == (2, 32)
    big = generator_config(FAMILY.build_config("prot_electra"))  # 1024 wide, 16 heads, 4096 inner
    assert (big.hidden_size, big.num_attention_heads, big.intermediate_size) == (256, 4, 1024)
    half = generator_config(FAMILY.build_config("prot_electra", generator_size=0.5))
    assert (half.hidden_size, half.num_attention_heads, half.intermediate_size) == (512, 8, 2048)


def test_a_generator_size_whose_width_heads_do_not_divide_is_rounded_down_to_a_multiple_of_them():
    # --set generator_size=0.3 on a 768-wide, 12-head discriminator: 4 heads (3.6 rounded) and
    # 230 wide (230.4 rounded), which 4 heads do not divide: the width goes down to 228, and the
    # pair builds (transformers refuses a hidden size that is no multiple of the heads)
    from protrans_cli.models.electra import generator_config

    config = FAMILY.build_config("tiny", hidden_size=768, num_attention_heads=12, intermediate_size=64,
                                 num_hidden_layers=1, generator_size=0.3)
    gen = generator_config(config)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (228, 4, 19)
    pair = FAMILY.pretraining_model(config)
    assert pair.generator.config.hidden_size == 228
    ids = torch.randint(5, 30, (1, 6))
    with torch.no_grad():
        assert pair.generator(input_ids=ids).logits.shape == (1, 6, config.vocab_size)


def test_the_masked_lm_of_a_run_or_of_its_generator_folder_is_the_generator(tmp_path):
    # `protrans variants -m RUN` and `-m RUN/generator` (as Rostlab/prot_electra_generator_bfd, a
    # generator on its own) both score with the generator: logits as transformers' own
    from transformers import AutoModelForMaskedLM

    tokenizer, pair = _pair(seed=2)
    FAMILY.save_pretrained(pair.eval(), tokenizer, tmp_path)
    ids = torch.randint(5, 30, (2, 8))
    with torch.no_grad():
        expected = AutoModelForMaskedLM.from_pretrained(tmp_path / "generator", use_kernels=False).eval()(
            input_ids=ids).logits
        for directory in (tmp_path, tmp_path / "generator"):
            model = FAMILY.load_masked_lm(directory).eval()
            assert torch.equal(model(input_ids=ids).logits, expected), directory
