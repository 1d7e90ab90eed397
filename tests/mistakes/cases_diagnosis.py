"""Mistakes whose message must name its place (``where:`` the config path and file) and be printed exactly once."""

from __future__ import annotations

from helpers import CONFIGS, TINY_FIT
from mistakes.catalogue import BYOT_EXITS, CliMistake, attention_args, config_edited, offline_args

CLI_MISTAKES = [
    CliMistake(
        "misspelled init arg",
        lambda project: offline_args(("temperature: 4.0", "temprature: 4.0")),
        tuple(
            [
                "KDLoss does not accept the init arg 'temprature'",
                "did you mean 'temperature'?",
                "where: model.init_args.terms[0].init_args.loss.init_args.temprature (bad.yaml)",
            ]
        ),
        2,
        once="temprature'",
    ),
    CliMistake(
        "misspelled class_path",
        lambda project: offline_args(("kd_lightning.losses.KDLoss", "kd_lightning.losses.KDLos")),
        tuple(
            [
                "cannot import class_path 'kd_lightning.losses.KDLos'",
                "did you mean 'kd_lightning.losses.KDLoss'?",
                "where: model.init_args.terms[0].init_args.loss.class_path (bad.yaml)",
            ]
        ),
        2,
        once="has no attribute 'KDLos'",
    ),
    CliMistake(
        "misspelled module path",
        lambda project: offline_args(("kd_lightning.losses.KDLoss", "kd_lightning.loss.KDLoss")),
        tuple(["cannot import class_path 'kd_lightning.loss.KDLoss'", "did you mean 'kd_lightning.losses.KDLoss'?"]),
        2,
        once="has no attribute 'loss'",
    ),
    CliMistake(
        "misspelled student class",
        lambda project: offline_args(("kd_lightning.models.DigitsMLP", "kd_lightning.models.DigitMLP")),
        tuple(
            ["did you mean 'kd_lightning.models.DigitsMLP'?", "where: model.init_args.student.class_path (bad.yaml)"]
        ),
        2,
        once="has no attribute 'DigitMLP'",
    ),
    CliMistake(
        "misspelled CLI flag",
        lambda project: ["fit", "--config", str(CONFIGS / "digits/offline_kd.yaml"), "--trainer.max_epohcs=1"],
        tuple(["unrecognized arguments: --trainer.max_epohcs=1", "did you mean '--trainer.max_epochs'"]),
        2,
        once="max_epohcs=1",
    ),
    CliMistake(
        "misspelled init arg on the command line",
        lambda project: ["fit", "--config", config_edited("digits/offline_kd.yaml"), "--model.init_args.ce_wieght=1"],
        tuple(
            [
                "does not accept the init arg 'ce_wieght'",
                "did you mean 'ce_weight'?",
                "model.init_args.ce_wieght (command line)",
            ]
        ),
        2,
        once="ce_wieght'",
    ),
    CliMistake(
        "misspelled top-level key",
        lambda project: offline_args(("trainer:", "trainr:")),
        tuple(["unknown key 'trainr'", "did you mean 'trainer'?", "where: trainr (bad.yaml)"]),
        2,
        once="'trainr'",
    ),
    CliMistake(
        "bare YAML path",
        lambda project: ["fit", config_edited("digits/offline_kd.yaml")],
        tuple(["unexpected argument 'bad.yaml'", "`kd-lightning fit --config bad.yaml`"]),
        2,
        once="unexpected argument",
    ),
    CliMistake(
        "YAML path without subcommand",
        lambda project: [config_edited("digits/offline_kd.yaml")],
        tuple(["'bad.yaml' is not a subcommand", "`kd-lightning fit --config bad.yaml`"]),
        2,
        once="not a subcommand",
    ),
    CliMistake(
        "misspelled subcommand",
        lambda project: ["fitt", "--config", config_edited("digits/offline_kd.yaml")],
        tuple(["unknown subcommand 'fitt'", "did you mean 'fit'?"]),
        2,
        once="'fitt'",
    ),
    CliMistake(
        "missing config file",
        lambda project: [
            "fit",
            "--config",
            config_edited("digits/offline_kd.yaml", name="offline_kd.yaml") and "ofline_kd.yaml",
        ],
        tuple(["config file 'ofline_kd.yaml' not found", "working directory", "did you mean 'offline_kd.yaml'?"]),
        2,
        once="ofline_kd.yaml",
    ),
    CliMistake(
        "YAML syntax error",
        lambda project: offline_args(("ce_weight: 0.1", "ce_weight: [0.1")),
        tuple(["config file 'bad.yaml' is not valid YAML", "line 32", "where: bad.yaml:32"]),
        2,
        once="not valid YAML",
    ),
    CliMistake(
        "negative temperature",
        lambda project: offline_args(("temperature: 4.0", "temperature: -4.0")),
        tuple(
            [
                "expected temperature > 0 but got temperature=-4.0",
                "where: model.init_args.terms[0].init_args.loss.init_args.temperature (bad.yaml)",
            ]
        ),
        2,
        once="temperature > 0",
    ),
    CliMistake(
        "negative term weight",
        lambda project: offline_args(("weight: 0.9", "weight: -1")),
        tuple(["weight >= 0 but got weight=-1.0", "where: model.init_args.terms[0].init_args.weight (bad.yaml)"]),
        2,
        once="weight >= 0",
    ),
    CliMistake(
        "negative ce_weight on the command line",
        lambda project: [
            "fit",
            "--config",
            config_edited("digits/offline_kd.yaml"),
            "--model.init_args.ce_weight=-1",
            *TINY_FIT,
            "--trainer.logger=false",
        ],
        tuple(["ce_weight=-1.0", "where: model.init_args.ce_weight (command line)"]),
        2,
        once="ce_weight=-1.0",
    ),
    CliMistake(
        "missing teacher file",
        lambda project: offline_args(
            ("teacher_weights: checkpoints/digits_teacher", "teacher_weights: checkpoints/nope")
        ),
        tuple(["nope.safetensors", "not found", "where: model.init_args.teacher_weights (bad.yaml)", "teacher.yaml"]),
        2,
        once="not found",
    ),
    CliMistake(
        "term reads layer 'logit'",
        lambda project: attention_args(("student: layer1", "student: logit")),
        tuple(
            ["no submodule named 'logit'", "'logits'", "where: model.init_args.terms[0].init_args.student (bad.yaml)"]
        ),
        2,
        once="named 'logit'",
    ),
    CliMistake(
        "term reads layer 'layer9'",
        lambda project: attention_args(("student: layer2", "student: layer9")),
        tuple(
            ["no submodule named 'layer9'", "'layer3'", "where: model.init_args.terms[1].init_args.student (bad.yaml)"]
        ),
        2,
        once="named 'layer9'",
    ),
    CliMistake(
        "misspelled loss arg in the second of three terms",
        lambda project: attention_args(
            (
                "{p: 2.0}}\n          weight: 1000\n          student: layer2",
                "{q: 2.0}}\n          weight: 1000\n          student: layer2",
            )
        ),
        tuple(
            ["ATLoss does not accept the init arg 'q'", "accepted: p", "terms[1].init_args.loss.init_args.q (bad.yaml)"]
        ),
        2,
        once="init arg 'q'",
    ),
    CliMistake(
        "max_epochs is not a number",
        lambda project: offline_args(("max_epochs: 60", "max_epochs: abc")),
        tuple(["expected int or null for max_epochs but got 'abc'", "where: trainer.max_epochs (bad.yaml)"]),
        2,
        once="'abc'",
    ),
    CliMistake(
        "term weight is not a number",
        lambda project: offline_args(("weight: 0.9", "weight: high")),
        tuple(
            ["expected float for weight but got 'high'", "where: model.init_args.terms[0].init_args.weight (bad.yaml)"]
        ),
        2,
        once="'high'",
    ),
    CliMistake(
        "SelfDistillation with neither exits nor teacher",
        lambda project: [
            "fit",
            "--config",
            config_edited(
                "digits/self_byot.yaml",
                (BYOT_EXITS, ""),
                ("kd_lightning.LayerwiseSelfDistillation", "kd_lightning.SelfDistillation"),
            ),
            *TINY_FIT,
            "--trainer.logger=false",
        ],
        tuple(["SelfDistillation needs exactly one of", "but got neither", "where: model (bad.yaml)"]),
        2,
        once="but got neither",
    ),
    CliMistake(
        "student and teacher disagree on the classes (dry run in setup)",
        lambda project: offline_args(("{num_classes: 10, hidden: [32]}", "{num_classes: 7, hidden: [32]}")),
        tuple(["teacher and student must predict the same classes", "set the same num_classes"]),
        1,
        once="same classes",
    ),
]
