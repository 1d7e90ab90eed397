"""``CompactModelSummary``: Lightning's model summary without a column of zeros.

Lightning counts FLOPs only by running the module on its ``example_input_array``; the distillation modules have none
(their forward is the student's alone, and the teacher's cost would be missing), so the summary's FLOPs column and
its "Total FLOPs" line read 0 for every layer. This summary leaves them out when the count is 0 and is otherwise
Lightning's (a rich table beside the rich progress bar, plain text otherwise). The ``kd-lightning`` command puts it in
place of Lightning's default summary; in Python, pass it to the Trainer (``callbacks=[CompactModelSummary()]``).
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")  # where Lightning's own summary is logged
FLOPS = "FLOPs"
RIGHT_ALIGNED = ("Params", "Params per Device", FLOPS, "In sizes", "Out sizes")


class CompactModelSummary(ModelSummary):
    """Lightning's model summary, without the FLOPs column and total when nothing was counted (see the module).

    Args:
        max_depth: the depth of the listed submodules (Lightning's ``ModelSummary``; 0 turns the summary off).
        rich: a rich table (as ``RichModelSummary``) instead of plain text.
        **summarize_kwargs: Lightning's summary options (``header_style`` of the rich table).
    """

    def __init__(self, max_depth: int = 1, rich: bool = False, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self.rich = rich

    def summarize(  # an instance method: Lightning calls ``self.summarize(...)``
        self,
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            lightning = RichModelSummary if self.rich else ModelSummary
            lightning.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
            return
        columns = [(name, values) for name, values in summary_data if name != FLOPS]
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes["train"])),
            ("Modules in eval mode", str(total_training_modes["eval"])),
        ]
        if self.rich:
            _print_rich(columns, totals, summarize_kwargs.get("header_style", "bold magenta"))
        else:
            log.info("\n" + text_table(columns, totals))


def text_table(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> str:
    """The summary as plain text: a header, one row per layer, then the totals (Lightning's layout).

    Example:
        >>> print(text_table([("Name", ["student"]), ("Params", ["2.4 K"])], [("Total params", "2.4 K")]))
        Name    | Params
        ----------------
        student | 2.4 K
        ----------------
        2.4 K     Total params
    """
    widths = [max([len(name), *(len(str(value)) for value in values)]) for name, values in columns]
    rule = "-" * (sum(widths) + 3 * (len(columns) - 1))
    lines = [" | ".join(name.ljust(width) for (name, _), width in zip(columns, widths, strict=True)).rstrip(), rule]
    for row in zip(*(values for _, values in columns), strict=True):
        lines.append(" | ".join(str(value).ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    lines.append(rule)
    lines += [f"{value:<10}{name}" for name, value in totals]
    return "\n".join(lines)


def _print_rich(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]], header_style: str) -> None:
    from rich import get_console
    from rich.table import Table

    table = Table(header_style=header_style)
    for name, _ in columns:
        table.add_column(name, justify="right" if name in RIGHT_ALIGNED else "left", no_wrap=name == "Name")
    for row in zip(*(values for _, values in columns), strict=True):
        table.add_row(*map(str, row))
    grid = Table.grid(expand=True)
    grid.add_column()
    for name, value in totals:
        grid.add_row(f"[bold]{name}[/]: {value}")
    console = get_console()
    console.print(table)
    console.print(grid)
