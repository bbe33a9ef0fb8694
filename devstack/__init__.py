"""The local stack: embedded Postgres, moto, the fake provider, the demo and the benchmark."""
