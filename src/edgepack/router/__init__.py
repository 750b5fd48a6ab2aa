"""The reference router: the executable specification of a manifest's fallback section.

``decision.decide`` is the pure routing rule (on device, cloud, or refuse, and why); ``client.complete``
calls the cloud with the manifest's retry, provider and deadline policy. ``route`` joins them the way an
app would: look up this device's artifact in the manifest, decide, and call the cloud when told to.
"""

from __future__ import annotations

from edgepack.config import validate
from edgepack.errors import ConfigError
from edgepack.router.decision import Decision, DeviceState, Request, decide
from edgepack.router.select import Hardware, select


def device_state(manifest: dict, state: dict) -> DeviceState:
    """A DeviceState with its artifact filled from the manifest when the state names it.

    ``artifact`` may be a full object, an artifact path or target from the manifest, or absent: then the
    manifest's ``devices`` entry for ``device`` picks it (null when that device is cloud-only). Instead of
    ``device``, a state may give ``hardware`` (platform, OS version, RAM, machine id): the entry is then chosen
    by the manifest's selection rule (``edgepack.router.select``); none matching means no artifact.
    """
    if not isinstance(state, dict):
        raise ConfigError("device state", [f"expected a mapping at the top level, got {type(state).__name__}"])
    state = dict(state)
    if state.get("hardware") is not None and state.get("device") is None:
        hardware = validate(Hardware, state["hardware"], "device state: hardware")
        entry = select(manifest["devices"], hardware)
        if entry is None:
            state["device"], state["artifact"] = f"no devices entry matches {hardware.describe()}", None
        else:
            state["device"] = entry["device"]
    artifacts = {a["path"]: a for a in manifest["artifacts"]} | {
        a["target"]: a for a in manifest["artifacts"]
    }
    profiles = {d["device"]: d for d in manifest["devices"]}
    ref = state["artifact"] if "artifact" in state else _from_profile(profiles, state.get("device"))
    if isinstance(ref, str):
        if ref not in artifacts:
            raise ConfigError(
                "device state", [f"artifact: {ref!r} is not in the manifest ({', '.join(sorted(artifacts))})"]
            )
        a = artifacts[ref]
        profile = profiles.get(state.get("device")) or {}
        context = min(a["max_seq_len"], profile.get("max_context") or a["max_seq_len"])
        ref = {"path": a["path"], "max_context": context, "peak_memory_bytes": a["peak_memory_bytes"]}
    state["artifact"] = ref
    return validate(DeviceState, state, "device state")


def _from_profile(profiles: dict, device: str | None):
    if device is None:
        return None
    if device not in profiles:
        raise ConfigError(
            "device state",
            [f"device: {device!r} has no entry in the manifest's devices ({', '.join(profiles) or 'none'})"],
        )
    return profiles[device]["artifact"]


def route(manifest: dict, state: dict, request: dict) -> Decision:
    return decide(manifest["fallback"], device_state(manifest, state), validate(Request, request, "request"))


__all__ = ["Decision", "DeviceState", "Hardware", "Request", "decide", "device_state", "route", "select"]
