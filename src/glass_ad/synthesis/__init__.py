"""Anomaly synthesis: GAS (feature space) and LAS (image space) with their parts (Perlin masks, textures,
foreground), GLASS-j's spectrogram rule, and the unseen family that only validation draws."""
