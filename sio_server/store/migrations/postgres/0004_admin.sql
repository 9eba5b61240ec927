-- Disabled agents, token revocation and the audit log of admin changes.

ALTER TABLE agents ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;

-- Tokens carry the version they were issued at; a password change or reset
-- raises it, which makes every older token invalid.
ALTER TABLE agents ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         TEXT COLLATE "C" NOT NULL,
    actor_id   TEXT COLLATE "C",
    action     TEXT COLLATE "C" NOT NULL,
    target_id  TEXT COLLATE "C",
    -- JSON object with the changed fields; never a password or its hash.
    -- json, not jsonb, keeps the keys in the order the server wrote them.
    details    JSON NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);
