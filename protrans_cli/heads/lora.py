"""LoRA adapters (Hu et al. 2021) on a model's attention projections: add, merge, count.

    from protrans_cli.heads.lora import add_lora, merged_copy
    wrapped = add_lora(loaded.model, loaded.family, rank=4, alpha=8.0)   # base weights frozen
    plain = merged_copy(loaded.model)   # nn.Linear again, W + alpha/r * B @ A: save_pretrained as any model

Which Linear modules take an adapter is the family's `lora_targets` (models/<family>.py), matched
against the end of each module's qualified name: BERT's `attention.self.query`, T5's `SelfAttention.q`.
B starts at zero, so a model with fresh adapters computes exactly what the base model does.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from protrans_cli.errors import UsageError


class LoRALinear(nn.Module):
    """y = base(x) + (dropout(x) A^T B^T) * alpha / rank, the base Linear frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        for param in base.parameters():
            param.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        weight = base.weight
        # (as peft: A like a Linear's own initialisation, B zero, so the update starts at 0)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32, device=weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # transformers' code reads a projection's weight (dtype checks, pruning): the base's
    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x).to(self.lora_a.dtype) @ self.lora_a.T @ self.lora_b.T  # (..., out)
        return self.base(x) + (update * self.scaling).to(x.dtype)

    def delta(self) -> torch.Tensor:
        """The update to the base weight, (out, in) float32."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the update added to its weight (a new module; self unchanged)."""
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight.copy_((linear.weight.float() + self.delta()).to(linear.weight.dtype))
        linear.weight.requires_grad_(False)
        return linear


def lora_target_names(model, family) -> list[str]:
    """Qualified names of the Linear modules of `model` that the family's `lora_targets` name."""
    targets = tuple(getattr(family, "lora_targets", ()) or ())
    if not targets:
        raise UsageError(f"finetune: the {family.name} family has no LoRA targets (its attention projections are "
                         "not Linear modules); fine-tune a bert, roberta, albert, electra, t5 or esm model")
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise UsageError(f"finetune: no Linear module of this {family.name} model ends in "
                         f"{', '.join(targets)} (the family's LoRA targets)")
    return names


def add_lora(model, family, *, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of `model` and put a LoRALinear in place of each target Linear
    (in place); the adapted modules' names."""
    for param in model.parameters():
        param.requires_grad_(False)
    names = lora_target_names(model, family)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names


def lora_modules(model) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state(model) -> dict[str, torch.Tensor]:
    """The adapters' tensors only (what a checkpoint of the fine-tuning needs of the model)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def merged_copy(model):
    """A copy of `model` with every LoRALinear merged back into a plain nn.Linear: the same
    module names and state-dict keys as the base model, so save_pretrained writes an ordinary
    checkpoint that `protrans embed -m` loads."""
    from protrans_cli.training.recompute import drop_recomputed_blocks

    merged = copy.deepcopy(model)
    drop_recomputed_blocks(merged)  # (the copy's wrappers would run the original's blocks)
    for name, module in list(lora_modules(merged).items()):
        parent_name, _, child = name.rpartition(".")
        parent = merged.get_submodule(parent_name) if parent_name else merged
        setattr(parent, child, module.merged())
    return merged
