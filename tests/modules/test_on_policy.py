"""On-policy (GKD) and sequence-level distillation: batches replaced by sampled continuations of their prompts."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import LossRecorder, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import DistillTerm, OfflineDistillation, OnPolicy, TeacherCache
from kd_lightning.core.batch import Batch
from kd_lightning.losses import GeneralizedJSDLoss

transformers = pytest.importorskip("transformers")
from kd_lightning import TextDataModule  # noqa: E402
from kd_lightning.models.text import model_from_config  # noqa: E402

BPE = str(Path("checkpoints/text/python_help_bpe").resolve())
TEXTS = [f"def function_{i}(value):\n    return value * {i} + len(str(value)) - {i % 7}" for i in range(48)]


def gpt2(width: int, seed: int, positions: int = 64) -> torch.nn.Module:
    sizes = {"vocab_size": 4096, "num_heads": 2, "max_positions": positions, "dropout": 0.0}
    return model_from_config("gpt2", "causal_lm", hidden_size=width, num_layers=1, seed=seed, **sizes)


def data(**overrides) -> TextDataModule:
    settings = {"tokenizer": BPE, "texts": TEXTS, "task": "clm", "max_length": 24, "batch_size": 4}
    settings |= {"unit": "line", "min_chars": 5, "prompt_length": 4, "val_fraction": 0.1, "test_fraction": 0.1}
    return TextDataModule(**{**settings, **overrides})


def module(on_policy: OnPolicy | None, student=None, teacher=None, positions: str = "labelled", **kwargs):
    loss = GeneralizedJSDLoss(beta=0.5, temperature=1.0)
    loss.positions = positions
    return OfflineDistillation(
        student if student is not None else gpt2(16, 1),
        teacher if teacher is not None else gpt2(24, 0),
        terms=[DistillTerm(loss, weight=0.5)],
        ce_weight=0.5,
        allow_untrained_teacher=True,
        on_policy=on_policy,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        **kwargs,
    )


def fit(model, steps: int = 3, datamodule: TextDataModule | None = None, **trainer_kwargs):
    record = LossRecorder()
    limits = {"max_steps": steps, "limit_train_batches": steps, "limit_val_batches": 0}
    trainer = fast_trainer(Path(trainer_kwargs.pop("root", ".")), callbacks=[record], **limits, **trainer_kwargs)
    L.seed_everything(0, verbose=False)
    trainer.fit(model, datamodule=datamodule or data())
    return record.losses, model


def test_prompt_length_makes_prompt_completion_samples():
    dm = data()
    dm.setup("fit")
    item = dm.splits["train"][0]
    assert (item["labels"][:4] == -100).all() and (item["labels"][4:] == item["input_ids"][4:]).all()
    assert all(len(dm.splits["train"][i]["input_ids"]) > 4 for i in range(len(dm.splits["train"])))
    with pytest.raises(ValueError, match="task: clm and packing: false"):
        data(packing=True)
    with pytest.raises(ValueError, match="prompt_length < max_length"):
        data(prompt_length=24)


def test_a_rollout_keeps_the_prompts_and_labels_only_the_sampled_tokens():
    dm = data()
    dm.setup("fit")
    batch = Batch.parse(dm.collator([dm.splits["train"][i] for i in range(4)]))
    sampling = OnPolicy(lmbda=1.0, max_new_tokens=6, seed=3)
    ids = {"pad": dm.pad_token_id, "eos": None}
    student = gpt2(16, 1)
    rolled = sampling.rollout(student, batch, epoch=0, batch_idx=2, rank=0, ids=ids)
    again = sampling.rollout(student, batch, epoch=0, batch_idx=2, rank=0, ids=ids)
    other = sampling.rollout(student, batch, epoch=0, batch_idx=3, rank=0, ids=ids)
    assert torch.equal(rolled.inputs["input_ids"], again.inputs["input_ids"])  # seeded by (seed, epoch, batch)
    assert not torch.equal(rolled.inputs["input_ids"], other.inputs["input_ids"])
    assert rolled.inputs["input_ids"].shape == (4, 4 + 6) and student.training  # train mode restored
    assert torch.equal(rolled.inputs["input_ids"][:, :4], batch.inputs["input_ids"][:, :4])
    assert (rolled.labels[:, :4] == -100).all()
    assert torch.equal(rolled.labels[:, 4:], rolled.inputs["input_ids"][:, 4:])
    stop = int(rolled.inputs["input_ids"][0, 5])  # the end-of-sequence token cuts a continuation after it
    cut = sampling.rollout(student, batch, epoch=0, batch_idx=2, rank=0, ids={"pad": 0, "eos": stop})
    assert cut.inputs["attention_mask"][0].sum() == 6 and (cut.labels[0, 6:] == -100).all()


def test_lmbda_zero_is_the_off_policy_run_bit_for_bit(tmp_path, one_torch_thread):
    student, teacher = gpt2(16, 1), gpt2(24, 0)
    plain, plain_model = fit(module(None, copy.deepcopy(student), copy.deepcopy(teacher)), root=tmp_path)
    zero, zero_model = fit(
        module(OnPolicy(lmbda=0.0, max_new_tokens=8), copy.deepcopy(student), copy.deepcopy(teacher)), root=tmp_path
    )
    assert plain == zero and len(plain) == 3
    for a, b in zip(plain_model.student.parameters(), zero_model.student.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("samples_from", ["student", "teacher"])
def test_sampled_batches_train_on_the_generated_tokens(samples_from, tmp_path, one_torch_thread):
    model = module(OnPolicy(lmbda=1.0, samples_from=samples_from, max_new_tokens=5, seed=0))
    seen = []
    original = model.teacher.outputs

    def record(batch):
        seen.append(batch)
        return original(batch)

    model.teacher.outputs = record
    losses, _ = fit(model, root=tmp_path)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    sampled = [batch for batch in seen if batch.labels is not None and (batch.labels[:, :4] == -100).all()]
    assert len(sampled) >= 3 and all(batch.sequence_shape[1] <= 4 + 5 for batch in sampled[-3:])


def test_the_same_seed_samples_the_same_batches(tmp_path, one_torch_thread):
    student, teacher = gpt2(16, 1), gpt2(24, 0)
    runs = [
        fit(module(OnPolicy(lmbda=0.5, max_new_tokens=4, seed=7), copy.deepcopy(student), copy.deepcopy(teacher)))
        for _ in range(2)
    ]
    assert runs[0][0] == runs[1][0]


def test_what_cannot_sample_is_refused_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match=r"lmbda in \[0, 1\]"):
        OnPolicy(lmbda=1.5)
    with pytest.raises(ValueError, match="samples_from in"):
        OnPolicy(samples_from="peer")
    with pytest.raises(ValueError, match="max_new_tokens=60 after prompts of up to 4 tokens makes 64 positions"):
        fit(module(OnPolicy(max_new_tokens=60), student=gpt2(16, 1, positions=32)), root=tmp_path)
    with pytest.raises(ValueError, match="term 'generalizedjsd' reads positions: real; set positions: labelled"):
        fit(module(OnPolicy(), positions="real"), root=tmp_path)
    with pytest.raises(ValueError, match="prompt_length: null .* set data.init_args.prompt_length"):
        fit(module(OnPolicy(max_new_tokens=8)), datamodule=data(prompt_length=None), root=tmp_path)
    cache = TeacherCache(str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="the teacher is CachedTeacher .* give the teacher network"):
        fit(module(OnPolicy(max_new_tokens=8), teacher_cache=cache), root=tmp_path)
    encoder = model_from_config("bert", "masked_lm", hidden_size=16, num_layers=1, num_heads=2, vocab_size=4096)
    with pytest.raises(ValueError, match="BertForMaskedLM is not a causal language model with generate"):
        OnPolicy().check(encoder, None, 64, 4)


def test_a_resumed_on_policy_run_samples_as_the_uninterrupted_one(tmp_path, one_torch_thread):
    student, teacher = gpt2(16, 1), gpt2(24, 0)
    sampling = OnPolicy(lmbda=0.5, max_new_tokens=4, seed=11)

    def run(steps: int, folder: str, ckpt_path: str | None = None) -> OfflineDistillation:
        model = module(sampling, copy.deepcopy(student), copy.deepcopy(teacher))
        saving = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True, every_n_train_steps=1)
        limits = {"max_steps": steps, "limit_train_batches": 6, "limit_val_batches": 0}
        trainer = fast_trainer(tmp_path, callbacks=[saving], enable_checkpointing=True, **limits)
        L.seed_everything(0, verbose=False)
        trainer.fit(model, datamodule=data(), ckpt_path=ckpt_path)
        return model

    assert [sampling.draws(0, index) for index in range(4)] == [False, False, True, True]  # sampled after the resume
    straight = run(4, "straight")
    run(2, "killed")
    resumed = run(4, "resumed", ckpt_path=str(tmp_path / "killed" / "last.ckpt"))
    for a, b in zip(straight.student.parameters(), resumed.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bf16_mixed_samples_and_trains(tmp_path, one_torch_thread):
    losses, _ = fit(module(OnPolicy(lmbda=1.0, max_new_tokens=4)), root=tmp_path, precision="bf16-mixed")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow  # two DDP processes (gloo, CPU)
def test_each_ddp_process_samples_for_its_shard(tmp_path, one_torch_thread):
    model = module(OnPolicy(lmbda=1.0, max_new_tokens=4, seed=0))
    before = [parameter.detach().clone() for parameter in model.student.parameters()]
    fit(model, steps=2, root=tmp_path, strategy="ddp_fork", devices=2)  # the trained weights come back from rank 0
    after = list(model.student.parameters())
    assert all(torch.isfinite(parameter).all() for parameter in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
