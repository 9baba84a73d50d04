"""``balsam launcher``: run the jobs of the active DB in this allocation (or on this machine)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from balsam.cli.common import add_command
from balsam.defaults import MAX_TRANSITION_THREADS

EPILOG = """The launcher claims runnable jobs under a session with a heartbeat, so several
launchers can share one DB; it also runs the job transitions that need no compute node.
It stops on SIGTERM/SIGINT or when the time limit (less a safety margin) is reached: running
tasks are stopped and recorded RUN_TIMEOUT, so they are retried. Without --persistent it exits
after a while with nothing left that it could run. Settings (nodes to emulate on a machine
without a scheduler, MPI flavour, tunables) come from the DB's settings.yml."""


def _number(kind: Callable[[str], Any], minimum: float, what: str,
            maximum: float = float("inf"), why: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, finite, >= ``minimum`` and <= ``maximum`` (``why``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        if not value >= minimum or value != value or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= {minimum:g}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is more than {maximum:g} {why}")
        return value
    return parse


def _tag(text: str) -> tuple[str, str]:
    """An argparse type: ``KEY=VALUE`` (a non-empty key) -> (key, value)."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def register(sub: Any) -> None:
    p = add_command(sub, "launcher", run, "run jobs in this allocation", epilog=EPILOG)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--consume-all", action="store_true", help="run jobs of every workflow")
    which.add_argument("--wf-filter", metavar="WF",
                       help="run only jobs whose workflow contains WF")
    p.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                   help="run only jobs tagged KEY=VALUE (repeat: every tag must match; the "
                        "tags of `balsam.api.Job`)")
    p.add_argument("--job-mode", required=True, choices=("mpi", "serial"),
                   help="mpi: one MPI launch per job on whole nodes; serial: many single-rank "
                        "tasks per node in one MPI ensemble")
    p.add_argument("--time-limit-minutes", type=_number(float, 0, "a number of minutes"),
                   default=0.0, metavar="M",
                   help="stop after M minutes (0: the allocation's end, or no limit)")
    p.add_argument("--num-transition-threads",
                   type=_number(int, 0, "a whole number", MAX_TRANSITION_THREADS,
                                "(each thread holds a database connection)"),
                   default=None, metavar="N",
                   help="threads running stage-in/out, pre/postprocess scripts and handlers "
                        f"(default 2, at most {MAX_TRANSITION_THREADS}); 0: do not process "
                        "jobs here (another launcher or the service does)")
    p.add_argument("--gpus-per-node", type=_number(int, 0, "a whole number"), default=None,
                   metavar="G", help="GPUs per node (default: settings.yml gpus_per_node)")
    p.add_argument("--limit-nodes", type=_number(int, 1, "a whole number"), default=None,
                   metavar="N", help="use only N of the allocation's nodes")
    p.add_argument("--offset-nodes", type=_number(int, 0, "a whole number"), default=0,
                   metavar="N", help="skip the allocation's first N nodes")
    p.add_argument("--persistent", action="store_true",
                   help="never exit for lack of work (only on a signal or the time limit)")


def run(args: argparse.Namespace) -> int:
    if args.wf_filter is not None and not args.wf_filter.strip():
        from balsam.errors import BalsamError

        raise BalsamError("--wf-filter needs a non-empty workflow name (or use --consume-all)")
    from balsam.launcher import main

    status = main.run(args)
    _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """End the process with ``status`` at once if nothing else runs in it: the launcher has
    joined its threads and closed its connection, log and watchdog, and the interpreter's
    teardown (freeing some 700 modules) cost 30-300 ms of every launcher's exit, measured
    under load, before the batch job could go on. Returns if another thread is alive."""
    import os
    import sys
    import threading

    if threading.active_count() > 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can go there
            pass
    os._exit(status)
