"""Per spatial dimensionality (1, 2 or 3): the torch operators and layouts the package builds on."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONV", "CONV_TRANSPOSED", "INSTANCE_NORM", "CONV_FN", "CONV_TRANSPOSED_FN", "CHANNELS_LAST",
           "LINEAR_MODE"]

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
INSTANCE_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSED_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
