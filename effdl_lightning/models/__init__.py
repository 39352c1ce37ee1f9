"""Reference and efficient architectures, registered by name (``create``, ``list_models``).

Importing this package imports every architecture module, which registers its models.
"""

from effdl_lightning.models.cnn1d import CNN1D
from effdl_lightning.models.condconv import CondConv2d, replace_convs_with_condconv_
from effdl_lightning.models.darts import DartsNetwork
from effdl_lightning.models.efficientnet import EfficientNet
from effdl_lightning.models.lenet import LeNet5, LeNet300100
from effdl_lightning.models.mlp import MLP
from effdl_lightning.models.mnas_space import MnasSpaceNet
from effdl_lightning.models.mnasnet import MnasNetA1
from effdl_lightning.models.mobilenet import MobileNetV1, MobileNetV2
from effdl_lightning.models.msdnet import MSDNet
from effdl_lightning.models.registry import ModelEntry, create, get_model_entry, list_models, register_model
from effdl_lightning.models.resnet1d import ResNet1D
from effdl_lightning.models.resnet_cifar import BasicBlock, ResNetCifar
from effdl_lightning.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from effdl_lightning.models.vgg import VGGSmall

__all__ = [
    "CNN1D",
    "MLP",
    "BasicBlock",
    "CondConv2d",
    "DartsNetwork",
    "EfficientNet",
    "LeNet5",
    "LeNet300100",
    "MSDNet",
    "MnasNetA1",
    "MnasSpaceNet",
    "MobileNetV1",
    "MobileNetV2",
    "ModelEntry",
    "ResNet1D",
    "ResNetCifar",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "VGGSmall",
    "create",
    "get_model_entry",
    "list_models",
    "register_model",
    "replace_convs_with_condconv_",
]
