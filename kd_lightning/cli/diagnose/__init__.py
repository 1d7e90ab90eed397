"""The ``kd-lightning`` error boundary's diagnosis: any error of a run, as one short block that says what to change.

The CLI (:func:`kd_lightning.cli.command.main`) catches every error once and prints :meth:`Diagnosis.render`::

    kd-lightning: error: expected temperature > 0 but got temperature=-4.0; pass a positive temperature.
      where: model.init_args.terms[0].init_args.loss.init_args.temperature (configs/digits/bad.yaml)
      (set KD_LIGHTNING_DEBUG=1 or pass --debug for the full traceback)

Three kinds of error reach it:

- **parse errors** (``argparse.ArgumentError`` from jsonargparse, raised because the parsers are built with
  ``exit_on_error=False``): the nested ``Parser key "model": ... Problem with given class_path ...`` message tree is
  read back into the config path of the failing field, its innermost message and a suggestion (the nearest init arg,
  class path, option or file name) -- :func:`describe_parse_error`;
- **instantiation errors**, raised by a constructor while jsonargparse builds the configured objects: jsonargparse
  wraps the original exception in "Does not validate against any of the Union subtypes" messages; the original is
  found in the exception chain, and the configured object whose constructor raised it is found by matching the
  constructor frames of its traceback against the ``class_path`` nodes of the config -- :func:`describe_exception`;
- **run errors** (``trainer.fit``: setup, the dry run, training): the message once, plus the exception type and the
  last frame in kd_lightning or user code when the error was raised inside a library (torch, Lightning).

Everything here is a pure function of the exception, the parsed config and the command-line arguments. The modules,
each importing only those listed before it:

- :mod:`~kd_lightning.cli.diagnose.diagnosis`: the :class:`Diagnosis` type, the exit codes and the debug switches;
- :mod:`~kd_lightning.cli.diagnose.imports`: dotted import paths, the nearest one to a typo, a class's init parameters;
- :mod:`~kd_lightning.cli.diagnose.config_sources`: config paths, their values, and the argument that sets them;
- :mod:`~kd_lightning.cli.diagnose.message_tree`: the nested jsonargparse message, read back into a config path;
- :mod:`~kd_lightning.cli.diagnose.parse_errors`: a rejected command line or config;
- :mod:`~kd_lightning.cli.diagnose.exceptions`: an error raised while instantiating the config or running;
- :mod:`~kd_lightning.cli.diagnose.boundary`: the entry points, :func:`debug_requested` and :func:`diagnose`.
"""

from kd_lightning.cli.diagnose.boundary import debug_requested, diagnose, error_boundary
from kd_lightning.cli.diagnose.config_sources import Segment, config_source
from kd_lightning.cli.diagnose.diagnosis import (
    DEBUG_ENV,
    DEBUG_FLAG,
    INTERRUPT_EXIT,
    MAX_MESSAGE_LINES,
    PROG,
    RUN_EXIT,
    USAGE_EXIT,
    Diagnosis,
)
from kd_lightning.cli.diagnose.exceptions import describe_exception, unwrap
from kd_lightning.cli.diagnose.imports import import_path, init_parameters, nearest_import_path
from kd_lightning.cli.diagnose.parse_errors import CONFIG_SUFFIXES, describe_parse_error

__all__ = [
    "CONFIG_SUFFIXES",
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "INTERRUPT_EXIT",
    "MAX_MESSAGE_LINES",
    "PROG",
    "RUN_EXIT",
    "USAGE_EXIT",
    "Diagnosis",
    "Segment",
    "config_source",
    "debug_requested",
    "describe_exception",
    "describe_parse_error",
    "diagnose",
    "error_boundary",
    "import_path",
    "init_parameters",
    "nearest_import_path",
    "unwrap",
]
