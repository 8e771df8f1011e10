"""The synthetic data of the demo (2D) and of the 3D variant."""
import numpy as np

from nnunetv2_deconver.tools.synthetic import TUBE_INTENSITY, make_case, make_case_2d


def test_synthetic_case_has_both_classes_and_thin_tubes():
    image, labels = make_case(3, (32, 32, 32))
    assert image.shape == labels.shape == (32, 32, 32) and image.dtype == np.float32
    assert set(np.unique(labels)) == {0, 1, 2}
    # tubes of radius ~1 voxel: far fewer voxels than their length times a 3x3 cross-section
    tube = labels == 2
    assert 0 < tube.sum() < 3 * 32 * 9
    # the blur lowers the tubes' mean intensity well below their drawn value (0.7)
    assert image[tube].mean() < 0.6


def test_synthetic_2d_case_is_one_slice_with_both_classes():
    image, labels = make_case_2d(3, 64)
    assert image.shape == labels.shape == (1, 64, 64) and image.dtype == np.float32
    assert set(np.unique(labels)) == {0, 1, 2}
    tube = labels == 2
    # curves 4-6 pixels wide across the image: at least one image edge long, far less than the image
    assert 4 * 64 <= tube.sum() < 64 * 64 // 4
    assert image[tube].mean() < TUBE_INTENSITY  # the blur spreads the curves into the background
