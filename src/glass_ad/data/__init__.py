"""Data: image decoding, data-set layouts and preprocessing, the generated demo set."""
