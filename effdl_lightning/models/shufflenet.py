"""ShuffleNet v1 (Zhang et al., arXiv 1707.01083) and ShuffleNet v2 (Ma et al., arXiv 1807.11164).

Cost at 3×224×224, 1,000 classes: MACs of convs and the linear layer (``effdl_lightning.measure``;
the ShuffleNet papers' "FLOPs" are multiply-adds, i.e. MACs), measured → paper:

- v1 1×, g = 1, 2, 3, 4, 8: 143.1, 140.8, 137.5, 134.3, 138.4M → 143, 140, 137, 133, 137M (Table 1
  of arXiv 1707.01083; the issue's "about 140M" is this complexity class). 1× g=3 has 1.87M params.
- v1 g=3 at 0.25×, 0.5×, 1.5×, 2×: 13.3, 37.6, 292.4, 524.0M → 13, 38, 292, 524M (Table 2 / the
  reference code's README).
- v2 0.5×, 1×, 1.5×, 2×: 40.5, 144.9, 295.8, 583.3M → 41, 146, 299, 591M; params 1.37, 2.28, 3.50,
  7.39M → 1.4, 2.3, 3.5, 7.4M (Table 5 of arXiv 1807.11164).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.blocks import (
    ChannelShuffle,
    ConvBnAct,
    ConvClassifier,
    image_shape,
    use_small_input,
)
from effdl_lightning.models.registry import register_model

# Table 1 of arXiv 1707.01083: output channels of stages 2-4 of ShuffleNet 1× for each group count g.
SHUFFLENET_V1_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
SHUFFLENET_V1_REPEATS = (4, 8, 4)

# Table 5 of arXiv 1807.11164: output channels of stages 2-4 and conv5 for each width.
SHUFFLENET_V2_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
SHUFFLENET_V2_REPEATS = (4, 8, 4)


def _stem(in_chans: int, out_chs: int, small: bool) -> nn.Sequential:
    """3×3 conv (stride 2) + 3×3 max-pool (stride 2); the small-input stem keeps both at stride 1/none."""
    if small:
        return nn.Sequential(ConvBnAct(in_chans, out_chs, 3, 1))
    return nn.Sequential(ConvBnAct(in_chans, out_chs, 3, 2), nn.MaxPool2d(3, 2, 1))


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit (Fig. 2b/c of arXiv 1707.01083).

    1×1 group conv → BN-ReLU → channel shuffle → 3×3 depthwise (stride) → BN → 1×1 group conv → BN, then
    ``ReLU(x + branch)`` at stride 1, or ``ReLU(concat(avgpool3×3(x), branch))`` at stride 2, where the
    branch then outputs ``out_chs - in_chs`` channels. The bottleneck has ``out_chs / 4`` channels.

    Args:
        first_group: the first 1×1 conv is grouped (False for stage 2's first unit, whose input is small).
    """

    def __init__(self, in_chs: int, out_chs: int, groups: int, stride: int, first_group: bool = True) -> None:
        super().__init__()
        self.stride = stride
        mid = out_chs // 4
        branch_out = out_chs - in_chs if stride == 2 else out_chs
        g1 = groups if first_group else 1
        self.conv_pw = ConvBnAct(in_chs, mid, 1, groups=g1, act="relu")
        self.shuffle = ChannelShuffle(groups) if g1 > 1 else nn.Identity()
        self.conv_dw = ConvBnAct(mid, mid, 3, stride, groups=mid, act=None)
        self.conv_pwl = ConvBnAct(mid, branch_out, 1, groups=groups, act=None)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.shuffle(self.conv_pw(x))))
        out = torch.cat((self.pool(x), out), 1) if self.stride == 2 else x + out
        return self.act(out)


class ShuffleV2Unit(nn.Module):
    """ShuffleNet v2 unit (Fig. 3c/d of arXiv 1807.11164).

    Stride 1: split the channels in halves; one half passes unchanged, the other goes through
    1×1 conv-BN-ReLU → 3×3 depthwise-BN → 1×1 conv-BN-ReLU (equal widths: G1; no group conv: G2); concat;
    shuffle with 2 groups. Stride 2: no split; a second branch (3×3 depthwise s2-BN → 1×1 conv-BN-ReLU)
    replaces the identity, so the channel count doubles.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_chs // 2
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f"a stride-1 ShuffleNet v2 unit keeps its width; got {in_chs} -> {out_chs}")
        branch_in = in_chs if stride == 2 else in_chs // 2
        if stride == 2:
            self.branch1: nn.Module = nn.Sequential(
                ConvBnAct(in_chs, in_chs, 3, 2, groups=in_chs, act=None), ConvBnAct(in_chs, half, 1)
            )
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            ConvBnAct(branch_in, half, 1),
            ConvBnAct(half, half, 3, stride, groups=half, act=None),
            ConvBnAct(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return self.shuffle(out)


@register_model("shufflenet_v1", default_input_shape=(3, 32, 32), default_num_classes=10)
class ShuffleNetV1(ConvClassifier):
    """ShuffleNet v1: pointwise group convolutions + channel shuffle (arXiv 1707.01083).

    Stem (3×3 conv s2, 24 channels; 3×3 max-pool s2), stages 2-4 of 4/8/4 units (the first of each at
    stride 2), global pool, linear. "ShuffleNet s×" scales every layer's channels by s; here stage widths
    are rounded to multiples of 4g (bottleneck = width / 4 must split into g groups); the stem keeps 24
    channels for 1 ≤ s < 2 as the reference code does, else 24·s rounded to a multiple of lcm(g, 4).
    The paper's 0.25×/0.5×/1×/1.5×/2× widths are kept exactly.

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels.
        groups: g, the groups of the 1×1 convs (1, 2, 3, 4 or 8 as in Table 1).
        scale: the width factor s.
        small_input: small-input stem (stem conv at stride 1, no max-pool; overall stride 8);
            ``None`` chooses it when the shorter side is under 64 px.
        dropout: dropout before the classifier (none in the paper).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        groups: int = 3,
        scale: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        if groups not in SHUFFLENET_V1_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(SHUFFLENET_V1_CHANNELS)}, got {groups}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        widths = [_round_to(c * scale, 4 * groups) for c in SHUFFLENET_V1_CHANNELS[groups]]
        # Reference code (megvii ShuffleNet-Series): stem 12 at 0.5x, 24 at 1x and 1.5x, 48 at 2x.
        stem_chs = 24 if 1.0 <= scale < 2.0 else _round_to(24 * scale, math.lcm(groups, 4))
        units: list[nn.Module] = []
        in_chs = stem_chs
        for stage, (width, repeats) in enumerate(zip(widths, SHUFFLENET_V1_REPEATS, strict=True)):
            for i in range(repeats):
                first_group = not (stage == 0 and i == 0)
                units.append(ShuffleV1Unit(in_chs, width, groups, 2 if i == 0 else 1, first_group))
                in_chs = width
        stages = nn.Sequential(*units)
        super().__init__(
            _stem(in_chans, stem_chs, small), stages, nn.Identity(), in_chs, num_classes, dropout
        )
        self.groups = groups
        self.scale = scale
        self.small_input = small


@register_model("shufflenet_v2", default_input_shape=(3, 32, 32), default_num_classes=10)
class ShuffleNetV2(ConvClassifier):
    """ShuffleNet v2: channel split + shuffle, designed by measured speed (arXiv 1807.11164).

    Stem (3×3 conv s2, 24 channels; max-pool s2), stages 2-4 of 4/8/4 units, conv5 (1×1), global pool,
    linear; widths from Table 5 (0.5×, 1×, 1.5×, 2×).

    Args:
        num_classes: classifier outputs.
        input_shape: ``(C, H, W)``; C sets the stem's input channels.
        width_mult: 0.5, 1.0, 1.5 or 2.0.
        small_input: small-input stem (stem conv at stride 1, no max-pool; overall stride 8);
            ``None`` chooses it when the shorter side is under 64 px.
        dropout: dropout before the classifier (the paper's 2× model uses some; default none).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224),
        width_mult: float = 1.0,
        small_input: bool | None = None,
        dropout: float = 0.0,
    ) -> None:
        if width_mult not in SHUFFLENET_V2_CHANNELS:
            raise ValueError(f"width_mult must be one of {sorted(SHUFFLENET_V2_CHANNELS)}, got {width_mult}")
        in_chans, _, _ = image_shape(input_shape)
        small = use_small_input(small_input, input_shape)
        *widths, num_features = SHUFFLENET_V2_CHANNELS[width_mult]
        units: list[nn.Module] = []
        in_chs = 24
        for width, repeats in zip(widths, SHUFFLENET_V2_REPEATS, strict=True):
            for i in range(repeats):
                units.append(ShuffleV2Unit(in_chs, width, 2 if i == 0 else 1))
                in_chs = width
        head = ConvBnAct(in_chs, num_features, 1)
        stages = nn.Sequential(*units)
        super().__init__(_stem(in_chans, 24, small), stages, head, num_features, num_classes, dropout)
        self.width_mult = width_mult
        self.small_input = small


def _round_to(value: float, multiple: int) -> int:
    """Nearest positive multiple of ``multiple``."""
    return max(multiple, round(value / multiple) * multiple)
