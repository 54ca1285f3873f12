//! Host patterns for the outgoing-HTTP allowlist.

/// A pattern matching the authority (`host[:port]`) of an outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any host. Accepted in a manifest (the administrator still grants).
    Any,
    /// `*.example.com`: any subdomain of the suffix (not the suffix itself).
    Suffix { suffix: String, port: Option<u16> },
    /// `host` or `host:port`.
    Exact { host: String, port: Option<u16> },
}

impl HostPattern {
    /// Parses a pattern; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if text == "*" {
            return Ok(Self::Any);
        }
        let (host, port) = split_port(&text)?;
        if let Some(suffix) = host.strip_prefix("*.") {
            check_host(suffix)?;
            return Ok(Self::Suffix {
                suffix: suffix.to_owned(),
                port,
            });
        }
        check_host(host)?;
        Ok(Self::Exact {
            host: host.to_owned(),
            port,
        })
    }

    /// Whether the pattern allows `host` on `port`.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            Self::Any => true,
            Self::Suffix { suffix, port: p } => {
                port_ok(p) && host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
            }
            Self::Exact { host: h, port: p } => port_ok(p) && *h == host,
        }
    }
}

/// Splits `host[:port]`, with `[v6]:port` brackets.
pub(crate) fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(format!("{p:?} is not a port number (1-65535)")),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed `[`"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, port(p)?)),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("{text:?}: unexpected text after `]`")),
        };
    }
    match text.rsplit_once(':') {
        Some((host, p)) => Ok((host, port(p)?)),
        None => Ok((text, None)),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name or address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let p = |t| HostPattern::parse(t).unwrap();
        assert!(p("*").matches("anything", 1));
        assert!(p("vc.example.com").matches("VC.example.com", 443));
        assert!(!p("vc.example.com").matches("vc.example.com.evil", 443));
        assert!(p("vc:8443").matches("vc", 8443));
        assert!(!p("vc:8443").matches("vc", 443));
        assert!(p("*.example.com").matches("a.example.com", 80));
        assert!(!p("*.example.com").matches("example.com", 80));
        assert!(!p("*.example.com").matches("aexample.com", 80));
        assert!(p("[::1]:80").matches("::1", 80));
        assert!(p("127.0.0.1").matches("127.0.0.1", 9));
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("h:0").is_err());
        assert!(HostPattern::parse("").is_err());
    }
}
