"""Where DTC looks: the learned sampling displacement of a trained model's last up-sampling layer drawn
over the input image (the DTC paper's Fig. 7).

The case is preprocessed exactly as nnU-Net does for inference, one patch of the plan's patch size is
cut around the chosen slice, and the network runs once on it while a hook records the input of the last
(highest-resolution) :class:`~nnunetv2_deconver.ops.dtc.DeformableTransposedConv`. The figure has three
panels on one slice of the patch: the image with the predicted labels outlined; the in-plane
displacement in image pixels (colour: length, arrows: direction); and the sampling density, i.e. how
many output pixels read from each image pixel (a uniform grey without deformation; white where DTC
concentrates its samples, black where it looks away, as in the paper's figure).
"""
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from nnunetv2_deconver.nnunet.trainer_discovery import make_trainers_findable

__all__ = ["DisplacementError", "last_dtc_layer", "sample_displacement", "save_displacement_figure",
           "check_output_png"]


class DisplacementError(ValueError):
    """A user mistake (missing folder or image, a model without DTC); the message says which."""


def last_dtc_layer(network: torch.nn.Module):
    """The DTC layer that writes the highest resolution (the last one run), or DisplacementError."""
    from nnunetv2_deconver.ops import DeformableTransposedConv
    layers = [m for m in network.modules() if isinstance(m, DeformableTransposedConv)]
    if not layers:
        raise DisplacementError(f"the network ({type(network).__name__}) has no DTC layer; train it with a DTC "
                                f"trainer such as nnUNetTrainerUNetDTC or nnUNetTrainerDeconverDTC")
    # decoders run their up-samplers in registration order, so the last registered is the last run
    return layers[-1]


def _centre_crop(data: np.ndarray, patch: Sequence[int], centre: Sequence[int]) -> np.ndarray:
    """A ``patch``-sized window of ``data`` (C, *spatial) around ``centre``, zero-padded where it overhangs."""
    pads = [(0, 0)] + [(max(0, p - s), max(0, p - s)) for p, s in zip(patch, data.shape[1:])]
    data = np.pad(data, pads)
    centre = [c + pad[0] for c, pad in zip(centre, pads[1:])]
    slices = [slice(None)]
    for c, p, s in zip(centre, patch, data.shape[1:]):
        start = int(np.clip(c - p // 2, 0, s - p))
        slices.append(slice(start, start + p))
    return data[tuple(slices)]


def _predictor(model_folder: str, fold, checkpoint: str):
    """nnU-Net's predictor of the trained model (CPU, no mirroring), as ``nnUNetv2_predict`` loads it."""
    make_trainers_findable()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=1.0, use_gaussian=False, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold if fold == "all" else int(fold),), checkpoint)
    return predictor


def _patch_around(data: np.ndarray, patch: List[int], slice_index: int):
    """The patch the network runs on around ``slice_index`` of ``data`` (C, Z, Y, X), and where that slice
    is inside it (None for a 2D configuration, which sees the slice alone)."""
    if len(patch) == 2:
        return _centre_crop(data[:, slice_index], patch, [s // 2 for s in data.shape[2:]]), None
    window = _centre_crop(data, patch, [slice_index] + [s // 2 for s in data.shape[2:]])
    # where the chosen slice landed inside the window (the crop may be clamped at the volume's ends)
    padded = max(0, patch[0] - data.shape[1])
    start = int(np.clip(slice_index + padded - patch[0] // 2, 0, data.shape[1] + 2 * padded - patch[0]))
    return window, slice_index + padded - start


def _run_with_hook(network: torch.nn.Module, layer, window: np.ndarray):
    """The predicted labels of ``window`` and ``layer``'s displacement in output pixels, (d, *spatial)."""
    captured = {}
    hook = layer.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0].detach()))
    try:
        with torch.no_grad():
            logits = network(torch.from_numpy(np.ascontiguousarray(window))[None].float())
            displacement = layer.displacement(captured["x"])[0]  # (d, *S_out) in the layer's input pixels
    finally:
        hook.remove()
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    # one input pixel of the layer is `stride` output pixels, and the layer writes the full resolution
    stride = np.array(layer.stride, dtype=np.float32).reshape(-1, *([1] * (displacement.dim() - 1)))
    return logits[0].argmax(0).numpy(), displacement.numpy() * stride


def sample_displacement(model_folder: str, image_files: List[str], fold="0",
                        checkpoint: str = "checkpoint_final.pth", slice_index: Optional[int] = None) -> dict:
    """Run one patch through the trained network; return the image slice, prediction and displacement.

    Returns a dict with ``image`` (H, W), ``labels`` (H, W), ``displacement`` (2, H, W) in image pixels
    along (rows, columns) of the slice, ``through_plane`` (H, W) in image pixels along the sliced axis
    (zeros for 2D), ``stride`` and ``receptive_field`` of the layer, and ``slice_index``.
    """
    if not os.path.isdir(os.path.join(model_folder, f"fold_{fold}")):
        raise DisplacementError(f"{model_folder} has no fold_{fold}: give a trained model folder "
                                f"(nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION)")
    missing = [f for f in image_files if not os.path.isfile(f)]
    if missing:
        raise DisplacementError(f"image file(s) not found: {', '.join(missing)}")
    predictor = _predictor(model_folder, fold, checkpoint)
    network = predictor.network.eval()
    layer = last_dtc_layer(network)
    configuration = predictor.configuration_manager
    preprocessor = configuration.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(image_files, None, predictor.plans_manager, configuration,
                                       predictor.dataset_json)  # (C, Z, Y, X), normalised
    slice_index = data.shape[1] // 2 if slice_index is None else int(slice_index)
    if not 0 <= slice_index < data.shape[1]:
        raise DisplacementError(f"slice {slice_index} is outside the preprocessed image's {data.shape[1]} slices")
    window, slice_in_patch = _patch_around(data, [int(p) for p in configuration.patch_size], slice_index)
    labels, displacement = _run_with_hook(network, layer, window)
    image = window[0]
    if slice_in_patch is not None:
        image, labels = image[slice_in_patch], labels[slice_in_patch]
        through_plane, displacement = displacement[0, slice_in_patch], displacement[1:, slice_in_patch]
    else:
        through_plane = np.zeros_like(displacement[0])
    return dict(image=image, labels=labels, displacement=displacement, through_plane=through_plane,
                stride=tuple(layer.stride), receptive_field=layer.receptive_field, slice_index=slice_index)


def sampling_density(displacement: np.ndarray) -> np.ndarray:
    """How many output pixels sample each image pixel: a 2D histogram of ``grid + displacement``."""
    rows, cols = displacement.shape[1:]
    grid_r, grid_c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    # border padding: a sample pushed off the image reads the edge pixel
    rows_at = np.clip(grid_r + displacement[0], 0, rows - 1)
    cols_at = np.clip(grid_c + displacement[1], 0, cols - 1)
    density, _, _ = np.histogram2d(rows_at.ravel(), cols_at.ravel(),
                                   bins=(rows, cols), range=((-0.5, rows - 0.5), (-0.5, cols - 0.5)))
    return density


def save_displacement_figure(result: dict, output_png: str, title: str = "") -> None:
    """Draw the three panels of :func:`sample_displacement`'s result into ``output_png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, labels, displacement = result["image"], result["labels"], result["displacement"]
    length = np.sqrt((displacement ** 2).sum(0))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    axes[0].imshow(image, cmap="gray")
    if labels.max() > 0:
        axes[0].contour(labels, levels=np.arange(labels.max()) + 0.5, cmap="autumn", linewidths=1)
    axes[0].set_title(f"input, slice {result['slice_index']}, predicted labels outlined")
    shown = axes[1].imshow(length, cmap="magma")
    step = max(1, max(image.shape) // 16)  # about 16 arrows across, so they stay readable
    rr, cc = np.mgrid[0:image.shape[0]:step, 0:image.shape[1]:step]
    axes[1].quiver(cc, rr, displacement[1, ::step, ::step], displacement[0, ::step, ::step], color="cyan",
                   angles="xy", scale_units="xy", scale=1.0, width=0.004)
    axes[1].set_title("in-plane sampling displacement (image pixels)")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    density = sampling_density(displacement)
    shown = axes[2].imshow(density, cmap="gray", vmin=0)
    axes[2].set_title("sampling density (1 = undeformed; white = looked at)")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    rf = result["receptive_field"]
    fig.suptitle(f"{title}\nlast DTC layer: stride {result['stride']}, receptive field "
                 f"{'unrestricted' if rf is None else rf}; max in-plane |d| {length.max():.3f} px, "
                 f"max through-plane |d| {np.abs(result['through_plane']).max():.3f} px")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(output_png, dpi=110)
    plt.close(fig)


def check_output_png(path: str) -> None:
    """Raise DisplacementError (one line) unless ``path`` is a ``.png`` file that can be written: not a
    folder, in a folder that exists and is writable."""
    if os.path.isdir(path):
        raise DisplacementError(f"-o {path} is a folder; give a PNG file, e.g. "
                                f"{os.path.join(path, 'dtc_displacement.png')}")
    if not path.lower().endswith(".png"):
        raise DisplacementError(f"-o {path}: the figure is a PNG; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise DisplacementError(f"-o {path}: folder {folder} does not exist or cannot be written; create it or "
                                f"give another -o")


def _save_atomic(result: dict, output_png: str, title: str) -> None:
    """:func:`save_displacement_figure` into a temporary file beside ``output_png``, renamed when complete."""
    import tempfile
    folder, name = os.path.split(os.path.abspath(output_png))
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".png", dir=folder)
    os.close(handle)
    try:
        save_displacement_figure(result, temporary, title)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # a new file's permissions, not mkstemp's private 0600
        os.replace(temporary, output_png)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def run(args) -> int:
    import sys
    try:
        check_output_png(args.output)
        print(f"loading {args.model_folder} (fold {args.fold}) and preprocessing {', '.join(args.images)} ...",
              file=sys.stderr, flush=True)
        result = sample_displacement(args.model_folder, args.images, args.fold, args.checkpoint, args.slice)
        title = os.path.basename(os.path.normpath(args.model_folder))
        _save_atomic(result, args.output, title)
    except (DisplacementError, FileNotFoundError) as error:
        print(f"nnunetv2_deconver dtc-displacement: error: {error}", file=sys.stderr)
        return 1
    length = np.sqrt((result["displacement"] ** 2).sum(0))
    print(f"wrote {args.output}: in-plane displacement mean {length.mean():.4f}, max {length.max():.4f} image "
          f"pixels on slice {result['slice_index']}")
    return 0


def add_arguments(parser) -> None:
    """The arguments of ``nnunetv2_deconver dtc-displacement``."""
    parser.add_argument("model_folder", help="trained model folder: nnUNet_results/DatasetXXX/TRAINER__PLANS__CONF")
    parser.add_argument("images", nargs="+", help="the case's image file(s), one per input channel (_0000, ...)")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--fold", default="0", help="fold to load (default 0; 'all' for fold_all)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in the fold")
    parser.add_argument("--slice", type=int, default=None,
                        help="slice along the first axis of the preprocessed image (default: the middle)")
