"""The linear probe: one affine map from an embedding to each output's classes.

How papers compare protein language models' embeddings (TAPE; ESM's linear projections for
8-state secondary structure; biotrainer's `LogReg`): whatever a head learns beyond a linear map
is the head's, not the embedding's. Trained with the cross-entropy (logistic regression) or, for
a value output, the squared error on z-scored targets (linear regression); fit's --weight-decay
is the L2 penalty. No hidden layer, no convolution, no dropout.

Per residue (`per_residue=True`): x (B, L, D) -> (B, L, C); the logits of residue i are
W @ x[i] + b, its own row only. Per protein: x (B, D) -> (B, C) after the FNN's standardisation
(a per-dimension shift and scale stored with the weights, set by `fit` from the training set).
"""

from __future__ import annotations

import torch
from torch import nn

from protrans_cli.heads.fnn import Standardised


class LinearHead(Standardised):
    def __init__(self, input_dim: int, outputs: dict[str, int], *, per_residue: bool):
        super().__init__()
        self.per_residue = per_residue
        if not per_residue:
            self.register_buffer("shift", torch.zeros(input_dim))
            self.register_buffer("scale", torch.ones(input_dim))
        self.heads = nn.ModuleDict({name: nn.Linear(input_dim, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per residue x (B, L, D), mask (B, L) -> {name: (B, L, C)} (padded rows' logits are
        left out by the loss and the metrics); per protein x (B, D) -> {name: (B, C)}."""
        if not self.per_residue:
            x = (x - self.shift) / self.scale
        return {name: head(x) for name, head in self.heads.items()}

    def standardise_with(self, x: torch.Tensor) -> None:
        if self.per_residue:  # (fit standardises per-protein vectors only, as for the FNN)
            raise ValueError("a per-residue linear head reads its rows as they are")
        super().standardise_with(x)
