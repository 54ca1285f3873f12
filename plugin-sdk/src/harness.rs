//! Run a connector natively in `cargo test`: in-memory host services and a
//! fake HTTP server on loopback.
//!
//! ```ignore
//! use haven_plugin_sdk::harness::{FakeServer, TestHost, Reply};
//!
//! #[test]
//! fn lists_vms() {
//!     let server = FakeServer::start();
//!     server.route("GET", "/api/vms", |_| Reply::json(200, &serde_json::json!([])));
//!     let host = TestHost::install().secret("password", "s3cret");
//!     MyConnector::configure(settings(&[("endpoint", &server.url())])).unwrap();
//!     assert!(MyConnector::list_vms().unwrap().is_empty());
//!     assert_eq!(server.requests().len(), 1);
//!     assert!(host.logs().is_empty());
//! }
//! ```
//!
//! Host state is per thread, and `cargo test` runs each test on its own
//! thread, so tests do not see each other's secrets or kv.
//!
//! A script is tested the same way: call its `Script::run` with a context
//! from [`script_context`].

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::host::Level;
use crate::types::Setting;

/// Builds the settings list `configure` receives.
pub fn settings(pairs: &[(&str, &str)]) -> Vec<Setting> {
    pairs
        .iter()
        .map(|(k, v)| Setting {
            key: (*k).to_owned(),
            value: (*v).to_owned(),
        })
        .collect()
}

#[derive(Default)]
struct HostState {
    secrets: HashMap<String, String>,
    kv: BTreeMap<String, Vec<u8>>,
    logs: Vec<(Level, String)>,
    progress: Vec<(u64, u64, String)>,
}

thread_local! {
    static STATE: RefCell<Rc<RefCell<HostState>>> = RefCell::new(Rc::new(RefCell::new(HostState::default())));
}

fn with_state<R>(f: impl FnOnce(&mut HostState) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow().borrow_mut()))
}

/// The in-memory host for this thread: what the connector logged, reported
/// and stored, and which secrets it may read.
pub struct TestHost {
    state: Rc<RefCell<HostState>>,
}

impl TestHost {
    /// Installs a fresh host for the current thread (forgetting any earlier one).
    pub fn install() -> Self {
        let state = Rc::new(RefCell::new(HostState::default()));
        STATE.with(|s| *s.borrow_mut() = state.clone());
        Self { state }
    }

    /// Binds a secret for the connector.
    pub fn secret(self, name: &str, value: &str) -> Self {
        self.state
            .borrow_mut()
            .secrets
            .insert(name.to_owned(), value.to_owned());
        self
    }

    /// Log records so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    /// Progress reports so far: (completed, total, message).
    pub fn progress(&self) -> Vec<(u64, u64, String)> {
        self.state.borrow().progress.clone()
    }

    /// The key-value store's content.
    pub fn kv(&self) -> BTreeMap<String, Vec<u8>> {
        self.state.borrow().kv.clone()
    }
}

/// Native stand-ins for the `haven:host` imports, same signatures.
pub(crate) mod imports {
    pub mod log {
        pub use crate::host::Level;
        pub fn log(level: Level, message: &str) {
            super::super::with_state(|s| s.logs.push((level, message.to_owned())));
        }
    }
    pub mod progress {
        pub fn report(completed: u64, total: u64, message: &str) {
            super::super::with_state(|s| s.progress.push((completed, total, message.to_owned())));
        }
    }
    pub mod secrets {
        pub use crate::bindings::base::haven::host::secrets::SecretError;
        pub fn get(name: &str) -> Result<String, SecretError> {
            super::super::with_state(|s| s.secrets.get(name).cloned())
                .ok_or_else(|| SecretError::Unbound(name.to_owned()))
        }
    }
    pub mod kv {
        use crate::host::KvError;
        pub fn get(key: &str) -> Option<Vec<u8>> {
            super::super::with_state(|s| s.kv.get(key).cloned())
        }
        pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
            super::super::with_state(|s| s.kv.insert(key.to_owned(), value.to_vec()));
            Ok(())
        }
        pub fn delete(key: &str) -> Result<(), KvError> {
            super::super::with_state(|s| s.kv.remove(key));
            Ok(())
        }
        pub fn list_keys(prefix: &str) -> Vec<String> {
            super::super::with_state(|s| {
                s.kv.keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            })
        }
    }
}

/// A request the fake server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http::find_header(&self.headers, name)
    }
}

/// What a route answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }

    /// A plain-text (or XML) reply.
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Handler = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1 with scripted routes; unknown routes get 404.
/// It records every request. It stops when dropped (with the test process).
pub struct FakeServer {
    addr: std::net::SocketAddr,
    routes: Arc<Mutex<Vec<(String, String, Handler)>>>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl FakeServer {
    /// Starts the server on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let routes: Arc<Mutex<Vec<(String, String, Handler)>>> = Arc::default();
        let requests: Arc<Mutex<Vec<RecordedRequest>>> = Arc::default();
        let (r, q) = (routes.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, q) = (r.clone(), q.clone());
                std::thread::spawn(move || serve(stream, &r, &q));
            }
        });
        Self {
            addr,
            routes,
            requests,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `method` on `path` (exact, without the query) with `handler`.
    /// Later routes take precedence, so a test can change an answer midway.
    pub fn route(
        &self,
        method: &str,
        path: &str,
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) {
        self.routes
            .lock()
            .unwrap()
            .push((method.to_owned(), path.to_owned(), Arc::new(handler)));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    routes: &Mutex<Vec<(String, String, Handler)>>,
    requests: &Mutex<Vec<RecordedRequest>>,
) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        requests.lock().unwrap().push(request.clone());
        let path = request.path.split('?').next().unwrap_or("");
        let handler = routes
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(m, p, _)| *m == request.method && p == path)
            .map(|(_, _, h)| h.clone());
        let reply = match handler {
            Some(h) => h(&request),
            None => Reply::text(404, "no such route in the fake server"),
        };
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&reply.body).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RecordedRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok().filter(|n| *n > 0)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(RecordedRequest {
        method,
        path,
        headers,
        body,
    })
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A context as a test run of a plan-level step gives a script: mode `test`,
/// attempt 1, no group, VM or recovery point, with `args`. Change fields to
/// test other cases.
pub fn script_context(args: &[&str]) -> crate::script::ScriptContext {
    use crate::script::{Direction, Mode, ScriptContext};
    ScriptContext {
        execution: "test-execution".into(),
        plan: "test-plan".into(),
        mode: Mode::Test,
        direction: Direction::ToRecovery,
        test: true,
        step: "test-step".into(),
        group: None,
        vm: None,
        recovered_vm: None,
        recovery_point: None,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        attempt: 1,
        fence: 1,
    }
}
