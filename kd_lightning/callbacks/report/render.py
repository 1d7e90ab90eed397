"""The distillation report (a dict, see :class:`~kd_lightning.callbacks.DistillationReport`) as a rich table, a
Markdown page, a figure for a paper (PNG, PDF and SVG; matplotlib's Agg backend, no display needed) and scalar metrics
for the loggers.

The figure (:func:`figure`) is sized for one column of a two-column paper: :data:`COLUMN_WIDTH` (3.4 in) wide, fonts
of :data:`FONT_SIZE` points, two panels stacked (the quality against the parameters, then against the CPU latency at
batch 1; log x axes whose major ticks are always labelled with plain numbers, see :func:`log_ticks`).
:func:`write_figures` writes it as ``.png`` (:data:`PNG_DPI` dpi), ``.pdf`` (TrueType fonts, no Type 3) and ``.svg``
(text kept as ``<text>``, editable), one basename. The quality plotted is the first of :data:`QUALITIES` that a
network of the run has: perplexity for a language model (lower is better), accuracy for a classifier, the cosine to
the teacher's hidden states for an encoder without logits, agreement with the teacher for a label-free run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped, so ``KL(teacher || student)`` stays one cell."""
    return text.replace("|", "\\|")


def markdown(report: Report) -> str:
    """The report as Markdown: a table, the headline(s) in bold, the method, the student-alone source."""
    names = [network["name"] for network in report["networks"]]
    lines = ["# kd_lightning report", "", f"| | {' | '.join(names)} |", f"|---|{'---:|' * len(names)}"]
    lines += [f"| {cell(label)} | {' | '.join(map(cell, texts))} |" for label, texts in cells(report)]
    lines += ["", *[f"**{line}**" for line in headline_lines(report)], "", method_note(report)]
    alone = next((net for net in report["networks"] if net.get("source")), None)
    if alone and alone.get("cost_measured_here"):
        lines += [
            "",
            f"The student alone: test metrics from `{alone['source']}`; size, latency and throughput measured in this "
            f"run on the same architecture ({alone.get('class')}, {alone['parameters']:,} parameters: this run's "
            f"{alone.get('cost_measured_on', 'student')}).",
        ]
    elif alone:
        lines += ["", f"The student alone: `{alone['source']}`."]
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


COLUMN_WIDTH = 3.4
"""Width of the figure in inches: one column of a two-column paper (IEEE, ACM, NeurIPS-style single column ~3.3 in)."""
FIGURE_HEIGHT = 4.0
"""Height of the figure in inches (two stacked panels)."""
PNG_DPI = 300
"""Resolution of the PNG: 3.4 in at 300 dpi is 1020 pixels wide."""
FONT_SIZE = 7
"""Points of the axis labels and tick labels (the size of a paper's figure text); point labels are one smaller."""
FIGURE_FORMATS = ("png", "pdf", "svg")
"""The formats :func:`write_figures` writes, next to each other with one basename."""
SAVE_SETTINGS = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "kd_lightning"}
"""matplotlib settings while saving: SVG text stays ``<text>`` (editable, searchable), PDF fonts are TrueType (no
Type 3, which publishers refuse), SVG ids are reproducible."""
QUALITIES = (
    ("ppl", "test perplexity (lower is better)", 1.0),
    ("acc", "test accuracy (%, higher is better)", 100.0),
    ("cosine", "cosine to the teacher's states\n(higher is better)", 1.0),
    ("agreement", "agreement with the teacher\n(%, higher is better)", 100.0),
)
"""``(field, axis label, scale)`` of the quality a figure plots: the first one some network of the run has."""
QUALITY_NAMES = {"ppl": "perplexity", "acc": "accuracy", "cosine": "cosine", "agreement": "agreement"}
MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0), tuple(m / 10 for m in range(10, 100)))
"""Tick values per decade of a log axis, from the sparsest; :func:`log_ticks` takes the first that labels three."""
MAX_TICKS = 6


def log_ticks(low: float, high: float) -> list[float]:
    """Major tick values of a log axis showing ``[low, high]``: at least two, at most :data:`MAX_TICKS` (a range of
    many decades keeps every other decade), so the axis is always labelled — matplotlib's own log locator puts no
    major tick on a range narrower than a decade (0.03 to 0.08 ms), and its minor ticks go unlabelled.

    The values are the sparsest of :data:`MANTISSAS` times powers of ten that puts three in the range (else two); a
    range too narrow for any (0.0301 to 0.0305) gets evenly spaced round values (:func:`linear_ticks`).

    Example:
        >>> log_ticks(0.03, 0.08), log_ticks(5.0, 2e5)
        ([0.03, 0.04, 0.05, 0.06, 0.08], [10.0, 100.0, 1000.0, 10000.0, 100000.0])
    """
    low, high = sorted((low, high))
    if not (low > 0 and math.isfinite(high)):
        raise ValueError(f"expected a positive, finite log-axis range but got [{low}, {high}].")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for fewest in (3, 2):
        for mantissas in MANTISSAS:
            values = (float(f"{m * 10.0**power:.12g}") for power in range(first, last + 1) for m in mantissas)
            ticks = [value for value in values if low <= value <= high]
            if len(ticks) >= fewest:
                while len(ticks) > MAX_TICKS:
                    ticks = ticks[::2]
                return ticks
    return linear_ticks(low, high)


def linear_ticks(low: float, high: float) -> list[float]:
    """Two to five round values evenly spaced in ``[low, high]`` (``low < high``), or both ends when no round step fits.

    Example:
        >>> linear_ticks(0.0301, 0.0305)
        [0.0301, 0.0302, 0.0303, 0.0304, 0.0305]
    """
    if not high > low:
        return [low]
    power = 10.0 ** math.floor(math.log10(high - low))
    for step in (power, power / 2, power / 5, power / 10):
        start = math.ceil(low / step - 1e-9)
        ticks = [float(f"{k * step:.12g}") for k in range(start, math.floor(high / step + 1e-9) + 1)]
        if 2 <= len(ticks) <= 5:
            return ticks
    return [low, high]


def tick_text(value: float, field: str) -> str:
    """A tick label as a plain number: ``"0.05"`` (ms), ``"2k"``, ``"1.5M"`` (parameters).

    Example:
        >>> tick_text(0.05, "latency_ms"), tick_text(2000, "parameters"), tick_text(1.5e6, "parameters")
        ('0.05', '2k', '1.5M')
    """
    if field == "parameters":
        for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= scale:
                return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def quality_of(report: Report) -> tuple[str, str, float]:
    """``(field, axis label, scale)``: the first of :data:`QUALITIES` that some network of the report has.

    Raises:
        ValueError: no network has any (nothing to plot).
    """
    for field, label, scale in QUALITIES:
        if any(net.get(field) is not None for net in report["networks"]):
            return field, label, scale
    fields = ", ".join(field for field, _, _ in QUALITIES)
    raise ValueError(f"expected a test metric to plot ({fields}) but no network has one (none was logged)")


def unplotted(net: dict[str, Any], quality: str) -> str:
    """Why a network has no point: "the reference" (a teacher, for a quality measured against it), else "<quality>
    not measured" (a teacher's perplexity, which the modules do not log)."""
    if net["role"] == "teacher" and quality in ("cosine", "agreement"):
        return "the reference"
    return f"{QUALITY_NAMES[quality]} not measured"


def _draw_panel(axis: Any, networks: Sequence[dict[str, Any]], field: str, quality: tuple[str, str, float]) -> None:
    """One panel: a labelled point per network with both values; a dotted vertical line, labelled, for a network
    with the x value only (a teacher whose perplexity is not measured: its cost is still shown)."""
    name, _, scale = quality
    drawn = [net for net in networks if net.get(field)]
    pointed = [net for net in drawn if net.get(name) is not None]
    for index, net in enumerate(pointed):
        marker, colour = STYLES.get(net["role"], ("o", "tab:gray"))
        xy = (net[field], scale * net[name])
        axis.scatter(*xy, marker=marker, color=colour, s=18, zorder=3, linewidths=0)
        offset = (4, 3 if index % 2 == 0 else -8)  # alternate, so points at one place keep readable labels
        axis.annotate(net["name"], xy, textcoords="offset points", xytext=offset, fontsize=FONT_SIZE - 1)
    for net in drawn:
        if net.get(name) is None:
            colour = STYLES.get(net["role"], ("o", "tab:gray"))[1]
            axis.axvline(net[field], color=colour, linestyle=":", linewidth=1)
            axis.annotate(
                f"{net['name']} ({unplotted(net, name)})",
                (net[field], 1),
                xycoords=("data", "axes fraction"),
                textcoords="offset points",
                xytext=(-2, -3),
                rotation=90,
                ha="right",
                va="top",
                fontsize=FONT_SIZE - 1,
                color=colour,
            )
    if drawn:
        axis.set_xscale("log")
        axis.margins(x=0.25, y=0.15)


def _label_log_axis(axis: Any, field: str) -> None:
    """Fix the x range and put labelled major ticks on it (:func:`log_ticks`, :func:`tick_text`); minor unlabelled."""
    from matplotlib.ticker import NullFormatter

    if axis.get_xscale() != "log":
        return
    low, high = axis.get_xlim()
    ticks = log_ticks(low, high)
    axis.set_xticks(ticks, [tick_text(tick, field) for tick in ticks])
    axis.set_xlim(low, high)
    axis.xaxis.set_minor_formatter(NullFormatter())


def figure(report: Report) -> Any:
    """A matplotlib ``Figure`` (Agg canvas) for a paper: :data:`COLUMN_WIDTH` x :data:`FIGURE_HEIGHT` inches, two
    stacked panels sharing the y axis — the quality (:func:`quality_of`: perplexity, accuracy, cosine or agreement)
    against the parameters and against the CPU latency at batch 1 (ms) — log x axes with labelled ticks, one
    labelled point per network that has the quality (a dotted line for a network measured for its cost only).

    No title: a paper's caption says what the figure shows (the headline is in ``report.md``).

    Raises:
        ValueError: when no network has a quality to plot.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    quality = quality_of(report)
    with rc_context({"font.size": FONT_SIZE, "axes.labelsize": FONT_SIZE, "xtick.labelsize": FONT_SIZE}):
        drawing = Figure(figsize=(COLUMN_WIDTH, FIGURE_HEIGHT), layout="constrained")
        FigureCanvasAgg(drawing)
        panels = drawing.subplots(2, 1, sharey=True)
        for axis, field, xlabel in (
            (panels[0], "parameters", "parameters"),
            (panels[1], "latency_ms", "CPU latency at batch 1 (ms)"),
        ):
            _draw_panel(axis, report["networks"], field, quality)
            axis.set_xlabel(xlabel, fontsize=FONT_SIZE)
            axis.set_ylabel(quality[1], fontsize=FONT_SIZE)
            axis.yaxis.set_major_locator(MaxNLocator(nbins=5))
            axis.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
            axis.tick_params(labelsize=FONT_SIZE)
            axis.grid(True, which="both", alpha=0.3, linewidth=0.5)
        for axis, field in zip(panels, ("parameters", "latency_ms"), strict=True):
            _label_log_axis(axis, field)
    return drawing


def write_figures(report: Report, path: str | Path) -> list[Path]:
    """Write :func:`figure` as ``path`` with each of :data:`FIGURE_FORMATS` as suffix (``report.png``,
    ``report.pdf``, ``report.svg``), each atomically: the PNG at :data:`PNG_DPI` dpi (1020 pixels wide), the PDF and
    SVG as vectors with their text as text (:data:`SAVE_SETTINGS`) and no creation date (the same report gives the
    same files). A ``ValueError`` when there is nothing to plot.

    Returns:
        The written paths, PNG first.
    """
    from matplotlib import rc_context

    drawing = figure(report)
    metadata = {"png": None, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
    written = []
    with rc_context(SAVE_SETTINGS):
        for kind in FIGURE_FORMATS:
            target = Path(path).with_suffix(f".{kind}")

            def save(temporary: Path, kind: str = kind) -> None:
                drawing.savefig(temporary, format=kind, dpi=PNG_DPI, metadata=metadata[kind])

            written.append(atomic_write(target, save))
    return written


def plot(report: Report, path: str | Path) -> Path:
    """Write :func:`figure` as one PNG file (atomically, :data:`PNG_DPI` dpi); a ``ValueError`` when there is nothing
    to plot. :func:`write_figures` writes the PDF and SVG too."""
    from matplotlib import rc_context

    drawing = figure(report)
    with rc_context(SAVE_SETTINGS):
        return atomic_write(path, lambda temporary: drawing.savefig(temporary, format="png", dpi=PNG_DPI))
