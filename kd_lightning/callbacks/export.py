"""``ExportWeights``: write the deployable network's weights (the module's ``student``) at the end of fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

STUDENT_PREFIX = "student."


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Save a state dict as ``.safetensors`` or, for any other suffix, with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


class ExportWeights(L.Callback):
    """Save ``pl_module.student`` (the network a Classifier trained, or the distilled student) when fit ends.

    The file is a plain state dict (no Lightning, no optimizer state): small, and loadable as ``teacher_weights``.

    Args:
        path: ``.safetensors`` or ``.pt`` file to write.
        best: export the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final weights.
    """

    def __init__(self, path: str, best: bool = True) -> None:
        self.path = path
        self.best = best

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state_dict = pl_module.student.state_dict()
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") if self.best else ""
        if best_path:
            saved = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
            state_dict = {k[len(STUDENT_PREFIX) :]: v for k, v in saved.items() if k.startswith(STUDENT_PREFIX)}
        save_state_dict(state_dict, self.path)
        source = best_path or "final weights"
        rank_zero_info(f"saved {type(pl_module.student).__name__} weights ({source}) to {self.path}")
