"""The distillation report (a dict, see :class:`~kd_lightning.callbacks.DistillationReport`) as a rich table, a
Markdown page, a PNG plot (matplotlib's Agg backend, no display needed) and scalar metrics for the loggers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from kd_lightning.files import atomic_write
from kd_lightning.modules.deployable import key_of

Report = dict[str, Any]
NUMBERS = ("parameters", "size_bytes", "latency_ms", "throughput", "acc", "ppl", "agreement", "kl", "cosine")
"""Per-network fields that are numbers (logged as ``report/<network>/<field>``)."""
HEADLINE_NUMBERS = ("smaller", "faster", "share")
STYLES = {
    "teacher": ("s", "tab:blue"),
    "peer": ("s", "tab:cyan"),
    "student alone": ("^", "tab:orange"),
    "student": ("o", "tab:green"),
    "exit": ("D", "tab:purple"),
}
"""Marker and colour of a plot point, by the network's role."""


def size_text(size: int) -> str:
    """``414,247`` -> ``"414.2 kB"`` (decimal units, as file managers show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def rows(report: Report) -> list[tuple[str, str, Callable[[Any], str]]]:
    """``(field, label, format)`` of the table's rows."""
    batch = report["measurement"]["throughput_batch"]
    references = {net["reference"] for net in report["networks"] if net.get("reference")} - {"the teacher"}
    against = "teacher" if not references else " / ".join(sorted(ref.removeprefix("the ") for ref in references))
    return [
        ("parameters", "parameters", lambda v: f"{v:,}"),
        ("size_bytes", "size on disk (safetensors)", size_text),
        ("latency_ms", "CPU latency, batch 1", lambda v: f"{v:.3f} ms"),
        ("throughput", f"CPU throughput, batch {batch}", lambda v: f"{v:,.0f} samples/s"),
        ("acc", "test accuracy", lambda v: f"{v:.4f}"),
        ("ppl", "test perplexity", lambda v: f"{v:.4f}"),
        ("agreement", f"agreement with {against}", lambda v: f"{v:.4f}"),
        ("kl", "KL(teacher || student)", lambda v: f"{v:.4f}"),
        ("cosine", "cosine to teacher states", lambda v: f"{v:.4f}"),
    ]


def cells(report: Report) -> list[tuple[str, list[str]]]:
    """``(label, one text per network)`` for every row that at least one network has a value for."""
    networks = report["networks"]
    return [
        (label, [fmt(net[field]) if net.get(field) is not None else "-" for net in networks])
        for field, label, fmt in rows(report)
        if any(net.get(field) is not None for net in networks)
    ]


def headline_lines(report: Report) -> list[str]:
    """The headline sentences; prefixed with the two networks' names when there are several."""
    headlines = [h for h in report["headlines"] if h["text"]]
    if len(headlines) == 1:
        return [headlines[0]["text"]]
    return [f"{h['student']} vs {h['reference']}: {h['text']}" for h in headlines]


def method_note(report: Report) -> str:
    """How the numbers were measured, in one sentence."""
    m = report["measurement"]
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    return (
        f"CPU, {threads}, torch.inference_mode, real test inputs {m['input_shape']}: median time per call over up to "
        f"{m['repeats']} timed runs after up to {m['warmup']} warm-up calls, within {m['max_seconds']:g} s per "
        f"network and batch size; size: {m['size']}."
    )


def rich_table(report: Report) -> Table:
    """The report as a rich table: one column per network, the headline(s) and the method as its caption."""
    caption = "\n".join([*headline_lines(report), method_note(report)])
    table = Table(title="kd_lightning report", caption=caption, caption_justify="left")
    table.add_column("")
    for network in report["networks"]:
        table.add_column(network["name"], justify="right")
    for label, texts in cells(report):
        table.add_row(label, *texts)
    return table


def markdown(report: Report) -> str:
    """The report as Markdown: a table, the headline(s) in bold, the method, the student-alone source."""
    names = [network["name"] for network in report["networks"]]
    lines = ["# kd_lightning report", "", f"| | {' | '.join(names)} |", f"|---|{'---:|' * len(names)}"]
    lines += [f"| {label} | {' | '.join(texts)} |" for label, texts in cells(report)]
    lines += ["", *[f"**{line}**" for line in headline_lines(report)], "", method_note(report)]
    source = next((net.get("source") for net in report["networks"] if net.get("source")), None)
    if source:
        lines += ["", f"The student alone: `{source}`."]
    return "\n".join(lines) + "\n"


def logged_metrics(report: Report) -> dict[str, float]:
    """Scalars for the loggers: ``report/<network>/<field>`` and ``report/<student>_vs_<reference>/<ratio>``."""
    metrics = {
        f"report/{key_of(net['name'])}/{field}": float(net[field])
        for net in report["networks"]
        for field in NUMBERS
        if net.get(field) is not None
    }
    for h in report["headlines"]:
        pair = f"{key_of(h['student'])}_vs_{key_of(h['reference'])}"
        metrics.update({f"report/{pair}/{k}": float(h[k]) for k in HEADLINE_NUMBERS if h.get(k) is not None})
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def figure(report: Report) -> Any:
    """A matplotlib ``Figure`` (Agg canvas) with two panels: test accuracy against parameters and against CPU latency
    at batch 1, log x axes, one labelled point per network that has a test accuracy.

    Raises:
        ValueError: when no network has a test accuracy (nothing to plot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    points = [net for net in report["networks"] if net.get("acc") is not None]
    if not points:
        raise ValueError("expected a test accuracy to plot but no network has one (test/acc was not logged)")
    drawing = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(drawing)
    panels = drawing.subplots(1, 2, sharey=True)
    for axis, field, xlabel in (
        (panels[0], "parameters", "parameters"),
        (panels[1], "latency_ms", "CPU latency at batch 1 (ms)"),
    ):
        drawn = [net for net in points if net.get(field)]
        for index, net in enumerate(drawn):
            marker, colour = STYLES.get(net["role"], ("o", "tab:gray"))
            xy = (net[field], 100 * net["acc"])
            axis.scatter(*xy, marker=marker, color=colour, s=60, zorder=3)
            offset = (7, 5 if index % 2 == 0 else -13)  # alternate, so points at one place keep readable labels
            axis.annotate(net["name"], xy, textcoords="offset points", xytext=offset, fontsize=9)
        if drawn:
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.margins(x=0.25, y=0.15)
        axis.set_xlabel(xlabel)
        axis.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("test accuracy (%)")
    drawing.suptitle("\n".join(headline_lines(report)) or "kd_lightning report", fontsize=10)
    return drawing


def plot(report: Report, path: str | Path) -> Path:
    """Write :func:`figure` as a PNG file (atomically); a ``ValueError`` when there is nothing to plot."""
    drawing = figure(report)
    return atomic_write(path, lambda temporary: drawing.savefig(temporary, format="png", dpi=110))
