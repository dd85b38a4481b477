"""The parts :class:`~shoveling_ray.Cache` is made of, each named for what it does; internal.

- :mod:`.checks`: the argument checks that run before anything is sent.
- :mod:`.lifecycle`: connecting to Ray, starting, finding and closing a cache's coordinator.
- :mod:`.calls`: :class:`~.calls.Calls`, how one handle's calls reach the coordinator and the
  node actors (the router, deadlines, Consul health, retries after members changed); what a
  pickled handle carries.
- :mod:`.replies`: the per-id answers of a write or read turned into the errors users see.
- :mod:`.locality`: which node is nearest to an id's data (no Ray).
- :mod:`.scan`: :meth:`Cache.scan_ids`'s streams of pages, merged.

``Cache`` keeps the public methods and their docstrings; these modules hold no public API.
"""
