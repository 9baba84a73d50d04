"""``balsam completion bash|zsh``: the printed script, loaded into a real shell, completes
commands, flags and choices."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_balsam

BIN = os.path.dirname(sys.executable)
"""Where the ``balsam`` of this environment is (the completion script names that command)."""

BASH_COMPLETE = r"""
source <(balsam completion bash) || exit 3
complete -p balsam >/dev/null || exit 4
fn=$(complete -p balsam | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
for line in "$@"; do
    read -r -a COMP_WORDS <<< "$line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_LINE=$line COMP_POINT=${#line} COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )) COMPREPLY=()
    "$fn" balsam "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
    echo "${COMPREPLY[*]}"
done
"""

ZSH_COMPLETE = r"""
# Types "$1<TAB>" into an interactive zsh on a pseudo-terminal and prints each match offered
# (compadd is wrapped to report them; comppostfuncs says when the completion has finished).
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PROMPT= ; RPROMPT= ; unsetopt zle_bracketed_paste'
zpty -w z 'autoload -U compinit && compinit -u'
zpty -w z 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits; builtin compadd -A __hits "$@"
  (( $#__hits )) || return 1
  local h; for h in $__hits; do print -r -- "COMPLETION:$h"; done
  builtin compadd -Q -U ""
}'
zpty -w z '__end () { print -r -- "END$((1+1))"; }; comppostfuncs=(__end)'
zpty -w z 'eval "$(balsam completion zsh)"'
zpty -w z 'print -r -- READY$((1+1))'
line=""; while zpty -r z line; do [[ $line == *READY2* ]] && break; done
zpty -w -n z "$1"$'\t'
while zpty -r z line; do
  [[ $line == *COMPLETION:* ]] && print -r -- ${${line##*COMPLETION:}%%[$'\r\n']*}
  [[ $line == *END2* ]] && break
done
zpty -d z
"""

CASES = {
    "balsam lau": ["launcher"],
    "balsam l": ["launcher", "log", "ls"],
    "balsam ls --by-": ["--by-states"],
    "balsam completion ": ["bash", "zsh"],
    "balsam launcher --job-mode ": ["mpi", "serial"],
}


def shell_env() -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def test_bash_completes_commands_flags_and_choices() -> None:
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", BASH_COMPLETE, "bash", *CASES],
                          capture_output=True, text=True, env=shell_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    got = [sorted(line.split()) for line in proc.stdout.splitlines()]
    assert dict(zip(CASES, got)) == CASES


@pytest.mark.parametrize("line", list(CASES))
def test_zsh_completes_commands_flags_and_choices(line: str, tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (tests/run.sh installs it as root)")
    script = tmp_path / "complete.zsh"
    script.write_text(ZSH_COMPLETE)
    proc = subprocess.run(["zsh", "-f", str(script), line], capture_output=True, text=True,
                          env=shell_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == CASES[line]


def test_an_unknown_shell_is_a_one_line_error() -> None:
    r = run_balsam("completion", "fish")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("balsam completion: error: argument shell: invalid choice: 'fish' "
                        "(choose from 'bash', 'zsh') (see `balsam completion --help`)\n")


def test_without_shtab_the_error_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "shtab.py").write_text("raise ImportError('hidden for the test')\n")
    r = run_balsam("completion", "bash", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("balsam completion: error: completion scripts are generated with shtab: "
                        "pip install shtab\n")
