"""Digits accuracy table: teacher, student alone and every distillation method, mean ± std over seeds.

Each row is a YAML under configs/digits/ run through the CLI exactly as a user would, with only the seed changed
(and, for a few rows, the student network swapped for another one). Rows are grouped by their student network; each
group starts with that same network trained alone with configs/digits/baseline.yaml (same data, optimizer and
60-epoch budget; a group whose student is fine-tuned with a budget of its own, QAT, takes that budget), the reference
every method of the group is judged against.

Per seed, the teacher is retrained with that seed inside a scratch directory: configs/digits/teacher.yaml exports it
into its run directory, and the benchmark copies it to the scratch directory's checkpoints/digits_teacher.safetensors,
where the distillation configs read it, so the shipped checkpoint is never touched. Test accuracy is measured on the
best-validation checkpoint.

    python benchmarks/accuracy.py                      # every row, seeds 0 1 2
    python benchmarks/accuracy.py --rows KD --seeds 0  # a quick look at one method (and its student alone)
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--report.verbose=false"]
CNN_8 = {"class_path": "kd_lightning.models.DigitsCNN", "init_args": {"num_classes": 10, "width": 8}}


@dataclass(frozen=True)
class Row:
    """One method: label, config under configs/digits/, family; optionally another student and CLI overrides.

    ``budget_from`` names the config whose budget (epochs, optimizer, schedule) the group's student-alone run takes
    instead of baseline.yaml's: a student fine-tuned from the teacher's weights with a short budget (QAT) is judged
    against the same copy fine-tuned alone with that budget.
    """

    label: str
    config: str
    family: str
    student: dict[str, Any] | None = None
    overrides: tuple[str, ...] = ()
    budget_from: str | None = None


STAGES = ("layer1", "layer2", "layer3")


def at_terms(weight: float) -> str:
    """``--model.init_args.terms`` for AT on every stage with another weight."""
    terms = [
        {
            "class_path": "kd_lightning.DistillTerm",
            "init_args": {"loss": {"class_path": "kd_lightning.losses.ATLoss"}, "weight": weight, "student": layer},
        }
        for layer in STAGES
    ]
    return f"--model.init_args.terms={json.dumps(terms)}"


# In the order of the published CIFAR-100 tables, then the online and self-distillation modes.
ROWS: list[Row] = [
    Row("KD", "offline_kd.yaml", "response"),
    Row("DKD", "dkd.yaml", "response"),
    Row("DIST", "dist.yaml", "response"),
    Row("LS-KD", "lskd.yaml", "response"),
    Row("KD", "offline_kd.yaml", "response", student=CNN_8),
    Row("FitNets", "fitnets.yaml", "feature"),
    Row("AT", "at.yaml", "feature"),
    # AT's mean over H*W positions scales it as 1/(H*W): 1000 on CIFAR's 32x32/16x16/8x8 maps is 62.5 on these
    # 8x8/4x4/2x2 maps (16x fewer positions at every stage).
    Row("AT, weight 62.5 (1000 rescaled to 16x smaller maps)", "at.yaml", "feature", overrides=(at_terms(62.5),)),
    Row("NST", "nst.yaml", "feature"),
    Row("VID", "vid.yaml", "feature"),
    Row("RKD", "rkd.yaml", "relation"),
    Row("SP", "sp.yaml", "relation"),
    Row("PKT", "pkt.yaml", "relation"),
    Row("CC", "cc.yaml", "relation"),
    Row("FSP", "fsp.yaml", "relation"),
    Row("CRD", "crd.yaml", "relation"),
    Row("KD + AT + FitNets + RKD", "kd_at_rkd.yaml", "combined"),
    Row("online KD (teacher trained alongside)", "online_kd.yaml", "online"),
    Row("DML (3 peers)", "online_dml.yaml", "online"),
    Row("EMA teacher", "self_ema.yaml", "self"),
    Row("born-again (snapshots)", "self_born_again.yaml", "self"),
    Row("PS-KD", "self_pskd.yaml", "self"),
    Row("BYOT (deepest exit)", "self_byot.yaml", "self"),
    # Students built from the teacher's own weights: the teacher without layer1 (the student alone is
    # shallow_baseline.yaml's run), and the teacher fake-quantized to int8 (the student alone is plain QAT with
    # qad.yaml's 10-epoch, lr 1e-4 budget, qat_baseline.yaml's run; accuracy of the fake-quantized network, the int8
    # one's is benchmarks/quantized_students.py's).
    Row("KD from the full teacher", "shallow_kd.yaml", "response"),
    Row("QAD: KD from the float teacher", "qad.yaml", "response", budget_from="qad.yaml"),
]
TEACHER = Row("teacher", "teacher.yaml", "reference")


def teacher_paths() -> tuple[Path, Path]:
    """Where teacher.yaml exports the teacher and where the distillation configs read it (relative paths)."""
    callbacks = yaml.safe_load((CONFIGS / TEACHER.config).read_text())["trainer"]["callbacks"]
    (exported,) = [cb["init_args"]["path"] for cb in callbacks if cb["class_path"].endswith(".ExportWeights")]
    installed = yaml.safe_load((CONFIGS / "offline_kd.yaml").read_text())["model"]["init_args"]["teacher_weights"]
    return Path(exported), Path(installed)


def install_teacher(workdir: Path) -> Path:
    """Copy the teacher a run just exported in ``workdir`` to where the distillation configs read it."""
    exported, installed = (workdir / path for path in teacher_paths())
    if not exported.is_file():
        raise RuntimeError(
            f"expected the teacher run to export {exported} but it did not (see its warnings): the distillation rows "
            "would have no teacher of this seed."
        )
    installed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, installed)
    return installed


def config_student(row: Row) -> dict[str, Any]:
    """The ``class_path``/``init_args`` of the network a row deploys: its student (or the peer named as student)."""
    if row.student is not None:
        return row.student
    init = yaml.safe_load((CONFIGS / row.config).read_text())["model"]["init_args"]
    if "network" in init:
        return init["network"]
    if "peers" in init:
        peers, name = init["peers"], init["student"]
        return peers[name] if isinstance(peers, dict) else peers[int(name.removeprefix("peer"))]
    return init["student"]


def student_name(spec: dict[str, Any]) -> str:
    """``{"class_path": "kd_lightning.models.TinyCNN", "init_args": {"width": 8, ...}}`` -> ``TinyCNN(width=8)``.

    A network given as an argument (a teacher to copy) is named the same way; weights files are left out (every run
    reads its seed's teacher).
    """
    args = {key: value for key, value in spec.get("init_args", {}).items() if key not in ("num_classes", "weights")}
    shown = [f"{k}={student_name(v) if isinstance(v, dict) and 'class_path' in v else v}" for k, v in args.items()]
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({', '.join(shown)})"


def run_config(config: Path, seed: int, workdir: Path, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Fit one config with one seed inside ``workdir``; return the test metrics of its best checkpoint.

    Also returns ``params`` (the deployed student's parameter count) and, for models with exits, ``params_exit_<layer>``
    (each truncated exit network's).
    """
    from kd_lightning.cli import build_cli
    from kd_lightning.core.networks import count_parameters

    previous = Path.cwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["--config", str(config), f"--seed_everything={seed}", *QUIET, *overrides], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        checkpoint = cli.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = {key.removeprefix("test/"): float(value) for key, value in results.items()}
        metrics["params"] = float(count_parameters(cli.model.student))
        if getattr(cli.model, "exits", None) is not None:
            for row in cli.model.exit_summary()[1:]:
                metrics[f"params_exit_{row['exit']}"] = float(row["parameters"])
        return metrics
    finally:
        os.chdir(previous)


def budget_arguments(config: str) -> tuple[str, ...]:
    """CLI arguments giving baseline.yaml the epochs, optimizer and schedule of ``config``."""
    settings = yaml.safe_load((CONFIGS / config).read_text())
    init = settings["model"]["init_args"]
    return (
        f"--trainer.max_epochs={settings['trainer']['max_epochs']}",
        f"--model.init_args.optimizer={json.dumps(init['optimizer'])}",
        f"--model.init_args.lr_scheduler={json.dumps(init['lr_scheduler'])}",
    )


def row_arguments(row: Row) -> tuple[str, ...]:
    """CLI arguments that put the row's student network in place (when it has its own) and its overrides; for a
    student-alone row, the budget of its group's config when it has its own."""
    budget = budget_arguments(row.budget_from) if row.budget_from and row.config == "baseline.yaml" else ()
    if row.student is None:
        return (*row.overrides, *budget)
    key = "network" if row.config == "baseline.yaml" else "student"
    return (f"--model.init_args.{key}={json.dumps(row.student)}", *row.overrides, *budget)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def markdown_table(groups: dict[str, list[tuple[Row, list[dict[str, float]]]]], seeds: list[int]) -> str:
    """One block per student network: the student alone, then each method's accuracy, gain and agreement."""
    lines = [
        f"| student (parameters) | method | kind | test accuracy (%), {len(seeds)} seeds | vs student alone "
        "| agreement with teacher (%) |",
        "|---|---|---|---|---|---|",
    ]
    for student, rows in groups.items():
        baseline = [run["acc"] for run in rows[0][1]] if rows[0][0].family == "reference" else []
        for index, (row, runs) in enumerate(rows):
            accuracies = [run["acc"] for run in runs]
            params = int(runs[0]["params"]) if runs else 0
            cell = f"{student} ({params:,})" if index == 0 else ""
            gain = ""
            if baseline and row.family != "reference" and accuracies:
                gain = f"{100 * (_mean(accuracies) - _mean(baseline)):+.2f}"
            agreement = [run["agreement"] for run in runs if "agreement" in run]
            lines.append(
                f"| {cell} | {row.label} | {row.family} | {mean_std(accuracies)} | {gain} "
                f"| {mean_std(agreement) if agreement else ''} |"
            )
            for key in sorted(runs[0]) if runs else []:
                if key.startswith("params_exit_"):
                    layer = key.removeprefix("params_exit_")
                    exit_acc = [run[f"acc_exit_{layer}"] for run in runs]
                    lines.append(
                        f"| | {row.label.split(' ')[0]} exit at `{layer}`, truncated ({int(runs[0][key]):,}) "
                        f"| {row.family} | {mean_std(exit_acc)} | | |"
                    )
    return "\n".join(lines)


def plan(labels: list[str] | None) -> dict[str, list[Row]]:
    """The rows to run, grouped by student network; each group starts with that network trained alone."""
    missing = sorted({row.config for row in ROWS if not (CONFIGS / row.config).is_file()})
    if missing:
        print(f"skipping rows without a config: {', '.join(missing)}", file=sys.stderr)
    groups: dict[str, list[Row]] = {}
    for row in ROWS:
        if row.config in missing or (labels and row.label not in labels and row.config not in labels):
            continue
        spec = config_student(row)
        name = student_name(spec)
        if name not in groups:
            groups[name] = [
                Row("student alone", "baseline.yaml", "reference", student=spec, budget_from=row.budget_from)
            ]
        if groups[name][0].budget_from != row.budget_from:
            raise ValueError(f"rows of {name} train their student alone with different budgets; give them one.")
        groups[name].append(row)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", help="row labels or config files to run (with their students alone)")
    parser.add_argument("--json", type=Path, help="also write every run's metrics to this file")
    args = parser.parse_args()

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    groups = plan(args.rows)
    teacher_name = student_name(config_student(TEACHER))
    results: dict[str, list[tuple[Row, list[dict[str, float]]]]] = {
        f"teacher {teacher_name}": [(TEACHER, [])],
        **{name: [(row, []) for row in rows] for name, rows in groups.items()},
    }
    started = time.perf_counter()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"kd_bench_seed{seed}_") as scratch:
            workdir = Path(scratch)
            (workdir / "checkpoints").mkdir()
            for name, rows in results.items():
                for row, runs in rows:
                    run = run_config(CONFIGS / row.config, seed, workdir, row_arguments(row))
                    runs.append(run)
                    if row is TEACHER:
                        install_teacher(workdir)
                    line = f"seed {seed} {name:>24} {row.label:>24}: {100 * run['acc']:.2f}%"
                    print(line, file=sys.stderr, flush=True)
                    shutil.rmtree(workdir / "runs", ignore_errors=True)
    print(f"\n{markdown_table(results, args.seeds)}\n")
    print(f"({time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores)")
    if args.json:
        serialisable = {name: [(row.label, row.config, runs) for row, runs in rows] for name, rows in results.items()}
        args.json.write_text(json.dumps(serialisable, indent=2))


if __name__ == "__main__":
    main()
