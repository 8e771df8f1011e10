"""nnU-Net trainer variants, grouped as nnU-Net groups its own (training/nnUNetTrainer/variants)."""
