//! Errors: those that stop the server from starting ([`Error`]) and those a request gets as a
//! JSON body with its HTTP status ([`ApiError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The repair command a corrupt or missing blob's error names.
pub const REPAIR_COMMAND: &str = "qorch store verify --repair";

/// Why the API could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening address is taken or not available.
    #[error("cannot listen on {addr}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Unix socket could not be made where it was asked for.
    #[error("cannot listen on the Unix socket {}: {what}", path.display())]
    UnixSocket {
        /// The socket's path.
        path: PathBuf,
        /// What is wrong, and the way out.
        what: String,
    },
    /// A non-loopback address without a bearer token.
    #[error(
        "refusing to listen on {addr} without a bearer token: anyone who can reach that address could read the store; set one with `--token` or the QORCH_API_TOKEN environment variable, or listen on loopback (127.0.0.1:{port})",
        port = addr.port()
    )]
    TokenRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// An empty or otherwise unusable token.
    #[error("invalid bearer token: {0}")]
    BadToken(&'static str),
    /// The store could not be opened.
    #[error("cannot serve the store at {}: {source}", path.display())]
    Store {
        /// The store directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<artifact_store::Error>,
    },
    /// The reports directory is not a directory.
    #[error("the reports directory {} {what}: give the directory runs were written to (`--out`)", path.display())]
    Reports {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// Serving failed.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, perhaps another `qorch serve`, listens there: stop it or choose another address with `--bind`)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no interface of this host has that address: choose one it has, or 127.0.0.1)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose a port above 1024)"
        }
        _ => "",
    }
}

/// An error answer: an HTTP status and a JSON body `{"error": {"status": .., "message": ..}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Extra headers (`WWW-Authenticate`, `Content-Range`).
    headers: Vec<(header::HeaderName, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    status: u16,
    message: &'a str,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Adds a header to the answer.
    pub(crate) fn with_header(
        mut self,
        name: header::HeaderName,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                status: self.status.as_u16(),
                message: &self.message,
            },
        })
        .expect("an error body serialises");
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = value.parse() {
                r.headers_mut().insert(name, v);
            }
        }
        r
    }
}

impl From<artifact_store::Error> for ApiError {
    fn from(e: artifact_store::Error) -> Self {
        use artifact_store::Error as E;
        match &e {
            E::NotFound { id } => ApiError::not_found(format!("artifact {id} not found")),
            E::Evicted { id, reason, .. } => ApiError::new(
                StatusCode::GONE,
                format!("artifact {id}: its content was evicted ({reason}); its record remains"),
            ),
            E::Corrupt { .. } | E::MissingBlob { .. } => ApiError::internal(format!(
                "{e}: nothing of it was served; repair the store with `{REPAIR_COMMAND}` (the record is kept, its content marked lost)"
            )),
            E::Invalid { .. } => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
