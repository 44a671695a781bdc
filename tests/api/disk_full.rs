//! SQLite on a small filesystem that fills up: writes fail with
//! RESOURCE_EXHAUSTED (`STORAGE_FULL`) or UNAVAILABLE, nothing acknowledged
//! is lost, the database stays intact, and writes succeed again once space
//! is freed. Needs root to mount a tmpfs; says loudly when it cannot.

use std::{io::Write, path::PathBuf, process::Command};

use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::{
    helpers::{TestApp, reason},
    remove_connection::{outbox_events, remove},
};

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self { dir }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs for the disk-full test: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(err) => {
                eprintln!("skipped: cannot run mount for the disk-full test: {err}");
                None
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem with a ballast file; returns it (delete to free).
fn fill(disk: &SmallDisk) -> PathBuf {
    let ballast = disk.path("ballast");
    let mut file = std::fs::File::create(&ballast).expect("ballast");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    ballast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount("8m") else {
        return;
    };
    let url = format!("sqlite://{}?mode=rwc", disk.path("test.db").display());
    let app = TestApp::spawn_on(&url, |_| {}).await;
    const ACCOUNTS: usize = 40;
    app.create_site("3_a", 1).await;
    for n in 0..ACCOUNTS {
        let uid = format!("u{n}");
        app.create_account("3_a", &uid, &[(&format!("{uid}@x.com"), true)])
            .await;
        app.link("3_a", &uid, "facebook", "", &format!("fb-{n}"), None)
            .await;
    }

    let ballast = fill(&disk);
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for n in 0..ACCOUNTS {
        let uid = format!("u{n}");
        match app
            .connections()
            .remove_connection(remove(&uid, Some("facebook")))
            .await
        {
            Ok(response) => acknowledged.push((uid, response.into_inner().call_id)),
            Err(status) => {
                match (status.code(), reason(&status).as_str()) {
                    (Code::ResourceExhausted, "STORAGE_FULL")
                    | (Code::Unavailable, "DATABASE_UNAVAILABLE") => {}
                    other => panic!("{uid}: {other:?} {status:?}"),
                }
                refused.push(uid);
            }
        }
    }
    eprintln!(
        "disk full: {} removals acknowledged, {} refused",
        acknowledged.len(),
        refused.len()
    );
    assert!(!refused.is_empty(), "the disk never filled up");

    std::fs::remove_file(&ballast).expect("free space");
    let check = sea_orm::Database::connect(url.as_str())
        .await
        .expect("open the database");
    let integrity = check
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA integrity_check",
        ))
        .await
        .expect("integrity check")
        .expect("a row");
    let verdict: String = integrity.try_get_by_index(0).expect("verdict");
    assert_eq!(verdict, "ok");
    check.close().await.expect("close");

    // Writes work again, including for the accounts that were refused (the
    // first may still meet a connection that is releasing a failed
    // transaction's lock: a client retries UNAVAILABLE).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let first = &refused[0];
    while let Err(status) = app
        .connections()
        .remove_connection(remove(first, Some("facebook")))
        .await
    {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for uid in &refused[1..] {
        let account = app.account("3_a", uid).await;
        assert_eq!(account.identities.len(), 1, "{uid} was refused: unchanged");
        app.connections()
            .remove_connection(remove(uid, Some("facebook")))
            .await
            .expect("space is back");
    }
    // Everything acknowledged is there, with its event.
    let events = outbox_events(&app).await;
    for (uid, call_id) in &acknowledged {
        let account = app.account("3_a", uid).await;
        assert!(
            account.identities.is_empty(),
            "{uid} was acknowledged ({call_id}), has event: {}: {account:?}",
            events.iter().any(|e| &e.call_id == call_id)
        );
        assert!(
            events.iter().any(|e| &e.call_id == call_id),
            "{uid}: its event"
        );
    }
    assert_eq!(events.len(), ACCOUNTS, "one event per removal");
}
