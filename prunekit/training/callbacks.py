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


class RecordAt(Callback):
    """Copies the model's weights after ``iteration`` optimiser steps (0: before training):
    the rewind point of lottery-ticket and ESPN-Rewind style methods."""

    def __init__(self, iteration: int):
        self.iteration, self.state = iteration, None

    def _copy(self, trainer) -> None:
        self.state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_train_start(self, trainer) -> None:
        # on resume the checkpoint already restored ``state``; copying now would record
        # the resumed weights instead of the initial ones
        if self.iteration == 0 and trainer.step == 0 and self.state is None:
            self._copy(trainer)

    def after_step(self, trainer) -> None:
        if trainer.step + 1 == self.iteration:  # trainer.step counts steps before this one
            self._copy(trainer)

    # The recorded weights travel in the trainer's checkpoint: a run killed after the
    # rewind iteration must resume with the same rewind point, not train its own.
    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        if state.get("iteration", self.iteration) != self.iteration:
            raise ValueError(f"checkpoint recorded the rewind point at iteration {state['iteration']}, "
                             f"but this run asks for {self.iteration}")
        self.state = state.get("state")
