"""The model: frozen backbone and patch features, adaptor and discriminator, the network from image to map,
the measured feature geometry, the optional memory bank, and its file (checkpoint with calibration)."""
