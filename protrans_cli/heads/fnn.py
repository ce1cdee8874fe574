"""The ProtTrans localization FNN on frozen per-protein embeddings.

Linear(D -> 32) + dropout 0.25 + ReLU, then one Linear(32 -> C) per output (the 10 DeepLoc
locations and the 2-class membrane-bound/soluble head for `loc`; one output for generic tasks).
"""

from __future__ import annotations

import torch
from torch import nn


class ProteinFNN(nn.Module):
    def __init__(self, input_dim: int, outputs: dict[str, int], hidden: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Linear(input_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, D) -> {name: (B, C)}; `mask` is accepted for a uniform interface and unused."""
        h = torch.relu(self.dropout(self.features(x)))  # (B, hidden)
        return {name: head(h) for name, head in self.heads.items()}
