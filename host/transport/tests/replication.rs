//! End-to-end replication over real TCP + TLS: full and incremental passes, holes,
//! dedup, recovery points, restore/export, retention, CBT, encryption, bandwidth.

mod common;

use std::time::{Duration, Instant};

use common::*;
use haven_transport::error::ErrorKind;
use haven_transport::replicate;
use haven_transport::repo::{Key, Repository, Retention};
use haven_transport::source::Extents;
use haven_transport::tls::Trust;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_with_points_restore_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    let mut data = mixed_image(&src, 32 * MIB, 1);
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&dir.path().join("repo")).await;

    let r1 = replicate(options(&src, "vm1", &t)).await.unwrap();
    assert_eq!(r1.point, 1);
    let img = t.repo.image_path("vm1").unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), data);
    qemu_img_info_raw(&img);
    qemu_img_compare(&src, &img);
    // A quarter of the image is zeros: holes (matching the empty replica), not sent,
    // not allocated; the repetitive quarter is deduplicated within the pass.
    assert!(
        r1.target.unchanged_bytes + r1.target.zero_bytes >= 8 * MIB as u64,
        "{r1:?}"
    );
    assert!(r1.sent_bytes < 17 * MIB as u64, "{r1:?}");
    assert!(
        allocated(&img) <= 25 * MIB as u64,
        "image not sparse: {}",
        allocated(&img)
    );
    // Random half is incompressible, the text quarter compresses: payload < 60 %.
    assert!(r1.payload_bytes < (32 * MIB as u64) * 6 / 10, "{r1:?}");

    // Unchanged source: nothing is sent.
    let r2 = replicate(options(&src, "vm1", &t)).await.unwrap();
    assert_eq!((r2.point, r2.sent_bytes), (2, 0));

    // 40 scattered 4 KiB writes: exactly those blocks are sent.
    scatter_writes(&src, &mut data, 40, 4096, 7);
    let r3 = replicate(options(&src, "vm1", &t)).await.unwrap();
    assert_eq!(r3.point, 3);
    assert_eq!(r3.sent_bytes, 40 * 4096, "{r3:?}");
    assert!(r3.wire_out_bytes < 40 * 4096 + 64 * 1024, "{r3:?}");
    qemu_img_compare(&src, &img);

    let pts = t.repo.points("vm1").unwrap();
    assert_eq!(pts.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    let out = dir.path().join("export1.raw");
    t.repo.export("vm1", 1, &out).unwrap();
    qemu_img_compare(&v1, &out);
    let out3 = dir.path().join("export3.raw");
    t.repo.export("vm1", 3, &out3).unwrap();
    qemu_img_compare(&src, &out3);
    assert!(t.repo.verify("vm1").unwrap().ok());

    t.repo.restore("vm1", 1).unwrap();
    qemu_img_compare(&v1, &img);
    assert_eq!(t.repo.points("vm1").unwrap().len(), 1);
    assert!(t.repo.verify("vm1").unwrap().ok());
    // The next pass after a restore sends just what differs from point 1.
    let r4 = replicate(options(&src, "vm1", &t)).await.unwrap();
    assert_eq!(r4.point, 2);
    assert_eq!(r4.sent_bytes, 40 * 4096);
    qemu_img_compare(&src, &img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_across_replicas_via_global_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    let mut data = mixed_image(&a, 16 * MIB, 3);
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&a, "vm-a", &t)).await.unwrap();
    // Second VM shares ~80 % of its blocks with the first.
    let b = dir.path().join("b.raw");
    std::fs::write(&b, &data).unwrap();
    let offs = scatter_writes(&b, &mut data, 16 * MIB / 65536 / 5, 65536, 9);
    let r = replicate(options(&b, "vm-b", &t)).await.unwrap();
    let changed = (offs.len() * 65536) as u64;
    assert!(
        r.sent_bytes <= changed,
        "sent {} > changed {changed}",
        r.sent_bytes
    );
    assert!(r.dedup_saved_bytes() >= 16 * MIB as u64 / 3, "{r:?}");
    qemu_img_compare(&b, &t.repo.image_path("vm-b").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tls_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    mixed_image(&src, MIB, 1);
    let t = start_target(&dir.path().join("repo")).await;
    let other = dir.path().join("other");
    let (other_cert, _) = haven_transport::tls::self_signed(&other, &[]).unwrap();
    let mut o = options(&src, "vm", &t);
    o.trust = Trust::Pinned(other_cert.clone());
    let e = replicate(o).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(e.to_string().contains("pinned"), "{e}");
    // A CA that did not sign the target's certificate fails too.
    let mut o = options(&src, "vm", &t);
    o.trust = Trust::Ca(other_cert);
    let e = replicate(o).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    // And the right one works.
    replicate(options(&src, "vm", &t)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_resize_between_passes_needs_consent() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    mixed_image(&src, 8 * MIB, 5);
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    let img = t.repo.image_path("vm").unwrap();

    // Grown.
    mixed_image(&src, 12 * MIB, 5);
    let e = replicate(options(&src, "vm", &t)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourceResized, "{e}");
    qemu_img_compare(&v1, &img);
    let mut o = options(&src, "vm", &t);
    o.allow_resize = true;
    replicate(o).await.unwrap();
    qemu_img_compare(&src, &img);

    // Shrunk (to a size that is not a multiple of 4 KiB).
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.set_len(5 * MIB as u64 + 1000).unwrap();
    let e = replicate(options(&src, "vm", &t)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourceResized, "{e}");
    let mut o = options(&src, "vm", &t);
    o.allow_resize = true;
    replicate(o).await.unwrap();
    qemu_img_compare(&src, &img);
    // Every point is still exportable with its own size.
    let out = dir.path().join("p1.raw");
    t.repo.export("vm", 1, &out).unwrap();
    qemu_img_compare(&v1, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_shrinking_mid_pass_fails_and_keeps_last_point() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut data = mixed_image(&src, 16 * MIB, 6);
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    // Change everything, then shrink the file while the (throttled) pass runs.
    for b in data.iter_mut() {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&src, &data).unwrap();
    let mut o = options(&src, "vm", &t);
    o.bwlimit = Some(4 * MIB as u64);
    let s2 = src.clone();
    let shrinker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&s2)
            .unwrap()
            .set_len(MIB as u64)
            .unwrap();
    });
    let e = replicate(o).await.unwrap_err();
    shrinker.await.unwrap();
    assert!(
        matches!(e.kind(), ErrorKind::SourceResized | ErrorKind::Source),
        "{e}"
    );
    let out = dir.path().join("p1.raw");
    export_when_idle(&t.repo, "vm", 1, &out).await;
    qemu_img_compare(&v1, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut data = mixed_image(&src, 4 * MIB, 8);
    let t = start_target_with(&dir.path().join("repo"), |o| {
        o.retention = Retention {
            keep: Some(2),
            max_age: None,
        };
    })
    .await;
    let mut versions = Vec::new();
    for i in 0..4 {
        scatter_writes(&src, &mut data, 5, 4096, 100 + i);
        let v = dir.path().join(format!("v{i}.raw"));
        std::fs::copy(&src, &v).unwrap();
        versions.push(v);
        replicate(options(&src, "vm", &t)).await.unwrap();
    }
    let ids: Vec<u64> = t.repo.points("vm").unwrap().iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![3, 4]);
    let undo = std::fs::read_dir(t.repo.replica_dir("vm").unwrap().join("undo"))
        .unwrap()
        .count();
    assert_eq!(undo, 1, "only the journal turning point 4 into 3 is needed");
    let out = dir.path().join("p3.raw");
    t.repo.export("vm", 3, &out).unwrap();
    qemu_img_compare(&versions[2], &out);
    // Age: everything but the newest is older than 0 s once a second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dropped = t
        .repo
        .apply_retention(
            "vm",
            &Retention {
                keep: None,
                max_age: Some(Duration::ZERO),
            },
        )
        .unwrap();
    assert_eq!(dropped, vec![3]);
    assert_eq!(t.repo.points("vm").unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbt_extents_limit_reading() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut data = mixed_image(&src, 16 * MIB, 10);
    let t = start_target(&dir.path().join("repo")).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    let offs = scatter_writes(&src, &mut data, 6, 4096, 11);
    let mut o = options(&src, "vm", &t);
    o.extents = Some(Extents::from_ranges(offs.iter().map(|&x| (x as u64, 4096))));
    let r = replicate(o).await.unwrap();
    assert!(r.read_bytes <= 6 * 65536, "read {}", r.read_bytes);
    assert_eq!(r.sent_bytes, 6 * 4096);
    qemu_img_compare(&src, &t.repo.image_path("vm").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_paces_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    let mut rng = Rng(77);
    let mut data = vec![0u8; 4 * MIB];
    rng.fill(&mut data);
    std::fs::write(&src, &data).unwrap();
    let t = start_target(&dir.path().join("repo")).await;
    let mut o = options(&src, "vm", &t);
    o.bwlimit = Some(2 * MIB as u64);
    let s = Instant::now();
    let r = replicate(o).await.unwrap();
    assert!(
        s.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        s.elapsed()
    );
    assert_eq!(r.sent_bytes, 4 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpo_threshold_raises_event() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    mixed_image(&src, MIB, 12);
    let t = start_target_with(&dir.path().join("repo"), |o| {
        o.rpo_threshold = Some(Duration::from_secs(1));
        o.rpo_check_every = Duration::from_millis(100);
    })
    .await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let ev = t.events.lock().unwrap().clone();
    assert!(
        ev.iter().any(|e| matches!(e, haven_transport::Event::RpoExceeded { replica, age: Some(a), .. } if replica == "vm" && *a >= Duration::from_secs(1))),
        "{ev:?}"
    );
    let rpo = t.repo.rpo(Duration::from_secs(3600)).unwrap();
    assert!(!rpo[0].exceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_repository_seals_recovery_points() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.raw");
    // Recognisable content that the journal would hold in clear without encryption.
    let data: Vec<u8> = b"SECRET-BLOCK-CONTENT"
        .iter()
        .cycle()
        .take(2 * MIB)
        .copied()
        .collect();
    std::fs::write(&src, &data).unwrap();
    let v1 = dir.path().join("v1.raw");
    std::fs::copy(&src, &v1).unwrap();
    let key_path = dir.path().join("key");
    let key = Key::generate(&key_path).unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = Repository::open(&repo_dir, Some(key)).unwrap();
    let t = start_target_repo(repo, &repo_dir, |_| {}).await;
    replicate(options(&src, "vm", &t)).await.unwrap();
    std::fs::write(&src, vec![7u8; 2 * MIB]).unwrap();
    replicate(options(&src, "vm", &t)).await.unwrap();
    let undo_dir = t.repo.replica_dir("vm").unwrap().join("undo");
    let j = std::fs::read_dir(&undo_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let raw = std::fs::read(&j).unwrap();
    assert!(raw.len() > MIB, "journal holds the overwritten blocks");
    assert!(
        !raw.windows(12).any(|w| w == b"SECRET-BLOCK"),
        "journal is not encrypted"
    );
    let out = dir.path().join("p1.raw");
    t.repo.export("vm", 1, &out).unwrap();
    qemu_img_compare(&v1, &out);
    assert!(Repository::open(&repo_dir, None).is_err());
    let other = Key::generate(&dir.path().join("other")).unwrap();
    assert!(Repository::open(&repo_dir, Some(other)).is_err());
}
