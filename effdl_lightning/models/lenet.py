"""LeNet-300-100 and LeNet-5 as used by Deep Compression (Han et al. 2015, arXiv:1510.00149).

Both follow Caffe's MNIST examples, which the Deep Compression paper prunes (its Tables 2 and 3):
at a 1×28×28 input and 10 classes LeNet-300-100 has 266,610 parameters and 266,200 MACs, LeNet-5 has
431,080 parameters and 2,293,000 MACs. Layer names (``fc1``…, ``conv1``…) match the paper's per-layer
tables (ip1/ip2/ip3, conv1/conv2/ip1/ip2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from effdl_lightning.models.registry import register_model


@register_model("lenet300", default_input_shape=(1, 28, 28))
class LeNet300100(nn.Module):
    """Fully connected LeNet-300-100 (LeCun et al. 1998; pruned in arXiv:1510.00149).

    ``flatten → fc1(in, 300) → ReLU → fc2(300, 100) → ReLU → fc3(100, num_classes)``, where ``in`` is the
    number of input values, ``prod(input_shape)`` (784 for MNIST, 64 for the 8×8 digits). Any input
    shape works.

    Args:
        num_classes: number of output logits.
        input_shape: input without the batch dimension, e.g. ``(1, 28, 28)``.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"lenet300 needs an input_shape of positive sizes, at least (1,); got {shape}")
        in_features = math.prod(shape)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


@register_model("lenet5", default_input_shape=(1, 28, 28))
class LeNet5(nn.Module):
    """Caffe's LeNet-5 variant (``examples/mnist/lenet_train_test.prototxt``), pruned in arXiv:1510.00149.

    ``conv1 20@5×5 → maxpool 2 → conv2 50@5×5 → maxpool 2 → fc1 500 → ReLU → fc2 num_classes``.
    As in Caffe there is no activation between a convolution and its pooling (``conv_relu=False``, the
    default); ``conv_relu=True`` adds a ReLU after each pooling, which changes neither parameters nor MACs.
    Inputs must be at least 16×16 (two 5×5 valid convolutions and two 2× poolings).

    Args:
        num_classes: number of output logits.
        input_shape: ``(channels, height, width)``; channels may be anything.
        conv_relu: add a ReLU after each conv+pool stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        conv_relu: bool = False,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < 16:
            raise ValueError(
                f"lenet5 needs input_shape (channels, height, width) with channels >= 1 and "
                f"height, width >= 16; got {shape}"
            )
        channels, height, width = shape
        self.conv1 = nn.Conv2d(channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.act1: nn.Module = nn.ReLU() if conv_relu else nn.Identity()
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.act2: nn.Module = nn.ReLU() if conv_relu else nn.Identity()
        self.flatten = nn.Flatten()
        out_h, out_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * out_h * out_w, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pool1(self.conv1(x)))
        x = self.act2(self.pool2(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))
