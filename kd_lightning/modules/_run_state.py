"""What a checkpoint carries beyond weights so that a resumed run is the run that was interrupted.

Lightning's checkpoint already holds the weights (adapters, EMA/snapshot teachers and PS-KD targets are part of the
module's ``state_dict``), the optimizer and scheduler states, the loop progress, and the ``state_dict()`` of stateful
training loaders (:class:`~kd_lightning.data.ResumableDataLoader`). Two things are missing, and this module adds them:

* **The random number generators** (torch CPU and CUDA, Python's ``random``, NumPy's global state): dropout and
  anything else drawn from them continues from where the interrupted run was. They are stored as tensors and plain
  numbers, so ``torch.load(weights_only=True)`` reads them, and re-applied in ``on_train_start`` of the resumed fit,
  after everything that runs only in a resumed process (setup, the dry run, the sanity check) has drawn what it draws.
* **The loader position the trainer means**: a loader knows how many batches it has yielded, the trainer how many it
  has finished. :func:`capture` rewrites the saved position of a ``ResumableDataLoader`` to the batches the resumed
  fit will skip (Lightning's rule: the batches completed, plus the current one when saved in ``on_train_batch_end``),
  and a finished epoch (saved at the epoch's end, e.g. by ``ModelCheckpoint`` after validation) to the start of the
  next one, which also covers ``limit_train_batches``.

Under DDP the checkpoint holds the RNG states of process 0, re-applied on every process.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from kd_lightning.data.resumable import STATE_FORMAT


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and numbers: ``{"torch", "python", "numpy"[, "cuda"]}``."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Re-apply :func:`rng_states`; the CUDA states only when the same number of devices is visible."""
    torch.set_rng_state(states["torch"].cpu())
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def batches_done(trainer: L.Trainer) -> int:
    """Batches of the current epoch that a fit resumed from a checkpoint saved now will not run again.

    Mirrors Lightning's restart: saved in ``on_train_batch_end`` (the batch processed, not yet completed) the current
    batch counts; saved anywhere else, the completed ones.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    in_batch_end = progress.ready == progress.started == progress.processed == progress.completed + 1
    return progress.processed if in_batch_end else progress.completed


def correct_loader_positions(trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
    """Set the saved position of a single ``ResumableDataLoader`` to the batches the trainer has finished.

    With several training loaders (a ``CombinedLoader``) each one's own count is kept.
    """
    fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    states = fit_state.get("combined_loader") or []
    if len(states) != 1 or states[0].get("format") != STATE_FORMAT or trainer.state.fn != TrainerFn.FITTING:
        return
    done = batches_done(trainer)
    state = dict(states[0], batches=done)
    if done >= trainer.num_training_batches:
        state.update(epoch=state["epoch"] + 1, batches=0)
    states[0] = state


def capture(trainer: L.Trainer, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """State to store under ``checkpoint["kd_lightning"]["run_state"]`` when a checkpoint is saved.

    Also corrects the training loader's position in ``checkpoint["loops"]`` (see :func:`correct_loader_positions`).
    """
    correct_loader_positions(trainer, checkpoint)
    return {"rng": rng_states()}


def restore(trainer: L.Trainer, state: dict[str, Any]) -> None:
    """Re-apply ``capture``'s state; called from ``on_train_start`` of a resumed fit.

    Only a fit resumed with ``ckpt_path`` is affected: a module merely loaded from a checkpoint and then trained keeps
    the RNG of its own run.
    """
    if trainer.ckpt_path is None or "rng" not in state:
        return
    set_rng_states(state["rng"])
