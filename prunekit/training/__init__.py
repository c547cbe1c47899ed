"""Training: ``train(model, data, TrainHparams(...), callbacks=[...])`` and ``evaluate``."""
from .callbacks import Callback, RecordAt
from .hparams import TrainHparams
from .trainer import TrainResult, evaluate, train

__all__ = ["Callback", "RecordAt", "TrainHparams", "TrainResult", "evaluate", "train"]
