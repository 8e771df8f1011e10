"""``nnUNetv2_predict -device cpu`` wall time, stock nnU-Net against Deconver, on nnU-Net's own plans.

The plans are plan_parity's three (2d, 3d_aniso, 3d_iso: made by ``nnUNetv2_plan_experiment``). For each, both
trainers' networks are built by their ``build_network_architecture`` and saved with their initial weights as
fold 0 of a results folder (the time of a prediction does not depend on the weights), then
``nnUNetv2_predict -device cpu`` predicts one volume larger than a patch (several tiles, tile step 0.5)
in a fresh process per run, stock and Deconver interleaved, ``repeats`` times; the table gives medians of
the command's wall time (process start to exit: reading, preprocessing, sliding window, export).

    python benchmarks/predict_cpu.py [--plans 2d 3d_aniso 3d_iso] [--repeats 2] [--mirroring] [--compile]
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
VOLUMES = {"2d": (4, 320, 288), "3d_aniso": (32, 96, 96), "3d_iso": (80, 80, 80)}  # z y x voxels


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


def write_volume(folder: Path, name: str) -> Path:
    import SimpleITK as sitk
    images = folder / f"test_{name}"
    images.mkdir()
    spacing = DATASETS[name][2]
    rng = np.random.default_rng(0)
    itk = sitk.GetImageFromArray(rng.normal(0, 50, VOLUMES[name]).astype(np.float32))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (nnU-Net's default)")
    parser.add_argument("--compile", action="store_true", help="nnUNet_compile=t")
    args = parser.parse_args()
    print(machine_description(torch.device("cpu")), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = planned_folder(Path(tmp), args.plans)
        rows = []
        for name in args.plans:
            for network in TRAINERS:
                write_model(folder, name, network)
            images = write_volume(folder, name)
            times = {n: [] for n in TRAINERS}
            for _ in range(args.repeats):
                for network in TRAINERS:
                    times[network].append(predict_seconds(folder, name, network, images, args.mirroring,
                                                          args.compile))
            stock, deconver = median(times["stock"]), median(times["Deconver"])
            rows.append((name, VOLUMES[name], stock, deconver))
            print(f"{name} {VOLUMES[name]} {json.dumps({n: [round(t, 1) for t in v] for n, v in times.items()})}",
                  flush=True)
    print(f"\nmirroring {args.mirroring}, nnUNet_compile {args.compile}, medians of {args.repeats}")
    print("| plan | volume (z y x) | stock s | Deconver s | ratio |\n|---|---|---|---|---|")
    for name, volume, stock, deconver in rows:
        print(f"| {name} | {'x'.join(map(str, volume))} | {stock:.1f} | {deconver:.1f} | {deconver / stock:.2f}x |")


if __name__ == "__main__":
    main()
