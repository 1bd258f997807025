"""`glass benchmark` on a tiny configuration: every figure present, positive and printed."""

from glass_ad.benchmark import format_benchmark, run_benchmark
from glass_ad.config import make_config


def test_benchmark_reports_every_part():
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, num_threads=1)
    result = run_benchmark(config, repeats=1, train_iterations=1)
    keys = [
        "backbone_img_s_b8", "inference_img_s_b8", "backbone_img_s_b1", "inference_img_s_b1",
        "head_ms_aggregation", "head_ms_discriminator", "head_ms_postprocess",
        "train_s_per_it_backbone", "train_s_per_it_gas", "train_s_per_it_las", "train_s_per_it_rest",
        "peak_rss_mb",
    ]
    for key in keys:
        assert result[key] > 0, key
    parts = sum(result[k] for k in ("train_s_per_it_backbone", "train_s_per_it_gas", "train_s_per_it_las", "train_s_per_it_rest"))
    assert abs(parts - result["train_s_per_it_total"]) < 1e-6 + 0.01 * result["train_s_per_it_total"]
    text = format_benchmark(result)
    assert "full inference" in text and "adaptor + discriminator" in text
