"""Configuration: ``Settings`` (bus.config.settings) with its nested groups (bus.config.groups), read
from a .env file and the environment; the only package that reads the environment."""

from bus.config.groups import BeatSettings, NotifySettings, ReconcileSettings, RiskSettings, SettingsGroup
from bus.config.settings import LoadEnvironmentVariables, Settings, debug_requested, safe_url, state_home

__all__ = [
    "BeatSettings",
    "LoadEnvironmentVariables",
    "NotifySettings",
    "ReconcileSettings",
    "RiskSettings",
    "Settings",
    "SettingsGroup",
    "debug_requested",
    "safe_url",
    "state_home",
]
