"""Contrastive training of the dual encoder from a study manifest."""

from cxrtool.train.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
