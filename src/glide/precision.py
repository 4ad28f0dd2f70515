"""Which floating-point precision to compute in: measured on this machine, never assumed.

One resolver serves training (a Lightning precision string) and sampling (an autocast dtype):

- ``fp32``: float32 everywhere (the release's recipe);
- ``bf16``: bfloat16 autocast (matmuls and convolutions in bf16; GroupNorm32 / LayerNorm32 and the
  attention softmax stay float32, as the release's half-precision path keeps them);
- ``auto``: times the network's own forward (:class:`Workload`: the networks on batches shaped
  like the ones they will run) in float32 and in bf16 autocast, a warm-up and a few interleaved
  reps (the fastest kept), and picks bf16 only where it is at least :data:`BF16_MIN_SPEEDUP`
  times faster *and* its output is within :data:`~glide.models.nn.BF16_TOLERANCE` (RMS relative
  to the float32 output's std) of float32's (:func:`decide_precision`).

Why measure: CPU flags do not predict the speed. With ``avx512_bf16`` but no AMX, bf16 autocast
ran the GLIDE U-Nets at 0.61x float32 on a Xeon (family 6 model 207) and at 1.43x (base step) to
2.07x (upsampler step, channels_last) on an AMD EPYC Zen 4. A CPU device whose known flags list
no bf16 arithmetic (neither ``avx512_bf16``, ``amx_bf16`` nor Arm's ``bf16``) emulates it, ~8x
slower: there ``auto`` keeps float32 without timing and says so; likewise a GPU without bf16.

The measurement is cached in ``precision.json`` under :func:`cache_dir` (``$GLIDE_CACHE_DIR``,
else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``), keyed by the CPU model (or CUDA device)
name, torch version, device type, thread count and the workload's digest (network classes,
parameter and input shapes, execution levers); writes are atomic, a corrupt file is ignored with a
warning. Each decision is printed once per process as one line on stderr, e.g. ``precision auto:
fp32 (bf16 0.12x float32: 41.3 ms vs 5.1 ms per forward, rel err 0.8%: not 1.15x faster; cached
in ~/.cache/glide/precision.json)``. ``fp32`` / ``bf16`` force either without timing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glide.models.nn import BF16_TOLERANCE, perturb_

__all__ = [
    "BF16_MIN_SPEEDUP",
    "CACHE_FILE",
    "NATIVE_BF16_FLAGS",
    "PRECISIONS",
    "Hardware",
    "Measurement",
    "Precision",
    "Timer",
    "Workload",
    "cache_dir",
    "decide_precision",
    "detect_hardware",
    "measure",
    "read_cpu_flags",
    "relative_error",
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
# CPU flags of bf16 arithmetic: x86's AVX-512 bf16 dot product and AMX tiles, Arm's BF16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# bf16 must beat float32 by this factor: smaller gains are within the timing noise of a shared
# machine and do not pay for bf16's larger output error.
BF16_MIN_SPEEDUP = 1.15
CACHE_FILE = "precision.json"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Hardware:
    """The machine ``auto`` runs on: CPU flags and ISA, core count, CUDA."""

    cpu_flags: frozenset[str] = frozenset()
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, ...
    cpu_name: str = ""  # e.g. "Intel(R) Xeon(R) Processor (family 6 model 207)"
    cores: int = 1
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str = ""

    @property
    def cpu_native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: the AVX-512 bf16 dot product, AMX tiles or Arm's BF16."""
        return bool(self.cpu_flags & NATIVE_BF16_FLAGS)

    @property
    def cpu_bf16_emulated(self) -> bool:
        """The CPU's flags are known and none computes bf16: autocast would emulate it."""
        return bool(self.cpu_flags) and not self.cpu_native_bf16

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
            "cpu_bf16_emulated": self.cpu_bf16_emulated,
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
            bf16 = "no native bf16" if self.cpu_flags else "unknown bf16 support"
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
class Measurement:
    """Seconds per forward of a workload in float32 and in bf16 autocast, and bf16's error."""

    fp32_s: float
    bf16_s: float
    rel_error: float | None  # RMS(bf16 - fp32) / std(fp32); None: the float32 output is constant

    @property
    def speedup(self) -> float:
        """How many times faster bf16 ran (< 1: slower)."""
        return self.fp32_s / self.bf16_s

    def describe(self) -> str:
        """E.g. ``bf16 0.12x float32: 41.3 ms vs 5.1 ms per forward, rel err 0.8%``."""
        err = "n/a (constant output)" if self.rel_error is None else f"{self.rel_error:.1%}"
        return (
            f"bf16 {self.speedup:.2f}x float32: {_ms(self.bf16_s)} vs {_ms(self.fp32_s)} per "
            f"forward, rel err {err}"
        )

    def as_dict(self) -> dict[str, float | None]:
        return {
            "fp32_s": self.fp32_s,
            "bf16_s": self.bf16_s,
            "speedup": self.speedup,
            "rel_error": self.rel_error,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``fp32`` or ``bf16`` on a device type, why, and what was timed."""

    name: str
    device_type: str = "cpu"
    reason: str = ""
    measurement: Measurement | None = None

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


def decide_precision(
    fp32_seconds: float,
    bf16_seconds: float,
    rel_error: float | None,
    *,
    device_type: str = "cpu",
    margin: float = BF16_MIN_SPEEDUP,
    max_error: float = BF16_TOLERANCE,
) -> Precision:
    """bf16 where it ran at least ``margin`` times faster than float32 and its relative error is
    at most ``max_error`` (``None``: not measurable, speed alone decides); float32 otherwise."""
    if not (fp32_seconds > 0 and bf16_seconds > 0):
        raise ValueError(f"timings must be positive, got {fp32_seconds} and {bf16_seconds}")
    m = Measurement(fp32_seconds, bf16_seconds, rel_error)
    accurate = rel_error is None or rel_error <= max_error  # NaN compares False: inaccurate
    if m.speedup < margin:
        return Precision("fp32", device_type, f"{m.describe()}: not {margin:g}x faster", m)
    if not accurate:
        why = f"{m.describe()}: faster, but the error exceeds {max_error:.0%}"
        return Precision("fp32", device_type, why, m)
    return Precision("bf16", device_type, f"{m.describe()}: >= {margin:g}x faster", m)


# ----------------------------------------------------------------------------- what is timed


@dataclass
class Workload:
    """The forward passes ``auto`` times: each network once on a batch shaped like its own.

    ``variant`` names whatever else changes the speed (e.g. execution levers); it is part of the
    cache key, as are the networks' classes and parameter shapes and the inputs' shapes.
    """

    calls: Sequence[tuple[nn.Module, Mapping[str, Any]]]
    variant: str = ""
    label: str = ""  # for messages, e.g. "Text2ImUNet batch 2 at 64px"

    @classmethod
    def for_network(
        cls,
        model: nn.Module,
        *,
        batch: int = 1,
        image_size: int | None = None,
        variant: str = "",
        seed: int = 0,
    ) -> Workload:
        """``model`` (a GLIDE U-Net of any variant, or a noised CLIP) on ``batch`` random inputs
        at ``image_size`` (default: the model's own), seeded so repeated timings agree."""
        g = torch.Generator().manual_seed(seed)
        device = _device_of(model)
        calls: list[tuple[nn.Module, Mapping[str, Any]]] = []
        if hasattr(model, "image_encoder") and hasattr(model, "text_encoder"):  # noised CLIP
            img, txt = model.image_encoder.config, model.text_encoder.config
            size = image_size or img.image_size
            lens = torch.full((batch,), txt.max_text_len // 2)
            calls = [
                (model.image_encoder, {"images": _rand(g, batch, 3, size), "t": _steps(g, batch)}),
                (
                    model.text_encoder,
                    {"tokens": _tokens(g, batch, txt.max_text_len, txt.n_vocab), "lens": lens},
                ),
            ]
        else:
            cfg = model.text_config
            size = image_size or cfg.image_size
            channels = cfg.unet.in_channels
            kw: dict[str, Any] = {
                "x": _rand(g, batch, channels, size),
                "timesteps": _steps(g, batch),
            }
            if cfg.xf_width:
                kw["tokens"] = _tokens(g, batch, cfg.text_ctx, cfg.n_vocab)
                kw["mask"] = torch.arange(cfg.text_ctx).expand(batch, -1) < cfg.text_ctx // 2
            if cfg.super_res:
                kw["low_res"] = _rand(g, batch, channels, max(1, size // 4))  # GLIDE's 4x
            if cfg.inpaint:
                kw["inpaint_image"] = _rand(g, batch, channels, size)
                kw["inpaint_mask"] = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
            calls = [(model, kw)]
        calls = [(m, {k: v.to(device) for k, v in inputs.items()}) for m, inputs in calls]
        label = f"{type(model).__name__} batch {batch} at {size}px"
        return cls(calls, variant=variant, label=label)

    def signature(self) -> str:
        """A digest of what decides the speed: classes, parameter and input shapes, variant."""
        h = hashlib.sha256(self.variant.encode())
        for module, kwargs in self.calls:
            h.update(type(module).__qualname__.encode())
            for name, p in module.named_parameters():
                h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            for name, v in sorted(kwargs.items()):
                h.update(f"{name}{tuple(v.shape)}{v.dtype}".encode())
        return h.hexdigest()[:16]

    def to(self, device: torch.device | str) -> Workload:
        """The workload on ``device``: the networks are moved in place, the inputs copied."""
        calls = [
            (module.to(device), {k: v.to(device) for k, v in kwargs.items()})
            for module, kwargs in self.calls
        ]
        return Workload(calls, variant=self.variant, label=self.label)

    def run(self) -> list[Tensor]:
        """Every call once; the outputs as float32."""
        return [module(**kwargs).float() for module, kwargs in self.calls]

    def extend(self, other: Workload) -> Workload:
        """Both workloads' calls, timed together."""
        variant = (
            self.variant if self.variant == other.variant else f"{self.variant}|{other.variant}"
        )
        label = " + ".join(x for x in (self.label, other.label) if x)
        return Workload([*self.calls, *other.calls], variant=variant, label=label)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _rand(g: torch.Generator, batch: int, channels: int, size: int) -> Tensor:
    return torch.randn(batch, channels, size, size, generator=g)


def _steps(g: torch.Generator, batch: int) -> Tensor:
    return torch.randint(0, 1000, (batch,), generator=g)


def _tokens(g: torch.Generator, batch: int, ctx: int, n_vocab: int) -> Tensor:
    return torch.randint(0, n_vocab, (batch, ctx), generator=g)


@lru_cache(maxsize=1)
def _default_workload() -> Workload:
    """The tiny preset's base at batch 2 (a guided sample's rows): timed when no network is
    given."""
    from glide.models import from_openai_options, load_preset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # perturbed: a fresh U-Net outputs exactly zero, which leaves bf16's error unmeasurable
        model = perturb_(from_openai_options(load_preset("tiny")["base"])).eval()
    return Workload.for_network(model, batch=2)


def relative_error(outputs: Sequence[Tensor], references: Sequence[Tensor]) -> float | None:
    """The largest RMS(output - reference) / std(reference) over the pairs; None where every
    reference is constant (a freshly initialised U-Net's zero output)."""
    worst: float | None = None
    for out, ref in zip(outputs, references, strict=True):
        ref = ref.double()
        std = float(ref.std()) if ref.numel() > 1 else 0.0
        if std == 0:
            continue
        err = float((out.double() - ref).pow(2).mean().sqrt()) / std
        err = err if math.isfinite(err) else math.inf
        worst = err if worst is None else max(worst, err)
    return worst


Timer = Callable[[Workload, str], Measurement]


def measure(
    workload: Workload,
    device_type: str,
    *,
    reps: int = 3,
    budget_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Measurement:
    """Time ``workload`` in float32 and bf16 autocast: one untimed warm-up each (its outputs give
    bf16's error), then up to ``reps`` interleaved timed rounds, fewer once ``budget_s`` is spent
    (at least one); the fastest of each is kept. Networks run in eval mode, without gradients,
    on ``device_type`` (moved there in place)."""
    workload = workload.to(device_type)
    modules = [m for m, _ in workload.calls]
    modes = [m.training for m in modules]
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)

    def run(bf16: bool) -> tuple[float, list[Tensor]]:
        ctx = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()
        sync()
        start = clock()
        with ctx:
            out = workload.run()
        sync()
        return clock() - start, out

    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            _, reference = run(False)
            _, outputs = run(True)
            fp32: list[float] = []
            bf16: list[float] = []
            start = clock()
            for _ in range(max(1, reps)):
                # Interleaved, so load from other processes hits both precisions alike.
                fp32.append(run(False)[0])
                bf16.append(run(True)[0])
                if clock() - start > budget_s:
                    break
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    eps = 1e-9  # a clock too coarse for a tiny network must not make a zero timing
    return Measurement(max(min(fp32), eps), max(min(bf16), eps), relative_error(outputs, reference))


# ----------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$GLIDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``."""
    env = os.environ.get("GLIDE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "glide"


def _shown(path: Path) -> str:
    """``path`` with the home directory as ``~``."""
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except (ValueError, RuntimeError):
        return str(path)


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; empty (with a warning) when the file is unreadable or corrupt."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        warnings.warn(f"cannot read the precision cache {path}: {exc}", stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        entries = data["entries"]
        if data.get("version") != _CACHE_VERSION or not isinstance(entries, dict):
            raise ValueError("unexpected layout")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(f"ignoring the corrupt precision cache {path} ({exc})", stacklevel=3)
        return {}
    return entries


def _write_cache(path: Path, key: str, record: dict[str, Any]) -> None:
    """Add ``record`` under ``key``: re-read, then replace the file atomically (a reader sees the
    old file or the new one, never half of one). Failure to write only warns."""
    entries = _read_cache(path)
    entries[key] = record
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"cannot write the precision cache {path}: {exc}", stacklevel=3)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _cached_measurement(record: Any) -> Measurement | None:
    try:
        m = Measurement(
            float(record["fp32_s"]),
            float(record["bf16_s"]),
            None if record["rel_error"] is None else float(record["rel_error"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return m if m.fp32_s > 0 and m.bf16_s > 0 else None


def _cache_key(hw: Hardware, device_type: str, workload: Workload) -> str:
    name = (hw.cuda_name if device_type == "cuda" else hw.cpu_name) or "unknown device"
    threads = torch.get_num_threads() if device_type == "cpu" else 0
    return (
        f"{name} | torch {torch.__version__} | {device_type} | {threads} threads | "
        f"{workload.signature()}"
    )


# ----------------------------------------------------------------------------- the resolver


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


_ANNOUNCED: set[str] = set()


def _announce(key: str, choice: Precision) -> None:
    """One line on stderr per decision and process (sampling resolves once per stage)."""
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    print(f"precision auto: {choice.name} ({choice.reason})", file=sys.stderr)


def resolve_precision(
    precision: str,
    device: str | torch.device = "cpu",
    *,
    hardware: Hardware | None = None,
    workload: Workload | Callable[[], Workload] | None = None,
    timer: Timer | None = None,
    cache: str | Path | None = None,
) -> Precision:
    """Resolve ``auto`` / ``fp32`` / ``bf16`` (or a Lightning string) for ``device``.

    ``auto`` times ``workload`` (or a callable building it only when needed; default: the tiny
    preset's base) with ``timer`` (default :func:`measure`) unless ``cache`` (default
    ``cache_dir() / CACHE_FILE``) holds a measurement for this machine and workload, and decides
    with :func:`decide_precision`. ``hardware`` defaults to this machine (read once per process).
    """
    name = _normalise(precision)
    device_type = torch.device(device).type
    if name != "auto":
        return Precision(name, device_type, f"{name} requested")
    hw = hardware or _this_machine()
    if device_type == "cpu" and hw.cpu_bf16_emulated:
        why = (
            "no avx512_bf16 / amx_bf16 on this CPU: bf16 would be emulated (measured ~8x slower "
            "than float32), not timed"
        )
        choice = Precision("fp32", device_type, why)
        _announce(f"emulated {device_type}", choice)
        return choice
    if device_type == "cuda" and not hw.cuda_bf16:
        choice = Precision("fp32", device_type, "the GPU lacks bf16, not timed")
        _announce(f"no bf16 {hw.cuda_name}", choice)
        return choice
    if workload is None:
        work = _default_workload()
    else:
        work = workload if isinstance(workload, Workload) else workload()
    path = Path(cache) if cache is not None else cache_dir() / CACHE_FILE
    key = _cache_key(hw, device_type, work)
    measured = _cached_measurement(_read_cache(path).get(key))
    where = f"cached in {_shown(path)}"
    if measured is None:
        try:
            measured = (timer or measure)(work, device_type)
        except (RuntimeError, NotImplementedError) as exc:
            # e.g. an op without a bf16 kernel on this device: bf16 is not an option here
            choice = Precision("fp32", device_type, f"bf16 autocast failed ({exc}), not cached")
            _announce(f"{path} {key}", choice)
            return choice
        when = datetime.now(UTC).isoformat(timespec="seconds")
        record = {**measured.as_dict(), "workload": work.label, "measured_at": when}
        _write_cache(path, key, record)
        where = f"measured now, {where}"
    decided = decide_precision(
        measured.fp32_s, measured.bf16_s, measured.rel_error, device_type=device_type
    )
    choice = Precision(decided.name, device_type, f"{decided.reason}; {where}", measured)
    _announce(f"{path} {key}", choice)
    return choice
