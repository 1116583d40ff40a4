//! The SQL-callable surface. Thin: argument checks, then the modules that do the work.

pub mod blindindex;
pub mod datakeys;
pub mod health;
pub mod keys;
pub mod plain;
pub mod reencrypt;
pub mod rowcall;
pub mod schedule;
pub mod secrets;
pub mod signing;
pub mod transfer;
pub mod userheld;
pub mod vault;
