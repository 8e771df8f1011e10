from nnunetv2_deconver.trainers.nnUNetTrainerDeconver import nnUNetTrainerDeconver


class nnUNetTrainerDeconverCheckpointed(nnUNetTrainerDeconver):
    """Deconver with activation checkpointing of every block: the same network and gradients with a
    fraction of the activation memory, for a larger patch or batch on the same GPU, with each block run
    twice per step (the cost is measured in ``docs/performance.md``)."""
    network_overrides = {"block_memory": "block"}
