//! The audit log: the stream `audit`, one entry per change requested through
//! the API (who, what, target, outcome), hash-chained like every stream.

use haven_store::Command;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::ApiState;

/// The audit stream's name.
pub const AUDIT: &str = "audit";

/// One audited change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who: the token's name and id.
    pub who: String,
    /// What: `plan.put`, `execution.start`, `token.create`, ...
    pub action: String,
    /// On what: `plans/shop`, `executions/shop-12`, `tokens/ab12`.
    pub target: String,
    /// `ok`, or the error code (`forbidden`, `invalid`, ...).
    pub outcome: String,
    /// The error message, when refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl ApiState {
    /// Appends the outcome of a change to the audit log and hands the result
    /// back. A refused change is recorded too. If the audit entry itself
    /// cannot be committed (the cluster lost its quorum just now), that is
    /// logged and the change's own result stands.
    pub(crate) async fn audit<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (outcome, detail) = match &result {
            Ok(_) => ("ok".to_owned(), String::new()),
            Err(e) => (e.code.to_owned(), e.message.clone()),
        };
        let entry = AuditEntry {
            who: caller.who(),
            action: action.into(),
            target: target.into(),
            outcome,
            detail,
        };
        let command = Command::Append {
            stream: AUDIT.into(),
            at_ms: self.now_ms(),
            entry: serde_json::to_value(&entry).expect("audit entries serialize"),
        };
        if let Err(e) = self.log().commit(vec![command]).await {
            tracing::error!(action, target, "cannot append to the audit log: {e}");
        }
        result
    }
}
