-- Departments, transfers, timeouts, missed chats, ratings, notes and canned
-- responses.

ALTER TABLE chats
    DROP CONSTRAINT chats_status_check,
    ADD CONSTRAINT chats_status_check
        CHECK (status IN ('queued', 'active', 'ended', 'missed')),
    -- The agent who handed the chat back to the queue; it is not offered the
    -- chat again while it waits.
    ADD COLUMN passed_by TEXT COLLATE "C",
    -- First message of the current agent since the assignment, for the reply
    -- timeout; last visitor message, for the inactivity timeout.
    ADD COLUMN agent_replied_at TEXT COLLATE "C",
    ADD COLUMN visitor_active_at TEXT COLLATE "C",
    ADD COLUMN rating_score INTEGER CHECK (rating_score BETWEEN 1 AND 5),
    ADD COLUMN rating_comment TEXT COLLATE "C",
    ADD COLUMN rated_at TEXT COLLATE "C";

CREATE INDEX chats_status ON chats (status, created_at);
CREATE INDEX chats_active ON chats (assigned_at) WHERE status = 'active';

CREATE OR REPLACE FUNCTION messages_advance_last_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END;
$$;

-- NULL serves every department; otherwise the department ids.
ALTER TABLE agents ADD COLUMN departments TEXT[] COLLATE "C";

CREATE TABLE notes (
    id           TEXT COLLATE "C" PRIMARY KEY,
    chat_id      TEXT COLLATE "C" NOT NULL REFERENCES chats (id),
    author_id    TEXT COLLATE "C" NOT NULL,
    author_name  TEXT COLLATE "C" NOT NULL,
    text         TEXT COLLATE "C" NOT NULL,
    client_id    TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    -- Insertion order, which orders notes written in the same millisecond
    -- as SQLite's rowid does.
    insert_order BIGINT GENERATED ALWAYS AS IDENTITY,
    UNIQUE (chat_id, author_id, client_id)
);

CREATE INDEX notes_chat ON notes (chat_id, created_at);

CREATE TABLE canned_responses (
    id          TEXT COLLATE "C" PRIMARY KEY,
    shortcut    TEXT COLLATE "C" NOT NULL UNIQUE,
    text        TEXT COLLATE "C" NOT NULL,
    created_by  TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    updated_at  TEXT COLLATE "C" NOT NULL
);
