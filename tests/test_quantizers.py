"""Fake quantizers and their straight-through gradients against hand-computed values and torch's own ops."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from effdl_lightning.core.quant import (
    AffineQuantizer,
    BinaryConnectQuantizer,
    BinaryNetQuantizer,
    DoReFaActivationQuantizer,
    DoReFaGradientQuantizer,
    DoReFaWeightQuantizer,
    FakeQuantizer,
    affine_qparams,
    binaryconnect,
    binarynet_sign,
    build_quantizer,
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    fake_quantize_affine,
    quantize_k,
    round_ste,
)

T = torch.tensor
FQ = fake_quantize_affine


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grad_of(fn: Any, x: Tensor, upstream: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fn(x), d<fn(x), upstream>/dx)."""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    assert x.grad is not None
    return y.detach(), x.grad


def test_round_ste_rounds_half_to_even_with_identity_gradient() -> None:
    y, g = grad_of(round_ste, T([-1.5, -0.5, 0.5, 1.5, 2.5, 0.7]), T([1.0, 2, 3, 4, 5, 6]))
    assert torch.equal(y, T([-2.0, 0, 0, 2, 2, 1]))
    assert torch.equal(g, T([1.0, 2, 3, 4, 5, 6]))


def test_fake_quantize_affine_by_hand() -> None:
    # s = 0.5, z = 2, [0, 7]: x/s = [-4, -2, -0.52, 0.6, 2.5, 4.8, 6] -> round [-4, -2, -1, 1, 2 (half to even),
    # 5, 6] -> +z [-2, 0, 1, 3, 4, 7, 8] -> clamp [0, 0, 1, 3, 4, 7, 7] -> (q - z)·s
    y, g = grad_of(lambda v: fake_quantize_affine(v, 0.5, 2, 0, 7), T([-2.0, -1, -0.26, 0.3, 1.25, 2.4, 3]))
    assert torch.equal(y, T([-1.0, -1, -0.5, 0.5, 1, 2.5, 2.5]))
    assert torch.equal(g, T([0.0, 1, 1, 1, 1, 1, 0]))  # STE cancelled where round(x/s)+z is out of [0, 7]


def test_lsq_scale_gradient_by_hand() -> None:
    # s = 0.4, z = 0, [-2, 1], x = [0.3, 1.0, -2.0]: x/s = [0.75, 2.5, -5] -> round [1, 2, -5]
    # ∂x̂/∂s = [round(0.75) - 0.75 = 0.25 (inside), qmax - z = 1 (above), qmin - z = -2 (below)]
    # with upstream [1, 2, 3]: 0.25 + 2 - 6 = -3.75, times g = 1/sqrt(N·qmax) = 1/sqrt(3)
    s = T(0.4, requires_grad=True)
    x = T([0.3, 1.0, -2.0], requires_grad=True)
    y = fake_quantize_affine(x, s, 0, -2, 1)
    y.backward(T([1.0, 2, 3]))
    torch.testing.assert_close(y.detach(), T([0.4, 0.4, -0.8]))
    torch.testing.assert_close(s.grad, T(-3.75 / math.sqrt(3)))
    assert x.grad is not None and torch.equal(x.grad, T([1.0, 0, 0]))
    # per channel, one element per scale (N = 1, g = 1): the same ∂x̂/∂s per element
    sc = T([0.4, 0.4, 0.4], requires_grad=True)
    fake_quantize_affine(x.detach(), sc, torch.zeros(3, dtype=torch.int64), -2, 1, axis=0).backward(
        T([1.0, 2, 3])
    )
    torch.testing.assert_close(sc.grad, T([0.25, 2.0, -6.0]))


def test_lsq_matches_torch_learnable_fake_quantize() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5)
    up = torch.randn(3, 4, 5)
    s1, s2 = T([0.05], requires_grad=True), T([0.05], requires_grad=True)
    fake_quantize_affine(x, s1, 3, -8, 7).backward(up)
    zp = T([3.0], requires_grad=True)
    gf = 1 / math.sqrt(x.numel() * 7)
    torch._fake_quantize_learnable_per_tensor_affine(x, s2, zp, -8, 7, gf).backward(up)
    torch.testing.assert_close(s1.grad, s2.grad)
    c1 = (torch.rand(4) * 0.1 + 0.01).requires_grad_(True)
    c2 = c1.detach().clone().requires_grad_(True)
    fake_quantize_affine(x, c1, torch.zeros(4, dtype=torch.int64), -8, 7, axis=1).backward(up)
    gf = 1 / math.sqrt(x.numel() // 4 * 7)
    z2 = torch.zeros(4, requires_grad=True)
    torch._fake_quantize_learnable_per_channel_affine(x, c2, z2, 1, -8, 7, gf).backward(up)
    torch.testing.assert_close(c1.grad, c2.grad)


def test_fake_quantize_affine_is_bit_exact_with_torch() -> None:
    g0 = gen(0)
    for _ in range(20):
        x = torch.randn(4, 6, 5, generator=g0) * 3
        s = float(torch.rand((), generator=g0)) * 0.1 + 1e-3
        zp = int(torch.randint(0, 256, (), generator=g0))
        x[0, 0, :3] = T([2.5, -0.5, 7.5]) * s  # ties
        ref = torch.fake_quantize_per_tensor_affine(x, s, zp, 0, 255)
        assert torch.equal(fake_quantize_affine(x, s, zp, 0, 255), ref)
        st, zt = T([s]), T([zp], dtype=torch.int32)
        ref = torch.fake_quantize_per_tensor_affine(x, st, zt, 0, 255)
        assert torch.equal(fake_quantize_affine(x, st, zt, 0, 255), ref)
        for axis in (0, 1, 2):
            sc = torch.rand(x.shape[axis], generator=g0) * 0.1 + 1e-3
            zc = torch.randint(-10, 10, (x.shape[axis],), generator=g0, dtype=torch.int32)
            x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            a = fake_quantize_affine(x1, sc, zc, -128, 127, axis=axis)
            b = torch.fake_quantize_per_channel_affine(x2, sc, zc, axis, -128, 127)
            assert torch.equal(a, b)
            a.sum().backward()
            b.sum().backward()
            assert x1.grad is not None and x2.grad is not None and torch.equal(x1.grad, x2.grad)


def test_affine_qparams_by_hand_and_against_torch_ao() -> None:
    # [-1, 3] on [0, 255]: s = 4/255, z = 0 - round(-1/s) = round(63.75) = 64
    s, z = affine_qparams(-1.0, 3.0, 0, 255, symmetric=False)
    torch.testing.assert_close(s, T(4 / 255))
    assert z.item() == 64 and z.dtype == torch.int64
    s, z = affine_qparams(-1.0, 3.0, -127, 127, symmetric=True)  # s = max(1, 3)/127, z = 0
    torch.testing.assert_close(s, T(3 / 127))
    assert z.item() == 0
    s, z = affine_qparams(-1.0, 3.0, 0, 255, symmetric=True)  # unsigned symmetric: s = 3/127.5, z = 128
    torch.testing.assert_close(s, T(3 / 127.5))
    assert z.item() == 128
    s, z = affine_qparams(0.5, 2.0, 0, 255, symmetric=False)  # the range is widened to include 0
    torch.testing.assert_close(s, T(2 / 255))
    assert z.item() == 0
    s, _ = affine_qparams(0.0, 0.0, 0, 255, symmetric=False)
    assert s.item() == torch.finfo(torch.float32).eps

    from torch.ao.quantization.observer import MinMaxObserver

    x = torch.randn(100, generator=gen(1)) + 0.3
    for qscheme, dtype, lo, hi, custom in [
        (torch.per_tensor_affine, torch.quint8, 0, 255, True),
        (torch.per_tensor_symmetric, torch.qint8, -127, 127, True),
        (torch.per_tensor_symmetric, torch.quint8, 0, 255, False),  # torch.ao's default quint8: z = 128
    ]:
        qrange = {"quant_min": lo, "quant_max": hi} if custom else {}
        obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, **qrange)
        obs(x)
        ref_s, ref_z = obs.calculate_qparams()
        s, z = affine_qparams(x.min(), x.max(), lo, hi, symmetric=qscheme == torch.per_tensor_symmetric)
        assert torch.equal(s, ref_s.reshape(())) and z.item() == ref_z.item()


def test_quantize_k_by_hand() -> None:
    # k = 2: 3r = [0, 0.3, 1.5, 1.8, 3] -> round [0, 0, 2, 2, 3] -> /3
    y, g = grad_of(lambda r: quantize_k(r, 2), T([0.0, 0.1, 0.5, 0.6, 1.0]))
    torch.testing.assert_close(y, T([0.0, 0, 2 / 3, 2 / 3, 1]), rtol=0, atol=1e-7)
    assert torch.equal(g, torch.ones(5))


def test_dorefa_weight_by_hand() -> None:
    # k = 2, w = [-1, -0.3, 0, 0.5, 2]: tanh = [-0.7616, -0.2913, 0, 0.4621, 0.9640], max|tanh| = 0.9640
    # tanh/(2·0.9640) + 1/2 = [0.1050, 0.3489, 0.5, 0.7397, 1]; ·3 = [0.315, 1.047, 1.5, 2.219, 3]
    # round -> [0, 1, 2, 2, 3]; 2·q/3 - 1 = [-1, -1/3, 1/3, 1/3, 1]
    w = T([-1.0, -0.3, 0.0, 0.5, 2.0])
    up = T([1.0, 2, 3, 4, 5])
    y, g = grad_of(lambda v: dorefa_weight(v, 2), w, up)
    torch.testing.assert_close(y, T([-1.0, -1 / 3, 1 / 3, 1 / 3, 1]))
    # only the rounding is straight-through: the gradient is that of 2·(tanh w/(2 max|tanh w|) + 1/2) - 1
    _, ref = grad_of(lambda v: torch.tanh(v) / torch.tanh(v).abs().max(), w, up)
    torch.testing.assert_close(g, ref)
    # away from the max, d/dw_i = (1 - tanh² w_i)/max|tanh w| (the -1 entry is not the max)
    m = math.tanh(2.0)
    torch.testing.assert_close(g[0], T((1 - math.tanh(-1.0) ** 2) / m))
    # k = 1: sign(w)·E|w| with E|w| = (2 + 0 + 0.5 + 1.5)/4 = 1, sign(0) = +1, identity gradient
    y, g = grad_of(lambda v: dorefa_weight(v, 1), T([-2.0, 0.0, 0.5, 1.5]), up[:4])
    assert torch.equal(y, T([-1.0, 1, 1, 1])) and torch.equal(g, up[:4])
    assert dorefa_weight(w, 32) is w


def test_dorefa_activation_by_hand() -> None:
    # k = 2: clip -> [0, 0.2, 0.5, 0.9, 1]; ·3 = [0, 0.6, 1.5, 2.7, 3] -> round [0, 1, 2, 3, 3] -> /3
    y, g = grad_of(lambda v: dorefa_activation(v, 2), T([-0.5, 0.2, 0.5, 0.9, 1.5]))
    torch.testing.assert_close(y, T([0.0, 1 / 3, 2 / 3, 1, 1]), rtol=0, atol=1e-7)
    assert torch.equal(g, T([0.0, 1, 1, 1, 0]))  # the clip's gradient: 0 outside [0, 1]
    x = T([-3.0, 5.0])
    assert dorefa_activation(x, 32) is x


def test_dorefa_gradient_against_the_formula() -> None:
    k, n = 3, 7.0
    dr = T([[0.2, -0.4, 0.1], [0.0, 0.0, 0.0], [3.0, 1.0, -0.5]])  # the all-zero sample keeps a zero gradient
    y, g = grad_of(lambda v: dorefa_gradient(v, k, generator=gen(5)), torch.ones(3, 3), dr)
    assert torch.equal(y, torch.ones(3, 3))
    u = torch.rand(3, 3, generator=gen(5))
    m = dr.abs().amax(dim=1, keepdim=True)  # per sample: [0.4, 0, 3]
    safe = torch.where(m > 0, m, 1.0)
    expected = 2 * m * (torch.round((dr / (2 * safe) + 0.5 + (u - 0.5) / n) * n) / n - 0.5)
    torch.testing.assert_close(g, expected)
    assert torch.equal(g[1], torch.zeros(3))
    # values on the grid 2m(j/n - 1/2) and unbiased: E[quantized] = dr
    j = (g[[0, 2]] / (2 * m[[0, 2]]) + 0.5) * n
    torch.testing.assert_close(j, j.round())
    big = dr[[0]].expand(20000, 3)
    _, g = grad_of(lambda v: dorefa_gradient(v, 2, gen(0)), torch.zeros(20000, 3), big)
    torch.testing.assert_close(g.mean(0), dr[0], rtol=0, atol=0.01)


def test_binaryconnect_deterministic_and_stochastic() -> None:
    up = T([1.0, 2, 3, 4])
    y, g = grad_of(binaryconnect, T([-0.5, 0.0, 0.3, -2.0]), up)
    assert torch.equal(y, T([-1.0, 1, 1, -1])) and torch.equal(g, up)  # identity, even where |w| > 1
    # hard sigmoid p = [0, 0, 1, 1]: the draw cannot change these
    y, g = grad_of(lambda v: binaryconnect(v, stochastic=True), T([-2.0, -1.0, 1.0, 2.0]), up)
    assert torch.equal(y, T([-1.0, -1, 1, 1])) and torch.equal(g, up)
    w = T([-0.5, 0.0, 0.5])
    y = binaryconnect(w, stochastic=True, generator=gen(3))
    u = torch.rand(3, generator=gen(3))
    assert torch.equal(y, torch.where(u < (w + 1) / 2, 1.0, -1.0))
    mean = binaryconnect(torch.full((20000,), 0.5), stochastic=True).mean()  # 2·0.75 - 1
    assert abs(mean.item() - 0.5) < 0.03


def test_binarynet_sign_cancels_gradient_outside_unit_interval() -> None:
    y, g = grad_of(binarynet_sign, T([-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 2.0]))
    assert torch.equal(y, T([-1.0, -1, -1, 1, 1, 1, 1]))
    assert torch.equal(g, T([0.0, 1, 1, 1, 1, 1, 0]))


# ------------------------------------------------------------------------------------------- modules


def test_affine_quantizer_per_tensor_by_hand() -> None:
    q = AffineQuantizer()  # uint8, minmax: [-1, 3] -> s = 4/255, z = 64
    x = T([-1.0, 0.0, 3.0])
    y = q(x)
    assert (q.qmin, q.qmax, q.axis, q.code_range) == (0, 255, None, (0, 255))
    s, z = q.qparams()
    torch.testing.assert_close(s, T(4 / 255))
    assert z.item() == 64
    # x/s = [-63.75, 0, 191.25] -> round [-64, 0, 191] -> codes [0, 64, 255]
    assert torch.equal(q.codes(x), T([0, 64, 255]))
    torch.testing.assert_close(y, T([-64.0, 0, 191]) * 4 / 255)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, s.item(), 64, 0, 255))


def test_affine_quantizer_per_channel_symmetric_by_hand() -> None:
    q = AffineQuantizer(bits=8, symmetric=True, channels=2, axis=0)
    w = T([[-1.0, 0.4, 0.25], [0.1, -0.2, 0.6]])
    y = q(w)
    assert (q.qmin, q.qmax, q.axis) == (-127, 127, 0)  # narrow int8 range
    s, z = q.qparams()
    torch.testing.assert_close(s, T([1 / 127, 0.6 / 127]))
    assert torch.equal(z, T([0, 0]))
    # row 0: w·127 = [-127, 50.8, 31.75]; row 1: w·127/0.6 = [21.17, -42.33, 127]
    codes = T([[-127, 51, 32], [21, -42, 127]])
    assert torch.equal(q.codes(w), codes)
    torch.testing.assert_close(y, codes * s[:, None])
    assert torch.equal(y, torch.fake_quantize_per_channel_affine(w, s, z.int(), 0, -127, 127))
    q1 = AffineQuantizer(bits=4, symmetric=True, channels=3, axis=1)  # [-7, 7], one scale per column
    q1(w)
    torch.testing.assert_close(q1.qparams()[0], T([1.0, 0.4, 0.6]) / 7)


@pytest.mark.parametrize(
    ("kwargs", "qrange"),
    [
        ({"bits": 8, "symmetric": True}, (-127, 127)),
        ({"bits": 8, "signed": True}, (-128, 127)),
        ({"bits": 4}, (0, 15)),
        ({"bits": 8, "symmetric": True, "signed": False}, (0, 255)),
    ],
)
def test_affine_quantizer_ranges(kwargs: dict[str, Any], qrange: tuple[int, int]) -> None:
    assert AffineQuantizer(**kwargs).code_range == qrange


def test_affine_quantizer_observation_rules() -> None:
    q = AffineQuantizer(observer="ema", averaging_constant=0.5)
    q(T([-1.0, 2.0]))  # the first batch initializes
    q(T([-3.0, 4.0]))  # m <- m + 0.5·(batch - m): [-2, 3]
    assert (q.min_val.item(), q.max_val.item()) == (-2.0, 3.0)
    torch.testing.assert_close(q.qparams()[0], T(5 / 255))
    q.eval()
    q(T([-10.0, 10.0]))  # eval: no observation once initialized
    assert q.max_val.item() == 3.0
    q.train()
    q.freeze()
    q(T([-10.0, 10.0]))
    assert q.max_val.item() == 3.0 and not q.observing
    q.unfreeze()
    q(T([-2.0, 5.0]))
    assert q.max_val.item() == 4.0
    fresh = AffineQuantizer().eval()
    fresh.freeze()
    fresh(T([-1.0, 3.0]))  # never initialized: observes even in eval and frozen
    assert bool(fresh.initialized) and fresh.max_val.item() == 3.0
    w = AffineQuantizer(symmetric=True)  # minmax: the range of the current tensor on every training forward
    w(T([-1.0, 1.0]))
    w(T([-0.5, 0.25]))
    assert (w.min_val.item(), w.max_val.item()) == (-0.5, 0.25)


def test_affine_quantizer_learned_scale() -> None:
    q = AffineQuantizer(bits=2, symmetric=True, learn_scale=True, signed=True)  # [-1, 1]
    x = T([0.3, 1.0, -2.0])
    q(x)  # initialized from the range: s = 2 / ((1 - -1)/2) = 2
    assert isinstance(q.scale, torch.nn.Parameter)
    torch.testing.assert_close(q.scale.detach(), T(2.0))
    with torch.no_grad():
        q.scale.fill_(0.4)
    q(x).backward(T([1.0, 2, 3]))
    # x/s = [0.75, 2.5, -5] -> round [1, 2, -5]: ∂/∂s = [0.25, qmax=1, qmin=-1] -> (0.25 + 2 - 3)/sqrt(3·1)
    assert q.scale.grad is not None
    torch.testing.assert_close(q.scale.grad, T(-0.75 / math.sqrt(3)))
    q(T([-50.0, 50.0]))  # training, but a learned scale is not re-observed
    assert q.scale.item() == pytest.approx(0.4)


def test_disabled_quantizer_returns_its_input() -> None:
    for q in (AffineQuantizer(), DoReFaWeightQuantizer(2), BinaryNetQuantizer()):
        q.enabled = False
        x = torch.randn(3)
        assert q(x) is x


def test_binaryconnect_quantizer_test_time_rules() -> None:
    w = T([-0.5, 0.0, 0.3, -2.0])
    det, sto = BinaryConnectQuantizer(), BinaryConnectQuantizer(stochastic=True)
    assert torch.equal(det(w), T([-1.0, 1, 1, -1])) and torch.equal(det.eval()(w), T([-1.0, 1, 1, -1]))
    assert torch.equal(sto.eval()(w), w)  # stochastic: the real-valued weights at test time
    assert torch.equal(sto.train()(T([-2.0, 2.0])), T([-1.0, 1.0]))


def test_dorefa_gradient_quantizer_uses_global_rng() -> None:
    q = DoReFaGradientQuantizer(bits=2)
    dr = T([[0.2, -0.4, 0.1], [3.0, 1.0, -0.5]])
    torch.manual_seed(11)
    y, g = grad_of(q, torch.zeros(2, 3), dr)
    _, ref = grad_of(lambda v: dorefa_gradient(v, 2, gen(11)), torch.zeros(2, 3), dr)
    assert torch.equal(y, torch.zeros(2, 3)) and torch.equal(g, ref)
    _, g32 = grad_of(DoReFaGradientQuantizer(bits=32), torch.zeros(2, 3), dr)
    assert torch.equal(g32, dr)


CONFIGS: list[dict[str, Any]] = [
    {"type": "AffineQuantizer", "bits": 8, "symmetric": True, "channels": 3, "axis": 0},
    {"type": "AffineQuantizer", "bits": 4, "observer": "ema", "averaging_constant": 0.1},
    {"type": "AffineQuantizer", "bits": 4, "symmetric": True, "channels": 3, "learn_scale": True},
    {"type": "AffineQuantizer", "bits": 6, "channels": 4, "axis": 1},
    {"type": "DoReFaWeightQuantizer", "bits": 1},
    {"type": "DoReFaWeightQuantizer", "bits": 2},
    {"type": "DoReFaWeightQuantizer", "bits": 5},
    {"type": "DoReFaActivationQuantizer", "bits": 2},
    {"type": "BinaryConnectQuantizer", "stochastic": False},
    {"type": "BinaryNetQuantizer"},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['type']}-{c.get('bits', '')}")
def test_config_round_trip_and_codes(cfg: dict[str, Any]) -> None:
    q = build_quantizer(cfg)
    assert isinstance(q, FakeQuantizer)
    w = torch.randn(3, 4, generator=gen(0))
    q(w)
    q(w * 1.5)  # moves the observed ranges (and the DoReFa 1-bit scale) away from their initial values
    config = q.config()
    assert config["type"] == cfg["type"] and all(config[k] == v for k, v in cfg.items())
    twin = build_quantizer(json.loads(json.dumps(config)))
    twin.load_state_dict(q.state_dict())
    q.eval()
    twin.eval()
    assert torch.equal(twin(w), q(w))
    codes = q.codes(w)
    lo, hi = q.code_range
    assert codes.dtype == torch.int64 and codes.min() >= lo and codes.max() <= hi
    assert torch.equal(q.decode(codes), q(w))


def test_dorefa_weight_codes_by_hand() -> None:
    q = DoReFaWeightQuantizer(2)
    assert torch.equal(q.codes(T([-1.0, -0.3, 0.0, 0.5, 2.0])), T([0, 1, 2, 2, 3]))  # see the hand example
    assert DoReFaWeightQuantizer(1).has_scale and not q.has_scale


@pytest.mark.parametrize(
    "quantizer",
    [DoReFaGradientQuantizer(2), DoReFaWeightQuantizer(32), BinaryConnectQuantizer(stochastic=True)],
    ids=["gradient", "dorefa-32", "binaryconnect-stochastic"],
)
def test_no_codes(quantizer: FakeQuantizer) -> None:
    with pytest.raises(NotImplementedError):
        quantizer.codes(torch.ones(2))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AffineQuantizer(bits=1), r"`bits` must be an int in \[2, 16\], got 1"),
        (lambda: AffineQuantizer(bits=17), r"`bits` must be an int in \[2, 16\], got 17"),
        (lambda: AffineQuantizer(bits=True), r"`bits` .* got True"),
        (lambda: AffineQuantizer(symmetric=1), r"`symmetric` must be a bool .* got 1"),
        (lambda: AffineQuantizer(channels=0), r"`channels` must be an int >= 1, got 0"),
        (lambda: AffineQuantizer(axis=-1), r"`axis` must be an int >= 0, got -1"),
        (lambda: AffineQuantizer(observer="max"), r"`observer` must be one of .*, got 'max'"),
        (lambda: AffineQuantizer(averaging_constant=0.0), r"`averaging_constant` .* \(0, 1\], got 0.0"),
        (lambda: AffineQuantizer(averaging_constant=1.5), r"`averaging_constant` .* \(0, 1\], got 1.5"),
        (lambda: AffineQuantizer(learn_scale="yes"), r"`learn_scale` must be a bool .* got 'yes'"),
        (lambda: AffineQuantizer(signed=0), r"`signed` must be a bool .* got 0"),
        (lambda: AffineQuantizer(channels=2)(torch.ones(3, 2)), r"expected 2 channels along axis 0"),
        (lambda: DoReFaWeightQuantizer(0), r"`bits` must be an int in \[1, 32\], got 0"),
        (lambda: DoReFaActivationQuantizer(33), r"`bits` must be an int in \[1, 32\], got 33"),
        (lambda: DoReFaGradientQuantizer(2.0), r"`bits` must be an int in \[1, 32\], got 2.0"),
        (lambda: BinaryConnectQuantizer(stochastic=None), r"`stochastic` must be a bool .* got None"),
        (lambda: build_quantizer({"type": "Nope"}), r"type 'Nope'; registered: .*BinaryNet"),
        (lambda: build_quantizer({"type": "BinaryNetQuantizer", "bits": 1}), r"argument\(s\) \['bits'\]"),
        (lambda: FQ(torch.ones(2), 1.0, 0, 5, 5), r"`qmin` must be < `qmax`, got qmin=5"),
        (lambda: FQ(torch.ones(2, 3), torch.ones(2), 0, 0, 7, axis=1), r"must hold 3 values"),
        (lambda: FQ(torch.ones(2), torch.ones(2), 0, 0, 7), r"per-tensor `scale` must hold one"),
        (lambda: FQ(torch.ones(2), 1.0, 0, 0, 7, axis=2), r"`axis` must be None or an int in"),
        (lambda: FQ(torch.ones(2), T(1.0, requires_grad=True), 0, -3, 0), r"needs `qmax` > 0"),
        (lambda: quantize_k(torch.ones(2), 0), r"`k` must be an int in \[1, 32\], got 0"),
        (lambda: binaryconnect(torch.ones(2), stochastic=1), r"`stochastic` must be a bool .* got 1"),
    ],
)
def test_validation(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_binary_magnitude_h_scales_values_probabilities_and_the_cancelled_gradient() -> None:
    h = 0.1
    w = torch.tensor([-0.05, 0.0, 0.02, 0.1, -0.1], requires_grad=True)
    # deterministic: +-H by sign (0 -> +H); identity gradient
    out = binaryconnect(w, h=h)
    assert out.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1, -0.1])
    out.sum().backward()
    assert w.grad is not None and w.grad.tolist() == [1.0] * 5
    # stochastic: P(+H) = clip((w/H + 1)/2, 0, 1): w = +H -> always +H, w = -H -> always -H
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([binaryconnect(w.detach(), stochastic=True, generator=g, h=h) for _ in range(2000)])
    assert bool((draws[:, 3] == draws[0, 3]).all()) and float(draws[0, 3]) == pytest.approx(0.1)
    assert bool((draws[:, 4] == draws[0, 4]).all()) and float(draws[0, 4]) == pytest.approx(-0.1)
    # w = -0.05 = -H/2 -> P(+H) = (-0.5 + 1)/2 = 0.25; w = 0.02 -> (0.2 + 1)/2 = 0.6
    assert float((draws[:, 0] > 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert float((draws[:, 2] > 0).float().mean()) == pytest.approx(0.6, abs=0.03)
    # BinaryNet at H: +-H forward, gradient kept only where |x| <= H
    x = torch.tensor([-0.2, 0.05, 0.15, -0.1], requires_grad=True)
    y = binarynet_sign(x, h)
    assert y.tolist() == pytest.approx([-0.1, 0.1, 0.1, -0.1])
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 0.0, 1.0]
    # quantizers carry H in their config and decode codes to +-H
    for q in (BinaryConnectQuantizer(h=h), BinaryNetQuantizer(h=h)):
        rebuilt = build_quantizer(q.config())
        assert rebuilt.config()["h"] == h
        assert rebuilt.decode(rebuilt.codes(w.detach())).tolist() == pytest.approx(
            [-0.1, 0.1, 0.1, 0.1, -0.1]
        )
    with pytest.raises(ValueError, match="`h` must be a float > 0, got 0"):
        BinaryNetQuantizer(h=0)
