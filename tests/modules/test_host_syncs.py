"""A steady-state training step reads no tensor value on the host (no GPU pipeline stall), in every listed mode.

Counted on the CPU with :class:`host_reads.HostReads` over four steps away from any logging step (the loggers read
values every ``log_every_n_steps``, at an epoch's first and last batch and at the fit's last step; those reads are
allowed), with SGD (no step counters: torch keeps Adam's on the host on purpose). Modes: offline KD, cached KD, FitNets
(a lazy adapter), EMA, DML (each with ``on_nonfinite`` skip and stop), and token KD between two GPT-2 networks on
blocks of one length; on padded token batches only the Hugging Face model's own mask check reads (named below).
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from host_reads import CountSteadySteps

from kd_lightning import (
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillTerm,
    EMATeacher,
    OfflineDistillation,
    OnlineDistillation,
    TeacherCache,
    TemporalSelfDistillation,
)
from kd_lightning.losses import FitNetsLoss

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


def offline(tmp_path, **kwargs):
    return OfflineDistillation(
        DigitsMLP(), DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, optimizer=SGD, **kwargs
    )


MODES = {
    "offline KD": lambda tmp: offline(tmp),
    "cached KD": lambda tmp: offline(tmp, teacher_cache=TeacherCache(tmp / "cache")),
    "FitNets (a lazy adapter)": lambda tmp: OfflineDistillation(
        DigitsCNN(width=8),
        DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        terms=[DistillTerm(FitNetsLoss(), weight=100.0, student="layer2")],
        optimizer=SGD,
    ),
    "EMA": lambda tmp: TemporalSelfDistillation(DigitsMLP(), EMATeacher(0.99), optimizer=SGD),
    "DML": lambda tmp: OnlineDistillation(
        {"a": DigitsMLP(), "b": DigitsMLP()}, student="a", mutual=True, optimizer=SGD
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_a_steady_training_step_reads_no_tensor_on_the_host(mode, on_nonfinite, tmp_path, one_torch_thread):
    module = MODES[mode](tmp_path)
    module.on_nonfinite = on_nonfinite
    counter = CountSteadySteps(first=3, last=6)
    trainer = fast_trainer(tmp_path, max_steps=9, limit_train_batches=20, limit_val_batches=0, callbacks=[counter])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert counter.steps == 4
    assert counter.reads.count == 0, dict(counter.reads.sites)


def test_the_count_sees_a_host_read_in_a_step(tmp_path, one_torch_thread):
    class Reading(OfflineDistillation):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.last = float(loss)  # one host read per step
            return loss

    module = Reading(DigitsMLP(), DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, optimizer=SGD)
    counter = CountSteadySteps(first=3, last=6)
    trainer = fast_trainer(tmp_path, max_steps=9, limit_train_batches=20, limit_val_batches=0, callbacks=[counter])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert counter.reads.count == 4 and all("__float__" in site for site in counter.reads.sites)


class TokenBlocks(torch.utils.data.Dataset):
    """Token sequences for a causal LM: blocks of one length (``packing``, as ``TextDataModule`` cuts them), or of
    several lengths (padded per batch)."""

    def __init__(self, padded: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        lengths = [12, 7, 10, 5] * 8 if padded else [12] * 32
        self.items = [torch.randint(5, 50, (length,), generator=generator) for length in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.items[index], "labels": self.items[index].clone()}


def token_kd_reads(tmp_path, padded: bool) -> CountSteadySteps:
    pytest.importorskip("transformers")
    from kd_lightning.data.text import TokenCollator
    from kd_lightning.losses import ForwardKLLoss
    from kd_lightning.models.text import model_from_config

    def gpt2(width: int, seed: int) -> torch.nn.Module:
        config = {"vocab_size": 50, "num_heads": 2, "max_positions": 32, "dropout": 0.0}
        return model_from_config("gpt2", "causal_lm", hidden_size=width, num_layers=2, seed=seed, **config)

    module = OfflineDistillation(
        gpt2(16, 1),
        gpt2(24, 0),
        terms=[DistillTerm(ForwardKLLoss(temperature=2.0))],
        ce_weight=1.0,
        num_classes=50,
        optimizer=SGD,
        allow_untrained_teacher=True,  # tiny random models
    )
    loader = torch.utils.data.DataLoader(TokenBlocks(padded), batch_size=2, collate_fn=TokenCollator(0))
    counter = CountSteadySteps(first=3, last=6)
    trainer = fast_trainer(tmp_path, max_steps=9, limit_train_batches=20, limit_val_batches=0, callbacks=[counter])
    trainer.fit(module, train_dataloaders=loader)
    assert counter.steps == 4
    return counter


def test_token_kd_on_blocks_of_one_length_reads_no_tensor_on_the_host(tmp_path, one_torch_thread):
    counter = token_kd_reads(tmp_path, padded=False)
    assert counter.reads.count == 0, dict(counter.reads.sites)


def test_padded_token_batches_leave_only_the_models_own_mask_check(tmp_path, one_torch_thread):
    """With padding, a Hugging Face model reads on the host whether its attention mask is all ones (to use SDPA's
    causal kernel without a mask): that read, in each model's forward, is all that remains."""
    counter = token_kd_reads(tmp_path, padded=True)
    assert counter.reads.count > 0
    assert all("'transformers', 'masking_utils.py'" in site for site in counter.reads.sites), dict(counter.reads.sites)
