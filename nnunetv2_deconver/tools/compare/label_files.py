"""Label map files (and the image of the worst-case picture), checked in full before they are scored.

A file is used only if it is readable to its end, holds one channel of integer labels that the
dataset defines, and (for a prediction) lies on the reference's physical grid: the same size,
spacing, origin and direction. Each check raises :class:`LabelFileError` with one line that says what
is wrong and how to fix it; the caller adds which file and case it is.
"""
import contextlib
import gzip
import io
import os
import zlib
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import numpy as np

__all__ = ["LabelFileError", "LabelMap", "check_complete", "read_label_map", "check_same_grid",
           "check_labels_defined", "check_image", "SPACING_RTOL", "ORIGIN_TOLERANCE_VOXELS", "DIRECTION_ATOL"]

SPACING_RTOL = 1e-3  # relative: the rounding of spacings written with few digits
ORIGIN_TOLERANCE_VOXELS = 0.01  # origins may differ by a hundredth of the smallest voxel edge
DIRECTION_ATOL = 1e-4  # direction cosines
_REWRITE = ("write the complete file again (run nnUNetv2_predict again for a prediction, copy it again for "
            "a reference)")


class LabelFileError(Exception):
    """A label map file that cannot be scored; the message is one line with the fix."""


@dataclass
class LabelMap:
    """A label map as nnU-Net reads it and where it lies in space.

    ``labels``: (z, y, x) or (1, y, x) for 2D, float as nnU-Net's readers return it; ``spacing`` per
    array axis in mm; ``origin`` and ``direction`` in the file's (x, y, z) order where the reader
    reports them (SimpleITK), ``affine`` where it reports that instead (nibabel), else None.
    """
    labels: np.ndarray
    spacing: Tuple[float, ...]
    origin: Optional[Tuple[float, ...]] = None
    direction: Optional[Tuple[float, ...]] = None
    affine: Optional[np.ndarray] = None


def _nifti_data_bytes(path: str) -> Optional[int]:
    """Header offset plus voxel bytes that a NIfTI file must hold, from its header; None if not NIfTI."""
    import nibabel
    try:
        voxels = nibabel.load(path).dataobj  # reads the header only
        offset, shape, dtype = int(voxels.offset), voxels.shape, np.dtype(voxels.dtype)
    except Exception:  # not a NIfTI file nibabel understands: the reader decides
        return None
    return offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_complete(path: str) -> None:
    """Raise :class:`LabelFileError` if the file is empty, its gzip stream is cut short or corrupt, or a
    NIfTI file holds fewer voxel bytes than its header announces. Readers fill a half-written file
    with zeros or garbage without complaint, so this reads the file to its end."""
    size = os.path.getsize(path)
    if size == 0:
        raise LabelFileError(f"is an empty file: {_REWRITE}")
    if path.lower().endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as stream:
                while True:
                    chunk = stream.read(1 << 22)
                    if not chunk:
                        break
                    size += len(chunk)
        except EOFError:
            raise LabelFileError(f"is truncated (its gzip stream ends early): {_REWRITE}") from None
        except (OSError, zlib.error) as error:
            raise LabelFileError(f"is not a valid gzip file ({error}): {_REWRITE}") from None
    if path.lower().endswith((".nii", ".nii.gz")):
        expected = _nifti_data_bytes(path)
        if expected is not None and size < expected:
            raise LabelFileError(f"is truncated (holds {size} of the {expected} bytes its header announces): "
                                 f"{_REWRITE}")


def _read(read, reader, path: str):
    """``read(path)`` of nnU-Net's ``reader`` after :func:`check_complete`; a failure is a :class:`LabelFileError`."""
    check_complete(path)
    try:
        # nnU-Net's readers print warnings on stdout, which would mix with the report table
        with contextlib.redirect_stdout(io.StringIO()):
            return read(path)
    except Exception as error:  # any reader failure means the same to the user: the file cannot be read
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        raise LabelFileError(f"is unreadable by {type(reader).__name__} ({type(error).__name__}: {first_line}): "
                             f"write it again in the dataset's file format") from None


def read_label_map(reader, path: str) -> LabelMap:
    """Read a label map with nnU-Net's ``reader``, in full (:func:`check_complete`); one channel of integers."""
    segmentation, properties = _read(reader.read_seg, reader, path)
    if segmentation.shape[0] != 1:
        raise LabelFileError(f"holds {segmentation.shape[0]} channels (shape {tuple(segmentation.shape)} as nnU-Net "
                             f"reads it, e.g. a 4D file): a label map has one channel; write the labels as one "
                             f"3D (or 2D) image")
    labels = segmentation[0]
    finite = np.isfinite(labels)
    if not finite.all() or not np.array_equal(labels, np.round(labels)):
        bad = labels[~finite | (labels != np.round(labels))]
        raise LabelFileError(f"holds non-integer values (e.g. {float(bad.flat[0]):g}): a label map holds "
                             f"integer labels; write the argmax labels, not probabilities")
    sitk = properties.get("sitk_stuff") or {}
    nibabel_properties = properties.get("nibabel_stuff") or {}
    affine = nibabel_properties.get("original_affine")
    return LabelMap(labels, tuple(float(s) for s in properties["spacing"]),
                    tuple(float(v) for v in sitk["origin"]) if "origin" in sitk else None,
                    tuple(float(v) for v in sitk["direction"]) if "direction" in sitk else None,
                    None if affine is None else np.asarray(affine, float))


def _rounded(values) -> tuple:
    return tuple(round(float(v), 4) for v in values)


def check_same_grid(prediction: LabelMap, reference: LabelMap) -> None:
    """Raise :class:`LabelFileError` unless the prediction lies on the reference's voxel grid in space:
    the same shape, spacing (relative tolerance ``SPACING_RTOL``), origin (within
    ``ORIGIN_TOLERANCE_VOXELS`` of the smallest voxel edge) and direction (``DIRECTION_ATOL``)."""
    fix = "predictions must lie on the reference's grid (nnUNetv2_predict writes them so); predict the case again"
    if prediction.labels.shape != reference.labels.shape:
        raise LabelFileError(f"geometry differs from the reference: shape {prediction.labels.shape} vs "
                             f"{reference.labels.shape}; {fix}")
    if len(prediction.spacing) != len(reference.spacing) or \
            not np.allclose(prediction.spacing, reference.spacing, rtol=SPACING_RTOL, atol=0):
        raise LabelFileError(f"geometry differs from the reference: spacing {_rounded(prediction.spacing)} vs "
                             f"{_rounded(reference.spacing)} mm; {fix}")
    tolerance = ORIGIN_TOLERANCE_VOXELS * min(reference.spacing)
    if prediction.origin is not None and reference.origin is not None and \
            not np.allclose(prediction.origin, reference.origin, rtol=0, atol=tolerance):
        raise LabelFileError(f"geometry differs from the reference: origin {_rounded(prediction.origin)} vs "
                             f"{_rounded(reference.origin)} mm; {fix}")
    if prediction.direction is not None and reference.direction is not None and \
            not np.allclose(prediction.direction, reference.direction, rtol=0, atol=DIRECTION_ATOL):
        raise LabelFileError(f"geometry differs from the reference: direction {_rounded(prediction.direction)} "
                             f"vs {_rounded(reference.direction)}; {fix}")
    if prediction.affine is not None and reference.affine is not None:
        rotation_scale = np.allclose(prediction.affine[:3, :3], reference.affine[:3, :3], rtol=SPACING_RTOL,
                                     atol=DIRECTION_ATOL * max(reference.spacing))
        translation = np.allclose(prediction.affine[:3, 3], reference.affine[:3, 3], rtol=0, atol=tolerance)
        if not (rotation_scale and translation):
            raise LabelFileError(f"geometry differs from the reference: affine "
                                 f"{_rounded(prediction.affine[:3].ravel())} vs "
                                 f"{_rounded(reference.affine[:3].ravel())}; {fix}")


def check_image(reader, path: str, reference: LabelMap) -> None:
    """Raise :class:`LabelFileError` unless the image (one channel, for the worst-case picture) reads in
    full and has the reference's shape."""
    images, _ = _read(lambda p: reader.read_images([p]), reader, path)
    if tuple(images.shape[1:]) != tuple(reference.labels.shape):
        raise LabelFileError(f"has shape {tuple(images.shape[1:])}, the reference {tuple(reference.labels.shape)}: "
                             f"it is not this case's image")


def check_labels_defined(label_map: LabelMap, defined: Iterable[int]) -> None:
    """Raise :class:`LabelFileError` if the map holds a label value that ``defined`` (the values of
    dataset.json's ``labels``, regions' members and the ignore label included) does not hold."""
    defined = sorted({int(v) for v in defined})
    unknown = sorted({int(v) for v in np.unique(label_map.labels)} - set(defined))
    if unknown:
        raise LabelFileError(f"holds labels {unknown} that dataset.json does not define (it defines {defined}): "
                             f"fix the file or dataset.json's labels")
