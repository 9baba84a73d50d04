"""The task watchdog never signals a process that took a reaped task's pid (session 21).

The hole: the watchdog read a group leader's start time when it read the ``+PGID`` line. Read
late (the watchdog stopped or starved while its owner reaped the task) and followed by no
``-PGID`` (the owner died first), it either found no leader (the group id was then signalled
unchecked at the end) or found an unrelated process that took the pid meanwhile, and stopped
it. Now the owner sends the start time, read before its reap (:mod:`.watchdog_lines`).

Each case runs in a PID namespace of its own (``unshare --user --pid``, where this user may
set ``ns_last_pid``), so that a process the test starts takes the reaped task's pid exactly.
The harness is the namespace's PID 1: when it exits, everything left in there is killed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]

OWNER = textwrap.dedent("""
    import fcntl, struct, subprocess, sys, termios, time
    from balsam.launcher.watchdog import Watchdog
    dog = Watchdog(0.5)
    print(dog.proc.pid, flush=True)
    sys.stdin.readline()  # the harness stopped the watchdog: it reads nothing from now on
    reaped = subprocess.Popen(["sleep", "600"], start_new_session=True)
    running = subprocess.Popen(["sleep", "600"], start_new_session=True)
    if sys.argv[1] == "new":
        dog.add_all([(reaped.pid, "reaped-job"), (running.pid, "running-job")])
    else:  # an owner of the version before: no start times in its lines
        dog.out.send(f"+{reaped.pid} reaped-job\\n+{running.pid} running-job\\n".encode())
    reaped.kill(); reaped.wait()  # reaped: this process dies before its "-" line
    print(reaped.pid, running.pid, flush=True)

    def read_all():  # until the watchdog has read everything in the pipe (bounded)
        end = time.monotonic() + 30
        while struct.unpack("i", fcntl.ioctl(dog.out.fd, termios.FIONREAD, b"1234"))[0]:
            assert time.monotonic() < end, "the watchdog reads nothing"
            time.sleep(0.005)

    if sys.stdin.readline().strip() == "sync":  # the watchdog runs again
        read_all()
        dog.out.send(b"#sync\\n")  # read only after it took in the lines before (one loop)
        read_all()
        print("synced", flush=True)
    time.sleep(600)
""")

HARNESS = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    when, fmt, owner_code = sys.argv[1:4]

    def state(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    def gone(pid):
        return state(pid) in ("Z", "X", "gone")

    def wait(predicate, what):
        end = time.monotonic() + 30
        while not predicate():
            try:  # PID 1 here: orphans are ours to reap
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            if time.monotonic() > end:
                sys.exit(f"timed out after 30 s waiting for {what}")
            time.sleep(0.01)

    owner = subprocess.Popen([sys.executable, "-c", owner_code, fmt], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dog = int(owner.stdout.readline())
    os.kill(dog, signal.SIGSTOP)
    wait(lambda: state(dog) == "T", "the watchdog to stop")
    owner.stdin.write("start\\n"); owner.stdin.flush()
    reaped, running = map(int, owner.stdout.readline().split())
    if when == "after-read":  # it reads the "+" lines now, the leader already reaped
        os.kill(dog, signal.SIGCONT)
        owner.stdin.write("sync\\n"); owner.stdin.flush()
        assert owner.stdout.readline().strip() == "synced"
    # Start times are in clock ticks: the other process must start in a later tick than the
    # task (a pid taken in the same 10 ms would be taken for the task; a real reuse takes a
    # wrap of all pids, far longer than a tick).
    tick = lambda: int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))
    printed = tick()
    wait(lambda: tick() > printed + 1, "a later clock tick")
    with open("/proc/sys/kernel/ns_last_pid", "w") as fh:  # the next pid: the reaped one's
        fh.write(str(reaped - 1))
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)  # leads its own group
    if other.pid != reaped:
        sys.exit(f"the pid {reaped} went to another process ({other.pid})")
    owner.kill(); owner.wait()
    if when == "before-read":  # it reads the "+" lines now, the pid already taken
        os.kill(dog, signal.SIGCONT)
    wait(lambda: gone(dog), "the watchdog to exit")
    print(json.dumps({"other_alive": not gone(other.pid), "running_gone": gone(running),
                      "reaped": reaped, "running": running, "said": owner.stderr.read()}))
""")


def namespaces_usable() -> str:
    """"" if this user can make a PID namespace and set its next pid here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(UNSHARE + ["sh", "-c", "echo 99 > /proc/sys/kernel/ns_last_pid"],
                           capture_output=True, text=True, timeout=60)
    return "" if probe.returncode == 0 else f"no user PID namespaces here: {probe.stderr.strip()}"


def run_case(when: str, fmt: str) -> dict:
    why = namespaces_usable()
    if why:
        pytest.skip(why)
    done = subprocess.run(UNSHARE + [sys.executable, "-c", HARNESS, when, fmt, OWNER],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("when,fmt", [("before-read", "new"), ("after-read", "new"),
                                      ("after-read", "old")])
def test_a_process_that_took_a_reaped_tasks_pid_survives_and_the_running_task_is_stopped(
        when: str, fmt: str) -> None:
    """``before-read``: the watchdog reads the ``+`` lines once another process has the reaped
    task's pid (it would read that process's start time); ``after-read``: while nobody has it
    (no start time), the pid being taken before the owner dies. ``old``: an owner of the
    version before (no start times in its lines: a leader gone when its line is read is never
    signalled); the running task's group is stopped all the same."""
    found = run_case(when, fmt)
    assert found["other_alive"], found
    assert found["running_gone"], found
    assert (f"exited with 1 task(s) still running: stopped process group(s) "
            f"{found['running']}\n") in found["said"], found
