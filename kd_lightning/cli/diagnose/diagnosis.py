"""The :class:`Diagnosis` type: the content of the CLI's error block, its exit codes and how it is rendered."""

from __future__ import annotations

from dataclasses import dataclass

DEBUG_ENV = "KD_LIGHTNING_DEBUG"
"""Environment variable that adds the full traceback to the error block (``KD_LIGHTNING_DEBUG=1``)."""
DEBUG_FLAG = "--debug"
"""Command-line flag with the same effect; removed from the arguments before parsing."""
USAGE_EXIT = 2
"""Exit code of a command line or config that was rejected before anything ran (parsing, instantiation)."""
RUN_EXIT = 1
"""Exit code of a run that failed after the objects were built (``trainer.fit``: setup, dry run, training)."""
INTERRUPT_EXIT = 130
"""Exit code after Ctrl-C (128 + SIGINT), as a shell reports it."""

PROG = "kd-lightning"
MAX_MESSAGE_LINES = 8


@dataclass
class Diagnosis:
    """What went wrong, where in the config, and how to fix it: the content of the CLI's error block.

    Args:
        message: the problem, in one sentence where possible (the original exception's message for our errors).
        where: the config path of the failing field, e.g. ``model.init_args.terms[0].init_args.loss``.
        source: the config file that sets ``where``, or ``"command line"``.
        fix: a suggestion ("did you mean 'temperature'?") when the message does not already say what to do.
        at: ``file:line in function`` of the last kd_lightning/user frame, for errors raised inside a library.
        exit_code: :data:`USAGE_EXIT`, :data:`RUN_EXIT` or :data:`INTERRUPT_EXIT`.
    """

    message: str
    where: str | None = None
    source: str | None = None
    fix: str | None = None
    at: str | None = None
    exit_code: int = RUN_EXIT

    def render(self, debug_hint: bool = True) -> str:
        """The block printed to stderr (at most ~15 lines); ``debug_hint`` adds how to get the traceback."""
        if self.exit_code == INTERRUPT_EXIT:
            return f"{PROG}: {self.message}"
        lines = self.message.strip().splitlines() or ["unknown error"]
        if len(lines) > MAX_MESSAGE_LINES:
            lines = [*lines[: MAX_MESSAGE_LINES - 1], f"... ({len(lines) - MAX_MESSAGE_LINES + 1} more lines)"]
        block = [f"{PROG}: error: {lines[0]}", *(f"  {line}" for line in lines[1:])]
        if self.where:
            block.append(f"  where: {self.where}" + (f" ({self.source})" if self.source else ""))
        if self.at:
            block.append(f"  at:    {self.at}")
        if self.fix:
            block.append(f"  fix:   {self.fix}")
        if debug_hint:
            block.append(f"  (set {DEBUG_ENV}=1 or pass {DEBUG_FLAG} for the full traceback)")
        return "\n".join(block)
