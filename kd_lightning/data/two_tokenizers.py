"""Each text tokenized for two models (cross-tokenizer distillation): the student's and the teacher's tokens of the
same characters, and the character spans where the two tokenizations align.

:func:`encode_pairs` tokenizes every text with both tokenizers, cuts both to the characters both cover (a truncated
side ends at a token boundary of its own; the other is cut back to it, so the two sides always cover the same text)
and numbers the aligned spans (:func:`~kd_lightning.losses.cross_tokenizer.align_spans`: the minimal runs of student
and teacher tokens that cover the same characters). The alignment needs character offsets, which only fast
(Rust-backed) tokenizers give; without them each side is truncated on its own and there are no spans, which is what
ULD (position by position) needs and all it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kd_lightning.losses.cross_tokenizer import align_spans


@dataclass
class PairedTokens:
    """The teacher's side of a split's samples, paired with the student's (lists of 1-D int64 tensors).

    Attributes:
        student: the student's token ids of each sample (cut to the characters both sides cover).
        teacher: the teacher's token ids of the same characters.
        student_groups: per student token, the number of its aligned span (``-1``: in none); ``None`` without offsets.
        teacher_groups: the same for the teacher's tokens.
        teacher_prompt: per sample, how many of the teacher's first tokens lie in the student's prompt (``None``: no
            prompt).
    """

    student: list[Tensor]
    teacher: list[Tensor]
    student_groups: list[Tensor] | None
    teacher_groups: list[Tensor] | None
    teacher_prompt: list[int] | None = None

    def keep(self, kept: Sequence[int]) -> PairedTokens:
        """Only the samples ``kept`` (in that order)."""

        def pick(values: list[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in kept]

        return PairedTokens(
            pick(self.student),
            pick(self.teacher),
            pick(self.student_groups),
            pick(self.teacher_groups),
            pick(self.teacher_prompt),
        )


def has_offsets(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` gives character offsets (``return_offsets_mapping``): a fast tokenizer."""
    return bool(getattr(tokenizer, "is_fast", False))


def _last_nonempty(offsets: Sequence[tuple[int, int]], limit: int) -> int:
    """The number of leading tokens kept when the text is cut at character ``limit``: up to the last non-empty token
    that ends at or before ``limit``."""
    kept = 0
    for index, (start, end) in enumerate(offsets):
        if end > start:
            if end > limit:
                break
            kept = index + 1
    return kept


def _reach(offsets: Sequence[tuple[int, int]], room: int) -> int:
    """The characters the first ``room`` tokens cover whole: the end of the last non-empty one, or, when the next
    token starts inside it (a character cut into several byte tokens), that token's start."""
    end = _end(offsets, room)
    following = next(((start, stop) for start, stop in offsets[room:] if stop > start), None)
    if following is not None and following[0] < end:
        return following[0]
    return end


def _trailing_specials(offsets: Sequence[tuple[int, int]]) -> int:
    count = 0
    while count < len(offsets) and offsets[len(offsets) - 1 - count][0] == offsets[len(offsets) - 1 - count][1]:
        count += 1
    return count


def _end(offsets: Sequence[tuple[int, int]], count: int) -> int:
    return max((end for start, end in offsets[:count] if end > start), default=0)


def _cut(ids: list[int], offsets: list[tuple[int, int]], count: int) -> tuple[list[int], list]:
    """The first ``count`` tokens and the trailing zero-width (special) tokens the tokenizer ends a text with."""
    tail = len(ids)
    while tail > count and offsets[tail - 1][0] == offsets[tail - 1][1]:
        tail -= 1
    chosen = list(range(count)) + list(range(tail, len(ids)))
    return [ids[i] for i in chosen], [offsets[i] for i in chosen]


def _groups(length: int, indices: Sequence[Sequence[int]]) -> Tensor:
    groups = torch.full((length,), -1, dtype=torch.long)
    for number, members in enumerate(indices):
        groups[list(members)] = number
    return groups


def encode_pairs(
    texts: Sequence[str],
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    max_length: int,
    teacher_max_length: int,
    prompt_length: int | None = None,
) -> PairedTokens:
    """Tokenize ``texts`` for both models (see the module docstring).

    Args:
        texts: one sample each.
        student_tokenizer: the student's (the datamodule's ``tokenizer``).
        teacher_tokenizer: the teacher's.
        max_length: the student's tokens per sample at most.
        teacher_max_length: the teacher's tokens per sample at most.
        prompt_length: the student's first ``prompt_length`` tokens are the prompt; ``teacher_prompt`` counts the
            teacher's tokens that start before the prompt's last character ends (needs offsets).

    Returns:
        The :class:`PairedTokens`.
    """
    offsets = has_offsets(student_tokenizer) and has_offsets(teacher_tokenizer)
    if prompt_length is not None and not offsets:
        raise ValueError(
            f"prompt_length with a teacher_tokenizer needs the character offsets of both tokenizers, to find where the "
            f"prompt ends in the teacher's tokens, but {_slow(student_tokenizer, teacher_tokenizer)} gives none (not a "
            f"fast tokenizer); use fast tokenizers (a tokenizer.json), or prompt_length: null."
        )
    if not offsets:
        kwargs = {"truncation": True, "verbose": False}
        ours = student_tokenizer(list(texts), max_length=max_length, **kwargs)
        theirs = teacher_tokenizer(list(texts), max_length=teacher_max_length, **kwargs)
        return PairedTokens(
            [torch.tensor(ids, dtype=torch.long) for ids in ours["input_ids"]],
            [torch.tensor(ids, dtype=torch.long) for ids in theirs["input_ids"]],
            None,
            None,
        )
    # whole texts, cut here: a tokenizer's own truncation may split a character into its first bytes
    ours = student_tokenizer(list(texts), verbose=False, return_offsets_mapping=True)
    theirs = teacher_tokenizer(list(texts), verbose=False, return_offsets_mapping=True)
    paired = PairedTokens([], [], [], [], [] if prompt_length is not None else None)
    for index, text in enumerate(texts):
        s_ids, s_off = ours["input_ids"][index], [tuple(pair) for pair in ours["offset_mapping"][index]]
        t_ids, t_off = theirs["input_ids"][index], [tuple(pair) for pair in theirs["offset_mapping"][index]]
        s_room = max(max_length - _trailing_specials(s_off), 0)
        t_room = max(teacher_max_length - _trailing_specials(t_off), 0)
        limit = min(_reach(s_off, s_room), _reach(t_off, t_room))
        while True:  # cut both back to a character boundary each side has
            s_count, t_count = _last_nonempty(s_off, limit), _last_nonempty(t_off, limit)
            common = min(_end(s_off, s_count), _end(t_off, t_count))
            if common == limit:
                break
            limit = common
        s_ids, s_off = _cut(s_ids, s_off, s_count)
        t_ids, t_off = _cut(t_ids, t_off, t_count)
        spans = align_spans(s_off, t_off, text) if limit > 0 else []
        paired.student.append(torch.tensor(s_ids, dtype=torch.long))
        paired.teacher.append(torch.tensor(t_ids, dtype=torch.long))
        paired.student_groups.append(_groups(len(s_ids), [span.student for span in spans]))
        paired.teacher_groups.append(_groups(len(t_ids), [span.teacher for span in spans]))
        if prompt_length is not None:
            prompt_end = _end(s_off, min(prompt_length, len(s_off)))
            paired.teacher_prompt.append(sum(1 for start, end in t_off if end > start and start < prompt_end))
    return paired


def _slow(*tokenizers: Any) -> str:
    slow = [tokenizer for tokenizer in tokenizers if not has_offsets(tokenizer)]
    names = [getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__ for tokenizer in slow]
    return " and ".join(repr(name) for name in names)
