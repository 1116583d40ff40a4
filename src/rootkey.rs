//! The root key (key-encryption key): loaded from a file or a command, never from the database.
//!
//! Each backend loads it on first need and keeps it (zeroized on drop) until the provider setting
//! changes. When the library is preloaded, the postmaster checks the provider once at start-up and
//! writes one LOG line saying whether the key loaded, and its fingerprint; backends forked after that
//! inherit the loaded key, so a `root_key_command` runs once per server start, not per connection.

use crate::crypto::SecretKey;
use crate::error::{KeysError, Result};
use crate::gucs;

use std::cell::RefCell;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

/// Which provider produced a key: the cache is valid only while this stays the same.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Provider {
    File(String),
    Command(String),
}

pub struct RootKey {
    pub key: SecretKey,
    pub fingerprint: [u8; 8],
}

type Slot = RefCell<Option<(Provider, std::rc::Rc<RootKey>)>>;

thread_local! {
    static LOADED: Slot = const { RefCell::new(None) };
    static PREVIOUS: Slot = const { RefCell::new(None) };
}

/// Which provider the settings name. `which` is "root_key" or "root_key_previous".
fn provider_from(which: &str, file: Option<String>, command: Option<String>) -> Result<Provider> {
    match (file, command) {
        (Some(_), Some(_)) => Err(KeysError::RootKeyUnavailable(format!(
            "both meshhook_keys.{which}_file and meshhook_keys.{which}_command are set; set only one"
        ))),
        (Some(f), None) => Ok(Provider::File(f)),
        (None, Some(c)) => Ok(Provider::Command(c)),
        (None, None) => Err(KeysError::RootKeyUnavailable(format!(
            "neither meshhook_keys.{which}_file nor meshhook_keys.{which}_command is set"
        ))),
    }
}

fn provider() -> Result<Provider> {
    provider_from("root_key", gucs::root_key_file(), gucs::root_key_command())
}

fn read_file(path: &str) -> Result<SecretKey> {
    let unavailable =
        |why: String| KeysError::RootKeyUnavailable(format!("root key file \"{path}\": {why}"));
    let meta = std::fs::metadata(path).map_err(|e| unavailable(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(unavailable("not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    if meta.uid() != euid {
        return Err(unavailable(format!(
            "owned by uid {}, but it must be owned by the server's user (uid {euid})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unavailable(format!(
            "permissions {mode:04o} allow access by group or others; it must be 0600 or stricter (chmod 600)"
        )));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(80));
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut buf))
        .map_err(|e| unavailable(e.kind().to_string()))?;
    SecretKey::from_hex(&buf).map_err(|e| unavailable(crypto_why(e)))
}

fn run_command(cmd: &str) -> Result<SecretKey> {
    // The command text itself may embed credentials, so errors never repeat it.
    let unavailable = |why: String| {
        KeysError::RootKeyUnavailable(format!("meshhook_keys.root_key_command: {why}"))
    };
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("could not be started ({})", e.kind())))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(unavailable(format!("exited with {}", out.status)));
    }
    SecretKey::from_hex(&stdout)
        .map_err(|e| unavailable(format!("its output is not a root key: {}", crypto_why(e))))
}

fn crypto_why(e: crate::crypto::CryptoError) -> String {
    match e {
        crate::crypto::CryptoError::BadKeyEncoding(why) => why.to_string(),
        other => format!("{other:?}"),
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn load(p: &Provider) -> Result<RootKey> {
    let key = match p {
        Provider::File(path) => read_file(path)?,
        Provider::Command(cmd) => run_command(cmd)?,
    };
    let fingerprint = key.fingerprint();
    Ok(RootKey { key, fingerprint })
}

fn cached(slot: &'static std::thread::LocalKey<Slot>, p: Provider) -> Result<std::rc::Rc<RootKey>> {
    if let Some(k) = slot.with_borrow(|l| {
        l.as_ref()
            .filter(|(lp, _)| *lp == p)
            .map(|(_, k)| k.clone())
    }) {
        return Ok(k);
    }
    let key = std::rc::Rc::new(load(&p)?);
    slot.with_borrow_mut(|l| *l = Some((p, key.clone())));
    Ok(key)
}

/// The current root key, loading it if the provider setting changed or nothing is loaded yet.
pub fn current() -> Result<std::rc::Rc<RootKey>> {
    cached(&LOADED, provider()?)
}

/// The previous root key (meshhook_keys.root_key_previous_file / _command), for root_key_rewrap.
pub fn previous() -> Result<std::rc::Rc<RootKey>> {
    let p = provider_from(
        "root_key_previous",
        gucs::root_key_previous_file(),
        gucs::root_key_previous_command(),
    )?;
    cached(&PREVIOUS, p)
}

pub fn fingerprint_hex(fp: &[u8]) -> String {
    hex::encode(fp)
}

/// Called once in the postmaster when preloaded: load the key and say so in the server log.
pub fn startup_check() {
    match current() {
        Ok(k) => crate::logline::log(&format!(
            "meshhook_keys: root key loaded, fingerprint {}",
            fingerprint_hex(&k.fingerprint)
        )),
        Err(e) => crate::logline::log(&format!(
            "meshhook_keys: root key not loaded at startup: {e}"
        )),
    }
}
