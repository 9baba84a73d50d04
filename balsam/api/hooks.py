"""The hook runner: ``python -m balsam.api.hooks preprocess|postprocess``.

A site app's row names this command as its classic ``preprocess`` / ``postprocess`` script
(:mod:`balsam.site.registry`), so processing runs it like any script: in the job's working
directory, with the job's environment, its output appended to ``preprocess.log`` /
``postprocess.log``, under the step's timeout. It loads the job (``BALSAM_JOB_ID``) from the site
(``BALSAM_DB_PATH``), imports the app class from ``<site>/apps``, binds the job as ``self.job``
and calls the hook the step stands for:

=============  ==========================  =================================================
step           job state (variable set)    hook
=============  ==========================  =================================================
preprocess     STAGED_IN                   ``preprocess()``
postprocess    RUN_DONE                    ``postprocess()``, then ``cleanup_files`` removed
postprocess    RUN_ERROR (BALSAM_JOB_ERROR)  ``handle_error()``
postprocess    RUN_TIMEOUT (..._TIMEOUT)   ``handle_timeout()``
=============  ==========================  =================================================

A state the hook assigns is written through the state writer (classic user rules, message
``set by <app>.<hook>()``; a refused one exits 2 and the job fails), except the
step's own normal outcome (PREPROCESSED, POSTPROCESSED), which is left to processing so the job
goes on as after a script (e.g. POSTPROCESSED -> JOB_FINISHED). A changed ``data`` is saved. A
handler that assigns no state fails the job (processing's classic rule). An exception in a hook
prints its traceback to the log and exits 1: processing fails the job with the log's tail.

Processing's transition workers usually do not start this command: when it names their own
interpreter and the app has no envscript, it runs in a fork of the worker's warm hook runner
(:mod:`balsam.api.hook_server`, :mod:`balsam.processing.warm_hooks`), which calls :func:`main`
the same way, with the same log, environment and working directory.
"""
from __future__ import annotations

import copy
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Optional

from balsam.api.jobs import Job
from balsam.api.sites import Site
from balsam.core.models import BalsamJob
from balsam.core.states import InvalidStateError, State
from balsam.errors import BalsamError
from balsam.processing import cleanup
from balsam.site import loader

NATURAL_OUTCOME = {"preprocess": State.PREPROCESSED.value, "postprocess": State.POSTPROCESSED.value}
"""Hook -> the state processing itself writes when the step succeeds."""


def hook_for(step: str, env: Mapping[str, str]) -> str:
    """Which hook a step runs, from the step name and the handler variables."""
    if step == "preprocess":
        return "preprocess"
    if step != "postprocess":
        raise BalsamError(f"unknown step {step!r} (preprocess or postprocess)")
    if env.get("BALSAM_JOB_ERROR") == "TRUE":
        return "handle_error"
    if env.get("BALSAM_JOB_TIMEOUT") == "TRUE":
        return "handle_timeout"
    return "postprocess"


def run_hook(site_path: str, job_id: str, hook: str) -> str:
    """Run ``hook`` of job ``job_id``'s app with the job bound; returns what was written."""
    site = Site(site_path)
    row = BalsamJob.objects.filter(pk=job_id).first()
    if row is None:
        raise BalsamError(f"job {job_id} does not exist")
    app = loader.load_app(site.site_path, row.application)
    job = Job._wrap(site, row)
    before, before_data = row.state, copy.deepcopy(row.data)
    getattr(app.cls(job), hook)()
    wanted, row.state = row.state, before
    job._dirty.discard("state")
    if row.data != before_data:  # also changed in place (self.job.data["x"] = ...)
        job._dirty.add("data")
    said = ", ".join(sorted(job._dirty)) or "nothing"
    job.save()
    # The step's own outcome is left to processing, which writes it and what follows it.
    if wanted != before and wanted != NATURAL_OUTCOME.get(hook):
        try:
            row.update_state(wanted, f"set by {row.application}.{hook}()")
        except InvalidStateError as exc:
            raise BalsamError(f"{hook}() set the state {wanted}: {exc}")
        said += f", state {wanted}" if said != "nothing" else f"state {wanted}"
    if hook == "postprocess":
        removed = cleanup.remove_matching(row.working_directory, app.cls.cleanup_files)
        if removed:
            said += f"; {cleanup.summary(removed)}"
    return said


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (see the module docstring); exit 0, 1 (the hook raised) or 2 (bad call)."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    try:
        if len(args) != 1:
            raise BalsamError("usage: python -m balsam.api.hooks preprocess|postprocess")
        hook = hook_for(args[0], env)
        job_id, site = env.get("BALSAM_JOB_ID"), env.get("BALSAM_DB_PATH")
        if not job_id or not site:
            raise BalsamError("BALSAM_JOB_ID and BALSAM_DB_PATH must be set (processing sets them)")
        print(f"# hook {hook}() of job {job_id[:8]}", flush=True)
        said = run_hook(site, job_id, hook)
    except BalsamError as exc:
        print(f"balsam hooks: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the user's hook failed: its traceback is the log
        traceback.print_exc()
        return 1
    print(f"# hook done; written: {said}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
