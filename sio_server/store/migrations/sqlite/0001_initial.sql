-- Visitors, agents, chats, messages and read marks.

CREATE TABLE visitors (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE agents (
    id                TEXT PRIMARY KEY,
    email             TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name              TEXT NOT NULL,
    password_hash     TEXT NOT NULL,
    is_admin          INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL DEFAULT 'offline'
                      CHECK (status IN ('offline', 'away', 'ready')),
    max_chats         INTEGER NOT NULL DEFAULT 1 CHECK (max_chats BETWEEN 1 AND 50),
    connected         INTEGER NOT NULL DEFAULT 0,
    last_assigned_at  TEXT NOT NULL DEFAULT '',
    created_at        TEXT NOT NULL
);

CREATE TABLE chats (
    id           TEXT PRIMARY KEY,
    visitor_id   TEXT NOT NULL REFERENCES visitors (id),
    agent_id     TEXT REFERENCES agents (id),
    status       TEXT NOT NULL CHECK (status IN ('queued', 'active', 'ended')),
    department   TEXT,
    metadata     TEXT,
    -- Lower ranks are served first; a requeued chat gets a rank below all others.
    queue_rank   INTEGER,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    queued_at    TEXT,
    assigned_at  TEXT,
    ended_at     TEXT,
    ended_by     TEXT CHECK (ended_by IN ('visitor', 'agent', 'system')),
    end_reason   TEXT
);

CREATE INDEX chats_queue ON chats (queue_rank) WHERE status = 'queued';
CREATE INDEX chats_agent ON chats (agent_id, status);
CREATE INDEX chats_created ON chats (created_at);
-- A visitor has at most one queued or active chat.
CREATE UNIQUE INDEX chats_one_open_per_visitor
    ON chats (visitor_id) WHERE status IN ('queued', 'active');

CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    chat_id      TEXT NOT NULL REFERENCES chats (id),
    seq          INTEGER NOT NULL,
    sender_role  TEXT NOT NULL CHECK (sender_role IN ('visitor', 'agent', 'system')),
    sender_id    TEXT NOT NULL,
    sender_name  TEXT NOT NULL,
    text         TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (chat_id, seq),
    UNIQUE (chat_id, sender_id, client_id)
);

CREATE TABLE read_marks (
    chat_id     TEXT NOT NULL REFERENCES chats (id),
    reader_role TEXT NOT NULL,
    reader_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (chat_id, reader_role, reader_id)
);
