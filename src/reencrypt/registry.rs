//! The column registry as re-encryption and verify read it: the registered columns of a keyring,
//! each with its table resolved once, and what is asked of them (rows per key, rows still on a
//! key). Also the checks a registration runs before it is stored: the table's owner and name, and
//! a context expression planned (never run) the way the job will run it, and the registration
//! itself ([`register`], [`unregister`]), with its audit row.
//!
//! Invariants: a context expression, and every count over a registered table, run as the table's
//! owner inside a security-restricted operation with `row_security = off` ([`as_role`]), never as
//! the extension owner, so a registration cannot escalate privileges and a policy cannot hide rows
//! from a count (the one read made otherwise is the primary key of a row that failed, which the
//! batch holds locked). A context expression is accepted only if it is one expression, in one
//! statement, that calls no volatile function. A column whose table was dropped stays listed
//! with `table` = `None`: [`rows_on_key`] skips it, and a statement over it is an error.

use crate::audit;
use crate::context;
use crate::crypto::{FORMAT_V1, HEADER_LEN};
use crate::error::{KeysError, Result};
use crate::plans;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// A registered column, as the job needs it, with its table resolved once.
pub struct Column {
    pub id: i32,
    pub rel: pg_sys::Oid,
    pub column: String,
    pub context_expr: Option<String>,
    /// `schema.table`, quoted; `None` when the table no longer exists.
    pub table: Option<String>,
    /// The table's owner, as whom the context expression and the row scans run.
    pub owner: pg_sys::Oid,
    /// The column's blind index, if one was registered (register_blind_index): re-encryption
    /// recomputes it under the target key.
    pub index: Option<BlindIndexColumn>,
}

/// A registered column's blind index column and the expression (over the row) of its context.
pub struct BlindIndexColumn {
    pub column: String,
    pub context_expr: Option<String>,
    /// The column's number when it was registered: a column renamed, dropped, or another one
    /// renamed to its name since, is not it.
    pub attnum: i16,
}

impl Column {
    /// Resolve a column of an existing table (registration).
    pub fn resolve(rel: pg_sys::Oid, column: &str, context_expr: Option<String>) -> Result<Self> {
        Ok(Column {
            id: 0,
            rel,
            column: column.to_string(),
            context_expr,
            table: Some(qualified_name(rel)?),
            owner: table_owner(rel)?,
            index: None,
        })
    }

    pub fn exists(&self) -> bool {
        self.table.is_some()
    }

    pub(super) fn table(&self) -> Result<&str> {
        self.table.as_deref().ok_or_else(|| {
            KeysError::Internal(format!(
                "registered table {} no longer exists",
                self.rel.to_u32()
            ))
        })
    }
}

/// The 9-byte envelope header for a key id: where its range of envelopes begins ([`key_ranges`]).
fn header(key_id: i64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.push(FORMAT_V1);
    h.extend_from_slice(&key_id.to_be_bytes());
    h
}

/// The test "`expr` is an envelope sealed by one of `n` keys", with each key's range of envelopes
/// in the parameters from `$first` on, as [`key_ranges`] lists them: `(expr >= lo AND expr < hi)`
/// per key. A key's envelopes are exactly the byte strings that begin with its 9-byte header, and
/// in bytea's order (bytes, then length) those are the strings from the header (inclusive) to the
/// header's prefix successor (exclusive); comparing in place costs a fraction of
/// `substr(expr, 1, 9) = ANY (…)`, which copies every row's header first.
pub(crate) fn on_keys_test(expr: &str, first: usize, n: usize) -> String {
    let ranges: Vec<String> = (0..n)
        .map(|i| {
            let (lo, hi) = (first + 2 * i, first + 2 * i + 1);
            format!(
                "{expr} OPERATOR(pg_catalog.>=) ${lo}::pg_catalog.bytea AND {expr} OPERATOR(pg_catalog.<) ${hi}::pg_catalog.bytea"
            )
        })
        .collect();
    if ranges.is_empty() {
        return "false".into();
    }
    format!("({})", ranges.join(" OR "))
}

/// The parameters of [`on_keys_test`] for `keys`: each key's header, then its prefix successor.
pub(crate) fn key_ranges(keys: &[i64]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(keys.len() * 2);
    for &k in keys {
        let h = header(k);
        let after = prefix_successor(&h);
        out.push(h);
        out.push(after);
    }
    out
}

/// The least byte string above every string that begins with `prefix`: its trailing 0xFF bytes
/// dropped and the last byte left incremented. Not the next key id's header: for a key id ending
/// in 0xFF that header (…84 00 after …83 FF) would also take in the shorter strings between them
/// (…84), which are no envelope of the key (the format byte 0x01 keeps a successor from being
/// empty).
fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut s = prefix.to_vec();
    while s.last() == Some(&0xFF) {
        s.pop();
    }
    if let Some(last) = s.last_mut() {
        *last += 1;
    }
    s
}

/// Run `f` as `role`, sealed ([`crate::seal`]), with `row_security = off`. With row security off,
/// a table whose policies would apply to its owner (FORCE ROW LEVEL SECURITY) raises an error
/// instead of silently hiding rows from a count or a batch: hidden rows would otherwise look
/// re-encrypted, and retiring their key would lose them.
pub fn as_role<T>(role: pg_sys::Oid, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::seal::run(role, true, f)
}

fn table_owner(rel: pg_sys::Oid) -> Result<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT (SELECT relowner FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1)",
        &[rel.into()],
    )?
    .ok_or_else(|| KeysError::Internal(format!("relation {} does not exist", rel.to_u32())))
}

/// `schema.table` quoted, for building statements over a registered table.
fn qualified_name(rel: pg_sys::Oid) -> Result<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
          WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[rel.into()],
    )?
    .ok_or_else(|| KeysError::Internal("registered table vanished".into()))
}

/// How a failed row is named: its primary key as a row literal, or its ctid without one.
fn row_ref_expr(rel: pg_sys::Oid) -> Result<String> {
    let cols = Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('t.%I', a.attname), ', ' ORDER BY k.ord)
           FROM pg_catalog.pg_index i
           CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
          WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary",
        &[rel.into()],
    )?;
    Ok(match cols {
        Some(c) => format!("ROW({c})::text"),
        None => "'ctid ' || t.ctid::text".to_string(),
    })
}

/// The primary key (or ctid) of a row that failed, read only for failures (the row is locked by us).
pub(super) fn failed_row_ref(col: &Column, ctid: &str) -> Result<String> {
    // (a sub-select: a row its own table's trigger deleted meanwhile gives NULL, not an error)
    let sql = format!(
        "SELECT (SELECT {} FROM ONLY {} AS t WHERE t.ctid OPERATOR(pg_catalog.=) $1::pg_catalog.text::pg_catalog.tid)",
        row_ref_expr(col.rel)?,
        col.table()?
    );
    Ok(Spi::get_one_with_args::<String>(&sql, &[ctid.into()])?
        .unwrap_or_else(|| format!("ctid {ctid}")))
}

/// The context expression as a select-list item. It sits on lines of its own so that a trailing
/// `--` comment in it cannot swallow the rest of the statement.
pub(crate) fn context_item(expr: &Option<String>) -> String {
    match expr {
        Some(e) => format!("(\n{e}\n)::text"),
        None => "''::text".to_string(),
    }
}

/// Check a context expression the way the job will run it: as the table owner, restricted, planned
/// (not executed) against the table. Raises PostgreSQL's own error if it does not parse or plan.
fn validate_context_expr(col: &Column) -> Result<()> {
    validate_expr(col, &col.context_expr)
}

/// [`validate_context_expr`] for any expression over the column's table.
fn validate_expr(col: &Column, expr: &Option<String>) -> Result<()> {
    let table = col.table()?;
    let sql = format!(
        "SELECT {} FROM ONLY {table} AS t LIMIT 0",
        context_item(expr)
    );
    let owner = col.owner;
    as_role(owner, || -> Result<()> {
        Spi::connect(|c| {
            // Prepared first (parsed, never run): one statement only, so an expression that closes
            // the parenthesis and appends a statement of its own is refused before anything runs.
            if statement_calls_volatile(&sql)? {
                return Err(KeysError::InvalidArgument(
                    "the context expression calls a volatile function (random(), clock_timestamp(), nextval(), or a function not marked STABLE or IMMUTABLE): it must give the same context every time the row is read".into(),
                ));
            }
            // Planned and run with LIMIT 0: what the planner folds (an IMMUTABLE call) fails here,
            // as the owner, rather than in the first batch. (One target only: checked above.)
            c.select(sql.as_str(), None, &[])?;
            Ok(())
        })
    })
}

/// Prepare `sql` and say whether its target list calls a volatile function; refused unless it is
/// exactly one statement (SPI_prepare accepts several). Must run inside an SPI connection.
fn statement_calls_volatile(sql: &str) -> Result<bool> {
    let text = std::ffi::CString::new(sql).map_err(|_| {
        KeysError::InvalidArgument("the context expression contains a NUL byte".into())
    })?;
    // SAFETY: SPI_prepare inside a connection; the plan's sources and queries are read, not changed,
    // and the plan is freed before returning (an error aborts the transaction, which frees it).
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), 0, std::ptr::null_mut());
        if plan.is_null() {
            return Err(KeysError::Internal(
                "the context expression could not be prepared".into(),
            ));
        }
        let mut volatile = false;
        let mut list = false;
        let sources = pgrx::PgList::<pg_sys::CachedPlanSource>::from_pg(
            pg_sys::SPI_plan_get_plan_sources(plan),
        );
        if sources.len() != 1 {
            pg_sys::SPI_freeplan(plan);
            return Err(KeysError::SyntaxError(
                "the context expression must be one expression: it ends the statement and starts another".into(),
            ));
        }
        for src in sources.iter_ptr() {
            let queries = pgrx::PgList::<pg_sys::Query>::from_pg((*src).query_list);
            for q in queries.iter_ptr() {
                volatile |= pg_sys::contain_volatile_functions((*q).targetList.cast());
                let targets = pgrx::PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList);
                list |= targets.len() != 1 || targets.get_ptr(0).is_some_and(|te| is_list(te));
            }
        }
        pg_sys::SPI_freeplan(plan);
        if list {
            return Err(KeysError::InvalidArgument(
                "the context expression must be one expression, not a list (write one expression, e.g. id::text || '/' || tenant)".into(),
            ));
        }
        Ok(volatile)
    }
}

/// Whether the target `(\n expr \n)::text` holds a list: `a, b` in the parentheses parses as an
/// implicit row constructor, which would then be cast to text as one value.
///
/// # Safety
/// `te` points to a TargetEntry of an analyzed query.
unsafe fn is_list(te: *mut pg_sys::TargetEntry) -> bool {
    // SAFETY: walks down the casts of an analyzed expression by node tag, reading their `arg`s.
    unsafe {
        let mut node = (*te).expr.cast::<pg_sys::Node>();
        loop {
            if node.is_null() {
                return false;
            }
            match (*node).type_ {
                pg_sys::NodeTag::T_CoerceViaIO => {
                    node = (*node.cast::<pg_sys::CoerceViaIO>()).arg.cast()
                }
                pg_sys::NodeTag::T_RelabelType => {
                    node = (*node.cast::<pg_sys::RelabelType>()).arg.cast()
                }
                pg_sys::NodeTag::T_RowExpr => {
                    return (*node.cast::<pg_sys::RowExpr>()).row_format
                        == pg_sys::CoercionForm::COERCE_IMPLICIT_CAST;
                }
                _ => return false,
            }
        }
    }
}

/// Rows of `col` whose header names one of `keys`, counted as the table owner.
pub(super) fn count_on_keys(col: &Column, keys: &[i64]) -> Result<i64> {
    count_rows_on_keys(col, keys, None)
}

/// Rows of `col` on one of `keys` whose reference (primary key, or ctid) is not in `recorded`,
/// counted as the table owner: the rows still on an old key that no recorded failure accounts for.
pub(super) fn count_unrecorded_on_keys(
    col: &Column,
    keys: &[i64],
    recorded: &[String],
) -> Result<i64> {
    count_rows_on_keys(col, keys, Some(recorded))
}

/// Rows of `col` on one of `keys`, except those whose reference is in `except`, as the table owner.
fn count_rows_on_keys(col: &Column, keys: &[i64], except: Option<&[String]>) -> Result<i64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let table = col.table()?;
    let c = quote_identifier(&col.column);
    let unless = match except {
        Some(_) => format!(
            " AND NOT (({}) OPERATOR(pg_catalog.=) ANY ($1::text[]))",
            row_ref_expr(col.rel)?
        ),
        None => String::new(),
    };
    let first = if except.is_some() { 2 } else { 1 };
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM ONLY {table} AS t
          WHERE {}{unless}",
        on_keys_test(&format!("t.{c}"), first, keys.len())
    );
    let ranges = key_ranges(keys);
    let except = except.map(<[String]>::to_vec);
    as_role(col.owner, || {
        let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = Vec::new();
        args.extend(except.map(Into::into));
        args.extend(ranges.iter().map(|r| r.as_slice().into()));
        // (seeing this transaction's own re-encryption so far, as pgrx's read-write path does; on a
        // standby, where nothing can have been written and no transaction id can be assigned,
        // read-only)
        // SAFETY: reads shared recovery state.
        let n = if unsafe { pg_sys::RecoveryInProgress() } {
            crate::store::read_one::<i64>(&sql, &args)?
        } else {
            Spi::get_one_with_args::<i64>(&sql, &args)?
        };
        Ok(n.unwrap_or(0))
    })
}

/// Rows per key id in one registered column (for key_usage), counted as the table owner.
fn usage_by_key(col: &Column) -> Result<Vec<(Option<i64>, i64)>> {
    let table = col.table()?;
    let c = quote_identifier(&col.column);
    let sql = format!(
        "SELECT CASE WHEN pg_catalog.length(t.{c}) OPERATOR(pg_catalog.>=) 37 AND pg_catalog.get_byte(t.{c}, 0) OPERATOR(pg_catalog.=) 1
                     THEN ('x' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr(t.{c}, 2, 8), 'hex'))::bit(64)::bigint
                END AS key_id,
                pg_catalog.count(*)
           FROM ONLY {table} AS t WHERE t.{c} IS NOT NULL GROUP BY 1"
    );
    let owner = col.owner;
    as_role(owner, || {
        Spi::connect(|cl| {
            let mut out = Vec::new();
            for row in cl.select(sql.as_str(), None, &[])? {
                out.push((row.get::<i64>(1)?, row.get::<i64>(2)?.unwrap_or(0)));
            }
            Ok(out)
        })
    })
}

pub fn columns_of_keyring(keyring: &str) -> Result<Vec<Column>> {
    plans::select(
        "SELECT c.id, c.rel::oid, c.column_name::text, c.context_expr,
                    CASE WHEN r.oid IS NOT NULL THEN pg_catalog.format('%I.%I', n.nspname, r.relname) END,
                    r.relowner, c.blind_index_column::text, c.blind_index_context, c.blind_index_attnum
               FROM meshhook_keys.encrypted_column c
               LEFT JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) c.rel
               LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
              WHERE c.keyring OPERATOR(pg_catalog.=) $1 ORDER BY c.id",
        &[keyring.into()],
        |t| {
        let mut out = Vec::new();
        for row in t {
            out.push(Column {
                id: row.get::<i32>(1)?.unwrap_or_default(),
                rel: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                column: row.get::<String>(3)?.unwrap_or_default(),
                context_expr: row.get::<String>(4)?,
                table: row.get::<String>(5)?,
                owner: row.get::<pg_sys::Oid>(6)?.unwrap_or(pg_sys::InvalidOid),
                index: row
                    .get::<String>(7)?
                    .map(|column| -> Result<BlindIndexColumn> {
                        Ok(BlindIndexColumn {
                            column,
                            context_expr: row.get::<String>(8)?,
                            attnum: row.get::<i16>(9)?.unwrap_or(0),
                        })
                    })
                    .transpose()?,
            });
        }
        Ok(out)
    })
}

/// Rows still on `key_id` in each of the keyring's registered columns that has any (existing
/// tables only), as (`schema.table.column`, rows).
pub fn rows_on_key(keyring: &str, key_id: i64) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for col in columns_of_keyring(keyring)? {
        if let Some(table) = &col.table {
            let n = count_on_keys(&col, &[key_id])?;
            if n > 0 {
                out.push((format!("{table}.{}", quote_identifier(&col.column)), n));
            }
        }
    }
    Ok(out)
}

/// The extension's own tables (the built-in store) are registered by the extension, with a fixed
/// context expression, and run as the extension's owner: no one may change that registration into
/// running their code with the owner's authority. System catalogs hold no envelopes.
fn refuse_extension_table(rel: pg_sys::Oid) -> Result<()> {
    let system = Spi::get_one_with_args::<String>(
        "SELECT (SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                  WHERE c.oid OPERATOR(pg_catalog.=) $1 AND n.nspname OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog', 'information_schema', 'pg_toast']))",
        &[rel.into()],
    )?;
    if let Some(n) = system {
        return Err(KeysError::WrongObjectType(format!(
            "{n} is a system catalog: only ordinary tables of your own can be registered"
        )));
    }
    let name = Spi::get_one_with_args::<String>(
        "SELECT (SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
                  WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relnamespace OPERATOR(pg_catalog.=) 'meshhook_keys'::pg_catalog.regnamespace)",
        &[rel.into()],
    )?;
    match name {
        Some(n) => Err(KeysError::ExtensionTable(n)),
        None => Ok(()),
    }
}

/// Register a bytea column of `rel` that holds envelopes of `keyring`, with the SQL expression
/// (over the row) that gives the context it was encrypted with, or update the expression of an
/// existing registration. Refused unless the caller acts with the table owner's privileges, the
/// table is an ordinary table of the caller's (not the extension's, not a catalog), the column is
/// bytea, and the expression passes [`validate_context_expr`]. Audited. Returns the registration id.
pub fn register(rel: pg_sys::Oid, col: &str, context: Option<&str>, keyring: &str) -> Result<i32> {
    refuse_extension_table(rel)?;
    check_owned_bytea_column(rel, col, "ciphertext")?;
    let indexed = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM meshhook_keys.encrypted_column e
                         WHERE e.rel OPERATOR(pg_catalog.=) $1::oid::regclass AND e.blind_index_column OPERATOR(pg_catalog.=) $2)",
        &[rel.into(), col.into()],
    )?;
    if indexed == Some(true) {
        return Err(KeysError::InvalidArgument(format!(
            "column \"{col}\" is a registered blind index column: re-encryption writes it"
        )));
    }
    let context = context.filter(|c| !c.trim().is_empty()).map(str::to_string);
    let column = Column::resolve(rel, col, context.clone())?;
    validate_context_expr(&column)?;
    let id = Spi::get_one_with_args::<i32>(
        "INSERT INTO meshhook_keys.encrypted_column (rel, column_name, context_expr, keyring)
         VALUES ($1::oid::regclass, $2, $3, $4)
         ON CONFLICT (rel, column_name, keyring) DO UPDATE
            SET context_expr = EXCLUDED.context_expr,
                registered_at = pg_catalog.now(), registered_by = session_user
         RETURNING id",
        &[
            rel.into(),
            col.into(),
            context.clone().into(),
            keyring.into(),
        ],
    )?
    .ok_or_else(|| KeysError::Internal("registration id is NULL".into()))?;
    audit::record(
        "register_column",
        Some(keyring),
        None,
        None,
        None,
        serde_json::json!({ "table_oid": rel.to_u32(), "column": col, "context_expr": context }),
    )?;
    Ok(id)
}

/// Name the blind index column of a registered column (`index_col` `None`: forget it), with the
/// SQL expression over the row that gives the index's context: re-encryption then recomputes the
/// index of every row it moves. Refused unless the column is registered for `keyring`, the caller
/// acts with the table owner's privileges, the index column is another bytea column of the table,
/// and the expression passes the checks of a context expression. Audited.
pub fn register_index(
    rel: pg_sys::Oid,
    col: &str,
    keyring: &str,
    index_col: Option<&str>,
    index_context: Option<&str>,
) -> Result<()> {
    refuse_extension_table(rel)?;
    check_owned_bytea_column(rel, col, "ciphertext")?;
    let id = Spi::get_one_with_args::<i32>(
        "SELECT id FROM meshhook_keys.encrypted_column
          WHERE rel OPERATOR(pg_catalog.=) $1::oid::regclass AND column_name OPERATOR(pg_catalog.=) $2 AND keyring OPERATOR(pg_catalog.=) $3",
        &[rel.into(), col.into(), keyring.into()],
    )?
    .ok_or_else(|| KeysError::NotRegistered {
        column: col.into(),
        keyring: keyring.into(),
    })?;
    let index_context = index_context
        .filter(|c| !c.trim().is_empty())
        .map(str::to_string);
    if let Some(ix) = index_col {
        check_owned_bytea_column(rel, ix, "blind index")?;
        check_index_target(rel, col, ix, None)?;
        let column = Column::resolve(rel, col, None)?;
        validate_expr(&column, &index_context)?;
    }
    let attnum = match index_col {
        Some(ix) => Spi::get_one_with_args::<i16>(
            "SELECT a.attnum FROM pg_catalog.pg_attribute a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2 AND NOT a.attisdropped",
            &[rel.into(), ix.into()],
        )?,
        None => None,
    };
    Spi::run_with_args(
        "UPDATE meshhook_keys.encrypted_column SET blind_index_column = $2, blind_index_context = $3, blind_index_attnum = $4
          WHERE id OPERATOR(pg_catalog.=) $1",
        &[
            id.into(),
            index_col.into(),
            index_context.clone().into(),
            attnum.into(),
        ],
    )?;
    audit::record(
        "register_blind_index",
        Some(keyring),
        None,
        None,
        None,
        serde_json::json!({ "table_oid": rel.to_u32(), "column": col,
                            "blind_index_column": index_col, "blind_index_context": index_context }),
    )?;
    Ok(())
}

/// Refuse an index column re-encryption must not write: the ciphertext column itself, a
/// registered ciphertext column (for any keyring: its envelopes would be overwritten), the index
/// column of another ciphertext column (the two would overwrite each other's), a generated
/// column, or one that is not bytea. Checked at registration and again before every window that
/// writes it (with the column number it had when registered), so that a column renamed, dropped
/// or registered since is never written.
pub(crate) fn check_index_target(
    rel: pg_sys::Oid,
    col: &str,
    ix: &str,
    registered_attnum: Option<i16>,
) -> Result<()> {
    let refuse = |why: &str| {
        Err(KeysError::InvalidArgument(format!(
            "blind index column \"{ix}\" {why}"
        )))
    };
    if ix == col {
        return refuse("is the ciphertext column itself");
    }
    let (attnum, bytea, generated, ciphertext, other_index) = Spi::connect(|c| {
        let t = c.select(
            "SELECT a.attnum, a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.bytea'::pg_catalog.regtype,
                    a.attgenerated OPERATOR(pg_catalog.<>) '',
                    EXISTS (SELECT FROM meshhook_keys.encrypted_column e
                             WHERE e.rel OPERATOR(pg_catalog.=) $1::oid::regclass AND e.column_name OPERATOR(pg_catalog.=) $2),
                    EXISTS (SELECT FROM meshhook_keys.encrypted_column e
                             WHERE e.rel OPERATOR(pg_catalog.=) $1::oid::regclass AND e.blind_index_column OPERATOR(pg_catalog.=) $2
                               AND e.column_name OPERATOR(pg_catalog.<>) $3)
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2
                AND NOT a.attisdropped AND a.attnum OPERATOR(pg_catalog.>) 0",
            None,
            &[rel.into(), ix.into(), col.into()],
        )?;
        if t.is_empty() {
            return Err(KeysError::UndefinedColumn(ix.into()));
        }
        let r = t.first();
        Ok((
            r.get::<i16>(1)?.unwrap_or(0),
            r.get::<bool>(2)?.unwrap_or(false),
            r.get::<bool>(3)?.unwrap_or(true),
            r.get::<bool>(4)?.unwrap_or(true),
            r.get::<bool>(5)?.unwrap_or(true),
        ))
    })?;
    if registered_attnum.is_some_and(|n| n != attnum) {
        return refuse(
            "is not the column registered under that name (renamed or dropped since): register the index column again",
        );
    }
    if !bytea {
        return refuse("is not bytea");
    }
    if generated {
        return refuse("is a generated column");
    }
    if ciphertext {
        return refuse(
            "is a registered ciphertext column: re-encryption would overwrite its envelopes",
        );
    }
    if other_index {
        return refuse("is the blind index column of another ciphertext column");
    }
    Ok(())
}

/// Refuse unless `col` is a bytea column of the ordinary table `rel` and the caller acts with the
/// table owner's privileges (the expressions over its rows will be evaluated as that owner).
/// `what` names the column's role in the errors.
fn check_owned_bytea_column(rel: pg_sys::Oid, col: &str, what: &str) -> Result<()> {
    let (relkind, owner, attnum, typname) = Spi::connect(|c| {
        let t = c.select(
                "SELECT c.relkind::text, c.relowner,
                        (SELECT a.attnum FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) $2 AND NOT a.attisdropped AND a.attnum OPERATOR(pg_catalog.>) 0),
                        (SELECT a.atttypid::regtype::text FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) $2 AND NOT a.attisdropped AND a.attnum OPERATOR(pg_catalog.>) 0)
                   FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[rel.into(), col.into()],
            )?;
        if t.is_empty() {
            return Err(KeysError::UndefinedTable(rel.to_u32()));
        }
        let t = t.first();
        Ok((
            t.get::<String>(1)?,
            t.get::<pg_sys::Oid>(2)?,
            t.get::<i16>(3)?,
            t.get::<String>(4)?,
        ))
    })?;
    if relkind.as_deref() != Some("r") {
        return Err(KeysError::WrongObjectType(
            "only ordinary tables can be registered (register each partition of a partitioned table)".into(),
        ));
    }
    // Only someone acting with the table owner's privileges may register a column: the context
    // expression will be evaluated as that owner.
    let owner = owner.unwrap_or(pg_sys::InvalidOid);
    // SAFETY: catalog lookup of role membership.
    let may = |role| unsafe { pg_sys::has_privs_of_role(role, owner) };
    if !context::caller().role().is_some_and(may) {
        return Err(KeysError::NotTableOwner);
    }
    if attnum.is_none() {
        return Err(KeysError::UndefinedColumn(col.into()));
    }
    if typname.as_deref() != Some("bytea") {
        return Err(KeysError::DatatypeMismatch(format!(
            "column \"{col}\" is of type {}, but {what} columns must be bytea",
            typname.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Forget a registered column, for one keyring or (`keyring` `None`) all of them, with any running
/// progress of a job over it. Audited. Returns whether anything was registered.
pub fn unregister(rel: pg_sys::Oid, col: &str, keyring: Option<&str>) -> Result<bool> {
    refuse_extension_table(rel)?;
    let ids: Vec<i32> = Spi::connect(|c| {
        let mut ids = Vec::new();
        for row in c.select(
            "SELECT id FROM meshhook_keys.encrypted_column
              WHERE rel OPERATOR(pg_catalog.=) $1::oid::regclass AND column_name OPERATOR(pg_catalog.=) $2 AND keyring OPERATOR(pg_catalog.=) coalesce($3, keyring)",
            None,
            &[rel.into(), col.into(), keyring.into()],
        )? {
            ids.extend(row.get::<i32>(1)?);
        }
        Ok::<_, KeysError>(ids)
    })?;
    if ids.is_empty() {
        return Ok(false);
    }
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.reencrypt_progress_column WHERE column_id OPERATOR(pg_catalog.=) ANY ($1) AND state OPERATOR(pg_catalog.=) 'running'",
        &[ids.clone().into()],
    )?;
    Spi::run_with_args(
        "DELETE FROM meshhook_keys.encrypted_column WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
        &[ids.into()],
    )?;
    audit::record(
        "unregister_column",
        keyring,
        None,
        None,
        None,
        serde_json::json!({ "table_oid": rel.to_u32(), "column": col }),
    )?;
    Ok(true)
}

/// One row of key_usage: table, column, version (NULL: not this keyring's), state, rows.
pub type UsageRow = (pg_sys::Oid, String, Option<i32>, Option<String>, i64);

/// Rows per key version in every registered column of a keyring, one row per table, column and
/// version; rows on keys of other keyrings, or not envelopes at all, are merged into one row per
/// column with a NULL version. Columns whose table was dropped are skipped.
pub fn key_usage(keyring: &str) -> Result<Vec<UsageRow>> {
    let mut out = Vec::new();
    for col in columns_of_keyring(keyring)? {
        if !col.exists() {
            continue;
        }
        for (key_id, n) in usage_by_key(&col)? {
            let (version, state) = match key_id {
                Some(k) => crate::store::read_two::<i32, String>(
                    "SELECT (SELECT version FROM meshhook_keys.data_key WHERE key_id OPERATOR(pg_catalog.=) $1 AND keyring OPERATOR(pg_catalog.=) $2),
                            (SELECT state FROM meshhook_keys.data_key WHERE key_id OPERATOR(pg_catalog.=) $1 AND keyring OPERATOR(pg_catalog.=) $2)",
                    &[k.into(), keyring.into()],
                )?,
                None => (None, None),
            };
            out.push((col.rel, col.column.clone(), version, state, n));
        }
    }
    // merge "other" buckets per column
    out.sort_by(|a, b| (a.0.to_u32(), &a.1, a.2).cmp(&(b.0.to_u32(), &b.1, b.2)));
    let mut merged: Vec<UsageRow> = Vec::new();
    for r in out {
        match merged.last_mut() {
            Some(m) if m.0 == r.0 && m.1 == r.1 && m.2 == r.2 => m.4 += r.4,
            _ => merged.push(r),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod unit {
    use super::{header, key_ranges};

    /// Whether `v` is in a range of [`key_ranges`], compared as PostgreSQL compares bytea (bytes,
    /// then length: Rust's order of byte slices).
    fn in_range(range: &[Vec<u8>], v: &[u8]) -> bool {
        range[0].as_slice() <= v && v < range[1].as_slice()
    }

    #[test]
    fn a_keys_range_holds_exactly_the_strings_that_begin_with_its_header() {
        for k in [
            1i64,
            0x7cfb_6b97_a33d_83ff,
            0x1234_5678_9abc_ffff,
            0x00ff_ffff_ffff_ffff,
            0x7fff_ffff_ffff_fffe,
            i64::MAX,
        ] {
            let h = header(k);
            let range = key_ranges(&[k]);
            let next = {
                let mut n = vec![h[0]];
                n.extend_from_slice(&(k as u64).wrapping_add(1).to_be_bytes());
                n
            };
            let mut candidates: Vec<Vec<u8>> = Vec::new();
            for src in [&h, &next] {
                for len in 0..=src.len() {
                    let p = src[..len].to_vec();
                    for tail in [
                        &[][..],
                        &[0x00][..],
                        &[0xff][..],
                        &[0x00; 40][..],
                        &[0xff; 40][..],
                    ] {
                        let mut v = p.clone();
                        v.extend_from_slice(tail);
                        candidates.push(v);
                    }
                }
            }
            candidates.push(header(k.wrapping_sub(1)));
            candidates.push(vec![h[0] + 1]);
            for v in &candidates {
                assert_eq!(
                    in_range(&range, v),
                    v.starts_with(&h),
                    "key {k:#x}, value {v:02x?}"
                );
            }
        }
    }
}
