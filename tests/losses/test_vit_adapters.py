"""Tests of the adapters between ViT tokens and CNN maps (FitNetsLoss's ``tokens_to_map`` / ``map_to_tokens``) and of
OFA's loss and logit-space branch.

The shapes are those of the families the library distils between: timm ViT tokens with a class token
``[B, 1 + h*w, D]`` (ViT-Ti/16 at 64 px: 4 x 4 patches), DeiT distilled tokens ``[B, 2 + h*w, D]``, CIFAR ResNet maps
``[B, C, 8, 8]`` / ``[B, C, 4, 4]`` and the digits networks' maps. The OFA reference is a plain-python float64 loop
written from the paper's formula; the generic checks run from ``LossTester``.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor, nn

from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.feature import ATLoss, FitNetsLoss, VIDLoss, at_loss, fitnets_loss
from kd_lightning.losses.ofa import OFALoss, ofa_loss
from kd_lightning.losses.vit_adapters import (
    MapToTokens,
    Resample,
    TokensToMap,
    map_as_tokens,
    map_to_tokens,
    token_grid,
    tokens_as_map,
    tokens_to_map,
)

VIT_TINY = (1 + 4 * 4, 192)  # timm vit_tiny_patch16_224 at 64 px: class token + 4 x 4 patches
DEIT_DISTILLED = (2 + 4 * 4, 192)  # deit_tiny_distilled_patch16_224 at 64 px: class + distillation tokens
CIFAR_MAPS = [(64, 8, 8), (256, 4, 4)]  # resnet32x4 / resnet8x4 stages
DIGITS_MAPS = [(8, 8, 8), (16, 4, 4), (32, 2, 2)]  # DigitsCNN width 8


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- grids and layouts


@pytest.mark.parametrize(
    ("tokens", "aspect", "expected"),
    [
        (16, (1, 1), (0, 4, 4)),
        (17, (1, 1), (1, 4, 4)),
        (18, (1, 1), (2, 4, 4)),
        (197, (7, 7), (1, 14, 14)),
        (1 + 8 * 4, (8, 4), (1, 8, 4)),
        (2 + 4 * 8, (2, 4), (2, 4, 8)),
    ],
)
def test_token_grid_detects_class_and_distillation_tokens(tokens: int, aspect: tuple, expected: tuple) -> None:
    assert token_grid(tokens, aspect) == expected


def test_token_grid_takes_register_tokens_when_told() -> None:
    assert token_grid(1 + 4 + 16, prefix_tokens=5) == (5, 4, 4)
    with pytest.raises(ValueError, match=r"21 tokens .*\(P = 0, 1, 2\).* none fit; pass prefix_tokens"):
        token_grid(1 + 4 + 16)


def test_tokens_as_map_follows_timm_patch_order() -> None:
    """timm's PatchEmbed flattens the conv's map row by row (``flatten(2).transpose(1, 2)``): the inverse is exact."""
    feature = _randn(2, 6, 3, 5)
    tokens = torch.cat([_randn(2, 1, 6, seed=1), feature.flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(tokens_as_map(tokens, 1, (3, 5)), feature, rtol=0, atol=0)
    torch.testing.assert_close(map_as_tokens(feature), tokens[:, 1:], rtol=0, atol=0)
    assert tokens_as_map(tokens, 1, (3, 5))[0, :, 1, 2].tolist() == tokens[0, 1 + 1 * 5 + 2].tolist()


def test_timm_vit_tokens_have_the_documented_layout() -> None:
    timm = pytest.importorskip("timm")
    for name, shape in (("vit_tiny_patch16_224", VIT_TINY), ("deit_tiny_distilled_patch16_224", DEIT_DISTILLED)):
        model = timm.create_model(name, pretrained=False, img_size=64, num_classes=10).eval()
        with torch.no_grad():
            tokens = model.forward_features(torch.randn(2, 3, 64, 64))
        assert tuple(tokens.shape[1:]) == shape
        prefix, h, w = token_grid(tokens.shape[1], (8, 8))
        assert (prefix, h, w) == (model.num_prefix_tokens, 4, 4)


@pytest.mark.parametrize(
    ("size", "kind"), [((4, 4), "pool"), ((14, 14), "same"), ((28, 28), "bilinear"), ((7, 28), "bilinear")]
)
def test_resample_pools_down_and_interpolates_up(size: tuple, kind: str) -> None:
    x = _randn(2, 3, 14, 14)
    out = Resample(size)(x)
    assert tuple(out.shape) == (2, 3, *size)
    if kind == "pool":
        torch.testing.assert_close(out, torch.nn.functional.adaptive_avg_pool2d(x, size))
    elif kind == "same":
        assert out is x
    else:
        expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- round-trip shapes of the families


@pytest.mark.parametrize("tokens", [VIT_TINY, DEIT_DISTILLED], ids=["vit_tiny", "deit_distilled"])
@pytest.mark.parametrize("feature_map", CIFAR_MAPS + DIGITS_MAPS, ids=lambda s: "x".join(map(str, s)))
def test_tokens_to_map_and_back_have_the_other_sides_shapes(tokens: tuple, feature_map: tuple) -> None:
    vit, cnn = _randn(3, *tokens), _randn(3, *feature_map, seed=1)
    to_map = LazyAdapter(tokens_to_map)
    assert tuple(to_map(vit, cnn).shape) == (3, *feature_map)
    assert isinstance(to_map.net, TokensToMap) and to_map.net.prefix_tokens == tokens[0] - 16
    to_tokens = LazyAdapter(map_to_tokens)
    assert tuple(to_tokens(cnn, vit).shape) == (3, 16, tokens[1])
    assert isinstance(to_tokens.net, MapToTokens) and to_tokens.net.grid == (4, 4)
    assert tuple(to_tokens.net.patch_tokens(vit).shape) == (3, 16, tokens[1])


def test_tokens_to_map_uses_the_patch_tokens_only() -> None:
    """The class/distillation tokens never reach the map: changing them leaves the adapter's output unchanged."""
    adapter = LazyAdapter(tokens_to_map).eval()
    tokens, teacher = _randn(2, *DEIT_DISTILLED), _randn(2, 64, 8, 8)
    adapter.build(tuple(tokens.shape[1:]), tuple(teacher.shape[1:]))
    changed = tokens.clone()
    changed[:, :2] += 5.0
    torch.testing.assert_close(adapter(changed, teacher), adapter(tokens, teacher), rtol=0, atol=0)


def test_map_to_tokens_with_hidden_dim_is_a_two_layer_mlp() -> None:
    adapter = LazyAdapter(partial(map_to_tokens, hidden_dim=32))
    adapter(_randn(2, 16, 4, 4), _randn(2, *VIT_TINY))
    assert [type(layer).__name__ for layer in adapter.net.proj] == ["Linear", "LayerNorm", "GELU", "Linear"]


# ---------------------------------------------------------------- FitNetsLoss with the token adapters


def _fitnets_case(name: str, adapter: str, student: tuple, teacher: tuple, prefix_tokens: int | None = None):
    return LossCase(
        name,
        FitNetsLoss,
        lambda seed: Inputs(_randn(3, *student, seed=seed), _randn(3, *teacher, seed=seed + 100)),
        {"adapter": adapter, "prefix_tokens": prefix_tokens},
        zero_at_equality=False,  # an adapter sits between the two sides
        adapter=True,
    )


def _ofa_inputs(student: tuple, seed: int) -> Inputs:
    target = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(seed))
    return Inputs(_randn(4, *student, seed=seed), _randn(4, 10, seed=seed + 100), {"target": target})


def _ofa_function(student: Tensor, teacher: Tensor, target: Tensor | None = None, branch: bool = False, **options):
    return ofa_loss(student, teacher, target, **options)


OFA_BAD = (
    BadHyperparameter({"eps": 0.0}, "expected eps > 0"),
    BadHyperparameter({"temperature": -1.0}, "expected temperature > 0"),
    BadHyperparameter({"temperature": float("inf")}, "expected a finite temperature > 0"),
)


def _ofa_case(name: str, student: tuple, **hyperparameters) -> LossCase:
    branch = hyperparameters.get("branch", True)
    return LossCase(
        name,
        OFALoss,
        partial(_ofa_inputs, student),
        hyperparameters,
        function=None if branch else _ofa_function,
        defaults={"eps": 1.0, "temperature": 1.0, "blocks": 1} if name == "ofa_map" else {},
        bad_hyperparameters=OFA_BAD if not branch else (),
        zero_at_equality=False,  # a cross-entropy: the teacher's entropy remains
        adapter=branch,
    )


class TestTokenAdaptersAndOFA(LossTester):
    cases = [
        _fitnets_case("fitnets_vit_to_cifar_map", "tokens_to_map", (*VIT_TINY[:1], 12), (8, 8, 8)),
        _fitnets_case("fitnets_deit_to_digits_map", "tokens_to_map", (18, 12), (8, 2, 2), prefix_tokens=2),
        _fitnets_case("fitnets_cifar_map_to_vit", "map_to_tokens", (8, 8, 8), (17, 12)),
        _ofa_case("ofa_map", (8, 8, 8)),
        _ofa_case("ofa_map_two_blocks_eps", (8, 8, 8), eps=1.5, blocks=2, hidden_dim=12),
        _ofa_case("ofa_tokens", (17, 8), temperature=2.0),
        _ofa_case("ofa_vector", (6,)),
        _ofa_case("ofa_logits", (10,), branch=False, eps=1.5, temperature=2.0),
    ]


def test_fitnets_token_adapter_matches_a_hand_applied_adapter() -> None:
    student, teacher = _randn(3, *DEIT_DISTILLED), _randn(3, 64, 8, 8)
    loss = FitNetsLoss(adapter="tokens_to_map")
    value = loss(student, teacher)
    net = loss.regressor.net
    patches = student[:, 2:].transpose(1, 2).reshape(3, 192, 4, 4)
    upsampled = torch.nn.functional.interpolate(patches, size=(8, 8), mode="bilinear", align_corners=False)
    expected = ((net.norm(net.proj(upsampled)) - teacher) ** 2).mean()
    torch.testing.assert_close(value, expected)


def test_fitnets_map_to_tokens_compares_the_teachers_patch_tokens_only() -> None:
    student, teacher = _randn(3, 16, 4, 4), _randn(3, *VIT_TINY)
    loss = FitNetsLoss(adapter="map_to_tokens")
    value = loss(student, teacher)
    expected = ((loss.regressor.net.proj(student.flatten(2).transpose(1, 2)) - teacher[:, 1:]) ** 2).mean()
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("adapter", ["tokens_to_map", "map_to_tokens"])
def test_built_token_adapter_reloads_into_a_fresh_loss_and_trains(adapter: str) -> None:
    student, teacher = (_randn(3, *VIT_TINY), _randn(3, 64, 4, 4))
    if adapter == "map_to_tokens":
        student, teacher = teacher, student
    loss = FitNetsLoss(adapter=adapter, prefix_tokens=1)
    student.requires_grad_(True)
    value = loss(student, teacher)
    grads = torch.autograd.grad(value, [student, *loss.parameters()])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    fresh = FitNetsLoss(adapter=adapter, prefix_tokens=1)
    fresh.load_state_dict(loss.state_dict(), strict=True)
    assert fresh.regressor.net.prefix_tokens == 1 and fresh.regressor.net.grid == (4, 4)
    loss.eval(), fresh.eval()
    torch.testing.assert_close(fresh(student, teacher), loss(student, teacher), rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(loss)(student, teacher), loss(student, teacher), rtol=0, atol=0)


# ---------------------------------------------------------------- errors name the adapter and the YAML line


@pytest.mark.parametrize(
    ("make", "student", "teacher", "adapter"),
    [
        (FitNetsLoss, (2, *VIT_TINY), (2, 64, 8, 8), "tokens_to_map"),
        (FitNetsLoss, (2, 64, 8, 8), (2, *DEIT_DISTILLED), "map_to_tokens"),
        (partial(FitNetsLoss, adapter=False), (2, *VIT_TINY), (2, 64, 8, 8), "tokens_to_map"),
        (ATLoss, (2, 16, 4, 4), (2, *VIT_TINY), "map_to_tokens"),
        (VIDLoss, (2, *VIT_TINY), (2, 16, 4, 4), "tokens_to_map"),
    ],
)
def test_a_token_map_pair_without_adapter_names_the_adapter_and_yaml(make, student, teacher, adapter) -> None:
    yaml = rf"loss: \{{class_path: kd_lightning.losses.FitNetsLoss, init_args: \{{adapter: {adapter}\}}\}}"
    with pytest.raises(ValueError, match=rf"{adapter} adapter: {yaml}"):
        make()(torch.randn(student), torch.randn(teacher))


def test_the_functions_name_the_adapter_too() -> None:
    with pytest.raises(ValueError, match="tokens_to_map adapter"):
        fitnets_loss(torch.randn(2, *VIT_TINY), torch.randn(2, 64, 4, 4))
    with pytest.raises(ValueError, match="map_to_tokens adapter"):
        at_loss(torch.randn(2, 16, 4, 4), torch.randn(2, *VIT_TINY))


@pytest.mark.parametrize(
    ("adapter", "student", "teacher", "fix"),
    [
        ("tokens_to_map", (2, 16, 4, 4), (2, 64, 8, 8), "use adapter: true"),
        ("tokens_to_map", (2, 64, 8, 8), (2, *VIT_TINY), "use adapter: map_to_tokens"),
        ("map_to_tokens", (2, *VIT_TINY), (2, 64, 8, 8), "use adapter: tokens_to_map"),
        ("map_to_tokens", (2, *VIT_TINY), (2, *VIT_TINY), "tap a ViT block on one side, a CNN stage"),
    ],
)
def test_a_token_adapter_on_the_wrong_pair_says_which_to_use(adapter, student, teacher, fix) -> None:
    with pytest.raises(ValueError, match=rf"FitNetsLoss\(adapter='{adapter}'\) expected .*; {fix}"):
        FitNetsLoss(adapter=adapter)(torch.randn(student), torch.randn(teacher))


def test_bad_adapter_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected adapter to be true, false, tokens_to_map or map_to_tokens"):
        FitNetsLoss(adapter="tokens")
    with pytest.raises(ValueError, match="expected prefix_tokens >= 0"):
        FitNetsLoss(adapter="tokens_to_map", prefix_tokens=-1)
    with pytest.raises(ValueError, match="pass prefix_tokens"):
        FitNetsLoss(adapter="tokens_to_map")(torch.randn(2, 1 + 4 + 16, 8), torch.randn(2, 8, 4, 4))


def test_the_adapter_keeps_its_grid_and_rejects_another_layer_pair() -> None:
    loss = FitNetsLoss(adapter="tokens_to_map")
    loss(torch.randn(2, *VIT_TINY), torch.randn(2, 64, 8, 8))
    with pytest.raises(ValueError, match="adapter was built for student"):
        loss(torch.randn(2, 2 + 64, 192), torch.randn(2, 64, 8, 8))


# ---------------------------------------------------------------- OFA


def ref_ofa(student: Tensor, teacher: Tensor, target: Tensor | None, eps: float, temperature: float) -> float:
    """``mean_b sum_k -((p_t + y)^eps - y) log p_s`` in float64 plain python, from the paper's equation."""
    total = 0.0
    for b, (z_s, z_t) in enumerate(zip(student.double().tolist(), teacher.double().tolist(), strict=True)):
        norm_s = sum(math.exp(v / temperature) for v in z_s)
        norm_t = sum(math.exp(v / temperature) for v in z_t)
        label = None if target is None else int(target[b])
        for k, (v_s, v_t) in enumerate(zip(z_s, z_t, strict=True)):
            y = 1.0 if k == label else 0.0
            p_t = math.exp(v_t / temperature) / norm_t
            total -= ((p_t + y) ** eps - y) * math.log(math.exp(v_s / temperature) / norm_s)
    return total / student.shape[0]


@pytest.mark.parametrize("eps", [1.0, 1.5, 0.5])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("labelled", [True, False])
def test_ofa_loss_matches_the_reference(eps: float, temperature: float, labelled: bool) -> None:
    student, teacher = _randn(5, 7) * 3, _randn(5, 7, seed=1) * 3
    target = torch.tensor([0, 3, 6, 2, 2]) if labelled else None
    expected = ref_ofa(student, teacher, target, eps, temperature)
    assert ofa_loss(student, teacher, target, eps, temperature).item() == pytest.approx(expected, rel=1e-5)
    module = OFALoss(branch=False, eps=eps, temperature=temperature)
    assert module(student, teacher, target).item() == pytest.approx(expected, rel=1e-5)


def test_ofa_soft_labels_use_their_argmax() -> None:
    student, teacher = _randn(3, 4), _randn(3, 4, seed=1)
    soft = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.0, 0.0, 0.2, 0.8]])
    torch.testing.assert_close(
        ofa_loss(student, teacher, soft, eps=1.5), ofa_loss(student, teacher, torch.tensor([1, 0, 3]), eps=1.5)
    )


def test_ofa_branch_follows_the_reference_layout() -> None:
    loss = OFALoss(blocks=2)
    loss(torch.randn(2, 16, 8, 8), torch.randn(2, 10))
    names = [type(layer).__name__ for layer in loss.branch.net]
    assert names == ["_SepConv", "_SepConv", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert loss.branch.net[-1].in_features == 64  # channels doubled per block
    last = OFALoss(blocks=0, hidden_dim=48)
    last(torch.randn(2, 16, 2, 2), torch.randn(2, 10))
    assert isinstance(last.branch.net[0], nn.Conv2d) and last.branch.net[0].out_channels == 48
    tokens = OFALoss()
    tokens(torch.randn(2, *DEIT_DISTILLED), torch.randn(2, 10))
    assert tokens.branch.net[0].prefix_tokens == 2


def test_ofa_branch_reads_the_class_token_of_vit_features() -> None:
    loss = OFALoss().eval()
    tokens = torch.randn(2, 17, 8)
    loss(tokens, torch.randn(2, 10))
    changed = tokens.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(loss.branch.net(changed), loss.branch.net(tokens))


def test_ofa_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="teacher's logits .* set the term's teacher: logits"):
        OFALoss()(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"OFALoss\(branch=False\) compares .* pass branch: true"):
        OFALoss(branch=False)(torch.randn(2, 8, 4, 4), torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"class indices \[B\] = \[2\]"):
        ofa_loss(torch.randn(2, 10), torch.randn(2, 10), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="expected blocks to be an integer >= 0"):
        OFALoss(blocks=-1)


def test_ofa_branch_takes_a_non_square_token_grid_when_told_its_prefix() -> None:
    loss = OFALoss(prefix_tokens=1)
    assert loss(torch.randn(2, 1 + 8 * 4, 8), torch.randn(2, 10)).shape == ()
    with pytest.raises(ValueError, match="pass prefix_tokens"):
        OFALoss()(torch.randn(2, 1 + 8 * 4, 8), torch.randn(2, 10))


@pytest.mark.parametrize("value", ["tokens_to_map", "map_to_tokens", True])
def test_the_adapter_is_chosen_in_yaml(value) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--loss", type=nn.Module)
    loss = {"class_path": "kd_lightning.losses.FitNetsLoss", "init_args": {"adapter": value, "prefix_tokens": 1}}
    built = parser.instantiate_classes(parser.parse_object({"loss": loss})).loss
    assert isinstance(built, FitNetsLoss) and built.adapter == value and built.prefix_tokens == 1


@pytest.mark.parametrize("make", [FitNetsLoss, ATLoss, VIDLoss], ids=["fitnets", "at", "vid"])
def test_two_token_sequences_point_to_radio_loss(make) -> None:
    with pytest.raises(ValueError, match=r"token sequences \[B, N, D\] on both sides.*kd_lightning.losses.RADIOLoss"):
        make()(torch.randn(2, *VIT_TINY), torch.randn(2, *DEIT_DISTILLED))
