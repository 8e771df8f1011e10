"""A real, labelled 2D dataset for nnU-Net from the INIA19 macaque template (Debian's ``mricron-data``).

The package ships the INIA19 T1 template (``inia19-t1-brain.nii.gz``, 0.5 mm isotropic) and its NeuroMaps
parcellation (``inia19-NeuroMaps.nii.gz``, left and right structures numbered ``n`` and ``1000 + n``). This
script pools the hemispheres, keeps the ``--classes`` largest structures as labels 1..K (the rest of the brain
and the outside are background), and writes every axial slice that holds brain as one 2D case of an nnU-Net
raw dataset (``imagesTr``/``labelsTr``, 2D NIfTI, ``dataset.json``).

Neighbouring slices are 0.5 mm apart and nearly equal, so a random split would validate on slices whose
neighbours were trained on. The script writes ``splits_final.json`` into ``nnUNet_preprocessed`` as well:
the slices are cut into ``--blocks`` contiguous slabs and fold ``k`` validates on slabs ``k``, ``k + 5``, ...
nnU-Net's trainers read that file instead of drawing their own split.

    python benchmarks/inia19_dataset.py                      # downloads mricron-data with apt-get download
    python benchmarks/inia19_dataset.py --templates /usr/share/mricron/templates
    nnUNetv2_plan_and_preprocess -d 510 -c 2d

Nothing is written over an existing dataset folder or split file (``--force`` replaces them).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

import numpy as np

PACKAGE = "mricron-data"
IMAGE, LABELS = "inia19-t1-brain.nii.gz", "inia19-NeuroMaps.nii.gz"
HEMISPHERE_OFFSET = 1000
FOLDS = 5


def pooled_labels(parcellation: np.ndarray) -> np.ndarray:
    """NeuroMaps ids with the hemispheres pooled (``1000 + n`` -> ``n``); 0 stays background."""
    return np.where(parcellation > 0, parcellation % HEMISPHERE_OFFSET, 0)


def largest_structures(pooled: np.ndarray, classes: int) -> List[int]:
    """The ``classes`` pooled ids with the most voxels, largest first (ties by id)."""
    ids, counts = np.unique(pooled[pooled > 0], return_counts=True)
    if len(ids) < classes:
        raise ValueError(f"the parcellation has {len(ids)} structures, fewer than the {classes} classes asked for")
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], ids[i]))
    return [int(ids[i]) for i in order[:classes]]


def class_map(pooled: np.ndarray, structures: List[int]) -> np.ndarray:
    """Label ``k + 1`` where the pooled id is ``structures[k]``, 0 elsewhere (uint8)."""
    out = np.zeros(pooled.shape, dtype=np.uint8)
    for k, structure in enumerate(structures):
        out[pooled == structure] = k + 1
    return out


def slab_splits(cases: List[str], blocks: int) -> List[Dict[str, List[str]]]:
    """nnU-Net's ``splits_final.json`` content: ``cases`` (in slice order) cut into ``blocks`` contiguous
    slabs of near-equal size; fold ``k`` validates on the slabs whose index is ``k`` modulo 5."""
    if blocks < FOLDS or blocks > len(cases):
        raise ValueError(f"--blocks must be from {FOLDS} to the number of cases ({len(cases)}), got {blocks}")
    slab = np.array_split(np.arange(len(cases)), blocks)
    folds = []
    for k in range(FOLDS):
        val = sorted(int(i) for b, members in enumerate(slab) if b % FOLDS == k for i in members)
        folds.append({"train": [cases[i] for i in range(len(cases)) if i not in set(val)],
                      "val": [cases[i] for i in val]})
    return folds


def _templates_from_debian(workdir: str) -> str:
    """Download Debian's ``mricron-data`` (``apt-get download``) into ``workdir`` and unpack it there."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True, capture_output=True)
    deb = glob.glob(os.path.join(workdir, f"{PACKAGE}_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(workdir, "root")], check=True)
    return os.path.join(workdir, "root", "usr", "share", "mricron", "templates")


def _write_case(sitk, image_slice: np.ndarray, label_slice: np.ndarray, spacing: Tuple[float, float],
                images: str, labels: str, case: str) -> None:
    for array, path in ((image_slice.astype(np.float32), os.path.join(images, f"{case}_0000.nii.gz")),
                        (label_slice, os.path.join(labels, f"{case}.nii.gz"))):
        item = sitk.GetImageFromArray(array)
        item.SetSpacing(spacing)
        sitk.WriteImage(item, path)


def write_dataset(templates: str, raw_folder: str, preprocessed_folder: str, dataset_id: int, classes: int,
                  blocks: int, force: bool) -> Tuple[str, List[int], int]:
    """Write the raw dataset and its split; returns (dataset name, the pooled structure ids, case count)."""
    import SimpleITK as sitk

    name = f"Dataset{dataset_id:03d}_INIA19Axial{classes}"
    target, splits_file = os.path.join(raw_folder, name), os.path.join(preprocessed_folder, name, "splits_final.json")
    existing = [p for p in (target, splits_file) if os.path.exists(p)]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to replace it")
    image = sitk.ReadImage(os.path.join(templates, IMAGE))
    t1 = sitk.GetArrayFromImage(image)  # (z, y, x)
    pooled = pooled_labels(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(templates, LABELS))).astype(np.int64))
    structures = largest_structures(pooled, classes)
    labels = class_map(pooled, structures)
    spacing = tuple(float(s) for s in image.GetSpacing()[:2])  # (x, y) of the axial plane
    staging = tempfile.mkdtemp(dir=raw_folder, prefix=f".{name}.")
    images_dir, labels_dir = os.path.join(staging, "imagesTr"), os.path.join(staging, "labelsTr")
    os.makedirs(images_dir)
    os.makedirs(labels_dir)
    cases = []
    for z in range(t1.shape[0]):
        if not (pooled[z] > 0).any():
            continue
        case = f"inia19_z{z:03d}"
        _write_case(sitk, t1[z], labels[z], spacing, images_dir, labels_dir, case)
        cases.append(case)
    dataset_json = {"channel_names": {"0": "T1"}, "file_ending": ".nii.gz", "numTraining": len(cases),
                    "labels": {"background": 0, **{f"structure_{s}": k + 1 for k, s in enumerate(structures)}},
                    "description": f"INIA19 (Debian {PACKAGE}): axial slices, the {classes} largest NeuroMaps "
                                   f"structures with the hemispheres pooled"}
    with open(os.path.join(staging, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(staging, target)
    os.makedirs(os.path.dirname(splits_file), exist_ok=True)
    with open(splits_file + ".tmp", "w") as f:
        json.dump(slab_splits(cases, blocks), f, indent=2)
    os.replace(splits_file + ".tmp", splits_file)
    return name, structures, len(cases)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", help="folder holding the INIA19 files (default: download mricron-data)")
    parser.add_argument("--dataset-id", type=int, default=510)
    parser.add_argument("--classes", type=int, default=8, help="largest pooled structures kept (default 8)")
    parser.add_argument("--blocks", type=int, default=10, help="contiguous slabs the split is made of")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset folder and split")
    args = parser.parse_args(argv)
    folders = {v: os.environ.get(v) for v in ("nnUNet_raw", "nnUNet_preprocessed")}
    missing = [v for v, path in folders.items() if not path]
    if missing:
        print(f"inia19_dataset: error: set {' and '.join(missing)} (nnU-Net's folders)", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory() as workdir:
            templates = args.templates or _templates_from_debian(workdir)
            name, structures, count = write_dataset(templates, folders["nnUNet_raw"], folders["nnUNet_preprocessed"],
                                                    args.dataset_id, args.classes, args.blocks, args.force)
    except (FileExistsError, ValueError, OSError, subprocess.CalledProcessError) as error:
        print(f"inia19_dataset: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {name}: {count} axial slices, classes = pooled NeuroMaps ids {structures}; "
          f"next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} -c 2d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
