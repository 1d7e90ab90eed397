"""The ``kd-lightning-label`` command: a fit config's teacher labels its training split once, into a token store.

``kd-lightning-label --config configs/text/gpt2_tiny_kd.yaml --store stores/gpt2_tiny --top_k 32`` builds the config's
model, datamodule and Trainer as ``kd-lightning fit`` would, runs the model's teacher over the datamodule's training
split under that Trainer's processes (each writes its own shards) and exits leaving a finished store
(:func:`~kd_lightning.teachers.token_store.label_corpus`). Run again after an interruption, it writes only the missing
shards. A fit then trains from the store without the teacher network::

    model:
      class_path: kd_lightning.OfflineDistillation
      init_args:
        teacher: {class_path: kd_lightning.teachers.TokenStoreTeacher, init_args: {path: stores/gpt2_tiny}}
    data: {init_args: {return_index: true}}

The store holds what the config's distillation terms read from the teacher (``--outputs`` chooses: ``logits``,
``pooled``, layer paths). Every other option (``--trainer.devices 2``, ``--data.init_args.batch_size 32``) is the
fit's.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from kd_lightning.cli.command import build_cli
from kd_lightning.cli.diagnose import debug_requested, error_boundary
from kd_lightning.teachers import CachedTeacher, FrozenTeacher
from kd_lightning.teachers.token_store import VALUE_DTYPES, label_corpus

COMMAND = "kd-lightning-label"


class UsageError(ValueError):
    """A rejected command line of ``kd-lightning-label``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # raise instead of exiting: the boundary prints it once
        raise UsageError(f"{message}; see `{COMMAND} --help`")


def build_parser() -> argparse.ArgumentParser:
    """The options of the store; the rest of the command line is the fit's (``--config`` and overrides)."""
    parser = _Parser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="the store's folder (created, or resumed when interrupted)")
    parser.add_argument("--top_k", type=int, default=None, help="logits kept per token (default: all, dense)")
    parser.add_argument("--dtype", choices=list(VALUE_DTYPES), default="float16", help="stored logit values")
    parser.add_argument("--batch_size", type=int, default=8, help="samples per teacher forward pass")
    parser.add_argument("--shard_size", type=int, default=256, help="samples per shard")
    parser.add_argument(
        "--outputs",
        nargs="+",
        default=None,
        help="the teacher outputs to store: logits, pooled, layer paths (default: those the config's terms read)",
    )
    return parser


def run(args: list[str]) -> str:
    """Label the training split of the fit config in ``args``; returns the summary line."""
    options, fit_args = build_parser().parse_known_args(args)
    saved = sys.argv[:]
    sys.argv[1:] = fit_args  # LightningCLI reads sys.argv (and a DDP launch re-runs it)
    try:
        cli = build_cli(None, run=False)
    finally:
        sys.argv[:] = saved
    teacher = getattr(cli.model, "teacher", None)
    teacher = teacher.live if isinstance(teacher, CachedTeacher) else teacher
    if not isinstance(teacher, FrozenTeacher):
        raise ValueError(
            f"expected the config's model to have a teacher network (an OfflineDistillation's teacher) but its teacher "
            f"is {type(teacher).__name__}; label with the fit config that runs the live teacher."
        )
    objective = getattr(cli.model, "objective", None)
    outputs = options.outputs or (objective.teacher_layers if objective is not None else ["logits"])
    store = label_corpus(
        teacher,
        cli.datamodule,
        options.store,
        top_k=options.top_k,
        dtype=options.dtype,
        trainer=cli.trainer,
        batch_size=options.batch_size,
        shard_size=options.shard_size,
        outputs=outputs,
    )
    per_token, per_sample = store.bytes_per_token()
    sizes = f"{per_token} bytes per token" + (f", {per_sample} bytes per sample" if per_sample else "")
    return (
        f"token store {store.path} of {', '.join(store.outputs)}: {store.samples} samples, {store.tokens} tokens, "
        f"{sizes}"
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``kd-lightning-label`` console script, inside the commands' one error boundary."""
    args, debug = debug_requested(sys.argv[1:] if args is None else args)
    with error_boundary(args, debug, COMMAND), warnings.catch_warnings():
        summary = run(args)
    print(summary)


if __name__ == "__main__":
    main()
