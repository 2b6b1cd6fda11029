"""The command line loads only what the chosen subcommand needs: a node sidecar starts small and fast."""

from __future__ import annotations

import json
import subprocess
import sys

from cli import ROOT

HEAVY = ("numpy", "scipy", "nats", "agent.config", "agent.service")

# Every subcommand's help goes through the real entry point; then the sidecar's arguments are parsed as
# on a spot node. Prints what of HEAVY was loaded on the way.
PARSE_EVERYTHING = f"""
import contextlib, io, json, sys
from agent.__main__ import _parser, main
for command in ("plan", "run", "sidecar", "demo", "schemas", "backtest"):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main([command, "--help"])
    assert "usage: cost-agent " + command in out.getvalue(), out.getvalue()
args = _parser().parse_args(["sidecar", "--provider", "gcp", "--gcp-notice-seconds", "120"])
assert (args.provider, args.gcp_notice_seconds, args.log_level) == ("gcp", 120.0, "info")
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


def test_parsing_any_subcommand_loads_no_numpy_scipy_nats_or_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PARSE_EVERYTHING],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# The sidecar as on a spot node, all the way to its first connection attempt (to a port nothing listens on).
RUN_SIDECAR = f"""
import json, sys
from agent.__main__ import main
code = main(["sidecar", "--provider", "aws", "--instance-id", "i-0abc", "--nats-url", "nats://127.0.0.1:1",
             "--metadata-url", "http://127.0.0.1:1", "--log-level", "error"])
print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))
"""


def test_a_sidecar_run_loads_no_numpy_scipy_or_agent_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUN_SIDECAR], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    code, heavy = json.loads(result.stdout)
    assert code == 2  # cannot connect: one line, exit 2
    assert "cannot connect to NATS" in result.stderr
    assert [m for m in heavy if m != "nats"] == []
