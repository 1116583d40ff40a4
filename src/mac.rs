//! Pure cryptography of the keys derived from a data key for purposes other than AES-GCM: message
//! signatures (`hmac_sign`), webhook signatures (`t=<unix>,v1=<hex>`) and their receivers'
//! secrets, and blind indexes. No pgrx types here, so everything is covered by plain `#[test]`s.
//!
//! Every data key version has one MAC key, HMAC-SHA256(data key, "meshhook_keys mac key v1"),
//! computed when the version is unwrapped; each purpose and context has its own subkey of it,
//! HMAC-SHA256(MAC key, purpose label || 0x00 || context). HMAC is a PRF, so the subkeys are
//! independent of each other and of the data key: disclosing one (a webhook receiver's secret)
//! tells nothing about the data key, the other contexts' subkeys or the other purposes'. A MAC key
//! therefore has the data key's life: it is versioned, wrapped (by the data key's wrapping),
//! rotated, retired and destroyed with it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub const MAC_LEN: usize = 32;
/// A blind index is a MAC truncated to 128 bits: distinct values of a column do not collide in
/// practice, so an equality search needs no second check.
pub const BLIND_INDEX_LEN: usize = 16;
/// The label of a data key's MAC key.
pub const MAC_KEY_LABEL: &[u8] = b"meshhook_keys mac key v1";
/// The prefix of a signature made by `hmac_sign`: `meshhook:v<version>:<64 hex digits>`.
const SIGNATURE_PREFIX: &str = "meshhook:v";
/// The prefix of a webhook receiver's secret.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
/// The scheme of a webhook signature in the header (`v1=`).
const WEBHOOK_SCHEME: &str = "v1";
/// Longest webhook header `webhook_verify` reads, and most signatures in it: beyond, it is refused
/// without computing anything (a sender never needs more).
pub const MAX_HEADER_LEN: usize = 8192;
pub const MAX_HEADER_SIGNATURES: usize = 32;

/// What a subkey is for (its label).
#[derive(Clone, Copy)]
pub enum Purpose {
    /// `hmac_sign` / `hmac_verify`.
    Signature,
    /// The webhook receiver's secret (`webhook_secret`), which keys `webhook_sign`.
    Webhook,
    /// `blind_index`.
    BlindIndex,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Signature => b"signature v1",
            Purpose::Webhook => b"webhook v1",
            Purpose::BlindIndex => b"blind index v1",
        }
    }
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Whether two MACs are equal, in time that does not depend on where they differ.
pub fn mac_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // (black_box: keep the compiler from turning the fold into an early-exit comparison)
    std::hint::black_box(diff) == 0
}

/// A data key version's MAC key, wiped from memory when dropped.
pub struct MacKey(Zeroizing<[u8; MAC_LEN]>);

impl MacKey {
    /// The MAC key of a data key (the raw 256-bit key).
    pub fn of_data_key(dek: &[u8]) -> Self {
        MacKey(Zeroizing::new(hmac_sha256(dek, &[MAC_KEY_LABEL])))
    }

    fn subkey(&self, purpose: Purpose, context: &[u8]) -> Zeroizing<[u8; MAC_LEN]> {
        Zeroizing::new(hmac_sha256(
            self.0.as_ref(),
            &[purpose.label(), &[0], context],
        ))
    }

    /// The MAC of `payload` for `hmac_sign` under `context`.
    pub fn sign(&self, context: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        hmac_sha256(
            self.subkey(Purpose::Signature, context).as_ref(),
            &[payload],
        )
    }

    /// The blind index of `value` under `context`: the first [`BLIND_INDEX_LEN`] bytes of its
    /// MAC, equal for equal values and for nothing else (docs/src/blind-index.md says what that
    /// reveals).
    pub fn blind_index(&self, context: &[u8], value: &[u8]) -> [u8; BLIND_INDEX_LEN] {
        let full = hmac_sha256(self.subkey(Purpose::BlindIndex, context).as_ref(), &[value]);
        let mut out = [0u8; BLIND_INDEX_LEN];
        out.copy_from_slice(&full[..BLIND_INDEX_LEN]);
        out
    }

    /// The secret a webhook receiver of `context` holds: `whsec_` and 64 hex digits. As in
    /// Stripe's scheme, the whole string (its ASCII bytes) is the HMAC key, so a receiver's
    /// existing verifier code works unchanged.
    pub fn webhook_secret(&self, context: &[u8]) -> Zeroizing<String> {
        let sub = self.subkey(Purpose::Webhook, context);
        let mut s = Zeroizing::new(String::with_capacity(WEBHOOK_SECRET_PREFIX.len() + 64));
        s.push_str(WEBHOOK_SECRET_PREFIX);
        let hexed = Zeroizing::new(hex::encode(sub.as_ref()));
        s.push_str(&hexed);
        s
    }

    /// The `v1` signature of a webhook sent at `timestamp` (unix seconds): HMAC-SHA256 keyed by
    /// the receiver's secret over `<timestamp>.<payload>`.
    pub fn webhook_signature(
        &self,
        context: &[u8],
        timestamp: i64,
        payload: &[u8],
    ) -> [u8; MAC_LEN] {
        webhook_mac(self.webhook_secret(context).as_bytes(), timestamp, payload)
    }
}

/// What a receiver computes with its secret (the ASCII bytes of `whsec_...`).
pub fn webhook_mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> [u8; MAC_LEN] {
    hmac_sha256(secret, &[timestamp.to_string().as_bytes(), b".", payload])
}

/// `meshhook:v<version>:<hex>`.
pub fn format_signature(version: i32, mac: &[u8; MAC_LEN]) -> String {
    format!("{SIGNATURE_PREFIX}{version}:{}", hex::encode(mac))
}

/// The version and MAC of a signature made by [`format_signature`]; `None` for anything else.
pub fn parse_signature(s: &str) -> Option<(i32, [u8; MAC_LEN])> {
    let rest = s.strip_prefix(SIGNATURE_PREFIX)?;
    let (version, hexed) = rest.split_once(':')?;
    Some((
        canonical_number(version, 10)?.try_into().ok()?,
        parse_mac(hexed)?,
    ))
}

/// A number written as [`format_signature`] and [`format_header`] write it: decimal digits, at
/// most `max_digits`, no sign and no leading zero (so that one signature has one spelling only).
fn canonical_number(s: &str, max_digits: usize) -> Option<i64> {
    let ok = !s.is_empty()
        && s.len() <= max_digits
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if ok { s.parse().ok() } else { None }
}

/// 64 lowercase hex digits, as `hex::encode` writes them.
fn parse_mac(hexed: &str) -> Option<[u8; MAC_LEN]> {
    if hexed.len() != 2 * MAC_LEN
        || !hexed
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut mac = [0u8; MAC_LEN];
    hex::decode_to_slice(hexed, &mut mac).ok()?;
    Some(mac)
}

/// `t=<timestamp>,v1=<hex>,v1=<hex>...`: one `v1` per signing version, newest first.
pub fn format_header(timestamp: i64, macs: &[[u8; MAC_LEN]]) -> String {
    let mut s = format!("t={timestamp}");
    for m in macs {
        s.push(',');
        s.push_str(WEBHOOK_SCHEME);
        s.push('=');
        s.push_str(&hex::encode(m));
    }
    s
}

/// The timestamp and `v1` signatures of a webhook header; `None` when it is not one: no `t`, two
/// of them, a `t` that is not a non-negative number of seconds written without a leading zero, a
/// `v1` that is not 64 lowercase hex digits, no `v1` at all, more than [`MAX_HEADER_SIGNATURES`],
/// or longer than [`MAX_HEADER_LEN`]. Spaces around an item are allowed (ASCII spaces only).
/// Other schemes (`v0=`) are skipped, as receivers do. One header has one spelling: a receiver
/// that remembers the headers it saw cannot be handed the same one written differently.
pub fn parse_header(s: &str) -> Option<(i64, Vec<[u8; MAC_LEN]>)> {
    if s.len() > MAX_HEADER_LEN {
        return None;
    }
    let mut timestamp = None;
    let mut macs = Vec::new();
    for item in s.split(',') {
        let (k, v) = item.trim_matches(' ').split_once('=')?;
        match k {
            "t" => {
                if timestamp.is_some() {
                    return None;
                }
                timestamp = Some(canonical_number(v, 18)?);
            }
            WEBHOOK_SCHEME => {
                if macs.len() == MAX_HEADER_SIGNATURES {
                    return None;
                }
                macs.push(parse_mac(v)?);
            }
            _ => {}
        }
    }
    match (timestamp, macs.is_empty()) {
        (Some(t), false) => Some((t, macs)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MacKey {
        MacKey::of_data_key(&[7u8; 32])
    }

    #[test]
    fn known_answers() {
        // Computed independently with Python's hmac module:
        // mk = hmac.new(bytes([7]*32), b"meshhook_keys mac key v1", sha256).digest()
        // sub = hmac.new(mk, b"signature v1\x00ctx", sha256).digest()
        // hmac.new(sub, b"payload", sha256).hexdigest()
        assert_eq!(
            hex::encode(key().sign(b"ctx", b"payload")),
            "3cfbc8bd1d2dc2b4ce66670954c7c5e6bdc69f5057a9a073b0074f7786cef0a3"
        );
    }

    #[test]
    fn subkeys_are_separated() {
        let k = key();
        assert_ne!(k.sign(b"a", b"p"), k.sign(b"b", b"p"));
        assert_ne!(
            k.sign(b"", b"p"),
            MacKey::of_data_key(&[8u8; 32]).sign(b"", b"p")
        );
        let secret = k.webhook_secret(b"a");
        assert!(secret.starts_with("whsec_") && secret.len() == 70);
        assert_ne!(*secret, *k.webhook_secret(b"b"));
        // the receiver's computation with the secret is the sender's
        assert_eq!(
            k.webhook_signature(b"a", 1700000000, b"{}"),
            webhook_mac(secret.as_bytes(), 1700000000, b"{}")
        );
    }

    #[test]
    fn signature_round_trip_and_garbage() {
        let m = key().sign(b"", b"x");
        let s = format_signature(12, &m);
        assert_eq!(parse_signature(&s), Some((12, m)));
        for bad in [
            "",
            "meshhook:v",
            "meshhook:v1",
            "meshhook:v:00",
            "meshhook:v-1:00",
            "meshhook:v99999999999:",
            &s[..s.len() - 1],
            &format!("{s}0"),
            &s.replace("meshhook", "vault"),
            &format!("{}g", &s[..s.len() - 1]),
            &s.to_uppercase(),
            &format!("meshhook:v{}", &s["meshhook:v".len()..].to_uppercase()),
            &s.replace(":v12:", ":v012:"),
            &s.replace(":v12:", ":v+12:"),
        ] {
            assert_eq!(parse_signature(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_round_trip_and_garbage() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let h = format_header(1700000000, &[a, b]);
        assert_eq!(parse_header(&h), Some((1700000000, vec![a, b])));
        assert_eq!(
            parse_header(&format!("{h},v0=abc")),
            Some((1700000000, vec![a, b]))
        );
        assert_eq!(
            parse_header(&h.replace(',', ", ")),
            Some((1700000000, vec![a, b]))
        );
        assert_eq!(
            parse_header(&format!("t=0,v1={}", hex::encode(a))),
            Some((0, vec![a]))
        );
        let one = format!("v1={}", hex::encode(a));
        for bad in [
            String::new(),
            "t=1".to_string(),
            one.clone(),
            format!("t=-1,{one}"),
            format!("t=1,t=2,{one}"),
            format!("t=,{one}"),
            format!("t=1e3,{one}"),
            format!("t=9999999999999999999,{one}"),
            format!("t=1,{one},"),
            "t=1,v1=00".to_string(),
            format!("t=1,{}", vec![one.as_str(); 33].join(",")),
            format!("t=1,{one},x={}", "y".repeat(9000)),
            format!("t=01,{one}"),
            format!("t=1,v1={}", hex::encode([0xabu8; 32]).to_uppercase()),
            format!("t=1,\t{one}"),
            format!("t=1,\u{a0}{one}"),
        ] {
            assert_eq!(parse_header(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn blind_index_is_separated_and_truncated() {
        let k = key();
        let i = k.blind_index(b"users.email", b"a@example.com");
        assert_eq!(i, k.blind_index(b"users.email", b"a@example.com"));
        assert_ne!(i, k.blind_index(b"users.phone", b"a@example.com"));
        assert_ne!(i, k.blind_index(b"users.email", b"b@example.com"));
        assert_ne!(
            i[..],
            k.sign(b"users.email", b"a@example.com")[..BLIND_INDEX_LEN]
        );
        // Python: sub = hmac.new(mk, b"blind index v1\x00users.email", sha256).digest();
        // hmac.new(sub, b"a@example.com", sha256).hexdigest()[:32]
        assert_eq!(hex::encode(i), "09bf357f7be2c426a93d1bf2cbe6def6");
    }

    #[test]
    fn mac_eq_compares() {
        let a = [5u8; 32];
        let mut b = a;
        assert!(mac_eq(&a, &b));
        b[31] ^= 1;
        assert!(!mac_eq(&a, &b));
    }
}
