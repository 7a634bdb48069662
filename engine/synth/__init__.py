"""Synthetic MoE checkpoints: real layouts, random weights, planted routing structure."""
