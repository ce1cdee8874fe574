"""Light Attention: a per-protein head that reads per-residue embeddings and pools them itself.

Stärk, Dallago, Heinzinger and Rost (2021), "Light attention predicts protein location from the
language of life", Bioinformatics Advances 1(1), vbab035. Written here from the paper's
description:

    features  = Dropout(Conv1d(D -> D, kernel 9)(x))         per residue
    attention = Conv1d(D -> D, kernel 9)(x), -inf at padding  per residue
    o1 = sum over residues of softmax_L(attention) * features  (attention pooling, per channel)
    o2 = max over residues of features                          (max pooling)
    Linear(2D -> 32) -> Dropout -> ReLU -> BatchNorm1d(32) -> Linear(32 -> C) per output

Where the mean over the residues (the FNN's input) loses which residue sat where, the attention
weights can pick out a signal peptide or a motif. Padded positions are zeroed at the input and
masked out of both poolings, so in eval mode a protein gets the same prediction alone as in a
padded batch. Its cost is the two D x D x 9 convolutions over every residue: with ProtT5's 1024-d
embeddings about 19 M weights and as many multiply-adds per residue, against the FNN's 33 k
weights on one vector per protein.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LightAttention(nn.Module):
    def __init__(self, input_dim: int, outputs: dict[str, int], hidden: int = 32, kernel: int = 9,
                 dropout: float = 0.25):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("kernel must be odd so that every residue keeps its position")
        self.features = nn.Conv1d(input_dim, input_dim, kernel, padding=kernel // 2)
        self.attention = nn.Conv1d(input_dim, input_dim, kernel, padding=kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * input_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, L, D) float, mask (B, L) bool (True = a residue, False = padding) -> {name: (B, C)}.
        Every protein needs one residue at least (an empty one has nothing to pool)."""
        keep = mask.unsqueeze(1)  # (B, 1, L)
        h = x.transpose(1, 2) * keep.to(x.dtype)  # (B, D, L)
        features = self.dropout(self.features(h))  # (B, D, L)
        logits = self.attention(h).masked_fill(~keep, float("-inf"))  # (B, D, L)
        pooled = (torch.softmax(logits, dim=-1) * features).sum(dim=-1)  # (B, D): exp(-inf) = 0 at padding
        peak = features.masked_fill(~keep, float("-inf")).amax(dim=-1)  # (B, D)
        z = torch.relu(self.dropout(self.linear(torch.cat([pooled, peak], dim=-1))))  # (B, hidden)
        if self.training and z.shape[0] == 1:
            # BatchNorm cannot take statistics of one protein (a batch of one long protein under
            # --max-residues, or the last of a shuffled plan): normalised with the running ones
            z = F.batch_norm(z, self.norm.running_mean, self.norm.running_var, self.norm.weight, self.norm.bias,
                             training=False, eps=self.norm.eps)
        else:
            z = self.norm(z)
        return {name: head(z) for name, head in self.heads.items()}
