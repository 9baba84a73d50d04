"""Machine profiles (balsam.platform.machines): every shipped profile loads and its template
renders into a script `bash -n` accepts; validation names the bad key; the tiny placeholder
syntax refuses what it does not know; settings.yml carries the profile's queue policies; and
`balsam init --machine` selects a profile (or names the known ones)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_public_tmpdir, run_balsam

from balsam.db import cluster, dbsettings, serverinfo
from balsam.errors import BalsamError
from balsam.platform import machines
from balsam.platform.machines import MachineError, QueuePolicy

NAMES = ["generic-pbs", "generic-slurm", "local", "perlmutter-gpu", "polaris", "summit", "theta"]
FACTS = {  # scheduler, MPI flavour, cores and GPUs per node, default queue
    "local": ("local", "mpich", 0, 0, "local"),
    "generic-slurm": ("slurm", "srun", 0, 0, "debug"),
    "generic-pbs": ("pbs", "mpich", 0, 0, "workq"),
    "theta": ("cobalt", "aprun", 64, 0, "debug-flat-quad"),
    "summit": ("lsf", "jsrun", 42, 6, "batch"),
    "polaris": ("pbs", "pals", 32, 4, "debug"),
    "perlmutter-gpu": ("slurm", "srun", 64, 4, "debug"),
}
DIRECTIVES = {  # lines each rendered template must contain (project P1, 3 nodes, 90 minutes)
    "local": ["# Requested: queue Q1, project P1, 3 node(s), 90 minutes."],
    "generic-slurm": ["#SBATCH --account=P1", "#SBATCH --partition=Q1", "#SBATCH --nodes=3",
                      "#SBATCH --exclusive", "#SBATCH --time=90",
                      "#SBATCH --constraint=x --exclusive"],
    "perlmutter-gpu": ["#SBATCH --account=P1", "#SBATCH --qos=Q1", "#SBATCH --constraint=gpu",
                       "#SBATCH --nodes=3", "#SBATCH --time=90", "#SBATCH --gpus-per-node=4"],
    "generic-pbs": ["#PBS -A P1", "#PBS -q Q1", "#PBS -l select=3", "#PBS -l walltime=01:30:00",
                    "#PBS --constraint=x --exclusive"],
    "polaris": ["#PBS -A P1", "#PBS -q Q1", "#PBS -l select=3:system=polaris",
                "#PBS -l walltime=01:30:00", "#PBS -l filesystems=home:eagle"],
    "theta": ["#COBALT -A P1", "#COBALT -q Q1", "#COBALT -n 3", "#COBALT -t 90",
              "export PMI_NO_FORK=1"],
    "summit": ["#BSUB -P P1", "#BSUB -q Q1", "#BSUB -nnodes 3", "#BSUB -W 90",
               "#BSUB --constraint=x --exclusive"],
}


def values_for(machine: machines.Machine, **kw) -> dict[str, str]:
    args = dict(project="P1", queue="Q1", nodes=3, time_minutes=90, job_mode="mpi",
                db_path="/home/a b/db", balsam_bin="/opt/venv/bin", python="/opt/venv/bin/python3",
                sched_flags="--constraint=x --exclusive")
    args.update(kw)
    return machines.template_values(machine, **args)


def test_the_shipped_profiles_are_listed_and_load_with_their_facts():
    assert machines.names() == NAMES
    for name in NAMES:
        machine = machines.load(name)
        assert (machine.scheduler, machine.mpi, machine.cores_per_node, machine.gpus_per_node,
                machine.default_queue) == FACTS[name]
        assert machine.template == f"{name}.template.sh" and machine.name == name
        for policy in machine.queues.values():
            assert policy.min_nodes <= policy.max_nodes and policy.min_minutes <= policy.max_minutes


@pytest.mark.parametrize("name", NAMES)
def test_every_template_renders_into_a_valid_bash_script(name, tmp_path):
    machine = machines.load(name)
    text = machines.render(machine.template_text(), values_for(machine))
    script = tmp_path / "job.sh"
    script.write_text(text)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash" and "{{" not in text and "}}" not in text
    for line in DIRECTIVES[name]:
        assert line in lines, line
    assert "/opt/venv/bin/python3 -m balsam launcher --consume-all --job-mode mpi " \
           "--time-limit-minutes 88 &" in lines
    assert "export BALSAM_DB_PATH='/home/a b/db'" in lines
    original = lines.index('export BALSAM_ORIGINAL_PATH="$PATH"   # tasks get the user\'s PATH '
                           'back (balsam/core/jobenv.py)')
    assert original < lines.index('export PATH=/opt/venv/bin:"$PATH"')
    assert "trap 'kill -TERM \"$launcher\" 2>/dev/null' TERM INT" in lines
    # directives must all come before the first command, or the scheduler ignores them
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert not any(line.startswith(("#SBATCH", "#PBS", "#COBALT", "#BSUB"))
                   for line in lines[first_command:])


def test_template_values_quote_shell_words_and_compute_times():
    local = machines.load("local")
    values = values_for(local, wf_filter="it's mine", time_minutes=5, sched_flags="")
    assert values["wf_filter_flag"] == "--wf-filter 'it'\"'\"'s mine'"
    assert values["launcher_minutes"] == "4" and values["walltime"] == "00:05:00"
    assert values["sched_flags"] == "# (no extra scheduler flags)"
    assert values["db_path"] == "'/home/a b/db'" and values["gpus_per_node"] == "0"
    assert values_for(local, time_minutes=60)["launcher_minutes"] == "58"
    assert values_for(local, time_minutes=1)["launcher_minutes"] == "0.8"
    assert values_for(local, sched_flags=" -x ")["sched_flags"] == "# -x"
    assert values_for(local, project="")["project"] == ""  # the local scheduler needs none


@pytest.mark.parametrize("change, message", [
    ({"project": ""}, "a project (allocation) is needed to submit on theta"),
    ({"project": "a b"}, "project 'a b' may contain only"),
    ({"queue": "q\n#COBALT -n 9999"}, "queue 'q\\n#COBALT -n 9999' may contain only"),
    ({"nodes": 0}, "nodes must be a whole number >= 1, not 0"),
    ({"nodes": True}, "nodes must be a whole number >= 1, not True"),
    ({"time_minutes": 2.5}, "time_minutes must be a whole number >= 1, not 2.5"),
    ({"job_mode": "serialish"}, "job_mode must be one of mpi, serial, not 'serialish'"),
    ({"wf_filter": " "}, "a workflow filter must not be empty"),
])
def test_template_values_refuse_bad_input_naming_it(change, message):
    with pytest.raises(MachineError) as err:
        values_for(machines.load("theta"), **change)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("template, values, message", [
    ("x {{ nodes }} {{ cores }}", {"nodes": 1}, "template line 1: unknown placeholder {{ cores }}"),
    ("a\nb {{ nodes }}", {}, "template line 2: no value given for {{ nodes }}"),
    ("{{ nodes", {"nodes": 1}, "template line 1: malformed placeholder '{{ nodes'"),
    ("{{ nodes + 1 }}", {"nodes": 1}, "template line 1: malformed placeholder '{{ nodes + 1 }}'"),
    ("{{ nodes }}", {"nodes": 1, "extra": 2}, "unknown template value 'extra'"),
    ("{{ queue }}", {"queue": "a\nb"}, "template value queue may not contain a newline"),
])
def test_render_refuses_what_it_does_not_know(template, values, message):
    with pytest.raises(MachineError) as err:
        machines.render(template, values)
    assert str(err.value).startswith(message)


def test_render_substitutes_once_and_leaves_other_braces_alone():
    assert machines.render("n={{nodes}} q={{  queue  }} ${X} {x}", {"nodes": 2, "queue": "{{ nodes }}"}) \
        == "n=2 q={{ nodes }} ${X} {x}"


def raw_profile(name: str) -> dict:
    return json.loads((Path(machines.HERE) / f"{name}.json").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("mpi"), "missing key `mpi`"),
    (lambda p: p.update(colour="blue"), "unknown key `colour`"),
    (lambda p: p.update(scheduler="sge"), "`scheduler` must be one of local, slurm, pbs, cobalt, lsf"),
    (lambda p: p.update(mpi="mvapich"), "`mpi` must be one of mpich, openmpi, srun, aprun"),
    (lambda p: p.update(cores_per_node="64"), "`cores_per_node` must be a whole number >= 0"),
    (lambda p: p.update(default_queue="nope"), "`default_queue` 'nope' is not in `queues`"),
    (lambda p: p.update(template="../x.sh"), "`template` must be a file name beside the profile"),
    (lambda p: p.update(queues={}), "`queues` must be a non-empty mapping"),
    (lambda p: p["queues"]["default"].pop("max_running"), "`queues.default`: missing key `max_running`"),
    (lambda p: p["queues"]["default"].update(maxnodes=3), "`queues.default`: unknown key `maxnodes`"),
    (lambda p: p["queues"]["default"].update(max_nodes=10),
     "`queues.default`.max_nodes (10) is below min_nodes (128)"),
    (lambda p: p["queues"]["default"].update(min_nodes=0),
     "`queues.default`.min_nodes must be a whole number >= 1, not 0"),
    (lambda p: p["queues"]["default"].update(max_queued=-1),
     "`queues.default`.max_queued must be a whole number >= 0, not -1"),
    (lambda p: p["queues"]["default"].update(max_minutes=1.5),
     "`queues.default`.max_minutes must be a whole number >= 0, not 1.5"),
])
def test_profile_validation_names_the_bad_key(edit, message):
    profile = raw_profile("theta")
    edit(profile)
    with pytest.raises(MachineError) as err:
        machines.parse(profile, "theta", "theta.json")
    assert str(err.value).startswith("theta.json: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unknown_machine_lists_the_known_ones():
    with pytest.raises(MachineError) as err:
        machines.load("thetagpu")
    assert str(err.value) == f"unknown machine 'thetagpu' (one of {', '.join(NAMES)})"
    assert isinstance(err.value, BalsamError)


# ---- settings.yml ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_settings_of_every_profile_load_back_with_its_queue_policies(name, tmp_path):
    (tmp_path / "settings.yml").write_text(dbsettings.render_default(str(tmp_path), machine=name))
    settings = dbsettings.load(str(tmp_path))
    machine = machines.load(name)
    assert (settings["machine"], settings["scheduler"], settings["mpi"], settings["cores_per_node"],
            settings["gpus_per_node"], settings["project"]) == (
        name, machine.scheduler, machine.mpi, machine.cores_per_node, machine.gpus_per_node, "")
    assert settings["queues"] == machine.queue_settings()
    assert settings["launcher"] == dbsettings.defaults()["launcher"]


def test_settings_queues_replace_the_profiles_wholesale_and_are_validated(tmp_path):
    path = tmp_path / "settings.yml"
    path.write_text("machine: theta\n")
    assert list(dbsettings.load(str(tmp_path))["queues"]) == list(machines.load("theta").queues)
    path.write_text("machine: theta\nqueues:\n  mine: {min_nodes: 1, max_nodes: 2, min_minutes: 1,"
                    " max_minutes: 30, max_queued: 1, max_running: 1, max_total_nodes: 2}\n")
    assert dbsettings.load(str(tmp_path))["queues"] == {"mine": QueuePolicy(1, 2, 1, 30, 1, 1, 2).__dict__}
    path.write_text("queues:\n  mine: {min_nodes: 1}\n")
    with pytest.raises(BalsamError, match=re.escape(f"{path}: missing key `queues.mine.max_nodes`")):
        dbsettings.load(str(tmp_path))
    path.write_text("machine: my-cluster\n")
    with pytest.raises(BalsamError, match="no `queues` given and 'my-cluster' is not a shipped"):
        dbsettings.load(str(tmp_path))


# ---- balsam init --machine -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tmp_root(test_home):
    root = make_public_tmpdir("balsam-machines-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_init_with_an_unknown_machine_is_one_line_naming_the_known_ones_and_creates_nothing(tmp_root):
    path = os.path.join(tmp_root, "nope")
    proc = run_balsam("init", path, "--machine", "thetagpu")
    assert proc.returncode == 2
    assert proc.stderr == (f"balsam init: error: unknown machine 'thetagpu' (one of "
                           f"{', '.join(NAMES)})\n")
    assert not os.path.exists(path)


def test_init_help_names_every_shipped_machine():
    out = " ".join(run_balsam("init", "--help").stdout.split())
    for name in NAMES:
        assert name in out


@pytest.mark.slow
def test_init_with_a_machine_writes_its_settings_and_job_template(tmp_root):
    path = os.path.join(tmp_root, "polarisdb")
    proc = run_balsam("init", path, "--machine", "polaris")
    try:
        assert proc.returncode == 0, proc.stderr
        settings = dbsettings.load(path)
        assert (settings["machine"], settings["scheduler"], settings["mpi"],
                settings["cores_per_node"], settings["gpus_per_node"]) == ("polaris", "pbs", "pals", 32, 4)
        assert list(settings["queues"]) == ["debug", "debug-scaling", "prod", "preemptable"]
        template = Path(path, "job-template.sh").read_text()
        assert template == machines.load("polaris").template_text()
        os.unlink(os.path.join(path, "job-template.sh"))  # a DB made before templates existed
        again = run_balsam("init", path)
        assert again.returncode == 0, again.stderr
        assert Path(path, "job-template.sh").read_text() == template
    finally:
        if serverinfo.is_db_dir(path):
            cluster.stop(path)


def test_queue_settings_are_copies_a_caller_may_change():
    machine = machines.load("summit")
    settings = machine.queue_settings()
    settings["batch"]["max_nodes"] = 1
    assert machine.queues["batch"].max_nodes == 4608
    assert machine.queue_settings()["batch"]["max_nodes"] == 4608
