//! `qorch serve`: the read-only HTTP API of `qorch-api` over a store (and the run directories
//! of `<out>/runs`), on loopback by default; any other address needs a bearer token.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::history::StoreAt;

/// `qorch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    at: StoreAt,
    /// Where to listen (loopback by default; another address needs a token).
    #[arg(long, default_value_t = qorch_api::DEFAULT_BIND, conflicts_with = "unix_socket")]
    bind: SocketAddr,
    /// Listen on a Unix socket at this path instead (mode 0600: only you can connect; no port
    /// to pick, and faster than loopback for large downloads). `curl --unix-socket PATH
    /// http://localhost/api/v1/runs` reaches it.
    #[arg(long, value_name = "PATH")]
    unix_socket: Option<std::path::PathBuf>,
    /// The bearer token every request must carry (default: the QORCH_API_TOKEN environment
    /// variable; prefer it, a command line is visible to other users).
    #[arg(long)]
    token: Option<String>,
}

/// `qorch serve`: serves until Ctrl-C or SIGTERM, then lets requests in flight finish.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let store = args.at.dir()?;
    let mut config = qorch_api::ApiConfig::new(&store)
        .with_reports(&args.at.out)
        .with_bind(args.bind);
    if let Some(path) = &args.unix_socket {
        config = config.with_unix_socket(path);
    }
    if let Some(token) = &args.token {
        config = config.with_token(token.clone());
    }
    let bound = qorch_api::bind(&config)
        .await
        .with_context(|| format!("cannot serve the store {}", store.display()))?;
    match (bound.local_addr(), bound.unix_socket()) {
        (Some(addr), _) => println!(
            "serving http://{addr}/api/v1/ (store {}; Ctrl-C stops)",
            store.display()
        ),
        (None, socket) => println!(
            "serving http://localhost/api/v1/ on the Unix socket {} (store {}; Ctrl-C stops)",
            socket.map(|p| p.display().to_string()).unwrap_or_default(),
            store.display()
        ),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    bound.serve(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
