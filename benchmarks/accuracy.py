"""Digits accuracy table: teacher, student alone and every distillation method, mean ± std over seeds.

Each row is a YAML under configs/digits/ run through the CLI exactly as a user would, with only the seed changed.
Per seed, the teacher is retrained with that seed (configs/digits/teacher.yaml exports it to
checkpoints/digits_teacher.safetensors inside a scratch directory, where the distillation configs read it), so the
shipped checkpoint is never touched. Test accuracy is measured on the best-validation checkpoint.

    python benchmarks/accuracy.py                      # every row, seeds 0 1 2
    python benchmarks/accuracy.py --rows KD --seeds 0  # a quick look at one method
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--report.verbose=false"]

# (row label, config file, family) in the order of the published CIFAR-100 tables.
ROWS: list[tuple[str, str, str]] = [
    ("teacher", "teacher.yaml", "reference"),
    ("student alone", "baseline.yaml", "reference"),
    ("KD", "offline_kd.yaml", "response"),
    ("DKD", "dkd.yaml", "response"),
    ("DIST", "dist.yaml", "response"),
    ("LS-KD", "lskd.yaml", "response"),
    ("FitNets", "fitnets.yaml", "feature"),
    ("AT", "at.yaml", "feature"),
    ("NST", "nst.yaml", "feature"),
    ("VID", "vid.yaml", "feature"),
    ("RKD", "rkd.yaml", "relation"),
    ("SP", "sp.yaml", "relation"),
    ("PKT", "pkt.yaml", "relation"),
    ("CC", "cc.yaml", "relation"),
    ("FSP", "fsp.yaml", "relation"),
    ("KD + AT + RKD", "kd_at_rkd.yaml", "combined"),
    ("online KD", "online_kd.yaml", "online"),
    ("DML (3 peers)", "online_dml.yaml", "online"),
    ("BYOT", "self_byot.yaml", "self"),
    ("EMA teacher", "self_ema.yaml", "self"),
    ("born-again", "self_born_again.yaml", "self"),
    ("PS-KD", "self_pskd.yaml", "self"),
]


def run_config(config: Path, seed: int, workdir: Path, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Fit one config with one seed inside ``workdir``; return the test metrics of its best checkpoint."""
    from kd_lightning.cli import build_cli

    previous = Path.cwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["--config", str(config), f"--seed_everything={seed}", *QUIET, *overrides], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        checkpoint = cli.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)
        return {key.removeprefix("test/"): float(value) for key, value in results.items()}
    finally:
        os.chdir(previous)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def markdown_table(results: dict[str, list[dict[str, float]]], seeds: list[int]) -> str:
    """Rows: test accuracy (%), the gain over the student alone, and agreement with the teacher."""
    baseline = [run["acc"] for run in results.get("student alone", [])]
    lines = [
        f"| method | test accuracy (%), {len(seeds)} seeds | vs student alone | agreement with teacher (%) |",
        "|---|---|---|---|",
    ]
    for label, runs in results.items():
        accuracies = [run["acc"] for run in runs]
        gain = ""
        if baseline and label not in ("teacher", "student alone"):
            gain = f"{100 * (statistics.mean(accuracies) - statistics.mean(baseline)):+.2f}"
        agreement = [run["agreement"] for run in runs if "agreement" in run]
        lines.append(f"| {label} | {mean_std(accuracies)} | {gain} | {mean_std(agreement) if agreement else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", help="row labels to run (teacher and student alone are always run)")
    parser.add_argument("--json", type=Path, help="also write every run's metrics to this file")
    args = parser.parse_args()

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    wanted = [row for row in ROWS if row[2] == "reference" or not args.rows or row[0] in args.rows]
    missing = [config for _, config, _ in wanted if not (CONFIGS / config).is_file()]
    wanted = [row for row in wanted if row[1] not in missing]
    if missing:
        print(f"skipping rows without a config: {', '.join(missing)}", file=sys.stderr)

    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in wanted}
    started = time.perf_counter()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"kd_bench_seed{seed}_") as scratch:
            workdir = Path(scratch)
            (workdir / "checkpoints").mkdir()
            for label, config, _ in wanted:
                run = run_config(CONFIGS / config, seed, workdir)
                results[label].append(run)
                print(f"seed {seed} {label:>16}: test acc {100 * run['acc']:.2f}%", file=sys.stderr, flush=True)
            shutil.rmtree(workdir / "runs", ignore_errors=True)
    print(f"\n{markdown_table(results, args.seeds)}\n")
    print(f"({time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
