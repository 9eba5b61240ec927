-- Keep chats.last_seq in step with the messages table, so that storing a
-- message is one INSERT statement.

CREATE TRIGGER messages_advance_last_seq AFTER INSERT ON messages
BEGIN
    UPDATE chats SET last_seq = NEW.seq WHERE id = NEW.chat_id;
END;
