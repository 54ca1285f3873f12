//! Typed events (progress, gateway changes, commits, RPO) for logs and the API.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Something a replication or the target service reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Progress of a pass.
    Progress {
        /// Replica.
        replica: String,
        /// Source bytes processed.
        done_bytes: u64,
        /// Source bytes to process in this session.
        total_bytes: u64,
        /// Bytes written to the network so far.
        wire_bytes: u64,
        /// Source bytes per second.
        rate: f64,
        /// Estimated time left.
        eta: Option<Duration>,
    },
    /// A gateway was chosen for (the rest of) a pass.
    GatewaySelected {
        /// Gateway address.
        gateway: String,
        /// Its active sessions when probed (None if it did not answer the probe).
        load: Option<u32>,
    },
    /// A gateway failed during a pass; the pass continues on the next one.
    GatewayFailed {
        /// Gateway address.
        gateway: String,
        /// Error.
        error: String,
    },
    /// A pass committed a recovery point.
    Committed {
        /// Replica.
        replica: String,
        /// Point id.
        point: u64,
    },
    /// A replica's last good point is older than the RPO threshold.
    RpoExceeded {
        /// Replica.
        replica: String,
        /// Age of the last good point (None: no point yet).
        age: Option<Duration>,
        /// Threshold.
        threshold: Duration,
    },
    /// A replica is back within its RPO threshold.
    RpoRestored {
        /// Replica.
        replica: String,
        /// Age of the last good point.
        age: Duration,
    },
}

type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where events go: always `tracing`, plus an optional callback.
#[derive(Clone, Default)]
pub struct EventSink {
    callback: Option<Callback>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    /// A sink that calls `f` for each event.
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> EventSink {
        EventSink {
            callback: Some(Arc::new(f)),
        }
    }

    /// A sink feeding an unbounded channel (for the web API).
    pub fn channel() -> (EventSink, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            EventSink::new(move |e| {
                let _ = tx.send(e.clone());
            }),
            rx,
        )
    }

    /// Logs the event and hands it to the callback.
    pub fn emit(&self, e: Event) {
        match &e {
            Event::Progress {
                replica,
                done_bytes,
                total_bytes,
                wire_bytes,
                rate,
                eta,
            } => tracing::info!(
                replica,
                done_mb = done_bytes >> 20,
                total_mb = total_bytes >> 20,
                wire_mb = wire_bytes >> 20,
                rate_mb_s = format!("{:.1}", rate / 1e6),
                eta_s = eta.map(|d| d.as_secs()),
                "progress"
            ),
            Event::GatewaySelected { gateway, load } => {
                tracing::info!(gateway, ?load, "gateway selected")
            }
            Event::GatewayFailed { gateway, error } => {
                tracing::warn!(gateway, error, "gateway failed; continuing on the next")
            }
            Event::Committed { replica, point } => {
                tracing::info!(replica, point, "recovery point committed")
            }
            Event::RpoExceeded {
                replica,
                age,
                threshold,
            } => tracing::warn!(
                replica,
                age_s = age.map(|a| a.as_secs()),
                threshold_s = threshold.as_secs(),
                "RPO exceeded"
            ),
            Event::RpoRestored { replica, age } => {
                tracing::info!(replica, age_s = age.as_secs(), "RPO restored")
            }
        }
        if let Some(cb) = &self.callback {
            cb(&e);
        }
    }
}
