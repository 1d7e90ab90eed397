"""TRL's GKD trainer and ``OfflineDistillation`` side by side: the same tiny GPT-2 pair, batches and optimizer, lmbda 0.

TRL is an optional dependency of this script only (``pip install trl accelerate datasets``; not a test). Both runs
start from copies of the same two networks (``model_from_config``, dropout 0), read the same prompt/completion batches
of ``TextDataModule(prompt_length=...)`` in the same order (TRL's sampler is made sequential, one pre-collated batch per
item) and take plain SGD steps (constant learning rate, no weight decay, no gradient clipping):

* TRL: ``trl.experimental.gkd.GKDTrainer`` with ``GKDConfig(lmbda=0, beta=...)``: the generalized JSD of the
  shifted logits on the labelled (completion) tokens, divided by the batch's labelled tokens;
* kd_lightning: ``OfflineDistillation`` with ``GeneralizedJSDLoss(beta, positions="labelled")`` and no hard-label loss.

It prints the per-step losses of both and their largest difference. Conventions that differ and do not matter at
``lmbda = 0``: TRL computes its loss on left-padded sampled sequences as generated, the module re-packs them
right-padded; TRL draws ``random.random()`` per step, the module a seed from (seed, epoch, batch index).

    PYTHONPATH=/path/to/trl/packages python benchmarks/trl_side_by_side.py --steps 8   # about 30 s on 2 CPU cores

Measured 2026-12-07 (trl 1.16.0, transformers 5.25.0, CPU, fp32, SGD lr 200 so the loss moves: 0.0094 -> 0.0059 in 8
steps): the per-step losses agree to 1.4e-9 at beta 0.5 and 1.9e-9 at beta 0 (forward KL).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


def networks() -> tuple[torch.nn.Module, torch.nn.Module]:
    from kd_lightning.models.text import model_from_config

    sizes = {"model_type": "gpt2", "task": "causal_lm", "vocab_size": 4096, "max_positions": 128, "dropout": 0.0}
    student = model_from_config(hidden_size=64, num_layers=2, num_heads=2, seed=1, **sizes)
    teacher = model_from_config(hidden_size=128, num_layers=2, num_heads=2, seed=0, **sizes)
    return student, teacher


def batches(count: int) -> tuple[list[dict[str, torch.Tensor]], object]:
    """The first ``count`` training batches of the prompt/completion data, in the loader's order."""
    from kd_lightning import TextDataModule

    data = TextDataModule(
        tokenizer=str(ROOT / "checkpoints" / "text" / "python_help_bpe"),
        corpus="python_help",
        task="clm",
        max_length=64,
        prompt_length=16,
        batch_size=8,
    )
    data.setup("fit")
    loader = torch.utils.data.DataLoader(data.splits["train"], batch_size=8, collate_fn=data.collator)
    taken = []
    for batch in loader:
        taken.append({key: batch[key] for key in ("input_ids", "attention_mask", "labels")})
        if len(taken) == count:
            break
    return taken, data.tokenizer


def with_prompts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with TRL's ``prompts`` / ``prompt_attention_mask`` (used only when sampling)."""
    first = (batch["labels"] != -100).int().argmax(1)
    width = int(first.max())
    return {
        **batch,
        "prompts": batch["input_ids"][:, :width],
        "prompt_attention_mask": batch["attention_mask"][:, :width],
    }


def trl_losses(student, teacher, taken, tokenizer, beta: float, lr: float, workdir: Path) -> list[float]:
    import pyarrow
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    recorded: list[float] = []

    class Recorded(GKDTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            recorded.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    args = GKDConfig(
        output_dir=str(workdir),
        lmbda=0.0,
        beta=beta,
        seq_kd=False,
        max_steps=len(taken),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_dropout=True,
    )
    trainer = Recorded(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset(  # a fixed fingerprint: no hashing of the rows
            pyarrow.Table.from_pylist([{k: v.tolist() for k, v in with_prompts(b).items()} for b in taken]),
            fingerprint="kd_lightning_side_by_side",
        ),
        data_collator=lambda items: {key: torch.tensor(value) for key, value in items[0].items()},
        processing_class=tokenizer,
    )
    trainer.train()
    return recorded


def module_losses(student, teacher, taken, beta: float, lr: float) -> list[float]:
    from kd_lightning import DistillTerm, OfflineDistillation
    from kd_lightning.losses import GeneralizedJSDLoss

    recorded: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            recorded.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    module = OfflineDistillation(
        student,
        teacher,
        terms=[DistillTerm(GeneralizedJSDLoss(beta=beta, positions="labelled"))],
        ce_weight=0.0,
        allow_untrained_teacher=True,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(taken),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(taken, batch_size=None))
    return recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=200.0, help="SGD step (random networks: tiny JSD gradients)")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(1)
    student, teacher = networks()
    taken, tokenizer = batches(args.steps)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "kd_trl_side_by_side"
    theirs = trl_losses(copy.deepcopy(student), copy.deepcopy(teacher), taken, tokenizer, args.beta, args.lr, workdir)
    ours = module_losses(copy.deepcopy(student), copy.deepcopy(teacher), taken, args.beta, args.lr)
    print(f"tiny GPT-2 pair, {args.steps} batches of 8, beta {args.beta}, SGD lr {args.lr}, lmbda 0, fp32 CPU")
    print("| step | TRL GKDTrainer | OfflineDistillation | difference |\n|---|---|---|---|")
    for step, (a, b) in enumerate(zip(theirs, ours, strict=True)):
        print(f"| {step} | {a:.6f} | {b:.6f} | {abs(a - b):.2e} |")
    print(f"largest difference: {max(abs(a - b) for a, b in zip(theirs, ours, strict=True)):.2e}")


if __name__ == "__main__":
    main()
