"""Pretraining: config, corpus stream, objectives, optimizers, distributed setup, checkpoints,
recomputation, metrics, the loop and the learning-rate range test.

    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train
"""
