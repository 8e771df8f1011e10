"""Every file ``nnUNetv2_deconver_compare`` reads is checked before it is scored: the checks one by one,
then each class of bad input through the installed console command, as a user meets it."""
import gzip
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_deconver.tools.compare import CompareError
from nnunetv2_deconver.tools.compare.label_files import (LabelFileError, LabelMap, check_complete,
                                                         check_labels_defined, check_same_grid, read_label_map)
from nnunetv2_deconver.tools.compare.runs import read_dataset_json, read_plans_json

from helpers.processes import BIN
from helpers.compare_results import CASES, DATASET, SHAPE, SPACING_XYZ, TRAINERS, write_label

NIFTI1_HEADER_BYTES = 352  # 348-byte header + 4-byte extension flag of a single-file NIfTI-1


def _reader():
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    return SimpleITKIO()


def _blob():
    seg = np.zeros(SHAPE, np.uint8)
    seg[3:7, 5:9, 5:9] = 1
    return seg


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


# ---------------------------------------------------------------------------------------------- the checks

def test_complete_files_pass_and_cut_files_do_not(tmp_path):
    for ending in (".nii.gz", ".nii"):
        path = str(tmp_path / f"seg{ending}")
        write_label(_blob(), path)
        check_complete(path)
        assert read_label_map(_reader(), path).labels.sum() == 64
        # SimpleITK reads the first half of such a file without complaint
        _truncate(path)
        with pytest.raises(LabelFileError, match="is truncated"):
            check_complete(path)
    # an uncompressed NIfTI cut after its header: the header announces every voxel's byte
    path = str(tmp_path / "header_only.nii")
    write_label(_blob(), path)
    with open(path, "r+b") as f:
        f.truncate(NIFTI1_HEADER_BYTES + 10)
    expected = NIFTI1_HEADER_BYTES + int(np.prod(SHAPE))  # uint8: one byte per voxel
    with pytest.raises(LabelFileError, match=f"holds {NIFTI1_HEADER_BYTES + 10} of the {expected} bytes"):
        check_complete(path)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(LabelFileError, match="empty file"):
        check_complete(str(empty))
    not_gzip = tmp_path / "text.nii.gz"
    not_gzip.write_bytes(b"not a nifti file")
    with pytest.raises(LabelFileError, match="not a valid gzip file"):
        check_complete(str(not_gzip))
    # a complete gzip stream of half a NIfTI file: the stream is fine, the voxels are not all there
    nifti = tmp_path / "seg.nii"
    write_label(_blob(), str(nifti))
    half = tmp_path / "half.nii.gz"
    half.write_bytes(gzip.compress(nifti.read_bytes()[:NIFTI1_HEADER_BYTES + 100]))
    with pytest.raises(LabelFileError, match="is truncated"):
        check_complete(str(half))


def test_one_channel_of_integers(tmp_path):
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(_blob())] * 2)
    sitk.WriteImage(four_d, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(LabelFileError, match="holds 2 channels"):
        read_label_map(_reader(), str(tmp_path / "4d.nii.gz"))
    probabilities = _blob().astype(np.float32)
    probabilities[0, 0, 0] = 0.5
    sitk.WriteImage(sitk.GetImageFromArray(probabilities), str(tmp_path / "p.nii.gz"))
    with pytest.raises(LabelFileError, match=r"non-integer values \(e.g. 0.5\)"):
        read_label_map(_reader(), str(tmp_path / "p.nii.gz"))

    class NotANumberReader:  # a reader that hands back NaN, as a float format may hold
        def read_seg(self, path):
            labels = _blob().astype(np.float32)[None]
            labels[0, 1, 1, 1] = np.nan
            return labels, {"spacing": (1.0, 1.0, 1.0)}

    with pytest.raises(LabelFileError, match=r"non-integer values \(e.g. nan\)"):
        read_label_map(NotANumberReader(), str(tmp_path / "p.nii.gz"))
    # a float file holding integer labels is a label map
    sitk.WriteImage(sitk.GetImageFromArray(_blob().astype(np.float32)), str(tmp_path / "f.nii.gz"))
    assert read_label_map(_reader(), str(tmp_path / "f.nii.gz")).labels.max() == 1


def test_same_grid_with_tolerance():
    spacing = (1.5, 0.8, 0.8)
    identity = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    reference = LabelMap(np.zeros(SHAPE), spacing, (0.0, 0.0, 0.0), identity)

    def moved(**change):
        fields = dict(labels=np.zeros(SHAPE), spacing=spacing, origin=(0.0, 0.0, 0.0), direction=identity)
        fields.update(change)
        return LabelMap(**fields)

    check_same_grid(moved(origin=(1e-4, 0.0, 0.0)), reference)  # far below a hundredth of 0.8 mm
    check_same_grid(moved(spacing=(1.5 * (1 + 1e-5), 0.8, 0.8)), reference)
    for change, what in ((dict(origin=(0.0, 0.0, 2.0)), "origin"), (dict(origin=(0.01, 0.0, 0.0)), "origin"),
                         (dict(direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), "direction"),
                         (dict(spacing=(1.0, 0.8, 0.8)), "spacing"), (dict(labels=np.zeros((10, 16, 15))), "shape")):
        with pytest.raises(LabelFileError, match=f"geometry differs from the reference: {what}"):
            check_same_grid(moved(**change), reference)


def test_labels_defined_plain_and_regions():
    seg = LabelMap(np.array([[[0.0, 1.0], [2.0, 3.0]]]), (1.0, 1.0, 1.0))
    check_labels_defined(seg, {0, 1, 2, 3})
    with pytest.raises(LabelFileError, match=r"holds labels \[3\] that dataset.json does not define "
                                             r"\(it defines \[0, 1, 2\]\)"):
        check_labels_defined(seg, {0, 1, 2})
    from nnunetv2_deconver.tools.compare.scoring import label_values
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": [2], "ignore": 4}}
    assert label_values(regions) == {0, 1, 2, 4}


def test_dataset_and_plans_json_are_checked(tmp_path):
    def dataset(content):
        (tmp_path / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
        return read_dataset_json("run", [str(tmp_path)])

    good = {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}
    assert dataset(good)["labels"] == good["labels"]
    for content, message in (("{ not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
                             ({"file_ending": ".nii.gz"}, "no 'labels' object"),
                             ({**good, "labels": {"background": 0, "a": "one"}}, "label 'a' is 'one'"),
                             ({"labels": good["labels"]}, "no 'file_ending'"),
                             ({**good, "labels": {"background": 0, "whole": [1, 2]}}, "nnU-Net rejects its labels")):
        with pytest.raises(CompareError, match=message):
            dataset(content)
    with pytest.raises(CompareError, match="no dataset.json"):
        read_dataset_json("run", [str(tmp_path / "nowhere")])
    (tmp_path / "plans.json").write_text(json.dumps({"configurations": {"2d": {}}}))
    with pytest.raises(CompareError, match=r"has no configuration '3d_fullres' \(it has: 2d\)"):
        read_plans_json("run", [str(tmp_path)], "3d_fullres")
    assert read_plans_json("run", [str(tmp_path / "nowhere")], "3d_fullres") is None


# ---------------------------------------------------------------------------------------------- as a user meets it

def _run_folder(root, trainer):
    return root / "res" / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"


def _prediction(root, case="case_001"):
    return _run_folder(root, TRAINERS[1]) / "fold_0" / "validation" / f"{case}.nii.gz"


def _reference(root, case="case_001"):
    return root / "pre" / DATASET / "gt_segmentations" / f"{case}.nii.gz"


def _rewrite(path, change):
    image = sitk.ReadImage(str(path))
    change(image)
    sitk.WriteImage(image, str(path))


def _truncated_prediction(root):
    _truncate(_prediction(root))
    return "case case_001: prediction {prediction} is truncated (its gzip stream ends early)"


def _truncated_reference(root):
    _truncate(_reference(root))
    return "case case_001: reference label {reference} is truncated (its gzip stream ends early)"


def _origin(root):
    _rewrite(_prediction(root), lambda image: image.SetOrigin((0.0, 0.0, 5.0)))
    return "case case_001: prediction {prediction} geometry differs from the reference: origin (0.0, 0.0, 5.0) vs " \
           "(0.0, 0.0, 0.0) mm"


def _direction(root):
    _rewrite(_prediction(root), lambda image: image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
    return "case case_001: prediction {prediction} geometry differs from the reference: direction"


def _reference_label(root):
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(_reference(root))))
    seg[0, 0, 0] = 5
    write_label(seg, str(_reference(root)))
    return "case case_001: reference label {reference} holds labels [5] that dataset.json does not define " \
           "(it defines [0, 1, 2])"


def _probabilities(root):
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(_prediction(root)))).astype(np.float32) * 0.5
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(_prediction(root)))
    return "case case_001: prediction {prediction} holds non-integer values (e.g. 0.5)"


def _four_d(root):
    seg = sitk.ReadImage(str(_prediction(root)))
    sitk.WriteImage(sitk.JoinSeries([seg, seg]), str(_prediction(root)))
    return "case case_001: prediction {prediction} holds 2 channels"


def _dataset_json(root):
    (_run_folder(root, TRAINERS[1]) / "dataset.json").write_text('{"labels": {"background": 0,')
    return f"{TRAINERS[1]}: {_run_folder(root, TRAINERS[1]) / 'dataset.json'} is not valid JSON"


def _plans_json(root):
    (_run_folder(root, TRAINERS[0]) / "plans.json").write_bytes(b"\x00\x01 binary")
    return f"{TRAINERS[0]}: {_run_folder(root, TRAINERS[0]) / 'plans.json'} is not valid JSON"


def _region_reference_label(root):
    for trainer in TRAINERS:
        path = _run_folder(root, trainer) / "dataset.json"
        dataset_json = json.loads(path.read_text())
        dataset_json.update(labels={"background": 0, "both": [1, 2], "dot": 2}, regions_class_order=[1, 2])
        path.write_text(json.dumps(dataset_json))
    return _reference_label(root)


BAD_INPUTS = [_truncated_prediction, _truncated_reference, _origin, _direction, _reference_label, _probabilities,
              _four_d, _dataset_json, _plans_json, _region_reference_label]


def _compare(root, *extra):
    command = [os.path.join(BIN, "nnUNetv2_deconver_compare"), "-d", "901", "-o", str(root / "report"),
               "--no-timing", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.e2e
@pytest.mark.parametrize("damage", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_through_the_console_command(results, damage):
    expected = damage(results).format(prediction=_prediction(results), reference=_reference(results))
    done = _compare(results)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("nnUNetv2_deconver_compare: error: ")]
    assert any(expected in line for line in errors), done.stderr
    assert not (results / "report").exists()


@pytest.mark.e2e
def test_partial_without_a_usable_case_writes_nothing(results):
    """An old report stays as it was and is not offered as the result of this run."""
    old = results / "report" / "summary.md"
    old.parent.mkdir()
    old.write_text("old report")
    for case in CASES:
        fold = 0 if case in CASES[:3] else 1
        _truncate(_run_folder(results, TRAINERS[1]) / f"fold_{fold}" / "validation" / f"{case}.nii.gz")
    done = _compare(results, "--partial")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no case is usable: nothing to compare, no report written" in done.stderr
    assert "partial report" not in done.stderr
    assert old.read_text() == "old report"
    assert sorted(os.listdir(results / "report")) == ["summary.md"]
    assert [p for p in os.listdir(results) if p.startswith(".report")] == []  # no staging folder left
