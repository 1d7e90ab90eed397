import pytest
import torch
import torch.nn.functional as F

from kd_lightning.core.objective import DistillTerm, Objective, total_loss
from kd_lightning.losses import ATLoss, FSPLoss, KDLoss


def test_objective_returns_weighted_named_components():
    torch.manual_seed(0)
    student = {"logits": torch.randn(6, 10), "layer1": torch.randn(6, 4)}
    teacher = {"logits": torch.randn(6, 10)}
    target = torch.randint(0, 10, (6,))
    objective = Objective([DistillTerm(KDLoss(temperature=2.0), weight=0.7)], ce_weight=0.3)
    losses = objective(student, teacher, target)
    assert list(losses) == ["ce", "kd"]
    torch.testing.assert_close(losses["ce"], 0.3 * F.cross_entropy(student["logits"], target))
    torch.testing.assert_close(losses["kd"], 0.7 * KDLoss(temperature=2.0)(student["logits"], teacher["logits"]))
    torch.testing.assert_close(total_loss(losses), losses["ce"] + losses["kd"])


@pytest.mark.parametrize(("epoch", "factor"), [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)])
def test_weight_ramps_up_linearly_over_warmup_epochs(epoch, factor):
    term = DistillTerm(KDLoss(), weight=8.0, warmup_epochs=4)
    assert term.weight_at(epoch) == pytest.approx(8.0 * factor)


def test_term_reads_named_layers_and_passes_tuples_for_lists():
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, student, teacher, target=None):
            seen["student"], seen["teacher"] = student, teacher
            return torch.zeros(())

    outputs = {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}
    DistillTerm(Recorder(), student=["a", "b"], teacher=["b", "a"])(outputs, outputs)
    assert isinstance(seen["student"], tuple) and seen["student"][0] is outputs["a"]
    assert seen["teacher"][0].equal(outputs["b"])


def test_teacher_side_is_detached():
    student = {"logits": torch.randn(4, 5, requires_grad=True)}
    teacher = {"logits": torch.randn(4, 5, requires_grad=True)}
    loss = DistillTerm(KDLoss())(student, teacher)
    student_grad, teacher_grad = torch.autograd.grad(loss, [student["logits"], teacher["logits"]], allow_unused=True)
    assert student_grad.abs().sum() > 0 and teacher_grad is None


def test_duplicate_term_names_are_made_unique():
    objective = Objective([DistillTerm(KDLoss()), DistillTerm(KDLoss(), student="layer1", teacher="layer2")])
    assert [term.name for term in objective.terms] == ["kd_logits", "kd_layer1"]
    assert objective.student_layers == ["logits", "layer1"]
    assert objective.teacher_layers == ["logits", "layer2"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DistillTerm(KDLoss(), weight=-1.0), "weight >= 0"),
        (lambda: DistillTerm(KDLoss(), warmup_epochs=-2), "warmup_epochs >= 0"),
        (lambda: DistillTerm(KDLoss(), student=["a", "b"], teacher=["a"]), "same \\(non-zero\\) number"),
        (lambda: Objective([], ce_weight=-0.5), "ce_weight >= 0"),
        (lambda: KDLoss(temperature=0.0), "temperature"),
        (lambda: DistillTerm(FSPLoss(), student="layer1", teacher="layer2"), "FSPLoss relates 2 layers .* \\[stem, l"),
        (lambda: DistillTerm(FSPLoss(), student=["a"], teacher=["b"]), "got student=\\['a'\\]; pass a list of 2"),
        (lambda: DistillTerm(ATLoss(), student=["a", "b"]), "ATLoss compares one output .* one DistillTerm per"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_terms_without_teacher_outputs_raise():
    objective = Objective([DistillTerm(KDLoss())])
    with pytest.raises(ValueError, match="need teacher outputs"):
        objective({"logits": torch.randn(2, 3)}, None, torch.tensor([0, 1]))


def test_a_one_layer_list_reads_a_tensor_and_custom_losses_get_what_they_ask_for():
    outputs = {"a": torch.ones(2, 3), "b": torch.zeros(2, 3)}
    assert not DistillTerm(ATLoss(), student=["a"]).multi_layer

    class PairLoss(torch.nn.Module):  # no layers_per_network: a list of names passes a tuple, unchecked
        def forward(self, student, teacher, target=None):
            return sum(s.sum() - t.sum() for s, t in zip(student, teacher, strict=True))

    assert DistillTerm(PairLoss(), student=["a", "b"], teacher=["b", "a"])(outputs, outputs).item() == 0.0


def test_a_failing_term_is_named_in_the_error():
    objective = Objective([DistillTerm(ATLoss(), student="layer1", teacher="layer2", name="at_hint")])
    student = {"logits": torch.randn(4, 3), "layer1": torch.randn(4, 2, 4, 4)}
    teacher = {"logits": torch.randn(2, 3), "layer2": torch.randn(2, 5, 4, 4)}
    with pytest.raises(ValueError, match="term 'at_hint' \\(ATLoss on student layer1 vs teacher layer2\\): .*batch"):
        objective(student, teacher, torch.tensor([0, 1, 2, 0]))
