"""Train: next-token pretraining of the generator, checkpoints and resume."""

from onerec.train.loop import TrainResult, train_generator

__all__ = ["TrainResult", "train_generator"]
