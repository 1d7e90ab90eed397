"""``--ckpt_path`` for the ``kd-lightning`` command: find the checkpoint, refuse one that does not belong to this run.

Policy (documented in the README, "Guarantees"):

* ``--ckpt_path last`` is the newest ``last*.ckpt`` of this config's run directory (the logger's
  ``save_dir/name/version_*/checkpoints``, the default root's ``lightning_logs``, or the checkpoint callback's
  ``dirpath``); when there is none the command stops — it never trains from scratch instead.
* A resumed run keeps the model it was started with: the checkpoint's module class and its model configuration
  (networks, terms, losses, optimizer, schedule) must equal the config's. An edit is refused with the list of
  changed fields, since a resumed run that silently dropped or applied it would not be the interrupted run; to change
  the model, start a new run. Trainer settings may change (e.g. a larger ``max_epochs``); data settings that changed
  are reported as a warning (the loader position no longer means the same batches).
* A resumed run logs into the run it resumes: loggers with a ``version`` argument (CSV, TensorBoard) get the
  checkpoint's ``version_N``, so metrics continue in the same ``metrics.csv`` and checkpoints in the same folder.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kd_lightning.files import read_checkpoint

VERSION_DIR = re.compile(r"version_(\d+)")
APPENDING_CSV_LOGGER = "kd_lightning.cli.loggers.CSVLogger"
"""Lightning's CSVLogger deletes an existing metrics.csv; this one continues it (:mod:`kd_lightning.cli.loggers`)."""
LINKED_FIELDS = ("num_classes",)
"""Model fields the CLI links from the datamodule (filled in when the classes are instantiated)."""


class ResumeError(ValueError):
    """``--ckpt_path`` names a checkpoint that cannot continue this config's run."""


# ----------------------------------------------------------------- where checkpoints are
def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    if isinstance(node, Mapping):
        return node.get(key, default)
    return getattr(node, key, default)


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_directories(trainer: Any) -> list[Path]:
    """Folders of this config's runs, in which ``version_*/checkpoints`` (or the callback's ``dirpath``) live.

    ``checkpoints`` under the default root is where ``ModelCheckpoint`` writes when the run has no logger.
    """
    root = Path(_get(trainer, "default_root_dir") or ".")
    folders: list[Path] = []
    for logger in _as_list(_get(trainer, "logger")):
        init_args = _get(logger, "init_args") or {}
        save_dir = _get(init_args, "save_dir")
        if save_dir is not None:
            name = _get(init_args, "name", "lightning_logs")
            folders += [Path(save_dir) / name if name else Path(save_dir), Path(save_dir)]
    folders += [root / "lightning_logs", root / "checkpoints"]  # the default logger's folder; no logger at all
    for callback in _as_list(_get(trainer, "callbacks")):
        if str(_get(callback, "class_path", "")).endswith("ModelCheckpoint"):
            dirpath = _get(_get(callback, "init_args"), "dirpath")
            if dirpath:
                folders.append(Path(dirpath))
    return list(dict.fromkeys(folders))


def find_last(trainer: Any) -> Path:
    """The newest ``last*.ckpt`` of this config's runs, or a :class:`ResumeError` naming where it looked."""
    folders = run_directories(trainer)
    found = list(dict.fromkeys(path.resolve() for folder in folders for path in _last_files(folder)))
    if not found:
        where = ", ".join(repr(str(folder)) for folder in folders)
        raise ResumeError(
            f"--ckpt_path last: no last.ckpt in this config's run folders ({where}); nothing to resume. Pass the "
            f"checkpoint's path (--ckpt_path runs/.../checkpoints/last.ckpt), or drop --ckpt_path to start a new run "
            f"(a ModelCheckpoint with save_last: true writes last.ckpt)."
        )
    return max(found, key=lambda path: (path.stat().st_mtime, str(path)))


def _last_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    # CSV/TensorBoard: <name>/version_N/checkpoints; W&B: <project>/<run id>/checkpoints; no logger: checkpoints/
    patterns = ("last*.ckpt", "*/checkpoints/last*.ckpt", "*/*/checkpoints/last*.ckpt")
    return list(dict.fromkeys(path for pattern in patterns for path in folder.glob(pattern)))


# ----------------------------------------------------------------- is it this run?
def checkpoint_model_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"class_path": ..., "init_args": {...}}`` of the model of a CLI checkpoint (``None``: written from Python)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        return None
    return {"class_path": class_path, "init_args": {k: v for k, v in hparams.items() if not k.startswith("_")}}


def normalise(value: Any) -> Any:
    """Plain data to compare configs: namespaces as dicts, tuples as lists, class paths as their import path."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        plain = {str(k): normalise(v) for k, v in value.items() if not str(k).startswith("__")}
        if isinstance(plain.get("class_path"), str):
            plain["class_path"] = _canonical_class_path(plain["class_path"])
        return plain
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    return value


def _canonical_class_path(class_path: str) -> str:
    module, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
    return f"{obj.__module__}.{obj.__qualname__}"


def differences(saved: Any, given: Any, path: str) -> list[str]:
    """Config paths where ``given`` differs from ``saved`` (keys present on one side only are version changes)."""
    if isinstance(saved, dict) and isinstance(given, dict):
        found: list[str] = []
        for key in saved.keys() & given.keys():
            found += differences(saved[key], given[key], f"{path}.{key}")
        return found
    if isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        pairs = enumerate(zip(saved, given, strict=True))
        return [found for index, (s, g) in pairs for found in differences(s, g, f"{path}[{index}]")]
    return [] if saved == given else [f"{path}: {_short(saved)} in the checkpoint, {_short(given)} in the config"]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model(checkpoint: Mapping[str, Any], model_config: Any, path: Path) -> None:
    """Refuse ``checkpoint`` when its module class or model configuration differs from the config's model."""
    given = normalise(model_config) or {}
    init_args = given.get("init_args") or {}
    for field in LINKED_FIELDS:
        init_args.pop(field, None)
    from kd_lightning.modules._checkpoints import saved_class_name

    saved_class = saved_class_name(checkpoint)
    given_class = given.get("class_path")
    if saved_class and given_class and _canonical_class_path(saved_class) != given_class:
        raise ResumeError(
            f"--ckpt_path {str(path)!r} holds a {saved_class.rsplit('.', 1)[-1]} ({saved_class}) but the config's "
            f"model is {given_class.rsplit('.', 1)[-1]} ({given_class}); resume with the config that run was started "
            f"with (its config.yaml beside the logs), or drop --ckpt_path to start a new run."
        )
    saved = checkpoint_model_config(checkpoint)
    if saved is None:
        return  # a checkpoint written from Python: the architecture is checked when its state dict is loaded
    saved = normalise(saved)
    for field in LINKED_FIELDS:
        saved["init_args"].pop(field, None)
    changed = differences(saved, given, "model")
    if not changed:
        return
    shown = "\n  ".join(changed[:6]) + (f"\n  ... ({len(changed)} in all)" if len(changed) > 6 else "")
    raise ResumeError(
        f"--ckpt_path {str(path)!r} was trained with another model configuration than the config gives:\n  {shown}\n"
        f"A run resumed (or evaluated) from a checkpoint keeps the model it was started with: use that run's config "
        f"(its config.yaml), or start a new run without --ckpt_path to train with the changes."
    )


def check_data(checkpoint: Mapping[str, Any], data_config: Any, path: Path) -> None:
    """Warn when the datamodule's arguments changed since the checkpoint (the data order would no longer match)."""
    saved = normalise(checkpoint.get("datamodule_hyper_parameters") or {})
    given = normalise(_get(data_config, "init_args") or {})
    changed = differences(saved, given, "data.init_args") if saved and given else []
    if changed:
        warnings.warn(
            f"resuming {str(path)!r} with changed data settings ({'; '.join(changed[:4])}): the resumed run is not "
            f"the interrupted one batch for batch.",
            stacklevel=2,
        )


def check_budget(checkpoint: Mapping[str, Any], trainer: Any, path: Path) -> None:
    """Refuse to resume a run that has already reached the config's ``max_epochs`` / ``max_steps``."""
    loops = checkpoint.get("loops") or {}
    epochs = _get(_get(_get(_get(loops, "fit_loop"), "epoch_progress"), "current"), "processed", 0) or 0
    max_epochs, max_steps = _get(trainer, "max_epochs"), _get(trainer, "max_steps", -1)
    step = int(checkpoint.get("global_step", 0))
    epochs_done = max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs
    if epochs_done or (max_steps not in (None, -1) and step >= max_steps):
        raise ResumeError(
            f"--ckpt_path {str(path)!r} has already trained {epochs} epoch(s), {step} step(s): the run is complete at "
            f"trainer.max_epochs={max_epochs}, max_steps={max_steps}, so resuming would train nothing; raise "
            f"--trainer.max_epochs (or max_steps) to train further, or use `test --ckpt_path ...` to evaluate it."
        )


# ----------------------------------------------------------------- logging into the resumed run
def continue_logging(trainer: Any, path: Path) -> int | None:
    """Point version-numbered loggers at the checkpoint's ``version_N`` folder; return ``N`` (``None``: not one)."""
    version_dir = path.resolve().parent.parent
    match = VERSION_DIR.fullmatch(version_dir.name) if path.resolve().parent.name == "checkpoints" else None
    if match is None:
        return None
    for logger in _as_list(_get(trainer, "logger")):
        init_args = _get(logger, "init_args")
        save_dir = _get(init_args, "save_dir")
        if init_args is None or save_dir is None or not hasattr(init_args, "version"):
            continue
        name = _get(init_args, "name", "lightning_logs")
        folder = (Path(save_dir) / name if name else Path(save_dir)).resolve()
        if folder == version_dir.parent:
            init_args.version = int(match.group(1))
            if _canonical_class_path(str(_get(logger, "class_path"))).endswith(".CSVLogger"):
                logger.class_path = APPENDING_CSV_LOGGER
                init_args.append = True
    for folder in ("Experiment logs directory", "Checkpoint directory"):  # the resumed run's own, continued on purpose
        warnings.filterwarnings("ignore", message=rf"{folder} .* exists and is not empty")
    return int(match.group(1))


def resolve(ckpt_path: str, section: Any, subcommand: str) -> Path:
    """Check ``--ckpt_path`` against the parsed config ``section`` of ``subcommand``; return the checkpoint's path.

    Raises :class:`ResumeError` (or the file loader's error) before anything is instantiated.
    """
    if ckpt_path in ("best", "hpc") or str(ckpt_path).startswith("registry"):
        return Path(ckpt_path)  # Lightning resolves these itself, after instantiation
    trainer = _get(section, "trainer")
    path = find_last(trainer) if ckpt_path == "last" else Path(ckpt_path)
    checkpoint = read_checkpoint(path, what="checkpoint given to --ckpt_path")
    check_model(checkpoint, _get(section, "model"), path)
    if subcommand == "fit":
        check_budget(checkpoint, trainer, path)
        check_data(checkpoint, _get(section, "data"), path)
        continue_logging(trainer, path)
    return path
