"""The emp-fastbuf home and what lives in it: the one place that says where the agent,
the store, the spool, the workers' fatal-error dumps and the CLI keep their files."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from emp_fastbuf.errors import HomeError

HOME_ENV = "EMP_FASTBUF_HOME"
STORE_FILE = "store.sqlite"
SPOOL_DIR = "spool"
DEAD_LETTER_DIR = "dead-letter"
AGENT_LOG = "agent.log"
# Fatal-error dumps (faulthandler) of the workers, one file per process (records.fatal).
CRASH_DIR = "crashes"


def home(
    override: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The home: ``override`` (``--home``), else ``$EMP_FASTBUF_HOME``, else
    ``~/.local/share/emp-fastbuf``. An empty or blank variable counts as unset. Raises HomeError
    for an empty override or when there is no user home directory to put it in (no
    ``$HOME`` and no passwd entry). Does not check the directory: ``check_home`` does."""
    env = os.environ if env is None else env
    if override is not None:
        if not isinstance(override, str | os.PathLike):
            raise HomeError(f"--home: expected a path, got {type(override).__name__}")
        raw, source = os.fspath(override), "--home"
        if not isinstance(raw, str) or not raw.strip():  # a PathLike may give bytes
            raise HomeError("--home: the path is empty")
    else:
        raw, source = env.get(HOME_ENV, ""), HOME_ENV
    if raw.strip():
        try:
            return Path(raw).expanduser()
        except RuntimeError:  # "~" with no user home
            raise HomeError(f"{source}: cannot expand {raw!r} (no user home directory)") from None
    try:
        user_home = Path(env["HOME"]) if env.get("HOME", "").strip() else Path.home()
    except (RuntimeError, KeyError, OSError):
        raise HomeError(
            "cannot find the user's home directory (no $HOME and no passwd entry):"
            f" set {HOME_ENV} or pass --home"
        ) from None
    return user_home / ".local" / "share" / "emp-fastbuf"


def check_home(path: Path) -> None:
    """Refuse a home that is not a directory, that belongs to another user, or that every
    user may write to (anyone could replace the store and the spool). A home that does
    not exist yet is fine (the agent creates it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HomeError(f"cannot use the home {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise HomeError(f"the home {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise HomeError(
            f"the home {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        )
    if st.st_mode & 0o002:
        raise HomeError(
            f"the home {path} is writable by every user (mode {st.st_mode & 0o7777:04o}):"
            " chmod o-w it"
        )


def checked_home(
    override: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """``home()`` after ``check_home``: what every command that uses the home calls."""
    path = home(override, env)
    check_home(path)
    return path


def store_path(path: Path) -> Path:
    return path / STORE_FILE


def status_path(path: Path, ring_name: str) -> Path:
    """The agent's status file for one ring."""
    return path / f"status-{ring_name}.json"
