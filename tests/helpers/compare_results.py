"""nnU-Net-style results folders of two trainers, written without training, for the compare tool's tests."""
import json

import numpy as np
import SimpleITK as sitk

from helpers.processes import TRAINERS_FOLDER

DATASET = "Dataset901_Compare"
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerDeconver")
SPACING_XYZ = (0.8, 0.8, 1.5)  # SimpleITK order; the arrays are z, y, x
SHAPE = (10, 16, 16)
CASES = [f"case_{i:03d}" for i in range(6)]


def plans_json():
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.5, 0.8, 0.8],
            "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres",
                                              "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                                              "patch_size": [8, 16, 16], "median_image_size_in_voxels": list(SHAPE),
                                              "spacing": [1.5, 0.8, 0.8],
                                              "normalization_schemes": ["ZScoreNormalization"],
                                              "use_mask_for_norm": [False], "architecture": arch,
                                              "batch_dice": False}},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}}


def write_label(array, path, spacing=SPACING_XYZ):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def box(z0, y0, x0, size):
    seg = np.zeros(SHAPE, np.uint8)
    seg[z0:z0 + size, y0:y0 + size, x0:x0 + size] = 1
    return seg


def write_results(tmp_path, monkeypatch):
    """Two trainers, two folds of three cases each. The reference of every case is a 4-voxel cube of
    label 1 and a single voxel of label 2; the baseline is exact, the other run shifts label 1 by one
    voxel along x and misses label 2 in case_000."""
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "blob": 1, "dot": 2},
                    "numTraining": len(CASES), "file_ending": ".nii.gz"}
    gt = pre / DATASET / "gt_segmentations"
    (raw / DATASET / "imagesTr").mkdir(parents=True)
    gt.mkdir(parents=True)
    references = {}
    for case in CASES:
        seg = box(3, 5, 5, 4)
        seg[8, 12, 12] = 2
        references[case] = seg
        write_label(seg, str(gt / f"{case}.nii.gz"))
        image = sitk.GetImageFromArray((seg * 100.0).astype(np.float32))
        image.SetSpacing(SPACING_XYZ)
        sitk.WriteImage(image, str(raw / DATASET / "imagesTr" / f"{case}_0000.nii.gz"))
    for trainer in TRAINERS:
        folder = res / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
        folder.mkdir(parents=True)
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
        (folder / "plans.json").write_text(json.dumps(plans_json()))
        for fold, fold_cases in ((0, CASES[:3]), (1, CASES[3:])):
            validation = folder / f"fold_{fold}" / "validation"
            validation.mkdir(parents=True)
            seconds = 2.0 if trainer == TRAINERS[0] else 4.0
            (folder / f"fold_{fold}" / "training_log_2025_1_1_00_00_00.txt").write_text(
                "".join(f"2025-01-01 00:00:0{e}.0: Epoch {e} \n2025-01-01: Epoch time: {seconds} s \n"
                        for e in range(3)))
            for case in fold_cases:
                seg = references[case].copy()
                if trainer != TRAINERS[0]:
                    seg[seg == 1] = 0
                    seg[3:7, 5:9, 6:10][seg[3:7, 5:9, 6:10] == 0] = 1
                    if case == CASES[0]:
                        seg[seg == 2] = 0
                write_label(seg, str(validation / f"{case}.nii.gz"))
    for variable, path in (("nnUNet_raw", raw), ("nnUNet_preprocessed", pre), ("nnUNet_results", res)):
        monkeypatch.setenv(variable, str(path))
    monkeypatch.setenv("nnUNet_extTrainer", TRAINERS_FOLDER)
    return tmp_path
