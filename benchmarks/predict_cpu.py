"""``nnUNetv2_predict -device cpu`` wall time, stock nnU-Net against Deconver, on nnU-Net's own plans.

The plans are plan_parity's three (2d, 3d_aniso, 3d_iso: made by ``nnUNetv2_plan_experiment``). For each, both
trainers' networks are built by their ``build_network_architecture`` and saved with their initial weights as
fold 0 of a results folder (the time of a prediction does not depend on the weights), then
``nnUNetv2_predict -device cpu`` predicts one volume larger than a patch (``--volumes small``: a few tiles;
``large``: tens of tiles, where the sliding window outweighs the command's fixed costs; tile step 0.5)
in a fresh process per run, stock and Deconver interleaved, ``repeats`` times; the table gives medians of
the command's wall time (process start to exit: reading, preprocessing, sliding window, export).

``--forward`` times instead the network's forward on one patch as ``nnUNetPredictor`` calls it (batch 1,
fp32, ``torch.inference_mode``), eager and ``torch.compile``-d, each network in a fresh process (so that a
process-wide setting one network makes does not reach the other), medians of 5 calls after warm-up.

    python benchmarks/predict_cpu.py [--plans 2d 3d_aniso 3d_iso] [--repeats 2] [--mirroring] [--compile]
                                     [--volumes small|large]
    python benchmarks/predict_cpu.py --forward [--plans ...]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_description, median  # noqa: E402
from plan_parity import BIN, DATASETS, build, load_plan, planned_folder  # noqa: E402

TRAINERS = {"stock": "nnUNetTrainer", "Deconver": "nnUNetTrainerDeconver"}
# z y x voxels: "small" a few tiles per plan (the command's fixed costs weigh), "large" tens of tiles
VOLUMES = {"small": {"2d": (4, 320, 288), "3d_aniso": (32, 96, 96), "3d_iso": (80, 80, 80)},
           "large": {"2d": (32, 320, 288), "3d_aniso": (48, 192, 192), "3d_iso": (128, 128, 128)}}


def write_model(folder: Path, name: str, network: str) -> None:
    """Fold 0 of ``network``'s trainer on plan ``name``: plans, dataset.json, a checkpoint of initial weights."""
    dataset_id, _, _, configuration = DATASETS[name]
    manager, configuration_manager = load_plan(folder, name)
    dataset = f"Dataset{dataset_id}_Parity"
    model = folder / "results" / dataset / f"{TRAINERS[network]}__nnUNetPlans__{configuration}"
    (model / "fold_0").mkdir(parents=True)
    shutil.copy(folder / "preprocessed" / dataset / "nnUNetPlans.json", model / "plans.json")
    shutil.copy(folder / "raw" / dataset / "dataset.json", model / "dataset.json")
    net = build(network, manager, configuration_manager, False)
    axes = tuple(range(len(configuration_manager.patch_size)))
    torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": configuration},
                "trainer_name": TRAINERS[network], "inference_allowed_mirroring_axes": axes},
               model / "fold_0" / "checkpoint_final.pth")


def write_volume(folder: Path, name: str, shape) -> Path:
    import SimpleITK as sitk
    images = folder / f"test_{name}"
    images.mkdir()
    spacing = DATASETS[name][2]
    rng = np.random.default_rng(0)
    itk = sitk.GetImageFromArray(rng.normal(0, 50, shape).astype(np.float32))
    itk.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(itk, str(images / "case_0000.nii.gz"))
    return images


def predict_seconds(folder: Path, name: str, network: str, images: Path, mirroring: bool, compiled: bool) -> float:
    dataset_id, _, _, configuration = DATASETS[name]
    out = folder / f"out_{name}_{network}_{time.monotonic_ns()}"
    command = [str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(dataset_id),
               "-c", configuration, "-tr", TRAINERS[network], "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"]
    if not mirroring:
        command.append("--disable_tta")
    from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder
    env = dict(os.environ, nnUNet_compile="t" if compiled else "f", nnUNet_extTrainer=trainers_folder())
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


FORWARD = """
import json, statistics, sys, time, torch
sys.path.insert(0, {benchmarks!r})
from pathlib import Path
from plan_parity import build, load_plan
manager, configuration = load_plan(Path({folder!r}), {name!r})
net = build({network!r}, manager, configuration, False).eval()
if {compiled!r}:
    net = torch.compile(net)
x = torch.randn(1, 1, *configuration.patch_size, generator=torch.Generator().manual_seed(0))
times = []
with torch.inference_mode():
    for i in range(7):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times[2:])))
"""


def forward_seconds(folder: Path, name: str, network: str, compiled: bool) -> float:
    """Median seconds of one patch's forward of ``network`` on plan ``name``, in a fresh process."""
    code = FORWARD.format(benchmarks=str(Path(__file__).resolve().parent), folder=str(folder), name=name,
                          network=network, compiled=compiled)
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def forward_table(folder: Path, plans) -> None:
    print("| plan | patch | stock eager s | Deconver eager s | ratio | stock compiled s | Deconver compiled s "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in plans:
        patch = "x".join(map(str, load_plan(folder, name)[1].patch_size))
        t = {(n, c): forward_seconds(folder, name, n, c) for c in (False, True) for n in TRAINERS}
        print(f"| {name} | {patch} | {t['stock', False]:.3f} | {t['Deconver', False]:.3f} | "
              f"{t['Deconver', False] / t['stock', False]:.2f}x | {t['stock', True]:.3f} | {t['Deconver', True]:.3f} | "
              f"{t['Deconver', True] / t['stock', True]:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (nnU-Net's default)")
    parser.add_argument("--compile", action="store_true", help="nnUNet_compile=t")
    parser.add_argument("--volumes", default="small", choices=list(VOLUMES), help="volume size per plan")
    parser.add_argument("--forward", action="store_true", help="time the network's forward on one patch instead")
    args = parser.parse_args()
    print(machine_description(torch.device("cpu")), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = planned_folder(Path(tmp), args.plans)
        if args.forward:
            forward_table(folder, args.plans)
            return
        rows = []
        for name in args.plans:
            for network in TRAINERS:
                write_model(folder, name, network)
            images = write_volume(folder, name, VOLUMES[args.volumes][name])
            times = {n: [] for n in TRAINERS}
            for _ in range(args.repeats):
                for network in TRAINERS:
                    times[network].append(predict_seconds(folder, name, network, images, args.mirroring,
                                                          args.compile))
            stock, deconver = median(times["stock"]), median(times["Deconver"])
            volume = VOLUMES[args.volumes][name]
            rows.append((name, volume, stock, deconver))
            print(f"{name} {volume} {json.dumps({n: [round(t, 1) for t in v] for n, v in times.items()})}", flush=True)
    print(f"\nmirroring {args.mirroring}, nnUNet_compile {args.compile}, medians of {args.repeats}")
    print("| plan | volume (z y x) | stock s | Deconver s | ratio |\n|---|---|---|---|---|")
    for name, volume, stock, deconver in rows:
        print(f"| {name} | {'x'.join(map(str, volume))} | {stock:.1f} | {deconver:.1f} | {deconver / stock:.2f}x |")


if __name__ == "__main__":
    main()
