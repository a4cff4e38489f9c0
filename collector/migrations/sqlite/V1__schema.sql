-- The schema of clinicwatch 0.1 (every table IF NOT EXISTS, so that a file made before
-- migrations existed takes this as its first version unchanged).
CREATE TABLE IF NOT EXISTS hosts (
    clinic TEXT NOT NULL, host TEXT NOT NULL, hostname TEXT, agent_version TEXT,
    kernel TEXT, epoch INTEGER, last_seen REAL, spooled INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS records (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, received REAL NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
    clinic TEXT NOT NULL, host TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    rule TEXT NOT NULL, severity INTEGER NOT NULL, app TEXT NOT NULL, time REAL NOT NULL,
    subject TEXT NOT NULL, summary TEXT NOT NULL, evidence TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (clinic, host, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrollments (
    clinic TEXT NOT NULL, host TEXT NOT NULL, key_sha256 TEXT NOT NULL,
    revoked INTEGER NOT NULL, updated REAL NOT NULL, pending_key TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (clinic, host)
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, clinic TEXT NOT NULL, host TEXT NOT NULL, expires REAL NOT NULL,
    uses_left INTEGER NOT NULL, revoked INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, host TEXT NOT NULL,
    app TEXT NOT NULL, bucket INTEGER NOT NULL, first_time REAL NOT NULL,
    last_time REAL NOT NULL, windows INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (kind, value, clinic, host, app, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sightings_last ON sightings (last_time);
CREATE TABLE IF NOT EXISTS indicators (
    kind TEXT NOT NULL, value TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    clinics_sketch BLOB,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS indicator_clinics (
    kind TEXT NOT NULL, value TEXT NOT NULL, clinic TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (kind, value, clinic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, key TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, clinics TEXT NOT NULL,
    hosts TEXT NOT NULL, evidence TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (rule, key, state);
CREATE INDEX IF NOT EXISTS findings_time ON findings (time);
CREATE INDEX IF NOT EXISTS findings_received ON findings (received);
CREATE INDEX IF NOT EXISTS records_received ON records (kind, received);
