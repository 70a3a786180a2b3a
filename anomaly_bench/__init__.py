"""anomaly_bench: train, test and benchmark image anomaly-detection methods with PyTorch Lightning."""

__version__ = "0.1.0"
