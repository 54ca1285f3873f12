//! Network health checks run from the Haven host: a TCP connection, an HTTP
//! GET with an expected status. One attempt each; callers repeat until their
//! deadline.

use std::time::Duration;

/// Connects to `host:port` within `timeout`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(format!("tcp {host}:{port} accepts connections")),
        Ok(Err(e)) => Err(format!("tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("tcp {host}:{port}: no answer within {timeout:?}")),
    }
}

/// GETs `url` within `timeout` and compares the status with `expect`.
pub async fn http(url: &str, expect: u16, timeout: Duration) -> Result<String, String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let status = agent
            .get(&url)
            .call()
            .map_err(|e| format!("http {url}: {e}"))?
            .status()
            .as_u16();
        if status == expect {
            Ok(format!("http {url} answered {status}"))
        } else {
            Err(format!("http {url} answered {status}, expected {expect}"))
        }
    })
    .await
    .map_err(|e| format!("http check task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn checks_see_real_servers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let path_ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                let status = if path_ok { "200 OK" } else { "503 Busy" };
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
        let t = Duration::from_secs(2);
        assert!(tcp("127.0.0.1", port, t).await.is_ok());
        assert!(http(&format!("http://127.0.0.1:{port}/ok"), 200, t)
            .await
            .is_ok());
        let err = http(&format!("http://127.0.0.1:{port}/x"), 200, t)
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(tcp("127.0.0.1", dead, t).await.is_err());
    }
}
