"""What a read over the HTTP endpoint costs against ``cache.get`` (2-node cluster).

For 100 B and 1 MB bytes values held on this process's node: ``cache.get`` (one actor call)
against ``GET /v1/caches/<cache>/ids/<id>`` on that node's endpoint over one kept-alive
connection (``http.client``), interleaved rounds, median of each. The ratio is our HTTP read's
rate over ``cache.get``'s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import urllib.parse

import ray

import shoveling_ray as sr
from common import Report, parse_args, start, stop, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, {"calls": 20, "repeat": 1})

    cluster = start(nodes=2, object_store_mb=512)
    cache = sr.Cache("bench-http", http=True)
    report = Report("http")
    here = ray.get_runtime_context().get_node_id()
    netloc = urllib.parse.urlsplit(cache.endpoints()[here]).netloc
    host, port = netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    for label, size in (("100 B", 100), ("1 MB", 1 << 20)):
        cache_id = next(i for i in (f"{label}/{k}" for k in range(10_000)) if cache.node_id(i) == here)
        value = os.urandom(size)
        cache.set(cache_id, value)
        path = f"/v1/caches/bench-http/ids/{urllib.parse.quote(cache_id, safe='')}"

        def over_http():
            for _ in range(args.calls):
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
            assert response.status == 200 and body == value

        def with_get():
            for _ in range(args.calls):
                body = cache.get(cache_id)
            assert body == value

        ours_rounds, base_rounds = [], []
        for _ in range(args.repeat):  # interleaved: both see the same background load
            ours_rounds.append(timed(over_http, 1, 1))
            base_rounds.append(timed(with_get, 1, 1))
        ours, base = sorted(ours_rounds)[args.repeat // 2], sorted(base_rounds)[args.repeat // 2]
        report.add(f"HTTP GET {label} vs cache.get on the holder's node", args.calls / ours, args.calls / base,
                   "reads/s", None)

    conn.close()
    cache.close()
    stop(cluster)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
