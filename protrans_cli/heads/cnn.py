"""The ProtTrans secondary-structure CNN on frozen per-residue embeddings.

Conv1d(D -> 32, kernel 7) + ReLU + dropout 0.25 extracts features; one Conv1d(32 -> C, kernel 7)
per output (3 states, 8 states, or both from one model) classifies every residue. Padded
positions are zeroed both at the input and after the feature layer, so a protein gets exactly
the same prediction alone as in a padded batch (the convolutions see zeros past its end either way).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidueCNN(nn.Module):
    def __init__(self, input_dim: int, outputs: dict[str, int], hidden: int = 32, kernel: int = 7,
                 dropout: float = 0.25):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("kernel must be odd so that every residue keeps its position")
        self.features = nn.Conv1d(input_dim, hidden, kernel, padding=kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Conv1d(hidden, n, kernel, padding=kernel // 2)
                                    for name, n in outputs.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, L, D) float, mask (B, L) bool (True = a residue, False = padding) -> {name: (B, L, C)}."""
        keep = mask.unsqueeze(1).to(x.dtype)  # (B, 1, L)
        h = x.transpose(1, 2) * keep  # (B, D, L)
        h = self.dropout(torch.relu(self.features(h))) * keep  # (B, hidden, L)
        return {name: head(h).transpose(1, 2) for name, head in self.heads.items()}  # (B, L, C)
