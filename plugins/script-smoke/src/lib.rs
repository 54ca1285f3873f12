//! An example Haven script, built with `haven-plugin-sdk`: a smoke test of an
//! application after its VMs are recovered.
//!
//! `args[0]` is a URL; `args[1]`, if given, is text the body must contain. The
//! script GETs the URL through the host's allowlisted HTTP and answers one
//! line (`GET <url>: 200 in 12 ms (test run)`). It fails with a typed error:
//! - `invalid-input` (`args.0`) for a missing or malformed URL;
//! - `transient` when the service is not up yet (connection refused, 5xx,
//!   429, timeouts): the step's retries apply;
//! - `failed` for any other status, a body without the expected text, or a
//!   host the administrator did not grant.

use std::time::{Duration, Instant};

use haven_plugin_sdk::script::ScriptError;
use haven_plugin_sdk::script::{arg, failed, invalid_input, transient, Script, ScriptContext};
use haven_plugin_sdk::{host, http};

/// The script.
pub struct Smoke;

/// How long one probe may wait for an answer (the step's deadline still applies).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Script for Smoke {
    fn run(context: ScriptContext) -> Result<String, ScriptError> {
        let url = arg(&context, 0, "the URL to probe")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid_input(
                "args.0",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        let expected = context.args.get(1).filter(|t| !t.is_empty());
        host::info(&format!(
            "probing {url} (attempt {}, step {})",
            context.attempt, context.step
        ));
        let started = Instant::now();
        let response = http::get(&url).timeout(PROBE_TIMEOUT).send()?;
        let elapsed = started.elapsed().as_millis();
        match response.status {
            200..=399 => {}
            408 | 429 | 500..=599 => {
                return Err(transient(format!(
                    "GET {url}: {} after {elapsed} ms",
                    response.status
                )))
            }
            status => return Err(failed(format!("GET {url}: {status}"))),
        }
        if let Some(text) = expected {
            if !response.text().contains(text.as_str()) {
                return Err(failed(format!(
                    "GET {url}: {} but the body does not contain {text:?}",
                    response.status
                )));
            }
        }
        let run = if context.test { "test run" } else { "real run" };
        Ok(format!(
            "GET {url}: {} in {elapsed} ms ({run})",
            response.status
        ))
    }
}

haven_plugin_sdk::export_script!(Smoke);

#[cfg(test)]
mod tests {
    use haven_plugin_sdk::harness::{script_context, FakeServer, Reply, TestHost};
    use haven_plugin_sdk::script::{Script, ScriptError};

    use super::Smoke;

    #[test]
    fn succeeds_on_a_healthy_service_and_says_what_it_saw() {
        let server = FakeServer::start();
        server.route("GET", "/health", |_| Reply::text(200, "status: up"));
        let host = TestHost::install();
        let url = format!("{}/health", server.url());
        let line = Smoke::run(script_context(&[&url, "up"])).unwrap();
        assert!(line.starts_with(&format!("GET {url}: 200 in ")), "{line}");
        assert!(line.ends_with("(test run)"), "{line}");
        assert_eq!(server.requests().len(), 1);
        assert!(host.logs().iter().any(|(_, m)| m.contains("probing")));
    }

    #[test]
    fn errors_are_typed() {
        let server = FakeServer::start();
        server.route("GET", "/busy", |_| Reply::text(503, "starting"));
        server.route("GET", "/gone", |_| Reply::text(404, "no"));
        server.route("GET", "/up", |_| Reply::text(200, "maintenance"));
        TestHost::install();
        let run = |args: &[&str]| Smoke::run(script_context(args)).unwrap_err();
        let at = |path: &str| format!("{}{path}", server.url());
        assert!(matches!(run(&[&at("/busy")]), ScriptError::Transient(_)));
        assert!(matches!(run(&[&at("/gone")]), ScriptError::Failed(_)));
        assert!(
            matches!(run(&[&at("/up"), "status: up"]), ScriptError::Failed(m) if m.contains("does not contain"))
        );
        assert!(matches!(run(&[]), ScriptError::InvalidInput(i) if i.field == "args.0"));
        assert!(matches!(run(&["ftp://x"]), ScriptError::InvalidInput(i) if i.field == "args.0"));
        // Nothing listens on port 1: the service is not up yet.
        assert!(matches!(
            run(&["http://127.0.0.1:1/"]),
            ScriptError::Transient(_)
        ));
    }
}
