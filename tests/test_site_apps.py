"""Site app classes (balsam.site): command templates, parameters, class checks and loading
app files from <site>/apps, without a database."""
from __future__ import annotations

import os
import shlex
import shutil

import pytest
from conftest import make_public_tmpdir

from balsam.errors import NotFound
from balsam.site import AppDefinitionError, ApplicationDefinition, ParameterError, loader


class Hello(ApplicationDefinition):
    command_template = "echo hello {{ name }}"


class Sim(ApplicationDefinition):
    command_template = "sim --n {{ n }} --mode {{ mode }}"
    parameters = {"mode": "fast", "n": {"required": True, "help": "steps"},
                  "seed": {"default": 7}}


@pytest.fixture
def site():
    path = make_public_tmpdir("balsam-site-")
    os.mkdir(os.path.join(path, "apps"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_app(site: str, name: str, text: str) -> str:
    path = os.path.join(site, "apps", name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_template_variables_are_required_parameters():
    assert Hello.resolve_parameters({"name": "x"}) == {"name": "x"}
    with pytest.raises(ParameterError, match="missing required parameter.* name"):
        Hello.resolve_parameters({})


def test_unknown_parameter_is_refused_naming_the_known_ones():
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) nmae .*parameters: name"):
        Hello.resolve_parameters({"nmae": "x"})


def test_declared_defaults_fill_missing_values():
    assert Sim.resolve_parameters({"n": 3}) == {"n": 3, "mode": "fast", "seed": 7}
    assert Sim.render_command(Sim.resolve_parameters({"n": 3})) == "sim --n 3 --mode fast"


def test_values_are_shell_quoted_so_each_stays_one_word():
    command = Hello.render_command({"name": "world 3 out of 10!; rm -rf /"})
    assert shlex.split(command) == ["echo", "hello", "world 3 out of 10!; rm -rf /"]


def test_a_template_syntax_error_names_the_class_and_line():
    class Bad(ApplicationDefinition):
        command_template = "echo {{ name "

    with pytest.raises(AppDefinitionError, match="Bad.command_template line 1"):
        Bad.check()


def test_an_empty_template_and_bad_declarations_are_class_errors():
    class Empty(ApplicationDefinition):
        command_template = "  "

    class BadParam(ApplicationDefinition):
        command_template = "echo"
        parameters = {"x": {"requried": True}}

    class BadEnv(ApplicationDefinition):
        command_template = "echo"
        environment_variables = {"PATH": "/a:/b"}

    class BadSlot(ApplicationDefinition):
        command_template = "echo"
        transfers = {"input": {"direction": "sideways"}}

    for cls, message in ((Empty, "non-empty"), (BadParam, "unknown key.*requried"),
                         (BadEnv, "may not contain ':'"), (BadSlot, "direction")):
        with pytest.raises(AppDefinitionError, match=message):
            cls.check()


def test_environment_variables_become_the_classic_environ_string():
    class Env(ApplicationDefinition):
        command_template = "echo"
        environment_variables = {"OMP_PLACES": "cores", "MODE": "a=b"}

    assert Env.environ_string() == "OMP_PLACES=cores:MODE=a=b"


def test_hook_overrides_are_detected():
    class WithHooks(ApplicationDefinition):
        command_template = "echo"

        def handle_error(self) -> None:
            self.job.state = "RESTART_READY"

    assert WithHooks.overrides("handle_error")
    assert not WithHooks.overrides("preprocess")


def test_apps_load_by_module_and_class_name(site):
    write_app(site, "demo.py", "from balsam.site import ApplicationDefinition\n"
              "class Hello(ApplicationDefinition):\n    command_template = 'echo {{ name }}'\n")
    app = loader.load_app(site, "demo.Hello")
    assert app.name == "demo.Hello" and app.cls.__name__ == "Hello"
    assert len(app.source_hash) == 64
    with pytest.raises(NotFound, match="defines no ApplicationDefinition subclass 'Nope'"):
        loader.load_app(site, "demo.Nope")
    with pytest.raises(NotFound, match="no app file"):
        loader.load_app(site, "missing.Hello")
    with pytest.raises(NotFound, match="must be module.Class"):
        loader.load_app(site, "Hello")


def test_a_syntax_error_names_file_and_line_and_other_apps_still_load(site):
    write_app(site, "good.py", "from balsam.site import ApplicationDefinition\n"
              "class A(ApplicationDefinition):\n    command_template = 'echo a'\n")
    bad = write_app(site, "broken.py", "from balsam.site import ApplicationDefinition\n\n"
                    "class B(ApplicationDefinition)\n    command_template = 'x'\n")
    raising = write_app(site, "raising.py", "x = 1\nraise RuntimeError('no license')\n")
    found = loader.load_site(site)
    assert list(found.apps) == ["good.A"]
    assert found.errors[bad].startswith(f"{bad} line 3: syntax error")
    assert found.errors[raising] == (f"{raising} line 2: importing it raised RuntimeError: "
                                     "no license")
    with pytest.raises(loader.AppFileError, match="line 3"):
        loader.load_app(site, "broken.B")


def test_an_invalid_class_is_an_error_of_its_file(site):
    path = write_app(site, "inv.py", "from balsam.site import ApplicationDefinition\n"
                     "class C(ApplicationDefinition):\n    command_template = '{{ a'\n")
    assert "app inv.C" in loader.load_site(site).errors[path]


def test_two_sites_with_the_same_module_name_do_not_collide(site):
    other = make_public_tmpdir("balsam-site-")
    try:
        os.mkdir(os.path.join(other, "apps"))
        for path, word in ((site, "one"), (other, "two")):
            write_app(path, "demo.py", "from balsam.site import ApplicationDefinition\n"
                      f"class H(ApplicationDefinition):\n    command_template = 'echo {word}'\n")
        assert loader.load_app(site, "demo.H").cls.command_template == "echo one"
        assert loader.load_app(other, "demo.H").cls.command_template == "echo two"
    finally:
        shutil.rmtree(other, ignore_errors=True)


class Scratch(ApplicationDefinition):
    command_template = "sim"
    cleanup_files = ["*.tmp", "**/*.chk"]


class ScratchWithHook(Scratch):
    def postprocess(self):
        self.job.state = "POSTPROCESSED"


def test_cleanup_files_without_a_postprocess_hook_need_no_hook_runner(site):
    from balsam.site import registry

    plain = registry.app_row(site, loader.LoadedApp("s.Scratch", Scratch, "s.py", "h"), "HOOKS")
    hooked = registry.app_row(site, loader.LoadedApp("s.ScratchWithHook", ScratchWithHook,
                                                     "s.py", "h"), "HOOKS")
    assert shlex.split(plain["postprocess"])[1:] == ["-m", "balsam.processing.cleanup", "*.tmp",
                                                     "**/*.chk"]
    assert hooked["postprocess"] == "HOOKS postprocess"  # the runner cleans up after the hook


def test_the_cleanup_script_removes_matching_files_only_inside_the_workdir(site):
    from balsam.processing import scripts
    from balsam.site import registry

    work, outside = os.path.join(site, "work"), os.path.join(site, "keep.tmp")
    os.makedirs(os.path.join(work, "deep", "er"))
    for name in ("a.tmp", "b.txt", "deep/er/c.chk", "d.chk"):
        open(os.path.join(work, name), "w").close()
    os.mkdir(os.path.join(work, "dir.tmp"))
    open(outside, "w").close()
    os.symlink(outside, os.path.join(work, "link.tmp"))  # its real path is outside: kept
    result = scripts.run_script("postprocess", registry.cleanup_command(Scratch.cleanup_files),
                                work, dict(os.environ), timeout=60)
    assert result.ok, result.tail
    assert sorted(os.listdir(work)) == ["b.txt", "deep", "dir.tmp", "link.tmp", "postprocess.log"]
    assert os.listdir(os.path.join(work, "deep", "er")) == [] and os.path.exists(outside)
    assert "removed 3 file(s) matching cleanup_files" in result.tail
