//! Sources against real tools: qcow2 images written by qemu-img/qemu-io, NBD exports
//! served by qemu-nbd and nbdkit (TCP and Unix sockets).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use haven_transport::error::ErrorKind;
use haven_transport::replicate;
use haven_transport::source::{SourceError, SourceSpec};

const MIB: usize = 1 << 20;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install qemu-utils / nbdkit)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(img: &Path, script: &str) {
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", script])
        .arg(img));
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(path_or_port: impl Fn() -> bool) {
    for _ in 0..100 {
        if path_or_port() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_v2_and_v3_images() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    for compat in ["0.10", "1.1"] {
        let img = dir.path().join(format!("d-{compat}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-o"])
            .arg(format!("compat={compat},cluster_size=65536"))
            .arg(&img)
            .arg("24M"));
        qemu_io(&img, "write -P 0xab 0 1M");
        qemu_io(&img, "write -P 0x11 5M 300k");
        qemu_io(&img, "write -P 0x5a 23M 1M");
        qemu_io(&img, "write -z 5M 64k");
        let raw = dir.path().join(format!("d-{compat}.raw"));
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&img)
            .arg(&raw));
        assert!(matches!(
            SourceSpec::parse(&img.to_string_lossy()).unwrap(),
            SourceSpec::Qcow2(_)
        ));
        let name = format!("q{}", compat.replace('.', ""));
        let r = replicate(options(&img, &name, &t)).await.unwrap();
        assert_eq!(r.source_bytes, 24 * MIB as u64);
        qemu_img_compare(&raw, &t.repo.image_path(&name).unwrap());
        // Incremental: a new write in the qcow2 is all that is sent.
        qemu_io(&img, "write -P 0x77 10M 8k");
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&img)
            .arg(&raw));
        let r = replicate(options(&img, &name, &t)).await.unwrap();
        // Two identical 4 KiB blocks: at most one is sent, the other deduplicated
        // (the second image finds both in the first image's replica).
        assert_eq!(r.sent_bytes + r.target.dedup_bytes, 8192, "{r:?}");
        assert!(r.sent_bytes <= 4096, "{r:?}");
        qemu_img_compare(&raw, &t.repo.image_path(&name).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_compressed_clusters_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    mixed_image(&raw, 4 * MIB, 3);
    let img = dir.path().join("c.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&img));
    let t = start_target(&dir.path().join("repo")).await;
    let e = replicate(options(&img, "c", &t)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Source, "{e}");
    assert!(e.to_string().contains("compressed cluster"), "{e}");
    // A qcow2 with a backing file is refused at open.
    let over = dir.path().join("o.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&img)
        .arg(&over));
    let err = SourceSpec::parse(&over.to_string_lossy())
        .unwrap()
        .open()
        .err()
        .unwrap();
    assert!(matches!(err, SourceError::Qcow2Unsupported { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_exports_from_qemu_nbd_and_nbdkit() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let mut data = mixed_image(&raw, 20 * MIB + 4096 * 3, 4);
    let t = start_target(&dir.path().join("repo")).await;

    // qemu-nbd over a Unix socket, read-only, export name "disk".
    let sock = dir.path().join("qemu.sock");
    let _q = Server(
        Command::new("qemu-nbd")
            .args(["-r", "-t", "--shared=8", "-f", "raw", "-x", "disk", "-k"])
            .arg(&sock)
            .arg(&raw)
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd (qemu-utils) must be installed"),
    );
    wait_for(|| sock.exists());
    let url = format!("nbd+unix:///disk?socket={}", sock.display());
    let mut o = options(&raw, "n1", &t);
    o.source = SourceSpec::parse(&url).unwrap();
    let r = replicate(o).await.unwrap();
    assert_eq!(r.source_bytes, data.len() as u64);
    qemu_img_compare(&raw, &t.repo.image_path("n1").unwrap());
    // Unknown export: a clear error.
    let mut o = options(&raw, "n1", &t);
    o.source = SourceSpec::parse(&format!("nbd+unix:///nope?socket={}", sock.display())).unwrap();
    let e = replicate(o).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");

    // nbdkit's file plugin over TCP, after a change to the file.
    scatter_writes(&raw, &mut data, 10, 4096, 5);
    let port = free_port();
    let _k = Server(
        Command::new("nbdkit")
            .args([
                "-f",
                "-r",
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "file",
            ])
            .arg(format!("file={}", raw.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("nbdkit must be installed (apt-get install nbdkit)"),
    );
    wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut o = options(&raw, "n1", &t);
    o.source = SourceSpec::parse(&format!("nbd://127.0.0.1:{port}")).unwrap();
    let r = replicate(o).await.unwrap();
    assert_eq!(r.sent_bytes, 10 * 4096, "{r:?}");
    qemu_img_compare(&raw, &t.repo.image_path("n1").unwrap());

    // nbdkit on a Unix socket, memory-backed pattern plugin (deterministic content).
    let ksock = dir.path().join("kit.sock");
    let _p = Server(
        Command::new("nbdkit")
            .args(["-f", "-r", "-U"])
            .arg(&ksock)
            .args(["pattern", "size=8M"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(|| ksock.exists());
    let mut o = options(&raw, "pat", &t);
    o.source = SourceSpec::parse(&format!("nbd+unix:///?socket={}", ksock.display())).unwrap();
    replicate(o).await.unwrap();
    let img = std::fs::read(t.repo.image_path("pat").unwrap()).unwrap();
    // The pattern plugin writes each 8-byte offset big-endian at that offset.
    for off in [0usize, 8, 4096, 8 * MIB - 8] {
        assert_eq!(
            u64::from_be_bytes(img[off..off + 8].try_into().unwrap()),
            off as u64
        );
    }
}
