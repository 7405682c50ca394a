"""Linux sysfs: ``/sys/class/power_supply/*`` (battery and chargers) and ``/sys/class/thermal/thermal_zone*``.

Units as the kernel documents them: ``capacity`` in %, ``temp`` of a power supply in tenths of
°C, ``current_now`` in µA, ``voltage_now`` in µV, ``power_now`` in µW, a thermal zone's ``temp``
in m°C. Some drivers report mA and mV; values too small to be µA/µV are taken as mA/mV.

On Android, SELinux lets apps read some of these files and not others, depending on the
device; each file that cannot be read makes its one reading unavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from mftd.sensors.base import Reading, available, describe_os_error, unavailable

POWER_SUPPLY_DIR = Path("/sys/class/power_supply")
THERMAL_DIR = Path("/sys/class/thermal")
POWER_SOURCE = "sysfs"
THERMAL_SOURCE = "sysfs thermal"
POWER_NAMES = (
    "battery_present",
    "charging",
    "battery_percent",
    "battery_status",
    "battery_temp_c",
    "battery_current_ma",
    "battery_voltage_v",
    "battery_power_w",
)
THERMAL_NAMES = ("device_temp_c", "battery_temp_c")
# Plugged in but not charging (a charge limit, a full battery) is still on external power.
ON_POWER_STATUSES = {"charging": True, "full": True, "not charging": True, "discharging": False}

ReadText = Callable[[Path], str]


def _read_text(path: Path) -> str:
    return path.read_text().strip()


class SysfsPowerSource:
    """Battery level, status, temperature, current and voltage, and whether a charger is online."""

    name = POWER_SOURCE
    names = POWER_NAMES

    def __init__(self, root: Path = POWER_SUPPLY_DIR, read_text: ReadText = _read_text):
        self.root = root
        self.read_text = read_text

    def read(self) -> list[Reading]:
        try:
            supplies = sorted(path for path in self.root.iterdir())
        except OSError as error:
            return [unavailable(name, POWER_SOURCE, describe_os_error(error, self.root)) for name in POWER_NAMES]
        batteries = [supply for supply in supplies if self._is_battery(supply)]
        chargers = [supply for supply in supplies if supply not in batteries]
        if not batteries:
            reason = f"no battery under {self.root}"
            readings = [available("battery_present", False, POWER_SOURCE)]
            readings += [unavailable(name, POWER_SOURCE, reason) for name in POWER_NAMES if name != "battery_present"]
            return readings
        battery = batteries[0]
        source = f"{POWER_SOURCE} {battery.name}"
        readings = [available("battery_present", True, source)]
        status, status_problem = self._text(battery / "status")
        readings.append(self._charging(chargers, status, status_problem, source))
        readings.append(self._number(battery / "capacity", "battery_percent", source, lambda value: value))
        readings.append(
            available("battery_status", status.lower(), source)
            if status is not None
            else unavailable("battery_status", source, status_problem or "")
        )
        readings.append(self._number(battery / "temp", "battery_temp_c", source, lambda value: round(value / 10, 1)))
        current = self._number(battery / "current_now", "battery_current_ma", source, _microamperes_to_milliamperes)
        voltage = self._number(battery / "voltage_now", "battery_voltage_v", source, _microvolts_to_volts)
        readings += [current, voltage]
        if (battery / "power_now").exists():
            readings.append(self._number(battery / "power_now", "battery_power_w", source, lambda value: round(abs(value) / 1e6, 3)))
        else:
            readings.append(unavailable("battery_power_w", source, f"no {battery / 'power_now'} (computed from current and voltage where both are read)"))
        return readings

    def _is_battery(self, supply: Path) -> bool:
        kind, _ = self._text(supply / "type")
        if kind is not None:
            return kind.lower() == "battery"
        return supply.name.lower().startswith(("bat", "battery"))

    def _charging(self, chargers: list[Path], status: Optional[str], status_problem: Optional[str], source: str) -> Reading:
        problems = []
        online_values = []
        for charger in chargers:
            text, problem = self._text(charger / "online")
            if text is not None:
                online_values.append((charger.name, text == "1"))
            elif problem:
                problems.append(problem)
        if online_values:
            online = [name for name, is_online in online_values if is_online]
            where = f"{POWER_SOURCE} {online[0]}" if online else f"{POWER_SOURCE} ({', '.join(name for name, _ in online_values)} offline)"
            return available("charging", bool(online), where)
        if status is not None and status.lower() in ON_POWER_STATUSES:
            return available("charging", ON_POWER_STATUSES[status.lower()], f"{source} status")
        reason = "; ".join(problems + ([status_problem] if status_problem else []) + ([f"status is {status!r}"] if status else []))
        return unavailable("charging", source, reason or "no charger and no battery status to tell")

    def _text(self, path: Path) -> tuple[Optional[str], Optional[str]]:
        try:
            return self.read_text(path), None
        except OSError as error:
            return None, describe_os_error(error, path)

    def _number(self, path: Path, name: str, source: str, convert: Callable[[float], float]) -> Reading:
        text, problem = self._text(path)
        if text is None:
            return unavailable(name, source, problem or "")
        try:
            return available(name, convert(float(text)), source)
        except ValueError:
            return unavailable(name, source, f"{path} holds {text[:40]!r}, not a number")


class SysfsThermalSource:
    """The hottest thermal zone, and the battery's temperature where a zone is the battery's."""

    name = THERMAL_SOURCE
    names = THERMAL_NAMES

    def __init__(self, root: Path = THERMAL_DIR, read_text: ReadText = _read_text):
        self.root = root
        self.read_text = read_text

    def read(self) -> list[Reading]:
        try:
            zones = sorted(path for path in self.root.iterdir() if path.name.startswith("thermal_zone"))
        except OSError as error:
            reason = describe_os_error(error, self.root)
            return [unavailable(name, THERMAL_SOURCE, reason) for name in THERMAL_NAMES]
        temperatures: list[tuple[float, str]] = []
        battery: Optional[tuple[float, str]] = None
        problems: list[str] = []
        for zone in zones:
            try:
                millidegrees = float(self.read_text(zone / "temp"))
            except OSError as error:
                problems.append(describe_os_error(error, zone / "temp"))
                continue
            except ValueError:
                continue
            try:
                kind = self.read_text(zone / "type")
            except OSError:
                kind = zone.name
            celsius = millidegrees / 1000 if abs(millidegrees) > 200 else millidegrees
            if not -40 <= celsius <= 150:  # disconnected sensors report nonsense
                continue
            temperatures.append((round(celsius, 1), kind))
            if battery is None and "batt" in kind.lower():
                battery = (round(celsius, 1), kind)
        if temperatures:
            hottest, kind = max(temperatures)
            readings = [available("device_temp_c", hottest, f"{THERMAL_SOURCE} {kind}")]
        else:
            reason = problems[0] if problems else f"no readable thermal zones under {self.root}"
            readings = [unavailable("device_temp_c", THERMAL_SOURCE, reason)]
        if battery is not None:
            readings.append(available("battery_temp_c", battery[0], f"{THERMAL_SOURCE} {battery[1]}"))
        else:
            readings.append(unavailable("battery_temp_c", THERMAL_SOURCE, "no thermal zone of the battery"))
        return readings


def _microamperes_to_milliamperes(value: float) -> float:
    return round(value / 1000 if abs(value) >= 10_000 else value, 1)


def _microvolts_to_volts(value: float) -> float:
    if value > 100_000:  # µV
        return round(value / 1e6, 3)
    if value > 100:  # mV
        return round(value / 1000, 3)
    return round(value, 3)
