"""Every shipped conformance vector is schema-valid, and the reference router reaches its expected decision."""

from __future__ import annotations

import json

import pytest

from edgepack.manifest import SCHEMAS_DIR, schema
from edgepack.router.decision import HARD, SOFT, decide

VECTORS = sorted((SCHEMAS_DIR.parent / "conformance").glob("*.json"))
COMPARED = ("route", "artifact", "triggers", "blockers", "cloud_blockers")


def _validator():
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    manifest = Resource.from_contents(schema("manifest"))
    registry = Registry().with_resource("urn:edgepack:schema:manifest:1", manifest)
    return Draft202012Validator(schema("conformance"), registry=registry)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path):
    vector = json.loads(path.read_text())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in _validator().iter_errors(vector)]
    assert not errors, errors
    decision = decide(vector["fallback"], vector["device_state"], vector["request"]).to_dict()
    assert {k: decision[k] for k in COMPARED} == vector["expected"], decision["reasons"]
    if decision["route"] == "cloud":
        assert decision["candidates"] == vector["fallback"]["candidates"]


def test_vectors_cover_every_mode_trigger_and_route():
    vectors = [json.loads(p.read_text()) for p in VECTORS]
    assert len({v["name"] for v in vectors}) == len(vectors)
    modes = {v["fallback"]["mode"] for v in vectors}
    assert modes == {"prefer_on_device", "on_device_only", "prefer_cloud", "cloud_only"}
    # Each trigger sends a request to the cloud in at least one vector, and is seen disabled or held back.
    to_cloud = {t for v in vectors if v["expected"]["route"] == "cloud" for t in v["expected"]["triggers"]}
    assert to_cloud == set(HARD) | set(SOFT)
    routes = {(v["fallback"]["mode"], v["expected"]["route"]) for v in vectors}
    for mode, route in [("prefer_on_device", "on_device"), ("prefer_on_device", "cloud"), ("prefer_on_device", "refuse"),
                        ("on_device_only", "on_device"), ("on_device_only", "refuse"), ("prefer_cloud", "cloud"),
                        ("prefer_cloud", "on_device"), ("prefer_cloud", "refuse"), ("cloud_only", "cloud"),
                        ("cloud_only", "refuse")]:  # fmt: skip
        assert (mode, route) in routes
    blockers = {b for v in vectors for b in v["expected"]["cloud_blockers"]}
    assert blockers == {"on_device_only", "cloud_not_allowed", "offline", "history_not_allowed"}


def test_bad_device_state_is_reported_with_every_problem():
    from edgepack.errors import ConfigError

    vector = json.loads(VECTORS[0].read_text())
    state = {**vector["device_state"], "thermal_state": "toasty", "battery_level": 7, "wifi": True}
    with pytest.raises(ConfigError) as err:
        decide(vector["fallback"], state, vector["request"])
    text = str(err.value)
    assert "thermal_state: Input should be 'nominal', 'fair', 'serious' or 'critical'" in text
    assert "battery_level: Input should be less than or equal to 1" in text
    assert "wifi: unknown key" in text


SELECTION = SCHEMAS_DIR.parent / "conformance" / "selection" / "selection.json"


def _selection():
    return json.loads(SELECTION.read_text())


@pytest.mark.parametrize("case", _selection()["cases"], ids=[c["name"] for c in _selection()["cases"]])
def test_device_selection_vector(case):
    """An app reads its platform, OS version, RAM and machine id, and picks its entry by the manifest's rule."""
    from edgepack.router import Hardware, select

    entry = select(_selection()["devices"], Hardware(**case["hardware"]))
    assert (entry and entry["device"]) == case["expected"]


def test_selection_vectors_hold_the_shipped_profiles_rules_in_evaluation_order():
    from edgepack.devices import available, load_device
    from edgepack.router.select import selection_order

    devices = _selection()["devices"]
    assert selection_order(devices) == devices
    shipped = {d["device"]: d["match"] for d in devices if d["device"] in available()}
    assert shipped == {name: load_device(name).match() for name in available()}
    expected = {c["expected"] for c in _selection()["cases"]}
    assert set(available()) | {None} <= expected | {"pinned-ipad-pro"}  # every profile is selected by some case
