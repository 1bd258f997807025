"""Anomaly synthesis: GAS (feature space) and LAS (image space) with their parts, GLASS-j's spectrogram rule, the feature geometry that sets GAS's lengths."""
