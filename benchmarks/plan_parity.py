"""Deconver against stock nnU-Net on plans made by nnU-Net's own planner: training step, sliding-window
inference, activations saved for backward and peak training memory, as ratios measured in one run.

Three small datasets are generated in a temporary folder and planned with ``nnUNetv2_extract_fingerprint``
and ``nnUNetv2_plan_experiment`` (nnU-Net's default planner):

* ``2d``: 4 volumes of 16 x 224 x 192 voxels; the 2d configuration (6 stages, 32..512 features,
  patch 224 x 192, batch 3);
* ``3d_aniso``: 4 volumes of 24 x 64 x 64 voxels at spacing 3 x 1 x 1 mm; 3d_fullres with (1, 3, 3)
  kernels and (1, 2, 2) strides where the spacing is anisotropic;
* ``3d_iso``: 4 volumes of 64^3 at 1 mm; 3d_fullres (the isotropic plan of ``network_step.py``).

Both networks come from their trainers' ``build_network_architecture`` (``nnUNetTrainer`` and
``nnUNetTrainerDeconver``) on the same plan. A training step is forward, deep-supervision cross-entropy,
backward and SGD (lr 1e-2, momentum 0.99, Nesterov), fp32 on the CPU. Inference is
``predict_sliding_window_return_logits`` over an image of two patches per axis, tile step 1.0, no mirroring.
Saved activations: bytes autograd saves in one training forward (parameters excluded). Peak: the profiler's
CPU memory timeline over one training step (after a warm-up step), in a fresh process per network.

The process applies the Deconver trainer's glibc setting (:mod:`nnunetv2_deconver.nnunet.allocator`) unless
``--no-malloc-tuning``; it is process-wide, so in one interleaved run both networks run under it.

    python benchmarks/plan_parity.py [--plans 2d 3d_aniso 3d_iso] [--repeats 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import PeakMemory, machine_description, median, mib, timed  # noqa: E402

DATASETS = {  # name: (id, volume shape z y x, spacing z y x, configuration)
    "2d": (971, (16, 224, 192), (1.0, 1.0, 1.0), "2d"),
    "3d_aniso": (972, (24, 64, 64), (3.0, 1.0, 1.0), "3d_fullres"),
    "3d_iso": (973, (64, 64, 64), (1.0, 1.0, 1.0), "3d_fullres"),
}
NETWORKS = ("stock", "Deconver")
BIN = Path(sys.executable).parent


def write_dataset(raw: Path, dataset_id: int, shape, spacing, cases: int = 4) -> None:
    """Noisy images with a ball (label 1) holding a core (label 2), as nnU-Net's raw format."""
    import SimpleITK as sitk
    folder = raw / f"Dataset{dataset_id}_Parity"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(dataset_id)
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij"))
    extent = np.array(shape) * np.array(spacing)
    for case in range(cases):
        centre = extent * rng.uniform(0.35, 0.65, 3)
        distance = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        radius = extent.min() * rng.uniform(0.2, 0.3)
        labels = (distance < radius).astype(np.uint8) + (distance < radius / 2)
        image = (100 * labels + rng.normal(0, 20, shape)).astype(np.float32)
        for array, path in ((image, folder / "imagesTr" / f"c{case:03d}_0000.nii.gz"),
                            (labels.astype(np.uint8), folder / "labelsTr" / f"c{case:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(float(s) for s in spacing[::-1]))
            sitk.WriteImage(itk, str(path))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT-free"}, "labels": {"background": 0, "ball": 1, "core": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))


def make_plans(folder: Path, names) -> None:
    """Raw datasets and nnU-Net's plans for ``names`` under ``folder`` (nnUNet_raw / nnUNet_preprocessed)."""
    for name in names:
        dataset_id, shape, spacing, _ = DATASETS[name]
        write_dataset(folder / "raw", dataset_id, shape, spacing)
        for tool in ("nnUNetv2_extract_fingerprint", "nnUNetv2_plan_experiment"):
            extra = ["-np", "2"] if tool == "nnUNetv2_extract_fingerprint" else []
            subprocess.run([str(BIN / tool), "-d", str(dataset_id), *extra], check=True, env=os.environ.copy(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nnunet_folders(folder: Path) -> Path:
    """``folder`` as nnU-Net's raw, preprocessed and results folders, set in the environment."""
    for sub, variable in (("raw", "nnUNet_raw"), ("preprocessed", "nnUNet_preprocessed"),
                          ("results", "nnUNet_results")):
        (folder / sub).mkdir()
        os.environ[variable] = str(folder / sub)
    return folder


def planned_folder(folder: Path, names) -> Path:
    """:func:`nnunet_folders` with the plans of ``names`` made in it."""
    make_plans(nnunet_folders(folder), names)
    return folder


def load_plan(folder: Path, name: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    dataset_id, _, _, configuration = DATASETS[name]
    plans = json.loads((folder / "preprocessed" / f"Dataset{dataset_id}_Parity" / "nnUNetPlans.json").read_text())
    manager = PlansManager(plans)
    return manager, manager.get_configuration(configuration)


def build(network: str, manager, configuration, deep_supervision: bool) -> torch.nn.Module:
    if network == "stock":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as trainer
    else:
        from trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver as trainer
    return trainer.build_network_architecture(manager, configuration, 1, 3, deep_supervision)


class Step:
    """One training step of one network on a fixed random batch."""

    def __init__(self, network: torch.nn.Module, patch, batch: int):
        self.network = network.train()
        self.optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                                         weight_decay=3e-5)
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randn(batch, 1, *patch, generator=generator)
        target = torch.randint(0, 3, (batch, 1, *patch), generator=generator).float()
        with torch.no_grad():
            sizes = [o.shape[2:] for o in network(self.data[:1])]
        self.targets = [F.interpolate(target, size=s, mode="nearest").long()[:, 0] for s in sizes]

    def forward_loss(self):
        outputs = self.network(self.data)
        weights = [1 / 2 ** level for level in range(len(outputs))]
        return sum(w * F.cross_entropy(o, t) for w, o, t in zip(weights, outputs, self.targets)) / sum(weights)

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss().backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self.optimizer.step()


def predictor_for(network, patch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=1.0, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.network = network.eval()
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=3)
    predictor.allowed_mirroring_axes = None
    return predictor


def inference_image(patch):
    """Two patches per axis (for a 2D plan: two slices of 2 x 2 patches)."""
    shape = (2, *(2 * p for p in patch)) if len(patch) == 2 else tuple(2 * p for p in patch)
    return torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))


def peak_of_step(folder: Path, name: str, network: str):
    """Peak of one training step after a warm-up step, and its split by profiler category (fresh process)."""
    manager, configuration = load_plan(folder, name)
    torch.manual_seed(0)
    step = Step(build(network, manager, configuration, True), configuration.patch_size, configuration.batch_size)
    step()
    with PeakMemory(torch.device("cpu")) as peak:
        step()
    return peak.bytes, peak.categories


def saved_bytes(step: Step) -> int:
    from nnunetv2_deconver.network.costs import saved_tensor_bytes
    return saved_tensor_bytes(step.forward_loss, exclude=step.network.parameters())


def run_plan(folder: Path, name: str, repeats: int, tuned: bool) -> None:
    manager, configuration = load_plan(folder, name)
    patch, batch = tuple(configuration.patch_size), configuration.batch_size
    arch = configuration.network_arch_init_kwargs
    print(f"\n## {name}: {configuration.data_identifier if hasattr(configuration, 'data_identifier') else ''} "
          f"patch {patch}, batch {batch}, {arch['n_stages']} stages {arch['features_per_stage']}, "
          f"kernels {arch['kernel_sizes']}, strides {arch['strides']}", flush=True)
    torch.manual_seed(0)
    steps = {n: Step(build(n, manager, configuration, True), patch, batch) for n in NETWORKS}
    predictors = {n: predictor_for(build(n, manager, configuration, False), patch) for n in NETWORKS}
    image = inference_image(patch)
    for n in NETWORKS:  # warm-up
        steps[n]()
        predictors[n].predict_sliding_window_return_logits(image)
    train, infer = {n: [] for n in NETWORKS}, {n: [] for n in NETWORKS}
    for _ in range(repeats):
        for n in NETWORKS:
            train[n].append(timed(steps[n], torch.device("cpu")))
            infer[n].append(timed(lambda p=predictors[n]: p.predict_sliding_window_return_logits(image),
                                  torch.device("cpu")))
    saved = {n: saved_bytes(steps[n]) for n in NETWORKS}
    del steps, predictors
    peaks, splits = {}, {}
    for n in NETWORKS:
        command = [sys.executable, __file__, "--peak-of", f"{folder}:{name}:{n}"] + ([] if tuned else
                                                                                    ["--no-malloc-tuning"])
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
        peaks[n], splits[n] = json.loads(result.stdout.strip().splitlines()[-1])
    print("| network | train step s | ratio | inference s | ratio | saved for backward MiB | ratio "
          "| train peak MiB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {"t": median(train["stock"]), "i": median(infer["stock"]), "s": saved["stock"], "p": peaks["stock"]}
    for n in NETWORKS:
        t, i = median(train[n]), median(infer[n])
        print(f"| {n} | {t:.2f} | {t / base['t']:.2f} | {i:.2f} | {i / base['i']:.2f} | {mib(saved[n])} "
              f"| {saved[n] / base['s']:.2f} | {mib(peaks[n])} | {peaks[n] / base['p']:.2f} |")
    for n in NETWORKS:
        print(f"# {n} peak by category (MiB): " + ", ".join(f"{k} {mib(v)}" for k, v in splits[n].items()))
    print(f"# all runs (s): train {json.dumps({n: [round(v, 2) for v in train[n]] for n in NETWORKS})}, "
          f"inference {json.dumps({n: [round(v, 2) for v in infer[n]] for n in NETWORKS})}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-malloc-tuning", action="store_true")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from nnunetv2_deconver.nnunet.allocator import keep_freed_memory_for_reuse
    tuned = not args.no_malloc_tuning and keep_freed_memory_for_reuse(torch.device("cpu"))
    if args.peak_of:
        folder, name, network = args.peak_of.rsplit(":", 2)
        print(json.dumps(peak_of_step(Path(folder), name, network)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = planned_folder(Path(tmp), args.plans)
        print(f"# {machine_description(torch.device('cpu'))}")
        print(f"# fp32, eager; {args.repeats} interleaved runs, medians; glibc malloc tuning "
              f"{'on' if tuned else 'off'} for the whole process")
        for name in args.plans:
            run_plan(folder, name, args.repeats, tuned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
