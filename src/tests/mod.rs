//! In-process tests (`cargo pgrx test`): the library is preloaded and the root key comes from the
//! command provider configured in `pg_test::postgresql_conf_options`. Each test runs in a
//! transaction that is rolled back, so keys made here do not leak into other tests.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .expect("query failed")
            .expect("query returned NULL")
    }

    fn run(sql: &str) {
        Spi::run(sql).expect("statement failed")
    }

    #[pg_test]
    fn roundtrip_text_bytea_empty_and_unicode() {
        for s in ["hunter2", "", "päss wörd ✓ 🔑", &"x".repeat(100_000)] {
            let got: String = Spi::get_one_with_args(
                "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt($1, 'ctx'), 'ctx')",
                &[s.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(got, s);
        }
        let b: Vec<u8> = one(
            "SELECT meshhook_keys.secret_decrypt_bytea(meshhook_keys.secret_encrypt_bytea('\\x00ff10'::bytea))",
        );
        assert_eq!(b, vec![0x00, 0xff, 0x10]);
    }

    #[pg_test]
    fn envelope_layout_matches_the_design() {
        // 1 format byte + 8 key id + 12 nonce + plaintext + 16 tag
        let len: i32 = one("SELECT length(meshhook_keys.secret_encrypt('abcde'))");
        assert_eq!(len, 1 + 8 + 12 + 5 + 16);
        let fmt: i32 = one("SELECT get_byte(meshhook_keys.secret_encrypt('abcde'), 0)");
        assert_eq!(fmt, 1);
        let same: bool = one(
            "SELECT meshhook_keys.ciphertext_key_id(c) = (SELECT key_id FROM meshhook_keys.keys WHERE keyring = 'default' AND state = 'active')
                AND ('x' || encode(substring(c from 2 for 8), 'hex'))::bit(64)::bigint = meshhook_keys.ciphertext_key_id(c)
               FROM (SELECT meshhook_keys.secret_encrypt('abcde') AS c) s",
        );
        assert!(
            same,
            "header bytes 2..9 are the big-endian key id of the active default key"
        );
        let differ: bool = one(
            "SELECT meshhook_keys.secret_encrypt('same') <> meshhook_keys.secret_encrypt('same')",
        );
        assert!(
            differ,
            "random nonces: equal plaintexts give different ciphertexts"
        );
    }

    #[pg_test]
    fn default_keyring_is_created_on_first_use_and_audited() {
        let before: i64 =
            one("SELECT count(*) FROM meshhook_keys.data_key WHERE keyring = 'default'");
        assert_eq!(before, 0, "CREATE EXTENSION must not create a key");
        run("SELECT meshhook_keys.secret_encrypt('a')");
        run("SELECT meshhook_keys.secret_encrypt('b')");
        let (n, v): (i64, i32) = {
            let r = Spi::get_two::<i64, i32>(
                "SELECT count(*), max(version) FROM meshhook_keys.keys WHERE keyring = 'default'",
            )
            .unwrap();
            (r.0.unwrap(), r.1.unwrap())
        };
        assert_eq!((n, v), (1, 1));
        let audited: i64 = one(
            "SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'create' AND keyring = 'default' AND version = 1",
        );
        assert_eq!(audited, 1);
    }

    #[pg_test]
    #[should_panic(expected = "keyring \"payments\" has no active key")]
    fn other_keyrings_need_a_key_first() {
        run("SELECT meshhook_keys.secret_encrypt('a', '', 'payments')");
    }

    #[pg_test]
    fn rotate_makes_a_new_active_version_and_old_ciphertexts_still_decrypt() {
        run("CREATE TEMP TABLE t(v int, c bytea)");
        run(
            "INSERT INTO t SELECT 1, meshhook_keys.secret_encrypt('one', 'row1', 'billing') FROM meshhook_keys.keys_rotate('billing', 'first')",
        );
        let r2: i32 = one("SELECT version FROM meshhook_keys.keys_rotate('billing', 'scheduled')");
        assert_eq!(r2, 2);
        run("INSERT INTO t VALUES (2, meshhook_keys.secret_encrypt('two', 'row2', 'billing'))");
        let r3: i32 = one("SELECT version FROM meshhook_keys.keys_rotate('billing')");
        assert_eq!(r3, 3);
        run("INSERT INTO t VALUES (3, meshhook_keys.secret_encrypt('three', 'row3', 'billing'))");
        let all: String = one(
            "SELECT string_agg(meshhook_keys.secret_decrypt(c, 'row' || v), ',' ORDER BY v) FROM t",
        );
        assert_eq!(all, "one,two,three");
        // each row names the key version that was active when it was written
        let versions: String = one(
            "SELECT string_agg(k.version::text, ',' ORDER BY t.v) FROM t JOIN meshhook_keys.keys k ON k.key_id = meshhook_keys.ciphertext_key_id(t.c)",
        );
        assert_eq!(versions, "1,2,3");
        let states: String = one(
            "SELECT string_agg(state, ',' ORDER BY version) FROM meshhook_keys.keys WHERE keyring = 'billing'",
        );
        assert_eq!(states, "decrypt_only,decrypt_only,active");
        let audit: i64 = one(
            "SELECT count(*) FROM meshhook_keys.audit_log WHERE action = 'rotate' AND keyring = 'billing' AND outcome = 'ok'",
        );
        assert_eq!(audit, 3);
        let reason: String = one(
            "SELECT reason FROM meshhook_keys.audit_log WHERE keyring = 'billing' AND version = 2",
        );
        assert_eq!(reason, "scheduled");
    }

    #[pg_test]
    #[should_panic(
        expected = "duplicate key value violates unique constraint \"data_key_one_active_per_keyring\""
    )]
    fn the_schema_allows_one_active_key_per_keyring() {
        run("SELECT meshhook_keys.keys_rotate('solo')");
        run("INSERT INTO meshhook_keys.data_key (key_id, keyring, version, state, wrapped_key, root_fingerprint)
             SELECT 12345, 'solo', 99, 'active', wrapped_key, root_fingerprint FROM meshhook_keys.data_key WHERE keyring = 'solo'");
    }

    #[pg_test]
    fn warm_decrypt_uses_the_cache_and_rotation_invalidates_it() {
        run("SELECT meshhook_keys.keys_rotate('cache')");
        run("CREATE TEMP TABLE c AS SELECT meshhook_keys.secret_encrypt('v', '', 'cache') AS c");
        run("SELECT meshhook_keys.secret_decrypt(c) FROM c");
        let m1: i64 = one("SELECT misses FROM meshhook_keys._key_cache_stats()");
        let h1: i64 = one("SELECT hits FROM meshhook_keys._key_cache_stats()");
        for _ in 0..5 {
            run("SELECT meshhook_keys.secret_decrypt(c) FROM c");
        }
        let m2: i64 = one("SELECT misses FROM meshhook_keys._key_cache_stats()");
        let h2: i64 = one("SELECT hits FROM meshhook_keys._key_cache_stats()");
        assert_eq!(m2, m1, "warm decrypts must not load keys");
        assert_eq!(h2, h1 + 5);
        // A rotation (any change to data_key) empties the cache; the next encrypt uses the new key.
        let new_id: i64 = one("SELECT key_id FROM meshhook_keys.keys_rotate('cache')");
        let cached: i64 = one("SELECT cached_keys FROM meshhook_keys._key_cache_stats()");
        assert_eq!(cached, 0, "rotation must flush this backend's cache");
        let used: i64 = one(
            "SELECT meshhook_keys.ciphertext_key_id(meshhook_keys.secret_encrypt('w', '', 'cache'))",
        );
        assert_eq!(used, new_id);
        let old: String = one("SELECT meshhook_keys.secret_decrypt(c) FROM c");
        assert_eq!(old, "v");
    }

    #[pg_test]
    #[should_panic(expected = "ciphertext authentication failed")]
    fn wrong_context_is_refused() {
        run(
            "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('s', 'tenant-a'), 'tenant-b')",
        );
    }

    #[pg_test]
    #[should_panic(expected = "ciphertext authentication failed")]
    fn tampered_byte_is_refused() {
        run(
            "SELECT meshhook_keys.secret_decrypt(set_byte(c, 25, get_byte(c, 25) # 1)) FROM (SELECT meshhook_keys.secret_encrypt('secret') c) s",
        );
    }

    #[pg_test]
    #[should_panic(expected = "ciphertext is truncated: 20 bytes")]
    fn truncated_ciphertext_is_refused() {
        run(
            "SELECT meshhook_keys.secret_decrypt(substring(meshhook_keys.secret_encrypt('secret') from 1 for 20))",
        );
    }

    #[pg_test]
    #[should_panic(expected = "no data key with key id 81985529216486895 exists")]
    fn unknown_key_id_is_refused() {
        // format 1, key id 0x0123456789abcdef, zero nonce, 16 zero tag bytes
        run(
            "SELECT meshhook_keys.secret_decrypt(('\\x010123456789abcdef' || repeat('00', 28))::bytea)",
        );
    }

    #[pg_test]
    #[should_panic(expected = "unknown envelope format version 7")]
    fn unknown_format_is_refused() {
        run("SELECT meshhook_keys.secret_decrypt(('\\x07' || repeat('00', 40))::bytea)");
    }

    #[pg_test]
    #[should_panic(expected = "ciphertext must not be NULL")]
    fn null_ciphertext_is_refused() {
        run("SELECT meshhook_keys.secret_decrypt(NULL)");
    }

    #[pg_test]
    #[should_panic(expected = "plaintext must not be NULL")]
    fn null_plaintext_is_refused() {
        run("SELECT meshhook_keys.secret_encrypt(NULL::text)");
    }

    #[pg_test]
    #[should_panic(expected = "context must not be NULL")]
    fn null_context_is_refused() {
        run("SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('x'), NULL)");
    }

    #[pg_test]
    #[should_panic(expected = "invalid keyring name")]
    fn bad_keyring_names_are_refused() {
        run("SELECT meshhook_keys.keys_rotate('no spaces; DROP TABLE x')");
    }

    #[pg_test]
    #[should_panic(expected = "decrypted value is not valid text")]
    fn binary_plaintext_is_not_returned_as_text() {
        run(
            "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt_bytea('\\xff00'::bytea))",
        );
    }

    #[pg_test]
    fn errors_carry_their_sqlstate() {
        // Each failure class has its own SQLSTATE; checked through PL/pgSQL's exception handler.
        run(
            "CREATE FUNCTION pg_temp.state_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        );
        let cases = [
            ("SELECT meshhook_keys.secret_decrypt(NULL)", "22004"),
            (
                "SELECT meshhook_keys.secret_decrypt('\\x0102'::bytea)",
                "22P03",
            ),
            (
                "SELECT meshhook_keys.secret_decrypt((''\\x07'' || repeat(''00'', 40))::bytea)",
                "22P03",
            ),
            (
                "SELECT meshhook_keys.secret_decrypt((''\\x010123456789abcdef'' || repeat(''00'', 28))::bytea)",
                "42704",
            ),
            (
                "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt(''s'', ''a''), ''b'')",
                "XX001",
            ),
            (
                "SELECT meshhook_keys.secret_encrypt(''s'', '''', ''nokey'')",
                "55000",
            ),
            ("SELECT meshhook_keys.keys_rotate(''bad name'')", "42602"),
            (
                "SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt_bytea(''\\xff''::bytea))",
                "22021",
            ),
        ];
        for (q, want) in cases {
            let q = q.replace("'\\x0102'", "''\\x0102''");
            let got: String = one(&format!("SELECT pg_temp.state_of('{q}')"));
            assert_eq!(got, want, "{q}");
        }
    }

    #[pg_test]
    fn audit_log_is_append_only_and_verifies() {
        run("SELECT meshhook_keys.keys_rotate('audited', 'test')");
        run(
            "CREATE FUNCTION pg_temp.state_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        );
        for q in [
            "UPDATE meshhook_keys.audit_log SET reason = ''x''",
            "DELETE FROM meshhook_keys.audit_log",
            "TRUNCATE meshhook_keys.audit_log",
        ] {
            let got: String = one(&format!("SELECT pg_temp.state_of('{q}')"));
            assert_eq!(got, "42501", "{q} must be refused even for the owner");
        }
        let ok: bool = one("SELECT ok FROM meshhook_keys.audit_verify()");
        assert!(ok);
        // Tampering behind the triggers' back (a superuser disabling them) is detected.
        run("ALTER TABLE meshhook_keys.audit_log DISABLE TRIGGER audit_log_no_update_delete");
        run("UPDATE meshhook_keys.audit_log SET reason = 'forged' WHERE keyring = 'audited'");
        let (ok, bad) =
            Spi::get_two::<bool, i64>("SELECT ok, first_bad_id FROM meshhook_keys.audit_verify()")
                .unwrap();
        assert_eq!(ok, Some(false));
        let forged: i64 = one("SELECT id FROM meshhook_keys.audit_log WHERE keyring = 'audited'");
        assert_eq!(bad, Some(forged));
    }

    #[pg_test]
    fn audit_rows_never_contain_secrets() {
        run("SELECT meshhook_keys.keys_rotate('leak', 'why')");
        run("SELECT meshhook_keys.secret_encrypt('TOP-SECRET-PLAINTEXT', '', 'leak')");
        let wrapped_hex: String = one(
            "SELECT encode(wrapped_key, 'hex') FROM meshhook_keys.data_key WHERE keyring = 'leak'",
        );
        let leaked: bool = Spi::get_one_with_args::<bool>(
            "SELECT bool_or(a::text LIKE '%TOP-SECRET%' OR a::text LIKE '%' || $1 || '%') FROM meshhook_keys.audit_log a",
            &[wrapped_hex.as_str().into()],
        )
        .unwrap()
        .unwrap();
        assert!(!leaked);
    }

    #[pg_test]
    fn keys_view_exposes_no_key_material() {
        let cols: String = one(
            "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'meshhook_keys.keys'::regclass AND attnum > 0",
        );
        assert_eq!(
            cols,
            "keyring,version,key_id,state,created_at,activated_at,retired_at,destroy_at"
        );
    }

    #[pg_test]
    fn non_admin_rotation_is_refused() {
        run("CREATE ROLE mk_test_app NOLOGIN");
        run("GRANT meshhook_keys_user TO mk_test_app");
        run("CREATE FUNCTION pg_temp.state_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$");
        run("GRANT EXECUTE ON FUNCTION pg_temp.state_of(text) TO PUBLIC");
        run("SET LOCAL ROLE mk_test_app");
        let got: String =
            one("SELECT pg_temp.state_of('SELECT meshhook_keys.keys_rotate(''default'')')");
        let enc: String =
            one("SELECT meshhook_keys.secret_decrypt(meshhook_keys.secret_encrypt('ok'))");
        run("RESET ROLE");
        assert_eq!(
            got,
            "42501 permission denied for keys_rotate: requires membership in role meshhook_keys_operator"
        );
        assert_eq!(
            enc, "ok",
            "a user-role member can still encrypt and decrypt"
        );
    }

    #[pg_test]
    fn security_definer_functions_pin_search_path() {
        // Every SECURITY DEFINER function pins search_path in its definition, except the hot
        // encrypt/decrypt functions (and _store_decrypt, decrypted_secrets' decrypt), which pin it
        // around the only SQL they run (a key cache miss);
        // tests/pg_regress/sql/privileges.sql proves a caller's search_path cannot hijack them.
        let unpinned: Vec<String> = Spi::connect(|c| {
            c.select(
                "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'meshhook_keys' AND p.prosecdef
                    AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
                  ORDER BY 1",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        });
        assert_eq!(
            unpinned,
            vec![
                "_store_decrypt",
                "secret_decrypt",
                "secret_decrypt_bytea",
                "secret_encrypt",
                "secret_encrypt_bytea"
            ]
        );
        let definers: i64 = one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'meshhook_keys' AND p.prosecdef",
        );
        assert!(
            definers >= 6,
            "encrypt x2, decrypt x2, keys_rotate, audit_verify are SECURITY DEFINER"
        );
    }
}
