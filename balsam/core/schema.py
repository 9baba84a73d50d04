"""The job table described as plain data, for code paths that do not load Django: the tables
(:mod:`balsam.core.tables`: names, columns, defaults, bounds; every name re-exported here) and
the checks of the values written to them (types, ranges, names, shell words, URLs, paths), a
new job's full row, and a job's working directory and other derived text.

Django's ORM costs ~150 ms to import, so the latency-critical CLI commands (``balsam job``,
``balsam ls``) and the bulk COPY path build their SQL from these descriptions instead. The Django
models in :mod:`balsam.core.models` are the authority for the schema (they own the migrations);
``tests/test_schema_sync.py`` fails if the two drift apart.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core import tables
from balsam.core.states import USER_TARGETS, InvalidStateError, validate_state
from balsam.errors import BalsamError

if TYPE_CHECKING:
    import uuid

# The tables' names, columns, defaults and bounds, read from here as they always were.
JOB_TABLE = tables.JOB_TABLE
APP_TABLE = tables.APP_TABLE
EVENT_TABLE = tables.EVENT_TABLE
DEP_TABLE = tables.DEP_TABLE
QLAUNCH_TABLE = tables.QLAUNCH_TABLE
SESSION_TABLE = tables.SESSION_TABLE
WAKE_TABLE = tables.WAKE_TABLE
TRANSFER_ITEM_TABLE = tables.TRANSFER_ITEM_TABLE
TRANSFER_BATCH_TABLE = tables.TRANSFER_BATCH_TABLE
TRANSFER_SLOT_TABLE = tables.TRANSFER_SLOT_TABLE
TRANSFER_ITEM_STATES = tables.TRANSFER_ITEM_STATES
TRANSFER_BATCH_STATES = tables.TRANSFER_BATCH_STATES
JOB_DEFAULTS = tables.JOB_DEFAULTS
JOB_SYSTEM_COLUMNS = tables.JOB_SYSTEM_COLUMNS
JOB_LEASE_COLUMNS = tables.JOB_LEASE_COLUMNS
JOB_STATE_COLUMNS = tables.JOB_STATE_COLUMNS
INT_FIELDS = tables.INT_FIELDS
BOOL_FIELDS = tables.BOOL_FIELDS
TEXT_FIELDS = tables.TEXT_FIELDS
POSITIVE_FIELDS = tables.POSITIVE_FIELDS
INT_LOWER_BOUNDS = tables.INT_LOWER_BOUNDS
int_low = tables.int_low
APP_DEFAULTS = tables.APP_DEFAULTS


class FieldError(BalsamError, ValueError):
    """A job or app field that does not exist or has a value of the wrong kind (a BalsamError,
    so the CLI shows it on one line; a ValueError, as Python code has always caught it)."""


def coerce_field(name: str, value: Any, defaults: Mapping[str, Any] = JOB_DEFAULTS) -> Any:
    """Convert ``value`` (often a string from the command line) to the type of field ``name``:
    booleans accept true/false/yes/no/1/0/on/off; integers are whole numbers of at least
    :func:`int_low`; ``data`` accepts a dict or JSON text of an object."""
    import json

    if name not in defaults:
        raise FieldError(f"unknown field {name!r}")
    kind = type(defaults[name])
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "t", "yes", "y", "1", "on"):
            return True
        if text in ("false", "f", "no", "n", "0", "off"):
            return False
        raise FieldError(f"{name} must be true or false, not {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise FieldError(f"{name} must be a whole number, not {value!r}")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise FieldError(f"{name} must be a whole number, not {value!r}")
        low = int_low(name)
        if number < low:
            raise FieldError(f"{name} must be >= {low}, not {number}")
        if number > 2**31 - 1:
            raise FieldError(f"{name} is too large: {number}")
        return number
    if kind is dict:
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError) as exc:
            raise FieldError(f"{name} must be a JSON object: {exc}")
        if not isinstance(parsed, dict):
            raise FieldError(f"{name} must be a JSON object, not {type(parsed).__name__}")
        return parsed
    if value is None:
        raise FieldError(f"{name} may not be empty (null)")
    text = str(value)
    if "\x00" in text:
        raise FieldError(f"{name} may not contain a NUL character")
    if name == "input_files":
        check_input_patterns(text)
    return text


NAME_FIELDS = ("name", "workflow", "application")
"""Fields that name things: at most :data:`MAX_NAME_BYTES`; setting one blank is refused."""

MAX_NAME_BYTES = 200
"""Longest ``name``, ``workflow`` or app name in UTF-8 bytes: a job's directory is
``<workflow>/<name>_<id8>`` and a file name may have at most 255 bytes on common filesystems."""

SHELL_FIELDS = ("args", "mpi_flags")
"""Fields split into words like a shell does when the job runs (quotes must balance)."""

URL_FIELDS = ("stage_in_url", "stage_out_url")
TRANSFER_SCHEMES = ("local", "file", "rsync", "scp", "gsiftp", "globus")
"""URL schemes ``balsam.processing.transfer`` moves data with (a bare path means ``local``)."""


def check_name(key: str, text: str) -> None:
    """:class:`FieldError` if ``text`` is longer than :data:`MAX_NAME_BYTES`."""
    if len(text) * 4 <= MAX_NAME_BYTES:  # the common case: short enough in any encoding
        return
    size = len(text.encode())
    if size > MAX_NAME_BYTES:
        raise FieldError(f"{key} is too long ({size} bytes; at most {MAX_NAME_BYTES}: it names "
                         "a directory)")


def _check_shell_words(key: str, text: str) -> None:
    if "'" in text or '"' in text or "\\" in text:  # nothing else can make shlex fail
        import shlex

        try:
            shlex.split(text)
        except ValueError as exc:
            raise FieldError(f"{key} cannot be split into words: {str(exc).lower()} "
                             f"(in {_excerpt(text)})")


def _check_url(key: str, text: str) -> None:
    url = text.strip()
    scheme, colon, _ = url.partition(":")
    if url and colon and "/" not in scheme and scheme not in TRANSFER_SCHEMES:
        raise FieldError(f"{key} {_excerpt(url)} has an unknown scheme {scheme[:40]!r} "
                         "(use a path, local:, file://, rsync:, scp:, gsiftp:// or globus:)")


def _check_workdir(key: str, text: str) -> None:
    if not os.path.isabs(os.path.expanduser(text)):
        raise FieldError(f"{key} must be an absolute path (or start with ~), not {_excerpt(text)}: "
                         "a relative one would depend on where the launcher runs")


def _check_environ(key: str, text: str) -> None:
    parse_envstring(text)


def _excerpt(text: str, width: int = 60) -> str:
    """``repr`` of ``text``, shortened so that an error stays one readable line."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")


VALUE_CHECKS: dict[str, Callable[[str, str], None]] = {
    **dict.fromkeys(NAME_FIELDS, check_name),
    **dict.fromkeys(SHELL_FIELDS, _check_shell_words),
    **dict.fromkeys(URL_FIELDS, _check_url),
    "user_workdir": _check_workdir,
    "environ_vars": _check_environ,
    "input_files": lambda _key, text: check_input_patterns(text),
}
"""Checks of a non-empty text value beyond its type, by field; each raises :class:`FieldError`."""


def check_field(name: str, value: Any) -> Any:
    """:func:`coerce_field` plus the value checks of :data:`VALUE_CHECKS`: what a job field may be
    set to (``balsam modify``, ``QuerySet.update``). The name fields may not be blank."""
    result = coerce_field(name, value)
    if name in NAME_FIELDS and not result.strip():
        raise FieldError(f"{name} may not be empty")
    if result and name in VALUE_CHECKS:
        VALUE_CHECKS[name](name, result)
    return result


def check_new_job(values: Mapping[str, Any]) -> None:
    """The rules for creating a job through the API beyond its values' types, as ``balsam job``
    allows: a name, and a state a user may set (never RUNNING: only a launcher's claim makes a
    job run)."""
    if not str(values.get("name") or "").strip():
        raise FieldError("a new job needs a name (it is empty)")
    _check_new_state(values.get("state", "CREATED"))


def _check_new_state(state: Any) -> None:
    if state in _STATE_NAMES and state != "RUNNING":
        return
    try:
        target = validate_state(state)
    except InvalidStateError:
        return  # not a state at all: the type checks say so
    if target not in USER_TARGETS:
        raise FieldError(f"a new job may not be created in state {target.value}: only a launcher "
                         "that runs a job makes it RUNNING (create it CREATED)")


def check_new_jobs(rows: Sequence[Mapping[str, Any]]) -> None:
    """:func:`check_new_job` and the :data:`VALUE_CHECKS` on every row, as the bulk path needs
    (its kernel checks only types). Each column is screened in C loops (``map``, ``join``) and
    only a column that may hold a bad value is checked row by row: ~0.1 s per 100,000 jobs on a
    busy 2-core machine, a few percent of ``bulk_create``."""
    for state in set(map(itemgetter("state"), rows)):
        _check_new_state(state)
    for key in VALUE_CHECKS:  # "name" first
        values = list(map(itemgetter(key), rows))  # no per-row objects: no GC passes
        if _may_be_bad(key, values):
            for row, value in zip(rows, values):
                if key == "name":
                    check_new_job(row)
                if value and type(value) is str:
                    VALUE_CHECKS[key](key, value)


def _may_be_bad(key: str, values: list[Any]) -> bool:
    """False if no value of column ``key`` can fail its checks: a screen in C loops (a value of
    another type makes it True; it is converted or refused row by row)."""
    if key == "name" and not all(values):
        return True  # an empty name
    if not any(values):
        return False
    try:
        if key in NAME_FIELDS:
            return max(map(len, values)) * 4 > MAX_NAME_BYTES or \
                (key == "name" and any(map(str.isspace, values)))
        if key in SHELL_FIELDS:
            text = "".join(values)
            return "'" in text or '"' in text or "\\" in text
    except TypeError:
        return True
    return True


_KINDS = {k: type(v) for k, v in JOB_DEFAULTS.items()}
_STATE_NAMES = frozenset(("CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED",
                          "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED", "RUN_TIMEOUT",
                          "RUN_ERROR", "RESTART_READY", "FAILED", "USER_KILLED"))
_INT_MAX = 2**31 - 1


def normalize_job_values(values: dict[str, Any]) -> None:
    """Check and convert, in place, every settable field of a job's values.

    Values already of the right type are only range-checked (the common case costs a type test
    per field), others go through :func:`coerce_field`. The state must be a valid state name.
    """
    for key, kind in _KINDS.items():
        val = values[key]
        if type(val) is kind:
            if kind is int:
                if val < int_low(key) or val > _INT_MAX:
                    values[key] = coerce_field(key, val)
            elif kind is str and "\x00" in val:
                values[key] = coerce_field(key, val)
        else:
            values[key] = coerce_field(key, val)
    for key, check in VALUE_CHECKS.items():
        if values[key]:
            check(key, values[key])
    if values["state"] not in _STATE_NAMES:
        values["state"] = validate_state(values["state"]).value


def parse_uuid(text: str) -> uuid.UUID:
    """Parse a full job id, raising :class:`FieldError` with a readable message."""
    import uuid  # here: `balsam ls` never needs it (uuid imports platform, ~1 ms)

    try:
        return uuid.UUID(str(text).strip())
    except ValueError:
        raise FieldError(f"{text!r} is not a valid job id (UUID)")


def cute_id(name: str, job_id: Any) -> str:
    """The classic short label ``[name | id8]`` (``[id8]`` for an unnamed job)."""
    return f"[{name} | {str(job_id)[:8]}]" if name else f"[{str(job_id)[:8]}]"


def working_directory(db_path: str, workflow: str, name: str, job_id: Any,
                      user_workdir: str = "") -> str:
    """Where a job runs: ``user_workdir`` when set (always, and created when the job is staged
    in; classic Balsam used it only if it existed), else ``<db>/data/<workflow>/<name>_<id8>``."""
    if user_workdir:
        return os.path.abspath(os.path.expanduser(user_workdir))
    short = str(job_id)[:8]
    leaf = f"{name.replace(' ', '_').replace(os.sep, '_')}_{short}" if name else short
    return f"{_data_dir(db_path, workflow)}{os.sep}{leaf}"  # the leaf has no separator


@functools.lru_cache(maxsize=256)
def _data_dir(db_path: str, workflow: str) -> str:
    """``<db>/data/<workflow>`` (``<db>/data`` for none), worked out once per workflow: a
    claim of thousands of jobs builds thousands of directories (issue 16: ~5 -> ~1 us each)."""
    return os.path.join(db_path, "data", *([_path_part(workflow)] if workflow else []))


def _path_part(text: str) -> str:
    """One directory name from free text: no separators, and never ``.`` or ``..`` (a job's
    directory stays inside ``<db>/data``)."""
    part = text.replace(os.sep, "_")
    return part.replace(".", "_") if part.strip(".") == "" else part


def check_input_patterns(text: str) -> None:
    """Refuse ``input_files`` patterns that could match outside a parent's working directory:
    absolute paths and any ``..`` component (:class:`FieldError`). Linking confines matches
    again (:mod:`balsam.processing.inputs`), symlinks included."""
    for word in text.split():
        if os.path.isabs(word) or ".." in word.split("/"):
            raise FieldError(f"input_files pattern {word!r} points outside the parent's working "
                             "directory: use patterns relative to it, without '..'")


def parse_envstring(text: str) -> dict[str, str]:
    """Parse the classic ``VAR1=v1:VAR2=v2`` form of ``environ_vars`` (``:`` separates entries;
    values may contain ``=``)."""
    result: dict[str, str] = {}
    for entry in (text or "").split(":"):
        if not entry.strip():
            continue
        key, sep, val = entry.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FieldError(f"environment entry {entry!r} is not of the form VAR=value")
        result[key] = val
    return result


def app_command(executable: str, args: str) -> str:
    """The classic ``app_cmd``: the app's executable and the job's args, ``~`` expanded."""
    words = f"{executable} {args}".split()
    if "~" not in executable and "~" not in args:  # nothing to expand (the usual case)
        return " ".join(words)
    return " ".join(os.path.expanduser(w) for w in words)


def new_job_row(values: Mapping[str, Any], job_id: Optional[uuid.UUID] = None) -> dict[str, Any]:
    """A full row for a new job: defaults overlaid with ``values`` (each coerced and checked)."""
    import datetime
    import uuid
    unknown = set(values) - set(JOB_DEFAULTS)
    if unknown:
        raise FieldError(f"unknown job field(s): {', '.join(sorted(unknown))}")
    row: dict[str, Any] = dict(JOB_DEFAULTS)
    row.update(data={}, parameters={}, tags={})
    row.update(values)
    normalize_job_values(row)
    now = datetime.datetime.now(datetime.timezone.utc)
    row.update(job_id=job_id or uuid.uuid4(), created_at=now, tick=now, queued_launch_id=None)
    return row
