"""
How long the live view takes to index a large trace directory at start, and
how much memory it holds then (bench/README.md, "The live view").

    .venv/bin/python bench/ui_index.py --files 100000 [--dir DIR] [--keep] [--drop-caches]

It writes ``--files`` trace files (real trace documents of the session
simulator's traffic, from ``--templates`` or made here, each given its own
id, time and one of ``--sessions`` sessions), then, in a fresh process, starts
the index as the gateway does (its own thread, the real reactor) and reports
the time until it is ready and the process's peak resident memory, against
the same process before indexing.  ``--drop-caches`` (root) empties the page
cache first, so the files come from the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def template_documents() -> list[dict]:
    """
    Trace documents shaped as the trace middleware writes them: a
    conversation of a few turns, plain and streamed answers, usage.
    """
    documents = []
    rng = random.Random(7)
    words = "the gateway relays every call and keeps a trace of each one for later".split()
    for n in range(40):
        turns = []
        for t in range(1 + n % 6):
            turns.append({"role": "user", "content": " ".join(rng.choices(words, k=12 + t))})
            turns.append({"role": "assistant", "content": " ".join(rng.choices(words, k=30))})
        turns.pop()
        answer = " ".join(rng.choices(words, k=40))
        documents.append(
            {
                "id": "",
                "timestamp": "",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "session_id": "",
                "session_decision": "continued",
                "request": {
                    "method": "POST",
                    "path": "/v1/chat/completions",
                    "query": "",
                    "headers": {"content-type": ["application/json"], "authorization": ["[REDACTED]"]},
                    "body": {"model": "gpt-4o-mini", "messages": turns},
                },
                "response": {
                    "status": 200,
                    "headers": {"content-type": ["application/json"]},
                    "body": {
                        "id": "chatcmpl-x",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
                    },
                    "message": {"role": "assistant", "content": answer},
                },
                "usage": {"input_tokens": 120, "output_tokens": 40},
                "duration_ms": 812.4,
                "ttfb_ms": 95.1,
            }
        )
    return documents


def generate(directory: str, files: int, sessions: int) -> int:
    import orjson

    templates = template_documents()
    start = time.time() - files * 0.05
    total = 0
    for n in range(files):
        document = dict(templates[n % len(templates)])
        when = start + n * 0.05
        call_id = f"{n:032x}"
        document["id"] = call_id
        document["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
        document["session_id"] = f"sess_{n % sessions:024x}"
        data = orjson.dumps(document)
        total += len(data)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
        name = f"{stamp}.{int(when % 1 * 1e6):06d}Z-{call_id}.json"
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(data)
    return total


def measure(directory: str, max_calls: int) -> None:
    """
    The child process: index the directory as the gateway does.
    """
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from llmgate.ui.index import TraceIndex

    def status(field: str) -> float:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        return 0.0

    pool = ThreadPool(minthreads=0, maxthreads=1, name="llmgate-ui")
    pool.start()
    index = TraceIndex(
        reactor, directory, lambda f, *a: deferToThreadPool(reactor, pool, f, *a), max_calls=max_calls
    )
    before = status("VmRSS:")
    lag = {"worst": 0.0, "last": time.monotonic()}

    def tick() -> None:  # how long the reactor thread went without a turn
        now = time.monotonic()
        lag["worst"] = max(lag["worst"], now - lag["last"] - 0.01)
        lag["last"] = now
        if not index.ready:
            reactor.callLater(0.01, tick)

    def run() -> None:
        started = time.monotonic()
        cpu = time.process_time()
        lag["last"] = time.monotonic()
        tick()

        def done(_: object) -> None:
            result = {
                "calls": len(index.calls),
                "sessions": len(index.sessions),
                "seconds": round(time.monotonic() - started, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(status("VmRSS:"), 1),
                "peak_rss_mb": round(status("VmHWM:"), 1),
                "worst_loop_gap_ms": round(lag["worst"] * 1000, 1),
            }
            print(json.dumps(result), flush=True)
            pool.stop()
            reactor.stop()

        index.load().addCallback(done)

    reactor.callWhenRunning(run)
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=5_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        measure(options.measure, options.files)
        return
    directory = options.dir or tempfile.mkdtemp(prefix="llmgate-ui-index-")
    try:
        existing = [n for n in os.listdir(directory) if n.endswith(".json")]
        if len(existing) != options.files:
            for name in existing:
                os.unlink(os.path.join(directory, name))
            began = time.monotonic()
            size = generate(directory, options.files, options.sessions)
            print(
                f"wrote {options.files} trace files ({size / 1e6:.0f} MB, "
                f"{size / options.files / 1000:.1f} kB each) in {time.monotonic() - began:.0f} s",
                file=sys.stderr,
            )
        if options.drop_caches:
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as handle:
                handle.write("3\n")
        child = subprocess.run(
            [sys.executable, __file__, "--measure", directory, "--files", str(options.files)],
            check=True, capture_output=True, text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["files"] = options.files
        result["cold_cache"] = options.drop_caches
        print(json.dumps(result))
    finally:
        if not options.keep and options.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
