"""Trainer variants: network architecture."""
