"""Sentence-embedding losses against references written from their formulas, element by element."""

from __future__ import annotations

import pytest
import torch

from kd_lightning.core.taps import FeatureTap, mean_pool
from kd_lightning.losses import EmbeddingCosineLoss, PairwiseCosineLoss, embedding_cosine_loss, pairwise_cosine_loss


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / ((a * a).sum() * (b * b).sum()).sqrt()


def embedding_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(1 / B) sum_b (1 - cos(s_b, t_b))."""
    rows = [1 - cosine(s, t) for s, t in zip(student.double(), teacher.double(), strict=True)]
    return torch.stack(rows).mean()


def pairwise_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(1 / B^2) sum_ij (cos(s_i, s_j) - cos(t_i, t_j))^2."""
    s, t, count = student.double(), teacher.double(), len(student)
    terms = [(cosine(s[i], s[j]) - cosine(t[i], t[j])) ** 2 for i in range(count) for j in range(count)]
    return torch.stack(terms).sum() / count**2


@pytest.mark.parametrize(
    ("function", "reference", "widths"),
    [(embedding_cosine_loss, embedding_reference, (8, 8)), (pairwise_cosine_loss, pairwise_reference, (8, 12))],
)
def test_value_and_gradient_equal_the_formula(function, reference, widths):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, widths[0], generator=generator, requires_grad=True)
    teacher = torch.randn(6, widths[1], generator=generator)
    got = function(student, teacher)
    (got_grad,) = torch.autograd.grad(got, student)
    double = student.detach().double().requires_grad_(True)
    expected = reference(double, teacher)
    (expected_grad,) = torch.autograd.grad(expected, double)
    assert got.dtype == torch.float32 and got.ndim == 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.double(), expected_grad, rtol=1e-4, atol=1e-6)
    assert function(teacher[:, : widths[0]], teacher[:, : widths[0]]).abs() < 1e-6  # equal embeddings: 0


def test_the_losses_ignore_scale_and_treat_the_teacher_as_a_constant():
    student, teacher = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    for function in (embedding_cosine_loss, pairwise_cosine_loss):
        torch.testing.assert_close(function(3 * student, 0.5 * teacher), function(student, teacher))
        function(student, teacher).backward()
        assert teacher.grad is None and student.grad is not None


def test_the_module_forms_project_a_narrower_student_and_refuse_token_states():
    loss = EmbeddingCosineLoss()
    value = loss(torch.randn(4, 8), torch.randn(4, 16))
    assert value.ndim == 0 and loss.projection.net.weight.shape == (16, 8)
    with pytest.raises(ValueError, match=r"same width H .* use EmbeddingCosineLoss\(project=True\)"):
        EmbeddingCosineLoss(project=False)(torch.randn(4, 8), torch.randn(4, 16))
    with pytest.raises(ValueError, match=r"embeddings \[B, H\] but got shape \(4, 3, 8\); .* read the 'pooled' output"):
        PairwiseCosineLoss()(torch.randn(4, 3, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="same batch but got 4 .* and 3"):
        PairwiseCosineLoss()(torch.randn(4, 8), torch.randn(3, 8))


def test_mean_pool_averages_the_real_tokens_only():
    states = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    states[0, 3:] = float("nan")  # padding may hold anything
    pooled = mean_pool(states, mask)
    torch.testing.assert_close(pooled[0], states[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], states[1].mean(0))
    assert (pooled[2] == 0).all()  # no real token: zeros, not NaN
    torch.testing.assert_close(mean_pool(states[1:2], None), states[1:2].mean(1))


def test_the_pooled_output_of_a_tap_is_refused_on_a_network_with_logits():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    ids = torch.randint(0, 30, (2, 5))
    encoder = FeatureTap(transformers.BertModel(config).eval(), ["pooled"], role="student")
    outputs = encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert outputs["pooled"].shape == (2, 8)
    masked_lm = FeatureTap(transformers.BertForMaskedLM(config).eval(), ["pooled"], role="student")
    with pytest.raises(ValueError, match="student BertForMaskedLM returns logits .* 'pooled' averages"):
        masked_lm(input_ids=ids)
