"""Which entry of a manifest's ``devices`` table a device is: the rule an app evaluates at run time.

The manifest lists its entries in evaluation order (``selection_order``: by platform, the most RAM first, then
the newest OS first, entries pinned to machine identifiers before the others). The device's entry is the first
whose ``match`` holds:

1. ``platform`` equals the device's (ios, android, linux);
2. the device's OS version >= ``min_os_version`` (dotted numbers compared number by number: 17.10 > 17.9);
3. the device's physical memory in bytes >= ``min_ram_bytes`` (iOS ``ProcessInfo.physicalMemory``, Android
   ``ActivityManager.MemoryInfo.totalMem``);
4. ``machine_ids`` is empty or holds the device's identifier (iOS ``utsname.machine``, Android ``Build.MODEL``).

No entry matches: the device has no artifact, which is the ``no_artifact`` trigger (the fallback decides).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepack.config import Strict

RULE = (
    "The first entry of devices (listed in evaluation order) whose match holds: platform equal, OS version >= "
    "min_os_version (dotted numbers, compared number by number), physical RAM in bytes >= min_ram_bytes, and "
    "machine_ids empty or holding the device's identifier (iOS utsname.machine, Android Build.MODEL). No entry: "
    "no artifact for this device (trigger no_artifact; the fallback decides)."
)


class Hardware(Strict):
    """What an app reads of its device to choose an entry."""

    platform: Literal["ios", "android", "linux"]
    os_version: str = Field(pattern=r"^\d+(\.\d+)*$", description="e.g. '18.2'")
    ram_bytes: int = Field(ge=0, description="physical memory the OS reports")
    machine_id: str | None = Field(None, description="iOS utsname.machine, Android Build.MODEL")

    def describe(self) -> str:
        ident = f", {self.machine_id}" if self.machine_id else ""
        return f"{self.platform} {self.os_version}, {self.ram_bytes / 1e9:.1f} GB RAM{ident}"


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def selection_order(entries: list[dict]) -> list[dict]:
    """``entries`` sorted for first-match evaluation; entries without a ``match`` (named only) go last."""

    def key(entry: dict):
        m = entry.get("match")
        if m is None:
            return (1, "", 0, (), 1, entry["device"])
        return (0, m["platform"], -m["min_ram_bytes"], tuple(-v for v in version(m["min_os_version"])),
                0 if m["machine_ids"] else 1, entry["device"])  # fmt: skip

    return sorted(entries, key=key)


def matches(match: dict, hw: Hardware) -> bool:
    return (
        match["platform"] == hw.platform
        and version(hw.os_version) >= version(match["min_os_version"])
        and hw.ram_bytes >= match["min_ram_bytes"]
        and (not match["machine_ids"] or hw.machine_id in match["machine_ids"])
    )


def select(entries: list[dict], hardware: Hardware) -> dict | None:
    """The device's entry of a manifest's ``devices`` (already in evaluation order), or None."""
    return next((e for e in entries if e.get("match") and matches(e["match"], hardware)), None)
