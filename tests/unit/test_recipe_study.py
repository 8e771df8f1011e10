"""The recipe study's parts that need no training: the INIA19 dataset's label grouping and slab split
(``benchmarks/inia19_dataset.py``) and the study trainers' recipe variables."""
import importlib.util
import os

import numpy as np
import pytest

from helpers.processes import REPO
from nnunetv2_deconver.nnunet.trainer_mixins import STUDY_PREFIX, study_recipe


def _dataset_script():
    spec = importlib.util.spec_from_file_location("inia19_dataset", os.path.join(REPO, "benchmarks",
                                                                                "inia19_dataset.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hemispheres_pool_and_the_largest_structures_become_classes_in_size_order():
    script = _dataset_script()
    parcellation = np.zeros((4, 10), dtype=np.int64)
    parcellation[0, :3], parcellation[1, :3] = 7, 1007  # structure 7: 3 + 3 voxels
    parcellation[2, :5] = 1020  # structure 20: 5 voxels, right hemisphere only
    parcellation[3, :2], parcellation[3, 2:4] = 9, 1009  # structure 9: 4 voxels
    parcellation[0, 9] = 3  # structure 3: 1 voxel
    pooled = script.pooled_labels(parcellation)
    assert set(np.unique(pooled)) == {0, 3, 7, 9, 20}
    assert script.largest_structures(pooled, 3) == [7, 20, 9]
    labels = script.class_map(pooled, [7, 20, 9])
    assert labels.dtype == np.uint8
    assert [(labels == k).sum() for k in range(4)] == [40 - 6 - 5 - 4, 6, 5, 4]
    with pytest.raises(ValueError, match="fewer than the 5 classes"):
        script.largest_structures(pooled, 5)


def test_slab_split_validates_each_case_once_in_contiguous_slabs():
    script = _dataset_script()
    cases = [f"c{i:02d}" for i in range(23)]
    folds = script.slab_splits(cases, 10)
    assert len(folds) == 5
    validated = [case for fold in folds for case in fold["val"]]
    assert sorted(validated) == cases  # every case validated exactly once
    for k, fold in enumerate(folds):
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == cases
        indices = [cases.index(c) for c in fold["val"]]
        runs = np.split(indices, np.where(np.diff(indices) != 1)[0] + 1)
        assert len(runs) == 2  # slabs k and k + 5 of ten, never adjacent
    with pytest.raises(ValueError, match="--blocks"):
        script.slab_splits(cases, 4)


def test_study_recipe_reads_its_variables_and_names_a_bad_one():
    environ = {f"{STUDY_PREFIX}EPOCHS": "3", f"{STUDY_PREFIX}LR": "1e-3", f"{STUDY_PREFIX}OPTIMIZER": "sgd",
               f"{STUDY_PREFIX}DEEP_SUPERVISION": "0", "OTHER": "x"}
    assert study_recipe(environ) == {"epochs": 3, "lr": 1e-3, "optimizer": "sgd", "deep_supervision": 0}
    assert study_recipe({}) == {}
    for key, value in (("EPOCHS", "0"), ("LR", "nan"), ("LR", "fast"), ("WARMUP", "2"), ("OPTIMIZER", "adam"),
                       ("DEEP_SUPERVISION", "2")):
        with pytest.raises(ValueError, match=f"{STUDY_PREFIX}{key} must be"):
            study_recipe({f"{STUDY_PREFIX}{key}": value})
