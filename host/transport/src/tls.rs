//! TLS (rustls with the ring provider): server configs from PEM files or a
//! self-signed certificate, client configs that verify by CA or by a pinned
//! certificate, and the connect helper with byte counting.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Result, TransportError};

/// File names written by [`self_signed`].
pub const SELF_SIGNED_CERT: &str = "target-cert.pem";
/// Key file written by [`self_signed`].
pub const SELF_SIGNED_KEY: &str = "target-key.pem";
/// Name clients use when they pin a certificate and dial an IP address.
pub const DEFAULT_SERVER_NAME: &str = "haven-target";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cfg_err(what: impl std::fmt::Display) -> TransportError {
    TransportError::TlsConfig(what.to_string())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| cfg_err(format!("{}: {e}", path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| cfg_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(cfg_err(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

/// Server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| cfg_err(format!("{}: {e}", key.display())))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(cfg_err)?;
    Ok(Arc::new(cfg))
}

/// Creates (once) a self-signed certificate and key in `dir` for the given names
/// (plus `haven-target`, `localhost`, 127.0.0.1 and ::1); returns their paths.
/// Clients pin the certificate file.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let mut all: Vec<String> = vec![
        DEFAULT_SERVER_NAME.into(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    all.extend(names.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(all).map_err(cfg_err)?;
    std::fs::create_dir_all(dir).map_err(|e| TransportError::io("creating cert dir", e))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| TransportError::io("writing cert", e))?;
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TransportError::io("writing key", e))?;
    f.write_all(data)
        .map_err(|e| TransportError::io("writing key", e))
}

/// How the source authenticates the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Verify the chain against the CA certificates in this PEM file (and the name).
    Ca(PathBuf),
    /// Accept exactly the certificate in this PEM file (e.g. the target's self-signed one).
    Pinned(PathBuf),
}

#[derive(Debug)]
struct PinnedVerifier {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the target's certificate does not match the pinned certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client config for a trust mode.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?;
    let cfg = match trust {
        Trust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c).map_err(cfg_err)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(path) => {
            let pinned = load_certs(path)?.remove(0);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pinned,
                    provider: p,
                }))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// Byte counters shared by a connection and its owner.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the socket (TLS records included).
    pub read: AtomicU64,
    /// Bytes written to the socket (TLS records included).
    pub written: AtomicU64,
}

/// A TCP stream that counts the bytes that really cross the network.
pub struct CountingStream {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl CountingStream {
    /// Wraps a stream.
    pub fn new(inner: TcpStream, counters: Arc<Counters>) -> Self {
        CountingStream { inner, counters }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client TLS connection.
pub type ClientStream = tokio_rustls::client::TlsStream<CountingStream>;

/// The TLS server name for `addr` (`host:port`): `server_name` when given, the host
/// otherwise (an IP address is a valid name when the certificate lists it).
pub fn server_name(addr: &str, server_name: Option<&str>) -> Result<ServerName<'static>> {
    let host = match server_name {
        Some(n) => n.to_string(),
        None => {
            let h = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        }
    };
    ServerName::try_from(host.clone()).map_err(|_| cfg_err(format!("bad server name {host:?}")))
}

/// Connects to `addr` and completes the TLS handshake.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    name: Option<&str>,
    counters: Arc<Counters>,
) -> Result<ClientStream> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| TransportError::io(format!("connecting to {addr}"), e))?;
    let _ = tcp.set_nodelay(true);
    let sn = server_name(addr, name)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(sn, CountingStream::new(tcp, counters))
        .await
        .map_err(|e| TransportError::Tls {
            peer: addr.to_string(),
            message: e
                .get_ref()
                .map(|inner| inner.to_string())
                .unwrap_or_else(|| e.to_string()),
        })
}
