"""Status codes that cache actors return per id, so that no exception crosses Ray.

Every actor method that serves ids takes a list of items and returns one ``(status, value)``
per item. The second field of an item says how the client chose the node (``via``):
:data:`AT_HOME` (the id's home, the node its hash slot maps to), :data:`VIA_HOME` (where the
home redirected it) or :data:`VIA_CACHE` (a placement the client remembered). Only the home
creates an id by ``set`` / ``append``. A node that does not hold the id answers a read sent
``AT_HOME`` or ``VIA_HOME`` with :data:`MISS` (a redirected read that finds nothing raced a
``delete``), and anything else with :data:`REROUTE`: the client's placement was stale, or a
write must not recreate a deleted id away from its home, so the client asks the home again.
"""

VIA_CACHE, AT_HOME, VIA_HOME = 0, 1, 2

OK = 0  # value: the result
MISS = 1  # value: None; the id does not exist
REDIRECT = 2  # value: hex id of the node that holds the id (the home keeps a record)
REROUTE = 3  # value: None; not here, ask the home
FULL = 4  # value: (limit, used, needed, reason)
WRONG_TYPE = 5  # value: None; append to a value that is not bytes
UNAVAILABLE = 6  # value: (node, reason); the home could not reach the node that holds the id
LOST = 7  # value: hex id of the dead node that held the id's only copy

#: The answer of a write applied (one object, shared by every id that remembers it).
APPLIED = (OK, None)

#: Item methods whose batch is one pack of ids (:class:`~shoveling_ray.idpack.PackedIds`, the
#: first of its items) sent to the ids' home, answered with an array of node numbers instead of
#: a ``(status, value)`` per id: ``init``'s locate and place of ids of one copy.
PACKED = ("locate_ids", "place_ids")
