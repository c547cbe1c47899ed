"""Run an experiment and SIGKILL it at a chosen point; used by the resume-matrix test.

usage: run_and_die.py CONFIG.yaml [--resume] [--kill PHASE@STEP]

``--kill "espn-rewind @ 0.5: search@2"`` kills the process right after optimiser step 2 of
the first training run whose phase label is that one (labels as the progress lines show
them: ``dense``, ``<method> @ <target>: prune | search | regularise | fine-tune``). The
kill is a real SIGKILL: no cleanup, no flush, exactly what a crash or OOM does.
"""
import argparse
import os
import signal

from prunekit.runner import load_config, run_experiment
from prunekit.training import trainer as trainer_mod
from prunekit.training.callbacks import Callback
from prunekit.training.progress import current_phase


class KillAt(Callback):
    def __init__(self, label, step):
        self.label, self.step = label, step

    def after_step(self, trainer):
        # trainer.step counts steps before this one
        if current_phase() == self.label and trainer.step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill")
    a = ap.parse_args()
    if a.kill:
        label, step = a.kill.rsplit("@", 1)
        killer = KillAt(label, int(step))
        orig = trainer_mod.Trainer.__init__

        def init(self, model, data, hp, callbacks=(), *args, **kw):
            orig(self, model, data, hp, list(callbacks) + [killer], *args, **kw)

        trainer_mod.Trainer.__init__ = init
    run_experiment(load_config(a.config), progress=False, resume=a.resume, log=lambda *x: None)


if __name__ == "__main__":
    main()
