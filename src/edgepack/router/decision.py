"""The manifest's fallback semantics as one pure function: (fallback section, device state, request) -> decision.

Conditions. Hard ones mean the device cannot serve the request: ``no_artifact``, ``not_downloaded``,
``context_overflow`` (prompt + requested tokens beyond the artifact's context), ``low_memory`` (free memory
below the artifact's estimated peak), ``runtime_error``. Soft ones mean it should not: ``thermal_state`` (at or
above the configured state), ``low_power_mode``, ``battery_below`` (not charging). A condition whose trigger is
disabled never fires; a hard one still blocks the device.

The rule, by mode:
- ``on_device_only``: on device unless blocked, else refuse.
- ``cloud_only``: cloud if the cloud is usable, else refuse.
- ``prefer_cloud``: cloud if usable; else on device unless blocked; else refuse.
- ``prefer_on_device``: cloud if a trigger fired and the cloud is usable; else on device unless blocked; else refuse.
The cloud is usable when the mode allows it, privacy allows it, the device is online, the manifest names a
cloud model, and the request carries no earlier turns unless history may leave the device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import Field

from edgepack.config import Strict, validate
from edgepack.fallback import THERMAL_STATES
from edgepack.router.select import Hardware

HARD = ("no_artifact", "not_downloaded", "context_overflow", "low_memory", "runtime_error")
SOFT = ("thermal_state", "low_power_mode", "battery_below")


class ArtifactView(Strict):
    path: str
    max_context: int = Field(gt=0)
    peak_memory_bytes: int = Field(ge=0)


class DeviceState(Strict):
    device: str | None = None
    hardware: Hardware | None = None  # what the device reported, when ``device`` was chosen from it
    artifact: ArtifactView | None = None  # what this device would run; null = none fits it
    artifact_downloaded: bool = True
    free_memory_bytes: int | None = Field(None, ge=0)  # null = unknown: never triggers low_memory
    thermal_state: Literal["nominal", "fair", "serious", "critical"] = "nominal"
    low_power_mode: bool = False
    battery_level: float | None = Field(None, ge=0, le=1)
    charging: bool = False
    online: bool = True
    runtime_error: str | None = None  # the last on-device attempt's error, when retrying after one


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list | None = None
    name: str | None = None


class Request(Strict):
    messages: list[Message] = Field(min_length=1)
    prompt_tokens: int | None = Field(None, ge=0, description="counted on device; estimated when absent")
    max_tokens: int = Field(256, gt=0)
    stream: bool | None = None  # null = the manifest's setting
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: list[str] | None = None


@dataclass
class Decision:
    route: Literal["on_device", "cloud", "refuse"]
    artifact: str | None = None
    triggers: list[str] = field(default_factory=list)  # enabled conditions that hold
    blockers: list[str] = field(default_factory=list)  # hard conditions that hold (enabled or not)
    cloud_blockers: list[str] = field(default_factory=list)  # why the cloud is not usable
    candidates: list[dict] = field(default_factory=list)  # for cloud: model strings to try, in order
    reasons: list[str] = field(default_factory=list)
    device: str | None = None  # the device entry decided for (chosen from hardware facts when given)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(fallback: dict, device: DeviceState | dict, request: Request | dict) -> Decision:
    """Route one request. ``fallback`` is a manifest's fallback section (already schema-valid)."""
    device = device if isinstance(device, DeviceState) else validate(DeviceState, device, "device state")
    request = request if isinstance(request, Request) else validate(Request, request, "request")
    conditions = _conditions(fallback["triggers"], device, request)
    blockers = [c for c in HARD if c in conditions]
    triggers = [c for c in (*HARD, *SOFT) if c in conditions and _enabled(fallback["triggers"], c)]
    cloud_blockers = _cloud_blockers(fallback, device, request)
    reasons = [
        conditions[c] + ("" if c in triggers else " (trigger disabled)")
        for c in (*HARD, *SOFT)
        if c in conditions
    ]
    reasons += [_CLOUD_REASONS[c] for c in cloud_blockers]
    route = _route(fallback["mode"], bool(blockers), bool(triggers), not cloud_blockers)
    return Decision(
        route=route,
        artifact=device.artifact.path if route == "on_device" else None,
        triggers=triggers,
        blockers=blockers,
        cloud_blockers=cloud_blockers,
        candidates=list(fallback["candidates"]) if route == "cloud" else [],
        reasons=reasons + [_SUMMARY[(fallback["mode"], route)]],
        device=device.device,
    )


def _route(mode: str, blocked: bool, fired: bool, cloud_ok: bool) -> str:
    on_device = "refuse" if blocked else "on_device"
    if mode == "on_device_only":
        return on_device
    if mode == "cloud_only":
        return "cloud" if cloud_ok else "refuse"
    if mode == "prefer_cloud":
        return "cloud" if cloud_ok else on_device
    return "cloud" if fired and cloud_ok else on_device


def prompt_tokens(request: Request) -> int:
    """The request's prompt length: as counted on device, else a conservative estimate (3 chars a token)."""
    if request.prompt_tokens is not None:
        return request.prompt_tokens
    chars = sum(
        len(m.content if isinstance(m.content, str) else str(m.content or "")) for m in request.messages
    )
    return math.ceil(chars / 3) + 4 * len(request.messages)


def _conditions(trig: dict, d: DeviceState, r: Request) -> dict[str, str]:
    """Every condition that holds, with the reason in words."""
    out = {}
    a = d.artifact
    if a is None:
        out["no_artifact"] = f"no on-device artifact fits {d.device or 'this device'}"
    else:
        if not d.artifact_downloaded:
            out["not_downloaded"] = f"{a.path} is not downloaded yet"
        need = prompt_tokens(r) + r.max_tokens
        if need > a.max_context:
            out["context_overflow"] = (
                f"prompt + max_tokens = {need} tokens > on-device context {a.max_context}"
            )
        if d.free_memory_bytes is not None and d.free_memory_bytes < a.peak_memory_bytes:
            out["low_memory"] = f"free memory {d.free_memory_bytes} B < artifact peak {a.peak_memory_bytes} B"
    if d.runtime_error:
        out["runtime_error"] = f"on-device runtime failed: {d.runtime_error}"
    level = trig.get("thermal_state")
    if level and THERMAL_STATES.index(d.thermal_state) >= THERMAL_STATES.index(level):
        out["thermal_state"] = f"thermal state {d.thermal_state} (falls back at {level} or worse)"
    if d.low_power_mode:
        out["low_power_mode"] = "low-power mode is on"
    below = trig.get("battery_below")
    if below is not None and d.battery_level is not None and not d.charging and d.battery_level < below:
        out["battery_below"] = f"battery {d.battery_level:.0%} < {below:.0%} and not charging"
    return out


def _enabled(trig: dict, condition: str) -> bool:
    if condition == "thermal_state":
        return trig.get("thermal_state") is not None
    if condition == "battery_below":
        return trig.get("battery_below") is not None
    return bool(trig.get(condition))


def _cloud_blockers(fallback: dict, d: DeviceState, r: Request) -> list[str]:
    out = []
    if fallback["mode"] == "on_device_only":
        out.append("on_device_only")
    if not fallback["privacy"]["cloud_allowed"]:
        out.append("cloud_not_allowed")
    if (
        not fallback["candidates"]
        and fallback["mode"] != "on_device_only"
        and fallback["privacy"]["cloud_allowed"]
    ):
        out.append("no_cloud_model")
    if not d.online:
        out.append("offline")
    if _has_history(r) and not fallback["privacy"]["history_leaves_device"]:
        out.append("history_not_allowed")
    return out


def _has_history(r: Request) -> bool:
    """Earlier turns: any user/assistant/tool message before the last user message."""
    roles = [m.role for m in r.messages]
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=len(roles))
    return any(role in ("user", "assistant", "tool") for role in roles[:last_user])


_CLOUD_REASONS = {
    "on_device_only": "cloud not used: mode is on_device_only",
    "cloud_not_allowed": "cloud not used: privacy.cloud_allowed is false",
    "no_cloud_model": "cloud not used: the manifest names no cloud model",
    "offline": "cloud not used: the device is offline",
    "history_not_allowed": "cloud not used: the request carries earlier turns and privacy.history_leaves_device is false",
}
_SUMMARY = {
    (mode, route): f"{mode}: {text}"
    for mode in ("prefer_on_device", "on_device_only", "prefer_cloud", "cloud_only")
    for route, text in (("on_device", "serve on device"), ("cloud", "send to the cloud"),
                        ("refuse", "neither the device nor the cloud can serve this request"))
}  # fmt: skip
