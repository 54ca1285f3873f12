//! Changed-extents lists (CBT, RCT, dirty bitmaps) that limit what a pass reads.
//!
//! File format: one extent per line, `OFFSET LENGTH` in bytes (decimal or `0x` hex,
//! separated by spaces, a tab or a comma); blank lines and `#` comments are ignored.

use std::path::Path;

use super::SourceError;
use crate::digest::GROUP_SIZE;

/// A set of changed byte ranges, normalised to sorted, merged 64 KiB groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    /// Sorted, non-overlapping `[first, end)` group ranges.
    groups: Vec<(u64, u64)>,
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Extents {
    /// Builds from `(offset, length)` byte ranges.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Extents {
        let g = GROUP_SIZE as u64;
        let mut groups: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(off, len)| (off / g, off.saturating_add(len).div_ceil(g)))
            .collect();
        groups.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(groups.len());
        for (a, b) in groups {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Extents { groups: merged }
    }

    /// Reads an extents file.
    pub fn load(path: &Path) -> Result<Extents, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|error| SourceError::Io {
            source_name: path.display().to_string(),
            error,
        })?;
        let mut ranges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| SourceError::Extents {
                path: path.to_path_buf(),
                line: i + 1,
                what: what.to_string(),
            };
            let mut parts = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty());
            let off = parts
                .next()
                .and_then(parse_num)
                .ok_or_else(|| bad("bad offset"))?;
            let len = parts
                .next()
                .and_then(parse_num)
                .ok_or_else(|| bad("bad length"))?;
            if parts.next().is_some() {
                return Err(bad("expected two fields: OFFSET LENGTH"));
            }
            ranges.push((off, len));
        }
        Ok(Extents::from_ranges(ranges))
    }

    /// The group ranges `[first, end)` clipped to `[from, total_groups)`.
    pub fn group_ranges(&self, from: u64, total_groups: u64) -> Vec<(u64, u64)> {
        self.groups
            .iter()
            .map(|&(a, b)| (a.max(from), b.min(total_groups)))
            .filter(|&(a, b)| a < b)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_clips() {
        let e = Extents::from_ranges([(0, 10), (65536 * 3, 1), (5, 70000), (65536 * 10, 65536)]);
        assert_eq!(e.group_ranges(0, 100), vec![(0, 2), (3, 4), (10, 11)]);
        assert_eq!(e.group_ranges(1, 4), vec![(1, 2), (3, 4)]);
    }
}
