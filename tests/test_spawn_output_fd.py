"""The output descriptor each start path opens itself (``O_NONBLOCK``, session 18) and hands to
the child: closed in the caller on every path, a start refused for its environment included,
and the child's stdout whatever descriptor number ``open`` returned (the lowest free one: 0 in
a worker whose stdin is closed, as some MPI launchers and daemons leave it). No timing: each
child's output is read after it was reaped."""
from __future__ import annotations

import pytest
from test_spawn_chain_races import descriptors

from balsam.launcher import libc_spawn, spawn_threads

glibc = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


@glibc
@pytest.mark.parametrize("env, extra", [
    ({"PATH": "/bin"}, {"BAD": "a\0b"}),  # a NUL in a task's own variable
    ({"PATH": "/bin"}, {"": "x"}),  # an empty name among its variables
    ({"PATH": "/bin", "": "x"}, {}),  # ... in the whole environment given (MPI mode)
])
def test_a_start_refused_for_its_environment_leaves_no_descriptor_open(tmp_path, env, extra):
    out = str(tmp_path / "t.out")
    lib = libc_spawn.private()
    assert lib is not None
    encoded = libc_spawn.EncodedEnv({"PATH": "/bin"}) if "" not in env else env
    before = descriptors()
    for _ in range(3):
        with pytest.raises(OSError):
            libc_spawn.spawn("/bin/true", ["true"], encoded, str(tmp_path), out, (), extra, lib)
    assert descriptors() == before
