"""TeacherEnsemble: several frozen teachers as one source, with no change to any module."""

from __future__ import annotations

import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import (
    Batch,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillTerm,
    FrozenTeacher,
    OfflineDistillation,
    TeacherEnsemble,
)
from kd_lightning.files import read_checkpoint
from kd_lightning.losses import FitNetsLoss, KDLoss


def ensemble(**kwargs) -> TeacherEnsemble:
    members = {"big": FrozenTeacher(DigitsCNN(width=32), weights=TEACHER_WEIGHTS), "small": DigitsCNN(width=8)}
    return TeacherEnsemble(members, allow_untrained=True, **kwargs)


def test_the_combined_logits_are_the_mean_logits_or_the_log_mean_probabilities():
    x = torch.randn(4, 1, 8, 8)
    for average in ("logits", "probabilities"):
        source = ensemble(average=average, mixing=[3.0, 1.0])
        source.bind(DigitsMLP(), ["logits", "small:logits"], 10)
        outputs = source.outputs(Batch(x))
        big, small = outputs["big:logits"], outputs["small:logits"]
        if average == "logits":
            expected = 0.75 * big + 0.25 * small
        else:
            expected = (0.75 * big.softmax(-1) + 0.25 * small.softmax(-1)).log()
        assert torch.allclose(outputs["logits"], expected, atol=1e-5)


def test_a_term_reads_one_teacher_by_name_and_a_feature_needs_its_teacher():
    source = ensemble()
    source.bind(DigitsCNN(width=4), ["logits", "small:layer2"], 10)
    outputs = source.outputs(Batch(torch.randn(2, 1, 8, 8)))
    assert outputs["small:layer2"].shape[0] == 2 and "big:layer2" not in outputs
    with pytest.raises(ValueError, match=r"'layer2' but an ensemble's outputs are 'logits'.*e\.g\. 'big:layer2'"):
        ensemble().bind(DigitsCNN(width=4), ["logits", "layer2"], 10)


def test_an_offline_module_distils_from_the_ensemble_unchanged(tmp_path):
    terms = [
        DistillTerm(KDLoss(temperature=4.0), weight=0.9),
        DistillTerm(FitNetsLoss(), weight=1.0, student="layer2", teacher="big:layer2", name="hint_big"),
    ]
    module = OfflineDistillation(DigitsCNN(width=4), ensemble(), terms=terms, ce_weight=0.1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 2
    saved = read_checkpoint(checkpoint.last_model_path)["state_dict"]
    assert not any(key.startswith("teacher.") for key in saved), "every teacher stays out of checkpoints"
    rows = module.deployables()
    assert [(row.name, row.role) for row in rows] == [("big", "teacher"), ("small", "teacher"), ("student", "student")]
    results = trainer.test(module, datamodule=DigitsDataModule(batch_size=64), verbose=False)[0]
    assert results["test/teacher_acc_big"] > 0.8 and 0.0 <= results["test/teacher_acc_small"] <= 1.0


def test_settings_of_a_source_are_not_given_twice():
    with pytest.raises(ValueError, match=r"teacher is a TeacherEnsemble .* but \['teacher_weights'\] are given too"):
        OfflineDistillation(DigitsMLP(), ensemble(), teacher_weights=TEACHER_WEIGHTS)
    with pytest.raises(ValueError, match="at least two teachers"):
        TeacherEnsemble([DigitsCNN(width=8)])
