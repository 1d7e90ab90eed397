"""Cross-tokenizer distillation losses: a student and a teacher whose tokenizers (and vocabularies) differ.

* Universal Logit Distillation (ULD): Boizard, El Haddad, Hudelot, Colombo 2024, "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs" (arXiv 2402.12030). The two next-token distributions
  of an aligned position are compared after sorting their probabilities, which needs no correspondence between the
  vocabularies: the paper's closed-form expression of its Wasserstein distance between the two distributions.
  Reference code: the ULD repository ``Nicolas-BZRD/llm-recipes``, ``models/distillation_model.py``
  (``DistillationLoss``).
* Span alignment with a shared vocabulary: the General Online Logit Distillation (GOLD) trainer of Hugging Face TRL
  (``huggingface/trl``, ``trl/experimental/gold/gold_trainer.py``: ``ULDLoss._align_by_byte_offsets``,
  ``_merge_probabilities_with_alignment_groups``, ``_initialize_vocabulary_mapping``, ``_compute_hybrid_uld_loss``).
  :func:`align_spans` groups the consecutive tokens of the two tokenizations that cover the same characters,
  :func:`shared_vocabulary` pairs the token strings both vocabularies hold, and :func:`span_aligned_kl_loss` compares
  each group's distributions on the shared tokens by KL, plus, optionally, ULD on the rest (GOLD's hybrid loss).

In a Lightning run, ``TextDataModule(teacher_tokenizer=...)`` tokenizes each text for both models and keeps the
aligned spans (:mod:`kd_lightning.data.two_tokenizers`), a frozen teacher runs on its own tokens, and the modules pass
the teacher's positions and the spans to :class:`ULDLoss` and :class:`SpanAlignedKLLoss` (their ``batch_context``,
:mod:`kd_lightning.core.context`).

Every function treats the teacher as a constant target (it is detached), computes in float32 and returns a float32
scalar: the sum of the per-position (per-group) loss divided by ``num_tokens`` (by default the number of selected
positions or groups, at least 1, so an empty selection gives an exact 0 with a zero gradient), as the token losses of
:mod:`kd_lightning.losses.token`. Positions that are not selected are never part of the maths: their logits may hold
NaN or ``-inf`` and still give a finite value and a zero gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kd_lightning.losses._checks import check_non_negative, check_positive, token_normaliser
from kd_lightning.losses.base import TokenLoss
from kd_lightning.losses.token import _check_chunk_size, _row_mask
from kd_lightning.losses.token import _check_logits as _check_shape

__all__ = [
    "SpanAlignedKLLoss",
    "SpanGroup",
    "ULDLoss",
    "align_spans",
    "groups_from_ids",
    "pair_positions",
    "shared_vocabulary",
    "span_aligned_kl_loss",
    "span_kl_from_ids",
    "uld_loss",
]

POSITIONS = ("real", "labelled", "auto")
MERGES = ("last", "first")
Offsets = Sequence[Sequence[int]] | Tensor


class SpanGroup(NamedTuple):
    """One aligned group: the student's and the teacher's token indices that cover the characters ``[start, end)``.

    ``student`` and ``teacher`` are consecutive indices into each tokenization (each non-empty); ``start`` / ``end``
    are the smallest start and the largest end of their offsets.
    """

    student: tuple[int, ...]
    teacher: tuple[int, ...]
    start: int
    end: int


# ---------------------------------------------------------------- checks


def _check_logits(logits: Tensor, loss: str, role: str) -> None:
    """Dense ``[B, L, V]`` logits (the token losses' check; stored top-k logits have no sorted tail to compare)."""
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"{loss} expected {role} logits of shape [B, L, V] (3-d) but got {type(logits).__name__}; it compares "
            f"whole distributions: give it a live teacher (or a dense store), not top-k logits."
        )
    _check_shape(logits, loss, role)


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(
            f"expected top_k None or an integer >= 1 but got top_k={top_k!r}; pass the number of largest "
            f"probabilities to compare, or None to compare the whole sorted vocabularies (the paper's loss)."
        )


def _check_merge(merge: str) -> None:
    if merge not in MERGES:
        raise ValueError(
            f"expected merge in {list(MERGES)} but got {merge!r}; 'last' reads a group's distribution at its last "
            f"token (TRL's 'bayesian'), 'first' at its first token (TRL's 'observed')."
        )


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(
            f"expected positions in {list(POSITIONS)} but got {positions!r}; 'labelled' (the default) reads the "
            f"labelled (completion) tokens, as the ULD paper, 'real' every real token, 'auto' the labelled tokens when "
            f"the batch has labels and every real token otherwise."
        )


# ---------------------------------------------------------------- ULD


def _sorted_probs(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """``softmax(z / T)`` in float32, sorted in decreasing order along the vocabulary (its ``top_k`` largest)."""
    logits = logits.float()
    probs = F.softmax(logits if temperature == 1 else logits / temperature, dim=-1)
    if top_k is not None and top_k < probs.shape[-1]:
        return probs.topk(top_k, dim=-1).values
    return probs.sort(dim=-1, descending=True).values


def _sorted_l1(first: Tensor, second: Tensor) -> Tensor:
    """``sum_i |a[i] - b[i]|`` per row of two rows of sorted probabilities, the shorter zero-padded, ``[n]``."""
    width = max(first.shape[-1], second.shape[-1])
    first = F.pad(first, (0, width - first.shape[-1]))
    second = F.pad(second, (0, width - second.shape[-1]))
    return (first - second).abs().sum(-1)


def _teacher_sorted(teacher: Tensor, keep: Tensor | None, temperature: float, top_k: int | None) -> Tensor:
    """The teacher's sorted probabilities of one chunk (a constant: sorted once, outside the student's graph)."""
    with torch.no_grad():
        if keep is not None:
            teacher = torch.where(keep[:, None], teacher, 0.0)
        return _sorted_probs(teacher, temperature, top_k)


def _uld_chunk(
    student: Tensor, teacher_sorted: Tensor, keep: Tensor | None, temperature: float, top_k: int | None
) -> Tensor:
    """The sum of one chunk's per-position ULD; rows outside ``keep`` are zeros before the maths and count 0."""
    if keep is not None:
        student = torch.where(keep[:, None], student, 0.0)
    per_row = _sorted_l1(_sorted_probs(student, temperature, top_k), teacher_sorted)
    if keep is not None:
        per_row = torch.where(keep, per_row, 0.0)
    return per_row.sum()


def uld_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    top_k: int | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Universal Logit Distillation: the L1 distance of the sorted next-token distributions of two vocabularies.

    Boizard, El Haddad, Hudelot, Colombo 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
    Distillation Loss for LLMs" (arXiv 2402.12030): the ULD loss, the paper's closed-form (sorted) expression of a
    Wasserstein distance between the two distributions, which needs no mapping between the vocabularies.

    ``1 / num_tokens * sum_{(b, l) in mask} sum_i |sort(p_s)[i] - sort(p_t)[i]|`` with ``p = softmax(z[b, l] / T)``
    over each model's own vocabulary, ``sort`` in decreasing order and the shorter vector zero-padded to ``max(V_s,
    V_t)``. The value lies in ``[0, 2]`` per position, is 0 when the two sorted distributions are equal and does not
    change when either vocabulary is permuted. Not multiplied by ``T**2`` (as the paper and the total variation).

    Conventions of the reference code (``Nicolas-BZRD/llm-recipes``, ``models/distillation_model.py``), followed here:
    the absolute difference summed over the vocabulary, the softmax tempered before sorting (the reference has a
    student and a teacher temperature, both 1 by default; here one ``T``), no ``T**2``, the teacher detached. Its
    weight: ``distil_factor = 1.5`` beside the cross-entropy's 1 (the repository's ``configs/distillation.py`` default
    and README example). Departures: the reference averages over each sequence's answer tokens and then over the
    batch; here the sum over the selected positions is divided by ``num_tokens`` (a mean per token, the same when the
    sequences are equally long). ``top_k`` is not in the reference (nor in TRL's ``ULDLoss``): it compares only the
    ``k`` largest probabilities of each side (``torch.topk`` instead of a full sort), which drops the tails.

    Positions are taken as already aligned: ``[b, l]`` of both tensors is the same target position (e.g. the
    ``l``-th completion token of each tokenization, the reference's rule); for aligning by characters see
    :func:`span_aligned_kl_loss`. Unselected positions are zeros before the maths (they may hold NaN or ``-inf``);
    every selected position needs a finite logit in each model.

    Args:
        student: student logits ``[B, L, V_s]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V_t]``, ``V_t`` may differ from ``V_s`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count; ``None``: all.
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        top_k: compare only the ``k`` largest probabilities of each side; ``None``: the whole sorted vocabularies.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> student = torch.tensor([[[0.0, 2.0, 1.0]]])
        >>> teacher = torch.tensor([[[1.0, 0.0, 2.0, -9.0]]])  # another vocabulary, a permutation of the student's
        >>> round(uld_loss(student, teacher).item(), 4)
        0.0
        >>> round(uld_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.6638
    """
    name = "uld_loss"
    check_positive("temperature", temperature)
    _check_top_k(top_k)
    _check_chunk_size(chunk_size)
    _check_logits(student, name, "student")
    _check_logits(teacher, name, "teacher")
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"{name} expected student and teacher logits at the same [B, L] aligned positions but got "
            f"{tuple(student.shape[:2])} (student) and {tuple(teacher.shape[:2])} (teacher); gather the same target "
            f"positions of each tokenization (e.g. the l-th completion token) into [B, L] first."
        )
    keep = _row_mask(mask, student.shape[:2], student.device, name)
    first, second = student.flatten(0, 1), teacher.detach().to(student.device).flatten(0, 1)
    rows = first.shape[0]
    step = rows if chunk_size is None or rows == 0 else chunk_size
    chunked = rows > step
    checkpointed = chunked and torch.is_grad_enabled() and first.requires_grad
    total = first[:0].float().sum()  # 0, still in the graph (its gradient is 0)
    for begin in range(0, rows, max(step, 1)):
        piece = first[begin : begin + step]
        kept = None if keep is None else keep[begin : begin + step]
        rest = _teacher_sorted(second[begin : begin + step], kept, temperature, top_k)
        if checkpointed:
            part = checkpoint(
                _uld_chunk, piece, rest, kept, temperature, top_k, use_reentrant=False, preserve_rng_state=False
            )
        else:
            part = _uld_chunk(piece, rest, kept, temperature, top_k)
        total = total + part
    count = keep.sum() if keep is not None else rows
    return total / token_normaliser(num_tokens, count, total, name)


# ---------------------------------------------------------------- span alignment


def _offsets(offsets: Offsets, role: str, text: str | None) -> list[tuple[int, int]]:
    """The offsets as ``(start, end)`` integer pairs, checked: ``0 <= start <= end`` (``<= len(text)``), in order."""
    if isinstance(offsets, Tensor):
        offsets = offsets.tolist()
    try:
        pairs = [(int(start), int(end)) for start, end in offsets]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"align_spans expected {role} offsets as a sequence of (start, end) character offsets, one per token "
            f"(a fast tokenizer's return_offsets_mapping=True of one sequence) but got {offsets!r:.80}."
        ) from error
    previous = (0, 0)
    for index, (start, end) in enumerate(pairs):
        if not 0 <= start <= end or (text is not None and end > len(text)):
            limit = "" if text is None else f" <= len(text) = {len(text)}"
            raise ValueError(
                f"align_spans expected {role} offsets with 0 <= start <= end{limit} but token {index} has "
                f"({start}, {end}); pass the offsets of one sequence of the same text."
            )
        if start == end:
            continue
        if start < previous[0] or end < previous[1]:
            raise ValueError(
                f"align_spans expected {role} offsets in text order but token {index} ({start}, {end}) comes after "
                f"{previous}; pass the offsets of one sequence, in token order."
            )
        previous = (start, end)
    return pairs


def _extent(pairs: list[tuple[int, int]], text: str | None) -> tuple[int, int] | None:
    """The characters the non-empty tokens cover, ``[first start, last end)``, without edge whitespace of ``text``."""
    spans = [(start, end) for start, end in pairs if end > start]
    if not spans:
        return None
    low, high = spans[0][0], max(end for _, end in spans)
    if text is not None:
        while low < high and text[low].isspace():
            low += 1
        while high > low and text[high - 1].isspace():
            high -= 1
    return low, high


def align_spans(student_offsets: Offsets, teacher_offsets: Offsets, text: str | None = None) -> list[SpanGroup]:
    """The groups of consecutive student and teacher tokens that cover the same characters of one text.

    GOLD's alignment (TRL, ``trl/experimental/gold/gold_trainer.py``, ``ULDLoss._align_by_byte_offsets``): walk both
    tokenizations and close a group at the first character boundary where both agree, so the groups are the minimal
    spans that neither tokenization cuts differently. TRL advances the side whose current token ends earlier and closes
    a group when the two ends are equal; here a group closes at ``end`` (the largest end of its tokens) when the next
    token of neither side starts before ``end``: the same groups where both tokenizations cover every character, and
    also right where one leaves out characters the other covers (WordPiece drops whitespace, a byte-level BPE keeps it
    as ``Ġ``), or where one splits a character into several byte tokens that share its offsets.

    Zero-width tokens (``start == end``: special tokens such as ``[CLS]`` or ``</s>`` at ``(0, 0)``) cover no text and
    are in no group. The non-empty tokens of each side must be in text order and cover the same characters: the same
    first start and last end, or, when ``text`` is given, the same up to whitespace at the edges (tokens of one side
    that cover only trailing whitespace then join the last group); otherwise a ``ValueError`` says so.

    Args:
        student_offsets: ``[(start, end), ...]`` character offsets of the student's tokens (a Hugging Face fast
            tokenizer's ``return_offsets_mapping=True`` for one sequence; a list or an ``[L_s, 2]`` tensor).
        teacher_offsets: the same for the teacher's tokens of the same text.
        text: the text both tokenizations cover (optional): checks the offsets against its length and lets the two
            coverages differ by whitespace at the edges.

    Returns:
        The :class:`SpanGroup` s in text order; each holds the indices (into the offsets given) of a non-empty run of
        student tokens and of teacher tokens, and the characters ``[start, end)`` they cover.

    Example:
        >>> student = [(0, 3), (3, 5), (5, 11)]  # "hello world" as "hel", "lo", " world"
        >>> teacher = [(0, 5), (5, 9), (9, 11)]  # as "hello", " wor", "ld"
        >>> [(group.student, group.teacher) for group in align_spans(student, teacher)]
        [((0, 1), (0,)), ((2,), (1, 2))]
    """
    s_pairs = _offsets(student_offsets, "student", text)
    t_pairs = _offsets(teacher_offsets, "teacher", text)
    s_extent, t_extent = _extent(s_pairs, text), _extent(t_pairs, text)
    if s_extent is None or t_extent is None or s_extent != t_extent:
        hint = "" if text is not None else ", or pass text= when one tokenizer leaves out whitespace at the edges"
        raise ValueError(
            f"align_spans expected student and teacher offsets that cover the same text but the student's tokens "
            f"cover characters {s_extent} and the teacher's {t_extent} (None: no non-empty token); tokenise the same "
            f"text with both tokenizers (return_offsets_mapping=True) and pass the offsets of the same sequence{hint}."
        )
    s_tokens = [(index, start, end) for index, (start, end) in enumerate(s_pairs) if end > start]
    t_tokens = [(index, start, end) for index, (start, end) in enumerate(t_pairs) if end > start]
    groups: list[SpanGroup] = []
    i = j = 0
    while i < len(s_tokens) and j < len(t_tokens):
        s_group, t_group = [s_tokens[i][0]], [t_tokens[j][0]]
        start, end = min(s_tokens[i][1], t_tokens[j][1]), max(s_tokens[i][2], t_tokens[j][2])
        i, j = i + 1, j + 1
        grew = True
        while grew:
            grew = False
            while i < len(s_tokens) and s_tokens[i][1] < end:
                s_group.append(s_tokens[i][0])
                end, i, grew = max(end, s_tokens[i][2]), i + 1, True
            while j < len(t_tokens) and t_tokens[j][1] < end:
                t_group.append(t_tokens[j][0])
                end, j, grew = max(end, t_tokens[j][2]), j + 1, True
        groups.append(SpanGroup(tuple(s_group), tuple(t_group), start, end))
    # what is left covers only whitespace after the common extent (text given): it joins the last group
    s_left, t_left = s_tokens[i:], t_tokens[j:]
    if s_left or t_left:
        last = groups[-1]
        groups[-1] = SpanGroup(
            last.student + tuple(index for index, _, _ in s_left),
            last.teacher + tuple(index for index, _, _ in t_left),
            last.start,
            max([last.end] + [end for _, _, end in s_left + t_left]),
        )
    return groups


def shared_vocabulary(student_vocab: Mapping[str, int], teacher_vocab: Mapping[str, int]) -> tuple[Tensor, Tensor]:
    """The tokens both vocabularies hold: their student ids and teacher ids, paired, ``[S]`` each (int64).

    GOLD's vocabulary mapping (TRL, ``ULDLoss._initialize_vocabulary_mapping``): a teacher token and a student token
    correspond when their strings, as ``tokenizer.get_vocab()`` returns them, are exactly equal. No normalisation,
    as TRL: the markers stay part of the string (byte-level BPE's ``Ġ`` for a leading space, SentencePiece's ``▁``,
    WordPiece's ``##`` continuation), so two tokenizers of one family share most of their vocabulary and tokenizers
    of different families mostly their marker-free pieces (punctuation, digits, word-internal pieces). The pairs are
    in increasing teacher id (TRL's order).

    Args:
        student_vocab: the student tokenizer's ``get_vocab()``, token string -> id.
        teacher_vocab: the teacher tokenizer's ``get_vocab()``.

    Returns:
        ``(student_ids, teacher_ids)``: ``student_ids[i]`` and ``teacher_ids[i]`` are the ids of one token string.

    Example:
        >>> shared_vocabulary({"a": 0, "b": 1, "Ġc": 2}, {"Ġc": 0, "d": 1, "a": 2})
        (tensor([2, 0]), tensor([0, 2]))
    """
    for role, vocab in (("student", student_vocab), ("teacher", teacher_vocab)):
        if not isinstance(vocab, Mapping):
            raise ValueError(
                f"shared_vocabulary expected the {role} vocabulary as a mapping token string -> id (the tokenizer's "
                f"get_vocab()) but got {type(vocab).__name__}."
            )
    pairs = sorted(
        (int(t_id), int(student_vocab[token])) for token, t_id in teacher_vocab.items() if token in student_vocab
    )
    for role, ids in (("teacher", [t for t, _ in pairs]), ("student", [s for _, s in pairs])):
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"shared_vocabulary expected each {role} id to stand for one token string but several shared strings "
                f"have the same {role} id; pass the tokenizer's get_vocab() (one id per string)."
            )
    student_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)
    teacher_ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    return student_ids, teacher_ids


# ---------------------------------------------------------------- span-aligned KL


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q) = sum_v p * (log p - log q)`` per row, with ``0 * log 0 = 0`` (the ratio set to 0 where ``p = 0``
    before the product, so ``-inf - -inf`` never reaches the value or the gradient)."""
    p = log_p.exp()
    return (p * (log_p - log_q).masked_fill(p == 0, 0.0)).sum(-1)


def _check_ids(ids: Tensor, size: int, role: str, loss: str) -> Tensor:
    if not isinstance(ids, Tensor) or ids.ndim != 1 or ids.is_floating_point() or ids.is_complex():
        raise ValueError(
            f"{loss} expected the {role} ids of the shared vocabulary as a 1-d integer tensor but got "
            f"{ids if not isinstance(ids, Tensor) else f'a {ids.dtype} tensor of shape {tuple(ids.shape)}'}; build "
            f"them with shared_vocabulary(student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab())."
        )
    if ids.numel() == 0:
        raise ValueError(
            f"{loss} expected a non-empty shared vocabulary but the two vocabularies share no token string; use "
            f"uld_loss, which needs no shared token."
        )
    if int(ids.min()) < 0 or int(ids.max()) >= size:
        raise ValueError(
            f"{loss} expected {role} ids of the shared vocabulary in [0, {size}) ({role} logits over {size} entries) "
            f"but got ids in [{int(ids.min())}, {int(ids.max())}]; build them from the tokenizer of this {role} model."
        )
    return ids.long()


def _check_tokens(tokens: Tensor | None, logits: Tensor, role: str, loss: str) -> Tensor:
    if tokens is None:
        raise ValueError(
            f"{loss} needs {role}_tokens (the {role}'s token ids [B, L] aligned with its logits) to merge a group of "
            f"several {role} tokens when uld_weight > 0; pass them, or uld_weight=0 (the KL term needs none)."
        )
    if tuple(tokens.shape) != tuple(logits.shape[:2]) or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(
            f"{loss} expected integer {role}_tokens of shape [B, L] = {tuple(logits.shape[:2])} but got a "
            f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}; pass the token at each position of the logits."
        )
    return tokens.to(logits.device).long().flatten()


def _group_rows(
    groups: Sequence[Sequence[Sequence[Sequence[int]]]], length: int, side: int, merge: str, role: str, loss: str
) -> tuple[list[int], list[int], list[int]]:
    """Flat row indices (``b * L + l``) of each group's base row, and the groups and rows of its other rows."""
    base, others, owners = [], [], []
    number = 0
    for b, row_groups in enumerate(groups):
        for group in row_groups:
            indices = [int(index) for index in group[side]]
            if not indices or min(indices) < 0 or max(indices) >= length:
                raise ValueError(
                    f"{loss} expected every group's {role} token indices non-empty and in [0, {length}) (the {role} "
                    f"logits' length) but got {indices} in row {b}; pass align_spans' groups of the same sequences."
                )
            chosen = indices[-1] if merge == "last" else indices[0]
            base.append(b * length + chosen)
            for index in indices:
                if index != chosen:
                    others.append(b * length + index)
                    owners.append(number)
            number += 1
    return base, others, owners


def _merged_rest(
    logits: Tensor,
    base_log_probs: Tensor,
    shared: Tensor,
    tokens: Tensor | None,
    others: list[int],
    owners: list[int],
    temperature: float,
) -> Tensor:
    """The merged probabilities of a group on the entries outside the shared vocabulary, sorted decreasingly.

    ``P[v] = p_base[v] * prod_{other rows r} p_r[token_r]`` (GOLD's merge, an unnormalised distribution over the
    group's whole span), restricted to the non-shared entries; ``[G, V - S]``.
    """
    log_scale = base_log_probs.new_zeros(base_log_probs.shape[0])
    if others:
        rows = torch.tensor(others, device=logits.device)
        row_logits = logits.index_select(0, rows).float()
        row_log_probs = F.log_softmax(row_logits if temperature == 1 else row_logits / temperature, dim=-1)
        token_log_probs = row_log_probs.gather(1, tokens.index_select(0, rows)[:, None]).squeeze(1)
        log_scale = log_scale.index_add(0, torch.tensor(owners, device=logits.device), token_log_probs)
    rest = torch.ones(base_log_probs.shape[-1], dtype=torch.bool, device=base_log_probs.device)
    rest[shared] = False
    merged = (base_log_probs[:, rest] + log_scale[:, None]).exp()
    return merged.sort(dim=-1, descending=True).values


def span_aligned_kl_loss(
    student: Tensor,
    teacher: Tensor,
    groups: Sequence[Sequence[SpanGroup | Sequence[Sequence[int]]]],
    student_shared: Tensor,
    teacher_shared: Tensor,
    student_tokens: Tensor | None = None,
    teacher_tokens: Tensor | None = None,
    temperature: float = 1.0,
    uld_weight: float = 0.0,
    merge: str = "last",
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """GOLD-style cross-tokenizer loss: per aligned span, KL on the shared vocabulary (plus ULD on the rest).

    TRL's General Online Logit Distillation (``huggingface/trl``, ``trl/experimental/gold/gold_trainer.py``,
    ``ULDLoss`` with ``use_extended_uld=True`` and ``uld_use_hybrid_loss=True``). Each group ``g`` of
    :func:`align_spans` (student rows ``S_g``, teacher rows ``T_g`` covering the same characters) is compared once:

    * its distribution, per side: ``p = softmax(z[r] / T)`` at the group's last row ``r`` (``merge="last"``, TRL's
      ``"bayesian"``: the chain rule, ``P[v] = p_r[v] * prod_{r' in group, r' != r} p_{r'}[token_{r'}]``, the
      probability of the span's earlier tokens then ``v``) or at its first row (``"first"``, TRL's default
      ``"observed"``: ``p_first`` times the probabilities of the actual later tokens);
    * the KL term on the ``S`` shared tokens (:func:`shared_vocabulary`): ``T**2 * KL(r_t || r_s)`` (forward, teacher
      -> student) with ``r = P[shared] / sum P[shared]``, the merged distribution renormalised on the shared ids. The
      scalar factor of the merge cancels there, so ``r = softmax(z[r][shared] / T)``: the base row's logits restricted
      to the shared ids; the ``T**2`` as the KL-family token losses (nothing changes at ``T = 1``, TRL's default);
    * the ULD term (when ``uld_weight > 0``): ``sum_i |sort(P_s[rest_s])[i] - sort(P_t[rest_t])[i]|`` over each side's
      entries outside the shared vocabulary, the merged (unnormalised) probabilities sorted decreasingly and the
      shorter zero-padded, as GOLD's hybrid loss.

    ``loss = 1 / num_tokens * sum_g (KL_g + uld_weight * ULD_g)``; ``num_tokens`` defaults to the number of groups.

    Departures from TRL: its matched term is the generalized JSD (``beta``, default 0.5) of the merged probabilities
    as they are, not renormalised (clamped at ``1e-8``), here the forward KL of the renormalised ones (0 exactly when
    the two models agree on the shared tokens up to a factor); its weights default to ``|S| / V_t`` and ``1 - |S| /
    V_t`` (the vocabulary overlap), here 1 and ``uld_weight``; its ULD term is skipped when one side has no unshared
    entry, here that side is all zeros (the term is then the other side's unshared mass, a constant for the student);
    it averages per sequence then over the batch, here over all groups (``num_tokens``). Rows that no group names are
    never read: their logits may hold NaN or ``-inf``. Every base row needs a finite logit on the shared ids.

    Row ``l`` of the logits is the distribution of token ``l`` of the tokenization (the labels aligned with the
    logits, :meth:`kd_lightning.core.tokens.Targets.aligned_labels`: for a causal LM the logits of position ``l - 1``),
    the offsets and ``*_tokens`` index the same rows.

    Args:
        student: student logits ``[B, L_s, V_s]`` (any float dtype; upcast to float32).
        teacher: teacher logits ``[B, L_t, V_t]`` (treated as a constant, detached); its length and vocabulary may
            differ from the student's.
        groups: one list per sequence of the batch of its aligned groups (:class:`SpanGroup`, or pairs ``(student
            indices, teacher indices)``), indices into ``[0, L_s)`` and ``[0, L_t)``.
        student_shared: ``[S]`` student ids of the shared tokens (:func:`shared_vocabulary`).
        teacher_shared: ``[S]`` teacher ids of the same tokens, paired.
        student_tokens: ``[B, L_s]`` the student's token at each row; needed only when ``uld_weight > 0`` and a
            group has several student tokens (the merge reads their probabilities).
        teacher_tokens: ``[B, L_t]`` likewise for the teacher.
        temperature: softmax temperature ``T > 0``.
        uld_weight: the weight ``>= 0`` of the ULD term on the unshared entries; 0 (default): KL only.
        merge: ``"last"`` (default) or ``"first"``, the row whose distribution a group uses.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the number of groups.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]])  # vocabulary ["a", "b", "c"]
        >>> teacher = torch.tensor([[[0.0, 2.0, 5.0, 1.0]]])  # vocabulary ["x", "a", "y", "b"]
        >>> shared = shared_vocabulary({"a": 0, "b": 1, "c": 2}, {"x": 0, "a": 1, "y": 2, "b": 3})
        >>> groups = [[SpanGroup(student=(0, 1), teacher=(0,), start=0, end=2)]]
        >>> round(span_aligned_kl_loss(student, teacher, groups, *shared).item(), 4)  # a, b: (1, 0) and (2, 1) agree
        0.0
        >>> round(span_aligned_kl_loss(student.flip(-1), teacher, groups, *shared).item(), 4)  # a, b: (0, 0) and (2, 1)
        0.1109
    """
    name = "span_aligned_kl_loss"
    check_positive("temperature", temperature)
    check_non_negative("uld_weight", uld_weight)
    _check_merge(merge)
    _check_logits(student, name, "student")
    _check_logits(teacher, name, "teacher")
    if student.shape[0] != teacher.shape[0] or len(groups) != student.shape[0]:
        raise ValueError(
            f"{name} expected student logits, teacher logits and groups for the same batch but got batch sizes "
            f"{student.shape[0]} (student), {teacher.shape[0]} (teacher) and {len(groups)} (groups); pass one list "
            f"of align_spans groups per sequence."
        )
    student_shared = _check_ids(student_shared, student.shape[2], "student", name).to(student.device)
    teacher_shared = _check_ids(teacher_shared, teacher.shape[2], "teacher", name).to(student.device)
    if student_shared.shape != teacher_shared.shape:
        raise ValueError(
            f"{name} expected as many student as teacher ids of the shared vocabulary but got "
            f"{student_shared.numel()} and {teacher_shared.numel()}; pass the pair shared_vocabulary returns."
        )
    s_base, s_others, s_owners = _group_rows(groups, student.shape[1], 0, merge, "student", name)
    t_base, t_others, t_owners = _group_rows(groups, teacher.shape[1], 1, merge, "teacher", name)
    s_rows = student.flatten(0, 1)
    t_rows = teacher.detach().to(student.device).flatten(0, 1)
    if not s_base:
        return s_rows[:0].float().sum()  # no group: 0, still in the graph (its gradient is 0)

    def tempered(rows: Tensor, base: list[int]) -> Tensor:
        logits = rows.index_select(0, torch.tensor(base, device=rows.device)).float()
        return logits if temperature == 1 else logits / temperature

    s_scaled, t_scaled = tempered(s_rows, s_base), tempered(t_rows, t_base)
    log_r_s = F.log_softmax(s_scaled[:, student_shared], dim=-1)
    log_r_t = F.log_softmax(t_scaled[:, teacher_shared], dim=-1)
    per_group = temperature**2 * _kl_rows(log_r_t, log_r_s)
    if uld_weight > 0:
        s_tokens = _check_tokens(student_tokens, student, "student", name) if s_others else None
        t_tokens = _check_tokens(teacher_tokens, teacher, "teacher", name) if t_others else None
        s_rest = _merged_rest(
            s_rows, F.log_softmax(s_scaled, -1), student_shared, s_tokens, s_others, s_owners, temperature
        )
        t_rest = _merged_rest(
            t_rows, F.log_softmax(t_scaled, -1), teacher_shared, t_tokens, t_others, t_owners, temperature
        )
        per_group = per_group + uld_weight * _sorted_l1(s_rest, t_rest)
    total = per_group.sum()
    return total / token_normaliser(num_tokens, len(s_base), total, name)


# ---------------------------------------------------------------- pairing positions of two tokenizations


def pair_positions(student_mask: Tensor, teacher_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ``l``-th selected student position paired with the ``l``-th selected teacher position, per sequence.

    The ULD reference's rule for two tokenizations of one text: the answer (completion) tokens of each side, in order,
    cut to the shorter side. Returns ``(student_index, teacher_index, keep)``, each ``[B, P]`` with ``P`` the largest
    number of pairs of a sequence: the positions to gather along ``L`` and which pairs are real.

    Example:
        >>> s, t, keep = pair_positions(torch.tensor([[False, True, True, True]]), torch.tensor([[True, True, False]]))
        >>> s.tolist(), t.tolist(), keep.tolist()
        ([[1, 2]], [[0, 1]], [[True, True]])
    """
    counts = torch.minimum(student_mask.sum(1), teacher_mask.sum(1))
    pairs = int(counts.max()) if counts.numel() else 0
    # the selected positions first, in order (a stable sort of "not selected")
    s_order = torch.sort((~student_mask).to(torch.int8), dim=1, stable=True).indices[:, :pairs]
    t_order = torch.sort((~teacher_mask).to(torch.int8), dim=1, stable=True).indices[:, :pairs]
    keep = torch.arange(pairs, device=student_mask.device)[None, :] < counts[:, None]
    return s_order, t_order, keep


def _gather_rows(logits: Tensor, index: Tensor) -> Tensor:
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def groups_from_ids(student_groups: Tensor, teacher_groups: Tensor) -> list[list[tuple[list[int], list[int]]]]:
    """The span groups of a batch from its group numbers per row (``-1``: none; :mod:`kd_lightning.core.context`):
    one list per sequence of ``(student rows, teacher rows)``, the groups numbered on both sides, in order.

    Example:
        >>> groups_from_ids(torch.tensor([[-1, 0, 0, 1]]), torch.tensor([[0, 1, -1]]))
        [[([1, 2], [0]), ([3], [1])]]
    """
    batch: list[list[tuple[list[int], list[int]]]] = []
    for s_row, t_row in zip(student_groups.tolist(), teacher_groups.tolist(), strict=True):
        s_members: dict[int, list[int]] = {}
        t_members: dict[int, list[int]] = {}
        for row, group in enumerate(s_row):
            if group >= 0:
                s_members.setdefault(group, []).append(row)
        for row, group in enumerate(t_row):
            if group >= 0:
                t_members.setdefault(group, []).append(row)
        batch.append([(s_members[g], t_members[g]) for g in sorted(s_members) if g in t_members])
    return batch


def _base_rows(groups: Tensor, bound: int, merge: str) -> Tensor:
    """``[B, bound]``: per group number, the row of its last (``merge="last"``) or first token, ``-1`` when absent."""
    batch, length = groups.shape
    valid = groups >= 0
    key = torch.where(valid, groups, 0).long()
    positions = torch.arange(length, device=groups.device).expand(batch, length)
    if merge == "last":
        values = torch.where(valid, positions, -1)
        start = torch.full((batch, bound), -1, dtype=torch.long, device=groups.device)
        return start.scatter_reduce(1, key, values, reduce="amax", include_self=True)
    values = torch.where(valid, positions, length)
    start = torch.full((batch, bound), length, dtype=torch.long, device=groups.device)
    first = start.scatter_reduce(1, key, values, reduce="amin", include_self=True)
    return torch.where(first < length, first, -1)


def span_kl_from_ids(
    student: Tensor,
    teacher: Tensor,
    student_groups: Tensor,
    teacher_groups: Tensor,
    student_shared: Tensor,
    teacher_shared: Tensor,
    temperature: float = 1.0,
    merge: str = "last",
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """:func:`span_aligned_kl_loss` with ``uld_weight = 0``, from the group number of each row, on the device.

    The same value as the list form (the KL term reads only each group's base row): per group number the base row of
    each side is found by a scatter (``amax`` / ``amin`` of the row positions), a group counts when both sides have
    it, and the rows are gathered on the shared vocabulary; nothing is read on the host, so a GPU never waits.
    ``student_groups`` ``[B, L_s]`` and ``teacher_groups`` ``[B, L_t]`` number each group once per sequence on both
    sides (``-1``: a row in none), as :mod:`kd_lightning.core.context` passes them.

    Example:
        >>> student = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]])  # vocabulary ["a", "b", "c"]
        >>> teacher = torch.tensor([[[0.0, 2.0, 5.0, 1.0]]])  # vocabulary ["x", "a", "y", "b"]
        >>> shared = shared_vocabulary({"a": 0, "b": 1, "c": 2}, {"x": 0, "a": 1, "y": 2, "b": 3})
        >>> ids = torch.tensor([[0, 0]]), torch.tensor([[0]])
        >>> round(span_kl_from_ids(student.flip(-1), teacher, *ids, *shared).item(), 4)
        0.1109
    """
    name = "span_kl_from_ids"
    check_positive("temperature", temperature)
    _check_merge(merge)
    _check_logits(student, name, "student")
    _check_logits(teacher, name, "teacher")
    for role, groups, logits in (("student", student_groups, student), ("teacher", teacher_groups, teacher)):
        if tuple(groups.shape) != tuple(logits.shape[:2]) or groups.is_floating_point():
            raise ValueError(
                f"{name} expected integer {role}_groups of shape [B, L] = {tuple(logits.shape[:2])} but got "
                f"{groups.dtype} {tuple(groups.shape)}; pass the group number of each row of the {role}'s logits."
            )
    student_shared = _check_ids(student_shared, student.shape[2], "student", name).to(student.device)
    teacher_shared = _check_ids(teacher_shared, teacher.shape[2], "teacher", name).to(student.device)
    bound = max(student.shape[1], teacher.shape[1], 1)
    s_base = _base_rows(student_groups.to(student.device), bound, merge)
    t_base = _base_rows(teacher_groups.to(student.device), bound, merge)
    present = (s_base >= 0) & (t_base >= 0)

    def rows(logits: Tensor, base: Tensor, shared: Tensor) -> Tensor:
        picked = logits.index_select(2, shared)  # [B, L, S]
        index = base.clamp(min=0)[..., None].expand(-1, -1, picked.shape[-1])
        gathered = picked.gather(1, index).float()
        gathered = torch.where(present[..., None], gathered, 0.0)  # absent groups: zeros, never NaN
        return gathered if temperature == 1 else gathered / temperature

    log_r_s = F.log_softmax(rows(student, s_base, student_shared), dim=-1)
    log_r_t = F.log_softmax(rows(teacher.detach().to(student.device), t_base, teacher_shared), dim=-1)
    per_group = torch.where(present, temperature**2 * _kl_rows(log_r_t, log_r_s), 0.0)
    total = per_group.sum()
    return total / token_normaliser(num_tokens, present.sum(), total, name)


# ---------------------------------------------------------------- modules


class ULDLoss(TokenLoss):
    """Module form of :func:`uld_loss`: the L1 distance of the sorted distributions of two vocabularies, per token.

    Boizard et al. 2024 (the reference code's weight: ``distil_factor = 1.5`` beside the cross-entropy's 1).

    Two ways to pair positions:

    * one tokenization (``teacher_mask=None``): ``student`` ``[B, L, V_s]`` and ``teacher`` ``[B, L, V_t]`` are
      aligned position by position, ``mask`` selects the positions;
    * two tokenizations of the same texts (``TextDataModule(teacher_tokenizer=...)``; the Lightning modules pass the
      teacher's selected positions as ``teacher_mask`` ``[B, L_t]``): the ``l``-th selected student position is
      paired with the ``l``-th selected teacher position, cut to the shorter side (the reference's rule,
      :func:`pair_positions`). ``num_tokens`` is then the student's token count, so the loss is a sum over pairs per
      student token of the effective batch.

    Args:
        temperature: softmax temperature ``T > 0`` (the reference: 1).
        top_k: compare only the ``k`` largest probabilities of each side; ``None`` (default): all (the paper).
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`):
            ``"labelled"`` (default) the completion tokens, the ULD paper's; ``"real"`` every real token; ``"auto"``
            the labelled tokens when the batch has labels, else every real token.

    Example:
        >>> ULDLoss(temperature=2.0)(torch.randn(2, 5, 11), torch.randn(2, 5, 13)).shape
        torch.Size([])
    """

    token_kind = "logits"
    cross_tokenizer = True
    batch_context = ("teacher_mask",)

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        chunk_size: int | None = 1024,
        positions: str = "labelled",
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        _check_top_k(top_k)
        _check_chunk_size(chunk_size)
        _check_positions(positions)
        self.temperature, self.top_k, self.chunk_size, self.positions = temperature, top_k, chunk_size, positions

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        num_tokens: Tensor | float | None = None,
        teacher_mask: Tensor | None = None,
    ) -> Tensor:
        """The loss of logits ``[B, L_s, V_s]`` / ``[B, L_t, V_t]`` over ``mask`` ``[B, L_s]`` (and ``teacher_mask``
        ``[B, L_t]`` for two tokenizations; ``target``: unused)."""
        if teacher_mask is not None:
            _check_logits(student, "ULDLoss", "student")
            _check_logits(teacher, "ULDLoss", "teacher")
            flat = _row_mask(mask, student.shape[:2], student.device, "ULDLoss")
            if flat is None:
                student_mask = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
            else:
                student_mask = flat.view(student.shape[:2])
            if teacher_mask.shape != teacher.shape[:2]:
                raise ValueError(
                    f"ULDLoss expected a teacher_mask of shape [B, L_t] = {tuple(teacher.shape[:2])} but got "
                    f"{tuple(teacher_mask.shape)}; pass one boolean per position of the teacher's logits."
                )
            s_index, t_index, mask = pair_positions(student_mask, teacher_mask.to(student.device).bool())
            student = _gather_rows(student, s_index)
            teacher = _gather_rows(teacher.detach().to(student.device), t_index)
        return uld_loss(
            student,
            teacher,
            mask,
            temperature=self.temperature,
            num_tokens=num_tokens,
            top_k=self.top_k,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, top_k={self.top_k}, chunk_size={self.chunk_size}, "
            f"positions={self.positions!r}"
        )


class SpanAlignedKLLoss(TokenLoss):
    """Module form of :func:`span_aligned_kl_loss` (GOLD's span alignment and shared vocabulary, TRL).

    Holds the shared vocabulary (buffers, not saved in the state dict) and the hyperparameters. The shared vocabulary
    is given (``student_shared`` / ``teacher_shared``, or :meth:`from_vocabularies`) or, when both are ``None``, bound
    by the Lightning modules before the first step from the datamodule's two tokenizers (:meth:`bind_vocabularies`).

    ``forward(student, teacher, target=None, mask=None, num_tokens=None, ...)`` with logits ``[B, L_s, V_s]`` and
    ``[B, L_t, V_t]`` and the groups, either as ``groups=`` (one list of :func:`align_spans` groups per sequence) or as
    the group number of each row of each side (``student_groups`` ``[B, L_s]``, ``teacher_groups`` ``[B, L_t]``,
    ``-1``: none), which the Lightning modules pass for a batch of ``TextDataModule(teacher_tokenizer=...)``
    (:mod:`kd_lightning.core.context`: spans whose every row the ``positions`` rule selects on both sides); the rows'
    tokens as ``student_tokens`` / ``teacher_tokens``. ``num_tokens`` is the student's token count there (a sum over
    spans per student token of the effective batch). With ``uld_weight = 0`` the group numbers stay on the device
    (:func:`span_kl_from_ids`); the hybrid term reads them on the host (``tolist``) once per step.

    Args:
        student_shared: ``[S]`` student ids of the shared tokens (:func:`shared_vocabulary`), or ``None``.
        teacher_shared: ``[S]`` teacher ids of the same tokens, or ``None``.
        temperature: softmax temperature ``T > 0``.
        uld_weight: weight ``>= 0`` of the ULD term on the unshared entries (GOLD's hybrid); 0: KL only.
        merge: ``"last"`` (default, TRL's ``"bayesian"``) or ``"first"`` (TRL's ``"observed"``).
        positions: the token positions the Lightning objective reads: ``"labelled"`` (default, the completion),
            ``"real"`` or ``"auto"``.

    Example:
        >>> loss = SpanAlignedKLLoss.from_vocabularies({"a": 0, "b": 1, "c": 2}, {"b": 0, "a": 1})
        >>> groups = [[SpanGroup((0,), (0,), 0, 1)], [SpanGroup((0, 1), (0,), 0, 2)]]
        >>> loss(torch.randn(2, 2, 3), torch.randn(2, 1, 2), groups=groups).shape
        torch.Size([])
    """

    token_kind = "logits"
    cross_tokenizer = True
    batch_context = ("student_groups", "teacher_groups", "student_tokens", "teacher_tokens")

    def __init__(
        self,
        student_shared: Tensor | Sequence[int] | None = None,
        teacher_shared: Tensor | Sequence[int] | None = None,
        temperature: float = 1.0,
        uld_weight: float = 0.0,
        merge: str = "last",
        positions: str = "labelled",
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        check_non_negative("uld_weight", uld_weight)
        _check_merge(merge)
        _check_positions(positions)
        self.temperature, self.uld_weight, self.merge, self.positions = temperature, uld_weight, merge, positions
        self.register_buffer("student_shared", None, persistent=False)
        self.register_buffer("teacher_shared", None, persistent=False)
        if (student_shared is None) != (teacher_shared is None):
            raise ValueError(
                f"{type(self).__name__} expected both student_shared and teacher_shared, or neither (bound from the "
                f"datamodule's two tokenizers), but got only one; pass the pair shared_vocabulary returns."
            )
        if student_shared is not None:
            self._set_shared(torch.as_tensor(student_shared, dtype=torch.long), torch.as_tensor(teacher_shared))

    def _set_shared(self, student_shared: Tensor, teacher_shared: Tensor) -> None:
        student_shared, teacher_shared = student_shared.long(), teacher_shared.long()
        if student_shared.ndim != 1 or student_shared.numel() == 0 or student_shared.shape != teacher_shared.shape:
            raise ValueError(
                f"{type(self).__name__} expected non-empty 1-d student and teacher ids of the shared vocabulary of one "
                f"length but got shapes {tuple(student_shared.shape)} and {tuple(teacher_shared.shape)}; pass the "
                f"pair shared_vocabulary returns."
            )
        self.student_shared, self.teacher_shared = student_shared, teacher_shared

    @property
    def is_bound(self) -> bool:
        """Whether the shared vocabulary is known."""
        return self.student_shared is not None

    def bind_vocabularies(self, student_vocab: Mapping[str, int], teacher_vocab: Mapping[str, int]) -> None:
        """Set the shared vocabulary from the two tokenizers' ``get_vocab()`` (:func:`shared_vocabulary`)."""
        device = None if self.student_shared is None else self.student_shared.device
        student_ids, teacher_ids = shared_vocabulary(student_vocab, teacher_vocab)
        if student_ids.numel() == 0:
            raise ValueError(
                f"{type(self).__name__} compares the tokens both vocabularies hold, but the student's and the "
                f"teacher's tokenizers share no token string; use kd_lightning.losses.ULDLoss, which needs none."
            )
        self._set_shared(student_ids.to(device), teacher_ids.to(device))

    @classmethod
    def from_vocabularies(
        cls, student_vocab: Mapping[str, int], teacher_vocab: Mapping[str, int], **kwargs: float | str
    ) -> SpanAlignedKLLoss:
        """The loss over the tokens both vocabularies (``tokenizer.get_vocab()``) hold, :func:`shared_vocabulary`."""
        return cls(*shared_vocabulary(student_vocab, teacher_vocab), **kwargs)

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        num_tokens: Tensor | float | None = None,
        groups: Sequence[Sequence[SpanGroup | Sequence[Sequence[int]]]] | None = None,
        student_tokens: Tensor | None = None,
        teacher_tokens: Tensor | None = None,
        student_groups: Tensor | None = None,
        teacher_groups: Tensor | None = None,
    ) -> Tensor:
        """The loss of logits ``[B, L_s, V_s]`` and ``[B, L_t, V_t]`` over the groups (``target``, ``mask``: unused;
        the groups already hold only the selected rows)."""
        name = type(self).__name__
        if not self.is_bound:
            raise ValueError(
                f"{name} has no shared vocabulary: pass student_shared/teacher_shared (shared_vocabulary of the two "
                f"tokenizers), or train with data that tokenizes for both models (TextDataModule teacher_tokenizer), "
                f"whose tokenizers the Lightning modules bind before the first step."
            )
        if groups is None:
            if student_groups is None or teacher_groups is None:
                raise ValueError(
                    f"{name} needs the aligned character spans of the two tokenizations: groups= (one list of "
                    f"align_spans groups per sequence), or data that tokenizes each text for both models with "
                    f"character offsets (TextDataModule teacher_tokenizer, both tokenizers fast: a tokenizer.json)."
                )
            if self.uld_weight == 0:  # the KL term alone: on the device, no host read
                return span_kl_from_ids(
                    student,
                    teacher,
                    student_groups,
                    teacher_groups,
                    self.student_shared,
                    self.teacher_shared,
                    temperature=self.temperature,
                    merge=self.merge,
                    num_tokens=num_tokens,
                )
            groups = groups_from_ids(student_groups, teacher_groups)
        return span_aligned_kl_loss(
            student,
            teacher,
            groups,
            self.student_shared,
            self.teacher_shared,
            student_tokens=student_tokens,
            teacher_tokens=teacher_tokens,
            temperature=self.temperature,
            uld_weight=self.uld_weight,
            merge=self.merge,
            num_tokens=num_tokens,
        )

    def extra_repr(self) -> str:
        shared = None if self.student_shared is None else self.student_shared.numel()
        return (
            f"shared={shared}, temperature={self.temperature}, uld_weight={self.uld_weight}, "
            f"merge={self.merge!r}, positions={self.positions!r}"
        )
