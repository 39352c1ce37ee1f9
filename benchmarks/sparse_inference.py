"""Sparse inference: a pruned LeNet-300-100 as CSR sparse matmuls vs the best dense fp32 runtime.

LeNet-300-100 is pruned by per-layer magnitude to Deep Compression's kept fractions (Han et al.,
arXiv:1510.00149, Table 2: fc1 8 %, fc2 9 %, fc3 26 %) and run at batch sizes 1, 8, 64, 256 as

- dense eager PyTorch (the pruned weights stored dense),
- dense TorchScript (traced, frozen, ``optimize_for_inference``),
- dense ``torch.compile`` (inductor, one static graph per batch size; skipped with ``--quick``),
- CSR: :func:`effdl_lightning.export.to_sparse_inference` (every fc layer a ``SparseLinear``; eager).

All variants of a batch size are timed round-robin (interleaved, the order rotating each round), each
sample the mean of ``inner`` back-to-back calls under ``torch.inference_mode()``, after warm-up; reported:
median and quartiles per call, and CSR's speedup against the fastest dense runtime (ratio of medians).
Threads are fixed (``--threads``, default 1: the machine is shared, two threads measure the neighbours).

Run: ``python -m benchmarks --only sparse_inference`` (or ``python benchmarks/sparse_inference.py``);
``--quick`` is a seconds-long smoke run that writes ``sparse_inference_quick.*`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effdl_lightning.export import SparseLinear, to_sparse_inference
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.models import create

RESULTS = Path(__file__).resolve().parent / "results"
KEPT = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}  # Table 2 of arXiv:1510.00149
BATCH_SIZES = (1, 8, 64, 256)
CSR = "CSR (SparseLinear)"


def pruned_lenet300(seed: int = 0) -> nn.Module:
    """LeNet-300-100 with each fc layer magnitude-pruned to the paper's kept fraction."""
    torch.manual_seed(seed)
    model = create("lenet300").eval()
    with torch.no_grad():
        for name, kept in KEPT.items():
            weight = model.get_submodule(name).weight
            k = round(kept * weight.numel())
            threshold = weight.abs().flatten().kthvalue(weight.numel() - k).values
            weight.mul_(weight.abs() > threshold)
    return model


def build_variants(
    model: nn.Module, batch: int, use_compile: bool
) -> dict[str, Callable[[torch.Tensor], Any]]:
    """The runtimes compared at one batch size (the dense ones first)."""
    example = torch.randn(batch, 1, 28, 28)
    variants: dict[str, Callable[[torch.Tensor], Any]] = {"dense eager": model}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    variants["dense TorchScript"] = scripted
    if use_compile:
        compiled = torch.compile(model, dynamic=False)
        variants["dense torch.compile"] = compiled
    variants[CSR] = to_sparse_inference(model, min_sparsity=0.5)
    return variants


def time_round_robin(
    variants: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, warmup: int, rounds: int, inner: int
) -> dict[str, list[float]]:
    """Per-call milliseconds of each variant, interleaved: ``rounds`` samples of ``inner`` calls each."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                variants[name](x)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = variants[name]
                start = time.perf_counter()
                for _ in range(inner):
                    fn(x)
                samples[name].append((time.perf_counter() - start) * 1e3 / inner)
    return samples


def run(batch_sizes: tuple[int, ...], threads: int, rounds: int, use_compile: bool) -> dict[str, Any]:
    model = pruned_lenet300()
    sparse = to_sparse_inference(model, min_sparsity=0.5)
    layers = {
        name: {"kept": round(m.density, 4), "nnz": m.nnz, "shape": [m.out_features, m.in_features]}
        for name, m in sparse.named_modules()
        if isinstance(m, SparseLinear)
    }
    rows = []
    with num_threads(threads):
        for batch in batch_sizes:
            variants = build_variants(model, batch, use_compile)
            x = torch.randn(batch, 1, 28, 28)
            with torch.inference_mode():
                reference = model(x)
                for name, fn in variants.items():
                    torch.testing.assert_close(fn(x), reference, atol=1e-4, rtol=1e-4, msg=name)
            inner = max(1, 256 // batch)
            samples = time_round_robin(variants, x, warmup=max(3, rounds // 5), rounds=rounds, inner=inner)
            stats = {}
            for name, times in samples.items():
                q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
                stats[name] = {"median_ms": median, "p25_ms": q1, "p75_ms": q3}
            dense = {k: v["median_ms"] for k, v in stats.items() if k.startswith("dense")}
            best = min(dense, key=lambda k: dense[k])
            csr = stats[CSR]["median_ms"]
            # paired: the best dense runtime's and CSR's samples of the same round (robust to drift)
            paired = [d / c for d, c in zip(samples[best], samples[CSR], strict=True)]
            p25, p50, p75 = statistics.quantiles(paired, n=4, method="inclusive")
            verdict = "faster" if p25 > 1 else "slower" if p75 < 1 else "within noise"
            rows.append(
                {
                    "batch": batch,
                    "inner_calls": inner,
                    "runtimes": stats,
                    "best_dense": best,
                    "speedup_vs_best_dense": dense[best] / csr,
                    "paired_speedup": {"median": p50, "p25": p25, "p75": p75},
                    "verdict": verdict,
                    "speedup_vs_dense_eager": dense["dense eager"] / csr,
                }
            )
            print(
                f"batch {batch}: " + ", ".join(f"{k} {v['median_ms']:.3f} ms" for k, v in stats.items()),
                flush=True,
            )
    return {
        "layers": layers,
        "rows": rows,
        "faster_at": [r["batch"] for r in rows if r["verdict"] == "faster"],
    }


def to_markdown(result: dict[str, Any]) -> str:
    names = list(result["rows"][0]["runtimes"])
    lines = [
        "# Sparse inference: LeNet-300-100 pruned to 8 % / 9 % / 26 % (arXiv:1510.00149 Table 2), CSR vs dense",
        "",
        f"{result['machine']}; torch {result['torch']}; **{result['threads']} thread(s)**; "
        f"{result['rounds']} interleaved rounds per batch size; 1-min load average "
        f"{result['load_average']['before']:.1f} → {result['load_average']['after']:.1f} on "
        f"{result['load_average']['cpus']} CPUs (a shared machine: mind the spread); "
        "per-call latency, median (p25–p75), ms. "
        "Speedup = fastest dense fp32 runtime's median / CSR median; paired = median (p25–p75) over rounds of "
        "that runtime's time / CSR's time in the same round; CSR counts as faster only when the paired p25 > 1 "
        "(slower when p75 < 1, else within noise).",
        "",
        "| batch | "
        + " | ".join(names)
        + " | best dense | CSR speedup vs best dense | paired | verdict | vs dense eager |",
        "|---|" + "---|" * (len(names) + 5),
    ]
    for row in result["rows"]:
        cells = [
            f"{s['median_ms']:.3f} ({s['p25_ms']:.3f}–{s['p75_ms']:.3f})" for s in row["runtimes"].values()
        ]
        lines.append(
            f"| {row['batch']} | " + " | ".join(cells) + f" | {row['best_dense']} | "
            f"**{row['speedup_vs_best_dense']:.2f}×** | {row['paired_speedup']['median']:.2f}× "
            f"({row['paired_speedup']['p25']:.2f}–{row['paired_speedup']['p75']:.2f}) | {row['verdict']} | "
            f"{row['speedup_vs_dense_eager']:.2f}× |"
        )
    faster = result["faster_at"]
    lines += [
        "",
        "Layers as CSR: "
        + ", ".join(
            f"{k} {v['shape'][0]}×{v['shape'][1]} kept {v['kept']:.1%}" for k, v in result["layers"].items()
        )
        + ". Convolutions would stay dense (none here).",
        "",
        (
            f"**CSR is faster than the best dense runtime at batch size(s) {faster}**; elsewhere slower or "
            "within noise (see the verdicts)."
            if faster
            else "**CSR is not clearly faster than the best dense runtime at any batch size measured.**"
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (sparse_inference_quick.*)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per batch size")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (slow to compile)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 100)
    load_before = os.getloadavg()[0]
    result = run(BATCH_SIZES, args.threads, rounds, use_compile=not (args.quick or args.no_compile))
    result.update(
        load_average={"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()},
        machine=f"{platform.machine()} {platform.processor() or platform.platform()}",
        torch=torch.__version__,
        threads=args.threads,
        rounds=rounds,
        quick=args.quick,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sparse_inference_quick" if args.quick else "sparse_inference"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
