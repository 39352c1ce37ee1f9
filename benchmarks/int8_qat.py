"""int8 quantization-aware training (Jacob et al., arXiv 1712.05877) and its real int8 deployment.

For ResNet-20 and MobileNetV2 (width 0.5, small-input stem) on the MNIST subset (1×28×28), per seed: one fp32
pre-training of ``--pre-epochs``, then three arms from the same weights with the same fine-tune budget
(``--ft-epochs``, SGD + cosine from ``FT_LR``): **fp32** (plain fine-tune), **W8A8** (``QuantizationAwareTraining()``:
per-channel symmetric int8 weights, uint8 activations at every conv/linear input and around every residual add)
and **W7A8** (the same with 7-bit weight codes, which ONNX Runtime's u8s8 kernels take without int16
saturation on x86 CPUs without VNNI); ranges and batch-norm statistics frozen for the last fine-tune epoch.
Each QAT model is exported by :func:`effdl_lightning.export.export_int8_onnx` (BN folded, int8 weights +
scales, QDQ graph) and run by ONNX Runtime on its int8 kernels: its test accuracy, its agreement with the
fake-quantized model, its file size against the fp32 ONNX file of the same network. Latency (seed 0): the fp32
model on eager PyTorch, ``torch.compile`` and ONNX Runtime against both int8 ONNX Runtime models, at batch 1
and 64, 1 thread, interleaved; speedup against the fastest fp32 runtime.

Run: ``python -m benchmarks --only int8_qat`` (about 30 minutes on 2 cores; needs the ``bench`` extra for
ONNX Runtime); ``--quick`` writes ``int8_qat_quick.*``; finished runs are kept in ``int8_qat_runs.jsonl``
and reused unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import (
    DEFINITIONS,
    RESULTS,
    environment,
    md_table,
    mean_std,
    output_stem,
    quartiles,
    quiet,
    quiet_trainer,
    seed_all,
    write_results,
)
from benchmarks.sparse_inference import time_round_robin
from effdl_lightning.callbacks import QuantizationAwareTraining
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.models import create
from effdl_lightning.modules import ClassificationModule

SHAPE = (1, 28, 28)
MODELS: dict[str, dict[str, Any]] = {"resnet20": {}, "mobilenet_v2": {"width_mult": 0.5}}
PRE_LR = {"resnet20": 0.1, "mobilenet_v2": 0.05}
FT_LR = 0.01
BATCHES = (1, 64)
# the QAT arms: int8 (W8A8) and W7A8, whose weight codes (within ±63) run ORT's u8s8 kernels without the int16
# saturation that makes the exporter store 8-bit codes as uint8 (the slower u8u8 kernels) on x86 without VNNI
VARIANTS: dict[str, dict[str, Any]] = {"w8a8": {}, "w7a8": {"scheme": "affine", "weight_bits": 7}}


def module_for(model: nn.Module, lr: float, epochs: int) -> ClassificationModule:
    """SGD (Nesterov, weight decay 5e-4) with a cosine schedule over ``epochs``."""
    return ClassificationModule(
        model,
        num_classes=10,
        optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max(1, epochs)),
        input_shape=SHAPE,
    )


def fit(
    module: ClassificationModule, dm: MNISTSubsetDataModule, epochs: int, limit: Any, cbs: list[Any]
) -> None:
    module.train()
    trainer = quiet_trainer(max_epochs=epochs, limit_train_batches=limit, limit_val_batches=0, callbacks=cbs)
    trainer.fit(module, datamodule=dm)


def accuracy(predict: Any, loader: Any) -> float:
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += int((predict(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def run_one(name: str, seed: int, pre: int, ft: int, quick: bool, workdir: str) -> dict[str, Any]:
    """Pre-train, fine-tune both arms, export the QAT arm to int8 ONNX and evaluate everything."""
    from effdl_lightning.export import export_int8_onnx, int8_agreement, load_int8_session, run_int8

    torch.set_num_threads(1)
    quiet()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    seed_all(seed)
    dm = MNISTSubsetDataModule(batch_size=64, seed=seed, augment=False)
    dm.setup()
    limit = 3 if quick else None
    model = create(name, num_classes=10, input_shape=SHAPE, **MODELS[name])
    fit(module_for(model, PRE_LR[name], pre), dm, pre, limit, [])
    arms = {}
    for arm in ("fp32", *VARIANTS):
        seed_all(seed + 1000)  # the same batches for every arm
        module = module_for(copy.deepcopy(model), FT_LR, ft)
        options = VARIANTS.get(arm, {})
        qat = QuantizationAwareTraining(freeze_ranges_epoch=ft - 1, freeze_bn_epoch=ft - 1, **options)
        fit(module, dm, ft, limit, [qat] if arm != "fp32" else [])
        arms[arm] = module.model.eval()
    test = dm.test_dataloader()
    row: dict[str, Any] = {"model": name, "seed": seed, "pre_epochs": pre, "ft_epochs": ft, "variants": {}}
    row["acc_fp32"] = accuracy(arms["fp32"], test)
    for arm in VARIANTS:
        path = Path(workdir) / f"{name}_{seed}_{arm}.onnx"
        export = export_int8_onnx(arms[arm], torch.randn(2, *SHAPE), path)
        session = load_int8_session(path, threads=1)
        row["variants"][arm] = {
            "acc_qat_fake": accuracy(arms[arm], test),
            "acc_int8_ort": accuracy(partial(run_int8, session), test),
            "agreement": int8_agreement(arms[arm], session, test),
            "int8_bytes": export.size_bytes,
            "int8_nodes": export.node_counts,
            "weight_dtype": export.weight_dtype,
            "float_output_layers": export.float_output_layers,
            "int8_output_layers": len(export.int8_output_layers),
        }
        row["fp32_onnx_bytes"], row["fp32_nodes"] = export.fp32_size_bytes, export.fp32_node_counts
    row["params"] = sum(p.numel() for p in arms["fp32"].parameters())
    row["seconds"] = time.perf_counter() - start
    torch.save(arms["fp32"].state_dict(), Path(workdir) / f"{name}_{seed}_fp32.pt")
    return row


def latency(name: str, workdir: str, rounds: int) -> dict[str, Any]:
    """fp32 eager / torch.compile / ORT vs int8 ORT for the seed-0 models, 1 thread, batch 1 and 64."""
    import onnxruntime as ort

    from effdl_lightning.export import run_int8

    torch.set_num_threads(1)
    model = create(name, num_classes=10, input_shape=SHAPE, **MODELS[name])
    model.load_state_dict(torch.load(Path(workdir) / f"{name}_0_fp32.pt"))
    model.eval()

    def session(path: Path) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    out: dict[str, Any] = {"model": name, "threads": 1, "cells": [], "notes": {}}
    for batch in BATCHES:
        x = torch.randn(batch, *SHAPE)
        variants: dict[str, Any] = {"fp32 eager": model}
        try:
            compiled = torch.compile(model, dynamic=False, options={"freezing": True})
            with torch.inference_mode():
                compiled(x)
            variants["fp32 torch.compile"] = compiled
        except Exception as error:  # a runtime that does not work here is a result, not a crash
            out["notes"]["fp32 torch.compile"] = f"{type(error).__name__}: {error}"[:300]
        variants["fp32 ONNX Runtime"] = partial(run_int8, session(Path(workdir) / f"{name}_0_w8a8.fp32.onnx"))
        for arm in VARIANTS:
            variants[f"{arm} ONNX Runtime"] = partial(
                run_int8, session(Path(workdir) / f"{name}_0_{arm}.onnx")
            )
        with torch.inference_mode():
            begin = time.perf_counter()
            model(x)
            once = time.perf_counter() - begin
        inner = max(1, min(50, round(0.05 / max(once, 1e-6))))
        samples = time_round_robin(variants, x, warmup=3, rounds=rounds, inner=inner)
        ms = {k: quartiles(v) for k, v in samples.items()}
        fp32 = [k for k in ms if k.startswith("fp32")]
        best = min(fp32, key=lambda k: ms[k]["median"])
        cell = {"batch": batch, "inner": inner, "rounds": rounds, "ms": ms, "best_fp32": best}
        for arm in VARIANTS:
            int8 = ms[f"{arm} ONNX Runtime"]["median"]
            cell[f"speedup_vs_best_fp32_{arm}"] = ms[best]["median"] / int8
            cell[f"speedup_vs_fp32_ort_{arm}"] = ms["fp32 ONNX Runtime"]["median"] / int8
        out["cells"].append(cell)
        print(
            f"  {name} b{batch}: " + ", ".join(f"{k} {v['median']:.2f} ms" for k, v in ms.items()), flush=True
        )
    torch._dynamo.reset()
    return out


def storage_breakdown(path: Path) -> dict[str, Any]:
    """Where the bytes of an int8 ONNX file and of its fp32 reference go: weight tensors (≥ 2-D), 1-D tensors
    (per-channel scales, zero points, biases), scalars and shapes, and the rest (graph nodes, names, headers)."""
    import onnx

    out: dict[str, Any] = {}
    for kind, file in (("int8", path), ("fp32", path.with_name(path.name[: -len(".onnx")] + ".fp32.onnx"))):
        graph = onnx.load(file).graph
        parts = {"weights": 0, "per-channel vectors": 0, "scalars and shapes": 0}
        for tensor in graph.initializer:
            key = "weights" if len(tensor.dims) >= 2 else "per-channel vectors" if tensor.dims else ""
            key = key if key and not (len(tensor.dims) == 1 and tensor.dims[0] <= 4) else "scalars and shapes"
            parts[key] += len(tensor.raw_data)
        total = file.stat().st_size
        parts["graph, names, headers"] = total - sum(parts.values())
        out[kind] = {"total": total, **parts}
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name and "variants" in r]
        for arm in VARIANTS if mine else ():
            runs = [r["variants"][arm] for r in mine]
            entry: dict[str, Any] = {"model": name, "arm": arm, "seeds": [r["seed"] for r in mine]}
            entry["params"] = mine[0]["params"]
            entry["acc_fp32"] = mean_std(100 * r["acc_fp32"] for r in mine)
            for key in ("acc_qat_fake", "acc_int8_ort"):
                entry[key] = mean_std(100 * r[key] for r in runs)
            entry["delta_int8_vs_fp32"] = mean_std(
                100 * (v["acc_int8_ort"] - r["acc_fp32"]) for r, v in zip(mine, runs, strict=True)
            )
            entry["top1_agreement"] = min(v["agreement"]["top1_agreement"] for v in runs)
            entry["max_abs_diff"] = max(v["agreement"]["max_abs_diff"] for v in runs)
            entry["ref_max_abs"] = min(v["agreement"]["ref_max_abs"] for v in runs)
            entry["int8_bytes"], entry["fp32_onnx_bytes"] = runs[0]["int8_bytes"], mine[0]["fp32_onnx_bytes"]
            entry["size_ratio"] = mine[0]["fp32_onnx_bytes"] / runs[0]["int8_bytes"]
            entry["int8_nodes"], entry["weight_dtype"] = runs[0]["int8_nodes"], runs[0]["weight_dtype"]
            entry["float_output_layers"] = runs[0]["float_output_layers"]
            out.append(entry)
    return out


def _pm(v: tuple[float, float]) -> str:
    return f"{v[0]:.2f} ± {v[1]:.2f}"


def markdown(summary: list[dict[str, Any]], timing: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# int8 QAT and its int8 deployment on ONNX Runtime",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}, ONNX Runtime {meta.get('onnxruntime')}, "
        f"{meta['machine']}; total {meta['seconds']:.0f} s.",
        "",
        "## Definitions",
        "",
        "- **Accuracy** = top-1 on the 1,000 test images of the seed's split of the MNIST subset, in %.",
        "- **fp32** = the pre-trained network fine-tuned in fp32; **QAT (fake)** = the same pre-trained network "
        "fine-tuned with the same budget with `QuantizationAwareTraining()` (**W8A8**: int8, per-channel "
        "symmetric 8-bit weights, uint8 activations at every layer input and around every residual add) or "
        "`QuantizationAwareTraining(scheme='affine', weight_bits=7)` (**W7A8**: weight codes within ±63), "
        "evaluated in PyTorch with fake quantization; **int8 (ORT)** = that model exported by `export_int8_onnx` "
        "and run by ONNX Runtime's int8 kernels (the deployed model). 'weights stored' = the exporter's weight "
        "dtype on this CPU: uint8 for 8-bit codes on x86 without VNNI (u8u8 kernels; u8s8 would saturate), int8 "
        "for 7-bit codes (u8s8 kernels, exact).",
        "- **Agreement** = fraction of test images whose int8 ORT top-1 equals the fake-quantized model's; max "
        "|Δ logit| against the largest |logit|.",
        "- **Storage** = bytes of the ONNX file (int8 weights + per-channel scales and zero points + float conv "
        "biases, int32 linear biases, activation scales, graph); "
        "fp32 = the ONNX file of the same (BN-folded) network in float32.",
        f"- {DEFINITIONS['timing']} Speedup = median of the fastest fp32 runtime / median of int8 ORT.",
        f"- {DEFINITIONS['seeds']}",
        "",
        f"Setup: {meta['pre_epochs']} fp32 pre-training epochs (SGD lr {PRE_LR}, cosine), then {meta['ft_epochs']} "
        f"fine-tune epochs per arm (SGD lr {FT_LR}, cosine; QAT: ranges and BN statistics frozen in the last); "
        "batch 64, no augmentation; seeds " + ", ".join(str(s) for s in meta["seeds"]) + ".",
        "",
        "## Accuracy and storage",
        "",
    ]
    header = ["model", "QAT", "weights stored", "params", "fp32 (%)", "QAT fake (%)", "int8 ORT (%)"]
    header += ["Δ int8 − fp32 (pts)"]
    header += [
        "top-1 agreement (min)",
        "max |Δ logit| / max |logit|",
        "fp32 ONNX (B)",
        "int8 ONNX (B)",
        "smaller",
    ]
    rows = [
        [
            s["model"],
            s["arm"].upper(),
            s["weight_dtype"],
            f"{s['params']:,}",
            _pm(s["acc_fp32"]),
            _pm(s["acc_qat_fake"]),
            _pm(s["acc_int8_ort"]),
            _pm(s["delta_int8_vs_fp32"]),
            f"{s['top1_agreement']:.4f}",
            f"{s['max_abs_diff']:.3g} / {s['ref_max_abs']:.3g}",
            f"{s['fp32_onnx_bytes']:,}",
            f"{s['int8_bytes']:,}",
            f"{s['size_ratio']:.2f}×",
        ]
        for s in summary
    ]
    lines += md_table(header, rows)
    lines += ["", "ORT-optimized int8 graphs (node types) and the layers whose output stays float:", ""]
    for s in summary:
        nodes = ", ".join(f"{k} {v}" for k, v in sorted(s["int8_nodes"].items()))
        floats = ", ".join(s["float_output_layers"]) or "none"
        lines.append(f"- {s['model']} {s['arm'].upper()}: {nodes}; float outputs: {floats}")
    storage = meta.get("storage") or {}
    if storage:
        lines += ["", "Where the bytes go (seed-0 files; the W7A8 files have the same layout):", ""]
        s_rows = []
        for name, kinds in storage.items():
            parts = [k for k in kinds["int8"] if k != "total"]
            for part in ["total", *parts]:
                ratio = kinds["fp32"][part] / max(1, kinds["int8"][part])
                s_rows.append(
                    [name, part, f"{kinds['fp32'][part]:,}", f"{kinds['int8'][part]:,}", f"{ratio:.2f}×"]
                )
        lines += md_table(["model", "part", "fp32 file (B)", "int8 file (B)", "fp32 / int8"], s_rows)
    if timing:
        lines += ["", "## Latency (1 thread, seed-0 models)", ""]
        t_rows = []
        for t in timing:
            for c in t["cells"]:
                ms = c["ms"]
                keys = (
                    "fp32 eager",
                    "fp32 torch.compile",
                    "fp32 ONNX Runtime",
                    *(f"{a} ONNX Runtime" for a in VARIANTS),
                )
                t_rows.append(
                    [t["model"], c["batch"]]
                    + [f"{ms[k]['median']:.3f} ({ms[k]['p25']:.3f}–{ms[k]['p75']:.3f})" if k in ms else "—"
                       for k in keys]
                    + [c["best_fp32"]]
                    + [f"{c[f'speedup_vs_best_fp32_{a}']:.2f}×" for a in VARIANTS]
                )  # fmt: skip
        header = ["model", "batch", "fp32 eager ms", "fp32 compile ms", "fp32 ORT ms"]
        header += [f"{a.upper()} int8 ORT ms" for a in VARIANTS] + ["fastest fp32"]
        lines += md_table([*header, *(f"{a.upper()} vs fastest fp32" for a in VARIANTS)], t_rows)
        notes = {k: v for t in timing for k, v in t["notes"].items()}
        if notes:
            lines += ["", "Runtimes left out: " + "; ".join(f"{k}: {v}" for k, v in notes.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--models", nargs="*", default=None, choices=list(MODELS))
    parser.add_argument("--pre-epochs", type=int, default=8)
    parser.add_argument("--ft-epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="parallel single-threaded training runs")
    parser.add_argument("--rounds", type=int, default=30, help="timing rounds per variant")
    parser.add_argument("--fresh", action="store_true", help="ignore int8_qat_runs.jsonl")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "effdl_int8_qat",
        help="where the trained seed-0 models and ONNX files are kept for the latency part",
    )
    parser.add_argument(
        "--part",
        choices=("all", "latency", "report"),
        default="all",
        help="latency: re-time the models in --workdir; report: rewrite the md/json from the runs, the last "
        "timing and the files in --workdir",
    )
    args = parser.parse_args(argv or [])
    quiet()
    start = time.perf_counter()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    models = args.models or (["resnet20"] if args.quick else list(MODELS))
    pre, ft = (1, 2) if args.quick else (args.pre_epochs, args.ft_epochs)
    stem = output_stem("int8_qat", args.quick)
    log = Path(args.out) / f"{stem}_runs.jsonl"
    if args.fresh:
        log.unlink(missing_ok=True)
    done = [json.loads(x) for x in log.read_text().splitlines() if x] if log.exists() else []
    log.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in models for s in seeds]
    tmp = str(args.workdir / ("quick" if args.quick else "full"))
    Path(tmp).mkdir(parents=True, exist_ok=True)
    if args.part == "all":
        done = [r for r in done if "variants" in r]  # rows of the older single-arm format are rerun
        todo = [j for j in jobs if not any((r["model"], r["seed"]) == j for r in done)]
        # the latency part needs the seed-0 files: retrain seed 0 when they are missing
        todo += [
            (m, 0)
            for m in models
            if 0 in seeds and (m, 0) not in todo and not (Path(tmp) / f"{m}_0_w8a8.onnx").exists()
        ]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=context) as pool:
            futures = {j: pool.submit(run_one, j[0], j[1], pre, ft, args.quick, tmp) for j in todo}
            for job, future in futures.items():
                row = future.result()
                if not any((r["model"], r["seed"]) == job for r in done):
                    done.append(row)
                    with log.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                accs = {a: (v["acc_qat_fake"], v["acc_int8_ort"]) for a, v in row["variants"].items()}
                print(
                    {"model": row["model"], "seed": row["seed"], "fp32": row["acc_fp32"], **accs}, flush=True
                )
    rows = [r for r in done if (r["model"], r["seed"]) in jobs]
    summary = summarize(rows)
    import onnxruntime

    if args.part == "report":  # the timing and meta of the last run, the rows and files as they are now
        previous = json.loads((Path(args.out) / f"{stem}.json").read_text())
        timing, meta = previous["timing"], previous["meta"]
    else:
        timing = [latency(m, tmp, 5 if args.quick else args.rounds) for m in models if 0 in seeds]
        meta = {**environment(threads=1), "onnxruntime": onnxruntime.__version__, "seeds": seeds}
        meta |= {"pre_epochs": pre, "ft_epochs": ft, "seconds": time.perf_counter() - start}
        meta["command"] = " ".join(["python -m benchmarks --only int8_qat", *(argv or [])])
    meta["storage"] = {
        f"{m} {arm.upper()}": storage_breakdown(Path(tmp) / f"{m}_0_{arm}.onnx")
        for m in models
        for arm in ("w8a8",)
        if (Path(tmp) / f"{m}_0_{arm}.onnx").exists()
    }
    result = {"meta": meta, "summary": summary, "timing": timing, "runs": rows}
    write_results(args.out, stem, result, markdown(summary, timing, meta))


if __name__ == "__main__":
    main()
