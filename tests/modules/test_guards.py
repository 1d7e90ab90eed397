"""Guards that hold in every mode: non-finite losses never reach ``backward``, gradient clipping through the Trainer,
a fit that can make no step is refused, and research subclasses keep checkpoints loadable and adapters optimized."""

import functools
import math

import lightning as L
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from kd_lightning import (
    BYOTExits,
    Classifier,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillationLoss,
    DistillationModule,
    DistillTerm,
    EMATeacher,
    NonFiniteLossError,
    OfflineDistillation,
    OnlineDistillation,
    PSKDTeacher,
    SelfDistillation,
    SnapshotTeacher,
)
from kd_lightning.losses import FitNetsLoss, KDLoss, LazyAdapter

SGD = functools.partial(torch.optim.SGD, lr=1.0)


def offline(**kwargs):
    return OfflineDistillation(DigitsMLP(hidden=(16,)), DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, **kwargs)


MODES = {
    "classifier": lambda **kw: Classifier(DigitsMLP(hidden=(16,)), **kw),
    "offline": offline,
    "online_kd": lambda **kw: OnlineDistillation({"teacher": DigitsCNN(width=4), "student": DigitsMLP()}, **kw),
    "dml": lambda **kw: OnlineDistillation([DigitsMLP(), DigitsMLP(), DigitsMLP()], student="peer0", mutual=True, **kw),
    "byot": lambda **kw: SelfDistillation(DigitsCNN(width=4), exits=BYOTExits(["layer1", "layer2"]), **kw),
    "ema": lambda **kw: SelfDistillation(DigitsCNN(width=4), teacher=EMATeacher(decay=0.9), **kw),
    "snapshot": lambda **kw: SelfDistillation(DigitsCNN(width=4), teacher=SnapshotTeacher(every_n_epochs=1), **kw),
    "pskd": lambda **kw: SelfDistillation(DigitsCNN(width=4), teacher=PSKDTeacher(), **kw),
}


def data(mode: str, **kwargs) -> DigitsDataModule:
    return DigitsDataModule(batch_size=32, return_index=mode == "pskd", **kwargs)


class NaNAtStep(L.Callback):
    """Poison the inputs of one training batch with a NaN pixel."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch[0][0, 0, 0, 0] = float("nan")


def student_state(module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.student.state_dict().items()}


@pytest.mark.parametrize("mode", MODES)
def test_a_nonfinite_loss_is_zeroed_and_stops_the_run_at_the_next_logging_step_naming_it(mode, tmp_path):
    module = MODES[mode](optimizer=SGD)
    trainer = fast_trainer(tmp_path, max_steps=4, callbacks=[NaNAtStep(2)])
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 2, batch 2: .*inputs held NaN/inf") as caught:
        trainer.fit(module, datamodule=data(mode))
    assert "on_nonfinite: skip" in str(caught.value) and "zeroed on the device" in str(caught.value)
    assert trainer.global_step == 3  # reported at the fit's last step; the bad step's update was zeroed
    assert all(torch.isfinite(p).all() for p in module.student.parameters()), "NaN reached the weights"


@pytest.mark.parametrize("mode", ["offline", "dml", "ema"])
def test_skip_option_skips_and_counts_nonfinite_steps(mode, tmp_path):
    module = MODES[mode](optimizer=SGD, on_nonfinite="skip")
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[NaNAtStep(1)])
    with pytest.warns(UserWarning, match="Skipped, as set by"):
        trainer.fit(module, datamodule=data(mode))
    assert module.skipped_steps == 1  # its gradients zeroed on the device: plain SGD leaves the weights as they were
    assert trainer.callback_metrics["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(torch.isfinite(b).all() for b in module.buffers() if b.is_floating_point()), "NaN in BatchNorm stats"


def test_on_nonfinite_must_be_stop_or_skip():
    with pytest.raises(ValueError, match=r"on_nonfinite to be one of \['stop', 'skip'\] but got 'ignore'"):
        offline(on_nonfinite="ignore")


class StudentUpdateNorm(L.Callback):
    """The norm of the first optimizer step's change of the student's parameters."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.student.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        deltas = [(p.detach() - b).flatten() for p, b in zip(pl_module.student.parameters(), self.before, strict=True)]
        self.norm = float(torch.cat(deltas).norm())


@pytest.mark.parametrize("mode", MODES)
def test_gradient_clipping_through_the_trainer_bounds_the_step(mode, tmp_path):
    """SGD with lr 1: the update is minus the gradient, whose norm over all parameters the Trainer clips to 1e-3."""
    probe = StudentUpdateNorm()
    trainer = fast_trainer(tmp_path, max_steps=1, gradient_clip_val=1e-3, callbacks=[probe])
    trainer.fit(MODES[mode](optimizer=SGD), datamodule=data(mode))
    assert 0 < probe.norm <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"max_epochs": 0}, "max_epochs=0"), ({"max_steps": 0}, "max_steps=0"), ({"limit_train_batches": 0}, "=0")],
)
def test_a_fit_that_can_make_no_step_is_refused(limits, reason, tmp_path):
    trainer = fast_trainer(tmp_path, **limits)
    with pytest.raises(ValueError, match=f"can make no optimizer step .*{reason}"):
        trainer.fit(offline(), datamodule=DigitsDataModule())
    assert trainer.global_step == 0


def test_scheduler_that_fails_when_stepped_is_refused_before_training(tmp_path):
    module = offline(lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=0))
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match="lr_scheduler CosineAnnealingLR fails when it is stepped .*ZeroDivision"):
        trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.global_step == 0


# ----------------------------------------------------------------- research subclasses
class ProjectedKD(OfflineDistillation):
    """A research subclass: an extra network and an extra loss with a lazy adapter, used from compute_losses."""

    def __init__(self, student: nn.Module, teacher: nn.Module, probe: nn.Module, hint_weight: float = 1.0, **kwargs):
        super().__init__(student=student, teacher=teacher, **kwargs)
        self.probe = probe
        self.hint = FitNetsLoss()
        self.hint_weight = hint_weight

    def compute_losses(self, batch):
        losses = super().compute_losses(batch)
        student = self.student_tap(batch[0])["logits"]
        losses["hint"] = self.hint_weight * self.hint(self.probe(student), self.teacher_outputs(batch)["logits"])
        return losses


def make_subclass() -> ProjectedKD:
    return ProjectedKD(
        DigitsMLP(hidden=(16,)), DigitsCNN(width=32), nn.Linear(10, 6), teacher_weights=TEACHER_WEIGHTS, optimizer=SGD
    )


def test_subclass_checkpoints_load_with_weights_only_and_its_adapter_is_trained(tmp_path):
    module = make_subclass()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert module.hint.regressor.is_built and all(id(p) in optimized for p in module.hint.parameters())
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    assert "probe" not in saved["hyper_parameters"] and saved["hyper_parameters"]["hint_weight"] == 1.0
    restored = ProjectedKD.load_from_checkpoint(
        checkpoint.last_model_path, student=DigitsMLP(hidden=(16,)), teacher=DigitsCNN(width=32), probe=nn.Linear(10, 6)
    )
    assert torch.equal(restored.probe.weight, module.probe.weight)
    resumed = fast_trainer(tmp_path, max_steps=3, max_epochs=2)
    resumed.fit(make_subclass(), datamodule=DigitsDataModule(batch_size=32), ckpt_path=checkpoint.last_model_path)
    assert resumed.global_step == 3


class LateAdapterKD(OfflineDistillation):
    """Builds a loss adapter inside training_step only, after the optimizer exists: it would never be trained."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.late = LazyAdapter(lambda s, t: nn.Linear(s[0], t[0]))

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss + self.late(self(batch[0]), torch.zeros(1, 4)).sum() * 0


def test_parameters_outside_the_optimizer_are_an_error(tmp_path):
    module = LateAdapterKD(student=DigitsMLP(), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS)
    with pytest.raises(RuntimeError, match=r"in no optimizer and would never be trained: late\.net\.weight"):
        fast_trainer(tmp_path, max_steps=2).fit(module, datamodule=DigitsDataModule())


def test_loading_through_a_class_that_cannot_rebuild_the_module_names_the_right_one(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(tmp_path, max_steps=1, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(offline(), datamodule=DigitsDataModule())
    for wrong in (DistillationModule, Classifier, OnlineDistillation):
        with pytest.raises(TypeError, match=r"written by OfflineDistillation .* OfflineDistillation\.load_from_checkp"):
            wrong.load_from_checkpoint(checkpoint.last_model_path, student=DigitsMLP(hidden=(16,)))


def test_a_moved_teacher_file_says_where_it_looked_and_how_to_pass_the_new_path(tmp_path):
    moved = tmp_path / "teacher.safetensors"
    moved.write_bytes(TEACHER_WEIGHTS.read_bytes())
    module = OfflineDistillation(DigitsMLP(hidden=(16,)), DigitsCNN(width=32), teacher_weights=moved)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fast_trainer(tmp_path, max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        module, datamodule=DigitsDataModule()
    )
    moved.rename(tmp_path / "elsewhere.safetensors")
    nets = {"student": DigitsMLP(hidden=(16,)), "teacher": DigitsCNN(width=32)}
    with pytest.raises(FileNotFoundError, match=r"teacher\.safetensors.* teacher_weights='new/path\.safetensors'"):
        OfflineDistillation.load_from_checkpoint(checkpoint.last_model_path, **nets)
    restored = OfflineDistillation.load_from_checkpoint(
        checkpoint.last_model_path, teacher_weights=tmp_path / "elsewhere.safetensors", **nets
    )
    assert torch.equal(restored.student.head.weight, module.student.head.weight)


def test_resuming_beside_a_changed_teacher_is_refused(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fast_trainer(tmp_path, max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        offline(), datamodule=DigitsDataModule()
    )
    other_teacher = OfflineDistillation(  # random teacher weights, on purpose
        DigitsMLP(hidden=(16,)), DigitsCNN(width=32), allow_untrained_teacher=True
    )
    trainer = fast_trainer(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="teacher's weights .* differ from those this checkpoint was trained with"):
        trainer.fit(other_teacher, datamodule=DigitsDataModule(), ckpt_path=checkpoint.last_model_path)
    assert trainer.global_step <= 1


class TinyLoss(DistillationLoss):
    def forward(self, student, teacher, target=None):
        return (student - teacher).pow(2).mean()


def test_a_custom_loss_module_is_accepted_and_finite():
    term = DistillTerm(TinyLoss())
    value = term({"logits": torch.randn(4, 10)}, {"logits": torch.randn(4, 10)})
    assert math.isfinite(float(value))


def test_kd_loss_module_remains_the_default_term():
    assert isinstance(offline().objective.terms[0].loss, KDLoss)


class NaNInTraining(DigitsMLP):
    """A student whose forward is NaN in train mode only (finite in the dry run and in validation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits * float("nan") if self.training else logits


def test_a_fit_whose_every_step_is_skipped_fails_and_names_the_student(tmp_path, recwarn):
    module = OfflineDistillation(NaNInTraining(hidden=(16,)), DigitsCNN(width=32), TEACHER_WEIGHTS, on_nonfinite="skip")
    trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    with pytest.raises(NonFiniteLossError, match=r"every training step of this fit so far was zeroed \(3"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    skipped = [str(w.message) for w in recwarn if "Skipped, as set by" in str(w.message)]
    assert skipped and "The student NaNInTraining gave" in skipped[0] and "fix the network" in skipped[0]
