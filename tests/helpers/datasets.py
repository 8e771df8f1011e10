"""Tiny synthetic nnU-Net raw datasets written with SimpleITK, for the end-to-end tests.

Each case is a noisy image with a bright ball (label 1) holding a brighter core (label 2), at a
random position, so a few iterations of training see foreground and the labels are learnable.
"""
import json
import os

import numpy as np
import SimpleITK as sitk


def _case(rng: np.random.Generator, shape, spacing):
    zz, yy, xx = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    extent = np.array(shape) * np.array(spacing)
    centre = extent * rng.uniform(0.35, 0.65, size=3)
    radius = extent.min() * rng.uniform(0.2, 0.3)
    dist = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[dist < radius] = 1
    seg[dist < radius / 2] = 2
    image = (100 * seg + rng.normal(0, 20, size=shape)).astype(np.float32)
    return image, seg


def _write(array: np.ndarray, spacing, path: str) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK orders spacing x, y, z
    sitk.WriteImage(img, path)


def make_dataset(raw_root: str, dataset_id: int, name: str, n_cases: int = 8, shape=(32, 32, 32),
                 spacing=(1.0, 1.0, 1.0), kind: str = "labels", seed: int = 0, n_test: int = 1) -> str:
    """Write ``DatasetXXX_name`` under ``raw_root``; return its folder.

    ``n_cases`` training cases (``imagesTr``, ``labelsTr``), then ``n_test`` held-out cases (``imagesTs`` for
    ``nnUNetv2_predict``, with their reference in ``labelsTs``).

    kind: ``labels`` (background, ball, core), ``regions`` (nnU-Net regions: whole = {1, 2}, core = {2},
    with ``regions_class_order``), or ``ignore`` (background, ball, and an ignore label on one slab).
    Returns the dataset folder; ``spacing`` and ``shape`` are in (z, y, x) order.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "imagesTs"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTs"), exist_ok=True)
    for i in range(n_cases + n_test):
        image, seg = _case(rng, shape, spacing)
        if kind == "ignore":
            seg = np.minimum(seg, 1)
            seg[:, :, : shape[2] // 4] = 2  # the ignore label: a slab nobody annotated
        case = f"{name}_{i:03d}"
        if i >= n_cases:  # held out, for nnUNetv2_predict
            _write(image, spacing, os.path.join(folder, "imagesTs", f"{case}_0000.nii.gz"))
            _write(seg, spacing, os.path.join(folder, "labelsTs", f"{case}.nii.gz"))
            continue
        _write(image, spacing, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        _write(seg, spacing, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    labels = {"labels": {"background": 0, "ball": 1, "core": 2},
              "regions": {"background": 0, "whole": [1, 2], "core": [2]},
              "ignore": {"background": 0, "ball": 1, "ignore": 2}}[kind]
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz"}
    if kind == "regions":
        dataset["regions_class_order"] = [1, 2]
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=2)
    return folder
