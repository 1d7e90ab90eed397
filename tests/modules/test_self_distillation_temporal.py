"""Temporal self-distillation (EMA, snapshot, PS-KD teachers), checked with real Trainer runs on digits."""

import copy
import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import DigitsCNN, DigitsDataModule, DigitsMLP, DistillTerm
from kd_lightning.losses import KDLoss
from kd_lightning.losses.feature import ATLoss
from kd_lightning.modules.self_distillation import SelfDistillation
from kd_lightning.teachers.temporal import EMATeacher, PSKDTeacher, SnapshotTeacher

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)


class OrderedDigits(DigitsDataModule):
    """Digits without shuffling or augmentation: every epoch sees the same batches (runs comparable bit for bit)."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=False)


def clone_state(module: torch.nn.Module) -> dict:
    """The state dict, copied (extra state, such as a snapshot's generation or PS-KD's predictions, included)."""
    return copy.deepcopy(module.state_dict())


def states_equal(a, b) -> bool:
    """Bit-for-bit equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    return a == b


def make_module(teacher, student=None, **kwargs) -> SelfDistillation:
    torch.manual_seed(0)
    return SelfDistillation(
        student=student or DigitsCNN(width=4, dropout=0.0), teacher=teacher, optimizer=SGD, **kwargs
    )


class StepRecorder(L.Callback):
    """The student's state after every optimizer step (not after accumulation-only batches)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > len(self.states):
            self.states.append(clone_state(pl_module.student))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_teacher_equals_the_hand_computed_average(tmp_path, accumulate):
    decay = 0.8
    module = make_module(EMATeacher(decay=decay))
    average = clone_state(module.student)
    recorder = StepRecorder()
    trainer = fast_trainer(tmp_path, limit_train_batches=6, accumulate_grad_batches=accumulate, callbacks=[recorder])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == len(recorder.states) == 6 // accumulate
    for state in recorder.states:
        for key, value in state.items():
            average[key] = decay * average[key] + (1 - decay) * value if value.is_floating_point() else value
    teacher = clone_state(module.teacher.network)
    assert any("running_mean" in key for key in teacher)
    for key, expected in average.items():
        torch.testing.assert_close(teacher[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(teacher["head.1.weight"], module.student.head[1].weight)


def test_teacher_copy_is_frozen_hookless_and_outside_the_optimizer(tmp_path):
    student = DigitsCNN(width=4)
    module = SelfDistillation(student, teacher=EMATeacher(0.9), terms=[DistillTerm(ATLoss(), student="layer1")])
    network = module.teacher.network
    assert network is not student and not any(p.requires_grad for p in network.parameters())
    assert student.layer1._forward_hooks, "the student's tap is in place"
    assert not any(m._forward_hooks for m in network.modules() if m is not network.layer1)
    assert len(network.layer1._forward_hooks) == 1, "only the teacher copy's own tap"
    trainer = fast_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters()}
    assert module.student.training and not any(m.training for m in network.modules())


def test_snapshots_refresh_exactly_at_the_configured_epochs(tmp_path):
    class EpochProbe(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_epoch_start(self, trainer, pl_module):
            teacher = pl_module.teacher
            self.seen.append((teacher.generation, clone_state(teacher.network), clone_state(pl_module.student)))

    module, probe = make_module(SnapshotTeacher(every_n_epochs=2)), EpochProbe()
    trainer = fast_trainer(tmp_path, max_epochs=5, limit_train_batches=2, limit_val_batches=0, callbacks=[probe])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert [generation for generation, _, _ in probe.seen] == [0, 0, 1, 1, 2]
    assert module.teacher.generation == 2
    (_, teacher1, _), (_, teacher2, student2), (_, teacher3, student3), (_, teacher4, student4) = probe.seen[1:]
    assert states_equal(teacher2, student2) and states_equal(teacher4, student4), "snapshot after epochs 1 and 3"
    assert states_equal(teacher3, teacher2) and not states_equal(teacher3, student3), "no refresh after epoch 2"
    assert not states_equal(teacher2, teacher1)


def test_snapshot_generation_zero_learns_from_the_labels_alone():
    module = make_module(SnapshotTeacher(every_n_epochs=3))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    losses = module.compute_losses([x, y])
    assert list(losses) == ["ce"]
    torch.testing.assert_close(losses["ce"], F.cross_entropy(module(x), y))
    module.teacher.generation = 1
    assert set(module.compute_losses([x, y])) == {"ce", "kd"}


def pskd_data(**kwargs) -> OrderedDigits:
    return OrderedDigits(batch_size=64, return_index=True, **kwargs)


@pytest.mark.parametrize(
    ("name", "teacher", "data"),
    [
        ("ema", lambda: EMATeacher(decay=0.9), lambda: OrderedDigits(batch_size=64)),
        ("snapshot", lambda: SnapshotTeacher(every_n_epochs=2), lambda: OrderedDigits(batch_size=64)),
        ("pskd", lambda: PSKDTeacher(alpha_max=0.8), pskd_data),
    ],
)
def test_resume_continues_the_teacher_state_bit_exactly(tmp_path, name, teacher, data):
    def run(ckpt_path=None, callbacks=()):
        module = make_module(teacher())
        trainer = fast_trainer(
            tmp_path,
            max_epochs=3,
            limit_train_batches=3,
            limit_val_batches=1,
            callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
        )
        trainer.fit(module, datamodule=data(), ckpt_path=ckpt_path)
        return module, trainer

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    uninterrupted, _ = run(callbacks=[saver])
    resumed, trainer = run(ckpt_path=tmp_path / "ckpt" / "epoch=1-step=6.ckpt")
    assert trainer.global_step == 9
    assert states_equal(clone_state(uninterrupted.teacher), clone_state(resumed.teacher))
    assert states_equal(clone_state(uninterrupted.student), clone_state(resumed.student))
    if name == "snapshot":
        assert resumed.teacher.generation == uninterrupted.teacher.generation == 1
    if name == "pskd":
        assert torch.equal(resumed.teacher.log_probs, uninterrupted.teacher.log_probs)
        assert int(resumed.teacher.seen.sum()) == 3 * 64


def test_pskd_targets_follow_the_formula(tmp_path):
    student = DigitsMLP(hidden=(16,))
    teacher = PSKDTeacher(alpha_max=0.8, epochs=4)
    module = SelfDistillation(student, teacher=teacher, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    data = pskd_data()
    data.setup()
    x, y, index = next(iter(data.train_dataloader()))
    torch.testing.assert_close(teacher.targets([x, y, index], 0, None), F.one_hot(y, 10).float())
    trainer = fast_trainer(tmp_path, limit_train_batches=1.0)
    trainer.fit(module, datamodule=data)
    images = data.splits["train"].images
    assert bool(teacher.seen.all()) and len(teacher.seen) == len(images)
    with torch.no_grad():
        torch.testing.assert_close(teacher.log_probs, F.log_softmax(student(images), -1))
        previous = F.softmax(student(x), -1)
    assert teacher.alpha(1, None) == pytest.approx(0.4) and teacher.alpha(9, None) == pytest.approx(0.8)
    expected = 0.6 * F.one_hot(y, 10).float() + 0.4 * previous
    torch.testing.assert_close(teacher.targets([x, y, index], 1, None), expected)


def test_pskd_loss_has_the_gradient_of_the_soft_target_cross_entropy(tmp_path):
    student = DigitsMLP(hidden=(16,))
    teacher = PSKDTeacher(alpha_max=0.8, epochs=4)
    module = SelfDistillation(student, teacher=teacher)
    x, y, index = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)), torch.arange(16)
    with torch.no_grad():
        teacher.record(index, F.log_softmax(student(x) * 3.0, -1))
    batch = [x, y, index]
    soft_targets = teacher.targets(batch, 0, None)
    assert not torch.allclose(soft_targets, F.one_hot(y, 10).float())

    def gradients(loss):
        module.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in student.parameters()]

    ours = gradients(sum(module.compute_losses(batch).values()))
    reference = gradients(-(soft_targets * F.log_softmax(student(x), -1)).sum(-1).mean())
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_outside_the_open_unit_interval_is_an_error(decay):
    with pytest.raises(ValueError, match=r"EMA decay in \(0, 1\)"):
        EMATeacher(decay=decay)


@pytest.mark.parametrize("period", [0, -1, 1.5])
def test_snapshot_period_must_be_a_positive_integer(period):
    with pytest.raises(ValueError, match="every_n_epochs >= 1"):
        SnapshotTeacher(every_n_epochs=period)


def test_pskd_without_sample_indices_fails_before_training(tmp_path):
    module = SelfDistillation(DigitsMLP(hidden=(16,)), teacher=PSKDTeacher())
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="return_index: true"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0


def test_pskd_without_a_number_of_epochs_fails_before_training(tmp_path):
    module = SelfDistillation(DigitsMLP(hidden=(16,)), teacher=PSKDTeacher())
    trainer = fast_trainer(tmp_path, max_epochs=-1, max_steps=2)
    with pytest.raises(ValueError, match="max_epochs"):
        trainer.fit(module, datamodule=pskd_data())
    assert trainer.global_step == 0


def test_pskd_terms_cannot_read_teacher_features():
    with pytest.raises(ValueError, match="teacher='logits'"):
        SelfDistillation(DigitsMLP(), teacher=PSKDTeacher(), terms=[DistillTerm(KDLoss(), teacher="layer1")])


def test_exactly_one_family_is_required():
    from kd_lightning.modules.exits import BYOTExits

    with pytest.raises(ValueError, match="neither"):
        SelfDistillation(DigitsMLP())
    with pytest.raises(ValueError, match="both"):
        SelfDistillation(DigitsCNN(width=4), exits=BYOTExits(["layer1"]), teacher=EMATeacher())
    with pytest.raises(TypeError, match="OfflineDistillation"):
        SelfDistillation(DigitsMLP(), teacher=DigitsMLP())


@pytest.mark.slow
def test_pskd_gathers_the_predictions_of_every_process_under_ddp(tmp_path):
    module = SelfDistillation(DigitsMLP(hidden=(16,)), teacher=PSKDTeacher(alpha_max=0.8))
    trainer = fast_trainer(tmp_path, strategy="ddp_spawn", devices=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, return_index=True))
    seen = module.teacher.seen
    assert int(seen.sum()) == 2 * 2 * 32, "both processes' samples, on every process"
