"""Allocation detection (balsam.platform.allocation) and Slurm hostlist expansion
(balsam.platform.hostlist), from environment dicts and temporary node files."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys

import pytest

from balsam.errors import BalsamError
from balsam.platform import hostlist
from balsam.platform.allocation import (
    Allocation,
    AllocationError,
    detect,
    parse_duration,
    run_command,
)

NOW = 1_700_000_000.0


class Recorder:
    """A command runner that records calls and answers from a fixed reply (or raises it)."""

    def __init__(self, reply=None):
        self.reply = reply
        self.calls = []

    def __call__(self, argv, timeout):
        self.calls.append((list(argv), timeout))
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


def nodefile(tmp_path, text, name="nodes"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- hostlist ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, hosts", [
    ("login1", ["login1"]),
    ("nid[001-003,007],login1", ["nid001", "nid002", "nid003", "nid007", "login1"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[098-101]-ib", ["n098-ib", "n099-ib", "n100-ib", "n101-ib"]),
    ("x[1,3],y[2-3],z", ["x1", "x3", "y2", "y3", "z"]),
    ("[1-2]", ["1", "2"]),
    ("c[5]", ["c5"]),
    ("  n[1-2]\n", ["n1", "n2"]),
])
def test_hostlist_expands_slurm_syntax(text, hosts):
    assert hostlist.expand(text) == hosts


@pytest.mark.parametrize("text, reason", [
    ("", "empty host list"),
    ("a[1-2", "unclosed '['"),
    ("a]1", "unmatched ']'"),
    ("a[[1]]", "nested '['"),
    ("a[1-]", "bad range '1-'"),
    ("a[x]", "bad range 'x'"),
    ("a[]", "bad range ''"),
    ("a[3-1]", "descending range '3-1'"),
    ("a,,b", "empty host name"),
    ("a,", "empty host name"),
    ("a b", "whitespace inside host list"),
    ("n[0-9999999]", "names more than 1000000 hosts"),
    ("n[0-999]m[0-9999]", "names more than 1000000 hosts"),
])
def test_hostlist_rejects_malformed_lists_with_a_reason(text, reason):
    with pytest.raises(ValueError, match=None) as err:
        hostlist.expand(text)
    assert reason in str(err.value)


# ---- Allocation record -------------------------------------------------------------------------

def allocation(n=4, end=None):
    return Allocation(tuple(f"h{i}" for i in range(n)), 8, 2, "slurm", "42", end)


def test_allocation_helpers_count_nodes_and_remaining_time():
    alloc = allocation(end=NOW + 90)
    assert alloc.num_nodes == 4
    assert alloc.remaining_seconds(NOW) == 90
    assert alloc.remaining_seconds(NOW + 100) == 0
    assert allocation(end=None).remaining_seconds(NOW) == math.inf
    with pytest.raises(dataclasses.FrozenInstanceError):
        alloc.hosts = ("x",)


@pytest.mark.parametrize("offset, limit, hosts", [
    (0, None, ("h0", "h1", "h2", "h3")),
    (1, None, ("h1", "h2", "h3")),
    (1, 2, ("h1", "h2")),
    (3, 1, ("h3",)),
    (0, 4, ("h0", "h1", "h2", "h3")),
])
def test_sliced_keeps_the_requested_nodes_and_everything_else(offset, limit, hosts):
    sliced = allocation(end=NOW).sliced(offset, limit)
    assert sliced == Allocation(hosts, 8, 2, "slurm", "42", NOW)


@pytest.mark.parametrize("offset, limit, message", [
    (-1, None, "--offset-nodes -1 is out of range: the allocation has 4 node(s), so it must be 0..3"),
    (4, None, "--offset-nodes 4 is out of range: the allocation has 4 node(s), so it must be 0..3"),
    (0, 0, "--limit-nodes 0 is out of range: 4 node(s) remain after --offset-nodes 0 "
           "(allocation of 4)"),
    (2, 3, "--limit-nodes 3 is out of range: 2 node(s) remain after --offset-nodes 2 "
           "(allocation of 4)"),
])
def test_sliced_out_of_range_says_which_option_and_the_valid_range(offset, limit, message):
    with pytest.raises(AllocationError) as err:
        allocation().sliced(offset, limit)
    assert str(err.value) == message


@pytest.mark.parametrize("kwargs, fragment", [
    ({"hosts": ()}, "at least one node"),
    ({"hosts": ("a", "")}, "at least one node"),
    ({"cores_per_node": 0}, "cores_per_node must be >= 1"),
    ({"gpus_per_node": -1}, "gpus_per_node >= 0"),
    ({"scheduler": "sge"}, "unknown scheduler 'sge'"),
])
def test_allocation_rejects_impossible_records(kwargs, fragment):
    fields = dict(hosts=("a",), cores_per_node=1, gpus_per_node=0, scheduler="local",
                  scheduler_id="", end_time=None)
    fields.update(kwargs)
    with pytest.raises(AllocationError, match=None) as err:
        Allocation(**fields)
    assert fragment in str(err.value)
    assert isinstance(err.value, BalsamError)


# ---- local -------------------------------------------------------------------------------------

def test_local_machine_emulates_nodes_named_after_this_host():
    alloc = detect({}, cores_per_node=64, gpus_per_node=4, local_nodes=3, run=Recorder())
    assert alloc == Allocation((socket.gethostname(),) * 3, 64, 4, "local", "", None)


def test_cores_default_to_this_machines_cpu_count():
    assert detect({}).cores_per_node == os.cpu_count()
    assert detect({}, cores_per_node=-1).cores_per_node == os.cpu_count()
    assert detect({}).gpus_per_node == 0


def test_detect_reads_only_the_mapping_it_is_given(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.setenv("BALSAM_ALLOCATION_END", "5")
    alloc = detect({}, local_nodes=1)
    assert (alloc.scheduler, alloc.end_time) == ("local", None)


def test_balsam_allocation_end_overrides_the_end_time():
    assert detect({"BALSAM_ALLOCATION_END": "1700000123.5"}).end_time == 1700000123.5
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_END_TIME": "1700000999",
           "BALSAM_ALLOCATION_END": "1700000500"}
    assert detect(env).end_time == 1700000500


@pytest.mark.parametrize("env, message", [
    ({"BALSAM_ALLOCATION_END": "tomorrow"},
     "BALSAM_ALLOCATION_END='tomorrow' is not a time in epoch seconds"),
    ({"BALSAM_ALLOCATION_END": "nan"}, "BALSAM_ALLOCATION_END='nan' is not a time in epoch seconds"),
    ({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_END_TIME": "x"},
     "SLURM_JOB_END_TIME='x' is not a time in epoch seconds"),
])
def test_garbled_end_times_are_errors_naming_the_variable(env, message):
    with pytest.raises(AllocationError) as err:
        detect(env, run=Recorder())
    assert str(err.value) == message


def test_zero_local_nodes_is_an_error():
    with pytest.raises(AllocationError, match="local_nodes must be >= 1, not 0"):
        detect({}, local_nodes=0)


# ---- Slurm -------------------------------------------------------------------------------------

def test_slurm_hosts_id_and_end_time_from_the_environment():
    run = Recorder("should not be asked")
    env = {"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "nid[001-003,007],login1",
           "SLURM_JOB_END_TIME": "1700003600"}
    alloc = detect(env, cores_per_node=128, gpus_per_node=4, run=run)
    assert alloc == Allocation(("nid001", "nid002", "nid003", "nid007", "login1"), 128, 4,
                               "slurm", "123", 1700003600.0)
    assert run.calls == []


def test_slurm_older_nodelist_variable_is_accepted():
    env = {"SLURM_JOB_ID": "5", "SLURM_NODELIST": "a[1-2]b[3-4]", "SLURM_JOB_END_TIME": "1"}
    assert detect(env).hosts == ("a1b3", "a1b4", "a2b3", "a2b4")


@pytest.mark.parametrize("reply, end", [
    ("1-00:00:10\n", NOW + 86410),
    ("2:03:04\n", NOW + 7384),
    ("05:00\n", NOW + 300),
    ("UNLIMITED\n", None),
    ("NOT_SET\n", None),
    ("", None),
    (None, None),
    (OSError("no squeue"), None),
])
def test_slurm_end_time_comes_from_squeue_time_left_or_is_unknown(reply, end):
    run = Recorder(reply)
    alloc = detect({"SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "n1"}, now=NOW, run=run)
    assert alloc.end_time == end
    assert run.calls == [(["squeue", "-h", "-j", "123", "-o", "%L"], 10.0)]


@pytest.mark.parametrize("env, message", [
    ({"SLURM_JOB_ID": "1"}, "SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not"),
    ({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": ""},
     "SLURM_JOB_NODELIST='' is not a Slurm host list: empty host list"),
    ({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "nid[1-3"},
     "SLURM_JOB_NODELIST='nid[1-3' is not a Slurm host list: unclosed '[' in 'nid[1-3'"),
])
def test_slurm_missing_or_garbled_node_list_is_an_error_naming_it(env, message):
    with pytest.raises(AllocationError) as err:
        detect(env, run=Recorder())
    assert str(err.value) == message


def test_slurm_is_detected_before_the_other_schedulers(tmp_path):
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "s1", "SLURM_JOB_END_TIME": "9",
           "PBS_JOBID": "2", "PBS_NODEFILE": nodefile(tmp_path, "p1\n"), "COBALT_JOBID": "3",
           "COBALT_PARTNAME": "1", "LSB_JOBID": "4", "LSB_MCPU_HOSTS": "b 1 l1 2"}
    assert (detect(env).scheduler, detect(env).hosts) == ("slurm", ("s1",))
    del env["SLURM_JOB_ID"]
    assert (detect(env, run=Recorder()).scheduler) == "pbs"
    del env["PBS_JOBID"]
    assert detect(env).scheduler == "cobalt"
    del env["COBALT_JOBID"]
    assert detect(env).scheduler == "lsf"


# ---- PBS ---------------------------------------------------------------------------------------

def qstat_json(job_id="77.pbs01", walltime="01:00:00", used="00:10:00"):
    job = {"Resource_List": {"walltime": walltime}, "resources_used": {"walltime": used}}
    if used is None:
        del job["resources_used"]
    return json.dumps({"pbs_version": "2022.1", "Jobs": {job_id: job}})


def test_pbs_hosts_are_the_unique_lines_of_the_nodefile_in_order(tmp_path):
    path = nodefile(tmp_path, "x3001\nx3001\nx3001\nx3002\n\nx3002\nx3000\n")
    run = Recorder(qstat_json())
    alloc = detect({"PBS_JOBID": "77.pbs01", "PBS_NODEFILE": path}, cores_per_node=32, now=NOW,
                   run=run)
    assert alloc == Allocation(("x3001", "x3002", "x3000"), 32, 0, "pbs", "77.pbs01", NOW + 3000)
    assert run.calls == [(["qstat", "-f", "-F", "json", "77.pbs01"], 10.0)]


@pytest.mark.parametrize("reply, end", [
    (qstat_json(used=None), NOW + 3600),
    (qstat_json(walltime="100:00:00", used="99:59:00"), NOW + 60),
    (qstat_json(used="02:00:00"), NOW),
    (None, None),
    ("qstat: Unknown Job Id", None),
    (json.dumps({"Jobs": {}}), None),
    (json.dumps({"Jobs": {"1": {"Resource_List": {}}}}), None),
    (json.dumps({"Jobs": {"1": {"Resource_List": {"walltime": "soon"}}}}), None),
    (json.dumps([1, 2]), None),
    (OSError("no qstat"), None),
])
def test_pbs_end_time_from_qstat_json_or_unknown(tmp_path, reply, end):
    env = {"PBS_JOBID": "77.pbs01", "PBS_NODEFILE": nodefile(tmp_path, "n1\n")}
    assert detect(env, now=NOW, run=Recorder(reply)).end_time == end


def test_pbs_nodefile_problems_are_errors_naming_the_variable(tmp_path):
    with pytest.raises(AllocationError, match="^PBS_JOBID is set but PBS_NODEFILE is not$"):
        detect({"PBS_JOBID": "1"})
    missing = str(tmp_path / "gone")
    with pytest.raises(AllocationError) as err:
        detect({"PBS_JOBID": "1", "PBS_NODEFILE": missing})
    assert str(err.value) == f"PBS_NODEFILE={missing!r} cannot be read: No such file or directory"
    empty = nodefile(tmp_path, "\n \n")
    with pytest.raises(AllocationError) as err:
        detect({"PBS_JOBID": "1", "PBS_NODEFILE": empty})
    assert str(err.value) == f"PBS_NODEFILE={empty!r} lists no hosts"


# ---- Cobalt ------------------------------------------------------------------------------------

def test_cobalt_partname_ranges_become_nid_hostnames():
    env = {"COBALT_JOBID": "400", "COBALT_PARTNAME": "1001-1003,1030", "COBALT_ENDTIME": "1700007200"}
    alloc = detect(env, cores_per_node=64)
    assert alloc == Allocation(("nid01001", "nid01002", "nid01003", "nid01030"), 64, 0, "cobalt",
                               "400", 1700007200.0)
    assert detect({"COBALT_JOBID": "1", "COBALT_PARTNAME": "7"}).hosts == ("nid00007",)
    assert detect({"COBALT_JOBID": "1", "COBALT_PARTNAME": "7"}).end_time is None


def test_cobalt_nodefile_wins_and_may_use_commas_or_whitespace(tmp_path):
    path = nodefile(tmp_path, "cc012.cooley,cc013.cooley\ncc014.cooley cc012.cooley\n")
    env = {"COBALT_JOBID": "9", "COBALT_NODEFILE": path, "COBALT_PARTNAME": "thetagpu05"}
    assert detect(env).hosts == ("cc012.cooley", "cc013.cooley", "cc014.cooley")


@pytest.mark.parametrize("env, message", [
    ({"COBALT_JOBID": "9"}, "COBALT_JOBID is set but neither COBALT_NODEFILE nor COBALT_PARTNAME is"),
    ({"COBALT_JOBID": "9", "COBALT_PARTNAME": "thetagpu05"},
     "COBALT_PARTNAME='thetagpu05' is not a list of node ids: bad range 'thetagpu05' in "
     "'[thetagpu05]'"),
    ({"COBALT_JOBID": "9", "COBALT_PARTNAME": "5-3"},
     "COBALT_PARTNAME='5-3' is not a list of node ids: descending range '5-3' in '[5-3]'"),
    ({"COBALT_JOBID": "9", "COBALT_PARTNAME": "1", "COBALT_ENDTIME": "never"},
     "COBALT_ENDTIME='never' is not a time in epoch seconds"),
])
def test_cobalt_garbled_inputs_are_errors_naming_the_variable(env, message):
    with pytest.raises(AllocationError) as err:
        detect(env)
    assert str(err.value) == message


# ---- LSF ---------------------------------------------------------------------------------------

def test_lsf_hostfile_excludes_the_launch_node(tmp_path):
    path = nodefile(tmp_path, "batch3\n" + "a01n01\n" * 42 + "a01n02\n" * 42)
    alloc = detect({"LSB_JOBID": "555", "LSB_DJOB_HOSTFILE": path,
                    "LSB_MCPU_HOSTS": "ignored 1"}, cores_per_node=42, gpus_per_node=6)
    assert alloc == Allocation(("a01n01", "a01n02"), 42, 6, "lsf", "555", None)


@pytest.mark.parametrize("value, hosts", [
    ("batch2 1 a01n01 42 a01n02 42", ("a01n01", "a01n02")),
    ("hostA 16", ("hostA",)),
])
def test_lsf_mcpu_hosts_excludes_the_launch_node_unless_it_is_the_only_host(value, hosts):
    assert detect({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": value}).hosts == hosts


def test_lsf_end_time_only_from_the_balsam_override():
    env = {"LSB_JOBID": "1", "LSB_MCPU_HOSTS": "b 1 h 4"}
    assert detect(env).end_time is None
    assert detect({**env, "BALSAM_ALLOCATION_END": "1700000001"}).end_time == 1700000001


@pytest.mark.parametrize("env, message", [
    ({"LSB_JOBID": "1"}, "LSB_JOBID is set but neither LSB_DJOB_HOSTFILE nor LSB_MCPU_HOSTS is"),
    ({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": "b 1 h"},
     "LSB_MCPU_HOSTS='b 1 h' is not 'host slots host slots ...'"),
    ({"LSB_JOBID": "1", "LSB_MCPU_HOSTS": "b one"},
     "LSB_MCPU_HOSTS='b one' is not 'host slots host slots ...'"),
    ({"LSB_JOBID": "1", "LSB_DJOB_HOSTFILE": "/nonexistent/hostfile"},
     "LSB_DJOB_HOSTFILE='/nonexistent/hostfile' cannot be read: No such file or directory"),
])
def test_lsf_garbled_inputs_are_errors_naming_the_variable(env, message):
    with pytest.raises(AllocationError) as err:
        detect(env)
    assert str(err.value) == message


# ---- helpers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("1-02:03:04", 93784.0), ("02:03:04", 7384.0), ("100:00:00", 360000.0), ("03:04", 184.0),
    ("59", 59.0), ("UNLIMITED", None), ("INVALID", None), ("", None), ("1:2:3:4", None),
    ("x-01:00:00", None),
])
def test_parse_duration_reads_slurm_and_pbs_times(text, seconds):
    assert parse_duration(text) == seconds


def test_run_command_returns_stdout_only_on_success():
    assert run_command(["sh", "-c", "echo hello"], 5) == "hello\n"
    assert run_command(["sh", "-c", "echo partial; exit 3"], 5) is None
    assert run_command(["/nonexistent/squeue"], 5) is None
    assert run_command([sys.executable, "-c", "import time; time.sleep(5)"], 0.3) is None
