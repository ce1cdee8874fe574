"""Device maps keep whole, for every model, the modules that own a parameter beside their modules
(models/base.py load_checked: `_bare_parameter_owners` before loading, `split_parameter_problem`
after): a map that split one put the bare parameter apart, where no hook moved it for the module's
forward (the meta device, or wrong values). Compared with the unmapped forward pass of the same
weights, over CPU budgets that cut the model at other places."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from torch import nn  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402

from conftest import save_tiny_model  # noqa: E402

WILD_TYPE = "MKTAYIAKQRQISFVK"
FRACTIONS = (0.3, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9)


class BareConfig(PretrainedConfig):
    model_type = "protrans_test_bare_head"

    def __init__(self, vocab_size=30, hidden_size=32, num_hidden_layers=3, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        super().__init__(**kwargs)


class BareHead(nn.Module):
    """A head like ESM's: a bias of its own beside a Linear (and a LayerNorm)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):
        return self.decoder(self.norm(torch.tanh(self.dense(x)))) + self.bias


class BareModel(PreTrainedModel):
    """Names its blocks (nn.Linear) but not its head: without the guard, the map splits the head."""

    config_class = BareConfig
    base_model_prefix = "bare"
    _no_split_modules = ["Linear"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                    for _ in range(config.num_hidden_layers))
        self.head = BareHead(config)
        self.post_init()

    def _init_weights(self, module):
        pass  # (the saved weights are all read back)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = torch.relu(layer(x)) + x
        return self.head(x)


@pytest.fixture(scope="module")
def bare_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = BareModel(BareConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # (a bias of zeros would hide one read wrong)
    path = tmp_path_factory.mktemp("bare")
    model.save_pretrained(path)
    return path


def _size(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_bare_parameter_owners_found_on_the_meta_device(bare_dir):
    from protrans_cli.models.base import _bare_parameter_owners

    assert _bare_parameter_owners(BareModel, bare_dir, {"device_map": "auto"}) == ["BareHead"]


def test_a_head_with_a_bare_bias_is_kept_whole_at_every_budget(bare_dir, tmp_path):
    from protrans_cli.models.base import load_checked

    plain = load_checked(BareModel, bare_dir)
    ids = torch.tensor([[1, 5, 7, 2, 9, 11]])
    with torch.no_grad():
        want = plain(ids)
    seen = set()
    for fraction in FRACTIONS:
        mapped = load_checked(BareModel, bare_dir, device_map="auto", max_memory={"cpu": int(_size(plain) * fraction)},
                              offload_folder=str(tmp_path / f"off{fraction}"))
        device_map = mapped.hf_device_map
        assert not any(k.startswith("head.") for k in device_map), (fraction, device_map)
        seen.add(device_map.get("head", device_map.get("")))
        with torch.no_grad():
            torch.testing.assert_close(mapped(ids), want, atol=1e-6, rtol=0)
    assert "disk" in seen  # (budgets that put the head on the disk, whole)


def test_without_the_guard_a_split_head_is_refused_or_right(bare_dir, tmp_path, monkeypatch):
    """The check after loading, where the guard is not there (monkeypatched away) to keep the head
    whole: every budget either loads a model giving the unmapped output (a bias put on the CPU,
    where the rest of the head computes) or is refused naming the module; never a traceback at the
    forward or a wrong number."""
    from protrans_cli.errors import ModelError
    from protrans_cli.models import base

    monkeypatch.setattr(base, "_bare_parameter_owners", lambda *args: [])
    plain = base.load_checked(BareModel, bare_dir)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        want = plain(ids)
    split = 0
    for fraction in FRACTIONS:
        try:
            mapped = base.load_checked(BareModel, bare_dir, device_map="auto",
                                       max_memory={"cpu": int(_size(plain) * fraction)},
                                       offload_folder=str(tmp_path / f"off{fraction}"))
        except ModelError as exc:
            assert "head (BareHead)" in str(exc) and "\n" not in str(exc)
            continue
        split += "head.bias" in mapped.hf_device_map
        with torch.no_grad():
            torch.testing.assert_close(mapped(ids), want, atol=1e-6, rtol=0)
    assert split  # (some budget split the head: its bias on the CPU)


def test_a_given_map_with_the_bias_apart_is_refused_naming_the_module(bare_dir, tmp_path):
    """A dict map (not made by accelerate under the guard) that puts `head.bias` on the disk apart
    from the head: it would stay on the meta device. One line naming the module and the bias."""
    from protrans_cli.errors import ModelError
    from protrans_cli.models.base import load_checked

    device_map = {"embed": "cpu", "layers": "cpu", "head.dense": "cpu", "head.norm": "cpu", "head.decoder": "cpu",
                  "head.bias": "disk"}
    with pytest.raises(ModelError) as caught:
        load_checked(BareModel, bare_dir, device_map=device_map, offload_folder=str(tmp_path / "off"))
    message = str(caught.value)
    assert message.startswith(f"{bare_dir}: the device map put head.bias on disk apart from the rest of head "
                              "(BareHead), which computes on cpu"), message
    assert "\n" not in message
    # (the bias on the CPU, where the rest of the head computes from the disk: right, and loaded)
    device_map.update({"head.bias": "cpu", "head.dense": "disk", "head.decoder": "disk"})
    mapped = load_checked(BareModel, bare_dir, device_map=device_map, offload_folder=str(tmp_path / "off2"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(mapped(ids), load_checked(BareModel, bare_dir)(ids), atol=1e-6, rtol=0)


def test_esm_masked_lm_without_a_family_list(tmp_path_factory, tmp_path):
    """ESM's EsmLMHead (a bare `bias` beside `dense` and `decoder`), kept whole by the general rule
    alone (the family list it had is gone): the unmapped logits at every budget."""
    from protrans_cli.models import FAMILIES, load_model

    model_dir = save_tiny_model(tmp_path_factory, "esm")
    plain = load_model(str(model_dir), masked_lm=True)
    inputs = FAMILIES["esm"].encode(plain.tokenizer, [WILD_TYPE, "GGW"])[0]
    with torch.no_grad():
        want = plain.model(**inputs).logits
    for fraction in FRACTIONS:
        mapped = load_model(str(model_dir), masked_lm=True, device_map="auto",
                            max_memory={"cpu": int(_size(plain.model) * fraction)},
                            offload_folder=str(tmp_path / f"off{fraction}"))
        assert not any(k.startswith("lm_head.") for k in mapped.model.hf_device_map), mapped.model.hf_device_map
        with torch.no_grad():
            torch.testing.assert_close(mapped.model(**inputs).logits, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family_name, class_name, owners", [
    ("esm", "EsmForMaskedLM", {"EsmLMHead"}),
    ("albert", "AlbertForMaskedLM", {"AlbertMLMHead"}),
    ("xlnet", "XLNetLMHeadModel", {"XLNetRelativeAttention"}),  # (not XLNetModel: the base model)
    ("xlnet", "XLNetModel", {"XLNetRelativeAttention"}),  # (not its own mask_emb: the model itself)
    ("bert", "BertModel", set()),
])
def test_the_families_owners(tmp_path_factory, family_name, class_name, owners):
    import transformers

    from protrans_cli.models.base import _bare_parameter_owners

    model_dir = save_tiny_model(tmp_path_factory, family_name)
    found = _bare_parameter_owners(getattr(transformers, class_name), model_dir, {"device_map": "auto"})
    assert set(found) == owners
