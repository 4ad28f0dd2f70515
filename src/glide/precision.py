"""Which floating-point precision to compute in, decided from the hardware (never assumed).

One resolver serves training (a Lightning precision string) and sampling (an autocast dtype):

- ``fp32``: float32 everywhere (the release's recipe);
- ``bf16``: bfloat16 autocast (matmuls and convolutions in bf16; GroupNorm32 / LayerNorm32 and the
  attention softmax stay float32, as the release's half-precision path keeps them);
- ``auto``: bf16 where the hardware computes bf16 *faster* than float32, float32 elsewhere.

What ``auto`` counts as fast bf16 (:data:`BF16_PAYS`): a CUDA GPU that supports bf16, or a CPU
with AMX tiles (``amx_bf16``). A CPU with only the AVX-512 bf16 dot product (``avx512_bf16``) has
native bf16 instructions, but each ``vdpbf16ps`` does the work of the two float32 FMAs it
replaces, so convolutions and matmuls gain nothing and autocast's casts are pure cost: measured on
a 2-core Xeon (family 6 model 207, ``avx512_bf16``, AMX not exposed) bf16 ran the GLIDE U-Nets at
0.5-0.8x float32 (README, *Benchmarks*). There ``auto`` stays float32 and says why; ``bf16`` still
forces it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = [
    "BF16_PAYS",
    "PRECISIONS",
    "Hardware",
    "Precision",
    "detect_hardware",
    "read_cpu_flags",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")
# Lightning's spellings, accepted wherever a precision is configured.
_ALIASES = {
    "32": "fp32",
    "32-true": "fp32",
    "float32": "fp32",
    "bf16-mixed": "bf16",
    "bfloat16": "bf16",
}
# Hardware on which ``auto`` picks bf16: bf16 matrix units, not just bf16 instructions.
BF16_PAYS = frozenset({"cuda_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Hardware:
    """What decides the precision: CPU flags and ISA, core count, CUDA."""

    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, ...
    cpu_name: str = ""  # e.g. "Intel(R) Xeon(R) Processor (family 6 model 207)"
    cores: int = 1
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str = ""

    @property
    def cpu_native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: the AVX-512 bf16 dot product or AMX tiles."""
        return bool(self.cpu_flags & {"avx512_bf16", "amx_bf16"})

    @property
    def cpu_amx(self) -> bool:
        return "amx_bf16" in self.cpu_flags

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (benchmarks, logs)."""
        return {
            "cpu": self.cpu_name,
            "cores": self.cores,
            "cpu_capability": self.cpu_capability,
            "avx512_bf16": "avx512_bf16" in self.cpu_flags,
            "amx_bf16": self.cpu_amx,
            "cpu_native_bf16": self.cpu_native_bf16,
            "cuda": self.cuda,
            "cuda_bf16": self.cuda_bf16,
            "cuda_name": self.cuda_name,
        }

    def describe(self) -> str:
        """One line, e.g. ``2 cores, AVX512, avx512_bf16 (no AMX), no CUDA``."""
        if self.cpu_amx:
            bf16 = "AMX bf16"
        elif self.cpu_native_bf16:
            bf16 = "avx512_bf16 (no AMX)"
        else:
            bf16 = "no native bf16"
        cuda = f"CUDA {self.cuda_name or 'device'}" if self.cuda else "no CUDA"
        return f"{self.cores} cores, {self.cpu_capability or 'unknown ISA'}, {bf16}, {cuda}"


def _first_cpu(cpuinfo: str | Path) -> dict[str, str]:
    """``key: value`` fields of the first processor in ``cpuinfo`` (empty if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first CPU in ``cpuinfo`` (empty where the file does not exist)."""
    fields = _first_cpu(cpuinfo)
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())  # x86 / ARM


def _cpu_name(fields: dict[str, str]) -> str:
    name = fields.get("model name", "")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name.strip()


def detect_hardware(*, cpuinfo: str | Path = "/proc/cpuinfo", cuda: bool | None = None) -> Hardware:
    """Read this machine's capabilities; ``cuda`` overrides the CUDA probe (tests)."""
    has_cuda = torch.cuda.is_available() if cuda is None else cuda
    return Hardware(
        cpu_flags=read_cpu_flags(cpuinfo),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_name=_cpu_name(_first_cpu(cpuinfo)),
        cores=os.cpu_count() or 1,
        cuda=has_cuda,
        cuda_bf16=bool(has_cuda and torch.cuda.is_bf16_supported()),
        cuda_name=torch.cuda.get_device_name() if has_cuda else "",
    )


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``fp32`` or ``bf16`` on a device type, and why it was chosen."""

    name: str
    device_type: str = "cpu"
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return torch.bfloat16 if self.name == "bf16" else None

    @property
    def lightning(self) -> str:
        """Lightning's ``precision`` argument."""
        return "bf16-mixed" if self.name == "bf16" else "32-true"

    def autocast(self) -> AbstractContextManager:
        """The context to run the networks in (``nullcontext`` for float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@lru_cache(maxsize=1)
def _this_machine() -> Hardware:
    return detect_hardware()


def _normalise(precision: str) -> str:
    name = _ALIASES.get(str(precision).strip().lower(), str(precision).strip().lower())
    if name not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {PRECISIONS} "
            f"(or Lightning's {', '.join(sorted(_ALIASES))})"
        )
    return name


def _pays(features: Iterable[str]) -> bool:
    return bool(BF16_PAYS & set(features))


def resolve_precision(
    precision: str,
    device: str | torch.device = "cpu",
    *,
    hardware: Hardware | None = None,
) -> Precision:
    """Resolve ``auto`` / ``fp32`` / ``bf16`` (or a Lightning string) for ``device``.

    ``hardware`` defaults to this machine (:func:`detect_hardware`, read once per process); pass
    one to decide for another machine.
    """
    name = _normalise(precision)
    device_type = torch.device(device).type
    if name != "auto":
        return Precision(name, device_type, f"{name} requested")
    hw = hardware or _this_machine()
    if device_type == "cuda":
        if _pays({"cuda_bf16"} if hw.cuda_bf16 else set()):
            return Precision("bf16", device_type, "the GPU supports bf16")
        return Precision("fp32", device_type, "the GPU lacks bf16")
    if _pays(hw.cpu_flags):
        return Precision("bf16", device_type, "the CPU has AMX bf16 tiles")
    if hw.cpu_native_bf16:
        why = "avx512_bf16 without AMX: bf16 matmuls run no faster than float32 (measured slower)"
    else:
        why = "no native bf16 on this CPU: emulated bf16 is slower"
    return Precision("fp32", device_type, why)
