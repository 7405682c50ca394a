"""The device's current readings, each constraint and whether it holds, and every job's verdict."""

from datetime import timedelta

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import DevicePublic
from mftd.device import latest_device_state, read_device_state
from mftd.settings import Settings

router = APIRouter(prefix="/device", tags=["device"])

# The daemon's own state of its last tick is shown while it is this fresh (else the sensors are read now).
FRESH_TICKS = 3


@router.get("", response_model=DevicePublic)
def get_device(settings: SettingsDep) -> DevicePublic:
    """Current sensor readings with their sources, which constraints hold and why not, and each job's verdict."""
    return read_device(settings)


def read_device(settings: Settings) -> DevicePublic:
    """What the scheduler saw at its last tick; without a running daemon in this process, a fresh reading with the defaults."""
    max_age = timedelta(seconds=FRESH_TICKS * settings.tick_seconds + 5)
    state = latest_device_state(settings.data_dir, max_age) or read_device_state(settings)
    return DevicePublic.model_validate(state.to_dict())
