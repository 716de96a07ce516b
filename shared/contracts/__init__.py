"""Event models, topic registry and deterministic ids: the contracts between services."""
