"""Parts shared by several methods: feature extractor, continuous grids, anomaly synthesis, diffusion helpers."""
