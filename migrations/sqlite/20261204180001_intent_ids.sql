-- One intent per bucket change, not per key: see migrations/20261204180001_intent_ids.sql.
-- SQLite cannot change a primary key: the table is made again, its rows kept (their key as id).
CREATE TABLE intents_by_id (
    scope      TEXT NOT NULL,
    id         TEXT NOT NULL,
    key        TEXT NOT NULL,
    intent     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, id)
);
INSERT INTO intents_by_id (scope, id, key, intent, created_at)
    SELECT scope, key, key, intent, created_at FROM intents;
DROP TABLE intents;
ALTER TABLE intents_by_id RENAME TO intents;
