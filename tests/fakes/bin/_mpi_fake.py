"""Shared body of the recording fake MPI launchers in this directory (mpiexec, mpirun, srun,
aprun, jsrun).

Each fake declares its launcher's flag grammar (which flags take values, how many, and which
values are valid). It parses its argv with that grammar, appends one JSON line
``{"launcher", "path", "argv", "options", "app", "env"}`` (``path``: this fake's own path,
``env``: the environment it was started with) to ``$BALSAM_FAKE_LOG``, then execs the application
command (everything after the last flag) once, with the variables the launcher's own env flag
passes added to its environment. An unknown flag or a bad value exits 97, a missing
application 98, so a flavour emitting something its real launcher would reject fails loudly.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import NoReturn, Optional

POSITIVE = r"[1-9][0-9]*"
COUNT = r"[0-9]+"
ANY = r".+"


def fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"{os.path.basename(sys.argv[0])} (fake): {message}\n")
    sys.exit(code)


def parse(args: list[str], grammar: dict[str, list[str]],
          switches: frozenset[str]) -> tuple[list, list]:
    """(options as [flag, value, ...] lists, application argv)."""
    options, pos = [], 0
    while pos < len(args) and args[pos].startswith("-"):
        flag, eq, inline = args[pos].partition("=")
        if flag in switches and not eq:
            options.append([flag])
            pos += 1
            continue
        if flag not in grammar:
            fail(97, f"unknown option {args[pos]!r}")
        patterns = grammar[flag]
        if eq and not (flag.startswith("--") and len(patterns) == 1):
            fail(97, f"option {flag} does not take '=VALUE'")
        values = [inline] if eq else args[pos + 1:pos + 1 + len(patterns)]
        if len(values) != len(patterns):
            fail(97, f"option {flag} needs {len(patterns)} value(s)")
        for value, pattern in zip(values, patterns):
            if not re.fullmatch(pattern, value):
                fail(97, f"bad value {value!r} for {flag}")
        options.append([flag, *values])
        pos += 1 if eq else 1 + len(patterns)
    if pos == len(args):
        fail(98, "no application command")
    return options, args[pos:]


def main(grammar: dict[str, list[str]], switches: frozenset[str] = frozenset(),
         env_flags: Optional[dict[str, str]] = None) -> None:
    """Parse, record and exec. ``env_flags`` maps a flag to how its values set variables:
    ``"pair"`` (``FLAG VAR VAL``), ``"assign"`` (``FLAG VAR=VAL``; a bare ``VAR`` passes the
    current value), ``"export"`` (``FLAG ALL,VAR=VAL,...``)."""
    args = sys.argv[1:]
    options, app = parse(args, grammar, frozenset(switches))
    env = dict(os.environ)
    for flag, *values in options:
        kind = (env_flags or {}).get(flag)
        if kind == "pair":
            env[values[0]] = values[1]
        elif kind in ("assign", "export"):
            for item in values[0].split(",") if kind == "export" else values:
                name, eq, value = item.partition("=")
                if eq:
                    env[name] = value
    with open(os.environ["BALSAM_FAKE_LOG"], "a") as log:
        log.write(json.dumps({"launcher": os.path.basename(sys.argv[0]),
                              "path": os.path.abspath(sys.argv[0]), "argv": args,
                              "options": options, "app": app, "env": dict(os.environ)}) + "\n")
    try:
        os.execvpe(app[0], app, env)
    except OSError as exc:
        fail(127, f"cannot run {app[0]!r}: {exc}")
