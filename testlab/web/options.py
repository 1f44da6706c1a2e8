"""Web server settings, from the environment (TESTLAB_WEB_<NAME>), like the engine's tunables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class WebOptions:
    anonymous: bool = False  # anyone may read (never write) without logging in
    session_hours: float = 12.0  # a browser session ends this long after login
    secure_cookies: bool = False  # cookies only over HTTPS (set it behind a TLS proxy)
    login_window: float = 900.0  # seconds over which failed logins are counted
    login_max_per_name: int = 5  # failed logins for one user name in the window before refusing
    login_max_per_address: int = 20  # failed logins from one address in the window before refusing
    live_poll: float = 0.5  # seconds between two reads of the event history while someone watches
    live_log_poll: float = 0.5  # seconds between two looks at the size of a running task's log
    live_keepalive: float = 15.0  # seconds between keep-alive comments on an idle live stream
    max_upload_bytes: int = 1 << 30  # a submitted job's files, all together

    @staticmethod
    def from_env(environ: dict[str, str] | None = None, **overrides: object) -> WebOptions:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(WebOptions):
            raw = env.get(f"TESTLAB_WEB_{field.name.upper()}")
            if raw is None:
                continue
            default = getattr(WebOptions(), field.name)
            if isinstance(default, bool):
                values[field.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[field.name] = type(default)(float(raw))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return WebOptions(**values)
