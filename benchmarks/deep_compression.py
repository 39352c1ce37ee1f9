"""Deep Compression on the MNIST subset: storage ratio and accuracy against the dense baseline, 3 seeds.

For LeNet-300-100 and LeNet-5, each seed trains (a) the dense baseline and (b) the Deep Compression
pipeline — gradual magnitude pruning to the paper's per-layer kept fractions, weight sharing with centroid
fine-tuning, relative-index + Huffman storage — with the *same* budget (epochs, optimizer, schedule), both
through ``train.py``'s own ``run(cfg)`` and the experiment presets ``deep_compression_lenet300`` /
``deep_compression_lenet5``. Storage is the exact byte count of the written file (header included),
against 4 bytes per element of the fp32 state dict.

    python -m benchmarks --only deep_compression            # full: 2 models x 3 seeds x 2 runs
    python -m benchmarks --only deep_compression --quick    # seconds: 1 model, 1 seed, a few batches
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from benchmarks._common import (
    DEFINITIONS,
    RESULTS,
    command_line,
    environment,
    md_table,
    mean_std,
    output_stem,
    quiet,
    write_results,
)

QUICK = [
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "compression.magnitude_pruning.start=0",
    "compression.magnitude_pruning.end=2",
    "compression.weight_sharing.start_epoch=3",
]
COMMON = [
    "callbacks.progress_bar=null",
    "~logger",
    "callbacks.model_checkpoint=null",
    "callbacks.lr_monitor=null",
]


def run_one(model: str, seed: int, compressed: bool, quick: bool, workdir: Path) -> dict[str, Any]:
    """Train one configuration through ``run(cfg)`` and return its test accuracy and storage."""
    from effdl_lightning.run import build, compose

    out = workdir / f"{model}_{seed}_{'dc' if compressed else 'dense'}"
    overrides = [f"experiment=deep_compression_{model}", f"seed={seed}", *COMMON, *(QUICK if quick else [])]
    cfg = compose(overrides, output_dir=out)
    if not compressed:
        # the dense baseline: the experiment's own config (data, model, epochs, batches, optimizer, LR
        # schedule, gradient clipping) without the compression callbacks and the export
        with open_dict(cfg):
            cfg.compression = None
            cfg.callbacks.deep_compression_export = None
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    (test,) = trainer.test(module, datamodule=datamodule, verbose=False)
    row: dict[str, Any] = {
        "model": model,
        "seed": seed,
        "compressed": compressed,
        "test_acc": test["test/acc"],
    }
    export = next((c for c in trainer.callbacks if type(c).__name__ == "DeepCompressionExport"), None)  # type: ignore[attr-defined]
    if export is not None and export.report is not None:
        report = export.report
        row["file_bytes"] = report.file_bytes
        row["dense_fp32_bytes"] = report.dense_fp32_bytes
        row["storage_ratio"] = report.dense_fp32_bytes / report.file_bytes
        row["layers"] = [
            {
                "name": t.name,
                "kept_fraction": t.kept_fraction,
                "index_bits": t.index_bits,
                "value_bits": t.value_bits,
                "bytes": t.bytes,
                "index_bits_avg": t.index_bits_avg,
                "value_bits_avg": t.value_bits_avg,
            }
            for t in report.tensors
            if t.format == "sparse"
        ]
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: dense and compressed accuracy (mean ± std over seeds), storage ratio, accuracy change."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        dense = [r["test_acc"] for r in rows if r["model"] == model and not r["compressed"]]
        dc = [r for r in rows if r["model"] == model and r["compressed"]]
        dc_acc = [r["test_acc"] for r in dc]
        ratios = [r["storage_ratio"] for r in dc]
        out.append(
            {
                "model": model,
                "seeds": len(dc),
                "dense_acc": mean_std(dense),
                "dc_acc": mean_std(dc_acc),
                "acc_change_points": 100 * (mean_std(dc_acc)[0] - mean_std(dense)[0]),
                "storage_ratio": mean_std(ratios),
                "file_bytes": mean_std([r["file_bytes"] for r in dc]),
                "dense_fp32_bytes": dc[0]["dense_fp32_bytes"],
                "layers_seed": next((r["seed"] for r in dc if "layers" in r), None),
                "layers": next((r["layers"] for r in dc if "layers" in r), []),
            }
        )
    return out


def markdown(summary: list[dict[str, Any]], argv: list[str], env: dict[str, Any]) -> str:
    lines = [
        "# Deep Compression on the MNIST subset",
        "",
        f"Reproduce: `{command_line('deep_compression', argv)}`",
        "",
        "Pipeline (conf/experiment/deep_compression_*.yaml): gradual cubic magnitude pruning to the paper's "
        "per-layer kept fractions, weight sharing (k-means, linear init, centroid fine-tuning), then the "
        "relative-index sparse file with codebooks and Huffman-coded gaps and cluster indices. The dense "
        "baseline trains with the same epochs, optimizer and LR schedule. Accuracy: the 1,000-image test "
        "split of the 5,000-image subset.",
        "",
        "- **Storage ratio** = 4 bytes × elements of the fp32 state dict / bytes of the written file "
        "(header, codebooks, indices, biases included).",
        f"- {DEFINITIONS['seeds']}",
        f"- torch {env['torch']}, lightning {env['lightning']}, {env['torch_threads']} threads.",
        "",
    ]
    rows = [
        (
            s["model"],
            s["seeds"],
            f"{100 * s['dense_acc'][0]:.2f} ± {100 * s['dense_acc'][1]:.2f}",
            f"{100 * s['dc_acc'][0]:.2f} ± {100 * s['dc_acc'][1]:.2f}",
            f"{s['acc_change_points']:+.2f}",
            f"{s['dense_fp32_bytes']:,}",
            f"{s['file_bytes'][0]:,.0f}",
            f"{s['storage_ratio'][0]:.1f}× ± {s['storage_ratio'][1]:.1f}",
        )
        for s in summary
    ]
    header = ["model", "seeds", "dense acc %", "DC acc %", "Δ points", "fp32 bytes", "file bytes", "ratio"]
    lines += md_table(header, rows)
    for s in summary:
        lines += ["", f"## {s['model']}: per layer (seed {s['layers_seed']})", ""]
        lines += md_table(
            [
                "tensor",
                "kept",
                "index bits",
                "value bits",
                "bits/entry (gap + value, after Huffman)",
                "bytes",
            ],
            [
                (
                    t["name"],
                    f"{100 * t['kept_fraction']:.1f}%",
                    t["index_bits"],
                    t["value_bits"],
                    f"{t['index_bits_avg']:.2f} + {t['value_bits_avg']:.2f}",
                    f"{t['bytes']:,}",
                )
                for t in s["layers"]
            ],
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="seeds (default 0 1 2)")
    parser.add_argument("--models", nargs="*", default=None, help="lenet300 and/or lenet5")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the runs already recorded in <out>/deep_compression_runs.jsonl",
    )
    args = parser.parse_args(argv or [])
    quiet()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    models = args.models or (["lenet300"] if args.quick else ["lenet300", "lenet5"])
    # every finished run is appended to a JSON-lines file at once, so an interrupted benchmark resumes
    log = Path(args.out) / f"{output_stem('deep_compression', args.quick)}_runs.jsonl"
    done = (
        [] if args.fresh or not log.exists() else [json.loads(x) for x in log.read_text().splitlines() if x]
    )
    if args.fresh:
        log.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for seed in seeds:
                for compressed in (False, True):
                    key = (model, seed, compressed)
                    row = next((r for r in done if (r["model"], r["seed"], r["compressed"]) == key), None)
                    if row is None:
                        row = run_one(model, seed, compressed, args.quick, Path(tmp))
                        with log.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print({k: v for k, v in row.items() if k != "layers"}, flush=True)
    summary = summarize(rows)
    env = environment()
    result = {
        "meta": {**environment(), "argv": argv or [], "quick": args.quick},
        "summary": summary,
        "runs": rows,
    }
    write_results(
        args.out, output_stem("deep_compression", args.quick), result, markdown(summary, argv or [], env)
    )


if __name__ == "__main__":
    main()
