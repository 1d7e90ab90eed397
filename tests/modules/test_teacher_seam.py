"""The teacher seam: every mode with a teacher source gets its signal through ``compute_losses`` ->
``teacher_outputs``, so a research subclass that overrides ``teacher_outputs`` changes the targets in every such mode;
students train in train mode whatever mode their builder returned them in; teachers stay in eval mode."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer

from kd_lightning import (
    Batch,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillTerm,
    EMATeacher,
    OfflineDistillation,
    PSKDTeacher,
    SnapshotTeacher,
    TeacherEnsemble,
    TemporalSelfDistillation,
)
from kd_lightning.losses import KDLoss

SOURCES = {
    "frozen": lambda: OfflineDistillation,
    "ensemble": lambda: OfflineDistillation,
    "ema": lambda: TemporalSelfDistillation,
    "snapshot": lambda: TemporalSelfDistillation,
    "pskd": lambda: TemporalSelfDistillation,
}


def build(kind: str, cls: type) -> L.LightningModule:
    terms = [DistillTerm(KDLoss(temperature=1.0))]
    student = DigitsMLP(hidden=(16,))
    if kind == "frozen":
        return cls(student, DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, terms=terms)
    if kind == "ensemble":
        networks = [DigitsCNN(width=32), DigitsCNN(width=8)]
        pair = TeacherEnsemble(networks, weights=[TEACHER_WEIGHTS, None], allow_untrained=True)
        return cls(student, pair, terms=terms)
    teacher = {"ema": EMATeacher(0.9), "snapshot": SnapshotTeacher(1), "pskd": PSKDTeacher(epochs=10)}[kind]
    if kind == "snapshot":
        teacher.generation = 1  # teaching from the start
    return cls(student, teacher, terms=terms)


@pytest.mark.parametrize("kind", SOURCES)
def test_overriding_teacher_outputs_changes_the_targets_in_every_mode_with_a_source(kind):
    base = SOURCES[kind]()

    class UniformTeacher(base):
        """A research subclass: the teacher's targets replaced by uniform logits."""

        def teacher_outputs(self, batch):
            outputs = dict(super().teacher_outputs(batch))
            outputs["logits"] = torch.zeros_like(outputs["logits"])
            return outputs

    x, y, index = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)), torch.arange(8)
    plain, uniform = build(kind, base), build(kind, UniformTeacher)
    uniform.load_state_dict(plain.state_dict())
    batch = Batch(x, y, index)
    scale = uniform.teacher.loss_scales(0, None)[1]  # PS-KD weighs the terms by a_t; the others by 1
    expected = scale * KDLoss(temperature=1.0)(plain.student_outputs(batch)["logits"], torch.zeros(8, 10))
    got = uniform.compute_losses(batch)["kd"]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(plain.compute_losses(batch)["kd"], got)


class ModeProbe(L.Callback):
    """The student's and the teacher's training flags at every training step."""

    def __init__(self) -> None:
        self.student: list[bool] = []
        self.teacher: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.student += [m.training for m in pl_module.student.modules()]
        self.teacher += [m.training for m in pl_module.teacher.modules()]


def test_a_student_built_in_eval_mode_trains_in_train_mode(tmp_path):
    student = DigitsMLP(hidden=(16,)).eval()  # as from_pretrained returns a model
    module = OfflineDistillation(student, DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS)
    probe = ModeProbe()
    fast_trainer(tmp_path, max_steps=2, callbacks=[probe]).fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert probe.student and all(probe.student), "the student trained in eval mode (dropout off)"
    assert probe.teacher and not any(probe.teacher)
