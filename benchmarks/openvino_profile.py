"""Where an exported model's time goes, per part, from OpenVINO's own per-node profile.

    python benchmarks/openvino_profile.py MODEL.onnx|MODEL.xml [--batch 8] [--size 288] [--threads 2] [--top 12]

Compiles the model with ``PERF_COUNT`` (and ``INFERENCE_PRECISION_HINT=f32``), runs a batch of random
uint8 frames a few times, and prints the share of each part of the graph — ``frame`` (the in-graph
resize and the map on the frame, ``glass_frame/*`` nodes), ``backbone``, ``head`` (`inference.head`:
aggregation, discriminator, memory bank) — and the slowest nodes with their kernels. One run's shares;
absolute times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import collections

from record import add_results_option, record_rows


def part(name: str) -> str:
    if name.startswith("glass_frame"):
        return "frame"
    if "/head/" in name:
        return "head"
    if "/backbone/" in name:
        return "backbone"
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    add_results_option(parser, "openvino_profile")
    args = parser.parse_args()

    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True}
    request = core.compile_model(core.read_model(args.model), "CPU", config).create_infer_request()
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    for _ in range(3):
        request.infer({0: frames})
    parts: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    for info in request.profiling_info:
        micro = info.real_time.total_seconds() * 1e6
        parts[part(info.node_name)] += micro
        nodes[(info.node_name, info.node_type, info.exec_type)] += micro
    total = sum(parts.values())
    print(f"{args.model}: batch {args.batch} of {args.size}² frames, {args.threads} threads (last run)")
    for name, micro in parts.most_common():
        print(f"  {name:9s} {100 * micro / total:5.1f} %  {micro / args.batch / 1000:7.2f} ms per image")
    for (name, kind, kernel), micro in nodes.most_common(args.top):
        print(f"  {micro / args.batch / 1000:7.2f} ms  {kind:16s} {kernel:24s} {name[:80]}")
    record_rows(args.results, [
        {"data": f"random {args.size}² frames", "model": args.model, "batch": args.batch, "size": args.size, "threads": args.threads, "part": name,
         "share": round(micro / total, 4), "ms_per_image": round(micro / args.batch / 1000, 3)}
        for name, micro in parts.most_common()
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
