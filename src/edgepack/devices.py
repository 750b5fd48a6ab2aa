"""Device profiles: typed, validated data under ``devices/*.yaml``.

A profile states what an app may really use on a device class, not its total RAM: iOS kills an app past its
jetsam limit (raised by the increased-memory-limit entitlement), Android's low-memory killer bounds native
memory long before RAM is full. Each shipped file states its sources and assumptions in comments.
Sizes in profiles are GiB (2**30 bytes); ``runtimes`` is in order of preference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgepack.backends import backends
from edgepack.config import Strict, load, shipped_or_path
from edgepack.paths import shipped_dir

GIB = 1 << 30
RAM_REPORTED = 0.85  # share of the marketed RAM a device is sure to report (ProcessInfo.physicalMemory, totalMem)
Runtime = Literal[tuple(b.device_runtime for b in backends())]  # each backend's name in device profiles
Accelerator = Literal["cpu", "gpu", "ane", "npu", "dsp"]


class OSSpec(Strict):
    name: Literal["ios", "android", "linux"]
    min_version: str = Field(description="the oldest OS version the app supports on this device, e.g. '17.0'")

    @model_validator(mode="after")
    def _check(self) -> OSSpec:
        if not re.fullmatch(r"\d+(\.\d+)*", self.min_version):
            raise ValueError(f"min_version must be dotted numbers like '17.0', got {self.min_version!r}")
        return self

    def at_least(self, version: str) -> bool:
        return _version(self.min_version) >= _version(version)


class ExtendedLimit(Strict):
    gb: float = Field(gt=0, description="the app limit once the requirement is met")
    requires: str = Field(description="what the app must declare, e.g. an entitlement")


class MemorySpec(Strict):
    ram_gb: float = Field(gt=0)
    app_limit_gb: float = Field(gt=0, description="what one app may really use, by default")
    extended: ExtendedLimit | None = None
    headroom_gb: float = Field(0.5, ge=0, description="kept free for the app itself (UI, tokenizer, slack)")
    java_heap_mb: int | None = Field(
        None, gt=0, description="Android: getMemoryClass(); does not cap native memory"
    )
    large_heap_mb: int | None = Field(None, gt=0, description="Android: with android:largeHeap")

    @model_validator(mode="after")
    def _check(self) -> MemorySpec:
        problems = []
        if self.app_limit_gb > self.ram_gb:
            problems.append(f"app_limit_gb ({self.app_limit_gb}) exceeds ram_gb ({self.ram_gb})")
        if self.extended and not self.app_limit_gb <= self.extended.gb <= self.ram_gb:
            problems.append(f"extended.gb ({self.extended.gb}) must lie between app_limit_gb and ram_gb")
        if self.headroom_gb >= self.app_limit_gb:
            problems.append(
                f"headroom_gb ({self.headroom_gb}) leaves nothing of app_limit_gb ({self.app_limit_gb})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Device(Strict):
    name: str
    display_name: str
    soc: str = ""
    os: OSSpec
    memory: MemorySpec
    runtimes: list[Runtime] = Field(min_length=1, description="preferred first")
    accelerators: list[Accelerator] = Field(min_length=1)
    machine_ids: list[str] = Field(
        default_factory=list,
        description="optional: the hardware identifiers this profile alone stands for (iOS utsname.machine such "
        "as 'iPhone16,1'; Android Build.MODEL such as 'SM-S921B'); empty = any device of this platform, OS and RAM",
    )

    @model_validator(mode="after")
    def _check(self) -> Device:
        if len(set(self.runtimes)) != len(self.runtimes):
            raise ValueError(f"runtimes lists a runtime twice: {self.runtimes}")
        for backend in backends():
            if backend.device_runtime in self.runtimes and backend.os_names and self.os.name not in backend.os_names:
                raise ValueError(f"{backend.device_runtime} runs only on {', '.join(backend.os_names)}, not {self.os.name}")
        return self

    def match(self) -> dict:
        """The manifest's selection rule for this profile (see ``edgepack.router.select``): the platform, the OS
        version and the physical RAM a device reports, optionally its machine identifier. RAM is the profile's
        times ``RAM_REPORTED``: an 8 GB phone reports less than 8 GiB (the OS and firmware keep some)."""
        return {"platform": self.os.name, "min_os_version": self.os.min_version,
                "min_ram_bytes": int(self.memory.ram_gb * RAM_REPORTED * GIB), "machine_ids": list(self.machine_ids)}  # fmt: skip

    def budget(self, extended: bool = False) -> int:
        """Bytes a model may take: the app limit (extended if asked and available) minus the headroom."""
        limit = self.memory.extended.gb if extended and self.memory.extended else self.memory.app_limit_gb
        return int((limit - self.memory.headroom_gb) * GIB)

    def limit_text(self, extended: bool = False) -> str:
        if extended and self.memory.extended:
            return f"{self.memory.extended.gb:g} GiB with {self.memory.extended.requires}"
        return f"{self.memory.app_limit_gb:g} GiB app limit"


def devices_dir() -> Path:
    return shipped_dir("devices")


def available() -> list[str]:
    return sorted(p.stem for p in devices_dir().glob("*.yaml"))


def load_device(name_or_path: str | Path) -> Device:
    """A shipped profile by name, or any profile file by path."""
    path = shipped_or_path(name_or_path, devices_dir(), "device profile")
    return load(Device, path)


def load_devices(names: str | list[str] | None) -> list[Device]:
    """``"all"``/None for every shipped profile, else a comma-separated string or a list of names/paths."""
    if names is None or names == "all" or names == ["all"]:
        names = available()
    elif isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [load_device(n) for n in names]


def looks_like_device(data: object) -> bool:
    """Whether parsed YAML/JSON is meant as a device profile (for ``edgepack validate`` to dispatch on)."""
    return isinstance(data, dict) and "runtimes" in data and ("memory" in data or "os" in data)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))
