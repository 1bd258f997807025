"""Every inference engine, same run, interleaved: throughput and the ratios that matter.

    python benchmarks/engine_speed.py RUN DATA [--int8 model_int8.xml] [--rounds 5] [--threads 2]
                                      [--max-isa AVX2] [--out results/engine_speed]

For the model of RUN, each engine — PyTorch (the Detector's path: `Preprocessor` per frame, the
`InferenceGraph`, the map back per frame), ONNX Runtime fp32 and OpenVINO fp32 (the exported graph,
written here from RUN), OpenVINO int8 (``--int8``, an IR from ``glass export --format openvino --precision
int8``) — runs, in every round, each of:

* ``full``: frames in, scores and the map on the frame out (what is deployed);
* ``backbone``: the same frames through the same pipeline up to the backbone's feature maps only (the
  deployed graph cut at the inputs of its scoring head; PyTorch: the preprocessing and the backbone);

on three inputs: ``b8``, 8 frames of 288² in one call (the model's own size: the in-graph resize is the
identity); ``b1``, the same 8 frames one call each; ``mixed``, 16 MTD test frames of their own sizes, one
call each (no two of them share a size, so a batch holds one frame). The order of the configurations
is rotated every round; each figure is the median over the rounds, and each ratio (full / backbone, int8
/ fp32, engine / PyTorch) is the median of the per-round ratios, so the machine's drift between rounds
cancels. The CPU flags, the commit, the thread count and ``--max-isa`` are written with the figures:
one JSON file and one CSV row per configuration under ``--out``, and a markdown table on stdout.

``--max-isa AVX2`` emulates an AVX2-only CPU where the libraries allow it, by setting, before they load:
``ONEDNN_MAX_CPU_ISA`` and ``OV_CPU_MAX_ISA`` (OpenVINO 2026.4 honours both: its profile then names
``jit_avx2_I8`` / ``brgconv_avx2_*`` kernels, no VNNI, no AMX), ``ATEN_CPU_CAPABILITY`` and
``MKL_ENABLE_INSTRUCTIONS`` (PyTorch's own kernels and MKL; its convolutions go through oneDNN). ONNX
Runtime's MLAS has no such switch: its figures stay those of this CPU, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import add_results_option, cap_isa, record_rows

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return platform.processor() or platform.machine()
    return " ".join(flag for flag in FLAGS if flag in words)


def commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _head_inputs_onnx(model) -> list[str]:
    """The backbone maps of an exported graph: the inputs of the head's per-level convolutions."""
    return [node.input[0] for node in model.graph.node if node.op_type == "Conv" and node.name.startswith("/head/") and
            node.input[0].startswith("/backbone/")]  # fmt: skip


def cut_onnx(path: Path, out: Path) -> Path:
    """The ONNX graph up to the backbone's feature maps (the frame preprocessing included)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    outputs = _head_inputs_onnx(model)
    if not outputs:
        raise SystemExit(f"{path}: no scoring head found (export it with this version of glass_ad)")
    producers = {name: node for node in model.graph.node for name in node.output}
    keep, stack, seen = set(), list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        node = producers[name]
        keep.add(id(node))
        stack.extend(node.input)
    nodes = [node for node in model.graph.node if id(node) in keep]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs)
    used = {name for node in nodes for name in node.input}
    initializers = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    onnx.save(model, str(out))
    return out


def cut_ir(model):
    """An OpenVINO model (fp32 or int8) up to the inputs of its scoring head's per-level convolutions."""
    import openvino as ov

    results = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution" and op.get_friendly_name().startswith("/head/"):
            source = op.input(0).get_source_output()
            if source.get_node().get_friendly_name().startswith("/backbone/"):
                results.append(source)
    if not results:
        raise SystemExit("no scoring head found in the IR (export it with this version of glass_ad)")
    return ov.Model(results, model.get_parameters(), "backbone")


class Torch:
    def __init__(self, run: str, threads: int):
        import torch

        from glass_ad.inference.engines import inference_graph
        from glass_ad.model.checkpoint import Checkpoint

        torch.set_num_threads(threads)
        self.torch = torch
        checkpoint = Checkpoint.load(run)
        self.graph = inference_graph(checkpoint, "cpu")
        self.preprocessor = checkpoint.preprocessor()

    def _prepared(self, frames):
        torch = self.torch
        return torch.stack(
            [(self.preprocessor.image(f) * 255.0).round().to(torch.uint8).permute(1, 2, 0) for f in frames]
        )

    def full(self, frames):
        with self.torch.inference_mode():
            scores, _, maps = self.graph(self._prepared(frames))
            return [self.preprocessor.map_to_original(m, f.shape[:2]) for m, f in zip(maps.numpy(), frames)], scores

    def backbone(self, frames):
        with self.torch.inference_mode():
            x = self._prepared(frames).permute(0, 3, 1, 2).float() / 255.0
            return self.graph.model.backbone(x)


class Onnx:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see main()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, frames):
        import numpy as np

        return self.session.run(None, {"images": np.stack(frames)})


class OpenVino:
    def __init__(self, model, threads: int):
        import openvino as ov

        self.compiled = ov.Core().compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        )

    def __call__(self, frames):
        import numpy as np

        return self.compiled(np.stack(frames))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data", help="MVTec-layout data set: its test images give the mixed-size frames")
    parser.add_argument(
        "--int8", type=Path, default=None, help="an int8 IR of RUN (glass export --format openvino --precision int8)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--max-isa", default=None, help="e.g. AVX2: cap oneDNN/OpenVINO's instruction set (see the docstring)"
    )
    parser.add_argument("--engines", default="torch,onnx,openvino,openvino-int8")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/engine_speed"),
        help="folder of the per-run JSON (every round's seconds)",
    )
    add_results_option(parser, "engine_speed")
    args = parser.parse_args()
    # Three thread pools share two cores in one process: none may spin-wait after its call, or the next
    # engine of the round is timed against the previous one's idle threads (PyTorch's OpenMP pool here;
    # ONNX Runtime's below).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    cap_isa(args.max_isa)

    import numpy as np
    import openvino as ov
    from PIL import Image

    from glass_ad.data.io import read_image
    from glass_ad.data.layouts import load_dataset
    from glass_ad.inference.export import export_onnx
    from glass_ad.model.checkpoint import Checkpoint

    checkpoint = Checkpoint.load(args.run)
    height, width = checkpoint.config.input_shape
    test = load_dataset(args.data).test
    paths = [sample.path for sample in test]
    by_size: dict[tuple[int, int], Path] = {}
    for path in paths[:: max(1, len(paths) // 64)]:
        frame = read_image(path)
        by_size.setdefault(frame.shape[:2], path)
    mixed = [read_image(p) for p in list(by_size.values())[:16]]
    uniform = [
        np.asarray(Image.fromarray(read_image(p)).resize((width, height), Image.BILINEAR))
        for p in paths[:: len(paths) // 8][:8]
    ]

    scratch = Path(tempfile.mkdtemp(prefix="glass-engine-speed-"))
    wanted = args.engines.split(",")
    engines: dict[str, dict] = {}
    if "torch" in wanted:
        torch_engine = Torch(args.run, args.threads)
        engines["torch"] = {"full": torch_engine.full, "backbone": torch_engine.backbone}
    onnx_path = export_onnx(args.run, scratch / "model.onnx").path
    if "onnx" in wanted:
        engines["onnx fp32"] = {
            "full": Onnx(onnx_path, args.threads),
            "backbone": Onnx(cut_onnx(onnx_path, scratch / "backbone.onnx"), args.threads),
        }
    core = ov.Core()
    if "openvino" in wanted:
        model = core.read_model(str(onnx_path))
        engines["openvino fp32"] = {
            "full": OpenVino(model, args.threads),
            "backbone": OpenVino(cut_ir(core.read_model(str(onnx_path))), args.threads),
        }
    if "openvino-int8" in wanted and args.int8:
        engines["openvino int8"] = {"full": OpenVino(core.read_model(str(args.int8)), args.threads),
                                    "backbone": OpenVino(cut_ir(core.read_model(str(args.int8))), args.threads)}  # fmt: skip

    inputs = {"b8": [uniform], "b1": [[f] for f in uniform], "mixed": [[f] for f in mixed]}
    images = {name: sum(len(batch) for batch in calls) for name, calls in inputs.items()}
    configs = [(engine, part, kind) for engine in engines for part in ("full", "backbone") for kind in inputs]
    for engine, part, kind in configs:  # warm-up: compilation, allocations, every shape once
        for batch in inputs[kind]:
            engines[engine][part](batch)
    seconds: dict[tuple[str, str, str], list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for config in order:
            engine, part, kind = config
            start = time.perf_counter()
            for batch in inputs[kind]:
                engines[engine][part](batch)
            seconds[config].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def per_round_ratio(a, b) -> float:
        return statistics.median(y / x for x, y in zip(seconds[a], seconds[b]))  # speed of a / speed of b

    rows = []
    for engine in engines:
        for kind in inputs:
            full, backbone = (engine, "full", kind), (engine, "backbone", kind)
            row = {
                "engine": engine, "input": kind, "images": images[kind],
                "full_img_s": images[kind] / statistics.median(seconds[full]),
                "backbone_img_s": images[kind] / statistics.median(seconds[backbone]),
                "full_vs_backbone": per_round_ratio(full, backbone),
                "vs_torch": per_round_ratio(full, ("torch", "full", kind)) if "torch" in engines else None,
                "int8_vs_fp32": per_round_ratio(full, ("openvino fp32", "full", kind))
                if engine == "openvino int8" and "openvino fp32" in engines else None,
            }  # fmt: skip
            rows.append(row)
    meta = {
        "run": str(args.run), "int8": str(args.int8) if args.int8 else None, "rounds": args.rounds, "threads": args.threads,
        "max_isa": args.max_isa or "", "cpu_flags": cpu_flags(), "commit": commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "input_shape": [height, width],
        "mixed_sizes": [list(f.shape[:2]) for f in mixed],
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = meta["time"].replace(":", "").replace("-", "")
    (args.out / f"engine_speed_{stamp}.json").write_text(
        json.dumps({**meta, "rows": rows, "seconds": {"|".join(k): v for k, v in seconds.items()}}, indent=2)
    )
    keep = ("max_isa", "threads", "rounds", "run")
    record_rows(args.results, [
        {"data": Path(args.data).name, **{k: meta[k] for k in keep},
         **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}}
        for row in rows
    ])  # fmt: skip

    def fmt(value, digits=2) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    capped = f"{args.max_isa} (ONNX Runtime not capped)" if args.max_isa else "the CPU's"
    print(f"\n{meta['command']}\nCPU flags: {meta['cpu_flags']}; {args.threads} threads; max ISA: {capped}; "
          f"commit {meta['commit']}; median of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| engine | input | full img/s | backbone img/s | full / backbone | vs PyTorch | int8 / fp32 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['input']} | {fmt(row['full_img_s'], 1)} | {fmt(row['backbone_img_s'], 1)} | "
              f"{fmt(row['full_vs_backbone'])} | {fmt(row['vs_torch'])} | {fmt(row['int8_vs_fp32'])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
