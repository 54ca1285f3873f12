//! The clap front ends, as the `haven` binary will wire them: argument parsing and
//! an end-to-end run of `target`, `replicate` and `replica list|points|export|verify`.

mod common;

use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use common::*;
use haven_transport::cli::{self, ReplicaArgs, ReplicateArgs, TargetArgs};

#[derive(Parser)]
struct Haven {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Target(TargetArgs),
    Replicate(ReplicateArgs),
    Replica(ReplicaArgs),
}

fn parse(args: &[&str]) -> Command {
    Haven::try_parse_from(std::iter::once("haven").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command
}

#[test]
fn arguments_parse() {
    Haven::command().debug_assert();
    let Command::Replicate(r) = parse(&[
        "replicate",
        "disk.qcow2",
        "--to",
        "a:1,b:2",
        "--replica",
        "vm",
        "--pin",
        "c.pem",
        "--bwlimit",
        "20M",
        "--zstd-level",
        "3",
        "--cbt",
        "x.txt",
    ]) else {
        panic!()
    };
    assert_eq!(r.to, vec!["a:1", "b:2"]);
    assert_eq!(r.bwlimit, Some(20 << 20));
    assert!(
        Haven::try_parse_from(["haven", "replicate", "d", "--to", "a:1", "--replica", "v"])
            .is_err()
    );
    let Command::Target(t) = parse(&[
        "target",
        "--repo",
        "r",
        "--self-signed",
        "--keep-points",
        "7",
        "--max-age",
        "30d",
        "--rpo",
        "15m",
    ]) else {
        panic!()
    };
    assert_eq!(t.max_age, Some(Duration::from_secs(30 * 86400)));
    assert!(matches!(
        parse(&["replica", "--repo", "r", "export", "vm", "3", "out.raw"]),
        Command::Replica(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_the_cli_handlers() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("disk.raw");
    mixed_image(&src, 4 << 20, 3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let Command::Target(t) = parse(&[
        "target",
        "--listen",
        &listen,
        "--repo",
        repo.to_str().unwrap(),
        "--self-signed",
        "--rpo",
        "1h",
    ]) else {
        panic!()
    };
    let server = tokio::spawn(cli::run_target(t));
    let cert = repo.join("target-cert.pem");
    for _ in 0..100 {
        if cert.exists() && std::net::TcpStream::connect(&listen).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Command::Replicate(r) = parse(&[
        "replicate",
        src.to_str().unwrap(),
        "--to",
        &listen,
        "--replica",
        "vm",
        "--pin",
        cert.to_str().unwrap(),
    ]) else {
        panic!()
    };
    cli::run_replicate(r).await.unwrap();
    let rp = repo.to_str().unwrap();
    for args in [
        vec!["replica", "--repo", rp, "list"],
        vec!["replica", "--repo", rp, "points", "vm"],
        vec!["replica", "--repo", rp, "verify", "vm"],
    ] {
        let Command::Replica(a) = parse(&args) else {
            panic!()
        };
        cli::run_replica(a).await.unwrap();
    }
    let out = dir.path().join("out.raw");
    let Command::Replica(a) = parse(&[
        "replica",
        "--repo",
        rp,
        "export",
        "vm",
        "1",
        out.to_str().unwrap(),
    ]) else {
        panic!()
    };
    cli::run_replica(a).await.unwrap();
    qemu_img_compare(&src, &out);
    server.abort();
}
