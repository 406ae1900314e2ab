"""Checkpoints on disk: the checkpoint-directory lock and retention."""
