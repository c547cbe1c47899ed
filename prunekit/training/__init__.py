"""Training: ``train(model, data, TrainHparams(...), callbacks=[...])`` and ``evaluate``."""
from .callbacks import Callback
from .hparams import TrainHparams
from .trainer import TrainResult, evaluate, train

__all__ = ["Callback", "TrainHparams", "TrainResult", "evaluate", "train"]
