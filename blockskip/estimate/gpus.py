"""GPU profiles for the step-time model and the planner: memory, dense tensor rates, the host link.

Each figure is typed in from a public source named in `sources`. Rates are *dense* (no sparsity)
tensor-core TFLOPs with FP32 accumulate, which is what bf16 training runs at; GeForce cards run
FP32-accumulate at half their FP16-accumulate rate. `host_to_device_gbps` is a typical measured
pinned-memory copy rate for the card's PCIe link (x16), not the link's nominal rate.

Example:
    >>> gpu = get_gpu("rtx4090-24gb")
    >>> gpu.memory_bytes // 2**30, gpu.bf16_tflops, gpu.pcie_gen
    (24, 165.2, 4)
    >>> get_gpu("rtx-4090")
    Traceback (most recent call last):
    ...
    blockskip.estimate.gpus.UnknownGpuError: unknown GPU 'rtx-4090'; profiles: rtx3060-12gb, rtx4070-12gb, rtx4080-16gb, rtx4090-24gb, rtx5090-32gb, l4-24gb, a100-40gb, a100-80gb, h100-pcie-80gb, h100-sxm-80gb, h200-141gb
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3

# Typical measured pinned host → device copy rates on x16 links (CUDA bandwidthTest / nvbandwidth).
HOST_TO_DEVICE_GBPS = {3: 12.0, 4: 25.0, 5: 50.0}
_LINK_SOURCE = "typical CUDA bandwidthTest/nvbandwidth pinned H2D results for PCIe {gen}.0 x16"


class UnknownGpuError(LookupError):
    """No profile has that key; the message lists the profiles."""


@dataclass(frozen=True)
class GpuProfile:
    key: str
    name: str
    memory_gib: float
    bf16_tflops: float  # dense, FP32 accumulate
    fp8_tflops: float | None  # dense, FP32 accumulate; None where the card has no fp8 tensor cores
    pcie_gen: int
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def host_to_device_gbps(self) -> float:
        return HOST_TO_DEVICE_GBPS[self.pcie_gen]

    def describe(self) -> str:
        fp8 = f", fp8 {self.fp8_tflops:g}" if self.fp8_tflops else ", no fp8 tensor cores"
        return (f"{self.name}: {self.memory_gib:g} GiB, bf16 {self.bf16_tflops:g} TFLOPs dense{fp8}, "
                f"PCIe {self.pcie_gen}.0 x16 (~{self.host_to_device_gbps:g} GB/s host → device)")


def _profile(key, name, memory_gib, bf16, fp8, pcie_gen, rates_source, memory_source=None) -> GpuProfile:
    sources = {"memory_gib": memory_source or rates_source, "bf16_tflops": rates_source, "fp8_tflops": rates_source,
               "host_to_device_gbps": _LINK_SOURCE.format(gen=pcie_gen)}
    return GpuProfile(key, name, memory_gib, bf16, fp8, pcie_gen, sources)


_ADA = "NVIDIA Ada Lovelace GPU architecture whitepaper (v1.03), appendix A, GeForce RTX 40 series specifications"
_ADA_SCALED = ("NVIDIA Ada Lovelace GPU architecture whitepaper: the RTX 4090's per-SM tensor rate, scaled by the RTX 4070's "
               "46 SMs and 2.475 GHz boost clock (NVIDIA RTX 4070 specifications page)")
_AMPERE = "NVIDIA Ampere GA102 GPU architecture whitepaper, appendix A, FP16 tensor TFLOPs with FP32 accumulate (scaled by SM count and boost clock for GA106)"
_BLACKWELL = "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix A, GeForce RTX 5090"

GPUS: dict[str, GpuProfile] = {
    profile.key: profile
    for profile in (
        _profile("rtx3060-12gb", "GeForce RTX 3060 12 GB", 12, 25.6, None, 4, _AMPERE),
        _profile("rtx4070-12gb", "GeForce RTX 4070 12 GB", 12, 58.3, 116.6, 4, _ADA_SCALED),
        _profile("rtx4080-16gb", "GeForce RTX 4080 16 GB", 16, 97.5, 194.9, 4, _ADA),
        _profile("rtx4090-24gb", "GeForce RTX 4090 24 GB", 24, 165.2, 330.3, 4, _ADA),
        _profile("rtx5090-32gb", "GeForce RTX 5090 32 GB", 32, 209.5, 419.0, 5, _BLACKWELL),
        _profile("l4-24gb", "NVIDIA L4 24 GB", 24, 121.0, 242.0, 4, "NVIDIA L4 Tensor Core GPU datasheet (sparse figures halved)"),
        _profile("a100-40gb", "NVIDIA A100 40 GB PCIe", 40, 312.0, None, 4, "NVIDIA A100 Tensor Core GPU datasheet"),
        _profile("a100-80gb", "NVIDIA A100 80 GB SXM", 80, 312.0, None, 4, "NVIDIA A100 Tensor Core GPU datasheet"),
        _profile("h100-pcie-80gb", "NVIDIA H100 PCIe 80 GB", 80, 756.0, 1513.0, 5, "NVIDIA H100 Tensor Core GPU datasheet (sparse figures halved)"),
        _profile("h100-sxm-80gb", "NVIDIA H100 SXM 80 GB", 80, 989.0, 1979.0, 5, "NVIDIA H100 Tensor Core GPU datasheet (sparse figures halved)"),
        _profile("h200-141gb", "NVIDIA H200 SXM 141 GB", 141, 989.0, 1979.0, 5, "NVIDIA H200 Tensor Core GPU datasheet (sparse figures halved)"),
    )
}


def get_gpu(key: str) -> GpuProfile:
    """The profile named `key` (see `GPUS`)."""
    try:
        return GPUS[key]
    except KeyError:
        raise UnknownGpuError(f"unknown GPU {key!r}; profiles: {', '.join(GPUS)}") from None
