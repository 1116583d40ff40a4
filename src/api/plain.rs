//! Decrypted values on their way to PostgreSQL: copied once into the result datum (which belongs to
//! the query), then wiped. Returning a `String` or `Vec<u8>` would leave a second copy of every
//! plaintext in freed Rust memory.

use pgrx::datum::IntoDatum;
use pgrx::pg_sys;
use zeroize::Zeroizing;

/// A decrypted text (already checked to be valid UTF-8 without NUL), returned as `text`.
pub struct PlainText(pub Zeroizing<Vec<u8>>);

/// A decrypted value returned as `bytea`.
pub struct PlainBytes(pub Zeroizing<Vec<u8>>);

pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(PlainText, "TEXT");
pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(PlainBytes, "bytea");

/// A varlena (text and bytea share the layout) holding `bytes`, palloc'd in the current context.
fn varlena(bytes: &[u8]) -> pg_sys::Datum {
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
                Some(varlena(&self.0))
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

returned_as_varlena!(PlainText => pg_sys::TEXTOID, PlainBytes => pg_sys::BYTEAOID);
