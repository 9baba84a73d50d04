"""Shared body of the fake batch schedulers in this directory: PBS Pro and Cobalt (``qsub``,
``qstat``, ``qdel``; dialect from ``BALSAM_FAKE_SCHED=pbs|cobalt``) and LSF (``bsub``,
``bjobs``, ``bkill``).

Jobs live in the JSON file named by ``BALSAM_FAKE_SCHED_STATE`` (locked while used). A submit
reads the script's directives (``#PBS``, ``#COBALT``, ``#BSUB``; command-line options win) and
prints the id the way the real tool does. Every status listing starts the jobs that were queued
at the previous listing, so a job is seen queued once, then running. Jobs end only by a cancel
or when a test edits the state file (``state: "ended"``, ``exit``). Options the real tools
would reject are rejected (exit 2). ``BALSAM_FAKE_SCHED_FAIL=<tool>`` makes that tool fail,
``BALSAM_FAKE_SCHED_HANG=<tool>`` makes it hang; ``BALSAM_FAKE_SCHED_QUEUES=a,b`` limits the
queues a submit accepts.
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Optional

TOOL = os.path.basename(sys.argv[0])


def fail(message: str, code: int = 2, out: bool = False) -> NoReturn:
    (sys.stdout if out else sys.stderr).write(message + "\n")
    sys.exit(code)


@contextmanager
def state() -> Iterator[dict[str, Any]]:
    path = os.environ.get("BALSAM_FAKE_SCHED_STATE")
    if not path:
        fail(f"{TOOL} (fake): set BALSAM_FAKE_SCHED_STATE")
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            data = {"next_id": 1000, "jobs": {}}
        yield data
        with open(path, "w") as fh:
            json.dump(data, fh, indent=1)


def user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def minutes(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return parts[0] * 60 + parts[1] + (1 if parts[2] else 0)


def hms(mins: float) -> str:
    secs = int(mins * 60)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def parse_options(args: list[str], valued: set[str], switches: set[str] = frozenset()
                  ) -> tuple[dict[str, list[str]], list[str]]:
    """({flag: [values]}, positional) with the real tool's grammar; unknown flags exit 2."""
    opts: dict[str, list[str]] = {}
    pos = 0
    while pos < len(args) and args[pos].startswith("-"):
        flag = args[pos]
        if flag in switches:
            opts.setdefault(flag, []).append("")
            pos += 1
        elif flag in valued and pos + 1 < len(args):
            opts.setdefault(flag, []).append(args[pos + 1])
            pos += 2
        else:
            fail(f"{TOOL}: invalid option -- '{flag}'\nusage: {TOOL} [options] script")
    return opts, args[pos:]


def directives(text: str, prefix: str, valued: set[str], switches: set[str] = frozenset()
               ) -> dict[str, list[str]]:
    words: list[str] = []
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            words += shlex.split(line[len(prefix):])
    return parse_options(words, valued, switches)[0]


def new_job(data: dict[str, Any], **fields: Any) -> str:
    queues = os.environ.get("BALSAM_FAKE_SCHED_QUEUES")
    if queues and fields["queue"] not in queues.split(","):
        fail(f"{TOOL}: Unknown queue {fields['queue']}", 170)
    job_id = str(data["next_id"])
    data["next_id"] += 1
    data["jobs"][job_id] = dict(fields, id=job_id, owner=user(), state="queued", exit=None,
                                submitted=time.time(), started=None)
    return job_id


def advance(data: dict[str, Any]) -> None:
    """Jobs queued at the previous listing start now; new ones are marked as seen."""
    for job in data["jobs"].values():
        if job["state"] == "queued" and job.get("seen"):
            job["state"], job["started"] = "running", time.time()
        job["seen"] = True


def left(job: dict[str, Any]) -> Optional[float]:
    if job["state"] != "running" or not job["minutes"]:
        return None
    return max(0.0, job["minutes"] - (time.time() - job["started"]) / 60)


# ---- PBS Pro ----------------------------------------------------------------------------------

PBS_STATE = {"queued": "Q", "running": "R", "ended": "F"}


def pbs_qsub(args: list[str]) -> None:
    valued = {"-N", "-o", "-e", "-j", "-A", "-q", "-l", "-V", "-W"}
    opts, rest = parse_options(args, valued - {"-V"}, {"-V"})
    if len(rest) != 1 or not os.path.isfile(rest[0]):
        fail(f"qsub: script file cannot be loaded - No such file or directory: {rest}")
    script = open(rest[0]).read()
    merged = {**directives(script, "#PBS", valued), **opts}
    res = dict(item.split("=", 1) for item in merged.get("-l", []))
    name = merged.get("-N", [os.path.basename(rest[0])])[-1]
    if not re.fullmatch(r"[A-Za-z][^\s:@#]*", name):
        fail(f"qsub: illegal -N value {name}")
    with state() as data:
        job_id = new_job(data, name=name, queue=merged.get("-q", ["workq"])[-1],
                         project=merged.get("-A", [""])[-1], cwd=os.getcwd(),
                         nodes=int(res.get("select", "1").split(":")[0]),
                         minutes=minutes(res.get("walltime", "01:00:00")),
                         output=merged.get("-o", [""])[-1])
    print(f"{job_id}.fakepbs")


def pbs_job(job: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "Job_Name": job["name"], "Job_Owner": f"{job['owner']}@login1.fake",
        "job_state": PBS_STATE[job["state"]], "queue": job["queue"],
        "Account_Name": job["project"], "Output_Path": f"login1.fake:{job['output']}",
        "Resource_List": {"ncpus": 64 * job["nodes"], "nodect": job["nodes"],
                          "select": f"{job['nodes']}:ncpus=64", "walltime": hms(job["minutes"])},
        "Variable_List": {"PBS_O_WORKDIR": job["cwd"], "PS1": "\\u@\\h$ "},
    }
    if job["state"] != "queued":
        used = (job["minutes"] - (left(job) or 0)) if job["state"] == "running" else 1
        info["resources_used"] = {"walltime": hms(used), "ncpus": 64 * job["nodes"]}
    if job["state"] == "ended":
        info["Exit_status"] = job["exit"]
    return info


def pbs_qstat(args: list[str]) -> None:
    opts, ids = parse_options(args, {"-F"}, {"-f", "-x", "-w"})
    if "-f" not in opts or opts.get("-F") != ["json"]:
        fail("qstat (fake): only `qstat -f -F json [-x] [ids]` is implemented")
    with state() as data:
        advance(data)
        jobs = {}
        for job_id in ids or list(data["jobs"]):
            job = data["jobs"].get(job_id.split(".")[0])
            if job is None or (job["state"] == "ended" and "-x" not in opts):
                if ids:
                    fail(f"qstat: Unknown Job Id {job_id}", 153)
                continue
            jobs[f"{job['id']}.fakepbs"] = pbs_job(job)
    out = {"timestamp": int(time.time()), "pbs_version": "2022.1.3", "pbs_server": "fakepbs"}
    if jobs:
        out["Jobs"] = jobs
    # Real PBS writes Variable_List values unescaped: "\u@\h" is invalid JSON on purpose.
    print(json.dumps(out, indent=4).replace("\\\\", "\\"))


def pbs_qdel(args: list[str]) -> None:
    _, ids = parse_options(args, {"-W"})
    with state() as data:
        for job_id in ids:
            job = data["jobs"].get(job_id.split(".")[0])
            if job is None:
                fail(f"qdel: Unknown Job Id {job_id}", 153)
            if job["state"] == "ended":
                fail(f"qdel: Job has finished {job_id}", 35)
            job["state"], job["exit"] = "ended", 271


# ---- Cobalt -----------------------------------------------------------------------------------

COBALT_FIELDS = ("JobID", "User", "WallTime", "TimeRemaining", "State", "Queue", "Nodes",
                 "Project", "JobName", "Location")


def cobalt_qsub(args: list[str]) -> None:
    valued = {"--cwd", "-O", "-A", "-n", "-t", "-q", "--attrs", "-o", "-e", "--env"}
    opts, rest = parse_options(args, valued)
    if len(rest) != 1 or not os.path.isfile(rest[0]):
        fail(f"qsub: no script given or not a file: {rest}", 1)
    merged = {**directives(open(rest[0]).read(), "#COBALT", valued), **opts}
    if "--cwd" in merged and not os.path.isdir(merged["--cwd"][-1]):
        fail(f"qsub: directory {merged['--cwd'][-1]} does not exist", 1)
    time_arg = merged.get("-t", ["60"])[-1]
    with state() as data:
        queue = merged.get("-q", ["default"])[-1]
        job_id = new_job(data, name=os.path.basename(merged.get("-O", [rest[0]])[-1]),
                         queue=queue, project=merged.get("-A", [""])[-1],
                         nodes=int(merged.get("-n", ["1"])[-1]),
                         minutes=int(time_arg) if time_arg.isdigit() else minutes(time_arg),
                         cwd=merged.get("--cwd", [os.getcwd()])[-1], output="")
    print(f'Job routed to queue "{queue}".')
    print(job_id)


def cobalt_value(job: dict[str, Any], field: str) -> str:
    remaining = left(job)
    return {"JobID": job["id"], "User": job["owner"], "WallTime": hms(job["minutes"]),
            "TimeRemaining": "N/A" if remaining is None else hms(remaining),
            "State": job["state"], "Queue": job["queue"], "Nodes": str(job["nodes"]),
            "Project": job["project"] or "N/A", "JobName": job["name"] or "N/A",
            "Location": "3824-3827" if job["state"] == "running" else "None"}[field]


def cobalt_qstat(args: list[str]) -> None:
    opts, ids = parse_options(args, {"-u"}, {"-f", "-l"})
    fields = os.environ.get("QSTAT_HEADER", "JobID:User:WallTime:Nodes:State:Location").split(":")
    for field in fields:
        if field not in COBALT_FIELDS:
            fail(f"qstat: unknown field {field} in QSTAT_HEADER", 1)
    with state() as data:
        advance(data)
        rows = [[cobalt_value(job, f) for f in fields] for job in data["jobs"].values()
                if job["state"] != "ended" and (not ids or job["id"] in ids)
                and job["owner"] in opts.get("-u", [job["owner"]])]
    if not rows:
        return
    widths = [max(len(r[i]) for r in [fields] + rows) for i in range(len(fields))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [fields] + rows]
    print("\n".join([lines[0], "=" * len(lines[0])] + lines[1:]))


def cobalt_qdel(args: list[str]) -> None:
    _, ids = parse_options(args, set())
    with state() as data:
        gone = [i for i in ids if data["jobs"].get(i, {}).get("state", "ended") == "ended"]
        if gone:
            fail(f"qdel: job {gone[0]} not found", 1)
        for job_id in ids:
            data["jobs"][job_id].update(state="ended", exit=143)
    print("      Deleted Jobs\nJobID  User\n=====================\n"
          + "\n".join(f"{i}  {user()}" for i in ids))


# ---- LSF --------------------------------------------------------------------------------------

LSF_STATE = {"queued": "PEND", "running": "RUN"}
LSF_FIELDS = ("jobid", "stat", "user", "queue", "job_name", "proj_name", "nexec_host",
              "runtimelimit", "time_left", "exit_code", "run_time")


def lsf_minutes(text: str) -> int:
    """``-W [hours:]minutes``."""
    hours, _, mins = text.rpartition(":")
    return int(hours or 0) * 60 + int(mins)


def lsf_bsub(args: list[str]) -> None:
    valued = {"-cwd", "-J", "-o", "-e", "-P", "-q", "-nnodes", "-W", "-alloc_flags"}
    opts, rest = parse_options(args, valued)
    script = open(rest[0]).read() if rest else sys.stdin.read()
    merged = {**directives(script, "#BSUB", valued), **opts}
    if "-P" not in merged:
        fail("Project must be specified with -P. Request aborted by esub. Job not submitted.", 255)
    time_arg = merged.get("-W", ["60"])[-1]
    with state() as data:
        queue = merged.get("-q", ["batch"])[-1]
        job_id = new_job(data, name=merged.get("-J", ["NONAME"])[-1], queue=queue,
                         project=merged["-P"][-1], nodes=int(merged.get("-nnodes", ["1"])[-1]),
                         minutes=lsf_minutes(time_arg), cwd=merged.get("-cwd", [os.getcwd()])[-1],
                         output=merged.get("-o", [""])[-1])
    print(f"Job <{job_id}> is submitted to queue <{queue}>.")


def lsf_record(job: dict[str, Any], fields: list[str]) -> dict[str, str]:
    stat = LSF_STATE.get(job["state"]) or ("DONE" if job["exit"] == 0 else "EXIT")
    remaining = left(job)
    values = {"jobid": job["id"], "stat": stat, "user": job["owner"], "queue": job["queue"],
              "job_name": job["name"], "proj_name": job["project"],
              "nexec_host": str(job["nodes"] + 1) if stat != "PEND" else "",
              "runtimelimit": f"{float(job['minutes']):.1f}/batch1",
              "time_left": "" if remaining is None else f"{int(remaining // 60)}:{int(remaining % 60):02d} L",
              "exit_code": str(job["exit"]) if stat == "EXIT" else "",
              "run_time": "0 second(s)"}
    return {f.upper(): values[f] for f in fields}


def lsf_bjobs(args: list[str]) -> None:
    opts, ids = parse_options(args, {"-u", "-o"}, {"-json", "-a"})
    fields = opts.get("-o", ["jobid stat"])[-1].split()
    bad = [f for f in fields if f not in LSF_FIELDS]
    if bad:
        fail(f"{bad[0]}: Illegal field name", 255)
    if "-json" not in opts:
        fail("bjobs (fake): only -json output is implemented")
    with state() as data:
        advance(data)
        records: list[dict[str, str]] = []
        for job_id in ids or list(data["jobs"]):
            job = data["jobs"].get(job_id)
            if job is None:
                records.append({"JOBID": job_id, "ERROR": f"Job <{job_id}> is not found"})
            elif ids or job["owner"] in opts.get("-u", [user()]):
                records.append(lsf_record(job, fields))
    if not records:
        fail("No unfinished job found", 255)
    print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2))


def lsf_bkill(args: list[str]) -> None:
    _, ids = parse_options(args, {"-s"})
    with state() as data:
        for job_id in ids:
            job = data["jobs"].get(job_id)
            if job is None:
                fail(f"Job <{job_id}>: No matching job found", 255)
            if job["state"] == "ended":
                fail(f"Job <{job_id}>: Job has already finished", 255)
            job.update(state="ended", exit=130)
            print(f"Job <{job_id}> is being terminated")


TOOLS = {("pbs", "qsub"): pbs_qsub, ("pbs", "qstat"): pbs_qstat, ("pbs", "qdel"): pbs_qdel,
         ("cobalt", "qsub"): cobalt_qsub, ("cobalt", "qstat"): cobalt_qstat,
         ("cobalt", "qdel"): cobalt_qdel,
         ("lsf", "bsub"): lsf_bsub, ("lsf", "bjobs"): lsf_bjobs, ("lsf", "bkill"): lsf_bkill}


def main() -> None:
    dialect = "lsf" if TOOL in ("bsub", "bjobs", "bkill") else os.environ.get("BALSAM_FAKE_SCHED", "")
    if (dialect, TOOL) not in TOOLS:
        fail(f"{TOOL} (fake): set BALSAM_FAKE_SCHED to pbs or cobalt")
    if os.environ.get("BALSAM_FAKE_SCHED_HANG") == TOOL:
        time.sleep(3600)
    if os.environ.get("BALSAM_FAKE_SCHED_FAIL") == TOOL:
        fail(f"{TOOL}: cannot connect to server fakeserver (errno=111)", 1)
    TOOLS[(dialect, TOOL)](sys.argv[1:])
