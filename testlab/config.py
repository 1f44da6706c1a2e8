"""Settings from the environment, with the embedded defaults (SQLite in the data directory).

TESTLAB_HOME  data directory (default ./.testlab): database, job files, logs, artifacts, local VMs.
TESTLAB_DB    SQLAlchemy URL (default sqlite:///$TESTLAB_HOME/testlab.db);
              PostgreSQL: postgresql+psycopg://user:password@host:port/dbname
TESTLAB_SMTP  where e-mail notifications go: smtp://[user:password@]host[:port], smtp+starttls://...
              or smtps://... (unset: no e-mail is sent; deliveries wait, then are given up)
TESTLAB_MAIL_FROM  the sender of those e-mails (default testlab@localhost)
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str
    smtp_url: str | None = None  # smtp://[user:password@]host[:port], smtp+starttls://..., smtps://...
    mail_from: str = "testlab@localhost"

    @property
    def jobs_dir(self) -> Path:
        """Self-contained copies of submitted jobs: definition, files, then logs and artifacts."""
        return self.home / "jobs"

    def job_dir(self, job_id: int) -> Path:
        return self.jobs_dir / str(job_id)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("TESTLAB_HOME") or ".testlab").absolute()
    url = env.get("TESTLAB_DB") or f"sqlite:///{home / 'testlab.db'}"
    return Settings(
        home=home,
        database_url=url,
        smtp_url=env.get("TESTLAB_SMTP") or None,
        mail_from=env.get("TESTLAB_MAIL_FROM") or "testlab@localhost",
    )


def current_user() -> str:
    """Who is acting: `TESTLAB_USER`, else the operating system's user."""
    return os.environ.get("TESTLAB_USER") or getpass.getuser()
