//! An account's ledger, pure: the balance is the fold of its entries. Each entry has the next
//! version of its account (1 is `OPENED`) and the balance after it. [`decide`] says which
//! money moves ([`Posting`]s); [`Head::append`] numbers them into entries; [`Replay`] folds
//! stored entries back and names what does not add up. No I/O here (`accounts` stores them).
//!
//! [`decide`]: crate::domain::decide

use serde::Serialize;
use uuid::Uuid;

/// The largest balance an account may be opened with or brought to by a deposit (refunds
/// may bring it back above, giving back what charges took).
pub const MAX_BALANCE_CENTS: i64 = 1_000_000_000_000;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    /// The account was opened with `amount_cents` (always version 1).
    Opened,
    /// Money paid in (`POST /accounts/{customer_id}/deposits`).
    Deposited,
    /// An order's total was taken (negative amount).
    Charged,
    /// A charge was given back.
    Refunded,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "OPENED",
            Self::Deposited => "DEPOSITED",
            Self::Charged => "CHARGED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Opened, Self::Deposited, Self::Charged, Self::Refunded]
            .into_iter()
            .find(|kind| kind.as_str() == value)
    }

    /// Whether `amount_cents` has the sign this kind of entry allows.
    fn allows(self, amount_cents: i64) -> bool {
        match self {
            Self::Deposited => amount_cents > 0,
            Self::Charged => amount_cents <= 0,
            Self::Opened | Self::Refunded => amount_cents >= 0,
        }
    }
}

/// Money a decision moves on the account it concerns, before it is numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    pub kind: EntryKind,
    /// What it adds to the balance.
    pub amount_cents: i64,
    pub order_id: Option<Uuid>,
}

impl Posting {
    pub fn charged(order_id: Uuid, amount_cents: i64) -> Self {
        Self {
            kind: EntryKind::Charged,
            amount_cents: -amount_cents,
            order_id: Some(order_id),
        }
    }

    pub fn refunded(order_id: Uuid, amount_cents: i64) -> Self {
        Self {
            kind: EntryKind::Refunded,
            amount_cents,
            order_id: Some(order_id),
        }
    }
}

/// One ledger entry as the domain decides it (the writer adds its cause and time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub version: i64,
    pub kind: EntryKind,
    pub amount_cents: i64,
    pub balance_after_cents: i64,
    pub order_id: Option<Uuid>,
}

/// The last entry of an account's ledger: its version and the balance after it (what the
/// `accounts` snapshot holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub balance_cents: i64,
}

/// Why entries cannot be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{0} cents is not a valid amount for a {1} entry")]
    Amount(i64, &'static str),
    #[error("the balance would become {0} cents")]
    Negative(i64),
    #[error("the balance would overflow")]
    Overflow,
    #[error("the balance would exceed the limit of {MAX_BALANCE_CENTS} cents")]
    Limit,
    #[error("an account is opened only once, at version 1")]
    Reopened,
}

/// The first entry of an account opened with `balance_cents`.
pub fn open(balance_cents: i64) -> Result<Entry, LedgerError> {
    if !(0..=MAX_BALANCE_CENTS).contains(&balance_cents) {
        return Err(LedgerError::Amount(balance_cents, "OPENED"));
    }
    Ok(Entry {
        version: 1,
        kind: EntryKind::Opened,
        amount_cents: balance_cents,
        balance_after_cents: balance_cents,
        order_id: None,
    })
}

impl Head {
    /// The head once `entries` (which follow this one) are applied.
    pub fn after(self, entries: &[Entry]) -> Self {
        entries.last().map_or(self, |last| Self {
            version: last.version,
            balance_cents: last.balance_after_cents,
        })
    }

    /// `postings` as the entries that follow this head: the next versions, with the running
    /// balance. A balance may never go negative.
    pub fn append(self, postings: &[Posting]) -> Result<Vec<Entry>, LedgerError> {
        let mut head = self;
        let mut entries = Vec::with_capacity(postings.len());
        for posting in postings {
            if posting.kind == EntryKind::Opened {
                return Err(LedgerError::Reopened);
            }
            if !posting.kind.allows(posting.amount_cents) {
                return Err(LedgerError::Amount(
                    posting.amount_cents,
                    posting.kind.as_str(),
                ));
            }
            let balance = head
                .balance_cents
                .checked_add(posting.amount_cents)
                .ok_or(LedgerError::Overflow)?;
            if balance < 0 {
                return Err(LedgerError::Negative(balance));
            }
            let entry = Entry {
                version: head.version + 1,
                kind: posting.kind,
                amount_cents: posting.amount_cents,
                balance_after_cents: balance,
                order_id: posting.order_id,
            };
            head = head.after(&[entry]);
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The entry a deposit of `amount_cents` appends: more than 0, and the balance stays
    /// within [`MAX_BALANCE_CENTS`].
    pub fn deposit(self, amount_cents: i64) -> Result<Entry, LedgerError> {
        if amount_cents <= 0 {
            return Err(LedgerError::Amount(amount_cents, "DEPOSITED"));
        }
        if self
            .balance_cents
            .checked_add(amount_cents)
            .is_none_or(|balance| balance > MAX_BALANCE_CENTS)
        {
            return Err(LedgerError::Limit);
        }
        let posting = Posting {
            kind: EntryKind::Deposited,
            amount_cents,
            order_id: None,
        };
        let entries = self.append(&[posting])?;
        Ok(entries[0])
    }
}

/// Folds an account's stored entries, in version order, and notes everything that does not
/// add up: a first entry that is not `OPENED` version 1, a version skipped or repeated, a
/// running balance that is not the previous one plus the amount, an amount of the wrong sign,
/// a negative balance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    head: Option<Head>,
    /// The fold of the amounts, whatever the entries say their balance is.
    sum: i64,
    entries: u64,
    problems: Vec<String>,
}

impl Replay {
    pub fn push(&mut self, entry: &Entry) {
        self.fold(
            entry.version,
            Some(entry.kind),
            entry.amount_cents,
            entry.balance_after_cents,
        );
    }

    /// An entry of a kind this release does not know (a later release's, or written by hand):
    /// a problem of its ledger; its amount still counts, so the entries after it are checked
    /// as usual.
    pub fn push_unknown_kind(
        &mut self,
        version: i64,
        kind: &str,
        amount_cents: i64,
        balance_after_cents: i64,
    ) {
        self.problems
            .push(format!("version {version} has an unknown kind {kind:?}"));
        self.fold(version, None, amount_cents, balance_after_cents);
    }

    fn fold(
        &mut self,
        version: i64,
        kind: Option<EntryKind>,
        amount_cents: i64,
        balance_after_cents: i64,
    ) {
        match self.head {
            None if version != 1 => self
                .problems
                .push(format!("the ledger starts at version {}, not 1", version)),
            Some(head) if version != head.version + 1 => self.problems.push(format!(
                "version {} follows version {} (expected {})",
                version,
                head.version,
                head.version + 1
            )),
            _ => {}
        }
        if let Some(kind) = kind {
            let opens = kind == EntryKind::Opened;
            if self.head.is_none() && !opens {
                self.problems.push(format!(
                    "the ledger starts with {}, not OPENED",
                    kind.as_str()
                ));
            }
            if self.head.is_some() && opens {
                self.problems
                    .push(format!("version {version} opens the account again"));
            }
            if !kind.allows(amount_cents) {
                self.problems.push(format!(
                    "version {version} ({}) has amount {amount_cents}",
                    kind.as_str()
                ));
            }
        }
        match self.sum.checked_add(amount_cents) {
            Some(sum) => self.sum = sum,
            None => self
                .problems
                .push(format!("version {}: the fold overflows", version)),
        }
        if balance_after_cents != self.sum {
            self.problems.push(format!(
                "version {} says the balance is {} but its amounts add up to {}",
                version, balance_after_cents, self.sum
            ));
        }
        if balance_after_cents < 0 {
            self.problems.push(format!(
                "version {} leaves a negative balance {}",
                version, balance_after_cents
            ));
        }
        self.entries += 1;
        self.head = Some(Head {
            version,
            balance_cents: self.sum,
        });
    }

    /// The balance the amounts fold to and the last version; `None` for no entry at all.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// What does not add up, in the order it was found.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The entries' problems and how the `stored` snapshot (`None`: no account row) differs
    /// from their fold.
    pub fn check(&self, stored: Option<Head>) -> Vec<String> {
        let mut problems = self.problems.clone();
        match (stored, self.head) {
            (None, None) => {}
            (Some(stored), None) => problems.push(format!(
                "the account holds {} cents (version {}) but has no ledger entry",
                stored.balance_cents, stored.version
            )),
            (None, Some(head)) => problems.push(format!(
                "{} ledger entries (folding to {} cents) but no account",
                self.entries, head.balance_cents
            )),
            (Some(stored), Some(head)) => {
                if stored.balance_cents != head.balance_cents {
                    problems.push(format!(
                        "the account holds {} cents but its ledger folds to {} cents",
                        stored.balance_cents, head.balance_cents
                    ));
                }
                if stored.version != head.version {
                    problems.push(format!(
                        "the account is at version {} but its ledger at version {}",
                        stored.version, head.version
                    ));
                }
            }
        }
        problems
    }
}

/// Replays `entries` (of one account, in version order).
pub fn replay<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Replay {
    let mut replay = Replay::default();
    entries.into_iter().for_each(|entry| replay.push(entry));
    replay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Uuid {
        Uuid::from_u128(7)
    }

    fn opened(balance: i64) -> (Head, Vec<Entry>) {
        let entry = open(balance).unwrap();
        (
            Head {
                version: 1,
                balance_cents: balance,
            },
            vec![entry],
        )
    }

    #[test]
    fn postings_are_numbered_after_the_head_with_the_running_balance() {
        let (head, mut ledger) = opened(1_000);
        let entries = head
            .append(&[
                Posting::charged(order(), 300),
                Posting::refunded(order(), 300),
            ])
            .unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.version, e.kind, e.amount_cents, e.balance_after_cents))
                .collect::<Vec<_>>(),
            [
                (2, EntryKind::Charged, -300, 700),
                (3, EntryKind::Refunded, 300, 1_000)
            ]
        );
        assert_eq!(
            head.after(&entries),
            Head {
                version: 3,
                balance_cents: 1_000
            }
        );
        ledger.extend(entries);
        let replayed = replay(&ledger);
        assert_eq!(replayed.problems(), [] as [String; 0]);
        assert_eq!(replayed.check(Some(head.after(&ledger))), [] as [String; 0]);
    }

    #[test]
    fn a_balance_never_goes_negative_nor_a_deposit_beyond_the_limit() {
        let (head, _) = opened(100);
        assert_eq!(
            head.append(&[Posting::charged(order(), 101)]),
            Err(LedgerError::Negative(-1))
        );
        assert_eq!(head.deposit(0), Err(LedgerError::Amount(0, "DEPOSITED")));
        assert_eq!(head.deposit(-5), Err(LedgerError::Amount(-5, "DEPOSITED")));
        assert_eq!(
            head.deposit(MAX_BALANCE_CENTS - 99),
            Err(LedgerError::Limit)
        );
        assert_eq!(
            head.deposit(MAX_BALANCE_CENTS - 100).unwrap(),
            Entry {
                version: 2,
                kind: EntryKind::Deposited,
                amount_cents: MAX_BALANCE_CENTS - 100,
                balance_after_cents: MAX_BALANCE_CENTS,
                order_id: None,
            }
        );
        let full = Head {
            version: 9,
            balance_cents: i64::MAX,
        };
        assert_eq!(full.deposit(1), Err(LedgerError::Limit));
        assert_eq!(
            full.append(&[Posting::refunded(order(), 1)]),
            Err(LedgerError::Overflow)
        );
        assert_eq!(open(-1), Err(LedgerError::Amount(-1, "OPENED")));
        let reopen = Posting {
            kind: EntryKind::Opened,
            amount_cents: 1,
            order_id: None,
        };
        assert_eq!(head.append(&[reopen]), Err(LedgerError::Reopened));
    }

    #[test]
    fn a_replay_names_gaps_wrong_balances_and_a_snapshot_that_differs() {
        let (head, mut ledger) = opened(1_000);
        ledger.extend(head.append(&[Posting::charged(order(), 200)]).unwrap());
        let stored = head.after(&ledger);

        let mut gap = ledger.clone();
        gap[1].version = 3;
        let problems = replay(&gap).check(Some(stored));
        assert!(
            problems[0].contains("version 3 follows version 1 (expected 2)"),
            "{problems:?}"
        );

        let mut wrong = ledger.clone();
        wrong[1].balance_after_cents = 900;
        let problems = replay(&wrong).check(Some(stored));
        assert_eq!(
            problems,
            ["version 2 says the balance is 900 but its amounts add up to 800"]
        );

        let corrupted = Head {
            balance_cents: 5_000,
            ..stored
        };
        assert_eq!(
            replay(&ledger).check(Some(corrupted)),
            ["the account holds 5000 cents but its ledger folds to 800 cents"]
        );
        assert_eq!(
            replay(&[]).check(Some(stored)),
            ["the account holds 800 cents (version 2) but has no ledger entry"]
        );
        assert_eq!(
            replay(&ledger).check(None),
            ["2 ledger entries (folding to 800 cents) but no account"]
        );
        let unopened = replay(&ledger[1..]);
        assert_eq!(unopened.problems().len(), 3, "{:?}", unopened.problems());
    }

    #[test]
    fn an_entry_of_an_unknown_kind_is_a_problem_and_the_entries_after_it_still_add_up() {
        let (_, ledger) = opened(1_000);
        let mut replay = replay(&ledger);
        replay.push_unknown_kind(2, "GIFTED", 50, 1_050);
        let after = Head {
            version: 2,
            balance_cents: 1_050,
        };
        replay.push(&after.append(&[Posting::charged(order(), 200)]).unwrap()[0]);
        assert_eq!(
            replay.check(Some(Head {
                version: 3,
                balance_cents: 850
            })),
            ["version 2 has an unknown kind \"GIFTED\""]
        );
    }
}
