"""Status codes that cache actors return per id, so that no exception crosses Ray.

Every actor method that serves ids takes a list of items and returns one ``(status, value)``
per item. ``auth`` on an item says the client routed it authoritatively (to the id's home, or
where the home redirected it); an item routed by a client's cached placement is not ``auth``,
and an actor that does not hold it answers :data:`REROUTE` instead of a miss.
"""

OK = 0  # value: the result
MISS = 1  # value: None; the id does not exist
REDIRECT = 2  # value: hex id of the node that holds the id (the home keeps a record)
REROUTE = 3  # value: None; the cached placement is stale, ask the home
FULL = 4  # value: (limit, used, needed)
WRONG_TYPE = 5  # value: None; append to a value that is not bytes
