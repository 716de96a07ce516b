"""The operator's application: the ``vlf`` command line, the demo, the report and the tools behind
``vlf submit``, ``status`` and ``dlq``. It sits above the services (it may import them); nothing
below it imports it."""
