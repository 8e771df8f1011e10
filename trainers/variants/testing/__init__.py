"""Trainer variants: testing."""
