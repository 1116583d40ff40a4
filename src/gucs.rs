//! Every setting of the extension: private statics, one accessor each, one `init()`.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

static ROOT_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_PREVIOUS_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static ROOT_KEY_PREVIOUS_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);

pub fn init() {
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_file",
        c"Path of the file holding the 256-bit root key as 64 hex characters.",
        c"Owned by the server's OS user with mode 0600 or stricter; looser modes are refused. Set in postgresql.conf only.",
        &ROOT_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_command",
        c"Shell command that prints the 256-bit root key as 64 hex characters.",
        c"Lets a KMS or vault CLI supply the root key. Run by the server's OS user. Set in postgresql.conf only.",
        &ROOT_KEY_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_previous_file",
        c"Root key file of the previous root key, read only by root_key_rewrap().",
        c"Same format and permission rules as meshhook_keys.root_key_file. Unset it once the rewrap is done.",
        &ROOT_KEY_PREVIOUS_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"meshhook_keys.root_key_previous_command",
        c"Command printing the previous root key, read only by root_key_rewrap().",
        c"Same rules as meshhook_keys.root_key_command. Unset it once the rewrap is done.",
        &ROOT_KEY_PREVIOUS_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"meshhook_keys.key_cache_size",
        c"Maximum number of unwrapped data keys each backend keeps in memory.",
        c"Each entry holds one AES-256 key schedule (under 1 kB). On overflow the least recently loaded key is evicted and zeroized.",
        &KEY_CACHE_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"meshhook_keys".as_ptr()) };
}

fn non_empty(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c: CString| c.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
}

pub fn root_key_file() -> Option<String> {
    non_empty(&ROOT_KEY_FILE)
}

pub fn root_key_command() -> Option<String> {
    non_empty(&ROOT_KEY_COMMAND)
}

pub fn root_key_previous_file() -> Option<String> {
    non_empty(&ROOT_KEY_PREVIOUS_FILE)
}

pub fn root_key_previous_command() -> Option<String> {
    non_empty(&ROOT_KEY_PREVIOUS_COMMAND)
}

pub fn key_cache_size() -> usize {
    KEY_CACHE_SIZE.get().max(1) as usize
}
