"""``balsam report --plot``: throughput, utilization and state-time plots in one PNG.

matplotlib is an optional extra (``pip install 'balsam-classic[plot]'``); without it the command says
so on one line and exits 2 before touching the database.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from balsam.core.states import State
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.cli.progress import Steps
    from balsam.core.analytics_scope import Filters
    from balsam.db.dbapi import Cursor


def require_matplotlib() -> None:
    """Raise :class:`BalsamError` with the install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BalsamError("--plot needs matplotlib: pip install 'balsam-classic[plot]' "
                          "(or pip install matplotlib)")


def write_plots(cursor: Cursor, filters: Filters, path: str, steps: Steps) -> None:
    """Three panels: finished jobs (cumulative), running tasks and busy nodes (time-averaged per
    bucket), and total hours spent per state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from balsam.core import analytics

    steps.step("throughput")
    tp = analytics.throughput(cursor, filters)
    steps.step("utilization")
    ut = analytics.utilization(cursor, filters)
    steps.step("state times")
    st = analytics.state_times(cursor, filters)
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 10))
    if tp is not None:
        ax1.step(tp.buckets.times, tp.run_done_cumulative, where="post", label=State.RUN_DONE.value)
        ax1.step(tp.buckets.times, tp.finished_cumulative, where="post", label=State.JOB_FINISHED.value)
        ax1.legend()
    ax1.set_title(f"Throughput (cumulative; buckets of {tp.buckets.seconds:g} s)" if tp
                  else "Throughput (no events)")
    if ut is not None:
        ax2.step(ut.buckets.times, ut.avg_busy_nodes, where="post", label="busy nodes")
        ax2.step(ut.buckets.times, ut.avg_running_tasks, where="post", label="running tasks")
        ax2.legend()
    ax2.set_title("Utilization (average per bucket)")
    names = [s for s, v in st.items() if v.total_seconds > 0]
    ax3.barh(names, [st[s].total_seconds / 3600 for s in names])
    ax3.set_title("Time spent in each state (hours, all jobs)")
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise BalsamError(f"cannot write {path}: {exc.strerror or exc}")
    finally:
        plt.close(fig)
