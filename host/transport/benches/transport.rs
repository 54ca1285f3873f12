//! Block-transport benchmark, run side by side with restic, borg, rsync and zstd on
//! the same generated image: `cargo bench -p haven-transport`.
//!
//! Image: half random, a quarter zeros, a quarter real binaries from /usr/lib and
//! /usr/bin, in 4 MiB stripes.  Size: `HAVEN_BENCH_SIZE_MB` (default 2048).  Work
//! directory: `HAVEN_BENCH_DIR` (default /var/tmp/haven-bench, removed at the end).
//! Haven runs through the real TCP + TLS path on loopback, the target writing and
//! fsyncing its replica.  `HAVEN_BENCH_ONLY_HAVEN=1` skips the other tools.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use haven_transport::repo::Repository;
use haven_transport::source::SourceSpec;
use haven_transport::target::{Target, TargetOptions};
use haven_transport::tls::{self, Trust};
use haven_transport::{replicate, ReplicateOptions};

const MIB: usize = 1 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

#[derive(Clone)]
struct Row {
    case: &'static str,
    tool: &'static str,
    secs: f64,
    wire: Option<u64>,
    stored: Option<u64>,
    /// Haven only: the compressed block data sent (wire minus protocol
    /// metadata and TLS framing).
    payload: Option<u64>,
}

fn binaries(need: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(need);
    let mut stack = vec![PathBuf::from("/usr/lib"), PathBuf::from("/usr/bin")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut ents: Vec<_> = rd.flatten().collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(b) = std::fs::read(e.path()) {
                    out.extend_from_slice(&b);
                    if out.len() >= need {
                        out.truncate(need);
                        return out;
                    }
                }
            }
        }
    }
    out.resize(need, 0);
    out
}

fn generate(path: &Path, size: usize) -> Vec<u8> {
    let stripe = 4 * MIB;
    let mut rng = Rng(0x1234_5678);
    let bins = binaries(size / 4);
    let mut data = vec![0u8; size];
    let mut bi = 0;
    for (i, c) in data.chunks_mut(stripe).enumerate() {
        match i % 4 {
            0 | 1 => rng.fill(c),
            2 => {}
            _ => {
                let n = c.len().min(bins.len() - bi);
                c[..n].copy_from_slice(&bins[bi..bi + n]);
                bi += n;
            }
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Overwrites `fraction` of the image with random data in scattered `len` writes.
fn scatter(path: &Path, data: &mut [u8], fraction: f64, len: usize, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let slots = data.len() / len;
    let n = (data.len() as f64 * fraction / len as f64) as usize;
    let mut used = vec![false; slots];
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut done = 0;
    while done < n {
        let s = (rng.next() % slots as u64) as usize;
        if used[s] {
            continue;
        }
        used[s] = true;
        rng.fill(&mut data[s * len..(s + 1) * len]);
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &data[s * len..(s + 1) * len],
            (s * len) as u64,
        )
        .unwrap();
        done += 1;
    }
    (n * len) as u64
}

fn du(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.blocks() * 512
    }
}

fn have(tool: &str) -> bool {
    if std::env::var_os("HAVEN_BENCH_ONLY_HAVEN").is_some() {
        return false;
    }
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sh(cmd: &mut Command) -> (f64, String) {
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    (secs, text)
}

fn rsync_wire(text: &str) -> Option<u64> {
    let grab = |key: &str| {
        text.lines().find(|l| l.starts_with(key)).and_then(|l| {
            l[key.len()..]
                .split_whitespace()
                .next()
                .map(|n| n.replace(',', ""))
                .and_then(|n| n.parse::<u64>().ok())
        })
    };
    Some(grab("Total bytes sent:")? + grab("Total bytes received:")?)
}

struct Others {
    dir: PathBuf,
    rsh: PathBuf,
}

impl Others {
    fn restic(&self, img: &Path) -> Option<(f64, u64)> {
        if !have("restic") {
            return None;
        }
        let repo = self.dir.join("restic");
        if !repo.exists() {
            sh(Command::new("restic")
                .args(["init", "-q", "--repo"])
                .arg(&repo)
                .env("RESTIC_PASSWORD", "x"));
        }
        let before = du(&repo);
        let (s, _) = sh(Command::new("restic")
            .args(["backup", "-q", "--repo"])
            .arg(&repo)
            .arg(img)
            .env("RESTIC_PASSWORD", "x"));
        Some((s, du(&repo) - before))
    }

    fn borg(&self, img: &Path, name: &str) -> Option<(f64, u64)> {
        if !have("borg") {
            return None;
        }
        let repo = self.dir.join("borg");
        let env = [
            ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
            ("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes"),
            ("BORG_BASE_DIR", self.dir.to_str().unwrap_or(".")),
        ];
        if !repo.exists() {
            sh(Command::new("borg")
                .args(["init", "-e", "none"])
                .arg(&repo)
                .envs(env));
        }
        let before = du(&repo);
        let (s, _) = sh(Command::new("borg")
            .args(["create", "--compression", "zstd,1"])
            .arg(format!("{}::{name}", repo.display()))
            .arg(img)
            .envs(env));
        Some((s, du(&repo) - before))
    }

    fn rsync(&self, img: &Path) -> Option<(f64, u64, u64)> {
        if !have("rsync") {
            return None;
        }
        let dst = self.dir.join("rsync-dst");
        std::fs::create_dir_all(&dst).ok()?;
        let (s, text) = sh(Command::new("rsync")
            .args([
                "--inplace",
                "--no-whole-file",
                "--ignore-times",
                "--stats",
                "-e",
            ])
            .arg(&self.rsh)
            .arg(img)
            .arg(format!("localhost:{}/disk.raw", dst.display())));
        Some((s, rsync_wire(&text).unwrap_or(0), du(&dst)))
    }
}

fn main() {
    let size_mb: usize = std::env::var("HAVEN_BENCH_SIZE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let size = size_mb * MIB;
    let work = PathBuf::from(
        std::env::var("HAVEN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/haven-bench".into()),
    );
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let missing: Vec<&str> = ["restic", "borg", "rsync", "zstd"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        println!(
            "NOTE: {} missing, skipped; install with: apt-get install -y restic borgbackup rsync zstd",
            missing.join(", ")
        );
    }
    let rsh = work.join("rsh.sh");
    std::fs::write(&rsh, "#!/bin/sh\nshift\nexec \"$@\"\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&rsh)
        .status()
        .unwrap();
    let others = Others {
        dir: work.clone(),
        rsh,
    };

    println!("generating a {size_mb} MiB image (1/2 random, 1/4 zeros, 1/4 /usr binaries)...");
    let img = work.join("disk.raw");
    let mut data = generate(&img, size);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let repo_dir = work.join("haven-repo");
    let repo = Repository::open(&repo_dir, None).unwrap();
    let (cert, key) = tls::self_signed(&work, &[]).unwrap();
    let target = rt
        .block_on(Target::bind(
            "127.0.0.1:0",
            TargetOptions::new(repo.clone(), tls::server_config(&cert, &key).unwrap()),
        ))
        .unwrap();
    let addr = target.local_addr().unwrap().to_string();
    rt.spawn(target.run(std::future::pending()));
    let haven = |path: &Path, replica: &str| {
        let o = ReplicateOptions::new(
            SourceSpec::Raw(path.to_path_buf()),
            replica,
            vec![addr.clone()],
            Trust::Pinned(cert.clone()),
        );
        rt.block_on(replicate(o)).unwrap()
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut changed: Vec<(&'static str, u64)> = Vec::new();
    let replica_dir = repo_dir.join("replicas");

    // 1. Full pass.
    let cases = std::env::var("HAVEN_BENCH_CASES").unwrap_or_else(|_| "full,inc64,inc4,xvm".into());
    let case = "full";
    let before = du(&replica_dir);
    let r = haven(&img, "vm1");
    rows.push(Row {
        case,
        tool: "haven",
        secs: r.duration.as_secs_f64(),
        wire: Some(r.wire_bytes()),
        stored: Some(du(&replica_dir) - before),
        payload: Some(r.payload_bytes),
    });
    if have("zstd") {
        let out = work.join("disk.raw.zst");
        let (s, _) = sh(Command::new("zstd")
            .args(["-1", "-T2", "-q", "-f", "-o"])
            .arg(&out)
            .arg(&img));
        let n = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        rows.push(Row {
            case,
            tool: "zstd -1",
            secs: s,
            wire: Some(n),
            stored: Some(n),
            payload: None,
        });
        let _ = std::fs::remove_file(out);
    }
    if let Some((s, st)) = others.restic(&img) {
        rows.push(Row {
            case,
            tool: "restic",
            secs: s,
            wire: None,
            stored: Some(st),
            payload: None,
        });
    }
    if let Some((s, st)) = others.borg(&img, "full") {
        rows.push(Row {
            case,
            tool: "borg",
            secs: s,
            wire: None,
            stored: Some(st),
            payload: None,
        });
    }
    if let Some((s, w, st)) = others.rsync(&img) {
        rows.push(Row {
            case,
            tool: "rsync",
            secs: s,
            wire: Some(w),
            stored: Some(st),
            payload: None,
        });
    }

    // 2/3. Incremental passes.
    for (case, len, seed) in [("inc 5% 64K", 65536usize, 11u64), ("inc 5% 4K", 4096, 12)] {
        if !cases.contains(if len == 4096 { "inc4" } else { "inc64" }) {
            continue;
        }
        let ch = scatter(&img, &mut data, 0.05, len, seed);
        changed.push((case, ch));
        let before = du(&replica_dir);
        let r = haven(&img, "vm1");
        rows.push(Row {
            case,
            tool: "haven",
            secs: r.duration.as_secs_f64(),
            wire: Some(r.wire_bytes()),
            stored: Some(du(&replica_dir).saturating_sub(before)),
            payload: None,
        });
        if let Some((s, st)) = others.restic(&img) {
            rows.push(Row {
                case,
                tool: "restic",
                secs: s,
                wire: None,
                stored: Some(st),
                payload: None,
            });
        }
        if let Some((s, st)) = others.borg(&img, if len == 4096 { "inc4" } else { "inc64" }) {
            rows.push(Row {
                case,
                tool: "borg",
                secs: s,
                wire: None,
                stored: Some(st),
                payload: None,
            });
        }
        if let Some((s, w, _)) = others.rsync(&img) {
            rows.push(Row {
                case,
                tool: "rsync",
                secs: s,
                wire: Some(w),
                stored: None,
                payload: None,
            });
        }
    }

    // 4. Cross-VM dedup: a second image sharing 80 % of its blocks.
    let case = "2nd VM 80% shared";
    let xvm = cases.contains("xvm");
    let img2 = work.join("disk2.raw");
    let mut dedup_saved = 0;
    if xvm {
        let mut data2 = data;
        std::fs::copy(&img, &img2).unwrap();
        let ch = scatter(&img2, &mut data2, 0.20, 65536, 13);
        drop(data2);
        changed.push((case, ch));
        let before = du(&replica_dir);
        let r2 = haven(&img2, "vm2");
        dedup_saved = r2.dedup_saved_bytes();
        rows.push(Row {
            case,
            tool: "haven",
            secs: r2.duration.as_secs_f64(),
            wire: Some(r2.wire_bytes()),
            stored: Some(du(&replica_dir) - before),
            payload: None,
        });
        if let Some((s, st)) = others.restic(&img2) {
            rows.push(Row {
                case,
                tool: "restic",
                secs: s,
                wire: None,
                stored: Some(st),
                payload: None,
            });
        }
        if let Some((s, st)) = others.borg(&img2, "vm2") {
            rows.push(Row {
                case,
                tool: "borg",
                secs: s,
                wire: None,
                stored: Some(st),
                payload: None,
            });
        }
    }

    // Report.
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nimage {size_mb} MiB; wire = bytes on the network (haven: TLS bytes both ways; rsync: its --stats); stored = bytes added on disk");
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>8} {:>9} {:>11} {:>11}",
        "case", "tool", "wall s", "MB/s", "wire MB", "stored MB"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>8.2} {:>9.0} {:>11} {:>11}",
            r.case,
            r.tool,
            r.secs,
            size as f64 / 1e6 / r.secs,
            r.wire.map_or("-".into(), |w| format!("{:.1}", mb(w))),
            r.stored.map_or("-".into(), |s| format!("{:.1}", mb(s))),
        );
    }
    let get = |case: &str, tool: &str| {
        rows.iter()
            .find(|r| r.case == case && r.tool == tool)
            .cloned()
    };
    let _ = writeln!(out, "\nratios and targets:");
    if let Some(h) = get("full", "haven") {
        let rate = size as f64 / 1e6 / h.secs;
        let _ = writeln!(
            out,
            "  full pass: {rate:.0} MB/s (target >= 500) {}",
            if rate >= 500.0 { "PASS" } else { "FAIL" }
        );
        if let Some(z) = get("full", "zstd -1") {
            let zstd = z.wire.unwrap_or(1) as f64;
            let ratio = h.payload.unwrap_or(0) as f64 / zstd;
            let _ = writeln!(
                out,
                "  full pass compressed output / zstd -1 output: {ratio:.3} (target <= 1) {}",
                if ratio <= 1.0 { "PASS" } else { "FAIL" }
            );
            let wire = h.wire.unwrap_or(0) as f64 / zstd;
            let _ = writeln!(
                out,
                "  full pass wire (with change-detection and dedup digests, TLS) / zstd -1 output: {wire:.3}"
            );
        }
    }
    for (case, ch) in &changed {
        let Some(h) = get(case, "haven") else {
            continue;
        };
        if case.starts_with("inc") {
            for tool in ["restic", "borg", "rsync"] {
                if let Some(o) = get(case, tool) {
                    let x = o.secs / h.secs;
                    let _ = writeln!(
                        out,
                        "  {case}: {x:.1}x faster than {tool} (target >= 5) {}",
                        if x >= 5.0 { "PASS" } else { "FAIL" }
                    );
                }
            }
            let x = h.wire.unwrap_or(0) as f64 / *ch as f64;
            let _ = writeln!(
                out,
                "  {case}: wire / changed bytes = {x:.3} (target <= 1.1) {}",
                if x <= 1.1 { "PASS" } else { "FAIL" }
            );
            if let Some(o) = get(case, "rsync") {
                let _ = writeln!(
                    out,
                    "  {case}: rsync wire / changed bytes = {:.3}",
                    o.wire.unwrap_or(0) as f64 / *ch as f64
                );
            }
        } else {
            let x = h.wire.unwrap_or(0) as f64 / size as f64;
            let _ = writeln!(
                out,
                "  {case}: wire / image size = {x:.3} (target <= 0.25) {} (dedup saved {:.1} MB)",
                if x <= 0.25 { "PASS" } else { "FAIL" },
                mb(dedup_saved)
            );
        }
    }
    drop(out);
    drop(repo);
    let _ = std::fs::remove_dir_all(&work);
}
