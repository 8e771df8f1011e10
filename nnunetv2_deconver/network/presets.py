"""The paper's network configurations (Sec. IV-A4) and the figures its Tables I-V print for them."""
from typing import Dict, NamedTuple, Optional

from torch import nn

from nnunetv2_deconver.network import Deconver

__all__ = ["PAPER_PRESETS", "PAPER_FIGURES", "paper_network", "paper_widths"]


class Preset(NamedTuple):
    dim: int
    input_channels: int
    num_classes: int
    base_channels: int  # C0
    n_stages: int  # encoder depth L
    patch_size: tuple  # the training patch of Sec. IV-A3


PAPER_PRESETS: Dict[str, Preset] = {
    "isles22": Preset(3, 2, 1, 64, 4, (64, 64, 64)),
    "brats23": Preset(3, 4, 3, 32, 5, (128, 128, 128)),
    "glas": Preset(2, 3, 1, 32, 6, (256, 256)),
    "fives": Preset(2, 3, 1, 32, 6, (512, 512)),
}

# (preset, kernel, ratio, groups) -> (params in millions, FLOPs per voxel in thousands), as printed in
# Tables I-V. groups None means one group per channel.
PAPER_FIGURES: Dict[tuple, tuple] = {
    ("isles22", 3, 4, None): (10.48, 607.0),
    ("isles22", 5, 4, None): (11.0, 607.0),
    ("isles22", 3, 1, None): (7.8, 425.8),
    ("isles22", 3, 2, None): (8.7, 486.2),
    ("isles22", 3, 4, 1): (57.21, 607.4),
    ("isles22", 3, 4, 8): (16.18, 607.1),
    ("brats23", 3, 4, None): (10.6, 167.5),
    ("brats23", 5, 4, None): (11.0, 167.5),
    ("glas", 3, 4, None): (20.6, 422.8),
    ("glas", 5, 4, None): (20.8, 422.8),
    ("fives", 3, 4, None): (20.6, 422.8),
    ("fives", 5, 4, None): (20.8, 422.8),
}


def paper_widths(base_channels: int, n_stages: int, max_channels: int = 512) -> list:
    """``C_l = min(C0 * 2**l, 512)``."""
    return [min(base_channels * 2 ** level, max_channels) for level in range(n_stages)]


def paper_network(name: str, kernel_size: int = 3, ratio: int = 4, groups: Optional[int] = None,
                  deep_supervision: bool = False) -> Deconver:
    """The Deconver of the paper for ``isles22``, ``brats23``, ``glas`` or ``fives``."""
    if name not in PAPER_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PAPER_PRESETS)}")
    p = PAPER_PRESETS[name]
    return Deconver(
        input_channels=p.input_channels, n_stages=p.n_stages,
        features_per_stage=paper_widths(p.base_channels, p.n_stages),
        conv_op=nn.Conv3d if p.dim == 3 else nn.Conv2d,
        kernel_sizes=kernel_size, strides=[1] + [2] * (p.n_stages - 1), num_classes=p.num_classes,
        deep_supervision=deep_supervision, ndc_ratio=ratio, ndc_groups=groups, stem_kernel_size=3)
