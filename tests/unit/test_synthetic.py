"""The synthetic data of the demo."""
import numpy as np

from nnunetv2_deconver.tools.synthetic import make_case


def test_synthetic_case_has_both_classes_and_thin_tubes():
    image, labels = make_case(3, (32, 32, 32))
    assert image.shape == labels.shape == (32, 32, 32) and image.dtype == np.float32
    assert set(np.unique(labels)) == {0, 1, 2}
    # tubes of radius ~1 voxel: far fewer voxels than their length times a 3x3 cross-section
    tube = labels == 2
    assert 0 < tube.sum() < 3 * 32 * 9
    # the blur lowers the tubes' mean intensity well below their drawn value (0.7)
    assert image[tube].mean() < 0.6
