"""Transformer-XL (ProtTXL) as a transformers PreTrainedModel, since transformers 5 removed it.

Dai et al. 2019: a causal transformer that processes a long stream segment by segment and lets
each segment attend to the hidden states of the previous ones (`mems`, kept without gradient),
with relative positional encoding: attention scores are
    (q + r_w_bias) . k   (content)   +   (q + r_r_bias) . W_r R_(i-j)   (position)
where R is a sinusoid of the distance i - j. There are no absolute positions, so memory from a
previous segment lines up with the current one. Tensors are batch-first here: hidden states
(B, T, D), memories (B, M, D) per layer.

Padding: `attention_mask` (B, T) masks padded keys of the current segment. Memories are
assumed to hold real tokens (training streams are right-padded and causal, so a real token
never sees padding that follows it).

Importing protrans_cli.models registers the config and models with AutoConfig, AutoModel and
AutoModelForCausalLM under model_type "protrans-transfo-xl", so saved directories load with
`from_pretrained` and no `trust_remote_code`. Weights are saved as safetensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

MODEL_TYPE = "protrans-transfo-xl"


class TransfoXLConfig(PreTrainedConfig):
    """Sizes of a Transformer-XL; `mem_len` tokens of memory are kept per layer (0: none)."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layer",
                     "num_attention_heads": "n_head"}

    vocab_size: int = 30
    d_model: int = 512
    n_layer: int = 12
    n_head: int = 8
    d_head: int = 64
    d_inner: int = 2048
    mem_len: int = 256
    clamp_len: int = -1          # distances beyond this use the same encoding (-1: no clamp)
    dropout: float = 0.1
    dropatt: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # transformers 4.x's TransfoXLConfig options that this model does not implement, each
        # with the value that turns it off: given otherwise (a config of that class rebuilt
        # here, its defaults were adaptive softmax and same_length), they were kept as unknown
        # attributes and the model silently built without them.
        off = {"div_val": 1, "same_length": False, "pre_lnorm": False, "untie_r": True,
               "sample_softmax": -1, "attn_type": 0}
        given = [f"{key}={kwargs[key]!r}" for key, value in off.items() if key in kwargs and kwargs[key] != value]
        # The adaptive softmax and input are on where `cutoffs` holds any: 4.x stored `adaptive`
        # but never read it, and wrote `adaptive: true` into every config.json (also that of a
        # model with `cutoffs: []`, the one implemented here). Without `cutoffs`, `adaptive=True`
        # asks for 4.x's default cutoffs.
        if kwargs.get("cutoffs"):
            given.append(f"cutoffs={kwargs['cutoffs']!r}")
        elif "cutoffs" not in kwargs and kwargs.get("adaptive", False) is not False:
            given.append(f"adaptive={kwargs['adaptive']!r}")
        if kwargs.get("d_embed") not in (None, self.d_model):
            given.append(f"d_embed={kwargs['d_embed']!r} (not d_model)")
        if given:
            raise ValueError(f"TransfoXLConfig: protrans's Transformer-XL does not implement {', '.join(given)} "
                             "(it has no adaptive softmax or input, same_length, pre_lnorm or biases shared "
                             "across layers: docs/models.md#transformer-xl)")
        super().__post_init__(**kwargs)


@dataclass
class TransfoXLOutput(ModelOutput):
    """loss (when labels are given), logits (B, T, V), last_hidden_state (B, T, D),
    mems (per layer (B, M, D)), hidden_states (embeddings + every layer, when asked)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    mems: list[torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """(K,) distances -> (K, dim) sinusoidal encoding, as in Vaswani et al. / Transformer-XL."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim))
    angles = distances.float()[:, None] * inv_freq[None, :]  # (K, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RelPartialLearnableAttention(nn.Module):
    """Multi-head attention over [memory; segment] with Transformer-XL relative positions."""

    def __init__(self, config: TransfoXLConfig):
        super().__init__()
        self.n_head, self.d_head = config.n_head, config.d_head
        inner = config.n_head * config.d_head
        self.qkv_net = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.r_net = nn.Linear(config.d_model, inner, bias=False)
        self.o_net = nn.Linear(inner, config.d_model, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))
        self.r_r_bias = nn.Parameter(torch.zeros(config.n_head, config.d_head))
        self.drop = nn.Dropout(config.dropout)
        self.dropatt = nn.Dropout(config.dropatt)
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.scale = 1.0 / math.sqrt(config.d_head)

    def forward(self, h, r, mem, key_mask):
        # h (B, T, D); r (K, D) encodings of distances K-1 .. 0; mem (B, M, D) or None;
        # key_mask (B, T, K) bool, True where query i may attend to key j.
        B, T, _ = h.shape
        cat = h if mem is None else torch.cat([mem.to(h.dtype), h], dim=1)  # (B, K, D); mems of another dtype
        K = cat.shape[1]
        heads = self.qkv_net(cat).view(B, K, 3, self.n_head, self.d_head)
        q = heads[:, -T:, 0]                                          # (B, T, H, Dh)
        k, v = heads[:, :, 1], heads[:, :, 2]                         # (B, K, H, Dh)
        r_k = self.r_net(r).view(K, self.n_head, self.d_head)         # (K, H, Dh)

        content = torch.einsum("bihd,bjhd->bhij", q + self.r_w_bias, k)          # (B, H, T, K)
        by_distance = torch.einsum("bihd,rhd->bhir", q + self.r_r_bias, r_k)    # (B, H, T, K)
        # Query i sits at absolute position M + i; key j is (M + i - j) tokens back, which is
        # row K-1-(M+i-j) = (T-1-i) + j of r. Future keys (j > M+i) are masked below.
        i = torch.arange(T, device=h.device)[:, None]
        j = torch.arange(K, device=h.device)[None, :]
        index = ((T - 1 - i) + j).clamp(max=K - 1)                               # (T, K)
        position = by_distance.gather(-1, index.expand(B, self.n_head, T, K))     # (B, H, T, K)

        scores = (content + position) * self.scale
        scores = scores.masked_fill(~key_mask[:, None], torch.finfo(scores.dtype).min)
        prob = self.dropatt(torch.softmax(scores.float(), dim=-1).to(v.dtype))   # (B, H, T, K)
        out = torch.einsum("bhij,bjhd->bihd", prob, v).reshape(B, T, -1)         # (B, T, H*Dh)
        return self.layer_norm(h + self.drop(self.o_net(out)))


class PositionwiseFF(nn.Module):
    def __init__(self, config: TransfoXLConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.d_model, config.d_inner), nn.ReLU(inplace=True),
                                 nn.Dropout(config.dropout), nn.Linear(config.d_inner, config.d_model),
                                 nn.Dropout(config.dropout))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def forward(self, h):
        return self.layer_norm(h + self.net(h))


class TransfoXLLayer(nn.Module):
    def __init__(self, config: TransfoXLConfig):
        super().__init__()
        self.attn = RelPartialLearnableAttention(config)
        self.ff = PositionwiseFF(config)

    def forward(self, h, r, mem, key_mask):
        return self.ff(self.attn(h, r, mem, key_mask))


class TransfoXLPreTrainedModel(PreTrainedModel):
    config_class = TransfoXLConfig
    config: TransfoXLConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, RelPartialLearnableAttention):
            init.normal_(module.r_w_bias, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.r_r_bias, mean=0.0, std=self.config.initializer_range)


class TransfoXLModel(TransfoXLPreTrainedModel):
    """The Transformer-XL stack: token embeddings, layers with memory; no output head."""

    def __init__(self, config: TransfoXLConfig):
        super().__init__(config)
        self.word_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransfoXLLayer(config) for _ in range(config.n_layer))
        self.post_init()

    def get_input_embeddings(self):
        return self.word_emb

    def set_input_embeddings(self, value):
        self.word_emb = value

    def init_mems(self, batch_size: int) -> None:
        return None

    def forward(self, input_ids=None, mems=None, attention_mask=None, output_hidden_states=None,
                return_dict=None, whole_memory=False, **kwargs):
        B, T = input_ids.shape
        M = 0 if mems is None else mems[0].shape[1]
        K = M + T
        # Transformer-XL scales token embeddings by sqrt(d_model) (there is no absolute position).
        h = self.drop(self.word_emb(input_ids) * math.sqrt(self.config.d_model))  # (B, T, D)

        # Causal over [memory; segment]: query i (at M + i) sees keys j <= M + i.
        i = torch.arange(T, device=input_ids.device)[:, None]
        j = torch.arange(K, device=input_ids.device)[None, :]
        key_mask = (j <= M + i)[None].expand(B, T, K)                            # (B, T, K)
        if attention_mask is not None:
            # (B, T): the segment's keys (the memory's all real); (B, M + T): the memory's too
            # (generate()'s mask, which grows with the sequence: left-padded prompts in memory)
            keys = torch.ones(B, K, dtype=torch.bool, device=input_ids.device)
            keys[:, K - attention_mask.shape[1]:] = attention_mask.bool()
            # A padded query still sees itself, so no row of the softmax is empty.
            key_mask = (key_mask & keys[:, None, :]) | (j == M + i)[None]
        distances = torch.arange(K - 1, -1, -1, device=input_ids.device)          # (K,)
        if self.config.clamp_len > 0:
            distances = distances.clamp(max=self.config.clamp_len)
        r = self.drop(_sinusoid(distances, self.config.d_model).to(h.dtype))      # (K, D)

        layer_inputs = []
        for n, layer in enumerate(self.layers):
            layer_inputs.append(h)
            h = layer(h, r, None if mems is None else mems[n], key_mask)
        h = self.drop(h)
        hidden_states = tuple(layer_inputs) + (h,) if output_hidden_states else None
        return TransfoXLOutput(last_hidden_state=h, mems=self._update_mems(layer_inputs, mems, whole_memory),
                               hidden_states=hidden_states)

    def _update_mems(self, layer_inputs, mems, whole_memory=False):
        # Memory of layer n is the input of layer n over the last mem_len tokens (whole_memory:
        # all of them, as generate() keeps them), without gradient.
        if not whole_memory and (not self.config.mem_len or self.config.mem_len <= 0):
            return None
        with torch.no_grad():
            new = []
            for n, h in enumerate(layer_inputs):
                cat = h if mems is None else torch.cat([mems[n].to(h.dtype), h], dim=1)
                new.append((cat if whole_memory else cat[:, -self.config.mem_len:]).detach())
        return new


class TransfoXLLMHeadModel(TransfoXLPreTrainedModel, GenerationMixin):
    """Transformer-XL with a tied language-model head: position t predicts token t + 1.

    transformers' `generate()` works on it (greedy, sampling, beam search), as `protrans generate`
    decodes (generate.TransfoXLSteps): one pass over the prompt, then one over each new token with
    the memory of every token before it (`whole_memory`: not capped at mem_len while generating),
    so each step's logits equal a pass over the whole sequence so far. `use_cache=False`: that
    pass over the whole sequence at every step. Left-padded batches: the attention mask, which
    covers memory and segment, keeps the padding out of the memory too (relative positions, so
    padding on the left moves no distance between real tokens)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.word_emb.weight"}

    def __init__(self, config: TransfoXLConfig):
        super().__init__(config)
        self.transformer = TransfoXLModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, mems=None, attention_mask=None, labels=None,
                output_hidden_states=None, return_dict=None, whole_memory=False, **kwargs):
        out = self.transformer(input_ids=input_ids, mems=mems, attention_mask=attention_mask,
                               output_hidden_states=output_hidden_states, whole_memory=whole_memory)
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            # labels are the inputs (as for every transformers causal LM); shift here
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                ignore_index=-100)
        return TransfoXLOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                               mems=out.mems, hidden_states=out.hidden_states)

    # -- transformers' generate(): the memory is the cache, under the name `mems` (as XLNet's) ----

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # (no DynamicCache: keys and values are recomputed from `mems`)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      mems=None, use_cache=None, is_first_iteration=False, **kwargs):
        if use_cache is False:
            mems = None  # the whole sequence, every step
        elif mems is not None:
            input_ids = input_ids[:, mems[0].shape[1]:]  # the tokens not yet in memory
        kwargs.pop("labels", None)
        return {**kwargs, "input_ids": input_ids, "mems": mems, "attention_mask": attention_mask,
                "whole_memory": use_cache is not False}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        if model_kwargs.get("use_cache") is not False:
            model_kwargs["mems"] = outputs.mems
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)

    @staticmethod
    def _reorder_cache(mems, beam_idx):
        # beam search: each beam's memory follows the beam it continues
        return [m.index_select(0, beam_idx.to(m.device)) for m in mems]


def register_auto_classes() -> None:
    """Tell AutoConfig, AutoModel and AutoModelForCausalLM about this model (base.register_auto_classes)."""
    from protrans_cli.models.base import register_auto_classes as register

    register(MODEL_TYPE, TransfoXLConfig, TransfoXLModel, "AutoModelForCausalLM", TransfoXLLMHeadModel)


PRESETS = {
    "tiny": dict(d_model=32, n_layer=2, n_head=4, d_head=8, d_inner=64, mem_len=32),
    "small": dict(d_model=256, n_layer=6, n_head=4, d_head=64, d_inner=1024, mem_len=256),
    "base": dict(d_model=768, n_layer=16, n_head=12, d_head=64, d_inner=3072, mem_len=512),
    # ProtTXL (Elnaggar et al. 2021, Table 2): 32 layers, 1024 wide, 14 heads of 128, inner 4096
    "prot_txl": dict(d_model=1024, n_layer=32, n_head=14, d_head=128, d_inner=4096, mem_len=512,
                     dropout=0.15),
}


class TransfoXLFamily(Family):
    name = "transfo_xl"
    model_types = (MODEL_TYPE,)
    objective = "clm"
    causal = True
    presets = PRESETS
    description = "Transformer-XL causal LM with segment memory (ProtTXL)"

    def shape_problem(self, config):
        if config.d_model % 2:  # (a sine and a cosine per frequency: _sinusoid)
            return f"d_model {config.d_model} is odd: the sinusoidal relative positions need an even one"
        if isinstance(config.mem_len, (int, float)) and config.mem_len < 0:
            # (_update_mems kept none: a run with a typo trained without segment memory, without a word)
            return f"mem_len {config.mem_len} is negative: give the tokens of memory kept per layer (0: none)"
        return None

    def build_tokenizer(self):
        return residue_tokenizer(
            ["<pad>", "<unk>", "<s>", "</s>"] + list(RESIDUES), unk_token="<unk>",
            single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
            pad_token="<pad>", bos_token="<s>", eos_token="</s>")

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}

    @property
    def config_class(self):
        return TransfoXLConfig

    @property
    def encoder_class(self):
        return TransfoXLModel

    def pretraining_model(self, config):
        return TransfoXLLMHeadModel(config)

    # `protrans variants --scoring log-likelihood`: the causal LM with its head
    masked_lm_class = "TransfoXLLMHeadModel"

    def load_masked_lm(self, name_or_path, *, dtype=None, **hub_kwargs):
        from protrans_cli.models.base import load_checked

        return load_checked(TransfoXLLMHeadModel, name_or_path, dtype=dtype, lacking=self.masked_lm_lacking,
                            **hub_kwargs)


FAMILY = TransfoXLFamily()
