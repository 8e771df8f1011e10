"""nnU-Net's DDP path for the Deconver trainers, on CPU: two processes (gloo) wrap the network that
the trainer's ``build_network_architecture`` builds in ``DistributedDataParallel`` and train."""
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2_deconver.nnunet.trainer_discovery import trainers_folder

PATCH = (16, 16, 16)
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
TRAINERS = ("nnUNetTrainerDeconver", "nnUNetTrainerDeconverNoDeepSupervision")


def _plans():
    return {"dataset_name": "Dataset999_DDP", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": list(PATCH), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, "experiment_planner_used": "ExperimentPlanner",
            "configurations": {"3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": list(PATCH), "median_image_size_in_voxels": list(PATCH),
                "spacing": [1, 1, 1], "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                 "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32],
                                                 "conv_op": "torch.nn.modules.conv.Conv3d",
                                                 "kernel_sizes": [[3, 3, 3]] * 3, "strides": STRIDES},
                                 "_kw_requires_import": ["conv_op"]}}}}


def _worker(rank: int, world_size: int, port: int, results):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    manager = PlansManager(_plans())
    configuration = manager.get_configuration("3d_fullres")
    for name in TRAINERS:
        trainer = recursive_find_trainer_class_by_name(name)
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        network = trainer.build_network_architecture(manager, configuration, 1, 3, True)
        deep_supervision = network.decoder.deep_supervision
        model = DDP(network)  # find_unused_parameters=False, as nnU-Net wraps it
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        grads = []
        for step in range(2):  # DDP reports parameters without gradient at the second step
            torch.manual_seed(100 * rank + step)  # each rank its own batch
            x = torch.randn(2, 1, *PATCH)
            target = torch.randint(0, 3, (2, *PATCH))
            outputs = model(x)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            loss = sum(F.cross_entropy(o, F.interpolate(target[:, None].float(), o.shape[2:]).long()[:, 0])
                       for o in outputs)
            optimizer.zero_grad()
            loss.backward()
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
            optimizer.step()
        # nnU-Net's own toggle, through the DDP and torch.compile wrappers, as the trainer holds them
        holder = SimpleNamespace(is_ddp=True, network=DDP(torch.compile(trainer.build_network_architecture(
            manager, configuration, 1, 3, True))))
        nnUNetTrainer.set_deep_supervision_enabled(holder, False)
        toggled = holder.network.module._orig_mod.decoder.deep_supervision
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        results[(rank, name)] = dict(grads=grads, params=params, missing=missing, n_outputs=len(outputs),
                                     deep_supervision=deep_supervision, toggled=toggled)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_agree(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", trainers_folder())
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for name in TRAINERS:
        r0, r1 = results[(0, name)], results[(1, name)]
        assert r0["missing"] == [] and r1["missing"] == [], f"{name}: parameters without gradient"
        # one output per decoder stage with deep supervision (n_stages - 1), otherwise one
        assert r0["n_outputs"] == (len(STRIDES) - 1 if r0["deep_supervision"] else 1)
        for g0, g1 in zip(r0["grads"], r1["grads"]):  # all-reduced gradients of different batches
            torch.testing.assert_close(g0, g1)
        torch.testing.assert_close(r0["params"], r1["params"])
        assert r0["toggled"] is False
    assert results[(0, "nnUNetTrainerDeconver")]["deep_supervision"] is True
    assert results[(0, "nnUNetTrainerDeconverNoDeepSupervision")]["deep_supervision"] is False
