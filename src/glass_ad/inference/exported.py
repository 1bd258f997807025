"""The exported model's names and metadata: what the exporters write and the engines and the runtime read.

A leaf module (numpy-free, torch-free; ``onnx`` / ``openvino`` are imported only by the reader that needs
them), so that `engines`, `export`, `openvino_export` and `runtime` share these names without importing
each other.
"""

from __future__ import annotations

import os
from pathlib import Path

INPUT_NAME = "images"
OUTPUT_NAMES = ("image_score", "normalized_score", "anomaly_map")
ONNX_NAME = "model.onnx"
XML_NAME = "model.xml"  # OpenVINO IR (weights in the .bin beside it)
META_PREFIX = "glass_ad."  # ONNX metadata_props keys; an IR stores the same keys in its runtime info section
IR_SECTION = "glass_ad"
PRECISION_HINT = "f32"  # OpenVINO's CPU plugin would otherwise run float models in bf16 where it can


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``glass_ad.*`` metadata of an exported model, prefix removed: an ONNX file's metadata (header
    only), or an OpenVINO IR's (``.xml``) runtime info section."""
    if Path(path).suffix.lower() == ".xml":
        return read_ir_metadata(path)
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def read_ir_metadata(path: str | os.PathLike, model=None) -> dict[str, str]:
    """The ``glass_ad`` runtime info of an OpenVINO IR (``model``: the IR already read, else read here)."""
    if model is None:
        try:
            import openvino as ov
        except ImportError as error:
            raise RuntimeError(f'{path} is OpenVINO IR: pip install "glass-ad[openvino]" ({error})') from None
        model = ov.Core().read_model(str(path))
    info = model.get_rt_info()
    if IR_SECTION not in info:
        return {}
    section = info[IR_SECTION]
    keys = section.keys() if isinstance(section, dict) else section.astype(dict).keys()
    return {key: model.get_rt_info([IR_SECTION, key]).astype(str) for key in keys}
