//! The `rate-limiter` binary as a child process: a clean environment, its
//! log lines, its port.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{RedisServer, TempDir};

/// The binary, run in an empty directory (so no developer's `.env` is read)
/// with a clean environment plus `vars`.
pub fn binary(dir: &TempDir, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rate-limiter"));
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// The binary serving on a free loopback port with one worker, against
/// `redis`, with `extra` settings; its log on stderr, piped.
pub fn serve(dir: &TempDir, redis: &RedisServer, extra: &[(&str, &str)]) -> Served {
    let url = redis.url();
    let mut vars = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("GRPC_PORT", "0"),
        ("WORKERS", "1"),
        ("REDIS_URL", url.as_str()),
        // Generous: the test machine is shared (see support::settings).
        ("REDIS_TIMEOUT_MS", "1000"),
    ];
    vars.extend_from_slice(extra);
    binary(dir, &vars)
        .stderr(Stdio::piped())
        .spawn()
        .map(Served)
        .expect("start the binary")
}

/// A running binary, killed when dropped: a test that fails midway leaves
/// no process behind (one that kept the test's output open would hang the
/// runner).
pub struct Served(pub std::process::Child);

impl std::ops::Deref for Served {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &std::process::Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// The child's stderr, line by line, from a reader thread.
pub fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The port from the start-up line ("listening on 127.0.0.1:PORT").
pub fn wait_for_port(lines: &std::sync::mpsc::Receiver<String>) -> u16 {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a start-up line");
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            return digits.parse().unwrap();
        }
    }
}
