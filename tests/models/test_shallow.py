"""Shallower students copied from the teacher (kd_lightning.models.shallow): the kept blocks checked parameter by
parameter through a name mapping written here (independent of the implementation's renumbering), freshness, exact
full copies, configuration by ``class_path`` as the CLI does, and the shape errors."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from helpers import CONFIGS
from jsonargparse import ArgumentParser
from torch import nn

from kd_lightning.callbacks.export import save_state_dict
from kd_lightning.core.taps import FeatureTap
from kd_lightning.models import DigitsCNN, DigitsMLP, resnet8, resnet20, resnet32, timm_model
from kd_lightning.models.shallow import shallow_copy

DIGITS_WITHOUT_LAYER1 = ["stem", "layer2", "layer3"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    torch.manual_seed(0)


def trained_like(network: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so a copy that dropped or mixed them up is caught."""
    generator = torch.Generator().manual_seed(1)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))
    return network


def teacher_name(name: str, keep: dict[str, list[int]]) -> str:
    """The teacher tensor a student tensor copies: ``layerS.j.rest`` -> ``layerS.keep[layerS][j].rest`` for the
    stages in ``keep``; everything else (stem, other stages, classifier) by the same name."""
    match = re.fullmatch(r"(layer\d+)\.(\d+)\.(.+)", name)
    if match and match[1] in keep:
        return f"{match[1]}.{keep[match[1]][int(match[2])]}.{match[3]}"
    return name


def assert_copied(student: nn.Module, teacher: nn.Module, keep: dict[str, list[int]]) -> None:
    teacher_state = teacher.state_dict()
    student_parameters = dict(student.named_parameters())
    assert student_parameters, "no parameters"
    for name, value in student.state_dict().items():
        source = teacher_state[teacher_name(name, keep)]
        assert torch.equal(value, source), name
        assert value.data_ptr() != source.data_ptr(), f"{name} shares the teacher's storage"
    assert all(parameter.requires_grad for parameter in student_parameters.values())


def test_digits_copy_without_layer1_keeps_every_other_weight_exactly():
    teacher = trained_like(DigitsCNN(width=8))
    student = shallow_copy(teacher, DIGITS_WITHOUT_LAYER1)
    assert isinstance(student, DigitsCNN) and isinstance(student.layer1, nn.Identity)
    assert not any(name.startswith("layer1.") for name in student.state_dict())
    assert set(student.state_dict()) == {name for name in teacher.state_dict() if not name.startswith("layer1.")}
    assert_copied(student, teacher, {})
    removed = sum(p.numel() for p in teacher.layer1.parameters())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in teacher.parameters()) - removed


RESNET_CASES = [
    (resnet20, {"layer1": [0, 2], "layer2": [0, 2], "layer3": [0, 1]}),
    (resnet20, {"layer1": [2, 0], "layer3": [0]}),  # student order, renumbered
    (resnet20, {"layer1": []}),  # a whole shape-keeping stage
    (resnet8, {"layer1": []}),
]


@pytest.mark.parametrize(("build", "keep"), RESNET_CASES)
def test_cifar_resnet_copy_keeps_the_chosen_blocks_exactly(build, keep):
    teacher = trained_like(build(num_classes=10))
    student = shallow_copy(teacher, keep)
    for stage, indices in keep.items():
        kept = getattr(student, stage)
        assert isinstance(kept, nn.Identity) if not indices else len(kept) == len(indices)
    assert_copied(student, teacher, keep)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_stage_list_keeps_whole_stages():
    teacher = trained_like(resnet8(num_classes=10))
    student = shallow_copy(teacher, ["layer2", "layer3"])
    assert isinstance(student.layer1, nn.Identity) and len(student.layer2) == len(student.layer3) == 1
    assert_copied(student, teacher, {})


def test_timm_resnet_copy():
    teacher = trained_like(timm_model("resnet18", num_classes=10, model_args={"channels": (8, 16, 32, 64)}))
    keep = {"layer1": [0], "layer4": [0]}
    student = shallow_copy(teacher, keep)
    assert type(student) is type(teacher) and len(student.layer1) == len(student.layer4) == 1
    assert len(student.layer2) == len(student.layer3) == 2
    assert_copied(student, teacher, keep)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet32_with_three_blocks_per_stage_is_a_resnet20():
    teacher = trained_like(resnet32(num_classes=10)).eval()
    keep = {"layer1": [0, 2, 4], "layer2": [0, 1, 3], "layer3": [0, 3, 4]}
    student = shallow_copy(teacher, keep).eval()
    plain = resnet20(num_classes=10).eval()
    plain.load_state_dict(student.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), student(x))


@pytest.mark.parametrize(
    ("build", "keep", "shape"),
    [
        (lambda: DigitsCNN(width=8), ["stem", "layer1", "layer2", "layer3"], (1, 8, 8)),
        (lambda: resnet20(num_classes=10), {"layer1": [0, 1, 2]}, (3, 32, 32)),
        (lambda: resnet20(num_classes=10), ["layer1", "layer2", "layer3"], (3, 32, 32)),
    ],
)
def test_a_full_copy_computes_what_the_teacher_computes(build, keep, shape):
    teacher = trained_like(build()).eval()
    student = shallow_copy(teacher, keep).eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))


def test_copy_is_fresh_trainable_and_leaves_the_teacher_alone():
    teacher = trained_like(DigitsCNN(width=8)).eval().requires_grad_(False)
    tap = FeatureTap(teacher, ["layer2"], role="teacher")
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    student = shallow_copy(teacher, DIGITS_WITHOUT_LAYER1)
    assert student.training and all(module.training for module in student.modules())
    assert all(parameter.requires_grad for parameter in student.parameters())
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    assert not any(module._forward_hooks for module in student.modules()), "the teacher's feature tap was copied"
    assert teacher.layer2._forward_hooks, "the teacher's own tap is gone"
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(student(x), y).backward()
    optimizer.step()
    assert all(parameter.grad is not None for parameter in student.parameters())
    assert all(torch.equal(value, before[name]) for name, value in teacher.state_dict().items())
    assert not torch.equal(student.stem[0].weight, teacher.stem[0].weight)
    tap.remove()


def test_weights_file_is_loaded_into_the_copy_not_the_teacher(tmp_path):
    trained = trained_like(DigitsCNN(width=8))
    save_state_dict(trained.state_dict(), tmp_path / "teacher.safetensors")
    architecture = DigitsCNN(width=8)
    untouched = {name: value.clone() for name, value in architecture.state_dict().items()}
    student = shallow_copy(architecture, DIGITS_WITHOUT_LAYER1, weights=str(tmp_path / "teacher.safetensors"))
    assert_copied(student, trained, {})
    assert all(torch.equal(value, untouched[name]) for name, value in architecture.state_dict().items())


def test_shallow_copy_from_yaml_as_the_cli_builds_it(tmp_path):
    trained = trained_like(DigitsCNN(width=8))
    save_state_dict(trained.state_dict(), tmp_path / "teacher.safetensors")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    text = (
        "net:\n"
        "  class_path: kd_lightning.models.shallow.shallow_copy\n"
        "  init_args:\n"
        "    teacher: {class_path: kd_lightning.models.DigitsCNN, init_args: {width: 8}}\n"
        "    keep: [stem, layer2, layer3]\n"
        f"    weights: {tmp_path / 'teacher.safetensors'}\n"
    )
    student = parser.instantiate_classes(parser.parse_string(text)).net
    assert isinstance(student.layer1, nn.Identity)
    assert_copied(student, trained, {})
    resnet = parser.parse_string(
        "net:\n  class_path: kd_lightning.models.shallow.shallow_copy\n  init_args:\n"
        "    teacher: {class_path: kd_lightning.models.resnet20, init_args: {num_classes: 10}}\n"
        "    keep: {layer1: [0], layer2: [0, 2]}\n"
    )
    student = parser.instantiate_classes(resnet).net
    assert [len(student.layer1), len(student.layer2), len(student.layer3)] == [1, 2, 3]


def test_shallow_baseline_is_baseline_yaml_with_the_kd_configs_student():
    """The student alone of shallow_kd.yaml: baseline.yaml's settings with shallow_kd's student (as the accuracy
    benchmark runs it)."""
    baseline, alone, kd = (
        yaml.safe_load((CONFIGS / "digits" / name).read_text())
        for name in ("baseline.yaml", "shallow_baseline.yaml", "shallow_kd.yaml")
    )
    assert alone["model"]["init_args"]["network"] == kd["model"]["init_args"]["student"]
    for key in ("optimizer", "lr_scheduler"):
        assert alone["model"]["init_args"][key] == baseline["model"]["init_args"][key] == kd["model"]["init_args"][key]
    assert alone["trainer"]["max_epochs"] == baseline["trainer"]["max_epochs"] == kd["trainer"]["max_epochs"]
    assert alone["data"] == baseline["data"] == kd["data"]


def test_subsets_that_break_the_shapes_name_the_block_both_shapes_and_what_can_go():
    digits = DigitsCNN(width=8)
    with pytest.raises(
        ValueError,
        match=r"breaks the shapes at layer3: it expects inputs \[B, 16, 4, 4\] but would get \[B, 8, 8, 8\] \(the "
        r"output of layer1\); blocks that keep their input's shape and can be dropped: layer1; blocks that change the "
        r"shape and must stay: stem, layer2, layer3",
    ):
        shallow_copy(digits, ["stem", "layer1", "layer3"])
    with pytest.raises(ValueError, match=r"at layer1: it expects inputs \[B, 8, 8, 8\] but would get \[B, 1, 8, 8\]"):
        shallow_copy(digits, ["layer1", "layer2", "layer3"])
    with pytest.raises(ValueError, match=r"at the classifier: it expects features \[B, 32, 2, 2\] \(the output of "):
        shallow_copy(digits, ["stem", "layer1", "layer2"])
    resnet = resnet20(num_classes=10)
    with pytest.raises(
        ValueError,
        match=r"at layer2\.1: it expects inputs \[B, 32, 16, 16\] but would get \[B, 16, 32, 32\] \(the output of "
        r"layer1\.2\); blocks that keep their input's shape and can be dropped: layer1\.0, layer1\.1, layer1\.2, "
        r"layer2\.1, layer2\.2, layer3\.1, layer3\.2; blocks that change the shape and must stay: layer2\.0, layer3\.0",
    ):
        shallow_copy(resnet, {"layer2": [1, 2]})
    with pytest.raises(ValueError, match=r"at the classifier: it expects features \[B, 64, 8, 8\]"):
        shallow_copy(resnet, {"layer3": []})


def test_bad_keeps_and_teachers_are_clear_errors():
    digits, resnet = DigitsCNN(width=8), resnet20(num_classes=10)
    with pytest.raises(ValueError, match=r"DigitsCNN has no stage 'layer4'; expected stages among: stem, layer1"):
        shallow_copy(digits, ["stem", "layer4"])
    with pytest.raises(ValueError, match=r"stages \['layer2'\] are repeated"):
        shallow_copy(digits, ["stem", "layer2", "layer2", "layer3"])
    with pytest.raises(ValueError, match=r"at least one stage to keep but keep is empty"):
        shallow_copy(digits, [])
    with pytest.raises(ValueError, match=r"stages are single blocks, so they have no block indices"):
        shallow_copy(digits, {"layer1": [0]})
    with pytest.raises(ValueError, match=r"block 3 of layer1 is out of range: layer1 has 3 blocks, numbered 0 \.\. 2"):
        shallow_copy(resnet, {"layer1": [0, 3]})
    with pytest.raises(ValueError, match=r"block -1 of layer2 is out of range"):
        shallow_copy(resnet, {"layer2": [-1]})
    with pytest.raises(ValueError, match=r"blocks \[0\] of layer1 are repeated"):
        shallow_copy(resnet, {"layer1": [0, 0]})
    with pytest.raises(TypeError, match=r"expected keep as a list of stage names or a \{stage: \[block indices\]\}"):
        shallow_copy(resnet, "layer1")
    with pytest.raises(TypeError, match=r"unsupported network DigitsMLP; expected one of: DigitsCNN"):
        shallow_copy(DigitsMLP(), ["layer1"])
    with pytest.raises(TypeError, match=r"expected the teacher as a network .* but got str"):
        shallow_copy("checkpoints/digits_teacher.safetensors", ["stem"])
