"""``DistillationReport``: at the end of test, teacher and student side by side — the evidence for deploying one.

For every network of the run (the module's :meth:`~kd_lightning.modules.DistillationModule.deployables`: teacher and
student, every peer,
every early exit) it gathers the parameters, the size on disk and the CPU latency and throughput
(:func:`~kd_lightning.callbacks.report.measure.measure_network`) and the test metrics the module logged, then adds the
headline (:mod:`~kd_lightning.callbacks.report.headline`) and renders it all
(:mod:`~kd_lightning.callbacks.report.render`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from rich.console import Console

from kd_lightning.callbacks.outputs import PlannedOutput, check_run_outputs
from kd_lightning.callbacks.report import render as report_render
from kd_lightning.callbacks.report.headline import headline
from kd_lightning.callbacks.report.measure import SIZE_METHOD, batch_of, cpu_inputs, measure_network
from kd_lightning.core.batch import Inputs, parse_parts
from kd_lightning.core.networks import count_parameters
from kd_lightning.files import atomic_write
from kd_lightning.files.outputs import is_report

FIELDS = ("acc", "ppl", "agreement", "kl", "cosine")
"""Test metrics of a network in the report (``None`` where they do not apply)."""
BASELINE_FIELDS = ("class", "parameters", "acc", "ppl")
"""What the ``student_alone`` report supplies: its architecture (checked against this run's student) and its quality."""
COST_FIELDS = ("size_bytes", "latency_ms", "throughput", "latency_runs", "throughput_runs")
"""What the "student alone" row takes from this run's student, measured here (never from the other run's file)."""
FILES = ("report.json", "report.md", "report.png")
FIGURE_FILES = ("report.png", "report.pdf", "report.svg")
"""The figure, one basename, three formats (:func:`~kd_lightning.callbacks.report.render.write_figures`)."""
STUDENT_ALONE_FIX = (
    "set student_alone to the report.json that a run of the student alone wrote into its log directory (e.g. "
    "runs/digits/baseline/lightning_logs/version_0/report.json after `kd-lightning fit --config "
    "configs/digits/baseline.yaml`), or to null"
)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def read_student_alone(path: str) -> dict[str, Any]:
    """The deployed network's row of another run's ``report.json``: its class, parameters, test accuracy and
    perplexity (any report this callback ever wrote: older files hold more, which is not read). Its size, latency and
    throughput are not taken: the report measures them in its own run (:func:`student_alone_row`).

    Raises:
        ValueError: the file is missing, unreadable, not JSON or not written by :class:`DistillationReport`.
    """
    try:
        report = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(
            f"expected student_alone to be a readable report.json but got {path!r}: {error.strerror or error}; "
            f"{STUDENT_ALONE_FIX}."
        ) from None
    except ValueError as error:
        raise ValueError(
            f"expected student_alone to be JSON but {path!r} is not ({error}); {STUDENT_ALONE_FIX}."
        ) from None
    networks = report.get("networks") if isinstance(report, dict) else None
    row = next((n for n in networks or [] if isinstance(n, dict) and n.get("role") == "student"), None)
    if row is None or not isinstance(row.get("parameters"), int):
        raise ValueError(
            f"expected student_alone to be a report.json written by DistillationReport (a 'networks' list with the "
            f"student's row) but {path!r} has none; {STUDENT_ALONE_FIX}."
        )
    values = {key: row.get(key) for key in BASELINE_FIELDS}
    return {"name": "student alone", "role": "student alone", **values, "source": str(path)}


def check_student_alone(baseline: dict[str, Any], network_class: str | None, parameters: int) -> None:
    """Refuse a ``student_alone`` report of another architecture than this run's student (its class, when the report
    records one, and its parameter count): its latency is measured here, on this run's student.

    Raises:
        ValueError: naming the file, both architectures and the fix.
    """
    recorded = baseline.get("class")
    same_class = recorded is None or network_class is None or recorded == network_class
    if same_class and baseline["parameters"] == parameters:
        return
    theirs = f"{recorded or 'a network'} with {baseline['parameters']:,} parameters"
    raise ValueError(
        f"expected student_alone {baseline['source']!r} to report this run's student architecture ({network_class} "
        f"with {parameters:,} parameters) but it reports {theirs}: the report measures the student alone's latency "
        f"here, on this run's student, so both must be the same network; set student_alone to the report.json of a "
        f"run that trained this run's student network alone (e.g. runs/digits/baseline/lightning_logs/version_0/"
        f"report.json after `kd-lightning fit --config configs/digits/baseline.yaml` with the same student), or to "
        f"null."
    )


def student_alone_row(baseline: dict[str, Any], student: dict[str, Any], threads: int) -> dict[str, Any]:
    """The "student alone" row: the quality from the other run's report (``baseline``), the cost (size, latency,
    throughput) measured in this run on this run's student — the same architecture (:func:`check_student_alone`),
    the same inputs and threads, one measurement for both columns, so the two differ only in what training made of
    the weights (two timings of one network would differ by noise alone). ``cost_measured_here`` and
    ``cost_measured_on`` (the student's name) say so in ``report.json``; ``threads`` are this run's.
    """
    row = {key: baseline[key] for key in ("name", "role", "class", "parameters")}
    row.update({key: student.get(key) for key in COST_FIELDS})
    row.update(acc=baseline.get("acc"), ppl=baseline.get("ppl"), source=baseline["source"], threads=threads)
    row.update(cost_measured_here=True, cost_measured_on=student["name"])
    return row


class DistillationReport(L.Callback):
    """At the end of test: parameters, size on disk, CPU latency and throughput, test metrics and the headline
    ("N\u00d7 smaller, M\u00d7 faster, P% of the teacher's accuracy") of every network of the run, side by side.

    The report is printed as a table, logged once to the trainer's loggers (``report/<network>/<field>``, and
    ``report/<student>_vs_<reference>/{smaller,faster,share}``), and written to the run directory
    (``trainer.log_dir``, or ``default_root_dir`` without a logger) as ``report.json``, ``report.md`` and a figure for
    a paper, ``report.png`` (3.4 in wide, one column, 300 dpi), ``report.pdf`` and ``report.svg`` (vectors, text as
    text): the test quality against parameters and against latency, with labelled ticks — perplexity for a language
    model (lower is better), accuracy for a classifier, cosine to the teacher's states for an encoder
    (:func:`~kd_lightning.callbacks.report.render.figure`). It runs on rank 0 only. Timings are taken on
    the CPU on real inputs (the first test batch: one sample for latency, its samples repeated to
    ``throughput_batch`` for throughput) with ``threads`` intra-op threads (the method:
    :mod:`kd_lightning.callbacks.report.measure`). A plot that cannot be drawn (a model without test accuracy has no
    plot), or a network that cannot be timed, is a warning, never a failed run. Every size and timing is measured in
    this run, the student alone's included.

    ``report.json`` holds ``networks`` (one row per network: ``name``, ``role``, ``class``, ``parameters``,
    ``size_bytes``, ``latency_ms``, ``throughput`` in samples/s, ``acc``, ``ppl``, ``agreement``, ``kl``,
    ``cosine``; the student alone's row also ``source``, the file its quality comes from, ``cost_measured_here:
    true`` and ``cost_measured_on``, the network whose measurement its cost is), ``headlines``, ``headline``,
    ``measurement`` (threads, repeats, input shape, methods), and, as before, ``student_params``, ``teacher_params``
    and every ``test/...`` metric.

    Args:
        path: also write the JSON to this file (``None``: the run directory only).
        verbose: print the table.
        student_alone: the ``report.json`` of a run of the student alone (a ``Classifier`` baseline): its network
            becomes the "student alone" row and plot point. Only its test accuracy and perplexity are taken; its
            size, latency and throughput are this run's student's, measured here (the same architecture, inputs and
            threads; ``cost_measured_here: true`` in the JSON, a note in the Markdown). Read when the callback is
            built; an architecture other than this run's student (class or parameter count) is refused at setup.
        threads: intra-op CPU threads while timing (``None``: torch's current setting); restored afterwards.
        warmup: untimed calls before timing, per network and batch size.
        repeats: timed runs per network and batch size; the median is reported.
        max_seconds: budget of warm-up and timing per network and batch size (at least one warm-up call and one
            timed run are made): bounds the cost of large networks, which then get fewer runs (``latency_runs``,
            ``throughput_runs`` in the JSON).
        throughput_batch: batch size of the throughput measurement.
    """

    def __init__(
        self,
        path: str | None = None,
        verbose: bool = True,
        student_alone: str | None = None,
        threads: int | None = 1,
        warmup: int = 3,
        repeats: int = 20,
        max_seconds: float = 1.0,
        throughput_batch: int = 64,
    ) -> None:
        for name, value, low in (("threads", threads, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"expected {name} to be an integer >= {low} but got {value!r}; set {name}: {low}.")
        if not isinstance(throughput_batch, int) or throughput_batch < 1:
            raise ValueError(f"expected throughput_batch to be an integer >= 1 but got {throughput_batch!r}.")
        if not max_seconds > 0:
            raise ValueError(f"expected max_seconds > 0 but got {max_seconds!r}; set max_seconds: 1.0.")
        if path is not None and Path(path).is_dir():
            raise ValueError(f"expected path to be a file to write but got the directory {path!r}; add a file name.")
        self.path, self.verbose, self.student_alone = path, verbose, student_alone
        self.threads, self.warmup, self.repeats, self.max_seconds = threads, warmup, repeats, max_seconds
        self.throughput_batch = throughput_batch
        self.baseline = read_student_alone(student_alone) if student_alone is not None else None
        self.summary: dict[str, Any] = {}
        self.written: list[Path] = []
        self._example: Inputs | None = None

    # ----------------------------------------------------------------- hooks
    def files_read(self) -> dict[str, str]:
        """The ``student_alone`` report this run compares with (no output may replace it)."""
        return {self.student_alone: "the student_alone report"} if self.student_alone else {}

    def planned_outputs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[PlannedOutput]:
        """``path``: the report's JSON copy (an existing file must be a distillation report)."""
        return [(self.path, "this run's report", "DistillationReport.path", is_report)] if self.path else []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before anything runs: the report's file replaces nothing good (the ``student_alone`` it reads above all),
        and the ``student_alone`` report is of this run's student architecture."""
        check_run_outputs(self, trainer, pl_module)
        student = getattr(pl_module, "student", None)
        if self.baseline is None or not isinstance(student, torch.nn.Module):
            return
        try:
            parameters = count_parameters(student)
        except ValueError:  # lazy parameters: checked on the measured row at the end of test
            return
        check_student_alone(self.baseline, type(student).__name__, parameters)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._example = None

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep a CPU copy of the first test batch's inputs: the timing inputs."""
        if self._example is None and trainer.is_global_zero:
            self._example = cpu_inputs(next(iter(parse_parts(batch).values())).inputs)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: Trainer.log_dir broadcasts
        if not trainer.is_global_zero:
            return
        if not callable(getattr(pl_module, "deployables", None)):
            rank_zero_warn(
                f"DistillationReport needs a kd_lightning module (one that answers deployables()), not "
                f"{type(pl_module).__name__}"
            )
            return
        self.summary = self.build(trainer, pl_module)
        self.publish(trainer, directory)

    # ----------------------------------------------------------------- the numbers
    def build(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The report of a finished test run as plain numbers (what ``report.json`` holds)."""
        metrics = {
            key: _finite(float(value)) for key, value in trainer.callback_metrics.items() if key.startswith("test/")
        }
        if self._example is None:
            rank_zero_warn("DistillationReport saw no test batch: sizes are reported, latency and throughput are not.")
        entries = pl_module.deployables(self._example)
        networks = [self.measured(entry, metrics) for entry in entries]
        if self.baseline is not None:
            position, student = next((i, row) for i, row in enumerate(networks) if row["role"] == "student")
            try:
                check_student_alone(self.baseline, student["class"], student["parameters"])
                networks.insert(position, student_alone_row(self.baseline, student, self.measurement()["threads"]))
            except ValueError as error:  # a report never fails a finished run (setup refuses it when it can)
                rank_zero_warn(f"the report leaves out the student alone: {error}")
        by_name = {row["name"]: row for row in networks}
        headlines = [
            headline(by_name[entry.name], by_name[other]) for entry in entries for other in entry.compared_with
        ]
        teacher = next((row for row in networks if row["role"] == "teacher"), None)
        return {
            "student_params": next(row for row in networks if row["role"] == "student")["parameters"],
            "teacher_params": teacher["parameters"] if teacher else None,
            **metrics,
            "networks": networks,
            "headlines": headlines,
            "headline": headlines[0]["text"] if headlines else None,
            "measurement": self.measurement(),
        }

    def measured(self, entry: Any, metrics: dict[str, float | None]) -> dict[str, Any]:
        """One network's row: parameters, size, timings (``None``, with a warning, if it cannot be timed), metrics."""
        network = entry.network
        row: dict[str, Any] = {"name": entry.name, "role": entry.role, "class": type(network).__name__}
        row.update(parameters=count_parameters(network), size_bytes=None, latency_ms=None, throughput=None)
        row.update(latency_runs=None, throughput_runs=None)
        try:
            settings = dict(threads=self.threads, warmup=self.warmup, repeats=self.repeats)
            settings.update(max_seconds=self.max_seconds, throughput_batch=self.throughput_batch)
            row.update(measure_network(network, self._example, **settings))
        except Exception as error:  # a report never fails a finished run: the row says what is missing
            rank_zero_warn(f"the report could not measure {entry.name!r} ({type(error).__name__}: {error})")
        row.update({name: metrics.get(entry.metrics[name]) if name in entry.metrics else None for name in FIELDS})
        row["reference"] = entry.reference
        return row

    def measurement(self) -> dict[str, Any]:
        """How the sizes and timings were taken."""
        example = None if self._example is None else batch_of(self._example, 1)
        shape = (
            {key: list(value.shape) for key, value in example.items()}
            if isinstance(example, dict)
            else (list(example.shape) if example is not None else None)
        )
        return {
            "device": "cpu",
            "threads": self.threads if self.threads is not None else torch.get_num_threads(),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "max_seconds": self.max_seconds,
            "throughput_batch": self.throughput_batch,
            "input_shape": shape,
            "latency": "median seconds per call (batch 1) under torch.inference_mode, in ms",
            "throughput": f"samples per second at batch {self.throughput_batch} (median time per call)",
            "size": SIZE_METHOD,
            "torch": torch.__version__,
        }

    # ----------------------------------------------------------------- the outputs
    def publish(self, trainer: L.Trainer, directory: Path) -> None:
        """Print the table, log the scalars once, write ``report.json``, ``report.md`` and the figure
        (``report.png``, ``report.pdf``, ``report.svg``)."""
        report = self.summary
        if self.verbose:
            Console().print(report_render.rich_table(report))
        values = report_render.logged_metrics(report)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
            logger.save()
        text = json.dumps(report, indent=2)
        json_paths = [directory / FILES[0], *([Path(self.path)] if self.path else [])]
        self.written = [atomic_write(path, lambda temporary: temporary.write_text(text)) for path in json_paths]
        markdown = report_render.markdown(report)
        self.written.append(atomic_write(directory / FILES[1], lambda temporary: temporary.write_text(markdown)))
        try:
            self.written.extend(report_render.write_figures(report, directory / FIGURE_FILES[0]))
        except Exception as error:  # cosmetic: the numbers are written already
            rank_zero_warn(f"the report's plot {directory / FILES[2]} was not drawn ({type(error).__name__}: {error})")
