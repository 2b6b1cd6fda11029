"""``[actuator]``: how the agent changes the fleet, if it does.

Kept apart from :mod:`agent.config` so that each driver's settings sit next to the driver; the agent's
settings mount them as ``[actuator]``, ``[actuator.local]`` and ``[actuator.kubernetes]``.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec

from agent.actuators.kubernetes_settings import KubernetesSettings

ActuatorMode = Literal["none", "local", "kubernetes", "shadow"]

PLACEHOLDERS: Final = ("python", "instance_id", "instance_type", "pool", "tier", "startup_time")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LocalSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One process per node on this machine: a Dynamo worker (``python -m dynamo.<engine> ...``)."""

    command: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]],
        msgspec.Meta(
            max_length=256,
            description=(
                "the worker's command line, one argument per item; placeholders {python} (the agent's "
                "interpreter), {instance_id}, {instance_type}, {pool}, {tier}, {startup_time} (the boot, "
                "in real seconds); required with mode = 'local'"
            ),
        ),
    ] = msgspec.field(default_factory=list)
    env: Annotated[
        dict[str, str],
        msgspec.Meta(
            max_length=256,
            description=(
                "added to the agent's environment for each worker, with its labels COSTAGENT_INSTANCE_ID, "
                "COSTAGENT_INSTANCE_TYPE, COSTAGENT_POOL and COSTAGENT_TIER"
            ),
        ),
    ] = msgspec.field(default_factory=dict)
    state_dir: Annotated[
        str,
        msgspec.Meta(
            max_length=4096,
            description=(
                "where the nodes are recorded (a restarted agent adopts the workers still running, and "
                "launches nothing twice) and the workers' logs go; empty: ~/.local/state/cost-agent/<bus "
                "namespace>"
            ),
        ),
    ] = ""
    ready_when_listening: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "a worker is ready once its boot is over and it listens on a TCP port (a Dynamo worker's "
                "request plane: it is registered and can be routed to); false: once its boot is over"
            )
        ),
    ] = True
    release_grace_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=86400,
            description="a worker a plan releases gets SIGTERM, and SIGKILL if still running this much later",
        ),
    ] = 300.0

    def __post_init__(self) -> None:
        for arg in self.command:
            for name in _PLACEHOLDER.findall(arg):
                if name not in PLACEHOLDERS:
                    raise ValueError(
                        f"command: unknown placeholder {{{name}}} in {arg!r} "
                        f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
                    )
        for key in self.env:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"env: {key!r} is not an environment variable name")


class ActuatorSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whether and how the agent changes the fleet to its plans."""

    mode: Annotated[
        ActuatorMode,
        msgspec.Meta(
            description=(
                "none: plans are published and something else applies them (e.g. the demo's simulated "
                "cloud); local: one worker process per node ([actuator.local]); kubernetes: Dynamo's scaling "
                "adapters ([actuator.kubernetes]); shadow: plans are computed and published, nothing is "
                "changed (with [actuator.kubernetes] set, the fleet is read from it), and the cost report "
                "compares the running fleet with the plan"
            )
        ),
    ] = "none"
    boot_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=7200,
            description=(
                "a new node's boot until it serves: the plan's make-before-break waits for it, and a local "
                "worker is started with it as its simulated startup"
            ),
        ),
    ] = 120.0
    make_before_break: Annotated[
        bool,
        msgspec.Meta(
            description="a node a plan gives up serves until the nodes booting then are ready (no gap)"
        ),
    ] = True
    poll_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0.05, le=600, description="boots, exits, leave times and deadlines are checked this often"
        ),
    ] = 5.0
    local: LocalSettings = msgspec.field(default_factory=LocalSettings)
    kubernetes: KubernetesSettings = msgspec.field(default_factory=KubernetesSettings)

    def __post_init__(self) -> None:
        if self.mode == "local" and not self.local.command:
            raise ValueError("local.command: required with mode = 'local' (the worker's command line)")
