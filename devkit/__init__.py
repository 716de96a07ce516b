"""Development and test kit: the local Kafka broker, an OpenAI-compatible test server, tiny offline
models and benchmark fixtures. Used by tests, benchmarks, the demo and ``vlf kafka``; never by a
service (tests/unit/test_layers.py)."""
