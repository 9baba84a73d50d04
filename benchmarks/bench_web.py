"""Benchmark: dashboard pages over 1,000,000 jobs, server time per request.

The campaign is bench_analytics's (seeded; ~4.4 state events per job, three workflows, two apps),
loaded with COPY and then ``VACUUM ANALYZE``. Requests go through Django's test client with the
dashboard's full middleware stack (session cookie, CSRF, token check, template rendering), so
the time is the server's, without the network. The charts JSON is timed with its cache cleared
(it is fetched by the page after it has loaded, and cached for 10 s). Goal (issue 6): the jobs
page (first page, filtered page) and the overview under 300 ms each.

Run: ``python benchmarks/bench_web.py [-n 1000000] [--rounds 5]``
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_analytics import load  # noqa: E402

TOKEN = "bench-token-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="jobs (default 1000000)")
    parser.add_argument("--rounds", type=int, default=5, help="requests per page (default 5)")
    args = parser.parse_args()
    print(machine_line())
    from balsam.web import server

    server.configure(TOKEN, 8100)  # before the DB init configures plain Django settings
    with throwaway_db() as path:
        from balsam.db.connect import connect

        conn = connect(path)
        t0 = time.perf_counter()
        load(conn, args.n)
        conn.close()
        print(f"# {args.n:,} jobs loaded in {time.perf_counter() - t0:.0f} s")
        from django.test import Client

        from balsam.web import charts

        client = Client(HTTP_HOST="localhost")
        assert client.get(f"/?token={TOKEN}").status_code == 302
        first = client.get("/jobs/").content.decode()
        nxt = re.search(r'href="\?([^"]+)" id="next"', first)
        assert nxt
        deep = "/jobs/?" + nxt.group(1).replace("&amp;", "&")
        job_id = re.search(r'href="/jobs/([0-9a-f-]{36})/"', first).group(1)  # type: ignore[union-attr]
        pages = [
            ("overview", "/", None),
            ("charts JSON (uncached)", "/api/charts/", charts._cache.clear),
            ("jobs: first page", "/jobs/", None),
            ("jobs: next page (keyset)", deep, None),
            ("jobs: state=FAILED wf=physics", "/jobs/?state=FAILED&wf=physics", None),
            ("jobs: app=simB sort=name", "/jobs/?app=simB&sort=name&dir=asc", None),
            ("jobs: name contains j12345", "/jobs/?name=j12345", None),
            ("jobs: id prefix", f"/jobs/?id={job_id[:6]}", None),
            ("job page", f"/jobs/{job_id}/", None),
            ("workflows", "/workflows/", None),
        ]
        worst = 0.0
        for name, url, before in pages:
            times = []
            for _ in range(args.rounds):
                if before:
                    before()
                t = time.perf_counter()
                resp = client.get(url)
                times.append(time.perf_counter() - t)
                assert resp.status_code == 200, (url, resp.status_code)
            med = statistics.median(times) * 1000
            if not name.startswith("charts"):
                worst = max(worst, med)
            print(f"{name:<32} median {med:7.1f} ms   (runs: "
                  f"{', '.join(f'{x * 1000:.0f}' for x in times)})")
    print(f"slowest page: {worst:.1f} ms   (goal < 300 ms each)")


if __name__ == "__main__":
    main()
