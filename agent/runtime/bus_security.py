"""Who the agent or a sidecar is to NATS, and whom it trusts: credentials and TLS files, checked before
any connection; and URLs made fit for a log.

Light on purpose (msgspec and the standard library): the settings import it, and a spot node's sidecar
reads the same fields from ``COST_AGENT_BUS__*`` variables without loading the settings.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import msgspec

STARTUP_CONNECT_ATTEMPTS: Final = 3
RECONNECT_WAIT_SECONDS: Final = 1
ENV_PREFIX: Final = "COST_AGENT_BUS__"

_File = Annotated[str, msgspec.Meta(max_length=4096)]


class BusSecurity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to prove who we are to NATS and whom to trust. Empty: not used. Raises ValueError naming the
    field on a pairing that cannot work or a file that is not there."""

    user: Annotated[str, msgspec.Meta(description="NATS user (with password)")] = ""
    password: Annotated[
        str,
        msgspec.Meta(description="the user's password; better from COST_AGENT_BUS__PASSWORD; never logged"),
    ] = ""
    token: Annotated[str, msgspec.Meta(description="an authorization token instead of user/password")] = ""
    nkey_seed_file: Annotated[_File, msgspec.Meta(description="a file holding the user's NKey seed")] = ""
    creds_file: Annotated[
        _File, msgspec.Meta(description="a .creds file (user JWT and NKey seed) of a decentralized account")
    ] = ""
    tls_ca_file: Annotated[
        _File, msgspec.Meta(description="PEM CA bundle the server's certificate must chain to")
    ] = ""
    tls_cert_file: Annotated[
        _File, msgspec.Meta(description="PEM client certificate (with tls_key_file) for mutual TLS")
    ] = ""
    tls_key_file: Annotated[_File, msgspec.Meta(description="PEM private key of tls_cert_file")] = ""
    connect_timeout_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0.1,
            le=60,
            description="one connect attempt (TCP, TLS and authentication); start-up gives up after "
            f"{STARTUP_CONNECT_ATTEMPTS} of them",
        ),
    ] = 5.0

    def __post_init__(self) -> None:
        methods = [n for n in ("user", "token", "nkey_seed_file", "creds_file") if getattr(self, n)]
        if len(methods) > 1:
            raise ValueError(
                f"{methods[1]}: give one of user, token, nkey_seed_file, creds_file, not also {methods[0]}"
            )
        if self.password and not self.user:
            raise ValueError("password: a password needs a user")
        if self.user and not self.password:
            raise ValueError("user: a user needs a password")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                ("tls_cert_file", "tls_key_file") if self.tls_cert_file else ("tls_key_file", "tls_cert_file")
            )
            raise ValueError(f"{given}: needs {missing} too")
        for name in ("nkey_seed_file", "creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BusSecurity:
        """The ``COST_AGENT_BUS__<FIELD>`` variables, as plain strings (the sidecar reads no settings file).
        Raises ConnectionError naming the variable: start-up cannot connect with them."""
        env = os.environ if env is None else env
        fields = {
            name: env[ENV_PREFIX + name.upper()]
            for name in cls.__struct_fields__
            if ENV_PREFIX + name.upper() in env
        }
        try:
            return msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as err:
            reason = str(err).split(" - at ", 1)[0]
            raise ConnectionError(f"environment {ENV_PREFIX}*: {reason}") from None

    def uses_tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)

    def connect_options(self) -> dict[str, Any]:
        """nats-py's keyword arguments for these credentials; only the ones given."""
        options: dict[str, Any] = {"connect_timeout": self.connect_timeout_seconds}
        if self.user:
            options |= {"user": self.user, "password": self.password}
        if self.token:
            options["token"] = self.token
        if self.nkey_seed_file or self.creds_file:
            field = "nkey_seed_file" if self.nkey_seed_file else "creds_file"
            if importlib.util.find_spec("nkeys") is None:
                raise ConnectionError(
                    f"{field}: signing needs the nkeys package: pip install 'nats-py[nkeys]'"
                )
        if self.nkey_seed_file:
            options["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file:
            options["user_credentials"] = self.creds_file
        if self.uses_tls():
            options["tls"] = self.ssl_context()
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """The system's trust store, or only ``tls_ca_file``; a client certificate when one is given."""
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file or None)
        except (OSError, ssl.SSLError) as err:
            raise ConnectionError(f"tls_ca_file {self.tls_ca_file}: not a PEM CA bundle: {err}") from None
        if self.tls_cert_file:
            try:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (OSError, ssl.SSLError) as err:
                raise ConnectionError(
                    f"tls_cert_file {self.tls_cert_file}: not a PEM certificate matching tls_key_file: {err}"
                ) from None
        return context

    def startup_bound_seconds(self) -> float:
        """The longest start-up may try: every attempt timing out, and the waits between them."""
        return STARTUP_CONNECT_ATTEMPTS * (self.connect_timeout_seconds + RECONNECT_WAIT_SECONDS) + 1.0


def redact_url(url: str) -> str:
    """``url`` fit for a log: a password or token in it replaced by ``***`` (each of a comma-separated
    list of servers)."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    parts = urlsplit(url.strip())
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    # user:password keeps the user; a lone userinfo is a token, all secret
    shown = f"{user}:***" if has_password else "***"
    return parts._replace(netloc=f"{shown}@{host}").geturl()


def redact_text(text: str, url: str) -> str:
    """``text`` without the secret parts of ``url``, should an error quote it."""
    for part in url.split(","):
        text = text.replace(part.strip(), _redact_one(part)) if part.strip() else text
    return text
