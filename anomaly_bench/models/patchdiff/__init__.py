"""PatchDiff GRAD (Dai et al., AAAI 2024): generate contrastive images with limited-receptive-field
diffusion models, then train reweighted patch-level FCN detectors. See README.md."""

from anomaly_bench._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "PatchDiffGRAD": "anomaly_bench.models.patchdiff.lightning_model",
    "PatchDiffGRADModel": "anomaly_bench.models.patchdiff.torch_model",
    "DetectorSpec": "anomaly_bench.models.patchdiff.torch_model",
    "PatchDetector": "anomaly_bench.models.patchdiff.detector",
    "DAEHead": "anomaly_bench.models.patchdiff.detector",
    "PatchDiff": "anomaly_bench.models.patchdiff.generator",
    "PatchDiffDenoiser": "anomaly_bench.models.patchdiff.generator",
})
__all__ = ["DAEHead", "DetectorSpec", "PatchDetector", "PatchDiff", "PatchDiffDenoiser", "PatchDiffGRAD",
           "PatchDiffGRADModel"]
