"""Early-exit networks deployed on ONNX Runtime: one ONNX graph per stage, run by ``early_exit_inference``.

A staged model (``num_exits`` and ``forward_stage(index, state)``: a :class:`MultiExitNetwork`, MSDNet, ...)
is exported stage by stage, each graph with a dynamic batch dimension, because after every exit the batch
holds only the samples still present. ``early_exit_inference(OnnxStages, x, θ)`` then runs exactly the eager
algorithm, with every stage executed by ONNX Runtime::

    stages = export_stages_onnx(model.eval(), example_batch, "msdnet_stages")
    out = early_exit_inference(stages, x, thresholds)       # samples that exit skip the later graphs
    stages = OnnxStages.load("msdnet_stages")               # later, without the PyTorch model

The directory holds ``stage_<k>.onnx`` and ``stages.json`` (the state layout each graph takes and returns:
one tensor or a list of tensors). States must be a tensor or a list/tuple of tensors whose first dimension is
the batch; the model must treat samples independently (eval-mode batch norm).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.dynamic.exits import is_staged, num_exits_of
from effdl_lightning.export.int8 import _require

__all__ = ["OnnxStages", "export_stages_onnx"]

_MANIFEST = "stages.json"


def _layout(state: Any, what: str) -> tuple[str, int]:
    """``("tensor", 1)``, ``("list", n)`` or ``("none", 0)`` for a stage's state; anything else is refused."""
    if state is None:
        return "none", 0
    if isinstance(state, Tensor):
        return "tensor", 1
    if isinstance(state, (list, tuple)) and state and all(isinstance(t, Tensor) for t in state):
        return "list", len(state)
    raise TypeError(
        f"{what} is a {type(state).__name__}; ONNX stages take and return a tensor or a list of tensors"
    )


def _flat(state: Any) -> list[Tensor]:
    if state is None:
        return []
    return [state] if isinstance(state, Tensor) else list(state)


class _FlatStage(nn.Module):
    """Stage ``index`` on a flat list of tensors: ``[*state] -> (*features, logits)``."""

    def __init__(self, model: nn.Module, index: int, layout: str) -> None:
        super().__init__()
        self.model = model
        self.index = index
        self.layout = layout

    def forward(self, tensors: list[Tensor]) -> tuple[Tensor, ...]:
        state: Any = tensors[0] if self.layout == "tensor" else list(tensors)
        features, logits = self.model.forward_stage(self.index, state)  # type: ignore[operator]
        return (*_flat(features), logits)


def _export(stage: nn.Module, inputs: list[Tensor]) -> bytes:
    batch = torch.export.Dim("batch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            stage, (inputs,), dynamic_shapes=([{0: batch} for _ in inputs],), dynamo=True, verbose=False
        )
    assert program is not None
    return program.model_proto.SerializeToString()  # type: ignore[no-any-return]


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # idle intra-op threads would spin between the stages' calls and steal the cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


class OnnxStages(nn.Module):
    """The stages of an early-exit network as ONNX Runtime sessions, with the staged-model interface.

    ``num_exits`` and ``forward_stage(index, state)`` as the PyTorch model (tensors in, tensors out), so
    :func:`~effdl_lightning.core.dynamic.early_exit_inference` runs it unchanged; ``forward(x)`` returns the
    logits of every exit (every sample through every stage). Build it with :func:`export_stages_onnx` or
    :meth:`load`. Inputs are run as CPU float32.
    """

    def __init__(self, sessions: list[Any], layouts: list[dict[str, Any]]) -> None:
        super().__init__()
        if not sessions or len(sessions) != len(layouts):
            raise ValueError(
                f"need one layout per session; got {len(sessions)} sessions, {len(layouts)} layouts"
            )
        self.sessions = sessions
        self.layouts = layouts
        self.num_exits = len(sessions)
        self._names = [[i.name for i in s.get_inputs()] for s in sessions]

    @classmethod
    def load(cls, directory: str | os.PathLike[str], threads: int = 1) -> OnnxStages:
        """Open the stages written by :func:`export_stages_onnx` (``threads`` intra-op threads per session)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        root = Path(directory)
        manifest = root / _MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found: not a directory written by export_stages_onnx")
        layouts = json.loads(manifest.read_text())["stages"]
        return cls([_session(root / s["file"], threads) for s in layouts], layouts)

    def forward_stage(self, index: int, state: Any) -> tuple[Any, Tensor]:
        if not 0 <= index < self.num_exits:
            raise ValueError(f"stage index must be in [0, {self.num_exits - 1}], got {index}")
        layout = self.layouts[index]
        kind, count = _layout(state, f"the state of stage {index}")
        if (kind, count) != (layout["inputs"], layout["num_inputs"]):
            raise ValueError(
                f"stage {index} takes {layout['inputs']} ({layout['num_inputs']} tensors); got {kind} ({count})"
            )
        feeds = {
            n: t.detach().cpu().float().numpy() for n, t in zip(self._names[index], _flat(state), strict=True)
        }
        outs = [torch.from_numpy(a) for a in self.sessions[index].run(None, feeds)]
        logits, features = outs[-1], outs[:-1]
        if layout["outputs"] == "none":
            return None, logits
        return (features[0] if layout["outputs"] == "tensor" else features), logits

    def forward(self, x: Tensor) -> list[Tensor]:
        logits, state = [], x
        for index in range(self.num_exits):
            state, out = self.forward_stage(index, state)
            logits.append(out)
        return logits


def export_stages_onnx(
    model: nn.Module, example: Tensor, directory: str | os.PathLike[str], threads: int = 1
) -> OnnxStages:
    """Export every stage of ``model`` to ``directory/stage_<k>.onnx`` and open them with ONNX Runtime.

    Each graph has a dynamic batch dimension on every input and output (the dynamo exporter), so one file per
    stage serves every number of remaining samples. ``model`` is put in eval mode.

    Args:
        model: a staged model (``num_exits`` and ``forward_stage``), e.g. a ``MultiExitNetwork`` or MSDNet.
        example: an input batch (its values only trace the graphs; a single sample is repeated to two rows).
        directory: where to write the files (created if missing).
        threads: intra-op threads of each ONNX Runtime session.

    Raises:
        ValueError: ``model`` cannot be run stage by stage.
        TypeError: a stage takes or returns something other than a tensor or a list of tensors.
        ImportError: onnx, onnxscript or onnxruntime missing (``pip install effdl_lightning[deploy]``).
    """
    if not is_staged(model) or num_exits_of(model) is None:
        raise ValueError(
            f"{type(model).__name__} has no `num_exits` and `forward_stage(index, state)`; it cannot be exported "
            f"stage by stage"
        )
    for name in ("onnx", "onnxscript", "onnxruntime"):
        _require(name)
    model.eval()
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    x = example if example.shape[0] > 1 else torch.cat([example, example])  # size 1 would specialize
    layouts: list[dict[str, Any]] = []
    state: Any = x
    for index in range(int(model.num_exits)):  # type: ignore[arg-type]
        kind, count = _layout(state, f"the input of stage {index}")
        with torch.no_grad():
            features, _ = model.forward_stage(index, state)  # type: ignore[operator]
        out_kind, out_count = _layout(features, f"the features stage {index} returns")
        if out_kind == "none" and index < int(model.num_exits) - 1:  # type: ignore[arg-type]
            raise TypeError(f"stage {index} returned no features but is not the last stage")
        blob = _export(_FlatStage(model, index, kind).eval(), _flat(state))
        file = f"stage_{index}.onnx"
        (root / file).write_bytes(blob)
        layouts.append(
            {"file": file, "inputs": kind, "num_inputs": count, "outputs": out_kind, "num_outputs": out_count}
        )
        state = features
    manifest = {"num_exits": len(layouts), "stages": layouts, "torch": torch.__version__}
    (root / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return OnnxStages.load(root, threads)
