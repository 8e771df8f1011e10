"""Dice and HD95 against hand-computed cases, a brute-force pairwise computation and MONAI."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.distance import cdist

from nnunetv2_deconver.tools.metrics import case_metrics, dice, hd95, image_diagonal_mm, surface


def _ball(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


def _brute_force_hd95(reference, prediction, spacing):
    """The definition written out: all pairwise distances between the two surfaces."""
    a = np.argwhere(surface(reference)) * np.asarray(spacing)
    b = np.argwhere(surface(prediction)) * np.asarray(spacing)
    distances = cdist(a, b)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


# ---------------------------------------------------------------- Dice, by hand

def test_dice_hand_computed():
    reference = np.zeros((4, 4, 4), bool)
    prediction = np.zeros((4, 4, 4), bool)
    reference[0, 0, :4] = True  # 4 voxels
    prediction[0, 0, 2:4] = True  # 2 voxels, both inside the reference
    prediction[3, 3, 3] = True  # 1 false positive
    assert dice(reference, prediction) == pytest.approx(2 * 2 / (4 + 3))


def test_dice_empty_cases():
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert dice(empty, empty) == 1.0  # the paper's definition
    assert dice(one, empty) == 0.0
    assert dice(empty, one) == 0.0
    assert dice(one, one) == 1.0


# ---------------------------------------------------------------- HD95, by hand

def test_hd95_empty_cases():
    empty = np.zeros((10, 20, 30), bool)
    one = empty.copy()
    one[5, 5, 5] = True
    spacing = (2.0, 1.0, 0.5)
    assert hd95(empty, empty, spacing) == 0.0
    diagonal = math.sqrt(20.0 ** 2 + 20.0 ** 2 + 15.0 ** 2)
    assert image_diagonal_mm(empty.shape, spacing) == pytest.approx(diagonal)
    assert hd95(one, empty, spacing) == pytest.approx(diagonal)
    assert hd95(empty, one, spacing) == pytest.approx(diagonal)


def test_hd95_single_voxels_use_spacing():
    a = np.zeros((20, 20, 20), bool)
    b = a.copy()
    a[2, 3, 4] = True
    b[5, 7, 4] = True
    spacing = (2.0, 0.5, 1.0)
    assert hd95(a, a, spacing) == 0.0
    assert hd95(a, b, spacing) == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5))


def test_hd95_parallel_planes():
    """Two full planes k slices apart: every surface distance is k * spacing."""
    a = np.zeros((12, 9, 7), bool)
    b = a.copy()
    a[2] = True
    b[7] = True
    assert hd95(a, b, (1.5, 1.0, 1.0)) == pytest.approx(5 * 1.5)


def test_hd95_shifted_sphere_touches_known_bound():
    """A sphere shifted by k voxels: each surface voxel's translate lies on the other surface, so no
    surface distance exceeds k * spacing; the brute-force definition pins the value below that bound."""
    shape, spacing, shift = (40, 40, 40), (0.8, 0.8, 0.8), 4
    a = _ball(shape, (20, 20, 20), 10)
    b = _ball(shape, (20, 20, 20 + shift), 10)
    value = hd95(a, b, spacing)
    assert value <= shift * 0.8 + 1e-9
    assert value == pytest.approx(_brute_force_hd95(a, b, spacing))


def test_hd95_concentric_spheres():
    """Concentric balls of radius r and r + k: the surface distances are about k voxels."""
    shape = (48, 48, 48)
    a = _ball(shape, (24, 24, 24), 8)
    b = _ball(shape, (24, 24, 24), 14)
    value = hd95(a, b, (1.0, 1.0, 1.0))
    assert 5.0 <= value <= 7.0
    assert value == pytest.approx(_brute_force_hd95(a, b, (1.0, 1.0, 1.0)))


def test_case_metrics_labels_regions_and_2d_as_3d():
    reference = np.zeros((1, 10, 10), np.uint8)
    prediction = np.zeros((1, 10, 10), np.uint8)
    reference[0, 2, 2] = 1
    reference[0, 6, 6] = 2
    prediction[0, 2, 5] = 1
    prediction[0, 6, 6] = 2
    result = case_metrics(reference, prediction, (999.0, 0.5, 0.5), [1, 2, (1, 2), 3])
    # the singleton axis with nnU-Net's 999 placeholder spacing must not matter
    assert result[1] == (0.0, pytest.approx(3 * 0.5))
    assert result[2] == (1.0, 0.0)
    assert result[(1, 2)][0] == pytest.approx(2 * 1 / (2 + 2))
    assert result[3] == (1.0, 0.0)


def test_case_metrics_ignore_label():
    reference = np.array([[0, 1, 1, 9, 9]] * 3, np.uint8)[None]
    prediction = np.array([[0, 1, 1, 1, 1]] * 3, np.uint8)[None]
    result = case_metrics(reference, prediction, (1.0, 1.0, 1.0), [1], ignore_label=9)
    assert result[1][0] == 1.0


# ---------------------------------------------------------------- against MONAI and brute force

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), density=st.floats(0.05, 0.6),
       spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3))
def test_random_masks_match_brute_force(seed, density, spacing):
    a, b = _random_masks(seed, density)
    if not a.any() or not b.any():
        return
    assert hd95(a, b, spacing) == pytest.approx(_brute_force_hd95(a, b, spacing), rel=1e-9, abs=1e-9)


def _random_masks(seed, density):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(3, 12, size=3))
    return rng.random(shape) < density, rng.random(shape) < density


def _monai_hd95(reference, prediction, spacing):
    import torch
    # only the comparisons with MONAI need it (an optional test dependency): the rest of this file runs without
    monai = pytest.importorskip("monai.metrics")
    y = torch.as_tensor(reference[None, None].astype(np.float32))
    y_pred = torch.as_tensor(prediction[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(monai.compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                                      spacing=list(spacing))[0, 0])


def test_shifted_sphere_matches_monai():
    shape, spacing = (36, 36, 36), (1.2, 0.7, 0.9)
    a = _ball(shape, (18, 18, 18), 9)
    b = _ball(shape, (18, 21, 18), 9)
    assert hd95(a, b, spacing) == pytest.approx(_monai_hd95(a, b, spacing), rel=1e-5)


def test_single_voxel_and_border_touching_match_monai():
    a = np.zeros((8, 8, 8), bool)
    b = a.copy()
    a[0, 0, 0] = True
    b[:, 5:, :] = True  # touches three faces of the image
    assert hd95(a, b, (1.0, 2.0, 3.0)) == pytest.approx(_monai_hd95(a, b, (1.0, 2.0, 3.0)), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), density=st.floats(0.05, 0.6),
       spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3))
def test_random_masks_match_monai(seed, density, spacing):
    a, b = _random_masks(seed, density)
    if not a.any() or not b.any():
        return
    assert hd95(a, b, spacing) == pytest.approx(_monai_hd95(a, b, spacing), rel=1e-5, abs=1e-6)


def _contour_2d(mask):
    """Pixels of ``mask`` with a 4-neighbour outside it (or outside the image), written out."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(mask & ~inner)


def test_hd95_of_a_single_slice_is_the_2d_hd95():
    # a 2D image stored as one slice (nnU-Net's 2D layout): its contour is its surface, not every pixel
    reference = np.zeros((20, 20), bool)
    reference[3:17, 3:17] = True
    prediction = np.zeros((20, 20), bool)
    prediction[8:12, 8:12] = True
    spacing = np.array([0.5, 0.8])
    distances = cdist(_contour_2d(reference) * spacing, _contour_2d(prediction) * spacing)
    expected = max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))
    assert hd95(reference, prediction, tuple(spacing)) == pytest.approx(expected)
    assert hd95(reference[None], prediction[None], (3.0, *spacing)) == pytest.approx(expected)
    assert hd95(reference[:, None], prediction[:, None], (spacing[0], 3.0, spacing[1])) == pytest.approx(expected)
