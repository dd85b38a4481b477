"""What operators and notebook users see of a cache: the HTML display of ``Cache`` and of
``cache.stats()`` in Jupyter, and the figures the ``shoveling`` command prints. Nothing here
talks to Ray; it formats what the cache reports."""
