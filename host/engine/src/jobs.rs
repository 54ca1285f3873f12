//! Waiting for a connector's long operations.

use std::time::Duration;

use haven_connector::{Connector, ConnectorError, JobStatus, Started};
use tokio::time::Instant;

/// First pause between two polls; doubled up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(20);
/// Longest pause between two polls.
const MAX_POLL: Duration = Duration::from_millis(500);

/// Waits until `started` ends, polling the connector; returns what the job
/// produced (a created VM's id, a snapshot id). The job's own failure is
/// returned as is; a job still running at `timeout` is a
/// [`ConnectorError::Timeout`] (retryable: the job may still finish, and the
/// next attempt looks at the object's state first).
pub async fn wait(
    connector: &dyn Connector,
    started: Started,
    timeout: Duration,
) -> Result<Option<String>, ConnectorError> {
    let job = match started {
        Started::Done => return Ok(None),
        Started::Job(job) => job,
    };
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        match connector.poll_job(&job).await {
            Ok(JobStatus::Succeeded(result)) => return Ok(result),
            Ok(JobStatus::Failed(e)) => return Err(e),
            Ok(JobStatus::Running(_)) => {}
            // A passing failure of the poll itself: poll again.
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e),
        }
        if Instant::now() + pause > deadline {
            return Err(ConnectorError::Timeout(format!(
                "{}: job {job} still running after {timeout:?}",
                connector.name()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}
