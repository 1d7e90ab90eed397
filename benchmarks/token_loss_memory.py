"""Peak memory of a token-level KD loss's forward + backward: ``forward_kl_loss`` chunked beside unchunked, on CPU.

Each cell is one fresh process (this script with ``--child``) that builds bf16 student and teacher logits
``[B, L, V]`` (the student requiring grad, as the output of an LM head would), records its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) as the baseline, runs ``forward_kl_loss(...).backward()`` once and reports the
growth of the peak RSS: the memory the loss's forward and backward add on top of the logits, the logits' gradient
included (``B * L * V`` in the logits' dtype, which any loss needs). The logits are drawn directly in bf16 so no
float32 temporary raises the baseline. The parent process never imports torch, so the high-water mark a child
inherits over fork and exec stays far below the child's baseline.

Allocator: by default each child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc's own initial threshold, made
fixed): glibc otherwise raises its threshold after large frees and then serves chunk-sized tensors from the heap, where
freed memory stays resident, so the peak RSS would measure heap fragmentation rather than live tensors (chunked rows
came out up to 1.6x higher and in the wrong order between runs). ``--glibc-default`` keeps glibc's dynamic threshold.

Rows: ``chunk_size=None`` (one float32 chunk of every position, as an unchunked loss), then the chunk sizes asked
for; the loss values are printed to show every row computes the same number. One torch thread (``--threads``) in
every child, set before any work.

    python benchmarks/token_loss_memory.py                               # B*L = 2048 tokens, V = 32000 and 128000
    python benchmarks/token_loss_memory.py --vocab 32000 --chunk-sizes 256
    python benchmarks/token_loss_memory.py --dtype float32               # float32 logits instead of bf16
    python benchmarks/token_loss_memory.py --repeats 3                   # median of 3 processes per cell
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

MIB = 2**20


def child(args: argparse.Namespace) -> None:
    """One measurement: build the logits, take the baseline, run forward + backward, print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from kd_lightning.losses.token import forward_kl_loss

    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, args.length, args.child_vocab)
    student = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(True)
    teacher = torch.randn(shape, generator=generator, dtype=dtype)
    chunk_size = None if args.child_chunk == "none" else int(args.child_chunk)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    loss = forward_kl_loss(student, teacher, temperature=2.0, chunk_size=chunk_size)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mib": (peak - baseline) / 1024, "seconds": seconds, "loss": loss.item()}))


def measure(args: argparse.Namespace, vocab: int, chunk: str) -> dict:
    command = [sys.executable, __file__, "--child", "--child-vocab", str(vocab), "--child-chunk", chunk]
    command += ["--batch", str(args.batch), "--length", str(args.length), "--dtype", args.dtype]
    command += ["--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:60]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_result(results: list[dict]) -> dict:
    """The measurement with the median growth."""
    return sorted(results, key=lambda result: result["growth_mib"])[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences B (default 4)")
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence L (default 512: B*L = 2048)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128000], help="vocabulary sizes V")
    parser.add_argument(
        "--chunk-sizes", nargs="+", default=["4096", "512", "128"], help="chunk sizes to compare with none (unchunked)"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per cell; the median is shown (default 1)")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-chunk", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    tokens = args.batch * args.length
    bytes_per = 2 if args.dtype in ("bfloat16", "float16") else 4
    print(f"machine: {platform.platform()}; CPUs usable {len(os.sched_getaffinity(0))}; CPU only")
    print(f"torch threads per child: {args.threads} (torch.set_num_threads, OMP_NUM_THREADS={args.threads})")
    print(f"forward_kl_loss(T=2) forward + backward, {args.dtype} logits [B={args.batch}, L={args.length}, V], no mask")
    print("growth: peak RSS of the child after backward minus its peak RSS once the logits exist (a fresh process each")
    print(
        f"  measurement, median of {args.repeats}); allocator: "
        + ("glibc default" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=131072 (fixed)")
    )
    print()
    print(
        f"  {'V':>7} {'logits MiB':>10} {'chunk_size':>10} {'growth MiB':>11} {'x logits':>8} {'vs none':>8} "
        f"{'seconds':>8} {'loss':>12}"
    )
    for vocab in args.vocab:
        logits_mib = tokens * vocab * bytes_per / MIB
        unchunked = None
        for chunk in ["none", *args.chunk_sizes]:
            results = [measure(args, vocab, chunk) for _ in range(args.repeats)]
            result = next((r for r in results if "error" in r), None) or median_result(results)
            if "error" in result:
                print(f"  {vocab:>7} {logits_mib:>10.0f} {chunk:>10} {result['error']}")
                continue
            growth = result["growth_mib"]
            unchunked = growth if chunk == "none" else unchunked
            ratio = f"{growth / unchunked:8.2f}" if unchunked else f"{'-':>8}"
            print(
                f"  {vocab:>7} {logits_mib:>10.0f} {chunk:>10} {growth:>11.0f} {growth / logits_mib:>8.2f} {ratio} "
                f"{result['seconds']:>8.2f} {result['loss']:>12.6f}",
                flush=True,
            )
    print()
    print(f"  (logits MiB: one [B*L, V] {args.dtype} tensor; its gradient alone adds that much to any loss's growth)")


if __name__ == "__main__":
    main()
