"""Trainer variants: optimizer."""
