"""The report's headline: "N\u00d7 smaller, M\u00d7 faster, P% of the teacher's accuracy", from two measured networks.

``N`` = reference parameters / student parameters, ``M`` = reference latency / student latency at batch 1, ``P`` =
100 * student accuracy / reference accuracy. A ratio below 1 is said the other way round ("1.3\u00d7 slower"). A model
without test accuracy is judged by what was measured instead, in this order: the cosine of its hidden states to
the teacher's (a model without logits), its top-1 agreement with the teacher (no labels), its perplexity (the
teacher's is not measured, so it is given as it is).
"""

from __future__ import annotations

from typing import Any

TIMES = "\u00d7"

Row = dict[str, Any]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def times(value: float, more: str, less: str) -> str:
    """``"2.5\u00d7 smaller"`` for 2.5, ``"2.0\u00d7 larger"`` for 0.5 (``more="smaller"``, ``less="larger"``); a
    ratio that rounds to 1.0 either way is ``"1.0\u00d7 smaller"``.

    Example:
        >>> times(0.5, "faster", "slower"), times(0.98, "faster", "slower")
        ('2.0\u00d7 slower', '1.0\u00d7 faster')
    """
    if value >= 1 or 1 / value < 1.05:
        return f"{value:,.1f}{TIMES} {more}"
    return f"{1 / value:,.1f}{TIMES} {less}"


def label(row: Row) -> str:
    """How a reference is named in a sentence: "the teacher", "the full network", "peer big"."""
    return f"the {row['name']}" if row["name"] in (row["role"], "full network") else f"{row['role']} {row['name']}"


def quality(student: Row, reference: Row) -> tuple[str | None, float | None, str | None]:
    """``(kind, value, phrase)``: the student's accuracy as a percentage of the reference's, else the fallback."""
    share = ratio(student.get("acc"), reference.get("acc"))
    if share is not None:
        return "accuracy", 100 * share, f"{100 * share:.1f}% of {label(reference)}'s accuracy"
    against = student.get("reference") or label(reference)
    if student.get("cosine") is not None:
        return "cosine", student["cosine"], f"cosine {student['cosine']:.3f} to {against}'s hidden states"
    if student.get("agreement") is not None:
        return "agreement", 100 * student["agreement"], f"{100 * student['agreement']:.1f}% agreement with {against}"
    if student.get("ppl") is not None:
        return "perplexity", student["ppl"], f"test perplexity {student['ppl']:.2f} (the teacher's is not measured)"
    return None, None, None


def headline(student: Row, reference: Row) -> dict[str, Any]:
    """The comparison of ``student`` with ``reference`` (report rows): the ratios and the sentence.

    Returns:
        ``{"student", "reference", "smaller", "faster", "quality", "share", "text"}``: ``smaller`` and ``faster`` are
        the parameter and batch-1 latency ratios, ``quality`` names what ``share`` is (``"accuracy"``: the student's
        accuracy in % of the reference's; ``"cosine"``, ``"agreement"`` in %, ``"perplexity"``: the student's own).
    """
    smaller = ratio(reference["parameters"], student["parameters"])
    faster = ratio(reference.get("latency_ms"), student.get("latency_ms"))
    kind, value, phrase = quality(student, reference)
    parts = [
        *([times(smaller, "smaller", "larger")] if smaller else []),
        *([times(faster, "faster", "slower")] if faster else []),
        *([phrase] if phrase else []),
    ]
    return {
        "student": student["name"],
        "reference": reference["name"],
        "smaller": smaller,
        "faster": faster,
        "quality": kind,
        "share": value,
        "text": ", ".join(parts),
    }
