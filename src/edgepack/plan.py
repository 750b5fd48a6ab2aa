"""Which target, recipe and context fit each device profile.

For each device, the candidates are every (recipe, target) pair whose runtime the device runs (Core ML only
where the device's minimum iOS has stateful models, iOS 18). The first recipe in preference order that fits
at least ``min_context`` tokens wins; among its targets, the device's preferred runtime first; for each target,
the default app limit before an extended one (e.g. iOS's increased-memory-limit entitlement, which the plan then
names in ``extended``).
The plan reports the largest context that fits (up to the model's, or the artifact's max_seq_len), or
cloud-only with the reason. Memory comes from ``edgepack.memory`` (formula in its docstring).
"""

from __future__ import annotations

import dataclasses

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.backends import Backend, get_backend, target_names
from edgepack.devices import GIB, Device, load_devices
from edgepack.errors import ConfigError
from edgepack.memory import Estimate, Footprint, artifact_footprints, footprint
from edgepack.recipes import Recipe, load_recipe

# Near-lossless first: int8 is as fast as anything on-device and barely moves parity; int4 where it must.
DEFAULT_RECIPES = ("int8-weight", "int4-block32", "int4-block128")
MIN_CONTEXT = 2048  # below this a chat model is of little use on a device


@dataclass(frozen=True)
class Candidate:
    recipe: str
    target: str
    footprint: Footprint
    context_limit: int  # the model's context, or the artifact's max_seq_len
    path: str | None = None  # the artifact's path in its export folder (after export)


@dataclass(frozen=True)
class DevicePlan:
    device: str
    target: str | None
    recipe: str | None
    max_context: int
    reason: str
    estimate: Estimate | None = None  # at max_context, for the chosen candidate
    extended: str | None = None  # the requirement of the extended limit the plan relies on, if any
    artifact: str | None = None  # the chosen artifact's path, when planning an export folder
    match: dict | None = None  # the device's selection rule (Device.match)

    @property
    def cloud_only(self) -> bool:
        return self.target is None

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "target": self.target,
            "artifact": self.artifact,
            "recipe": self.recipe,
            "cloud_only": self.cloud_only,
            "max_context": self.max_context,
            "requires": self.extended,
            "memory": self.estimate.as_dict() if self.estimate else None,
            "reason": self.reason,
        }


def plan(
    model: Any,
    devices: str | Sequence[str | Device] | None = "all",
    recipes: Sequence[str | Recipe] | None = None,
    *,
    targets: Sequence[str] | None = None,
    num_parameters: int | None = None,
    min_context: int = MIN_CONTEXT,
) -> list[DevicePlan]:
    """Plan ``model`` (a Checkpoint, a path or hub id, or a config dict) before export."""
    config, num_parameters = _model_config(model, num_parameters)
    recipes = [r if isinstance(r, Recipe) else load_recipe(r) for r in (recipes or DEFAULT_RECIPES)]
    known = target_names()
    targets = list(targets or known)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ConfigError("--targets", [f"unknown target {t!r}; known: {', '.join(known)}" for t in unknown])
    candidates = [
        Candidate(r.name, t, fp, fp.geometry.context_length)
        for r in recipes
        for t in targets
        for fp in [footprint(config, r, t, num_parameters)]
    ]
    return [dataclasses.replace(choose(device, candidates, min_context), match=device.match())
            for device in _devices(devices)]  # fmt: skip


def plan_export(
    folder: str | Path,
    devices: str | Sequence[str | Device] | None = "all",
    *,
    min_context: int = MIN_CONTEXT,
) -> list[DevicePlan]:
    """Plan the artifacts of an export folder: their real sizes, their recipe, up to their max_seq_len."""
    candidates = [
        Candidate(art.recipe, art.target, fp, art.max_seq_len, art.path)
        for art, fp in artifact_footprints(folder)
    ]
    return [dataclasses.replace(choose(device, candidates, min_context), match=device.match())
            for device in _devices(devices)]  # fmt: skip


def choose(device: Device, candidates: list[Candidate], min_context: int = MIN_CONTEXT) -> DevicePlan:
    """The first candidate, in recipe then device-runtime order, that fits ``min_context`` tokens."""
    usable = _usable(device, candidates)
    if not usable:
        return _no_runtime(device, candidates)
    limits = [False, True] if device.memory.extended else [False]
    for recipe in dict.fromkeys(c.recipe for c in usable):
        for cand in (c for c in usable if c.recipe == recipe):
            for extended in limits:
                fit = _fit(device, cand, extended, min_context)
                if fit:
                    return fit
    return _too_big(device, usable, min_context, extended=limits[-1])


def _usable(device: Device, candidates: list[Candidate]) -> list[Candidate]:
    order = {runtime: i for i, runtime in enumerate(device.runtimes)}
    ok = [c for c in candidates if _runs_on(device, get_backend(c.target), order)]
    recipe_order = {r: i for i, r in enumerate(dict.fromkeys(c.recipe for c in candidates))}
    return sorted(ok, key=lambda c: (recipe_order[c.recipe], order[get_backend(c.target).device_runtime]))


def _runs_on(device: Device, backend: Backend, runtime_order: dict[str, int]) -> bool:
    """The device lists the backend's runtime and its OS is at least the backend's minimum for that OS."""
    min_os = backend.min_os.get(device.os.name)
    return backend.device_runtime in runtime_order and (min_os is None or device.os.at_least(min_os))


def _fit(device: Device, cand: Candidate, extended: bool, min_context: int) -> DevicePlan | None:
    budget = device.budget(extended)
    need = min(min_context, cand.context_limit)
    context = cand.footprint.max_context(budget, cand.context_limit)
    if context < need:
        return None
    est = cand.footprint.at(context)
    requires = device.memory.extended.requires if extended else None
    reason = (
        f"{cand.recipe} on {cand.target}: {_gib(est.weights)} weights + {_gib(est.kv_cache)} KV cache at "
        f"{context} tokens + {_gib(est.overhead)} runtime = {_gib(est.total)} of a {_gib(budget)} budget "
        f"({device.limit_text(extended)}, less {device.memory.headroom_gb:g} GiB headroom)"
    )
    return DevicePlan(device.name, cand.target, cand.recipe, context, reason, est, requires, cand.path)


def _too_big(device: Device, usable: list[Candidate], min_context: int, extended: bool) -> DevicePlan:
    smallest = min(usable, key=lambda c: c.footprint.at(min(min_context, c.context_limit)).total)
    need = min(min_context, smallest.context_limit)
    est = smallest.footprint.at(need)
    budget = device.budget(extended)
    reason = (
        f"cloud only: the smallest option, {smallest.recipe} on {smallest.target}, needs {_gib(est.total)} "
        f"({_gib(est.weights)} weights + {_gib(est.kv_cache + est.overhead)} KV cache and runtime at {need} tokens); "
        f"the budget is {_gib(budget)} ({device.limit_text(extended)}, less {device.memory.headroom_gb:g} GiB headroom)"
    )
    return DevicePlan(device.name, None, None, 0, reason)


def _no_runtime(device: Device, candidates: list[Candidate]) -> DevicePlan:
    targets = ", ".join(dict.fromkeys(c.target for c in candidates)) or "none"
    too_old = "".join(
        f"; {b.name} needs {device.os.name} {b.min_os[device.os.name]}"
        for b in map(get_backend, dict.fromkeys(c.target for c in candidates))
        if device.os.name in b.min_os and not device.os.at_least(b.min_os[device.os.name])
    )
    reason = (
        f"cloud only: no candidate target ({targets}) runs on {device.display_name} "
        f"(runtimes: {', '.join(device.runtimes)}; {device.os.name} {device.os.min_version}+{too_old})"
    )
    return DevicePlan(device.name, None, None, 0, reason)


def devices_section(plans: list[DevicePlan]) -> list[dict]:
    """The manifest's ``devices`` section (manifest.schema.json): one entry per device. ``artifact`` is the
    artifact's path for plans of an export folder (``plan_export``), the target name before export."""
    return [
        {
            "device": p.device,
            "artifact": p.artifact or p.target,
            "cloud_only": p.cloud_only,
            "reason": p.reason,
            "max_context": p.max_context or None,
            **({"match": p.match} if p.match else {}),
        }
        for p in plans
    ]


def _devices(devices: str | Sequence[str | Device] | None) -> list[Device]:
    if devices is not None and not isinstance(devices, str) and all(isinstance(d, Device) for d in devices):
        return list(devices)
    if devices is not None and not isinstance(devices, str):
        return [d if isinstance(d, Device) else load_devices([d])[0] for d in devices]
    return load_devices(devices)


def _model_config(model: Any, num_parameters: int | None) -> tuple[dict, int | None]:
    if isinstance(model, dict):
        return model, num_parameters
    if (
        isinstance(model, (str, Path)) and Path(model).suffix == ".json"
    ):  # a bare config.json: no weights here
        return json.loads(Path(model).read_text()), num_parameters
    if isinstance(model, (str, Path)):
        from edgepack.checkpoint import resolve

        model = resolve(model)
    return model.text_config_dict, num_parameters or model.num_parameters


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
