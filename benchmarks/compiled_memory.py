"""Activation memory of one training step on the path nnU-Net trains on (GPU, fp16 autocast, torch.compile),
for stock nnU-Net and every Deconver trainer, on plans nnU-Net's own planner makes, traced on the CPU.

Each network is built by its trainer's ``build_network_architecture`` from the plan and traced by
``nnunetv2_deconver.network.compiled_memory.compiled_step_memory``: AOT autograd with inductor's partitioner
on fake tensors (nothing is computed), the GPU's NDC path and region sizes, fp16 autocast. Columns: ``saved``,
the bytes the forward keeps for backward; ``transient``, the backward graph's largest live set of its own
intermediates (what a recomputed region materialises at once); both as ratios to stock nnU-Net's.
``Deconver (plain blocks)`` is the default network with ``block_memory="plain"``: what the compiled path
kept before the blocks ran in checkpoint regions.

    python benchmarks/compiled_memory.py                       # 2d, 3d_aniso, 3d_iso and the 128^3 plan
    python benchmarks/compiled_memory.py --plans 2d 3d_aniso   # a subset
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plan_parity  # noqa: E402
from _common import mib  # noqa: E402

# the three planner-made plans of plan_parity, and a 160^3 dataset for which nnU-Net plans a typical
# 3d_fullres configuration: 128^3 patch, batch 2, 6 stages to 320
plan_parity.DATASETS.setdefault("3d_128", (974, (160, 160, 160), (1.0, 1.0, 1.0), "3d_fullres"))
PLANS = ("2d", "3d_aniso", "3d_iso", "3d_128")
TRAINERS = {  # row name: (module, class); None: nnU-Net's own
    "stock nnU-Net": None,
    "Deconver (default)": ("trainers.nnUNetTrainerDeconver", "nnUNetTrainerDeconver"),
    "Deconver (plain blocks)": ("trainers.nnUNetTrainerDeconver", "nnUNetTrainerDeconver"),
    "Deconver checkpointed": ("trainers.variants.network_architecture.nnUNetTrainerDeconverCheckpointed",
                              "nnUNetTrainerDeconverCheckpointed"),
    "Deconver no deep supervision": ("trainers.variants.network_architecture.nnUNetTrainerDeconverNoDeepSupervision",
                                     "nnUNetTrainerDeconverNoDeepSupervision"),
    "Deconver k5": ("trainers.variants.network_architecture.nnUNetTrainerDeconver_k5", "nnUNetTrainerDeconver_k5"),
    "Deconver DTC": ("trainers.variants.network_architecture.nnUNetTrainerDeconverDTC", "nnUNetTrainerDeconverDTC"),
}


def trainer_class(name: str):
    if TRAINERS[name] is None:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        return nnUNetTrainer
    module, cls = TRAINERS[name]
    return getattr(__import__(module, fromlist=[cls]), cls)


def builder(name: str, manager, configuration):
    trainer = trainer_class(name)
    deep_supervision = "no deep supervision" not in name

    def build():
        network = trainer.build_network_architecture(manager, configuration, 1, 3, deep_supervision)
        if name == "Deconver (plain blocks)":
            for block in network.modules():
                if hasattr(block, "memory"):
                    block.memory = "plain"
        return network
    return build


def measure(folder: Path, plan: str) -> list:
    from nnunetv2_deconver.network.compiled_memory import compiled_step_memory
    manager, configuration = plan_parity.load_plan(folder, plan)
    shape = (configuration.batch_size, 1, *configuration.patch_size)
    rows = []
    for name in TRAINERS:
        start = time.perf_counter()
        try:
            memory = compiled_step_memory(builder(name, manager, configuration), shape)
        except Exception as error:  # one network that cannot be traced costs only its row
            memory = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        rows.append((name, memory, time.perf_counter() - start))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=list(PLANS), choices=list(PLANS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = plan_parity.planned_folder(Path(tmp), args.plans)
        print(f"# torch {torch.__version__}; traced on fake tensors: GPU NDC path and region sizes, fp16 autocast, "
              f"AOT autograd + min_cut_rematerialization_partition")
        for plan in args.plans:
            manager, configuration = plan_parity.load_plan(folder, plan)
            arch = configuration.network_arch_init_kwargs
            print(f"\n## {plan}: patch {configuration.patch_size}, batch {configuration.batch_size}, "
                  f"{arch['n_stages']} stages to {arch['features_per_stage'][-1]}")
            print("| trainer | saved MiB | vs stock | transient MiB | vs stock | saved + transient vs stock |")
            print("|---|---|---|---|---|---|")
            rows = measure(folder, plan)
            base = rows[0][1]
            for name, memory, _ in rows:
                if isinstance(memory, str):
                    print(f"| {name} | not traced: {memory} | | | | |")
                    continue
                print(f"| {name} | {mib(memory.saved)} | {memory.saved / base.saved:.2f} | {mib(memory.transient)} "
                      f"| {memory.transient / base.transient:.2f} "
                      f"| {(memory.saved + memory.transient) / (base.saved + base.transient):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
