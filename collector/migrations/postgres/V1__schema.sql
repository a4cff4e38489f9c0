-- The schema of clinicwatch 0.1 (IF NOT EXISTS throughout, so that a database made before
-- migrations existed takes this as its first version; its two late columns are added if
-- missing).
CREATE TABLE IF NOT EXISTS hosts (
    clinic TEXT NOT NULL, host TEXT NOT NULL, hostname TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '', kernel TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0, last_seen DOUBLE PRECISION NOT NULL DEFAULT 0,
    spooled BIGINT NOT NULL DEFAULT 0, dropped BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS records (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    kind TEXT NOT NULL, received DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
);
CREATE TABLE IF NOT EXISTS findings (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
    rule TEXT NOT NULL, severity INTEGER NOT NULL, app TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL, subject TEXT NOT NULL, summary TEXT NOT NULL,
    evidence TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
);
CREATE INDEX IF NOT EXISTS findings_time ON findings (time);
CREATE INDEX IF NOT EXISTS findings_received ON findings (received);
CREATE TABLE IF NOT EXISTS sightings (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, host TEXT NOT NULL,
    app TEXT NOT NULL, bucket BIGINT NOT NULL, first_time DOUBLE PRECISION NOT NULL,
    last_time DOUBLE PRECISION NOT NULL, windows BIGINT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value, clinic, host, app, bucket)
);
CREATE INDEX IF NOT EXISTS sightings_last ON sightings (last_time);
CREATE TABLE IF NOT EXISTS indicators (
    kind TEXT NOT NULL, value TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, clinics_sketch BYTEA,
    PRIMARY KEY (kind, value)
);
ALTER TABLE indicators ADD COLUMN IF NOT EXISTS clinics_sketch BYTEA;
CREATE TABLE IF NOT EXISTS indicator_clinics (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value, clinic)
);
CREATE TABLE IF NOT EXISTS incidents (
    id BIGSERIAL PRIMARY KEY, rule TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, title TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, clinics TEXT NOT NULL, hosts TEXT NOT NULL,
    evidence TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (rule, key, state);
CREATE TABLE IF NOT EXISTS enrollments (
    clinic TEXT NOT NULL, host TEXT NOT NULL, key_sha256 TEXT NOT NULL,
    revoked BOOLEAN NOT NULL, updated DOUBLE PRECISION NOT NULL,
    pending_key TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (clinic, host)
);
ALTER TABLE enrollments ADD COLUMN IF NOT EXISTS pending_key TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS records_received ON records (kind, received);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, clinic TEXT NOT NULL, host TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL, uses_left BIGINT NOT NULL, revoked BOOLEAN NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
