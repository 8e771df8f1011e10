"""Trainer variants: demo."""
