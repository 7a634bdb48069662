"""Storage URLs: which Optuna storage a study lives in, opened with its secrets kept out of sight.

- `sqlite:///path.db` (default, embedded; a relative path is relative to the study file)
- `postgresql://user@host:5432/db`, `mysql://...`: Optuna's RDBStorage over SQLAlchemy, the way
  several machines share one study (`postgresql://` uses psycopg 3, a dependency)
- `journal:///path/study.log`: Optuna's JournalStorage on one file, for a shared filesystem

A password never has to be written in a study file: `${VAR}` in a URL is read from the
environment when the study is loaded, and libpq's own PGPASSWORD / ~/.pgpass work too. Where a
URL does carry one, every message, `status` line and user attr shows it as `***`.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from autoresearch.errors import StorageError

SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_USERINFO = re.compile(r"(://[^/@:]*:)([^/@]*)(@)")  # scheme://user:PASSWORD@host
_QUERY_PW = re.compile(r"([?&]password=)([^&]*)", re.IGNORECASE)


def mask(url: str) -> str:
    """The URL with any password replaced by ***: safe to print, log or store."""
    return _QUERY_PW.sub(r"\1***", _USERINFO.sub(r"\1***\3", url))


def secrets_of(url: str) -> list[str]:
    """Passwords a URL carries (to scrub them from driver messages that might echo them)."""
    found = [m.group(2) for m in _USERINFO.finditer(url)]
    found += [m.group(2) for m in _QUERY_PW.finditer(url)]
    return [s for s in found if s and s != "***"]


def scrub(text: str, url: str) -> str:
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return mask(text)


def resolve(raw: str, base: Path, where: str) -> str:
    """The URL to open: ${VAR} expanded, relative sqlite/journal paths anchored at `base`.

    `where` names the file and key for errors ("studies/x.toml: study.storage").
    """

    def env(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise StorageError(
                f"{where}: {mask(raw)!r} needs environment variable {m.group(1)}, which is not "
                "set; export it (e.g. the database password) and rerun"
            )
        return value

    url = _ENV.sub(env, raw)
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise StorageError(
            f"{where}: unknown storage {mask(raw)!r}; use sqlite:///x.db, "
            "postgresql://user@host/db, mysql://user@host/db or journal:///path/x.log"
        )
    if scheme == "journal" and not url.partition(":///")[2]:
        raise StorageError(f"{where}: {mask(raw)!r} names no file; use journal:///path/x.log")
    if scheme in ("sqlite", "journal"):
        head, _, tail = url.partition(":///")
        if tail and tail != ":memory:" and not tail.startswith("/"):
            url = f"{head}:///{(base / tail).resolve()}"
    return url


def file_of(url: str) -> Path | None:
    """The local file behind a sqlite/journal URL (None for a server or in-memory)."""
    head, sep, tail = url.partition(":///")
    if not sep or head.split("+")[0] not in ("sqlite", "journal") or tail in ("", ":memory:"):
        return None
    return Path(tail)


def open_backend(
    url: str,
    where: str,
    *,
    create: bool = True,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_callback: Any = None,
) -> optuna.storages.BaseStorage:
    """Open the storage. create=False (read-only commands) never creates a file."""
    shown = mask(url)
    path = file_of(url)
    if path is not None:
        if not path.parent.is_dir():
            raise StorageError(
                f"{where}: directory {path.parent} does not exist (from {mask(url)!r}); "
                "create it or fix the URL"
            )
        if not create and not path.exists():
            raise StorageError(
                f"{where}: no study file {path} yet; start the study with `autoresearch run`"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
            if url.startswith("journal:"):
                assert path is not None
                backend = optuna.storages.journal.JournalFileBackend(str(path))
                return optuna.storages.JournalStorage(backend)
            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite:"):
                # Several local workers share one file: wait for the write lock, don't fail.
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
            elif url.startswith("postgresql:"):
                url = "postgresql+psycopg:" + url.split(":", 1)[1]  # psycopg 3, from PyPI
                kwargs["engine_kwargs"] = {"pool_pre_ping": True}
            elif url.startswith("mysql:"):
                url = "mysql+pymysql:" + url.split(":", 1)[1]
            return _rdb(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_callback,
                **kwargs,
            )
    except Exception as e:  # SQLAlchemy and drivers raise many types; all mean "cannot open"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise StorageError(
            f"{where}: cannot open {shown!r} ({type(e).__name__}: {scrub(first, url)}); "
            "check the URL, that the server is up and the credentials (e.g. PGPASSWORD)"
        ) from None


def _rdb(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """RDBStorage, retried when workers starting together race to create its tables."""
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as e:
            racing = "IntegrityError" in type(e).__name__ or "already exists" in str(e)
            if not racing or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))  # the winner finishes its CREATE TABLEs meanwhile
    raise AssertionError("unreachable")
