"""Which training losses are logged on which step, and the one Lightning warning a frozen teacher silences.

Lightning hands per-step values to the loggers only every ``log_every_n_steps`` steps, and one ``self.log`` costs
about 0.4 ms on CPU (a third of a small model's step). So every loss component ``train/<name>`` is logged on those
steps, on the first and last batch of every epoch and on the fit's last step (what the loggers write is unchanged);
``train/loss`` is logged every step while a progress bar shows it, and so is any key a callback monitors
(``ModelCheckpoint(monitor=...)``, ``EarlyStopping``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities.warnings import PossibleUserWarning

from kd_lightning.modules import _lightning


def keys_logged_every_step(module: Any) -> set[str] | None:
    """Keys read every step (the progress bar's loss, monitored keys); ``None``: log every key every step (outside
    a fit, or a ``fast_dev_run``)."""
    trainer = module._trainer
    if trainer is None or trainer.fast_dev_run:
        return None
    monitored = (getattr(callback, "monitor", None) for callback in trainer.callbacks)
    keys = {monitor for monitor in monitored if isinstance(monitor, str)}
    if trainer.progress_bar_callback is not None:
        keys.add("train/loss")
    return keys


def is_logged_step(trainer: Any, batch_idx: int) -> bool:
    """Whether the loggers write this step's values (or the step opens or closes an epoch or the fit)."""
    last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step + 1
    return (
        batch_idx == 0
        or last_step
        or _lightning.loggers_write_this_step(trainer)
        or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    )


def keys_to_log(module: Any, values: Mapping[str, Any], batch_idx: int) -> tuple[list[str], bool, bool]:
    """The keys of ``values`` to log on this step, whether ``train/loss`` goes to the progress bar, and whether this
    is a logging step (the loggers write it: values are read on the host anyway)."""
    every_step = getattr(module, "_every_step_keys", None)
    if every_step is None:  # outside a fit's training loop (or fast_dev_run: everything, every step)
        every_step = keys_logged_every_step(module)
    logged_step = module._trainer is not None and is_logged_step(module.trainer, batch_idx)
    all_keys = every_step is None or logged_step
    shown = every_step is None or "train/loss" in every_step
    return [key for key in values if all_keys or key in every_step], shown, logged_step


EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
"""Lightning's warning (``fit_loop.on_run_start``) about modules in eval mode: a frozen teacher is, on purpose."""


HOOK_WARNING = r"You have overridden `on_before_batch_transfer` in (both )?`LightningModule`"
"""Lightning's warning (``_DataHookSelector``) when a module beside a datamodule defines ``on_before_batch_transfer``:
the distillation modules define it for the teacher source's host-side work, whichever hook Lightning then calls."""


LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
"""torch's deprecation (a ``FutureWarning``) raised by Lightning's own training loop (its ``_pytree`` helpers): nothing
in the user's code or config causes or can change it."""


def silence_eval_mode_warning() -> tuple:
    """Ignore :data:`EVAL_MODE_WARNING` until :func:`restore_warnings` removes this one filter (not the caller's)."""
    return silence(EVAL_MODE_WARNING, PossibleUserWarning)


def silence(message: str, category: type[Warning] = UserWarning) -> tuple:
    """Ignore warnings matching ``message`` until :func:`restore_warnings` removes this one filter."""
    warnings.filterwarnings("ignore", message=message, category=category)
    return warnings.filters[0]


def restore_warnings(entry: tuple | None) -> None:
    """Remove a filter :func:`silence` added (if it is still there); other filters are kept."""
    if entry is not None and entry in warnings.filters:
        warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # what filterwarnings calls: forget cached decisions
        if callable(mutated):
            mutated()
