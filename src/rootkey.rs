//! The root key (key-encryption key): loaded from a file or a command, never from the database.
//!
//! Each backend loads it on first need and keeps it (zeroized on drop) until the provider setting
//! changes. When the library is preloaded, the postmaster checks the provider once at start-up and
//! writes one LOG line saying whether the key loaded, and its fingerprint; backends forked after that
//! inherit the loaded key, so a `root_key_command` runs once per server start, not per connection.

use crate::crypto::SecretKey;
use crate::error::{KeysError, Result};
use crate::gucs;
use pgrx::pg_sys;

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

/// O_NOFOLLOW (Linux): opening a symbolic link fails instead of following it.
const O_NOFOLLOW: i32 = 0o400000;

/// Read the root key file: opened once without following a symbolic link, and checked on the open
/// file itself (owner, mode, regular file), so that what is checked is what is read.
fn read_file(path: &str) -> Result<SecretKey> {
    use std::os::unix::fs::OpenOptionsExt;
    let unavailable =
        |why: String| KeysError::RootKeyUnavailable(format!("root key file \"{path}\": {why}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            // ELOOP: the last component is a symbolic link
            if e.raw_os_error() == Some(40) {
                unavailable("is a symbolic link; point the setting at the file itself".into())
            } else {
                unavailable(e.kind().to_string())
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| unavailable(e.kind().to_string()))?;
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
    file.take(4096)
        .read_to_end(&mut buf)
        .map_err(|e| unavailable(e.kind().to_string()))?;
    SecretKey::from_hex(&buf).map_err(|e| unavailable(crypto_why(e)))
}

/// The most a root key command may print on stdout (a key is 64 hexadecimal characters).
const COMMAND_STDOUT_CAP: usize = 4096;
/// The most of its stderr that reaches the server log.
const COMMAND_STDERR_CAP: usize = 4096;

/// One of the command's output pipes: what was read (at most `cap + 1` bytes are kept, so that
/// "more than cap" is seen; the rest is read and dropped so that the command never blocks on a
/// full pipe), and whether it reached its end.
struct Pipe {
    from: Option<std::fs::File>,
    cap: usize,
    kept: Zeroizing<Vec<u8>>,
}

impl Pipe {
    fn new(from: Option<impl Into<std::os::fd::OwnedFd>>, cap: usize) -> Self {
        Pipe {
            from: from.map(|f| std::fs::File::from(f.into())),
            cap,
            kept: Zeroizing::new(Vec::new()),
        }
    }

    fn closed(&self) -> bool {
        self.from.is_none()
    }

    /// Read what is there (the caller polled it readable); at the end, close it.
    fn read_some(&mut self) {
        let Some(from) = self.from.as_mut() else {
            return;
        };
        let mut chunk = Zeroizing::new([0u8; 4096]);
        match from.read(chunk.as_mut()) {
            Ok(0) | Err(_) => self.from = None,
            Ok(n) => {
                let room = (self.cap + 1).saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

unsafe extern "C" {
    #[link_name = "poll"]
    fn libc_poll(fds: *mut PollFd, nfds: u64, timeout_ms: i32) -> i32;
}

/// Wait up to `ms` for any open pipe to be readable (or closed by the other end), and read it.
fn poll_and_read(pipes: &mut [Pipe], ms: i32) {
    use std::os::fd::AsRawFd;
    const POLLIN: i16 = 0x1;
    let mut fds: Vec<PollFd> = Vec::new();
    let mut which: Vec<usize> = Vec::new();
    for (i, p) in pipes.iter().enumerate() {
        if let Some(f) = p.from.as_ref() {
            fds.push(PollFd {
                fd: f.as_raw_fd(),
                events: POLLIN,
                revents: 0,
            });
            which.push(i);
        }
    }
    if fds.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(ms as u64));
        return;
    }
    // SAFETY: fds is a valid array of pollfd of that length, alive for the call.
    let n = unsafe { libc_poll(fds.as_mut_ptr(), fds.len() as u64, ms) };
    if n <= 0 {
        return;
    }
    for (f, &i) in fds.iter().zip(which.iter()) {
        if f.revents != 0 {
            pipes[i].read_some();
        }
    }
}

/// What a command wrote on stderr, for the server log: printable, at most COMMAND_STDERR_CAP bytes,
/// and with anything that looks like key material (16 or more hexadecimal characters, the last run
/// cut by the cap included) redacted.
fn stderr_for_log(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(COMMAND_STDERR_CAP)]);
    let cut = raw.len() > COMMAND_STDERR_CAP;
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut out);
        out.push(if c == '\n' || c == '\t' || !c.is_control() {
            c
        } else {
            ' '
        });
    }
    if cut && !run.is_empty() {
        // (a run cut by the cap may be the start of a key)
        run.clear();
        out.push_str("[redacted]");
    }
    flush(&mut run, &mut out);
    if cut {
        out.push_str(" [truncated]");
    }
    out.trim().to_string()
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    #[link_name = "waitid"]
    fn libc_waitid(idtype: i32, id: u32, infop: *mut u8, options: i32) -> i32;
}

unsafe extern "C" {
    #[link_name = "sigprocmask"]
    fn libc_sigprocmask(how: i32, set: *const u8, old: *mut u8) -> i32;
    #[link_name = "signal"]
    fn libc_signal(signum: i32, handler: usize) -> usize;
}

/// In the child, before exec: no blocked signal (an all-zero sigset_t is the empty set on Linux),
/// and every signal's default action (SIG_DFL is 0).
fn reset_signals() -> std::io::Result<()> {
    const SIG_SETMASK: i32 = 2;
    let empty = [0u8; 128];
    // SAFETY: async-signal-safe calls on a valid, empty signal set.
    unsafe {
        libc_sigprocmask(SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        for sig in 1..32 {
            libc_signal(sig, 0);
        }
    }
    Ok(())
}

/// Whether our child `pid` has exited, leaving it unreaped (Linux waitid: P_PID, WEXITED | WNOHANG
/// | WNOWAIT; siginfo_t is 128 bytes, si_pid at offset 16 is non-zero once a child has exited).
fn exited_unreaped(pid: i32) -> bool {
    const P_PID: i32 = 1;
    const WEXITED: i32 = 4;
    const WNOHANG: i32 = 1;
    const WNOWAIT: i32 = 0x0100_0000;
    let mut info = [0u8; 128];
    // SAFETY: a 128-byte buffer is a siginfo_t on Linux; waitid writes only into it.
    let rc = unsafe {
        libc_waitid(
            P_PID,
            pid as u32,
            info.as_mut_ptr(),
            WEXITED | WNOHANG | WNOWAIT,
        )
    };
    if rc != 0 {
        // (ECHILD: nothing to wait for; treat as exited so that the caller stops waiting)
        return true;
    }
    i32::from_ne_bytes([info[16], info[17], info[18], info[19]]) != 0
}

/// Run `meshhook_keys.root_key_command` with `/bin/sh -c` in a process group of its own: its stdout
/// (at most 4 KiB) is the key, its stderr goes to the server log (redacted, at most 4 KiB), and it
/// is killed, with everything it started, when it exits, when it runs longer than
/// `meshhook_keys.root_key_command_timeout`, or when the backend that waits for it is cancelled.
fn run_command(cmd: &str) -> Result<SecretKey> {
    use std::os::unix::process::CommandExt;
    // The command text itself may embed credentials, so errors never repeat it.
    let unavailable = |why: String| {
        KeysError::RootKeyUnavailable(format!("meshhook_keys.root_key_command: {why}"))
    };
    let timeout = gucs::root_key_command_timeout();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: runs in the child between fork and exec and calls only async-signal-safe functions.
    // PostgreSQL blocks and ignores signals in the postmaster and its backends; a command must not
    // inherit that (a KMS client could not be interrupted, nor time out by its own alarm).
    unsafe { command.pre_exec(reset_signals) };
    let mut child = command
        .spawn()
        .map_err(|e| unavailable(format!("could not be started ({})", e.kind())))?;
    let pgid = child.id() as i32;
    // Both pipes are read here, in this thread, as data arrives (poll), so that nothing can make
    // us wait past the deadline: not a command that never exits, not one that writes more than a
    // pipe holds, not a process it detached (setsid) that keeps the pipes open.
    let mut pipes = [
        Pipe::new(child.stdout.take(), COMMAND_STDOUT_CAP),
        Pipe::new(child.stderr.take(), COMMAND_STDERR_CAP),
    ];
    let deadline = std::time::Instant::now() + timeout;
    let mut interrupted = false;
    let mut exited = false;
    let mut grace: Option<std::time::Instant> = None;
    loop {
        // Exited, but not reaped (WNOWAIT): until it is reaped its pid, and so its process group
        // id, cannot be reused, so the kill below reaches only what it started.
        if !exited && exited_unreaped(pgid) {
            exited = true;
            // SAFETY: signals our own child's process group; the child is not reaped yet.
            unsafe { libc_kill(-pgid, 9) };
            grace = Some(std::time::Instant::now() + std::time::Duration::from_millis(500));
        }
        if exited && pipes.iter().all(Pipe::closed) {
            break;
        }
        let now = std::time::Instant::now();
        if now >= deadline || grace.is_some_and(|g| now >= g) {
            break;
        }
        // SAFETY: reads of backend flags set by signal handlers.
        if unsafe {
            pg_sys::IsUnderPostmaster
                && std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0
        } {
            interrupted = true;
            break;
        }
        poll_and_read(&mut pipes, 10);
    }
    if !exited {
        // SAFETY: as above (timed out or interrupted: not reaped yet either).
        unsafe { libc_kill(-pgid, 9) };
    }
    let status = child.wait().ok().filter(|_| exited);
    let pipes_closed = pipes.iter().all(Pipe::closed);
    let [out, err] = pipes;
    let (stdout, stderr) = (out.kept, err.kept);
    let said = stderr_for_log(&stderr);
    if !said.is_empty() {
        crate::logline::log(&format!("meshhook_keys: root_key_command stderr: {said}"));
    }
    if interrupted {
        pgrx::check_for_interrupts!();
        return Err(unavailable("interrupted".into()));
    }
    let Some(status) = status else {
        return Err(unavailable(format!(
            "did not finish within {} ms (meshhook_keys.root_key_command_timeout); it was killed",
            timeout.as_millis()
        )));
    };
    if !pipes_closed {
        return Err(unavailable(
            "a process it started outside its process group (setsid) kept its output open; it was abandoned".into(),
        ));
    }
    if !status.success() {
        return Err(unavailable(format!("exited with {status}")));
    }
    if stdout.len() > COMMAND_STDOUT_CAP {
        return Err(unavailable(format!(
            "its output is longer than {COMMAND_STDOUT_CAP} bytes, so it is not a root key"
        )));
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

/// The previous root key if `meshhook_keys.root_key_previous_file` or `_command` is set (an error
/// if it is set and cannot be loaded), None otherwise.
pub fn previous_if_set() -> Result<Option<std::rc::Rc<RootKey>>> {
    if gucs::root_key_previous_file().is_none() && gucs::root_key_previous_command().is_none() {
        return Ok(None);
    }
    previous().map(Some)
}

/// The root key that wraps `row`: the current one, or during a root key rotation the previous one
/// (`meshhook_keys.root_key_previous_*`), so that nothing fails between loading the new root key
/// and rewrapping the last data key (on a standby too, whichever of the two wraps what it has
/// replayed). Refused (28000) when neither wraps it.
pub fn wrapping(row: &crate::store::KeyRow) -> Result<std::rc::Rc<RootKey>> {
    let cur = current()?;
    let refused = match check_wraps(&cur, row) {
        Ok(()) => return Ok(cur),
        Err(e) => e,
    };
    match previous_if_set() {
        Ok(Some(prev)) if check_wraps(&prev, row).is_ok() => Ok(prev),
        _ => Err(refused),
    }
}

/// Refuse (28000) a data key row wrapped by another root key than `root`.
pub fn check_wraps(root: &RootKey, row: &crate::store::KeyRow) -> Result<()> {
    if row.root_fingerprint.as_slice() == root.fingerprint.as_slice() {
        return Ok(());
    }
    Err(KeysError::RootKeyMismatch {
        keyring: row.keyring.clone(),
        version: row.version,
        stored: fingerprint_hex(&row.root_fingerprint),
        loaded: fingerprint_hex(&root.fingerprint),
    })
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
            "meshhook_keys: root key not loaded at startup: {e}. The server starts anyway; every use of a data key fails with F0000 (and health() reports it) until the provider works, when the next use loads it"
        )),
    }
}
