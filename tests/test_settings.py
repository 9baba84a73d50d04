"""``settings.yml`` is checked against a schema: unknown keys and wrong types are one line naming
the file, the key and the closest valid key; the file ``balsam init`` writes is valid; a bad
``server-info`` is one line too."""
from __future__ import annotations

import json
import re

import pytest

from balsam.db import dbsettings, serverinfo
from balsam.errors import BalsamError
from balsam.platform import machines

QUEUE = ("{min_nodes: 1, max_nodes: 2, min_minutes: 1, max_minutes: 30, max_queued: 1, "
         "max_running: 1, max_total_nodes: 2}")

BAD = [
    ("local_node: 4", "unknown key `local_node` (did you mean `local_nodes`?)"),
    ("launcher:\n  lease_seconds: abc", "`launcher.lease_seconds` must be a whole number, not 'abc'"),
    ("launcher:\n  heartbeat_seconds: abc", "`launcher.heartbeat_seconds` must be a number, not 'abc'"),
    ("launcher:\n  lease_second: 30",
     "unknown key `launcher.lease_second` (did you mean `launcher.lease_seconds`?)"),
    ("service:\n  cycle_second: 3",
     "unknown key `service.cycle_second` (did you mean `service.cycle_seconds`?)"),
    ("server:\n  prot: 5432", "unknown key `server.prot` (did you mean `server.port`?)"),
    ("server:\n  port: 99999", "`server.port` must be at most 65535, not 99999"),
    ("server:\n  port: '5432'", "`server.port` must be a whole number, not '5432'"),
    (f"queues:\n  q: {QUEUE[:-1]}, max_queud: 2}}",
     "unknown key `queues.q.max_queud` (did you mean `queues.q.max_queued`?)"),
    ("queues:\n  q: {min_nodes: 1}", "missing key `queues.q.max_nodes`"),
    ("scheduler: slrum", "`scheduler` must be one of local, slurm, pbs, cobalt, lsf, not 'slrum' "
                         "(did you mean 'slurm'?)"),
    ("mpi: mpihc", "`mpi` must be one of mpich, openmpi, srun, aprun, jsrun, pals, direct, not 'mpihc' "
                   "(did you mean 'mpich'?)"),
    ("cores_per_node: true", "`cores_per_node` must be a whole number, not True"),
    ("local_nodes: 0", "`local_nodes` must be at least 1, not 0"),
    ("launcher: 5", "`launcher` must be a mapping, not 5"),
    ("queues: 5", "`queues` must be a mapping, not 5"),
    ("queues:\n  q: 5", "`queues.q` must be a mapping, not 5"),
    ("project: 1234", "`project` must be a string, not 1234"),
    ("service:\n  cycle_seconds: 0", "`service.cycle_seconds` must be greater than 0, not 0"),
    ("colour: blue", "unknown key `colour` (valid keys: machine, scheduler, mpi, mpi_executable, "
                     "cores_per_node, gpus_per_node, local_nodes, project, queues, launcher, "
                     "service, server, transfers)"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[0].split(":")[0] + str(i) for i, b in enumerate(BAD)])
def test_a_bad_setting_is_one_line_naming_the_file_the_key_and_the_closest_valid_key(
        tmp_path, text, message):
    (tmp_path / "settings.yml").write_text(text + "\n")
    with pytest.raises(BalsamError) as err:
        dbsettings.load(str(tmp_path))
    assert str(err.value) == f"{tmp_path / 'settings.yml'}: {message}"


def test_whole_numbers_are_numbers_and_missing_keys_take_the_defaults(tmp_path):
    (tmp_path / "settings.yml").write_text("launcher:\n  heartbeat_seconds: 2\nmpi_executable: "
                                           "/opt/mpich/bin/mpiexec\n")
    loaded = dbsettings.load(str(tmp_path))
    assert loaded["launcher"]["heartbeat_seconds"] == 2.0
    assert isinstance(loaded["launcher"]["heartbeat_seconds"], float)
    assert loaded["launcher"]["lease_seconds"] == 60
    assert loaded["mpi_executable"] == "/opt/mpich/bin/mpiexec"
    assert loaded["service"] == {"cycle_seconds": 10.0, "transition_threads": 2}
    assert loaded["server"]["port"] == 0 and loaded["local_nodes"] == 1


def test_no_file_means_every_default(tmp_path):
    loaded = dbsettings.load(str(tmp_path))
    assert loaded == dict(dbsettings.defaults(), queues=machines.load("local").queue_settings())


@pytest.mark.parametrize("name", machines.names())
def test_the_file_init_writes_holds_every_key_of_the_schema_and_loads_back(tmp_path, name):
    import yaml

    text = dbsettings.render_default(str(tmp_path), machine=name)
    (tmp_path / "settings.yml").write_text(text)
    loaded = dbsettings.load(str(tmp_path))
    raw = yaml.safe_load(text)
    assert set(raw) == set(dbsettings.defaults())
    for section in ("launcher", "service", "server"):
        assert raw[section] == loaded[section] == dbsettings.defaults()[section]
    assert loaded["mpi_executable"] == "" and loaded["project"] == ""


@pytest.mark.parametrize("port,shown", [("abc", "'abc'"), (99999, "99999"), (True, "True")])
def test_a_server_info_port_that_is_not_a_port_is_one_line_naming_the_key_and_file(
        tmp_path, port, shown):
    (tmp_path / serverinfo.FILENAME).write_text(json.dumps({"host": "h", "port": port}))
    with pytest.raises(BalsamError, match=re.escape(
            f"{tmp_path / 'server-info'}: `port` must be a whole number from 1 to 65535, not {shown}")):
        serverinfo.read(str(tmp_path))
    (tmp_path / serverinfo.FILENAME).write_text(json.dumps({"host": "", "port": None}))
    assert serverinfo.read(str(tmp_path))["port"] is None
