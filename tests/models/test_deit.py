"""DeiT's distillation token (``DistilledViT``): which head each loss trains in a real ``Trainer.fit``, the average of
the heads at inference and in the exported ONNX file, and the errors of a misuse before the first step."""

from __future__ import annotations

import functools
from pathlib import Path

import onnxruntime
import pytest
import timm
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from torch import nn

from kd_lightning import Classifier, DigitsDataModule, DistillTerm, OfflineDistillation
from kd_lightning.core.taps import FeatureTap
from kd_lightning.export.formats import export_network
from kd_lightning.losses import KDLoss
from kd_lightning.losses.deit import HardDistillationLoss
from kd_lightning.models import DigitsCNN
from kd_lightning.models.deit import CLASS_HEAD, DISTILLATION_HEAD, DistilledViT, cifar_deit_tiny, deit_student

SGD = functools.partial(torch.optim.SGD, lr=0.1)  # no weight decay: a parameter without gradient keeps its value
TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2, "drop_path_rate": 0.0}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny networks: one torch thread is faster on shared cores."""


def digits_vit(**model_args: object) -> DistilledViT:
    torch.manual_seed(0)
    return deit_student(num_classes=10, img_size=8, patch_size=2, in_chans=1, model_args={**TINY, **model_args})


def hard_term(weight: float = 0.5, student: str = DISTILLATION_HEAD) -> DistillTerm:
    return DistillTerm(HardDistillationLoss(), weight=weight, student=student, teacher="logits")


def offline(student: nn.Module, terms: list[DistillTerm], ce_weight: float) -> OfflineDistillation:
    teacher = DigitsCNN(width=32)
    return OfflineDistillation(student, teacher, TEACHER_WEIGHTS, terms=terms, ce_weight=ce_weight, optimizer=SGD)


def heads_of(net: DistilledViT) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in net.model.named_parameters() if name.startswith("head")}


def fit(module, tmp_path: Path) -> None:
    fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1).fit(module, DigitsDataModule(batch_size=16))


def changed(before: dict[str, torch.Tensor], net: DistilledViT) -> set[str]:
    after = heads_of(net)
    return {name.partition(".")[0] for name in before if not torch.equal(before[name], after[name])}


# ---------------------------------------------------------------- outputs


def test_training_output_is_the_class_head_and_the_tap_reads_the_distillation_head() -> None:
    net = digits_vit().train()
    x = torch.randn(4, 1, 8, 8)
    cls, dist = net.heads(x)
    with FeatureTap(net, [DISTILLATION_HEAD, CLASS_HEAD], role="student") as tap:
        outputs = tap(x)
    torch.testing.assert_close(outputs["logits"], cls)
    torch.testing.assert_close(outputs[CLASS_HEAD], cls)
    torch.testing.assert_close(outputs[DISTILLATION_HEAD], dist)
    assert not torch.allclose(cls, dist)


def test_eval_output_is_the_average_of_the_two_heads() -> None:
    net = digits_vit().eval()
    x = torch.randn(4, 1, 8, 8)
    cls, dist = net.heads(x)
    torch.testing.assert_close(net(x), (cls + dist) / 2)
    with FeatureTap(net, [DISTILLATION_HEAD]) as tap:  # the head still runs: a validation term can read it
        torch.testing.assert_close(tap(x)[DISTILLATION_HEAD], dist)


def test_cifar_deit_tiny_is_deit_tiny_at_32_pixels() -> None:
    net = cifar_deit_tiny(num_classes=100)
    assert (net.model.embed_dim, len(net.model.blocks), net.model.blocks[0].attn.num_heads) == (192, 12, 3)
    assert net.model.patch_embed.num_patches == 64 and net.model.pos_embed.shape[1] == 66
    assert net.num_classes == 100
    assert 5.3e6 < sum(p.numel() for p in net.parameters()) < 5.5e6


# ---------------------------------------------------------------- a real fit: which head learns from what


def test_a_head_that_would_never_train_is_refused_before_the_first_step(tmp_path: Path) -> None:
    """Each untrained head would still be half of the prediction: the class head without labels (ce_weight 0), the
    distillation head without a term reading it (a Classifier, or terms on other outputs)."""
    for module, words in (
        (offline(digits_vit(), [hard_term(1.0)], ce_weight=0.0), "ce_weight: 0"),
        (Classifier(digits_vit(), optimizer=SGD), "no distillation term reads its distillation head"),
        (offline(digits_vit(), [hard_term(1.0, student="logits")], ce_weight=0.5), "model.head_dist"),
    ):
        trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
        with pytest.raises(ValueError, match=words):
            trainer.fit(module, DigitsDataModule(batch_size=16))
        assert trainer.global_step == 0


def test_a_timm_distilled_vit_given_as_it_is_is_refused(tmp_path: Path) -> None:
    net = digits_vit().model  # timm's VisionTransformerDistilled, not wrapped
    trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    with pytest.raises(ValueError, match="wrap it, kd_lightning.models.DistilledViT"):
        trainer.fit(offline(net, [hard_term(0.5, student="head_dist")], ce_weight=0.5), DigitsDataModule(batch_size=16))


def test_deit_hard_distillation_trains_both_heads_and_validates_on_their_average(tmp_path: Path) -> None:
    net = digits_vit()
    before = heads_of(net)
    module = offline(net, [hard_term(0.5)], ce_weight=0.5)
    trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, DigitsDataModule(batch_size=16))
    assert changed(before, net) == {"head", "head_dist"}
    assert net.training and trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["val/acc"])
    x = torch.randn(3, 1, 8, 8)
    module.eval()
    cls, dist = net.heads(x)
    torch.testing.assert_close(module(x), (cls + dist) / 2)


def test_gradients_of_one_step_split_between_the_heads() -> None:
    """One loss, one head: CE's gradient reaches ``head`` only, the distillation term's ``head_dist`` only."""
    net = digits_vit().train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    with FeatureTap(net, [DISTILLATION_HEAD]) as tap:
        outputs = tap(x)
    ce = nn.functional.cross_entropy(outputs["logits"], y)
    hard = HardDistillationLoss()(outputs[DISTILLATION_HEAD], torch.randn(6, 10))
    head, head_dist = net.model.head.weight, net.model.head_dist.weight
    ce_grads = torch.autograd.grad(ce, [head, head_dist], retain_graph=True, allow_unused=True)
    hard_grads = torch.autograd.grad(hard, [head, head_dist], allow_unused=True)
    assert ce_grads[0].abs().sum() > 0 and ce_grads[1] is None
    assert hard_grads[0] is None and hard_grads[1].abs().sum() > 0


# ---------------------------------------------------------------- export


def test_exported_onnx_averages_the_two_heads(tmp_path: Path) -> None:
    net = digits_vit()
    module = offline(net, [hard_term(0.5)], ce_weight=0.5)
    fit(module, tmp_path)
    deployed = module.deployables()[-1]
    assert deployed.network is net
    x = torch.randn(5, 1, 8, 8)
    weights, onnx = export_network(net, tmp_path / "export", x, formats=["safetensors", "onnx"], log=lambda _: None)
    assert net.training  # the caller's network keeps its mode (the export copies it)
    session = onnxruntime.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    cls, dist = net.eval().heads(x)
    torch.testing.assert_close(logits, (cls + dist) / 2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits, cls, atol=1e-3)
    reloaded = deit_student(
        num_classes=10, img_size=8, patch_size=2, in_chans=1, checkpoint_path=str(weights.path), model_args=TINY
    )
    torch.testing.assert_close(reloaded.eval()(x), net(x))  # the exported weights (keys model.*) build the student


# ---------------------------------------------------------------- misuse: clear errors before the first step


def test_a_vit_without_a_distillation_token_is_refused_with_the_fix() -> None:
    plain = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=8, patch_size=2, in_chans=1, **TINY)
    with pytest.raises(
        TypeError, match=r"has no head_dist module.*deit_student\(name='deit_tiny_distilled_patch16_224'"
    ):
        DistilledViT(plain)
    with pytest.raises(
        ValueError, match="has no distillation token; expected a distilled architecture such as deit_tiny"
    ):
        deit_student("deit_tiny_patch16_224", num_classes=10)
    with pytest.raises(TypeError, match="already wrapped"):
        DistilledViT(digits_vit())
    with pytest.raises(ValueError, match="num_classes > 0"):
        deit_student(num_classes=0, img_size=8, patch_size=2, in_chans=1, model_args=TINY)


def test_a_term_reading_head_dist_without_the_wrapper_path_names_the_right_one() -> None:
    with pytest.raises(ValueError, match=r"no submodule named 'head_dist'; nearest valid names: 'model.head_dist'"):
        offline(digits_vit(), [hard_term(0.5, student="head_dist")], ce_weight=0.5)


def test_images_of_another_size_fail_before_the_first_step(tmp_path: Path) -> None:
    net = deit_student(num_classes=10, img_size=16, patch_size=4, in_chans=1, model_args=TINY)
    before = heads_of(net)
    trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    with pytest.raises(ValueError, match="built for 16x16 images .* but got 8x8; build it with img_size: 8"):
        trainer.fit(offline(net, [hard_term()], ce_weight=0.5), DigitsDataModule(batch_size=16))
    assert trainer.global_step == 0 and changed(before, net) == set()


def test_a_student_switched_out_of_distilled_training_is_an_error_in_training() -> None:
    net = digits_vit().train()
    net.model.set_distilled_training(False)
    with pytest.raises(RuntimeError, match="do not call set_distilled_training"):
        net(torch.randn(2, 1, 8, 8))


def test_soft_deit_is_kd_loss_on_the_distillation_head(tmp_path: Path) -> None:
    """DeiT ``soft`` (alpha 0.5, tau 1): KDLoss at T=1 with weight alpha / C on ``model.head_dist``."""
    net = digits_vit()
    before = heads_of(net)
    term = DistillTerm(KDLoss(temperature=1.0), weight=0.5 / 10, student=DISTILLATION_HEAD, teacher="logits")
    fit(offline(net, [term], ce_weight=0.5), tmp_path)
    assert changed(before, net) == {"head", "head_dist"}
