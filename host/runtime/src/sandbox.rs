//! The sandbox one plugin instance runs in: what its store holds and what its
//! imports can reach.
//!
//! - WASI 0.2 with one preopened directory, `/data`, the instance's own; no
//!   environment, no arguments, no stdin; stdout/stderr go to the log (the
//!   tail is kept so that a panic message reaches the caller).
//! - Sockets: TCP, UDP and name lookup are off and every address is denied.
//! - `wasi:http`: allowed only to hosts the manifest requests AND the
//!   administrator granted; timeouts are clamped to the call's deadline.
//! - Memory: a limiter caps linear memory; hitting it is recorded so that the
//!   resulting trap is reported as out-of-memory.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::PluginEngine;
use crate::error::{Result, RuntimeError};
use crate::instances::ResolvedInstance;
use crate::kv::KvStore;
use crate::PluginEvent;

/// How much of the guest's stdout/stderr is kept for error messages.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Receives progress and log events of every instance.
pub type EventSink = Arc<dyn Fn(PluginEvent) + Send + Sync>;

/// The data of one instance's wasmtime `Store`.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    policy: HttpPolicy,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) instance: Arc<ResolvedInstance>,
    pub(crate) kv: Arc<Mutex<KvStore>>,
    pub(crate) output: Arc<Mutex<VecDeque<u8>>>,
    pub(crate) events: Option<EventSink>,
    /// The function being called, for log and progress events.
    pub(crate) function: String,
}

impl HostState {
    /// A fresh state for `instance`, with `data_dir` as its `/data`.
    pub fn new(
        instance: Arc<ResolvedInstance>,
        data_dir: &Path,
        kv: Arc<Mutex<KvStore>>,
        events: Option<EventSink>,
    ) -> Result<Self> {
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let sink = |stream: &'static str| {
            wasmtime_wasi::cli::AsyncStdoutStream::new(
                64 * 1024,
                OutputSink {
                    instance: instance.name.clone(),
                    stream,
                    tail: output.clone(),
                },
            )
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(sink("stdout"))
            .stderr(sink("stderr"))
            .preopened_dir(data_dir, "/data", wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| RuntimeError::io(data_dir, std::io::Error::other(format!("{e:#}"))))?
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Ok(Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            policy: HttpPolicy {
                instance: instance.clone(),
                deadline: Instant::now(),
                fence: None,
            },
            limiter: MemoryLimiter {
                cap_bytes: (instance.limits.memory_mib as usize) << 20,
                hit: false,
            },
            instance,
            kv,
            output,
            events,
            function: String::new(),
        })
    }

    /// The memory limiter, for `Store::limiter`.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Marks the start of a call: its name and its deadline.
    pub(crate) fn begin_call(&mut self, function: &str, deadline: Instant) {
        self.function.clear();
        self.function.push_str(function);
        self.policy.deadline = deadline;
        // A call made inside `haven_connector::fence::scope` (a step attempt
        // of the primary) stamps every request it sends with the token.
        self.policy.fence = haven_connector::fence::current();
        self.limiter.hit = false;
    }

    /// The last bytes the guest wrote to stdout/stderr, as text.
    pub(crate) fn output_tail(&self) -> String {
        let tail = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.policy,
        }
    }
}

/// The outgoing-HTTP policy of an instance.
struct HttpPolicy {
    instance: Arc<ResolvedInstance>,
    deadline: Instant,
    /// The fencing token of the current call, sent as `haven-fence`.
    fence: Option<u64>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if let Some(token) = self.fence {
            // Set by the host, never by the guest: a plugin cannot forge or
            // drop the token of the call it serves.
            request.headers_mut().insert(
                haven_connector::fence::HEADER,
                http::HeaderValue::from(token),
            );
        }
        let uri = request.uri();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.instance.http_allowed(&host, port) {
            tracing::warn!(instance = %self.instance.name, %host, port, "outgoing HTTP denied: host not requested by the manifest and granted to the instance");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        // No I/O may outlive the call's deadline.
        let remaining = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let clamp = |t: Option<Duration>| Some(t.map_or(remaining, |t| t.min(remaining)));
        let mut options = options.unwrap_or_default();
        options.connect_timeout = clamp(options.connect_timeout);
        options.first_byte_timeout = clamp(options.first_byte_timeout);
        options.between_bytes_timeout = clamp(options.between_bytes_timeout);
        if let (true, Some(config)) = (https, self.instance.tls.clone()) {
            return Box::new(crate::tls::send(request, options, config));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Caps linear memory and remembers whether the cap was hit.
pub(crate) struct MemoryLimiter {
    cap_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Forwards guest output to the log and keeps its tail.
struct OutputSink {
    instance: String,
    stream: &'static str,
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl tokio::io::AsyncWrite for OutputSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(instance = %self.instance, stream = self.stream, "{line}");
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend(buf.iter().rev().take(OUTPUT_TAIL_BYTES).rev());
        let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
        tail.drain(..excess);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The linker every instance is linked with: WASI 0.2, `wasi:http` and `haven:host`.
pub fn linker(engine: &PluginEngine) -> Result<Linker<HostState>> {
    let wasm = |e: wasmtime::Error| RuntimeError::Wasm {
        plugin: "(linker)".into(),
        message: format!("{e:#}"),
    };
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm)?;
    crate::host_api::add_to_linker(&mut linker).map_err(wasm)?;
    Ok(linker)
}

/// Checks that every import of `component` is one the host provides.
pub fn check_imports(engine: &PluginEngine, plugin: &str, component: &Component) -> Result<()> {
    linker(engine)?
        .instantiate_pre(component)
        .map(|_| ())
        .map_err(|e| RuntimeError::InvalidComponent {
            plugin: plugin.into(),
            message: format!("imports something Haven does not provide: {e:#}"),
        })
}
