//! Notification channels (`<home>/notify.toml`) and sending to them.
//!
//! ```toml
//! [channels.ops-chat]
//! webhook = "https://chat.example.com/hooks/abc"   # POST of a JSON document
//! timeout = "10s"                                  # optional, default 10s
//!
//! [channels.audit]
//! file = "/var/log/haven/notifications.jsonl"      # one JSON line appended per message
//! ```
//!
//! The JSON document is `{channel, message, plan, execution, mode, step,
//! at_ms}`. A webhook answering 5xx (or not answering) is a retryable
//! failure; 4xx is permanent.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_plan::HumanDuration;
use serde::{Deserialize, Serialize};

use crate::runner::StepFailure;

/// The file name under the Haven home.
pub const FILE: &str = "notify.toml";

/// Default webhook timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `notify.toml` cannot be used. The message names the file and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct NotifyConfigError {
    /// The file.
    pub file: String,
    /// Dotted field (`channels.ops-chat.webhook`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    channels: BTreeMap<String, ChannelForm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelForm {
    webhook: Option<String>,
    file: Option<PathBuf>,
    timeout: Option<HumanDuration>,
}

/// Where a channel's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// HTTP(S) POST of the JSON document.
    Webhook {
        /// URL.
        url: String,
        /// Request timeout.
        timeout: Duration,
    },
    /// One JSON line appended to a file.
    File(PathBuf),
}

/// What is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Channel name.
    pub channel: String,
    /// Message text.
    pub message: String,
    /// Plan id.
    pub plan: String,
    /// Execution id.
    pub execution: String,
    /// Mode.
    pub mode: String,
    /// Step key.
    pub step: String,
    /// When, Unix milliseconds.
    pub at_ms: u64,
}

/// The configured channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notifier {
    channels: BTreeMap<String, Channel>,
}

impl Notifier {
    /// Reads `path`; an absent file means no channels.
    pub fn load(path: &Path) -> Result<Self, NotifyConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(NotifyConfigError {
                file: path.display().to_string(),
                field: "-".into(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses the text of a `notify.toml` (`file` names it in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, NotifyConfigError> {
        let err = |field: String, message: String| NotifyConfigError {
            file: file.to_owned(),
            field,
            message,
        };
        let form: FileForm = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .and_then(|s| field_at(text, s.start))
                .unwrap_or_else(|| "channels".into());
            err(field, e.message().trim().to_owned())
        })?;
        let mut channels = BTreeMap::new();
        for (name, c) in form.channels {
            let field = |f: &str| format!("channels.{name}.{f}");
            let channel = match (c.webhook, c.file) {
                (Some(url), None) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(err(
                            field("webhook"),
                            format!("{url:?} must start with http:// or https://"),
                        ));
                    }
                    Channel::Webhook {
                        url,
                        timeout: c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.to_std()),
                    }
                }
                (None, Some(path)) => {
                    if c.timeout.is_some() {
                        return Err(err(field("timeout"), "only webhooks take a timeout".into()));
                    }
                    if !path.is_absolute() {
                        return Err(err(
                            field("file"),
                            format!("{} is not an absolute path", path.display()),
                        ));
                    }
                    Channel::File(path)
                }
                (Some(_), Some(_)) => {
                    return Err(err(
                        format!("channels.{name}"),
                        "give either `webhook` or `file`, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(err(
                        format!("channels.{name}"),
                        "give `webhook = \"https://...\"` or `file = \"/path\"`".into(),
                    ))
                }
            };
            channels.insert(name, channel);
        }
        Ok(Self { channels })
    }

    /// Whether `name` is configured.
    pub fn has(&self, name: &str) -> bool {
        self.channels.contains_key(name)
    }

    /// Sends `n` to its channel.
    pub async fn send(&self, n: &Notification) -> Result<String, StepFailure> {
        let channel = self.channels.get(&n.channel).cloned().ok_or_else(|| {
            StepFailure::permanent(format!(
                "notification channel {:?} is not configured (add [channels.{}] to {FILE})",
                n.channel, n.channel
            ))
        })?;
        let body = serde_json::to_string(n).expect("notifications serialize");
        tokio::task::spawn_blocking(move || deliver(&channel, &body))
            .await
            .map_err(|e| StepFailure::retryable(format!("notification task failed: {e}")))?
    }
}

fn deliver(channel: &Channel, body: &str) -> Result<String, StepFailure> {
    match channel {
        Channel::File(path) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| StepFailure::retryable(format!("{}: {e}", path.display())))?;
            file.write_all(format!("{body}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| StepFailure::retryable(format!("{}: {e}", path.display())))?;
            Ok(format!("appended to {}", path.display()))
        }
        Channel::Webhook { url, timeout } => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(*timeout))
                .http_status_as_error(false)
                .build()
                .into();
            let response = agent
                .post(url)
                .header("content-type", "application/json")
                .send(body)
                .map_err(|e| StepFailure::retryable(format!("webhook {url}: {e}")))?;
            let status = response.status().as_u16();
            match status {
                200..=299 => Ok(format!("webhook answered {status}")),
                500..=599 | 429 => Err(StepFailure::retryable(format!(
                    "webhook {url} answered {status}"
                ))),
                _ => Err(StepFailure::permanent(format!(
                    "webhook {url} answered {status}"
                ))),
            }
        }
    }
}

/// The dotted path of the table key at byte `offset` of a TOML text, for
/// errors (`channels.ops.webhok`).
fn field_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let table = before
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']').map(str::trim))?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?.trim();
    let key = line.split('=').next()?.trim();
    Some(if key.is_empty() || line.starts_with('[') {
        table.to_owned()
    } else {
        format!("{table}.{key}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_strictly() {
        let n = Notifier::parse(
            "notify.toml",
            "[channels.ops]\nwebhook = \"http://127.0.0.1:9/x\"\ntimeout = \"2s\"\n\
             [channels.audit]\nfile = \"/tmp/n.jsonl\"\n",
        )
        .unwrap();
        assert!(n.has("ops") && n.has("audit") && !n.has("other"));
        let cases = [
            (
                "[channels.ops]\nwebhok = \"http://x\"\n",
                "channels.ops.webhok",
            ),
            (
                "[channels.ops]\nwebhook = \"ftp://x\"\n",
                "channels.ops.webhook",
            ),
            ("[channels.ops]\nfile = \"rel.log\"\n", "channels.ops.file"),
            ("[channels.ops]\n", "channels.ops"),
            (
                "[channels.ops]\nfile = \"/a\"\nwebhook = \"http://x\"\n",
                "channels.ops",
            ),
            (
                "[channels.ops]\nwebhook = \"http://x\"\ntimeout = \"soon\"\n",
                "channels.ops.timeout",
            ),
        ];
        for (text, field) in cases {
            let e = Notifier::parse("notify.toml", text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[tokio::test]
    async fn a_file_channel_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.jsonl");
        let n = Notifier::parse(
            "notify.toml",
            &format!(
                "[channels.audit]\nfile = {:?}\n",
                path.display().to_string()
            ),
        )
        .unwrap();
        let msg = Notification {
            channel: "audit".into(),
            message: "drill started".into(),
            plan: "p".into(),
            execution: "e1".into(),
            mode: "test".into(),
            step: "k".into(),
            at_ms: 1,
        };
        n.send(&msg).await.unwrap();
        n.send(&msg).await.unwrap();
        let lines: Vec<Notification> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, [msg.clone(), msg.clone()]);
        let missing = Notification {
            channel: "nope".into(),
            ..msg
        };
        assert!(!n.send(&missing).await.unwrap_err().retryable);
    }

    #[tokio::test]
    async fn a_webhook_receives_the_json_and_its_status_decides_retries() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            for status in ["204 No Content", "503 Busy", "400 Bad"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head and the body (content-length bytes).
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            tx.send(text).unwrap();
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let n = Notifier::parse(
            "notify.toml",
            &format!("[channels.ops]\nwebhook = {url:?}\ntimeout = \"2s\"\n"),
        )
        .unwrap();
        let msg = Notification {
            channel: "ops".into(),
            message: "failover done".into(),
            plan: "shop".into(),
            execution: "e7".into(),
            mode: "failover".into(),
            step: "k".into(),
            at_ms: 5,
        };
        n.send(&msg).await.unwrap();
        let request = rx.recv().await.unwrap();
        assert!(request.starts_with("POST /hook "), "{request}");
        let body = request.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(serde_json::from_str::<Notification>(body).unwrap(), msg);
        assert!(
            n.send(&msg).await.unwrap_err().retryable,
            "5xx is worth retrying"
        );
        assert!(!n.send(&msg).await.unwrap_err().retryable, "4xx is not");
    }
}
