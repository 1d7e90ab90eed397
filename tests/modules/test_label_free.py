"""Label-free and mixed transfer sets in every module: batches ``(x,)``, labels of ``-100``, and a dict of a labelled
and an unlabelled loader (Lightning's CombinedLoader). The teacher is then the only signal, or one of two."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import TEACHER_WEIGHTS, fast_trainer
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import (
    BYOTExits,
    Classifier,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillTerm,
    EMATeacher,
    OfflineDistillation,
    OnlineDistillation,
    PSKDTeacher,
    SelfDistillation,
)
from kd_lightning.core.objective import Objective, hard_label_loss
from kd_lightning.losses import DKDLoss, KDLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def offline(**kwargs) -> OfflineDistillation:
    kwargs.setdefault("terms", [DistillTerm(KDLoss(temperature=4.0))])
    kwargs.setdefault("ce_weight", 0.0)
    return OfflineDistillation(DigitsMLP(hidden=(16,)), DigitsCNN(width=32), TEACHER_WEIGHTS, **kwargs)


def weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.student.state_dict().items()}


def test_hard_label_loss_skips_unlabelled_samples_and_an_unlabelled_batch_gives_zero():
    logits = torch.randn(6, 4, requires_grad=True)
    target = torch.tensor([0, -100, 3, -100, 1, 2])
    expected = F.cross_entropy(logits[target >= 0], target[target >= 0])
    assert torch.allclose(hard_label_loss(logits, target), expected)
    nothing = hard_label_loss(logits, torch.full((6,), -100))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_objective_without_ce_weight_reads_no_labels():
    objective = Objective([DistillTerm(KDLoss(temperature=2.0))], ce_weight=0.0)
    logits = {"logits": torch.randn(4, 10)}
    losses = objective(logits, {"logits": torch.randn(4, 10)}, None)
    assert list(losses) == ["kd"]
    assert Objective([], ce_weight=1.0)(logits, None, None) == {}  # an unlabelled part of a mixed batch
    with pytest.raises(ValueError, match=r"needs labels but the batch has none .*ce_weight: 0"):
        hard_label_loss(logits["logits"], None)


def test_label_free_offline_run_trains_and_validates_against_the_teacher(tmp_path):
    module = offline()
    trainer = fast_trainer(tmp_path)
    before = weights(module)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.0))
    assert trainer.global_step == 4
    assert any(not torch.equal(before[key], value) for key, value in module.student.state_dict().items())
    metrics = trainer.callback_metrics
    assert {"val/agreement", "val/kl", "val/acc", "train/kd"} <= set(metrics) and "train/ce" not in metrics


def test_labels_asked_for_on_a_label_free_dataset_stop_before_the_first_step(tmp_path):
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"hard-label loss needs labels but the batch has none.*ce_weight: 0"):
        trainer.fit(offline(ce_weight=0.5), datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.0))
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match=r"hard-label loss needs labels"):
        fast_trainer(tmp_path).fit(
            Classifier(DigitsMLP()), datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.0)
        )


def test_a_mixed_transfer_set_trains_on_the_labelled_share_and_never_logs_nan(tmp_path):
    data = DigitsDataModule(batch_size=32, labelled_fraction=0.2)
    data.setup()
    train_labels = data.splits["train"].labels
    assert 0.15 < float((train_labels >= 0).float().mean()) < 0.25
    assert data.splits["val"].labels.min() >= 0  # evaluation keeps its labels
    module = offline(ce_weight=0.1)
    trainer = fast_trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train/ce"])


def test_dkd_on_a_label_free_batch_names_the_problem():
    module = offline(terms=[DistillTerm(DKDLoss())])
    with pytest.raises(ValueError, match=r"DKDLoss needs the ground-truth labels .*KDLoss"):
        module.compute_losses([torch.randn(4, 1, 8, 8)])
    with pytest.raises(ValueError, match=r"DKDLoss needs every sample's label .*label -100"):
        module.compute_losses([torch.randn(4, 1, 8, 8), torch.tensor([1, -100, 2, 3])])


class Unlabelled(L.LightningDataModule):
    """Training batches ``(x,)`` and validation batches ``(x,)``: no labels anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.images = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.images), batch_size=32)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.images[:64]), batch_size=32)


def test_validation_without_labels_reports_agreement_and_kl_only(tmp_path):
    module = offline()
    trainer = fast_trainer(tmp_path)
    trainer.fit(module, datamodule=Unlabelled())
    metrics = trainer.callback_metrics
    assert {"val/agreement", "val/kl"} <= set(metrics)
    assert not {"val/acc", "val/teacher_acc"} & set(metrics)
    assert 0.0 <= float(metrics["val/agreement"]) <= 1.0


class LabelledAndUnlabelled(L.LightningDataModule):
    """``train_dataloader`` returns a dict of two loaders: Lightning combines them into dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.digits = DigitsDataModule(batch_size=16)

    def setup(self, stage: str) -> None:
        self.digits.setup(stage)

    def train_dataloader(self):
        images = torch.stack([self.digits.splits["train"][i][0] for i in range(64)])
        return {
            "labelled": self.digits.train_dataloader(),
            "unlabelled": DataLoader(TensorDataset(images), batch_size=16),
        }

    def val_dataloader(self):
        return self.digits.val_dataloader()


def test_labelled_and_unlabelled_loaders_are_mixed(tmp_path):
    module = offline(ce_weight=0.1)
    seen = []
    compute = module.compute_losses
    module.compute_losses = lambda batch: seen.append(len(batch)) or compute(batch)
    trainer = fast_trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(module, datamodule=LabelledAndUnlabelled())
    assert trainer.global_step == 4
    assert seen[-2:] == [2, 1]  # each step: the labelled part (x, y), then the unlabelled part (x,)
    loaders = trainer.datamodule.train_dataloader()
    labelled, unlabelled = (next(iter(loaders[name])) for name in ("labelled", "unlabelled"))
    parts = module.combined_losses({"labelled": labelled, "unlabelled": unlabelled})
    alone = module.compute_losses(labelled), module.compute_losses(unlabelled)
    assert torch.allclose(parts["kd"], alone[0]["kd"] + alone[1]["kd"])
    assert torch.allclose(parts["ce"], alone[0]["ce"]) and "ce" not in alone[1]


@pytest.mark.parametrize("mode", ["online", "ema", "byot"])
def test_every_mode_trains_without_labels(tmp_path, mode):
    if mode == "online":
        module = OnlineDistillation({"teacher": DigitsCNN(width=8), "student": DigitsMLP()}, mutual=True, ce_weight=0)
    elif mode == "ema":
        module = SelfDistillation(DigitsMLP(), teacher=EMATeacher(decay=0.9), ce_weight=0.0)
    else:
        module = SelfDistillation(DigitsCNN(width=4), exits=BYOTExits(["layer1"], alpha=0.5), ce_weight=0.0)
    trainer = fast_trainer(tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.0))
    assert trainer.global_step == 4
    assert not any(key.startswith(("train/ce", "train/exit_ce")) for key in trainer.callback_metrics)


def test_pskd_without_labels_is_a_clear_error(tmp_path):
    module = SelfDistillation(DigitsMLP(), teacher=PSKDTeacher(epochs=2), ce_weight=0.0)
    with pytest.raises(ValueError, match=r"PS-KD's targets mix each sample's label .* EMATeacher"):
        fast_trainer(tmp_path).fit(
            module, datamodule=DigitsDataModule(batch_size=32, labelled_fraction=0.0, return_index=True)
        )
