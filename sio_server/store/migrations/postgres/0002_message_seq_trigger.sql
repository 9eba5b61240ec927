-- Keep chats.last_seq in step with the messages table, so that storing a
-- message is one INSERT statement.

CREATE FUNCTION messages_advance_last_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chats SET last_seq = NEW.seq WHERE id = NEW.chat_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_advance_last_seq AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_advance_last_seq();
