//! The backend the suite runs on, chosen by the environment, and Redis servers of a test's
//! own for the tests that stop, pause or kill them.
//!
//! `PRESENCE_TEST_BACKEND` is `memory` (or unset), `redis` (a standalone server) or
//! `redis-cluster`; `PRESENCE_TEST_REDIS_URL` is that server, or any node of the cluster
//! (default `redis://127.0.0.1:7100` and `redis://127.0.0.1:7101`, the ports of
//! `bash .ci/redis start`). Every app a test starts gets a key prefix of its own, so tests
//! running at once on one Redis never see each other's users.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use presence_server::config::Backend;
use presence_server::Settings;

pub const BACKEND_VAR: &str = "PRESENCE_TEST_BACKEND";
pub const URL_VAR: &str = "PRESENCE_TEST_REDIS_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Memory,
    Standalone,
    Cluster,
}

/// The backend chosen by `PRESENCE_TEST_BACKEND`; an unknown value fails the test rather
/// than quietly running on memory.
pub fn backend() -> TestBackend {
    match std::env::var(BACKEND_VAR).unwrap_or_default().as_str() {
        "" | "memory" => TestBackend::Memory,
        "redis" => TestBackend::Standalone,
        "redis-cluster" => TestBackend::Cluster,
        other => panic!("{BACKEND_VAR}={other:?}: expected memory, redis or redis-cluster"),
    }
}

pub fn on_redis() -> bool {
    backend() != TestBackend::Memory
}

/// The shared Redis of this run: the URL of the server or of one cluster node.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        match backend() {
            TestBackend::Cluster => "redis://127.0.0.1:7101",
            _ => "redis://127.0.0.1:7100",
        }
        .to_owned()
    })
}

/// A key prefix no other app of this run or of an earlier run on the same Redis has.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{}-{started}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Points `settings` at the backend of this run, with a fresh key prefix.
pub fn apply(settings: &mut Settings) {
    if !on_redis() {
        return;
    }
    settings.store.backend = Backend::Redis;
    settings.redis.url = url();
    settings.redis.cluster = backend() == TestBackend::Cluster;
    settings.redis.key_prefix = unique_prefix();
    // Each app connects on its first request, while the rest of the suite runs beside it:
    // a roomy timeout keeps a slow connection on a busy machine from reading as an outage.
    // The tests about the timeout set their own.
    settings.redis.timeout = SUITE_TIMEOUT;
}

/// `redis.timeout` of the suite's apps on Redis.
pub const SUITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The same for a child process, as `PRESENCE__` environment overrides.
pub fn apply_env(cmd: &mut Command) {
    if !on_redis() {
        return;
    }
    cmd.env("PRESENCE__STORE__BACKEND", "redis")
        .env("PRESENCE__REDIS__URL", url())
        .env(
            "PRESENCE__REDIS__CLUSTER",
            (backend() == TestBackend::Cluster).to_string(),
        )
        .env("PRESENCE__REDIS__KEY_PREFIX", unique_prefix())
        .env("PRESENCE__REDIS__TIMEOUT", "5s");
}

/// Whether a test that only applies to the memory backend must be skipped on this run;
/// says so, with the reason, on the test's output (`cargo test -- --nocapture` shows it).
pub fn skip_unless_memory(reason: &str) -> bool {
    if on_redis() {
        eprintln!("skipped on {:?}: {reason}", backend());
        return true;
    }
    false
}

/// Whether a Redis-only test must be skipped on this run (memory backend).
pub fn skip_unless_redis(test: &str) -> bool {
    if !on_redis() {
        eprintln!(
            "skipped: {test} needs {BACKEND_VAR}=redis or redis-cluster (bash .ci/redis start)"
        );
        return true;
    }
    false
}

/// `host:port` of a `redis://host:port` URL.
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    let rest = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let (host, port) = rest.rsplit_once(':').expect("a port in the Redis URL");
    (host.to_owned(), port.parse().unwrap())
}

/// Runs `redis-cli -p PORT args...` and returns its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs (bash .ci/redis start installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ports of the cluster's masters, or the one port of a standalone server.
pub fn master_ports(port: u16, cluster: bool) -> Vec<u16> {
    if !cluster {
        return vec![port];
    }
    cli(port, &["cluster", "nodes"])
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|f| f.contains("master"))
        })
        .filter(|l| !l.contains("fail"))
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?;
            let hp = addr.split('@').next()?;
            hp.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

/// Every key that starts with `prefix`, over all masters.
pub fn keys_with_prefix(port: u16, cluster: bool, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}*");
    master_ports(port, cluster)
        .into_iter()
        .flat_map(|p| {
            cli(p, &["--scan", "--pattern", &pattern])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A loopback port that is free now, and whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics after `within` naming `what`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `binary --version` runs: a test that starts a `redis-server` of its own checks
/// this first, says it is skipped where the server is not installed, and fails under CI,
/// which installs it (`.ci/redis`).
pub fn installed_or_skip(binary: &Path) -> bool {
    let installed = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed: bash .ci/redis start installs it"
        );
        eprintln!(
            "skipped: redis-server is not installed (bash .ci/redis start, or \
             apt-get install redis-server, installs it)"
        );
    }
    installed
}

/// A redis-server of the test's own on a free loopback port, killed when dropped.
pub struct OwnServer {
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    /// A standalone server, no persistence.
    pub fn standalone(dir: &Path) -> Self {
        Self::start(dir, &[])
    }

    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port and folder (a stopped cluster node rejoins from
    /// its nodes.conf) and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (bash .ci/redis start installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            cli(port, &["ping"]).trim() == "PONG"
        });
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of the test's own: 3 masters, 3 replicas, node timeout 1 s.
pub struct OwnCluster {
    pub nodes: Vec<OwnServer>,
}

impl OwnCluster {
    pub fn start(dir: &Path) -> Self {
        let nodes: Vec<OwnServer> = (0..6)
            .map(|_| {
                OwnServer::start(
                    dir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        // A replica may take over however long ago it last heard its master.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        // Every replica has its master's data, so that any master can fail over.
        wait_until(Duration::from_secs(30), "replicas in sync", || {
            cluster.nodes.iter().all(|n| {
                let info = cli(n.port, &["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        cluster
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Waits until every running node says `cluster_state:ok` and sees 3 masters serving
    /// all 16384 slots.
    pub fn wait_ok(&self) {
        wait_until(Duration::from_secs(30), "cluster_state:ok", || {
            self.nodes.iter().filter(|n| n.running()).all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            })
        });
    }

    /// Waits until every running node marks node `victim` as failed and the cluster is
    /// whole again, its slots taken over by a promoted replica.
    pub fn wait_failed_over(&self, victim: usize) {
        let addr = format!("127.0.0.1:{}@", self.nodes[victim].port);
        wait_until(
            Duration::from_secs(30),
            "the dead master marked fail",
            || {
                self.nodes.iter().filter(|n| n.running()).all(|n| {
                    cli(n.port, &["cluster", "nodes"]).lines().any(|l| {
                        l.contains(&addr)
                            && l.split_whitespace()
                                .nth(2)
                                .is_some_and(|f| f.split(',').any(|f| f == "fail"))
                    })
                })
            },
        );
        self.wait_ok();
    }

    /// Waits until node `index`, restarted, has rejoined as a replica and the cluster is ok.
    pub fn wait_rejoined(&self, index: usize) {
        let port = self.nodes[index].port;
        wait_until(
            Duration::from_secs(30),
            "the old master rejoined as a replica",
            || {
                cli(port, &["cluster", "nodes"])
                    .lines()
                    .any(|l| l.contains("myself,slave") && l.contains(" connected"))
            },
        );
        self.wait_ok();
    }

    /// The index of a running node that is a master now.
    pub fn a_master(&self) -> usize {
        let live = self.nodes.iter().find(|n| n.running()).unwrap().port;
        let masters = master_ports(live, true);
        self.nodes
            .iter()
            .position(|n| n.running() && masters.contains(&n.port))
            .expect("a master")
    }
}

/// Waits until presence `b` hears what presence `a` publishes about users of `n`'s shard
/// (on a cluster, one shard channel serves them all): heartbeats of `n` through `a` until a
/// watcher on `b` sees one. Leaves no watcher behind.
pub async fn wait_subscribed(
    a: &presence_server::presence::Presence,
    b: &presence_server::presence::Presence,
    n: u64,
) {
    use presence_server::presence::model::AppReport;
    use presence_server::presence::{Heartbeat, PlaceCatalog, UserId};
    let user = UserId::new(n).unwrap();
    let catalog = PlaceCatalog::new(&[]);
    let mut warm = b.hub().subscribe();
    warm.add(&[user]);
    for i in 0.. {
        assert!(i < 100, "node b never received a change");
        let location = format!("warm-up {i}");
        let report = AppReport {
            location: Some(&location),
            ..Default::default()
        };
        a.heartbeat(user, Heartbeat::from_report(report, &catalog))
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(200), warm.next_batch())
            .await
            .is_ok()
        {
            break;
        }
    }
    // Anything still in flight for it lands before the test's own watchers start.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
