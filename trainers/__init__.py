"""nnU-Net trainers for Deconver. Point ``nnUNet_extTrainer`` at this folder (``nnunetv2_deconver env``
prints the line); nnU-Net imports every module here, so it holds trainer modules only."""
