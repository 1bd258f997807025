"""The model: frozen backbone and patch features, adaptor and discriminator, the inference graph, its checkpoint and calibration."""
