"""Agent memory: key schema, envelope format and keyring, the Redis data plane."""
