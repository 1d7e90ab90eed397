"""Mistakes in where a run writes: outputs onto a file the run reads, onto a file of another kind or architecture, onto
a folder, twice; and callbacks whose after-fit step cannot run (refused in ``setup``, before the first step)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import CONFIGS
from mistakes.catalogue import SHORT, CliMistake, earlier_run, write

DIGITS = CONFIGS / "digits"
TEACHER = "checkpoints/digits_teacher.safetensors"


def callback(class_path: str, **init_args: object) -> str:
    """``--trainer.callbacks+=`` of one callback."""
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': init_args})}"


def run(config: str, *extra: str | object) -> object:
    """A command line running ``configs/digits/<config>`` with ``extra`` (strings, or functions of the project)."""

    def args(project: Path) -> list[str]:
        resolved = [item(project) if callable(item) else item for item in extra]
        return ["fit", "--config", str(DIGITS / config), *SHORT, *resolved]

    return args


def file_in_project(name: str, content: str | bytes) -> object:
    """Make ``name`` in the project with ``content``; the argument is its path."""

    def make(project: Path) -> str:
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return str(path)

    return make


def teacher_copied_as(project: Path, folder: str) -> str:
    """``<folder>/student.safetensors``: the shipped CNN teacher's weights under a student export's name."""
    (project / folder).mkdir()
    shutil.copy(project / TEACHER, project / folder / "student.safetensors")
    return str(project / folder)


def student_alone_report(project: Path) -> str:
    row = {"name": "network", "role": "student", "parameters": 2410, "acc": 0.9}
    return write(
        project,
        "alone.json",
        json.dumps({"networks": [row], "measurement": {"threads": 1}}),
    )


CLI_MISTAKES = [
    CliMistake(
        "ExportWeights copy_to onto the teacher the run reads",
        run("offline_kd.yaml", callback("kd_lightning.ExportWeights", path="out/student.safetensors", copy_to=TEACHER)),
        ("ExportWeights.copy_to", "teacher_weights", "which this run reads", "another file"),
        1,
    ),
    CliMistake(
        "ExportWeights path onto the weights a shallow student is built from",
        run("shallow_kd.yaml", callback("kd_lightning.ExportWeights", path=TEACHER)),
        ("ExportWeights.path", "this run reads", "another file"),
        1,
    ),
    CliMistake(
        "a baseline MLP exported over the shipped CNN teacher",
        run("baseline.yaml", callback("kd_lightning.ExportWeights", path=TEACHER)),
        ("ExportWeights.path", "another architecture", "tensors there vs", "another file"),
        1,
    ),
    CliMistake(
        "ExportWeights onto a text file",
        run(
            "baseline.yaml",
            lambda p: callback("kd_lightning.ExportWeights", path=file_in_project("notes.txt", "my notes\n")(p)),
        ),
        ("ExportWeights.path", "is not a weights file", "another file"),
        1,
    ),
    CliMistake(
        "ExportWeights onto a folder",
        run("baseline.yaml", lambda p: callback("kd_lightning.ExportWeights", path=str(p / "checkpoints"))),
        ("ExportWeights.path", "is a folder", "path of a file"),
        1,
    ),
    CliMistake(
        "two exports onto one file",
        run(
            "baseline.yaml",
            callback("kd_lightning.ExportWeights", path="out/net.safetensors"),
            callback("kd_lightning.ExportStudent", dirpath="out", formats=["safetensors"]),
            callback("kd_lightning.ExportWeights", path="out/student.safetensors"),
        ),
        ("also written by", "its own file"),
        1,
    ),
    CliMistake(
        "ExportStudent into a folder holding another architecture",
        run("baseline.yaml", lambda p: callback("kd_lightning.ExportStudent", dirpath=teacher_copied_as(p, "old"))),
        ("ExportStudent (safetensors)", "another architecture"),
        1,
    ),
    CliMistake(
        "ConvertQuantized onto the teacher the run reads",
        run("qad.yaml", callback("kd_lightning.ConvertQuantized", path=TEACHER)),
        ("ConvertQuantized.path", "this run reads", "another file"),
        1,
    ),
    CliMistake(
        "ConvertQuantized onto a folder",
        run("qad.yaml", lambda p: callback("kd_lightning.ConvertQuantized", path=str(p))),
        ("ConvertQuantized.path", "is a folder", "path of a file"),
        1,
    ),
    CliMistake(
        "ConvertQuantized onto a file that is not TorchScript",
        run(
            "qat_baseline.yaml",
            lambda p: callback("kd_lightning.ConvertQuantized", path=file_in_project("int8.pt", b"not a model")(p)),
        ),
        ("ConvertQuantized.path", "is not a TorchScript file"),
        1,
    ),
    CliMistake(
        "a student-alone report of another architecture",
        run(
            "offline_kd.yaml",
            lambda p: (
                "--report.student_alone="
                + write(
                    p,
                    "wide_alone.json",
                    json.dumps(
                        {
                            "networks": [
                                {"name": "network", "role": "student", "class": "DigitsMLP", "parameters": 9999}
                            ],
                            "measurement": {"threads": 1},
                        }
                    ),
                )
            ),
        ),
        ("wide_alone.json", "this run's student architecture", "9,999"),
        None,
    ),
    CliMistake(
        "the report written over the student-alone report it compares with",
        run(
            "offline_kd.yaml",
            lambda p: f"--report.student_alone={student_alone_report(p)}",
            lambda p: f"--report.path={p / 'alone.json'}",
        ),
        ("DistillationReport.path", "the student_alone report", "another file"),
        1,
    ),
    CliMistake(
        "the report written over a config file",
        run(
            "offline_kd.yaml", lambda p: f"--report.path={file_in_project('settings.json', json.dumps({'lr': 0.1}))(p)}"
        ),
        ("DistillationReport.path", "not a distillation report"),
        1,
    ),
    CliMistake(
        "the report written over the teacher weights",
        run("offline_kd.yaml", f"--report.path={TEACHER}"),
        ("DistillationReport.path", "this run reads"),
        1,
    ),
    CliMistake(
        "ExportWeights onto the checkpoint a run resumes",
        run(
            "baseline.yaml",
            lambda p: f"--ckpt_path={earlier_run('baseline.yaml')}",
            lambda p: callback(
                "kd_lightning.ExportWeights", path=str(next(p.glob("runs/digits/baseline/**/last.ckpt")))
            ),
            "--trainer.max_epochs=2",
        ),
        ("ExportWeights.path", "is a Lightning checkpoint", "another file"),
        1,
    ),
    CliMistake(
        "test after fit with a datamodule that has no test data",
        run("baseline.yaml", "--data=bad_data.DigitsWithoutTest", "--test_after_fit=true"),
        ("test_after_fit", "no test_dataloader", "--test_after_fit=false"),
        1,
    ),
]
