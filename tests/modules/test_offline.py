"""The frozen-teacher contract of OfflineDistillation, checked with real Trainer runs on digits."""

import functools
import warnings

import lightning as L
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import DigitsCNN, DigitsDataModule, DigitsMLP, DistillTerm, OfflineDistillation, TeacherCache
from kd_lightning.losses import KDLoss


def make_module(**overrides) -> OfflineDistillation:
    kwargs = dict(
        student=DigitsMLP(hidden=(16,)),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    )
    kwargs.update(overrides)
    return OfflineDistillation(**kwargs)


def teacher_state(module: OfflineDistillation) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.teacher.state_dict().items()}


class TeacherModeProbe(L.Callback):
    """Records the teacher's training flags at every training and validation batch."""

    def __init__(self) -> None:
        self.flags: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.flags += [m.training for m in pl_module.teacher.modules()]  # the source and its network

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.flags += [m.training for m in pl_module.teacher.modules()]  # the source and its network


def test_default_objective_is_hinton_kd():
    module = make_module()
    (term,) = module.objective.terms
    assert isinstance(term.loss, KDLoss) and term.loss.temperature == 4.0 and term.weight == 0.9
    assert module.objective.ce_weight == pytest.approx(0.1)
    assert make_module(terms=[DistillTerm(KDLoss())]).objective.ce_weight == 1.0


def test_teacher_is_bit_identical_and_in_eval_mode_through_fit(tmp_path):
    module = make_module()
    before = teacher_state(module)
    probe = TeacherModeProbe()
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[probe], num_sanity_val_steps=2)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, augment=True))
    after = teacher_state(module)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before), "teacher weights or BN statistics changed"
    assert any("running_mean" in key for key in before)
    assert probe.flags and not any(probe.flags)
    assert trainer.global_step == 8


def test_train_call_keeps_teacher_in_eval_mode():
    module = make_module()
    module.train()
    assert module.student.training and not any(m.training for m in module.teacher.modules())
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_teacher_parameters_are_not_in_the_optimizer(tmp_path):
    module = make_module(terms=[DistillTerm(KDLoss())])
    trainer = fast_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    assert not optimized & {id(p) for p in module.teacher.parameters()}


def test_checkpoint_has_no_teacher_and_reloads_strictly(tmp_path):
    module = make_module()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    assert saved["state_dict"] and not any(key.startswith("teacher.") for key in saved["state_dict"])
    assert any(key.startswith("student.") for key in saved["state_dict"])
    assert saved["hyper_parameters"] == {
        "teacher_weights": str(TEACHER_WEIGHTS),
        "terms": None,
        "ce_weight": None,
        "num_classes": 10,
        "lr_scheduler": None,
        "label_smoothing": 0.0,
        "on_nonfinite": "stop",
        "compile": False,
        "channels_last": False,
        "teacher_normalization": None,
        "student_normalization": None,
        "teacher_dtype": None,
        "teacher_cache": None,
        "allow_untrained_teacher": False,
        "on_policy": None,
    }

    restored = OfflineDistillation.load_from_checkpoint(
        checkpoint.last_model_path, student=DigitsMLP(hidden=(16,)), teacher=DigitsCNN(width=32)
    )
    for key, value in module.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value)
    reference = make_module().teacher.state_dict()
    assert all(torch.equal(restored.teacher.state_dict()[k], v) for k, v in reference.items())


def test_resume_from_last_checkpoint_continues_training(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = make_module()
    fast_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        first, datamodule=DigitsDataModule(batch_size=32)
    )
    resumed = make_module()
    before = teacher_state(resumed)
    trainer = fast_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ModelCheckpoint(tmp_path)])
    trainer.fit(resumed, datamodule=DigitsDataModule(batch_size=32), ckpt_path=checkpoint.last_model_path)
    assert trainer.global_step == 8 and trainer.current_epoch == 2
    assert all(torch.equal(before[k], v) for k, v in resumed.teacher.state_dict().items())
    assert trainer.optimizers[0].state, "optimizer state was not restored"


def test_validation_logs_student_teacher_agreement_and_kl(tmp_path):
    trainer = fast_trainer(tmp_path, limit_val_batches=5)
    module = make_module()
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    metrics = trainer.callback_metrics
    assert {"val/acc", "val/teacher_acc", "val/agreement", "val/kl", "train/loss", "train/ce", "train/kd"} <= set(
        metrics
    )
    assert float(metrics["val/teacher_acc"]) > 0.95
    assert 0 <= float(metrics["val/agreement"]) <= 1 and float(metrics["val/kl"]) > 0


def test_agreement_and_kl_match_a_direct_computation(tmp_path):
    module = make_module()
    data = DigitsDataModule(batch_size=270)
    trainer = fast_trainer(tmp_path, limit_test_batches=1)
    (results,) = trainer.test(module, datamodule=data)
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        student, teacher = module.eval()(x), module.teacher(x)
    agreement = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
    kl = (teacher.softmax(-1) * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum(-1).mean()
    assert results["test/agreement"] == pytest.approx(float(agreement), abs=1e-6)
    assert results["test/kl"] == pytest.approx(float(kl), rel=1e-4)
    assert results["test/teacher_acc"] == pytest.approx(float((teacher.argmax(-1) == y).float().mean()), abs=1e-6)


def test_eval_mode_warning_is_silenced_only_for_the_teacher_and_only_during_the_fit(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        fast_trainer(tmp_path, max_steps=1).fit(make_module(), datamodule=DigitsDataModule(batch_size=32))
        assert warnings.filters == filters, "the fit left a warning filter behind"
    assert not [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    frozen_student = make_module()
    frozen_student.student.layer1.eval()  # a module in eval mode that is not a teacher's: Lightning warns
    frozen_student.student.layer1.train = lambda mode=True: frozen_student.student.layer1  # it stays in eval mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast_trainer(tmp_path, max_steps=1).fit(frozen_student, datamodule=DigitsDataModule(batch_size=32))
    assert [w for w in caught if "in eval mode at the start of training" in str(w.message)]


def test_bf16_mixed_precision_fit(tmp_path):
    module = make_module()
    trainer = fast_trainer(tmp_path, precision="bf16-mixed", max_steps=3)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in module.student.parameters())


class TeacherUnchangedInEveryProcess(L.Callback):
    """Fails the run (in whichever process it runs) if the teacher's weights or BN statistics change."""

    def on_train_start(self, trainer, pl_module):
        self.before = teacher_state(pl_module)

    def on_train_end(self, trainer, pl_module):
        after = teacher_state(pl_module)
        changed = [k for k in self.before if not torch.equal(self.before[k], after[k])]
        assert not changed, f"rank {trainer.global_rank}: teacher changed: {changed}"
        assert not pl_module.teacher.training


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(
        tmp_path,
        strategy="ddp_spawn",
        devices=2,
        max_steps=2,
        enable_checkpointing=True,
        callbacks=[checkpoint, TeacherUnchangedInEveryProcess()],
    )
    trainer.fit(make_module(), datamodule=DigitsDataModule(batch_size=16))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)  # written by rank 0 in the spawned process
    assert saved["global_step"] == 2 and not any(k.startswith("teacher.") for k in saved["state_dict"])


def test_class_count_mismatch_fails_before_training(tmp_path):
    module = make_module(student=DigitsMLP(num_classes=5))
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="teacher has 10 outputs and the student 5"):
        trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.global_step == 0


def test_missing_teacher_checkpoint_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="kd-lightning fit --config configs/digits/teacher.yaml") as error:
        make_module(teacher_weights=tmp_path / "missing.safetensors")
    assert "missing.safetensors" in str(error.value)


def test_teacher_of_another_architecture_lists_keys():
    with pytest.raises(ValueError, match="shape mismatches: head.1.weight"):
        make_module(teacher=DigitsCNN(width=16))


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (lambda: [DistillTerm(KDLoss(temperature=-1.0))], "temperature"),
        (lambda: [DistillTerm(KDLoss(), weight=-0.1)], "weight >= 0"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(terms, message):
    with pytest.raises(ValueError, match=message):
        make_module(terms=terms())


def test_a_teacher_cache_set_after_the_module_is_built_is_refused_not_ignored(tmp_path):
    module = OfflineDistillation(DigitsMLP(), DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS)
    assert module.teacher_cache is None
    with pytest.raises(AttributeError, match=r"pass OfflineDistillation\(\.\.\., teacher_cache=TeacherCache"):
        module.teacher_cache = TeacherCache(tmp_path / "cache")
    cached = OfflineDistillation(
        DigitsMLP(), DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, teacher_cache=TeacherCache(tmp_path / "c")
    )
    assert cached.teacher_cache is cached.teacher.cache
