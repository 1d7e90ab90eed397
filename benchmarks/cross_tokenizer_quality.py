"""Cross-tokenizer distillation on the tiny GPT-2 pair: a student with its own tokenizer, distilled by ULD, by span
alignment, or trained alone.

The teacher is ``checkpoints/text/gpt2_tiny_teacher.safetensors`` (4 layers, 256 wide, the 4,096-token BPE
``checkpoints/text/python_help_bpe``; ``configs/text/gpt2_tiny_teacher.yaml``). The student is the 2-layer, 128-wide
GPT-2 of ``configs/text/gpt2_tiny_uld.yaml`` with the 2,048-token BPE ``checkpoints/text/python_help_bpe_2k``. Every
row is a real ``Trainer.fit`` on the paragraphs of the Python help texts (one per sample, up to 128 tokens, each cut
to the characters both tokenizations cover; batch 16), AdamW lr 1e-3, cosine schedule, ``--epochs`` epochs, one torch
thread, for each seed of ``--seeds``:

* ``alone``: the student on its causal-LM loss only (the same data, its own tokens);
* ``ULD``: causal-LM loss + 1.5 x ULD (Boizard et al. 2024; the reference code's weights), the l-th tokens paired;
* ``span KL``: 0.5 x causal-LM loss + 0.5 x span-aligned KL on the shared vocabulary (TRL's GOLD alignment);
* ``span KL + ULD``: the same with GOLD's hybrid ULD term on the unshared entries (``uld_weight`` 1).

Measured on the validation split after the last epoch: the student's perplexity of its own tokens (``val ppl``,
comparable between these rows: one tokenizer) and its bits per character (the summed negative log-likelihood of the
labelled tokens over ``ln 2`` times the characters those tokens decode to: comparable with the teacher, whose own
bits per character on the same texts is printed too), and the wall-clock seconds per optimizer step.

    python benchmarks/cross_tokenizer_quality.py --seeds 0 1 2 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "checkpoints" / "text"
TEACHER = TEXT / "gpt2_tiny_teacher.safetensors"
COMMON = {"model_type": "gpt2", "task": "causal_lm", "max_positions": 128, "dropout": 0.1}
ROWS = {
    "alone": None,
    "ULD": ("uld", 1.0, 1.5),
    "span KL": ("span", 0.5, 0.5),
    "span KL + ULD": ("hybrid", 0.5, 0.5),
}


def datamodule(seed: int):
    from kd_lightning import TextDataModule

    return TextDataModule(
        tokenizer=str(TEXT / "python_help_bpe_2k"),
        teacher_tokenizer=str(TEXT / "python_help_bpe"),
        corpus="python_help",
        task="clm",
        max_length=128,
        batch_size=16,
        shuffle_seed=seed,
    )


def teacher_network():
    from kd_lightning.files.weights import load_weights
    from kd_lightning.models.text import model_from_config

    teacher = model_from_config(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, seed=0, **COMMON)
    return load_weights(teacher, TEACHER)


def build(row: str, seed: int, args: argparse.Namespace):
    from kd_lightning import Classifier, DistillTerm, OfflineDistillation
    from kd_lightning.losses import SpanAlignedKLLoss, ULDLoss
    from kd_lightning.models.text import model_from_config

    def optimizer(params):
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    student = model_from_config(vocab_size=2048, hidden_size=128, num_layers=2, num_heads=2, seed=seed + 1, **COMMON)
    if ROWS[row] is None:
        return Classifier(student, num_classes=2048, optimizer=optimizer, lr_scheduler=schedule)
    kind, ce_weight, weight = ROWS[row]
    loss = {
        "uld": lambda: ULDLoss(),
        "span": lambda: SpanAlignedKLLoss(),
        "hybrid": lambda: SpanAlignedKLLoss(uld_weight=1.0),
    }[kind]()
    teacher = model_from_config(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, seed=0, **COMMON)
    return OfflineDistillation(
        student,
        teacher,
        teacher_weights=str(TEACHER),
        terms=[DistillTerm(loss, weight=weight)],
        ce_weight=ce_weight,
        num_classes=2048,
        optimizer=optimizer,
        lr_scheduler=schedule,
    )


@torch.no_grad()
def bits_per_character(network, loader, tokenizer, prefix: str = "") -> float:
    """Summed NLL of the labelled tokens (the causal shift) / (ln 2 x the characters they decode to)."""
    network.eval()
    nats, characters = 0.0, 0
    for batch in loader:
        ids, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}labels"]
        mask = batch.get(f"{prefix}attention_mask")
        logits = network(input_ids=ids, attention_mask=mask).logits.float()
        targets = labels[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=-100)
        nats += float(nll.sum())
        for row in targets:
            characters += len(tokenizer.decode(row[row != -100].tolist(), skip_special_tokens=True))
    return nats / (math.log(2) * max(characters, 1))


def run(row: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    L.seed_everything(seed, verbose=False)
    model, data = build(row, seed, args), datamodule(seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=args.epochs,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    bpc = bits_per_character(model.student, data.val_dataloader(), data.tokenizer)
    return {
        "val_ppl": float(trainer.callback_metrics["val/ppl"]),
        "bpc": bpc,
        "s_per_step": seconds / max(trainer.global_step, 1),
    }


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(lines: list[dict], args: argparse.Namespace) -> None:
    data = datamodule(0)
    data.setup("fit")
    teacher_bpc = bits_per_character(teacher_network(), data.val_dataloader(), data.teacher_tokenizer, "teacher_")
    seeds = sorted({line["seed"] for line in lines})
    print(f"\ntiny GPT-2 pair across tokenizers, {args.epochs} epochs, seeds {seeds}, 1 torch thread, CPU (mean ± sd)")
    print(f"teacher (its own 4,096-token BPE): {teacher_bpc:.3f} bits per character on the same validation texts")
    print("| row | val ppl (student tokens) | bits per character | s/step |\n|---|---|---|---|")
    for row in ROWS:
        runs = [line for line in lines if line["row"] == row]
        if runs:
            print(
                f"| {row} | {_mean_sd([r['val_ppl'] for r in runs])} | {_mean_sd([r['bpc'] for r in runs])} | "
                f"{_mean_sd([r['s_per_step'] for r in runs])} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", help="append each run's result as a JSON line to this file")
    parser.add_argument("--summarize", nargs="+", help="print the table of these --out files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not TEACHER.is_file():
        raise SystemExit(f"{TEACHER} is missing: train it with configs/text/gpt2_tiny_teacher.yaml (see its header).")
    if args.summarize:
        lines = [json.loads(line) for name in args.summarize for line in Path(name).read_text().splitlines() if line]
        report(lines, args)
        return
    lines = []
    for seed in args.seeds:
        for row in args.rows:
            line = {"row": row, "seed": seed, **run(row, seed, args)}
            lines.append(line)
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as file:
                    file.write(json.dumps(line) + "\n")
    report(lines, args)


if __name__ == "__main__":
    main()
