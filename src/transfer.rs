//! Moving a keyring between databases (issue 28): `keyring_export` seals every version's data key
//! under a 256-bit wrapping key the caller supplies (crate::bundle), `keyring_import` opens such a
//! bundle and wraps the keys under this database's root key (or a user-held keyring's secret).
//! Between clusters with different root keys, or to bring your own key. Layer 4: called by the
//! SQL surface.
//!
//! Invariants: only a superuser or a member of meshhook_keys_custodian may call either (refusals
//! audited durably); an export is a disclosure, audited durably too (a rollback keeps the bundle);
//! an import commits or rolls back with its audit row. Key ids, versions, states and encryption
//! counts are kept, so every ciphertext of the keyring decrypts in the new database, retired and
//! destroyed versions stay refused, and the active version keeps its usage count. An import never
//! reuses a name or a key id the database has.

use crate::audit;
use crate::bundle::{self, BundleError};
use crate::crypto::{KEY_LEN, SecretKey};
use crate::error::{KeysError, Result};
use crate::keyring::validate_keyring;
use crate::lock_order::{self, Row};
use crate::store::{self, KeyRow};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

const FORMAT: &str = "meshhook_keys keyring export 1";

/// The readable, authenticated header of a bundle.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    keyring: String,
    tenant: Option<String>,
    user_held: bool,
    rotation_interval: Option<String>,
    max_encryptions: Option<i64>,
    exported_at: String,
    versions: Vec<Version>,
}

/// One version: its data key is in the bundle iff `has_key` (in the order of the versions).
#[derive(Serialize, Deserialize)]
struct Version {
    version: i32,
    key_id: i64,
    state: String,
    has_key: bool,
    encryptions: i64,
    created_at: String,
    activated_at: Option<String>,
}

fn wrapping(key: Option<&[u8]>) -> Result<&[u8]> {
    let key = key.ok_or(KeysError::NullArgument("wrapping_key"))?;
    if key.len() != KEY_LEN {
        return Err(KeysError::InvalidArgument(format!(
            "wrapping_key must be exactly {KEY_LEN} bytes (a 256-bit key), not {}",
            key.len()
        )));
    }
    Ok(key)
}

fn bundle_error(e: BundleError) -> KeysError {
    match e {
        BundleError::NotABundle(why) => {
            KeysError::BadBundle(format!("not a keyring export: {why}"))
        }
        BundleError::BadWrappingKey => {
            KeysError::InvalidArgument("wrapping_key must be exactly 32 bytes".into())
        }
        BundleError::AuthenticationFailed => KeysError::BadBundle(
            "authentication failed: another wrapping key, or the bundle was altered".into(),
        ),
        BundleError::Malformed => KeysError::BadBundle("its sealed keys are malformed".into()),
    }
}

/// The keyring row and every version (oldest first), as committed, the rows locked.
fn read_keyring(keyring: &str) -> Result<Header> {
    let head = Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT tenant, user_held, rotation_interval::pg_catalog.text, max_encryptions, destroyed_at IS NOT NULL
               FROM meshhook_keys.keyring WHERE name OPERATOR(pg_catalog.=) $1 FOR SHARE",
            None,
            &[keyring.into()],
        )?;
        if t.is_empty() {
            return Ok::<_, KeysError>(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<String>(1)?,
            r.get::<bool>(2)?.unwrap_or(false),
            r.get::<String>(3)?,
            r.get::<i64>(4)?,
            r.get::<bool>(5)?.unwrap_or(false),
        )))
    })?;
    let Some((tenant, user_held, rotation_interval, max_encryptions, destroyed)) = head else {
        return Err(KeysError::UnknownKeyring(keyring.into()));
    };
    if destroyed {
        return Err(KeysError::KeyringDestroyed(keyring.into()));
    }
    let versions = Spi::connect_mut(|c| {
        let mut out = Vec::new();
        for r in c.update(
            "SELECT version, key_id, state, wrapped_key IS NOT NULL, encryptions,
                    created_at::pg_catalog.text, activated_at::pg_catalog.text
               FROM meshhook_keys.data_key WHERE keyring OPERATOR(pg_catalog.=) $1
              ORDER BY version FOR SHARE",
            None,
            &[keyring.into()],
        )? {
            out.push(Version {
                version: r.get::<i32>(1)?.unwrap_or_default(),
                key_id: r.get::<i64>(2)?.unwrap_or_default(),
                state: r.get::<String>(3)?.unwrap_or_default(),
                has_key: r.get::<bool>(4)?.unwrap_or(false),
                encryptions: r.get::<i64>(5)?.unwrap_or(0),
                created_at: r.get::<String>(6)?.unwrap_or_default(),
                activated_at: r.get::<String>(7)?,
            });
        }
        Ok::<_, KeysError>(out)
    })?;
    let exported_at =
        Spi::get_one::<String>("SELECT pg_catalog.now()::pg_catalog.text")?.unwrap_or_default();
    Ok(Header {
        format: FORMAT.into(),
        keyring: keyring.into(),
        tenant,
        user_held,
        rotation_interval,
        max_encryptions,
        exported_at,
        versions,
    })
}

/// The data keys of a root-wrapped keyring's versions that have key material, oldest first.
fn root_wrapped_keys(rows: &[KeyRow]) -> Result<Vec<SecretKey>> {
    rows.iter()
        .map(|row| {
            let wrapped = row
                .wrapped_key
                .as_deref()
                .ok_or_else(|| KeysError::Internal("a listed key has no material".into()))?;
            let root = crate::rootkey::wrapping(row)?;
            let legacy_ok =
                crate::crypto::is_legacy_wrap(wrapped) && store::legacy_wrap_allowed(row)?;
            crate::crypto::unwrap_key(&root.key, &row.binding(), wrapped, legacy_ok).map_err(|_| {
                KeysError::WrappedKeyCorrupted {
                    keyring: row.keyring.clone(),
                    version: row.version,
                }
            })
        })
        .collect()
}

/// keyring_export: every version of `keyring` (metadata, and the data key of each that still has
/// one) sealed under `wrapping_key`. A user-held keyring needs its `secret`.
pub fn export(
    keyring: Option<&str>,
    wrapping_key: Option<&[u8]>,
    secret: Option<&str>,
) -> Result<Vec<u8>> {
    audit::require_custodian("keyring_export", keyring)?;
    let keyring = validate_keyring(keyring)?;
    let wrapping_key = wrapping(wrapping_key)?;
    let header = read_keyring(keyring)?;
    let pairs: Vec<(KeyRow, SecretKey)> = if header.user_held {
        crate::userheld::keys_for_export(keyring, secret)?
    } else {
        let rows = store::keyring_keys(keyring, true)?;
        let keys = root_wrapped_keys(&rows)?;
        rows.into_iter().zip(keys).collect()
    };
    // (the keys in the header's order: every version that has material, oldest first)
    let mut keys: Vec<&[u8; KEY_LEN]> = Vec::with_capacity(pairs.len());
    for v in header.versions.iter().filter(|v| v.has_key) {
        let (_, k) = pairs
            .iter()
            .find(|(row, _)| row.key_id == v.key_id)
            .ok_or_else(|| KeysError::Internal("a version changed during the export".into()))?;
        keys.push(k.expose());
    }
    let json = serde_json::to_vec(&header).map_err(|e| KeysError::Internal(e.to_string()))?;
    let sealed = bundle::seal(wrapping_key, &json, &keys).map_err(bundle_error)?;
    audit::record_keyring_disclosure("keyring_export", keyring, keys.len());
    Ok(sealed)
}

/// What keyring_import made.
pub struct Imported {
    pub keyring: String,
    pub versions: i32,
    pub active_version: Option<i32>,
}

/// keyring_import: the keyring of a bundle sealed under `wrapping_key`, under its own name or
/// `rename`, its keys wrapped under this database's root key (a user-held keyring's under a key
/// derived from `secret`). Refused for a name or a key id this database has (42710), and on a
/// logical replica of the key tables.
pub fn import(
    bundle_bytes: Option<&[u8]>,
    wrapping_key: Option<&[u8]>,
    rename: Option<&str>,
    secret: Option<&str>,
) -> Result<Imported> {
    audit::require_custodian("keyring_import", rename)?;
    let bundle_bytes = bundle_bytes.ok_or(KeysError::NullArgument("bundle"))?;
    let wrapping_key = wrapping(wrapping_key)?;
    let (json, keys) = bundle::open(wrapping_key, bundle_bytes).map_err(bundle_error)?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|_| KeysError::BadBundle("its header is not a keyring export's".into()))?;
    if header.format != FORMAT {
        return Err(KeysError::BadBundle(format!(
            "unknown format \"{}\"",
            header.format.escape_default()
        )));
    }
    if header.versions.iter().filter(|v| v.has_key).count() != keys.len() {
        return Err(KeysError::BadBundle(
            "it holds another number of keys than its header lists".into(),
        ));
    }
    let keyring = validate_keyring(Some(rename.unwrap_or(&header.keyring)))?.to_string();
    if let Some(sub) = store::key_tables_subscription()? {
        return Err(KeysError::LogicalReplica(sub));
    }
    for v in &header.versions {
        if store::key_by_id(v.key_id)?.is_some() {
            return Err(KeysError::DuplicateKeyId(v.key_id));
        }
    }
    // The key-encryption key, and the keyring row (refused if the name is taken).
    let (kek_root, kek_user) = if header.user_held {
        let (kek, kdf) = crate::userheld::kek_for_import(&keyring, secret)?;
        lock_order::keyring(
            &keyring,
            Row::New(&|| store::create_user_held_keyring(&keyring, &kdf)),
        )?;
        (None, Some(kek))
    } else {
        crate::userheld::check_namespace(&keyring, false)?;
        let root = crate::keyring::root_for_new_keys()?;
        lock_order::keyring(
            &keyring,
            Row::New(&|| store::create_keyring(&keyring, header.tenant.as_deref())),
        )?;
        (Some(root), None)
    };
    let (kek, fingerprint) = match (&kek_root, &kek_user) {
        (Some(root), _) => (&root.key, root.fingerprint),
        (_, Some(kek)) => (kek, kek.fingerprint()),
        _ => unreachable!(),
    };
    Spi::run_with_args(
        "UPDATE meshhook_keys.keyring SET rotation_interval = $2::pg_catalog.interval, max_encryptions = $3
          WHERE name OPERATOR(pg_catalog.=) $1",
        &[
            keyring.as_str().into(),
            header.rotation_interval.clone().into(),
            header.max_encryptions.into(),
        ],
    )?;
    // A root-wrapped active version waits for the standbys like a new one (keys_rotate): a
    // failover must not lose a key that seals. (A user-held one cannot wait: only its secret
    // could activate it.)
    let waits_for = match kek_root {
        Some(_) => crate::activation::must_wait()?,
        None => None,
    };
    let mut keys = keys.into_iter();
    let mut active_version = None;
    // (at most one version of a keyring is pending: if the source has one, it stays the one that
    // waits, and the source's active version stays active)
    let source_pending = header.versions.iter().any(|v| v.state == "pending");
    for v in &header.versions {
        let state = match (v.state.as_str(), v.has_key) {
            ("active", true) => {
                active_version = Some(v.version);
                if waits_for.is_some() && !source_pending {
                    "pending"
                } else {
                    "active"
                }
            }
            ("pending", true) => "pending",
            ("decrypt_only" | "retired", true) => v.state.as_str(),
            ("destroyed", false) => "destroyed",
            _ => {
                return Err(KeysError::BadBundle(format!(
                    "version {} has state \"{}\" and {} key",
                    v.version,
                    v.state.escape_default(),
                    if v.has_key { "a" } else { "no" }
                )));
            }
        };
        let wrapped = match v.has_key {
            true => {
                let dek = keys.next().ok_or_else(|| {
                    KeysError::BadBundle("it holds fewer keys than its header lists".into())
                })?;
                Some(store::wrap_new_key(
                    kek, &keyring, v.version, v.key_id, &dek,
                )?)
            }
            false => None,
        };
        Spi::run_with_args(
            "INSERT INTO meshhook_keys.data_key
                    (key_id, keyring, version, state, wrapped_key, root_fingerprint, created_at,
                     activated_at, retired_at, destroyed_at, encryptions)
             VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::pg_catalog.timestamptz, pg_catalog.now()),
                     CASE WHEN $4 OPERATOR(pg_catalog.<>) 'pending' THEN $8::pg_catalog.timestamptz END,
                     CASE WHEN $4 OPERATOR(pg_catalog.=) 'retired' THEN pg_catalog.now() END,
                     CASE WHEN $4 OPERATOR(pg_catalog.=) 'destroyed' THEN pg_catalog.now() END, $9)",
            &[
                v.key_id.into(),
                keyring.as_str().into(),
                v.version.into(),
                state.into(),
                wrapped.into(),
                fingerprint.to_vec().into(),
                Some(v.created_at.clone()).filter(|c| !c.is_empty()).into(),
                v.activated_at.clone().into(),
                v.encryptions.into(),
            ],
        )?;
    }
    if waits_for.is_some() {
        crate::served::set_activation_waiting(crate::served::this_database(), true);
    }
    if !header.user_held {
        store::register_secrets_store(&keyring)?;
    }
    let versions = header.versions.len() as i32;
    audit::record(
        "keyring_import",
        Some(&keyring),
        active_version,
        None,
        None,
        serde_json::json!({
            "source_keyring": header.keyring,
            "exported_at": header.exported_at,
            "versions": versions,
            "user_held": header.user_held,
            "pending_until_replayed_by": waits_for,
        }),
    )?;
    store::notify("keyring_import", &keyring, active_version)?;
    Ok(Imported {
        keyring,
        versions,
        active_version,
    })
}
