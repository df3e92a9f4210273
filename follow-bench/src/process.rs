//! Process control, for every mode: the `follow-service` processes (and the drill's `redis-server`) the
//! benchmark starts, waits for, measures, stops or kills, and the facts about this process they inherit.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::load;

/// A child process: its command, environment and log are kept, so that it can be started again after a
/// kill (the drill does). Killed when dropped.
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    /// Whether each start appends to the log (the drill's restarts) rather than starting it afresh.
    append: bool,
    child: Option<Child>,
}

impl Process {
    /// `program args…`, its stdout and stderr into `log`; not started yet.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            log: log.into(),
            append: false,
            child: None,
        }
    }

    /// Sets `key` in its environment (a later setting of the same key wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Each start appends to the log instead of truncating it.
    pub fn appending_log(mut self) -> Self {
        self.append = true;
        self
    }

    /// Starts it (again, after a kill).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append)
            .truncate(!self.append)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.program.display()))?,
        );
        Ok(())
    }

    /// SIGKILL: no graceful shutdown, as a crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// A `/proc/<pid>/status` figure (`VmRSS`, `VmHWM`) in MiB, while it runs.
    pub fn memory_mib(&self, field: &str) -> Option<f64> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

/// How to start one `follow-service` child (`serve`, or `worker`).
pub struct ServeSettings<'a> {
    pub database_url: &'a str,
    pub redis_url: &'a str,
    pub listen: SocketAddr,
    pub redis_prefix: &'a str,
    pub secret: &'a str,
    /// Where its stdout and stderr go.
    pub log: &'a Path,
    /// `--server-env` pairs, KEY=VALUE, set last (so they override the settings above).
    pub extra_env: &'a [String],
}

impl ServeSettings<'_> {
    /// `binary role` with these settings, not started yet; logs at `warn` unless `BENCH_SERVER_LOG`
    /// (or a `RUST_LOG` pair of `extra_env`) says otherwise.
    pub fn process(&self, binary: &Path, role: &str) -> anyhow::Result<Process> {
        let mut process = Process::new(binary, [role], self.log)
            .env("DATABASE_URL", self.database_url)
            .env("REDIS_URL", self.redis_url)
            .env("FOLLOW_LISTEN", self.listen.to_string())
            .env("FOLLOW_REDIS_PREFIX", self.redis_prefix)
            .env("FOLLOW_JWT_SECRET", self.secret)
            // Thousands of requests a second from one address: a load test is not a client to limit.
            // Reports say so; `--server-env FOLLOW_RATE_LIMIT=on` measures with the limits.
            .env("FOLLOW_RATE_LIMIT", "off")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            );
        for pair in self.extra_env {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--server-env {pair:?} is not KEY=VALUE"))?;
            process = process.env(key, value);
        }
        Ok(process)
    }
}

/// The service under test: started here, or already running elsewhere.
pub struct Server {
    addr: SocketAddr,
    /// `None`: a server this process did not start (`--url`).
    process: Option<Process>,
}

impl Server {
    /// Starts `binary serve` with `settings`.
    pub fn spawn(binary: &Path, settings: ServeSettings<'_>) -> anyhow::Result<Self> {
        let mut process = settings.process(binary, "serve")?;
        process.start()?;
        Ok(Self {
            addr: settings.listen,
            process: Some(process),
        })
    }

    /// [`Server::spawn`], saying where it listens and logs.
    pub fn spawn_announced(binary: &Path, settings: ServeSettings<'_>) -> anyhow::Result<Self> {
        let log = settings.log.to_owned();
        let server = Self::spawn(binary, settings)?;
        println!(
            "started {} on {} (log: {})",
            binary.display(),
            server.addr,
            log.display()
        );
        Ok(server)
    }

    /// The server already running at `addr`.
    pub fn external(addr: SocketAddr) -> Self {
        Self {
            addr,
            process: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `/proc/<pid>/status` figure of the server (`VmRSS`, `VmHWM`) in MiB, when this process
    /// started it.
    pub fn memory_mib(&self, field: &str) -> Option<f64> {
        self.process.as_ref()?.memory_mib(field)
    }

    /// The server's peak resident memory (VmHWM), when this process started it.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmHWM")
    }

    /// Stops it gracefully, when this process started it.
    pub async fn stop(&mut self) {
        if let Some(process) = &mut self.process {
            process.stop().await;
        }
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A free address on 127.0.0.1 for a server to listen on.
pub fn free_local_addr() -> anyhow::Result<SocketAddr> {
    Ok(([127, 0, 0, 1], free_port()?).into())
}

/// The `follow-service` binary beside this one; when run through cargo and it is missing, build it.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .context("the benchmark binary has no directory")?;
    let binary = dir.join("follow-service");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").context(
            "follow-service is not built beside follow-bench; run `cargo build --release --workspace --bins`",
        )?;
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut build = std::process::Command::new(cargo);
        // `-p`: the workspace's other member when run from follow-bench/.
        build.args(["build", "-p", "follow-service", "--bin", "follow-service"]);
        if release {
            build.arg("--release");
        }
        anyhow::ensure!(build.status()?.success(), "building follow-service failed");
    }
    Ok(binary)
}

/// Waits (up to 60 s) until `/healthz` answers 200.
pub async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    wait_for(
        addr,
        "/healthz",
        Duration::from_secs(60),
        Duration::from_millis(100),
    )
    .await
}

/// Waits (up to 60 s) until `/readyz` answers 200: the server's start-up cache warm-up is over.
pub async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    wait_for(
        addr,
        "/readyz",
        Duration::from_secs(60),
        Duration::from_millis(100),
    )
    .await
}

/// Polls `path` every `every` until it answers 200, for at most `limit`.
pub async fn wait_for(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let since = Instant::now();
    while since.elapsed() < limit {
        if load::get(addr, path).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
    bail!(
        "the server at {addr} did not answer {path} within {:.0} s",
        limit.as_secs_f64()
    )
}

/// The address of a `--url` (`http://host:port/…`).
pub fn parse_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.trim_start_matches("http://").trim_end_matches('/');
    let host_port = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {url}"))
}

/// This process's soft limit of open files (the servers it starts inherit it), when Linux says.
pub fn open_file_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}
