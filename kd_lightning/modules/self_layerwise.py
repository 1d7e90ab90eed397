"""``LayerwiseSelfDistillation``: the network teaches its own earlier layers (BYOT exits)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from rich.console import Console
from torch import Tensor, nn

from kd_lightning.core.batch import Batch, Inputs
from kd_lightning.core.networks import count_parameters, require_network
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import LOGITS, FeatureTap, resolve_module
from kd_lightning.modules.base import DRY_RUN_SAMPLES, DistillationModule, accuracy_metrics
from kd_lightning.modules.deployable import STUDENT_METRICS, Deployable
from kd_lightning.modules.exits import BYOTExits, exit_key, exit_table, truncate


class LayerwiseSelfDistillation(DistillationModule):
    """Layer-wise self-distillation (Zhang et al., ICCV 2019, "Be Your Own Teacher").

    Auxiliary exits on intermediate layers learn the labels, the network's own deepest output (KL at temperature T)
    and its deepest features (L2 hint); see :class:`~kd_lightning.modules.exits.BYOTExits` for the loss and its
    weights. Per-exit accuracy is logged as ``val/acc_exit_<layer>``, and :meth:`exit_model` cuts a smaller, faster
    stand-alone network at any exit. Optional ``terms`` compare the student with its own detached outputs, e.g.
    ``DistillTerm(ATLoss(), student="layer1", teacher="layer3")``.

    Args:
        student: the network to train and deploy.
        exits: the BYOT exits.
        terms: distillation terms between the student's own outputs (``None``: none).
        ce_weight: weight of the full network's cross-entropy. ``None``: ``1 - exits.alpha``.
        **kwargs: the shared settings of every mode (``num_classes``, ``optimizer``, ``lr_scheduler``,
            ``label_smoothing``, ``on_nonfinite``, ``compile``, ``channels_last``): see
            :class:`~kd_lightning.modules.DistillationModule`.

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> byot = LayerwiseSelfDistillation(DigitsCNN(width=4), exits=BYOTExits(["layer1", "layer2"]))
        >>> byot.dry_run([torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))])  # builds the exits
        >>> {layer: tuple(logits.shape) for layer, logits in byot.exit_logits(torch.randn(2, 1, 8, 8)).items()}
        {'layer1': (2, 10), 'layer2': (2, 10)}
        >>> [row["parameters"] for row in byot.exit_summary()]  # full network, then each truncated exit network
        [1854, 486, 806]
    """

    checkpoint_aliases = ("kd_lightning.modules.self_distillation.SelfDistillation",)
    """Checkpoints of the earlier ``SelfDistillation`` with exits load here."""

    def __init__(
        self,
        student: nn.Module,
        exits: BYOTExits,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        **kwargs: Any,
    ) -> None:
        require_network(student, "student")
        if not isinstance(exits, BYOTExits):
            raise TypeError(
                f"expected exits to be a BYOTExits but got {type(exits).__name__}. In YAML: exits: {{class_path: "
                f"kd_lightning.BYOTExits, init_args: {{layers: [layer1, layer2]}}}}."
            )
        ce_weight = 1.0 - exits.alpha if ce_weight is None else ce_weight
        super().__init__(student=student, terms=terms or [], ce_weight=ce_weight, **kwargs)
        self.exits = exits
        for layer in exits.tapped_layers:
            resolve_module(student, layer, role="student (BYOT exit)")
        self.student_tap.remove()
        own = [*self.objective.student_layers, *self.objective.teacher_layers, *exits.tapped_layers]
        self.student_tap = FeatureTap(student, own, role="student")
        keys = [exit_key(layer) for layer in exits.layers]
        self.val_exit_metrics = accuracy_metrics(keys, self.num_classes)
        self.test_exit_metrics = accuracy_metrics(keys, self.num_classes)
        self._example_input: Tensor | None = None
        self.save_init_arguments()

    # ----------------------------------------------------------------- the objective
    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """The network's own outputs (the terms detach them): the deepest layers teach the earlier ones."""
        return self.student_outputs(batch)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """The terms between the network's own outputs, then every exit's losses, from one forward pass."""
        batch = Batch.parse(batch)
        student, target = self.student_outputs(batch), self.targets(batch)
        losses = self.objective(student, student, target, self.current_epoch)
        return {**losses, **self.exits.losses(student, target, self.objective.label_smoothing)}

    def dry_run(self, batch: Batch) -> None:
        """The base checks, then build the exits (before the optimizer)."""
        super().dry_run(batch)
        batch = Batch.parse(batch)
        self._example_input = batch.inputs
        with self.temporarily_in_eval_mode(), torch.no_grad():
            self.exits(self.student_outputs(batch))

    # ----------------------------------------------------------------- exits: metrics, truncation, summary
    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor | None]:
        """One pass of the network gives its logits and every exit's, logged as ``acc_exit_<layer>``."""
        if self._example_input is None:
            self._example_input = batch.head(DRY_RUN_SAMPLES).inputs
        outputs = batch.call(self.student_tap)
        labels = batch.labels
        metrics = self.val_exit_metrics if stage == "val" else self.test_exit_metrics
        for layer, (_, logits) in self.exits(outputs).items():
            if labels is None:
                break
            metric = metrics[exit_key(layer)]
            metric.update(logits, labels)
            self.log(f"{stage}/acc_exit_{exit_key(layer)}", metric, batch_size=len(labels))
        return outputs[LOGITS], None

    def exit_logits(self, inputs: Tensor) -> dict[str, Tensor]:
        """Every exit's logits ``{layer: [B, num_classes]}`` from one pass through the full network."""
        return {layer: logits for layer, (_, logits) in self.exits(self.student_tap(inputs)).items()}

    def exit_model(self, layer: str, example_input: Tensor | None = None) -> nn.Sequential:
        """A stand-alone network (eval mode): the student's modules up to ``layer``, then that exit's head.

        Checked on ``example_input`` (default: the first training samples seen) against the exit's output inside the
        full network; a ``ValueError`` if the student's forward is not a chain of its children up to ``layer``.
        """
        if layer not in self.exits.layers:
            raise ValueError(f"expected one of the exit layers {list(self.exits.layers)} but got {layer!r}.")
        model = truncate(self.student, layer, self.exits.heads[exit_key(layer)].standalone()).eval()
        inputs = example_input if example_input is not None else self._example_input
        if inputs is None:
            raise ValueError("exit_model needs an example_input [B, ...] to check the truncated network against.")
        with self.temporarily_in_eval_mode(), torch.no_grad():
            inputs = inputs.to(self.device)
            inside, alone = self.exit_logits(inputs)[layer], model.to(self.device)(inputs)
        if not torch.allclose(inside, alone, rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"cannot truncate {type(self.student).__name__} at {layer!r}: its forward is not a chain of its "
                f"children up to that layer (the truncated network disagrees with the exit inside the full one)."
            )
        return model

    def exit_summary(self, example_input: Tensor | None = None) -> list[dict[str, Any]]:
        """Per exit and for the full network: parameters, share of the full network, last val and test accuracy."""
        logged = self._logged_metrics()
        full = count_parameters(self.student)
        rows = [{"exit": "full network", "parameters": full, "share": 1.0, "suffix": ""}]
        for layer in self.exits.layers:
            params = count_parameters(self.exit_model(layer, example_input))
            suffix = f"_exit_{exit_key(layer)}"
            rows.append({"exit": layer, "parameters": params, "share": params / full, "suffix": suffix})
        for row in rows:
            suffix = row.pop("suffix")
            row["val acc"], row["test acc"] = logged.get(f"val/acc{suffix}"), logged.get(f"test/acc{suffix}")
        return rows

    def _logged_metrics(self) -> dict[str, float]:
        try:
            return {key: float(value) for key, value in self.trainer.callback_metrics.items()}
        except RuntimeError:  # not attached to a Trainer
            return {}

    def deployables(self, example_input: Inputs | None = None) -> list[Deployable]:
        """The full network, then every exit network that can be cut out of it (a warning for those that cannot)."""
        rows = [Deployable("full network", "student", self.student, dict(STUDENT_METRICS))]
        for layer in self.exits.layers:
            try:
                network = self.exit_model(layer, example_input)
            except ValueError as error:
                rank_zero_warn(f"left out the exit at {layer!r}: {error}")
                continue
            metrics = {"acc": f"test/acc_exit_{exit_key(layer)}"}
            rows.append(Deployable(f"exit {layer}", "exit", network, metrics, None, ["full network"]))
        return rows

    def on_test_end(self) -> None:
        """Print the exit table (parameters and test accuracy of every truncated network)."""
        if self.trainer.is_global_zero:
            Console().print(exit_table(self.exit_summary()))
