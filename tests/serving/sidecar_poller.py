"""Sample a gonka-serve health sidecar into a JSON-lines file until killed (for the real-vLLM leg).

A separate process on purpose: on a 2-core machine a loaded vLLM can starve the test driver's
own threads, and a burst of requests may come and go between two of its samples.

    python sidecar_poller.py HEALTH_URL OUT.jsonl [INTERVAL_S]
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    url, out = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
    t0 = time.monotonic()
    with open(out, "a", buffering=1) as fh:
        while True:
            try:
                body = urllib.request.urlopen(url, timeout=10).read()
            except urllib.error.HTTPError as exc:  # 503 while not ready still carries the JSON
                body = exc.read()
            except OSError:
                body = b'{"state": "down"}'
            try:
                report = json.loads(body)
            except ValueError:
                report = {"state": "unparsable"}
            queue = report.get("queue") or {}
            sample = {
                "t": round(time.monotonic() - t0, 3),
                "state": report.get("state"),
                "running": queue.get("running") or 0.0,
                "waiting": queue.get("waiting") or 0.0,
                "metrics_age_s": report.get("metrics_age_s"),
            }
            fh.write(json.dumps(sample) + "\n")
            time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
