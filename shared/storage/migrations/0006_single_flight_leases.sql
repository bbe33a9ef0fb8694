-- sendonce schema, version 6: the sweeper's single-flight lock becomes a lease row.
-- A session-level advisory lock taken in one statement and released in another leaks behind
-- a transaction-mode pooler (PgBouncer), whose server sessions are shared between clients and
-- statements. A row changed by compare-and-set has no session state: it behaves the same
-- directly and through any pooler, and its expiry frees it if its holder dies.
CREATE TABLE single_flight_leases (
    name        text PRIMARY KEY,
    holder      uuid NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
