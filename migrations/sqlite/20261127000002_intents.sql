-- Bucket changes about to be made: see migrations/20261127000005_intents.sql.
CREATE TABLE intents (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    intent     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
