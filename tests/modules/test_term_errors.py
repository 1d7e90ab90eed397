"""Bad distillation terms fail with a clear error at construction or setup, before any training step."""

import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from torch import nn

from kd_lightning import DigitsCNN, DigitsDataModule, DistillTerm, OfflineDistillation, TinyCNN
from kd_lightning.losses import ATLoss, FSPLoss, KDLoss, SPLoss


def offline(terms, teacher: nn.Module | None = None) -> OfflineDistillation:
    teacher_weights = TEACHER_WEIGHTS if teacher is None else None
    return OfflineDistillation(
        student=TinyCNN(width=4), teacher=teacher or DigitsCNN(width=32), teacher_weights=teacher_weights, terms=terms
    )


@pytest.mark.parametrize(
    ("student", "teacher", "wrong", "right"),
    [("layr1", "layer2", "'layr1'", "'layer1'"), ("layer1", "layer_2", "'layer_2'", "'layer2'")],
)
def test_an_unknown_layer_name_lists_the_nearest_valid_names(student, teacher, wrong, right):
    with pytest.raises(ValueError, match=f"no submodule named {wrong}; nearest valid names: .*{right}"):
        offline([DistillTerm(ATLoss(), student=student, teacher=teacher)])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DistillTerm(FSPLoss(adapter=True), student="layer1", teacher="layer2"), "relates 2 layers"),
        (lambda: DistillTerm(ATLoss(), weight=-1000, student="layer1", teacher="layer2"), "weight >= 0"),
        (lambda: DistillTerm(KDLoss(temperature=0.0)), "temperature > 0"),
        (lambda: DistillTerm(KDLoss(temperature=-4.0)), "temperature > 0"),
    ],
)
def test_bad_terms_fail_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


class SubsamplingTeacher(DigitsCNN):
    """A teacher with a side branch that sees only half of the batch (as a detector's sampled regions would)."""

    def __init__(self) -> None:
        super().__init__(width=8)
        self.side = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layer2(self.layer1(self.stem(x)))
        self.side(features[: len(features) // 2])
        return self.head(self.pool(self.layer3(features)))


def test_features_with_different_batch_sizes_fail_at_setup_naming_the_term(tmp_path):
    module = offline([DistillTerm(SPLoss(), weight=3000, student="layer1", teacher="side")], SubsamplingTeacher())
    before = {key: value.clone() for key, value in module.student.state_dict().items()}
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="term 'sp' \\(SPLoss on student layer1 vs teacher side\\): .*batch sizes"):
        trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.global_step == 0
    assert all(torch.equal(before[key], value) for key, value in module.student.state_dict().items())


def test_a_shape_mismatch_without_adapter_names_the_adapter_at_setup(tmp_path):
    module = offline([DistillTerm(FSPLoss(), student=["stem", "layer1"], teacher=["layer1", "layer2"])])
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="term 'fsp' .*pass adapter=True to FSPLoss"):
        trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.global_step == 0
