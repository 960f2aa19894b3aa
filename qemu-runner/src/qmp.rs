//! A minimal QMP (QEMU Machine Protocol) client over a Unix socket: the greeting, capability
//! negotiation, and commands with their replies. Asynchronous events are skipped.
//!
//! The protocol needs a few JSON lines; a full QAPI binding would be far more than the runner
//! uses (`quit`, `query-status`, later `screendump` and migration).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU said something that is not QMP, or closed the connection.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// The command failed.
    #[error("QMP command `{command}` failed: {message}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error description.
        message: String,
    },
    /// No answer in time.
    #[error("QMP timed out waiting for {0}")]
    Timeout(String),
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Longest QMP line accepted (a reply is small; a screendump goes to a file, not the socket).
const MAX_LINE: usize = 1 << 20;

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities, all within `limit`.
    pub async fn connect(path: &Path, limit: Duration) -> Result<Self, QmpError> {
        let p = path.display().to_string();
        let fut = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Io {
                    path: p.clone(),
                    source,
                })?;
            let (r, w) = stream.into_split();
            let mut qmp = Qmp {
                path: p.clone(),
                reader: BufReader::new(r),
                writer: w,
            };
            let greeting = qmp.read_message().await?;
            if greeting.get("QMP").is_none() {
                return Err(QmpError::Protocol(format!(
                    "expected a greeting, got {greeting}"
                )));
            }
            qmp.execute("qmp_capabilities", None).await?;
            Ok(qmp)
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| QmpError::Timeout(format!("the QMP greeting on {p}")))?
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await
                .map_err(|source| QmpError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Protocol("QEMU closed the QMP connection".into()));
            }
            let value: Value = serde_json::from_str(line.trim())
                .map_err(|e| QmpError::Protocol(format!("invalid JSON from QEMU: {e}")))?;
            if value.get("event").is_some() {
                continue;
            }
            return Ok(value);
        }
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON serialises");
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        let reply = self.read_message().await?;
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        let message = reply
            .pointer("/error/desc")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_owned();
        Err(QmpError::Command {
            command: command.to_owned(),
            message,
        })
    }
}

use tokio::io::AsyncReadExt as _;
