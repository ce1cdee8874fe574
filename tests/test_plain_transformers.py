"""What a user does with a `protrans train` run directory or checkpoint using transformers alone:
the fill-mask and feature-extraction pipelines over the masked LMs (the trained head's
prediction, the tokenizer's mask token in the family's spacing), T5's `generate()`, the class
config.json's `architectures` names, its save_pretrained round trip as safetensors only, and the
parameter count and pipeline the model card gives. The references are plain forward passes of
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
