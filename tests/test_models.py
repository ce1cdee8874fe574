"""The model-family registry: every family builds, tokenizes one token per residue, saves and
loads back to the same hidden states; published presets have the published sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protrans_cli.errors import ModelError, UsageError
from protrans_cli.models import CHECKPOINTS, FAMILIES, family_for_config, get_family, load_model

torch.set_num_threads(1)

NAMES = list(FAMILIES)
# unequal lengths (padding), X and every rare residue, a single residue
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDXUZOB", "W", "mkvLAGUE"]


def _tiny(family, seed=0):
    torch.manual_seed(seed)
    tokenizer = family.build_tokenizer()
    config = family.build_config("tiny", tokenizer)
    model = family.pretraining_model(config).eval()
    return tokenizer, config, model


def test_registry_order_and_lookup():
    assert NAMES == ["bert", "roberta", "albert", "electra", "t5", "xlnet", "transfo_xl", "esm", "esmc"]
    assert get_family("bert") is FAMILIES["bert"]
    with pytest.raises(UsageError, match="known: bert"):
        get_family("gpt7")


@pytest.mark.parametrize("name", NAMES)
def test_tiny_preset_builds_and_runs(name):
    family = FAMILIES[name]
    tokenizer, config, model = _tiny(family)
    assert "tiny" in family.presets
    assert family.num_params("tiny") == sum(p.numel() for p in model.parameters())
    assert family.num_params("tiny") < 2_000_000
    assert family_for_config(config) is family


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_round_trip(name, tmp_path):
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [family.prepare(s) for s in SEQS]
    for text in texts:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.mask_token_id == tokenizer.mask_token_id
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    a, mask_a = family.encode(tokenizer, SEQS)
    b, mask_b = family.encode(reloaded, SEQS)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(mask_a, mask_b)


@pytest.mark.parametrize("name", NAMES)
def test_saved_tokenizer_config_is_readable_by_transformers_4(name, tmp_path):
    """transformers 4.x (4.46-4.57 checked by hand) has no class TokenizersBackend and takes
    `extra_special_tokens` for a dict: the tokenizer_config.json a family writes names
    PreTrainedTokenizerFast and lists its extra specials as additional_special_tokens, and
    transformers 5 reads that back to the tokenizer it reads from its own save."""
    from transformers import AutoTokenizer

    from protrans_cli.models.tokenizers import save_tokenizer

    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    plain, portable = tmp_path / "plain", tmp_path / "portable"
    tokenizer.save_pretrained(plain)
    save_tokenizer(tokenizer, portable)
    data = json.loads((portable / "tokenizer_config.json").read_text())
    assert data["tokenizer_class"] != "TokenizersBackend"
    assert not isinstance(data.get("extra_special_tokens", {}), list)
    if name in ("t5", "xlnet"):
        assert data["additional_special_tokens"]
    a, b = AutoTokenizer.from_pretrained(plain), AutoTokenizer.from_pretrained(portable)
    assert type(a) is type(b)
    assert a.get_vocab() == b.get_vocab() and a.all_special_ids == b.all_special_ids
    assert a.all_special_tokens == b.all_special_tokens and a.padding_side == b.padding_side
    texts = [family.prepare(s) for s in SEQS]
    assert [a(t)["input_ids"] for t in texts] == [b(t)["input_ids"] for t in texts]
    ids = a(texts[0])["input_ids"]
    assert a.decode(ids, skip_special_tokens=True) == b.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", NAMES)
def test_a_loaded_tokenizer_saved_again_writes_the_file_a_new_one_writes(name, tmp_path):
    """`train --init-from` (and finetune's model/) save the tokenizer they loaded: transformers 5
    wrote the loading's `is_local` and `local_files_only` into that tokenizer_config.json, which a
    run trained from scratch does not hold. Saved again, the file is the first save's, but for the
    family's own loading settings (do_lower_case: false for ProtBert's families)."""
    from protrans_cli.models.tokenizers import save_tokenizer

    family = FAMILIES[name]
    first, again = tmp_path / "first", tmp_path / "again"
    save_tokenizer(family.build_tokenizer(), first)
    save_tokenizer(family.load_tokenizer(first, local_files_only=True), again)
    written = json.loads((again / "tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(written)
    expected = json.loads((first / "tokenizer_config.json").read_text()) | family.tokenizer_kwargs
    assert written == expected


def test_saved_tokenizer_of_a_t5_saved_by_transformers_4_keeps_no_add_prefix_space(tmp_path):
    """`train --init-from` a T5 that transformers 4.x saved (spiece.model, `add_prefix_space`):
    transformers 5 writes tokenizer.json only, and 4.x's T5TokenizerFast, given
    `add_prefix_space`, rebuilds itself from the spiece.model that is not there (4.57.6: "Either
    model_file or model_proto must be specified"). The key is dropped; 5 reads the same ids."""
    from transformers import AutoTokenizer

    from protrans_cli.models.tokenizers import save_tokenizer

    source = Path(__file__).parent / "data" / "tf4_reference" / "t5_full"
    assert json.loads((source / "tokenizer_config.json").read_text())["add_prefix_space"] is True
    tokenizer = FAMILIES["t5"].load_tokenizer(source)
    save_tokenizer(tokenizer, tmp_path)
    assert not (tmp_path / "spiece.model").exists()  # (else 4.x could rebuild, and the key may stay)
    assert "add_prefix_space" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    texts = [FAMILIES["t5"].prepare(s) for s in SEQS]
    assert [tokenizer(t)["input_ids"] for t in texts] == [AutoTokenizer.from_pretrained(tmp_path)(t)["input_ids"]
                                                           for t in texts]


@pytest.mark.parametrize("name", NAMES)
def test_one_token_per_residue(name):
    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    inputs, mask = family.encode(tokenizer, SEQS)
    assert mask.dtype == torch.bool and mask.shape == inputs["input_ids"].shape
    assert mask.sum(dim=1).tolist() == [len(s) for s in SEQS]
    ids = inputs["input_ids"]
    special_ids = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    # residue positions hold residue tokens, never a special token or padding
    assert not any(int(t) in special_ids for t in ids[mask])
    # padding and special tokens are outside the mask
    assert not mask[inputs["attention_mask"] == 0].any()
    # standard residues keep their identity: each maps to a distinct, non-unk token
    row = family.encode(tokenizer, ["ACDEFGHIKLMNPQRSTVWY"])[0]["input_ids"][0]
    residue_ids = row[family.encode(tokenizer, ["ACDEFGHIKLMNPQRSTVWY"])[1][0]].tolist()
    assert len(set(residue_ids)) == 20 and tokenizer.unk_token_id not in residue_ids


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_model_gives_same_hidden_states(name, tmp_path):
    family = FAMILIES[name]
    tokenizer, config, model = _tiny(family, seed=1)
    family.save_pretrained(model, tokenizer, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.family is family
    assert loaded.embedding_dim == family.embedding_dim(config)
    assert not loaded.model.training
    inputs, mask = family.encode(loaded.tokenizer, SEQS)
    with torch.no_grad():
        (ours,) = family.hidden_states(loaded.model, inputs, [-1])
        reference = _reference_forward(family, model, inputs)
        every = family.hidden_states(loaded.model, inputs, list(range(-loaded.num_layers - 1, 0)))
    assert ours.shape == (len(SEQS), inputs["input_ids"].shape[1], loaded.embedding_dim)
    torch.testing.assert_close(ours[mask], reference[mask], rtol=0, atol=1e-5)
    assert len(every) == loaded.num_layers + 1
    torch.testing.assert_close(every[-1], ours, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_batching_does_not_change_residue_rows(name, tmp_path):
    family = FAMILIES[name]
    tokenizer, config, model = _tiny(family, seed=2)
    family.save_pretrained(model, tokenizer, tmp_path)
    loaded = load_model(tmp_path)
    with torch.no_grad():
        inputs, mask = family.encode(loaded.tokenizer, SEQS)
        (batch,) = family.hidden_states(loaded.model, inputs, [-1])
        for i, seq in enumerate(SEQS):
            one_inputs, one_mask = family.encode(loaded.tokenizer, [seq])
            (one,) = family.hidden_states(loaded.model, one_inputs, [-1])
            torch.testing.assert_close(batch[i][mask[i]], one[0][one_mask[0]], rtol=0, atol=1e-5)


def _reference_forward(family, pretraining_model, inputs):
    """Last hidden state from a plain transformers forward of the pretraining model's encoder."""
    with torch.no_grad():
        if family.name == "t5":
            out = pretraining_model.encoder(input_ids=inputs["input_ids"],
                                            attention_mask=inputs["attention_mask"])
            return out.last_hidden_state
        if family.name == "electra":
            return pretraining_model.discriminator.electra(**inputs).last_hidden_state
        if family.name == "transfo_xl":
            return pretraining_model(**inputs, output_hidden_states=True).hidden_states[-1]
        base = getattr(pretraining_model, pretraining_model.base_model_prefix)
        return base(**inputs).last_hidden_state


def test_offline_missing_hub_model_is_one_line_model_error():
    with pytest.raises(ModelError) as info:
        load_model("prot_bert")
    message = str(info.value)
    assert "\n" not in message
    # (a library call is told of the model it is given, not embed's -m: errors.option)
    assert "Rostlab/prot_bert" in message and message.endswith(": model=DIR") and "offline" in message
    with pytest.raises(ModelError, match="pass the directory: model=DIR$"):
        load_model("someone/not_a_model_xyz")
    # the download hint names the revision asked for (`hf download` alone fetches main)
    with pytest.raises(ModelError, match=r"`hf download Rostlab/prot_bert --revision v2 --local-dir DIR`"):
        load_model("prot_bert", revision="v2")
    assert "--revision" not in message


def test_offline_an_esm_short_name_names_fair_esms_download_of_the_same_weights(run_cli, tmp_path, monkeypatch):
    """A node that ran fair-esm keeps its weights in torch hub's checkpoints folder
    (esm.pretrained's MODEL.pt): `-m esm2_t6_8M_UR50D` offline said to download what is there."""
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ModelError) as info:
        load_model("esm2_t6_8M_UR50D")
    assert "import-model" not in str(info.value)  # (no such file there: the download advice alone)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    pt = tmp_path / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    pt.write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(ModelError) as info:
        load_model("esm2_t6_8M_UR50D")
    assert str(info.value).endswith(f"; or convert fair-esm's download of the same weights, here: protrans "
                                    f"import-model {pt} -o DIR, then model=DIR")
    with pytest.raises(ModelError) as info:
        load_model("prot_bert")  # (not an ESM model: fair-esm has no file of it)
    assert "import-model" not in str(info.value)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">p\nMKTAYIAK\n")
    r = run_cli("embed", fasta, "-m", "esm2_t6_8M_UR50D", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and r.stderr.rstrip().endswith(f"import-model {pt} -o DIR, then -m DIR"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_no_network_without_hf_hub_offline_uses_the_cache_at_once(monkeypatch):
    """A cluster node without network and without HF_HUB_OFFLINE: every hub request retried for
    about half a minute (two minutes to load a cached model). One TCP probe of the hub's host
    now sends every request to the cache; a proxy in the environment is trusted instead."""
    import socket
    import time

    import protrans_cli.models as models

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    probes = []

    def unreachable(address, timeout=None):
        probes.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    models.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(ModelError, match="cannot be reached from here"):
            load_model("someone/not_a_model_xyz")
        assert time.perf_counter() - start < 10 and probes and probes[0][0] == "huggingface.co"
        models.hub_reachable.cache_clear()
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
        assert models.hub_reachable() and len(probes) == 1
    finally:
        models.hub_reachable.cache_clear()


def test_offline_missing_model_via_cli_has_no_traceback(run_cli, tmp_path):
    pytest.importorskip("protrans_cli.cli.embed")
    result = run_cli("embed", "-", "-m", "prot_bert", "-o", tmp_path / "o.h5", input=">a\nMK\n")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "-m DIR" in result.stderr


def _serve_as_the_hub(directory):
    """A local stand-in for the Hugging Face hub (HF_ENDPOINT) that serves `directory`'s files as
    every repository's `main`: a download that works, with no network. Returns the server."""
    import hashlib
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self, body=False):  # noqa: N802 - http.server's name
            parts = self.path.split("?")[0].split("/")
            file = Path(directory, *parts[parts.index("resolve") + 2:]) if "resolve" in parts else None
            if file is None or not file.is_file():
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self.do_HEAD(body=True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("blocked", ["read-only folder", "a file in the way"])
def test_a_hub_model_whose_download_the_cache_refuses_names_the_cache_not_the_network(tmp_path, blocked):
    """HPC and containers: the hub can be reached but the Hugging Face cache cannot be written (a
    read-only or full home, HF_HOME on a shared read-only store). The error said the model "could
    not be downloaded; download it where there is network", which was no help where there is."""
    import os
    import shutil
    import subprocess
    import sys

    tokenizer, config, model = _tiny(FAMILIES["bert"])
    FAMILIES["bert"].save_pretrained(model, tokenizer, tmp_path / "served")
    cache = tmp_path / "store" / "hub"
    cache.mkdir(parents=True)
    prefix = []
    if blocked == "read-only folder":
        cache.chmod(0o555)  # (root ignores the mode: its writes are refused in a user namespace of its own)
        if os.geteuid() == 0:
            if not shutil.which("unshare") or subprocess.run(["unshare", "--user", "true"]).returncode != 0:
                pytest.skip("root, and no user namespace to take its rights away")
            prefix = ["unshare", "--user"]
    else:
        (tmp_path / "file").write_text("")
        cache = tmp_path / "file" / "hub"
    server = _serve_as_the_hub(tmp_path / "served")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]))
    try:
        code = "from protrans_cli.models import load_model\nload_model('someone/tiny')"
        result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                timeout=120)
    finally:
        server.shutdown()
        server.server_close()
        if cache.is_dir():
            cache.chmod(0o755)  # (for pytest to remove it)
    said = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "ModelError: cannot load model 'someone/tiny': the Hugging Face cache" in said
    assert str(cache) in said and "HF_HOME" in said and "network" not in said, said



def test_the_hubs_warning_of_too_little_room_is_one_protrans_line_on_the_command_line(tmp_path):
    """huggingface_hub warns as a download begins that the cache lacks room for it (what comes
    before its No space left on device, or where the space it counts is not all there is): a raw
    "file_download.py:773: UserWarning: ..." and its `warnings.warn(` source line amid protrans'
    messages. On the command line it is one `protrans: warning:` line (and -q quiets it)."""
    import os
    import subprocess
    import sys

    tokenizer, config, model = _tiny(FAMILIES["bert"])
    FAMILIES["bert"].save_pretrained(model, tokenizer, tmp_path / "served")
    (tmp_path / "in.fa").write_text(">a\nMKV\n")
    server = _serve_as_the_hub(tmp_path / "served")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_CACHE=str(tmp_path / "hub"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]))
    # (the hub's own count of the room, made small: the download itself goes through)
    code = ("import shutil, sys, types\n"
            "from huggingface_hub import file_download\n"
            "file_download.shutil = types.SimpleNamespace(**vars(shutil))\n"
            "file_download.shutil.disk_usage = lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000)\n"
            "from protrans_cli._entry import main\n"
            "sys.argv = ['protrans', *sys.argv[1:]]\n"
            "main()\n")
    try:
        result = subprocess.run([sys.executable, "-c", code, "embed", "-m", "someone/tiny", str(tmp_path / "in.fa"),
                                 "-o", str(tmp_path / "out.h5")], capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    room = [line for line in lines if "Not enough free disk space" in line]
    assert room and all(line.startswith("protrans: warning: huggingface_hub: Not enough free disk space to download")
                        for line in room), result.stderr
    assert str(tmp_path / "hub") in room[0] and not any("warnings.warn(" in line for line in lines), result.stderr

def test_local_path_errors(tmp_path):
    from protrans_cli.errors import UsageError
    from protrans_cli.models import _names_missing_sentencepiece

    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="no such model directory"):
        load_model(str(tmp_path / "missing" / "model"))
    # (a home-relative path of one separator, quoted so the shell left its ~: a path, not the hub id "~/x")
    with pytest.raises(ModelError, match=r"^~/protrans-no-such-model-here: no such model directory$"):
        load_model("~/protrans-no-such-model-here")
    # `-m ""` was the current directory; "foo bar" was a hub model to download
    with pytest.raises(UsageError, match="no model given"):
        load_model("")
    with pytest.raises(ModelError, match=r"^foo bar: not a model directory, a short name .* or a valid hub id"):
        load_model("foo bar")
    with pytest.raises(ModelError, match=r"unknown dtype 'int8' \(use float32, bfloat16 or float16\)"):
        load_model("onehot-does-not-matter", dtype="int8")
    # the install hint only where the package is missing (transformers names it in other errors too)
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    assert not _names_missing_sentencepiece("Couldn't instantiate the backend tokenizer (sentencepiece ...)")


def test_a_weights_file_given_as_the_model_is_named_not_looked_up_on_the_hub(run_cli, tmp_path):
    """`embed -m model/model.safetensors` (the weights file, not its directory): one line saying
    what a model is, before any output; the hub is never asked for a repository of that name."""
    pytest.importorskip("protrans_cli.cli.embed")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", weights, "-o", tmp_path / "x.h5")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith(f"protrans: error: {weights}: not a directory; a model is a directory with "
                                    "config.json, a hub id or a short name (prot_t5_xl_half, "), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "x.fa"]
    # beside its config.json: the directory to give; fair-esm's .pt weights: what to give instead
    (tmp_path / "config.json").write_text("{}")
    result = run_cli("embed", fasta, "-m", weights, "-o", tmp_path / "x.h5")
    assert result.exit_code == 1 and result.stderr == (f"protrans: error: {weights}: a weights file of the model "
                                                       f"directory {tmp_path}: give the directory\n"), result.stderr
    fair = tmp_path / "esm2_t6_8M_UR50D.pt"
    fair.write_bytes(b"\0" * 16)
    result = run_cli("embed", fasta, "-m", fair, "-o", tmp_path / "x.h5")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr == (f"protrans: error: {fair}: fair-esm's weights of esm2_t6_8M_UR50D (a PyTorch file, "
                             "which is not loaded); give the short name esm2_t6_8M_UR50D: the same weights converted "
                             f"for transformers (facebook/esm2_t6_8M_UR50D), or convert the file with `protrans "
                             f"import-model {fair} -o DIR`\n"), result.stderr
    other = tmp_path / "my_model.pt"  # (weights of no known name: what a model is)
    other.write_bytes(b"\0" * 16)
    result = run_cli("embed", fasta, "-m", other, "-o", tmp_path / "x.h5")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"protrans: error: {other}: a PyTorch weights file (such as fair-esm's), which "
                                    f"is not loaded; convert a fair-esm checkpoint with `protrans import-model {other} "
                                    "-o DIR`, or give the transformers model of the same weights"), result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_an_embeddings_file_given_as_the_model_is_named(run_cli, tmp_path):
    """`embed x.fa -m emb.h5` (an embeddings file, the two files swapped) listed the short model
    names as "not a directory" alone: the line now says the file is HDF5, such as embed writes."""
    pytest.importorskip("protrans_cli.cli.embed")
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    h5 = tmp_path / "emb.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "-o", h5).exit_code == 0
    result = run_cli("embed", fasta, "-m", h5, "-o", tmp_path / "o.h5")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"protrans: error: {h5}: an HDF5 file (such as embed writes), not a model; a "
                                    "model is a directory with config.json, a hub id or a short name"), result.stderr
    assert not (tmp_path / "o.h5").exists()


# Published sizes (papers / model cards) of the part embed loads, and of the whole model.
PUBLISHED = [
    ("bert", "prot_bert", "num_params", 420e6),
    ("t5", "prot_t5_xl", "num_params", 3e9),
    ("t5", "prot_t5_xl", "encoder_num_params", 1.2e9),
    ("t5", "prot_t5_xxl", "num_params", 11e9),
    ("t5", "ankh_base", "num_params", 740e6),
    ("t5", "ankh_large", "num_params", 1.9e9),
    ("albert", "prot_albert", "num_params", 224e6),
    ("electra", "prot_electra", "encoder_num_params", 420e6),
    ("xlnet", "prot_xlnet", "num_params", 409e6),
    ("transfo_xl", "prot_txl", "num_params", 562e6),
    ("esm", "esm2_t6_8M", "num_params", 8e6),
    ("esm", "esm2_t12_35M", "num_params", 35e6),
    ("esm", "esm2_t30_150M", "num_params", 150e6),
    ("esm", "esm2_t33_650M", "num_params", 650e6),
    ("esm", "esm2_t36_3B", "num_params", 3e9),
    ("esm", "esm2_t48_15B", "num_params", 15e9),
    ("esm", "esm1b_t33_650M", "num_params", 650e6),
    ("esm", "esm1v_t33_650M", "num_params", 650e6),
]


@pytest.mark.parametrize("family_name,preset,count,published", PUBLISHED)
def test_published_presets_have_published_sizes(family_name, preset, count, published):
    if family_name not in FAMILIES:
        pytest.skip(f"{family_name} not registered")
    family = FAMILIES[family_name]
    n = getattr(family, count)(preset)
    assert abs(n - published) / published < 0.08, (preset, n)


def test_checkpoints_match_their_presets():
    assert CHECKPOINTS["prot_t5_xl_half"].hub_id == "Rostlab/prot_t5_xl_half_uniref50-enc"
    checked = 0
    for ckpt in CHECKPOINTS.values():
        if ckpt.family not in FAMILIES or ckpt.preset is None:
            continue
        family = FAMILIES[ckpt.family]
        assert family.encoder_num_params(ckpt.preset) == ckpt.num_params, ckpt.name
        config = family.build_config(ckpt.preset)
        assert family.embedding_dim(config) == ckpt.embedding_dim, ckpt.name
        assert family.num_layers(config) == ckpt.num_layers, ckpt.name
        checked += 1
    assert checked >= 7


def test_protbert_style_hub_directory_loads(tmp_path):
    """A directory laid out like Rostlab/prot_bert (vocab.txt, no tokenizer.json) loads and
    gives one row per residue, lower-case input and rare residues included."""
    family = FAMILIES["bert"]
    torch.manual_seed(3)
    config = family.build_config("tiny")
    family.pretraining_model(config).save_pretrained(tmp_path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVESIKRDTPNQFYMHCWXUBZO"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}))
    loaded = load_model(tmp_path)
    inputs, mask = family.encode(loaded.tokenizer, SEQS)
    assert mask.sum(dim=1).tolist() == [len(s) for s in SEQS]
    ids = inputs["input_ids"][1][mask[1]].tolist()
    assert ids == [vocab.index(c) for c in "ACDXXXXX"]  # U/Z/O/B -> X as ProtBert was trained


def test_unsupported_model_type_is_model_error(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=f"^{tmp_path}: unsupported model type 'gpt2'"):
        load_model(tmp_path)


def test_a_model_type_transformers_does_not_know_is_named_with_the_supported_ones(tmp_path):
    """A config.json whose model_type no transformers class has (a custom model's, saved with its
    own code) said transformers' "... or because your version of Transformers is out of date", which
    sent users to upgrade a library that would not make protrans load it; gpt2 said what is supported."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "protein_bert_custom", "hidden_size": 32,
                                                      "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelError) as caught:
        load_model(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: unsupported model type 'protein_bert_custom' (supported: bert, "), message
    assert "out of date" not in message and "esm" in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("architecture, family", [("BertForMaskedLM", "bert"), ("BertModel", "bert"),
                                                  ("T5EncoderModel", "t5"), ("T5ForConditionalGeneration", "t5"),
                                                  ("XLNetLMHeadModel", "xlnet"), ("EsmForMaskedLM", "esm"),
                                                  ("EsmCForMaskedLM", None), ("BertGenerationEncoder", None)])
def test_a_config_without_model_type_is_read_by_the_family_its_architecture_names(architecture, family):
    """(ProtBert's config.json has no model_type.) The class name less its task names the family
    whole: by prefix, ESM C's EsmCForMaskedLM was read as ESM-2's and BertGenerationEncoder as BERT's."""
    from protrans_cli.models import _family_by_architecture

    found = _family_by_architecture([architecture])
    assert (found.name if found else None) == family


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "null", "3", '{"model_type": ["bert"]}', '{"architectures": [5]}',
                                  '{"architectures": 5}'])
def test_a_config_json_that_is_not_an_object_of_settings_is_one_line(tmp_path, text):
    """A config.json of valid JSON that is no object (or whose model_type / architectures are of
    another type) was an AttributeError or TypeError traceback from inside the loader."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelError, match=f"^{tmp_path}: ") as caught:
        load_model(tmp_path)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("text,said", [
    ("", "is not a valid JSON file"),
    ('{"model_type": "bert", "hidden_size"', "is not a valid JSON file"),  # cut short
    ('{"model_type": "bert", "hidden_size": 0}', "config.json: its hidden_size is 0, not a whole number of at least 1"),
    ('{"model_type": "bert", "num_hidden_layers": -1}',
     "config.json: its num_hidden_layers is -1, not a whole number of at least 1"),
])
def test_a_config_json_cut_short_or_of_a_size_below_one_is_one_line_naming_it(tmp_path, text, said):
    """An empty or cut-short config.json, or a size of 0 or less (a ZeroDivisionError traceback
    once the model was built, or "-1 layers"): one line naming the directory and what is wrong."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ModelError, match=f"^{tmp_path}: cannot load the model directory: ") as caught:
        load_model(tmp_path)
    assert said in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_layer_selection(tmp_path):
    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    loaded = load_model(tmp_path)
    inputs, _ = family.encode(loaded.tokenizer, ["MKT"])
    with torch.no_grad():
        first, last = family.hidden_states(loaded.model, inputs, [0, -1])
        layer_one, layer_two, before_last = family.hidden_states(loaded.model, inputs, [1, 2, -2])
        with pytest.raises(ModelError, match="out of range"):
            family.hidden_states(loaded.model, inputs, [5])
        reference = model.bert(**inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(first, reference[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(last, reference[-1], rtol=0, atol=1e-6)
    # a positive index counts the embeddings as 0: 1 is the first layer's output, as transformers'
    torch.testing.assert_close(layer_one, reference[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(layer_two, reference[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(before_last, reference[-2], rtol=0, atol=1e-6)


def test_an_xlnet_tokenizer_whose_config_says_right_padding_pads_left(tmp_path):
    # XLNet's special tokens trail the protein and its padding leads: a hub tokenizer_config.json
    # saying padding_side "right" would put padding between a protein and its <sep> <cls>
    family = FAMILIES["xlnet"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "right"}))
    loaded = load_model(tmp_path)
    assert loaded.tokenizer.padding_side == "left"
    inputs, mask = family.encode(loaded.tokenizer, ["MKTAY", "MK"])
    ids = inputs["input_ids"][1].tolist()
    assert ids[:3] == [tokenizer.pad_token_id] * 3 and ids[-2:] == [tokenizer.sep_token_id, tokenizer.cls_token_id]
    assert mask[1].tolist() == [False] * 3 + [True] * 2 + [False] * 2


def test_a_half_precision_checkpoint_loads_in_float32_unless_a_dtype_is_named(tmp_path):
    """A model saved in float16 (ProtT5's published -enc, a run trained in half precision) loads in
    float32 by default, as load_model's docstring promises, not in the dtype its config.json
    records (transformers' choice with no dtype); each dtype name gives its torch dtype, weights
    equal to the saved ones converted."""
    family = FAMILIES["t5"]
    tokenizer, config, model = _tiny(family)
    model.half()
    family.save_pretrained(model, tokenizer, tmp_path)
    saved = model.encoder.block[0].layer[0].SelfAttention.q.weight
    for dtype, want in ((None, torch.float32), ("float32", torch.float32), ("fp32", torch.float32),
                        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16), ("float16", torch.float16),
                        ("fp16", torch.float16), ("half", torch.float16)):
        loaded = load_model(tmp_path, dtype=dtype)
        assert loaded.dtype == want, dtype
        got = loaded.model.encoder.block[0].layer[0].SelfAttention.q.weight
        torch.testing.assert_close(got, saved.to(want), rtol=0, atol=0)
    with pytest.raises(ModelError, match="unknown dtype 'float8'"):
        load_model(tmp_path, dtype="float8")


def test_the_weights_fingerprint_sees_weights_changed_in_the_middle_of_a_large_file(tmp_path):
    """A model fine-tuned in its middle layers alone keeps the first and last 64 KiB of its weight
    file (header, embeddings, last layers): the fingerprint's blocks spread over the file tell it
    apart. Only the bytes of one sampled 4 KiB block differ here; a copy elsewhere fingerprints the same."""
    from protrans_cli.models import weights_fingerprint

    size = 4 << 20
    data = bytearray(range(256)) * (size // 256)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(bytes(data))
    before = weights_fingerprint(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(tmp_path / "b") == before
    middle = size * 33 // 64  # (the block read at the middle of the 17th of 32 parts)
    data[middle:middle + 4096] = bytes(4096)
    (tmp_path / "a" / "model.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(tmp_path / "a") != before


def test_checkpoint_missing_encoder_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = {k: v for k, v in weights.items() if "layer.1.output.dense" not in k}
    assert len(dropped) < len(weights)
    save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="no weights for 2 parameters"):
        load_model(tmp_path)


def test_an_esm_checkpoint_without_its_contact_head_loads(tmp_path):
    # The contact head reads attention maps, not hidden states: a checkpoint without it (ESM-1v,
    # other tools' ESM exports) embeds as one with it. Another weight missing is still refused.
    from safetensors.torch import load_file, save_file

    family = FAMILIES["esm"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    inputs, _ = family.encode(tokenizer, SEQS[:2])
    with torch.no_grad():
        want = load_model(tmp_path).model(**inputs).last_hidden_state
    dropped = {k: v for k, v in weights.items() if ".contact_head." not in k}
    assert len(dropped) == len(weights) - 2
    save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with torch.no_grad():
        got = load_model(tmp_path).model(**inputs).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    save_file({k: v for k, v in dropped.items() if "layer.1.output.dense" not in k},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="no weights for 2 parameters"):
        load_model(tmp_path)


def test_loading_prints_nothing_by_default(tmp_path, capfd):
    family = FAMILIES["esm"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    capfd.readouterr()
    load_model(tmp_path)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("name", NAMES)
def test_pretraining_model_round_trip(name, tmp_path):
    family = FAMILIES[name]
    tokenizer, config, model = _tiny(family, seed=5)
    family.save_pretrained(model, tokenizer, tmp_path)
    reloaded = family.load_pretraining_model(tmp_path).eval()
    assert type(reloaded) is type(model)
    inputs, _ = family.encode(tokenizer, SEQS[:2])
    with torch.no_grad():
        kwargs = dict(inputs)
        if name == "t5":
            kwargs["decoder_input_ids"] = inputs["input_ids"]
        a, b = model(**kwargs), reloaded(**kwargs)
    first = next(k for k in ("logits", "prediction_logits") if getattr(a, k, None) is not None)
    torch.testing.assert_close(getattr(a, first), getattr(b, first), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_no_load_swaps_in_kernels_from_the_hub(name, tmp_path, monkeypatch):
    """transformers 5.25 "kernelizes" every from_pretrained model unless told not to: layers
    swapped for compiled kernels fetched from the Hub (and, without the `kernels` package, a
    failed load). Neither embed's nor train's loading asks for that."""
    from transformers import PreTrainedModel

    asked = []
    real = PreTrainedModel.set_use_kernels

    def record(self, use_kernels, *args, **kwargs):
        asked.append(bool(use_kernels))
        return real(self, use_kernels, *args, **kwargs)

    # and each load says so itself: under transformers 5.15-5.24 (False by default) the choice
    # recorded above is False whether protrans passes use_kernels or not
    passed = []
    real_load = PreTrainedModel.from_pretrained.__func__

    def load(cls, *args, **kwargs):
        passed.append(kwargs.get("use_kernels"))
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", record)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(load))
    family = FAMILIES[name]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)
    load_model(tmp_path)
    family.load_pretraining_model(tmp_path)
    assert asked and not any(asked)
    assert passed and all(p is False for p in passed), passed


def test_local_directory_named_like_a_short_name_wins(tmp_path, monkeypatch):
    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path / "prot_bert")
    monkeypatch.chdir(tmp_path)
    loaded = load_model("prot_bert")
    assert loaded.path_or_hub_id == "prot_bert" and loaded.embedding_dim == 32


@pytest.mark.parametrize("name", list(FAMILIES))
def test_config_overrides_typo_or_bad_type_is_one_line_model_error(name):
    # `train --set` goes here: HF configs keep unknown keys as attributes (a typo would be
    # silently ignored) and reject a bad type with a multi-line, non-ModelError exception.
    family = get_family(name)
    with pytest.raises(ModelError, match="num_hiden_layers"):
        family.build_config("tiny", num_hiden_layers=2)
    with pytest.raises(ModelError) as info:
        family.build_config("tiny", num_hidden_layers="abc")
    assert "\n" not in info.value.format()
    assert family.build_config("tiny", num_hidden_layers=1).num_hidden_layers == 1


def test_hub_retry_warnings_are_quiet_while_loading_and_restored_after():
    # Offline without HF_HUB_OFFLINE, huggingface_hub logged 12 retry lines before our one-line error.
    import logging

    from huggingface_hub.utils import logging as hub_logging

    from protrans_cli.models import _quiet_transformers

    before = hub_logging.get_verbosity()
    with _quiet_transformers():
        assert hub_logging.get_verbosity() == logging.ERROR
    assert hub_logging.get_verbosity() == before


def test_a_model_directory_protrans_writes_names_no_code_of_its_own(tmp_path):
    """--init-from a model whose config names its own code (auto_map): the new directory kept the
    reference without the code."""
    import json

    from protrans_cli.models.base import stamp_versions

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "x.Model"}}))
    stamp_versions(tmp_path)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("error, passed_on", [(MemoryError(), True), (RecursionError("deep"), True),
                                              (RuntimeError("CUDA error"), True), (Exception("os error 2"), False),
                                              (KeyError("model"), False)])
def test_only_the_tokenizer_files_problems_are_called_damaged_tokenizer_files(tmp_path, monkeypatch, error,
                                                                              passed_on):
    """The tokenizers library raises bare Exceptions, taken as the files' problem; out of memory,
    a recursion or a runtime error while loading is not, and keeps its own type."""
    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    family.save_pretrained(model, tokenizer, tmp_path)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(type(family), "load_tokenizer", fail)
    with pytest.raises(type(error) if passed_on else ModelError):
        load_model(tmp_path)


@pytest.mark.parametrize("key,value", [("num_attention_heads", 0), ("num_hidden_layers", -1), ("hidden_size", "big"),
                                       ("vocab_size", None), ("layer_norm_eps", "small")])
def test_a_config_json_field_of_a_bad_value_is_one_line_naming_file_and_field(tmp_path, run_cli, key, value):
    """An edited config.json with a field of the wrong type (transformers' strict validation: a
    StrictDataclassFieldValidationError traceback) or a head count of 0 (a ZeroDivisionError
    traceback; -1 layers read as "--layer -1 does not exist") is one line, exit 1, no output."""
    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    model_dir = tmp_path / "model"
    family.save_pretrained(model, tokenizer, model_dir)
    data = json.loads((model_dir / "config.json").read_text())
    data[key] = value
    (model_dir / "config.json").write_text(json.dumps(data))
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "x.h5", "--device", "cpu", "-j", "1")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"protrans: error: {model_dir}: cannot load the model directory: "
                                    f"{model_dir / 'config.json'}: ")
    assert key in result.stderr and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.fa"]


@pytest.mark.parametrize("file,text,said", [("tokenizer.json", "", "not valid JSON (Expecting value"),
                                            ("tokenizer.json", "[]", "holds list, not a JSON object"),
                                            ("tokenizer_config.json", "x", "not valid JSON (Expecting value"),
                                            ("special_tokens_map.json", "{", "not valid JSON (Expecting property")])
def test_a_tokenizer_json_file_that_is_no_json_object_is_named(tmp_path, run_cli, file, text, said):
    """An empty or cut-short tokenizer JSON file was "cannot load the tokenizer: Expecting value:
    line 1 column 1 (char 0)": which of the directory's files, not said."""
    family = FAMILIES["bert"]
    tokenizer, config, model = _tiny(family)
    model_dir = tmp_path / "model"
    family.save_pretrained(model, tokenizer, model_dir)
    (model_dir / file).write_text(text)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "x.h5", "--device", "cpu", "-j", "1")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"protrans: error: {model_dir}: cannot load the tokenizer: {model_dir / file}")
    assert said in result.stderr and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.fa"]


@pytest.mark.parametrize("family_name", ["bert", "esm"])
@pytest.mark.parametrize("value", ["x", "512", [512]])
def test_a_tokenizer_config_field_of_a_bad_value_is_named_not_a_missing_tokenizer(tmp_path, run_cli, family_name,
                                                                                  value):
    """`"model_max_length": "x"` in tokenizer_config.json: the tokenizer loaded, every call of it
    then failed comparing "x" with a length, and that read as residues it does not know ("the
    directory lacks this model's tokenizer; copy the tokenizer files ..."). One line naming the
    file and the field, as config.json's fields are named; null (transformers' "no limit") loads."""
    family = FAMILIES[family_name]
    tokenizer, config, model = _tiny(family)
    model_dir = tmp_path / "model"
    family.save_pretrained(model, tokenizer, model_dir)
    data = json.loads((model_dir / "tokenizer_config.json").read_text())
    data["model_max_length"] = value
    (model_dir / "tokenizer_config.json").write_text(json.dumps(data))
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "x.h5", "--device", "cpu", "-j", "1")
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"protrans: error: {model_dir}: cannot load the tokenizer: "
                             f"{model_dir / 'tokenizer_config.json'}: its model_max_length is {value!r}, not a number "
                             "of tokens\n"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.fa"]
    if value == "x":
        data["model_max_length"] = None
        (model_dir / "tokenizer_config.json").write_text(json.dumps(data))
        result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "x.h5", "--device", "cpu", "-j", "1")
        assert result.exit_code == 0, result.stderr


def test_a_saprot_structure_aware_vocabulary_is_read_not_a_missing_tokenizer(tmp_path, run_cli):
    """SaProt (westlake-repl/SaProt: an ESM-2 whose tokens pair each residue with a Foldseek 3Di
    letter, `Md`, `M#`) maps a plain residue to `<unk>`. It was refused as a directory lacking
    its tokenizer ("copy the tokenizer files ... of the model it was trained from"), which it does
    not lack, then as unsupported; it is read as SaProt now (tests/test_saprot.py): sequence-only,
    with one warning that structure tokens improve it."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    residues, states = "ACDEFGHIKLMNPQRSTVWY#", "pynwrqhgdlvtmfsaeikc#"
    model_dir = tmp_path / "saprot"
    model_dir.mkdir()
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>"] + [a + d for a in residues for d in states]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, pad_token_id=1, mask_token_id=4, position_embedding_type="rotary",
                       max_position_embeddings=1026, token_dropout=True)
    EsmForMaskedLM(config).save_pretrained(model_dir)
    EsmTokenizer(str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "x.h5", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("structure-aware model (SaProt)") == 1, result.stderr
    assert "copy the tokenizer" not in result.stderr and "not supported" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saprot", "x.fa", "x.h5"]


@pytest.mark.parametrize("failure", ["version", "old protobuf"])
def test_a_protobuf_too_old_for_sentencepieces_reader_is_named_not_damaged_files(tmp_path, run_cli, monkeypatch,
                                                                                  failure):
    """sentencepiece 0.2.3 reads spiece.model with code generated by protobuf 7.36.1, which an
    older protobuf refuses (VersionError; before 5.26 an ImportError of `runtime_version`), and
    it declares no protobuf version: pip installs it beside an environment's pinned protobuf.
    transformers then fell back to tiktoken, and the published ProtT5's tokenizer (spiece.model
    alone, as tests/data/tf4_reference/t5_full) was called damaged ("copy the tokenizer files").
    Now the two versions and the pip command, in embed's one line and in `protrans env`."""
    import sys

    import sentencepiece

    # (protobuf's own class where it has one: protobuf before 5.26 has no runtime_version module)
    VersionError = type("VersionError", (Exception,), {"__module__": "google.protobuf.runtime_version"})
    if failure == "version":
        error = VersionError("Detected incompatible Protobuf Gencode/Runtime versions when loading "
                             "sentencepiece_model.proto: gencode 7.36.1 runtime 6.33.0. Runtime version cannot be "
                             "older than the linked gencode version.")
    else:
        error = ImportError("cannot import name 'runtime_version' from 'google.protobuf'", name="google.protobuf")

    class Refused:
        def find_spec(self, name, path=None, target=None):
            if name == "sentencepiece.sentencepiece_model_pb2":
                raise error

    monkeypatch.delitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", raising=False)
    monkeypatch.delattr(sentencepiece, "sentencepiece_model_pb2", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Refused(), *sys.meta_path])
    monkeypatch.setattr("protrans_cli.spm_reader._gencode_version", lambda: "7.36.1")
    import importlib.metadata

    sentencepiece_version = importlib.metadata.version("sentencepiece")
    protobuf = "6.33.0" if failure == "version" else importlib.metadata.version("protobuf")
    said = (f"sentencepiece {sentencepiece_version} reads spiece.model with code generated by protobuf 7.36.1, "
            f"which the installed protobuf {protobuf} cannot run")
    model = Path(__file__).parent / "data" / "tf4_reference" / "t5_full"
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model, "-o", tmp_path / "x.h5", "-j", "1")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    if failure == "version":  # (protobuf's own message repeats the versions: not shown twice)
        assert result.stderr == (f'protrans: error: {model}: cannot load the tokenizer: {said}: pip install '
                                 '"protobuf>=7.36.1" (or, where another package holds protobuf back, an older '
                                 f'sentencepiece: pip install "sentencepiece<{sentencepiece_version}")\n')
    else:
        assert said in result.stderr and "(ImportError: cannot import name 'runtime_version'" in result.stderr
    assert "damaged" not in result.stderr and not (tmp_path / "x.h5").exists()
    env = run_cli("env")
    assert env.exit_code == 0 and f"(spiece.model): cannot load here: {said}" in env.stdout, env.stdout
    monkeypatch.undo()  # (protobuf as it is here: the reader loads, and env says nothing of it)
    assert "spiece.model" not in run_cli("env").stdout
    assert "sentencepiece_reader" in json.loads(run_cli("env", "--json").stdout)


def test_the_protobuf_failure_is_found_behind_transformers_fallbacks():
    """transformers tries its fallbacks while handling the reader's error (implicit chaining,
    __context__, not `raise from`): the protobuf error is found at the end of that chain, an
    ImportError naming google.protobuf only in its message too; a chain without one is None."""
    from protrans_cli.spm_reader import reader_failure

    def chained(first, *then):
        try:
            try:
                raise first
            except Exception:  # noqa: BLE001
                raise ValueError("`tiktoken` is required to read a `tiktoken` file")  # noqa: B904
        except ValueError as exc:
            return exc

    for cause in (ImportError("cannot import name 'runtime_version' from 'google.protobuf' (unknown location)"),
                  ImportError("No module named google.protobuf")):
        assert cause.name is None and reader_failure(chained(cause)) is cause
    assert reader_failure(chained(ImportError("No module named 'tiktoken'", name="tiktoken"))) is None


def test_a_damaged_spiece_model_is_named_not_tiktoken(tmp_path, run_cli):
    """A spiece.model cut short (a copy interrupted): transformers went on to its tiktoken
    fallback, and the one line quoted "`tiktoken` is required ... pip install tiktoken", which
    would not help, naming no file. Now it says sentencepiece cannot read spiece.model."""
    import shutil

    model = tmp_path / "t5"
    shutil.copytree(Path(__file__).parent / "data" / "tf4_reference" / "t5_full", model)
    whole = (model / "spiece.model").read_bytes()
    (model / "spiece.model").write_bytes(whole[: len(whole) // 2])
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    result = run_cli("embed", fasta, "-m", model, "-o", tmp_path / "x.h5", "-j", "1")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{model}: cannot load the tokenizer: sentencepiece cannot read its spiece.model (" in result.stderr
    assert "damaged or cut short; copy the tokenizer files" in result.stderr and "tiktoken" not in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_a_model_built_by_its_own_code_says_that_code_never_runs(tmp_path):
    """config.json naming its own code (auto_map) with a model_type no transformers class has (as
    ESM++ and other hub models do): transformers' "contains custom code which must be executed to
    correctly load the model. You can inspect the repository content at ..." read as a switch to
    turn on, and named no model type protrans loads. The code never runs."""
    import json

    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "ESMplusplus", "hidden_size": 32,
         "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"}}))
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError) as caught:
        load_model(tmp_path)
    message = str(caught.value)
    assert message == (f"{tmp_path}: a model built by its own code (its config.json's auto_map), which protrans never "
                       f"runs; unsupported model type 'ESMplusplus' (supported: bert, roberta, albert, electra, t5, "
                       "xlnet, protrans-transfo-xl, esm, protrans_esmc)"), message
    assert not marker.exists()


@pytest.mark.parametrize("preset, fixture", [("tiny", "esm_reference"), ("esm2_t6_8M", "esm_reference"),
                                             ("esm1b_t33_650M", "esm1b_reference")])
def test_an_esm_preset_computes_as_fair_esms_converted_models_do(preset, fixture):
    """A model trained from an ESM preset is configured as a published ESM checkpoint of its
    architecture: every setting that is not a size equals that of the fair-esm model converted to
    transformers in tests/data (token dropout's rescaling of the embeddings, the layer norm
    epsilon, the activation, no dropout, the positions, the special-token ids)."""
    ours = FAMILIES["esm"].build_config(preset).to_dict()
    converted = json.loads((Path(__file__).parent / "data" / fixture / "config.json").read_text())
    keys = ("token_dropout", "layer_norm_eps", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
            "position_embedding_type", "emb_layer_norm_before", "max_position_embeddings", "vocab_size",
            "pad_token_id", "mask_token_id")
    assert {key: ours[key] for key in keys} == {key: converted[key] for key in keys}


def test_a_t5_model_starts_decoding_from_the_pad_token_as_prott5():
    """T5 starts its decoder from the pad token: a t5 run's decoder reads its labels shifted right
    behind `<pad>`, as ProtT5 was trained (its published config: pad 0, eos 1, decoder start 0), so
    a model trained here and one continued from ProtT5 (--init-from) decode from the same token."""
    tokenizer, config, model = _tiny(FAMILIES["t5"])
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<pad>", "</s>"]
    labels = torch.tensor([[5, 6, 7, 1]])
    assert model.prepare_decoder_input_ids_from_labels(labels=labels).tolist() == [[0, 5, 6, 7]]


def test_a_t5_protein_is_its_residues_then_one_eos_with_no_leading_token_as_prott5():
    """ProtT5's input layout (its embedding script's tokenizer): the residues, then `</s>`, nothing
    before them; padding after. A tiny T5's tokenizer lays proteins out so, residue rows masked in."""
    family = FAMILIES["t5"]
    tokenizer = family.build_tokenizer()
    m, k, t, a = tokenizer.convert_tokens_to_ids(["M", "K", "T", "A"])
    for encode in (family.encode, family.encode_with_tokenizer):
        inputs, mask = encode(tokenizer, ["MKT", "A"])
        assert inputs["input_ids"].tolist() == [[m, k, t, 1], [a, 1, 0, 0]]
        assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
        assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]


def test_an_unknown_preset_is_a_usage_error_naming_the_known_ones():
    known = r"\(known: tiny, small, base, prot_t5_xl"
    with pytest.raises(UsageError, match=rf"^unknown preset 'huge' for family 't5' {known}"):
        FAMILIES["t5"].build_config("huge")


def test_the_protobuf_release_sentencepiece_was_generated_with_is_read_from_its_header(tmp_path, monkeypatch):
    """The version the protobuf message names comes from sentencepiece_model_pb2.py's header
    (`# Protobuf Python Version: X`); a header without that line gives None, not a guess."""
    import importlib.util
    import types

    from protrans_cli import spm_reader

    folder = tmp_path / "sentencepiece"
    folder.mkdir()
    spec = types.SimpleNamespace(submodule_search_locations=[str(folder)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "sentencepiece" else None)
    header = "# Generated by the protocol buffer compiler.  DO NOT EDIT!\n# source: sentencepiece_model.proto\n"
    (folder / "sentencepiece_model_pb2.py").write_text(header + "# Protobuf Python Version: 5.29.0-rc1\n\"\"\"x\"\"\"\n")
    assert spm_reader._gencode_version() == "5.29.0-rc1"
    (folder / "sentencepiece_model_pb2.py").write_text(header)
    assert spm_reader._gencode_version() is None


def test_the_hub_is_probed_again_after_a_minute_not_once_a_process(monkeypatch):
    """A notebook whose network was down at its first model load read the local cache alone (and
    said the hub cannot be reached) until the kernel restarted: the probe's answer stood for the
    life of the process. It stands for HUB_PROBE_SECONDS."""
    import socket
    import time

    from protrans_cli import models

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    up = [False]
    probes = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout=None):
        probes.append(address)
        if not up[0]:
            raise OSError("Network is unreachable")
        return Connection()

    monkeypatch.setattr(socket, "create_connection", connect)
    models.hub_reachable.cache_clear()
    try:
        assert not models.hub_reachable()
        up[0] = True
        now[0] += models.HUB_PROBE_SECONDS / 2
        assert not models.hub_reachable() and len(probes) == 1  # (one probe a minute at most)
        now[0] += models.HUB_PROBE_SECONDS
        assert models.hub_reachable() and len(probes) == 2  # the network came back: seen
    finally:
        models.hub_reachable.cache_clear()
