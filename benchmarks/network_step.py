"""Deconver against stock nnU-Net (PlainConvUNet) built from the same nnU-Net plan: one training step and
one sliding-window inference, as ratios measured in one run, and peak memory.

The plan is a realistic 3d_fullres configuration (5 stages, 32..320 features, 3^3 kernels, strides
1,2,2,2,2, two convs per stage, instance norm, leaky ReLU, deep supervision). PlainConvUNet comes from
``nnunetv2.utilities.get_network_from_plans.get_network_from_plans``; Deconver takes the same
``n_stages, features_per_stage, conv_op, kernel_sizes, strides``. A training step is forward,
deep-supervision cross-entropy, backward and nnU-Net's SGD (lr 1e-2, momentum 0.99, Nesterov); on a
GPU under AMP with a GradScaler and with ``torch.compile``, as nnU-Net trains. Inference is
``nnUNetPredictor.predict_sliding_window_return_logits`` (Gaussian weighting, no mirroring) over an
image of 2x2x2 patches, tile step 0.5 on a GPU and 1.0 (the 8 patches) on the CPU. A third row trains
Deconver with activation checkpointing of its blocks (``checkpoint_blocks=True``).

    python benchmarks/network_step.py            # CPU: patch 64^3, batch 2
    python benchmarks/network_step.py --quick    # patch 32^3, batch 1, 3 runs: a smoke run
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import PeakMemory, machine_description, median, mib, timed  # noqa: E402
from nnunetv2_deconver.network import Deconver  # noqa: E402

INPUT_CHANNELS, NUM_CLASSES = 4, 3
CHECKPOINTED = "Deconver+checkpointing"  # Deconver(checkpoint_blocks=True); its inference is Deconver's


def plan_arch(n_stages: int) -> dict:
    """The ``architecture`` entry of an nnU-Net v2 3d_fullres plan."""
    features = [min(32 * 2 ** level, 320) for level in range(n_stages)]
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
            "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build(name: str, arch: dict, deep_supervision: bool) -> torch.nn.Module:
    if name == "PlainConvUNet":
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      INPUT_CHANNELS, NUM_CLASSES, deep_supervision=deep_supervision)
    kwargs = arch["arch_kwargs"]
    return Deconver(INPUT_CHANNELS, kwargs["n_stages"], kwargs["features_per_stage"], torch.nn.Conv3d,
                    kwargs["kernel_sizes"], kwargs["strides"], NUM_CLASSES, deep_supervision=deep_supervision,
                    checkpoint_blocks=name == CHECKPOINTED)


class Trainer:
    """One nnU-Net-style training step for one network (``input_channels`` and ``num_classes``: the data's)."""

    def __init__(self, network, device, patch, batch, compile_network, input_channels=INPUT_CHANNELS,
                 num_classes=NUM_CLASSES):
        self.network = network.to(device).train()
        self.model = torch.compile(self.network) if compile_network else self.network
        self.optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                                         weight_decay=3e-5)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randn(batch, input_channels, *patch, generator=generator).to(device)
        self.target = torch.randint(0, num_classes, (batch, 1, *patch), generator=generator).float().to(device)
        self.targets = None
        self.device = device

    def deep_supervision_targets(self, outputs):
        """The label map at each output's resolution (nearest), as nnU-Net's dataloader provides it."""
        if self.targets is None:
            self.targets = [F.interpolate(self.target, size=o.shape[2:], mode="nearest").long()[:, 0]
                            for o in outputs]
        return self.targets

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            outputs = self.model(self.data)
            weights = [1 / 2 ** level for level in range(len(outputs))]
            targets = self.deep_supervision_targets(outputs)
            loss = sum(w * F.cross_entropy(o.float(), t) for w, o, t in zip(weights, outputs, targets)) / sum(weights)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()


def predictor_for(network, device, patch, step_size):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False)
    predictor.network = network
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=NUM_CLASSES)
    predictor.allowed_mirroring_axes = None
    return predictor


def settings(args, device):
    patch = (args.patch,) * 3 if args.patch else ((32,) * 3 if args.quick else (64,) * 3 if device.type == "cpu"
                                                   else (128,) * 3)
    batch = args.batch or (1 if args.quick else 2)
    return patch, batch


def measure_memory(name: str, phase: str, args):
    """Peak memory of one training step (after one warm-up step) or one inference, and on the CPU its split
    by profiler category, in a fresh process, so that neither the other network nor the other phase
    leaves tensors behind that change its peak."""
    device = torch.device(args.device)
    patch, batch = settings(args, device)
    arch = plan_arch(args.stages)
    torch.manual_seed(0)
    if phase == "train":
        trainer = Trainer(build(name, arch, True), device, patch, batch, compile_network=device.type == "cuda")
        trainer.step()
        with PeakMemory(device) as peak:
            trainer.step()
        return peak.bytes, peak.categories
    predictor = predictor_for(build(name, arch, False).to(device).eval(), device, patch,
                              0.5 if device.type == "cuda" else 1.0)
    image = torch.rand(INPUT_CHANNELS, *(2 * p for p in patch))
    with PeakMemory(device) as peak:
        predictor.predict_sliding_window_return_logits(image)
    return peak.bytes, peak.categories


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="patch 32^3, batch 1, 3 runs")
    parser.add_argument("--patch", type=int, help="cubic patch edge (default 64 on CPU, 128 on GPU)")
    parser.add_argument("--batch", type=int, help="batch size (default 2)")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        print(json.dumps(measure_memory(*args.memory_of.split(":"), args)))
        return 0
    device = torch.device(args.device)
    patch, batch = settings(args, device)
    repeats = 3 if args.quick else args.repeats
    arch = plan_arch(args.stages)
    names = ["PlainConvUNet", "Deconver", CHECKPOINTED]
    inferred = names[:2]
    print(f"# one training step and one sliding-window inference, {device.type}, patch {patch}, batch {batch}, "
          f"{args.stages} stages {arch['arch_kwargs']['features_per_stage']}")
    print(f"# {machine_description(device)}")
    print(f"# {'AMP + torch.compile' if device.type == 'cuda' else 'fp32, eager'}; {repeats} interleaved runs, medians",
          flush=True)

    torch.manual_seed(0)
    trainers = {name: Trainer(build(name, arch, True), device, patch, batch, device.type == "cuda") for name in names}
    step_size = 0.5 if device.type == "cuda" else 1.0
    predictors = {name: predictor_for(build(name, arch, False).to(device).eval(), device, patch, step_size)
                  for name in inferred}
    image = torch.rand(INPUT_CHANNELS, *(2 * p for p in patch))
    for name in names:  # warm-up (and compilation)
        trainers[name].step()
        if name in predictors:
            predictors[name].predict_sliding_window_return_logits(image)
    train = {name: [] for name in names}
    infer = {name: [] for name in inferred}
    for _ in range(repeats):
        for name in names:
            train[name].append(timed(trainers[name].step, device))
            if name in predictors:
                infer[name].append(timed(lambda predictor=predictors[name]:
                                         predictor.predict_sliding_window_return_logits(image), device))
    del trainers, predictors
    memory = {name: {} for name in names}
    splits = {name: {} for name in names}
    for name in names:
        for phase in ("train", "infer") if name in inferred else ("train",):
            command = [sys.executable, __file__, "--memory-of", f"{name}:{phase}", "--device", args.device,
                       "--stages", str(args.stages), "--patch", str(patch[0]), "--batch", str(batch)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            memory[name][phase], splits[name][phase] = json.loads(result.stdout.strip().splitlines()[-1])
    params = {name: sum(p.numel() for p in build(name, arch, False).parameters()) for name in names}
    print("| network | params (M) | train step s | train ratio | train peak MiB | inference s | inference ratio "
          "| inference peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    base_train, base_infer = median(train["PlainConvUNet"]), median(infer["PlainConvUNet"])
    for name in names:
        t = median(train[name])
        row = f"| {name} | {params[name] / 1e6:.2f} | {t:.3f} | {t / base_train:.2f} | {mib(memory[name]['train'])} "
        if name in inferred:
            i = median(infer[name])
            row += f"| {i:.3f} | {i / base_infer:.2f} | {mib(memory[name]['infer'])} |"
        else:
            row += "| as Deconver | | |"
        print(row)
    for name in names:
        for phase, split in splits[name].items():
            if split:
                parts = ", ".join(f"{category} {mib(size)}" for category, size in split.items())
                print(f"# {name} {phase}: at the peak, live tensors by profiler category (MiB): {parts}")
    print(f"# inference: sliding window over a {tuple(2 * p for p in patch)} image, tile step {step_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
