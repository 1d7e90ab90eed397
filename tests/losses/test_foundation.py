"""Tests of RADIOLoss (AM-RADIO's summary + patch feature matching through adaptor heads) against a plain-python
float64 reference written from the paper's formula; the generic checks run from ``LossTester``."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor

from kd_lightning.losses.foundation import RADIOLoss, radio_loss


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def ref_radio(student: Tensor, teacher: Tensor, w_summary: float, w_cos: float, w_l1: float) -> float:
    """``w_sum (1 - cos) on position 0 + w_cos (1 - cos) + w_l1 smoothL1 on the patches``, float64 loops."""

    def cosine_distance(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return 1 - dot / max(math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8)

    def smooth_l1(d: float) -> float:
        return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5

    summary = cosine = l1 = 0.0
    s_all, t_all = student.double().tolist(), teacher.double().tolist()
    batch, tokens, dim = student.shape
    for s_seq, t_seq in zip(s_all, t_all, strict=True):
        summary += cosine_distance(s_seq[0], t_seq[0])
        for s_tok, t_tok in zip(s_seq[1:], t_seq[1:], strict=True):
            cosine += cosine_distance(s_tok, t_tok)
            l1 += sum(smooth_l1(x - y) for x, y in zip(s_tok, t_tok, strict=True))
    patches = batch * (tokens - 1)
    return w_summary * summary / batch + w_cos * cosine / patches + w_l1 * l1 / (patches * dim)


@pytest.mark.parametrize("weights", [(1.0, 0.9, 0.1), (0.5, 0.0, 2.0), (0.0, 1.0, 0.0)])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_radio_loss_matches_the_reference(weights: tuple, scale: float) -> None:
    student, teacher = _randn(3, 5, 6) * scale, _randn(3, 5, 6, seed=1) * scale
    expected = ref_radio(student, teacher, *weights)
    assert radio_loss(student, teacher, *weights).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert radio_loss(student, student.clone(), *weights).item() == pytest.approx(0.0, abs=1e-6)


def _heads_by_hand(loss: RADIOLoss, summary: Tensor, patch_map: Tensor, grid: tuple[int, int]) -> Tensor:
    """The adaptor heads re-applied from their weights: MLP on the summary; resample, flatten, MLP on the patches."""

    def mlp(layers, x):
        first, norm, _, last = layers
        return last(F.gelu(F.layer_norm(first(x), norm.normalized_shape, norm.weight, norm.bias)))

    net = loss.adapter.net
    if tuple(patch_map.shape[2:]) == grid:
        resampled = patch_map
    elif patch_map.shape[2] >= grid[0] and patch_map.shape[3] >= grid[1]:
        resampled = F.adaptive_avg_pool2d(patch_map, grid)
    else:
        resampled = F.interpolate(patch_map, size=grid, mode="bilinear", align_corners=False)
    patches = mlp(net.patches.proj, resampled.flatten(2).transpose(1, 2))
    return torch.cat([mlp(net.summary, summary).unsqueeze(1), patches], dim=1)


CASES = {
    # name: (student per-sample shape, teacher per-sample shape)
    "cifar_map_to_vit_tokens": ((8, 8, 8), (1 + 16, 12)),
    "deit_tokens_to_vit_tokens": ((2 + 16, 8), (1 + 4, 12)),
    "digits_map_to_map": ((8, 4, 4), (16, 2, 2)),
    "vit_tokens_to_cifar_map": ((1 + 16, 8), (16, 8, 8)),
    "patch_tokens_to_nonsquare_map": ((4 * 2, 8), (16, 8, 4)),
}


def _summary_and_map(x: Tensor, prefix: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    if x.ndim == 4:
        return x.mean(dim=(2, 3)), x
    patches = x[:, prefix:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
    return (x[:, 0] if prefix else patches.mean(dim=(2, 3))), patches


LAYOUTS = {  # (student prefix, student grid, teacher prefix, teacher grid)
    "cifar_map_to_vit_tokens": (0, (8, 8), 1, (4, 4)),
    "deit_tokens_to_vit_tokens": (2, (4, 4), 1, (2, 2)),
    "digits_map_to_map": (0, (4, 4), 0, (2, 2)),
    "vit_tokens_to_cifar_map": (1, (4, 4), 0, (8, 8)),
    "patch_tokens_to_nonsquare_map": (0, (4, 2), 0, (8, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_module_equals_heads_by_hand_and_reference(name: str) -> None:
    student_shape, teacher_shape = CASES[name]
    student, teacher = _randn(3, *student_shape), _randn(3, *teacher_shape, seed=1)
    torch.manual_seed(0)
    loss = RADIOLoss(summary_weight=0.7, hidden_dim=10)
    value = loss(student, teacher)
    s_prefix, s_grid, t_prefix, t_grid = LAYOUTS[name]
    s_summary, s_map = _summary_and_map(student, s_prefix, s_grid)
    t_summary, t_map = _summary_and_map(teacher, t_prefix, t_grid)
    projected = _heads_by_hand(loss, s_summary, s_map, t_grid)
    target = torch.cat([t_summary.unsqueeze(1), t_map.flatten(2).transpose(1, 2)], dim=1)
    assert value.item() == pytest.approx(ref_radio(projected.detach(), target, 0.7, 0.9, 0.1), rel=1e-5)


def test_the_teachers_summary_is_its_class_token() -> None:
    loss = RADIOLoss()
    student, teacher = _randn(2, 8, 4, 4), _randn(2, 17, 12, seed=1)
    loss(student, teacher)
    changed = teacher.clone()
    changed[:, 0] = -changed[:, 0]
    assert loss(student, changed).item() != pytest.approx(loss(student, teacher).item())
    only_patches = RADIOLoss(summary_weight=0.0)
    only_patches.load_state_dict(loss.state_dict())
    assert only_patches(student, changed).item() == pytest.approx(only_patches(student, teacher).item())


def test_a_frozen_timm_vit_teacher_norm_output_feeds_the_loss() -> None:
    timm = pytest.importorskip("timm")
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
    tokens = {}
    teacher.norm.register_forward_hook(lambda module, args, output: tokens.setdefault("norm", output))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        teacher(images)
    student = torch.randn(2, 32, 2, 2, requires_grad=True)  # a ResNet-18 layer4 at 64 px, narrowed
    loss = RADIOLoss()
    value = loss(student, tokens["norm"])
    assert tuple(tokens["norm"].shape) == (2, 17, 192) and loss.adapter.net.patches.grid == (4, 4)
    value.backward()
    assert student.grad.abs().sum() > 0


BAD = (
    BadHyperparameter({"summary_weight": -1.0}, "expected summary_weight >= 0"),
    BadHyperparameter({"cosine_weight": float("inf")}, "expected a finite cosine_weight >= 0"),
    BadHyperparameter({"smooth_l1_weight": -0.1}, "expected smooth_l1_weight >= 0"),
    BadHyperparameter({"hidden_dim": 0}, "expected hidden_dim to be an integer >= 1", function=False),
    BadHyperparameter({"teacher_prefix_tokens": -1}, "expected teacher_prefix_tokens to be an integer", function=False),
)


def _inputs(name: str, seed: int) -> Inputs:
    student_shape, teacher_shape = CASES[name]
    return Inputs(_randn(3, *student_shape, seed=seed), _randn(3, *teacher_shape, seed=seed + 100))


class TestRADIOLoss(LossTester):
    cases = [
        LossCase(
            name,
            RADIOLoss,
            partial(_inputs, name),
            {"summary_weight": 1.0, "cosine_weight": 0.9, "smooth_l1_weight": 0.1, "hidden_dim": 16}
            if name == "cifar_map_to_vit_tokens"
            else {"hidden_dim": 16},
            defaults={"summary_weight": 1.0, "cosine_weight": 0.9, "smooth_l1_weight": 0.1, "hidden_dim": None},
            bad_hyperparameters=BAD if name == "deit_tokens_to_vit_tokens" else (),
            zero_at_equality=False,  # the heads sit between the two sides
            adapter=True,
        )
        for name in CASES
    ]


def test_errors_name_the_layout() -> None:
    with pytest.raises(ValueError, match=r"radio_loss expected a 3-d or 4-d teacher tensor"):
        RADIOLoss()(torch.randn(2, 8, 4, 4), torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"summary token and at least one patch token"):
        radio_loss(torch.randn(2, 1, 4), torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="pass prefix_tokens"):
        RADIOLoss()(torch.randn(2, 8, 4, 4), torch.randn(2, 1 + 4 + 16, 12))
    with pytest.raises(ValueError, match="adapter was built for student"):
        loss = RADIOLoss()
        loss(torch.randn(2, 8, 4, 4), torch.randn(2, 17, 12))
        loss(torch.randn(2, 8, 4, 4), torch.randn(2, 5, 12))
