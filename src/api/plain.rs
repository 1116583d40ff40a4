//! Decrypted values on their way to PostgreSQL. secret_decrypt and secret_decrypt_bytea decrypt
//! straight into the result datum ([`Decrypted`]: the only copy of the plaintext, which belongs to
//! the query); the built-in store's view hands over a buffer that is copied once into the result
//! datum, then wiped ([`PlainText`]). Returning a `String` or `Vec<u8>` would leave a second
//! copy of every plaintext in freed Rust memory.

use crate::error::{KeysError, Result as KResult};
use pgrx::datum::IntoDatum;
use pgrx::pg_sys;
use zeroize::{Zeroize, Zeroizing};

/// A decrypted text (already checked to be valid UTF-8 without NUL), returned as `text`.
pub struct PlainText(pub Zeroizing<Vec<u8>>);

/// A decrypted text, decrypted in place into its result varlena (checked to be valid UTF-8
/// without NUL), returned as `text`.
pub struct DecryptedText(Decrypted);

/// A decrypted value, decrypted in place into its result varlena, returned as `bytea`.
pub struct DecryptedBytes(Decrypted);

/// A varlena palloc'd in the current memory context (the call's), holding a plaintext.
pub struct Decrypted(*mut pg_sys::varlena);

/// A new varlena of `len` data bytes palloc'd in the current memory context (the call's, which
/// outlives it: the result datum's), its header set; stored in `made`, its data handed out.
fn result_varlena(len: usize, made: &mut *mut pg_sys::varlena) -> &'static mut [u8] {
    // SAFETY: a palloc'd block of the varlena's size, header set before it is handed on; the
    // memory context outlives the call that fills it.
    unsafe {
        let v = pg_sys::palloc(pg_sys::VARHDRSZ + len) as *mut pg_sys::varlena;
        pgrx::set_varsize_4b(v, (pg_sys::VARHDRSZ + len) as i32);
        *made = v;
        std::slice::from_raw_parts_mut((v as *mut u8).add(pg_sys::VARHDRSZ), len)
    }
}

impl Decrypted {
    /// Decrypt `ciphertext` into a new varlena of exactly the plaintext's length.
    fn new(ciphertext: Option<&[u8]>, context: Option<&[u8]>) -> KResult<Self> {
        let mut made: *mut pg_sys::varlena = std::ptr::null_mut();
        let r = crate::envelope::decrypt_into(ciphertext, context, |len| {
            result_varlena(len, &mut made)
        });
        let d = Decrypted(made);
        match r {
            Ok(()) => Ok(d),
            Err(e) => {
                // (a failed check wiped the buffer already; a buffer never filled holds nothing)
                d.discard();
                Err(e)
            }
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        if self.0.is_null() {
            return &mut [];
        }
        // SAFETY: a 4-byte-header varlena this value made, of the length set in its header.
        unsafe {
            let len = pgrx::varsize_4b(self.0) - pg_sys::VARHDRSZ;
            std::slice::from_raw_parts_mut((self.0 as *mut u8).add(pg_sys::VARHDRSZ), len)
        }
    }

    fn datum(&self) -> pg_sys::Datum {
        pg_sys::Datum::from(self.0)
    }

    /// Wipe and free it.
    fn discard(mut self) {
        self.bytes().zeroize();
        if !self.0.is_null() {
            // SAFETY: palloc'd by this value, not handed on.
            unsafe { pg_sys::pfree(self.0.cast()) };
        }
    }
}

impl DecryptedText {
    /// Decrypt into the result `text`: valid UTF-8 without NUL, or 22021 (the plaintext wiped first).
    pub fn new(ciphertext: Option<&[u8]>, context: Option<&[u8]>) -> KResult<Self> {
        let mut d = Decrypted::new(ciphertext, context)?;
        let bytes = d.bytes();
        if ascii_without_nul(bytes) || (std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0)) {
            Ok(DecryptedText(d))
        } else {
            d.discard();
            Err(KeysError::NotText)
        }
    }

    /// The result datum (a `text`).
    pub fn into_datum(self) -> pg_sys::Datum {
        self.0.datum()
    }
}

/// Whether every byte is ASCII and none is NUL (then it is valid UTF-8 without NUL): one pass
/// without early exit, which the compiler vectorizes; most secrets (tokens, keys) are ASCII.
fn ascii_without_nul(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(1) < 0x7F))
}

impl DecryptedBytes {
    /// Decrypt into the result `bytea`.
    pub fn new(ciphertext: Option<&[u8]>, context: Option<&[u8]>) -> KResult<Self> {
        Ok(DecryptedBytes(Decrypted::new(ciphertext, context)?))
    }

    /// The result datum (a `bytea`).
    pub fn into_datum(self) -> pg_sys::Datum {
        self.0.datum()
    }
}

/// A `bytea` copied once from a buffer that stays with its owner (a re-encryption envelope, which
/// holds no plaintext), palloc'd in the call's memory context.
pub struct ByteaCopy(pg_sys::Datum);

impl ByteaCopy {
    pub fn of(bytes: &[u8]) -> Self {
        ByteaCopy(varlena(bytes))
    }

    fn as_varlena(&self) -> pg_sys::Datum {
        self.0
    }
}

/// An envelope sealed in place in its result `bytea` (no Rust buffer, no copy).
pub struct Sealed(*mut pg_sys::varlena);

impl Sealed {
    /// Encrypt into a new varlena of exactly the envelope's length.
    pub fn new(
        plaintext: Option<&[u8]>,
        context: Option<&[u8]>,
        keyring: Option<&[u8]>,
    ) -> KResult<Self> {
        let mut made: *mut pg_sys::varlena = std::ptr::null_mut();
        // (asked for only once the envelope will be sealed, which cannot fail: it never holds a
        // plaintext when an error is raised)
        crate::envelope::encrypt_into(plaintext, context, keyring, |len| {
            result_varlena(len, &mut made)
        })?;
        Ok(Sealed(made))
    }

    /// The result datum (a `bytea`).
    pub fn into_datum(self) -> pg_sys::Datum {
        pg_sys::Datum::from(self.0)
    }
}

pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(PlainText, "TEXT");
pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(ByteaCopy, "bytea");

/// A varlena (text and bytea share the layout) holding `bytes`, palloc'd in the current context.
pub fn varlena(bytes: &[u8]) -> pg_sys::Datum {
    // SAFETY: cstring_to_text_with_len copies exactly len bytes into a new palloc'd varlena; it
    // needs no NUL terminator, and bytea has the same representation.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            bytes.as_ptr() as *const std::ffi::c_char,
            bytes.len() as i32,
        ))
    }
}

/// IntoDatum (one copy into a varlena; the Rust buffer is wiped when `self` drops) and the return
/// convention pgrx uses for every IntoDatum type.
macro_rules! returned_as_varlena {
    ($($ty:ty => $oid:expr),*) => {$(
        impl IntoDatum for $ty {
            fn into_datum(self) -> Option<pg_sys::Datum> {
                Some(self.as_varlena())
            }
            fn type_oid() -> pg_sys::Oid {
                $oid
            }
        }

        // SAFETY: the datum is returned to the function manager as the call's result.
        unsafe impl pgrx::callconv::BoxRet for $ty {
            unsafe fn box_into<'fcx>(
                self,
                fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
            ) -> pgrx::datum::Datum<'fcx> {
                match self.into_datum() {
                    // SAFETY: a varlena palloc'd in the function's memory context.
                    Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
                    None => fcinfo.return_null(),
                }
            }
        }
    )*};
}

impl PlainText {
    fn as_varlena(&self) -> pg_sys::Datum {
        varlena(&self.0)
    }
}

returned_as_varlena!(
    ByteaCopy => pg_sys::BYTEAOID,
    PlainText => pg_sys::TEXTOID
);

#[cfg(test)]
mod unit {
    use super::ascii_without_nul;

    #[test]
    fn ascii_without_nul_takes_only_ascii_without_nul() {
        assert!(ascii_without_nul(b""));
        assert!(ascii_without_nul(b"sk_live_0123456789 ~\x01\x7f"));
        assert!(!ascii_without_nul(b"a\0b"));
        assert!(!ascii_without_nul(b"\0"));
        assert!(!ascii_without_nul("caf\u{e9}".as_bytes())); // valid UTF-8, not ASCII: the full check decides
        assert!(!ascii_without_nul(b"\xff"));
        assert!(!ascii_without_nul(b"\x80"));
        // every byte value, alone
        for b in 0u8..=255 {
            assert_eq!(
                ascii_without_nul(&[b]),
                (1..=0x7f).contains(&b),
                "byte {b:#x}"
            );
        }
    }
}
