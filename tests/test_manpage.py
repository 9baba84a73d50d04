"""The balsam(1) man page is generated from the live argparse parser and documents every command."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from balsam.cli.main import build_parser


def roff(text: str) -> str:
    """How argparse-manpage writes text in the page (dashes escaped)."""
    return text.replace("-", "\\-")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The page written by the documented command, ``python -m balsam.cli.manpage -o FILE``."""
    out = tmp_path_factory.mktemp("man") / "balsam.1"
    proc = subprocess.run([sys.executable, "-m", "balsam.cli.manpage", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"wrote {out}"
    return out.read_text()


def test_page_has_the_header_name_and_synopsis_of_balsam(page: str) -> None:
    import balsam

    assert page.startswith('.TH BALSAM "1" ')
    assert f'"balsam {balsam.__version__}" "Balsam Manual"' in page.splitlines()[0]
    assert "balsam \\- a database\\-backed HPC workflow engine" in page
    assert ".SH SYNOPSIS\n.B balsam\n" in page


def test_page_names_every_registered_command_with_its_own_section(page: str) -> None:
    commands = subcommands(build_parser())
    assert {"init", "app", "job", "ls"} <= set(commands)  # the parser is really populated
    for name, sub in commands.items():
        assert f"\\fBbalsam\\fR \\fI\\,{roff(name)}\\/\\fR" in page, f"{name} missing from COMMANDS"
        assert f".SH COMMAND \\fI\\,'balsam {roff(name)}'\\/\\fR" in page, f"no section for {name}"
        assert roff(sub.description or "") in page


def test_page_documents_every_option_of_every_command(page: str) -> None:
    parsers = [build_parser(), *subcommands(build_parser()).values()]
    checked = 0
    for parser in parsers:
        for action in parser._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert f"\\fB{roff(flag)}\\fR" in page, f"{parser.prog} {flag} missing"
                checked += 1
    assert checked >= 20


@pytest.mark.parametrize("flag", ["--version", "--traceback", "--pg-bin", "--yes", "--wf",
                                  "--state", "--recursive"])
def test_page_documents_known_flags_of_issue_2(page: str, flag: str) -> None:
    assert f"\\fB{roff(flag)}\\fR" in page


def test_page_lists_environment_variables_and_files(page: str) -> None:
    for name in ("BALSAM_DB_PATH", "BALSAM_LS_FIELDS", "BALSAM_LS_LIMIT", "BALSAM_PG_BIN"):
        assert f".TP\n\\fB{roff(name)}\\fR\n" in page
    assert "databases.json" in page


def test_page_renders_without_groff_warnings(page: str, tmp_path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed, so the rendering cannot be checked")
    path = tmp_path / "balsam.1"
    path.write_text(page)
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""


def test_install_writes_where_man_finds_it(tmp_path) -> None:
    prefix = tmp_path / "venv"
    code = ("import sys; sys.prefix = sys.argv[1]; from balsam.cli import manpage; "
            "sys.exit(manpage.main(['--install']))")
    proc = subprocess.run([sys.executable, "-c", code, str(prefix)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    written = prefix / "share" / "man" / "man1" / "balsam.1"
    assert written.read_text().startswith(".TH BALSAM")
    assert os.path.isfile(written)


def test_stdout_is_the_default_and_a_bad_path_is_one_line_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "balsam.cli.manpage"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(".TH BALSAM")
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "balsam.cli.manpage", "-o", str(blocker / "x.1")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("python -m balsam.cli.manpage: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
