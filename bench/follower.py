"""
A browser-like client of the live view, for bench/compare.sh (BENCH_FOLLOW):
it does what the sessions page does with the gateway at ``--url``: follows
``/api/events`` and, at most every 0.4 s while events arrive, fetches
``/api/sessions``; every 15 s, ``/api/stats``.  It counts what it got and
writes that to ``--report`` when stopped (SIGTERM).  ``--events-only``
follows the feed and fetches nothing (bench/instructions.sh --follow: the
fetches come at a rate per second, not per call, so under callgrind's
slowdown they would weigh fifty times what they do in service).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--events-only", action="store_true")
    options = parser.parse_args()
    where = urlsplit(options.url)
    counts = {"events": 0, "sessions_fetches": 0, "stats_fetches": 0, "bytes": 0}
    dirty = threading.Event()

    def stop(*_: object) -> None:
        with open(options.report, "w") as handle:
            json.dump(counts, handle)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)

    def fetcher() -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
        last_stats = 0.0
        while True:
            dirty.wait()
            dirty.clear()
            connection.request("GET", "/api/sessions?q=&offset=0&limit=50")
            counts["bytes"] += len(connection.getresponse().read())
            counts["sessions_fetches"] += 1
            if time.monotonic() - last_stats > 15:
                connection.request("GET", "/api/stats")
                counts["bytes"] += len(connection.getresponse().read())
                counts["stats_fetches"] += 1
                last_stats = time.monotonic()
            time.sleep(0.4)  # the page's debounce

    if not options.events_only:
        threading.Thread(target=fetcher, daemon=True).start()
    connection = http.client.HTTPConnection(where.hostname, where.port)
    connection.request("GET", "/api/events")
    response = connection.getresponse()
    for line in response:
        counts["bytes"] += len(line)
        if line.startswith(b"event:"):
            counts["events"] += 1
            dirty.set()


if __name__ == "__main__":
    main()
