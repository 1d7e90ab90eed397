"""``OfflineDistillation``: a trained, frozen teacher distils into a student (Hinton et al. 2015 and any terms)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import check_not_wrapped, require_network
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import LOGITS
from kd_lightning.modules._guards import check_something_to_learn
from kd_lightning.modules.base import DistillationModule
from kd_lightning.modules.on_policy import OnPolicy, token_ids
from kd_lightning.teachers import EXTERNAL, CachedTeacher, FrozenTeacher, TeacherCache, TeacherSource


def offline_teacher(
    teacher: nn.Module,
    teacher_weights: str | Path | None = None,
    teacher_normalization: Mapping[str, Sequence[float]] | None = None,
    student_normalization: Mapping[str, Sequence[float]] | None = None,
    teacher_dtype: str | None = None,
    teacher_cache: TeacherCache | None = None,
    allow_untrained_teacher: bool = False,
) -> TeacherSource:
    """The teacher source of :class:`OfflineDistillation`'s arguments: a network becomes a
    :class:`~kd_lightning.teachers.FrozenTeacher` (cached when ``teacher_cache`` is given); a source is used as is."""
    if isinstance(teacher, TeacherSource):
        given = {
            "teacher_weights": teacher_weights,
            "teacher_normalization": teacher_normalization,
            "student_normalization": student_normalization,
            "teacher_dtype": teacher_dtype,
        }
        settings = [name for name, value in given.items() if value is not None]
        if settings:
            raise ValueError(
                f"teacher is a {type(teacher).__name__} (a teacher source, which holds its own settings) but "
                f"{settings} are given too; set them in the source's init_args (FrozenTeacher: weights, "
                f"normalization, student_normalization, dtype) and remove them from the model's."
            )
        if teacher.kind != EXTERNAL:
            raise TypeError(
                f"expected a trained teacher for OfflineDistillation but got a {type(teacher).__name__}, a copy of the "
                f"student: use it with kd_lightning.TemporalSelfDistillation."
            )
        if teacher_cache is not None:
            if not isinstance(teacher, FrozenTeacher):
                raise ValueError(
                    f"teacher_cache caches a FrozenTeacher but the teacher is a {type(teacher).__name__}; put the "
                    f"cache inside it (CachedTeacher for one teacher of an ensemble)."
                )
            return CachedTeacher(teacher, teacher_cache)
        return teacher
    require_network(teacher, "teacher")
    check_not_wrapped(teacher, "teacher")
    if teacher_cache is not None and not isinstance(teacher_cache, TeacherCache):
        raise TypeError(
            f"expected teacher_cache to be a kd_lightning.TeacherCache but got {type(teacher_cache).__name__}; in "
            f"YAML: teacher_cache: {{class_path: kd_lightning.TeacherCache, init_args: {{directory: cache}}}}."
        )
    frozen = FrozenTeacher(
        teacher,
        weights=teacher_weights,
        normalization=teacher_normalization,
        student_normalization=student_normalization,
        dtype=teacher_dtype,
        allow_untrained=allow_untrained_teacher,
    )
    return frozen if teacher_cache is None else CachedTeacher(frozen, teacher_cache)


class OfflineDistillation(DistillationModule):
    """Distil a frozen, trained teacher into a student.

    Loss = ``ce_weight * CE(student, y) + sum_i weight_i * loss_i(student, teacher)``. With ``terms=None`` it is
    Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): ``0.1 * CE + 0.9 * KD(T=4)``, the
    weights of the CRD benchmark recipe; with explicit ``terms`` the CE weight defaults to 1.

    The teacher is a trained teacher source (:class:`~kd_lightning.teachers.FrozenTeacher`,
    :class:`~kd_lightning.teachers.CachedTeacher`, :class:`~kd_lightning.teachers.TeacherEnsemble`), or a network
    frozen here with the ``teacher_*`` settings: no gradients, eval mode that survives ``train()`` calls, run under
    ``torch.no_grad()``, never in the optimizer, and not saved in checkpoints (re-attached on load, so strict loading
    and ``ckpt_path`` resume work). A teacher nothing shows to be trained is refused before the first step (see
    :mod:`kd_lightning.teachers.frozen`).

    Args:
        student: the network to train and deploy.
        teacher: the teacher network (frozen with the settings below), or a trained teacher source.
        teacher_weights: its weights: a ``.ckpt`` (e.g. of a ``Classifier``) or ``.pt``/``.safetensors`` state dict;
            ``None`` keeps the teacher's current weights (already trained in Python, or by a pretrained builder).
        terms: distillation terms; ``None`` means Hinton KD, ``[DistillTerm(KDLoss(temperature=4), weight=0.9)]``.
        ce_weight: weight of the hard-label loss; ``None`` means 0.1 with the default KD term, else 1.0.
        teacher_normalization: ``{mean: [...], std: [...]}`` the teacher's inputs were standardised with in its
            training, when they differ from the student's (a timm ImageNet teacher beside a CIFAR student: ``{mean:
            [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}``, its ``pretrained_cfg``); every batch is
            re-standardised for the teacher, ``(x * std_s + mean_s - mean_t) / std_t``. ``None``: the student's inputs.
        student_normalization: ``{mean, std}`` the batches are standardised with; ``None`` reads the datamodule's
            ``mean`` and ``std`` attributes when the fit starts (an error before the first step if it has none).
        teacher_dtype: ``"bfloat16"`` or ``"float16"`` holds the frozen teacher in that dtype (half its weight memory);
            its inputs are cast for it, it runs outside autocast, and its logits and features are returned in float32.
        teacher_cache: a :class:`~kd_lightning.TeacherCache`: the teacher's outputs over the training set are
            stored once (K replayable views per sample) when the fit starts, and training reads them instead of
            running the teacher; validation and test still run it. ``None``: the teacher runs every step.
        allow_untrained_teacher: distil from the teacher even when nothing shows it is trained.
        on_policy: an :class:`~kd_lightning.modules.on_policy.OnPolicy`: with probability ``lmbda`` a batch is
            replaced by continuations of its prompts sampled from the student (GKD) or the teacher (sequence-level
            KD), which the teacher scores; causal language models only. ``None``: the batches train as they come.
        **kwargs: the shared settings of every mode (``num_classes``, ``optimizer``, ``lr_scheduler``,
            ``label_smoothing``, ``on_nonfinite``, ``compile``, ``channels_last``): see
            :class:`~kd_lightning.modules.DistillationModule`.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        teacher_weights: str | Path | None = None,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        teacher_normalization: dict[str, Sequence[float]] | None = None,
        student_normalization: dict[str, Sequence[float]] | None = None,
        teacher_dtype: str | None = None,
        teacher_cache: TeacherCache | None = None,
        allow_untrained_teacher: bool = False,
        on_policy: OnPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        teacher_weights = None if teacher_weights is None else str(teacher_weights)  # saved as a plain hparam
        source = offline_teacher(
            teacher,
            teacher_weights,
            teacher_normalization,
            student_normalization,
            teacher_dtype,
            teacher_cache,
            allow_untrained_teacher,
        )
        super().__init__(student=student, terms=terms, ce_weight=ce_weight, teacher=source, **kwargs)
        check_something_to_learn(
            self.objective.ce_weight, [t.weight for t in self.objective.terms], "OfflineDistillation"
        )
        if on_policy is not None and not isinstance(on_policy, OnPolicy):
            raise TypeError(
                f"expected on_policy to be a kd_lightning.OnPolicy but got {type(on_policy).__name__}; in YAML: "
                f"on_policy: {{class_path: kd_lightning.OnPolicy, init_args: {{lmbda: 0.5}}}}."
            )
        self.on_policy = on_policy
        self._batch_idx = 0
        self._generation_ids: dict[str, int | None] = {}
        self.save_init_arguments()

    # ----------------------------------------------------------------- on-policy and sequence-level distillation
    def setup(self, stage: str) -> None:
        if self.on_policy is not None and stage == "fit":
            self.check_on_policy()
        super().setup(stage)

    def check_on_policy(self) -> None:
        """Before a fit with ``on_policy``: a teacher that runs, token losses on the labelled (generated) positions,
        a sampling network that generates within its positions."""
        if not self.teacher.scores_new_inputs:
            raise ValueError(
                f"on_policy makes the teacher score sequences sampled during the fit, but the teacher is "
                f"{type(self.teacher).__name__} (stored outputs of the training set); give the teacher network (a "
                f"FrozenTeacher), or drop on_policy."
            )
        for term in self.objective.terms:
            if term.token_kind == LOGITS and getattr(term.loss, "positions", "real") not in ("labelled", "auto"):
                raise ValueError(
                    f"on_policy trains the token losses on the sampled tokens, which are the labelled positions of a "
                    f"rolled-out batch, but term {term.name!r} reads positions: {term.loss.positions}; set "
                    f"positions: labelled on its loss."
                )
        datamodule = getattr(self.trainer, "datamodule", None)
        hparams = getattr(datamodule, "hparams", {})
        if "prompt_length" in hparams and hparams["prompt_length"] is None:
            raise ValueError(
                f"on_policy continues the prompts of prompt/completion samples, but {type(datamodule).__name__} has "
                f"prompt_length: null (every token is a target, so no sample has a prompt); set data.init_args."
                f"prompt_length (e.g. 32)."
            )
        prompt = hparams.get("prompt_length") or hparams.get("max_length")
        teacher = self.teacher.networks().get("teacher")
        sampler = self.student if self.on_policy.samples_from == "student" else teacher
        config = getattr(sampler, "config", None)
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        self.on_policy.check(self.student, teacher, positions, prompt)
        self._generation_ids = token_ids(datamodule, sampler)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._batch_idx = batch_idx  # the rollout's seed (on_policy)
        return super().training_step(batch, batch_idx)

    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The losses of the batch, or with ``on_policy`` (when the batch is drawn) of sequences sampled from its
        prompts (:mod:`~kd_lightning.modules.on_policy`)."""
        rolled = (
            self.on_policy is not None
            and self.training
            and self._trainer is not None
            and self.trainer.training
            and self.on_policy.draws(self.current_epoch, self._batch_idx)
        )
        if not rolled:
            return super().compute_losses(batch)
        from_student = self.on_policy.samples_from == "student"
        sampler = self.student if from_student else self.teacher.networks()["teacher"]
        sampled = self.on_policy.rollout(
            sampler, Batch.parse(batch), self.current_epoch, self._batch_idx, self.global_rank, self._generation_ids
        )
        losses = super().compute_losses(sampled)
        if from_student and "ce" in losses:
            losses["ce"] = torch.zeros_like(losses["ce"])  # the student's own samples are not targets
        return losses

    @property
    def teacher_cache(self) -> TeacherCache | None:
        """The :class:`~kd_lightning.TeacherCache` read in training (``None``: the teacher runs every step)."""
        return self.teacher.cache if isinstance(self.teacher, CachedTeacher) else None

    @teacher_cache.setter
    def teacher_cache(self, value: Any) -> None:
        raise AttributeError(
            "teacher_cache is chosen when the module is built (the teacher source is a CachedTeacher or not); setting "
            "it afterwards would change nothing: pass OfflineDistillation(..., teacher_cache=TeacherCache(...)) "
            "instead."
        )
