"""The comparison's numbers: Wilcoxon p-values against SciPy and an exact enumeration, and Deconver's
parameter/FLOP row against a count made by hand from the plan's widths, kernels and strides."""
import itertools
import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunetv2_deconver.tools.compare.command import Run, measure_run_cost
from nnunetv2_deconver.tools.compare.statistics import wilcoxon_p

from helpers.processes import TRAINERS_FOLDER

# ---------------------------------------------------------------------------------- Wilcoxon signed-rank

DICE_BASELINE = [0.81, 0.77, 0.90, 0.65, 0.88, 0.72, 0.93, 0.59, 0.84, 0.79]
HD95_BASELINE = [4.1, 7.3, 2.2, 12.5, 3.0, 9.8, 1.7, 15.2, 3.9, 6.4]


def _exact_two_sided_p(differences):
    """Exact p of the signed-rank statistic by enumerating all 2^n sign flips (no ties, no zeros)."""
    d = np.asarray(differences, float)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    n = len(d)
    mean = n * (n + 1) / 4
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=n)]
    return sum(abs(t - mean) >= abs(observed - mean) - 1e-9 for t in sums) / 2 ** n


@pytest.mark.parametrize("baseline,deltas", [
    (DICE_BASELINE, [0.031, -0.012, 0.047, -0.004, 0.022, 0.065, -0.018, 0.009, 0.054, -0.027]),
    (HD95_BASELINE, [-1.3, 0.4, -2.9, 0.7, -5.6, -0.2, 1.1, -8.8, -3.7, 2.3]),
])
def test_mixed_signs_match_scipy_and_exact_enumeration(baseline, deltas):
    other = np.add(baseline, deltas)
    p = wilcoxon_p(baseline, other)
    assert p == pytest.approx(wilcoxon(baseline, other).pvalue, rel=1e-12)
    assert p == pytest.approx(_exact_two_sided_p(np.subtract(baseline, other)), rel=1e-9)


@pytest.mark.parametrize("baseline,deltas", [
    # ties among |differences| and two pairs with no difference (Dice)
    (DICE_BASELINE, [0.02, -0.02, 0.02, 0.0, 0.05, -0.05, 0.0, 0.03, 0.02, 0.04]),
    # HD95 in whole voxels: many ties and a zero
    (HD95_BASELINE, [1.0, -1.0, 2.0, 0.0, -1.0, 3.0, 1.0, -2.0, 1.0, 2.0]),
])
def test_ties_and_zeros_match_scipy(baseline, deltas):
    other = np.add(baseline, deltas)
    # the differences as wilcoxon_p sees them: computed from the two arrays, as SciPy does
    assert wilcoxon_p(baseline, other) == pytest.approx(wilcoxon(baseline, other).pvalue, rel=1e-12)


def test_all_equal_pairs_give_one():
    assert wilcoxon_p(DICE_BASELINE, list(DICE_BASELINE)) == 1.0
    assert wilcoxon_p([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) == 1.0


def test_non_finite_pairs_are_left_out():
    # an empty prediction has HD95 inf (or NaN): that pair drops out on both sides
    other = np.add(HD95_BASELINE, [-1.3, 0.4, -2.9, 0.7, -5.6, -0.2, 1.1, -8.8, -3.7, 2.3])
    with_gaps = list(other) + [math.inf, 3.0]
    baseline = list(HD95_BASELINE) + [2.0, math.nan]
    assert wilcoxon_p(baseline, with_gaps) == pytest.approx(wilcoxon(HD95_BASELINE, other).pvalue, rel=1e-12)


def test_no_finite_pair_gives_nan():
    assert math.isnan(wilcoxon_p([math.nan, 1.0], [2.0, math.inf]))
    assert math.isnan(wilcoxon_p([], []))


# ---------------------------------------------------------------------------------- the cost row

# a stock nnU-Net 3d_fullres plan for an anisotropic dataset: in-plane-only first kernels and strides
ARCH = {"n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
PATCH = [16, 64, 64]
INPUT_CHANNELS, CLASSES = 2, 3  # two modalities; background + two labels


def _run():
    plans = {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "original_median_spacing_after_transp": [3.0, 1.0, 1.0],
             "original_median_shape_after_transp": [16, 64, 64], "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {},
             "configurations": {"3d_fullres": {
                 "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                 "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [16, 64, 64],
                 "spacing": [3.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 2,
                 "use_mask_for_norm": [False, False], "batch_dice": False,
                 "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet."
                                                        "PlainConvUNet", "arch_kwargs": ARCH,
                                  "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}}}
    dataset = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2},
               "numTraining": 10, "file_ending": ".nii.gz"}
    return Run(name="deconver", trainer="nnUNetTrainerDeconver", plans="nnUNetPlans", results_folder=None,
               dataset_json=dataset, plans_json=plans)


def _hand_count():
    """Parameters and multiply-accumulates of every convolution of Deconver for ARCH at PATCH, counted from
    the architecture (NOTES.md section 2): R = 4, MLP ratio 4, one group per channel, one block per stage,
    the stem with the plan's first kernel, the NDC filter with each stage's kernel; no deep supervision
    (inference builds the network without it, so only the full-resolution head)."""
    widths, kernels, strides = ARCH["features_per_stage"], ARCH["kernel_sizes"], ARCH["strides"]
    voxels, size = [], np.array(PATCH)
    for s in strides:
        size = size // np.array(s)
        voxels.append(int(np.prod(size)))
    ratio, mlp = 4, 4
    params = macs = macs_update = 0

    def conv(c_in, c_out, taps, v, bias):  # a dense conv with `taps` kernel taps over v output voxels
        nonlocal params, macs
        params += c_in * c_out * taps + (c_out if bias else 0)
        macs += c_in * c_out * taps * v

    def block(c, kernel, v):
        nonlocal params, macs_update
        e = ratio * c
        taps = math.prod(kernel)
        conv(c, c, 1, v, False)  # mixer projection in
        conv(c, e, 1, v, True)  # NDC initial source
        params += c * (e // c) * taps  # NDC filter, G = C: (C, E/G, *k)
        macs_update += 3 * c * (e // c) * taps * v  # A(X), K(S0), A(K(S0)): grouped, C x E/G per tap
        conv(e, c, 1, v, True)  # mixer projection out
        conv(c, mlp * c, 1, v, True)
        conv(mlp * c, c, 1, v, True)

    conv(INPUT_CHANNELS, widths[0], math.prod(kernels[0]), voxels[0], False)  # stem
    block(widths[0], kernels[0], voxels[0])
    for s in range(1, len(widths)):
        conv(widths[s - 1], widths[s], math.prod(strides[s]), voxels[s], True)  # strided conv
        block(widths[s], kernels[s], voxels[s])
    for s in reversed(range(len(widths) - 1)):
        # transposed conv: each input voxel of stage s+1 writes prod(stride) outputs -> the MACs of a conv
        # of kernel prod(stride) evaluated at the coarse voxels
        conv(widths[s + 1], widths[s], math.prod(strides[s + 1]), voxels[s + 1], True)
        conv(2 * widths[s], widths[s], 1, voxels[s], False)  # fusion
        block(widths[s], kernels[s], voxels[s])
        if s == 0:
            conv(widths[0], CLASSES, 1, voxels[0], True)  # the full-resolution head
        else:
            params += widths[s] * CLASSES + CLASSES  # the deep-supervision heads exist but do not run
    return params, macs + macs_update, macs


def test_deconver_cost_row_matches_the_hand_count():
    params, macs_all, macs_paper_style = _hand_count()
    # the row builds the network through the trainer, found in the trainer folders given
    cost = measure_run_cost(_run(), "3d_fullres", None, (TRAINERS_FOLDER,))
    assert cost.notes == []
    voxels = math.prod(PATCH)
    assert cost.parameters == params
    assert cost.flops_per_voxel == pytest.approx(2 * macs_all / voxels, rel=1e-12)
    assert cost.paper_style_flops_per_voxel == pytest.approx(2 * macs_paper_style / voxels, rel=1e-12)
    assert tuple(cost.patch_size) == tuple(PATCH)
