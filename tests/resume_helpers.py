"""Exact-resume test helpers, importable by ``kd-lightning`` subprocesses (``PYTHONPATH=tests``).

* :class:`CheckpointThenKill`, a checkpoint callback: saves every few training steps (mid-epoch), optionally kills
  its own process with SIGKILL right after one of those checkpoints is on disk (no clean-up, no atexit: a crash), and
  saves ``final.ckpt`` when training ends.
* ``python tests/resume_helpers.py KILL_AT_STEP FIT_ARGS...``: in one process, ``kd-lightning fit FIT_ARGS`` runs
  uninterrupted (checkpoints in ``full/``), then the same fit again (``killed/``) is killed after step ``KILL_AT_STEP``;
  one interpreter start serves both runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class CheckpointThenKill(ModelCheckpoint):
    """``ModelCheckpoint(every_n_train_steps=...)`` that SIGKILLs the process after the checkpoint of ``kill_at_step``.

    Being a ``ModelCheckpoint``, Lightning runs it with the other checkpoint callbacks, after every other callback's
    ``on_train_batch_end``; the kill follows its own save.

    Args:
        dirpath: where ``step=<n>.ckpt`` and ``final.ckpt`` are written.
        every_n_train_steps: save period in optimizer steps.
        kill_at_step: the step whose checkpoint is the last thing this process does; ``None``: run to the end.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 3, kill_at_step: int | None = None) -> None:
        super().__init__(
            dirpath=dirpath, filename="{step}", every_n_train_steps=every_n_train_steps, save_top_k=-1, save_last=False
        )
        self.kill_at_step = kill_at_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.kill_at_step is not None and trainer.global_step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(Path(self.dirpath) / "final.ckpt")

    def state_dict(self) -> dict[str, Any]:
        """Nothing to restore: the resumed run gets its own ``dirpath`` and ``kill_at_step`` from the command line."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep this process's settings (see :meth:`state_dict`)."""


def checkpoint_callback(dirpath: str, kill_at_step: int | None = None) -> str:
    """The ``--trainer.callbacks+=`` argument that appends a :class:`CheckpointThenKill` (every 3 steps)."""
    init_args = {"dirpath": dirpath, "every_n_train_steps": 3, "kill_at_step": kill_at_step}
    callback = {"class_path": "resume_helpers.CheckpointThenKill", "init_args": init_args}  # not __main__'s class
    return f"--trainer.callbacks+={json.dumps(callback)}"


def fit_then_fit_killed(kill_at_step: int, fit_args: list[str]) -> None:
    """``kd-lightning fit`` uninterrupted into ``full/``, then the same fit into ``killed/``, SIGKILLed mid-way."""
    from kd_lightning.cli import main

    main(["fit", *fit_args, checkpoint_callback("full")])
    main(["fit", *fit_args, checkpoint_callback("killed", kill_at_step)])
    raise SystemExit(f"the second fit should have been killed after step {kill_at_step}")


if __name__ == "__main__":
    fit_then_fit_killed(int(sys.argv[1]), sys.argv[2:])
