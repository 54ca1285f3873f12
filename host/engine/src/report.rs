//! Execution reports and evidence packs, built from the journal.
//!
//! - [`ExecutionReport`]: per step its timeline (start, end, attempts,
//!   outcome), the measured RTO (first event to the end) against the plan's
//!   target, as JSON ([`serde`]) and as a printable HTML page ([`to_html`]).
//! - [`EvidencePack`]: the journal's entries with their hash chain, the chain
//!   check and the graph; [`EvidencePack::verify`] re-checks it offline, so an
//!   auditor can tell that nothing was edited after the fact.

use std::fmt::Write as _;

use haven_plan::ExecutionGraph;
use haven_store::{entry_hash, ChainCheck, Store, StoreError, StreamEntry, GENESIS_HASH};
use serde::{Deserialize, Serialize};

use crate::journal::{stream_name, Event};

/// One step's line in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step index.
    pub index: usize,
    /// Idempotency key.
    pub key: String,
    /// Name.
    pub name: String,
    /// `succeeded`, `failed`, `skipped`, `awaiting-approval` or `not-run`.
    pub outcome: String,
    /// Attempts made.
    pub attempts: u32,
    /// First start, ms after the execution began.
    pub started_ms: Option<u64>,
    /// End, ms after the execution began.
    pub finished_ms: Option<u64>,
    /// Last result or error.
    pub detail: String,
}

/// What an execution did and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionReport {
    /// Execution id.
    pub execution: String,
    /// Plan id.
    pub plan: String,
    /// Mode.
    pub mode: String,
    /// `succeeded`, `failed` or `running`.
    pub outcome: String,
    /// Unix ms of the first event.
    pub started_at_ms: u64,
    /// Time from the first to the last event (the measured RTO when the execution succeeded).
    pub duration_ms: u64,
    /// The plan's RTO target, ms.
    pub rto_target_ms: Option<u64>,
    /// Steps, in graph order.
    pub steps: Vec<StepReport>,
}

/// Builds the report of `execution` from its journal.
pub fn execution_report(
    store: &Store,
    execution: &str,
    graph: &ExecutionGraph,
    rto_target_ms: Option<u64>,
) -> Result<ExecutionReport, StoreError> {
    let entries = store.stream(&stream_name(execution), 0)?;
    let start = entries.first().map_or(0, |e| e.at_ms);
    let end = entries.last().map_or(0, |e| e.at_ms);
    let mut steps: Vec<StepReport> = graph
        .steps
        .iter()
        .map(|s| StepReport {
            index: s.index,
            key: s.key.clone(),
            name: s.name.clone(),
            outcome: "not-run".into(),
            attempts: 0,
            started_ms: None,
            finished_ms: None,
            detail: String::new(),
        })
        .collect();
    let mut outcome = "running".to_owned();
    for entry in &entries {
        let Ok(event) = serde_json::from_value::<Event>(entry.entry.clone()) else {
            continue;
        };
        let at = entry.at_ms - start;
        let mut update = |step: usize, f: &mut dyn FnMut(&mut StepReport)| {
            if let Some(report) = steps.get_mut(step) {
                f(report);
            }
        };
        match event {
            Event::StepStarted { step, attempt, .. } => update(step, &mut |r| {
                r.started_ms.get_or_insert(at);
                r.attempts = r.attempts.max(attempt);
                r.outcome = "running".into();
            }),
            Event::StepSucceeded { step, detail, .. } => update(step, &mut |r| {
                r.finished_ms = Some(at);
                r.outcome = "succeeded".into();
                r.detail = detail.clone();
            }),
            Event::StepFailed {
                step,
                error,
                is_final,
                ..
            } => update(step, &mut |r| {
                r.detail = error.clone();
                if is_final {
                    r.finished_ms = Some(at);
                    r.outcome = "failed".into();
                }
            }),
            Event::StepSkipped { step, reason } => update(step, &mut |r| {
                r.outcome = "skipped".into();
                r.detail = reason.clone();
            }),
            Event::ApprovalRequested { step, .. } => update(step, &mut |r| {
                r.started_ms.get_or_insert(at);
                r.outcome = "awaiting-approval".into();
            }),
            Event::ApprovalGranted { step, by } => update(step, &mut |r| {
                r.finished_ms = Some(at);
                r.outcome = "succeeded".into();
                r.detail = format!("approved by {by}");
            }),
            Event::ExecutionFinished { outcome: o } => outcome = o,
            Event::ExecutionStarted { .. } | Event::ExecutionResumed => {}
        }
    }
    Ok(ExecutionReport {
        execution: execution.into(),
        plan: graph.plan.to_string(),
        mode: graph.mode.as_str().into(),
        outcome,
        started_at_ms: start,
        duration_ms: end - start,
        rto_target_ms,
        steps,
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn clock(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The report as a self-contained HTML page, laid out for printing.
pub fn to_html(report: &ExecutionReport) -> String {
    let rto = match report.rto_target_ms {
        Some(target) if report.outcome == "succeeded" => format!(
            "{} against a target of {} — {}",
            clock(report.duration_ms),
            clock(target),
            if report.duration_ms <= target {
                "met"
            } else {
                "missed"
            }
        ),
        Some(target) => format!("not reached (target {})", clock(target)),
        None => format!("{} (no target set)", clock(report.duration_ms)),
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Haven execution {id}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}\
         td,th{{border:1px solid #bbb;padding:4px 6px;text-align:left;vertical-align:top}}\
         .succeeded{{color:#176317}}.failed{{color:#a11}}.skipped,.not-run{{color:#777}}\
         @media print{{body{{margin:0}}}}</style></head><body>\
         <h1>Execution {id}</h1><p>Plan <b>{plan}</b>, mode <b>{mode}</b>: <b class=\"{outcome}\">{outcome}</b></p>\
         <p>Measured RTO: {rto}</p><table><tr><th>#</th><th>Step</th><th>Outcome</th><th>Attempts</th>\
         <th>Start</th><th>End</th><th>Detail</th></tr>",
        id = escape(&report.execution),
        plan = escape(&report.plan),
        mode = escape(&report.mode),
        outcome = escape(&report.outcome),
        rto = escape(&rto),
    );
    for s in &report.steps {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}<br><small>{}</small></td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.index,
            escape(&s.name),
            escape(&s.key),
            s.attempts,
            s.started_ms.map(clock).unwrap_or_default(),
            s.finished_ms.map(clock).unwrap_or_default(),
            escape(&s.detail),
            o = escape(&s.outcome),
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

/// A tamper-evident record of an execution: the journal with its hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePack {
    /// Execution id.
    pub execution: String,
    /// The executed graph.
    pub graph: serde_json::Value,
    /// Every journal entry, with `prev_hash` and `hash`.
    pub journal: Vec<StreamEntry>,
    /// Hash of the last entry: quote it to pin the record.
    pub head: String,
}

/// Why an evidence pack does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evidence pack does not verify at entry {seq}: {reason}")]
pub struct EvidenceError {
    /// First entry that does not verify.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

impl EvidencePack {
    /// Collects the evidence of `execution`; fails if the stored chain is already broken.
    pub fn collect(
        store: &Store,
        execution: &str,
        graph: &ExecutionGraph,
    ) -> Result<Self, StoreError> {
        let stream = stream_name(execution);
        let head = match store.verify_stream(&stream)? {
            ChainCheck::Intact { head, .. } => head,
            ChainCheck::Broken { seq, reason } => {
                return Err(StoreError::Decode {
                    collection: "streams".into(),
                    key: stream,
                    message: format!("hash chain broken at entry {seq}: {reason}"),
                })
            }
        };
        Ok(Self {
            execution: execution.into(),
            graph: serde_json::to_value(graph).expect("graphs serialize"),
            journal: store.stream(&stream, 0)?,
            head,
        })
    }

    /// Re-checks the chain and the head, offline.
    pub fn verify(&self) -> Result<(), EvidenceError> {
        let mut prev = GENESIS_HASH.to_owned();
        for (i, entry) in self.journal.iter().enumerate() {
            let fail = |reason: &str| EvidenceError {
                seq: entry.seq,
                reason: reason.into(),
            };
            if entry.seq != i as u64 + 1 {
                return Err(fail("sequence gap"));
            }
            if entry.prev_hash != prev {
                return Err(fail("does not link to the previous entry"));
            }
            let json = serde_json::to_string(&entry.entry).expect("JSON serializes");
            let hash = entry_hash(&entry.prev_hash, entry.seq, entry.at_ms, &json);
            if hash != entry.hash {
                return Err(fail("content does not match its hash"));
            }
            prev = hash;
        }
        if prev != self.head {
            return Err(EvidenceError {
                seq: self.journal.len() as u64,
                reason: "the head does not match the last entry".into(),
            });
        }
        Ok(())
    }
}
