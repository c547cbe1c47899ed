from __future__ import annotations

from dataclasses import dataclass

from ..foundations.hparams import hp


@dataclass
class TrainHparams:
    epochs: int = hp(20, "Training epochs.")
    batch_size: int = hp(128, "Global batch size (split across processes under torchrun).")
    optimizer: str = hp("sgd", "sgd or adam.", choices=("sgd", "adam"))
    lr: float = hp(0.05, "Initial learning rate.")
    momentum: float = hp(0.9, "SGD momentum (Adam: beta1).")
    nesterov: bool = hp(False, "Nesterov momentum (SGD).")
    weight_decay: float = hp(5e-4, "L2 weight decay.")
    schedule: str = hp("multistep", "multistep, cosine or constant.", choices=("multistep", "cosine", "constant"))
    milestones: list = hp([], "Multistep epochs at which LR is multiplied by gamma (default: 50% and 75%).")
    gamma: float = hp(0.1, "Multistep decay factor.")
    warmup_epochs: float = hp(0.0, "Linear warm-up length in epochs.")
    seed: int = hp(0, "Seed for data order, augmentation and dropout.")
    deterministic: bool = hp(False, "torch.use_deterministic_algorithms(True).")

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise ValueError(f"schedule must be multistep, cosine or constant, got {self.schedule!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr >= 0 (got {self.epochs}, {self.batch_size}, {self.lr})")
