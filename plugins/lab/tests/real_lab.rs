//! The connector, run natively, against the real lab server started in-process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use haven_lab::requests::{FailFault, HostLossFault, SeedRequest};
use haven_lab::{api, Lab as LabServer, LabConfig};
use haven_plugin_lab::{Lab, GRANTED_DIR};
use haven_plugin_sdk::harness::{settings, TestHost};
use haven_plugin_sdk::types::*;
use haven_plugin_sdk::{Compute, Connector, DiskAccess, Inventory, Jobs, VmSnapshots};

struct Running {
    url: String,
    dir: tempfile::TempDir,
    lab: LabServer,
    rt: tokio::runtime::Runtime,
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = LabConfig::new(dir.path(), "s3cret");
    config.op_delay_ms = 10;
    config.boot_delay_ms = 300;
    let (lab, url) = rt.block_on(async {
        let lab = LabServer::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(api::serve(lab.clone(), listener, std::future::pending()));
        (lab, url)
    });
    Running { url, dir, lab, rt }
}

impl Running {
    fn configure(&self, site: &str) {
        Lab::configure(settings(&[("endpoint", &self.url), ("site", site)])).unwrap();
    }

    fn file(&self, location: &DiskLocation) -> PathBuf {
        match location {
            DiskLocation::File(f) => {
                assert_eq!(f.granted_dir, GRANTED_DIR);
                assert_eq!(f.format, "raw");
                self.dir.path().join(&f.path)
            }
            other => panic!("not a file: {other:?}"),
        }
    }
}

/// Polls a job to its end.
fn wait(started: haven_plugin_sdk::Result<Started>) -> JobStatus {
    let job = match started.unwrap() {
        Started::Job(job) => job,
        Started::Done => return JobStatus::Succeeded(None),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Lab::poll(job.clone()).unwrap() {
            JobStatus::Running(p) => assert!(p.percent.unwrap_or(0) < 100),
            done => return done,
        }
        assert!(Instant::now() < deadline, "job {job} never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn succeeded(status: JobStatus) -> Option<String> {
    match status {
        JobStatus::Succeeded(result) => result,
        other => panic!("job did not succeed: {other:?}"),
    }
}

#[test]
fn recovers_a_vm_from_a_replica_image_end_to_end() {
    let lab = start();
    TestHost::install().secret("token", "s3cret");
    lab.configure("dr");
    let checks = Lab::check().unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");

    // The transport would write the replica through this descriptor.
    let target = Lab::open_target("web-replica".into(), 4 << 20).unwrap();
    assert!(target.writable);
    let image = lab.file(&target.location);
    let bytes: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &bytes).unwrap();

    let spec = VmSpec {
        name: "web-1".into(),
        cpus: 2,
        memory_mib: 2048,
        guest_os: "linux".into(),
        location: "dr/dr-host-2".into(),
        disks: vec![DiskSpec {
            location: target.location.clone(),
            capacity_bytes: 4 << 20,
        }],
        nics: vec![NicSpec {
            network: "dr-net".into(),
            mac: Some("02:00:00:00:00:01".into()),
            ip: Some(IpSettings {
                address: "10.2.0.15/24".into(),
                gateway: Some("10.2.0.1".into()),
                dns_servers: vec!["10.2.0.2".into()],
            }),
        }],
    };
    let id = succeeded(wait(Lab::create_vm(spec.clone()))).unwrap();
    // A second VM cannot take the same name.
    assert!(matches!(Lab::create_vm(spec), Err(Error::Conflict(_))));

    let vms = Lab::list_vms().unwrap();
    assert_eq!(vms.len(), 1);
    let vm = Lab::get_vm(id.clone()).unwrap();
    assert_eq!(vm.location, "dr/dr-host-2");
    assert_eq!(vm.power_state, PowerState::PoweredOff);
    assert_eq!(vm.nics[0].ips, ["10.2.0.15"]);
    assert_eq!(vm.nics[0].mac.as_deref(), Some("02:00:00:00:00:01"));
    let networks = Lab::list_networks().unwrap();
    assert!(networks.iter().any(|n| n.id == "dr-test" && n.isolated));

    // Power on; the heartbeat comes after the boot delay.
    succeeded(wait(Lab::power_on(id.clone())));
    assert_eq!(Lab::guest_heartbeat(id.clone()).unwrap(), Heartbeat::None);
    assert!(matches!(Lab::power_on(id.clone()), Err(Error::Conflict(_))));
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(Lab::guest_heartbeat(id.clone()).unwrap(), Heartbeat::Ok);

    // Drill network mapping and re-IP.
    let bad = Lab::reconfigure_nics(
        id.clone(),
        vec![NicSpec {
            network: "prod-net".into(),
            mac: None,
            ip: None,
        }],
    );
    assert!(matches!(bad, Err(Error::InvalidInput(i)) if i.field == "nics.0.network"));
    succeeded(wait(Lab::reconfigure_nics(
        id.clone(),
        vec![NicSpec {
            network: "dr-test".into(),
            mac: None,
            ip: Some(IpSettings {
                address: "192.168.50.15/24".into(),
                gateway: None,
                dns_servers: vec![],
            }),
        }],
    )));
    let vm = Lab::get_vm(id.clone()).unwrap();
    assert_eq!(vm.nics[0].network, "dr-test");
    assert_eq!(vm.nics[0].ips, ["192.168.50.15"]);

    // Snapshots, and the disk bytes at a snapshot.
    let snap = succeeded(wait(Lab::create_snapshot(id.clone(), "pre".into(), true))).unwrap();
    let snaps = Lab::list_snapshots(id.clone()).unwrap();
    assert_eq!(
        (snaps[0].id.as_str(), snaps[0].quiesced),
        (snap.as_str(), true)
    );
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let at_snap = Lab::open_disk(id.clone(), "disk-0".into(), Some(snap.clone())).unwrap();
    assert!(!at_snap.writable);
    assert_eq!(at_snap.capacity_bytes, 4 << 20);
    assert_eq!(std::fs::read(lab.file(&at_snap.location)).unwrap(), bytes);
    let now = Lab::open_disk(id.clone(), "disk-0".into(), None).unwrap();
    assert_eq!(lab.file(&now.location), image);
    let changes = Lab::changed_extents(now.session.clone(), None).unwrap();
    let mapped: u64 = changes.extents.iter().map(|x| x.length).sum();
    assert_eq!(mapped, 4 << 20, "written zeros are allocated: {changes:?}");
    assert_eq!(changes.change_id, haven_plugin_lab::ALLOCATED);
    let at_snap_changes = Lab::changed_extents(at_snap.session.clone(), None).unwrap();
    let mapped: u64 = at_snap_changes.extents.iter().map(|x| x.length).sum();
    assert_eq!(mapped, 4 << 20, "{at_snap_changes:?}");
    assert!(matches!(
        Lab::changed_extents("image/web-replica".into(), None),
        Err(Error::InvalidInput(_))
    ));
    Lab::close_disk(now.session).unwrap();
    assert!(matches!(
        Lab::open_disk(id.clone(), "disk-9".into(), None),
        Err(Error::NotFound(_))
    ));
    succeeded(wait(Lab::revert_snapshot(id.clone(), snap.clone())));
    assert_eq!(std::fs::read(&image).unwrap(), bytes);
    succeeded(wait(Lab::delete_snapshot(id.clone(), snap)));

    // Cleanup after the drill (revert left the VM off).
    assert_eq!(
        Lab::get_vm(id.clone()).unwrap().power_state,
        PowerState::PoweredOff
    );
    succeeded(wait(Lab::power_on(id.clone())));
    assert!(matches!(
        Lab::delete_vm(id.clone()),
        Err(Error::Conflict(_))
    ));
    succeeded(wait(Lab::power_off(id.clone(), StopMode::Hard)));
    succeeded(wait(Lab::delete_vm(id.clone())));
    assert!(matches!(Lab::get_vm(id), Err(Error::NotFound(_))));
    // The registered replica image stays.
    assert!(image.exists());
}

#[test]
fn inventory_by_tags_and_typed_faults() {
    let lab = start();
    let ids = lab.rt.block_on(async {
        lab.lab
            .seed(SeedRequest {
                site: "prod".into(),
                count: 40,
                groups: 4,
                name_prefix: Some("app".into()),
                disk_size_bytes: None,
                tags: vec!["tier=web".into()],
                power_on: false,
                boot_delay_ms: Some(0),
            })
            .await
            .unwrap()
            .vms
    });
    TestHost::install().secret("token", "s3cret");
    lab.configure("prod");
    let found = Lab::find_vms(TagSelector {
        all_of: vec![
            Tag {
                key: "group".into(),
                value: "g02".into(),
            },
            Tag {
                key: "tier".into(),
                value: String::new(),
            },
        ],
    })
    .unwrap();
    assert_eq!(found.len(), 10);
    assert!(found.iter().all(|v| v.name.starts_with("app-g02-")));
    // A fresh sparse disk has nothing allocated: the transport reads nothing.
    let fresh = Lab::open_disk(ids[1].clone(), "disk-0".into(), None).unwrap();
    assert_eq!(fresh.capacity_bytes, 1 << 20);
    let changes = Lab::changed_extents(fresh.session, Some("earlier".into())).unwrap();
    assert!(changes.extents.is_empty(), "{changes:?}");

    // A VM of another site is not this instance's.
    lab.configure("dr");
    assert!(matches!(
        Lab::get_vm(ids[0].clone()),
        Err(Error::NotFound(_))
    ));
    assert!(Lab::list_vms().unwrap().is_empty());
    lab.configure("prod");

    // An injected failure reaches the job as a typed error.
    lab.rt
        .block_on(lab.lab.fail_next(FailFault {
            vm: Some(ids[0].clone()),
            op: None,
            count: 1,
            code: Some("unavailable".into()),
        }))
        .unwrap();
    assert!(matches!(
        wait(Lab::power_on(ids[0].clone())),
        JobStatus::Failed(Error::Transient(_))
    ));
    succeeded(wait(Lab::power_on(ids[0].clone())));
    assert_eq!(Lab::guest_heartbeat(ids[0].clone()).unwrap(), Heartbeat::Ok);

    // Cancel a job.
    let Started::Job(job) = Lab::power_off(ids[0].clone(), StopMode::Graceful).unwrap() else {
        panic!("expected a job")
    };
    Lab::cancel(job.clone()).unwrap();
    assert!(matches!(
        Lab::poll(job.clone()),
        Ok(JobStatus::Failed(Error::Other(_)))
    ));
    Lab::cancel(job).unwrap();

    // Host loss: VMs off, operations transient.
    lab.rt
        .block_on(lab.lab.set_host_loss(HostLossFault {
            site: "prod".into(),
            down: true,
        }))
        .unwrap();
    assert_eq!(
        Lab::get_vm(ids[0].clone()).unwrap().power_state,
        PowerState::PoweredOff
    );
    assert_eq!(
        Lab::guest_heartbeat(ids[0].clone()).unwrap(),
        Heartbeat::None
    );
    match Lab::power_on(ids[0].clone()) {
        Err(Error::Transient(t)) => assert_eq!(t.retry_after_ms, Some(5000)),
        other => panic!("{other:?}"),
    }

    // A wrong token: typed auth error, and `check` says so.
    TestHost::install().secret("token", "wrong");
    lab.configure("prod");
    assert!(matches!(Lab::list_vms(), Err(Error::Auth(_))));
    let checks = Lab::check().unwrap();
    assert!(checks[0].ok && !checks[1].ok, "{checks:?}");
    // No lab at all: `check` reports it unreachable.
    Lab::configure(settings(&[
        ("endpoint", "http://127.0.0.1:9"),
        ("site", "prod"),
    ]))
    .unwrap();
    let checks = Lab::check().unwrap();
    assert!(!checks[0].ok, "{checks:?}");
}
