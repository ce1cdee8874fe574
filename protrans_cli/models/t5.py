"""The T5 family (ProtT5-XL, ProtT5-XXL): encoder-decoder; embed uses the encoder alone.

Input layout: spaced residues (U/Z/O/B -> X) followed by one `</s>`; no leading special
token. The vocabulary has ProtT5's 128 ids: `<pad>` 0, `</s>` 1, `<unk>` 2 and 25 residues as
ProtT5's, then the 100 `<extra_id_*>` sentinels of span corruption, numbered upwards from 28
(ProtT5 numbers them downwards from 127; the objectives take them by name, and a model trained
from ProtT5 with --init-from keeps ProtT5's tokenizer).
ProtT5-XL: 24 + 24 layers, d_model 1024, d_ff 16384, 32 heads of d_kv 128 (~3B parameters,
1.2B in the encoder); ProtT5-XXL: d_ff 65536, 128 heads (~11B, 4.8B in the encoder).
"""

from __future__ import annotations

import threading

from protrans_cli.models.base import Family
from protrans_cli.models.tokenizers import RESIDUES, residue_tokenizer

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
NUM_SENTINELS = 100
SENTINELS = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]

PRESETS = {
    "tiny": dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2),
    "small": dict(d_model=256, d_ff=1024, d_kv=32, num_heads=8, num_layers=4, num_decoder_layers=4),
    "base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
    # ProtT5-XL-UniRef50 / ProtT5-XL-BFD (original T5: ReLU feed-forward, not gated)
    "prot_t5_xl": dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24,
                       num_decoder_layers=24, dropout_rate=0.1),
    # ProtT5-XXL-UniRef50 / ProtT5-XXL-BFD
    "prot_t5_xxl": dict(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24,
                        num_decoder_layers=24, dropout_rate=0.1),
    # Ankh base and large (Elnaggar et al. 2023): 48 encoder + 24 decoder layers, gated-GELU
    # feed-forward, relative positions in 64 buckets up to 128 apart; 740M and 1.9B parameters
    "ankh_base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=48, num_decoder_layers=24,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=64,
                      relative_attention_max_distance=128, tie_word_embeddings=False),
    "ankh_large": dict(d_model=1536, d_ff=3840, d_kv=64, num_heads=16, num_layers=48, num_decoder_layers=24,
                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=64,
                       relative_attention_max_distance=128, tie_word_embeddings=False),
}


class T5Family(Family):
    name = "t5"
    model_types = ("t5",)
    # finetune's LoRA adapters: q, k, v and o of every encoder block, as Schmirler et al. 2024 adapt ProtT5
    lora_targets = ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o")
    objective = "t5"
    # `protrans variants`: a site masked by <extra_id_0> in the encoder's input, read from the decoder
    # rebuilding the protein, as ProtT5 and `protrans train`'s t5 objective were trained
    masked_lm_class = "T5ForConditionalGeneration"
    masked_lm_lacking = ("an encoder saved without its decoder (ProtT5's -enc checkpoints): scoring residues needs "
                         "the decoder that was pretrained to rebuild the protein (e.g. -m prot_t5_xl_uniref50)")
    presets = PRESETS
    description = "T5 encoder-decoder; embeddings from the encoder (ProtT5)"
    flex_attention = True

    def shape_problem(self, config):
        buckets, reach = config.relative_attention_num_buckets, config.relative_attention_max_distance
        # (the encoder's buckets are halved by direction, and half of those are exact offsets:
        # below 4, no exact one is left and the logarithmic ones divide by zero)
        if buckets < 4:
            return f"relative_attention_num_buckets {buckets} is below 4, the fewest T5's relative positions take"
        if reach <= buckets // 2:
            return (f"relative_attention_max_distance {reach} must exceed half of relative_attention_num_buckets "
                    f"{buckets}: the offsets below that half have exact buckets, the logarithmic ones reach beyond")
        return None

    def build_tokenizer(self):
        return residue_tokenizer(
            T5_SPECIALS + list(RESIDUES) + SENTINELS, unk_token="<unk>",
            single="$A </s>", pair="$A </s> $B:1 </s>:1",
            pad_token="<pad>", eos_token="</s>", additional_special_tokens=SENTINELS)

    def token_config(self, tokenizer):
        return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                # T5 starts decoding from the pad token
                "decoder_start_token_id": tokenizer.pad_token_id}

    def repair_config(self, config) -> None:
        # protrans train before 2026-12-07 saved T5ForConditionalGeneration with the config a
        # T5EncoderModel had been built on for the model card's count (transformers sets
        # is_encoder_decoder and use_cache to False on it): generate() refused the directory, and
        # perplexity and variants read it as an encoder alone. The weights hold the decoder.
        if "T5ForConditionalGeneration" in (getattr(config, "architectures", None) or ()) \
                and getattr(config, "protrans_version", None) and not config.is_encoder_decoder:
            config.is_encoder_decoder = True
            config.use_cache = True

    @property
    def config_class(self):
        from transformers import T5Config

        return T5Config

    @property
    def encoder_class(self):
        from transformers import T5EncoderModel

        return T5EncoderModel

    def pretraining_model(self, config):
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration(config)

    def use_flex_attention(self, model) -> None:
        use_flex_attention(model)

    def overflow_guard(self, model) -> "OverflowGuard":
        # one per model object: every embedder built on it shares its hooks
        guard = getattr(model, "_protrans_overflow_guard", None)
        if not isinstance(guard, OverflowGuard):
            guard = OverflowGuard(model)
            model._protrans_overflow_guard = guard
        return guard


FAMILY = T5Family()


# --- float16 without float32 modules (`embed` on a V100, T4 or other GPU without bfloat16) ----
#
# transformers keeps T5's `wo` (the feed-forward output, a third of the encoder's arithmetic)
# in float32 when a model is loaded in float16 (`_keep_in_fp32_modules`), because its output
# can overflow float16. On a T4 float32 runs at an eighth of float16's tensor-core rate, so that
# one matrix product would take most of ProtT5's time; the ProtTrans script runs the whole
# encoder in float16 (`model.half()`), as does the half-precision ProtT5 checkpoint it publishes.
# protrans does too, and watches for what float32 `wo` was for: T5's blocks clamp an infinity
# in a sub-layer's output to +-64504 ("to enable fp16 training"), so an overflow anywhere in the
# encoder (in `wo`, and in the attention output, which was float16 before too) left finite,
# wrong numbers that no check of the output could see. The guard's forward hooks look at every
# encoder sub-layer's output before that clamp and mark the batch rows whose tokens met an
# infinity; the embedder recomputes those proteins with the model in float32.


_FLOAT16_MAX = 65504.0


class OverflowGuard:
    """Marks the rows of a float16 batch in which any encoder sub-layer's output (before T5's
    clamp) reached float16's largest value or infinity. `watch(keep, rows, device)` arms it for
    one forward pass of this thread (`keep`: (B, T) tokens that belong to a protein, or None for
    every token), `rows()` then gives one bool per batch row. Armed per thread, as the flex
    switch is: two threads embedding with one model each see their own batch. Inert outside
    float16 (the float32 retry, the CPU twin)."""

    def __init__(self, model):
        stack, _ = _encoder_attentions(model)
        self._armed = threading.local()
        for block in stack.block:
            for layer in {id(block.layer[0]): block.layer[0], id(block.layer[-1]): block.layer[-1]}.values():
                layer.register_forward_hook(self._look)

    def _look(self, module, args, output) -> None:
        import torch

        state = getattr(self._armed, "state", None)
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if state is None or not torch.is_tensor(hidden) or hidden.dtype != torch.float16:
            return
        rows, keep = state
        # at or beyond float16's largest value: infinity in eager float16; inside a compiled
        # block inductor computes in float32 and the clamp saturates, so no infinity is ever seen
        met = (hidden.abs() >= _FLOAT16_MAX).any(dim=-1)  # (B, T); no device sync
        if keep is not None and keep.shape == met.shape:
            met &= keep
        rows |= met.any(dim=-1)

    def watch(self, keep, rows: int, device) -> None:
        import torch

        self._armed.state = (torch.zeros(rows, dtype=torch.bool, device=device),
                             None if keep is None else keep.to(device=device, dtype=torch.bool))

    def rows(self) -> list[bool]:
        """One bool per row of the batch this thread watched (a device sync: read it once the
        batch's other results are on their way to the host), and disarm."""
        state = getattr(self._armed, "state", None)
        self._armed.state = None
        return [] if state is None else state[0].tolist()

    def __deepcopy__(self, memo):  # a copied model (the CPU twin) gets an unarmed guard
        copied = object.__new__(OverflowGuard)
        copied._armed = threading.local()
        return copied


# --- FlexAttention for inference (`protrans embed --attention flex`) -----------------------
#
# T5 adds a learned relative-position bias to every attention score. PyTorch's
# scaled_dot_product_attention then cannot use its Flash or cuDNN kernels: with a dense
# (B, H, L, L) additive bias it falls back to the memory-efficient kernel or the math path.
# FlexAttention (torch.nn.attention.flex_attention) generates one fused Triton kernel on CUDA
# for a `score_mod` (here: add the bias looked up in a small (heads, 2 x max_distance + 1) table) and a
# `block_mask` (here: the keys that are padding), so the bias is never materialised per pair.
#
# `use_flex_attention(model)` replaces, on the instances (the class is untouched), the forward of
# the encoder stack (to catch the (B, T) attention mask the model is called with, and build the
# bias table and block mask once per forward pass) and of every encoder self-attention module
# (which then uses the module's own q, k, v, o projections). HF's processed masks and its
# position_bias hand-over between layers are ignored: the bias comes from the first block's
# `relative_attention_bias` with HF's own bucketing, so the numbers are HF's to float rounding.
# On CUDA the attention runs `torch.compile(flex_attention, dynamic=True)` (compiled once per
# process); on the CPU it runs flex_attention eagerly (it materialises the scores: a reference
# path for tests and the CPU fallback, not a fast one), because inductor's CPU code for this
# score_mod failed to compile in torch 2.13.


class _FlexPass:
    """What one forward pass of the encoder shares between its layers: the key-padding mask
    given to the model (or a packed row's segments), and the bias table and block mask built
    from it on the first layer."""

    def __init__(self, attention_mask=None, segments=None, active=False):
        self.attention_mask = attention_mask  # (B, T) as given to the model (1 or True: a real token)
        self.segments = segments    # (1, T) of a packed row: the protein (segment) of every token
        self.active = active        # inside the encoder's forward
        self.table = None           # (n_heads, 2M + 1) float32: bias of relative position j - i (relative_bias_table)
        self.reach = None           # M as a 0-d int32 tensor on the device (see _flex_self_attention)
        self.block_mask = None


class _FlexState:
    """The flex switch of one model: the module that holds the relative-position bias, and the
    forward pass under way in each thread (`current`). Per thread, as transformers' own forward
    passes keep nothing on the model: two threads embedding with one model at the same time
    each read their own batch's mask, never the other's."""

    def __init__(self, bias_module):
        import threading

        self.bias_module = bias_module  # the first block's attention: it holds relative_attention_bias
        self._local = threading.local()

    @property
    def current(self) -> _FlexPass:
        return getattr(self._local, "current", None) or _FlexPass()

    def reset(self, attention_mask, segments=None) -> None:
        self._local.current = _FlexPass(attention_mask, segments, active=True)

    def clear(self) -> None:
        self._local.current = None

    # A copy (copy.deepcopy of the model, pickle) has no forward pass under way: a thread-local
    # is neither copied nor pickled. (The object is made before its state is copied, so the bias
    # module, which holds this state too, gets the same copy as every other module.)
    def __getstate__(self):
        return {"bias_module": self.bias_module}

    def __setstate__(self, state):
        import threading

        self.bias_module = state["bias_module"]
        self._local = threading.local()


_COMPILED_FLEX = None


def flex_attention_function(device):
    """flex_attention as it runs on `device`: compiled once per process on CUDA (one graph for
    every batch shape), eager elsewhere (see the note above)."""
    global _COMPILED_FLEX
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    if torch.device(device).type != "cuda":
        return _eager_flex
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX


def flex_is_compiled(device) -> bool:
    """Whether FlexAttention runs a kernel torch.compile builds on `device` (CUDA), which can fail
    on a machine without a working compiler, rather than eagerly."""
    return flex_attention_function(device) is not _eager_flex


def _eager_flex(*args, **kwargs):
    from torch.nn.attention import flex_attention as module

    # "flex_attention called without torch.compile()": on purpose here (a CPU). torch warns once
    # per process and remembers that in a set: marked there, it stays quiet. A torch without the
    # set (before 2.9) gives no such warning: nothing to hide (the process's warning filters,
    # which are not thread-safe to swap, are left alone either way).
    shown = getattr(module, "_WARNINGS_SHOWN", None)
    if isinstance(shown, set):
        shown.add("flex_attention_performance")
    return module.flex_attention(*args, **kwargs)


def relative_bias_table(attention, device):
    """(n_heads, 2 * M + 1) float32, M = relative_attention_max_distance: column `r + M` holds the
    bias every head adds to a score of relative position r = key - query, as HF's
    T5Attention.compute_bias computes it for an encoder (bidirectional buckets) from
    `attention.relative_attention_bias`. T5's buckets saturate from |r| = M on (the last bucket
    of each direction), so `clamp(r, -M, M)` indexes every distance: one table, the same size
    for every batch (a compiled kernel is not specialised to each length)."""
    import torch

    reach = int(attention.relative_attention_max_distance)
    relative = torch.arange(-reach, reach + 1, dtype=torch.long, device=device)  # key - query
    buckets = type(attention)._relative_position_bucket(
        relative, bidirectional=True, num_buckets=attention.relative_attention_num_buckets,
        max_distance=reach)
    weight = attention.relative_attention_bias.weight  # (num_buckets, n_heads)
    return weight[buckets.to(weight.device)].t().float().contiguous()


def _encoder_attentions(model):
    """The encoder stack and its self-attention modules; a ModelError when the layout is not the
    T5 encoder's (a transformers version that moved things, or another model)."""
    from protrans_cli.errors import ModelError

    stack = getattr(model, "encoder", None)
    blocks = getattr(stack, "block", None)
    where = f"{type(model).__name__}"
    if stack is None or blocks is None or len(blocks) == 0:
        raise ModelError(f"--attention flex: {where} has no encoder.block (not a T5 encoder as expected)")
    if getattr(stack.config, "is_decoder", False):
        raise ModelError(f"--attention flex: {where}'s encoder is configured as a decoder")
    attentions = []
    for i, block in enumerate(blocks):
        try:
            attention = block.layer[0].SelfAttention
        except (AttributeError, IndexError, TypeError):
            raise ModelError(f"--attention flex: {where}.encoder.block[{i}] has no layer[0].SelfAttention "
                             "(the T5 layout this transformers version was expected to have)") from None
        missing = [name for name in ("q", "k", "v", "o", "n_heads", "key_value_proj_dim")
                   if not hasattr(attention, name)]
        if missing or not hasattr(type(attention), "_relative_position_bucket"):
            raise ModelError(f"--attention flex: encoder.block[{i}].layer[0].SelfAttention "
                             f"({type(attention).__name__}) lacks {', '.join(missing) or '_relative_position_bucket'}")
        attentions.append(attention)
    first = attentions[0]
    if not getattr(first, "has_relative_attention_bias", False) or not hasattr(first, "relative_attention_bias"):
        raise ModelError("--attention flex: the first encoder block has no relative_attention_bias")
    return stack, attentions


def use_flex_attention(model) -> None:
    """Switch the encoder of a loaded T5EncoderModel (ProtT5, Ankh) to FlexAttention, for
    inference (no dropout, no cache, no attention weights). Idempotent."""
    import types

    stack, attentions = _encoder_attentions(model)
    if uses_flex_attention(model):
        return
    arity = _attention_output_arity(attentions[0])
    # One plain object shared by the stack and its layers (not a module: nothing is registered
    # in the model's tree or state dict; a deepcopy of the model copies it along, consistently).
    state = _FlexState(attentions[0])
    for attention in attentions:
        attention._protrans_flex = state
        attention._protrans_flex_arity = arity
        attention.forward = types.MethodType(_flex_self_attention, attention)
    stack._protrans_flex = state
    stack.forward = types.MethodType(_flex_stack_forward, stack)


def drop_flex_attention(model) -> None:
    """Undo `use_flex_attention` on this model object: its encoder runs transformers' own
    attention again. For the CPU twin of a flex embedder (`--cpu-fallback`): on the CPU
    flex_attention runs eagerly, materialising every score, tens of times slower than the
    model's own attention there."""
    if not uses_flex_attention(model):
        return
    stack, attentions = _encoder_attentions(model)
    for module in (stack, *attentions):
        for name in ("forward", "_protrans_flex", "_protrans_flex_arity"):
            module.__dict__.pop(name, None)  # the instance's: the class's forward shows again


def uses_flex_attention(model) -> bool:
    stack = getattr(model, "encoder", None)
    return isinstance(getattr(stack, "_protrans_flex", None), _FlexState)


def _attention_output_arity(attention) -> int:
    """How many values this transformers version's T5Attention.forward returns (output and
    position bias first, then attention weights and/or cache entries in some versions): the
    replacement returns as many, so that T5Block unpacks it as it would the original's."""
    import torch

    from protrans_cli.errors import ModelError

    weight = attention.q.weight
    probe = torch.zeros(1, 1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        out = type(attention).forward(attention, probe)
    if not isinstance(out, tuple) or len(out) < 2 or not isinstance(out[0], torch.Tensor) \
            or tuple(out[0].shape) != tuple(probe.shape):
        raise ModelError(f"--attention flex: {type(attention).__name__}.forward returned "
                         f"{type(out).__name__} of an unexpected layout (expected (output, position_bias, ...))")
    return len(out)


def _flex_stack_forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
    """The encoder stack's own forward, with the (B, T) mask the model was called with kept for
    the attention layers (None: every position is a token), or a packed row's segments
    (`SEGMENTS`, from `packed_inputs`; the model gets no mask then)."""
    from protrans_cli.errors import ModelError

    segments = kwargs.pop(SEGMENTS, None)
    if segments is not None and (attention_mask is not None or segments.shape[0] != 1):
        raise ModelError("--attention flex: a packed row is one row of segments without an attention_mask")
    state = self._protrans_flex
    state.reset(attention_mask, segments)
    try:
        return type(self).forward(self, input_ids, attention_mask, *args, **kwargs)
    finally:
        state.clear()


def _flex_self_attention(self, hidden_states, *args, position_bias=None, **kwargs):
    """T5 encoder self-attention through FlexAttention: same projections, the relative-position
    bias as a score_mod, the padding keys as a block mask, no 1/sqrt(d) scaling (T5 has none).
    Rows of padding queries hold finite numbers that nothing reads."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from protrans_cli.errors import ModelError

    switch = self._protrans_flex
    state = switch.current  # this thread's forward pass
    if not state.active:
        raise ModelError("--attention flex: the T5 self-attention was called outside the encoder's forward "
                         "(only the encoder stack is switched to FlexAttention)")
    if kwargs.get("key_value_states", args[1] if len(args) > 1 else None) is not None:
        raise ModelError("--attention flex: cross-attention is not supported (encoder self-attention only)")
    batch, length, _ = hidden_states.shape
    device = hidden_states.device
    if state.table is None:  # the first layer of this forward pass: the same for every layer
        state.table = relative_bias_table(switch.bias_module, device)  # (H, 2M + 1)
        state.reach = torch.tensor((state.table.shape[1] - 1) // 2, dtype=torch.int32, device=device)
        mask = state.attention_mask
        if state.segments is not None:
            if tuple(state.segments.shape) != (batch, length):
                raise ModelError(f"--attention flex: segments of shape {tuple(state.segments.shape)} for a "
                                 f"packed row of {batch} x {length} tokens")
            state.block_mask = segment_block_mask(state.segments[0].to(device))
        elif mask is None:
            state.block_mask = None
        else:
            if tuple(mask.shape) != (batch, length):
                raise ModelError(f"--attention flex: attention_mask of shape {tuple(mask.shape)} for a batch of "
                                 f"{batch} x {length} tokens (a (B, T) mask is expected)")
            valid = mask.to(device=device, dtype=torch.bool)  # (B, T)

            def keep(b, h, q_idx, kv_idx):
                return valid[b, kv_idx]

            state.block_mask = create_block_mask(keep, batch, None, length, length, device=device)
    table = state.table
    # The model's max_distance M as a tensor, not a Python int: compiled with dynamic=True, an int
    # captured by the score_mod becomes a symbol, and `-M` an expression among the kernel's
    # inputs, which inductor in torch 2.11 cannot lower ("'ShapeAsConstantBuffer' object has no
    # attribute 'dtype'", on an H200, 2026-11-30; 2.13 can). A tensor is a plain kernel input.
    reach = state.reach

    def add_bias(score, b, h, q_idx, kv_idx):
        relative = torch.minimum(torch.maximum(kv_idx - q_idx, -reach), reach)
        return score + table[h, relative + reach]

    shape = (batch, length, self.n_heads, self.key_value_proj_dim)
    query = self.q(hidden_states).view(shape).transpose(1, 2)  # (B, H, L, d_kv)
    key = self.k(hidden_states).view(shape).transpose(1, 2)
    value = self.v(hidden_states).view(shape).transpose(1, 2)
    flex = flex_attention_function(device)
    out = flex(query, key, value, score_mod=add_bias, block_mask=state.block_mask, scale=1.0)  # (B, H, L, d_kv)
    out = self.o(out.transpose(1, 2).reshape(batch, length, self.n_heads * self.key_value_proj_dim))
    if position_bias is None:  # handed to the next layers, which ignore it
        position_bias = hidden_states.new_zeros(1, self.n_heads, 1, 1)
    return (out, position_bias) + (None,) * (self._protrans_flex_arity - 2)


# --- Packed rows (`protrans embed --attention flex --packing`) ----------------------------
#
# T5 has no absolute positions: every token's computation depends on its protein only through
# attention, and the bias depends on key - query alone, which packing does not change within a
# protein. A packed row therefore gives every protein exactly its own rows once attention stays
# within each protein: the mask below (same segment), and a block mask built straight from the
# segment boundaries, so that the kernel visits only the blocks on the diagonal band of each
# protein (create_block_mask would evaluate the mask over all T x T pairs of a 32000-token row).

SEGMENTS = "protrans_segments"  # the keyword a packed row's segments travel under (popped by the stack)


def packed_inputs(inputs: dict) -> dict:
    """A packed row as `ResidueLayout.encode_packed` gives it (input ids and cumulative lengths,
    the padding at the end one more segment) in the form a flex-switched T5 encoder takes: the
    input ids and every token's segment number, (1, T) int32."""
    import torch

    cu = inputs["cu_seq_lens_q"].long()
    segments = torch.repeat_interleave(torch.arange(len(cu) - 1, dtype=torch.int32), cu[1:] - cu[:-1])
    return {"input_ids": inputs["input_ids"], SEGMENTS: segments[None]}


def segment_block_mask(segments, block_size: int = 128):
    """The flex BlockMask of a packed row whose token t belongs to segment `segments[t]`
    (non-decreasing, (T,) on the row's device): token q attends to token k iff they share a
    segment. Built from each block's first and last segment, without a (T, T) mask: blocks i and
    j hold a pair of one segment iff their segment ranges overlap; such a pair of blocks is full
    (no mask evaluated in it) when both lie wholly, and completely, inside one segment."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    seg = segments.to(torch.int32)
    total = seg.numel()
    blocks = -(-total // block_size)
    ends = torch.clamp(torch.arange(1, blocks + 1, device=seg.device) * block_size, max=total)
    first, last = seg[::block_size], seg[ends - 1]                                # (n,) each
    touch = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])  # (n, n)
    inside = (first == last) & (ends - torch.arange(blocks, device=seg.device) * block_size == block_size)
    full = inside[:, None] & inside[None, :] & (first[:, None] == first[None, :])

    def layout(keep):  # (1, 1, n) counts and (1, 1, n, n) indices, each row's kept blocks first
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return keep.sum(1, dtype=torch.int32)[None, None], order[None, None]

    def same_segment(b, h, q_idx, kv_idx):
        return seg[q_idx] == seg[kv_idx]

    return BlockMask.from_kv_blocks(*layout(touch & ~full), *layout(full), BLOCK_SIZE=block_size,
                                    mask_mod=same_segment, seq_lengths=(total, total))
