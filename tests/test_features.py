import torch
import torch.nn.functional as F

from glass_ad.model.features import PatchAggregator, adaptive_pool_matrix, default_embed_dim


def test_pool_matrix_equals_adaptive_avg_pool():
    x = torch.randn(5, 37)
    for out in (7, 16, 37, 50):
        expected = F.adaptive_avg_pool1d(x.unsqueeze(1), out).squeeze(1)
        assert torch.allclose(x @ adaptive_pool_matrix(37, out), expected, atol=1e-6)


def reference_aggregation(maps, dim):
    """The reference pipeline written out step by step: unfold, upsample, pool per level, stack, pool."""
    ref_h, ref_w = maps[0].shape[-2:]
    levels = []
    for fmap in maps:
        b, c, h, w = fmap.shape
        unfolded = F.unfold(fmap, 3, padding=1).reshape(b, c, 3, 3, h * w).permute(0, 4, 1, 2, 3)  # B, hw, C, 3, 3
        if (h, w) != (ref_h, ref_w):
            grid = unfolded.reshape(b, h, w, c, 3, 3).permute(0, 3, 4, 5, 1, 2).reshape(-1, 1, h, w)
            grid = F.interpolate(grid, size=(ref_h, ref_w), mode="bilinear", align_corners=False)
            unfolded = grid.reshape(b, c, 3, 3, ref_h, ref_w).permute(0, 4, 5, 1, 2, 3).reshape(b, ref_h * ref_w, c, 3, 3)
        flat = unfolded.reshape(-1, c * 9)
        levels.append(F.adaptive_avg_pool1d(flat.unsqueeze(1), dim).squeeze(1))
    stacked = torch.stack(levels, dim=1).reshape(len(levels[0]), 1, -1)
    return F.adaptive_avg_pool1d(stacked, dim).reshape(maps[0].shape[0], ref_h * ref_w, dim)


def test_aggregator_matches_reference_pipeline():
    torch.manual_seed(0)
    maps = [torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)]
    dim = default_embed_dim([6, 10])
    assert dim == 54
    agg = PatchAggregator([6, 10], dim)
    assert torch.allclose(agg(maps), reference_aggregation(maps, dim), atol=1e-5)


def test_default_width_never_exceeds_raw_features():
    assert default_embed_dim([48, 120]) == 432  # EfficientNet-Lite2
    assert default_embed_dim([512, 1024]) == 1536  # WRN50: the reference width
