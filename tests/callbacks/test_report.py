"""The distillation report: real tiny runs of every mode, the files it writes, what the loggers get, the CLI."""

from __future__ import annotations

import csv
import functools
import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CONFIGS, TEACHER_WEIGHTS, fast_trainer_kwargs
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.utils.data import DataLoader

from kd_lightning import (
    BYOTExits,
    Classifier,
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    DistillTerm,
    OfflineDistillation,
    OnlineDistillation,
    SelfDistillation,
)
from kd_lightning.callbacks import DistillationReport, measure_network, report_render
from kd_lightning.callbacks.report.headline import headline
from kd_lightning.callbacks.report.measure import batch_of
from kd_lightning.cli import build_cli
from kd_lightning.losses import ForwardKLLoss, HiddenCosineLoss

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
PNG = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"
TIMES = "\u00d7"
TIMINGS = ("latency_ms", "throughput")


def run(module: L.LightningModule, root: Path, report: DistillationReport, logger: bool = False) -> L.Trainer:
    """A real tiny fit (3 steps) and test (2 batches of 64) with ``report`` as a callback, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kwargs = fast_trainer_kwargs(root, max_steps=3, limit_val_batches=1, callbacks=[report])
        if logger:
            kwargs["logger"] = CSVLogger(root, name="logs")
        trainer = L.Trainer(**kwargs)
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
        trainer.test(module, datamodule=DigitsDataModule(batch_size=64), verbose=False)
    finally:
        torch.set_num_threads(threads)
    return trainer


def read(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "report.json").read_text())


def rows(report: dict) -> dict[str, dict]:
    return {row["name"]: row for row in report["networks"]}


def svg_texts(path: Path) -> list[str]:
    """The strings of every ``<text>`` element of an SVG file (it must parse as XML)."""
    return ["".join(element.itertext()).strip() for element in ET.parse(path).getroot().iter(f"{SVG}text")]


def tick_labels(axis) -> set[str]:
    """The texts of the major tick labels that a drawn matplotlib axis shows (inside its view)."""
    low, high = sorted(axis.get_view_interval())
    return {
        tick.label1.get_text()
        for tick, location in zip(axis.get_major_ticks(), axis.get_majorticklocs(), strict=False)
        if low <= location <= high
    }


def assert_sane(row: dict) -> None:
    assert isinstance(row["parameters"], int) and row["parameters"] > 0, row
    assert row["size_bytes"] > 4 * row["parameters"], "float32 weights plus the safetensors header"
    assert all(row[key] > 0 for key in TIMINGS), row
    assert row["acc"] is None or 0 <= row["acc"] <= 1, row


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The student alone (a Classifier), with no logger: the report goes to the trainer's default_root_dir."""
    root = tmp_path_factory.mktemp("baseline")
    torch.manual_seed(0)
    trainer = run(Classifier(DigitsMLP(hidden=(32,))), root, DistillationReport(verbose=False))
    return root, trainer


@pytest.fixture(scope="module")
def offline(baseline, tmp_path_factory):
    """Offline KD from the shipped teacher, logged to a CSVLogger, with the baseline as the student alone."""
    root = tmp_path_factory.mktemp("offline")
    torch.manual_seed(0)
    module = OfflineDistillation(
        student=DigitsMLP(hidden=(32,)), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, optimizer=SGD
    )
    report = DistillationReport(verbose=False, student_alone=str(baseline[0] / "report.json"))
    trainer = run(module, root, report, logger=True)
    return module, trainer, report


# ----------------------------------------------------------------- offline distillation: numbers, files, loggers
def test_offline_report_has_every_field_with_sane_values(offline):
    module, trainer, callback = offline
    report = read(trainer.log_dir)
    assert report == json.loads(json.dumps(callback.summary))
    networks = rows(report)
    assert list(networks) == ["teacher", "student alone", "student"]
    for row in networks.values():
        assert_sane(row)
    teacher, student = networks["teacher"], networks["student"]
    assert (teacher["parameters"], student["parameters"]) == (103466, 2410)
    assert report["teacher_params"] == 103466 and report["student_params"] == 2410
    assert teacher["size_bytes"] > student["size_bytes"]  # latencies: measured, not compared (a loaded CPU)
    assert teacher["latency_ms"] > 0 and student["latency_ms"] > 0
    for name, network in (("teacher", module.teacher.network), ("student", module.student)):
        state = {key: value.contiguous() for key, value in network.state_dict().items()}
        assert networks[name]["size_bytes"] == len(safetensors_bytes(state)), "exactly the safetensors file"
    metrics = trainer.callback_metrics
    assert student["acc"] == pytest.approx(float(metrics["test/acc"])) == report["test/acc"]
    assert teacher["acc"] == pytest.approx(float(metrics["test/teacher_acc"]))
    assert student["agreement"] == pytest.approx(float(metrics["test/agreement"]))
    assert student["kl"] == pytest.approx(float(metrics["test/kl"]))
    measurement = report["measurement"]
    assert measurement["threads"] == 1 and measurement["throughput_batch"] == 64
    assert measurement["input_shape"] == [1, 1, 8, 8] and "safetensors" in measurement["size"]
    assert student["latency_runs"] >= 1 and student["throughput_runs"] >= 1


def test_headline_numbers_follow_from_the_measured_ones(offline):
    _, trainer, _ = offline
    report = read(trainer.log_dir)
    teacher, student = rows(report)["teacher"], rows(report)["student"]
    smaller = teacher["parameters"] / student["parameters"]
    faster = teacher["latency_ms"] / student["latency_ms"]
    share = 100 * student["acc"] / teacher["acc"]
    (line,) = report["headlines"]
    assert (line["student"], line["reference"], line["quality"]) == ("student", "teacher", "accuracy")
    assert line["smaller"] == pytest.approx(smaller) and line["faster"] == pytest.approx(faster)
    assert line["share"] == pytest.approx(share)
    expected = f"{smaller:,.1f}{TIMES} smaller, {faster:,.1f}{TIMES} faster, {share:.1f}% of the teacher's accuracy"
    assert report["headline"] == line["text"] == expected


def test_markdown_and_the_figure_in_three_formats_are_written_to_the_run_directory(offline):
    _, trainer, callback = offline
    directory = Path(trainer.log_dir)
    names = ["report.json", "report.md", "report.png", "report.pdf", "report.svg"]
    assert [path.name for path in callback.written] == names
    markdown = (directory / "report.md").read_text()
    assert "| | teacher | student alone | student |" in markdown
    assert "| parameters | 103,466 | 2,410 | 2,410 |" in markdown
    assert "| KL(teacher \\|\\| student) | - | - | " in markdown, "a pipe in a cell is escaped"
    assert f"**{read(directory)['headline']}**" in markdown and "1 thread" in markdown
    png = (directory / "report.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000
    width, height = struct.unpack(">II", png[16:24])
    assert width == round(report_render.COLUMN_WIDTH * report_render.PNG_DPI) == 1020, "one paper column at 300 dpi"
    assert height == round(report_render.FIGURE_HEIGHT * report_render.PNG_DPI)
    pdf = (directory / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF") and b"/Type3" not in pdf
    texts = svg_texts(directory / "report.svg")
    assert {"parameters", "CPU latency at batch 1 (ms)", "test accuracy (%, higher is better)"} <= set(texts)
    assert {"teacher", "student alone", "student"} <= set(texts)
    drawing = report_render.figure(read(directory))
    drawing.canvas.draw()
    for axis in drawing.axes:
        assert tick_labels(axis.xaxis) <= set(texts) and tick_labels(axis.yaxis) <= set(texts)


def test_the_student_alone_is_a_row_and_a_plot_point(offline, baseline):
    _, trainer, _ = offline
    report = read(trainer.log_dir)
    alone, source = rows(report)["student alone"], rows(read(baseline[0]))["network"]
    assert alone["role"] == "student alone" and alone["source"] == str(baseline[0] / "report.json")
    for key in ("class", "parameters", "acc"):
        assert alone[key] == source[key]
    student = rows(report)["student"]
    for key in ("size_bytes", *TIMINGS, "latency_runs", "throughput_runs"):
        assert alone[key] == student[key], "measured in this run, on this run's student"
    assert alone["cost_measured_here"] is True and alone["cost_measured_on"] == "student" and alone["threads"] == 1
    drawing = report_render.figure(report)
    for axis in drawing.axes:
        assert [text.get_text() for text in axis.texts] == ["teacher", "student alone", "student"]
        assert len(axis.collections) == 3 and axis.get_xscale() == "log"
        points = [tuple(collection.get_offsets()[0]) for collection in axis.collections]
        assert points[1][1] == pytest.approx(100 * alone["acc"])


def test_every_axis_of_the_figure_has_tick_labels_even_on_a_narrow_log_range(offline):
    _, trainer, _ = offline
    report = read(trainer.log_dir)
    narrow = json.loads(json.dumps(report))
    for row, latency, parameters in zip(narrow["networks"], (0.0362, 0.0301, 0.0305), (2500, 2410, 2410), strict=True):
        row.update(latency_ms=latency, parameters=parameters)  # a range matplotlib's log locator leaves unlabelled
    for drawn in (report, narrow):
        drawing = report_render.figure(drawn)
        drawing.canvas.draw()
        assert [axis.get_xscale() for axis in drawing.axes] == ["log", "log"]
        for axis in drawing.axes:
            for ticks in (axis.xaxis, axis.yaxis):
                labels = tick_labels(ticks)
                assert len(labels) >= 2 and all(labels), (axis.get_xlabel(), labels)
            low, high = axis.get_xlim()
            assert all(
                low <= float(text.rstrip("k")) * (1e3 if text.endswith("k") else 1) <= high
                for text in tick_labels(axis.xaxis)
            )


def test_loggers_receive_the_report_once(offline):
    _, trainer, _ = offline
    with open(Path(trainer.log_dir) / "metrics.csv") as file:
        logged = [row for row in csv.DictReader(file) if row.get("report/teacher/parameters")]
    assert len(logged) == 1
    (row,) = logged
    report = read(trainer.log_dir)
    assert float(row["report/teacher/parameters"]) == 103466 and float(row["report/student_alone/parameters"]) == 2410
    assert float(row["report/student/latency_ms"]) == pytest.approx(rows(report)["student"]["latency_ms"])
    assert float(row["report/student_vs_teacher/smaller"]) == pytest.approx(report["headlines"][0]["smaller"])
    assert float(row["report/student_vs_teacher/share"]) == pytest.approx(report["headlines"][0]["share"])


def student_alone_file(baseline, tmp_path: Path, **changes) -> Path:
    """A copy of the baseline's report.json with its network's row changed."""
    report = read(baseline[0])
    row = report["networks"][0]
    row.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del row[key]
    path = tmp_path / "alone" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    return path


def offline_digits(hidden: tuple[int, ...] = (32,)) -> OfflineDistillation:
    torch.manual_seed(0)
    student, teacher = DigitsMLP(hidden=hidden), DigitsCNN(width=32)
    return OfflineDistillation(student=student, teacher=teacher, teacher_weights=TEACHER_WEIGHTS, optimizer=SGD)


def test_the_student_alone_latency_is_measured_in_this_run_not_copied(baseline, tmp_path):
    absurd = dict(latency_ms=1e6, throughput=1e-6, size_bytes=1, latency_runs=99, throughput_runs=99)
    path = student_alone_file(baseline, tmp_path, **absurd, acc=0.5, ppl=None, **{"class": None})  # an older row
    callback = DistillationReport(verbose=False, student_alone=str(path))
    trainer = run(offline_digits(), tmp_path, callback)
    report = read(tmp_path)
    alone, student = rows(report)["student alone"], rows(report)["student"]
    assert alone["acc"] == 0.5 and alone["class"] is None, "the quality comes from the file"
    assert alone["latency_ms"] == student["latency_ms"] < 1e3 and alone["throughput"] == student["throughput"] > 1
    assert alone["size_bytes"] == student["size_bytes"] > 1 and alone["latency_runs"] == student["latency_runs"]
    assert alone["cost_measured_here"] is True and trainer.global_step == 3
    markdown = (tmp_path / "report.md").read_text()
    assert f"test metrics from `{path}`; size, latency and throughput measured in this run" in markdown
    assert "1,000,000" not in markdown and "1000000" not in markdown
    latency_panel = report_render.figure(report).axes[1]
    points = [tuple(collection.get_offsets()[0]) for collection in latency_panel.collections]
    assert points[1] == pytest.approx((student["latency_ms"], 50.0))


@pytest.mark.parametrize("changes", [{"parameters": 1210}, {"class": "DigitsCNN"}], ids=["parameters", "class"])
def test_a_student_alone_of_another_architecture_is_refused_before_the_first_step(baseline, tmp_path, changes):
    path = student_alone_file(baseline, tmp_path, **changes)
    callback = DistillationReport(verbose=False, student_alone=str(path))
    trainer = L.Trainer(**fast_trainer_kwargs(tmp_path, max_steps=3, callbacks=[callback]))
    expected = rf"expected student_alone '{path}' to report this run's student architecture \(DigitsMLP with 2,410"
    expected += r".*trained this run's student network alone.*baseline\.yaml.*or to null\.$"
    with pytest.raises(ValueError, match=expected) as error:
        trainer.fit(offline_digits(), datamodule=DigitsDataModule(batch_size=64))
    assert trainer.global_step == 0 and not (tmp_path / "report.json").exists()
    assert str(error.value).count("expected") == 1, "one message: the file, both architectures, the fix"


# ----------------------------------------------------------------- language models and encoders
VOCAB = 50


class TokenSequences(torch.utils.data.Dataset):
    """Eight fixed token sequences (causal-LM labels, or no labels for an encoder)."""

    def __init__(self, labels: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for length in (5, 12, 7, 3, 10, 6, 12, 4):
            ids = torch.randint(5, VOCAB, (length,), generator=generator)
            self.items.append({"input_ids": ids, **({"labels": ids.clone()} if labels else {})})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def text_run(task: str, tmp_path: Path) -> tuple[dict, Path]:
    """A tiny random GPT-2 language model (``causal_lm``) or BERT encoder (``base``: hidden states, no logits)
    distilled for 2 steps and tested with the report; returns the report and its folder."""
    pytest.importorskip("transformers")
    from kd_lightning.data.text import TokenCollator
    from kd_lightning.models.text import model_from_config

    kind = "gpt2" if task == "causal_lm" else "bert"
    sizes = dict(vocab_size=VOCAB, num_heads=2, max_positions=32, dropout=0.0, hidden_size=16)
    teacher = model_from_config(kind, task, num_layers=2, seed=0, **sizes)
    student = model_from_config(kind, task, num_layers=1, seed=1, **sizes)
    loss = ForwardKLLoss() if task == "causal_lm" else HiddenCosineLoss()
    module = OfflineDistillation(
        student,
        teacher,
        terms=[DistillTerm(loss)],
        ce_weight=1.0 if task == "causal_lm" else 0.0,
        num_classes=VOCAB,
        optimizer=SGD,
        allow_untrained_teacher=True,
    )
    loader = DataLoader(TokenSequences(task == "causal_lm"), batch_size=4, collate_fn=TokenCollator(pad_token_id=0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        callback = DistillationReport(verbose=False, max_seconds=0.05)
        trainer = L.Trainer(**fast_trainer_kwargs(tmp_path, max_steps=2, limit_val_batches=1, callbacks=[callback]))
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
        trainer.test(module, dataloaders=loader, verbose=False)
    finally:
        torch.set_num_threads(threads)
    return read(tmp_path), tmp_path


def test_a_language_model_figure_plots_perplexity_lower_is_better(tmp_path):
    report, directory = text_run("causal_lm", tmp_path)
    teacher, student = rows(report)["teacher"], rows(report)["student"]
    assert student["ppl"] > 1 and student["acc"] is not None, "token accuracy is logged, perplexity is plotted"
    drawing = report_render.figure(report)
    drawing.canvas.draw()
    for axis in drawing.axes:
        assert axis.get_ylabel() == "test perplexity (lower is better)"
        assert tick_labels(axis.xaxis) and tick_labels(axis.yaxis)
        points = sorted(tuple(collection.get_offsets()[0])[1] for collection in axis.collections)
        assert points == pytest.approx(sorted([student["ppl"], teacher["ppl"]])), "perplexities, not token accuracy"
        assert sorted(text.get_text() for text in axis.texts) == ["student", "teacher"]
    assert teacher["ppl"] > 1, "the teacher's perplexity is measured in the run (test/teacher_ppl)"
    assert "test perplexity (lower is better)" in svg_texts(directory / "report.svg")
    assert (directory / "report.pdf").read_bytes().startswith(b"%PDF")


def test_an_encoder_run_gets_a_figure_of_its_cosine_to_the_teacher(tmp_path):
    report, directory = text_run("base", tmp_path)
    student = rows(report)["student"]
    assert student["acc"] is None and student["ppl"] is None and 0 < student["cosine"] <= 1
    drawing = report_render.figure(report)
    drawing.canvas.draw()
    for axis in drawing.axes:
        assert axis.get_ylabel().startswith("cosine to the teacher's states")
        assert tick_labels(axis.xaxis) and tick_labels(axis.yaxis)
        ((_, y),) = [tuple(collection.get_offsets()[0]) for collection in axis.collections]
        assert y == pytest.approx(student["cosine"])
    assert (directory / "report.png").read_bytes().startswith(PNG)
    texts = svg_texts(directory / "report.svg")
    assert "student" in texts and "teacher (the reference)" in texts


# ----------------------------------------------------------------- the other modes
def test_a_classifier_has_one_column_and_no_headline(baseline):
    root, trainer = baseline
    report = read(root)  # no logger: the trainer's default_root_dir
    (network,) = report["networks"]
    assert network["name"] == "network" and network["role"] == "student" and network["parameters"] == 2410
    assert_sane(network)
    assert network["acc"] == pytest.approx(float(trainer.callback_metrics["test/acc"]))
    assert report["headlines"] == [] and report["headline"] is None and report["teacher_params"] is None
    markdown = (root / "report.md").read_text()
    assert "| | network |\n|---|---:|\n" in markdown and "**" not in markdown, "one column, no headline"
    assert (root / "report.png").read_bytes()[:8] == PNG


def test_online_reports_every_peer_against_the_deployed_student(tmp_path):
    torch.manual_seed(0)
    cohort = {"big": DigitsMLP(hidden=(64,)), "mid": DigitsMLP(hidden=(24,)), "student": DigitsMLP(hidden=(16,))}
    module = OnlineDistillation(peers=cohort, mutual=True, optimizer=SGD)
    trainer = run(module, tmp_path, DistillationReport(verbose=False))
    report = read(tmp_path)
    networks = rows(report)
    assert list(networks) == ["big", "mid", "student"]
    assert [row["role"] for row in networks.values()] == ["peer", "peer", "student"]
    for name, row in networks.items():
        assert_sane(row)
        assert row["parameters"] == sum(p.numel() for p in cohort[name].parameters())
        assert row["acc"] == pytest.approx(float(trainer.callback_metrics[f"test/acc_{name}"]))
    assert networks["student"]["agreement"] is not None and networks["student"]["reference"] == "the other peers' mean"
    assert [(h["student"], h["reference"]) for h in report["headlines"]] == [("student", "big"), ("student", "mid")]
    assert report["headlines"][0]["smaller"] == pytest.approx(networks["big"]["parameters"] / 1210)
    assert "agreement with other peers' mean" in (tmp_path / "report.md").read_text()


def test_byot_reports_every_exit_network(tmp_path):
    torch.manual_seed(0)
    module = SelfDistillation(DigitsCNN(width=8, dropout=0.0), exits=BYOTExits(["layer1", "layer2"]), optimizer=SGD)
    trainer = run(module, tmp_path, DistillationReport(verbose=False))
    report = read(tmp_path)
    networks = rows(report)
    assert list(networks) == ["full network", "exit layer1", "exit layer2"]
    summary = {row["exit"]: row for row in module.exit_summary()}
    for name, layer in (("full network", "full network"), ("exit layer1", "layer1"), ("exit layer2", "layer2")):
        assert_sane(networks[name])
        assert networks[name]["parameters"] == summary[layer]["parameters"]
        assert networks[name]["acc"] == pytest.approx(summary[layer]["test acc"])
    assert networks["exit layer1"]["acc"] == pytest.approx(float(trainer.callback_metrics["test/acc_exit_layer1"]))
    lines = report["headlines"]
    pairs = [(h["student"], h["reference"]) for h in lines]
    assert pairs == [("exit layer1", "full network"), ("exit layer2", "full network")]
    assert lines[0]["smaller"] == pytest.approx(6866 / summary["layer1"]["parameters"])
    assert "of the full network's accuracy" in lines[0]["text"]


# ----------------------------------------------------------------- arguments, failures, measurement
@pytest.mark.parametrize(
    "kwargs", [{"threads": 0}, {"repeats": 0}, {"warmup": -1}, {"max_seconds": 0}, {"throughput_batch": 0}]
)
def test_bad_arguments_fail_when_the_callback_is_built(kwargs):
    with pytest.raises(ValueError, match=f"expected {next(iter(kwargs))}"):
        DistillationReport(**kwargs)


def test_a_missing_or_foreign_student_alone_is_a_clear_error_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"expected student_alone .*missing\.json.*baseline\.yaml"):
        DistillationReport(student_alone=str(tmp_path / "missing.json"))
    (tmp_path / "garbage.json").write_text("<html>")
    with pytest.raises(ValueError, match="expected student_alone to be JSON"):
        DistillationReport(student_alone=str(tmp_path / "garbage.json"))
    (tmp_path / "old.json").write_text(json.dumps({"student_params": 2410, "test/acc": 0.9}))
    with pytest.raises(ValueError, match="written by DistillationReport"):
        DistillationReport(student_alone=str(tmp_path / "old.json"))


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    def broken(report):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report_render, "figure", broken)
    trainer = L.Trainer(**fast_trainer_kwargs(tmp_path, limit_test_batches=1, callbacks=[DistillationReport()]))
    with pytest.warns(UserWarning, match="plot .* was not drawn.*no fonts"):
        trainer.test(Classifier(DigitsMLP()), datamodule=DigitsDataModule(), verbose=False)
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.md").is_file()
    assert not (tmp_path / "report.png").exists()


def test_measurement_sets_and_restores_the_threads_and_repeats_token_batches():
    seen = []

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 50)

        def forward(self, input_ids, attention_mask):
            seen.append((torch.get_num_threads(), tuple(input_ids.shape), tuple(attention_mask.shape)))
            return self.head(self.embed(input_ids) * attention_mask[..., None])

    inputs = {"input_ids": torch.randint(0, 50, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = measure_network(TinyLM(), inputs, threads=1, repeats=3)
        assert torch.get_num_threads() == 2, "restored afterwards"
    finally:
        torch.set_num_threads(threads)
    assert {count for count, _, _ in seen} == {1}
    assert {(ids, mask) for _, ids, mask in seen} == {((1, 7), (1, 7)), ((64, 7), (64, 7))}
    assert result["latency_ms"] > 0 and result["throughput"] > 0 and result["size_bytes"] > 4 * (50 * 8 + 8 * 50 + 50)
    assert torch.equal(batch_of(inputs, 64)["input_ids"][3], inputs["input_ids"][0])


def test_headline_without_accuracy_says_what_it_uses_instead():
    student = {"name": "student", "role": "student", "parameters": 10, "latency_ms": 2.0, "reference": "the teacher"}
    teacher = {"name": "teacher", "role": "teacher", "parameters": 100, "latency_ms": 1.0, "acc": None}
    cosine = headline({**student, "cosine": 0.9, "agreement": 0.8}, teacher)
    assert cosine["text"] == f"10.0{TIMES} smaller, 2.0{TIMES} slower, cosine 0.900 to the teacher's hidden states"
    agreement = headline({**student, "agreement": 0.75, "ppl": 9.0}, teacher)
    assert (agreement["quality"], agreement["share"]) == ("agreement", 75.0)
    assert agreement["text"].endswith("75.0% agreement with the teacher")
    perplexity = headline({**student, "ppl": 12.345}, teacher)
    assert perplexity["quality"] == "perplexity" and "test perplexity 12.35" in perplexity["text"]


# ----------------------------------------------------------------- the CLI
def test_cli_writes_the_report_into_the_run_log_directory(in_project_copy):
    arguments = ["fit", "--config", str(CONFIGS / "digits/offline_kd.yaml"), "--trainer.max_steps=2"]
    arguments += ["--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--report.verbose=false"]
    cli = build_cli(arguments)
    directory = Path(cli.trainer.log_dir).resolve()
    assert directory == in_project_copy.resolve() / "runs/digits/offline_kd/lightning_logs/version_0"
    report = read(directory)
    assert list(rows(report)) == ["teacher", "student"] and report["headline"].count(TIMES) == 2
    assert (directory / "report.md").read_text().startswith("# kd_lightning report")
    assert (directory / "report.png").read_bytes().startswith(PNG)
