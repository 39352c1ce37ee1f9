"""DistillationModule and the distillation losses: formulas, hooks, the frozen teacher, checkpoints, stages."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl_lightning.callbacks import MagnitudePruning, QuantizationAwareTraining
from effdl_lightning.core.distill import (
    AttentionTransferLoss,
    DistillationInputs,
    FeatureCapture,
    FitNetsLoss,
    KDLoss,
    at_loss,
    attention_map,
    hint_loss,
    kd_loss,
    make_regressor,
)
from effdl_lightning.core.quant.modules import quantized_layers
from effdl_lightning.models import MLP
from effdl_lightning.modules import ClassificationModule, DistillationModule
from effdl_lightning.modules.teacher import load_teacher

SHAPE = (1, 12, 12)


def data(n: int = 96, batch_size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPE, generator=g)
    y = (x[:, 0, :6].mean((1, 2)) > x[:, 0, 6:].mean((1, 2))).long() + 2 * (
        x[:, 0, :, :6].mean((1, 2)) > 0
    ).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def cnn(c1: int = 8, c2: int = 12, seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-pool ×2 then a linear head; '2' is a (c1, 12, 12) map, '6' a (c2, 6, 6) map."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(c2 * 9, 4),
    )


def mlp(hidden: list[int], seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(4, SHAPE, hidden=hidden)


def trainer(max_epochs: int = 1, callbacks: list[Callback] | None = None, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
    }
    options.update(kwargs)
    return Trainer(callbacks=callbacks or [], **options)


def distiller(teacher: Any = None, losses: Any = None, **kwargs: Any) -> DistillationModule:
    student = kwargs.pop("student", None) or cnn(4, 6, seed=1)
    return DistillationModule(
        student,
        teacher if teacher is not None else cnn(16, 24, seed=2),
        losses if losses is not None else {"kd": KDLoss(), "at": AttentionTransferLoss(["2", "6"])},
        num_classes=4,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        input_shape=SHAPE,
        **kwargs,
    )


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --- losses against hand computations ---------------------------------------------------------------------------
def test_kd_loss_is_hintons_formula_with_the_t_squared_factor() -> None:
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.5]])
    y = torch.tensor([1, 2])
    t, alpha = 3.0, 0.7
    kl = 0.0
    for n in range(2):
        pt = [math.exp(v / t) for v in zt[n].tolist()]
        ps = [math.exp(v / t) for v in zs[n].tolist()]
        pt = [v / sum(pt) for v in pt]
        ps = [v / sum(ps) for v in ps]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)) / 2  # batch mean
    ce = 0.0
    for n in range(2):
        row = zs[n].tolist()
        ce += -(row[int(y[n])] - math.log(sum(math.exp(v) for v in row))) / 2
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert kd_loss(zs, zt, y, temperature=t, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)
    # the T² factor: the soft term alone is T² times the KL at temperature T
    assert kd_loss(zs, zt, temperature=t, alpha=1.0).item() == pytest.approx(t * t * kl, rel=1e-6)
    inputs = DistillationInputs(zs, zt, y)
    assert KDLoss(temperature=t, alpha=alpha)(inputs).item() == pytest.approx(expected, rel=1e-6)


def test_hint_loss_is_half_the_squared_norm_and_regressors_fit_the_shapes() -> None:
    v = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    u = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # ½‖u − v‖² per example = ½·5 and ½·5, batch mean 2.5; per element: ½·mean = 1.25
    assert hint_loss(v, u).item() == pytest.approx(2.5)
    assert hint_loss(v, u, reduction="mean").item() == pytest.approx(1.25)
    assert isinstance(make_regressor((8,), (8,)), nn.Identity)
    linear = make_regressor((8,), (16,))
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (8, 16)
    conv = make_regressor((4, 12, 12), (16, 6, 6))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (7, 7)
    assert conv(torch.zeros(1, 4, 12, 12)).shape == (1, 16, 6, 6)
    conv1d = make_regressor((4, 20), (8, 20), activation="relu")
    assert isinstance(conv1d, nn.Sequential) and conv1d[0].kernel_size == (1,)
    with pytest.raises(ValueError, match=r"spatial size \(4, 4\) is smaller than the teacher's \(6, 6\)"):
        make_regressor((4, 4, 4), (8, 6, 6))
    with pytest.raises(
        ValueError, match=r"cannot map student features \(8,\) onto teacher features \(8, 6, 6\)"
    ):
        make_regressor((8,), (8, 6, 6))
    loss = FitNetsLoss([["a", "b"]])
    loss.build_regressors({"a": (2,)}, {"b": (3,)})
    r = loss.regressors["0"]
    s, t = torch.randn(5, 2), torch.randn(5, 3)
    expected = 0.5 * (r(s) - t).pow(2).sum(1).mean()
    got = loss(DistillationInputs(torch.zeros(5, 4), torch.zeros(5, 4), torch.zeros(5), {"a": s}, {"b": t}))
    torch.testing.assert_close(got, expected)


def test_attention_transfer_is_the_authors_normalization() -> None:
    g = torch.Generator().manual_seed(0)
    a_s, a_t = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 7, 5, 5, generator=g)
    # by hand: Q = Σ_c A_c² flattened, divided by its L2 norm; mean of squared differences over batch and positions
    q_s = (a_s**2).sum(1).reshape(3, -1)
    q_t = (a_t**2).sum(1).reshape(3, -1)
    q_s = q_s / q_s.norm(dim=1, keepdim=True)
    q_t = q_t / q_t.norm(dim=1, keepdim=True)
    per_pair = ((q_s - q_t) ** 2).sum() / (3 * 25)
    torch.testing.assert_close(at_loss(a_s, a_t), per_pair)
    # the authors' code (mean over channels instead of sum) gives the same map
    torch.testing.assert_close(attention_map(a_s), F.normalize(a_s.pow(2).mean(1).view(3, -1)))
    # p = 1: Σ_c |A_c|
    q1 = a_s.abs().sum(1).reshape(3, -1)
    torch.testing.assert_close(attention_map(a_s, p=1.0), q1 / q1.norm(dim=1, keepdim=True))
    loss = AttentionTransferLoss([["x", "y"], "z"], beta=1000.0)
    inputs = DistillationInputs(
        torch.zeros(3, 4),
        torch.zeros(3, 4),
        torch.zeros(3),
        {"x": a_s, "z": a_s},
        {"y": a_t, "z": a_t[:, :2]},
    )
    expected = 500.0 * (per_pair + at_loss(a_s, a_t[:, :2]))
    torch.testing.assert_close(loss(inputs), expected)
    with pytest.raises(ValueError, match=r"pair \['x', 'y'\].*same batch and spatial sizes"):
        loss(DistillationInputs(inputs.student_logits, inputs.teacher_logits, inputs.targets,
                                {"x": a_s, "z": a_s}, {"y": a_t[..., :4], "z": a_t}))  # fmt: skip


# --- hooks by module path ---------------------------------------------------------------------------------------
def test_hooks_find_layers_by_path_and_are_removed_after_the_block() -> None:
    net = mlp([6, 5]).eval()
    x = torch.randn(2, *SHAPE)
    capture = FeatureCapture(net, ["hidden.0", "hidden.1.0", ""], owner="student")
    with capture as features:
        logits = net(x)
    torch.testing.assert_close(features["hidden.0"], torch.relu(net.hidden[0][0](x.flatten(1))))
    torch.testing.assert_close(features["hidden.1.0"], net.hidden[1][0](features["hidden.0"]))
    torch.testing.assert_close(features[""], logits)
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(
        ValueError, match=r"no module 'hiden.0' in the student \(MLP\); close matches: \['hidden.0'"
    ):
        FeatureCapture(net, ["hiden.0"], owner="student")
    with pytest.raises(
        ValueError, match=r"no module 'layer9' in the teacher \(Sequential\).*available paths: 0, 1,"
    ):
        distiller(losses={"at": AttentionTransferLoss([["2", "layer9"]])})


# --- the frozen teacher -----------------------------------------------------------------------------------------
class TeacherWatch(Callback):
    """Records the teacher's mode at every training batch and the optimizer's parameters."""

    def __init__(self) -> None:
        self.modes: list[bool] = []
        self.optimized: set[int] = set()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, i: int) -> None:
        assert isinstance(pl_module, DistillationModule)
        self.modes.append(any(m.training for m in pl_module.teacher.modules()))
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}


def test_teacher_gets_no_gradient_stays_in_eval_and_moves_with_the_module() -> None:
    module = distiller()
    before, student_before = params(module.teacher), params(module.student)
    watch = TeacherWatch()
    run = trainer(2, [watch])
    run.fit(module, data(), data())
    assert watch.modes and not any(watch.modes)  # eval during every training batch (BN statistics frozen)
    assert not any(m.training for m in module.teacher.modules())
    for name, value in module.teacher.state_dict().items():
        assert torch.equal(value, before[name]), name  # weights and BN running statistics untouched
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert not watch.optimized & {id(p) for p in module.teacher.parameters()}
    assert watch.optimized == {id(p) for p in module.student.parameters()}
    assert any(not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items())
    metrics = run.callback_metrics
    assert {"train/loss", "train/loss_kd", "train/loss_at", "train/acc", "val/loss", "val/acc"} <= set(
        metrics
    )
    assert "train/loss_ce" not in metrics  # KD carries the hard labels
    module.train()
    assert not module.teacher.training and module.student.training
    module.double()
    assert next(module.teacher.parameters()).dtype == torch.float64


def test_without_terms_the_student_trains_alone_and_the_teacher_is_not_run() -> None:
    module = distiller(losses={"kd": KDLoss(weight=0.0)})
    assert len(module.losses) == 0
    calls: list[int] = []
    module.teacher.register_forward_hook(lambda *_: calls.append(1))
    run = trainer(1)
    run.fit(module, data())
    assert not calls
    torch.testing.assert_close(run.callback_metrics["train/loss"], run.callback_metrics["train/loss_ce"])


# --- checkpoints ------------------------------------------------------------------------------------------------
def _fit_and_checkpoint(module: DistillationModule, folder: Path, epochs: int = 1) -> Path:
    ckpt = ModelCheckpoint(dirpath=folder, save_last=True)
    trainer(epochs, [ckpt], enable_checkpointing=True).fit(module, data())
    return folder / "last.ckpt"


def test_checkpoint_leaves_the_teacher_out_by_default_and_keeps_it_when_asked(tmp_path: Path) -> None:
    big_teacher = mlp([512, 512], seed=3)  # ~1.4 MB of weights; the student ~2 KB
    losses = {"kd": KDLoss()}
    lean = _fit_and_checkpoint(distiller(big_teacher, losses, student=mlp([8])), tmp_path / "lean")
    full = _fit_and_checkpoint(
        distiller(big_teacher, losses, student=mlp([8]), save_teacher=True), tmp_path / "full"
    )
    lean_keys = torch.load(lean, weights_only=True)["state_dict"].keys()
    full_keys = torch.load(full, weights_only=True)["state_dict"].keys()
    assert not [k for k in lean_keys if k.startswith("teacher.")]
    assert {f"teacher.{k}" for k in big_teacher.state_dict()} <= set(full_keys)
    assert lean.stat().st_size < 200_000 < 1_000_000 < full.stat().st_size
    # strict loading of a checkpoint without the teacher keeps the rebuilt teacher
    fresh = distiller(mlp([512, 512], seed=3), losses, student=mlp([8], seed=5))
    fresh.load_state_dict(torch.load(lean, weights_only=True)["state_dict"])
    torch.testing.assert_close(fresh.teacher.state_dict(), big_teacher.state_dict())
    loaded = DistillationModule.load_from_checkpoint(
        lean, student=mlp([8], seed=5), teacher=mlp([512, 512], seed=3), losses=losses
    )
    assert loaded.hparams["num_classes"] == 4 and "MLP" in loaded.hparams["teacher_source"]
    torch.testing.assert_close(loaded.student.state_dict(), fresh.student.state_dict())


def test_resume_from_a_checkpoint_continues_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def make() -> DistillationModule:
        return distiller(cnn(16, 24, seed=2), student=cnn(4, 6, seed=1))

    straight = make()
    trainer(2).fit(straight, data())
    first = make()
    last = _fit_and_checkpoint(first, tmp_path)
    resumed = make()
    run = trainer(2)
    run.fit(resumed, data(), ckpt_path=str(last))  # strict load without the teacher's keys
    assert run.global_step == 2 * 3
    for name, value in straight.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=1e-6)


# --- where the teacher comes from -------------------------------------------------------------------------------
def _train_teacher(
    folder: Path, callbacks: list[Callback] | None = None
) -> tuple[ClassificationModule, Path]:
    wrapper = ClassificationModule(cnn(16, 24, seed=2), num_classes=4, input_shape=SHAPE)
    ckpt = ModelCheckpoint(dirpath=folder / "checkpoints", save_last=True)
    trainer(1, [*(callbacks or []), ckpt], enable_checkpointing=True).fit(wrapper, data())
    return wrapper, folder / "checkpoints" / "last.ckpt"


def test_teacher_from_a_checkpoint_a_target_with_weights_or_an_object(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrapper, ckpt = _train_teacher(tmp_path / "run")
    trained = wrapper.model.state_dict()
    from_ckpt = distiller({"model": cnn(16, 24, seed=9), "ckpt_path": str(ckpt)})
    torch.testing.assert_close(from_ckpt.teacher.state_dict(), trained)
    # a bare path: the architecture comes from the run's .hydra/config.yaml
    net = MLP(4, SHAPE, hidden=[7])
    mlp_wrapper = ClassificationModule(net, num_classes=4)
    trainer(1, [ModelCheckpoint(dirpath=tmp_path / "mlp" / "checkpoints", save_last=True)],
            enable_checkpointing=True).fit(mlp_wrapper, data())  # fmt: skip
    (tmp_path / "mlp" / ".hydra").mkdir()
    (tmp_path / "mlp" / ".hydra" / "config.yaml").write_text(
        "data:\n  num_classes: 4\nmodel:\n  _target_: effdl_lightning.models.MLP\n"
        "  num_classes: ${data.num_classes}\n  input_shape: [1, 12, 12]\n  hidden: [7]\n"
    )
    teacher, source = load_teacher(str(tmp_path / "mlp" / "checkpoints" / "last.ckpt"))
    assert "from checkpoint" in source
    torch.testing.assert_close(teacher.state_dict(), net.state_dict())
    # _target_ plus a plain weights file
    torch.save(net.state_dict(), tmp_path / "w.pt")
    spec = {
        "_target_": "effdl_lightning.models.MLP",
        "num_classes": 4,
        "input_shape": [1, 12, 12],
        "hidden": [7],
    }
    module = distiller({"model": spec, "weights_path": str(tmp_path / "w.pt")}, {"kd": KDLoss()})
    torch.testing.assert_close(module.teacher.state_dict(), net.state_dict())
    # an object (a ClassificationModule gives its network), used as is
    assert distiller(wrapper).teacher is wrapper.model
    # no weights at all: a warning says the teacher is random
    with caplog.at_level(logging.WARNING):
        distiller({"model": cnn(16, 24)})
    assert "RANDOM weights" in caplog.text


def test_a_compressed_teacher_checkpoint_is_replayed(tmp_path: Path) -> None:
    wrapper, ckpt = _train_teacher(tmp_path, [QuantizationAwareTraining()])
    module = distiller({"model": cnn(16, 24, seed=9), "ckpt_path": str(ckpt)})
    assert list(quantized_layers(module.teacher)) == list(quantized_layers(wrapper.model)) != []
    x = torch.randn(3, *SHAPE)
    wrapper.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.teacher(x), wrapper.model(x), rtol=0, atol=0)


# --- FitNets stages ---------------------------------------------------------------------------------------------
class Snapshots(Callback):
    def __init__(self) -> None:
        self.stages: list[int] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert isinstance(pl_module, DistillationModule)
        self.stages.append(pl_module.stage)
        self.weights.append(params(pl_module))


def test_fitnets_trains_hints_alone_then_switches_to_kd_at_the_configured_epoch() -> None:
    hints = FitNetsLoss([["hidden.0", "hidden.0"]], stage1_epochs=2)
    module = distiller(mlp([32, 32], seed=3), {"fitnets": hints, "kd": KDLoss()}, student=mlp([8, 8]))
    assert isinstance(hints.regressors["0"], nn.Linear)  # 8 -> 32, built at construction from input_shape
    start = params(module)
    snaps = Snapshots()
    run = trainer(3, [snaps])
    run.fit(module, data())
    assert snaps.stages == [1, 1, 2]
    first, second, third = snaps.weights

    def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], key: str) -> bool:
        return not torch.equal(a[key], b[key])

    # stage 1: the student up to the guided layer and the regressor learn; the layers after it do not
    assert moved(start, second, "student.hidden.0.0.weight") and moved(
        start, second, "losses.fitnets.regressors.0.weight"
    )
    assert not moved(start, second, "student.hidden.1.0.weight") and not moved(
        start, second, "student.head.weight"
    )
    # stage 2: KD trains the whole student; the hints are off (the regressor stops)
    assert moved(second, third, "student.head.weight") and moved(second, third, "student.hidden.1.0.weight")
    assert not moved(second, third, "losses.fitnets.regressors.0.weight")
    assert run.callback_metrics["train/stage"] == 2.0 and "train/loss_kd" in run.callback_metrics
    assert first.keys() == start.keys()


def test_regressors_are_optimized_and_built_from_the_datamodule_shape_at_setup() -> None:
    hints = FitNetsLoss([["2", "2"]], regressor_activation="relu")
    module = DistillationModule(cnn(4, 6), cnn(16, 24), {"fitnets": hints}, num_classes=4)
    assert not hints.built
    watch = TeacherWatch()

    class DM(LightningDataModule):
        input_shape = SHAPE

        def train_dataloader(self) -> DataLoader:
            return data()

    trainer(1, [watch]).fit(module, datamodule=DM())
    assert hints.built and isinstance(hints.regressors["0"][0], nn.Conv2d)
    assert {id(p) for p in hints.parameters()} <= watch.optimized
    bare = DistillationModule(cnn(4, 6), cnn(16, 24), {"fitnets": FitNetsLoss([["2", "2"]])}, num_classes=4)
    with pytest.raises(ValueError, match=r"FitNets needs the input shape"):
        trainer(1).fit(bare, data())


# --- composition with compression -------------------------------------------------------------------------------
def test_distill_prune_and_qat_in_one_fit_act_on_the_student_only() -> None:
    module = distiller()
    teacher_before = params(module.teacher)
    pruning = MagnitudePruning(target_sparsity=0.5, schedule="one_shot", make_permanent=False)
    qat = QuantizationAwareTraining()
    run = trainer(2, [pruning, qat])
    run.fit(module, data())
    assert list(quantized_layers(module.student)) == ["0", "4", "9"]
    assert not quantized_layers(module.teacher)
    for name, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert set(pruning.masks) == {"0.weight", "4.weight", "9.weight"}  # names relative to the student
    for name, layer in quantized_layers(module.student).items():
        mask = pruning.masks[f"{name}.weight"]
        assert 0.45 <= 1 - mask.float().mean() <= 0.55
        assert bool((layer.weight[~mask] == 0).all()), name
    assert torch.isfinite(run.callback_metrics["train/loss_at"])


# --- arguments --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: KDLoss(temperature=0), ValueError, r"KDLoss: `temperature` must be > 0, got 0"),
        (lambda: KDLoss(alpha=1.5), ValueError, r"`alpha` must be in \[0, 1\], got 1.5"),
        (lambda: KDLoss(weight=-1), ValueError, r"KDLoss: `weight` must be >= 0, got -1"),
        (lambda: FitNetsLoss([]), ValueError, r"needs at least one \[student path, teacher path\] pair"),
        (
            lambda: FitNetsLoss([["a", "b", "c"]]),
            ValueError,
            r"each pair must be \[student path, teacher path\]",
        ),
        (
            lambda: FitNetsLoss(["a"], reduction="sum"),
            ValueError,
            r"`reduction` must be one of \('batchmean', 'mean'\)",
        ),
        (lambda: FitNetsLoss(["a"], stage1_epochs=-1), ValueError, r"`stage1_epochs` must be >= 0, got -1"),
        (
            lambda: FitNetsLoss(["a"], regressor_activation="tanh"),
            ValueError,
            r"one of \(None, 'relu'\), got 'tanh'",
        ),
        (lambda: AttentionTransferLoss(["a"], p=0), ValueError, r"`p` must be a finite number > 0, got 0"),
        (lambda: AttentionTransferLoss(["a"], beta=-1), ValueError, r"`beta` must be >= 0, got -1"),
        (lambda: distiller(losses=[nn.MSELoss()]), TypeError, r"must be a DistillationLoss .* got MSELoss"),
        (lambda: distiller(losses=[KDLoss(), KDLoss()]), ValueError, r"two losses are named 'kd'"),
        (lambda: distiller(losses={"a.b": KDLoss()}), ValueError, r"loss name 'a.b' is not allowed"),
        (lambda: distiller(losses={"kd": {"temperature": 2}}), ValueError, r"config without `_target_`"),
        (
            lambda: distiller(scheduler_interval="batch"),
            ValueError,
            r"one of \('epoch', 'step'\), got 'batch'",
        ),
        (lambda: distiller(hard_label_weight=-1), ValueError, r"`hard_label_weight` must be >= 0"),
        (
            lambda: DistillationModule(cnn(), cnn(), [KDLoss()]),
            ValueError,
            r"`num_classes` must be an int >= 2",
        ),
        (
            lambda: distiller({"model": cnn(), "path": "x"}),
            ValueError,
            r"unknown key\(s\) \['path'\]; allowed",
        ),
        (lambda: distiller({"model": cnn(), "ckpt_path": "a", "weights_path": "b"}), ValueError, r"got both"),
        (lambda: distiller({"ckpt_path": "/nonexistent.ckpt"}), ValueError, r"needs its architecture"),
        (
            lambda: distiller({"model": cnn(), "ckpt_path": "/no.ckpt"}),
            FileNotFoundError,
            r"'/no.ckpt' not found",
        ),
        (lambda: distiller({"model": {"hidden": 3}}), ValueError, r"`teacher.model` needs a `_target_`"),
        (lambda: distiller(3), TypeError, r"`teacher` must be an nn.Module, a checkpoint path or a mapping"),
        (lambda: DistillationModule(m := cnn(), m, [KDLoss()], 4), ValueError, r"are the same module"),
    ],
)
def test_bad_arguments(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_a_classification_module_student_brings_its_settings() -> None:
    sgd = partial(torch.optim.SGD, lr=0.01)
    student = ClassificationModule(cnn(4, 6), num_classes=4, optimizer=sgd, input_shape=SHAPE)
    module = DistillationModule(student, cnn(16, 24), [KDLoss(), AttentionTransferLoss(["2"])])
    assert module.student is student.model and module.num_classes == 4 and module.input_shape == SHAPE
    assert list(module.losses) == ["kd", "at"]
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.01


# --- the distillation benchmark's run log -------------------------------------------------------------------------
def test_benchmark_run_key_changes_with_the_config_and_legacy_rows_are_adopted_only_when_identical() -> None:
    """A recorded run is reused only for the same composed config: a changed T (or preset) reruns it."""
    from benchmarks import distillation as bench

    def job(arm: str, part: str = "mnist1d") -> dict[str, Any]:
        jobs = bench.make_jobs([0], dict(bench.EPOCHS), (4.0,), quick=False)
        return next(j for j in jobs if j["part"] == part and j["arm"] == arm)

    kd2, kd4, alone = job(bench.kd_arm(2.0, 0.9)), job(bench.kd_arm(4.0, 0.9)), job(bench.ALONE)
    assert len({kd2["config"], kd4["config"], alone["config"]}) == 3
    assert kd4["config"] != job(bench.kd_arm(4.0, 0.9), "mnist1d_long")["config"]  # the epochs
    # a term of weight 0 is not trained, so the preset's T does not change the student-alone run
    cfg = bench.compose(bench.KD_PRESET, 0, 15, ["distill.kd.weight=0", "distill.kd.temperature=7"])
    t_digest = bench.teacher_digest("resnet1d", 0, bench.EPOCHS["teacher_resnet1d"])
    assert bench._digest({"student": bench.config_identity(cfg, 15), "teacher": t_digest}) == alone["config"]
    # legacy rows (no digest) are adopted only when their recorded setup and loss terms equal the job's
    jobs = [j for j in bench.make_jobs([0], dict(bench.EPOCHS), (4.0,), quick=False) if j["seed"] == 0]
    t_job = next(j for j in jobs if j["part"] == "teacher" and j["student"] == "resnet1d")
    t_setup = bench.setup_of(
        bench.compose(bench.TEACHERS["resnet1d"][0], 0, t_job["epochs"], []), t_job["epochs"]
    )
    terms, stage1, setup = bench._recorded_terms(kd4)
    legacy_fields = ("part", "student", "seed", "epochs", "teacher_epochs", "quick")
    t_row = {k: t_job[k] for k in legacy_fields} | {"arm": "teacher", "setup": t_setup}
    good = {k: kd4[k] for k in legacy_fields} | {"arm": "KD", "setup": setup, "loss_terms": terms}
    good |= {"stage1_epochs": stage1, "test_acc": 0.5}
    stale = good | {"loss_terms": {"kd": terms["kd"].replace("temperature=4.0", "temperature=8.0")}}
    adopted = bench.adopt_legacy([t_row, stale], jobs)
    assert [r["part"] for r in adopted] == ["teacher"]  # the stale KD row (other T) is not reused
    adopted = bench.adopt_legacy([t_row, good], jobs)
    kd_rows = [r for r in adopted if r["part"] == "mnist1d"]
    assert len(kd_rows) == 1 and kd_rows[0]["arm"] == kd4["arm"] and kd_rows[0]["config"] == kd4["config"]
    # without its teacher's row a student row is not adopted either
    assert bench.adopt_legacy([good], jobs) == []
