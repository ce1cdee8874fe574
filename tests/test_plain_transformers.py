"""What a user does with a `protrans train` run directory or checkpoint using transformers alone:
the fill-mask and feature-extraction pipelines over the masked LMs (the trained head's
prediction, the tokenizer's mask token in the family's spacing), T5's, Transformer-XL's and
XLNet's `generate()`, the class config.json's `architectures` names, its save_pretrained round
trip as safetensors only, and the parameter count and pipeline the model card gives. The references are plain forward passes of
the transformers classes over the same directories."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import DATA
from protrans_cli.models import FAMILIES
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train

LEARNABLE = str(DATA / "train" / "learnable.txt")
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQ"

torch.set_num_threads(1)


def _run(tmp_path, family):
    """A 4-step tiny run with a checkpoint at step 2: (run directory, that intermediate checkpoint)."""
    config = TrainConfig(family=family, corpus=[LEARNABLE], output_dir=str(tmp_path / f"run_{family}"), num_steps=4,
                         max_length=64, global_batch_size=8, micro_batch_size=8, lr=3e-3, warmup_steps=1,
                         log_every=2, save_every=2, keep_last=2, threads=1, bucket_batches=2)
    run = train(config).run_dir
    return run, run / "checkpoints" / "step_00000002"


def _front_matter(directory) -> dict:
    return yaml.safe_load((directory / "README.md").read_text().split("---\n")[1])


def _card_parameters(directory) -> int:
    line = next(x for x in (directory / "README.md").read_text().splitlines() if x.startswith("- Parameters: "))
    return int(line.split()[2].replace(",", ""))


def _masked(family, tokenizer) -> str:
    """The protein with its 4th residue masked, written as the family's tokenizer takes text:
    residues spaced ("M K T [MASK] Y", ProtBert's card) except for ESM ("MKT<mask>Y")."""
    residues = list(PROTEIN)
    residues[3] = tokenizer.mask_token
    return "".join(residues) if family == "esm" else " ".join(residues)


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "electra", "esm"])
def test_fill_mask_and_feature_extraction_pipelines_use_the_trained_model(tmp_path, family):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline

    run, checkpoint = _run(tmp_path, family)
    for directory in (run, checkpoint):
        # ELECTRA's masked LM is its generator, a complete directory of its own
        masked_lm = directory / "generator" if family == "electra" else directory
        tokenizer = AutoTokenizer.from_pretrained(masked_lm)
        text = _masked(family, tokenizer)
        tokens = tokenizer.tokenize(text)
        assert len(tokens) == len(PROTEIN) and tokens[3] == tokenizer.mask_token, tokens
        reference = AutoModelForMaskedLM.from_pretrained(masked_lm, use_kernels=False).eval()
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = reference(**inputs).logits[0]
        site = int((inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
        probabilities = logits[site].softmax(-1)
        filled = pipeline("fill-mask", model=str(masked_lm), top_k=3)(text)
        top = probabilities.topk(3)
        assert [f["token"] for f in filled] == top.indices.tolist()
        assert [f["score"] for f in filled] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert filled[0]["token_str"].strip() in set("ACDEFGHIKLMNPQRSTVWYX")
        # feature-extraction: the encoder's last hidden state, a row per token (special ones included)
        encoder = AutoModel.from_pretrained(directory, use_kernels=False).eval()
        plain = _masked(family, tokenizer).replace(tokenizer.mask_token, PROTEIN[3])
        with torch.no_grad():
            expected = encoder(**tokenizer(plain, return_tensors="pt")).last_hidden_state[0]
        rows = torch.tensor(pipeline("feature-extraction", model=str(directory))(plain)[0])
        assert rows.shape == expected.shape and rows.shape[0] == len(PROTEIN) + 2
        torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-5)
        # (ELECTRA's root is the discriminator, which fills no mask)
        assert _front_matter(directory).get("pipeline_tag") == (None if family == "electra" else "fill-mask")


def _greedy(model, input_ids, steps: int) -> list[int]:
    """Greedy decoding by hand: the decoder from T5's start token, one forward pass per token."""
    decoded = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor([decoded])).logits
            decoded.append(int(logits[0, -1].argmax()))
    return decoded


def test_t5_generates_and_its_encoder_loads_alone(tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel, T5ForConditionalGeneration

    run, checkpoint = _run(tmp_path, "t5")
    for directory in (run, checkpoint):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = T5ForConditionalGeneration.from_pretrained(directory, use_kernels=False).eval()
        # (was False: the card's encoder count had built a T5EncoderModel on the model's own config)
        assert model.config.is_encoder_decoder and model.config.use_cache
        text = " ".join(PROTEIN[:5]) + " <extra_id_0> " + " ".join(PROTEIN[6:])
        inputs = tokenizer(text, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=1)
        assert generated[0].tolist() == _greedy(model, inputs["input_ids"], 4)
        encoder = T5EncoderModel.from_pretrained(directory, use_kernels=False).eval()
        with torch.no_grad():
            torch.testing.assert_close(encoder(**inputs).last_hidden_state,
                                       model.get_encoder()(**inputs).last_hidden_state)
        assert "pipeline_tag" not in _front_matter(directory)  # (transformers 5 has no text2text-generation)


@pytest.mark.parametrize("family", ["bert", "albert", "electra", "t5", "xlnet", "esm"])
def test_the_saved_class_round_trips_as_safetensors_with_the_cards_parameter_count(tmp_path, family):
    import transformers

    run, checkpoint = _run(tmp_path, family)
    for directory in (run, checkpoint):
        assert not [p.name for p in directory.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")
                    and p.name != "training_state.pt"]
        config = transformers.AutoConfig.from_pretrained(directory)
        (architecture,) = config.architectures
        model = getattr(transformers, architecture).from_pretrained(directory, use_kernels=False)
        front = _front_matter(directory)
        assert front["library_name"] == "transformers" and len(front["tags"]) == len(set(front["tags"]))
        # the card counts the pretraining model: ELECTRA's is the pair, the generator under generator/
        generator = (transformers.ElectraForMaskedLM.from_pretrained(directory / "generator").num_parameters()
                     - config.vocab_size * config.embedding_size - config.max_position_embeddings
                     * config.embedding_size - config.type_vocab_size * config.embedding_size
                     - 2 * config.embedding_size) if family == "electra" else 0
        assert _card_parameters(directory) == model.num_parameters() + generator == FAMILIES[family].num_params("tiny")
        model.save_pretrained(tmp_path / "again")
        assert sorted(p.name for p in (tmp_path / "again").iterdir() if p.suffix != ".json") == ["model.safetensors"]
        again = getattr(transformers, architecture).from_pretrained(tmp_path / "again", use_kernels=False)
        before, after = model.state_dict(), again.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_t5_run_saved_without_is_encoder_decoder_by_earlier_versions_reads_as_encoder_decoder(tmp_path, run_cli):
    import json
    import shutil

    from protrans_cli.models import FAMILIES as families
    from protrans_cli.models import open_config

    run, _ = _run(tmp_path, "t5")
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("checkpoints"))
    saved = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**saved, "is_encoder_decoder": False, "use_cache": False}))
    assert open_config(old).config.is_encoder_decoder
    assert families["t5"].load_masked_lm(str(old)).config.is_encoder_decoder
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\n" + PROTEIN + "\n")
    # perplexity read it as an encoder alone ("its tokenizer has no mask token"); now as the run it is
    tables = []
    for directory in (run, old):
        res = run_cli("perplexity", fasta, "-m", directory, "-o", tmp_path / f"{directory.name}.tsv")
        assert res.exit_code == 0, res.stderr
        tables.append((tmp_path / f"{directory.name}.tsv").read_text().replace(str(directory), ""))
    assert tables[0] == tables[1]


# -- generate() on the causal runs (Transformer-XL, XLNet) -----------------------------------------

def _hand_greedy(model, ids, steps: int):
    """Greedy decoding by hand: the argmax of a pass over the whole sequence so far, no memory."""
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_transfo_xl_generate_is_greedy_by_hand_with_and_without_memory_past_mem_len():
    from protrans_cli.models.transfo_xl import TransfoXLLMHeadModel

    torch.manual_seed(0)
    # (a wide initialisation: the tiny default's greedy output repeats one token)
    config = FAMILIES["transfo_xl"].build_config("tiny", mem_len=3, initializer_range=0.3)
    model = TransfoXLLMHeadModel(config).eval()
    assert TransfoXLLMHeadModel.can_generate()
    prompts = torch.randint(4, 29, (2, 7))  # longer than mem_len
    want = _hand_greedy(model, prompts, 12)
    assert len(set(want[0, 7:].tolist())) > 3, want  # (not one token over and over)
    for use_cache in (True, False):
        got = model.generate(input_ids=prompts, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             use_cache=use_cache)
        assert torch.equal(got, want), (use_cache, got, want)
        # prompts of unequal length, the shorter padded on the left
        short = prompts[1:, 3:]
        batch = torch.cat([prompts[:1], torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
        mask = torch.ones_like(batch)
        mask[1, :3] = 0
        got = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, use_cache=use_cache)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1, 3:], _hand_greedy(model, short, 12)[0])
    # beam search reorders the memory with the beams; sampling: the same seed, the same draws
    beams = [model.generate(input_ids=prompts, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=c)
             for c in (True, False)]
    assert torch.equal(beams[0], beams[1])
    drawn = []
    for use_cache in (True, True, False):
        torch.manual_seed(5)
        drawn.append(model.generate(input_ids=prompts, max_new_tokens=10, do_sample=True, use_cache=use_cache))
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[0], drawn[2])


def _fasta_sequences(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(">")]


@pytest.mark.parametrize("family", ["transfo_xl", "xlnet"])
def test_a_causal_run_generates_with_plain_transformers_as_protrans_generate_greedy(tmp_path_factory, run_cli,
                                                                                     family, capfd):
    """The run directory as `protrans train` writes it (and one without generation_config.json,
    as earlier versions wrote Transformer-XL's): AutoModelForCausalLM's greedy generate() from the
    prompt ids that protrans generate starts from (Transformer-XL: `<s>` and the residues; XLNet:
    the residues, add_special_tokens=False: no trailing `<sep> <cls>`), with what protrans
    generate may not draw suppressed and its end token as eos (the saved generation config's; XLNet's
    directory without it: passed, its config's eos is `</s>`), equals `protrans generate --top-k 1`
    (Transformer-XL: 41 tokens, past its mem_len of 32). XLNet: the run's generation config says
    `<sep>`, and with `<sep>` made likely (the head's bias) plain generate() stops there, at
    --min-length, where protrans generate ends its protein."""
    import shutil

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a tiny random run saved as `protrans train` saves it (conftest.save_tiny_model), initialised
    # wide: the default's greedy output repeats one residue
    torch.manual_seed(0)
    tiny = FAMILIES[family]
    run = tmp_path_factory.mktemp(family)
    tokenizer = tiny.build_tokenizer()
    tiny.save_pretrained(tiny.pretraining_model(tiny.build_config("tiny", tokenizer, initializer_range=0.3)).eval(),
                         tokenizer, run)
    old = tmp_path_factory.mktemp("old")
    shutil.copytree(run, old, dirs_exist_ok=True)
    (old / "generation_config.json").unlink()
    prompt, max_length = "MKTAY", 40
    res = run_cli("generate", "-m", run, "-n", "1", "--top-k", "1", "--prompt", prompt, "--max-length", max_length)
    assert res.exit_code == 0, res.stderr
    (expected,) = _fasta_sequences(res.stdout)
    assert len(set(expected[len(prompt):])) > 3, expected
    for directory in (run, old):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        capfd.readouterr()
        transformers.logging.set_verbosity_warning()
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        ids = tokenizer(" ".join(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        if family == "transfo_xl":
            ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
            end = tokenizer.eos_token_id
            assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id,
                    model.generation_config.pad_token_id) == (tokenizer.bos_token_id, end, tokenizer.pad_token_id)
        else:
            end = tokenizer.sep_token_id  # (the run's generation config; `</s>` in the directory without it)
            assert model.generation_config.eos_token_id == (end if directory == run else tokenizer.eos_token_id)
        allowed = set(tokenizer.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY"))) | {end}
        suppress = [t for t in range(model.config.vocab_size) if t not in allowed]
        # (Transformer-XL: the saved generation config's ids, no attention mask, and no warning)
        extra = {} if family == "transfo_xl" else {
            "use_mems": False, "attention_mask": torch.ones_like(ids)}  # (docs: XLNet's mems)
        if family == "xlnet" and directory == old:
            extra["eos_token_id"] = end
        out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=max_length - len(prompt),
                             suppress_tokens=suppress, **extra)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:new.index(end)] if end in new else new
        assert prompt + "".join(tokenizer.convert_ids_to_tokens(new)) == expected
        if family == "transfo_xl":
            assert "warn" not in capfd.readouterr().err.lower()


def test_an_xlnet_run_stops_plain_generate_at_sep_where_protrans_generate_ends(tmp_path_factory, run_cli):
    """XLNet runs saved `</s>` as the generation config's eos (copied from config.json), a token
    ProtXLNet never writes after a protein (`residues <sep> <cls>`), so plain generate() went on
    where protrans generate stopped at `<sep>`. A run whose head makes `<sep>` the likeliest token:
    protrans generate --top-k 1 --min-length 12 ends the protein at 12 residues, and plain greedy
    generate() with the run's generation config (no eos passed) writes the same residues and then
    `<sep>`, where it stops."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.manual_seed(0)
    family = FAMILIES["xlnet"]
    run = tmp_path_factory.mktemp("xlnet_sep")
    tokenizer = family.build_tokenizer()
    model = family.pretraining_model(family.build_config("tiny", tokenizer, initializer_range=0.3)).eval()
    with torch.no_grad():
        model.lm_loss.bias[tokenizer.sep_token_id] += 50.0
    family.save_pretrained(model, tokenizer, run)
    sep = tokenizer.sep_token_id
    assert GenerationConfig.from_pretrained(run).eos_token_id == sep != tokenizer.eos_token_id
    prompt, min_length, max_length = "MKTAY", 12, 40
    res = run_cli("generate", "-m", run, "-n", "1", "--top-k", "1", "--prompt", prompt,
                  "--min-length", min_length, "--max-length", max_length)
    assert res.exit_code == 0, res.stderr
    (expected,) = _fasta_sequences(res.stdout)
    assert len(expected) == min_length  # (stopped at <sep>, not at --max-length)
    tokenizer = AutoTokenizer.from_pretrained(run)
    plain = AutoModelForCausalLM.from_pretrained(run).eval()
    ids = tokenizer(" ".join(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    allowed = set(tokenizer.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY"))) | {sep}
    out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, use_mems=False,
                         max_new_tokens=max_length - len(prompt), min_new_tokens=min_length - len(prompt),
                         suppress_tokens=[t for t in range(plain.config.vocab_size) if t not in allowed])
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == sep and sep not in new[:-1] and len(new) == min_length - len(prompt) + 1, new
    assert prompt + "".join(tokenizer.convert_ids_to_tokens(new[:-1])) == expected
