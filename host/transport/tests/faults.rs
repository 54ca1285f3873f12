//! Hostile and failing conditions: corrupt blocks, truncated streams, connections
//! cut by a proxy (resume), gateway choice and failover, a full target disk.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use haven_transport::digest::{digest_blocks, digest_groups, Digest, GROUP_BLOCKS};
use haven_transport::error::ErrorKind;
use haven_transport::events::Event;
use haven_transport::tls::{self, Counters, Trust};
use haven_transport::wire::{
    bit, read_msg, write_msg, Begin, Chunk, Codec, Hello, Msg, Purpose, PROTOCOL_VERSION,
};
use haven_transport::{replicate, Repository};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1 << 20;

/// Opens a session by hand and gets to the point of sending data for group 0.
async fn handshake_to_data(
    t: &TestTarget,
    replica: &str,
    disk: &[u8],
) -> (tls::ClientStream, Vec<usize>) {
    let cfg = tls::client_config(&Trust::Pinned(t.cert.clone())).unwrap();
    let mut s = tls::connect(&t.addr, cfg, None, Arc::new(Counters::default()))
        .await
        .unwrap();
    write_msg(
        &mut s,
        &Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            purpose: Purpose::Replicate,
        }),
    )
    .await
    .unwrap();
    assert!(matches!(read_msg(&mut s).await.unwrap().0, Msg::Welcome(_)));
    write_msg(
        &mut s,
        &Msg::Begin(Begin {
            replica: replica.into(),
            size: disk.len() as u64,
            allow_resize: false,
        }),
    )
    .await
    .unwrap();
    assert!(matches!(read_msg(&mut s).await.unwrap().0, Msg::BeginOk(_)));
    let blocks = digest_blocks(&disk[..65536]);
    let groups = digest_groups(&disk[..65536]);
    write_msg(
        &mut s,
        &Msg::Groups {
            first: 0,
            digests: groups,
        },
    )
    .await
    .unwrap();
    let Msg::NeedGroups(g) = read_msg(&mut s).await.unwrap().0 else {
        panic!()
    };
    assert!(bit(&g, 0));
    write_msg(&mut s, &Msg::Blocks(blocks[..GROUP_BLOCKS].to_vec()))
        .await
        .unwrap();
    let Msg::Changed(c) = read_msg(&mut s).await.unwrap().0 else {
        panic!()
    };
    let changed: Vec<usize> = (0..GROUP_BLOCKS).filter(|&i| bit(&c, i)).collect();
    let keys = changed
        .iter()
        .map(|&i| Digest::key_of_block(&disk[i * 4096..(i + 1) * 4096]))
        .collect();
    write_msg(&mut s, &Msg::Keys(keys)).await.unwrap();
    let Msg::NeedBlocks(b) = read_msg(&mut s).await.unwrap().0 else {
        panic!()
    };
    let needed: Vec<usize> = (0..changed.len())
        .filter(|&i| bit(&b, i))
        .map(|i| changed[i])
        .collect();
    assert!(!needed.is_empty());
    (s, needed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_block_is_rejected_and_last_point_kept() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut data = mixed_image(&src, 4 * MIB, 21);
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    let mut rng = Rng(5);
    rng.fill(&mut data[..65536]);
    let (mut s, needed) = handshake_to_data(&t, "vm", &data).await;
    // Send the announced blocks with one bit flipped.
    let mut raw = Vec::new();
    for &i in &needed {
        raw.extend_from_slice(&data[i * 4096..(i + 1) * 4096]);
    }
    raw[100] ^= 0x40;
    let chunk = Chunk {
        codec: Codec::Raw,
        raw_len: raw.len() as u32,
        bytes: raw,
    };
    write_msg(&mut s, &Msg::Data(vec![chunk])).await.unwrap();
    match read_msg(&mut s).await.unwrap().0 {
        Msg::Error(e) => assert_eq!(e.kind, ErrorKind::DigestMismatch, "{}", e.message),
        m => panic!("expected an error, got {}", m.name()),
    }
    let out = dir.path().join("p1.raw");
    export_when_idle(&t.repo, "vm", 1, &out).await;
    qemu_img_compare(&v1, &out);
    qemu_img_compare(&v1, &t.repo.image_path("vm").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_stream_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut data = mixed_image(&src, 4 * MIB, 22);
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    let mut rng = Rng(6);
    rng.fill(&mut data[..65536]);
    std::fs::write(&src, &data).unwrap();
    let (mut s, needed) = handshake_to_data(&t, "vm", &data).await;
    // A data frame header announcing more than is sent, then the connection drops.
    let len = 1 + 9 + needed.len() * 4096;
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.push(9);
    frame.extend_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0x10, 0]);
    frame.extend_from_slice(&data[..1000]);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let out = dir.path().join("p1.raw");
    export_when_idle(&t.repo, "vm", 1, &out).await;
    qemu_img_compare(&v1, &out);
    assert_eq!(t.repo.points("vm").unwrap().len(), 1);
    // The next pass completes the replica.
    replicate(options(&src, "vm", &t)).await.unwrap();
    qemu_img_compare(&src, &t.repo.image_path("vm").unwrap());
}

/// A TCP proxy that cuts the first connection that forwards more than `cut_after`
/// bytes towards the target.
async fn cutting_proxy(target: String, cut_after: u64) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let c = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut inc, _) = l.accept().await.unwrap();
            let mut out = TcpStream::connect(&target).await.unwrap();
            let cut = c.clone();
            tokio::spawn(async move {
                let (mut ir, mut iw) = inc.split();
                let (mut or, mut ow) = out.split();
                let up = async {
                    let n = AtomicU64::new(0);
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let k = ir.read(&mut buf).await.unwrap_or(0);
                        if k == 0 {
                            break;
                        }
                        if n.fetch_add(k as u64, Ordering::SeqCst) + k as u64 > cut_after
                            && !cut.swap(true, Ordering::SeqCst)
                        {
                            return;
                        }
                        if ow.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut or, &mut iw).await;
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connection_resumes_from_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut rng = Rng(31);
    let mut data = vec![0u8; 48 * MIB];
    rng.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let t = start_target_with(&dir.path().join("repo"), |o| {
        o.checkpoint_bytes = 2 * MIB as u64
    })
    .await;
    let (proxy, cut) = cutting_proxy(t.addr.clone(), 30 * MIB as u64).await;
    let mut o = options(&src, "vm", &t);
    o.gateways = vec![proxy];
    let r = replicate(o).await.unwrap();
    assert!(cut.load(Ordering::SeqCst));
    assert!(r.attempts >= 2, "{r:?}");
    let resumed = *r.session_offsets.last().unwrap();
    assert!(
        resumed >= 16 * MIB as u64,
        "second session did not resume: {r:?}"
    );
    assert!(r.sent_bytes < 48 * MIB as u64 + 32 * MIB as u64 - resumed + MIB as u64);
    qemu_img_compare(&src, &t.repo.image_path("vm").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_least_loaded_first_and_failover() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut rng = Rng(41);
    let mut data = vec![0u8; 32 * MIB];
    rng.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = Repository::open(&repo_dir, None).unwrap();
    let a = start_target_repo(repo.clone(), &repo_dir, |o| {
        o.checkpoint_bytes = 2 * MIB as u64
    })
    .await;
    let b = start_target_repo(repo.clone(), &repo_dir, |o| {
        o.checkpoint_bytes = 2 * MIB as u64
    })
    .await;

    // Load gateway A with an open session: the source must pick B.
    let cfg = tls::client_config(&Trust::Pinned(a.cert.clone())).unwrap();
    let mut busy = tls::connect(&a.addr, cfg, None, Arc::new(Counters::default()))
        .await
        .unwrap();
    write_msg(
        &mut busy,
        &Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            purpose: Purpose::Replicate,
        }),
    )
    .await
    .unwrap();
    read_msg(&mut busy).await.unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut o = options(&src, "vm", &a);
    o.gateways = vec!["127.0.0.1:1".into(), a.addr.clone(), b.addr.clone()];
    o.events = haven_transport::EventSink::new(move |e| ev.lock().unwrap().push(e.clone()));
    let r = replicate(o).await.unwrap();
    assert_eq!(r.gateways, vec![b.addr.clone()], "{r:?}");
    assert!(events.lock().unwrap().iter().any(
        |e| matches!(e, Event::GatewaySelected { gateway, load: Some(0) } if *gateway == b.addr)
    ));
    drop(busy);

    // Failover: the connection through gateway A's proxy is cut; the pass continues on B.
    let (proxy, cut) = cutting_proxy(a.addr.clone(), 24 * MIB as u64).await;
    rng.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let mut o = options(&src, "vm", &a);
    o.gateways = vec![proxy.clone(), b.addr.clone()];
    let r = replicate(o).await.unwrap();
    assert!(cut.load(Ordering::SeqCst));
    assert_eq!(r.gateways[..2], [proxy, b.addr.clone()], "{r:?}");
    assert!(r.session_offsets.iter().skip(1).any(|&o| o > 0), "{r:?}");
    qemu_img_compare(&src, &repo.image_path("vm").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_target_disk_fails_cleanly() {
    // A real full disk: a 40 MiB tmpfs mounted for the test (needs root).
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED full_target_disk_fails_cleanly: cannot mount tmpfs (needs root)");
        return;
    }
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Umount(mnt.clone());
    let src = dir.path().join("d.raw");
    let mut rng = Rng(51);
    let mut data = vec![0u8; 8 * MIB];
    rng.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&mnt.join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    // Grow to 64 MiB of new random data: cannot fit.
    let mut big = vec![0u8; 64 * MIB];
    rng.fill(&mut big);
    std::fs::write(&src, &big).unwrap();
    let mut o = options(&src, "vm", &t);
    o.allow_resize = true;
    let e = replicate(o).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    let out = dir.path().join("p1.raw");
    export_when_idle(&t.repo, "vm", 1, &out).await;
    qemu_img_compare(&v1, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_begin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    for (replica, size) in [("ok", u64::MAX), ("../escape", 4096)] {
        let cfg = tls::client_config(&Trust::Pinned(t.cert.clone())).unwrap();
        let mut s = tls::connect(&t.addr, cfg, None, Arc::new(Counters::default()))
            .await
            .unwrap();
        write_msg(
            &mut s,
            &Msg::Hello(Hello {
                version: PROTOCOL_VERSION,
                purpose: Purpose::Replicate,
            }),
        )
        .await
        .unwrap();
        read_msg(&mut s).await.unwrap();
        write_msg(
            &mut s,
            &Msg::Begin(Begin {
                replica: replica.into(),
                size,
                allow_resize: false,
            }),
        )
        .await
        .unwrap();
        match read_msg(&mut s).await.unwrap().0 {
            Msg::Error(e) => assert!(
                matches!(e.kind, ErrorKind::Protocol | ErrorKind::Repository),
                "{e:?}"
            ),
            m => panic!("expected an error, got {}", m.name()),
        }
    }
    assert!(!dir.path().join("escape").exists());
}
