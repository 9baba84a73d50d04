"""A throwaway ``sshd`` on localhost for the transfer tests and benchmark.

A fresh host key and user key, an ``sshd`` on a free port of 127.0.0.1 with its own config
(run as the current user, root or not; ``-E`` writes its log, where each authenticated
connection is one ``Accepted publickey`` line), and an ssh_config(5) file naming it
``balsam-test-remote`` for rsync and scp (``ssh -F``). :func:`start` raises
:class:`Unavailable` with the reason when sshd, ssh-keygen, rsync or scp is missing.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

HOST = "balsam-test-remote"


class Unavailable(Exception):
    """This machine cannot run the throwaway sshd (the reason is the message)."""


@dataclass
class Sshd:
    """A running throwaway sshd: its process, port, log file and client config file."""

    proc: subprocess.Popen
    port: int
    log: str
    config: str

    def connections(self) -> int:
        """How many clients have authenticated so far."""
        with open(self.log, errors="replace") as fh:
            return sum("Accepted publickey" in line for line in fh)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: str) -> Sshd:
    """Start sshd with keys and config under ``directory`` (created); wait until it answers."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    missing = [p for p, found in (("sshd", sshd), ("ssh-keygen", shutil.which("ssh-keygen")),
                                  ("rsync", shutil.which("rsync")), ("scp", shutil.which("scp")))
               if not found]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (tests/run.sh installs "
                          "openssh-server and rsync as root)")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o700)
    keygen = shutil.which("ssh-keygen")
    host_key, user_key = os.path.join(directory, "host_key"), os.path.join(directory, "user_key")
    for key in (host_key, user_key):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", key], check=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    shutil.copy(user_key + ".pub", os.path.join(directory, "authorized_keys"))
    with open(host_key + ".pub") as fh:
        host_pub = " ".join(fh.read().split()[:2])
    with open(os.path.join(directory, "known_hosts"), "w") as fh:
        fh.write(f"{HOST} {host_pub}\n")
    port, log = _free_port(), os.path.join(directory, "sshd.log")
    server_config = os.path.join(directory, "sshd_config")
    with open(server_config, "w") as fh:
        fh.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                 f"AuthorizedKeysFile {directory}/authorized_keys\nPidFile {directory}/sshd.pid\n"
                 "LogLevel VERBOSE\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n"
                 "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                 "MaxStartups 200\nMaxSessions 200\nSubsystem sftp internal-sftp\n")
    config = os.path.join(directory, "ssh_config")
    with open(config, "w") as fh:
        fh.write(f"Host {HOST}\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
                 f"  IdentityFile {user_key}\n  IdentitiesOnly yes\n  HostKeyAlias {HOST}\n"
                 f"  UserKnownHostsFile {directory}/known_hosts\n  StrictHostKeyChecking yes\n"
                 "  BatchMode yes\n  LogLevel ERROR\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([sshd, "-D", "-f", server_config, "-E", log],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    server = Sshd(proc, port, log, config)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"sshd exited with code {proc.returncode}: "
                              f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}")
        probe = subprocess.run(["ssh", "-F", config, HOST, "true"], capture_output=True,
                               timeout=10, stdin=subprocess.DEVNULL)
        if probe.returncode == 0:
            return server
        time.sleep(0.1)
    server.stop()
    raise Unavailable(f"sshd on port {port} did not accept the test key: "
                      f"{probe.stderr.decode(errors='replace').strip()[-300:]}")
