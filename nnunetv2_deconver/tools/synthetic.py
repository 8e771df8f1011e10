"""A small synthetic dataset where deconvolution matters, written in nnU-Net's raw format, in 2D (the
demo's: single-slice images, which nnU-Net plans as ``2d``) or 3D.

Each case holds compact blobs (label 1) and thin tubes (label 2, along wavy paths), drawn at two
intensities on a smoothly varying background, then blurred with a Gaussian point-spread function and
given Gaussian noise: the thin tubes lose much of their contrast to the blur, which is what a
deconvolution layer can restore. 3D: ellipsoids of radius 3-6 voxels, tubes of radius about one voxel.
2D: ellipses of radius 5-10% of the image edge, curves about 5 pixels wide.
"""
import json
import os
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["make_case", "make_case_2d", "write_dataset"]

BLOB_INTENSITY, TUBE_INTENSITY, BACKGROUND = 1.0, 0.7, 0.2


def make_case(seed: int, shape: Sequence[int] = (40, 40, 40), blur_sigma: float = 1.5,
              noise_sigma: float = 0.08) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8), both of ``shape`` (z, y, x)."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    grid = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(2, 4)):
        radii = rng.uniform(3, 6, 3)
        center = [rng.uniform(r + 1, n - r - 1) for r, n in zip(radii, shape)]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1
        labels[inside] = 1
    for _ in range(rng.integers(2, 4)):
        # a tube along one axis with a sinusoidal wobble in the other two
        axis = int(rng.integers(0, 3))
        others = [a for a in range(3) if a != axis]
        t = np.arange(shape[axis], dtype=np.float32)
        offsets = [rng.uniform(0.25, 0.75) * shape[a] + rng.uniform(2, 5) * np.sin(t / rng.uniform(4, 9) +
                                                                                     rng.uniform(0, 6.3))
                   for a in others]
        radius = rng.uniform(0.8, 1.3)
        for position in range(shape[axis]):
            index = [slice(None)] * 3
            index[axis] = position
            plane = [grid[a][tuple(index)] for a in others]
            inside = (plane[0] - offsets[0][position]) ** 2 + (plane[1] - offsets[1][position]) ** 2 <= radius ** 2
            labels[tuple(index)][inside] = 2
    background = BACKGROUND + 0.1 * ndimage.gaussian_filter(rng.standard_normal(shape), 6) * 6
    sharp = np.where(labels == 1, BLOB_INTENSITY, np.where(labels == 2, TUBE_INTENSITY, background))
    image = ndimage.gaussian_filter(sharp, blur_sigma) + rng.normal(0, noise_sigma, shape)
    return image.astype(np.float32), labels


def make_case_2d(seed: int, size: int = 128, blur_sigma: float = 1.0,
                 noise_sigma: float = 0.08) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8), both of shape ``(1, size, size)``: one slice, as nnU-Net stores 2D images."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((size, size), dtype=np.float32)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(2, 4)):
        radii = rng.uniform(0.05, 0.10, 2) * size + 1
        center = [rng.uniform(r + 1, size - r - 1) for r in radii]
        labels[((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 <= 1] = 1
    for _ in range(rng.integers(2, 4)):
        # a curve across the image: its distance to a sinusoid along rows or columns below the half-width
        along, across = (rows, cols) if rng.integers(0, 2) else (cols, rows)
        path = rng.uniform(0.2, 0.8) * size + rng.uniform(0.03, 0.08) * size * np.sin(
            along / (rng.uniform(0.06, 0.15) * size) + rng.uniform(0, 6.3))
        labels[np.abs(across - path) <= rng.uniform(2.0, 2.8)] = 2
    background = BACKGROUND + 0.6 * ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 16)
    sharp = np.where(labels == 1, BLOB_INTENSITY, np.where(labels == 2, TUBE_INTENSITY, background))
    image = ndimage.gaussian_filter(sharp, blur_sigma) + rng.normal(0, noise_sigma, (size, size))
    return image[None].astype(np.float32), labels[None]


def write_dataset(raw_folder: str, dataset_name: str, n_train: int, n_test: int, shape: Sequence[int],
                  spacing: float = 1.0, seed: int = 0) -> Tuple[str, str, str]:
    """Write imagesTr/labelsTr/imagesTs/labelsTs and dataset.json; returns the dataset folder,
    imagesTs and labelsTs. ``shape``: ``(size, size)`` for 2D cases (:func:`make_case_2d`, stored as one
    slice), three edges for 3D (:func:`make_case`)."""
    import SimpleITK as sitk
    folder = os.path.join(raw_folder, dataset_name)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for index in range(n_train + n_test):
        image, labels = make_case_2d(seed * 100003 + index, shape[0]) if len(shape) == 2 else \
            make_case(seed * 100003 + index, shape)
        split = "Tr" if index < n_train else "Ts"
        case = f"demo_{index:03d}"
        for array, path in ((image, os.path.join(folder, f"images{split}", f"{case}_0000.nii.gz")),
                            (labels, os.path.join(folder, f"labels{split}", f"{case}.nii.gz"))):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((spacing,) * 3)
            sitk.WriteImage(itk, path)
    dataset_json = {"channel_names": {"0": "synthetic"}, "labels": {"background": 0, "blob": 1, "tube": 2},
                    "numTraining": n_train, "file_ending": ".nii.gz",
                    "description": "blurred, noisy compact blobs and thin tubes (nnunetv2_deconver demo)"}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder, os.path.join(folder, "imagesTs"), os.path.join(folder, "labelsTs")
