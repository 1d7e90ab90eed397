"""Layer-wise self-distillation (BYOT exits), checked with real Trainer runs on digits."""

import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import fast_trainer
from torch import nn

from kd_lightning import DigitsCNN, DigitsDataModule, DigitsMLP
from kd_lightning.losses import kd_loss
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.self_distillation import SelfDistillation

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)


def make_module(student=None, layers=("layer1", "layer2"), **exit_args) -> SelfDistillation:
    torch.manual_seed(0)
    student = student or DigitsCNN(width=8, dropout=0.0)
    return SelfDistillation(student, exits=BYOTExits(list(layers), **exit_args), optimizer=SGD)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BYOT module after a short real fit (8 steps, with validation)."""
    module = make_module()
    trainer = fast_trainer(tmp_path_factory.mktemp("byot"), max_epochs=2, limit_val_batches=3)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    return module, trainer


def test_exits_are_built_for_the_named_layers_and_trained(trained):
    module, trainer = trained
    heads = module.exits.heads
    assert list(heads) == ["layer1", "layer2"]
    assert heads["layer1"].bottleneck.net[0].in_channels == 8 and heads["layer2"].bottleneck.net[0].in_channels == 16
    for head in heads.values():
        assert head.bottleneck.net[0].out_channels == 8, "narrowed to a quarter of the deepest width"
        assert head.bottleneck.net[-3].out_features == 32, "widened to the deepest feature width (4 * 8)"
        assert (head.classifier.net.in_features, head.classifier.net.out_features) == (32, 10)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters()}
    assert {"val/acc_exit_layer1", "val/acc_exit_layer2", "val/acc"} <= set(trainer.callback_metrics)
    assert all(0 <= float(trainer.callback_metrics[f"val/acc_exit_{k}"]) <= 1 for k in heads)


def test_every_exit_receives_gradient_and_the_deepest_output_is_only_a_target(trained):
    module, _ = trained
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = module.compute_losses([x, y])
    assert set(losses) == {"ce"} | {f"exit_{kind}_{k}" for kind in ("ce", "kd", "hint") for k in ("layer1", "layer2")}
    module.zero_grad()
    sum(losses.values()).backward()
    for name, head in module.exits.heads.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name
    module.zero_grad()
    losses = module.compute_losses([x, y])
    sum(value for key, value in losses.items() if key.startswith(("exit_kd", "exit_hint"))).backward()
    deep = [*module.student.layer3.parameters(), *module.student.head.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in deep), "teacher side (deepest logits/features) detached"
    assert module.student.layer1[0].weight.grad.abs().sum() > 0


def test_exit_losses_follow_the_byot_formula():
    module = make_module(layers=["layer2"], alpha=0.3, temperature=2.0, hint_weight=0.05)
    module.eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    losses = module.compute_losses([x, y])
    outputs = module.student_tap(x)
    head = module.exits.heads["layer2"]
    hidden = head.bottleneck.net(outputs["layer2"])
    logits = head.classifier.net(hidden)
    deepest = outputs["pool"]
    torch.testing.assert_close(losses["ce"], 0.7 * F.cross_entropy(outputs["logits"], y))
    torch.testing.assert_close(losses["exit_ce_layer2"], 0.7 * F.cross_entropy(logits, y))
    torch.testing.assert_close(losses["exit_kd_layer2"], 0.3 * kd_loss(logits, outputs["logits"], 2.0))
    torch.testing.assert_close(losses["exit_hint_layer2"], 0.05 * ((hidden - deepest) ** 2).sum(1).mean())


def test_truncated_exit_model_stands_alone_and_matches_the_exit_inside(trained):
    module, _ = trained
    x = torch.randn(32, 1, 8, 8)
    module.eval()
    with torch.no_grad():
        inside = module.exit_logits(x)
    full = sum(p.numel() for p in module.student.parameters())
    sizes = []
    for layer in ("layer1", "layer2"):
        model = module.exit_model(layer)
        assert isinstance(model, nn.Sequential) and not model.training
        assert not any(m._forward_hooks for m in model.modules())
        student_params = {id(p) for p in module.parameters()}
        assert not any(id(p) in student_params for p in model.parameters()), "a copy, not shared weights"
        with torch.no_grad():
            torch.testing.assert_close(model(x), inside[layer])
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[0] < sizes[1] < full
    rows = module.exit_summary()
    assert [row["exit"] for row in rows] == ["full network", "layer1", "layer2"]
    assert [row["parameters"] for row in rows] == [full, *sizes]
    assert rows[1]["val acc"] == pytest.approx(float(module.trainer.callback_metrics["val/acc_exit_layer1"]))


def test_exits_of_a_vector_network():
    module = make_module(DigitsMLP(hidden=(32, 16)), layers=["layer1"], feature_layer="layer2")
    module.dry_run([torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))])
    assert isinstance(module.exits.heads["layer1"].bottleneck.net[0], nn.Linear)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(module.exit_model("layer1", x)(x), module.eval().exit_logits(x)["layer1"])


def test_checkpoint_with_exits_loads_strictly(trained, tmp_path):
    module, trainer = trained
    path = tmp_path / "byot.ckpt"
    trainer.save_checkpoint(path)
    restored = SelfDistillation.load_from_checkpoint(
        path, student=DigitsCNN(width=8, dropout=0.0), exits=BYOTExits(["layer1", "layer2"])
    )
    x = torch.randn(4, 1, 8, 8)
    module.eval()
    with torch.no_grad():
        for layer, logits in restored.eval().exit_logits(x).items():
            torch.testing.assert_close(logits, module.exit_logits(x)[layer])


def test_an_exit_on_a_missing_layer_lists_the_nearest_names():
    with pytest.raises(ValueError, match=r"no submodule named 'layer9'.*'layer1'"):
        make_module(layers=["layer9"])
    with pytest.raises(ValueError, match="no submodule named 'pooling'"):
        make_module(feature_layer="pooling")


class PairStage(nn.Module):
    def forward(self, x):
        return x, x.mean()


class PairNet(nn.Module):
    """A stage whose output is a tuple, not a tensor."""

    def __init__(self):
        super().__init__()
        self.stem, self.pair = nn.Conv2d(1, 4, 3, padding=1), PairStage()
        self.pool, self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.pool(self.pair(self.stem(x))[0]))


def test_an_exit_on_a_stage_returning_a_tuple_reads_its_first_tensor(tmp_path):
    module = SelfDistillation(PairNet(), exits=BYOTExits(["pair"]))
    trainer = fast_trainer(tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step > 0
    assert module.exit_logits(torch.randn(2, 1, 8, 8))["pair"].shape == (2, 10)


class PositionNet(nn.Module):
    """A parameter of the root is added between ``stem`` and ``layer1``: the forward is not a chain of children."""

    def __init__(self):
        super().__init__()
        self.stem, self.layer1 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.position = nn.Parameter(torch.randn(1, 16, 8, 8))
        self.pool, self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.pool(self.layer1(self.stem(x) + self.position)))


def test_truncating_a_network_that_is_not_a_chain_is_an_error():
    torch.manual_seed(0)
    module = SelfDistillation(PositionNet(), exits=BYOTExits(["layer1"]))
    batch = [torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))]
    module.dry_run(batch)
    with pytest.raises(ValueError, match="not a chain of its children"):
        module.exit_model("layer1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=[]), "non-empty list"),
        (dict(layers=["layer1", "layer1"]), "distinct exit layers"),
        (dict(layers=["pool"]), "distinct exit layers"),
        (dict(layers=["layer1"], alpha=1.5), "alpha in"),
        (dict(layers=["layer1"], temperature=0.0), "temperature > 0"),
        (dict(layers=["layer1"], hint_weight=-1.0), "hint_weight >= 0"),
    ],
)
def test_bad_exit_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BYOTExits(**kwargs)


def test_optional_terms_compare_the_network_with_its_own_deeper_outputs():
    from kd_lightning import DistillTerm
    from kd_lightning.losses.feature import ATLoss

    torch.manual_seed(0)
    student = DigitsCNN(width=8, dropout=0.0)
    term = DistillTerm(ATLoss(), weight=10.0, student="layer1", teacher="layer2")
    module = SelfDistillation(student, exits=BYOTExits(["layer1"]), terms=[term])
    losses = module.compute_losses([torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))])
    assert losses["at"] > 0
    losses["at"].backward()
    assert student.layer1[0].weight.grad.abs().sum() > 0
    assert student.layer2[1][0].weight.grad is None, "the deeper layer is the (detached) teacher"
