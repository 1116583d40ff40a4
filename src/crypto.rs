//! Pure cryptography: the ciphertext envelope, data-key wrapping and the root key fingerprint.
//!
//! No pgrx types here, so everything is covered by plain `#[test]`s.
//!
//! Envelope (format 1):
//! ```text
//! [format: 1 byte = 0x01][key id: 8 bytes BE][nonce: 12 bytes][ciphertext][tag: 16 bytes]
//! AAD = the 9 header bytes || caller context (UTF-8 bytes)
//! ```

use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;
use std::mem::MaybeUninit;
use zeroize::{Zeroize, Zeroizing};

pub const FORMAT_V1: u8 = 1;
pub const KEY_ID_LEN: usize = 8;
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Smallest valid envelope: header, nonce and tag around an empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
pub const KEY_LEN: usize = 32;

/// Domain separation for wrapped data keys (format 1: bound to the key id only).
const WRAP_AAD_LABEL: &[u8] = b"meshhook_keys data key v1";
/// Format 2: bound to key id, keyring, version and tenant.
const WRAP_AAD_LABEL_V2: &[u8] = b"meshhook_keys data key v2";
/// Label for the root key fingerprint.
const FINGERPRINT_LABEL: &[u8] = b"meshhook_keys root key fingerprint v1";

#[derive(Debug, PartialEq, Eq)]
pub enum CryptoError {
    Truncated { len: usize },
    UnknownFormat(u8),
    AuthenticationFailed,
    BadKeyEncoding(&'static str),
}

/// 256 bits of key material that is wiped from memory when dropped.
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        SecretKey(k)
    }

    /// A key from exactly 32 bytes (a caller's wrapping key, a key from an export bundle).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::BadKeyEncoding("a key is exactly 32 bytes"));
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(bytes);
        Ok(SecretKey(k))
    }

    /// Parse 64 hex characters, surrounding whitespace ignored. The input is not echoed in errors.
    pub fn from_hex(text: &[u8]) -> Result<Self, CryptoError> {
        let trimmed = trim_ascii(text);
        if trimmed.len() != 2 * KEY_LEN {
            return Err(CryptoError::BadKeyEncoding(
                "expected exactly 64 hexadecimal characters (a 256-bit key)",
            ));
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(trimmed, k.as_mut()).map_err(|_| {
            CryptoError::BadKeyEncoding("the key contains non-hexadecimal characters")
        })?;
        Ok(SecretKey(k))
    }

    pub fn cipher(&self) -> Cipher {
        Cipher::new(&self.0)
    }

    /// The key's bytes, for the one place they leave as they are: a keyring export, sealed at
    /// once under the caller's wrapping key (the bundle module).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's MAC key (signatures and webhook secrets: see crate::mac).
    pub fn mac_key(&self) -> crate::mac::MacKey {
        crate::mac::MacKey::of_data_key(self.0.as_ref())
    }

    /// First 8 bytes of HMAC-SHA256(key, label): identifies a root key without revealing it.
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("any key length");
        mac.update(FINGERPRINT_LABEL);
        let out = mac.finalize().into_bytes();
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&out[..8]);
        fp
    }
}

/// An AES-256-GCM key ready to use: ring's implementation (its AES-NI/VAES and CLMUL code is about
/// twice as fast on a 100-byte value as the portable crates), with its key schedule and GHASH table
/// wiped from memory when dropped, which ring itself does not do.
pub struct Cipher(Box<MaybeUninit<LessSafeKey>>);

impl Cipher {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256-GCM key");
        Cipher(Box::new(MaybeUninit::new(LessSafeKey::new(unbound))))
    }

    fn key(&self) -> &LessSafeKey {
        // SAFETY: initialized in `new`, and only wiped in `drop`.
        unsafe { self.0.assume_init_ref() }
    }

    /// Encrypt `buf` in place under `nonce` with associated data `aad`; returns the tag.
    fn seal_in_place(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key()
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .expect("AES-GCM encryption of a bounded buffer cannot fail");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypt `buf` in place if `tag` authenticates it with `aad`; on failure `buf` is wiped.
    fn open_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let (Ok(nonce), Ok(tag)) = (Nonce::try_assume_unique_for_key(nonce), Tag::try_from(tag))
        else {
            buf.zeroize();
            return Err(CryptoError::AuthenticationFailed);
        };
        // (ring decrypts and checks the tag in one pass, and zeroes the buffer when it does not
        // match; wiped here again so that this does not depend on it)
        match self
            .key()
            .open_in_place_separate_tag(nonce, Aad::from(aad), tag, buf, 0..)
        {
            Ok(_) => Ok(()),
            Err(_) => {
                buf.zeroize();
                Err(CryptoError::AuthenticationFailed)
            }
        }
    }

    /// Overwrite the key with zeros (volatile writes): ring's key owns no heap memory and has no
    /// destructor (a test checks `needs_drop`), so this is all there is to dropping it.
    fn wipe(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key hidden)")
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Nonces come from the operating system's generator (getrandom), read 4 KiB at a time into a
/// per-process pool: one system call per 341 nonces instead of one per encryption. There is no
/// user-space generator whose state a fork() could duplicate; the one thing a fork could duplicate
/// is the pool itself, so a `pthread_atfork` child handler (registered before the first pool is
/// filled, and inherited by every child) bumps a fork generation, and a pool filled in another
/// generation is thrown away unused. Every backend is forked from the postmaster, so this is what
/// keeps two backends from ever drawing the same bytes.
const NONCE_POOL: usize = 341 * NONCE_LEN;

static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
static AT_FORK: std::sync::Once = std::sync::Once::new();

unsafe extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> i32;
}

unsafe extern "C" fn forked_child() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

struct NoncePool {
    generation: u64,
    used: usize,
    bytes: [u8; NONCE_POOL],
}

thread_local! {
    static NONCES: std::cell::RefCell<NoncePool> = const {
        std::cell::RefCell::new(NoncePool { generation: 0, used: NONCE_POOL, bytes: [0; NONCE_POOL] })
    };
}

fn random_nonce() -> [u8; NONCE_LEN] {
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic.
        unsafe { pthread_atfork(None, None, Some(forked_child)) };
    });
    NONCES.with_borrow_mut(|p| {
        let generation = FORK_GENERATION.load(std::sync::atomic::Ordering::SeqCst);
        if p.generation != generation || p.used + NONCE_LEN > NONCE_POOL {
            rand::rngs::OsRng.fill_bytes(&mut p.bytes);
            p.generation = generation;
            p.used = 0;
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&p.bytes[p.used..p.used + NONCE_LEN]);
        // (a drawn nonce is wiped from the pool: it is never handed out twice)
        p.bytes[p.used..p.used + NONCE_LEN].fill(0);
        p.used += NONCE_LEN;
        n
    })
}

/// A random positive 63-bit key id (never 0, never negative).
pub fn random_key_id() -> i64 {
    loop {
        let id = (rand::rngs::OsRng.next_u64() >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

/// The key id a value's first bytes name if they are a format-1 header, whatever follows (a
/// truncated envelope still names its key): what a registered column's rows are sorted by.
pub fn header_key_id(value: &[u8]) -> Option<i64> {
    let header = value.get(..HEADER_LEN)?;
    (header[0] == FORMAT_V1).then(|| {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&header[1..]);
        i64::from_be_bytes(id)
    })
}

/// Read the key id from an envelope header without decrypting anything.
pub fn parse_key_id(envelope: &[u8]) -> Result<i64, CryptoError> {
    if envelope.len() < MIN_ENVELOPE_LEN {
        return Err(CryptoError::Truncated {
            len: envelope.len(),
        });
    }
    if envelope[0] != FORMAT_V1 {
        return Err(CryptoError::UnknownFormat(envelope[0]));
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&envelope[1..HEADER_LEN]);
    Ok(i64::from_be_bytes(id))
}

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + context.len());
    a.extend_from_slice(header);
    a.extend_from_slice(context);
    a
}

/// `header ‖ context`, the associated data, handed to `f`: on the stack when it is short (the usual
/// case), so that the per-call path allocates nothing for it.
fn with_aad<R>(header: &[u8], context: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const ON_STACK: usize = 64;
    let n = header.len() + context.len();
    if n <= ON_STACK {
        let mut buf = [0u8; ON_STACK];
        buf[..header.len()].copy_from_slice(header);
        buf[header.len()..n].copy_from_slice(context);
        f(&buf[..n])
    } else {
        f(&aad(header, context))
    }
}

/// How many plaintext bytes a format-1 envelope holds (after [`parse_key_id`] accepted it).
pub fn plaintext_len(envelope: &[u8]) -> usize {
    envelope.len().saturating_sub(MIN_ENVELOPE_LEN)
}

/// Decrypt a format-1 envelope into `out`, exactly [`plaintext_len`] bytes, in place: the only
/// copy of the plaintext is the one in `out` (the caller's result buffer). Nothing of it is kept
/// unless the tag matches: on any failure `out` is wiped. The caller has resolved the key id.
pub fn open_into(
    cipher: &Cipher,
    envelope: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    parse_key_id(envelope)?;
    if out.len() != plaintext_len(envelope) {
        return Err(CryptoError::AuthenticationFailed);
    }
    let nonce = &envelope[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let (ct, tag) = envelope[HEADER_LEN + NONCE_LEN..].split_at(out.len());
    out.copy_from_slice(ct);
    with_aad(&envelope[..HEADER_LEN], context, |aad| {
        cipher.open_in_place(nonce, aad, out, tag)
    })
}

/// Encrypt `plaintext` under `cipher` (the data key `key_id`) into a format-1 envelope.
pub fn seal(cipher: &Cipher, key_id: i64, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; MIN_ENVELOPE_LEN + plaintext.len()];
    seal_into(cipher, key_id, plaintext, context, &mut out);
    out
}

/// Encrypt `plaintext` into `out`, exactly `MIN_ENVELOPE_LEN + plaintext.len()` bytes (the caller's
/// result buffer): sealed in place there, so no other buffer holds the plaintext. Cannot fail.
pub fn seal_into(cipher: &Cipher, key_id: i64, plaintext: &[u8], context: &[u8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        MIN_ENVELOPE_LEN + plaintext.len(),
        "envelope buffer size"
    );
    let nonce = random_nonce();
    let (head, rest) = out.split_at_mut(HEADER_LEN + NONCE_LEN);
    head[0] = FORMAT_V1;
    head[1..HEADER_LEN].copy_from_slice(&key_id.to_be_bytes());
    head[HEADER_LEN..].copy_from_slice(&nonce);
    let (body, tag_out) = rest.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let tag = with_aad(&head[..HEADER_LEN], context, |aad| {
        cipher.seal_in_place(nonce, aad, body)
    });
    tag_out.copy_from_slice(&tag);
}

/// Decrypt a format-1 envelope. The caller has already resolved the key id with [`parse_key_id`].
pub fn open(
    cipher: &Cipher,
    envelope: &[u8],
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    parse_key_id(envelope)?;
    let mut out = Zeroizing::new(vec![0u8; plaintext_len(envelope)]);
    open_into(cipher, envelope, context, &mut out)?;
    Ok(out)
}

/// What a wrapped data key is bound to: it unwraps only as this key id, of this keyring, version
/// and tenant. A wrapped key copied to another row, or a row whose keyring, version or tenant was
/// changed (a tampered backup), does not unwrap.
#[derive(Clone, Copy, Debug)]
pub struct KeyBinding<'a> {
    pub key_id: i64,
    pub keyring: &'a str,
    pub version: i32,
    pub tenant: Option<&'a str>,
}

/// The first byte of a wrapped key in format 2 (bound to keyring, version and tenant). Format 1
/// (0.4.0 and before) has no such byte: nonce, ciphertext and tag, bound to the key id only.
pub const WRAP_V2: u8 = 2;
const WRAP_V1_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
const WRAP_V2_LEN: usize = 1 + WRAP_V1_LEN;

fn wrap_aad_v1(key_id: i64) -> Vec<u8> {
    let mut a = WRAP_AAD_LABEL.to_vec();
    a.extend_from_slice(&key_id.to_be_bytes());
    a
}

/// Length-prefixed, so that no two bindings have the same bytes.
fn wrap_aad_v2(b: &KeyBinding<'_>) -> Vec<u8> {
    let mut a = WRAP_AAD_LABEL_V2.to_vec();
    a.extend_from_slice(&b.key_id.to_be_bytes());
    a.extend_from_slice(&(b.keyring.len() as u32).to_be_bytes());
    a.extend_from_slice(b.keyring.as_bytes());
    a.extend_from_slice(&b.version.to_be_bytes());
    match b.tenant {
        None => a.push(0),
        Some(t) => {
            a.push(1);
            a.extend_from_slice(&(t.len() as u32).to_be_bytes());
            a.extend_from_slice(t.as_bytes());
        }
    }
    a
}

/// Whether a wrapped key is in format 1 (bound to its key id only), to be rewrapped.
pub fn is_legacy_wrap(wrapped: &[u8]) -> bool {
    wrapped.len() == WRAP_V1_LEN
}

/// Wrap a data key under `kek` (the root key, or a user-held keyring's key-encryption key):
/// `2 || nonce || AES-256-GCM(dek) || tag`, bound to `binding`.
pub fn wrap_key(kek: &SecretKey, binding: &KeyBinding<'_>, dek: &SecretKey) -> Vec<u8> {
    seal_key(kek, &[WRAP_V2], &wrap_aad_v2(binding), dek)
}

/// Wrap a data key in format 1 (bound to its key id only): only for a schema from before 0.5.0,
/// whose table accepts nothing else, until ALTER EXTENSION ... UPDATE rewraps it in format 2.
pub fn wrap_key_v1(kek: &SecretKey, key_id: i64, dek: &SecretKey) -> Vec<u8> {
    seal_key(kek, &[], &wrap_aad_v1(key_id), dek)
}

/// `prefix || nonce || AES-256-GCM(dek, aad) || tag`.
fn seal_key(kek: &SecretKey, prefix: &[u8], aad: &[u8], dek: &SecretKey) -> Vec<u8> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(WRAP_V2_LEN);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    // (sealed in place in the output: no other buffer holds the data key)
    let start = out.len();
    out.extend_from_slice(dek.0.as_ref());
    let tag = kek.cipher().seal_in_place(nonce, aad, &mut out[start..]);
    out.extend_from_slice(&tag);
    out
}

/// Unwrap a data key. Format 2 must match `binding` exactly; format 1 (key id only) is accepted
/// only when `legacy_ok` (before the upgrade rewrapped it, or a user-held keyring not unlocked
/// since: see the callers).
pub fn unwrap_key(
    kek: &SecretKey,
    binding: &KeyBinding<'_>,
    wrapped: &[u8],
    legacy_ok: bool,
) -> Result<SecretKey, CryptoError> {
    let (nonce, body, aad) = match wrapped.len() {
        WRAP_V2_LEN if wrapped[0] == WRAP_V2 => (
            &wrapped[1..1 + NONCE_LEN],
            &wrapped[1 + NONCE_LEN..],
            wrap_aad_v2(binding),
        ),
        WRAP_V2_LEN => return Err(CryptoError::UnknownFormat(wrapped[0])),
        WRAP_V1_LEN if legacy_ok => (
            &wrapped[..NONCE_LEN],
            &wrapped[NONCE_LEN..],
            wrap_aad_v1(binding.key_id),
        ),
        WRAP_V1_LEN => return Err(CryptoError::UnknownFormat(1)),
        n => return Err(CryptoError::Truncated { len: n }),
    };
    if body.len() != KEY_LEN + TAG_LEN {
        return Err(CryptoError::AuthenticationFailed);
    }
    let (ct, tag) = body.split_at(KEY_LEN);
    let mut plain = Zeroizing::new([0u8; KEY_LEN]);
    plain.copy_from_slice(ct);
    kek.cipher()
        .open_in_place(nonce, &aad, plain.as_mut(), tag)?;
    Ok(SecretKey(plain))
}

/// Argon2id parameters of a user-held keyring's key-encryption key (stored with the keyring).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    /// These costs (memory in KiB, passes, lanes) with a fresh random salt.
    pub fn new_random((m_cost, t_cost, p_cost): (u32, u32, u32)) -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        KdfParams {
            m_cost,
            t_cost,
            p_cost,
            salt,
        }
    }

    /// Whether these costs are below `(m, t)` in memory or passes (then an unlock raises them).
    pub fn weaker_than(&self, (m_cost, t_cost, _): (u32, u32, u32)) -> bool {
        self.m_cost < m_cost || self.t_cost < t_cost
    }
}

/// Derive a user-held keyring's key-encryption key from the user's secret with Argon2id (v1.3).
/// The full cost is paid on every call, so a wrong secret is only known after it.
pub fn derive_kek(secret: &[u8], p: &KdfParams) -> Result<SecretKey, CryptoError> {
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(KEY_LEN))
        .map_err(|_| CryptoError::BadKeyEncoding("invalid Argon2id parameters"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(secret, &p.salt, out.as_mut())
        .map_err(|_| CryptoError::BadKeyEncoding("Argon2id failed"))?;
    Ok(SecretKey(out))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn roundtrip_with_context() {
        let c = key().cipher();
        let env = seal(&c, 42, b"hunter2", b"tenant-1");
        assert_eq!(env.len(), MIN_ENVELOPE_LEN + 7);
        assert_eq!(env[0], FORMAT_V1);
        assert_eq!(parse_key_id(&env).unwrap(), 42);
        assert_eq!(open(&c, &env, b"tenant-1").unwrap().as_slice(), b"hunter2");
    }

    #[test]
    fn open_into_decrypts_in_place_and_wipes_on_failure() {
        let c = key().cipher();
        // a context longer than the stack buffer for the associated data (64 bytes) takes the heap path
        for context in [&b"tenant-1"[..], &[7u8; 300][..]] {
            let env = seal(&c, 42, b"hunter2", context);
            let mut out = vec![0xAAu8; plaintext_len(&env)];
            open_into(&c, &env, context, &mut out).unwrap();
            assert_eq!(out, b"hunter2");
            assert_eq!(open(&c, &env, context).unwrap().as_slice(), b"hunter2");
            // wrong context, tampered body, tampered tag: refused, and the buffer holds nothing
            let mut tampered = env.clone();
            tampered[MIN_ENVELOPE_LEN - TAG_LEN] ^= 1;
            let mut bad_tag = env.clone();
            *bad_tag.last_mut().unwrap() ^= 1;
            for (e, ctx) in [
                (&env, &b"other"[..]),
                (&tampered, context),
                (&bad_tag, context),
            ] {
                let mut out = vec![0xAAu8; plaintext_len(e)];
                assert!(open_into(&c, e, ctx, &mut out).is_err());
                assert!(
                    out.iter().all(|&b| b == 0),
                    "a failed open leaves the buffer wiped"
                );
            }
            // a buffer of another length is refused
            let mut short = vec![0u8; 3];
            assert!(open_into(&c, &env, context, &mut short).is_err());
        }
    }

    #[test]
    fn a_dropped_cipher_leaves_no_key_bytes() {
        // wiping is all that dropping ring's key takes: it has no destructor of its own
        assert!(!std::mem::needs_drop::<LessSafeKey>());
        let mut c = key().cipher();
        let bytes = |c: &Cipher| {
            // SAFETY: after `wipe` every byte of the box, padding included, was written (zero).
            unsafe {
                std::slice::from_raw_parts(
                    c.0.as_ptr().cast::<u8>(),
                    std::mem::size_of::<LessSafeKey>(),
                )
            }
            .to_vec()
        };
        c.wipe();
        assert!(
            bytes(&c).iter().all(|&b| b == 0),
            "a wiped key is all zeros"
        );
    }

    #[test]
    fn empty_plaintext_roundtrips() {
        let c = key().cipher();
        let env = seal(&c, 1, b"", b"");
        assert_eq!(env.len(), MIN_ENVELOPE_LEN);
        assert_eq!(open(&c, &env, b"").unwrap().len(), 0);
    }

    #[test]
    fn a_fork_never_repeats_a_nonce() {
        // a child of a fork must not draw the parent's pooled bytes
        let before = random_nonce();
        let _ = before;
        let pool_next = NONCES.with_borrow(|p| p.bytes[p.used..p.used + NONCE_LEN].to_vec());
        // SAFETY: what the atfork handler does in a child
        unsafe { forked_child() };
        let after = random_nonce();
        assert_ne!(
            after.to_vec(),
            pool_next,
            "a new fork generation must refill the pool"
        );
        // and within one process, 1,000 nonces (three refills) are all distinct
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(random_nonce()));
        }
    }

    #[test]
    fn a_real_fork_draws_fresh_bytes() {
        unsafe extern "C" {
            fn fork() -> i32;
            fn pipe(fds: *mut i32) -> i32;
            fn write(fd: i32, buf: *const u8, n: usize) -> isize;
            fn read(fd: i32, buf: *mut u8, n: usize) -> isize;
            fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
            fn _exit(code: i32) -> !;
        }
        let _ = random_nonce(); // the pool is filled in this process
        let mut fds = [0i32; 2];
        // SAFETY: a plain pipe and fork; the child only draws a nonce, writes it and exits.
        unsafe {
            assert_eq!(pipe(fds.as_mut_ptr()), 0);
            let pid = fork();
            assert!(pid >= 0);
            if pid == 0 {
                let n = random_nonce();
                write(fds[1], n.as_ptr(), NONCE_LEN);
                _exit(0);
            }
            let mut child = [0u8; NONCE_LEN];
            assert_eq!(
                read(fds[0], child.as_mut_ptr(), NONCE_LEN),
                NONCE_LEN as isize
            );
            let mut status = 0;
            waitpid(pid, &mut status, 0);
            let parent = random_nonce();
            assert_ne!(
                child, parent,
                "parent and child drew the same nonce after a fork"
            );
        }
    }

    #[test]
    fn nonces_differ_between_encryptions() {
        let c = key().cipher();
        let a = seal(&c, 1, b"same", b"");
        let b = seal(&c, 1, b"same", b"");
        assert_ne!(
            a, b,
            "random nonce must make equal plaintexts encrypt differently"
        );
    }

    #[test]
    fn wrong_context_fails() {
        let c = key().cipher();
        let env = seal(&c, 1, b"secret", b"tenant-1");
        assert_eq!(
            open(&c, &env, b"tenant-2").unwrap_err(),
            CryptoError::AuthenticationFailed
        );
        assert_eq!(
            open(&c, &env, b"").unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn every_tampered_byte_fails() {
        let c = key().cipher();
        let env = seal(&c, 9, b"0123456789", b"ctx");
        for i in 0..env.len() {
            let mut t = env.clone();
            t[i] ^= 0x01;
            let r = open(&c, &t, b"ctx");
            assert!(r.is_err(), "flipping byte {i} must be detected");
        }
    }

    #[test]
    fn header_key_id_is_authenticated() {
        // Rewriting the key id to another key's id must not decrypt even under the same key.
        let c = key().cipher();
        let mut env = seal(&c, 5, b"x", b"");
        env[1..9].copy_from_slice(&6i64.to_be_bytes());
        assert_eq!(
            open(&c, &env, b"").unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn truncation_is_reported_with_length() {
        let c = key().cipher();
        let env = seal(&c, 1, b"abc", b"");
        for n in 0..MIN_ENVELOPE_LEN {
            assert_eq!(
                parse_key_id(&env[..n]).unwrap_err(),
                CryptoError::Truncated { len: n }
            );
        }
        // Cutting inside the tag still parses the header but fails authentication.
        assert_eq!(
            open(&c, &env[..env.len() - 1], b"").unwrap_err(),
            CryptoError::AuthenticationFailed
        );
    }

    #[test]
    fn unknown_format_is_rejected() {
        let c = key().cipher();
        let mut env = seal(&c, 1, b"abc", b"");
        env[0] = 2;
        assert_eq!(
            parse_key_id(&env).unwrap_err(),
            CryptoError::UnknownFormat(2)
        );
    }

    fn bind(key_id: i64) -> KeyBinding<'static> {
        KeyBinding {
            key_id,
            keyring: "ring",
            version: 3,
            tenant: Some("t1"),
        }
    }

    #[test]
    fn wrap_unwrap_roundtrip_and_binding() {
        let root = key();
        let dek = SecretKey::generate();
        let w = wrap_key(&root, &bind(77), &dek);
        assert_eq!(w.len(), 1 + NONCE_LEN + KEY_LEN + TAG_LEN);
        assert_eq!(w[0], WRAP_V2);
        assert!(!is_legacy_wrap(&w));
        let back = unwrap_key(&root, &bind(77), &w, false).unwrap();
        assert_eq!(back.0.as_ref(), dek.0.as_ref());
        // bound to key id, keyring, version and tenant
        let fails = |b: KeyBinding<'_>| {
            assert_eq!(
                unwrap_key(&root, &b, &w, true).err(),
                Some(CryptoError::AuthenticationFailed),
                "{b:?}"
            )
        };
        fails(bind(78));
        fails(KeyBinding {
            keyring: "other",
            ..bind(77)
        });
        fails(KeyBinding {
            version: 4,
            ..bind(77)
        });
        fails(KeyBinding {
            tenant: Some("t2"),
            ..bind(77)
        });
        fails(KeyBinding {
            tenant: None,
            ..bind(77)
        });
        // no two bindings share their bytes: ("ab", tenant "c") is not ("a", tenant "bc")
        let ab = KeyBinding {
            keyring: "ab",
            tenant: Some("c"),
            ..bind(1)
        };
        let a = KeyBinding {
            keyring: "a",
            tenant: Some("bc"),
            ..bind(1)
        };
        let w2 = wrap_key(&root, &ab, &dek);
        assert!(unwrap_key(&root, &a, &w2, false).is_err());
        // wrong root key
        let other = SecretKey::from_bytes(&[8u8; 32]).unwrap();
        assert_eq!(
            unwrap_key(&other, &bind(77), &w, false).err(),
            Some(CryptoError::AuthenticationFailed)
        );
        assert_eq!(
            unwrap_key(&root, &bind(77), &w[..10], false).err(),
            Some(CryptoError::Truncated { len: 10 })
        );
    }

    #[test]
    fn legacy_wraps_unwrap_only_when_allowed() {
        // format 1, as 0.4.0 wrote it: nonce || AES-GCM(dek, aad = label || key id)
        let root = key();
        let dek = SecretKey::generate();
        let w = wrap_key_v1(&root, 77, &dek);
        assert_eq!(w.len(), NONCE_LEN + KEY_LEN + TAG_LEN);
        assert!(is_legacy_wrap(&w));
        let back = unwrap_key(&root, &bind(77), &w, true).unwrap();
        assert_eq!(back.0.as_ref(), dek.0.as_ref());
        assert_eq!(
            unwrap_key(&root, &bind(77), &w, false).err(),
            Some(CryptoError::UnknownFormat(1))
        );
        assert_eq!(
            unwrap_key(&root, &bind(78), &w, true).err(),
            Some(CryptoError::AuthenticationFailed)
        );
    }

    #[test]
    fn fingerprint_is_stable_and_distinguishes_keys() {
        let a = key().fingerprint();
        assert_eq!(a, key().fingerprint());
        assert_ne!(a, SecretKey::from_bytes(&[8u8; 32]).unwrap().fingerprint());
        // Known answer, computed independently with Python's hmac module:
        // hmac.new(bytes([7]*32), b"meshhook_keys root key fingerprint v1", sha256).hexdigest()[:16]
        assert_eq!(hex::encode(a), "53814299190b1a8b");
    }

    #[test]
    fn hex_parsing() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let k = SecretKey::from_hex(format!("  {hex64}\n").as_bytes()).unwrap();
        assert_eq!(hex::encode(k.0.as_ref()), hex64);
        assert!(SecretKey::from_hex(&hex64.as_bytes()[..62]).is_err());
        assert!(SecretKey::from_hex(hex64.replace('a', "g").as_bytes()).is_err());
        assert!(SecretKey::from_hex(b"").is_err());
    }

    #[test]
    fn key_ids_are_positive() {
        for _ in 0..1000 {
            assert!(random_key_id() > 0);
        }
    }

    #[test]
    fn argon2id_kek_depends_on_secret_and_salt() {
        let p = KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
            salt: [7u8; 16],
        };
        let a = derive_kek(b"correct horse", &p).unwrap();
        let b = derive_kek(b"correct horse", &p).unwrap();
        let c = derive_kek(b"correct horsE", &p).unwrap();
        let d = derive_kek(
            b"correct horse",
            &KdfParams {
                salt: [8u8; 16],
                ..p.clone()
            },
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_ne!(a.fingerprint(), d.fingerprint());
        // a data key wrapped under one secret does not unwrap under another
        let dek = SecretKey::generate();
        let w = wrap_key(&a, &bind(42), &dek);
        assert!(unwrap_key(&b, &bind(42), &w, false).is_ok());
        assert_eq!(
            unwrap_key(&c, &bind(42), &w, false).err(),
            Some(CryptoError::AuthenticationFailed)
        );
    }
}

/// Property tests of the envelope parser, `open` and key unwrapping: whatever the bytes, they return
/// an error rather than panic, and nothing but an unaltered envelope (or wrapped key), under its own
/// key and context, is accepted. Bounded (256 cases each, inputs up to 4 KiB) to stay fast in CI.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn cipher_of(key: &[u8; KEY_LEN]) -> Cipher {
        SecretKey::from_bytes(key).unwrap().cipher()
    }

    fn plaintext() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..4096)
    }

    fn context() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..64)
    }

    /// Arbitrary bytes, half of them starting with the format-1 byte so that the header parses.
    fn header_or_not() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..256),
            vec(any::<u8>(), 0..256).prop_map(|mut v| {
                if let Some(b) = v.first_mut() {
                    *b = FORMAT_V1;
                }
                v
            }),
        ]
    }

    /// Replace `len` bytes at `at` (clamped to the buffer) with `with`.
    fn splice(buf: &[u8], at: Index, len: usize, with: &[u8]) -> Vec<u8> {
        let start = at.index(buf.len() + 1);
        let end = (start + len).min(buf.len());
        let mut out = buf[..start].to_vec();
        out.extend_from_slice(with);
        out.extend_from_slice(&buf[end..]);
        out
    }

    /// The same AES-256-GCM computed by another implementation (RustCrypto's, which 0.4.0 used):
    /// envelopes written before the switch to ring open, and envelopes written now open elsewhere.
    fn other_gcm(key: &[u8; KEY_LEN]) -> aes_gcm::Aes256Gcm {
        use aes_gcm::KeyInit;
        aes_gcm::Aes256Gcm::new_from_slice(key).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn envelopes_match_another_implementation(
            key in any::<[u8; KEY_LEN]>(),
            key_id in any::<i64>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            pt in plaintext(),
            ctx in context(),
        ) {
            use aes_gcm::aead::{Aead, Payload};
            let other = other_gcm(&key);
            // ours, opened by the other
            let env = seal(&cipher_of(&key), key_id, &pt, &ctx);
            let aad = super::aad(&env[..HEADER_LEN], &ctx);
            let back = other.decrypt(
                aes_gcm::Nonce::from_slice(&env[HEADER_LEN..HEADER_LEN + NONCE_LEN]),
                Payload { msg: &env[HEADER_LEN + NONCE_LEN..], aad: &aad },
            ).unwrap();
            prop_assert_eq!(back.as_slice(), pt.as_slice());
            // the other's, opened by ours
            let mut theirs = vec![FORMAT_V1];
            theirs.extend_from_slice(&key_id.to_be_bytes());
            theirs.extend_from_slice(&nonce);
            let aad = super::aad(&theirs[..HEADER_LEN], &ctx);
            let ct = other.encrypt(aes_gcm::Nonce::from_slice(&nonce), Payload { msg: &pt, aad: &aad }).unwrap();
            theirs.extend_from_slice(&ct);
            let back = open(&cipher_of(&key), &theirs, &ctx).unwrap();
            prop_assert_eq!(back.as_slice(), pt.as_slice());
            // and a wrapped key made by the other unwraps
            let dek = SecretKey::from_bytes(&key).unwrap();
            let binding = KeyBinding { key_id, keyring: "k", version: 1, tenant: None };
            let waad = wrap_aad_v2(&binding);
            let mut wrapped = vec![WRAP_V2];
            wrapped.extend_from_slice(&nonce);
            wrapped.extend_from_slice(&other.encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload { msg: dek.0.as_ref(), aad: &waad },
            ).unwrap());
            let kek = SecretKey::from_bytes(&key).unwrap();
            let un = unwrap_key(&kek, &binding, &wrapped, false).unwrap();
            prop_assert_eq!(un.0.as_ref(), dek.0.as_ref());
        }

        #[test]
        fn seal_open_roundtrips(
            key in any::<[u8; KEY_LEN]>(),
            key_id in any::<i64>(),
            pt in plaintext(),
            ctx in context(),
        ) {
            let c = cipher_of(&key);
            let env = seal(&c, key_id, &pt, &ctx);
            prop_assert_eq!(env.len(), MIN_ENVELOPE_LEN + pt.len());
            prop_assert_eq!(env[0], FORMAT_V1);
            prop_assert_eq!(parse_key_id(&env), Ok(key_id));
            let back = open(&c, &env, &ctx).unwrap();
            prop_assert_eq!(back.as_slice(), pt.as_slice());
        }

        #[test]
        fn any_bit_flip_fails(
            key in any::<[u8; KEY_LEN]>(),
            key_id in any::<i64>(),
            pt in vec(any::<u8>(), 0..512),
            ctx in context(),
            at in any::<Index>(),
            bit in 0u8..8,
        ) {
            let c = cipher_of(&key);
            let mut env = seal(&c, key_id, &pt, &ctx);
            let i = at.index(env.len());
            env[i] ^= 1 << bit;
            let r = open(&c, &env, &ctx);
            prop_assert!(r.is_err(), "flipping bit {} of byte {} was not detected", bit, i);
            if i == 0 {
                prop_assert_eq!(r.unwrap_err(), CryptoError::UnknownFormat(FORMAT_V1 ^ (1 << bit)));
            } else {
                prop_assert_eq!(r.unwrap_err(), CryptoError::AuthenticationFailed);
            }
        }

        #[test]
        fn any_truncation_fails(
            key in any::<[u8; KEY_LEN]>(),
            pt in vec(any::<u8>(), 0..512),
            ctx in context(),
            at in any::<Index>(),
        ) {
            let c = cipher_of(&key);
            let env = seal(&c, 1, &pt, &ctx);
            let n = at.index(env.len()); // 0..len: always strictly shorter
            let r = open(&c, &env[..n], &ctx);
            if n < MIN_ENVELOPE_LEN {
                prop_assert_eq!(r.unwrap_err(), CryptoError::Truncated { len: n });
            } else {
                prop_assert_eq!(r.unwrap_err(), CryptoError::AuthenticationFailed);
            }
        }

        #[test]
        fn any_appended_bytes_fail(
            key in any::<[u8; KEY_LEN]>(),
            pt in vec(any::<u8>(), 0..512),
            ctx in context(),
            extra in vec(any::<u8>(), 1..128),
        ) {
            let c = cipher_of(&key);
            let mut env = seal(&c, 1, &pt, &ctx);
            env.extend_from_slice(&extra);
            prop_assert_eq!(open(&c, &env, &ctx).unwrap_err(), CryptoError::AuthenticationFailed);
        }

        #[test]
        fn any_splice_fails(
            key in any::<[u8; KEY_LEN]>(),
            pt in vec(any::<u8>(), 0..512),
            ctx in context(),
            at in any::<Index>(),
            len in 0usize..64,
            with in vec(any::<u8>(), 0..64),
        ) {
            let c = cipher_of(&key);
            let env = seal(&c, 1, &pt, &ctx);
            let spliced = splice(&env, at, len, &with);
            prop_assume!(spliced != env);
            prop_assert!(open(&c, &spliced, &ctx).is_err());
        }

        #[test]
        fn parse_key_id_accepts_exactly_the_format_header(bytes in header_or_not()) {
            let r = parse_key_id(&bytes);
            if bytes.len() < MIN_ENVELOPE_LEN {
                prop_assert_eq!(r, Err(CryptoError::Truncated { len: bytes.len() }));
            } else if bytes[0] != FORMAT_V1 {
                prop_assert_eq!(r, Err(CryptoError::UnknownFormat(bytes[0])));
            } else {
                let id = i64::from_be_bytes(bytes[1..HEADER_LEN].try_into().unwrap());
                prop_assert_eq!(r, Ok(id));
            }
        }

        #[test]
        fn open_rejects_arbitrary_bytes(
            key in any::<[u8; KEY_LEN]>(),
            bytes in header_or_not(),
            ctx in context(),
        ) {
            prop_assert!(open(&cipher_of(&key), &bytes, &ctx).is_err());
        }

        #[test]
        fn wrong_context_or_key_fails(
            key in any::<[u8; KEY_LEN]>(),
            other_key in any::<[u8; KEY_LEN]>(),
            pt in vec(any::<u8>(), 0..512),
            ctx in context(),
            other_ctx in context(),
        ) {
            let c = cipher_of(&key);
            let env = seal(&c, 1, &pt, &ctx);
            if other_ctx != ctx {
                prop_assert_eq!(open(&c, &env, &other_ctx).unwrap_err(), CryptoError::AuthenticationFailed);
            }
            if other_key != key {
                let o = cipher_of(&other_key);
                prop_assert_eq!(open(&o, &env, &ctx).unwrap_err(), CryptoError::AuthenticationFailed);
            }
        }

        #[test]
        fn unwrap_key_rejects_mutations(
            root in any::<[u8; KEY_LEN]>(),
            other_root in any::<[u8; KEY_LEN]>(),
            dek in any::<[u8; KEY_LEN]>(),
            key_id in any::<i64>(),
            other_id in any::<i64>(),
            at in any::<Index>(),
            bit in 0u8..8,
            cut in any::<Index>(),
            extra in vec(any::<u8>(), 1..32),
            splice_at in any::<Index>(),
            splice_len in 0usize..32,
            with in vec(any::<u8>(), 0..32),
        ) {
            let root_bytes = root;
            let root = SecretKey::from_bytes(&root_bytes).unwrap();
            let b = |id: i64| KeyBinding { key_id: id, keyring: "ring", version: 1, tenant: None };
            let w = wrap_key(&root, &b(key_id), &SecretKey::from_bytes(&dek).unwrap());
            let back = unwrap_key(&root, &b(key_id), &w, false).unwrap();
            prop_assert_eq!(&back.0[..], &dek[..]);

            let mut flipped = w.clone();
            let i = at.index(w.len());
            flipped[i] ^= 1 << bit;
            let r = unwrap_key(&root, &b(key_id), &flipped, false).err();
            if i == 0 {
                prop_assert_eq!(r, Some(CryptoError::UnknownFormat(WRAP_V2 ^ (1 << bit))));
            } else {
                prop_assert_eq!(r, Some(CryptoError::AuthenticationFailed));
            }

            let n = cut.index(w.len());
            let r = unwrap_key(&root, &b(key_id), &w[..n], true).err();
            if n == WRAP_V1_LEN {
                // (as long as a format-1 wrap: its bytes do not authenticate as one)
                prop_assert_eq!(r, Some(CryptoError::AuthenticationFailed));
            } else {
                prop_assert_eq!(r, Some(CryptoError::Truncated { len: n }));
            }

            let mut longer = w.clone();
            longer.extend_from_slice(&extra);
            prop_assert_eq!(
                unwrap_key(&root, &b(key_id), &longer, false).err(),
                Some(CryptoError::Truncated { len: longer.len() })
            );

            let spliced = splice(&w, splice_at, splice_len, &with);
            if spliced != w {
                prop_assert!(unwrap_key(&root, &b(key_id), &spliced, true).is_err());
            }

            if other_id != key_id {
                prop_assert_eq!(unwrap_key(&root, &b(other_id), &w, false).err(), Some(CryptoError::AuthenticationFailed));
            }
            if other_root != root_bytes {
                let other = SecretKey::from_bytes(&other_root).unwrap();
                prop_assert_eq!(unwrap_key(&other, &b(key_id), &w, false).err(), Some(CryptoError::AuthenticationFailed));
            }
        }

        #[test]
        fn unwrap_key_rejects_arbitrary_bytes(
            root in any::<[u8; KEY_LEN]>(),
            key_id in any::<i64>(),
            bytes in vec(any::<u8>(), 0..128),
        ) {
            let root = SecretKey::from_bytes(&root).unwrap();
            let b = KeyBinding { key_id, keyring: "ring", version: 1, tenant: None };
            prop_assert!(unwrap_key(&root, &b, &bytes, true).is_err());
        }
    }
}
