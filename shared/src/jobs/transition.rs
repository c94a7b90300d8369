//! The job status state machine. Pure: the stored status and the webhook's status in, a
//! decision out. Statuses only move forward and a terminal status is final, so duplicated,
//! late and out-of-order webhooks change nothing.

use crate::replicate::Status;

/// A job's status as stored in `generations.status` / `ai_models.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == stored)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Position on the only road a job travels: PENDING → PROCESSING → terminal.
    fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Processing => 1,
            Self::Completed | Self::Failed | Self::Cancelled => 2,
        }
    }

    /// Whether entering this status gives the user's credits back.
    pub fn refunds(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored status a Replicate status maps to; `None` for statuses this version does not
/// know (they are accepted and ignored, never treated as errors).
pub fn target_of(status: &Status) -> Option<JobStatus> {
    match status {
        Status::Starting | Status::Processing => Some(JobStatus::Processing),
        Status::Succeeded => Some(JobStatus::Completed),
        Status::Failed => Some(JobStatus::Failed),
        Status::Canceled | Status::Aborted => Some(JobStatus::Cancelled),
        Status::Unknown(_) => None,
    }
}

/// Why a webhook changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A status this version does not know.
    UnknownStatus,
    /// The job already ended; its end is final.
    AlreadyTerminal,
    /// Same status again (a duplicate) or an older one (out of order).
    NotForward,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownStatus => "unknown_status",
            Self::AlreadyTerminal => "already_terminal",
            Self::NotForward => "not_forward",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    MoveTo(JobStatus),
    Ignore(Ignored),
}

/// What a webhook with `incoming` status does to a job whose stored status is `current`.
pub fn decide(current: JobStatus, incoming: &Status) -> Decision {
    let Some(target) = target_of(incoming) else {
        return Decision::Ignore(Ignored::UnknownStatus);
    };
    if current.is_terminal() {
        return Decision::Ignore(Ignored::AlreadyTerminal);
    }
    if target.rank() <= current.rank() {
        return Decision::Ignore(Ignored::NotForward);
    }
    Decision::MoveTo(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: [&str; 7] = [
        "starting",
        "processing",
        "succeeded",
        "failed",
        "canceled",
        "aborted",
        "paused",
    ];

    #[test]
    fn the_contract_table() {
        use JobStatus::*;
        let cases = [
            ("starting", Processing),
            ("processing", Processing),
            ("succeeded", Completed),
            ("failed", Failed),
            ("canceled", Cancelled),
            ("aborted", Cancelled),
        ];
        for (incoming, expected) in cases {
            assert_eq!(
                decide(Pending, &Status::from(incoming)),
                Decision::MoveTo(expected),
                "{incoming}"
            );
        }
    }

    #[test]
    fn terminal_is_final_for_every_incoming_status() {
        for current in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for incoming in INCOMING {
                assert!(
                    matches!(
                        decide(current, &Status::from(incoming)),
                        Decision::Ignore(_)
                    ),
                    "{current} then {incoming}"
                );
            }
        }
    }

    #[test]
    fn never_backwards_and_duplicates_are_no_ops() {
        // Exhaustively: a decision to move always moves strictly forward.
        for current in JobStatus::ALL {
            for incoming in INCOMING {
                if let Decision::MoveTo(target) = decide(current, &Status::from(incoming)) {
                    assert!(target.rank() > current.rank(), "{current} → {target}");
                }
            }
        }
        assert_eq!(
            decide(JobStatus::Processing, &Status::Processing),
            Decision::Ignore(Ignored::NotForward)
        );
        assert_eq!(
            decide(JobStatus::Processing, &Status::Starting),
            Decision::Ignore(Ignored::NotForward)
        );
        assert_eq!(
            decide(JobStatus::Completed, &Status::Processing),
            Decision::Ignore(Ignored::AlreadyTerminal)
        );
    }

    #[test]
    fn unknown_statuses_are_ignored_not_errors() {
        assert_eq!(
            decide(JobStatus::Pending, &Status::from("paused")),
            Decision::Ignore(Ignored::UnknownStatus)
        );
    }

    #[test]
    fn stored_statuses_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("completed"), None);
        assert!(JobStatus::Failed.refunds() && JobStatus::Cancelled.refunds());
        assert!(!JobStatus::Completed.refunds());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const TERMINALS: [&str; 4] = ["succeeded", "failed", "canceled", "aborted"];

        /// One job's webhooks as Replicate sends them, in order: `starting`, some
        /// `processing`, one terminal.
        fn lifecycle() -> impl Strategy<Value = Vec<&'static str>> {
            (0usize..4, prop::sample::select(&TERMINALS[..])).prop_map(|(processing, end)| {
                let mut webhooks = vec!["starting"];
                webhooks.extend(std::iter::repeat_n("processing", processing));
                webhooks.push(end);
                webhooks
            })
        }

        /// The stored status after `deliveries` (indices into `webhooks`), and how many
        /// changes refunded.
        fn deliver(webhooks: &[&str], deliveries: &[usize]) -> (JobStatus, usize) {
            let mut current = JobStatus::Pending;
            let mut refunds = 0;
            for &index in deliveries {
                if let Decision::MoveTo(to) = decide(current, &Status::from(webhooks[index])) {
                    refunds += usize::from(to.refunds());
                    current = to;
                }
            }
            (current, refunds)
        }

        proptest! {
            /// Duplicated, reordered, some intermediate ones lost: as long as the terminal
            /// webhook arrives (Replicate retries it), the job ends where the ordered single
            /// delivery ends, refunded at most once.
            #[test]
            fn any_order_and_multiplicity_ends_where_the_ordered_delivery_ends(
                (webhooks, deliveries) in lifecycle().prop_flat_map(|webhooks| {
                    let last = webhooks.len() - 1;
                    let deliveries = prop::collection::vec(0..=last, 0..24)
                        .prop_map(move |mut deliveries| {
                            deliveries.push(last);
                            deliveries
                        })
                        .prop_shuffle();
                    (Just(webhooks), deliveries)
                })
            ) {
                let ordered: Vec<usize> = (0..webhooks.len()).collect();
                let (expected, expected_refunds) = deliver(&webhooks, &ordered);
                let (ended, refunds) = deliver(&webhooks, &deliveries);
                prop_assert_eq!(ended, expected);
                prop_assert_eq!(refunds, expected_refunds);
                prop_assert!(refunds <= 1);
            }

            /// Whatever arrives, in whatever order, a job is refunded at most once and
            /// never leaves a terminal status.
            #[test]
            fn refunds_at_most_once_whatever_arrives(
                statuses in prop::collection::vec(
                    prop::sample::select(&INCOMING[..]), 0..40)
            ) {
                let mut current = JobStatus::Pending;
                let mut refunds = 0;
                let mut ended: Option<JobStatus> = None;
                for incoming in statuses {
                    if let Decision::MoveTo(to) = decide(current, &Status::from(incoming)) {
                        prop_assert!(ended.is_none(), "left {:?}", ended);
                        refunds += usize::from(to.refunds());
                        current = to;
                        if to.is_terminal() {
                            ended = Some(to);
                        }
                    }
                }
                prop_assert!(refunds <= 1);
            }
        }
    }
}
