"""Trainer variants: benchmarking. Trainers that train exactly as their base and log what a comparison
needs (the peak GPU memory of every epoch), so that ``nnUNetv2_deconver_compare`` can report it."""
