"""Inference and deployment: the Detector, ONNX/OpenVINO export, the torch-free runtime, batch prediction."""
