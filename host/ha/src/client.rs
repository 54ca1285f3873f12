//! The HTTP client nodes (and the `haven ha` command) use to talk to each
//! other: JSON or raw bodies, the cluster secret on every request, a deadline
//! on every call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header carrying the cluster secret.
pub const SECRET_HEADER: &str = "haven-cluster-secret";

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made: the request was never sent.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The node.
        addr: String,
        /// Why.
        message: String,
    },
    /// No answer in time; the request may or may not have been processed.
    #[error("{addr} did not answer within {ms} ms")]
    Timeout {
        /// The node.
        addr: String,
        /// The deadline.
        ms: u128,
    },
    /// The connection broke; the request may or may not have been processed.
    #[error("{addr}: {message}")]
    Transport {
        /// The node.
        addr: String,
        /// Why.
        message: String,
    },
    /// The node answered with an error status.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// The node.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The body (a JSON error).
        body: String,
    },
    /// The answer was not what was expected.
    #[error("{addr} sent an answer that cannot be read: {message}")]
    Decode {
        /// The node.
        addr: String,
        /// Why.
        message: String,
    },
}

/// A pooled HTTP/1 client that presents the cluster secret.
#[derive(Clone)]
pub struct ClusterClient {
    http: Client<HttpConnector, Full<Bytes>>,
    secret: Arc<str>,
}

impl ClusterClient {
    /// A client presenting `secret`.
    pub fn new(secret: &str) -> Self {
        Self::with_source(secret, None)
    }

    /// A client presenting `secret` whose connections leave from `source`
    /// (a node's own IP, so that firewalls and test proxies can tell nodes apart).
    pub fn with_source(secret: &str, source: Option<std::net::IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(source.filter(|ip| !ip.is_unspecified()));
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            http,
            secret: secret.into(),
        }
    }

    /// Sends `body` to `http://{addr}{path}` and returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(SECRET_HEADER, &*self.secret)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Transport {
                addr: addr.into(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect {
                        addr: addr.into(),
                        message: e.to_string(),
                    }
                } else {
                    ClientError::Transport {
                        addr: addr.into(),
                        message: e.to_string(),
                    }
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    addr: addr.into(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.into(),
                ms: timeout.as_millis(),
            })?
    }

    /// POSTs JSON and decodes a JSON answer; a non-2xx status is an error.
    pub async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            addr: addr.into(),
            message: e.to_string(),
        })?;
        let (status, bytes) = self.call(Method::POST, addr, path, body, timeout).await?;
        decode(addr, status, &bytes)
    }

    /// GETs JSON; a non-2xx status is an error.
    pub async fn get_json<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let (status, bytes) = self
            .call(Method::GET, addr, path, Vec::new(), timeout)
            .await?;
        decode(addr, status, &bytes)
    }
}

fn decode<Resp: DeserializeOwned>(
    addr: &str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<Resp, ClientError> {
    if !status.is_success() {
        return Err(ClientError::Status {
            addr: addr.into(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(bytes).into_owned(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
        addr: addr.into(),
        message: e.to_string(),
    })
}
