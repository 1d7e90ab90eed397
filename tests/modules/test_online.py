"""OnlineDistillation: online KD, Deep Mutual Learning and the KDCL ensemble, with real Trainer runs on digits."""

import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import DigitsDataModule, DigitsMLP, DistillTerm, TinyCNN
from kd_lightning.cli import build_cli
from kd_lightning.core.objective import total_loss
from kd_lightning.losses import KDLoss, kd_loss
from kd_lightning.losses.feature import FitNetsLoss
from kd_lightning.losses.relation import SPLoss
from kd_lightning.modules.online import OnlineDistillation

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
TINY_CLI = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def teacher_and_student() -> dict[str, torch.nn.Module]:
    return {"teacher": TinyCNN(width=4), "student": DigitsMLP(hidden=(16,))}


def mlp_cohort() -> dict[str, torch.nn.Module]:
    """Three MLPs of different widths: every pair needs its own FitNets adapter (Linear D_learner -> D_source)."""
    return {"big": DigitsMLP(hidden=(32,)), "mid": DigitsMLP(hidden=(24,)), "student": DigitsMLP(hidden=(16,))}


def cohort_terms() -> list[DistillTerm]:
    return [
        DistillTerm(KDLoss(temperature=2.0)),
        DistillTerm(FitNetsLoss(), weight=10.0, student="layer1"),
        DistillTerm(SPLoss(), weight=100.0, student="layer1"),
    ]


def make_online(**overrides) -> OnlineDistillation:
    kwargs = dict(peers=teacher_and_student(), optimizer=SGD)
    kwargs.update(overrides)
    return OnlineDistillation(**kwargs)


def make_dml(**overrides) -> OnlineDistillation:
    kwargs = dict(peers=mlp_cohort(), mutual=True, terms=cohort_terms(), optimizer=SGD)
    kwargs.update(overrides)
    return OnlineDistillation(**kwargs)


def fixed_batch(size: int = 32) -> list[torch.Tensor]:
    data = DigitsDataModule(batch_size=size)
    data.setup()
    return list(next(iter(data.val_dataloader())))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


# ------------------------------------------------------------ the configs, through the CLI
EXPECTED_LOSSES = {
    "online_kd.yaml": {"ce_teacher", "ce_student", "kd_student"},
    "online_dml.yaml": {f"{kind}_peer{i}" for kind in ("ce", "kd") for i in range(3)},
}


@pytest.mark.parametrize("config", sorted(EXPECTED_LOSSES))
def test_config_trains_every_peer_and_its_checkpoint_reloads_without_arguments(config, in_project_copy):
    cli = build_cli(["--config", str(CONFIGS / "digits" / config), *TINY_CLI], run=False)
    module = cli.model
    before = {name: snapshot(net) for name, net in module.cohort.items()}
    cli.trainer.fit(module, datamodule=cli.datamodule)

    assert cli.trainer.global_step == 3
    metrics = cli.trainer.callback_metrics
    logged = {key.removeprefix("train/") for key in metrics if key.startswith("train/")}
    assert logged == {"loss", *EXPECTED_LOSSES[config]}
    assert {f"val/acc_{name}" for name in module.peer_names} <= set(metrics)
    assert metrics["val/acc"] == metrics[f"val/acc_{module.student_name}"]
    for name, net in module.cohort.items():
        changed = [key for key, value in net.state_dict().items() if not torch.equal(value, before[name][key])]
        assert any(key.endswith("weight") for key in changed), f"peer {name} was not trained"

    path = cli.trainer.checkpoint_callback.last_model_path
    restored = OnlineDistillation.load_from_checkpoint(path)
    assert restored.peer_names == module.peer_names and restored.student_name == module.student_name
    for name, net in module.cohort.items():
        expected = net.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in restored.cohort[name].state_dict().items())


# ------------------------------------------------------------ who learns from whom
def test_online_kd_teacher_learns_only_from_labels_and_student_from_both():
    module = make_online(terms=[DistillTerm(KDLoss(temperature=4.0), weight=0.9)])
    x, y = fixed_batch()
    outputs = module.cohort_outputs([x, y])
    losses = module.cohort_losses(outputs, y)
    assert set(losses) == {"ce_teacher", "ce_student", "kd_student"}
    teacher = list(module.peers["teacher"].parameters())
    assert all(g is None for g in grads(losses["kd_student"], teacher)), "the student's KD term reached the teacher"
    for own, via_total in zip(grads(losses["ce_teacher"], teacher), grads(total_loss(losses), teacher), strict=True):
        torch.testing.assert_close(via_total, own)
    student_kd = grads(losses["kd_student"], list(module.student.parameters()))
    assert all(g is not None for g in student_kd) and any(g.abs().sum() > 0 for g in student_kd)


def test_each_peer_gradient_comes_only_from_its_own_losses():
    module = make_dml(ensemble_terms=[DistillTerm(KDLoss(temperature=2.0), weight=0.5)])
    batch = fixed_batch()
    module.dry_run(batch)  # builds the per-pair FitNets adapters
    outputs = module.cohort_outputs(batch)
    own = {name: module.peer_losses(name, outputs, batch[1]) for name in module.peer_names}
    total = total_loss(module.cohort_losses(outputs, batch[1]))
    for name, net in module.cohort.items():
        params = [*net.parameters(), *module.links[name].parameters()]
        assert len(params) > len(list(net.parameters())), "the peer's FitNets adapters are missing"
        for other in module.peer_names:
            if other != name:
                assert all(g is None for g in grads(total_loss(own[other]), params)), f"{other}'s losses reach {name}"
        for key in own[name]:
            assert any(g is not None and g.abs().sum() > 0 for g in grads(own[name][key], params)), key
        for mine, via_total in zip(grads(total_loss(own[name]), params), grads(total, params), strict=True):
            torch.testing.assert_close(via_total, mine)


def test_dml_term_is_the_mean_over_the_other_peers():
    module = make_dml(terms=[DistillTerm(KDLoss(temperature=3.0), weight=0.7)])
    x, y = fixed_batch()
    outputs = module.cohort_outputs([x, y])
    losses = module.cohort_losses(outputs, y)
    logits = {name: out["logits"] for name, out in outputs.items()}
    for name in module.peer_names:
        others = [kd_loss(logits[name], logits[other], temperature=3.0) for other in logits if other != name]
        torch.testing.assert_close(losses[f"kd_{name}"], 0.7 * torch.stack(others).mean())
        torch.testing.assert_close(losses[f"ce_{name}"], F.cross_entropy(logits[name], y))


def test_ensemble_target_is_the_detached_mean_of_the_peers_logits():
    module = make_dml(terms=[], ensemble_terms=[DistillTerm(KDLoss(temperature=2.0))])
    x, y = fixed_batch()
    outputs = module.cohort_outputs([x, y])
    assert all(out["logits"].requires_grad for out in outputs.values())
    target = module.ensemble_target(outputs)["logits"]
    assert not target.requires_grad and target.grad_fn is None
    mean = torch.stack([out["logits"] for out in outputs.values()]).mean(0)
    torch.testing.assert_close(target, mean.detach())
    losses = module.cohort_losses(outputs, y)
    assert set(losses) == {f"{kind}_{name}" for kind in ("ce", "ensemble_kd") for name in module.peer_names}
    torch.testing.assert_close(losses["ensemble_kd_mid"], kd_loss(outputs["mid"]["logits"], mean, temperature=2.0))


def test_per_learner_terms_read_different_layers_of_different_architectures(tmp_path):
    terms = {
        "teacher": [DistillTerm(KDLoss()), DistillTerm(FitNetsLoss(), student="pool", teacher="layer1")],
        "student": [DistillTerm(KDLoss()), DistillTerm(FitNetsLoss(), student="layer1", teacher="pool")],
    }
    module = make_online(mutual=True, terms=terms)
    fast_trainer(tmp_path, max_steps=2).fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert module.links["student"]["fitnets"]["teacher"].loss.regressor.net.weight.shape == (8, 16)
    assert module.links["teacher"]["fitnets"]["student"].loss.regressor.net.weight.shape == (16, 8)


# ------------------------------------------------------------ training, metrics, checkpoints
def test_one_optimizer_holds_every_peer_and_every_adapter(tmp_path):
    module = make_dml()
    trainer = fast_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert len(list(module.links.parameters())) == 12  # 3 learners x 2 sources x Linear(weight, bias)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_validation_logs_every_peer_and_compares_the_student_with_the_other_peers(tmp_path):
    module = make_dml()
    data = DigitsDataModule(batch_size=270)
    trainer = fast_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(module, datamodule=data)
    assert {"val/acc", "val/teacher_acc", "val/agreement", "val/kl"} <= set(trainer.callback_metrics)
    (results,) = trainer.test(module, datamodule=data)
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        logits = {name: net.eval()(x) for name, net in module.cohort.items()}
    for name, value in logits.items():
        assert results[f"test/acc_{name}"] == pytest.approx(float((value.argmax(-1) == y).float().mean()), abs=1e-6)
    student, others = logits["student"], (logits["big"] + logits["mid"]) / 2
    assert results["test/acc"] == results["test/acc_student"]
    assert results["test/teacher_acc"] == pytest.approx(float((others.argmax(-1) == y).float().mean()), abs=1e-6)
    assert results["test/agreement"] == pytest.approx(float((student.argmax(-1) == others.argmax(-1)).float().mean()))
    kl = (others.softmax(-1) * (others.log_softmax(-1) - student.log_softmax(-1))).sum(-1).mean()
    assert results["test/kl"] == pytest.approx(float(kl), rel=1e-4)


def test_two_peer_cohort_reports_the_teacher(tmp_path):
    module = make_online()
    trainer = fast_trainer(tmp_path, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    metrics = trainer.callback_metrics
    teacher, student = module.deployables()
    assert (teacher.name, teacher.role, teacher.network) == ("teacher", "teacher", module.peers["teacher"])
    assert (student.role, student.network, student.reference) == ("student", module.student, "the teacher")
    assert module(fixed_batch()[0]).shape == (32, 10)
    assert metrics["val/teacher_acc"] == metrics["val/acc_teacher"] and metrics["val/acc"] == metrics["val/acc_student"]


def test_checkpoint_round_trip_restores_every_peer_and_adapter(tmp_path):
    module = make_dml()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    for prefix in ("student.", "peers.big.", "peers.mid.", "links.student.fitnets.big.", "links.big.fitnets.mid."):
        assert any(key.startswith(prefix) for key in saved["state_dict"]), prefix
    assert saved["hyper_parameters"] == {
        "student": "student",
        "mutual": True,
        "ensemble_terms": None,
        "ce_weight": 1.0,
        "num_classes": 10,
        "lr_scheduler": None,
        "label_smoothing": 0.0,
        "on_nonfinite": "stop",
        "compile": False,
        "channels_last": False,
    }

    restored = OnlineDistillation.load_from_checkpoint(
        checkpoint.last_model_path, peers=mlp_cohort(), terms=cohort_terms(), optimizer=SGD
    )
    expected = module.state_dict()
    assert restored.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in restored.state_dict().items())


def test_bf16_mixed_precision_fit(tmp_path):
    module = make_dml(ensemble_terms=[DistillTerm(KDLoss())])
    trainer = fast_trainer(tmp_path, precision="bf16-mixed", max_steps=2)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_saves_every_peer(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(
        tmp_path, strategy="ddp_spawn", devices=2, max_steps=2, enable_checkpointing=True, callbacks=[checkpoint]
    )
    trainer.fit(make_dml(), datamodule=DigitsDataModule(batch_size=16))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)  # written by rank 0 in the spawned process
    assert saved["global_step"] == 2
    assert {key.split(".")[1] for key in saved["state_dict"] if key.startswith("peers.")} == {"big", "mid"}


def test_peers_given_as_a_list_are_named_by_position():
    module = OnlineDistillation(peers=[DigitsMLP(), DigitsMLP(hidden=(8,))], student="peer1", mutual=True)
    assert module.peer_names == ["peer0", "peer1"] and module.student is module.cohort["peer1"]
    assert module.loss_names() == ["ce_peer0", "kd_peer0", "ce_peer1", "kd_peer1"]


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("teacher_classes", "student_classes", "message"),
    [(10, 5, "teacher 10, student 5"), (5, 5, "num_classes=10")],
    ids=["peers-differ", "peers-disagree-with-num_classes"],
)
def test_class_count_mismatches_fail_before_training(tmp_path, teacher_classes, student_classes, message):
    module = make_online(
        peers={"teacher": TinyCNN(num_classes=teacher_classes), "student": DigitsMLP(num_classes=student_classes)}
    )
    trainer = fast_trainer(tmp_path)
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, datamodule=DigitsDataModule())
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (lambda: dict(peers={"student": DigitsMLP()}), ValueError, r"at least two peers but got 1 \(\['student'\]\)"),
        (lambda: dict(peers=[DigitsMLP(), DigitsMLP()]), ValueError, r"one of the peers \['peer0', 'peer1'\]"),
        (lambda: dict(peers={"teacher": DigitsMLP(), "student": "mlp"}), TypeError, "peer 'student' is str"),
        (lambda: dict(peers={"my.net": DigitsMLP(), "student": DigitsMLP()}), ValueError, "identifiers"),
        (lambda: dict(peers=dict.fromkeys(("teacher", "student"), DigitsMLP())), ValueError, "distinct networks"),
        (lambda: dict(terms=[DistillTerm(KDLoss(temperature=-1.0))]), ValueError, "temperature"),
        (lambda: dict(terms=[DistillTerm(KDLoss(), weight=-0.1)]), ValueError, "weight >= 0"),
        (lambda: dict(ce_weight=-1.0), ValueError, "ce_weight >= 0"),
        (lambda: dict(terms=[KDLoss()]), TypeError, "DistillTerm"),
        (lambda: dict(terms={"teacher": [DistillTerm(KDLoss())]}), ValueError, "only the student learns"),
        (lambda: dict(mutual=True, terms={"student": []}), ValueError, "give each peer a list"),
        (lambda: dict(ensemble_terms=[DistillTerm(FitNetsLoss(), student="layer1")]), ValueError, "only logits"),
        (
            lambda: dict(terms=[DistillTerm(FitNetsLoss(), student="layr1")]),
            ValueError,
            "nearest valid names: 'layer1'",
        ),
    ],
)
def test_bad_input_fails_at_construction(overrides, error, message):
    with pytest.raises(error, match=message):
        make_online(**overrides())


def test_colliding_loss_names_fail_at_construction():
    terms = [DistillTerm(KDLoss(), name="x"), DistillTerm(KDLoss(), name="x_a")]
    with pytest.raises(ValueError, match=r"\['x_a_b'\] would be logged twice"):
        OnlineDistillation(peers={"a_b": DigitsMLP(), "b": DigitsMLP()}, student="b", mutual=True, terms=terms)
