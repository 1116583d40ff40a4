//! Pure cryptography of a keyring export bundle (issue 28): every version's data key sealed under
//! a caller-supplied 256-bit wrapping key, with the keyring's metadata authenticated beside it. No
//! pgrx types here, so everything is covered by plain `#[test]`s.
//!
//! ```text
//! [magic: 8 bytes "MHKEXP01"][header length: 4 bytes BE][header: JSON, readable]
//! [envelope (crate::crypto, key id 0) of the data keys, 32 bytes each, in the header's order]
//! AAD of the envelope = magic || header length || header
//! ```
//! The header is readable (what a bundle holds can be inspected without its key) and cannot be
//! changed: a changed byte anywhere fails the envelope's tag, as does another wrapping key.

use crate::crypto::{self, CryptoError, KEY_LEN, SecretKey};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 8] = b"MHKEXP01";
/// The longest header accepted (a keyring with thousands of versions fits).
pub const MAX_HEADER_LEN: usize = 4 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum BundleError {
    /// Not a bundle of this format (no magic, a truncated header).
    NotABundle(&'static str),
    /// The wrapping key is not 32 bytes.
    BadWrappingKey,
    /// A changed byte, or another wrapping key.
    AuthenticationFailed,
    /// The keys do not come in 32-byte pieces.
    Malformed,
}

fn wrapping_key(key: &[u8]) -> Result<SecretKey, BundleError> {
    SecretKey::from_bytes(key).map_err(|_| BundleError::BadWrappingKey)
}

fn aad(header: &[u8]) -> Vec<u8> {
    let mut a = MAGIC.to_vec();
    a.extend_from_slice(&(header.len() as u32).to_be_bytes());
    a.extend_from_slice(header);
    a
}

/// Seal `keys` under `wrapping` with `header` authenticated beside them.
pub fn seal(
    wrapping: &[u8],
    header: &[u8],
    keys: &[&[u8; KEY_LEN]],
) -> Result<Vec<u8>, BundleError> {
    let kek = wrapping_key(wrapping)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(BundleError::Malformed);
    }
    let mut plain = Zeroizing::new(Vec::with_capacity(keys.len() * KEY_LEN));
    for k in keys {
        plain.extend_from_slice(&k[..]);
    }
    let aad = aad(header);
    let mut out = aad.clone();
    out.extend_from_slice(&crypto::seal(&kek.cipher(), 0, &plain, &aad));
    Ok(out)
}

/// The header of a bundle, without opening it (not yet authenticated: use [`open`]).
pub fn header(bundle: &[u8]) -> Result<&[u8], BundleError> {
    let rest = bundle
        .strip_prefix(&MAGIC[..])
        .ok_or(BundleError::NotABundle(
            "it does not start with the export format's magic bytes",
        ))?;
    let len = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(BundleError::NotABundle("it is truncated"))?;
    if len > MAX_HEADER_LEN {
        return Err(BundleError::NotABundle("its header is too long"));
    }
    rest.get(4..4 + len)
        .ok_or(BundleError::NotABundle("it is truncated"))
}

/// The authenticated header and the data keys of a bundle sealed under `wrapping`.
pub fn open(wrapping: &[u8], bundle: &[u8]) -> Result<(Vec<u8>, Vec<SecretKey>), BundleError> {
    let kek = wrapping_key(wrapping)?;
    let header = header(bundle)?.to_vec();
    let envelope = &bundle[MAGIC.len() + 4 + header.len()..];
    let plain = crypto::open(&kek.cipher(), envelope, &aad(&header)).map_err(|e| match e {
        CryptoError::AuthenticationFailed => BundleError::AuthenticationFailed,
        _ => BundleError::NotABundle("its sealed keys are truncated"),
    })?;
    if plain.len() % KEY_LEN != 0 {
        return Err(BundleError::Malformed);
    }
    let keys = plain
        .chunks(KEY_LEN)
        .map(|c| SecretKey::from_bytes(c).map_err(|_| BundleError::Malformed))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: [u8; 32] = [9; 32];

    fn sample() -> Vec<u8> {
        seal(&W, br#"{"keyring":"k"}"#, &[&[1; 32], &[2; 32]]).unwrap()
    }

    #[test]
    fn round_trip() {
        let (h, keys) = open(&W, &sample()).unwrap();
        assert_eq!(h, br#"{"keyring":"k"}"#);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].expose(), &[1; 32]);
        assert_eq!(keys[1].expose(), &[2; 32]);
        assert_eq!(header(&sample()).unwrap(), br#"{"keyring":"k"}"#);
        // no key at all is a bundle too (a keyring whose versions were all destroyed)
        let empty = seal(&W, b"{}", &[]).unwrap();
        assert_eq!(open(&W, &empty).unwrap().1.len(), 0);
    }

    #[test]
    fn every_changed_byte_and_another_key_fail() {
        let b = sample();
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            assert!(open(&W, &t).is_err(), "byte {i}");
        }
        assert_eq!(
            open(&[8; 32], &b).err(),
            Some(BundleError::AuthenticationFailed)
        );
        assert_eq!(open(&[8; 31], &b).err(), Some(BundleError::BadWrappingKey));
        for n in [0, 7, 8, 11, 12, 20, b.len() - 1] {
            assert!(open(&W, &b[..n]).is_err(), "truncated to {n}");
        }
        assert!(matches!(
            open(&W, b"garbage"),
            Err(BundleError::NotABundle(_))
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(open(&W, &huge), Err(BundleError::NotABundle(_))));
    }
}
