"""Prediction heads on frozen embeddings: label readers, tasks, the ProtTrans CNN/FNN, streamed
data, metrics, `fit` and `predict` (the `protrans fit` / `predict` / `labels` commands).

    from protrans_cli.heads.fit import FitConfig, fit
    from protrans_cli.heads.predict import predict, evaluate_head
"""
