"""GLASS: Global and Local Anomaly co-Synthesis Strategy for industrial anomaly detection."""

__version__ = "0.1.0"
