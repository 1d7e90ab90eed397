"""Mistakes in Python calls: arguments, terms, networks, loading and fitting."""

from __future__ import annotations

import functools

import torch
from mistakes.catalogue import ApiMistake, fit, offline, offline_checkpoint

from kd_lightning import Classifier, DigitsMLP, DistillationModule, DistillTerm, OnlineDistillation, SelfDistillation
from kd_lightning.losses import FSPLoss, KDLoss, kd_loss

API_MISTAKES = [
    ApiMistake("teacher=None", lambda r: offline(teacher=None), TypeError, ("teacher", "got None", "nn.Module")),
    ApiMistake(
        "student given as a class",
        lambda r: offline(student=DigitsMLP),
        TypeError,
        ("the class DigitsMLP itself", "DigitsMLP(...)"),
    ),
    ApiMistake(
        "network given as its builder",
        lambda r: Classifier(network=lambda: DigitsMLP()),
        TypeError,
        ("network", "the network it builds"),
    ),
    ApiMistake(
        "loss function in a DistillTerm",
        lambda r: DistillTerm(kd_loss),
        TypeError,
        ("'kd_loss'", "kd_lightning.losses.KDLoss"),
    ),
    ApiMistake("loss class in a DistillTerm", lambda r: DistillTerm(KDLoss), TypeError, ("KDLoss(...)",)),
    ApiMistake(
        "one DistillTerm instead of a list",
        lambda r: offline(terms=DistillTerm(KDLoss())),
        TypeError,
        ("single DistillTerm", "wrap it in a list"),
    ),
    ApiMistake("a loss in terms", lambda r: offline(terms=[KDLoss()]), TypeError, ("terms[0]", "DistillTerm(KDLoss(")),
    ApiMistake(
        "built optimizer instead of a factory",
        lambda r: offline(optimizer=torch.optim.SGD(DigitsMLP().parameters(), lr=0.1)),
        TypeError,
        ("already built SGD", "functools.partial"),
    ),
    ApiMistake(
        "label smoothing of 1.5", lambda r: offline(label_smoothing=1.5), ValueError, ("label_smoothing in [0, 1)",)
    ),
    ApiMistake("num_classes=0", lambda r: offline(num_classes=0), ValueError, ("num_classes >= 1",)),
    ApiMistake(
        "nothing to learn from",
        lambda r: offline(ce_weight=0.0, terms=[]),
        ValueError,
        ("nothing to learn from", "ce_weight > 0"),
    ),
    ApiMistake(
        "cohort with nothing to learn",
        lambda r: OnlineDistillation([DigitsMLP(), DigitsMLP()], student="peer0", ce_weight=0.0, terms=[]),
        ValueError,
        ("OnlineDistillation has nothing to learn from",),
    ),
    ApiMistake("one peer", lambda r: OnlineDistillation(peers=[DigitsMLP()]), ValueError, ("at least two peers",)),
    ApiMistake(
        "SelfDistillation given only a student",
        lambda r: SelfDistillation(DigitsMLP()),
        ValueError,
        ("exactly one of",),
    ),
    ApiMistake(
        "FSP with one layer", lambda r: DistillTerm(FSPLoss(), student="layer1"), ValueError, ("relates 2 layers",)
    ),
    ApiMistake(
        "loading an offline checkpoint as the base class",
        lambda r: DistillationModule.load_from_checkpoint(offline_checkpoint(r), student=DigitsMLP()),
        TypeError,
        ("written by OfflineDistillation", "OfflineDistillation.load_from_checkpoint"),
    ),
    ApiMistake("fit with max_epochs=0", lambda r: fit(offline(), r, max_epochs=0), ValueError, ("no optimizer step",)),
    ApiMistake(
        "teacher and student of other class counts",
        lambda r: fit(offline(student=DigitsMLP(num_classes=7), num_classes=7), r),
        ValueError,
        ("teacher has 10 outputs and the student 7",),
    ),
    ApiMistake(
        "scheduler with T_max=0",
        lambda r: fit(offline(lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=0)), r),
        ValueError,
        ("fails when it is stepped",),
    ),
]
