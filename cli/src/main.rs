//! meshhook-keys: a thin command-line client over the meshhook_keys SQL functions.
//!
//! SQL stays the single source of truth: every command is one or a few calls of the extension's
//! functions and views, so a rotation behaves the same however it is started, and the database's
//! own privileges decide who may do what. Errors are the database's own messages (with hints).
//! No plaintext, key material or secret is ever printed: `verify` decrypts samples in the
//! database and reports only whether they decrypt.
//!
//! Exit codes: 0 ok, 1 refused or failed (by the database, or a failed check), 2 usage.
//!
//! `args` reads the command line, `commands` runs the commands, `output` prints what they return
//! (and the failures), `connect` connects like psql, `serve` is the HTTP API; this file only
//! dispatches.

mod args;
mod commands;
mod connect;
mod output;
mod pgfiles;
mod serve;

use args::{Cli, Command};
use output::{Result, fail};
use std::process::ExitCode;

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let command = match cli.command {
        Command::Token {
            role,
            sub,
            expires_in,
            jwt_secret_file,
        } => return commands::token(json, &role, sub.as_deref(), expires_in, &jwt_secret_file),
        Command::Serve { options } => {
            return serve::serve(options.config(cli.url)?).map_err(fail);
        }
        command => command,
    };
    let c = &mut connect::connect(cli.url.as_deref()).map_err(fail)?;
    match command {
        Command::Status { no_usage } => commands::status(c, json, no_usage),
        Command::Rotate { keyring, reason } => {
            commands::rotate(c, json, &keyring, reason.as_deref())
        }
        Command::Reencrypt {
            keyring,
            batch_size,
            wait,
        } => commands::reencrypt(c, json, &keyring, batch_size, wait),
        Command::Retire { target } => commands::retire(c, json, &target),
        Command::Destroy { target } => commands::destroy(c, json, &target),
        Command::Audit {
            since,
            keyring,
            limit,
        } => commands::audit(c, json, since.as_deref(), keyring.as_deref(), limit),
        Command::Verify { sample } => commands::verify(c, json, sample),
        Command::RootRewrap => commands::root_rewrap(c, json),
        Command::Health => commands::health(c, json),
        Command::Token { .. } | Command::Serve { .. } => unreachable!("handled above"),
    }
}

fn main() -> ExitCode {
    let cli = match args::parse() {
        Ok(cli) => cli,
        Err(failure) => return output::report(true, &failure),
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => output::report(json, &failure),
    }
}
