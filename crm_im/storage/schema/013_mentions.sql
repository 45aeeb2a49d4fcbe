-- The users a group message mentions (message {groupId, mentions}), as a
-- JSON array of user ids; NULL when it mentions nobody (every 1:1 and room
-- message). Push used them and dropped them; clients need them too, to
-- show "@you" in the message and in history.
ALTER TABLE messages ADD COLUMN mentions TEXT;
