"""Pretraining: config, corpus stream, objectives, optimizers, distributed setup, checkpoints, loop.

    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train
"""
