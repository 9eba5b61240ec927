-- Departments, transfers, timeouts, missed chats, ratings, notes and canned
-- responses. SQLite cannot change a CHECK constraint in place, so the chats
-- table is rebuilt to admit the 'missed' status; the migration runner turns
-- foreign keys off around it and checks them before committing.

CREATE TABLE chats_new (
    id                 TEXT PRIMARY KEY,
    visitor_id         TEXT NOT NULL REFERENCES visitors (id),
    agent_id           TEXT REFERENCES agents (id),
    status             TEXT NOT NULL
                       CHECK (status IN ('queued', 'active', 'ended', 'missed')),
    department         TEXT,
    metadata           TEXT,
    -- Lower ranks are served first; a requeued chat gets a rank below all others.
    queue_rank         INTEGER,
    last_seq           INTEGER NOT NULL DEFAULT 0,
    created_at         TEXT NOT NULL,
    queued_at          TEXT,
    assigned_at        TEXT,
    ended_at           TEXT,
    ended_by           TEXT CHECK (ended_by IN ('visitor', 'agent', 'system')),
    end_reason         TEXT,
    -- The agent who handed the chat back to the queue; it is not offered the
    -- chat again while it waits.
    passed_by          TEXT,
    -- First message of the current agent since the assignment, for the reply
    -- timeout; last visitor message, for the inactivity timeout.
    agent_replied_at   TEXT,
    visitor_active_at  TEXT,
    rating_score       INTEGER CHECK (rating_score BETWEEN 1 AND 5),
    rating_comment     TEXT,
    rated_at           TEXT
);

INSERT INTO chats_new (
    id, visitor_id, agent_id, status, department, metadata, queue_rank, last_seq,
    created_at, queued_at, assigned_at, ended_at, ended_by, end_reason
)
SELECT
    id, visitor_id, agent_id, status, department, metadata, queue_rank, last_seq,
    created_at, queued_at, assigned_at, ended_at, ended_by, end_reason
FROM chats;

-- The trigger names chats, so it goes before the table and comes back after.
DROP TRIGGER messages_advance_last_seq;

DROP TABLE chats;

ALTER TABLE chats_new RENAME TO chats;

CREATE INDEX chats_queue ON chats (queue_rank) WHERE status = 'queued';
CREATE INDEX chats_agent ON chats (agent_id, status);
CREATE INDEX chats_created ON chats (created_at);
CREATE INDEX chats_status ON chats (status, created_at);
CREATE INDEX chats_active ON chats (assigned_at) WHERE status = 'active';
CREATE UNIQUE INDEX chats_one_open_per_visitor
    ON chats (visitor_id) WHERE status IN ('queued', 'active');

CREATE TRIGGER messages_advance_last_seq AFTER INSERT ON messages
BEGIN
    UPDATE chats SET
        last_seq = NEW.seq,
        agent_replied_at = CASE
            WHEN NEW.sender_role = 'agent' AND agent_replied_at IS NULL
            THEN NEW.created_at ELSE agent_replied_at END,
        visitor_active_at = CASE
            WHEN NEW.sender_role = 'visitor'
            THEN NEW.created_at ELSE visitor_active_at END
    WHERE id = NEW.chat_id;
END;

-- NULL serves every department; otherwise a JSON list of department ids.
ALTER TABLE agents ADD COLUMN departments TEXT;

CREATE TABLE notes (
    id           TEXT PRIMARY KEY,
    chat_id      TEXT NOT NULL REFERENCES chats (id),
    author_id    TEXT NOT NULL,
    author_name  TEXT NOT NULL,
    text         TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (chat_id, author_id, client_id)
);

CREATE INDEX notes_chat ON notes (chat_id, created_at);

CREATE TABLE canned_responses (
    id          TEXT PRIMARY KEY,
    shortcut    TEXT NOT NULL UNIQUE,
    text        TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
