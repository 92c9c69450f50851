//! Errors of a queue node and their gRPC statuses.

use openraft::error::{ClientWriteError, RaftError};
use skein_queue::NodeId;
use tonic::{Code, Status};

/// Everything a queue node's services can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known right now (election in progress, or no quorum).
    #[error("no leader: the cluster is electing or has lost its quorum")]
    NoLeader,
    /// Leadership moved while the request was in flight; it was not applied.
    #[error("not the leader any more; retry")]
    LeaderChanged,
    /// The commit did not complete in time; it may or may not be applied.
    #[error("commit did not complete within {ms} ms")]
    CommitTimeout {
        /// The limit that passed.
        ms: u64,
    },
    /// The request is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The cluster is not in a state that allows the request.
    #[error("{reason}")]
    FailedPrecondition {
        /// What has to change first.
        reason: String,
    },
    /// The caller may not do this.
    #[error("{reason}")]
    PermissionDenied {
        /// Why.
        reason: String,
    },
    /// The thing asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The thing to create exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What.
        what: String,
    },
    /// Raft refused or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] skein_queue::QueueError),
    /// Forwarding to the leader failed.
    #[error("forwarding to leader {addr}: {message}")]
    Forward {
        /// Leader address.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The node holds as much as it may of something (message bytes in flight): try again.
    #[error("busy: this node already holds its limit of {limit} {what}; try again later")]
    Busy {
        /// What is limited, with its setting.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

impl ClusterError {
    /// FAILED_PRECONDITION unless the cluster's replicated `format` is at least `need`, the
    /// first that has `what`.
    pub fn require_format(format: u32, need: u32, what: &str) -> Result<(), Self> {
        if format >= need {
            return Ok(());
        }
        Err(Self::FailedPrecondition {
            reason: format!(
                "the cluster writes format {format}; {what} need format {need}: once every \
                 node runs this release, run `skeinctl finalize-upgrade`"
            ),
        })
    }

    /// The gRPC code for each error: the one place this mapping lives.
    pub fn code(&self) -> Code {
        match self {
            Self::NoLeader | Self::LeaderChanged | Self::Forward { .. } | Self::ShuttingDown => {
                Code::Unavailable
            }
            Self::CommitTimeout { .. } => Code::DeadlineExceeded,
            Self::Busy { .. } => Code::ResourceExhausted,
            Self::Invalid { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Raft(_) | Self::Storage(_) => Code::Internal,
        }
    }
}

impl ClusterError {
    /// The same error for another waiter of one failed operation (a group commit answers
    /// many): the kinds callers act on keep their kind, the rest keep their text.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::NoLeader => Self::NoLeader,
            Self::LeaderChanged => Self::LeaderChanged,
            Self::CommitTimeout { ms } => Self::CommitTimeout { ms: *ms },
            Self::ShuttingDown => Self::ShuttingDown,
            Self::Busy { what, limit } => Self::Busy {
                what,
                limit: *limit,
            },
            Self::Forward { addr, message } => Self::Forward {
                addr: addr.clone(),
                message: message.clone(),
            },
            other => Self::Raft(other.to_string()),
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>> for ClusterError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Self::LeaderChanged,
            other => Self::Raft(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(ClusterError::NoLeader.code(), Code::Unavailable);
        assert_eq!(
            ClusterError::CommitTimeout { ms: 1 }.code(),
            Code::DeadlineExceeded
        );
        let s: Status = ClusterError::Invalid {
            field: "rcpt_to",
            reason: "empty".into(),
        }
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "invalid rcpt_to: empty");
        let s: Status = ClusterError::Busy {
            what: "message bytes in Enqueue calls (node.ingest_memory)",
            limit: 80_000_000,
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("node.ingest_memory"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn a_feature_of_a_newer_format_waits_for_the_upgrade() {
        assert!(ClusterError::require_format(5, 5, "x").is_ok());
        let e = ClusterError::require_format(4, 5, "pools chosen by header").unwrap_err();
        let s = Status::from(e);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message()
                .contains("writes format 4; pools chosen by header need format 5")
                && s.message().contains("skeinctl finalize-upgrade"),
            "{}",
            s.message()
        );
    }
}
