"""Tests of CRD against an independent reference written from the paper and RepDistiller's code.

The reference below restates RepDistiller's ``Embed`` (linear + L2 norm), ``ContrastMemory.forward`` (scores
``exp(<M[idx], v> / T)``, ``Z`` fixed on the first batch, momentum update of the banks) and ``ContrastLoss`` (Eq. 18)
step by step in float64; the tests feed it the module's own initial heads, banks and negatives and compare the value,
the gradients, the updated banks and ``Z``. A second reference restates the negatives of RepDistiller's CIFAR-100 runs
(``CIFAR100InstanceSample``, ``--mode exact``): ``K`` samples of the other classes per sample. The generic checks run
from ``LossTester`` on a module in eval mode (whose negatives and state do not move between calls); the training-mode
state (banks, ``Z``, the step counter) is tested here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor

from kd_lightning.losses.crd import CRDLoss, _mix_seed, crd_loss, nce_contrast_loss, update_memory_bank

# ----------------------------------------------------------------------------------------------------------------------
# Independent reference (float64), after Tian et al. and RepDistiller crd/criterion.py, crd/memory.py.
# ----------------------------------------------------------------------------------------------------------------------


def ref_embed(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``Embed``: flatten, linear, divide by the L2 norm."""
    x = x.reshape(x.shape[0], -1) @ weight.t() + bias
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def ref_contrast_loss(x: Tensor, n_data: int) -> Tensor:
    """``ContrastLoss``: x ``[B, K+1]`` (positive first), Pn = 1 / n_data, eps = 1e-7."""
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1.0 / n_data
    p_pos = x[:, 0]
    log_d1 = torch.log(p_pos / (p_pos + m * pn + 1e-7))
    p_neg = x[:, 1:]
    log_d0 = torch.log(torch.full_like(p_neg, m * pn) / (p_neg + m * pn + 1e-7))
    return -(log_d1.sum() + log_d0.sum()) / bsz


class RefCRD:
    """``ContrastMemory`` + the two ``ContrastLoss`` sides; v1 = student embedding, v2 = teacher embedding."""

    def __init__(self, memory_v1: Tensor, memory_v2: Tensor, temperature: float, momentum: float) -> None:
        self.memory_v1, self.memory_v2 = memory_v1.double().clone(), memory_v2.double().clone()
        self.temperature, self.momentum = temperature, momentum
        self.z_v1 = self.z_v2 = -1.0

    def __call__(self, v1: Tensor, v2: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        batch, k_plus_1 = idx.shape
        n, dim = self.memory_v1.shape
        weight_v1 = self.memory_v1[idx.reshape(-1)].reshape(batch, k_plus_1, dim)
        out_v2 = torch.exp(torch.bmm(weight_v1, v2.reshape(batch, dim, 1)) / self.temperature).squeeze(2)
        weight_v2 = self.memory_v2[idx.reshape(-1)].reshape(batch, k_plus_1, dim)
        out_v1 = torch.exp(torch.bmm(weight_v2, v1.reshape(batch, dim, 1)) / self.temperature).squeeze(2)
        if self.z_v1 < 0:
            self.z_v1 = out_v1.mean().item() * n
        if self.z_v2 < 0:
            self.z_v2 = out_v2.mean().item() * n
        out_v1, out_v2 = out_v1 / self.z_v1, out_v2 / self.z_v2
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                pos = memory[y] * self.momentum + v * (1 - self.momentum)
                memory[y] = pos / pos.pow(2).sum(1, keepdim=True).pow(0.5)
        return ref_contrast_loss(out_v1, n) + ref_contrast_loss(out_v2, n)


def ref_exact_mode_pools(labels: Tensor) -> dict[int, Tensor]:
    """``CIFAR100InstanceSample.cls_negative``: per class, each index of the other classes (class, then index order)."""
    classes = sorted(set(labels.tolist()))
    positive = {c: [i for i, y in enumerate(labels.tolist()) if y == c] for c in classes}
    return {c: torch.tensor([i for other in classes if other != c for i in positive[other]]) for c in classes}


def check_exact_mode_draws(idx: Tensor, index: Tensor, labels: Tensor, k: int) -> None:
    """The ``sample_idx`` property of ``--mode exact``: the sample, then ``k`` indices of its other-class pool, distinct
    unless ``k`` exceeds the pool (``replace = k > len(cls_negative[target])``)."""
    pools = ref_exact_mode_pools(labels)
    assert idx.shape == (len(index), k + 1) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], index)
    for row, sample in zip(idx, index.tolist(), strict=True):
        pool = pools[int(labels[sample])]
        negatives = row[1:]
        assert torch.isin(negatives, pool).all() and (labels[negatives] != labels[sample]).all()
        if k <= len(pool):
            assert len(negatives.unique()) == k


def _leaf(x: Tensor) -> Tensor:
    return x.detach().double().clone().requires_grad_(True)


N, FEAT, K = 12, 4, 7
LABELS = torch.tensor([2, 0, 1, 1, 0, 2, 0, 1, 2, 0, 1, 2])  # three classes of 4: each pool holds 8 >= K samples


def _batch(seed: int, student_shape=(5, 6), teacher_shape=(5, 9)) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(student_shape, generator=generator)
    teacher = torch.randn(teacher_shape, generator=generator)
    return student, teacher, torch.randperm(N, generator=generator)[: student_shape[0]]


def _built(student: Tensor, teacher: Tensor, index: Tensor, **kwargs) -> CRDLoss:
    """A CRDLoss whose heads and banks exist (an eval call builds them and changes no state), back in train mode."""
    torch.manual_seed(0)
    module = CRDLoss(**({"feat_dim": FEAT, "nce_k": K} | kwargs)).eval()
    module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    return module.train()


# ----------------------------------------------------------------------------------------------------------------------
# Value, gradients, bank update and Z against the reference.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("negatives", ["other_classes", "uniform"])
@pytest.mark.parametrize("nce_k", [K, 1], ids=["all-dot-products", "gathered-rows"])  # the two ways of scoring
@pytest.mark.parametrize(("student_shape", "teacher_shape"), [((5, 6), (5, 9)), ((5, 2, 2, 2), (5, 3, 1, 3))])
def test_two_training_steps_match_reference(student_shape, teacher_shape, nce_k, negatives):
    student, teacher, index = _batch(0, student_shape, teacher_shape)
    module = _built(student, teacher, index, nce_t=0.1, nce_m=0.3, nce_k=nce_k, negatives=negatives)
    ref = RefCRD(module.memory_student, module.memory_teacher, temperature=0.1, momentum=0.3)
    heads = {"s": module.embed_student.net, "t": module.embed_teacher.net}
    for step, seed in enumerate((0, 1)):
        student, teacher, index = _batch(seed, student_shape, teacher_shape)
        idx = module.contrast_indices(index, training=True, dataset_labels=LABELS)
        if negatives == "other_classes":
            check_exact_mode_draws(idx, index, LABELS, nce_k)
        params = {k: (_leaf(h.weight), _leaf(h.bias)) for k, h in heads.items()}
        x_s = _leaf(student)
        expected = ref(ref_embed(x_s, *params["s"]), ref_embed(teacher.double(), *params["t"]), index, idx)
        expected.backward()

        x = student.clone().requires_grad_(True)
        loss = module(x, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.shape == ()
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad.double(), x_s.grad, rtol=1e-4, atol=1e-6)
        for key, head in heads.items():
            torch.testing.assert_close(head.weight.grad.double(), params[key][0].grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(head.bias.grad.double(), params[key][1].grad, rtol=1e-4, atol=1e-6)
            head.zero_grad()
        torch.testing.assert_close(module.memory_student.double(), ref.memory_v1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(module.memory_teacher.double(), ref.memory_v2, rtol=1e-5, atol=1e-6)
        z = torch.tensor([ref.z_v1, ref.z_v2], dtype=torch.float64)
        torch.testing.assert_close(module.normalisers.double(), z, rtol=1e-5, atol=0)
        assert int(module.step) == step + 1


def test_memory_update_touches_only_the_batch_rows():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    before_s, before_t = module.memory_student.clone(), module.memory_teacher.clone()
    module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    others = torch.ones(N, dtype=torch.bool)
    others[index] = False
    assert torch.equal(module.memory_student[others], before_s[others])
    assert torch.equal(module.memory_teacher[others], before_t[others])
    assert not torch.equal(module.memory_student[index], before_s[index])
    torch.testing.assert_close(module.memory_student[index].norm(dim=1), torch.ones(len(index)))
    torch.testing.assert_close(module.memory_teacher[index].norm(dim=1), torch.ones(len(index)))


def test_function_forms_match_reference():
    generator = torch.Generator().manual_seed(3)
    e_s = torch.nn.functional.normalize(torch.randn(4, FEAT, generator=generator), dim=1)
    e_t = torch.nn.functional.normalize(torch.randn(4, FEAT, generator=generator), dim=1)
    memory_s, memory_t = torch.rand(N, FEAT, generator=generator), torch.rand(N, FEAT, generator=generator)
    idx = torch.randint(0, N, (4, K + 1), generator=generator)
    ref = RefCRD(memory_s, memory_t, temperature=0.07, momentum=0.5)
    expected = ref(e_s.double(), e_t.double(), idx[:, 0], idx)
    torch.testing.assert_close(crd_loss(e_s, e_t, memory_s, memory_t, idx).double(), expected, rtol=1e-5, atol=1e-6)
    fixed = torch.tensor([2.0, 3.0])  # given Z: no estimate from the batch
    ref_fixed = RefCRD(memory_s, memory_t, temperature=0.07, momentum=0.5)
    ref_fixed.z_v1, ref_fixed.z_v2 = 2.0, 3.0
    expected = ref_fixed(e_s.double(), e_t.double(), idx[:, 0], idx)
    value = crd_loss(e_s, e_t, memory_s, memory_t, idx, normalisers=fixed)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    scores = torch.rand(3, 6, generator=generator) + 0.01
    torch.testing.assert_close(nce_contrast_loss(scores, 20).double(), ref_contrast_loss(scores.double(), 20))
    memory, rows = memory_s.clone(), torch.tensor([1, 4])
    update_memory_bank(memory, e_s[:2], rows, momentum=0.5)
    ref_update = RefCRD(memory_s, memory_t, 0.07, 0.5)
    ref_update(e_s[:2].double(), e_t[:2].double(), rows, idx[:2])
    torch.testing.assert_close(memory.double(), ref_update.memory_v1)


def test_banks_initialised_as_reference_from_seed():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index, feat_dim=6)
    stdv = 1.0 / math.sqrt(6 / 3)
    for bank in (module.memory_student, module.memory_teacher):
        assert bank.shape == (N, 6) and bank.dtype == torch.float32
        assert bank.min() >= -stdv and bank.max() <= stdv
    assert not torch.equal(module.memory_student, module.memory_teacher)
    again = _built(student, teacher, index, feat_dim=6)
    assert torch.equal(again.memory_student, module.memory_student)
    other = _built(student, teacher, index, feat_dim=6, seed=1)
    assert not torch.equal(other.memory_student, module.memory_student)


@pytest.mark.parametrize("nce_k", [K, 8, 50], ids=["fewer-than-the-pool", "the-whole-pool", "with-replacement"])
def test_negatives_other_classes_as_repdistiller_exact_mode(nce_k):
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index, nce_k=nce_k)
    assert module.negatives == "other_classes"
    for seed in (0, 1, 2):  # three training steps, each checked before it is taken
        student, teacher, index = _batch(seed)
        idx = module.contrast_indices(index, training=True, dataset_labels=LABELS)
        check_exact_mode_draws(idx, index, LABELS, nce_k)
        if nce_k == 8:  # the whole pool, each index once
            assert all(
                torch.equal(row[1:].sort().values, ref_exact_mode_pools(LABELS)[int(LABELS[i])].sort().values)
                for row, i in zip(idx, index.tolist(), strict=True)
            )
        assert torch.equal(module.contrast_indices(index, training=True), idx)  # the labels last seen, same stream
        assert torch.isfinite(module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS))
    uneven = torch.tensor([0] * 9 + [1, 2, 3])  # class 0's pool holds 3 < nce_k: with replacement from those 3
    idx = module.contrast_indices(torch.arange(N), training=True, dataset_labels=uneven)
    check_exact_mode_draws(idx, torch.arange(N), uneven, nce_k)
    assert set(idx[:9, 1:].unique().tolist()) == {9, 10, 11}


def test_negatives_other_classes_is_not_uniform():
    labels = torch.arange(1000) % 2  # two classes: an other-class pool holds every second index
    module = CRDLoss(feat_dim=FEAT, nce_k=400)
    module(torch.randn(4, 3), torch.randn(4, 3), index=torch.arange(4), dataset_size=1000, dataset_labels=labels)
    idx = module.contrast_indices(torch.arange(4), training=True)
    assert ((idx[:, 1:] % 2) != (torch.arange(4)[:, None] % 2)).all()
    assert (idx[:, 1:].sort(dim=1).values.diff(dim=1) > 0).all()  # 400 of 500: without replacement
    uniform = CRDLoss(feat_dim=FEAT, nce_k=400, negatives="uniform")
    uniform(torch.randn(4, 3), torch.randn(4, 3), index=torch.arange(4), dataset_size=1000, dataset_labels=labels)
    assert ((uniform.contrast_indices(torch.arange(4), training=True)[:, 1:] % 2) == 0).any()


def test_uniform_negatives_unchanged():
    """``negatives="uniform"`` draws exactly as before the option existed: ``randint(0, N, [B, K+1])`` of the step's
    stream, column 0 replaced by the sample (and reads no labels)."""
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index, negatives="uniform")
    module(student, teacher, index=index, dataset_size=N)  # no labels needed
    expected = torch.randint(0, N, (5, K + 1), generator=torch.Generator().manual_seed(_mix_seed(0, 1)))
    expected[:, 0] = index
    assert torch.equal(module.contrast_indices(index, training=True), expected)


def test_negatives_uniform_with_replacement_and_positive_first():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index, nce_k=50, negatives="uniform")  # nce_k >= N: with replacement
    idx = module.contrast_indices(index, training=True)
    assert idx.shape == (5, 51) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], index) and idx.min() >= 0 and idx.max() < N
    assert torch.isfinite(module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS))
    assert not torch.equal(module.contrast_indices(index, training=True), idx)  # the next step draws others


def test_explicit_contrast_idx_replaces_the_draw():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    idx = torch.cat([index[:, None], torch.randint(0, N, (5, 3))], dim=1)
    ref = RefCRD(module.memory_student, module.memory_teacher, 0.07, 0.5)
    heads = module.embed_student.net, module.embed_teacher.net
    e_s = ref_embed(student.double(), heads[0].weight.double(), heads[0].bias.double())
    e_t = ref_embed(teacher.double(), heads[1].weight.double(), heads[1].bias.double())
    expected = ref(e_s, e_t, index, idx)
    value = module(student, teacher, index=index, dataset_size=N, contrast_idx=idx)
    torch.testing.assert_close(value.double(), expected.detach(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation, checkpoints and resume.
# ----------------------------------------------------------------------------------------------------------------------


def _state(module: CRDLoss) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def ref_eval(e_s: Tensor, e_t: Tensor, memory_s: Tensor, memory_t: Tensor, idx: Tensor, t: float, z: Tensor) -> Tensor:
    """Evaluation (no bank row for a held-out sample): each side's positive is the other network's embedding."""
    pos = (e_s * e_t).sum(1, keepdim=True)
    out_v1 = torch.exp(torch.cat([pos, (memory_t[idx[:, 1:]] @ e_s[:, :, None]).squeeze(2)], 1) / t) / z[0]
    out_v2 = torch.exp(torch.cat([pos, (memory_s[idx[:, 1:]] @ e_t[:, :, None]).squeeze(2)], 1) / t) / z[1]
    return ref_contrast_loss(out_v1, memory_s.shape[0]) + ref_contrast_loss(out_v2, memory_s.shape[0])


@pytest.mark.parametrize("nce_k", [K, 1], ids=["all-dot-products", "gathered-rows"])
def test_evaluation_matches_reference_changes_no_state_and_reads_no_index(nce_k):
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index, nce_k=nce_k)
    module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    before = _state(module)
    module.eval()
    idx = module.contrast_indices(index)  # the evaluation stream
    heads = module.embed_student.net, module.embed_teacher.net
    e_s = ref_embed(student.double(), heads[0].weight.double(), heads[0].bias.double())
    e_t = ref_embed(teacher.double(), heads[1].weight.double(), heads[1].bias.double())
    banks = module.memory_student.double(), module.memory_teacher.double()
    expected = ref_eval(e_s, e_t, *banks, idx, 0.07, module.normalisers.double()).detach()
    value = module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    for other in (None, torch.tensor([N, -1, 0, 1, 2]), index.flip(0)):  # not read: it may count in another split
        assert module(student, teacher, index=other, dataset_size=N, dataset_labels=LABELS).item() == value.item()
    assert module(student, teacher).item() == value.item()  # no context at all: the banks' own size
    module.train()
    with torch.no_grad():
        assert (
            module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS).item() == value.item()
        )  # no grad: evaluation
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_evaluation_before_the_banks_exist_is_zero_with_zero_gradient():
    student, teacher, _ = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K).eval()
    x = student.clone().requires_grad_(True)
    zero = module(x, teacher)
    assert zero.item() == 0.0 and zero.dtype == torch.float32 and module.dataset_size == 0
    zero.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_eval_call_before_training_builds_but_leaves_z_for_the_first_training_batch():
    student, teacher, index = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K).eval()
    module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    assert module.dataset_size == N and torch.equal(module.normalisers, torch.tensor([-1.0, -1.0]))
    assert int(module.step) == 0
    module.train()(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    assert (module.normalisers > 0).all() and int(module.step) == 1


def test_state_dict_round_trip_gives_the_same_values():
    student, teacher, index = _batch(0)
    used = _built(student, teacher, index)
    for seed in (0, 1):
        s, t, i = _batch(seed)
        used(s, t, index=i, dataset_size=N, dataset_labels=LABELS)
    assert set(used.state_dict()) == {
        "embed_student.shapes",
        "embed_student.net.weight",
        "embed_student.net.bias",
        "embed_teacher.shapes",
        "embed_teacher.net.weight",
        "embed_teacher.net.bias",
        "memory_student",
        "memory_teacher",
        "normalisers",
        "step",
    }
    fresh = CRDLoss(feat_dim=FEAT, nce_k=K)
    fresh.load_state_dict(used.state_dict(), strict=True)
    assert fresh.dataset_size == N and fresh.current_step() == 2
    student, teacher, index = _batch(2)
    for module in (used, fresh, copy.deepcopy(used)):
        module.eval()
    expected = used(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    assert fresh(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS).item() == expected.item()
    used.train(), fresh.train()
    assert (
        fresh(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS).item()
        == used(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS).item()
    )
    assert all(torch.equal(a, b) for a, b in zip(used.state_dict().values(), fresh.state_dict().values(), strict=True))


@pytest.mark.parametrize("negatives", ["other_classes", "uniform"])
def test_resume_draws_the_same_negatives_and_continues_identically(negatives):
    student, teacher, index = _batch(0)
    run = _built(student, teacher, index, negatives=negatives)
    run(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    checkpoint = _state(run)
    drawn = []
    for seed in (1, 2):
        s, t, i = _batch(seed)
        drawn.append(run.contrast_indices(i, training=True))
        run(s, t, index=i, dataset_size=N, dataset_labels=LABELS)
    resumed = CRDLoss(feat_dim=FEAT, nce_k=K, negatives=negatives)
    resumed.load_state_dict(checkpoint)
    for seed, expected in zip((1, 2), drawn, strict=True):
        s, t, i = _batch(seed)
        assert torch.equal(resumed.contrast_indices(i, training=True, dataset_labels=LABELS.clone()), expected)
        resumed(s, t, index=i, dataset_size=N, dataset_labels=LABELS)
    assert all(torch.equal(a, b) for a, b in zip(run.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_loading_into_a_used_module_of_another_dataset_size_resizes_its_banks():
    student, teacher, index = _batch(0)
    small = CRDLoss(feat_dim=FEAT, nce_k=K, negatives="uniform")
    small(student, teacher, index=index % 6, dataset_size=6)
    big = _built(student, teacher, index)
    small.load_state_dict(big.state_dict())
    assert small.dataset_size == N and torch.equal(small.memory_teacher, big.memory_teacher)


def test_checkpoint_of_another_feat_dim_is_rejected():
    student, teacher, index = _batch(0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        CRDLoss(feat_dim=FEAT + 1, nce_k=K).load_state_dict(_built(student, teacher, index).state_dict())


# ----------------------------------------------------------------------------------------------------------------------
# Errors, before any maths.
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_index_in_training_names_return_index():
    student, teacher, index = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K)
    with pytest.raises(ValueError, match=r"got index=None; .*`return_index: true`.*DigitsDataModule"):
        module(student, teacher, dataset_size=N, dataset_labels=LABELS)
    with pytest.raises(ValueError, match=r"got dataset_size=None"):
        module(student, teacher, index=index)
    assert not list(module.parameters()) and module.dataset_size == 0  # nothing built


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (torch.tensor([0, 1, 2, 3, N]), rf"indices in \[0, dataset_size={N}\) but got indices from 0 to {N}"),
        (torch.tensor([-1, 1, 2, 3, 4]), rf"indices in \[0, dataset_size={N}\) but got indices from -1 to 4"),
        (torch.tensor([0.0, 1, 2, 3, 4]), r"integer tensor of shape \[5\] but got shape \(5,\) and dtype torch.float"),
        (torch.tensor([0, 1, 2]), r"integer tensor of shape \[5\] but got shape \(3,\)"),
        ([0, 1, 2, 3, 4], r"integer tensor of shape \[5\] but got \[0, 1, 2, 3, 4\]"),
    ],
    ids=["too-large", "negative", "float", "short", "list"],
)
def test_bad_index_rejected_in_training(index, match):
    student, teacher, _ = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K)
    with pytest.raises(ValueError, match=match):
        module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    assert module.dataset_size == 0


def test_dataset_size_change_rejected():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    with pytest.raises(ValueError, match=rf"hold {N} samples .* got dataset_size={N + 1}; the training set changed"):
        module(student, teacher, index=index, dataset_size=N + 1)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="dataset_size, the number of training samples, as an integer >= 1"):
            CRDLoss()(student, teacher, index=index, dataset_size=bad)


def test_other_classes_without_labels_names_the_fix():
    student, teacher, index = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K)
    with pytest.raises(
        ValueError,
        match=r"got dataset_labels=None: .*`labels` or `targets`.*DigitsDataModule.*"
        r"negatives: uniform",
    ):
        module(student, teacher, index=index, dataset_size=N)
    assert not list(module.parameters()) and module.dataset_size == 0  # nothing built
    with pytest.raises(ValueError, match="got dataset_labels=None"):
        module.contrast_indices(index, training=True)
    module.eval()(student, teacher, index=index, dataset_size=N)  # evaluation reads no labels
    module.train()(student, teacher, index=index, dataset_size=N, contrast_idx=index[:, None].repeat(1, 3))  # given


def test_other_classes_with_a_single_class_rejected():
    student, teacher, index = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K)
    with pytest.raises(ValueError, match=r"every training sample has class 3; .* or pass negatives: uniform"):
        module(student, teacher, index=index, dataset_size=N, dataset_labels=torch.full((N,), 3))
    assert module.dataset_size == 0


@pytest.mark.parametrize(
    "labels",
    [LABELS[:-1], torch.cat([LABELS, LABELS]), LABELS.float(), LABELS[None], LABELS.tolist()],
    ids=["short", "long", "float", "2d", "list"],
)
def test_bad_dataset_labels_rejected(labels):
    student, teacher, index = _batch(0)
    with pytest.raises(ValueError, match=rf"dataset_labels, the class of every training sample, .* \[{N}\] but got"):
        CRDLoss(feat_dim=FEAT, nce_k=K)(student, teacher, index=index, dataset_size=N, dataset_labels=labels)
    with pytest.raises(ValueError, match=r"dataset_labels, the class of every training sample"):
        CRDLoss(negatives="uniform")(student, teacher, index=index, dataset_size=N, dataset_labels=labels)


def test_changed_labels_rebuild_the_pools():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    other = LABELS.roll(1)
    idx = module.contrast_indices(index, training=True, dataset_labels=other)
    check_exact_mode_draws(idx, index, other, K)


def test_bad_contrast_idx_rejected():
    student, teacher, index = _batch(0)
    module = CRDLoss(feat_dim=FEAT, nce_k=K)
    with pytest.raises(ValueError, match=r"contrast_idx of shape \[B, K\+1\] = \[5, >= 2\]"):
        module(student, teacher, index=index, dataset_size=N, contrast_idx=index[:, None])
    with pytest.raises(ValueError, match=rf"contrast_idx in \[0, dataset_size={N}\)"):
        module(student, teacher, index=index, dataset_size=N, contrast_idx=torch.full((5, 3), N))
    with pytest.raises(ValueError, match=r"contrast_idx of shape"):
        memory = torch.ones(4, 3)
        crd_loss(torch.ones(2, 3), torch.ones(2, 3), memory, memory, torch.zeros(2, dtype=torch.long))


def test_head_size_fixed_after_first_call():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    with pytest.raises(ValueError, match="adapter was built for student"):
        module(torch.randn(5, 7), teacher, index=index, dataset_size=N, dataset_labels=LABELS)


# ----------------------------------------------------------------------------------------------------------------------
# The generic checks, on a module in eval mode (fixed negatives and state between the calls a check compares).
# ----------------------------------------------------------------------------------------------------------------------


def _eval_crd(**kwargs) -> CRDLoss:
    return CRDLoss(**kwargs).eval()


def _inputs(seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 4, 2, 2, generator=generator)
    teacher = torch.randn(6, 24, generator=generator)
    index = torch.randperm(20, generator=generator)[:6]
    return Inputs(student, teacher, {"index": index, "dataset_size": 20})


CASES = [
    LossCase(
        "crd",
        _eval_crd,
        _inputs,
        {"feat_dim": 8, "nce_k": 16, "nce_t": 0.07, "nce_m": 0.5, "seed": 0, "negatives": "other_classes"},
        defaults={
            "feat_dim": 128,
            "nce_k": 16384,
            "nce_t": 0.07,
            "nce_m": 0.5,
            "seed": 0,
            "negatives": "other_classes",
        },
        bad_hyperparameters=(
            BadHyperparameter({"feat_dim": 0}, "integer feat_dim >= 1", function=False),
            BadHyperparameter({"feat_dim": 2.5}, "integer feat_dim >= 1", function=False),
            BadHyperparameter({"nce_k": 0}, "integer nce_k >= 1", function=False),
            BadHyperparameter({"nce_t": 0.0}, "nce_t > 0", function=False),
            BadHyperparameter({"nce_t": -1.0}, "nce_t > 0", function=False),
            BadHyperparameter({"nce_t": math.inf}, "finite nce_t", function=False),
            BadHyperparameter({"nce_m": 1.0}, r"0 <= nce_m < 1", function=False),
            BadHyperparameter({"nce_m": -0.1}, r"0 <= nce_m < 1", function=False),
            BadHyperparameter({"nce_m": math.nan}, r"0 <= nce_m < 1", function=False),
            BadHyperparameter({"seed": 1.5}, "integer seed", function=False),
            BadHyperparameter(
                {"negatives": "exact"}, r"negatives to be one of \['other_classes', 'uniform'\]", function=False
            ),
        ),
        zero_at_equality=False,  # a contrastive NCE loss through two random heads: positive for any input
        adapter=True,
    ),
]


class TestCRDLoss(LossTester):
    cases = CASES


def test_crd_loss_function_rejects_bad_temperature():
    e = torch.nn.functional.normalize(torch.ones(2, 3), dim=1)
    with pytest.raises(ValueError, match="nce_t > 0"):
        crd_loss(e, e, torch.ones(4, 3), torch.ones(4, 3), torch.zeros(2, 3, dtype=torch.long), nce_t=0.0)


def test_declares_its_batch_context():
    assert CRDLoss.batch_context == ("index", "dataset_size", "dataset_labels")


def test_training_in_bfloat16_gives_float32_and_keeps_float32_banks():
    student, teacher, index = _batch(0)
    module = _built(student, teacher, index)
    x = student.bfloat16().requires_grad_(True)
    loss = module(x, teacher.bfloat16(), index=index, dataset_size=N, dataset_labels=LABELS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss + module(student, teacher, index=index, dataset_size=N, dataset_labels=LABELS)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
    assert module.memory_student.dtype == module.memory_teacher.dtype == torch.float32 and int(module.step) == 2
