"""Sensor sources against real files and real commands at the edge of the machine: a sysfs tree, a termux-battery-status script."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mftd.sensors import SensorReader, SensorsFileSource, default_sources
from mftd.sensors.psutil_source import PsutilSource
from mftd.sensors.sysfs import SysfsPowerSource, SysfsThermalSource
from mftd.sensors.termux import TermuxBatterySource, parse_battery_status


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def by_name(readings):
    return {reading.name: reading for reading in readings}


PHONE_SYSFS = {
    "battery/type": "Battery",
    "battery/capacity": "57",
    "battery/status": "Discharging",
    "battery/temp": "312",
    "battery/current_now": "-412000",
    "battery/voltage_now": "3850000",
    "usb/type": "USB",
    "usb/online": "0",
    "ac/type": "Mains",
    "ac/online": "0",
}


def test_sysfs_reads_a_phone_battery_in_kernel_units(tmp_path):
    readings = by_name(SysfsPowerSource(write_tree(tmp_path, PHONE_SYSFS)).read())
    assert readings["battery_present"].value is True
    assert readings["battery_percent"].value == 57
    assert readings["charging"].value is False
    assert readings["battery_temp_c"].value == 31.2
    assert readings["battery_current_ma"].value == -412.0
    assert readings["battery_voltage_v"].value == 3.85
    assert readings["battery_status"].value == "discharging"


def test_sysfs_an_online_charger_means_charging(tmp_path):
    readings = by_name(SysfsPowerSource(write_tree(tmp_path, {**PHONE_SYSFS, "usb/online": "1"})).read())
    assert readings["charging"].value is True
    assert readings["charging"].source == "sysfs usb"


def test_sysfs_a_denied_file_makes_only_that_reading_unavailable(tmp_path):
    root = write_tree(tmp_path, PHONE_SYSFS)

    def read_text(path: Path) -> str:  # Android's SELinux: this file is there but not for apps (root ignores chmod)
        if path.name == "temp":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text().strip()

    readings = by_name(SysfsPowerSource(root, read_text).read())
    assert not readings["battery_temp_c"].is_available
    assert "permission denied" in readings["battery_temp_c"].unavailable_reason
    assert readings["battery_percent"].value == 57


def test_sysfs_without_a_battery_says_so(tmp_path):
    readings = by_name(SysfsPowerSource(write_tree(tmp_path, {"AC/type": "Mains", "AC/online": "1"})).read())
    assert readings["battery_present"].value is False
    assert "no battery" in readings["battery_percent"].unavailable_reason


def test_sysfs_an_unlistable_folder_makes_every_reading_unavailable(tmp_path):
    readings = by_name(SysfsPowerSource(tmp_path / "missing").read())
    assert all(not reading.is_available for reading in readings.values())
    assert "does not exist" in readings["battery_present"].unavailable_reason


def test_thermal_zones_give_the_hottest_and_the_battery(tmp_path):
    root = write_tree(tmp_path, {
        "thermal_zone0/type": "cpu-0-0", "thermal_zone0/temp": "48500",
        "thermal_zone1/type": "battery", "thermal_zone1/temp": "33100",
        "thermal_zone2/type": "broken", "thermal_zone2/temp": "-273000",
    })
    readings = by_name(SysfsThermalSource(root).read())
    assert readings["device_temp_c"].value == 48.5
    assert readings["device_temp_c"].source == "sysfs thermal cpu-0-0"
    assert readings["battery_temp_c"].value == 33.1


TERMUX_JSON = {
    "present": True, "technology": "Li-poly", "health": "GOOD", "plugged": "UNPLUGGED", "status": "DISCHARGING",
    "temperature": 30.100000381469727, "voltage": 3868, "current": -383800, "percentage": 60, "level": 60, "scale": 100,
}


def test_termux_units_microamperes_and_millivolts():
    readings = by_name(parse_battery_status(TERMUX_JSON))
    assert readings["battery_current_ma"].value == -383.8
    assert readings["battery_voltage_v"].value == 3.868
    assert readings["battery_temp_c"].value == 30.1
    assert readings["charging"].value is False
    assert readings["battery_percent"].value == 60


def test_termux_a_device_reporting_milliamperes():
    readings = by_name(parse_battery_status({**TERMUX_JSON, "current": 950, "plugged": "PLUGGED_AC", "status": "CHARGING"}))
    assert readings["battery_current_ma"].value == 950
    assert readings["charging"].value is True


def fake_command(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_termux_runs_the_command_and_reuses_its_answer(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake_command(tmp_path / "bin", "termux-battery-status", f"echo called >> {calls}\necho '{json.dumps(TERMUX_JSON)}'")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    clock = [100.0]
    source = TermuxBatterySource(min_interval_seconds=5, clock=lambda: clock[0])
    assert by_name(source.read())["battery_percent"].value == 60
    clock[0] += 1
    source.read()
    assert calls.read_text().count("called") == 1
    clock[0] += 5
    source.read()
    assert calls.read_text().count("called") == 2


def test_termux_a_hanging_command_times_out_and_backs_off(tmp_path, monkeypatch):
    fake_command(tmp_path / "bin", "termux-battery-status", "sleep 30")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    readings = by_name(TermuxBatterySource(timeout_seconds=0.3).read())
    assert "did not answer within 0.3 s" in readings["battery_percent"].unavailable_reason


def test_termux_missing_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    readings = by_name(TermuxBatterySource().read())
    assert "termux-battery-status not found" in readings["charging"].unavailable_reason


def test_psutil_others_cpu_load_and_storage(tmp_path):
    source = PsutilSource(tmp_path / "not-yet" / "data")
    readings = by_name(source.read())
    assert 0 <= readings["others_cpu_percent"].value <= 100
    assert readings["free_storage_mb"].value > 0
    assert readings["free_storage_mb"].source == f"statvfs {tmp_path}"


def test_psutil_a_denied_proc_stat_is_unavailable_not_a_crash(monkeypatch, tmp_path):
    import psutil

    def denied():
        raise PermissionError(13, "Permission denied", "/proc/stat")

    monkeypatch.setattr(psutil, "cpu_times", denied)  # Android 8+: /proc/stat is closed to apps
    readings = by_name(PsutilSource(tmp_path).read())
    assert "permission denied" in readings["others_cpu_percent"].unavailable_reason


def test_the_sensors_file_overrides_and_a_bad_write_keeps_the_last_values(tmp_path):
    path = tmp_path / "sensors.json"
    path.write_text(json.dumps({"charging": False, "battery_percent": 10, "battery_temp_c": {"unavailable": "no thermistor"}}))
    reader = SensorReader([SensorsFileSource(path), SysfsPowerSource(tmp_path / "none")])
    readings = reader.read()
    assert readings.value("battery_percent") == 10
    assert readings["charging"].source == f"sensors file {path}"
    assert readings.why_unavailable("battery_temp_c").startswith(f"sensors file {path}: no thermistor")
    path.write_text("{half a")
    assert reader.read().value("battery_percent") == 10


def test_no_battery_counts_as_mains_power(tmp_path):
    readings = SensorReader([SysfsPowerSource(write_tree(tmp_path, {"AC/type": "Mains"}))]).read()
    assert readings.value("charging") is True
    assert "mains power" in readings["charging"].source


def test_power_is_computed_from_current_and_voltage(tmp_path):
    readings = SensorReader([SysfsPowerSource(write_tree(tmp_path, PHONE_SYSFS))]).read()
    assert readings.value("battery_power_w") == pytest.approx(0.412 * 3.85, abs=1e-3)


def test_a_crashing_source_makes_its_readings_unavailable():
    class Broken:
        name = "broken"
        names = ("battery_percent",)

        def read(self):
            raise RuntimeError("boom")

    readings = SensorReader([Broken()]).read()
    assert "the source failed: boom" in readings.why_unavailable("battery_percent")


def test_this_machine_has_every_reading_with_a_source_or_a_reason(tmp_path):
    readings = SensorReader(default_sources(tmp_path)).read()
    for reading in readings.values():
        assert reading.source
        assert reading.is_available or reading.unavailable_reason
