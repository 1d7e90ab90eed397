"""timm and torchvision networks by ``class_path``: the typed factories, command-line overrides, and teacher input
re-normalisation, through the CLI (a timm teacher distils into a torchvision student by layer name)."""

import urllib.error

import huggingface_hub
import pytest
import torch
import torchvision
import yaml
from helpers import CONFIGS
from safetensors.torch import save_file
from torch import nn

from kd_lightning import OfflineDistillation
from kd_lightning.cli import build_cli, main
from kd_lightning.files import CheckpointFileError
from kd_lightning.models.hub import timm_model, torchvision_model
from kd_lightning.teachers.normalization import Renormalize

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CIFAR = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
TWO_STEPS = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def term(loss: str, weight: float = 1.0, student: str | None = None, teacher: str | None = None) -> dict:
    init_args = {"loss": {"class_path": f"kd_lightning.losses.{loss}"}, "weight": weight}
    if student is not None:
        init_args |= {"student": student, "teacher": teacher}
    return {"class_path": "kd_lightning.DistillTerm", "init_args": init_args}


FEATURE_TERMS = [
    term("KDLoss", 0.9),
    term("ATLoss", 1000.0, "layer3", "layer3"),  # [B, 256, 2, 2] in both families
    term("RKDLoss", 1.0, "avgpool", "global_pool"),  # torchvision [B, 512, 1, 1] (flattened), timm [B, 512]
]


def hub_config(tmp_path, teacher: dict, terms: list[dict] = FEATURE_TERMS, **model_args) -> str:
    """A full config: ``teacher`` (a timm_model spec) distils into a torchvision ResNet-18 on 32x32 images."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "kd_lightning.OfflineDistillation",
            "init_args": {
                "student": {"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}},
                "teacher": teacher,
                "ce_weight": 0.1,
                "terms": terms,
                **model_args,
            },
        },
        "data": {
            "class_path": "kd_lightning.data.SyntheticImageDataModule",
            "init_args": {
                "num_classes": 10,
                "image_size": 32,
                "train_size": 16,
                "val_size": 8,
                "test_size": 8,
                "batch_size": 8,
            },
        },
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def timm_teacher(**init_args) -> dict:
    return {
        "class_path": "kd_lightning.models.timm_model",
        "init_args": {"name": "resnet10t", "num_classes": 10} | init_args,
    }


def test_timm_teacher_distils_into_a_torchvision_student_by_layer_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trained = timm_model("resnet10t", num_classes=10)
    save_file(trained.state_dict(), tmp_path / "teacher.safetensors")
    config = hub_config(tmp_path, timm_teacher(checkpoint_path="teacher.safetensors"), teacher_normalization=IMAGENET)
    cli = build_cli(["--config", config, *TWO_STEPS, "--model.init_args.ce_weight=0.5"], run=False)
    assert cli.model.objective.ce_weight == 0.5
    assert isinstance(cli.model.student, torchvision.models.ResNet) and cli.model.student.fc.out_features == 10
    for key, value in trained.state_dict().items():
        assert torch.equal(cli.model.teacher.network.state_dict()[key], value)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert all(torch.isfinite(metrics[f"train/{name}"]) for name in ("loss", "kd", "at", "rkd"))
    # the datamodule's statistics (mean 0, std 1) are the student's; the teacher's are ImageNet's
    to_teacher = cli.model.teacher.renormalize
    assert torch.allclose(to_teacher.scale, 1 / torch.tensor(IMAGENET["std"]))
    assert not [key for key in cli.model.state_dict() if "renormalize" in key]


@pytest.mark.parametrize(
    "teacher",
    [
        timm_teacher(),
        {"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}},
        {"class_path": "kd_lightning.models.torchvision_model", "init_args": {"name": "resnet18", "num_classes": 10}},
    ],
    ids=["timm_model", "torchvision.models.resnet18", "torchvision_model"],
)
def test_command_line_overrides_work_beside_a_builder_function(tmp_path, teacher):
    """Once a function builds a network inside the model, `--model.*` overrides crashed in jsonargparse ("unexpected
    keyword argument 'linked_targets'", through the CLI's num_classes link); KDArgumentParser fixes it."""
    config = hub_config(tmp_path, teacher, terms=[term("KDLoss", 0.9)])
    overrides = ["--model.init_args.ce_weight=0.5", "--model.init_args.teacher.init_args.num_classes=10"]
    cli = build_cli(["--config", config, *overrides], run=False)
    assert cli.model.objective.ce_weight == 0.5 and cli.model.teacher.network.fc.out_features == 10


def test_timm_model_arguments_from_yaml_and_command_line(tmp_path):
    config = hub_config(tmp_path, timm_teacher(in_chans=3, model_args={"drop_rate": 0.1}))
    cli = build_cli(["--config", config, "--model.init_args.teacher.init_args.model_args={drop_rate: 0.2}"], run=False)
    assert cli.model.teacher.network.drop_rate == 0.2


def test_a_layer_name_of_the_other_family_is_an_error_before_the_first_step(tmp_path, capsys):
    config = hub_config(tmp_path, timm_teacher(), terms=[term("RKDLoss", 1.0, "global_pool", "global_pool")])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "student ResNet has no submodule named 'global_pool'" in error and "'avgpool'" in error


def test_unknown_names_list_the_nearest():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet19'; nearest: resnet18"):
        timm_model("resnet19")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope' of timm model 'resnet18'; .*a1_in1k"):
        timm_model("resnet18.nope")
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnet19'; nearest: resnet18"):
        torchvision_model("resnet19")
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET' of torchvision 'resnet18'; .*IMAGENET1K_V1"):
        torchvision_model("resnet18", weights="IMAGENET")
    with pytest.raises(ValueError, match=r"weights DEFAULT have 1000 classes but num_classes=10"):
        torchvision_model("resnet18", num_classes=10, weights="DEFAULT")


def test_pretrained_without_network_says_to_pass_a_checkpoint_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import: set the constant too, and an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        RuntimeError,
        match=r"pretrained weights need the network \(Hugging Face hub, https://hugg"
        r"ingface.co/timm/resnet10t\..*pass checkpoint_path: <file>",
    ):
        timm_model("resnet10t", num_classes=1000, pretrained=True)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(
        RuntimeError,
        match=r"need the network \(download.pytorch.org, https://download.pytorch.org/"
        r"models/resnet18-.*checkpoint_path",
    ):
        torchvision_model("resnet18", weights="IMAGENET1K_V1")


def test_checkpoint_path_loads_strictly_with_a_clear_mismatch_message(tmp_path):
    saved = timm_model("resnet10t", num_classes=10)
    path = tmp_path / "resnet10t.safetensors"
    save_file(saved.state_dict(), path)
    loaded = timm_model("resnet10t", num_classes=10, checkpoint_path=str(path))
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in saved.state_dict().items())
    with pytest.raises(ValueError, match=r"classifier 'fc' has 10 outputs but num_classes=100: pass num_classes: 10"):
        timm_model("resnet10t", num_classes=100, checkpoint_path=str(path))
    with pytest.raises(ValueError, match=r"timm_model\('resnet18'\): .*does not fit ResNet: missing keys: "):
        timm_model("resnet18", num_classes=10, checkpoint_path=str(path))
    with pytest.raises(CheckpointFileError, match="not found"):
        timm_model("resnet10t", num_classes=10, checkpoint_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="expected pretrained: true or a checkpoint_path but got both"):
        timm_model("resnet10t", pretrained=True, checkpoint_path=str(path))
    student = torchvision_model("mobilenet_v3_small", num_classes=10)
    torch.save(student.state_dict(), tmp_path / "student.pt")
    with pytest.raises(ValueError, match=r"classifier 'classifier.3' has 10 outputs but num_classes=5"):
        torchvision_model("mobilenet_v3_small", num_classes=5, checkpoint_path=str(tmp_path / "student.pt"))


# ----------------------------------------------------------------- teacher input re-normalisation
def test_renormalize_matches_the_two_step_formula():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 5, 5, generator=generator)
    mean_s, std_s = torch.tensor(CIFAR["mean"]).view(1, 3, 1, 1), torch.tensor(CIFAR["std"]).view(1, 3, 1, 1)
    mean_t, std_t = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    student_input = (pixels - mean_s) / std_s
    to_teacher = Renormalize(CIFAR["mean"], CIFAR["std"], IMAGENET["mean"], IMAGENET["std"])
    assert torch.allclose(to_teacher(student_input), (pixels - mean_t) / std_t, atol=1e-5)
    assert torch.allclose(to_teacher(student_input), (student_input * std_s + mean_s - mean_t) / std_t, atol=1e-5)
    assert to_teacher(student_input.bfloat16()).dtype == torch.bfloat16
    assert dict(to_teacher.state_dict()) == {} and len(list(to_teacher.buffers())) == 2
    same = Renormalize([0.5], [0.2], [0.5], [0.2])
    assert same(student_input) is student_input
    with pytest.raises(ValueError, match=r"expected inputs \[B, 3, \.\.\.\] .* but got \[2, 1, 8, 8\]"):
        to_teacher(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"std > 0"):
        Renormalize([0.5], [0.0], [0.5], [0.2])


class InputRecorder(nn.Module):
    """A tiny teacher that keeps its last input."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x):
        self.seen = x
        return self.head(x.flatten(1))


def test_the_teacher_sees_its_own_normalisation_and_the_student_the_batch():
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    module = OfflineDistillation(student, InputRecorder(), teacher_normalization=IMAGENET, student_normalization=CIFAR)
    x = torch.randn(2, 3, 4, 4)
    module.compute_losses((x, torch.tensor([0, 1])))
    expected = (
        x * torch.tensor(CIFAR["std"]).view(1, 3, 1, 1)
        + torch.tensor(CIFAR["mean"]).view(1, 3, 1, 1)
        - torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)
    ) / torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    assert (
        torch.allclose(module.teacher.network.seen, expected, atol=1e-5)
        and not module.teacher.network.seen.requires_grad
    )
    assert module.hparams["teacher_normalization"] == IMAGENET
    plain = OfflineDistillation(student, InputRecorder())
    plain.teacher_outputs((x, None))
    assert plain.teacher.network.seen is x
    unset = OfflineDistillation(student, InputRecorder(), teacher_normalization=IMAGENET)
    with pytest.raises(RuntimeError, match=r"call set_student_normalization\(\(mean, std\)\) first"):
        unset.teacher_outputs((x, None))
    with pytest.raises(ValueError, match="expected teacher_normalization beside student_normalization"):
        OfflineDistillation(student, InputRecorder(), student_normalization=CIFAR)
    with pytest.raises(ValueError, match=r"expected teacher_normalization to be \{mean: \[\.\.\.\], std: \[\.\.\.\]\}"):
        OfflineDistillation(student, InputRecorder(), teacher_normalization={"mean": [0.5]})


def test_a_datamodule_without_statistics_is_an_error_before_the_first_step(in_project_copy):
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "digits/offline_kd.yaml"),
            "--trainer.max_steps=1",
            "--model.init_args.teacher_normalization={mean: [0.5], std: [0.25]}",
        ],
        run=False,
    )
    with pytest.raises(ValueError, match=r"but got DigitsDataModule without mean/std: set student_normalization"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 0
