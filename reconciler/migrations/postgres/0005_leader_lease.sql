-- The leader lease: which replica runs the loop, and its fencing token.
-- `epoch` grows by one on every take-over; every write of the leader checks
-- it in its own transaction (SELECT ... FOR SHARE), so a replica that lost
-- the lease cannot write, however late its writes arrive. Times come from
-- the database clock (now()), never from a replica's. A logged table: the
-- lease and its epoch survive a server crash and a failover to a replica.
CREATE TABLE leader_lease (
    name        TEXT        PRIMARY KEY,
    holder      TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL CHECK (epoch > 0),
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
