"""The device's current readings and whether training may run."""

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import DevicePublic
from mftd.device import read_device_state

router = APIRouter(prefix="/device", tags=["device"])


@router.get("", response_model=DevicePublic)
def read_device(settings: SettingsDep) -> DevicePublic:
    """Current sensor readings, which constraints hold, and why not."""
    return DevicePublic.model_validate(read_device_state(settings.data_dir).to_dict())
