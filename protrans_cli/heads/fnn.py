"""The ProtTrans localization FNN on frozen per-protein embeddings.

Linear(D -> 32) + dropout 0.25 + ReLU, then one Linear(32 -> C) per output (the 10 DeepLoc
locations and the 2-class membrane-bound/soluble head for `loc`; one output for generic tasks).
Inputs are first standardised with a per-dimension shift and scale stored with the weights
(identity unless `fit` sets them from the training set): mean-pooled embeddings such as one-hot
composition vary over a tiny range, and the head then learns in a few epochs instead of hundreds.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardised(nn.Module):
    """A module whose input is standardised with `shift` and `scale` buffers (its subclass registers
    them): the FNN and the per-protein linear head."""

    def standardise_with(self, x: torch.Tensor) -> None:
        """Set shift/scale to the mean and standard deviation of the training inputs x (N, D). A
        feature constant in training keeps scale 1, as scikit-learn's StandardScaler does: divided
        by a near-zero deviation, a protein that differs there (a residue no training protein
        has, in a composition) reached the network a million times too large. One training
        protein has no sample deviation: every feature is constant (its std was NaN, and so was
        every output of the head)."""
        std = x.std(dim=0, correction=1 if len(x) > 1 else 0)
        self.shift.copy_(x.mean(dim=0))
        self.scale.copy_(_kept(std))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Versions before 2026-11-29 saved max(std, 1e-6): the head or interrupted fit of such a
        # version loads with the scale standardise_with gives now (the feature was constant in
        # training, so its weights saw only zeros either way).
        key = prefix + "scale"
        if isinstance(state_dict.get(key), torch.Tensor):
            state_dict[key] = _kept(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ProteinFNN(Standardised):
    def __init__(self, input_dim: int, outputs: dict[str, int], hidden: int = 32, dropout: float = 0.25):
        super().__init__()
        self.register_buffer("shift", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))
        self.features = nn.Linear(input_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, D) -> {name: (B, C)}; `mask` is accepted for a uniform interface and unused."""
        x = (x - self.shift) / self.scale  # (B, D)
        h = torch.relu(self.dropout(self.features(x)))  # (B, hidden)
        return {name: head(h) for name, head in self.heads.items()}


def _kept(std: torch.Tensor) -> torch.Tensor:
    return torch.where(std > 1e-6, std, torch.ones_like(std))
