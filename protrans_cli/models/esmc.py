"""ESM C (EvolutionaryScale's ESM Cambrian, esmc-300m-2024-12 and esmc-600m-2024-12) as a
transformers PreTrainedModel: the published weights are a torch state dict for the `esm`
package's own ESMC class, not a transformers model, and protrans never runs a checkpoint's code.
`protrans import-model esmc_300m_2024_12_v0.pth -o esmc_300m/` converts one (`import_esmc`).

The architecture, as `esm` 3.x builds it (esm/models/esmc.py, esm/layers/): an embedding table
of 64 rows; pre-LN blocks of
    x = x + attn(x) / s      attn: LayerNorm + fused qkv Linear (no bias); q and k each layer-normed
    x = x + ffn(x) / s             over the whole model dim (no bias), rotary positions (NeoX halves,
                                   base 10000) per head, softmax attention, out_proj
                             ffn: LayerNorm, Linear to 2 * F (no bias), SwiGLU, Linear back (no bias)
with s = sqrt(n_layers / 36) and F = 8/3 * d_model rounded up to a multiple of 256; a final
LayerNorm without bias. Its output is ESM C's `embeddings` (what embed gives for the last layer);
`sequence_head` (Linear, GELU, LayerNorm, Linear to 64) gives the logits. Padding is masked as
ESMC masks it: a token sees the tokens that are not padding.

hidden_states (embed --layer) follow transformers' ESM: index 0 the token embeddings, i the
output of block i, the last one after the final norm (ESM C's `hidden_states` are the blocks'
outputs before it: ours 1..n-1 are theirs 0..n-2).

Tokens: `<cls> residues <eos>` over ESM C's 33-token vocabulary (esm/utils/constants/esm3.py
SEQUENCE_VOCAB), the ids of ESM-2's alphabet with "|" (chain break) in place of `<null_1>`;
transformers' EsmTokenizer over it tokenizes as ESM C's own tokenizer does for upper-case
residues (protrans upper-cases every input).

Importing protrans_cli.models registers the config and models with AutoConfig, AutoModel and
AutoModelForMaskedLM under model_type "protrans_esmc": saved directories load with
`from_pretrained` and no `trust_remote_code`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from protrans_cli.errors import InputError, first_line
from protrans_cli.models.base import Family, load_checked
from protrans_cli.models.imported import ImportedModel, hub_file

MODEL_TYPE = "protrans_esmc"
# esm/utils/constants/esm3.py SEQUENCE_VOCAB: ESM-2's ids, "|" (chain break) at 31
ESMC_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "|", "<mask>"]
EMBED_ROWS = 64  # ESMC's nn.Embedding(64, d_model) and its sequence head's 64 outputs
# The published models (esm/pretrained.py): short name -> (hub repository, weights file in it)
PUBLISHED = {"esmc_300m": ("EvolutionaryScale/esmc-300m-2024-12", "data/weights/esmc_300m_2024_12_v0.pth"),
             "esmc_600m": ("EvolutionaryScale/esmc-600m-2024-12", "data/weights/esmc_600m_2024_12_v0.pth")}


def ffn_size(d_model: int, expansion_ratio: float = 8 / 3) -> int:
    """The SwiGLU hidden width ESM C builds (esm's swiglu_correction_fn: up to a multiple of 256)."""
    return int(((expansion_ratio * d_model) + 255) // 256 * 256)


class EsmCConfig(PreTrainedConfig):
    """Sizes of an ESM C model; intermediate_size 0: ESM C's own rounding of 8/3 * hidden_size."""

    model_type = MODEL_TYPE

    vocab_size: int = EMBED_ROWS
    hidden_size: int = 960
    num_hidden_layers: int = 30
    num_attention_heads: int = 15
    intermediate_size: int = 0
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    pad_token_id: int | None = 1
    mask_token_id: int | None = 32
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if not self.intermediate_size:
            self.intermediate_size = ffn_size(self.hidden_size)
        super().__post_init__(**kwargs)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class EsmCAttention(nn.Module):
    def __init__(self, config: EsmCConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.n_heads = config.num_attention_heads
        self.d_head = d // self.n_heads
        # (the module names of esm's MultiHeadAttention, so that its weights load by name)
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, 3 * d, bias=False))
        self.out_proj = nn.Linear(d, d, bias=False)
        self.q_ln = nn.LayerNorm(d, eps=eps, bias=False)
        self.k_ln = nn.LayerNorm(d, eps=eps, bias=False)
        self.rope_theta = config.rope_theta

    def _rotary(self, x):
        # x (B, T, H, Dh): positions 0..T-1, the frequencies computed in float32 as esm does
        T, dim = x.shape[1], self.d_head
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), inv_freq)  # (T, Dh/2)
        cos = freqs.cos().to(x.dtype).repeat(1, 2)[:, None]  # (T, 1, Dh)
        sin = freqs.sin().to(x.dtype).repeat(1, 2)[:, None]
        return x * cos + _rotate_half(x) * sin

    def forward(self, x, key_mask):
        # x (B, T, D); key_mask (B, 1, 1, T) bool, True at the keys a token may see, or None: all
        B, T, D = x.shape
        q, k, v = self.layernorm_qkv(x).chunk(3, dim=-1)  # (B, T, D) each
        q, k = self.q_ln(q).to(q.dtype), self.k_ln(k).to(q.dtype)
        q = self._rotary(q.view(B, T, self.n_heads, self.d_head)).transpose(1, 2)  # (B, H, T, Dh)
        k = self._rotary(k.view(B, T, self.n_heads, self.d_head)).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, Dh)
        return self.out_proj(context.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def forward(self, x):
        x1, x2 = x.chunk(2, dim=-1)
        return F.silu(x1) * x2


class EsmCBlock(nn.Module):
    def __init__(self, config: EsmCConfig):
        super().__init__()
        d, inner = config.hidden_size, config.intermediate_size
        self.attn = EsmCAttention(config)
        self.ffn = nn.Sequential(nn.LayerNorm(d, eps=config.layer_norm_eps), nn.Linear(d, 2 * inner, bias=False),
                                 SwiGLU(), nn.Linear(inner, d, bias=False))
        # (esm's TransformerStack: every residual divided by sqrt(n_layers / 36))
        self.scaling_factor = math.sqrt(config.num_hidden_layers / 36)

    def forward(self, x, key_mask):
        x = x + self.attn(x, key_mask) / self.scaling_factor
        return x + self.ffn(x) / self.scaling_factor


class EsmCPreTrainedModel(PreTrainedModel):
    config_class = EsmCConfig
    config: EsmCConfig
    base_model_prefix = "esmc"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["EsmCBlock"]


class EsmCModel(EsmCPreTrainedModel):
    """The ESM C trunk: token embeddings, the blocks, the final norm; no head."""

    def __init__(self, config: EsmCConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(EsmCBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
        if attention_mask is None:  # (as ESMC: the tokens that are not padding)
            attention_mask = input_ids != self.config.pad_token_id
        attention_mask = attention_mask.bool()
        # (None where nothing is padded: SDPA then takes its fastest kernel)
        key_mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :]  # (B, 1, 1, T)
        x = self.embed(input_ids)  # (B, T, D)
        states = [x]
        for block in self.blocks:
            x = block(x, key_mask)
            states.append(x)
        x = self.norm(x)
        states[-1] = x
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)


class EsmCForMaskedLM(EsmCPreTrainedModel):
    """ESM C with its sequence head (logits over the 64 rows of its vocabulary at every position)."""

    def __init__(self, config: EsmCConfig):
        super().__init__(config)
        d = config.hidden_size
        self.esmc = EsmCModel(config)
        self.sequence_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=config.layer_norm_eps),
                                           nn.Linear(d, config.vocab_size))
        self.post_init()

    def get_output_embeddings(self):
        return self.sequence_head[3]

    def set_output_embeddings(self, value):
        self.sequence_head[3] = value

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.esmc(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        logits = self.sequence_head(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def register_auto_classes() -> None:
    """Tell AutoConfig, AutoModel and AutoModelForMaskedLM about ESM C (base.register_auto_classes)."""
    from protrans_cli.models.base import register_auto_classes as register

    register(MODEL_TYPE, EsmCConfig, EsmCModel, "AutoModelForMaskedLM", EsmCForMaskedLM)


PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    # esm/pretrained.py: ESMC_300M_202412 and ESMC_600M_202412
    "esmc_300m": dict(hidden_size=960, num_hidden_layers=30, num_attention_heads=15),
    "esmc_600m": dict(hidden_size=1152, num_hidden_layers=36, num_attention_heads=18),
}


class EsmCFamily(Family):
    name = "esmc"
    model_types = (MODEL_TYPE,)
    objective = "mlm"
    masked_lm_class = "EsmCForMaskedLM"
    cls_not_trained = ("ESM C is pretrained by masked-LM alone, so its <cls> was never trained as a summary of the "
                       "protein")
    presets = PRESETS
    spaced = False
    rare_to = None  # ESM C has tokens for U, Z, O and B
    lora_targets = ("attn.layernorm_qkv.1", "attn.out_proj")
    description = "ESM C (EvolutionaryScale's ESM Cambrian) masked-LM encoder; import-model converts its weights"

    def build_tokenizer(self):
        from transformers import EsmTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(ESMC_VOCAB) + "\n", encoding="utf-8")
            return EsmTokenizer(str(vocab), model_max_length=1_000_000)

    def shape_problem(self, config):
        heads = config.num_attention_heads
        if heads and config.hidden_size % heads:
            return f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {heads}"
        if heads and (config.hidden_size // heads) % 2:  # (rotary positions turn pairs of a head's features)
            return (f"the head size {config.hidden_size // heads} (hidden_size {config.hidden_size} / "
                    f"num_attention_heads {heads}) is odd: rotary positions need an even one")
        return None

    def token_config(self, tokenizer):
        # (the table has 64 rows whatever the tokenizer holds, as ESMC's)
        return {"vocab_size": max(EMBED_ROWS, len(tokenizer)), "pad_token_id": tokenizer.pad_token_id,
                "mask_token_id": tokenizer.mask_token_id, "bos_token_id": tokenizer.cls_token_id,
                "eos_token_id": tokenizer.eos_token_id}

    @property
    def config_class(self):
        return EsmCConfig

    @property
    def encoder_class(self):
        return EsmCModel

    def pretraining_model(self, config):
        return EsmCForMaskedLM(config)

    def load_masked_lm(self, name_or_path, *, dtype=None, **hub_kwargs):
        return load_checked(EsmCForMaskedLM, name_or_path, dtype=dtype, lacking=self.masked_lm_lacking, **hub_kwargs)


FAMILY = EsmCFamily()


def short_name_advice(name: str, give: str = "-m ") -> str | None:
    """What to do for `-m esmc_300m` (or the hub repository's id): its weights are no transformers
    model, so they are converted first (downloaded first where the Hugging Face cache lacks them:
    `hf download` of the repository puts the file there). None for any other name. `give`: what
    goes before the directory's name (`-m `, or a library call's `model=`)."""
    for short, (repo, file) in PUBLISHED.items():
        if name in (short, repo):
            then = f"then give {give}{short} (the directory)"
            if (cached := hub_file(repo, file)) is not None:
                return (f"ESM C's weights are not a transformers model; the Hugging Face cache holds them: convert "
                        f"them with `protrans import-model {cached} -o {short}`, {then}")
            return (f"ESM C's weights are not a transformers model: download them with `hf download {repo} {file} "
                    f"--local-dir D`, convert them with `protrans import-model D/{file} -o {short}`, {then}; the "
                    "weights are under EvolutionaryScale's license, accepted on the hub")
    return None


# ---------------------------------------------------------------------------------------------
# `protrans import-model esmc_300m_2024_12_v0.pth -o esmc_300m/`


def is_esmc_state(state) -> bool:
    """Whether a checkpoint's contents are an ESM C state dict (ESMC.state_dict(), as the hub holds it)."""
    return (isinstance(state, dict) and "embed.weight" in state and "sequence_head.0.weight" in state
            and any(str(n).startswith("transformer.blocks.0.attn.layernorm_qkv.") for n in state))


def read_esmc(path) -> dict | None:
    """The ESM C state dict in the file `path`, or None where it holds something else or is no torch
    zip archive (what fair-esm's import then reads, or says it cannot). The archive is mapped, not
    read into memory."""
    from protrans_cli.models.fair_esm import load_checkpoint

    try:
        with open(path, "rb") as stream:
            if not stream.read(2) == b"PK":
                return None
        state = load_checkpoint(path)
    except (OSError, InputError):
        return None
    return state if is_esmc_state(state) else None


def hf_name(name: str) -> str:
    """ESMC's parameter name -> EsmCForMaskedLM's; KeyError for one ESMC does not have."""
    if name == "embed.weight":
        return "esmc.embed.weight"
    if name == "transformer.norm.weight":
        return "esmc.norm.weight"
    if name.startswith("transformer.blocks."):
        return "esmc.blocks." + name.removeprefix("transformer.blocks.")
    if name.startswith("sequence_head."):
        return name
    raise KeyError(name)


def esmc_config(path: Path, state: dict) -> EsmCConfig:
    """The config of ESMC's state dict `state`, its sizes from the tensors' shapes; InputError
    naming the file where they are not those of an ESM C."""
    embed = state["embed.weight"]
    if embed.ndim != 2 or embed.shape[0] != EMBED_ROWS:
        raise InputError(f"embed.weight has shape {tuple(embed.shape)}, not ({EMBED_ROWS}, D): not an ESM C "
                         "state dict", path=str(path))
    dim = int(embed.shape[1])
    layers = len({n.split(".")[2] for n in state if n.startswith("transformer.blocks.")})
    if any(f"transformer.blocks.{i}.attn.out_proj.weight" not in state for i in range(layers)):
        raise InputError(f"its blocks are not numbered 0..{layers - 1}: not a complete ESM C state dict",
                         path=str(path))
    # (the published sizes, 960 / 15 and 1152 / 18, are heads of 64: esm/pretrained.py; the
    # head count is in no tensor's shape)
    if dim % 64:
        raise InputError(f"its width {dim} is not a multiple of 64, the head size of the published ESM C models: "
                         "cannot tell its number of attention heads", path=str(path))
    up = state.get("transformer.blocks.0.ffn.1.weight")
    inner = int(up.shape[0]) // 2 if up is not None else ffn_size(dim)
    return EsmCConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=dim // 64,
                      intermediate_size=inner, architectures=["EsmCForMaskedLM"])


def import_esmc(checkpoint, out_dir, *, force: bool = False, state: dict | None = None) -> ImportedModel:
    """Write the model directory `out_dir` (EsmCForMaskedLM and its tokenizer) from ESM C's
    weights file `checkpoint` (`state`: its contents, where the caller has read them)."""
    from protrans_cli.models.fair_esm import load_checkpoint
    from protrans_cli.models.imported import assign, checkpoint_output, empty_parameters, left_on_meta, \
        write_checked

    checkpoint, out_dir = checkpoint_output(checkpoint, out_dir, "esmc_300m", force)
    state = load_checkpoint(checkpoint) if state is None else state
    if not is_esmc_state(state) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise InputError("not an ESM C state dict (embed.weight, transformer.blocks.N..., sequence_head... "
                         "tensors)", path=str(checkpoint))
    weights = {}
    for name, tensor in state.items():
        try:
            weights[hf_name(str(name))] = tensor
        except KeyError:
            raise InputError(f"holds the tensor {name}, which ESM C has not: not an ESM C state dict",
                             path=str(checkpoint)) from None
    config = esmc_config(checkpoint, state)
    with empty_parameters():  # (the checkpoint's tensors themselves become its weights)
        model = EsmCForMaskedLM(config).eval()
    dtype = state["embed.weight"].dtype
    if dtype.is_floating_point and dtype != model.dtype:  # (a bfloat16 file stays bfloat16)
        model = model.to(dtype)
        model.config.dtype = dtype
    try:
        missing, unexpected = assign(model, weights, model.dtype)
        assert not missing and not unexpected and not left_on_meta(model), (missing, unexpected)
    except (RuntimeError, AssertionError) as exc:  # (a tensor of another shape, one missing)
        raise InputError(f"its tensors do not make one ESM C of {config.num_hidden_layers} layers, "
                         f"{config.hidden_size} dimensions: {first_line(exc)[:300]}", path=str(checkpoint)) from None
    del state, weights

    def save(model, folder):
        model.save_pretrained(str(folder))
        FAMILY.build_tokenizer().save_pretrained(str(folder))  # (vocab.txt, tokenizer_config.json)

    holder, model = [model], None  # (freed once written, before the directory is read back)

    def card(loaded):
        from protrans_cli.training.card import import_card

        return import_card(loaded=loaded, source=f"ESM C from EvolutionaryScale's weights `{checkpoint.name}`",
                           details=[f"Converted from: `{checkpoint.name}` (ESM C, read weights-only), with its "
                                    "sequence head", f"Weights: {dtype}".replace("torch.", "")])

    write_checked(out_dir, holder, save, masked_lm=True, card=card)
    return ImportedModel(out_dir, "ESM C", config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
