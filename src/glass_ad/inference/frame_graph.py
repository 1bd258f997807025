"""Preprocessing inside the exported graph: frames of any size in, the map back on the frame out.

`wrap_frames(model, image_size, resize, fit, shape)` takes the ONNX model of an H×W network input (input
``images`` uint8 B×H×W×3; ``shape`` = (H, W), default the ``image_size`` square) and returns one whose input
``images`` is a uint8 ``B×h×w×3`` frame of any size (all frames of a batch the same size) and whose
``anomaly_map`` is ``B×h×w``. The added nodes are plain ONNX operators and compute exactly what
`glass_ad.inference.framing.preprocess` and `framing.map_to_original` specify:

* the resized size and the crop offsets of `framing.crop_box` in exact integer arithmetic (each rational
  rounded half to even, like Python's ``round``);
* per axis, the weights ``w[i, j] = max(0, 1 − |(j − s·(i + ½) + ½) / max(s, 1)|)`` with ``s = in/out``,
  each row divided by its sum (PyTorch's bilinear resize, antialiased when shrinking), only for the output
  rows inside the crop and only for the few input pixels ``j`` near each one (a Gather and a weighted sum:
  the same numbers as the dense matrix product, at a cost proportional to the frame, not frame × H);
* pixels / 255, resized along the width then the height, clip to [0, 1], × 255, round half to even,
  uint8 — the model's input;
* the H×W map placed in the resized frame (zeros around it) and resized back to h×w by the same rule.
  With ``score_map`` (the model's upsampling + smoothing matrices, ``H×h_p`` and ``W×w_p``) the model's
  output is its ``h_p×w_p`` patch-score grid instead, and the map on the frame is ``A · P · Bᵀ``, where
  ``A`` (``h×h_p``) is the resize back applied to the row matrix placed in the resized frame (zero rows
  around the crop) and ``B`` (``w×w_p``) the same for the columns: the same linear map as smoothing, padding
  and resizing the H×W map one after the other, without an H×W or h×w intermediate per image.

Only ``onnx`` is needed (no torch); node and tensor names start with ``glass_frame/``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from glass_ad.inference.framing import input_shape, stretched_size

PREFIX = "glass_frame/"


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, dtype: int, hint: str = "c", dims: list[int] | None = None) -> str:
        values = value if isinstance(value, list) else [value]
        tensor = helper.make_tensor(self.name(hint + "_value"), dtype, dims if dims is not None else [], values)
        return self.op("Constant", [], hint, value=tensor)

    def array(self, values: np.ndarray, hint: str = "matrix") -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(values, dtype=np.float32), self.name(hint + "_value"))
        return self.op("Constant", [], hint, value=tensor)

    def i64(self, value: int) -> str:
        return self.const(int(value), TensorProto.INT64, "i")

    def f32(self, value: float) -> str:
        return self.const(float(value), TensorProto.FLOAT, "f")

    def axes(self, *values: int) -> str:
        return self.const(list(values), TensorProto.INT64, "axes", dims=[len(values)])

    # integer helpers (non-negative values)

    def round_div(self, numerator: str, denominator: str) -> str:
        """round(numerator / denominator), ties to even, for non-negative int64 scalars."""
        quotient = self.op("Div", [numerator, denominator])
        remainder = self.op("Mod", [numerator, denominator])
        twice = self.op("Mul", [remainder, self.i64(2)])
        above = self.op("Greater", [twice, denominator])
        tie = self.op("Equal", [twice, denominator])
        odd = self.op("Equal", [self.op("Mod", [quotient, self.i64(2)]), self.i64(1)])
        up = self.op("Or", [above, self.op("And", [tie, odd])])
        return self.op("Add", [quotient, self.op("Cast", [up], to=TensorProto.INT64)])

    def band(self, in_size: str, out_size: str, rows: str) -> tuple[str, str]:
        """Taps and weights (both len(rows) × K) of `framing.resize_weights` for the given output rows.

        Only the K = min(⌈2·max(s, 1)⌉ + 2, in_size) input pixels around each output pixel can have a
        non-zero weight, so a resize is a Gather of K taps and a weighted sum instead of a product with a
        mostly-zero matrix (what keeps megapixel frames cheap).
        """
        to_float = lambda x: self.op("Cast", [x], to=TensorProto.FLOAT)  # noqa: E731
        to_int = lambda x: self.op("Cast", [x], to=TensorProto.INT64)  # noqa: E731
        scale = self.op("Div", [to_float(in_size), to_float(out_size)], "scale")
        shrinking = self.op("GreaterOrEqual", [scale, self.f32(1.0)])
        invscale = self.op("Where", [shrinking, self.op("Reciprocal", [scale]), self.f32(1.0)], "invscale")
        support = self.op("Max", [scale, self.f32(1.0)], "support")
        center = self.op("Mul", [scale, self.op("Add", [to_float(rows), self.f32(0.5)])], "center")
        taps = self.op("Add", [to_int(self.op("Ceil", [self.op("Mul", [support, self.f32(2.0)])])), self.i64(2)])
        taps = self.op("Min", [taps, in_size], "taps")
        first = to_int(self.op("Floor", [self.op("Add", [self.op("Sub", [center, support]), self.f32(0.5)])]))
        first = self.op("Max", [self.op("Min", [first, self.op("Sub", [in_size, taps])]), self.i64(0)], "first")
        index = self.op(
            "Add",
            [self.op("Unsqueeze", [first, self.axes(1)]), self.op("Unsqueeze", [self.op("Range", [self.i64(0), taps, self.i64(1)]), self.axes(0)])],
            "index",
        )  # R × K
        offset = self.op("Sub", [to_float(index), self.op("Unsqueeze", [center, self.axes(1)])])
        x = self.op("Mul", [self.op("Add", [offset, self.f32(0.5)]), invscale])
        w = self.op("Relu", [self.op("Sub", [self.f32(1.0), self.op("Abs", [x])])])
        total = self.op("ReduceSum", [w, self.axes(1)], keepdims=1)
        return index, self.op("Div", [w, total], "weights")

    def resize_axis(self, x: str, axis: int, trailing: int, in_size: str, out_size: str, rows: str, out: str | None = None) -> str:
        """Resize `x` along `axis` (followed by `trailing` axes) to the output `rows`."""
        index, weights = self.band(in_size, out_size, rows)
        gathered = self.op("Gather", [x, index], axis=axis)  # … × R × K × trailing
        if trailing:
            weights = self.op("Unsqueeze", [weights, self.axes(*range(2, 2 + trailing))])
        product = self.op("Mul", [gathered, weights])
        name = out or self.name("resized")
        self.nodes.append(helper.make_node("ReduceSum", [product, self.axes(axis + 1)], [name], name=name, keepdims=0))
        return name


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def _map_back(b: _Builder, inner_map, map_name, top, left, new_h, new_w, size_h, size_w, height, width, all_rows, all_cols) -> None:
    """Network map (B×H×W) → frame (B×h×w): zeros around the crop in the resized frame, resized back."""
    zero = b.i64(0)
    pads = b.op(
        "Concat",
        [b.op("Unsqueeze", [v, b.axes(0)]) for v in (zero, top, left, zero, b.op("Sub", [new_h, b.op("Add", [top, size_h])]), b.op("Sub", [new_w, b.op("Add", [left, size_w])]))],
        "pads",
        axis=0,
    )
    padded = b.op("Pad", [inner_map, pads], mode="constant")  # B×resized_h×resized_w
    tall = b.resize_axis(padded, 1, 1, new_h, height, all_rows)  # B×h×resized_w
    b.resize_axis(tall, 2, 0, new_w, width, all_cols, out=map_name)  # B×h×w


def wrap_frames(
    model: onnx.ModelProto,
    image_size: int,
    resize: int | None,
    fit: str,
    shape: tuple[int, int] | None = None,
    score_map: Sequence[np.ndarray] | None = None,
) -> onnx.ModelProto:
    """The H×W model (``shape``, default the ``image_size`` square) with the preprocessing and the map's way
    back added (module docstring). ``score_map``: the (row, column) matrices of the model's upsampling and
    smoothing, when the model's last output is its patch-score grid (module docstring)."""
    if fit not in ("crop", "stretch"):
        raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    target_h, target_w = input_shape(image_size, shape)
    short = min(target_h, target_w)
    side = int(resize) if resize else short
    stretched_h, stretched_w = stretched_size(image_size, resize, shape)
    graph = model.graph
    input_name = graph.input[0].name
    map_name = graph.output[-1].name
    inner_input, inner_map = PREFIX + "network_input", PREFIX + "network_map"
    _rename(graph, input_name, inner_input)
    _rename(graph, map_name, inner_map)

    b = _Builder()
    # framing.crop_box with R = side, S = short: the margin m = R / S, so H·m = H·R / S (known at export).
    size_h, size_w = b.i64(target_h), b.i64(target_w)
    base_h, base_w = b.i64(stretched_h), b.i64(stretched_w)  # round(H·m), round(W·m)
    shape_node = b.op("Shape", [input_name], "shape")
    height = b.op("Gather", [shape_node, b.i64(1)], "height", axis=0)
    width = b.op("Gather", [shape_node, b.i64(2)], "width", axis=0)
    if fit == "stretch":
        new_h, new_w = base_h, base_w
    else:
        # f = max(H·R / (S·h), W·R / (S·w)): the height's ratio wins when H·w ≥ W·h. Then round(h·f) is
        # round(H·m) = base_h and the width is round(w·H·R / (S·h)); the other way round symmetrically.
        wide = b.op("GreaterOrEqual", [b.op("Mul", [width, size_h]), b.op("Mul", [height, size_w])], "wide")
        long_w = b.op("Max", [base_w, b.round_div(b.op("Mul", [width, b.i64(target_h * side)]), b.op("Mul", [height, b.i64(short)]))])
        long_h = b.op("Max", [base_h, b.round_div(b.op("Mul", [height, b.i64(target_w * side)]), b.op("Mul", [width, b.i64(short)]))])
        new_h = b.op("Where", [wide, base_h, long_h], "resized_h")
        new_w = b.op("Where", [wide, long_w, base_w], "resized_w")
    two = b.i64(2)
    top = b.round_div(b.op("Sub", [new_h, size_h]), two)
    left = b.round_div(b.op("Sub", [new_w, size_w]), two)
    crop_rows = b.op("Range", [top, b.op("Add", [top, size_h]), b.i64(1)], "crop_rows")
    crop_cols = b.op("Range", [left, b.op("Add", [left, size_w]), b.i64(1)], "crop_cols")

    # Frame → network input: along the width, then the height (as framing.preprocess). On planes, each
    # pass turned so that it gathers and sums whole rows (its axis in the middle, a long contiguous axis
    # after it): gathering single pixels, or summing over a 3-wide trailing axis, is several times slower.
    turned = b.op("Transpose", [input_name], "turned", perm=[0, 3, 2, 1])  # B×3×w×h, uint8
    pixels = b.op("Div", [b.op("Cast", [turned], to=TensorProto.FLOAT), b.f32(255.0)], "pixels")
    narrowed = b.resize_axis(pixels, 2, 1, width, new_w, crop_cols)  # B×3×W×h
    upright = b.op("Transpose", [narrowed], "upright", perm=[0, 1, 3, 2])  # B×3×h×W
    cropped = b.resize_axis(upright, 2, 1, height, new_h, crop_rows)  # B×3×H×W
    clipped = b.op("Clip", [cropped, b.f32(0.0), b.f32(1.0)])
    rounded = b.op("Cast", [b.op("Round", [b.op("Mul", [clipped, b.f32(255.0)])])], to=TensorProto.UINT8)
    b.nodes.append(helper.make_node("Transpose", [rounded], [inner_input], name=PREFIX + "network_input", perm=[0, 2, 3, 1]))

    # Network map (B×H×W), or the patch grid with score_map → the map on the frame (B×h×w).
    all_rows = b.op("Range", [b.i64(0), height, b.i64(1)], "frame_rows")
    all_cols = b.op("Range", [b.i64(0), width, b.i64(1)], "frame_cols")
    if score_map is not None:
        row_matrix, column_matrix = (np.asarray(m, dtype=np.float32) for m in score_map)
        if row_matrix.shape[0] != target_h or column_matrix.shape[0] != target_w:
            raise ValueError(f"score-map matrices {row_matrix.shape}, {column_matrix.shape} do not map onto {target_h}x{target_w}")
        zero = b.i64(0)

        def frame_matrix(matrix: np.ndarray, start: str, resized: str, size: str, frame: str, rows: str) -> str:
            # matrix (S × g) placed in the resized axis (zero rows around the crop), resized back: frame × g.
            after = b.op("Sub", [resized, b.op("Add", [start, size])])
            pads = b.op("Concat", [b.op("Unsqueeze", [v, b.axes(0)]) for v in (start, zero, after, zero)], "pads", axis=0)
            placed = b.op("Pad", [b.array(matrix), pads], mode="constant")
            return b.resize_axis(placed, 0, 1, resized, frame, rows)

        rows_of_frame = frame_matrix(row_matrix, top, new_h, size_h, height, all_rows)  # h × h_p
        cols_of_frame = frame_matrix(column_matrix, left, new_w, size_w, width, all_cols)  # w × w_p
        tall = b.op("MatMul", [rows_of_frame, inner_map])  # B × h × w_p
        b.nodes.append(
            helper.make_node("MatMul", [tall, b.op("Transpose", [cols_of_frame], perm=[1, 0])], [map_name], name=PREFIX + "frame_map")
        )
    else:
        _map_back(b, inner_map, map_name, top, left, new_h, new_w, size_h, size_w, height, width, all_rows, all_cols)

    new_input = helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", "height", "width", 3])
    new_map = helper.make_tensor_value_info(map_name, TensorProto.FLOAT, ["batch", "height", "width"])
    pre_nodes = b.nodes[: b.nodes.index(next(n for n in b.nodes if n.output[0] == inner_input)) + 1]
    post_nodes = b.nodes[len(pre_nodes) :]
    nodes = pre_nodes + list(graph.node) + post_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[0]
    graph.input.insert(0, new_input)
    outputs = [o for o in graph.output if o.name != map_name] + [new_map]
    del graph.output[:]
    graph.output.extend(outputs)
    return model
