"""Token stores of the tiny GPT-2 teacher: bytes per token, labelling speed, step time and the students they train.

Runs the recipes ``configs/text/gpt2_tiny_{teacher,baseline,kd}.yaml`` through the CLI's ``build_cli`` in a work
folder (configs written there with the budget, seed and output paths edited; nothing else of the recipes changes) and
prints four tables, in one process with one torch thread (``torch.set_num_threads(1)``, interop 1):

1. bytes per token of the stores at k = 8, 32, 128 and dense (float16 values), measured as the bytes of the shard
   arrays written (``values.npy``, ``indices.npy``, ``logsumexp.npy``) over the stored tokens, and with the JSON files,
   beside :func:`~kd_lightning.teachers.token_store.bytes_per_token`;
2. labelling throughput (tokens/s of :func:`~kd_lightning.teachers.token_store.label_corpus`, the whole call) against
   plain teacher inference (eval, ``no_grad`` forward over the same batches of the same samples);
3. median ms per training step in ``Trainer.fit``: the student alone (``gpt2_tiny_baseline``), the student distilled
   from the k = 32 store and from the live teacher (``gpt2_tiny_kd``); interleaved rounds (every round runs every row
   once, in rotated order), steps timed between consecutive ``on_train_batch_end`` after warm-up steps; medians over
   rounds, ratios the median of the within-round ratios;
4. the student's validation perplexity (lowest over the epochs, as the recipes' ``ModelCheckpoint`` selects) trained
   alone, from the live teacher and from each store, same seeds and budget.

The teacher is trained first (``gpt2_tiny_teacher`` with ``--teacher_epochs``) unless ``--teacher`` names its weights.
Every cosine schedule's ``T_max`` is set to the run's epochs. Seed ``s`` sets ``seed_everything: s`` and the student's
initialisation seed ``1 + s`` (seed 0 is the recipes' own).

    python benchmarks/token_store.py --quick                # a smoke run (about 5 minutes on 2 CPU cores)
    python benchmarks/token_store.py --seeds 0 1 2          # teacher 6 epochs, students 4 (about 70 minutes)
    python benchmarks/token_store.py --teacher runs/text/gpt2_tiny_teacher/gpt2_tiny_teacher.safetensors
    python benchmarks/token_store.py --out token_store.json # also keep every number
    python benchmarks/token_store.py --teacher T --workdir DIR --sections ppl --seeds 1 2  # reuse DIR's stores
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.nn.utils.rnn import pad_sequence

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "text"
TOKENIZER = ROOT / "checkpoints" / "text" / "python_help_bpe"
TOP_KS: list[int | None] = [8, 32, 128, None]
SECTIONS = ["stores", "steps", "ppl"]
LABEL_BATCH = 16  # the recipes' training batch


def k_name(top_k: int | None) -> str:
    return "dense" if top_k is None else f"k={top_k}"


def slug(name: str) -> str:
    """``name`` as a file name: runs of other characters than letters and digits become ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


# ----------------------------------------------------------------- configs
def recipe(
    name: str, workdir: Path, run: str, epochs: int, seed: int = 0, limits: dict[str, int] | None = None
) -> dict[str, Any]:
    """The recipe ``gpt2_tiny_<name>.yaml`` with ``epochs``, ``seed`` and every output under ``workdir/run``."""
    config = yaml.safe_load((RECIPES / f"gpt2_tiny_{name}.yaml").read_text())
    out = str(workdir / run)
    trainer, init = config["trainer"], config["model"]["init_args"]
    config["seed_everything"] = seed
    trainer.update(max_epochs=epochs, default_root_dir=out, enable_progress_bar=False, enable_model_summary=False)
    trainer.update(limits or {})
    trainer["logger"]["init_args"]["save_dir"] = out
    for callback in trainer["callbacks"]:
        if "path" in callback["init_args"]:
            callback["init_args"]["path"] = f"{out}/gpt2_tiny_{name}.safetensors"
    init["lr_scheduler"]["init_args"]["T_max"] = epochs
    network = init.get("network") or init["student"]
    network["init_args"]["seed"] += seed
    config["data"]["init_args"]["tokenizer"] = str(TOKENIZER)
    return config


def with_teacher(config: dict[str, Any], teacher: Path | None, store: Path | None) -> dict[str, Any]:
    """A KD config reading the live teacher's weights ``teacher``, or the token store ``store`` instead."""
    config = copy.deepcopy(config)
    init = config["model"]["init_args"]
    if store is None:
        init["teacher_weights"] = str(teacher)
    else:
        init.pop("teacher_weights")
        init["teacher"] = {"class_path": "kd_lightning.TokenStoreTeacher", "init_args": {"path": str(store)}}
        config["data"]["init_args"]["return_index"] = True
    return config


def timing_config(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """``config`` for a timed fit: ``steps`` training steps, no validation, logger or checkpoints."""
    config = copy.deepcopy(config)
    trainer = config["trainer"]
    trainer.update(max_steps=steps, max_epochs=-1, limit_val_batches=0, logger=False, enable_checkpointing=False)
    trainer.pop("callbacks")
    return config


def build(config: dict[str, Any], path: Path):
    """The CLI (model, datamodule, Trainer) of ``config``, written to ``path``, not run."""
    from kd_lightning.cli import build_cli

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # this script's own argv
        return build_cli(["--config", str(path)], run=False)


def fit(config: dict[str, Any], path: Path, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """Fit ``config`` (written to ``path``) with ``callbacks`` added; return its Trainer."""
    cli = build(config, path)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer


# ----------------------------------------------------------------- 1-2: stores and labelling
def store_bytes(path: Path) -> tuple[int, int]:
    """Bytes of the shard arrays, and of every file of the store folder."""
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if f.suffix == ".npy"), sum(f.stat().st_size for f in files)


def inference_seconds(network: torch.nn.Module, dataset) -> float:
    """Seconds of an eval, ``no_grad`` teacher forward over the labelling batches of ``dataset``."""
    from kd_lightning.teachers.token_store import sample_item

    network.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(dataset), LABEL_BATCH):
            ids = [
                sample_item(dataset, i)["input_ids"].long()
                for i in range(first, min(first + LABEL_BATCH, len(dataset)))
            ]
            count = torch.tensor([len(t) for t in ids])
            input_ids = pad_sequence(ids, batch_first=True, padding_value=0)
            mask = (torch.arange(input_ids.shape[1])[None, :] < count[:, None]).long()
            network(input_ids=input_ids, attention_mask=mask)
    return time.perf_counter() - start


def label_stores(kd_config: dict[str, Any], workdir: Path) -> tuple[dict[str, Path], list[dict], dict]:
    """Label a store per k with the live teacher; return their folders, the size rows and the speed numbers."""
    from kd_lightning.teachers.token_store import bytes_per_token, label_corpus, network_of, training_split

    cli = build(kd_config, workdir / "configs" / "label.yaml")
    network = network_of(cli.model.teacher)
    dataset = training_split(cli.datamodule)
    tokens = sum(len(dataset[i]["input_ids"]) for i in range(len(dataset)))
    inference_seconds(network, torch.utils.data.Subset(dataset, range(LABEL_BATCH)))  # warm-up
    stores, sizes, label_s, plain_s = {}, [], {}, [inference_seconds(network, dataset)]
    for top_k in TOP_KS:
        path = workdir / "stores" / k_name(top_k).replace("=", "")
        start = time.perf_counter()
        store = label_corpus(network, cli.datamodule, path, top_k=top_k, batch_size=LABEL_BATCH)
        label_s[k_name(top_k)] = time.perf_counter() - start
        plain_s.append(inference_seconds(network, dataset))
        arrays, total = store_bytes(path)
        formula = bytes_per_token(store.vocab_size, top_k, store.key["dtype"])
        sizes.append(
            {
                "store": k_name(top_k),
                "tokens": store.tokens,
                "formula": formula,
                "arrays": arrays / store.tokens,
                "files": total / store.tokens,
                "mib": total / 2**20,
            }
        )
        stores[k_name(top_k)] = path
    inference = statistics.median(plain_s)
    speed = {
        "samples": len(dataset),
        "tokens": tokens,
        "inference_s": plain_s,
        "inference_tokens_per_s": tokens / inference,
        "label_s": label_s,
        "label_tokens_per_s": {k: tokens / s for k, s in label_s.items()},
        "ratio": {k: inference / s for k, s in label_s.items()},
    }
    return stores, sizes, speed


# ----------------------------------------------------------------- 3: step time
class StepTimer(L.Callback):
    """Times consecutive training steps (``on_train_batch_end`` to ``on_train_batch_end``) after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.ends, self.steps = warmup, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) > self.warmup + 1:
            self.steps.append(self.ends[-1] - self.ends[-2])


def step_times(rows: dict[str, dict], workdir: Path, rounds: int, warmup: int, steps: int) -> dict[str, Any]:
    """Median ms/step per row over interleaved rounds, and each row's within-round ratio to the first row."""
    names = list(rows)
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        medians = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            timer = StepTimer(warmup)
            fit(timing_config(rows[name], warmup + steps + 1), workdir / "configs" / f"time_{slug(name)}.yaml", [timer])
            medians[name] = 1000 * statistics.median(timer.steps)
        per_round.append(medians)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in medians.items()), flush=True)
    base = names[0]
    return {
        "ms": {n: statistics.median(m[n] for m in per_round) for n in names},
        "ratio": {n: statistics.median(m[n] / m[base] for m in per_round) for n in names},
        "rounds": per_round,
    }


# ----------------------------------------------------------------- 4: perplexity
def best_ppl(trainer: L.Trainer) -> float:
    score = trainer.checkpoint_callback.best_model_score
    return float(score) if score is not None else float(trainer.callback_metrics["val/ppl"])


def perplexities(
    workdir: Path, teacher: Path, stores: dict[str, Path], epochs: int, seeds: list[int], limits: dict[str, int]
) -> dict[str, list[float]]:
    """Validation perplexity of the student per row and seed, same budget."""
    results: dict[str, list[float]] = {}
    for seed in seeds:
        baseline = recipe("baseline", workdir, f"ppl/s{seed}/alone", epochs, seed, limits)
        rows = {"student alone": baseline}
        kd = {
            "live teacher": with_teacher(
                recipe("kd", workdir, f"ppl/s{seed}/live", epochs, seed, limits), teacher, None
            )
        }
        rows.update(kd)
        for name, path in stores.items():
            config = recipe("kd", workdir, f"ppl/s{seed}/{path.name}", epochs, seed, limits)
            rows[f"store {name}"] = with_teacher(config, None, path)
        for name, config in rows.items():
            start = time.perf_counter()
            trainer = fit(config, workdir / "configs" / f"ppl_s{seed}_{slug(name)}.yaml")
            results.setdefault(name, []).append(best_ppl(trainer))
            print(f"  seed {seed}, {name}: val/ppl {results[name][-1]:.2f} ({time.perf_counter() - start:.0f} s)")
    return results


# ----------------------------------------------------------------- tables
def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def print_sizes(numbers: dict[str, Any]) -> None:
    speed = numbers["labelling"]
    print(f"\n1. bytes per token ({speed['tokens']:,} training tokens, {speed['samples']} blocks, float16 values)")
    print("| store | formula (bytes_per_token) | shard arrays | all files | store size |")
    print("|---|---|---|---|---|")
    for row in numbers["sizes"]:
        print(
            f"| {row['store']} | {row['formula']} | {row['arrays']:.2f} | {row['files']:.2f} | {row['mib']:.1f} MiB |"
        )
    print("\n2. labelling throughput against plain teacher inference (same batches of 16 blocks)")
    print("| run | seconds | tokens/s | ratio to inference |")
    print("|---|---|---|---|")
    inference_s = statistics.median(speed["inference_s"])
    print(f"| teacher inference (eval, no_grad) | {inference_s:.1f} | {speed['inference_tokens_per_s']:,.0f} | 1.00 |")
    for name, seconds in speed["label_s"].items():
        rate, ratio = speed["label_tokens_per_s"][name], speed["ratio"][name]
        print(f"| label_corpus {name} | {seconds:.1f} | {rate:,.0f} | {ratio:.2f} |")


def print_steps(numbers: dict[str, Any]) -> None:
    steps = numbers["steps"]
    print(f"\n3. training step in Trainer.fit, median of {len(steps['rounds'])} interleaved rounds")
    print("| step | ms/step | ratio to the student alone |")
    print("|---|---|---|")
    for name, ms in steps["ms"].items():
        print(f"| {name} | {ms:.1f} | {steps['ratio'][name]:.3f} |")
    ratio = steps["ratio"]["KD from store k=32"]
    print(f"store step / student-only step: {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'})")


def print_perplexity(numbers: dict[str, Any]) -> None:
    print(f"\n4. student validation perplexity (lowest over {numbers['epochs']} epochs), seeds {numbers['seeds']}")
    print("| student trained | val/ppl |")
    print("|---|---|")
    for name, values in numbers["perplexity"].items():
        print(f"| {name} | {mean_std(values)} |")


# ----------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 training batches an epoch, 1 epoch")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 4; --quick: 1)")
    parser.add_argument("--teacher_epochs", type=int, default=None, help="teacher epochs (default 6; --quick: 1)")
    parser.add_argument("--teacher", type=Path, default=None, help="the teacher's safetensors (default: train one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the perplexity runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per fit (default 15; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per timed fit")
    parser.add_argument("--workdir", type=Path, default=None, help="where runs and stores go (default: a temp folder)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=SECTIONS,
        help="what to run; without 'stores' the stores already in --workdir are used (tables 1-2 are not printed)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    epochs = args.epochs or (1 if args.quick else 4)
    teacher_epochs = args.teacher_epochs or (1 if args.quick else 6)
    rounds, steps = args.rounds or (2 if args.quick else 5), args.steps or (3 if args.quick else 15)
    limits = {"limit_train_batches": 4, "limit_val_batches": 2} if args.quick else {}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="token_store_"))
    workdir = workdir.resolve()
    started = time.perf_counter()
    print(f"work folder {workdir}; torch threads {torch.get_num_threads()}; seeds {args.seeds}; epochs {epochs}")

    teacher = args.teacher.resolve() if args.teacher else None
    teacher_s = 0.0
    if teacher is None:
        start = time.perf_counter()
        config = recipe("teacher", workdir, "teacher", teacher_epochs, 0, limits)
        fit(config, workdir / "configs" / "teacher.yaml")
        teacher, teacher_s = workdir / "teacher" / "gpt2_tiny_teacher.safetensors", time.perf_counter() - start
        print(f"teacher trained for {teacher_epochs} epochs in {teacher_s:.0f} s: {teacher}")

    numbers: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads()}
    numbers.update(teacher=str(teacher), teacher_epochs=None if args.teacher else teacher_epochs, teacher_s=teacher_s)
    numbers.update(epochs=epochs, seeds=args.seeds, quick=args.quick, sections=args.sections)
    if "stores" in args.sections:
        kd = with_teacher(recipe("kd", workdir, "label", epochs), teacher, None)
        stores, numbers["sizes"], numbers["labelling"] = label_stores(kd, workdir)
        print("stores labelled", flush=True)
    else:
        stores = {k_name(k): workdir / "stores" / k_name(k).replace("=", "") for k in TOP_KS}
    rows = {
        "student alone": recipe("baseline", workdir, "time", epochs),
        "KD from store k=32": with_teacher(recipe("kd", workdir, "time", epochs), None, stores["k=32"]),
        "KD, live teacher": with_teacher(recipe("kd", workdir, "time", epochs), teacher, None),
    }
    if "steps" in args.sections:
        numbers["steps"] = step_times(rows, workdir, rounds, args.warmup, steps)
    if "ppl" in args.sections:
        numbers["perplexity"] = perplexities(workdir, teacher, stores, epochs, args.seeds, limits)
    numbers["seconds"] = time.perf_counter() - started
    for key, show in (("sizes", print_sizes), ("steps", print_steps), ("perplexity", print_perplexity)):
        if key in numbers:
            show(numbers)
    print(f"\ntotal {numbers['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(numbers, indent=1))
    return numbers


if __name__ == "__main__":
    main()
