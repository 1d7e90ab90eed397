"""The wall-clock cost of an on-policy (GKD) and a sequence-level KD step against an off-policy step.

The tiny GPT-2 pair of ``configs/text/gpt2_tiny_on_policy.yaml`` (student 2 layers x 128, teacher 4 layers x 256,
positions 128) on its prompt/completion samples of the Python help texts (32-token prompts, batch 16), each row a real
``Trainer.fit`` of ``OfflineDistillation`` with the generalized JSD (beta 0.5) on the labelled tokens:

* off-policy: ``lmbda = 0`` (the dataset's completions);
* GKD: ``lmbda = 1``, the student samples up to ``--max-new-tokens`` tokens per prompt (KV cache), the teacher scores;
* sequence-level KD: ``lmbda = 1``, the teacher samples.

Time per step is the interval between the ends of consecutive training steps (median over the steps after
``--warmup``), one torch thread. The teacher is randomly initialised unless ``--teacher-weights`` is given (the cost
of a step does not depend on what the teacher learned, except through where sampling stops: a random teacher rarely
emits the end-of-sequence token, so its continuations run to ``max_new_tokens``).

    python benchmarks/on_policy.py                       # about 2 minutes on 2 CPU cores
    python benchmarks/on_policy.py --max-new-tokens 32 --steps 12
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


class StepClock(L.Callback):
    """Seconds between the ends of consecutive training steps."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())


def run(row: str, args: argparse.Namespace) -> float:
    """Median seconds per step of one row."""
    from kd_lightning import DistillTerm, OfflineDistillation, OnPolicy, TextDataModule
    from kd_lightning.losses import GeneralizedJSDLoss
    from kd_lightning.models.text import model_from_config

    sizes = {"model_type": "gpt2", "task": "causal_lm", "vocab_size": 4096, "max_positions": 128, "dropout": 0.1}
    student = model_from_config(hidden_size=128, num_layers=2, num_heads=2, seed=1, **sizes)
    teacher = model_from_config(hidden_size=256, num_layers=4, num_heads=4, seed=0, **sizes)
    sampling = {
        "off-policy": None,
        "GKD (student samples)": OnPolicy(lmbda=1.0, max_new_tokens=args.max_new_tokens, seed=0),
        "sequence-level KD (teacher samples)": OnPolicy(
            lmbda=1.0, samples_from="teacher", max_new_tokens=args.max_new_tokens, seed=0
        ),
    }[row]
    model = OfflineDistillation(
        student,
        teacher,
        teacher_weights=args.teacher_weights,
        terms=[DistillTerm(GeneralizedJSDLoss(beta=0.5, positions="labelled"), weight=0.5)],
        ce_weight=0.5,
        allow_untrained_teacher=args.teacher_weights is None,
        on_policy=sampling,
    )
    data = TextDataModule(
        tokenizer=str(ROOT / "checkpoints" / "text" / "python_help_bpe"),
        corpus="python_help",
        task="clm",
        max_length=128,
        prompt_length=32,
        batch_size=16,
    )
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    L.seed_everything(0, verbose=False)
    trainer.fit(model, datamodule=data)
    steps = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)][args.warmup :]
    return statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="step intervals left out of the median")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens sampled per prompt at most")
    parser.add_argument("--teacher-weights", help="trained teacher weights (configs/text/gpt2_tiny_teacher.yaml)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ["off-policy", "GKD (student samples)", "sequence-level KD (teacher samples)"]
    seconds = {row: run(row, args) for row in rows}
    base = seconds["off-policy"]
    print(f"tiny GPT-2 pair, batch 16, 32-token prompts, max_new_tokens {args.max_new_tokens}, 1 torch thread, CPU")
    print("| row | ms per step (median) | / off-policy |\n|---|---|---|")
    for row, value in seconds.items():
        print(f"| {row} | {1000 * value:.0f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
