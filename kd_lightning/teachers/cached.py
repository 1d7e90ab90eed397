"""``CachedTeacher``: a frozen teacher whose outputs over the training set are stored once and read in training.

The store is a :class:`~kd_lightning.teachers.cache_store.TeacherCache` (where, how many views, which dtype, top-k);
this source wraps the live :class:`~kd_lightning.teachers.frozen.FrozenTeacher` it was built from: training steps
read the stored rows of the batch's samples (``Batch.index``), the dry run, validation and test run the live teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch, parse_parts
from kd_lightning.teachers.base import EXTERNAL, Outputs, TeacherSource
from kd_lightning.teachers.cache_store import TeacherCache
from kd_lightning.teachers.frozen import FrozenTeacher


def training_dataset(loader: Any) -> Any:
    """The dataset of the fit's training loader."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ValueError(
            f"the teacher cache stores outputs per sample of the training dataset but the training loader "
            f"({type(loader).__name__}) has no dataset; give a torch DataLoader (a dict of loaders cannot be cached)."
        )
    return dataset


class CachedTeacher(TeacherSource):
    """A frozen teacher read from its stored outputs in training.

    Args:
        teacher: the live teacher: a :class:`FrozenTeacher`, or a network (wrapped in one with its current weights).
        cache: where and how the outputs are stored (:class:`~kd_lightning.TeacherCache`); ``None``: the defaults.

    Example (YAML, as the model's ``teacher``)::

        teacher:
          class_path: kd_lightning.CachedTeacher
          init_args:
            teacher: {class_path: kd_lightning.FrozenTeacher, init_args: {network: {...}, weights: teacher.pt}}
            cache: {class_path: kd_lightning.TeacherCache, init_args: {directory: cache/digits}}
    """

    kind = EXTERNAL
    in_checkpoint = False
    scores_new_inputs = False

    def __init__(self, teacher: nn.Module, cache: TeacherCache | None = None) -> None:
        super().__init__()
        if cache is not None and not isinstance(cache, TeacherCache):
            raise TypeError(
                f"expected cache to be a kd_lightning.TeacherCache but got {type(cache).__name__}; in YAML: "
                f"cache: {{class_path: kd_lightning.TeacherCache, init_args: {{directory: cache}}}}."
            )
        self.live = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.cache = cache if cache is not None else TeacherCache()
        self.layers: list[str] = []
        self.epoch = 0
        self._dataset: Any = None
        self._prefetched: dict[str | None, tuple[int, dict[str, Tensor]]] = {}

    # ----------------------------------------------------------------- what it is
    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        self.live.bind(student, layers, num_classes)
        self.layers = list(layers)

    def networks(self) -> dict[str, nn.Module]:
        return self.live.networks()

    def tapped(self) -> list[tuple[str, nn.Module, Any]]:
        return [(f"teacher.live.{path.split('.', 1)[1]}", network, tap) for path, network, tap in self.live.tapped()]

    def identity(self) -> dict[str, Any]:
        return self.live.identity()

    def fingerprint(self) -> str:
        return self.live.fingerprint()

    def describe(self) -> str:
        return f"{self.live.describe()}, cached in {self.cache.directory}"

    def files_read(self) -> dict[str, str]:
        return self.live.files_read()

    # ----------------------------------------------------------------- the fit
    def setup(self, module: Any, stage: str) -> None:
        """The live teacher's setup; before a fit, the training dataset made to yield the stored views with indices
        (before any training loader iterates)."""
        self.live.setup(module, stage)
        if stage == "fit":
            self._dataset = training_dataset(module.training_dataloader())
            self.cache.prepare_dataset(self._dataset)

    def check(self, module: Any, batch: Batch) -> None:
        self.live.check(module, batch)

    def on_fit_start(self, module: Any) -> None:
        """Open the store, or build it (the networks are on their device by now), under the fit's precision."""
        identity = {**self.identity(), "precision": str(module.trainer.precision)}
        plugin = module.trainer.precision_plugin

        def live_outputs(raw: Any) -> dict[str, Tensor]:
            batch = module.format_batch(Batch.parse(plugin.convert_input([item.to(module.device) for item in raw])))
            with plugin.forward_context():
                return self.live.outputs(batch)

        self.cache.open(live_outputs, self._dataset, identity, self.layers, module.trainer)

    def on_train_epoch_start(self, module: Any) -> None:
        self.epoch = module.current_epoch

    def teardown(self, module: Any, stage: str) -> None:
        """After a fit, the training dataset yields its own views again (also after a failed fit)."""
        if stage == "fit":
            self.cache.release_dataset()
            self._dataset = None

    # ----------------------------------------------------------------- outputs
    def before_batch_transfer(self, batch: Any) -> None:
        """Read the stored rows of each part of a training batch on the host, from its indices there, and check its
        view there: the training step then only copies them to the device (no read of a device value)."""
        self._prefetched = {}
        if not self.cache.is_open:
            return
        pin = torch.cuda.is_available()
        for name, part in parse_parts(batch).items():
            index = part.index
            if isinstance(index, Tensor) and index.device.type == "cpu" and _on_host(part.inputs):
                rows = self.cache.outputs(part, self.epoch)
                self._prefetched[name] = (part.size, {k: v.pin_memory() if pin else v for k, v in rows.items()})

    def outputs(self, batch: Batch) -> Outputs:
        """The stored outputs once the store is open (training steps: the rows of this part of the batch, read before
        it moved to the device), else the live teacher's (the dry run); the evaluation metrics always use the live
        teacher (:meth:`eval_logits`)."""
        batch = Batch.parse(batch)
        size, rows = self._prefetched.pop(batch.part, (None, None))
        if rows is not None and size == batch.size:
            return {name: value.to(batch.device, non_blocking=True) for name, value in rows.items()}
        if self.cache.is_open:
            return self.cache.outputs(batch, self.epoch)
        return self.live.outputs(batch)

    def eval_logits(self, batch: Batch) -> Tensor | None:
        return self.live.eval_logits(batch)

    def forward(self, inputs: Any) -> Tensor:
        """The live teacher's logits for model inputs."""
        return self.live(inputs)


def _on_host(inputs: Any) -> bool:
    """Whether every tensor of a batch's inputs (a tensor or a dict of them) is in host memory."""
    tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    return all(value.device.type == "cpu" for value in tensors if isinstance(value, Tensor))
