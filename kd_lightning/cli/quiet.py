"""Lines of a ``kd-lightning`` run that the user cannot act on, removed at their source.

* Lightning's tips for its hosted products (``💡 Tip: For seamless cloud logging ...``), logged while the Trainer is
  built: dropped by a logging filter on Lightning's ``rank_zero`` logger for that moment only (:func:`lightning_tips`).
* The model summary's FLOPs column of zeros: Lightning's default summary is replaced by
  :class:`~kd_lightning.callbacks.CompactModelSummary` (:func:`compact_summary`).

The logging interval warning is answered by the recipes (``trainer.log_every_n_steps`` fits their epochs), and
torch's ``LeafSpec`` deprecation, raised inside Lightning's training loop, by the modules (they ignore it during a
fit: :data:`kd_lightning.modules._logging.LEAFSPEC_WARNING`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

from kd_lightning.callbacks import CompactModelSummary
from kd_lightning.modules._lightning import summary_settings

TIP_PREFIX = "💡 Tip:"
"""How Lightning's product tips begin (``rank_zero_info`` in its logger and callback connectors)."""
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIP_PREFIX)


@contextlib.contextmanager
def lightning_tips() -> Iterator[None]:
    """Drop Lightning's product tips logged inside the block."""
    loggers, tips = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS], _DropTips()
    for logger in loggers:
        logger.addFilter(tips)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(tips)


def compact_summary(trainer: Any, chosen: Any = None) -> None:
    """Replace Lightning's default model summary callback (plain or rich) by :class:`CompactModelSummary` with the
    same settings; a summary the config chose itself (among ``chosen``, the config's callbacks) is kept."""
    kept = {id(callback) for callback in (chosen if isinstance(chosen, (list, tuple)) else [chosen])}
    for position, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary) and id(callback) not in kept:
            max_depth, options = summary_settings(callback)
            rich = type(callback) is RichModelSummary
            trainer.callbacks[position] = CompactModelSummary(max_depth, rich=rich, **options)
