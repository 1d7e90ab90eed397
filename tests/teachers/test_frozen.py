"""FrozenTeacher: the rule that refuses untrained teachers, attributed non-finite outputs, input statistics."""

from __future__ import annotations

import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from safetensors.torch import load_file, save_file

from kd_lightning import Batch, DigitsCNN, DigitsDataModule, DigitsMLP, FrozenTeacher, OfflineDistillation
from kd_lightning.core.networks import mark_pretrained
from kd_lightning.teachers.frozen import chance_threshold


def digits_batch(labelled: bool = True, size: int = 64) -> Batch:
    data = DigitsDataModule(batch_size=size)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    return Batch(x, y if labelled else None)


def frozen(network=None, **kwargs) -> FrozenTeacher:
    teacher = FrozenTeacher(network if network is not None else DigitsCNN(width=32), **kwargs)
    teacher.bind(DigitsMLP(), ["logits"], 10)
    return teacher


def trained_in_python() -> DigitsCNN:
    """The shipped teacher's weights put in with ``load_state_dict`` (no file the library knows of)."""
    network = DigitsCNN(width=32)
    network.load_state_dict(load_file(TEACHER_WEIGHTS))
    return network


def test_a_weights_file_or_a_pretrained_builder_shows_the_teacher_is_trained():
    frozen(weights=TEACHER_WEIGHTS).check(None, digits_batch(labelled=False))
    frozen(mark_pretrained(DigitsCNN(width=32), "a folder of pretrained weights")).check(None, digits_batch())


def test_without_a_file_the_first_batch_decides_against_chance():
    frozen(trained_in_python()).check(None, digits_batch())  # 95%+ on digits
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"looks untrained: its accuracy on the first training batch is .* at chance"):
        frozen(DigitsCNN(width=32)).check(None, digits_batch())


def test_without_a_file_and_without_labels_nothing_shows_it_is_trained():
    with pytest.raises(ValueError, match=r"nothing shows the teacher DigitsCNN .* is trained.*allow_untrained_teacher"):
        frozen(trained_in_python()).check(None, digits_batch(labelled=False))
    frozen(DigitsCNN(width=32), allow_untrained=True).check(None, digits_batch(labelled=False))


def test_the_chance_threshold_is_three_standard_deviations_above_chance():
    assert chance_threshold(10, 64) == pytest.approx(0.1 + 3 * (0.1 * 0.9 / 64) ** 0.5)
    assert chance_threshold(10, 64) < 0.25  # a trained digits teacher (95%) is far above it


def test_an_untrained_teacher_stops_the_fit_before_the_first_step(tmp_path):
    torch.manual_seed(0)
    module = OfflineDistillation(DigitsMLP(), DigitsCNN(width=32))
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="looks untrained"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert trainer.global_step == 0


def test_a_teacher_whose_weights_hold_nan_is_named_with_its_file(tmp_path):
    weights = load_file(TEACHER_WEIGHTS)
    weights["head.1.weight"][0, 0] = float("nan")
    broken = tmp_path / "broken_teacher.safetensors"
    save_file(weights, str(broken))
    module = OfflineDistillation(DigitsMLP(), DigitsCNN(width=32), teacher_weights=broken, on_nonfinite="skip")
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"broken_teacher\.safetensors.*NaN/inf outputs.*'head\.1\.weight'.*re-export"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    assert trainer.global_step == 0


def test_statistics_on_two_pixel_scales_are_refused():
    with pytest.raises(ValueError, match=r"different pixel scales.*0-255 pixel values beside 0-1 ones"):
        FrozenTeacher(
            DigitsCNN(width=32),
            normalization={"mean": [0.485], "std": [0.229]},
            student_normalization={"mean": [123.7], "std": [58.4]},
        )


def test_the_frozen_network_never_trains_and_has_no_gradients():
    teacher = frozen(weights=TEACHER_WEIGHTS)
    teacher.train()
    assert not any(module.training for module in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher(torch.randn(2, 1, 8, 8)).shape == (2, 10)
