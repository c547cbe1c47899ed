"""Hooks pruning methods attach to the training loop.

Order within one iteration: forward -> ``extra_loss`` (added to the task loss) ->
backward -> ``after_backward`` (e.g. add regularisation gradients) -> optimiser step ->
``after_step`` (e.g. re-apply masks, zero pruned filters). ``on_epoch_end`` sees the
epoch's metrics. ``state_dict``/``load_state_dict`` let a callback's own schedule
survive checkpoint/resume.
"""
from __future__ import annotations


class Callback:
    def on_train_start(self, trainer) -> None: ...

    def extra_loss(self, trainer, outputs, targets):
        return None

    def after_backward(self, trainer) -> None: ...

    def after_step(self, trainer) -> None: ...

    def on_epoch_end(self, trainer, metrics: dict) -> None: ...

    def should_stop(self, trainer) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
