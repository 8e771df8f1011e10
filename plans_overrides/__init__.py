"""nnU-Net plans fragments for Deconver (see README.md in this folder)."""
