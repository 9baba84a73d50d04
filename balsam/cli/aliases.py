"""Classic flag spellings the CLI still accepts without showing them in ``--help``.

Every flag is spelled with hyphens (``--post-handle-error``); classic Balsam 0.5 spelled a few
with underscores or other names, and scripts written for it keep working. The table below is the
one place these hidden aliases live: before a parser reads its arguments, each alias is rewritten
to the flag it stands for (``--alias=value`` too). Visible aliases (``--force`` for ``--yes``)
are ordinary option strings, given where the flag is added.
"""
from __future__ import annotations

from collections.abc import Sequence

HIDDEN_ALIASES: dict[str, str] = {
    # classic 0.5 spelling           flag it stands for
    "--post_handle_error":           "--post-handle-error",           # balsam job, mkchild
    "--post_handle_timeout":         "--post-handle-timeout",         # balsam job, mkchild
    "--disable_auto_timeout_retry":  "--disable-auto-timeout-retry",  # balsam job, mkchild
    "--wall-minutes":                "--wall-time-minutes",           # balsam mkchild
}
"""Hidden alias -> the flag it stands for (in every command that has that flag)."""


def canonical_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with every hidden alias replaced by its flag; nothing after ``--`` is touched."""
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + list(argv[i:])
        flag, sep, value = token.partition("=")
        out.append(HIDDEN_ALIASES[flag] + sep + value if flag in HIDDEN_ALIASES else token)
    return out
