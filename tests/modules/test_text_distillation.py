"""Language models in the modules: tiny random BERT and GPT-2 configs (no download), the hard loss that is the model's
own MLM / causal-LM loss, token losses normalised per real token of the effective batch (gradient accumulation and
DDP give the weights of one big batch), and the CLI on text."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from helpers import fast_trainer
from torch.utils.data import DataLoader, Dataset

from kd_lightning import (
    Classifier,
    DistillTerm,
    EMATeacher,
    OfflineDistillation,
    OnlineDistillation,
    ResumableDataLoader,
    SelfDistillation,
    TokenWindowLoader,
)
from kd_lightning.cli import build_cli
from kd_lightning.core.batch import Batch
from kd_lightning.core.objective import hard_label_loss
from kd_lightning.data.text import TokenCollator
from kd_lightning.losses import ForwardKLLoss, GeneralizedJSDLoss, HiddenCosineLoss, HiddenMSELoss, SkewKLLoss
from kd_lightning.models.text import model_from_config

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 50
TINY = {"vocab_size": VOCAB, "num_heads": 2, "max_positions": 32, "dropout": 0.0}
BPE = "checkpoints/text/python_help_bpe"


def tiny(model_type: str, layers: int, width: int, seed: int) -> torch.nn.Module:
    task = "masked_lm" if model_type == "bert" else "causal_lm"
    return model_from_config(model_type, task, hidden_size=width, num_layers=layers, seed=seed, **TINY)


class Sequences(Dataset):
    """Eight fixed token sequences of different lengths (so batches pad differently), MLM-style or causal labels."""

    lengths = (5, 12, 7, 3, 10, 6, 12, 4)

    def __init__(self, causal: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for length in self.lengths:
            ids = torch.randint(5, VOCAB, (length,), generator=generator)
            labels = ids.clone() if causal else torch.where(torch.rand(length, generator=generator) < 0.4, ids, -100)
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def module(model_type: str) -> OfflineDistillation:
    """CE (the LM loss) + token KL + a two-pair hidden-state layer map with a projection (16 -> 24 wide)."""
    layer = "bert.encoder.layer" if model_type == "bert" else "transformer.h"
    teacher, student = tiny(model_type, 2, 24, seed=0), tiny(model_type, 2, 16, seed=1)
    terms = [
        DistillTerm(ForwardKLLoss(temperature=2.0), weight=0.5),
        DistillTerm(HiddenCosineLoss(), student=[f"{layer}.0", f"{layer}.1"], teacher=[f"{layer}.0", f"{layer}.1"]),
        DistillTerm(HiddenMSELoss(), student="logits" if model_type == "bert" else f"{layer}.1", teacher=f"{layer}.1"),
    ]
    torch.manual_seed(0)
    return OfflineDistillation(
        student,
        teacher,
        terms=terms[:2] if model_type == "bert" else terms,
        ce_weight=1.0,
        num_classes=VOCAB,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        allow_untrained_teacher=True,  # tiny random models
    )


def one_step(model_type: str, loader: DataLoader, tmp_path, **trainer_args) -> dict[str, torch.Tensor]:
    """The student's weights after one optimizer step of a fresh module on ``loader``."""
    trained = module(model_type)
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0, **trainer_args)
    trainer.fit(trained, train_dataloaders=loader)
    assert trainer.global_step == 1
    return {key: value.detach().clone() for key, value in trained.student.state_dict().items()}


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    worst = max((first[key] - second[key]).abs().max().item() for key in first)
    assert worst < 2e-6, worst


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_accumulated_micro_batches_train_like_one_batch(model_type, tmp_path):
    """Two accumulated micro-batches of 4 differently padded sequences give the weights of one batch of 8."""
    data, collate = Sequences(causal=model_type == "gpt2"), TokenCollator(pad_token_id=0)
    whole = one_step(model_type, TokenWindowLoader(data, batch_size=8, collate_fn=collate), tmp_path)
    windowed = TokenWindowLoader(data, batch_size=4, collate_fn=collate, window=2)
    accumulated = one_step(model_type, windowed, tmp_path, accumulate_grad_batches=2)
    assert_same_weights(whole, accumulated)
    # without the window's token counts each micro-batch is its own mean: other weights, and a warning says so
    plain = ResumableDataLoader(data, batch_size=4, collate_fn=collate)
    with pytest.warns(UserWarning, match="normalised by each micro-batch's own token count"):
        separate = one_step(model_type, plain, tmp_path, accumulate_grad_batches=2)
    assert max((whole[key] - separate[key]).abs().max().item() for key in whole) > 1e-4


class RecordWeights(L.Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        state = {key: value.detach().clone() for key, value in pl_module.student.state_dict().items()}
        torch.save(state, self.path / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_ddp_processes_train_like_one_batch(tmp_path):
    """Two processes with 4 sequences each (different padding per rank) end with the weights of one batch of 8."""
    data, collate = Sequences(causal=False), TokenCollator(pad_token_id=0)
    whole = one_step("bert", TokenWindowLoader(data, batch_size=8, collate_fn=collate), tmp_path)
    trained = module("bert")
    trainer = fast_trainer(
        tmp_path, max_steps=1, limit_val_batches=0, strategy="ddp_fork", devices=2, callbacks=[RecordWeights(tmp_path)]
    )
    trainer.fit(trained, train_dataloaders=TokenWindowLoader(data, batch_size=4, collate_fn=collate))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert_same_weights(ranks[0], ranks[1])
    assert_same_weights(whole, ranks[0])


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_the_hard_loss_is_the_models_own_lm_loss(model_type):
    student = tiny(model_type, 2, 16, seed=1)
    batch = TokenCollator(pad_token_id=0)([Sequences(causal=model_type == "gpt2")[i] for i in range(4)])
    targets = Batch.parse(batch).targets(causal=model_type == "gpt2")
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = student(**{key: batch[key] for key in ("input_ids", "attention_mask", "labels")}).loss
    assert torch.allclose(hard_label_loss(logits, targets), expected, atol=1e-6)


def text_cli(tmp_path, model_type: str, *extra: str, task: str | None = None):
    """The CLI on a tiny random teacher and student and the Python help corpus (BPE tokenizer, 4096 tokens)."""
    layer = "bert.encoder.layer" if model_type == "bert" else "transformer.h"
    network = "{model_type: " + model_type + ", vocab_size: 4096, num_heads: 2, max_positions: 64, %s}"
    task = task or ("mlm" if model_type == "bert" else "clm")
    config = f"""
seed_everything: 0
trainer: {{accelerator: cpu, devices: 1, max_steps: 3, limit_val_batches: 2, limit_test_batches: 2,
  val_check_interval: 3, logger: false, enable_progress_bar: false, enable_model_summary: false,
  default_root_dir: {tmp_path}}}
model:
  class_path: kd_lightning.OfflineDistillation
  init_args:
    student: {{class_path: kd_lightning.models.text.model_from_config,
      init_args: {network % "hidden_size: 16, num_layers: 2, seed: 1"}}}
    teacher: {{class_path: kd_lightning.models.text.model_from_config,
      init_args: {network % "hidden_size: 32, num_layers: 3, seed: 0"}}}
    ce_weight: {0.0 if task == "none" else 1.0}
    allow_untrained_teacher: true
    terms:
      - class_path: kd_lightning.DistillTerm
        init_args: {{loss: {{class_path: kd_lightning.losses.GeneralizedJSDLoss, init_args: {{beta: 0.5}}}}}}
      - class_path: kd_lightning.DistillTerm
        init_args:
          loss: {{class_path: kd_lightning.losses.HiddenCosineLoss}}
          student: [{layer}.0, {layer}.1]
          teacher: [{layer}.0, {layer}.2]
data:
  class_path: kd_lightning.TextDataModule
  init_args: {{tokenizer: {BPE}, corpus: python_help, task: {task}, max_length: 32, batch_size: 8}}
"""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return build_cli(["fit", "--config", str(path), *extra])


@pytest.mark.parametrize(
    ("model_type", "task", "precision"),
    [("bert", "mlm", "32"), ("gpt2", "clm", "32"), ("bert", "mlm", "bf16-mixed"), ("gpt2", "none", "bf16-mixed")],
)
def test_tiny_random_models_distil_through_the_cli(in_project_copy, model_type, task, precision):
    cli = text_cli(in_project_copy, model_type, f"--trainer.precision={precision}", "--test_after_fit=false", task=task)
    metrics = dict(cli.trainer.callback_metrics)
    assert cli.trainer.global_step == 3 and torch.isfinite(metrics["train/loss"])
    assert {"train/generalizedjsd", "train/hiddencosine", "val/agreement", "val/kl"} <= set(metrics)
    assert ("train/ce" in metrics) == (task != "none") and ("val/ppl" in metrics) == (task != "none")
    adapters = [name for name in cli.model.state_dict() if ".loss.projections." in name]
    assert adapters, "the 16 -> 32 wide layer pairs need projections, saved in the checkpoint"
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert 0 <= results["test/agreement"] <= 1 and results["test/kl"] >= 0


def test_teacher_and_student_with_different_vocabularies_stop_before_the_first_step(tmp_path):
    teacher, student = (
        tiny("bert", 2, 16, seed=0),
        model_from_config("bert", hidden_size=16, num_layers=1, vocab_size=70, num_heads=2, max_positions=32),
    )
    distil = OfflineDistillation(student, teacher, terms=[DistillTerm(ForwardKLLoss())], num_classes=VOCAB)
    trainer = fast_trainer(tmp_path)
    loader = DataLoader(Sequences(causal=False), batch_size=4, collate_fn=TokenCollator(pad_token_id=0))
    with pytest.raises(ValueError, match=r"share a vocabulary but the teacher predicts 50 tokens and the student 70"):
        trainer.fit(distil, train_dataloaders=loader)
    assert trainer.global_step == 0


def test_generalized_jsd_and_hidden_mse_terms_build_from_python():
    distil = OfflineDistillation(
        tiny("gpt2", 1, 16, seed=1),
        tiny("gpt2", 2, 16, seed=0),
        terms=[
            DistillTerm(GeneralizedJSDLoss(beta=0.9)),
            DistillTerm(HiddenMSELoss(), student="transformer.h.0", teacher="transformer.h.1"),
        ],
        ce_weight=0.0,
        num_classes=VOCAB,
    )
    batch = TokenCollator(pad_token_id=0)([Sequences(causal=True)[i] for i in range(4)])
    losses = distil.compute_losses(batch)
    assert set(losses) == {"generalizedjsd", "hiddenmse"} and all(torch.isfinite(v) for v in losses.values())
    assert distil(batch["input_ids"]).shape == (4, 12, VOCAB)


@pytest.mark.parametrize("mode", ["classifier", "online", "ema"])
def test_every_module_trains_a_causal_language_model(mode, tmp_path):
    if mode == "classifier":
        trained = Classifier(tiny("gpt2", 1, 16, seed=1), num_classes=VOCAB)
    elif mode == "online":
        peers = {"teacher": tiny("gpt2", 2, 24, seed=0), "student": tiny("gpt2", 1, 16, seed=1)}
        trained = OnlineDistillation(peers, terms=[DistillTerm(ForwardKLLoss())], num_classes=VOCAB)
    else:
        teacher = EMATeacher(decay=0.9)
        trained = SelfDistillation(tiny("gpt2", 1, 16, seed=1), teacher=teacher, terms=[DistillTerm(SkewKLLoss())])
        trained.num_classes = VOCAB
    data, collate = Sequences(causal=True), TokenCollator(pad_token_id=0)
    trainer = fast_trainer(tmp_path, max_epochs=2)
    trainer.fit(
        trained,
        train_dataloaders=TokenWindowLoader(data, batch_size=4, collate_fn=collate),
        val_dataloaders=DataLoader(data, batch_size=4, collate_fn=collate),
    )
    metrics = trainer.callback_metrics
    assert trainer.global_step == 4 and torch.isfinite(metrics["train/loss"])
    assert metrics["val/ppl"] > 1 and 0 <= metrics["val/acc"] <= 1
    assert ("val/agreement" in metrics) == (mode != "classifier")
