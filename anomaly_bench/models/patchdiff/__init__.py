"""PatchDiff GRAD (Dai et al., AAAI 2024): generate contrastive images with limited-receptive-field
diffusion models, then train reweighted patch-level FCN detectors. See README.md."""

from anomaly_bench.models.patchdiff.detector import DAEHead, PatchDetector
from anomaly_bench.models.patchdiff.generator import PatchDiff, PatchDiffDenoiser
from anomaly_bench.models.patchdiff.lightning_model import PatchDiffGRAD
from anomaly_bench.models.patchdiff.torch_model import DetectorSpec, PatchDiffGRADModel

__all__ = ["DAEHead", "DetectorSpec", "PatchDetector", "PatchDiff", "PatchDiffDenoiser", "PatchDiffGRAD",
           "PatchDiffGRADModel"]
