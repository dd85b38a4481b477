"""Small values and appends against Redis and a bare Ray actor (2-node cluster).

- ``set_many`` / ``get_many`` of 10,000 ids of 100 B vs a redis-py pipeline of SET / GET;
- one ``get`` vs a bare Ray actor call returning the same 100 bytes;
- 100,000 appends of 200 B over 100 ids: the buffered writer vs unbuffered ``append`` vs
  Redis APPEND in a pipeline.
"""

from __future__ import annotations

import argparse
import os
import time

import ray

import shoveling_ray as sr
from common import Report, parse_args, start, stop, timed
from redis_server import RedisServer


@ray.remote(num_cpus=0)
class Bare:
    def __init__(self):
        self.data = {}

    def set(self, key, value):
        self.data[key] = value

    def get(self, key):
        return self.data[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, {"ids": 200, "appends": 2000, "repeat": 1})

    server = RedisServer()
    r = server.client
    cluster = start(nodes=2, object_store_mb=512)
    cache = sr.Cache("bench-small")
    report = Report("small")
    n = args.ids
    data = {f"key:{i}": os.urandom(100) for i in range(n)}

    def redis_set():
        pipe = r.pipeline(transaction=False)
        for k, v in data.items():
            pipe.set(k, v)
        pipe.execute()

    def redis_get():
        pipe = r.pipeline(transaction=False)
        for k in data:
            pipe.get(k)
        return pipe.execute()

    keys = list(data)
    base = timed(redis_set, args.repeat)
    ours = timed(lambda: cache.set_many(data), args.repeat)
    report.add(f"set_many {n} x 100 B vs redis pipeline SET", n / ours, n / base, "ops/s", 1.0)
    base = timed(redis_get, args.repeat)
    ours = timed(lambda: cache.get_many(keys), args.repeat)
    report.add(f"get_many {n} x 100 B vs redis pipeline GET", n / ours, n / base, "ops/s", 1.0)
    assert cache.get_many(keys[:10]) == {k: data[k] for k in keys[:10]}

    # one get vs a bare actor call, both to an actor on this node
    here = ray.get_runtime_context().get_node_id()
    bare = Bare.options(scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, False)).remote()
    key = next(k for k in keys if cache.node_id(k) == here)
    ray.get(bare.set.remote(key, data[key]))
    calls = 500
    # Interleaved rounds, so that both see the same background load on a shared machine.
    base_rounds, our_rounds = [], []
    for _ in range(2 * args.repeat):
        base_rounds.append(timed(lambda: [ray.get(bare.get.remote(key)) for _ in range(calls)], 1, 0))
        our_rounds.append(timed(lambda: [cache.get(key) for _ in range(calls)], 1, 0))
    base, ours = sorted(base_rounds)[len(base_rounds) // 2], sorted(our_rounds)[len(our_rounds) // 2]
    report.add("single get 100 B vs a bare actor call (latency)", ours / calls * 1e6, base / calls * 1e6, "us",
               1 / 1.3, higher_is_better=False)
    print(f"  r.get sync: {timed(lambda: [r.get(key) for _ in range(calls)], 3) / calls * 1e6:.0f} us")

    # appends
    ids = [f"part:{i}" for i in range(100)]
    record = os.urandom(200)
    m = args.appends

    def buffered():
        with cache.writer() as w:
            for i in range(m):
                w.append(ids[i % 100], record)

    def redis_append():
        pipe = r.pipeline(transaction=False)
        for i in range(m):
            pipe.append(ids[i % 100], record)
        pipe.execute()

    cache.init(ids)
    ours = timed(buffered, 3)
    base = timed(redis_append, 3)
    report.add(f"writer: {m} appends of 200 B vs redis pipeline APPEND", m / ours, m / base, "ops/s", 1.0)
    few = 2000
    t = time.perf_counter()
    for i in range(few):
        cache.append(ids[i % 100], record)
    unbuffered = few / (time.perf_counter() - t)
    report.add("writer vs unbuffered append (one call each)", m / ours, unbuffered, "ops/s", None)
    total = sum(cache.size(i) for i in ids)
    assert total == (4 * m + few) * 200, total  # 1 warm-up + 3 timed writer runs, then the few

    cache.close()
    stop(cluster)
    server.stop()
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
