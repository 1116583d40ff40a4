-- Blind indexes (issue 28): equality search over encrypted values before, during and after a
-- rotation and its re-encryption, which recomputes a registered index column.
BEGIN;
SELECT 1 FROM meshhook_keys.keys_rotate('people', 'version 1');
CREATE TABLE people (id int PRIMARY KEY, email bytea, email_idx bytea, note text);
INSERT INTO people (id, email, email_idx)
SELECT i, meshhook_keys.secret_encrypt('user' || i || '@example.com', 'person:' || i, 'people'),
          meshhook_keys.blind_index('user' || i || '@example.com', 'people', 'people.email')
  FROM generate_series(1, 100) i;
CREATE INDEX ON people (email_idx);
-- a blind index is 16 bytes, the same for the same value and context, and nothing like the
-- value's index under another context
SELECT length(email_idx) AS bytes,
       email_idx = meshhook_keys.blind_index('user7@example.com', 'people', 'people.email') AS deterministic,
       email_idx <> meshhook_keys.blind_index('user7@example.com', 'people', 'people.phone') AS per_context
  FROM people WHERE id = 7;
-- search: the row with that value, and no other
SELECT id FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email'));
SELECT count(*) AS no_such_value FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('nobody@example.com', 'people', 'people.email'));
-- equality is what leaks: two rows with the same value have the same index
INSERT INTO people (id, email, email_idx)
VALUES (1001, meshhook_keys.secret_encrypt('user7@example.com', 'person:1001', 'people'),
              meshhook_keys.blind_index('user7@example.com', 'people', 'people.email'));
SELECT array_agg(id ORDER BY id) AS same_value FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email'));

-- the column is registered for re-encryption, with its index column and the index's context
SELECT meshhook_keys.register_column('people', 'email', $$'person:' || id$$, 'people') > 0 AS registered;
SELECT meshhook_keys.register_blind_index('people', 'email', 'email_idx', $$'people.email'$$, 'people') AS has_index;
SELECT column_name, blind_index_column, blind_index_context FROM meshhook_keys.encrypted_columns WHERE keyring = 'people';

-- during the rotation: rows written before under version 1, after under version 2; one candidate
-- per version, and the search finds both kinds
SELECT 1 FROM meshhook_keys.keys_rotate('people', 'version 2');
INSERT INTO people (id, email, email_idx)
SELECT i, meshhook_keys.secret_encrypt('user' || i || '@example.com', 'person:' || i, 'people'),
          meshhook_keys.blind_index('user' || i || '@example.com', 'people', 'people.email')
  FROM generate_series(101, 200) i;
SELECT cardinality(meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email')) AS candidates;
SELECT id FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('user150@example.com', 'people', 'people.email'));
SELECT array_agg(id ORDER BY id) AS user7 FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email'));
SELECT count(*) FILTER (WHERE email_idx = meshhook_keys.blind_index(meshhook_keys.secret_decrypt(email, 'person:' || id), 'people', 'people.email')) AS under_version_2
  FROM people;

-- re-encryption moves every row to version 2 and recomputes its index under version 2
DO $$ BEGIN
    WHILE meshhook_keys.reencrypt_batch('people', 50) IS NOT NULL LOOP END LOOP;
END $$;
SELECT count(*) AS rows,
       count(*) FILTER (WHERE meshhook_keys.ciphertext_key_id(email) =
                              (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'people' AND version = 2)) AS on_version_2,
       count(*) FILTER (WHERE meshhook_keys.secret_decrypt(email, 'person:' || id) LIKE 'user%@example.com') AS decrypt,
       count(*) FILTER (WHERE email_idx = meshhook_keys.blind_index(meshhook_keys.secret_decrypt(email, 'person:' || id), 'people', 'people.email')) AS index_under_version_2
  FROM people;
-- after the retire, one candidate is left, and every search still finds its rows
SELECT meshhook_keys.keys_retire('people', 1) AS retired;
SELECT cardinality(meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email')) AS candidates;
SELECT array_agg(id ORDER BY id) AS user7 FROM people
 WHERE email_idx = ANY (meshhook_keys.blind_index_candidates('user7@example.com', 'people', 'people.email'));
SELECT count(*) AS every_value_found FROM people p
 WHERE p.email_idx = ANY (meshhook_keys.blind_index_candidates(meshhook_keys.secret_decrypt(p.email, 'person:' || p.id), 'people', 'people.email'));

-- a row whose index context expression gives NULL is left as it is and recorded as a failure
SELECT meshhook_keys.register_blind_index('people', 'email', 'email_idx', $$CASE WHEN id = 3 THEN NULL ELSE 'people.email' END$$, 'people') AS has_index;
SELECT 1 FROM meshhook_keys.keys_rotate('people', 'version 3');
DO $$ BEGIN
    WHILE meshhook_keys.reencrypt_batch('people', 500) IS NOT NULL LOOP END LOOP;
END $$;
SELECT row_ref, sqlstate, error FROM meshhook_keys.reencrypt_failure f
  JOIN meshhook_keys.reencrypt_job j ON j.id = f.job_id WHERE j.keyring = 'people';
SELECT meshhook_keys.ciphertext_key_id(email) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'people' AND version = 2) AS row_3_left_on_version_2
  FROM people WHERE id = 3;
-- forgetting the index column: re-encryption no longer touches it
SELECT meshhook_keys.register_blind_index('people', 'email', NULL, NULL, 'people') AS has_index;
SELECT blind_index_column IS NULL AS forgotten FROM meshhook_keys.encrypted_columns WHERE keyring = 'people';

-- bad input and bad registrations
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index(NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index('x', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index('x', 'people', NULL)$$);
SELECT sqlstate_of($$SELECT meshhook_keys.blind_index_candidates('x', 'no-such-keyring')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'note', 'email_idx', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'email', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'note', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'nope', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'email_idx', 'random()::text', 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'email_idx', $q$'a') ; DROP TABLE people; SELECT ('b'$q$, 'people')$$);
-- (hostile review) an index column re-encryption must not write: another registered ciphertext
-- column (its envelopes would be overwritten), another ciphertext column's index column, a
-- generated column; nor may an index column be registered as a ciphertext column
ALTER TABLE people ADD COLUMN phone bytea, ADD COLUMN phone_idx bytea,
                   ADD COLUMN gen_idx bytea GENERATED ALWAYS AS (email) STORED;
SELECT 1 FROM meshhook_keys.keys_rotate('phones', 'version 1');
SELECT meshhook_keys.register_column('people', 'phone', $$'phone:' || id$$, 'phones') > 0 AS registered;
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'phone', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'gen_idx', NULL, 'people')$$);
SELECT meshhook_keys.register_blind_index('people', 'phone', 'phone_idx', NULL, 'phones') AS phone_index;
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'phone_idx', NULL, 'people')$$);
SELECT sqlstate_of($$SELECT meshhook_keys.register_column('people', 'phone_idx', NULL, 'people')$$);
-- an index column renamed after registration, and another column renamed to its old name: the
-- batch refuses to write it (the column's batch fails, 22023), and every row still decrypts
UPDATE people SET phone = meshhook_keys.secret_encrypt('+1-555-' || id, 'phone:' || id, 'phones'),
                  phone_idx = meshhook_keys.blind_index('+1-555-' || id, 'phones');
ALTER TABLE people RENAME COLUMN phone_idx TO phone_idx_old;
ALTER TABLE people RENAME COLUMN email TO phone_idx;
SELECT 1 FROM meshhook_keys.keys_rotate('phones', 'version 2');
SELECT meshhook_keys.reencrypt_batch('phones', 1000) AS moved;
SELECT p.state, p.sqlstate, p.error FROM meshhook_keys.reencrypt_progress p
 WHERE p.keyring = 'phones' AND p.table_name = 'people'::regclass;
SELECT count(*) FILTER (WHERE meshhook_keys.secret_decrypt(phone, 'phone:' || id) = '+1-555-' || id) AS phones_decrypt,
       count(*) FILTER (WHERE meshhook_keys.secret_decrypt(phone_idx, 'person:' || id) LIKE 'user%') AS emails_untouched
  FROM people;
ALTER TABLE people RENAME COLUMN phone_idx TO email;
ALTER TABLE people RENAME COLUMN phone_idx_old TO phone_idx;

-- the per-row function of re-encryption is refused outside a batch
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_index('\x00', '(0,1)')$$);
SELECT sqlstate_of($$SELECT meshhook_keys._reencrypt_try_indexed('\x00', '(0,1)', email, '', '') FROM people WHERE id = 1$$);
-- an operator who does not own the table may not name its index column
CREATE ROLE mk_bi_operator IN ROLE meshhook_keys_operator;
SET LOCAL ROLE mk_bi_operator;
SELECT sqlstate_of($$SELECT meshhook_keys.register_blind_index('people', 'email', 'email_idx', NULL, 'people')$$);
RESET ROLE;
-- the registration is audited
SELECT action, keyring, detail->>'blind_index_column' AS index_column, detail->>'blind_index_context' AS index_context
  FROM meshhook_keys.audit_log WHERE action = 'register_blind_index' ORDER BY id;
ROLLBACK;
