//! HTTPS with an instance's own certificate authorities.
//!
//! Vendor systems in data centres (vCenter, ONTAP, Hyper-V hosts) often present
//! certificates from a private CA, or self-signed ones. An instance with
//! `tls_ca = "/path/ca.pem"` trusts those certificates in addition to the
//! public roots; its HTTPS requests go through [`send`] instead of
//! wasmtime-wasi-http's default sender (which trusts only public roots).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// A TLS client configuration trusting the public roots and the PEM
/// certificates in `ca_file`; the error says what is wrong with the file.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem =
        std::fs::read(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut added = 0;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable certificate: {e}", ca_file.display()))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!(
            "{}: contains no PEM certificate",
            ca_file.display()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends an HTTPS request over a connection verified with `config`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
    config: Arc<rustls::ClientConfig>,
) -> Result<Sent, Error> {
    let unlimited = Duration::from_secs(600);
    let connect_timeout = options.connect_timeout.unwrap_or(unlimited);
    let first_byte_timeout = options.first_byte_timeout.unwrap_or(unlimited);
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    let name = ServerName::try_from(host).map_err(|_| Error::HttpRequestUriInvalid)?;
    let tls = tokio::time::timeout(
        connect_timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Tls)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(Error::from)?;
    // The connection is driven in the background while the response streams.
    let driver = tokio::spawn(connection);
    // Only the path goes on the wire when not talking to a proxy.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    let finished = async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(finished)))
}
