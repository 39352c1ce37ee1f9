"""A small multi-scale dense network with early exits (Huang et al. 2018, MSDNet, arXiv 1703.09844).

MSDNet keeps feature maps at ``S`` scales through the whole network. The first layer builds them with a 3×3
conv at full resolution and strided 3×3 convs down the scales. Each later layer ``l`` adds, densely (by
concatenation), new features at every scale ``s``::

    x^1_l = [x^1_{l-1}, h(x^1_{l-1})]
    x^s_l = [x^s_{l-1}, h(x^s_{l-1}), h̃(x^{s-1}_{l-1})]      (s > 1; h̃ is a strided conv)

so coarse features, which classifiers need, exist from the first layer on. After each block of ``step``
layers a classifier reads the coarsest scale (two strided 3×3 convs, global pooling, linear), giving one exit
per block. Between blocks 1×1 transition convs compress the channels, and near the end a layer drops the
finest scale whose new features could no longer reach the coarsest one before the last classifier (§4,
"network reduction"; the rule of the authors' code with ``prune='min'``), so that every layer serves an
exit. Sized here for 28×28 MNIST on a CPU: 3 scales (28, 14, 7), 3 blocks of 2 layers.

The model supports staged inference for early exit: ``num_exits`` and ``forward_stage(i, state)``, where the
state is the list of per-scale feature maps (see ``effdl_lightning.core.dynamic``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from effdl_lightning.models.registry import register_model

__all__ = ["MSDNet", "msdnet"]

_OUTPUTS = ("all", "last", "mean")


class _ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class _FirstLayer(nn.Module):
    """``x -> [x^1, ..., x^S]``: a 3×3 conv, then one strided 3×3 conv per coarser scale."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        convs = [_ConvBNReLU(in_channels, channels[0])]
        convs += [_ConvBNReLU(channels[s - 1], channels[s], stride=2) for s in range(1, len(channels))]
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for conv in self.convs:
            x = conv(x)
            features.append(x)
        return features


class _MSDLayer(nn.Module):
    """One dense multi-scale layer on the scales present; drops the ``drop`` finest ones from its output.

    Output scale ``j`` (input indexing, ``j >= drop``) is ``[x_j, h(x_j), h̃(x_{j-1})]`` with half the growth
    from each conv, or ``[x_j, h(x_j)]`` with the full growth when no finer scale is present.
    """

    def __init__(self, in_channels: Sequence[int], growth: Sequence[int], drop: int = 0) -> None:
        super().__init__()
        self.drop = drop
        scales = range(drop, len(in_channels))
        self.regular = nn.ModuleList(
            _ConvBNReLU(in_channels[j], growth[j] if j == 0 else growth[j] // 2) for j in scales
        )
        self.strided = nn.ModuleList(
            _ConvBNReLU(in_channels[j - 1], growth[j] - growth[j] // 2, stride=2) for j in scales if j > 0
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = []
        for i, j in enumerate(range(self.drop, len(features))):
            new = [self.regular[i](features[j])]
            if j > 0:
                new.append(self.strided[i - (1 if self.drop == 0 else 0)](features[j - 1]))
            out.append(torch.cat([features[j], *new], dim=1))
        return out


class _Transition(nn.Module):
    """1×1 ``Conv → BN → ReLU`` at every scale (compresses the channels between blocks)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            _ConvBNReLU(c, o, kernel_size=1) for c, o in zip(in_channels, out_channels, strict=True)
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [conv(f) for conv, f in zip(self.convs, features, strict=True)]


class _Classifier(nn.Sequential):
    """Two strided 3×3 convs on the coarsest scale, global average pooling, linear (arXiv 1703.09844, §5)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            _ConvBNReLU(in_channels, channels, stride=2),
            _ConvBNReLU(channels, channels, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


class MSDNet(nn.Module):
    """Multi-scale dense network with one exit per block (arXiv 1703.09844); see the module docstring.

    Scale ``s`` (0-based) has ``channels · 2^s`` channels after the first layer and grows by ``growth · 2^s``
    per layer (the paper's growth and bottleneck factors 1-2-4). Modules: ``first``, ``blocks.<i>``
    (``step`` dense layers each), ``transitions.<i>`` (before block ``i + 1``), ``classifiers.<i>``.

    Args:
        num_classes: number of logits of each exit.
        input_shape: ``(channels, height, width)``; height and width at least ``2^(scales-1)``.
        num_blocks: number of blocks, i.e. of exits.
        step: dense layers per block.
        scales: number of scales (each halves the resolution).
        channels: channels of the finest scale after the first layer.
        growth: channels each layer adds at the finest scale.
        head_channels: width of the classifiers' convolutions.
        compression: factor of the transitions' channel compression, in ``(0, 1]``.
        output: what ``forward`` returns: ``"all"`` (a list of logits, one per exit, for
            ``EarlyExitModule``), ``"last"`` (the last exit's logits) or ``"mean"`` (the exits' mean logits).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        num_blocks: int = 3,
        step: int = 2,
        scales: int = 3,
        channels: int = 8,
        growth: int = 4,
        head_channels: int = 32,
        compression: float = 0.5,
        output: str = "all",
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if scales < 1 or len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 2 ** (scales - 1):
            raise ValueError(
                f"msdnet with {scales} scales needs input_shape (channels, height, width) with channels >= 1 "
                f"and height, width >= {2 ** max(scales - 1, 0)}; got {shape}"
            )
        for name, value in (("num_blocks", num_blocks), ("step", step), ("channels", channels)):
            if int(value) < 1:
                raise ValueError(f"msdnet `{name}` must be >= 1; got {value}")
        if int(growth) < 1 or int(head_channels) < 1:
            raise ValueError(
                f"msdnet `growth` and `head_channels` must be >= 1; got {growth}, {head_channels}"
            )
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"msdnet `compression` must be in (0, 1]; got {compression}")
        if output not in _OUTPUTS:
            raise ValueError(f"msdnet `output` must be one of {_OUTPUTS}; got {output!r}")
        self.output = output
        self.num_exits = int(num_blocks)
        widths = [int(channels) * 2**s for s in range(scales)]
        growths = [int(growth) * 2**s for s in range(scales)]
        self.first = _FirstLayer(shape[0], widths)
        blocks, transitions, classifiers = [], [], []
        remaining = self.num_exits * int(step)  # dense layers still to build
        for index in range(self.num_exits):
            if index > 0:
                compressed = [max(1, int(w * compression)) for w in widths]
                transitions.append(_Transition(widths, compressed))
                widths = compressed
            layers = []
            for _ in range(int(step)):
                remaining -= 1
                # keep only the scales that can still reach the coarsest one by the last layer
                drop = max(0, len(widths) - (remaining + 1))
                layers.append(_MSDLayer(widths, growths, drop))
                widths = [w + g for w, g in zip(widths, growths, strict=True)][drop:]
                growths = growths[drop:]
            blocks.append(nn.Sequential(*layers))
            classifiers.append(_Classifier(widths[-1], int(head_channels), int(num_classes)))
        self.blocks = nn.ModuleList(blocks)
        self.transitions = nn.ModuleList(transitions)
        self.classifiers = nn.ModuleList(classifiers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_stage(self, index: int, state: Tensor | list[Tensor]) -> tuple[list[Tensor] | None, Tensor]:
        """Run block ``index`` (after the first layer, or the transition) and its classifier.

        Args:
            index: the block, ``0 .. num_exits - 1``.
            state: the input batch for block 0, else the per-scale features the previous stage returned.

        Returns:
            ``(features for the next stage, logits of exit index)``; the last stage returns ``None`` features.
        """
        if not 0 <= index < self.num_exits:
            raise ValueError(f"msdnet stage index must be in [0, {self.num_exits - 1}]; got {index}")
        if index == 0:
            if not isinstance(state, Tensor):
                raise TypeError("msdnet stage 0 takes the input batch (a tensor)")
            features = self.first(state)
        else:
            if isinstance(state, Tensor):
                raise TypeError(
                    f"msdnet stage {index} takes the list of per-scale features of stage {index - 1}"
                )
            features = self.transitions[index - 1](state)
        features = self.blocks[index](features)
        logits = self.classifiers[index](features[-1])
        return (features if index < self.num_exits - 1 else None), logits

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        logits: list[Tensor] = []
        state: Tensor | list[Tensor] | None = x
        for index in range(self.num_exits):
            assert state is not None
            state, out = self.forward_stage(index, state)
            logits.append(out)
        if self.output == "last":
            return logits[-1]
        if self.output == "mean":
            return torch.stack(logits).mean(dim=0)
        return logits


# the registry's walk checks one (N, classes) tensor whose loss reaches every parameter: the exits' mean
@register_model("msdnet", default_input_shape=(1, 28, 28), test_kwargs={"output": "mean"})
def msdnet(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    num_blocks: int = 3,
    step: int = 2,
    scales: int = 3,
    channels: int = 8,
    growth: int = 4,
    head_channels: int = 32,
    compression: float = 0.5,
    output: str = "all",
) -> MSDNet:
    """A small MSDNet (arXiv 1703.09844) with ``num_blocks`` exits, see :class:`MSDNet`."""
    return MSDNet(
        num_classes,
        input_shape,
        num_blocks,
        step,
        scales,
        channels,
        growth,
        head_channels,
        compression,
        output,
    )
