"""The CLI's start-up shortcuts change nothing a user sees: a command parsed by a parser that
registered only it, and tables rendered column-wise, give the same results as before."""
from __future__ import annotations

import random

import pytest

from balsam.cli import main as cli_main
from balsam.core.render import table


def table_by_rows(rows: list, columns: list, headers=None) -> str:
    """The row-by-row rendering ``render.table`` replaced (its reference)."""
    headers = headers or columns
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out.append("-" * len(out[0]))
    out += [" | ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(out)


def test_table_matches_the_row_by_row_rendering_on_random_input():
    rng = random.Random(16)
    values = [None, 0, 12345, "", " ", "x", "trailing  ", "é" * 7, "{}", "a|b", True]
    for n in (0, 1, 2, 50):
        for columns in (["a"], ["a", "bb", "ccc"], []):
            rows = [{c: rng.choice(values) for c in columns if rng.random() < 0.9}
                    for _ in range(n)]
            assert table(rows, columns) == table_by_rows(rows, columns)
            headers = [c.upper() * 3 for c in columns]
            assert table(rows, columns, headers) == table_by_rows(rows, columns, headers)


@pytest.mark.parametrize("command, argv", [
    ("ls", ["ls", "--state", "RUNNING", "--wf", "w", "--verbose"]),
    ("job", ["--traceback", "job", "--name", "x", "--workflow", "w", "--application", "a",
             "--num-nodes", "3"]),
    ("rm", ["rm", "jobs", "--all"]),
    ("ls", ["ls", "wf"]),
])
def test_a_command_parses_the_same_with_only_its_own_parser(command, argv):
    assert cli_main.command_of(argv) == command
    alone = vars(cli_main.build_parser(cli_main.command_of(argv)).parse_args(argv))
    full = vars(cli_main.build_parser().parse_args(argv))
    alone.pop("parser"), full.pop("parser")
    assert alone == full


@pytest.mark.parametrize("argv", [[], ["--help"], ["-V", "ls"], ["nosuch"], ["completion", "bash"],
                                  ["--traceback"]])
def test_help_version_unknown_commands_and_completion_get_the_full_parser(argv):
    assert cli_main.command_of(argv) is None


def test_a_usage_error_reads_the_same_from_the_single_command_parser(capsys):
    for only in ("ls", None):
        with pytest.raises(SystemExit) as exit_:
            cli_main.build_parser(only).parse_args(["ls", "--no-such-flag"])
        assert exit_.value.code == 2
    first, second = capsys.readouterr().err.split("\n")[:2]
    assert first == second and "--no-such-flag" in first


@pytest.mark.parametrize("columns", [None, "50", "200", "0", "-3", "wide", ""])
def test_help_is_as_wide_as_argparse_would_make_it_without_importing_shutil(monkeypatch, columns):
    import shutil

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli_main.help_width() == shutil.get_terminal_size().columns - 2
    parser = cli_main.build_parser("ls")
    assert parser._get_formatter()._width == shutil.get_terminal_size().columns - 2


def test_balsam_ls_starts_without_the_modules_only_other_commands_need(balsam_db_path):
    """`balsam ls` runs without shutil (argparse's terminal width), uuid (and the platform module
    it loads), tempfile (writing server-info), Django or the ORM models, dataclasses (with
    inspect and ast), ssl (psycopg2 asks for it; see balsam.db.connect.driver), socket or
    getpass: each is start-up time."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from balsam.cli.main import main\n"
            "status = main(['ls'])\n"
            "print(json.dumps([status] + sorted(m for m in ('shutil', 'uuid', 'platform', "
            "'tempfile', 'django', 'balsam.core.models', 'dataclasses', 'inspect', 'ssl', "
            "'socket', 'getpass') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(proc.stdout.splitlines()[-1]) == [0]


def test_psycopg2_without_ssl_still_connects_and_leaves_ssl_importable(balsam_db_path):
    """The first psycopg2 import skips Python's ssl module; connections work, and a later
    `import ssl` (another library's) is unaffected. With other threads running, or ssl already
    loaded, it is a plain import."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, threading\n"
            "threads = sys.argv[1] == 'threads'\n"
            "stop = threading.Event()\n"
            "if threads:\n"
            "    threading.Thread(target=stop.wait).start()\n"
            "from balsam.db.connect import connect, driver\n"
            "driver()\n"
            "had_ssl = 'ssl' in sys.modules\n"
            "conn = connect(sys.argv[2])\n"
            "cur = conn.cursor(); cur.execute('SELECT 41 + 1'); answer = cur.fetchone()[0]\n"
            "conn.close(); stop.set()\n"
            "import ssl\n"
            "print(json.dumps([had_ssl, answer, ssl.OPENSSL_VERSION_INFO[0] >= 1]))\n")
    for mode, had_ssl in (("alone", False), ("threads", True)):
        proc = subprocess.run([sys.executable, "-c", code, mode, balsam_db_path],
                              capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(proc.stdout.splitlines()[-1]) == [had_ssl, 42, True], mode


def test_a_launchers_and_a_masters_database_load_psycopg2_without_ssl(balsam_db_path):
    """The launcher's Database (its first transaction) and the serial master's (made in rank 0's
    main thread, before its boot thread starts, so psycopg2 loads at once) import psycopg2 through
    ``driver()``: no ``ssl`` (~5 ms of CPU in each at every launcher start)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from balsam.db.database import Database\n"
            "from balsam.launcher.metered import MeteredDatabase\n"
            "kind = MeteredDatabase if sys.argv[1] == 'metered' else Database\n"
            "db = kind(sys.argv[2], 'balsam-test')\n"
            "loaded = 'psycopg2' in sys.modules\n"
            "answer = db.run(lambda cur: (cur.execute('SELECT 41 + 1'), cur.fetchone())[1][0])\n"
            "db.close()\n"
            "print(json.dumps([loaded, answer, 'ssl' in sys.modules]))\n")
    for kind, loaded in (("plain", False), ("metered", True)):
        proc = subprocess.run([sys.executable, "-c", code, kind, balsam_db_path],
                              capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(proc.stdout.splitlines()[-1]) == [loaded, 42, False], kind


def test_connections_skip_the_handshakes_the_server_never_takes_up(monkeypatch):
    from balsam.db.connect import negotiation_params

    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGGSSENCMODE", raising=False)
    assert negotiation_params("127.0.0.1", 170011) == {"gssencmode": "disable", "sslmode": "disable"}
    # A remote server may offer TLS; a libpq older than PostgreSQL 12 has no gssencmode.
    assert negotiation_params("db.example.org", 170011) == {"gssencmode": "disable"}
    assert negotiation_params("127.0.0.1", 110005) == {"sslmode": "disable"}
    # The user's own choice stands.
    monkeypatch.setenv("PGSSLMODE", "require")
    monkeypatch.setenv("PGGSSENCMODE", "prefer")
    assert negotiation_params("127.0.0.1", 170011) == {}
