//! Bandwidth limit: a pacing token bucket on the bytes the source sends.

use std::time::{Duration, Instant};

/// Paces sends to an average rate.
#[derive(Debug)]
pub struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    /// `rate` in bytes per second; None means unlimited.
    pub fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Accounts `n` bytes and sleeps until sending them keeps within the rate.
    pub async fn consume(&mut self, n: u64) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        self.sent += n;
        let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Parses a rate such as `500k`, `20M`, `1.5G` (bytes per second, 1024-based units).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024.0),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024.0 * 1024.0),
        Some('g' | 'G') => (&s[..s.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?} (e.g. 500k, 20M, 1G bytes/s)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("rate must be positive: {s:?}"));
    }
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500k").unwrap(), 512_000);
        assert_eq!(parse_rate("2M").unwrap(), 2 << 20);
        assert_eq!(parse_rate("100").unwrap(), 100);
        assert!(parse_rate("x").is_err());
        assert!(parse_rate("-1").is_err());
    }

    #[tokio::test]
    async fn paces() {
        let mut t = Throttle::new(Some(1 << 20));
        let s = Instant::now();
        t.consume(1 << 19).await;
        assert!(s.elapsed() >= Duration::from_millis(450));
    }
}
