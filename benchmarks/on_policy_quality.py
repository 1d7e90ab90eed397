"""What on-policy distillation buys on the tiny GPT-2 pair: off-policy KL vs GKD vs sequence-level KD vs alone.

GKD's protocol (Agarwal et al. ICLR 2024): every row starts from the same supervised student and distils from there.
Per seed of ``--seeds``, the 2-layer, 128-wide student of ``configs/text/gpt2_tiny_on_policy.yaml`` is first trained
alone for ``--sft-epochs`` epochs (causal-LM loss on the completions; the "SFT start" row); then each row continues
from that student for ``--epochs`` epochs (AdamW lr 5e-4, cosine schedule), a real ``Trainer.fit`` on the
prompt/completion samples of the Python help texts (32-token prompts, completions up to 128 tokens, batch 16), from the
trained teacher ``checkpoints/text/gpt2_tiny_teacher.safetensors`` (``configs/text/gpt2_tiny_teacher.yaml``, its
best-validation checkpoint), one torch thread:

* ``alone``: the student continues on the labels only (the same extra budget without a teacher);
* ``off-policy KL``: ``0.5 * CE + 0.5 * forward KL`` per completion token (``lmbda = 0``);
* ``GKD λ, β``: ``0.5 * CE + 0.5 * generalized JSD(β)`` with a share ``λ`` of the batches replaced by the student's
  own continuations of their prompts (temperature 0.9, up to ``--max-new-tokens`` tokens; no CE on those);
* ``seq-KD``: every batch replaced by the teacher's continuations (``samples_from: teacher``), CE and forward KL on
  them.

Measured on the validation split after the last epoch:

* ``val ppl``: the student's perplexity of the dataset's completions;
* ``teacher NLL``: the teacher's negative log-likelihood per token of the student's own samples (GKD's measure of
  what a student generates; lower is what the teacher finds more likely): the student continues each validation
  prompt (temperature 1, up to ``--max-new-tokens`` tokens, a seed fixed per batch), the teacher scores every token it
  generated;
* ``s/step``: the fit's wall-clock seconds per optimizer step, generation included, and its ratio to the off-policy
  row of the same seed.

    python benchmarks/on_policy_quality.py --seeds 0 1 2        # about 20 minutes per seed on one CPU core
    python benchmarks/on_policy_quality.py --rows alone "off-policy KL" --seeds 0 --sft-epochs 1 --epochs 1
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
TOKENIZER = ROOT / "checkpoints" / "text" / "python_help_bpe"
TEACHER = ROOT / "checkpoints" / "text" / "gpt2_tiny_teacher.safetensors"
SIZES = {"model_type": "gpt2", "task": "causal_lm", "vocab_size": 4096, "max_positions": 128, "dropout": 0.1}
ROWS = {
    "alone": None,
    "off-policy KL": {"beta": 0.0, "lmbda": 0.0},
    **{
        f"GKD λ={lmbda:g} β={beta:g}": {"beta": beta, "lmbda": lmbda}
        for lmbda in (0.5, 1.0)
        for beta in (0.0, 0.5, 1.0)
    },
    "seq-KD": {"beta": 0.0, "lmbda": 1.0, "samples_from": "teacher"},
}


def datamodule(seed: int):
    from kd_lightning import TextDataModule

    return TextDataModule(
        tokenizer=str(TOKENIZER),
        corpus="python_help",
        task="clm",
        max_length=128,
        prompt_length=32,
        batch_size=16,
        shuffle_seed=seed,
    )


def build(row: str, seed: int, args: argparse.Namespace, start: dict | None, epochs: int, lr: float):
    from kd_lightning import Classifier, DistillTerm, OfflineDistillation, OnPolicy
    from kd_lightning.losses import GeneralizedJSDLoss
    from kd_lightning.models.text import model_from_config

    def optimizer(params):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    student = model_from_config(hidden_size=128, num_layers=2, num_heads=2, seed=seed + 1, **SIZES)
    if start is not None:
        student.load_state_dict(start)
    settings = ROWS[row]
    if settings is None:
        return Classifier(student, num_classes=4096, optimizer=optimizer, lr_scheduler=schedule)
    teacher = model_from_config(hidden_size=256, num_layers=4, num_heads=4, seed=0, **SIZES)
    sampling = None
    if settings["lmbda"] > 0:
        sampling = OnPolicy(
            lmbda=settings["lmbda"],
            samples_from=settings.get("samples_from", "student"),
            temperature=0.9,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
        )
    loss = GeneralizedJSDLoss(beta=settings["beta"], positions="labelled")
    return OfflineDistillation(
        student,
        teacher,
        teacher_weights=str(TEACHER),
        terms=[DistillTerm(loss, weight=0.5)],
        ce_weight=0.5,
        num_classes=4096,
        optimizer=optimizer,
        lr_scheduler=schedule,
        on_policy=sampling,
    )


@torch.no_grad()
def teacher_nll(student, teacher, data, args: argparse.Namespace) -> float:
    """The teacher's NLL per token of the student's samples of the validation prompts (see the module docstring)."""
    from kd_lightning.core.batch import Batch
    from kd_lightning.modules.on_policy import left_padded_prompts

    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    eos = data.tokenizer.eos_token_id
    for number, raw in enumerate(data.val_dataloader()):
        if number >= args.eval_batches:
            break
        prompts, mask, _ = left_padded_prompts(Batch.parse(raw))
        torch.manual_seed(10_000 + number)
        out = student.generate(
            input_ids=prompts,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=data.pad_token_id,
            eos_token_id=eos,
        )
        generated = out[:, prompts.shape[1] :]
        # a generated token counts up to and including the first end-of-sequence token
        ended = (generated == eos).long().cumsum(1)
        counted = (ended == 0) | ((ended == 1) & (generated == eos))
        full_mask = torch.cat([mask, counted.long()], dim=1)
        positions = (full_mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions count from each first token
        logits = teacher(input_ids=out, attention_mask=full_mask, position_ids=positions).logits.float()
        predict = logits[:, prompts.shape[1] - 1 : -1]
        nll = F.cross_entropy(predict.reshape(-1, predict.shape[-1]), generated.reshape(-1), reduction="none")
        total += float((nll.view_as(generated) * counted).sum())
        count += int(counted.sum())
    return total / max(count, 1)


def fit(row: str, seed: int, args: argparse.Namespace, start: dict | None, epochs: int, lr: float):
    """One ``Trainer.fit``; the module and its seconds per optimizer step."""
    L.seed_everything(seed, verbose=False)
    model, data = build(row, seed, args, start, epochs, lr), datamodule(seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
    )
    begin = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - begin
    return model, data, float(trainer.callback_metrics["val/ppl"]), seconds / max(trainer.global_step, 1)


def measured(model, data, ppl: float, seconds: float, args: argparse.Namespace) -> dict[str, float]:
    from kd_lightning.files.weights import load_weights
    from kd_lightning.models.text import model_from_config

    teacher = model_from_config(hidden_size=256, num_layers=4, num_heads=4, seed=0, **SIZES)
    load_weights(teacher, TEACHER)
    nll = teacher_nll(model.student, teacher, data, args)
    return {"val_ppl": ppl, "teacher_nll": nll, "s_per_step": seconds}


def supervised_start(seed: int, args: argparse.Namespace) -> tuple[dict, dict[str, float]]:
    """The student trained alone for ``--sft-epochs`` epochs (every row starts from it), and its measures."""
    model, data, ppl, seconds = fit("alone", seed, args, None, args.sft_epochs, 1e-3)
    state = {name: value.detach().clone() for name, value in model.student.state_dict().items()}
    return state, measured(model, data, ppl, seconds, args)


def run(row: str, seed: int, args: argparse.Namespace, start: dict) -> dict[str, float]:
    model, data, ppl, seconds = fit(row, seed, args, start, args.epochs, 5e-4)
    return measured(model, data, ppl, seconds, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sft-epochs", type=int, default=4, help="epochs of the supervised start, alone")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each row from the supervised start")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=8, help="validation batches sampled for the teacher NLL")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", help="append each run's result as a JSON line to this file")
    parser.add_argument("--summarize", nargs="+", help="print the table of these --out files (runs of any processes)")
    args = parser.parse_args()
    if args.summarize:
        summarize(args)
        return
    torch.set_num_threads(1)
    if not TEACHER.is_file():
        raise SystemExit(f"{TEACHER} is missing: train it with configs/text/gpt2_tiny_teacher.yaml (see its header).")
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        start, result = supervised_start(seed, args)
        results.setdefault("SFT start", []).append(result)
        print(json.dumps({"row": "SFT start", "seed": seed, **result}), flush=True)
        if args.out:
            with open(args.out, "a") as file:
                file.write(json.dumps({"row": "SFT start", "seed": seed, **result}) + "\n")
        for row in args.rows:
            result = run(row, seed, args, start)
            results.setdefault(row, []).append(result)
            line = {"row": row, "seed": seed, **result}
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as file:
                    file.write(json.dumps(line) + "\n")
    report(results, args)


def summarize(args: argparse.Namespace) -> None:
    """The table of runs written by ``--out`` (e.g. by several processes, each over some seeds)."""
    lines = [json.loads(line) for name in args.summarize for line in Path(name).read_text().splitlines() if line]
    lines.sort(key=lambda line: line["seed"])
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ["SFT start", *ROWS]}
    for line in lines:
        results[line["row"]].append(line)
    args.seeds = sorted({line["seed"] for line in lines})
    report({row: runs for row, runs in results.items() if runs}, args)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    base = results.get("off-policy KL")
    print(
        f"\ntiny GPT-2 pair, {args.sft_epochs} epochs alone then {args.epochs} per row, seeds {args.seeds}, "
        f"max_new_tokens {args.max_new_tokens}, 1 torch thread, CPU (mean ± sd over seeds)"
    )
    print("| row | val ppl | teacher NLL of own samples | s/step | / off-policy step |\n|---|---|---|---|---|")
    for row, runs in results.items():
        ratio = "-"
        if base is not None and len(base) == len(runs):
            ratio = _mean_sd([r["s_per_step"] / b["s_per_step"] for r, b in zip(runs, base, strict=True)])
        print(
            f"| {row} | {_mean_sd([r['val_ppl'] for r in runs])} | {_mean_sd([r['teacher_nll'] for r in runs])} | "
            f"{_mean_sd([r['s_per_step'] for r in runs])} | {ratio} |"
        )
    if any(math.isnan(r["val_ppl"]) for runs in results.values() for r in runs):
        print("a run ended with a NaN perplexity")


if __name__ == "__main__":
    main()
