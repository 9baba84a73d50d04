"""No test starts a task that can wait forever: the loops of task commands and scripts written
by tests end on their own (``tests/gates.py``), so a test interrupted midway leaves nothing
running for hours beside later tests and benchmarks."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gates import CAP_SECONDS, forever_sh, gate_sh

TESTS = Path(__file__).resolve().parent
UNBOUNDED = [
    re.compile(r"while \[ ! -e [^]]*\] *; *do"),  # a gate wait with nothing else to end it
    re.compile(r"while (:|true) *; *do"),
    re.compile(r"while not os\.path\.exists\([^)]*\):"),
]
"""Loops in task commands (shell and function tasks) that only the test could end."""


def test_no_task_loop_in_the_tests_waits_without_a_bound():
    found = []
    for path in sorted(TESTS.rglob("*")):
        if path.suffix not in (".py", ".sh") or path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in UNBOUNDED):
                found.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert found == [], "unbounded loops (use tests/gates.py):\n" + "\n".join(found)


def test_the_bounded_loops_wait_for_their_gate_and_end_on_their_own(tmp_path):
    gate = tmp_path / "gate"
    assert UNBOUNDED[0].search(f"while [ ! -e {gate} ]; do sleep 1; done")  # the check bites
    waiting = subprocess.Popen(["sh", "-c", f"{gate_sh(str(gate), 0.01)}; echo through"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.poll() is None  # no gate yet: still waiting (it waits ten minutes)
        gate.touch()
        assert waiting.communicate(timeout=60) == ("through\n", None)
    finally:
        waiting.kill()
        waiting.wait()
    # The caps, counted in naps of the given length: ten minutes whatever the nap.
    assert f'"$_i" -lt {round(CAP_SECONDS / 0.01)} ]' in gate_sh("x", 0.01)
    assert f'"$_i" -lt {round(CAP_SECONDS / 0.1)} ]' in forever_sh(0.1)
    capped = subprocess.run(["sh", "-c", forever_sh(0.1).replace(str(round(CAP_SECONDS / 0.1)),
                                                                 "3") + "; echo $_i"],
                            capture_output=True, text=True, timeout=60)
    assert capped.stdout == "3\n"
