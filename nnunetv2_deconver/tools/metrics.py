"""Segmentation metrics of the paper (Sec. IV-A5): Dice and HD95, per case and per class or region.

Conventions (the same as MONAI's ``compute_hausdorff_distance(..., percentile=95)``, which the tests
check against):

- **Surface** of a mask: its voxels that ``scipy.ndimage.binary_erosion`` (face connectivity, outside
  the image counts as background) removes, so a single voxel is its own surface. Axes of length 1 (a 2D
  image stored as one slice, as nnU-Net stores 2D data) are left out first, so such an image is
  measured as the 2D image it is (its contour), not as a slab that is all surface.
- **HD95** in millimetres: the larger of the two directed 95th percentiles (linear interpolation) of
  the Euclidean distances from each surface voxel of one mask to the nearest surface voxel of the
  other, with the voxel spacing applied per axis.
- **Empty masks.** Dice is 1 when reference and prediction are both empty (the paper's definition)
  and 0 when only one is. HD95 is 0 when both are empty (perfect agreement, like Dice = 1). When
  exactly one is empty there is no distance to measure; HD95 is then the length of the image's
  diagonal in millimetres, the largest distance two voxels of the image can have. A missed or
  hallucinated structure thus counts as the worst possible boundary error and stays inside the
  mean, instead of being dropped from it as a NaN would be (which would flatter a network that
  misses structures), or making the mean infinite.
"""
import math
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hd95", "surface", "image_diagonal_mm", "case_metrics", "LabelOrRegion"]

LabelOrRegion = Union[int, Tuple[int, ...]]


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape (paper eq. 8); 1 when both are empty."""
    reference, prediction = _check_masks(reference, prediction)
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the surface voxels of ``mask`` (voxels that a face-connected erosion removes)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image's diagonal: the HD95 reported when exactly one mask is empty."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean masks.

    ``spacing`` is the voxel size in mm along each array axis. See the module docstring for the
    definition and for the empty cases (both empty: 0; one empty: the image diagonal in mm).
    """
    reference, prediction = _check_masks(reference, prediction)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {reference.ndim}D mask")
    has_reference, has_prediction = bool(reference.any()), bool(prediction.any())
    if not has_reference and not has_prediction:
        return 0.0
    if not has_reference or not has_prediction:
        return image_diagonal_mm(reference.shape, spacing)
    # an axis of length 1 (a 2D image stored as one slice) has no surface across it: measure in the others
    kept = [axis for axis, n in enumerate(reference.shape) if n > 1] or [0]
    dropped = tuple(axis for axis in range(reference.ndim) if axis not in kept)
    reference, prediction = reference.squeeze(dropped), prediction.squeeze(dropped)
    spacing = [spacing[axis] for axis in kept]
    # the distances only depend on the union's bounding box; a one-voxel zero margin keeps the
    # erosion's border behaviour identical to the uncropped image
    box = ndimage.find_objects((reference | prediction).astype(np.uint8))[0]
    reference = np.pad(reference[box], 1)
    prediction = np.pad(prediction[box], 1)
    surface_reference, surface_prediction = surface(reference), surface(prediction)
    to_reference = ndimage.distance_transform_edt(~surface_reference, sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(~surface_prediction, sampling=spacing)
    return float(max(np.percentile(to_reference[surface_prediction], 95),
                     np.percentile(to_prediction[surface_reference], 95)))


def case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                 labels_or_regions: Sequence[LabelOrRegion],
                 ignore_label: Union[int, None] = None) -> Dict[LabelOrRegion, Tuple[float, float]]:
    """Dice and HD95 (mm) for each label or region of one case.

    ``reference`` and ``prediction`` are integer label maps of the same shape; a region (a tuple of
    labels, as in nnU-Net's region-based datasets) is the union of its labels. Voxels that carry
    ``ignore_label`` in the reference are left out of both masks. Axes of length 1 (2D images
    stored as 3D) are dropped so that they do not turn every voxel into surface.
    """
    _check_shapes(reference, prediction)
    keep = [axis for axis, n in enumerate(reference.shape) if n > 1]
    squeeze = tuple(axis for axis, n in enumerate(reference.shape) if n == 1)
    reference, prediction = np.squeeze(reference, squeeze), np.squeeze(prediction, squeeze)
    spacing = [spacing[axis] for axis in keep]
    valid = None if ignore_label is None else reference != ignore_label
    results: Dict[LabelOrRegion, Tuple[float, float]] = {}
    for key in labels_or_regions:
        mask_reference, mask_prediction = _to_mask(reference, key), _to_mask(prediction, key)
        if valid is not None:
            mask_reference, mask_prediction = mask_reference & valid, mask_prediction & valid
        results[key] = (dice(mask_reference, mask_prediction), hd95(mask_reference, mask_prediction, spacing))
    return results


def _to_mask(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    if isinstance(label_or_region, (tuple, list)):
        return np.isin(segmentation, label_or_region)
    return segmentation == label_or_region


def _check_masks(reference: np.ndarray, prediction: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    reference, prediction = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    _check_shapes(reference, prediction)
    return reference, prediction


def _check_shapes(reference: np.ndarray, prediction: np.ndarray) -> None:
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")

