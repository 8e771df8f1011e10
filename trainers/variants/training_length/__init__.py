"""Trainer variants: training length."""
