"""The training loop, in named phases: ``train(cfg, callbacks) -> TrainResult``."""
from .train import Callbacks, TrainResult, train

__all__ = ["Callbacks", "TrainResult", "train"]
