"""Training learns, end to end: stock nnU-Net (``nnUNetTrainer_learn``: its own SGD and poly schedule) and
Deconver with the recommended recipe (``nnUNetTrainerDeconver_learn``: the default trainer's AdamW 1e-3, warm-up
and cosine), each trained by ``nnUNetv2_train`` for 120 steps with a fixed seed and one thread on a tiny
high-contrast dataset, then ``nnUNetv2_predict`` on four held-out cases; and what is saved is what was trained:
the checkpoint, rebuilt through the trainer and predicted in this process, gives exactly ``nnUNetv2_predict``'s
label maps and those the training process wrote in its final validation, and fine-tuning starts from the source
weights.

Thresholds, from runs of this very set-up with seeds 0, 1 and 2 (``NNUNETV2_DECONVER_TEST_SEED``; the test
runs seed 0), Dice of the ball (labels 1 and 2 together) per held-out case: stock nnU-Net 0.947-0.981,
0.898-0.967 and 0.886-0.975 (means 0.970, 0.938, 0.934); Deconver 0.971-0.996, 0.974-0.998 and 0.986-0.992
(means 0.988, 0.990, 0.990). An all-background map scores 0; a network that does not learn (no learning
rate, a wrong gradient) stays far below.
"""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers.datasets import make_dataset
from helpers.processes import nnunet_environment, run

DATASET, NAME = 301, "Dataset301_Learn"
STOCK, DECONVER = "nnUNetTrainer_learn", "nnUNetTrainerDeconver_learn"
# every held-out case, either network: about 0.09 below the lowest stock case measured (0.886, seed 2)
MIN_DICE = 0.8
# Deconver's mean at least stock's, less this allowance for another CPU's rounding (measured: 0.018, 0.052 and
# 0.056 above stock's)
MARGIN = 0.01


def _dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    a, b = reference > 0, prediction > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    env = nnunet_environment(root)
    # 16^3 voxels, a ball of radius 3-5 voxels (100 above the background, noise sigma 20) with a core
    make_dataset(env["nnUNet_raw"], DATASET, "Learn", n_cases=10, shape=(16, 16, 16), n_test=4, seed=1)
    run(["nnUNetv2_plan_and_preprocess", "-d", DATASET, "-c", "3d_fullres", "-np", 1, "-npfp", 1], env)
    # nnUNet_n_proc_DA=0 crashes the planner (set_num_threads(0)), so it is only set from here on
    env.update(nnUNet_n_proc_DA="0", nnUNet_compile="false")
    raw = os.path.join(env["nnUNet_raw"], NAME)
    dice, predictions = {}, {}
    for trainer in (STOCK, DECONVER):
        run(["nnUNetv2_train", DATASET, "3d_fullres", 0, "-tr", trainer, "-device", "cpu"], env)
        out = str(root / f"predicted_{trainer}")
        run(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DATASET, "-c", "3d_fullres",
             "-f", 0, "-tr", trainer, "-device", "cpu", "-npp", 1, "-nps", 1], env)
        predictions[trainer] = out
        dice[trainer] = {}
        for case in sorted(os.listdir(os.path.join(raw, "labelsTs"))):
            reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", case)))
            predicted = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, case)))
            dice[trainer][case] = _dice(reference, predicted)
        print(trainer, {c: round(d, 3) for c, d in dice[trainer].items()})
    return dict(env=env, root=root, raw=raw, dice=dice, predictions=predictions,
                results=os.path.join(env["nnUNet_results"], NAME))


def test_stock_nnunet_learns_the_ball(learned):
    dice = learned["dice"][STOCK]
    assert len(dice) == 4 and min(dice.values()) >= MIN_DICE, dice


def test_deconver_learns_the_ball_as_well_as_stock(learned):
    dice, stock = learned["dice"][DECONVER], learned["dice"][STOCK]
    assert len(dice) == 4 and min(dice.values()) >= MIN_DICE, dice
    assert np.mean(list(dice.values())) >= np.mean(list(stock.values())) - MARGIN, (dice, stock)


def test_checkpoint_rebuilt_through_the_trainer_predicts_what_training_and_predict_wrote(learned):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2_deconver.nnunet.files import load_json
    from nnunetv2_deconver.ops.ndc_dispatch import force_implementation
    from nnunetv2_deconver.trainers.variants.testing.nnUNetTrainer_learn import nnUNetTrainerDeconver_learn

    model = os.path.join(learned["results"], f"{DECONVER}__nnUNetPlans__3d_fullres")
    checkpoint = torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu",
                            weights_only=False)
    assert checkpoint["trainer_name"] == DECONVER
    plans = PlansManager(load_json(os.path.join(model, "plans.json")))
    configuration = plans.get_configuration("3d_fullres")
    dataset_json = load_json(os.path.join(model, "dataset.json"))
    heads = plans.get_label_manager(dataset_json).num_segmentation_heads
    network = nnUNetTrainerDeconver_learn.build_network_architecture(plans, configuration, 1, heads,
                                                                     enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])  # strict: every key of the saved network, no other
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans, configuration, [checkpoint["network_weights"]], dataset_json,
                                    DECONVER, checkpoint["inference_allowed_mirroring_axes"])
    # the held-out cases as nnUNetv2_predict wrote them, and the validation cases as the training process
    # wrote them at its end with the network it had trained (nnU-Net's final validation)
    validation = os.path.join(model, "fold_0", "validation")
    pairs = [(os.path.join(learned["raw"], "imagesTs", case.replace(".nii.gz", "_0000.nii.gz")),
              os.path.join(learned["predictions"][DECONVER], case))
             for case in sorted(os.listdir(learned["predictions"][DECONVER])) if case.endswith(".nii.gz")]
    pairs += [(os.path.join(learned["raw"], "imagesTr", case.replace(".nii.gz", "_0000.nii.gz")),
               os.path.join(validation, case))
              for case in sorted(os.listdir(validation)) if case.endswith(".nii.gz")]
    assert len(pairs) == 4 + 2  # 10 training cases, 5 folds: 2 validation cases in fold 0
    for image, written in pairs:
        data, properties = SimpleITKIO().read_images([image])
        in_process = predictor.predict_single_npy_array(data, properties)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(written))
        assert in_process.shape == expected.shape
        assert (in_process == expected).all(), f"{written}: {(in_process != expected).sum()} voxels differ"
    # nnUNetv2_predict ran the blocks' channels-last CPU inference path; the naive composition (plain
    # conv/conv_transpose in the default layout) gives the same labels, up to fp32 rounding at ties
    with force_implementation("naive"):
        for image, written in pairs[:4]:
            data, properties = SimpleITKIO().read_images([image])
            reference = predictor.predict_single_npy_array(data, properties)
            expected = sitk.GetArrayFromImage(sitk.ReadImage(written))
            assert (reference != expected).mean() <= 1e-3, f"{written}: {(reference != expected).sum()} voxels differ"


def test_fine_tuning_starts_from_the_source_weights(learned):
    from nnunetv2_deconver.trainers.variants.testing.nnUNetTrainerDeconverVariants_smoke import WEIGHTS_AT_START

    source = os.path.join(learned["results"], f"{DECONVER}__nnUNetPlans__3d_fullres", "fold_0",
                          "checkpoint_final.pth")
    trainer = "nnUNetTrainerDeconver_smokeRecordsStart"
    out = run(["nnUNetv2_train", DATASET, "3d_fullres", 1, "-tr", trainer, "-device", "cpu",
               "-pretrained_weights", source], learned["env"])
    assert "Loading pretrained weights from file" in out, out[-3000:]
    start = torch.load(os.path.join(learned["results"], f"{trainer}__nnUNetPlans__3d_fullres", "fold_1",
                                    WEIGHTS_AT_START), map_location="cpu")
    trained = torch.load(source, map_location="cpu", weights_only=False)["network_weights"]
    assert start.keys() == trained.keys()
    heads = [k for k in start if ".seg_layers." in k]
    assert heads  # nnU-Net leaves the heads out of pretrained weights: they start fresh
    for key in start:
        if key not in heads:
            assert torch.equal(start[key], trained[key]), key
    assert any(not torch.equal(start[k], trained[k]) for k in heads)
