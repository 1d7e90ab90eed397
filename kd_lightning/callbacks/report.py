"""``DistillationReport``: after testing, print teacher and student size, test accuracy and agreement."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from kd_lightning.teacher import count_parameters

ROWS = (
    ("test/acc", "test accuracy"),
    ("test/ppl", "test perplexity"),
    ("test/agreement", "agreement with teacher"),
    ("test/kl", "KL(teacher || student)"),
    ("test/cosine", "cosine to teacher states"),
)


def summarize(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float | int | None]:
    """Parameter counts and test metrics of a finished test run, as plain numbers."""
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
    teacher = getattr(pl_module, "teacher", None)
    return {
        "student_params": count_parameters(pl_module.student),
        "teacher_params": count_parameters(teacher) if teacher is not None else None,
        **metrics,
    }


class DistillationReport(L.Callback):
    """Print (and optionally save as JSON) a table of teacher/student parameters, test accuracy and agreement.

    Args:
        path: also write the numbers as JSON to this file (``None``: print only).
        verbose: print the table.
    """

    def __init__(self, path: str | None = None, verbose: bool = True) -> None:
        self.path = path
        self.verbose = verbose
        self.summary: dict[str, float | int | None] = {}

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary = summarize(trainer, pl_module)
        if self.verbose:
            Console().print(self.table(self.summary))
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps(self.summary, indent=2))

    @staticmethod
    def table(summary: dict[str, float | int | None]) -> Table:
        table = Table(title="kd_lightning report")
        has_teacher = summary.get("teacher_params") is not None
        table.add_column("")
        if has_teacher:
            table.add_column("teacher", justify="right")
        table.add_column("student" if has_teacher else "network", justify="right")

        def row(label: str, teacher: str | None, student: str) -> None:
            table.add_row(label, *([teacher or "-"] if has_teacher else []), student)

        teacher_params = summary.get("teacher_params")
        row("parameters", f"{teacher_params:,}" if teacher_params else None, f"{summary['student_params']:,}")
        teacher_acc = summary.get("test/teacher_acc")
        for key, label in ROWS:
            if key in summary:
                other = f"{teacher_acc:.4f}" if key == "test/acc" and teacher_acc is not None else None
                row(label, other, f"{summary[key]:.4f}")
        return table
