-- Disabled agents, token revocation and the audit log of admin changes.

ALTER TABLE agents ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;

-- Tokens carry the version they were issued at; a password change or reset
-- raises it, which makes every older token invalid.
ALTER TABLE agents ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    actor_id   TEXT,
    action     TEXT NOT NULL,
    target_id  TEXT,
    -- JSON object with the changed fields; never a password or its hash.
    details    TEXT NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);
