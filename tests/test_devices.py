"""Device profiles: every shipped profile validates; a broken one reports every problem at once."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.config import read_data
from edgepack.devices import GIB, available, devices_dir, load_device, load_devices, looks_like_device
from edgepack.errors import ConfigError

REQUIRED = {"iphone-15-pro": 8, "iphone-13": 4, "pixel-8-pro": 12, "galaxy-s24": 8, "raspberry-pi-5": 8}


@pytest.mark.parametrize("name", available())
def test_every_shipped_profile_validates(name):
    device = load_device(name)
    assert device.name == name  # the file name is the profile's name
    assert 0 < device.budget() <= device.budget(extended=True) < device.memory.ram_gb * GIB
    assert looks_like_device(read_data(devices_dir() / f"{name}.yaml"))


def test_the_required_devices_are_shipped_with_their_ram():
    devices = {d.name: d for d in load_devices("all")}
    for name, ram in REQUIRED.items():
        assert devices[name].memory.ram_gb == ram
    assert any(d.os.name == "android" and d.memory.ram_gb == 6 for d in devices.values())
    assert devices["raspberry-pi-5"].os.name == "linux"
    # iOS limits are the jetsam limits, far below RAM; the entitlement raises them.
    iphone = devices["iphone-15-pro"]
    assert iphone.memory.app_limit_gb < iphone.memory.extended.gb < iphone.memory.ram_gb
    assert "increased-memory-limit" in iphone.memory.extended.requires


TYPO_PROFILE = """\
name: typo-phone
display_name: Typo Phone
os: {name: ios, min_verison: "17.0"}
memroy: {ram_gb: 4, app_limit_gb: 2}
runtimes: [coreml, tflite]
accelerators: [cpu]
"""


def test_a_profile_with_typos_reports_every_problem_with_file_key_and_allowed_keys(tmp_path):
    path = tmp_path / "typo-phone.yaml"
    path.write_text(TYPO_PROFILE)
    with pytest.raises(ConfigError) as info:
        load_device(path)
    err = info.value
    assert err.source == str(path)
    assert len(err.problems) == 5, err.problems
    text = str(err)
    assert str(path) in text
    assert "os.min_verison: unknown key; allowed keys: min_version, name" in text
    assert (
        "memroy: unknown key; allowed keys: accelerators, display_name, machine_ids, memory, name, os, runtimes, soc"
        in text
    )
    assert "memory: required key is missing" in text
    assert "os.min_version: required key is missing" in text
    assert "runtimes.1:" in text and "'tflite'" in text


def test_inconsistent_limits_are_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\ndisplay_name: P\nos: {name: android, min_version: '14'}\n"
        "memory: {ram_gb: 4, app_limit_gb: 6}\nruntimes: [coreml]\naccelerators: [cpu]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_device(path)
    assert "app_limit_gb (6.0) exceeds ram_gb (4.0)" in str(info.value)


def test_unknown_device_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as info:
        load_device("nokia-3310")
    assert "unknown device" in str(info.value) and "iphone-13" in str(info.value)


def test_cli_lists_and_shows_profiles_and_validate_dispatches_to_them(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["devices"])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == available()
    shown = runner.invoke(main, ["devices", "iphone-13"])
    assert shown.exit_code == 0 and "app_limit_gb: 2.0" in shown.output
    missing = runner.invoke(main, ["devices", "nokia-3310"])
    assert missing.exit_code == 2 and "unknown device" in missing.output
    bad = tmp_path / "devices" / "typo-phone.yaml"
    bad.parent.mkdir()
    bad.write_text(TYPO_PROFILE)
    result = runner.invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "5 problem" in result.output and "min_verison" in result.output
