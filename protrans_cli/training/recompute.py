"""Activation checkpointing (`train --activation-checkpointing`): a transformer block keeps only
its input during the forward pass, and its intermediate tensors are recomputed during the
backward pass.

What it buys: the memory of activations. Without it, every block keeps everything its backward
pass needs (attention inputs and outputs, the feed-forward's wide intermediate, norms, dropout
masks): for ProtT5-XL's 16384-wide feed-forward that is tens of kilobytes per token and block.
With it, a block keeps its input, one (tokens x hidden) tensor. What it costs: the blocks'
forward pass runs twice, so a step takes about a third longer. Use it when the model, the
length (`--phase 2048:...`) or the micro-batch does not fit otherwise; a larger micro-batch can
win the time back.

The numbers do not change. The recomputation goes through `torch.utils.checkpoint` in its
non-reentrant form, which restores the random-number state of the forward pass, so dropout draws
the same masks again; losses and gradients equal a run without it (tested for every family).

Which modules are blocks: the items of the outermost `nn.ModuleList`s of the model (BERT's
`encoder.layer`, T5's encoder and decoder `block` lists, ELECTRA's two encoders, XLNet's,
Transformer-XL's and ESM's layers; ALBERT's one shared layer group, which runs once per layer,
is recomputed at each of its calls). Each block's `forward` is wrapped in place, so parameter
names and state dicts do not change (checkpoints and `save_pretrained` see the plain model),
and DDP's and FSDP2's per-block hooks stay outside the recomputed region, in the order
torchtitan applies them.
"""

from __future__ import annotations

import functools

import torch

_MARK = "_protrans_recomputed"


def layer_lists(model: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """Every `nn.ModuleList` that is not inside another one's item: the model's lists of
    transformer blocks (T5's per-block `layer` lists, inside those blocks, are not)."""
    lists: list[torch.nn.ModuleList] = []
    prefixes: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList):
            continue
        if any(name.startswith(p) for p in prefixes):
            continue
        lists.append(module)
        prefixes.extend(f"{name}.{i}." for i in range(len(module)))
    return lists


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The items of the model's layer lists (`layer_lists`): what is recomputed, and what FSDP
    shards on its own (training/dist.py)."""
    return [block for layers in layer_lists(model) for block in layers]


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Recompute every transformer block of `model` in the backward pass; returns how many.
    Applying it twice changes nothing."""
    blocks = transformer_blocks(model)
    for block in blocks:
        if not getattr(block, _MARK, False):
            block.forward = _recomputed(block, block.forward)
            setattr(block, _MARK, True)
    return len(blocks)


def _recomputed(block: torch.nn.Module, forward):
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not (block.training and torch.is_grad_enabled()):  # evaluation: nothing is kept anyway
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


_COMPILED = "_protrans_compiled"


def compile_blocks(model: torch.nn.Module, *, dynamic: bool = True, mode: str = "default") -> int:
    """torch.compile each transformer block's forward in place, as torchtitan does; returns how
    many. With dynamic shapes by default; `dynamic=False` (`train --static-shapes`, every
    micro-batch one shape per phase) specializes on the shapes met, one compilation per shape.
    `mode` is torch.compile's (COMPILE_MODES; "default" passes none): "reduce-overhead" records
    CUDA graphs (cudagraph trees: the blocks' graphs of one step are replayed as a whole). The blocks of a model share their code, so one compilation serves
    them all: a 12-layer BERT's first training step took 10.8 s compiled block by block and
    52.8 s compiled whole (a 2-core CPU), and a 30-layer ProtBert compiled whole outlasted a
    110 s benchmark step on an H200. What stays eager (embeddings, heads, the loss) is a small
    share of the work. After `checkpoint_blocks` the recomputed region compiles with its block;
    DDP and FSDP, applied later, keep their hooks outside. Applying it twice changes nothing."""
    blocks = transformer_blocks(model)
    for block in blocks:
        if not getattr(block, _COMPILED, False):
            block.forward = torch.compile(block.forward, dynamic=dynamic, mode=None if mode == "default" else mode)
            setattr(block, _COMPILED, True)
    return len(blocks)


# The families whose blocks `train` compiles by default on a CUDA GPU: BERT, as measured there
# (H200, ProtBert-sized masked LM, 2026-11-30: 1.58x the plain transformers loop with --compile
# alone, 1.79x with --token-micro-batches --packing too; 1.07x uncompiled).
COMPILED_BY_DEFAULT = ("bert", "roberta")  # families (RoBERTa's blocks are BERT's code)


def resolve_compile(setting: bool | None, family: str, device, *, warn: bool = True) -> bool:
    """What `compile` (None: auto) means for this run: as given when given; auto compiles the
    blocks of a BERT or RoBERTa model on a CUDA GPU where torch.compile builds and runs a small
    kernel (a few seconds, once, on a generator of its own: the run's random numbers are not
    drawn from; a machine without a working compiler gets a warning, from the rank that `warn`s,
    and eager blocks). ALBERT, ELECTRA, ESM, T5, XLNet and Transformer-XL stay eager unless
    asked (not measured compiled on a GPU); so does the CPU (within noise of eager there)."""
    if setting is not None:
        return bool(setting)
    device = torch.device(device)
    if device.type != "cuda" or family not in COMPILED_BY_DEFAULT:
        return False
    from protrans_cli import console
    from protrans_cli.environment import compile_check

    with torch.random.fork_rng(devices=[device]):
        check = compile_check(str(device))
    if not check["ok"]:
        if warn:
            console.warn(f"torch.compile cannot build a kernel on this machine ({check.get('error')}): the "
                         "model's blocks run uncompiled (--no-compile skips this check)")
        return False
    return True


def drop_recomputed_blocks(model: torch.nn.Module) -> None:
    """Undo `checkpoint_blocks` on this model object: each block runs its class's forward again.
    For a deep copy above all (finetune's merged model): it shares the original's wrappers (a
    function is copied by reference), which would run the original blocks."""
    _unwrap_blocks(model, _MARK)


def drop_compiled_blocks(model: torch.nn.Module) -> None:
    """Undo `compile_blocks` on this model object: each block runs its class's forward again.
    For a deep copy above all: it shares the original's compiled functions (a function is copied
    by reference), which would run the original blocks."""
    _unwrap_blocks(model, _COMPILED)


def _unwrap_blocks(model: torch.nn.Module, mark: str) -> None:
    """The blocks that `mark` says were wrapped in place get their class's forward back."""
    for block in transformer_blocks(model):
        if block.__dict__.pop(mark, False):
            block.__dict__.pop("forward", None)
