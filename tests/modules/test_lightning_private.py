"""A tripwire: every private Lightning symbol the library uses (all in ``kd_lightning.modules._lightning``) still
exists with the shape the library relies on. When a Lightning upgrade removes one, this test names it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from helpers import fast_trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

import kd_lightning
from kd_lightning import DigitsDataModule, DigitsMLP
from kd_lightning.modules import Classifier, _lightning

PACKAGE = Path(kd_lightning.__file__).parent


@pytest.mark.parametrize("name", sorted(_lightning.PRIVATE_SYMBOLS))
def test_every_private_lightning_symbol_still_exists(name):
    owner, attribute = _lightning.PRIVATE_SYMBOLS[name]
    assert hasattr(owner, attribute), f"Lightning no longer has {name}: update kd_lightning/modules/_lightning.py"


def test_the_private_trainer_attributes_exist_on_a_running_fit(tmp_path):
    seen = {}

    class Probe(Classifier):
        def training_step(self, batch, batch_idx):
            seen["logs"] = _lightning.loggers_write_this_step(self.trainer)
            seen["loader"] = _lightning.training_dataloader(self.trainer)
            return super().training_step(batch, batch_idx)

    fast_trainer(tmp_path, max_steps=1).fit(Probe(DigitsMLP()), datamodule=DigitsDataModule(batch_size=32))
    assert isinstance(seen["logs"], bool) and seen["loader"] is not None
    writer = _lightning.AppendingCSVWriter(log_dir=str(tmp_path))
    assert isinstance(writer, ExperimentWriter) and hasattr(writer, "_fs") and writer.metrics_file_path
    assert "cls" in inspect.signature(_lightning.load_checkpoint_into).parameters
    assert _lightning.summary_settings(ModelSummary(max_depth=2, header_style="bold")) == (2, {"header_style": "bold"})


def test_no_other_file_of_the_package_touches_private_lightning_api():
    private = re.compile(
        r"(?<![\w.])from lightning[\w.]* import .*\b_[a-z]\w*"  # from lightning... import _private
        r"|(?<![\w.])lightning(\.\w+)*\._[a-z]\w*"  # lightning.x._private
        r"|\._logger_connector|\._data_source|def _parse_ckpt_path"
    )
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_lightning.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not offenders, f"private Lightning API outside modules/_lightning.py: {offenders}"
