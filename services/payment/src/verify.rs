//! Replays every ledger and compares it with the `accounts` snapshots (`sagashop-ledger
//! verify`): an account whose balance or version is not the fold of its ledger, a ledger with
//! a version gap or a running balance that does not add up, an entry of an unknown kind, an
//! account without a ledger, a ledger without an account. Read in one repeatable-read,
//! read-only transaction, so a running service is no false alarm.

use std::collections::BTreeMap;
use std::fmt;

use futures::TryStreamExt;
use sqlx::PgPool;

use crate::accounts::LedgerRow;
use crate::ledger::{Head, Replay};

/// An account (or a ledger) that does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub customer_id: String,
    pub problems: Vec<String>,
}

/// What a verification read and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub accounts: u64,
    pub entries: u64,
    /// By customer id.
    pub findings: Vec<Finding>,
}

impl Verification {
    pub fn is_consistent(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One line per finding, then a summary line.
impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "MISMATCH customer={:?}: {}",
                finding.customer_id,
                finding.problems.join("; ")
            )?;
        }
        write!(
            f,
            "verified {} and {}: ",
            counted(self.accounts, "account"),
            counted(self.entries, "ledger entry")
        )?;
        match self.findings.len() {
            0 => write!(f, "every balance is the fold of its ledger"),
            1 => write!(f, "1 account does not add up"),
            n => write!(f, "{n} accounts do not add up"),
        }
    }
}

/// A ledger entry with the account it belongs to.
#[derive(sqlx::FromRow)]
struct OwnedRow {
    customer_id: String,
    #[sqlx(flatten)]
    row: LedgerRow,
}

/// `n` and `what`, in the plural unless `n` is 1.
fn counted(n: u64, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {what}s"),
    }
}

/// Replays every ledger in the database of `pool` against the accounts.
pub async fn verify(pool: &PgPool) -> Result<Verification, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("select customer_id, version, balance_cents from accounts")
            .fetch_all(&mut *tx)
            .await?;
    let mut verification = Verification {
        accounts: rows.len() as u64,
        ..Verification::default()
    };
    let mut stored: BTreeMap<String, Head> = rows
        .into_iter()
        .map(|(customer_id, version, balance_cents)| {
            (
                customer_id,
                Head {
                    version,
                    balance_cents,
                },
            )
        })
        .collect();
    let mut findings = BTreeMap::new();
    let mut check = |customer_id: String, replay: &Replay, stored: Option<Head>| {
        let problems = replay.check(stored);
        if !problems.is_empty() {
            findings.insert(customer_id, problems);
        }
    };
    {
        let mut entries = sqlx::query_as::<_, OwnedRow>(
            "select customer_id, version, kind, amount_cents, balance_after_cents, order_id,
                    causation_id, occurred_at
             from ledger_entries order by customer_id, version",
        )
        .fetch(&mut *tx);
        let mut current: Option<(String, Replay)> = None;
        while let Some(OwnedRow { customer_id, row }) = entries.try_next().await? {
            verification.entries += 1;
            if current.as_ref().is_some_and(|(of, _)| *of != customer_id) {
                let (of, replay) = current.take().expect("a ledger being replayed");
                let snapshot = stored.remove(&of);
                check(of, &replay, snapshot);
            }
            let (_, replay) =
                current.get_or_insert_with(|| (customer_id.clone(), Replay::default()));
            match row.entry() {
                Some(entry) => replay.push(&entry),
                None => replay.push_unknown_kind(
                    row.version,
                    &row.kind,
                    row.amount_cents,
                    row.balance_after_cents,
                ),
            }
        }
        if let Some((of, replay)) = current {
            let snapshot = stored.remove(&of);
            check(of, &replay, snapshot);
        }
    }
    for (customer_id, snapshot) in stored {
        check(customer_id, &Replay::default(), Some(snapshot));
    }
    tx.commit().await?;
    verification.findings = findings
        .into_iter()
        .map(|(customer_id, problems)| Finding {
            customer_id,
            problems,
        })
        .collect();
    Ok(verification)
}
