//! The command check: runs a program from an argv list (no shell, so nothing in it is
//! interpreted), in its own process group, with stdin closed. Exit 0 is healthy, exit codes
//! listed in `degraded_exit_codes` are degraded, anything else is unhealthy. Output is captured
//! up to a bound and its first line goes into the detail. When the check times out the whole
//! process group is killed, so children the program started do not linger.

use super::{error_chain, Probe, Value};
use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of stdout and of stderr kept; the rest is read and thrown away.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// `[checks.command]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    /// The program and its arguments, `["/usr/lib/nagios/plugins/check_disk", "-w", "10%"]`.
    /// The program is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Exit codes that mean degraded (for Nagios-style plugins: `[1]`).
    #[serde(default)]
    pub degraded_exit_codes: Vec<i32>,
    /// Working directory (default: the agent's).
    pub working_dir: Option<PathBuf>,
}

impl CommandCheck {
    pub(super) fn validate(&self) -> Result<(), String> {
        match self.argv.first() {
            None => Err("command.argv must name a program".into()),
            Some(p) if p.is_empty() => Err("command.argv[0] is empty".into()),
            Some(_) if self.argv.iter().any(|a| a.contains('\0')) => {
                Err("command.argv holds a NUL byte".into())
            }
            Some(_) => {
                if self.degraded_exit_codes.contains(&0) {
                    return Err("command.degraded_exit_codes must not hold 0 (success)".into());
                }
                Ok(())
            }
        }
    }

    pub(super) async fn probe(&self) -> Probe {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(error) => {
                return Probe::unhealthy(format!(
                    "starting {:?}: {}",
                    self.argv[0],
                    error_chain(&error)
                ))
            }
        };
        // Kills the group if this future is dropped (timeout or shutdown) before it is disarmed.
        let mut group = GroupGuard(child.id().map(|pid| pid as i32));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (out, err, status) =
            tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
        group.0 = None;
        let status = match status {
            Ok(s) => s,
            Err(error) => return Probe::unhealthy(format!("waiting for the command: {error}")),
        };
        let output = first_line(&out)
            .or_else(|| first_line(&err))
            .unwrap_or_default();
        let shown = if output.is_empty() {
            String::new()
        } else {
            format!(": {output}")
        };
        match status.code() {
            Some(code) => {
                let state = judge_exit(code, &self.degraded_exit_codes);
                Probe {
                    status: state,
                    detail: format!("exit {code}{shown}"),
                    values: vec![Value::new(
                        "fleetwatch_check_command_exit_code",
                        f64::from(code),
                    )],
                }
            }
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or(0);
                Probe::unhealthy(format!("killed by signal {signal}{shown}"))
            }
        }
    }
}

/// The status an exit code earns.
pub(super) fn judge_exit(code: i32, degraded: &[i32]) -> CheckStatus {
    if code == 0 {
        CheckStatus::Healthy
    } else if degraded.contains(&code) {
        CheckStatus::Degraded
    } else {
        CheckStatus::Unhealthy
    }
}

/// The first non-empty line of captured output, trimmed, at most 200 characters.
pub(super) fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(200).collect())
}

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT_BYTES`].
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Sends SIGKILL to a process group when dropped while armed.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|p| *p > 0) {
            // SAFETY: kill(2) with a negative pid signals the process group `pgid`, which is the
            // child's own group (process_group(0)) and still exists while the child is unreaped.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}
