//! An HTTP(S) client for connectors, over `wasi:http` in a component.
//!
//! The host performs the request (TLS included) and lets it through only to
//! hosts that the plugin's manifest requests and the administrator granted to
//! the instance. In a native `cargo test` the same API goes through a real
//! HTTP client, so a connector is tested against a fake server unchanged.
//!
//! ```ignore
//! let vms: Vec<ApiVm> = http::get(&format!("{endpoint}/api/vms"))
//!     .bearer(&token)
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{auth, conflict, invalid_input, not_found, other, transient};
use crate::Result;

/// Responses larger than this are refused unless [`Request::max_response_bytes`] says otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: usize,
}

/// Starts a `GET`.
pub fn get(url: &str) -> Request {
    Request::new(Method::Get, url)
}

/// Starts a `POST`.
pub fn post(url: &str) -> Request {
    Request::new(Method::Post, url)
}

/// Starts a `PUT`.
pub fn put(url: &str) -> Request {
    Request::new(Method::Put, url)
}

/// Starts a `DELETE`.
pub fn delete(url: &str) -> Request {
    Request::new(Method::Delete, url)
}

impl Request {
    /// A request with no headers and no body, 30 s timeout.
    pub fn new(method: Method, url: &str) -> Self {
        Self {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A JSON body (and its content type).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.body = serde_json::to_vec(value)?;
        Ok(self.header("content-type", "application/json"))
    }

    /// An XML body, such as a SOAP envelope (and its content type).
    pub fn xml(mut self, document: &str) -> Self {
        self.body = document.as_bytes().to_vec();
        self.header("content-type", "text/xml; charset=utf-8")
    }

    /// A raw body.
    pub fn body(mut self, bytes: Vec<u8>) -> Self {
        self.body = bytes;
        self
    }

    /// Time allowed to connect and for the first byte of the response.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuse responses larger than this.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response> {
        transport::send(self)
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The body parsed as XML.
    pub fn xml<T: DeserializeOwned>(&self) -> Result<T> {
        let text = std::str::from_utf8(&self.body)
            .map_err(|e| other(format!("XML body is not UTF-8: {e}")))?;
        Ok(quick_xml::de::from_str(text)?)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Turns 4xx/5xx statuses into the contract's typed errors: 401/403 `auth`,
    /// 404 `not-found`, 409/412 `conflict`, 400/422 `invalid-input`,
    /// 408/429/5xx `transient` (with `Retry-After` seconds when given).
    pub fn error_for_status(self) -> Result<Response> {
        let status = self.status;
        if status < 400 {
            return Ok(self);
        }
        let detail = {
            let text = self.text();
            let text = text.trim();
            let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
            format!("HTTP {status}: {}", &text[..cut])
        };
        Err(match status {
            401 | 403 => auth(detail),
            404 | 410 => not_found(detail),
            409 | 412 => conflict(detail),
            400 | 422 => invalid_input("request", detail),
            408 | 429 | 500..=599 => {
                let retry = self
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                transient(detail, retry)
            }
            _ => other(detail),
        })
    }
}

/// The first value of header `name` (compared case-insensitively).
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The parts of an absolute `http`/`https` URL that `wasi:http` wants.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    pub https: bool,
    pub authority: &'a str,
    pub path_and_query: &'a str,
}

/// Splits an absolute URL; the error names it.
pub(crate) fn split_url(url: &str) -> Result<UrlParts<'_>> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid_input(
            "url",
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid_input("url", format!("{url:?} has no usable host")));
    }
    Ok(UrlParts {
        https,
        authority,
        path_and_query: if path.is_empty() { "/" } else { path },
    })
}

#[cfg(target_arch = "wasm32")]
mod transport {
    //! `wasi:http/outgoing-handler`.
    use super::{split_url, Request, Response};
    use crate::error::{other, timeout, transient};
    use crate::Result;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, RequestOptions,
        Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn error_code(url: &str, code: ErrorCode) -> crate::Error {
        match code {
            ErrorCode::HttpRequestDenied => other(format!(
                "HTTP request to {url} denied: this host is not granted to the plugin instance"
            )),
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => timeout(format!("{url}: {code:?}")),
            ErrorCode::DnsTimeout
            | ErrorCode::DnsError(_)
            | ErrorCode::ConnectionRefused
            | ErrorCode::ConnectionTerminated
            | ErrorCode::DestinationUnavailable => transient(format!("{url}: {code:?}"), None),
            other_code => other(format!("{url}: {other_code:?}")),
        }
    }

    pub(super) fn send(req: Request) -> Result<Response> {
        let parts = split_url(&req.url)?;
        let headers = Fields::new();
        // A known length spares servers a chunked body (some old APIs refuse one).
        if !req.body.is_empty()
            && !req
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            headers
                .append("content-length", req.body.len().to_string().as_bytes())
                .map_err(|e| super::invalid_input("headers", format!("content-length: {e:?}")))?;
        }
        for (name, value) in &req.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| super::invalid_input("headers", format!("{name}: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        let method = match req.method {
            super::Method::Get => WasiMethod::Get,
            super::Method::Post => WasiMethod::Post,
            super::Method::Put => WasiMethod::Put,
            super::Method::Patch => WasiMethod::Patch,
            super::Method::Delete => WasiMethod::Delete,
            super::Method::Head => WasiMethod::Head,
        };
        let bad = |what: &str| other(format!("cannot build request to {}: {what}", req.url));
        outgoing.set_method(&method).map_err(|_| bad("method"))?;
        let scheme = if parts.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|_| bad("scheme"))?;
        outgoing
            .set_authority(Some(parts.authority))
            .map_err(|_| bad("authority"))?;
        outgoing
            .set_path_with_query(Some(parts.path_and_query))
            .map_err(|_| bad("path"))?;
        let body = outgoing.body().map_err(|_| bad("body"))?;
        {
            let stream = body.write().map_err(|_| bad("body stream"))?;
            for chunk in req.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| other(format!("sending body to {}: {e:?}", req.url)))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| error_code(&req.url, e))?;

        let options = RequestOptions::new();
        let nanos = req.timeout.as_nanos().min(u64::MAX as u128) as u64;
        // Hosts may not support every timeout; ignoring a refusal keeps the default.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        let future = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|e| error_code(&req.url, e))?;
        future.subscribe().block();
        let incoming = future
            .get()
            .ok_or_else(|| other("HTTP response not ready after waiting"))?
            .map_err(|()| other("HTTP response already taken"))?
            .map_err(|e| error_code(&req.url, e))?;

        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| {
                (
                    n.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let body = incoming
            .consume()
            .map_err(|()| other("response body already taken"))?;
        let stream = body
            .stream()
            .map_err(|()| other("response body stream already taken"))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > req.max_response_bytes {
                        return Err(other(format!(
                            "response from {} is larger than {} bytes",
                            req.url, req.max_response_bytes
                        )));
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(transient(
                        format!("reading response from {}: {}", req.url, e.to_debug_string()),
                        None,
                    ))
                }
            }
        }
        drop(stream);
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    //! A native client, for the test harness.
    use std::io::Read;

    use super::{split_url, Request, Response};
    use crate::error::{other, timeout, transient};
    use crate::Result;

    pub(super) fn send(req: Request) -> Result<Response> {
        split_url(&req.url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(req.timeout))
            .build()
            .into();
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(&req.url);
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(req.body)
            .map_err(|e| super::invalid_input("url", e.to_string()))?;
        let response = agent.run(request).map_err(|e| match e {
            ureq::Error::Timeout(_) => timeout(format!("{}: {e}", req.url)),
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                transient(format!("{}: {e}", req.url), None)
            }
            _ => other(format!("{}: {e}", req.url)),
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(req.max_response_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| transient(format!("reading response from {}: {e}", req.url), None))?;
        if body.len() > req.max_response_bytes {
            return Err(other(format!(
                "response from {} is larger than {} bytes",
                req.url, req.max_response_bytes
            )));
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let p = split_url("https://vc.example:8443/sdk?x=1").unwrap();
        assert_eq!(
            p,
            UrlParts {
                https: true,
                authority: "vc.example:8443",
                path_and_query: "/sdk?x=1"
            }
        );
        assert_eq!(split_url("http://h").unwrap().path_and_query, "/");
        assert!(split_url("ftp://h/x").is_err());
        assert!(split_url("https://user@h/").is_err());
    }

    #[test]
    fn parses_json_and_xml_bodies() {
        #[derive(serde::Deserialize)]
        struct Session {
            key: String,
            #[serde(rename = "userName")]
            user: String,
        }
        let xml = Response {
            status: 200,
            headers: vec![],
            body: br#"<returnval><key>52a1</key><userName>root</userName></returnval>"#.to_vec(),
        };
        let session: Session = xml.xml().unwrap();
        assert_eq!(
            (session.key.as_str(), session.user.as_str()),
            ("52a1", "root")
        );
        let json = Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"key": "k", "userName": "u"}"#.to_vec(),
        };
        assert_eq!(json.json::<Session>().unwrap().user, "u");
        assert_eq!(json.header("content-type"), Some("application/json"));
        assert!(matches!(json.xml::<Session>(), Err(crate::Error::Other(_))));
    }

    #[test]
    fn maps_statuses_to_typed_errors() {
        let resp = |status: u16, headers: Vec<(String, String)>| Response {
            status,
            headers,
            body: b"nope".to_vec(),
        };
        assert!(matches!(
            resp(401, vec![]).error_for_status(),
            Err(crate::Error::Auth(_))
        ));
        assert!(matches!(
            resp(404, vec![]).error_for_status(),
            Err(crate::Error::NotFound(_))
        ));
        match resp(503, vec![("retry-after".into(), "7".into())]).error_for_status() {
            Err(crate::Error::Transient(t)) => assert_eq!(t.retry_after_ms, Some(7000)),
            other => panic!("{other:?}"),
        }
        assert!(resp(204, vec![]).error_for_status().is_ok());
    }
}
