"""The driver ``[actuator]`` asks for (None: mode ``none``, plans are applied by something else)."""

from __future__ import annotations

from agent.actuators.base import Actuator
from agent.actuators.local import LocalActuator
from agent.actuators.settings import ActuatorSettings
from agent.actuators.shadow import ShadowActuator
from agent.runtime.clock import Clock


def build_driver(settings: ActuatorSettings, clock: Clock, *, namespace: str) -> Actuator | None:
    if settings.mode == "none":
        return None
    if settings.mode == "local":
        return LocalActuator(settings.local, clock, boot_s=settings.boot_seconds, namespace=namespace)
    kubernetes = _kubernetes(settings) if settings.kubernetes.services else None
    if settings.mode == "shadow":
        return ShadowActuator(reader=kubernetes)  # reads the cluster, if one is set; changes nothing
    if kubernetes is None:
        raise ValueError("actuator.kubernetes.services: required with mode = 'kubernetes'")
    return kubernetes


def _kubernetes(settings: ActuatorSettings) -> Actuator:
    from agent.actuators.kubernetes import KubernetesActuator

    return KubernetesActuator(settings.kubernetes, boot_s=settings.boot_seconds)
