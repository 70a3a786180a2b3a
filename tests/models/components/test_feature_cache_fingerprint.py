"""The feature cache's backbone fingerprint covers 0-d buffers (batch-norm step counters)."""

from __future__ import annotations

import torch
from torch import nn

from anomaly_bench.models.components.feature_cache import module_fingerprint


def test_fingerprint_of_a_module_with_batch_norm_counters():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert net[1].num_batches_tracked.dim() == 0  # the 0-d long buffer that once broke the hash
    first = module_fingerprint(net)
    assert first == module_fingerprint(net)
    net[1].num_batches_tracked += 1
    assert module_fingerprint(net) != first
