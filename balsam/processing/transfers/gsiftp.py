"""Legacy GridFTP (``gsiftp://`` URLs, ``globus:gsiftp://``): ``globus-url-copy`` per item,
as classic Balsam did (kept for sites that still run GridFTP; Globus Transfer is
``globus://``, :mod:`.globus_task`)."""
from __future__ import annotations

import os
from collections.abc import Sequence

from balsam.processing import transfer
from balsam.processing.transfers import Context, Item, Result
from balsam.processing.transfers.local import size_of


def send(items: Sequence[Item], ctx: Context) -> dict[int, Result]:
    """Copy each item with its own globus-url-copy; a :class:`Result` per item."""
    results = {}
    for item in items:
        try:
            if item.direction == "in":
                arrived = transfer.stage_in(item.source, item.destination, timeout=ctx.timeout)
                results[item.id] = Result(files=len(arrived))
            else:
                workdir, name = os.path.split(item.source)
                transfer.stage_out(workdir, name, item.destination, timeout=ctx.timeout)
                results[item.id] = Result(size=size_of(item.source))
        except transfer.TransferError as exc:
            results[item.id] = Result(str(exc))
    return results
