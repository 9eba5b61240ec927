-- Visitors, agents, chats, messages and read marks.
--
-- Times are ISO 8601 strings from models.utc_now(), as in the SQLite schema,
-- and are compared as text. Every text column uses the "C" collation, so
-- comparisons and ORDER BY follow byte order as SQLite's BINARY collation
-- does, whatever collation the database was created with.

CREATE TABLE visitors (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    email       TEXT COLLATE "C",
    created_at  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE agents (
    id                TEXT COLLATE "C" PRIMARY KEY,
    email             TEXT COLLATE "C" NOT NULL,
    name              TEXT COLLATE "C" NOT NULL,
    password_hash     TEXT COLLATE "C" NOT NULL,
    is_admin          BOOLEAN NOT NULL DEFAULT FALSE,
    status            TEXT COLLATE "C" NOT NULL DEFAULT 'offline'
                      CHECK (status IN ('offline', 'away', 'ready')),
    max_chats         INTEGER NOT NULL DEFAULT 1 CHECK (max_chats BETWEEN 1 AND 50),
    connected         BOOLEAN NOT NULL DEFAULT FALSE,
    last_assigned_at  TEXT COLLATE "C" NOT NULL DEFAULT '',
    created_at        TEXT COLLATE "C" NOT NULL
);

-- Emails are unique regardless of ASCII case, like SQLite's NOCASE: lower()
-- under the "C" collation folds ASCII letters only.
CREATE UNIQUE INDEX agents_email ON agents (lower(email));

-- New chats join the queue with the next value; a requeued chat gets a rank
-- below all queued ones instead.
CREATE SEQUENCE chats_queue_rank;

CREATE TABLE chats (
    id           TEXT COLLATE "C" PRIMARY KEY,
    visitor_id   TEXT COLLATE "C" NOT NULL REFERENCES visitors (id),
    agent_id     TEXT COLLATE "C" REFERENCES agents (id),
    status       TEXT COLLATE "C" NOT NULL CONSTRAINT chats_status_check
                 CHECK (status IN ('queued', 'active', 'ended')),
    department   TEXT COLLATE "C",
    -- json, not jsonb, because jsonb rejects the escape \u0000 in strings.
    metadata     JSON,
    -- Lower ranks are served first; a requeued chat gets a rank below all others.
    queue_rank   BIGINT,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT COLLATE "C" NOT NULL,
    queued_at    TEXT COLLATE "C",
    assigned_at  TEXT COLLATE "C",
    ended_at     TEXT COLLATE "C",
    ended_by     TEXT COLLATE "C" CHECK (ended_by IN ('visitor', 'agent', 'system')),
    end_reason   TEXT COLLATE "C"
);

CREATE INDEX chats_queue ON chats (queue_rank) WHERE status = 'queued';
CREATE INDEX chats_agent ON chats (agent_id, status);
CREATE INDEX chats_created ON chats (created_at);
-- A visitor has at most one queued or active chat.
CREATE UNIQUE INDEX chats_one_open_per_visitor
    ON chats (visitor_id) WHERE status IN ('queued', 'active');

CREATE TABLE messages (
    id           TEXT COLLATE "C" PRIMARY KEY,
    chat_id      TEXT COLLATE "C" NOT NULL REFERENCES chats (id),
    seq          INTEGER NOT NULL,
    sender_role  TEXT COLLATE "C" NOT NULL
                 CHECK (sender_role IN ('visitor', 'agent', 'system')),
    sender_id    TEXT COLLATE "C" NOT NULL,
    sender_name  TEXT COLLATE "C" NOT NULL,
    text         TEXT COLLATE "C" NOT NULL,
    client_id    TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    UNIQUE (chat_id, seq),
    UNIQUE (chat_id, sender_id, client_id)
);

CREATE TABLE read_marks (
    chat_id     TEXT COLLATE "C" NOT NULL REFERENCES chats (id),
    reader_role TEXT COLLATE "C" NOT NULL,
    reader_id   TEXT COLLATE "C" NOT NULL,
    seq         INTEGER NOT NULL,
    updated_at  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chat_id, reader_role, reader_id)
);
