"""Dashboard pages and the two actions (kill, retry). Reads are plain SQL from the read layer
the CLI shares (:mod:`balsam.core.reads`); every state change goes through
:mod:`balsam.core.lifecycle`.

Retry (POST, FAILED jobs only) means: a job that never reached RUNNING (it failed in stage-in or
preprocess, or because a parent failed) goes back to CREATED, so its parents are checked again
and every step is redone; a job that ran goes to RESTART_READY, so a launcher runs it again in
its existing working directory, as an automatic retry after a timeout would.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection, transaction
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators import http

from balsam.core import lifecycle, schema
from balsam.core.jobenv import is_credential
from balsam.core.reads import activity, pages
from balsam.core.reads import jobs as job_reads
from balsam.core.states import END_STATES, STATES, State
from balsam.db.connect import connection_params
from balsam.db.django_setup import active_path
from balsam.errors import BalsamError
from balsam.service import live
from balsam.web import auth, charts

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

TAIL_BYTES = 64 * 1024
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
_View = TypeVar("_View", bound=Callable[..., HttpResponse])


def require_GET(view: _View) -> _View:
    """Django's ``require_GET`` (405 for other methods), typed: Django ships no hints, and an
    untyped decorator would make every view untyped."""
    return cast(_View, http.require_GET(view))


def require_POST(view: _View) -> _View:
    """Django's ``require_POST``, typed (see :func:`require_GET`)."""
    return cast(_View, http.require_POST(view))


def _flash(request: HttpRequest, text: str) -> None:
    request.session["flash"] = text


def _context(request: HttpRequest, **kw: Any) -> dict[str, Any]:
    kw.setdefault("flash", request.session.pop("flash", ""))
    kw["db_path"] = active_path()
    return kw


_LIVE: dict[tuple[str, str], live.Cached] = {}
"""Live batch-job states per (DB path, scheduler): the scheduler is asked at most every 30 s."""


def _live_states(batch: list[dict[str, Any]]) -> str:
    """Give ``batch`` rows live states (:mod:`balsam.service.live`); a note ("" if none)."""
    from balsam.db import dbsettings
    from balsam.errors import BalsamError

    path = active_path()
    try:
        scheduler = dbsettings.load(path)["scheduler"]
    except BalsamError as exc:
        return f"Batch-job states as last recorded: {exc}"
    cached = _LIVE.get((path, scheduler))
    if cached is None:
        cached = _LIVE[(path, scheduler)] = live.Cached(lambda: live.ask(path, scheduler, set()))
    answer = cached.get()
    live.annotate(batch, answer)
    return f"Note: {answer.note}" if answer.note else ""


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cur:
        counts = activity.counts_by_workflow_state(cur)
        sessions = activity.live_sessions(cur)
        batch = activity.recent_batch_jobs(cur)
    batch_note = _live_states(batch)
    by_state: dict[str, int] = defaultdict(int)
    for _, state, n in counts:
        by_state[state] += n
    total = sum(by_state.values())
    state_rows = [(s, by_state.get(s, 0), 100.0 * by_state.get(s, 0) / total if total else 0)
                  for s in STATES]
    return render(request, "balsam_web/overview.html", _context(
        request, page="overview", total=total, state_rows=state_rows,
        workflows=_workflow_table(counts)[:20], sessions=sessions, batch=batch,
        batch_note=batch_note))


def _workflow_table(counts: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for wf, state, n in counts:
        row = table.setdefault(wf, {"workflow": wf, "total": 0, "done": 0, "failed": 0,
                                    "running": 0, "states": {}})
        row["total"] += n
        row["states"][state] = n
        row["done"] += n if state == State.JOB_FINISHED else 0
        row["failed"] += n if state in (State.FAILED, State.USER_KILLED) else 0
        row["running"] += n if state == State.RUNNING else 0
    return sorted(table.values(), key=lambda r: (-r["total"], r["workflow"]))


@require_GET
def charts_api(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cur:
        return JsonResponse(charts.chart_data(cur))


@require_GET
def jobs(request: HttpRequest) -> HttpResponse:
    g = request.GET
    flt = pages.JobFilter(state=g.get("state", ""), workflow=g.get("wf", ""),
                            app=g.get("app", ""), name=g.get("name", "").strip(),
                            id_prefix=g.get("id", "").strip())
    sort = g.get("sort", "created") if g.get("sort") in pages.SORTS else "created"
    descending = g.get("dir", "desc") != "asc"
    try:
        size = int(g.get("size", "50"))
    except ValueError:
        size = 50
    with connection.cursor() as cur:
        page = pages.job_page(cur, flt, sort, descending, g.get("after", ""),
                                g.get("before", ""), size)
    keep = {k: v for k, v in g.items() if k not in ("after", "before") and v}

    def link(**changes: str) -> str:
        params = dict(keep)
        params.update(changes)
        return "?" + urlencode({k: v for k, v in params.items() if v})

    headers = []
    for key, label in (("name", "Name"), ("workflow", "Workflow"), ("app", "App"),
                       ("state", "State"), ("nodes", "Nodes"), ("created", "Created")):
        flip = "asc" if (sort == key and descending) else "desc"
        arrow = ("▼" if descending else "▲") if sort == key else ""
        headers.append({"label": label, "href": link(sort=key, dir=flip), "arrow": arrow})
    return render(request, "balsam_web/jobs.html", _context(
        request, page="jobs", jobs=page.jobs, count=page.count, count_exact=page.count_exact,
        flt=flt, states=STATES, headers=headers,
        size=size if size in pages.PAGE_SIZES else 50,
        sizes=pages.PAGE_SIZES, sort=sort, dir="desc" if descending else "asc",
        next_href=link(after=page.next_cursor) if page.next_cursor else "",
        prev_href=link(before=page.prev_cursor) if page.prev_cursor else "",
        first_href=link() if page.prev_cursor else ""))


def _job_or_404(cur: Cursor, job_id: str) -> dict[str, Any]:
    try:
        schema.parse_uuid(job_id)
    except Exception:
        raise Http404("no such job")
    job = job_reads.job_detail(cur, job_id)
    if job is None:
        raise Http404("no such job")
    return job


@require_GET
def job(request: HttpRequest, job_id: str) -> HttpResponse:
    with connection.cursor() as cur:
        row = _job_or_404(cur, job_id)
        events = job_reads.job_events(cur, job_id)
        parents, children = job_reads.job_relatives(cur, job_id)
    workdir = schema.working_directory(active_path(), row["workflow"], row["name"],
                                       row["job_id"], row["user_workdir"])
    out_path = os.path.join(workdir, f"{row['name'].replace(os.sep, '_') or 'job'}.out")
    fields = [(k, row[k]) for k in row if k not in ("job_id", "data")]
    fields.append(("data", row["data"]))
    return render(request, "balsam_web/job.html", _context(
        request, page="jobs", job=row, fields=fields, events=events, parents=parents,
        children=children, workdir=workdir, out_path=out_path,
        out_tail=_redact(_tail(out_path)),
        can_kill=row["state"] not in END_STATES, can_retry=row["state"] == State.FAILED))


REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8
"""Shorter values are not searched for: replacing them would garble ordinary output."""


def _secrets() -> set[str]:
    """This dashboard's own secrets: its token, the DB password it connects with, and the
    credential variables of its environment (:func:`balsam.core.jobenv.is_credential`)."""
    found = {str(settings.BALSAM_WEB_TOKEN)}
    found.update(v for k, v in os.environ.items() if is_credential(k))
    try:
        found.add(str(connection_params(active_path()).get("password") or ""))
    except BalsamError:
        pass
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


def _redact(text: str) -> str:
    """``text`` with every secret of :func:`_secrets` replaced by :data:`REDACTED`. Tasks no
    longer inherit credentials, but output written before that (or echoed by a user's own
    envscript) must not show them on a page."""
    for secret in _secrets():
        text = text.replace(secret, REDACTED)
    return text


def _tail(path: str) -> str:
    """The last :data:`TAIL_BYTES` of a file, or a note saying why there is nothing."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"(cannot read: {exc.strerror})"
    text = data.decode("utf-8", "replace")
    return text.split("\n", 1)[-1] if size > TAIL_BYTES else text


@require_POST
def kill(request: HttpRequest, job_id: str) -> HttpResponse:
    recursive = request.POST.get("recursive") == "1"
    with transaction.atomic(), connection.cursor() as cur:
        _job_or_404(cur, job_id)
        killed = lifecycle.kill(cur, [job_id], recursive=recursive,
                                message="Killed by user from the web dashboard")
    _flash(request, f"Killed {len(killed)} job(s)." if killed else
           "Nothing to kill: the job has already ended.")
    return HttpResponseRedirect(reverse("job", args=[job_id]))


@require_POST
def retry(request: HttpRequest, job_id: str) -> HttpResponse:
    with transaction.atomic(), connection.cursor() as cur:
        _job_or_404(cur, job_id)
        ran = job_reads.has_run(cur, job_id)
        target = (State.RESTART_READY if ran else State.CREATED).value
        moved = lifecycle.transition(cur, [job_id], target, "Retried by user from the web "
                                     "dashboard", user=True, sources=[State.FAILED.value])
    _flash(request, f"Retrying: the job is now {target}." if moved else
           "Not retried: only a FAILED job can be retried.")
    return HttpResponseRedirect(reverse("job", args=[job_id]))


@require_GET
def apps(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cur:
        app_rows = job_reads.app_summaries(cur)
    return render(request, "balsam_web/apps.html", _context(request, page="apps", apps=app_rows))


@require_GET
def workflows(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cur:
        table = _workflow_table(activity.counts_by_workflow_state(cur))
    for row in table:
        row["cells"] = [row["states"].get(s, 0) for s in STATES]
    return render(request, "balsam_web/workflows.html", _context(
        request, page="workflows", workflows=table, states=STATES))


@require_GET
def transfers(request: HttpRequest) -> HttpResponse:
    """Stage-in/out transfers: items by state, throughput, latest batches and failures."""
    with connection.cursor() as cur:
        data = pages.transfers(cur)
    human = data.pop("human")
    summary = data["summary"]
    for b in data["batches"]:
        b["size"] = human(b["bytes"])
    recent = summary["recent"]
    return render(request, "balsam_web/transfers.html", _context(
        request, page="transfers", counts=summary["counts"], total=human(summary["bytes"]),
        recent_items=recent["items"], recent_size=human(recent["bytes"]),
        rate=f"{recent['items_per_second']:.2f} items/s, "
             f"{human(recent['bytes_per_second'])}/s", **data))


def login(request: HttpRequest) -> HttpResponse:
    """POST: the login form (CSRF-checked by the middleware before this runs); GET: home."""
    if request.method != "POST":
        return HttpResponseRedirect("/")
    if not auth.token_matches(request.POST.get("token", "")):
        return auth.login_page(request, 403, "That token is not right.")
    auth.log_in(request)
    target = request.POST.get("next", "/")
    safe = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return HttpResponseRedirect(target if safe else "/")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponseRedirect("/")


def static(request: HttpRequest, name: str) -> HttpResponse:
    ext = os.path.splitext(name)[1]
    path = os.path.join(os.path.dirname(__file__), "static", name)
    if ext not in STATIC_TYPES or "/" in name or not os.path.isfile(path):
        raise Http404("no such file")
    response = FileResponse(open(path, "rb"), content_type=STATIC_TYPES[ext])
    response["Cache-Control"] = "max-age=300" if not settings.DEBUG else "no-store"
    return response
