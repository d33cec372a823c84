"""Shared pieces of the training scripts, one concern per module."""
